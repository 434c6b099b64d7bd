//! Sluice's row encoding, version 1: how rows cross the plugin boundary.
//!
//! A [`RowBatch`] holds `count` rows back to back in one buffer. A row holds every
//! column of the schema, in schema order. Each value starts with one tag byte, 0 for
//! null and 1 for a value, followed for a value by:
//!
//! - boolean: one byte, 0 or 1;
//! - int32, date: 4 bytes, little-endian two's complement;
//! - int64, timestamp: 8 bytes, little-endian two's complement;
//! - float64: 8 bytes, little-endian IEEE 754;
//! - uuid: 16 bytes, in RFC 9562 (network) byte order;
//! - numeric, text, json: a 4-byte little-endian length, then that many bytes of
//!   UTF-8 (numeric: a decimal literal such as `-12.340`; json: a JSON text);
//! - bytes: a 4-byte little-endian length, then that many bytes.
//!
//! Sources write rows with [`RowWriter`]; writers read them with [`RowReader`] (row
//! by row, each row checked before its values are read), or with [`ValueReader`]
//! (value by value, each checked as it is read: one pass, for writers that encode
//! each value at once).
//!
//! ```
//! use sluice_plugin_sdk::ColumnType;
//! use sluice_plugin_sdk::rows::{RowReader, RowWriter, Value};
//!
//! let mut w = RowWriter::new();
//! w.text("call-1").int32(42).null().end_row();
//! w.text("call-2").int32(7).numeric("0.25").end_row();
//! let batch = w.finish();
//! assert_eq!(batch.count, 2);
//!
//! let types = [ColumnType::Text, ColumnType::Int32, ColumnType::Numeric];
//! let rows: Vec<Vec<Value>> = RowReader::new(&types, &batch)
//!     .map(|row| row.map(|r| r.values()))
//!     .collect::<Result<_, _>>()
//!     .unwrap();
//! assert_eq!(rows[0], [Value::Text("call-1"), Value::Int32(42), Value::Null]);
//! assert_eq!(rows[1][2], Value::Numeric("0.25"));
//! ```

use std::fmt;
use std::sync::Arc;

use crate::schema::{Column, ColumnType, Schema};

const TAG_NULL: u8 = 0;
const TAG_VALUE: u8 = 1;

/// Rows in Sluice's row encoding (see the [module docs](self)).
// Mirrors the WIT record: the generated bindings use this type directly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowBatch {
    /// How many rows `data` holds.
    pub count: u32,
    /// The encoded rows.
    pub data: Vec<u8>,
}

impl RowBatch {
    /// A batch without rows.
    pub fn empty() -> Self {
        RowBatch::default()
    }
}

/// One value of a row, borrowing its text and bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value<'a> {
    /// SQL null.
    Null,
    /// A boolean.
    Boolean(bool),
    /// A 32-bit integer.
    Int32(i32),
    /// A 64-bit integer.
    Int64(i64),
    /// A double.
    Float64(f64),
    /// A decimal literal such as `-12.340`.
    Numeric(&'a str),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Bytes(&'a [u8]),
    /// Microseconds since 1970-01-01T00:00:00Z.
    Timestamp(i64),
    /// Days since 1970-01-01.
    Date(i32),
    /// A UUID in RFC 9562 (network) byte order.
    Uuid([u8; 16]),
    /// A JSON text.
    Json(&'a str),
}

impl Value<'_> {
    /// An owned copy of the value.
    #[allow(clippy::should_implement_trait)]
    pub fn to_owned(&self) -> OwnedValue {
        match *self {
            Value::Null => OwnedValue::Null,
            Value::Boolean(v) => OwnedValue::Boolean(v),
            Value::Int32(v) => OwnedValue::Int32(v),
            Value::Int64(v) => OwnedValue::Int64(v),
            Value::Float64(v) => OwnedValue::Float64(v),
            Value::Numeric(v) => OwnedValue::Numeric(v.to_owned()),
            Value::Text(v) => OwnedValue::Text(v.to_owned()),
            Value::Bytes(v) => OwnedValue::Bytes(v.to_vec()),
            Value::Timestamp(v) => OwnedValue::Timestamp(v),
            Value::Date(v) => OwnedValue::Date(v),
            Value::Uuid(v) => OwnedValue::Uuid(v),
            Value::Json(v) => OwnedValue::Json(v.to_owned()),
        }
    }

    /// Whether the value is null.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The column type this value is encoded as, `None` for null.
    pub fn column_type(&self) -> Option<ColumnType> {
        Some(match self {
            Value::Null => return None,
            Value::Boolean(_) => ColumnType::Boolean,
            Value::Int32(_) => ColumnType::Int32,
            Value::Int64(_) => ColumnType::Int64,
            Value::Float64(_) => ColumnType::Float64,
            Value::Numeric(_) => ColumnType::Numeric,
            Value::Text(_) => ColumnType::Text,
            Value::Bytes(_) => ColumnType::Bytes,
            Value::Timestamp(_) => ColumnType::Timestamp,
            Value::Date(_) => ColumnType::Date,
            Value::Uuid(_) => ColumnType::Uuid,
            Value::Json(_) => ColumnType::Json,
        })
    }
}

/// One value of a row, owning its text and bytes (the owned form of [`Value`]).
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedValue {
    /// SQL null.
    Null,
    /// A boolean.
    Boolean(bool),
    /// A 32-bit integer.
    Int32(i32),
    /// A 64-bit integer.
    Int64(i64),
    /// A double.
    Float64(f64),
    /// A decimal literal such as `-12.340`.
    Numeric(String),
    /// Text.
    Text(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// Microseconds since 1970-01-01T00:00:00Z.
    Timestamp(i64),
    /// Days since 1970-01-01.
    Date(i32),
    /// A UUID in RFC 9562 (network) byte order.
    Uuid([u8; 16]),
    /// A JSON text.
    Json(String),
}

impl OwnedValue {
    /// The value, borrowed.
    pub fn as_value(&self) -> Value<'_> {
        match self {
            OwnedValue::Null => Value::Null,
            OwnedValue::Boolean(v) => Value::Boolean(*v),
            OwnedValue::Int32(v) => Value::Int32(*v),
            OwnedValue::Int64(v) => Value::Int64(*v),
            OwnedValue::Float64(v) => Value::Float64(*v),
            OwnedValue::Numeric(v) => Value::Numeric(v),
            OwnedValue::Text(v) => Value::Text(v),
            OwnedValue::Bytes(v) => Value::Bytes(v),
            OwnedValue::Timestamp(v) => Value::Timestamp(*v),
            OwnedValue::Date(v) => Value::Date(*v),
            OwnedValue::Uuid(v) => Value::Uuid(*v),
            OwnedValue::Json(v) => Value::Json(v),
        }
    }
}

