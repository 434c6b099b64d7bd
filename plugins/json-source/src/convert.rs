//! Converting one field's JSON text to its column's type, straight into the row.

use std::fmt;

use sluice_plugin_sdk::ColumnType;
use sluice_plugin_sdk::rows::{RowWriter, is_decimal_literal};

use crate::config::{BytesEncoding, ColumnSpec};
use crate::numbers::{Decimal, Rounding, ScaleError};
use crate::time;

/// Buffers reused from message to message, for the rare values that cannot be
/// borrowed from the body (escaped strings, decoded bytes, JSON with whitespace).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    text: String,
    bytes: Vec<u8>,
}

/// What kind of JSON value a text is, from its first byte (serde_json checked it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    String,
    Number,
    Bool,
    Null,
    Object,
    Array,
}

fn kind(raw: &str) -> Kind {
    match raw.as_bytes().first() {
        Some(b'"') => Kind::String,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'n') => Kind::Null,
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        _ => Kind::Number,
    }
}

/// Appends the value of `column` whose JSON text is `raw` (not `null`), or says
/// why it does not fit.
pub(crate) fn append(
    column: &ColumnSpec,
    raw: &str,
    rows: &mut RowWriter,
    scratch: &mut Scratch,
) -> Result<(), String> {
    let kind = kind(raw);
    match column.ty {
        ColumnType::Boolean => match raw {
            "true" => rows.boolean(true),
            "false" => rows.boolean(false),
            _ => return Err(expected("a boolean", raw)),
        },
        ColumnType::Int32 | ColumnType::Int64 => {
            let text = match kind {
                Kind::Number => raw,
                Kind::String => string_content(raw, &mut scratch.text),
                _ => return Err(expected("an integer", raw)),
            };
            let value = Decimal::parse(text)
                .ok_or(ScaleError::Fraction)
                .and_then(|d| d.scaled(0, Rounding::Exact))
                .map_err(|e| match e {
                    ScaleError::Fraction => expected("an integer", raw),
                    ScaleError::OutOfRange => out_of_range(raw, column.ty),
                })?;
            if column.ty == ColumnType::Int32 {
                rows.int32(i32::try_from(value).map_err(|_| out_of_range(raw, column.ty))?)
            } else {
                rows.int64(value)
            }
        }
        ColumnType::Float64 => {
            let text = match kind {
                Kind::Number => raw,
                Kind::String => string_content(raw, &mut scratch.text),
                _ => return Err(expected("a number", raw)),
            };
            let value = match is_decimal_literal(text).then(|| text.parse::<f64>()) {
                Some(Ok(v)) => v,
                _ => return Err(expected("a number", raw)),
            };
            if !value.is_finite() {
                return Err(out_of_range(raw, column.ty));
            }
            rows.float64(value)
        }
        ColumnType::Numeric => match kind {
            // The number's own text: no float round trip, every digit kept.
            Kind::Number => rows.numeric(raw),
            Kind::String => {
                let text = string_content(raw, &mut scratch.text);
                if !is_decimal_literal(text) {
                    return Err(expected("a number", raw));
                }
                rows.numeric(text)
            }
            _ => return Err(expected("a number", raw)),
        },
        ColumnType::Text => match kind {
            Kind::String => rows.text(string_content(raw, &mut scratch.text)),
            Kind::Number | Kind::Bool if column.coerce => rows.text(raw),
            _ => return Err(expected("a string", raw)),
        },
        ColumnType::Bytes => {
            let what = match column.encoding {
                BytesEncoding::Base64 => "a base64 string",
                BytesEncoding::Hex => "a hex string",
            };
            if kind != Kind::String {
                return Err(expected(what, raw));
            }
            let text = string_content(raw, &mut scratch.text);
            let ok = match column.encoding {
                BytesEncoding::Base64 => decode_base64(text, &mut scratch.bytes),
                BytesEncoding::Hex => decode_hex(text, &mut scratch.bytes),
            };
            if !ok {
                return Err(expected(what, raw));
            }
            rows.bytes(&scratch.bytes)
        }
        ColumnType::Timestamp => {
            let exponent = column.unit.micros_exponent();
            let micros = match kind {
                Kind::Number => Decimal::parse(raw).map(|d| time::epoch_micros(&d, exponent)),
                Kind::String => {
                    let text = string_content(raw, &mut scratch.text);
                    match time::parse_rfc3339(text) {
                        Some(micros) => Some(Ok(micros)),
                        None => Decimal::parse(text).map(|d| time::epoch_micros(&d, exponent)),
                    }
                }
                _ => None,
            };
            match micros {
                Some(Ok(micros)) => rows.timestamp_micros(micros),
                Some(Err(_)) => return Err(out_of_range(raw, column.ty)),
                None => {
                    let what = format!(
                        "an RFC 3339 timestamp or a number of {} since the epoch",
                        column.unit.name()
                    );
                    return Err(expected(&what, raw));
                }
            }
        }
        ColumnType::Date => {
            let days = match kind {
                Kind::String => time::parse_date(string_content(raw, &mut scratch.text)),
                _ => None,
            };
            match days {
                Some(days) => rows.date_days(days),
                None => return Err(expected("a date (YYYY-MM-DD)", raw)),
            }
        }
        ColumnType::Uuid => {
            let uuid = match kind {
                Kind::String => parse_uuid(string_content(raw, &mut scratch.text)),
                _ => None,
            };
            match uuid {
                Some(uuid) => rows.uuid(uuid),
                None => return Err(expected("a UUID (8-4-4-4-12 hex digits)", raw)),
            }
        }
        ColumnType::Json => rows.json(compact_json(raw, &mut scratch.text)),
    };
    Ok(())
}

