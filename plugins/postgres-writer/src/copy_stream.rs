//! A batch as one Postgres binary `COPY` stream.
//!
//! The format (see "COPY, Binary Format" in the Postgres manual): an 11-byte
//! signature, int32 flags and int32 header-extension length; then per tuple an
//! int16 field count and per field an int32 length (-1 for null) followed by the
//! value in the type's binary send format, big-endian; then an int16 -1 trailer.
//!
//! Each row is encoded once per batch. The stream remembers where each row's tuple
//! starts, so that the batch can be sent again without some rows (after Postgres
//! refused one) by copying byte ranges, never by encoding again.

use std::fmt;

use crate::numeric;
use sluice_plugin_sdk::rows::{DecodeError, RowBatch, RowReader, Value};
use sluice_plugin_sdk::{Column, ColumnType, RowRejection};

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Signature, flags (no OIDs) and an empty header extension.
const HEADER: [u8; 19] = {
    let mut header = [0u8; 19];
    let mut i = 0;
    while i < SIGNATURE.len() {
        header[i] = SIGNATURE[i];
        i += 1;
    }
    header
};
const TRAILER: [u8; 2] = (-1i16).to_be_bytes();
const NULL: [u8; 4] = (-1i32).to_be_bytes();

/// 1970-01-01 to 2000-01-01 (Postgres's epoch), in microseconds and in days.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;
const POSTGRES_EPOCH_DAYS: i32 = 10_957;
const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Postgres refuses a field longer than 1 GB; refusing it here names the row.
const FIELD_MAX_BYTES: usize = (1 << 30) - 1;
/// `jsonb`'s binary format: a version byte, then the JSON text.
const JSONB_VERSION: u8 = 1;

/// Why one value of a row cannot be put in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unencodable {
    Numeric(numeric::NumericError),
    TimeOutOfRange,
    TooLong(usize),
}

impl fmt::Display for Unencodable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unencodable::Numeric(e) => e.fmt(f),
            Unencodable::TimeOutOfRange => f.write_str("out of range for Postgres"),
            Unencodable::TooLong(n) => {
                write!(f, "{n} bytes long, over Postgres's 1 GB limit for a value")
            }
        }
    }
}

/// The binary `COPY` stream of one batch, with its buffers kept for the next one.
#[derive(Debug, Default)]
pub struct CopyStream {
    /// Header, every encoded tuple, trailer.
    buf: Vec<u8>,
    /// Where each tuple starts in `buf`, then where the trailer starts.
    starts: Vec<usize>,
    /// For each tuple, the index of its row in the batch.
    rows: Vec<u32>,
    /// A stream of some of the tuples only (see [`CopyStream::stream`]).
    subset: Vec<u8>,
    /// The column whose time each tuple records in `points` (the partition
    /// column), if any.
    point_column: Option<usize>,
    /// For each tuple, the time in `point_column` in µs since the epoch (a date
    /// at its midnight UTC; `i64::MIN` for a null).
    points: Vec<i64>,
}