impl From<Value<'_>> for OwnedValue {
    fn from(value: Value<'_>) -> Self {
        value.to_owned()
    }
}

/// A position in a [`RowWriter`], to go back to with [`RowWriter::reset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowMark {
    len: usize,
    count: u32,
    row_start: usize,
    next_column: usize,
}

/// Appends rows to a [`RowBatch`].
///
/// Append each value of a row in schema order, then call [`end_row`](Self::end_row).
/// Appenders return `&mut Self`, so a row reads as one chain. Nothing allocates per
/// value: the buffer grows like a `Vec` (reserve with [`with_capacity`](Self::with_capacity)).
///
/// A writer made with [`for_schema`](Self::for_schema) also checks each value
/// against the schema (its type, nulls in non-nullable columns, numeric literals,
/// the number of values in a row) and keeps the first mistake in
/// [`error`](Self::error); the SDK does this for sources, and rejects the message
/// whose rows did not fit, so a plugin bug never corrupts a whole batch.
///
/// ```
/// use sluice_plugin_sdk::rows::RowWriter;
///
/// let mut rows = RowWriter::new();
/// rows.text("a").int64(1).end_row();
/// let mark = rows.mark();
/// rows.text("b").int64(2); // a message that turns out to be bad, mid-row...
/// rows.reset(mark); // ...leaves nothing behind
/// assert_eq!(rows.count(), 1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct RowWriter {
    buf: Vec<u8>,
    count: u32,
    row_start: usize,
    check: Option<Check>,
}

#[derive(Clone, Debug)]
struct Check {
    columns: Arc<[Column]>,
    next: usize,
    /// The first mistake, and the buffer length when it happened.
    error: Option<(usize, String)>,
}

impl RowWriter {
    /// An empty writer.
    pub fn new() -> Self {
        RowWriter::default()
    }

    /// An empty writer with room for `bytes` bytes of encoded rows.
    pub fn with_capacity(bytes: usize) -> Self {
        RowWriter {
            buf: Vec::with_capacity(bytes),
            ..RowWriter::default()
        }
    }

    /// An empty writer that checks every value against `schema` (see [`error`](Self::error)).
    ///
    /// ```
    /// use sluice_plugin_sdk::{ColumnType, Schema};
    /// use sluice_plugin_sdk::rows::RowWriter;
    ///
    /// let schema = Schema::new("t", 1).key("id", ColumnType::Int64).column("note", ColumnType::Text);
    /// let mut rows = RowWriter::for_schema(&schema);
    /// rows.int64(1).null().end_row();
    /// assert_eq!(rows.error(), None);
    /// rows.int32(2).null().end_row();
    /// assert_eq!(rows.error(), Some("row 1, column 0 (id): an int32 value in an int64 column"));
    /// ```
    pub fn for_schema(schema: &Schema) -> Self {
        Self::checked(schema.columns.clone().into(), 0)
    }

    pub(crate) fn checked(columns: Arc<[Column]>, capacity: usize) -> Self {
        RowWriter {
            buf: Vec::with_capacity(capacity),
            check: Some(Check {
                columns,
                next: 0,
                error: None,
            }),
            ..RowWriter::default()
        }
    }

    /// How many rows were ended so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// How many bytes the encoded rows take so far.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The current position, to go back to with [`reset`](Self::reset).
    pub fn mark(&self) -> RowMark {
        RowMark {
            len: self.buf.len(),
            count: self.count,
            row_start: self.row_start,
            next_column: self.check.as_ref().map_or(0, |c| c.next),
        }
    }

    /// Drops everything appended since `mark` (values and whole rows), and a
    /// schema mistake recorded since then.
    pub fn reset(&mut self, mark: RowMark) {
        if mark.len > self.buf.len() {
            // A mark from another writer or from before an earlier reset: nothing to drop.
            return;
        }
        self.buf.truncate(mark.len);
        self.count = mark.count;
        self.row_start = mark.row_start;
        if let Some(check) = &mut self.check {
            check.next = mark.next_column;
            if check.error.as_ref().is_some_and(|(at, _)| *at >= mark.len) {
                check.error = None;
            }
        }
    }

    /// The first value that did not fit the schema, for a writer made with
    /// [`for_schema`](Self::for_schema) (always `None` otherwise).
    pub fn error(&self) -> Option<&str> {
        self.check.as_ref()?.error.as_ref().map(|(_, e)| e.as_str())
    }

    /// Whether values were appended since the last [`end_row`](Self::end_row).
    pub fn in_row(&self) -> bool {
        self.buf.len() != self.row_start
    }

    /// The rows written, as a batch.
    pub fn finish(self) -> RowBatch {
        RowBatch {
            count: self.count,
            data: self.buf,
        }
    }

    #[inline]
    fn expect(&mut self, ty: Option<ColumnType>) {
        let Some(check) = &mut self.check else { return };
        let n = check.next;
        check.next += 1;
        let fits = match (check.columns.get(n), ty) {
            (Some(column), Some(ty)) => column.ty == ty,
            (Some(column), None) => column.nullable,
            (None, _) => false,
        };
        if !fits {
            self.mistake(n, ty);
        }
    }

    #[cold]
    #[inline(never)]
    fn mistake(&mut self, n: usize, ty: Option<ColumnType>) {
        let row = self.count;
        let Some(check) = &self.check else { return };
        let message = match (check.columns.get(n), ty) {
            (None, _) => format!(
                "row {row}: more values than the {} columns of the schema",
                check.columns.len()
            ),
            (Some(c), None) => format!(
                "row {row}, column {n} ({}): null in a non-nullable column",
                c.name
            ),
            (Some(c), Some(t)) => {
                format!(
                    "row {row}, column {n} ({}): {} {t} value in {} {} column",
                    c.name,
                    article(t),
                    article(c.ty),
                    c.ty
                )
            }
        };
        self.record(message);
    }

