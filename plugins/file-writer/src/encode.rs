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
        Value::Timestamp(micros) => timestamp(micros, out),
        Value::Date(days) => date(i64::from(days), out),
        Value::Uuid(b) => uuid(&b, out),
    }
}

/// Encodes rows in one format, value by value: [`value`](Self::value) for each
/// column in order, then [`end_row`](Self::end_row). Nothing allocates once its
/// scratch buffer has grown.
pub struct Encoder {
    format: Format,
    /// What goes before each column's value: `{"name":` or `,"name":` (NDJSON),
    /// nothing or `,` (CSV).
    prefixes: Vec<Vec<u8>>,
    scratch: Vec<u8>,
    /// The last timestamp's day and its `YYYY-MM-DD` (rows of a batch mostly
    /// share their day).
    day: Option<(i64, [u8; 10])>,
}

impl Encoder {
    /// An encoder for columns named `names`.
    pub fn new(format: Format, names: &[String]) -> Encoder {
        let prefixes = names
            .iter()
            .enumerate()
            .map(|(i, n)| match format {
                Format::Ndjson => {
                    let open = if i == 0 { "{" } else { "," };
                    format!("{open}{}:", serde_json::Value::String(n.clone())).into_bytes()
                }
                Format::Csv if i == 0 => Vec::new(),
                Format::Csv => b",".to_vec(),
            })
            .collect();
        Encoder {
            format,
            prefixes,
            scratch: Vec::new(),
            day: None,
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
        for (i, value) in values.iter().enumerate() {
            self.value(i, *value, out);
        }
        self.end_row(out);
    }

    /// Appends the value of column `column` (and what goes before it): call it
    /// for each column of a row in order, then [`end_row`](Self::end_row).
    #[inline(always)]
    pub fn value(&mut self, column: usize, value: Value<'_>, out: &mut Vec<u8>) {
        put(out, &self.prefixes[column]);
        match self.format {
            Format::Ndjson => self.json_value(value, out),
            Format::Csv => {
                if value.is_null() {
                    return;
                }
                self.scratch.clear();
                text(&value, &mut self.scratch);
                csv_field(&self.scratch, true, out);
            }
        }
    }

    /// Ends the row (with no column, NDJSON writes `{}`).
    #[inline]
    pub fn end_row(&self, out: &mut Vec<u8>) {
        match self.format {
            Format::Ndjson if self.prefixes.is_empty() => out.extend_from_slice(b"{}\n"),
            Format::Ndjson => put(out, b"}\n"),
            Format::Csv => put(out, b"\r\n"),
        }
    }

    // `value`, `json_value`, `json_string`, `timestamp` and `integer` are inlined
    // into the writer's loop over a batch's values: as calls, each passed its
    // value through wasm's stack in memory (measured 7-9 % of the writer's rate).
    #[inline(always)]
    fn json_value(&mut self, value: Value<'_>, out: &mut Vec<u8>) {
        match value {
            Value::Null => put(out, b"null"),
            Value::Boolean(true) => put(out, b"true"),
            Value::Boolean(false) => put(out, b"false"),
            Value::Int32(v) => integer(i64::from(v), out),
            Value::Int64(v) => integer(v, out),
            Value::Text(v) => json_string(v.as_bytes(), out),
            // A decimal literal (checked by the row reader): nothing to escape.
            Value::Numeric(v) => {
                out.push(b'"');
                put(out, v.as_bytes());
                out.push(b'"');
            }
            Value::Timestamp(micros) => {
                out.push(b'"');
                self.timestamp(micros, out);
                out.push(b'"');
            }
            Value::Json(v) => minify_json(v, out),
            Value::Float64(v) if v.is_finite() => text(&value, out),
            Value::Float64(_) | Value::Bytes(_) | Value::Date(_) | Value::Uuid(_) => {
                // ASCII text forms without anything to escape.
                out.push(b'"');
                text(&value, out);
                out.push(b'"');
            }
        }
    }

    /// [`timestamp`], remembering the last day's date.
    #[inline(always)]
    fn timestamp(&mut self, micros: i64, out: &mut Vec<u8>) {
        let seconds = micros.div_euclid(1_000_000);
        let days = seconds.div_euclid(86_400);
        let date = match self.day {
            Some((d, date)) if d == days => date,
            _ => match date_digits(days) {
                Some(date) => {
                    self.day = Some((days, date));
                    date
                }
                None => return timestamp(micros, out),
            },
        };
        let mut buf = [0u8; 27];
        buf[..10].copy_from_slice(&date);
        time_of_day(micros, &mut buf);
        put(out, &buf);
    }
}

/// Appends `bytes`: small slices with a few word-sized moves, as `memcpy` of a
/// length known only at run time is, in wasm, a `memory.copy` that wasmtime
/// runs as a call out of the guest (costly for the short texts of a row).
#[inline(always)]
pub(crate) fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len();
    if n > 32 {
        out.extend_from_slice(bytes);
        return;
    }
    out.reserve(32);
    // SAFETY: `out` has room for 32 more bytes; every access below is inside
    // `bytes` (reads) or the first `n` of those 32 bytes (writes), as `n` <= 32;
    // the two regions cannot overlap (`out`'s spare capacity is not shared).
    unsafe {
        let src = bytes.as_ptr();
        let dst = out.as_mut_ptr().add(out.len());
        if n >= 16 {
            let a = src.cast::<u128>().read_unaligned();
            let b = src.add(n - 16).cast::<u128>().read_unaligned();
            dst.cast::<u128>().write_unaligned(a);
            dst.add(n - 16).cast::<u128>().write_unaligned(b);
        } else if n >= 8 {
            let a = src.cast::<u64>().read_unaligned();
            let b = src.add(n - 8).cast::<u64>().read_unaligned();
            dst.cast::<u64>().write_unaligned(a);
            dst.add(n - 8).cast::<u64>().write_unaligned(b);
        } else if n >= 4 {
            let a = src.cast::<u32>().read_unaligned();
            let b = src.add(n - 4).cast::<u32>().read_unaligned();
            dst.cast::<u32>().write_unaligned(a);
            dst.add(n - 4).cast::<u32>().write_unaligned(b);
        } else if n > 0 {
            *dst = *src;
            *dst.add(n / 2) = *src.add(n / 2);
            *dst.add(n - 1) = *src.add(n - 1);
        }
        out.set_len(out.len() + n);
    }
}