fn expected(what: &str, raw: &str) -> String {
    format!("expected {what}, found {}", Found(raw))
}

fn out_of_range(raw: &str, ty: ColumnType) -> String {
    format!("{} is out of range for {ty}", Found(raw))
}

/// Describes a JSON value in a rejection reason: `string "abc"`, `number 1.5`,
/// `object`; long strings are cut.
pub(crate) struct Found<'a>(pub &'a str);

impl fmt::Display for Found<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let raw = self.0;
        match kind(raw) {
            // Already a quoted, escaped JSON string.
            Kind::String => write!(f, "string {}", Cut(raw)),
            Kind::Number => write!(f, "number {}", Cut(raw)),
            Kind::Bool => write!(f, "boolean {raw}"),
            Kind::Null => f.write_str("null"),
            Kind::Object => f.write_str("object"),
            Kind::Array => f.write_str("array"),
        }
    }
}

/// A text shown in a reason, cut after 60 bytes (on a character boundary).
struct Cut<'a>(&'a str);

impl fmt::Display for Cut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 60;
        let s = self.0;
        if s.len() <= MAX {
            return f.write_str(s);
        }
        let mut end = MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{}…", &s[..end])?;
        if s.ends_with('"') {
            f.write_str("\"")
        } else {
            Ok(())
        }
    }
}

/// An unescaped string shown quoted in a reason (cut like [`Found`]).
pub(crate) struct Quoted<'a>(pub &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted = serde_json::to_string(self.0).map_err(|_| fmt::Error)?;
        write!(f, "{}", Cut(&quoted))
    }
}

/// The text of a JSON string literal: borrowed when it has no escapes, else
/// unescaped into `scratch`.
fn string_content<'a>(raw: &'a str, scratch: &'a mut String) -> &'a str {
    let inner = raw.get(1..raw.len().saturating_sub(1)).unwrap_or("");
    if !inner.as_bytes().contains(&b'\\') {
        return inner;
    }
    unescape(inner, scratch);
    scratch
}

/// Unescapes the inside of a JSON string literal (which serde_json checked).
fn unescape(mut rest: &str, out: &mut String) {
    const REPLACEMENT: char = char::REPLACEMENT_CHARACTER;
    out.clear();
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let escape = &rest[i..];
        let (ch, used) = match escape.as_bytes().get(1) {
            Some(b'"') => ('"', 2),
            Some(b'\\') => ('\\', 2),
            Some(b'/') => ('/', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'n') => ('\n', 2),
            Some(b'r') => ('\r', 2),
            Some(b't') => ('\t', 2),
            Some(b'u') => match hex4(escape.get(2..6)) {
                Some(hi @ 0xD800..=0xDBFF) => match (escape.get(6..8), hex4(escape.get(8..12))) {
                    (Some("\\u"), Some(lo @ 0xDC00..=0xDFFF)) => {
                        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        (char::from_u32(c).unwrap_or(REPLACEMENT), 12)
                    }
                    _ => (REPLACEMENT, 6),
                },
                Some(c) => (char::from_u32(c).unwrap_or(REPLACEMENT), 6),
                None => (REPLACEMENT, 2),
            },
            _ => (REPLACEMENT, 2),
        };
        out.push(ch);
        rest = escape.get(used..).unwrap_or("");
    }
    out.push_str(rest);
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn hex4(s: Option<&str>) -> Option<u32> {
    s?.bytes()
        .try_fold(0u32, |n, b| Some(n << 4 | u32::from(hex_digit(b)?)))
}