    #[cold]
    #[inline(never)]
    fn record(&mut self, message: String) {
        let at = self.buf.len();
        if let Some(check) = &mut self.check
            && check.error.is_none()
        {
            check.error = Some((at, message));
        }
    }

    #[inline]
    fn fixed<const N: usize>(&mut self, ty: ColumnType, bytes: [u8; N]) -> &mut Self {
        self.expect(Some(ty));
        self.buf.push(TAG_VALUE);
        self.buf.extend_from_slice(&bytes);
        self
    }

    #[inline]
    fn variable(&mut self, ty: ColumnType, bytes: &[u8]) -> &mut Self {
        self.expect(Some(ty));
        // On wasm32 no slice can reach 4 GiB; natively this is the one possible panic.
        let len = u32::try_from(bytes.len()).expect("a row value is limited to 4 GiB");
        self.buf.reserve(5 + bytes.len());
        self.buf.push(TAG_VALUE);
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(bytes);
        self
    }

    /// Appends a null.
    #[inline]
    pub fn null(&mut self) -> &mut Self {
        self.expect(None);
        self.buf.push(TAG_NULL);
        self
    }

    /// Appends a boolean.
    #[inline]
    pub fn boolean(&mut self, v: bool) -> &mut Self {
        self.fixed(ColumnType::Boolean, [v as u8])
    }

    /// Appends an int32.
    #[inline]
    pub fn int32(&mut self, v: i32) -> &mut Self {
        self.fixed(ColumnType::Int32, v.to_le_bytes())
    }

    /// Appends an int64.
    #[inline]
    pub fn int64(&mut self, v: i64) -> &mut Self {
        self.fixed(ColumnType::Int64, v.to_le_bytes())
    }

    /// Appends a float64.
    #[inline]
    pub fn float64(&mut self, v: f64) -> &mut Self {
        self.fixed(ColumnType::Float64, v.to_le_bytes())
    }

    /// Appends a numeric, given as a decimal literal (`-12.340`, `1e6`).
    #[inline]
    pub fn numeric(&mut self, v: &str) -> &mut Self {
        if self.check.is_some() && !is_decimal_literal(v) {
            self.record(format!("row {}: invalid numeric literal {v:?}", self.count));
        }
        self.variable(ColumnType::Numeric, v.as_bytes())
    }

    /// Appends a text.
    #[inline]
    pub fn text(&mut self, v: &str) -> &mut Self {
        self.variable(ColumnType::Text, v.as_bytes())
    }

    /// Appends bytes.
    #[inline]
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.variable(ColumnType::Bytes, v)
    }

    /// Appends a timestamp, in microseconds since 1970-01-01T00:00:00Z.
    #[inline]
    pub fn timestamp_micros(&mut self, v: i64) -> &mut Self {
        self.fixed(ColumnType::Timestamp, v.to_le_bytes())
    }

    /// Appends a date, in days since 1970-01-01.
    #[inline]
    pub fn date_days(&mut self, v: i32) -> &mut Self {
        self.fixed(ColumnType::Date, v.to_le_bytes())
    }

    /// Appends a UUID, in RFC 9562 (network) byte order.
    #[inline]
    pub fn uuid(&mut self, v: [u8; 16]) -> &mut Self {
        self.fixed(ColumnType::Uuid, v)
    }

    /// Appends a JSON text (not checked: give valid JSON).
    #[inline]
    pub fn json(&mut self, v: &str) -> &mut Self {
        self.variable(ColumnType::Json, v.as_bytes())
    }

    /// Appends any value.
    pub fn value(&mut self, v: Value<'_>) -> &mut Self {
        match v {
            Value::Null => self.null(),
            Value::Boolean(v) => self.boolean(v),
            Value::Int32(v) => self.int32(v),
            Value::Int64(v) => self.int64(v),
            Value::Float64(v) => self.float64(v),
            Value::Numeric(v) => self.numeric(v),
            Value::Text(v) => self.text(v),
            Value::Bytes(v) => self.bytes(v),
            Value::Timestamp(v) => self.timestamp_micros(v),
            Value::Date(v) => self.date_days(v),
            Value::Uuid(v) => self.uuid(v),
            Value::Json(v) => self.json(v),
        }
    }

    /// Ends the current row.
    #[inline]
    pub fn end_row(&mut self) -> &mut Self {
        if let Some(check) = &self.check
            && check.next != check.columns.len()
        {
            let (n, expected) = (check.next, check.columns.len());
            self.record(format!(
                "row {}: {n} values, but the schema has {expected} columns",
                self.count
            ));
        }
        if let Some(check) = &mut self.check {
            check.next = 0;
        }
        self.count += 1;
        self.row_start = self.buf.len();
        self
    }

    /// Appends one whole encoded row, as [`Row::raw`] gives it (for a writer that
    /// rebuilds a batch without some rows). The row is not checked: take it from a
    /// [`RowReader`] over the same column types.
    ///
    /// ```
    /// use sluice_plugin_sdk::ColumnType;
    /// use sluice_plugin_sdk::rows::{RowReader, RowWriter};
    ///
    /// let mut w = RowWriter::new();
    /// for i in 0..4 {
    ///     w.int64(i).end_row();
    /// }
    /// let batch = w.finish();
    /// let types = [ColumnType::Int64];
    /// let mut kept = RowWriter::new();
    /// for row in RowReader::new(&types, &batch) {
    ///     let row = row.unwrap();
    ///     if row.index() % 2 == 0 {
    ///         kept.push_raw_row(row.raw());
    ///     }
    /// }
    /// assert_eq!(kept.finish().count, 2);
    /// ```
    pub fn push_raw_row(&mut self, raw: &[u8]) -> &mut Self {
        if self.in_row() {
            self.record(format!(
                "row {}: a raw row pushed in the middle of a row",
                self.count
            ));
        }
        self.buf.extend_from_slice(raw);
        self.count += 1;
        self.row_start = self.buf.len();
        self
    }
}

fn article(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Int32 | ColumnType::Int64 => "an",
        _ => "a",
    }
}

