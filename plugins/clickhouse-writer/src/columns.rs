//! How each column type of a Sluice schema is stored in ClickHouse, for the
//! server's version, and the rows as one `RowBinary` body.
//!
//! | Sluice      | ClickHouse ≥ 20.1 / ≥ 21.9 | older servers (18.16 ...)        | RowBinary value            |
//! |-------------|----------------------------|----------------------------------|----------------------------|
//! | boolean     | `UInt8` (0, 1)             | `UInt8`                          | 1 byte                     |
//! | int32       | `Int32`                    | `Int32`                          | 4 bytes LE                 |
//! | int64       | `Int64`                    | `Int64`                          | 8 bytes LE                 |
//! | float64     | `Float64`                  | `Float64`                        | 8 bytes LE IEEE 754        |
//! | numeric     | `String` (the literal)     | `String`                         | length + UTF-8             |
//! | text, json  | `String`                   | `String`                         | length + UTF-8             |
//! | bytes       | `String` (raw bytes)       | `String`                         | length + bytes             |
//! | timestamp   | `DateTime64(6, 'UTC')`     | `Int64` µs since 1970-01-01 UTC  | 8 bytes LE (µs either way) |
//! | date        | `Date32` (≥ 21.9)          | `Int32` days since 1970-01-01    | 4 bytes LE (days)          |
//! | uuid        | `UUID`                     | `UUID`                           | two 8-byte LE halves       |
//!
//! A nullable column is `Nullable(T)`; key columns never are. Every mapping is
//! lossless: values go over in binary, numeric literals stay text (a `Decimal`
//! has a fixed scale and precision, a literal has neither), and a timestamp or a
//! date outside what `DateTime64` or `Date32` can hold is rejected as a row, never
//! clamped. Read an `Int64` timestamp as `fromUnixTimestamp64Micro(col)` (on newer
//! servers) or `toDateTime(intDiv(col, 1000000))`.

use sluice_plugin_sdk::rows::Value;
use sluice_plugin_sdk::{Column, ColumnType};

/// The server's version, and what it supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major version (e.g. 18 for 18.16.1).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
}