/// Whether a byte needs escaping in a JSON string.
#[inline(always)]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Whether any of the 8 bytes of `w` needs escaping in a JSON string (exact: the
/// usual "has a zero byte" / "has a byte less than" bit tricks).
#[inline(always)]
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let quote = w ^ (ONES * u64::from(b'"'));
    let backslash = w ^ (ONES * u64::from(b'\\'));
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (control | quote | backslash) & HIGH != 0
}

/// Whether `text` holds a byte that needs escaping in a JSON string, a word at a
/// time (the last word overlapping the one before).
#[inline]
fn any_needs_escape(text: &[u8]) -> bool {
    let n = text.len();
    let word = |at: usize| u64::from_le_bytes(text[at..at + 8].try_into().expect("8 bytes"));
    let half = |at: usize| u32::from_le_bytes(text[at..at + 4].try_into().expect("4 bytes"));
    if n >= 8 {
        if word_needs_escape(word(n - 8)) {
            return true;
        }
        let mut at = 0;
        while at + 8 < n {
            if word_needs_escape(word(at)) {
                return true;
            }
            at += 8;
        }
        false
    } else if n >= 4 {
        word_needs_escape(u64::from(half(0)) | u64::from(half(n - 4)) << 32)
    } else {
        text.iter().any(|&b| needs_escape(b))
    }
}

/// A JSON string of `text` (UTF-8: a text value, or the ASCII text form of
/// another type), escaped as serde_json does: `\"`, `\\`, `\b`, `\f`, `\n`,
/// `\r`, `\t`, other control characters as `\u00XX`. A text with nothing to
/// escape (checked 8 bytes at a time) is copied at once; otherwise runs of plain
/// bytes are.
#[inline(always)]
pub(crate) fn json_string(text: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    if !any_needs_escape(text) {
        put(out, text);
        out.push(b'"');
        return;
    }
    escape_json(text, out);
    out.push(b'"');
}

#[cold]
#[inline(never)]
fn escape_json(text: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
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
}

/// "00" to "99".
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// Writes `v` (below 100) as two digits at `at`.
#[inline(always)]
fn pair(v: u32, buf: &mut [u8], at: usize) {
    let i = v as usize * 2;
    buf[at] = PAIRS[i];
    buf[at + 1] = PAIRS[i + 1];
}

