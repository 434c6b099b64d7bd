//! Rows as NDJSON lines or CSV records, and reading the key columns back from them.
//!
//! Each value has one text form, used by both formats (and for the dedupe keys):
//!
//! | Sluice    | text                                   | NDJSON        |
//! |-----------|----------------------------------------|---------------|
//! | boolean   | `true` / `false`                       | boolean       |
//! | int32/64  | `-42`                                  | number        |
//! | float64   | shortest round-trip (`0.1`, `1e300`)   | number; `"NaN"`, `"inf"`, `"-inf"` as strings |
//! | numeric   | the literal (`12.340`)                 | string        |
//! | text      | the text                               | string        |
//! | bytes     | standard base64 with padding           | string        |
//! | timestamp | `2026-11-27T10:00:01.000000Z`          | string        |
//! | date      | `2026-11-27`                           | string        |
//! | uuid      | `0d2d8a3c-1111-4222-8333-444455556666` | string        |
//! | json      | the JSON text without whitespace       | the JSON value itself |
//!
//! Null is `null` in NDJSON and an empty unquoted field in CSV (an empty text is
//! `""`). CSV quotes a field holding `,`, `"`, CR or LF, doubling its quotes, and
//! ends records with CRLF (RFC 4180).

use std::io::Write;

use serde_json::value::RawValue;
use sluice_plugin_sdk::rows::Value;

use crate::config::Format;