/// Standard or URL-safe base64, padding optional.
fn decode_base64(s: &str, out: &mut Vec<u8>) -> bool {
    out.clear();
    let padded = s.as_bytes();
    let b = padded
        .strip_suffix(b"==")
        .or_else(|| padded.strip_suffix(b"="))
        .unwrap_or(padded);
    if (b.len() != padded.len() && !padded.len().is_multiple_of(4)) || b.len() % 4 == 1 {
        return false;
    }
    out.reserve(b.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in b {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return false,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    true
}

fn decode_hex(s: &str, out: &mut Vec<u8>) -> bool {
    out.clear();
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return false;
    }
    out.reserve(b.len() / 2);
    for pair in b.chunks_exact(2) {
        match (hex_digit(pair[0]), hex_digit(pair[1])) {
            (Some(h), Some(l)) => out.push(h << 4 | l),
            _ => return false,
        }
    }
    true
}

/// A hyphenated UUID (`123e4567-e89b-12d3-a456-426614174000`, any case).
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    let mut nibbles = b.iter().filter(|&&c| c != b'-');
    for byte in &mut out {
        let h = hex_digit(*nibbles.next()?)?;
        let l = hex_digit(*nibbles.next()?)?;
        *byte = h << 4 | l;
    }
    // Four hyphens at the right places and 32 hex digits: nothing can be left.
    Some(out)
}

/// The JSON text without whitespace outside strings (borrowed when it has none).
fn compact_json<'a>(raw: &'a str, scratch: &'a mut String) -> &'a str {
    let is_space = |c: &u8| matches!(c, b' ' | b'\n' | b'\t' | b'\r');
    if !raw.as_bytes().iter().any(is_space) {
        return raw;
    }
    scratch.clear();
    let (mut in_string, mut escaped, mut run) = (false, false, 0);
    for (i, c) in raw.bytes().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
        } else if c == b'"' {
            in_string = true;
        } else if is_space(&c) {
            scratch.push_str(&raw[run..i]);
            run = i + 1;
        }
    }
    scratch.push_str(&raw[run..]);
    scratch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_every_escape() {
        let mut out = String::new();
        unescape(r#"a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00\ud800x"#, &mut out);
        assert_eq!(out, "a\"b\\c/d\u{8}\u{c}\n\r\té😀\u{fffd}x");
        assert_eq!(string_content(r#""plain""#, &mut out), "plain");
    }

    #[test]
    fn base64_and_hex() {
        let mut out = Vec::new();
        for (text, bytes) in [
            ("", &b""[..]),
            ("AA==", b"\0"),
            ("AAE", b"\0\x01"),
            ("/+8=", b"\xff\xef"),
            ("_-8", b"\xff\xef"),
            ("aGVsbG8=", b"hello"),
        ] {
            assert!(decode_base64(text, &mut out), "{text}");
            assert_eq!(out, bytes, "{text}");
        }
        for bad in ["A", "AA=", "AAA*", "A===", "AA==AA=="] {
            assert!(!decode_base64(bad, &mut out), "{bad}");
        }
        assert!(decode_hex("00fFa1", &mut out));
        assert_eq!(out, [0, 255, 0xa1]);
        assert!(!decode_hex("abc", &mut out));
        assert!(!decode_hex("zz", &mut out));
    }

    #[test]
    fn uuids() {
        let u = parse_uuid("123E4567-e89b-12d3-a456-426614174000").unwrap();
        assert_eq!(u[0], 0x12);
        assert_eq!(u[15], 0x00);
        assert_eq!(u[6], 0x12);
        for bad in [
            "123e4567e89b12d3a456426614174000",
            "123e4567-e89b-12d3-a456-42661417400g",
            "{123e4567-e89b-12d3-a456-426614174000}",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad}");
        }
    }

    #[test]
    fn compacts_json_outside_strings() {
        let mut s = String::new();
        assert_eq!(compact_json(r#"{"a":[1,2]}"#, &mut s), r#"{"a":[1,2]}"#);
        assert_eq!(
            compact_json("{ \"a b\" :\n [1, \"x\\\" y\"] }", &mut s),
            r#"{"a b":[1,"x\" y"]}"#
        );
    }

    #[test]
    fn describes_values() {
        assert_eq!(Found(r#""abc""#).to_string(), r#"string "abc""#);
        assert_eq!(Found("1.5").to_string(), "number 1.5");
        assert_eq!(Found("[1]").to_string(), "array");
        let long = format!("\"{}\"", "é".repeat(40));
        assert_eq!(
            Found(&long).to_string(),
            format!("string \"{}…\"", "é".repeat(29))
        );
        assert_eq!(Quoted("a\"b").to_string(), r#""a\"b""#);
    }
}