impl Version {
    /// Parses `SELECT version()`'s answer (`18.16.1`, `24.3.2.23`).
    pub fn parse(text: &str) -> Option<Version> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Version { major, minor })
    }

    fn at_least(self, major: u32, minor: u32) -> bool {
        self >= Version { major, minor }
    }

    /// `DateTime64` exists (20.1).
    pub fn has_datetime64(self) -> bool {
        self.at_least(20, 1)
    }

    /// `Date32` exists (21.9).
    pub fn has_date32(self) -> bool {
        self.at_least(21, 9)
    }

    /// The days (since 1970-01-01) that `DateTime64` and `Date32` hold: 1900 to
    /// 2299 from 22.8, 1925 to 2283-11-11 before.
    fn day_range(self) -> (i64, i64) {
        if self.at_least(22, 8) {
            (days_from_civil(1900, 1, 1), days_from_civil(2299, 12, 31))
        } else {
            (days_from_civil(1925, 1, 1), days_from_civil(2283, 11, 11))
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The ClickHouse type of a column, as `system.columns` prints it.
pub fn clickhouse_type(column: &Column, version: Version) -> String {
    let base = match column.ty {
        ColumnType::Boolean => "UInt8",
        ColumnType::Int32 => "Int32",
        ColumnType::Int64 => "Int64",
        ColumnType::Float64 => "Float64",
        ColumnType::Numeric | ColumnType::Text | ColumnType::Bytes | ColumnType::Json => "String",
        ColumnType::Timestamp if version.has_datetime64() => "DateTime64(6, 'UTC')",
        ColumnType::Timestamp => "Int64",
        ColumnType::Date if version.has_date32() => "Date32",
        ColumnType::Date => "Int32",
        ColumnType::Uuid => "UUID",
    };
    if column.nullable && !column.key {
        format!("Nullable({base})")
    } else {
        base.to_owned()
    }
}

/// Appends rows to a `RowBinary` body, checking what ClickHouse cannot hold.
pub struct Encoder {
    /// Which columns are nullable (a null flag precedes their value).
    nullable: Vec<bool>,
    /// Days outside this range are refused for timestamps and dates, when the
    /// server stores them as `DateTime64` or `Date32`.
    timestamp_days: Option<(i64, i64)>,
    date_days: Option<(i64, i64)>,
}

impl Encoder {
    /// An encoder for `columns` on a server of `version`.
    pub fn new(columns: &[Column], version: Version) -> Encoder {
        let range = version.day_range();
        Encoder {
            nullable: columns.iter().map(|c| c.nullable && !c.key).collect(),
            timestamp_days: version.has_datetime64().then_some(range),
            date_days: version.has_date32().then_some(range),
        }
    }

    /// Appends one row; on `Err` (a value ClickHouse cannot hold, or a null in a
    /// non-nullable column) `out` is left as it was.
    pub fn row(&self, values: &[Value<'_>], out: &mut Vec<u8>) -> Result<(), String> {
        let start = out.len();
        let result = self.row_inner(values, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn row_inner(&self, values: &[Value<'_>], out: &mut Vec<u8>) -> Result<(), String> {
        for (i, value) in values.iter().enumerate() {
            let nullable = self.nullable.get(i).copied().unwrap_or(false);
            if nullable {
                out.push(u8::from(value.is_null()));
            }
            match *value {
                Value::Null if nullable => {}
                Value::Null => return Err(format!("column {i}: null in a non-nullable column")),
                Value::Boolean(v) => out.push(u8::from(v)),
                Value::Int32(v) => out.extend_from_slice(&v.to_le_bytes()),
                Value::Int64(v) => out.extend_from_slice(&v.to_le_bytes()),
                Value::Float64(v) => out.extend_from_slice(&v.to_le_bytes()),
                Value::Numeric(v) | Value::Text(v) | Value::Json(v) => string(v.as_bytes(), out),
                Value::Bytes(v) => string(v, out),
                Value::Timestamp(micros) => {
                    if let Some((min, max)) = self.timestamp_days {
                        let day = micros.div_euclid(86_400_000_000);
                        if day < min || day > max {
                            return Err(format!(
                                "column {i}: timestamp {micros} µs since the epoch is outside what DateTime64 holds"
                            ));
                        }
                    }
                    out.extend_from_slice(&micros.to_le_bytes());
                }
                Value::Date(days) => {
                    if let Some((min, max)) = self.date_days
                        && (i64::from(days) < min || i64::from(days) > max)
                    {
                        return Err(format!(
                            "column {i}: date {days} days since the epoch is outside what Date32 holds"
                        ));
                    }
                    out.extend_from_slice(&days.to_le_bytes());
                }
                Value::Uuid(bytes) => {
                    // ClickHouse keeps a UUID as two 64-bit halves, each little-endian.
                    let (high, low) = bytes.split_at(8);
                    let high = u64::from_be_bytes(high.try_into().expect("8 bytes"));
                    let low = u64::from_be_bytes(low.try_into().expect("8 bytes"));
                    out.extend_from_slice(&high.to_le_bytes());
                    out.extend_from_slice(&low.to_le_bytes());
                }
            }
        }
        Ok(())
    }
}

/// A `String` value: its length as a LEB128 varint, then its bytes.
fn string(bytes: &[u8], out: &mut Vec<u8>) {
    let mut n = bytes.len() as u64;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(bytes);
}

use sluice_plugin_sdk::time::days_from_civil;

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: Version = Version {
        major: 18,
        minor: 16,
    };
    const NEW: Version = Version {
        major: 24,
        minor: 3,
    };

    fn column(ty: ColumnType, nullable: bool, key: bool) -> Column {
        Column {
            name: "c".into(),
            ty,
            nullable,
            key,
        }
    }

    #[test]
    fn versions() {
        assert_eq!(Version::parse("18.16.1\n"), Some(OLD));
        assert_eq!(Version::parse("24.3.2.23"), Some(NEW));
        assert_eq!(Version::parse("x"), None);
        assert!(!OLD.has_datetime64() && !OLD.has_date32());
        assert!(NEW.has_datetime64() && NEW.has_date32());
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn types() {
        let ts = column(ColumnType::Timestamp, true, false);
        assert_eq!(clickhouse_type(&ts, OLD), "Nullable(Int64)");
        assert_eq!(clickhouse_type(&ts, NEW), "Nullable(DateTime64(6, 'UTC'))");
        let date = column(ColumnType::Date, false, true);
        assert_eq!(clickhouse_type(&date, OLD), "Int32");
        assert_eq!(clickhouse_type(&date, NEW), "Date32");
        assert_eq!(
            clickhouse_type(&column(ColumnType::Numeric, true, false), NEW),
            "Nullable(String)"
        );
        assert_eq!(
            clickhouse_type(&column(ColumnType::Uuid, false, true), OLD),
            "UUID"
        );
    }

    #[test]
    fn row_binary() {
        let columns = [
            column(ColumnType::Text, false, true),
            column(ColumnType::Int32, true, false),
            column(ColumnType::Uuid, false, false),
        ];
        let encoder = Encoder::new(&columns, OLD);
        let mut out = Vec::new();
        let mut uuid = [0u8; 16];
        uuid[7] = 1;
        uuid[15] = 2;
        encoder
            .row(
                &[Value::Text("ab"), Value::Null, Value::Uuid(uuid)],
                &mut out,
            )
            .unwrap();
        let mut expected = vec![2, b'a', b'b', 1];
        expected.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(out, expected);
        let mut long = Vec::new();
        string(&[b'x'; 300], &mut long);
        assert_eq!(&long[..2], &[0xac, 0x02]);
    }

    #[test]
    fn out_of_range_timestamps_are_refused_only_for_datetime64() {
        let columns = [column(ColumnType::Timestamp, false, true)];
        let far = Value::Timestamp(days_from_civil(2400, 1, 1) * 86_400_000_000);
        let mut out = vec![9];
        assert!(Encoder::new(&columns, NEW).row(&[far], &mut out).is_err());
        assert_eq!(out, [9], "a refused row leaves nothing behind");
        Encoder::new(&columns, OLD).row(&[far], &mut out).unwrap();
        assert_eq!(out.len(), 9);
    }
}