/// Appends the text form of `value` (nothing for null).
pub fn text(value: &Value<'_>, out: &mut Vec<u8>) {
    match *value {
        Value::Null => {}
        Value::Boolean(v) => out.extend_from_slice(if v { b"true" } else { b"false" }),
        Value::Int32(v) => integer(i64::from(v), out),
        Value::Int64(v) => integer(v, out),
        Value::Float64(v) => {
            let _ = write!(out, "{v:?}");
        }
        Value::Numeric(v) | Value::Text(v) => out.extend_from_slice(v.as_bytes()),
        Value::Json(v) => minify_json(v, out),
        Value::Bytes(v) => base64(v, out),
        Value::Timestamp(micros) => {
            let seconds = micros.div_euclid(1_000_000);
            let (days, rem) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
            date(days, out);
            out.push(b'T');
            digits(rem / 3600, 2, out);
            out.push(b':');
            digits(rem % 3600 / 60, 2, out);
            out.push(b':');
            digits(rem % 60, 2, out);
            out.push(b'.');
            digits(micros.rem_euclid(1_000_000), 6, out);
            out.push(b'Z');
        }
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

/// Whether NDJSON writes the text form bare (a JSON number, boolean or value)
/// rather than as a string.
fn bare_in_json(value: &Value<'_>) -> bool {
    match value {
        Value::Boolean(_) | Value::Int32(_) | Value::Int64(_) | Value::Json(_) => true,
        Value::Float64(v) => v.is_finite(),
        _ => false,
    }
}

/// Encodes rows in one format. `scratch` is reused between values.
pub struct Encoder {
    format: Format,
    /// `"name":` for NDJSON, in column order.
    json_names: Vec<String>,
    scratch: Vec<u8>,
}

impl Encoder {
    /// An encoder for columns named `names`.
    pub fn new(format: Format, names: &[String]) -> Encoder {
        Encoder {
            format,
            json_names: names
                .iter()
                .map(|n| format!("{}:", serde_json::Value::String(n.clone())))
                .collect(),
            scratch: Vec::new(),
        }
    }

    /// The CSV header record (nothing for NDJSON).
    pub fn header(&self, names: &[String], out: &mut Vec<u8>) {
        if self.format == Format::Csv {
            for (i, name) in names.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                csv_field(name.as_bytes(), false, out);
            }
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Appends one row's record to `out`.
    pub fn row(&mut self, values: &[Value<'_>], out: &mut Vec<u8>) {
        match self.format {
            Format::Ndjson => {
                out.push(b'{');
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(self.json_names[i].as_bytes());
                    match *value {
                        Value::Null => {
                            out.extend_from_slice(b"null");
                            continue;
                        }
                        // Already text: escaped straight into `out`.
                        Value::Text(v) | Value::Numeric(v) => {
                            json_string(v.as_bytes(), out);
                            continue;
                        }
                        _ => {}
                    }
                    self.scratch.clear();
                    text(value, &mut self.scratch);
                    if bare_in_json(value) {
                        out.extend_from_slice(&self.scratch);
                    } else {
                        json_string(&self.scratch, out);
                    }
                }
                out.extend_from_slice(b"}\n");
            }
            Format::Csv => {
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    if value.is_null() {
                        continue;
                    }
                    self.scratch.clear();
                    text(value, &mut self.scratch);
                    csv_field(&self.scratch, true, out);
                }
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// A JSON string of `text` (UTF-8: a text value, or the ASCII text form of
/// another type), escaped as serde_json does: `\"`, `\\`, `\b`, `\f`, `\n`,
/// `\r`, `\t`, other control characters as `\u00XX`. Runs of plain bytes are
/// copied at once.
fn json_string(text: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(text.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in text.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..0x20 => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&text[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&text[start..]);
    out.push(b'"');
}

/// `v` in decimal.
fn integer(v: i64, out: &mut Vec<u8>) {
    if v < 0 {
        out.push(b'-');
    }
    let mut n = v.unsigned_abs();
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// `v` (0 or more) in decimal, zero-padded to `width` digits.
fn digits(v: i64, width: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + width, b'0');
    let mut n = v;
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// A CSV field: quoted when it holds `,`, `"`, CR or LF, or (with
/// `quote_empty`) when it is empty, to tell it from a null.
fn csv_field(field: &[u8], quote_empty: bool, out: &mut Vec<u8>) {
    let quote = (quote_empty && field.is_empty())
        || field
            .iter()
            .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'));
    if !quote {
        out.extend_from_slice(field);
        return;
    }
    out.push(b'"');
    for &b in field {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// JSON text without the whitespace between tokens (strings kept as they are),
/// so that it fits on one NDJSON line.
fn minify_json(json: &str, out: &mut Vec<u8>) {
    let mut in_string = false;
    let mut escaped = false;
    for &b in json.as_bytes() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if !matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            if b == b'"' {
                in_string = true;
            }
            out.push(b);
        }
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8], out: &mut Vec<u8>) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize]
            } else {
                b'='
            });
        }
    }
}

/// `YYYY-MM-DD` (a year outside 0..=9999 with its sign).
fn date(days: i64, out: &mut Vec<u8>) {
    // Digit by digit in the common case (this is the hot path of NDJSON
    // encoding); the SDK's `write_date` for the rest.
    let (y, m, d) = sluice_plugin_sdk::time::civil_from_days(days);
    if (0..=9999).contains(&y) {
        digits(y, 4, out);
        out.push(b'-');
        digits(m, 2, out);
        out.push(b'-');
        digits(d, 2, out);
    } else {
        sluice_plugin_sdk::time::write_date(days, out);
    }
}

/// The length of the complete records at the start of `data`: up to the last
/// line end that is outside a quoted CSV field (for NDJSON, the last `\n`).
pub fn complete_len(format: Format, data: &[u8]) -> usize {
    match format {
        Format::Ndjson => data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1),
        Format::Csv => {
            let mut in_quotes = false;
            let mut end = 0;
            for (i, &b) in data.iter().enumerate() {
                match b {
                    b'"' => in_quotes = !in_quotes,
                    b'\n' if !in_quotes => end = i + 1,
                    _ => {}
                }
            }
            end
        }
    }
}

/// The fields of one CSV record (`record` without its line end), unquoted.
pub fn csv_fields(record: &[u8]) -> Vec<Vec<u8>> {
    let mut fields = Vec::new();
    let mut field = Vec::new();
    let mut in_quotes = false;
    let mut i = 0;
    while i < record.len() {
        let b = record[i];
        if in_quotes {
            if b == b'"' {
                if record.get(i + 1) == Some(&b'"') {
                    field.push(b'"');
                    i += 1;
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(b);
            }
        } else if b == b'"' {
            in_quotes = true;
        } else if b == b',' {
            fields.push(std::mem::take(&mut field));
        } else {
            field.push(b);
        }
        i += 1;
    }
    fields.push(field);
    fields
}

/// Splits complete records (`data` ends at a record end) into records without
/// their line ends.
pub fn records(format: Format, data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    for (i, &b) in data.iter().enumerate() {
        match b {
            b'"' if format == Format::Csv => in_quotes = !in_quotes,
            b'\n' if !in_quotes => {
                let mut end = i;
                if end > start && data[end - 1] == b'\r' {
                    end -= 1;
                }
                out.push(&data[start..end]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out
}

/// The text forms of the named fields of one NDJSON line, in the order of
/// `names`; `None` if the line is not an object holding them all.
pub fn ndjson_key_texts(line: &[u8], names: &[&str]) -> Option<Vec<Vec<u8>>> {
    let object: std::collections::HashMap<&str, &RawValue> = serde_json::from_slice(line).ok()?;
    names
        .iter()
        .map(|name| {
            let raw = object.get(name)?.get();
            if raw.starts_with('"') {
                serde_json::from_str::<String>(raw)
                    .ok()
                    .map(String::into_bytes)
            } else {
                Some(raw.as_bytes().to_vec())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(format: Format, values: &[Value<'_>]) -> String {
        let names: Vec<String> = (0..values.len()).map(|i| format!("c{i}")).collect();
        let mut out = Vec::new();
        let mut e = Encoder::new(format, &names);
        e.header(&names, &mut out);
        e.row(values, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ndjson_types() {
        let line = encode(
            Format::Ndjson,
            &[
                Value::Boolean(true),
                Value::Int64(-7),
                Value::Float64(0.1),
                Value::Float64(f64::NAN),
                Value::Numeric("12.340"),
                Value::Text("a\"b\nc"),
                Value::Bytes(b"\x00\xffab"),
                Value::Timestamp(1_795_773_601_000_001),
                Value::Date(-1),
                Value::Uuid([0xab; 16]),
                Value::Json("{ \"a\" : [1, 2],\n \"b\": \"x y\" }"),
                Value::Null,
            ],
        );
        assert_eq!(
            line,
            "{\"c0\":true,\"c1\":-7,\"c2\":0.1,\"c3\":\"NaN\",\"c4\":\"12.340\",\"c5\":\"a\\\"b\\nc\",\
             \"c6\":\"AP9hYg==\",\"c7\":\"2026-11-27T10:00:01.000001Z\",\"c8\":\"1969-12-31\",\
             \"c9\":\"abababab-abab-abab-abab-abababababab\",\"c10\":{\"a\":[1,2],\"b\":\"x y\"},\"c11\":null}\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["c6"], "AP9hYg==");
    }

    #[test]
    fn strings_and_numbers_as_serde_json_writes_them() {
        for text in [
            "",
            "plain",
            "quote \" and \\ back",
            "\u{0}\u{1}\u{8}\u{b}\u{c}\u{1f}\u{7f}\t\r\n",
            "été ✓ 😀",
        ] {
            let mut out = Vec::new();
            json_string(text.as_bytes(), &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(text).unwrap()
            );
        }
        for v in [0, 7, -7, 10, 99_999, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            integer(v, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
        for (micros, expected) in [
            (0, "1970-01-01T00:00:00.000000Z"),
            (-1, "1969-12-31T23:59:59.999999Z"),
            (253_402_300_799_999_999, "9999-12-31T23:59:59.999999Z"),
        ] {
            let mut out = Vec::new();
            text(&Value::Timestamp(micros), &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), expected);
        }
    }

    #[test]
    fn csv_quoting_and_nulls() {
        let out = encode(
            Format::Csv,
            &[
                Value::Text("plain"),
                Value::Text("a,b"),
                Value::Text("say \"hi\"\r\nbye"),
                Value::Text(""),
                Value::Null,
            ],
        );
        assert_eq!(
            out,
            "c0,c1,c2,c3,c4\r\nplain,\"a,b\",\"say \"\"hi\"\"\r\nbye\",\"\",\r\n"
        );
        let data = out.as_bytes();
        assert_eq!(complete_len(Format::Csv, data), data.len());
        let recs = records(Format::Csv, data);
        assert_eq!(recs.len(), 2);
        assert_eq!(
            csv_fields(recs[1]),
            [
                b"plain".to_vec(),
                b"a,b".to_vec(),
                b"say \"hi\"\r\nbye".to_vec(),
                vec![],
                vec![]
            ]
        );
        // Cut inside the quoted field: the last complete record is the header.
        let cut = out.find("bye").unwrap();
        assert_eq!(complete_len(Format::Csv, &data[..cut]), 16);
    }

    #[test]
    fn ndjson_keys_read_back_as_written() {
        let line = encode(
            Format::Ndjson,
            &[
                Value::Text("id\"1"),
                Value::Int32(5),
                Value::Json("{\"z\": 1}"),
            ],
        );
        let keys = ndjson_key_texts(line.trim_end().as_bytes(), &["c0", "c1", "c2"]).unwrap();
        let mut expected = Vec::new();
        for v in [
            Value::Text("id\"1"),
            Value::Int32(5),
            Value::Json("{\"z\": 1}"),
        ] {
            let mut t = Vec::new();
            text(&v, &mut t);
            expected.push(t);
        }
        assert_eq!(keys, expected);
        assert_eq!(ndjson_key_texts(b"{\"c0\":1}", &["c1"]), None);
        assert_eq!(ndjson_key_texts(b"{\"c0\":", &["c0"]), None);
        assert_eq!(complete_len(Format::Ndjson, b"{}\n{\"a\""), 3);
    }
}