impl CopyStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty stream that records, for each tuple, the time in column `column`
    /// (see [`CopyStream::point`]).
    pub fn with_points(column: usize) -> Self {
        CopyStream {
            point_column: Some(column),
            ..Self::default()
        }
    }

    /// Encodes every row of `batch`, replacing what the stream held. A row with a
    /// value Postgres could not take (a malformed numeric, for one) is left out
    /// and added to `rejections`. Fails when the batch itself is malformed.
    pub fn encode(
        &mut self,
        columns: &[Column],
        types: &[ColumnType],
        batch: &RowBatch,
        rejections: &mut Vec<RowRejection>,
    ) -> Result<(), DecodeError> {
        let count = batch.count as usize;
        self.buf.clear();
        self.starts.clear();
        self.rows.clear();
        self.points.clear();
        self.buf.reserve(
            HEADER.len() + batch.data.len() + count * tuple_overhead(types) + TRAILER.len(),
        );
        self.starts.reserve(count + 1);
        self.rows.reserve(count);
        self.buf.extend_from_slice(&HEADER);

        // `RowReader` stops at the first value it finds invalid. When only the
        // value's content is wrong (a numeric that is not a decimal literal, text
        // that is not UTF-8) the row's bounds are intact: reject that row and read
        // on from the next one, so that one bad row never fails its batch.
        let mut offset = 0; // where in `batch.data` the reader starts
        let mut first = 0; // the batch index of its first row
        while let Some(bad) = self.encode_rows(columns, types, batch, offset, first, rejections) {
            let (mut error, start) = bad;
            error.row += first;
            let len = error
                .column
                .and_then(|_| row_len(types, &batch.data[start..]))
                .ok_or_else(|| error.clone())?;
            let column = &columns[error.column.unwrap_or_default()].name;
            rejections.push(RowRejection {
                row: error.row,
                reason: format!("column {column}: {}", error.reason),
            });
            offset = start + len;
            first = error.row + 1;
        }
        self.starts.push(self.buf.len());
        self.buf.extend_from_slice(&TRAILER);
        Ok(())
    }

    /// Encodes the rows of `batch` from byte `offset` on, the first being row
    /// `first` of the batch. Stops at the first decoding error: returns it (its
    /// row relative to `first`) and where the failing row starts.
    fn encode_rows(
        &mut self,
        columns: &[Column],
        types: &[ColumnType],
        batch: &RowBatch,
        offset: usize,
        first: u32,
        rejections: &mut Vec<RowRejection>,
    ) -> Option<(DecodeError, usize)> {
        let field_count = (types.len() as i16).to_be_bytes();
        let mut at = offset;
        for row in RowReader::from_parts(types, &batch.data[offset..], batch.count - first) {
            let row = match row {
                Ok(row) => row,
                Err(error) => return Some((error, at)),
            };
            at += row.raw().len();
            let index = first + row.index();
            let start = self.buf.len();
            self.buf.extend_from_slice(&field_count);
            let mut refused = None;
            let mut point = i64::MIN;
            for (column, value) in row.iter().enumerate() {
                if Some(column) == self.point_column {
                    point = match value {
                        Value::Timestamp(micros) => micros,
                        Value::Date(days) => i64::from(days) * MICROS_PER_DAY,
                        _ => i64::MIN,
                    };
                }
                if let Err(why) = push_value(&mut self.buf, value) {
                    refused = Some((column, why, value));
                    break;
                }
            }
            match refused {
                None => {
                    self.starts.push(start);
                    self.rows.push(index);
                    if self.point_column.is_some() {
                        self.points.push(point);
                    }
                }
                Some((column, why, value)) => {
                    self.buf.truncate(start);
                    rejections.push(RowRejection {
                        row: index,
                        reason: refusal(&columns[column], value, &why),
                    });
                }
            }
        }
        None
    }

    /// How many rows were encoded.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// The index in the batch of the row encoded as tuple `tuple`.
    pub fn row(&self, tuple: u32) -> u32 {
        self.rows[tuple as usize]
    }

    /// The time the tuple `tuple` holds in the point column (µs since the epoch).
    /// Only for a stream made [`with_points`](CopyStream::with_points).
    pub fn point(&self, tuple: u32) -> i64 {
        self.points[tuple as usize]
    }

    /// Leaves out the tuples for which `keep` (given the tuple) is false, as if
    /// they had never been encoded.
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        let mut buf = Vec::with_capacity(self.buf.len());
        buf.extend_from_slice(&HEADER);
        let mut kept = 0;
        for tuple in 0..self.len() {
            if !keep(tuple as u32) {
                continue;
            }
            let (from, to) = (self.starts[tuple], self.starts[tuple + 1]);
            self.starts[kept] = buf.len();
            buf.extend_from_slice(&self.buf[from..to]);
            self.rows[kept] = self.rows[tuple];
            if self.point_column.is_some() {
                self.points[kept] = self.points[tuple];
            }
            kept += 1;
        }
        self.starts.truncate(kept);
        self.starts.push(buf.len());
        buf.extend_from_slice(&TRAILER);
        self.rows.truncate(kept);
        self.points.truncate(kept.min(self.points.len()));
        self.buf = buf;
    }

    /// A complete stream of the given tuples. `tuples` must be increasing; all of
    /// them is the stream as encoded, with nothing copied.
    pub fn stream(&mut self, tuples: &[u32]) -> &[u8] {
        if tuples.len() == self.len() {
            // Increasing and as many as there are: every tuple, in order.
            return &self.buf;
        }
        self.subset.clear();
        self.subset.extend_from_slice(&HEADER);
        // Copy runs of consecutive tuples in one go: after a rejection, that is
        // the rows before it and the rows after it.
        let mut i = 0;
        while i < tuples.len() {
            let first = tuples[i] as usize;
            let mut last = first;
            while i + 1 < tuples.len() && tuples[i + 1] as usize == last + 1 {
                i += 1;
                last += 1;
            }
            self.subset
                .extend_from_slice(&self.buf[self.starts[first]..self.starts[last + 1]]);
            i += 1;
        }
        self.subset.extend_from_slice(&TRAILER);
        &self.subset
    }
}