/// Whether `s` is a decimal literal as the numeric type carries it: an optional
/// sign, digits with an optional decimal point (at least one digit), and an
/// optional exponent (`-12.340`, `.5`, `1e-3`).
///
/// ```
/// use sluice_plugin_sdk::rows::is_decimal_literal;
/// assert!(is_decimal_literal("-12.340"));
/// assert!(is_decimal_literal("1E+6"));
/// assert!(!is_decimal_literal("1,5"));
/// assert!(!is_decimal_literal("NaN"));
/// ```
pub fn is_decimal_literal(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let frac_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - frac_start;
    }
    if digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == exp_start {
            return false;
        }
    }
    i == b.len()
}

/// A batch that does not follow the row encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Index of the row, from 0 (for trailing bytes: the number of rows).
    pub row: u32,
    /// Index of the column, when the error is in a value.
    pub column: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(c) => write!(f, "row {}, column {c}: {}", self.row, self.reason),
            None => write!(f, "row {}: {}", self.row, self.reason),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Reads the rows of a batch, checking the encoding as it goes.
///
/// Iterating gives each row or the first [`DecodeError`] (after which it stops):
/// a malformed buffer never panics. Each [`Row`] gives its values and its raw bytes.
///
/// ```
/// use sluice_plugin_sdk::ColumnType;
/// use sluice_plugin_sdk::rows::{RowBatch, RowReader};
///
/// // One int32 row, cut short.
/// let batch = RowBatch { count: 1, data: vec![1, 42, 0] };
/// let err = RowReader::new(&[ColumnType::Int32], &batch).next().unwrap().unwrap_err();
/// assert_eq!(err.to_string(), "row 0, column 0: int32 value cut short: 4 bytes needed, 2 left");
/// ```
#[derive(Clone, Debug)]
pub struct RowReader<'a> {
    types: &'a [ColumnType],
    data: &'a [u8],
    count: u32,
    row: u32,
    pos: usize,
    done: bool,
}

impl<'a> RowReader<'a> {
    /// Reads `batch`, whose rows have these column types.
    pub fn new(types: &'a [ColumnType], batch: &'a RowBatch) -> Self {
        Self::from_parts(types, &batch.data, batch.count)
    }

    /// Reads `count` rows from `data`.
    pub fn from_parts(types: &'a [ColumnType], data: &'a [u8], count: u32) -> Self {
        RowReader {
            types,
            data,
            count,
            row: 0,
            pos: 0,
            done: false,
        }
    }

    fn fail(
        &mut self,
        column: Option<usize>,
        reason: String,
    ) -> Option<Result<Row<'a>, DecodeError>> {
        self.done = true;
        Some(Err(DecodeError {
            row: self.row,
            column,
            reason,
        }))
    }
}

impl<'a> Iterator for RowReader<'a> {
    type Item = Result<Row<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.row == self.count {
            self.done = true;
            let extra = self.data.len() - self.pos;
            if extra > 0 {
                return self.fail(
                    None,
                    format!(
                        "{extra} bytes after the last row ({} rows announced)",
                        self.count
                    ),
                );
            }
            return None;
        }
        let start = self.pos;
        let mut pos = start;
        for (column, &ty) in self.types.iter().enumerate() {
            match skip_value(ty, self.data, pos) {
                Ok(next) => pos = next,
                Err(reason) => return self.fail(Some(column), reason),
            }
        }
        self.pos = pos;
        let row = Row {
            types: self.types,
            raw: &self.data[start..pos],
            index: self.row,
        };
        self.row += 1;
        Some(Ok(row))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            (0, Some(0))
        } else {
            (0, Some((self.count - self.row) as usize + 1))
        }
    }
}

/// Checks the value of type `ty` at `pos` and returns where the next one starts.
fn skip_value(ty: ColumnType, data: &[u8], pos: usize) -> Result<usize, String> {
    read_value(ty, data, pos).map(|(_, next)| next)
}

/// Checks and reads the value of type `ty` at `pos`: the value, and where the next
/// one starts. The one place that decides what a valid value is ([`RowReader`] and
/// [`ValueReader`] both check with it).
#[inline]
fn read_value(ty: ColumnType, data: &[u8], pos: usize) -> Result<(Value<'_>, usize), String> {
    let Some(&tag) = data.get(pos) else {
        return Err(value_missing(ty));
    };
    if tag == TAG_NULL {
        return Ok((Value::Null, pos + 1));
    }
    if tag != TAG_VALUE {
        return Err(invalid_tag(ty, tag));
    }
    let at = pos + 1;
    // `pos` is inside `data`, so `at` is at most its length.
    let rest = &data[at..];
    Ok(match ty {
        ColumnType::Boolean => match rest.first() {
            Some(0) => (Value::Boolean(false), at + 1),
            Some(1) => (Value::Boolean(true), at + 1),
            Some(&b) => return Err(invalid_boolean(b)),
            None => return Err(cut_short(ty, "value", 1, 0)),
        },
        ColumnType::Int32 => (Value::Int32(i32::from_le_bytes(fixed(ty, rest)?)), at + 4),
        ColumnType::Date => (Value::Date(i32::from_le_bytes(fixed(ty, rest)?)), at + 4),
        ColumnType::Int64 => (Value::Int64(i64::from_le_bytes(fixed(ty, rest)?)), at + 8),
        ColumnType::Timestamp => (
            Value::Timestamp(i64::from_le_bytes(fixed(ty, rest)?)),
            at + 8,
        ),
        ColumnType::Float64 => (Value::Float64(f64::from_le_bytes(fixed(ty, rest)?)), at + 8),
        ColumnType::Uuid => (Value::Uuid(fixed(ty, rest)?), at + 16),
        ColumnType::Numeric | ColumnType::Text | ColumnType::Json | ColumnType::Bytes => {
            let Some((len, body)) = rest.split_first_chunk::<4>() else {
                return Err(cut_short(ty, "length", 4, rest.len()));
            };
            let len = u32::from_le_bytes(*len) as usize;
            let Some(bytes) = body.get(..len) else {
                return Err(cut_short(ty, "value", len, body.len()));
            };
            let end = at + 4 + len;
            if ty == ColumnType::Bytes {
                return Ok((Value::Bytes(bytes), end));
            }
            let text = if is_ascii(bytes) {
                // SAFETY: ASCII is UTF-8.
                unsafe { std::str::from_utf8_unchecked(bytes) }
            } else {
                match std::str::from_utf8(bytes) {
                    Ok(text) => text,
                    Err(e) => return Err(not_utf8(ty, e)),
                }
            };
            let value = match ty {
                ColumnType::Numeric if !is_decimal_literal(text) => {
                    return Err(invalid_numeric(text));
                }
                ColumnType::Numeric => Value::Numeric(text),
                ColumnType::Text => Value::Text(text),
                _ => Value::Json(text),
            };
            (value, end)
        }
    })
}

