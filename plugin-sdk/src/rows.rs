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
//! Sources write rows with [`RowWriter`]; writers read them with [`RowReader`].
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
    let need = |at: usize, n: usize, what: &str| -> Result<usize, String> {
        let left = data.len().saturating_sub(at);
        if left < n {
            Err(format!(
                "{ty} {what} cut short: {n} bytes needed, {left} left"
            ))
        } else {
            Ok(at + n)
        }
    };
    let Some(&tag) = data.get(pos) else {
        return Err(format!("{ty} value missing: the data ends"));
    };
    match tag {
        TAG_NULL => return Ok(pos + 1),
        TAG_VALUE => {}
        other => {
            return Err(format!(
                "invalid tag {other} for {} {ty} value (expected 0 or 1)",
                article(ty)
            ));
        }
    }
    let at = pos + 1;
    match ty {
        ColumnType::Boolean => {
            let end = need(at, 1, "value")?;
            match data[at] {
                0 | 1 => Ok(end),
                b => Err(format!("invalid boolean byte {b} (expected 0 or 1)")),
            }
        }
        ColumnType::Int32 | ColumnType::Date => need(at, 4, "value"),
        ColumnType::Int64 | ColumnType::Timestamp | ColumnType::Float64 => need(at, 8, "value"),
        ColumnType::Uuid => need(at, 16, "value"),
        ColumnType::Numeric | ColumnType::Text | ColumnType::Json | ColumnType::Bytes => {
            let body = need(at, 4, "length")?;
            let len = u32::from_le_bytes(data[at..body].try_into().expect("4 bytes")) as usize;
            let end = need(body, len, "value")?;
            if ty != ColumnType::Bytes {
                let text = std::str::from_utf8(&data[body..end])
                    .map_err(|e| format!("{ty} value is not UTF-8: {e}"))?;
                if ty == ColumnType::Numeric && !is_decimal_literal(text) {
                    return Err(format!("invalid numeric literal {text:?}"));
                }
            }
            Ok(end)
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

    #[test]
    fn round_trips_every_type_with_and_without_nulls() {
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
            .float64(f64::MAX)
            .numeric("0")
            .text("")
            .bytes(&[]);
        w.timestamp_micros(i64::MIN)
            .date_days(i32::MIN)
            .uuid([0; 16])
            .json("null")
            .end_row();
        let batch = w.finish();
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

    #[test]
    fn malformed_buffers_are_errors_not_panics() {
        let cases: Vec<(Vec<ColumnType>, u32, Vec<u8>, &str)> = vec![
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
        ];
        for (types, count, data, expected) in cases {
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