/// The length of the row at the start of `data`, from its tags and lengths only
/// (not whether its values are valid); `None` when the data ends first.
fn row_len(types: &[ColumnType], data: &[u8]) -> Option<usize> {
    let mut at = 0;
    for ty in types {
        let tag = *data.get(at)?;
        at += 1;
        match tag {
            0 => continue,
            1 => {}
            // Not a value at all: the bounds of the row are lost.
            _ => return None,
        }
        at += match ty {
            ColumnType::Boolean => 1,
            ColumnType::Int32 | ColumnType::Date => 4,
            ColumnType::Int64 | ColumnType::Timestamp | ColumnType::Float64 => 8,
            ColumnType::Uuid => 16,
            ColumnType::Numeric | ColumnType::Text | ColumnType::Json | ColumnType::Bytes => {
                let len = u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
                4 + len
            }
        };
    }
    (at <= data.len()).then_some(at)
}

/// An upper estimate of how much longer a row gets as a COPY tuple than in the
/// batch: fixed-size values trade a 1-byte tag for a 4-byte length, variable ones
/// a 4-byte length for another, numerics grow from text to binary.
fn tuple_overhead(types: &[ColumnType]) -> usize {
    2 + types
        .iter()
        .map(|ty| match ty {
            ColumnType::Numeric => 3 + 8,
            ColumnType::Json => 1,
            _ => 3,
        })
        .sum::<usize>()
}

fn push_len(buf: &mut Vec<u8>, len: usize) {
    buf.extend_from_slice(&(len as i32).to_be_bytes());
}

fn push_fixed(buf: &mut Vec<u8>, bytes: &[u8]) {
    push_len(buf, bytes.len());
    buf.extend_from_slice(bytes);
}