/// Whether `bytes` are all ASCII, a word at a time (the last word overlapping
/// the one before): most texts of rows are, and this is quicker than `from_utf8`
/// on short texts (wasm has no SIMD to speed that up).
#[inline]
fn is_ascii(bytes: &[u8]) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let n = bytes.len();
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let half = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    if n >= 8 {
        let mut any = word(n - 8);
        let mut at = 0;
        while at + 8 < n {
            any |= word(at);
            at += 8;
        }
        any & HIGH == 0
    } else if n >= 4 {
        (half(0) | half(n - 4)) & 0x8080_8080 == 0
    } else {
        bytes.iter().fold(0, |any, &b| any | b) < 0x80
    }
}

/// The first `N` bytes of `rest`, the body of a fixed-size value of type `ty`.
#[inline]
fn fixed<const N: usize>(ty: ColumnType, rest: &[u8]) -> Result<[u8; N], String> {
    match rest.first_chunk::<N>() {
        Some(bytes) => Ok(*bytes),
        None => Err(cut_short(ty, "value", N, rest.len())),
    }
}

// The reasons of a malformed value: out of line, so that reading stays small.

#[cold]
#[inline(never)]
fn value_missing(ty: ColumnType) -> String {
    format!("{ty} value missing: the data ends")
}

#[cold]
#[inline(never)]
fn invalid_tag(ty: ColumnType, tag: u8) -> String {
    format!(
        "invalid tag {tag} for {} {ty} value (expected 0 or 1)",
        article(ty)
    )
}

#[cold]
#[inline(never)]
fn invalid_boolean(b: u8) -> String {
    format!("invalid boolean byte {b} (expected 0 or 1)")
}

#[cold]
#[inline(never)]
fn cut_short(ty: ColumnType, what: &str, needed: usize, left: usize) -> String {
    format!("{ty} {what} cut short: {needed} bytes needed, {left} left")
}

#[cold]
#[inline(never)]
fn not_utf8(ty: ColumnType, e: std::str::Utf8Error) -> String {
    format!("{ty} value is not UTF-8: {e}")
}

#[cold]
#[inline(never)]
fn invalid_numeric(text: &str) -> String {
    format!("invalid numeric literal {text:?}")
}

/// Reads a batch value by value in one pass: each value is checked as it is read
/// (exactly as [`RowReader`] checks it) and handed out at once, with no allocation.
///
/// [`RowReader`] checks a whole row before handing it out, and [`Row::iter`] then
/// decodes its values in a second pass. A writer that turns each value into its
/// output right away (an encoder, a hash of the key columns) can do it in one pass
/// with this reader instead. The difference: a malformed value is found when it is
/// reached, after the values before it were handed out, so such a writer must be
/// ready to drop what it made of a batch on an error (which it must anyway for
/// errors of its own).
///
/// Call [`next_row`](Self::next_row), then [`next_value`](Self::next_value) for
/// the columns needed, in order; values not read are checked and skipped by the
/// next `next_row`. After an error the reader is done: `next_row` returns
/// `Ok(false)`.
///
/// ```
/// use sluice_plugin_sdk::ColumnType;
/// use sluice_plugin_sdk::rows::{RowWriter, Value, ValueReader};
///
/// let mut w = RowWriter::new();
/// w.text("call-1").int32(42).null().end_row();
/// w.text("call-2").int32(7).numeric("0.25").end_row();
/// let batch = w.finish();
///
/// let types = [ColumnType::Text, ColumnType::Int32, ColumnType::Numeric];
/// let mut reader = ValueReader::new(&types, &batch);
/// let mut ids = Vec::new();
/// while reader.next_row()? {
///     // Only the first column; the others are checked and skipped.
///     if let Value::Text(id) = reader.next_value()? {
///         ids.push(id);
///     }
/// }
/// assert_eq!(ids, ["call-1", "call-2"]);
///
/// // A malformed batch: the error names the row and column, as RowReader's does.
/// let bad = sluice_plugin_sdk::rows::RowBatch { count: 1, data: vec![1, 42, 0] };
/// let mut reader = ValueReader::new(&[ColumnType::Int32], &bad);
/// assert!(reader.next_row()?);
/// let err = reader.next_value().unwrap_err();
/// assert_eq!(err.to_string(), "row 0, column 0: int32 value cut short: 4 bytes needed, 2 left");
/// assert!(!reader.next_row()?);
/// # Ok::<(), sluice_plugin_sdk::rows::DecodeError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ValueReader<'a> {
    types: &'a [ColumnType],
    data: &'a [u8],
    count: u32,
    /// Rows started so far (the current row is `started - 1`).
    started: u32,
    /// The next column of the current row (`types.len()` when none is open).
    column: usize,
    pos: usize,
    done: bool,
}

impl<'a> ValueReader<'a> {
    /// Reads `batch`, whose rows have these column types.
    pub fn new(types: &'a [ColumnType], batch: &'a RowBatch) -> Self {
        Self::from_parts(types, &batch.data, batch.count)
    }

    /// Reads `count` rows from `data`.
    pub fn from_parts(types: &'a [ColumnType], data: &'a [u8], count: u32) -> Self {
        ValueReader {
            types,
            data,
            count,
            started: 0,
            column: types.len(),
            pos: 0,
            done: false,
        }
    }

    /// Moves to the next row: `Ok(true)`, or `Ok(false)` once every row was read
    /// (an error if bytes follow the last one) or after an error. The current
    /// row's values not read yet are checked and skipped first.
    pub fn next_row(&mut self) -> Result<bool, DecodeError> {
        if self.done {
            return Ok(false);
        }
        while self.column < self.types.len() {
            self.next_value()?;
        }
        if self.started == self.count {
            self.done = true;
            let extra = self.data.len() - self.pos;
            if extra > 0 {
                return Err(DecodeError {
                    row: self.count,
                    column: None,
                    reason: format!(
                        "{extra} bytes after the last row ({} rows announced)",
                        self.count
                    ),
                });
            }
            return Ok(false);
        }
        self.started += 1;
        self.column = 0;
        Ok(true)
    }

