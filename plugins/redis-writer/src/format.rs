//! Values as the bytes Redis stores (Redis strings are binary-safe).
//!
//! | Sluice    | stored as                                                  |
//! |-----------|------------------------------------------------------------|
//! | boolean   | `true` / `false`                                           |
//! | int32/64  | decimal, `-42`                                             |
//! | float64   | the shortest text that reads back to the same double (`0.1`, `1e300`, `NaN`, `inf`) |
//! | numeric   | the decimal literal as the source gave it (`12.340`)      |
//! | text/json | the text                                                   |
//! | bytes     | the bytes, unchanged                                       |
//! | timestamp | RFC 3339 UTC with microseconds, `2026-11-27T10:00:01.000000Z` |
//! | date      | `2026-11-27`                                               |
//! | uuid      | `0d2d8a3c-1111-4222-8333-444455556666`                     |

use std::io::Write;

use sluice_plugin_sdk::rows::Value;

/// Appends `value`'s stored form to `out` (nothing for a null).
pub fn value(value: &Value<'_>, out: &mut Vec<u8>) {
    match *value {
        Value::Null => {}
        Value::Boolean(v) => out.extend_from_slice(if v { b"true" } else { b"false" }),
        Value::Int32(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Int64(v) => {
            let _ = write!(out, "{v}");
        }
        Value::Float64(v) => {
            let _ = write!(out, "{v:?}");
        }
        Value::Numeric(v) | Value::Text(v) | Value::Json(v) => out.extend_from_slice(v.as_bytes()),
        Value::Bytes(v) => out.extend_from_slice(v),
        Value::Timestamp(micros) => timestamp(micros, out),
        Value::Date(days) => date(i64::from(days), out),
        Value::Uuid(b) => {
            for (i, byte) in b.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push(b'-');
                }
                let _ = write!(out, "{byte:02x}");
            }
        }
    }
}

pub use sluice_plugin_sdk::time::{write_date as date, write_timestamp as timestamp};

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: Value<'_>) -> String {
        let mut out = Vec::new();
        value(&v, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values() {
        assert_eq!(text(Value::Boolean(true)), "true");
        assert_eq!(text(Value::Int64(-42)), "-42");
        assert_eq!(text(Value::Float64(0.1)), "0.1");
        assert_eq!(text(Value::Float64(1e300)), "1e300");
        assert_eq!(text(Value::Float64(2.0)), "2.0");
        assert_eq!(text(Value::Numeric("12.340")), "12.340");
        assert_eq!(
            text(Value::Timestamp(1_795_773_601_000_001)),
            "2026-11-27T10:00:01.000001Z"
        );
        assert_eq!(text(Value::Timestamp(-1)), "1969-12-31T23:59:59.999999Z");
        assert_eq!(text(Value::Date(0)), "1970-01-01");
        assert_eq!(text(Value::Date(-719_529)), "-0001-12-31");
        let mut uuid = [0x11u8; 16];
        uuid[0] = 0x0d;
        assert_eq!(
            text(Value::Uuid(uuid)),
            "0d111111-1111-1111-1111-111111111111"
        );
        assert_eq!(text(Value::Null), "");
    }
}