/// Appends one field. On error, whatever was appended is the caller's to remove.
fn push_value(buf: &mut Vec<u8>, value: Value<'_>) -> Result<(), Unencodable> {
    match value {
        Value::Null => buf.extend_from_slice(&NULL),
        Value::Boolean(v) => push_fixed(buf, &[u8::from(v)]),
        Value::Int32(v) => push_fixed(buf, &v.to_be_bytes()),
        Value::Int64(v) => push_fixed(buf, &v.to_be_bytes()),
        Value::Float64(v) => push_fixed(buf, &v.to_bits().to_be_bytes()),
        Value::Timestamp(micros) => {
            let v = micros
                .checked_sub(POSTGRES_EPOCH_MICROS)
                .ok_or(Unencodable::TimeOutOfRange)?;
            push_fixed(buf, &v.to_be_bytes());
        }
        Value::Date(days) => {
            let v = days
                .checked_sub(POSTGRES_EPOCH_DAYS)
                .ok_or(Unencodable::TimeOutOfRange)?;
            push_fixed(buf, &v.to_be_bytes());
        }
        Value::Uuid(bytes) => push_fixed(buf, &bytes),
        Value::Text(text) => push_bytes(buf, text.as_bytes())?,
        Value::Bytes(bytes) => push_bytes(buf, bytes)?,
        Value::Json(text) => {
            if text.len() >= FIELD_MAX_BYTES {
                return Err(Unencodable::TooLong(text.len()));
            }
            push_len(buf, text.len() + 1);
            buf.push(JSONB_VERSION);
            buf.extend_from_slice(text.as_bytes());
        }
        Value::Numeric(text) => {
            // The length is known only once the digits are written.
            let at = buf.len();
            buf.extend_from_slice(&[0; 4]);
            numeric::encode(text, buf).map_err(Unencodable::Numeric)?;
            let len = (buf.len() - at - 4) as i32;
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
    Ok(())
}

fn push_bytes(buf: &mut Vec<u8>, bytes: &[u8]) -> Result<(), Unencodable> {
    if bytes.len() > FIELD_MAX_BYTES {
        return Err(Unencodable::TooLong(bytes.len()));
    }
    push_fixed(buf, bytes);
    Ok(())
}

/// The rejection reason for a row whose value in `column` cannot be encoded.
fn refusal(column: &Column, value: Value<'_>, why: &Unencodable) -> String {
    match value {
        Value::Numeric(text) => format!("column {}: {:?} is {why}", column.name, shorten(text, 40)),
        Value::Timestamp(v) => format!("column {}: timestamp {v} µs is {why}", column.name),
        Value::Date(v) => format!("column {}: date {v} days is {why}", column.name),
        _ => format!("column {}: value is {why}", column.name),
    }
}

/// At most `max` characters of `text`, marked when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encodes rows in Sluice's row encoding (types.wit, `row-batch`), independently
    /// of the SDK, so that these tests check the SDK's reader too.
    pub(crate) fn batch(rows: &[Vec<Value<'_>>]) -> RowBatch {
        let mut data = Vec::new();
        for row in rows {
            for value in row {
                let lp = |data: &mut Vec<u8>, b: &[u8]| {
                    data.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    data.extend_from_slice(b);
                };
                if matches!(value, Value::Null) {
                    data.push(0);
                    continue;
                }
                data.push(1);
                match *value {
                    Value::Null => unreachable!(),
                    Value::Boolean(v) => data.push(v.into()),
                    Value::Int32(v) | Value::Date(v) => data.extend_from_slice(&v.to_le_bytes()),
                    Value::Int64(v) | Value::Timestamp(v) => {
                        data.extend_from_slice(&v.to_le_bytes())
                    }
                    Value::Float64(v) => data.extend_from_slice(&v.to_le_bytes()),
                    Value::Uuid(v) => data.extend_from_slice(&v),
                    Value::Numeric(s) | Value::Text(s) | Value::Json(s) => {
                        lp(&mut data, s.as_bytes())
                    }
                    Value::Bytes(b) => lp(&mut data, b),
                }
            }
        }
        RowBatch {
            count: rows.len() as u32,
            data,
        }
    }

    pub(crate) fn columns(types: &[ColumnType]) -> Vec<Column> {
        types
            .iter()
            .enumerate()
            .map(|(i, ty)| Column {
                name: format!("c{i}"),
                ty: *ty,
                nullable: i > 0,
                key: i == 0,
            })
            .collect()
    }

    fn encode(types: &[ColumnType], rows: &[Vec<Value<'_>>]) -> (CopyStream, Vec<RowRejection>) {
        let mut stream = CopyStream::new();
        let mut rejections = Vec::new();
        stream
            .encode(&columns(types), types, &batch(rows), &mut rejections)
            .unwrap();
        (stream, rejections)
    }

    /// Reads a stream back: per tuple, per field, the raw value (None for null).
    fn parse(stream: &[u8]) -> Vec<Vec<Option<Vec<u8>>>> {
        assert_eq!(&stream[..19], b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0");
        let mut at = 19;
        let mut tuples = Vec::new();
        loop {
            let fields = i16::from_be_bytes([stream[at], stream[at + 1]]);
            at += 2;
            if fields == -1 {
                assert_eq!(at, stream.len(), "bytes after the trailer");
                return tuples;
            }
            let mut tuple = Vec::new();
            for _ in 0..fields {
                let len = i32::from_be_bytes(stream[at..at + 4].try_into().unwrap());
                at += 4;
                if len < 0 {
                    tuple.push(None);
                } else {
                    tuple.push(Some(stream[at..at + len as usize].to_vec()));
                    at += len as usize;
                }
            }
            tuples.push(tuple);
        }
    }

    #[test]
    fn empty_batch_is_header_and_trailer() {
        let (mut stream, rejections) = encode(&[ColumnType::Int64], &[]);
        assert!(rejections.is_empty());
        assert_eq!(
            stream.stream(&[]),
            b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0\xff\xff"
        );
    }

    #[test]
    fn encodes_every_type_in_postgres_binary_format() {
        let types = [
            ColumnType::Boolean,
            ColumnType::Int32,
            ColumnType::Int64,
            ColumnType::Float64,
            ColumnType::Numeric,
            ColumnType::Text,
            ColumnType::Bytes,
            ColumnType::Timestamp,
            ColumnType::Date,
            ColumnType::Uuid,
            ColumnType::Json,
        ];
        let uuid: [u8; 16] = core::array::from_fn(|i| i as u8);
        let row = vec![
            Value::Boolean(true),
            Value::Int32(-2),
            Value::Int64(0x0102_0304_0506_0708),
            Value::Float64(1.5),
            Value::Numeric("-12.340"),
            Value::Text("héllo"),
            Value::Bytes(&[0, 255]),
            // 2000-01-01T00:00:01Z: one second after Postgres's epoch.
            Value::Timestamp(946_684_801_000_000),
            // 1999-12-31: the day before Postgres's epoch.
            Value::Date(10_956),
            Value::Uuid(uuid),
            Value::Json(r#"{"a":1}"#),
        ];
        let (mut stream, rejections) = encode(&types, &[row]);
        assert!(rejections.is_empty());
        let tuples = parse(stream.stream(&[0]));
        let fields: Vec<Vec<u8>> = tuples[0].iter().map(|f| f.clone().unwrap()).collect();
        assert_eq!(fields[0], [1]);
        assert_eq!(fields[1], (-2i32).to_be_bytes());
        assert_eq!(fields[2], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(fields[3], [0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
        assert_eq!(fields[4], [0, 2, 0, 0, 0x40, 0, 0, 3, 0, 12, 0x0d, 0x48]);
        assert_eq!(fields[5], "héllo".as_bytes());
        assert_eq!(fields[6], [0, 255]);
        assert_eq!(fields[7], 1_000_000i64.to_be_bytes());
        assert_eq!(fields[8], (-1i32).to_be_bytes());
        assert_eq!(fields[9], uuid);
        assert_eq!(fields[10], b"\x01{\"a\":1}");
    }

    #[test]
    fn nulls_have_length_minus_one() {
        let types = [ColumnType::Int64, ColumnType::Text, ColumnType::Numeric];
        let (mut stream, _) = encode(&types, &[vec![Value::Int64(1), Value::Null, Value::Null]]);
        assert_eq!(
            parse(stream.stream(&[0])),
            [vec![Some(1i64.to_be_bytes().to_vec()), None, None]]
        );
    }

    #[test]
    fn rows_that_cannot_be_encoded_are_rejected_and_left_out() {
        let types = [ColumnType::Int64, ColumnType::Numeric, ColumnType::Text];
        let rows: Vec<Vec<Value>> = vec![
            vec![Value::Int64(0), Value::Numeric("1"), Value::Text("a")],
            vec![Value::Int64(1), Value::Numeric("1,5"), Value::Text("b")],
            vec![Value::Int64(2), Value::Numeric("2"), Value::Text("c")],
            vec![
                Value::Int64(3),
                Value::Numeric("x".repeat(100).leak()),
                Value::Text("d"),
            ],
        ];
        let (mut stream, rejections) = encode(&types, &rows);
        assert_eq!(rejections.len(), 2);
        assert_eq!(rejections[0].row, 1);
        assert_eq!(
            rejections[0].reason,
            r#"column c1: invalid numeric literal "1,5""#
        );
        assert_eq!(rejections[1].row, 3);
        assert!(
            rejections[1]
                .reason
                .starts_with(r#"column c1: invalid numeric literal "xxx"#),
            "{}",
            rejections[1].reason
        );
        assert_eq!((stream.len(), stream.row(0), stream.row(1)), (2, 0, 2));
        let keys: Vec<_> = parse(stream.stream(&[0, 1]))
            .into_iter()
            .map(|t| t[0].clone().unwrap())
            .collect();
        assert_eq!(keys, [0i64.to_be_bytes(), 2i64.to_be_bytes()]);
    }

    #[test]
    fn rows_with_invalid_content_are_rejected_and_reading_goes_on() {
        let types = [ColumnType::Int32, ColumnType::Boolean, ColumnType::Numeric];
        let rows = [
            vec![Value::Int32(0), Value::Boolean(true), Value::Numeric("1")],
            vec![Value::Int32(1), Value::Boolean(true), Value::Numeric("NaN")],
            vec![
                Value::Int32(2),
                Value::Boolean(true),
                Value::Numeric("nope"),
            ],
            vec![Value::Int32(3), Value::Boolean(true), Value::Null],
            vec![
                Value::Int32(4),
                Value::Boolean(true),
                Value::Numeric("1e999999999"),
            ],
        ];
        let mut b = batch(&rows);
        // Row 3's boolean byte (after the int32 and the boolean's tag) is 7: its
        // content is wrong, its bounds are not.
        let row3 = batch(&rows[..3]).data.len();
        b.data[row3 + 6] = 7;
        let mut stream = CopyStream::new();
        let mut rejections = Vec::new();
        stream
            .encode(&columns(&types), &types, &b, &mut rejections)
            .unwrap();
        let rejected: Vec<_> = rejections
            .iter()
            .map(|r| (r.row, r.reason.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [
                (1, r#"column c2: invalid numeric literal "NaN""#),
                (2, r#"column c2: invalid numeric literal "nope""#),
                (3, "column c1: invalid boolean byte 7 (expected 0 or 1)"),
                (
                    4,
                    r#"column c2: "1e999999999" is out of range for Postgres numeric"#
                ),
            ]
        );
        assert_eq!((stream.len(), stream.row(0)), (1, 0));
    }

    #[test]
    fn a_batch_whose_row_bounds_are_lost_is_malformed() {
        let types = [ColumnType::Int32, ColumnType::Text];
        let good = batch(&[
            vec![Value::Int32(1), Value::Text("a")],
            vec![Value::Int32(2), Value::Text("b")],
        ]);
        let mut stream = CopyStream::new();
        let cols = columns(&types);
        // Cut short.
        let cut = RowBatch {
            count: 2,
            data: good.data[..good.data.len() - 1].to_vec(),
        };
        assert_eq!(
            stream
                .encode(&cols, &types, &cut, &mut Vec::new())
                .unwrap_err()
                .row,
            1
        );
        // An invalid tag.
        let mut tagged = good.clone();
        tagged.data[5] = 9;
        assert!(
            stream
                .encode(&cols, &types, &tagged, &mut Vec::new())
                .is_err()
        );
        // Bytes after the last row.
        let mut long = good.clone();
        long.data.push(0);
        assert!(
            stream
                .encode(&cols, &types, &long, &mut Vec::new())
                .is_err()
        );
        // A row that is wrong in content, then one cut short: the error names the
        // second, by its index in the batch.
        let mut both = batch(&[
            vec![Value::Int32(1), Value::Text("a")],
            vec![Value::Int32(2), Value::Text("b")],
        ]);
        both.data[1..5].copy_from_slice(&1i32.to_le_bytes());
        both.data[6..10].copy_from_slice(&1u32.to_le_bytes());
        both.data[10] = 0xff; // not UTF-8
        both.data.pop();
        let mut rejections = Vec::new();
        let error = stream
            .encode(&cols, &types, &both, &mut rejections)
            .unwrap_err();
        assert_eq!((error.row, rejections.len()), (1, 1));
    }

    #[test]
    fn out_of_range_times_are_rejected() {
        let types = [ColumnType::Timestamp, ColumnType::Date];
        let (stream, rejections) = encode(
            &types,
            &[
                vec![Value::Timestamp(i64::MIN), Value::Null],
                vec![Value::Null, Value::Date(i32::MIN)],
            ],
        );
        assert_eq!(stream.len(), 0);
        assert_eq!(rejections.iter().map(|r| r.row).collect::<Vec<_>>(), [0, 1]);
        assert!(
            rejections[1].reason.starts_with("column c1: date"),
            "{}",
            rejections[1].reason
        );
    }

    #[test]
    fn subsets_copy_the_chosen_tuples_in_order() {
        let types = [ColumnType::Int32, ColumnType::Text];
        let rows: Vec<Vec<Value>> = (0..6)
            .map(|i| vec![Value::Int32(i), Value::Text(["x", "yy"][i as usize % 2])])
            .collect();
        let (mut stream, _) = encode(&types, &rows);
        let keys = |s: &[u8]| -> Vec<i32> {
            parse(s)
                .iter()
                .map(|t| i32::from_be_bytes(t[0].clone().unwrap().try_into().unwrap()))
                .collect()
        };
        assert_eq!(keys(stream.stream(&[0, 1, 2, 3, 4, 5])), [0, 1, 2, 3, 4, 5]);
        assert_eq!(keys(stream.stream(&[0, 1, 3, 4, 5])), [0, 1, 3, 4, 5]);
        assert_eq!(keys(stream.stream(&[5])), [5]);
        assert_eq!(keys(stream.stream(&[0, 2, 4])), [0, 2, 4]);
        assert_eq!(keys(stream.stream(&[])), Vec::<i32>::new());
    }

    #[test]
    fn points_are_recorded_and_retain_leaves_tuples_out() {
        let types = [ColumnType::Int32, ColumnType::Timestamp, ColumnType::Date];
        let rows: Vec<Vec<Value>> = (0..5)
            .map(|i| {
                vec![
                    Value::Int32(i),
                    Value::Timestamp(i64::from(i) * 1_000),
                    Value::Date(i),
                ]
            })
            .collect();
        let cols = columns(&types);
        let mut rejections = Vec::new();
        let mut by_time = CopyStream::with_points(1);
        by_time
            .encode(&cols, &types, &batch(&rows), &mut rejections)
            .unwrap();
        assert_eq!(
            (0..5).map(|t| by_time.point(t)).collect::<Vec<_>>(),
            [0, 1_000, 2_000, 3_000, 4_000]
        );
        let mut by_date = CopyStream::with_points(2);
        by_date
            .encode(&cols, &types, &batch(&rows), &mut rejections)
            .unwrap();
        assert_eq!(by_date.point(3), 3 * MICROS_PER_DAY);

        by_time.retain(|t| t % 2 == 0);
        assert_eq!(by_time.len(), 3);
        assert_eq!(
            (0..3).map(|t| by_time.row(t)).collect::<Vec<_>>(),
            [0, 2, 4]
        );
        assert_eq!(
            (0..3).map(|t| by_time.point(t)).collect::<Vec<_>>(),
            [0, 2_000, 4_000]
        );
        let keys: Vec<i32> = parse(by_time.stream(&[0, 1, 2]))
            .iter()
            .map(|t| i32::from_be_bytes(t[0].clone().unwrap().try_into().unwrap()))
            .collect();
        assert_eq!(keys, [0, 2, 4]);
        assert_eq!(parse(by_time.stream(&[1])).len(), 1);
        assert!(rejections.is_empty());
    }

    #[test]
    fn buffers_are_reused_without_leftovers() {
        let types = [ColumnType::Int32];
        let mut stream = CopyStream::new();
        let mut rejections = Vec::new();
        let cols = columns(&types);
        let big: Vec<Vec<Value>> = (0..100).map(|i| vec![Value::Int32(i)]).collect();
        stream
            .encode(&cols, &types, &batch(&big), &mut rejections)
            .unwrap();
        let capacity = stream.buf.capacity();
        stream
            .encode(
                &cols,
                &types,
                &batch(&[vec![Value::Int32(7)]]),
                &mut rejections,
            )
            .unwrap();
        assert_eq!(stream.buf.capacity(), capacity);
        assert_eq!(
            parse(stream.stream(&[0])),
            [vec![Some(7i32.to_be_bytes().to_vec())]]
        );
    }

    #[test]
    fn reserve_estimate_covers_the_encoded_size() {
        // The estimate should make one allocation enough.
        let types = [
            ColumnType::Int64,
            ColumnType::Numeric,
            ColumnType::Json,
            ColumnType::Boolean,
            ColumnType::Text,
        ];
        let rows: Vec<Vec<Value>> = (0..1000)
            .map(|i| {
                vec![
                    Value::Int64(i),
                    Value::Numeric("123456.789"),
                    Value::Json("{}"),
                    Value::Null,
                    Value::Text("t"),
                ]
            })
            .collect();
        let b = batch(&rows);
        let estimate = 19 + b.data.len() + 1000 * tuple_overhead(&types) + 2;
        let (stream, _) = encode(&types, &rows);
        assert!(
            stream.buf.len() <= estimate,
            "{} > {estimate}",
            stream.buf.len()
        );
    }
}