    /// The next value of the current row, checked. An error if it is malformed,
    /// or if the row has no value left (all its columns were read, or no row was
    /// started with [`next_row`](Self::next_row)).
    #[inline]
    pub fn next_value(&mut self) -> Result<Value<'a>, DecodeError> {
        let Some(&ty) = self.types.get(self.column) else {
            return Err(self.no_value_left());
        };
        match read_value(ty, self.data, self.pos) {
            Ok((value, next)) => {
                self.pos = next;
                self.column += 1;
                Ok(value)
            }
            Err(reason) => Err(self.fail(reason)),
        }
    }

    /// Index of the current row, from 0 (`None` before the first `next_row`).
    pub fn row_index(&self) -> Option<u32> {
        self.started.checked_sub(1)
    }

    #[cold]
    #[inline(never)]
    fn fail(&mut self, reason: String) -> DecodeError {
        let column = self.column;
        self.done = true;
        self.column = self.types.len();
        DecodeError {
            row: self.started.saturating_sub(1),
            column: Some(column),
            reason,
        }
    }

    #[cold]
    #[inline(never)]
    fn no_value_left(&self) -> DecodeError {
        DecodeError {
            row: self.started.saturating_sub(1),
            column: None,
            reason: if self.started == 0 || self.done {
                "no row started (call next_row first)".to_owned()
            } else {
                format!("no value left: the row has {} columns", self.types.len())
            },
        }
    }
}

/// One row of a batch, checked by the [`RowReader`] that gave it.
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    types: &'a [ColumnType],
    raw: &'a [u8],
    index: u32,
}

impl<'a> Row<'a> {
    /// Index of the row in its batch, from 0.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The row's encoded bytes, for [`RowWriter::push_raw_row`].
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The values, in column order.
    pub fn iter(&self) -> RowValues<'a> {
        RowValues {
            types: self.types.iter(),
            data: self.raw,
            pos: 0,
        }
    }

    /// The values, in column order, collected.
    pub fn values(&self) -> Vec<Value<'a>> {
        self.iter().collect()
    }

    /// The values, in column order, owned.
    pub fn to_owned_values(&self) -> Vec<OwnedValue> {
        self.iter().map(|v| v.to_owned()).collect()
    }
}

impl<'a> IntoIterator for Row<'a> {
    type Item = Value<'a>;
    type IntoIter = RowValues<'a>;

    fn into_iter(self) -> RowValues<'a> {
        self.iter()
    }
}

/// The values of a [`Row`], in column order.
#[derive(Clone, Debug)]
pub struct RowValues<'a> {
    types: std::slice::Iter<'a, ColumnType>,
    data: &'a [u8],
    pos: usize,
}

impl<'a> RowValues<'a> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let bytes: [u8; N] = self.data[self.pos..self.pos + N]
            .try_into()
            .expect("checked by RowReader");
        self.pos += N;
        bytes
    }

    fn take_slice(&mut self) -> &'a [u8] {
        let len = u32::from_le_bytes(self.take::<4>()) as usize;
        let slice = &self.data[self.pos..self.pos + len];
        self.pos += len;
        slice
    }

    fn take_str(&mut self) -> &'a str {
        let bytes = self.take_slice();
        // SAFETY: a `Row` only exists for bytes that `RowReader` checked with
        // `skip_value`, which validated every text, numeric and json value as UTF-8.
        // Checking again would cost a second pass over every string a writer reads.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

impl<'a> Iterator for RowValues<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        let ty = *self.types.next()?;
        let tag = self.data[self.pos];
        self.pos += 1;
        if tag == TAG_NULL {
            return Some(Value::Null);
        }
        Some(match ty {
            ColumnType::Boolean => Value::Boolean(self.take::<1>()[0] == 1),
            ColumnType::Int32 => Value::Int32(i32::from_le_bytes(self.take())),
            ColumnType::Int64 => Value::Int64(i64::from_le_bytes(self.take())),
            ColumnType::Float64 => Value::Float64(f64::from_le_bytes(self.take())),
            ColumnType::Numeric => Value::Numeric(self.take_str()),
            ColumnType::Text => Value::Text(self.take_str()),
            ColumnType::Bytes => Value::Bytes(self.take_slice()),
            ColumnType::Timestamp => Value::Timestamp(i64::from_le_bytes(self.take())),
            ColumnType::Date => Value::Date(i32::from_le_bytes(self.take())),
            ColumnType::Uuid => Value::Uuid(self.take()),
            ColumnType::Json => Value::Json(self.take_str()),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.types.size_hint()
    }
}