/// `v` in decimal.
#[inline(always)]
pub(crate) fn integer(v: i64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = v.unsigned_abs();
    while n >= 100 {
        i -= 2;
        pair((n % 100) as u32, &mut buf, i);
        n /= 100;
    }
    if n >= 10 {
        i -= 2;
        pair(n as u32, &mut buf, i);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    if v < 0 {
        out.push(b'-');
    }
    put(out, &buf[i..]);
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (a year outside 0..=9999 with its sign).
fn timestamp(micros: i64, out: &mut Vec<u8>) {
    let days = micros.div_euclid(1_000_000).div_euclid(86_400);
    match date_digits(days) {
        Some(date) => {
            let mut buf = [0u8; 27];
            buf[..10].copy_from_slice(&date);
            time_of_day(micros, &mut buf);
            put(out, &buf);
        }
        None => {
            sluice_plugin_sdk::time::write_date(days, out);
            let mut buf = [0u8; 27];
            time_of_day(micros, &mut buf);
            put(out, &buf[10..]);
        }
    }
}

/// `THH:MM:SS.ffffffZ` into `buf[10..27]`.
#[inline]
fn time_of_day(micros: i64, buf: &mut [u8; 27]) {
    let fraction = micros.rem_euclid(1_000_000) as u32;
    let rem = micros.div_euclid(1_000_000).rem_euclid(86_400) as u32;
    buf[10] = b'T';
    pair(rem / 3600, buf, 11);
    buf[13] = b':';
    pair(rem % 3600 / 60, buf, 14);
    buf[16] = b':';
    pair(rem % 60, buf, 17);
    buf[19] = b'.';
    pair(fraction / 10_000, buf, 20);
    pair(fraction / 100 % 100, buf, 22);
    pair(fraction % 100, buf, 24);
    buf[26] = b'Z';
}

/// `YYYY-MM-DD` of a day number whose year is within 0..=9999.
fn date_digits(days: i64) -> Option<[u8; 10]> {
    let (y, m, d) = sluice_plugin_sdk::time::civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return None;
    }
    let y = y as u32;
    let mut buf = *b"0000-00-00";
    pair(y / 100, &mut buf, 0);
    pair(y % 100, &mut buf, 2);
    pair(m as u32, &mut buf, 5);
    pair(d as u32, &mut buf, 8);
    Some(buf)
}

/// A UUID's 8-4-4-4-12 hex form.
fn uuid(b: &[u8; 16], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 36];
    let mut at = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            buf[at] = b'-';
            at += 1;
        }
        buf[at] = HEX[usize::from(byte >> 4)];
        buf[at + 1] = HEX[usize::from(byte & 15)];
        at += 2;
    }
    out.extend_from_slice(&buf);
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
    match date_digits(days) {
        Some(date) => put(out, &date),
        None => sluice_plugin_sdk::time::write_date(days, out),
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
    fn escapes_found_at_every_position_and_small_copies() {
        // Texts of 0 to 40 bytes, with a byte to escape (or none, or a non-ASCII
        // character) at each position: as serde_json writes them.
        for len in 0..40 {
            let plain: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
            let mut texts = vec![plain.clone()];
            for at in 0..len {
                for special in ["\"", "\\", "\n", "\u{1}", "\u{1f}", "é", "\u{7f}", " ", "~"] {
                    let mut t = plain.clone();
                    t.replace_range(at..at + 1, special);
                    texts.push(t);
                }
            }
            for t in texts {
                let mut out = b"x".to_vec();
                json_string(t.as_bytes(), &mut out);
                assert_eq!(
                    out[1..],
                    *serde_json::to_string(&t).unwrap().as_bytes(),
                    "{t:?}"
                );
                let mut copied = b"x".to_vec();
                put(&mut copied, t.as_bytes());
                assert_eq!(copied[1..], *t.as_bytes());
            }
        }
    }

    #[test]
    fn numbers_and_timestamps_without_fmt() {
        let mut samples: Vec<i64> = vec![i64::MIN, i64::MAX, i64::MIN + 1];
        for p in 0..19 {
            let v = 10i64.pow(p);
            samples.extend([v - 1, v, v + 1, -v, -v + 1, -v - 1]);
        }
        for v in samples {
            let mut out = Vec::new();
            integer(v, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
        // The encoder's remembered day, across days, and years outside 0..=9999.
        let names = ["t".to_owned()];
        let mut e = Encoder::new(Format::Ndjson, &names);
        for micros in [
            0,
            86_399_999_999,
            86_400_000_000,
            86_400_000_000 + 1,
            -1,
            1_795_773_601_000_001,
            253_402_300_800_000_000,
            -62_167_219_200_000_001,
            i64::MIN,
            i64::MAX,
            1_795_773_601_999_999,
        ] {
            let mut out = Vec::new();
            e.row(&[Value::Timestamp(micros)], &mut out);
            let mut expected = b"{\"t\":\"".to_vec();
            sluice_plugin_sdk::time::write_timestamp(micros, &mut expected);
            expected.extend_from_slice(b"\"}\n");
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
        for days in [0, -1, 2_932_896, -719_529, i32::MIN, i32::MAX] {
            let mut out = Vec::new();
            text(&Value::Date(days), &mut out);
            let mut expected = Vec::new();
            sluice_plugin_sdk::time::write_date(i64::from(days), &mut expected);
            assert_eq!(out, expected, "{days}");
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