impl ExactSizeIterator for RowValues<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use ColumnType as T;

    const ALL_TYPES: [ColumnType; 11] = ColumnType::ALL;

    fn sample_values() -> Vec<Value<'static>> {
        vec![
            Value::Boolean(true),
            Value::Int32(i32::MIN),
            Value::Int64(i64::MAX),
            Value::Float64(-0.5),
            Value::Numeric("-12.340"),
            Value::Text("héllo"),
            Value::Bytes(&[0, 255, 7]),
            Value::Timestamp(-1),
            Value::Date(19_000),
            Value::Uuid([0xab; 16]),
            Value::Json(r#"{"a":[1,2]}"#),
        ]
    }

    fn read(types: &[ColumnType], batch: &RowBatch) -> Result<Vec<Vec<OwnedValue>>, DecodeError> {
        RowReader::new(types, batch)
            .map(|r| r.map(|r| r.to_owned_values()))
            .collect()
    }

    /// Three rows of [`ALL_TYPES`]: the sample values, all nulls, and edge values
    /// (`float` as the float column's).
    fn sample_batch(float: f64) -> RowBatch {
        let values = sample_values();
        let mut w = RowWriter::new();
        for v in &values {
            w.value(*v);
        }
        w.end_row();
        for _ in &values {
            w.null();
        }
        w.end_row();
        w.boolean(false)
            .int32(0)
            .int64(-7)
            .float64(float)
            .numeric("0")
            .text("")
            .bytes(&[])
            .timestamp_micros(i64::MIN)
            .date_days(i32::MIN)
            .uuid([0; 16])
            .json("null")
            .end_row();
        w.finish()
    }

    #[test]
    fn round_trips_every_type_with_and_without_nulls() {
        let values = sample_values();
        let batch = sample_batch(f64::MAX);
        assert_eq!(batch.count, 3);

        let rows = read(&ALL_TYPES, &batch).unwrap();
        let owned: Vec<OwnedValue> = values.iter().map(Value::to_owned).collect();
        assert_eq!(rows[0], owned);
        assert!(rows[1].iter().all(|v| *v == OwnedValue::Null));
        assert_eq!(rows[2][0], OwnedValue::Boolean(false));
        assert_eq!(rows[2][3], OwnedValue::Float64(f64::MAX));
        assert_eq!(rows[2][5], OwnedValue::Text(String::new()));
        assert_eq!(rows[2][7], OwnedValue::Timestamp(i64::MIN));
        assert_eq!(rows[2][8], OwnedValue::Date(i32::MIN));
        for (v, o) in values.iter().zip(&owned) {
            assert_eq!(o.as_value(), *v);
            assert_eq!(
                v.column_type(),
                Some(ALL_TYPES[owned.iter().position(|x| x == o).unwrap()])
            );
        }
    }

    #[test]
    fn encoding_matches_the_wit_documentation() {
        let mut w = RowWriter::new();
        w.null()
            .boolean(true)
            .int32(-2)
            .text("ab")
            .uuid(*b"0123456789abcdef")
            .end_row();
        let data = w.finish().data;
        let mut expected = vec![
            0, 1, 1, 1, 0xfe, 0xff, 0xff, 0xff, 1, 2, 0, 0, 0, b'a', b'b', 1,
        ];
        expected.extend_from_slice(b"0123456789abcdef");
        assert_eq!(data, expected);
    }

    #[test]
    fn reset_drops_partial_and_whole_rows() {
        let mut w = RowWriter::new();
        w.int64(1).end_row();
        let mark = w.mark();
        w.int64(2).end_row();
        w.int64(3);
        assert!(w.in_row());
        w.reset(mark);
        assert!(!w.in_row());
        assert_eq!(w.count(), 1);
        w.int64(4).end_row();
        let rows = read(&[T::Int64], &w.finish()).unwrap();
        assert_eq!(rows, [[OwnedValue::Int64(1)], [OwnedValue::Int64(4)]]);
    }

    #[test]
    fn raw_rows_rebuild_a_batch() {
        let mut w = RowWriter::new();
        for i in 0..5 {
            w.int32(i).text(&i.to_string()).end_row();
        }
        let batch = w.finish();
        let types = [T::Int32, T::Text];
        let mut kept = RowWriter::new();
        for row in RowReader::new(&types, &batch) {
            let row = row.unwrap();
            if row.index() != 2 {
                kept.push_raw_row(row.raw());
            }
        }
        let rows = read(&types, &kept.finish()).unwrap();
        let firsts: Vec<_> = rows.iter().map(|r| r[0].clone()).collect();
        assert_eq!(firsts, [0, 1, 3, 4].map(OwnedValue::Int32));
    }

    /// Malformed batches: the column types, the row count, the data, the error.
    fn malformed_cases() -> Vec<(Vec<ColumnType>, u32, Vec<u8>, &'static str)> {
        vec![
            (
                vec![T::Int32],
                1,
                vec![],
                "row 0, column 0: int32 value missing: the data ends",
            ),
            (
                vec![T::Int32],
                1,
                vec![2],
                "row 0, column 0: invalid tag 2 for an int32 value (expected 0 or 1)",
            ),
            (
                vec![T::Int64],
                1,
                vec![1, 0, 0],
                "row 0, column 0: int64 value cut short: 8 bytes needed, 2 left",
            ),
            (
                vec![T::Boolean],
                1,
                vec![1, 2],
                "row 0, column 0: invalid boolean byte 2 (expected 0 or 1)",
            ),
            (
                vec![T::Text],
                1,
                vec![1, 5, 0],
                "row 0, column 0: text length cut short: 4 bytes needed, 2 left",
            ),
            (
                vec![T::Text],
                1,
                vec![1, 5, 0, 0, 0, b'a'],
                "row 0, column 0: text value cut short: 5 bytes needed, 1 left",
            ),
            (
                vec![T::Bytes],
                1,
                vec![1, 255, 255, 255, 255],
                "row 0, column 0: bytes value cut short: 4294967295 bytes needed, 0 left",
            ),
            (
                vec![T::Json],
                1,
                vec![1, 1, 0, 0, 0, 0xff],
                "row 0, column 0: json value is not UTF-8: invalid utf-8 sequence of 1 bytes from index 0",
            ),
            (
                vec![T::Numeric],
                1,
                vec![1, 1, 0, 0, 0, b'x'],
                "row 0, column 0: invalid numeric literal \"x\"",
            ),
            (
                vec![T::Int32, T::Uuid],
                2,
                vec![0, 0, 0, 1, 0],
                "row 1, column 1: uuid value cut short: 16 bytes needed, 1 left",
            ),
            (
                vec![T::Date],
                1,
                vec![0, 0],
                "row 1: 1 bytes after the last row (1 rows announced)",
            ),
        ]
    }

    #[test]
    fn malformed_buffers_are_errors_not_panics() {
        for (types, count, data, expected) in malformed_cases() {
            let batch = RowBatch { count, data };
            let results: Vec<_> = RowReader::new(&types, &batch).collect();
            let err = results.last().unwrap().as_ref().unwrap_err();
            assert_eq!(err.to_string(), expected);
            assert_eq!(
                results.iter().filter(|r| r.is_err()).count(),
                1,
                "stops after the error"
            );
        }
    }

    /// Every value of every row, read with a `ValueReader`.
    fn read_by_value(
        types: &[ColumnType],
        batch: &RowBatch,
    ) -> Result<Vec<Vec<OwnedValue>>, DecodeError> {
        read_all(&mut ValueReader::new(types, batch), types.len())
    }

    fn read_all(
        reader: &mut ValueReader<'_>,
        columns: usize,
    ) -> Result<Vec<Vec<OwnedValue>>, DecodeError> {
        let mut rows = Vec::new();
        while reader.next_row()? {
            let mut row = Vec::new();
            for _ in 0..columns {
                row.push(reader.next_value()?.to_owned());
            }
            rows.push(row);
        }
        Ok(rows)
    }

    #[test]
    fn value_reader_reads_what_row_reader_reads() {
        let batch = sample_batch(f64::NAN);
        let by_value = read_by_value(&ALL_TYPES, &batch).unwrap();
        let by_row = read(&ALL_TYPES, &batch).unwrap();
        assert_eq!(by_value.len(), 3);
        // NaN != NaN: compare the debug forms.
        assert_eq!(format!("{by_value:?}"), format!("{by_row:?}"));
        assert!(
            read_by_value(&[T::Int32], &RowBatch::empty())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn value_reader_skips_values_not_read_and_checks_them() {
        let mut w = RowWriter::new();
        for i in 0..3 {
            w.text(&format!("k{i}")).int64(i).text("x").end_row();
        }
        let batch = w.finish();
        let types = [T::Text, T::Int64, T::Text];
        let mut reader = ValueReader::new(&types, &batch);
        assert_eq!(reader.row_index(), None);
        let mut keys = Vec::new();
        while reader.next_row().unwrap() {
            keys.push(reader.next_value().unwrap());
        }
        assert_eq!(
            keys,
            [Value::Text("k0"), Value::Text("k1"), Value::Text("k2")]
        );
        assert_eq!(reader.row_index(), Some(2));
        // Past the end, and past a row's last column: errors, not panics.
        assert!(!reader.next_row().unwrap());
        assert!(reader.next_value().is_err());
        let mut reader = ValueReader::new(&types, &batch);
        assert!(reader.next_value().is_err(), "no row started");
        reader.next_row().unwrap();
        for _ in 0..3 {
            reader.next_value().unwrap();
        }
        let err = reader.next_value().unwrap_err();
        assert_eq!(
            err.to_string(),
            "row 0: no value left: the row has 3 columns"
        );

        // A malformed value in a column never read is still found.
        let mut data = batch.data.clone();
        let bad = data.len() - 1; // inside the last row's last text
        data.truncate(bad);
        let cut = RowBatch { count: 3, data };
        let mut reader = ValueReader::new(&types, &cut);
        let mut result = Ok(true);
        while let Ok(true) = result {
            result = reader.next_row();
        }
        assert_eq!(
            result.unwrap_err().to_string(),
            "row 2, column 2: text value cut short: 1 bytes needed, 0 left"
        );
    }

    #[test]
    fn texts_with_and_without_non_ascii_bytes_at_every_position() {
        for len in 0..24 {
            for at in 0..len.max(1) {
                let mut text: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
                if len > 0 {
                    text[at] = 0xff; // never UTF-8
                }
                let mut data = vec![1];
                data.extend_from_slice(&(text.len() as u32).to_le_bytes());
                data.extend_from_slice(&text);
                let batch = RowBatch { count: 1, data };
                let result = read_by_value(&[T::Text], &batch);
                assert_eq!(result.is_ok(), len == 0, "{len} {at}");
                if len > 0 {
                    // A valid multi-byte character there instead.
                    let mut good = text.clone();
                    good.splice(at..at + 1, "é".bytes());
                    let mut w = RowWriter::new();
                    w.text(std::str::from_utf8(&good).unwrap()).end_row();
                    let rows = read_by_value(&[T::Text], &w.finish()).unwrap();
                    assert_eq!(
                        rows[0][0],
                        OwnedValue::Text(String::from_utf8(good).unwrap())
                    );
                }
            }
        }
    }

    #[test]
    fn value_reader_finds_the_errors_row_reader_finds() {
        for (types, count, data, expected) in malformed_cases() {
            let batch = RowBatch { count, data };
            let err = read_by_value(&types, &batch).unwrap_err();
            assert_eq!(err.to_string(), expected);
            // Done after the error.
            let mut reader = ValueReader::new(&types, &batch);
            assert!(read_all(&mut reader, types.len()).is_err());
            assert!(!reader.next_row().unwrap(), "{expected}");
        }
    }

    #[test]
    fn empty_batch_reads_nothing() {
        assert!(
            RowReader::new(&[T::Int32], &RowBatch::empty())
                .next()
                .is_none()
        );
    }

    #[test]
    fn checked_writer_reports_the_first_mistake_until_reset() {
        let schema = Schema::new("t", 1)
            .key("id", T::Int64)
            .required("n", T::Numeric)
            .column("c", T::Text);
        let mut w = RowWriter::for_schema(&schema);
        w.int64(1).numeric("1.5").null().end_row();
        assert_eq!(w.error(), None);

        let mark = w.mark();
        w.null();
        assert_eq!(
            w.error(),
            Some("row 1, column 0 (id): null in a non-nullable column")
        );
        w.reset(mark);
        assert_eq!(w.error(), None);

        w.int64(1).numeric("abc");
        assert_eq!(w.error(), Some("row 1: invalid numeric literal \"abc\""));
        w.reset(mark);

        w.int64(1).numeric("1").end_row();
        assert_eq!(
            w.error(),
            Some("row 1: 2 values, but the schema has 3 columns")
        );
        w.reset(mark);

        w.int64(1).numeric("1").text("x").text("y");
        assert_eq!(
            w.error(),
            Some("row 1: more values than the 3 columns of the schema")
        );
        w.reset(mark);

        w.int64(1).int64(2);
        assert_eq!(
            w.error(),
            Some("row 1, column 1 (n): an int64 value in a numeric column")
        );
        w.reset(mark);
        assert_eq!(w.error(), None);
        assert_eq!(w.finish().count, 1);
    }

    #[test]
    fn decimal_literals() {
        for ok in ["0", "-1", "+1", "1.", ".5", "1.5e10", "1E-3", "007"] {
            assert!(is_decimal_literal(ok), "{ok}");
        }
        for bad in [
            "", "-", ".", "e5", "1e", "1.2.3", "NaN", "Infinity", " 1", "1 ", "0x10",
        ] {
            assert!(!is_decimal_literal(bad), "{bad}");
        }
    }
}
