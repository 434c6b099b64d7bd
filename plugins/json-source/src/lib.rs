//! `json-source`: a Sluice source plugin that decodes JSON message bodies into rows:
//! one row per message, or per record of a message that holds many (NDJSON, a
//! JSON array), gzip- or zstd-compressed or not.
//!
//! # Configuration
//!
//! The pipeline's `[pipelines.source.config]` table, given to the plugin as JSON:
//!
//! ```json
//! { "schema": "cdr", "version": 1,
//!   "columns": [
//!     {"name": "call_id", "type": "text", "key": true, "path": "call.id"},
//!     {"name": "started_at", "type": "timestamp", "path": "start"},
//!     {"name": "duration_s", "type": "int32"},
//!     {"name": "cost", "type": "numeric", "nullable": true},
//!     {"name": "raw", "type": "json", "path": "extra"} ]}
//! ```
//!
//! - `schema`, `version`: the name (lowercase letters, digits, `_`) and version of
//!   the schema the rows follow.
//! - `columns`, in row order, each with:
//!   - `name` (required): the column name, lowercase letters, digits and `_`;
//!   - `type` (required): `bool` (or `boolean`), `int32`, `int64`, `float64`,
//!     `numeric`, `text`, `bytes`, `timestamp`, `date`, `uuid` or `json`;
//!   - `key`: part of the key (default false; at least one column is). Writers
//!     store a row once per key, so a redelivered message is not stored twice;
//!   - `nullable`: may be null or absent (default true, but false for key columns,
//!     which cannot be nullable);
//!   - `path`: where the value is in the body, from the top-level object: the
//!     column name by default; dotted for nesting (`"call.id"`), or an array of
//!     keys when a key holds a dot (`["meta", "a.b"]`);
//!   - `unit` (timestamp only): what a number counts since the epoch, `"s"`
//!     (default), `"ms"` or `"us"`;
//!   - `encoding` (bytes only): `"base64"` (default, standard or URL-safe, padding
//!     optional) or `"hex"`;
//!   - `coerce` (text only): also take numbers and booleans, as their JSON text.
//! - `records`: how many records a message holds: `"one"` (default: the body is
//!   one JSON object), `"ndjson"` (one object per line; blank lines skipped) or
//!   `"array"` (a JSON array of objects). Each record is one row; a bad record is
//!   rejected on its own (dead-lettered with its own bytes and its index: the line
//!   number from 0 for NDJSON, the element's index for an array) while the good
//!   records of the message land. A body that cannot be cut into records (an
//!   array that is not well-formed JSON) is rejected whole.
//! - `max_decompressed_bytes` (default 67108864, 64 MiB): a body compressed by its
//!   `content-encoding` (`gzip` or `zstd`) is decompressed at most this far; one
//!   that decompresses further is rejected whole, naming the limit (a compression
//!   bomb never takes more memory than this). Uncompressed bodies are not limited
//!   by it.
//!
//! Every problem in the configuration is reported at once, each naming the column
//! (`columns[2] (duration_s): unknown type "int" ...`).
//!
//! # Values
//!
//! | type | accepts |
//! |------|---------|
//! | bool | `true`, `false` |
//! | int32, int64 | an integer number or numeric string (`12`, `"12"`, `1.0`, `1e3`); not a fraction, not out of range |
//! | float64 | a number or numeric string |
//! | numeric | a number, kept as written (no float round trip), or a numeric string |
//! | text | a string (with `coerce`, also numbers and booleans) |
//! | bytes | a base64 or hex string |
//! | timestamp | an RFC 3339 string with `Z` or an offset (optional fraction; digits past microseconds are cut), or a number (or numeric string) of `unit`s since the epoch |
//! | date | a `YYYY-MM-DD` string |
//! | uuid | a hyphenated UUID string, any case |
//! | json | any JSON value, stored as compact JSON text |
//!
//! Fields the configuration does not name are ignored. A JSON `null`, or an absent
//! field, or a `null` object on the way, is a null value.
//!
//! A key that appears twice in one object (`{"cost": 1, "cost": 2}`) is not an
//! error: the last one wins, for the column's field and for every object on its
//! path, as in most JSON parsers (RFC 8259 leaves duplicate names undefined).
//! Such a message is stored, not rejected; a feed that may repeat keys with
//! different values should be fixed at its producer.
//!
//! # Rejections
//!
//! A message that does not fit goes to the dead-letter exchange with one reason:
//! the body is not JSON, its top level is not an object, a required field is
//! missing (`missing required field "call.id" (column call_id)`), a non-nullable
//! field is null, or a value has the wrong type
//! (`field "duration" (column duration_s): expected an integer, found string "abc"`).
//! With `records = "ndjson"` or `"array"`, those reasons are a record's, and only
//! that record is rejected (the host dead-letters its bytes with its index); the
//! whole message is rejected when its body cannot be decompressed (an unknown
//! `content-encoding`, corrupt data, past `max_decompressed_bytes`) or, for
//! `"array"`, is not a well-formed JSON array.
//!
//! # Speed
//!
//! No `serde_json::Value` is built: one streaming pass matches the wanted keys
//! against a trie of the configured paths, captures the wanted values as raw text
//! and skips the rest; each value is then converted straight into the row.

mod config;
mod convert;
mod fields;
mod numbers;
mod records;
mod time;

use sluice_plugin_sdk::rows::RowWriter;
use sluice_plugin_sdk::{Message, PluginError, Records, Schema, Source};

use crate::config::{ColumnSpec, RecordFraming};
use crate::convert::Scratch;
use crate::fields::{ExtractError, Fields, Span};

/// The plugin: decodes JSON bodies into rows of the configured columns.
#[derive(Debug)]
pub struct JsonSource {
    columns: Vec<ColumnSpec>,
    fields: Fields,
    /// Where each column's value lies in the current body (reused).
    spans: Vec<Span>,
    scratch: Scratch,
    framing: RecordFraming,
    max_decompressed_bytes: u64,
}

impl Source for JsonSource {
    fn configure(config: &str) -> Result<(Self, Schema), PluginError> {
        let config::Config {
            schema,
            columns,
            records,
            max_decompressed_bytes,
        } = config::parse(config)?;
        let source = JsonSource {
            fields: Fields::new(&columns),
            spans: vec![None; columns.len()],
            columns,
            scratch: Scratch::default(),
            framing: records,
            max_decompressed_bytes,
        };
        Ok((source, schema))
    }

    /// The whole message, or its first bad record, is rejected.
    fn decode(&mut self, message: &Message, rows: &mut RowWriter) -> Result<(), String> {
        let mut records = Records::default();
        self.decode_records(message, rows, &mut records)?;
        match records.rejected().first() {
            None => Ok(()),
            Some(bad) => Err(format!("record {}: {}", bad.index, bad.reason)),
        }
    }

    fn decode_records(
        &mut self,
        message: &Message,
        rows: &mut RowWriter,
        records: &mut Records,
    ) -> Result<(), String> {
        let body = records::decompress(
            &message.body,
            message.content_encoding.as_deref(),
            self.max_decompressed_bytes,
        )?;
        match self.framing {
            RecordFraming::One => self.decode_record(&body, rows),
            RecordFraming::Ndjson => {
                for (index, line) in records::ndjson(&body) {
                    self.decode_alone(index, line, rows, records);
                }
                Ok(())
            }
            RecordFraming::Array => {
                for (index, item) in records::array(&body)?.into_iter().enumerate() {
                    let index = u32::try_from(index).unwrap_or(u32::MAX);
                    self.decode_alone(index, item.get().as_bytes(), rows, records);
                }
                Ok(())
            }
        }
    }
}

impl JsonSource {
    /// Decodes record `index` of a message that holds many; a bad one leaves no
    /// half row behind and is rejected on its own.
    fn decode_alone(
        &mut self,
        index: u32,
        record: &[u8],
        rows: &mut RowWriter,
        records: &mut Records,
    ) {
        let mark = rows.mark();
        if let Err(reason) = self.decode_record(record, rows) {
            rows.reset(mark);
            records.reject(index, record, reason);
        }
    }

    /// Decodes one JSON object into one row.
    fn decode_record(&mut self, record: &[u8], rows: &mut RowWriter) -> Result<(), String> {
        let body =
            std::str::from_utf8(record).map_err(|e| format!("body is not valid JSON: {e}"))?;
        self.spans.fill(None);
        self.fields
            .extract(body, &mut self.spans)
            .map_err(|e| match e {
                ExtractError::Json(e) => format!("body is not valid JSON: {e}"),
                ExtractError::NotAnObject { path, found, .. } if path.is_empty() => {
                    format!("top level is not a JSON object (found {found})")
                }
                ExtractError::NotAnObject {
                    path,
                    column,
                    found,
                } => format!(
                    "field {path:?} (column {}): expected an object, found {found}",
                    self.columns[column].name
                ),
            })?;
        for (column, span) in self.columns.iter().zip(&self.spans) {
            let raw = span.map(|(start, end)| &body[start..end]);
            // serde_json checked the text: one starting with `n` is `null`.
            match raw.filter(|raw| !raw.starts_with('n')) {
                Some(raw) => {
                    convert::append(column, raw, rows, &mut self.scratch).map_err(|reason| {
                        format!(
                            "field {:?} (column {}): {reason}",
                            column.path_display, column.name
                        )
                    })?
                }
                None if column.nullable => {
                    rows.null();
                }
                None if raw.is_none() => {
                    return Err(format!(
                        "missing required field {:?} (column {})",
                        column.path_display, column.name
                    ));
                }
                None => {
                    return Err(format!(
                        "field {:?} (column {}) is null, but the column is not nullable",
                        column.path_display, column.name
                    ));
                }
            }
        }
        rows.end_row();
        Ok(())
    }
}

sluice_plugin_sdk::export_source!(JsonSource);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_plugin_sdk::rows::OwnedValue as V;
    use sluice_plugin_sdk::testing::{SourceRun, message_json, run_source};
    use sluice_plugin_sdk::{ColumnType, Message, MessageOutcome, PluginError, Source};

    use super::JsonSource;

    const CDR: &str = r#"{ "schema": "cdr", "version": 1,
      "columns": [
        {"name": "call_id", "type": "text", "key": true, "path": "call.id"},
        {"name": "started_at", "type": "timestamp", "path": "start"},
        {"name": "duration_s", "type": "int32", "path": "duration"},
        {"name": "cost", "type": "numeric", "nullable": true},
        {"name": "raw", "type": "json", "path": "extra"} ]}"#;

    fn run(config: &str, bodies: &[&str]) -> SourceRun {
        let messages: Vec<Message> = bodies.iter().map(|b| message_json(*b)).collect();
        run_source::<JsonSource>(config, &messages).unwrap()
    }

    /// A one-column (plus key) config: `{"name": "v", "type": <ty>, <extra>}`.
    fn single(ty: &str, extra: &str) -> String {
        format!(
            r#"{{"schema": "t", "version": 1, "columns": [
                {{"name": "id", "type": "int64", "key": true}},
                {{"name": "v", "type": "{ty}" {extra}}}]}}"#
        )
    }

    /// Decodes `{"id": 1, "v": <value>}` into column `v`, or gives the rejection.
    fn value(ty: &str, extra: &str, value: &str) -> Result<V, String> {
        let body = format!(r#"{{"id": 1, "v": {value}}}"#);
        let run = run(&single(ty, extra), &[&body]);
        match &run.outcomes[0] {
            MessageOutcome::Rows(1) => Ok(run.rows[0][1].clone()),
            MessageOutcome::Rejected(r) => Err(r.clone()),
            other => panic!("{other:?}"),
        }
    }

    fn err(ty: &str, extra: &str, v: &str) -> String {
        value(ty, extra, v).unwrap_err()
    }

    #[test]
    fn decodes_the_documented_example() {
        let run = run(
            CDR,
            &[
                r#"{"call": {"id": "c-1", "leg": 2}, "start": "2024-05-01T12:30:00Z", "duration": 61,
                 "cost": 0.10, "extra": {"a": [1, 2], "b": null}, "ignored": {"deep": [1]}}"#,
            ],
        );
        assert_eq!(
            run.schema.column_types(),
            [
                ColumnType::Text,
                ColumnType::Timestamp,
                ColumnType::Int32,
                ColumnType::Numeric,
                ColumnType::Json
            ]
        );
        assert_eq!(
            run.rows,
            [vec![
                V::Text("c-1".into()),
                V::Timestamp(1_714_566_600_000_000),
                V::Int32(61),
                V::Numeric("0.10".into()),
                V::Json(r#"{"a":[1,2],"b":null}"#.into()),
            ]]
        );
    }

    #[test]
    fn absent_and_null_fields_of_nullable_columns_are_null() {
        let run = run(
            CDR,
            &[
                r#"{"call": {"id": "c"}}"#,
                r#"{"call": {"id": "c"}, "start": null, "extra": null}"#,
            ],
        );
        assert_eq!(
            run.rows[0],
            [V::Text("c".into()), V::Null, V::Null, V::Null, V::Null]
        );
        assert_eq!(run.rows[1], run.rows[0]);
    }

    #[test]
    fn booleans() {
        assert_eq!(value("bool", "", "true"), Ok(V::Boolean(true)));
        assert_eq!(value("boolean", "", "false"), Ok(V::Boolean(false)));
        assert_eq!(
            err("bool", "", "1"),
            r#"field "v" (column v): expected a boolean, found number 1"#
        );
        assert_eq!(
            err("bool", "", r#""true""#),
            r#"field "v" (column v): expected a boolean, found string "true""#
        );
    }

    #[test]
    fn integers() {
        assert_eq!(value("int32", "", "-42"), Ok(V::Int32(-42)));
        assert_eq!(value("int32", "", r#""17""#), Ok(V::Int32(17)));
        assert_eq!(value("int32", "", "2.0"), Ok(V::Int32(2)));
        assert_eq!(value("int32", "", "2147483647"), Ok(V::Int32(i32::MAX)));
        assert_eq!(
            value("int64", "", "-9223372036854775808"),
            Ok(V::Int64(i64::MIN))
        );
        assert_eq!(
            value("int64", "", "1e15"),
            Ok(V::Int64(1_000_000_000_000_000))
        );
        assert_eq!(
            err("int32", "", r#""abc""#),
            r#"field "v" (column v): expected an integer, found string "abc""#
        );
        assert_eq!(
            err("int32", "", "1.5"),
            r#"field "v" (column v): expected an integer, found number 1.5"#
        );
        assert_eq!(
            err("int32", "", "true"),
            r#"field "v" (column v): expected an integer, found boolean true"#
        );
        assert_eq!(
            err("int32", "", "{}"),
            r#"field "v" (column v): expected an integer, found object"#
        );
        assert_eq!(
            err("int32", "", "2147483648"),
            r#"field "v" (column v): number 2147483648 is out of range for int32"#
        );
        assert_eq!(
            err("int64", "", r#""9223372036854775808""#),
            r#"field "v" (column v): string "9223372036854775808" is out of range for int64"#
        );
    }

    #[test]
    fn floats() {
        assert_eq!(value("float64", "", "1.5"), Ok(V::Float64(1.5)));
        assert_eq!(value("float64", "", "-2"), Ok(V::Float64(-2.0)));
        assert_eq!(
            value("float64", "", r#""6.02e23""#),
            Ok(V::Float64(6.02e23))
        );
        assert_eq!(
            err("float64", "", r#""NaN""#),
            r#"field "v" (column v): expected a number, found string "NaN""#
        );
        assert_eq!(
            err("float64", "", "1e999"),
            r#"field "v" (column v): number 1e999 is out of range for float64"#
        );
        assert_eq!(
            err("float64", "", "[]"),
            r#"field "v" (column v): expected a number, found array"#
        );
    }

    #[test]
    fn numerics_keep_their_exact_text() {
        assert_eq!(
            value("numeric", "", "0.1000000000000000000001"),
            Ok(V::Numeric("0.1000000000000000000001".into()))
        );
        assert_eq!(
            value("numeric", "", "-12.340"),
            Ok(V::Numeric("-12.340".into()))
        );
        assert_eq!(
            value("numeric", "", "1E+400"),
            Ok(V::Numeric("1E+400".into()))
        );
        assert_eq!(
            value("numeric", "", r#""99.95""#),
            Ok(V::Numeric("99.95".into()))
        );
        assert_eq!(
            err("numeric", "", r#""1,5""#),
            r#"field "v" (column v): expected a number, found string "1,5""#
        );
        assert_eq!(
            err("numeric", "", "false"),
            r#"field "v" (column v): expected a number, found boolean false"#
        );
    }

    #[test]
    fn texts() {
        assert_eq!(value("text", "", r#""héllo""#), Ok(V::Text("héllo".into())));
        assert_eq!(
            value("text", "", r#""a\"b\n\u00e9""#),
            Ok(V::Text("a\"b\né".into()))
        );
        assert_eq!(value("text", "", r#""""#), Ok(V::Text(String::new())));
        assert_eq!(
            err("text", "", "12"),
            r#"field "v" (column v): expected a string, found number 12"#
        );
        assert_eq!(
            value("text", r#", "coerce": true"#, "12.50"),
            Ok(V::Text("12.50".into()))
        );
        assert_eq!(
            value("text", r#", "coerce": true"#, "true"),
            Ok(V::Text("true".into()))
        );
        assert_eq!(
            err("text", r#", "coerce": true"#, "[1]"),
            r#"field "v" (column v): expected a string, found array"#
        );
    }

    #[test]
    fn bytes() {
        assert_eq!(
            value("bytes", "", r#""aGk=""#),
            Ok(V::Bytes(b"hi".to_vec()))
        );
        assert_eq!(
            value("bytes", r#", "encoding": "hex""#, r#""00ff""#),
            Ok(V::Bytes(vec![0, 255]))
        );
        assert_eq!(
            err("bytes", "", r#""a*""#),
            r#"field "v" (column v): expected a base64 string, found string "a*""#
        );
        assert_eq!(
            err("bytes", r#", "encoding": "hex""#, "1"),
            r#"field "v" (column v): expected a hex string, found number 1"#
        );
    }

    #[test]
    fn timestamps() {
        let ts = |extra: &str, v: &str| value("timestamp", extra, v);
        assert_eq!(
            ts("", r#""2024-05-01T14:30:00.25+02:00""#),
            Ok(V::Timestamp(1_714_566_600_250_000))
        );
        assert_eq!(
            ts("", "1714566600"),
            Ok(V::Timestamp(1_714_566_600_000_000))
        );
        assert_eq!(
            ts("", "1714566600.5"),
            Ok(V::Timestamp(1_714_566_600_500_000))
        );
        assert_eq!(
            ts("", r#""1714566600""#),
            Ok(V::Timestamp(1_714_566_600_000_000))
        );
        assert_eq!(
            ts(r#", "unit": "ms""#, "1714566600123"),
            Ok(V::Timestamp(1_714_566_600_123_000))
        );
        assert_eq!(ts(r#", "unit": "us""#, "-1"), Ok(V::Timestamp(-1)));
        assert_eq!(
            err("timestamp", "", r#""2024-05-01 12:30""#),
            r#"field "v" (column v): expected an RFC 3339 timestamp or a number of seconds since the epoch, found string "2024-05-01 12:30""#
        );
        assert_eq!(
            err("timestamp", r#", "unit": "ms""#, "true"),
            r#"field "v" (column v): expected an RFC 3339 timestamp or a number of milliseconds since the epoch, found boolean true"#
        );
        assert_eq!(
            err("timestamp", "", "1e20"),
            r#"field "v" (column v): number 1e20 is out of range for timestamp"#
        );
    }

    #[test]
    fn dates_uuids_and_json() {
        assert_eq!(value("date", "", r#""2024-02-29""#), Ok(V::Date(19_782)));
        assert_eq!(
            err("date", "", r#""2023-02-29""#),
            r#"field "v" (column v): expected a date (YYYY-MM-DD), found string "2023-02-29""#
        );
        let mut uuid = [0u8; 16];
        uuid[0] = 0xab;
        uuid[15] = 0x01;
        assert_eq!(
            value("uuid", "", r#""AB000000-0000-0000-0000-000000000001""#),
            Ok(V::Uuid(uuid))
        );
        assert_eq!(
            err("uuid", "", r#""nope""#),
            r#"field "v" (column v): expected a UUID (8-4-4-4-12 hex digits), found string "nope""#
        );
        assert_eq!(
            value("json", "", r#"[1, {"a" : "b c"}]"#),
            Ok(V::Json(r#"[1,{"a":"b c"}]"#.into()))
        );
        assert_eq!(value("json", "", "\"x\""), Ok(V::Json("\"x\"".into())));
    }

    #[test]
    fn nested_paths_dotted_arrays_and_prefixes() {
        let config = r#"{"schema": "t", "version": 1, "columns": [
            {"name": "id", "type": "int64", "key": true, "path": "a.b.c"},
            {"name": "dotted", "type": "text", "path": ["a", "x.y"]},
            {"name": "whole", "type": "json", "path": "a"},
            {"name": "same", "type": "text", "path": "a.b.c", "coerce": true}]}"#;
        let run = run(
            config,
            &[r#"{"a": {"x.y": "dot", "b": {"c": 7, "d": 1}, "x": {"y": "no"}}}"#],
        );
        assert_eq!(
            run.rows,
            [vec![
                V::Int64(7),
                V::Text("dot".into()),
                V::Json(r#"{"x.y":"dot","b":{"c":7,"d":1},"x":{"y":"no"}}"#.into()),
                V::Text("7".into()),
            ]]
        );
    }

    #[test]
    fn rejection_reasons_name_the_field_and_column() {
        let cases = [
            (
                "{\"call\": ",
                "body is not valid JSON: EOF while parsing a value at line 1 column 9",
            ),
            ("[1, 2]", "top level is not a JSON object (found array)"),
            (
                "\"x\"",
                "top level is not a JSON object (found string \"x\")",
            ),
            ("{}", "missing required field \"call.id\" (column call_id)"),
            (
                r#"{"call": null}"#,
                "missing required field \"call.id\" (column call_id)",
            ),
            (
                r#"{"call": {"id": null}}"#,
                "field \"call.id\" (column call_id) is null, but the column is not nullable",
            ),
            (
                r#"{"call": "c-1"}"#,
                "field \"call\" (column call_id): expected an object, found string \"c-1\"",
            ),
            (
                r#"{"call": {"id": "c"}, "duration": "abc"}"#,
                "field \"duration\" (column duration_s): expected an integer, found string \"abc\"",
            ),
            (
                r#"{"call": {"id": "c"}} trailing"#,
                "body is not valid JSON: trailing characters at line 1 column 23",
            ),
        ];
        let bodies: Vec<&str> = cases.iter().map(|(b, _)| *b).collect();
        let run = run(CDR, &bodies);
        for (i, (body, reason)) in cases.iter().enumerate() {
            assert_eq!(run.rejection(i), Some(*reason), "{body}");
        }
        assert!(run.rows.is_empty());

        let not_utf8 =
            run_source::<JsonSource>(CDR, &[Message::new(vec![b'{', 0xff, b'}'])]).unwrap();
        assert_eq!(
            not_utf8.rejection(0),
            Some("body is not valid JSON: invalid utf-8 sequence of 1 bytes from index 1")
        );
    }

    #[test]
    fn a_message_rejected_mid_row_leaves_no_partial_row() {
        // The first three columns are appended before "duration" fails.
        let run = run(
            CDR,
            &[
                r#"{"call": {"id": "a"}, "duration": 1}"#,
                r#"{"call": {"id": "b"}, "start": 0, "duration": 1.5}"#,
                r#"{"call": {"id": "c"}, "cost": "x"}"#,
                r#"{"call": {"id": "d"}}"#,
            ],
        );
        assert_eq!(run.outcomes[0], MessageOutcome::Rows(1));
        assert!(run.rejection(1).is_some());
        assert!(run.rejection(2).is_some());
        assert_eq!(run.outcomes[3], MessageOutcome::Rows(1));
        let ids: Vec<_> = run.rows.iter().map(|r| r[0].clone()).collect();
        assert_eq!(ids, [V::Text("a".into()), V::Text("d".into())]);
        assert_eq!(
            run.rows[1],
            [V::Text("d".into()), V::Null, V::Null, V::Null, V::Null]
        );
    }

    #[test]
    fn configuration_errors_are_reported_together_at_their_key_paths() {
        let columns = |third: &str| {
            format!(
                r#"{{"schema": "cdr", "version": 1, "columns": [
                {{"name": "call_id", "type": "text", "key": true}},
                {{"name": "x", "type": "text", "nulable": true}},
                {{"name": "duration_s", "type": "{third}"}},
                {{"name": "y", "type": "text", "unit": "s"}}]}}"#
            )
        };
        let error = |config: &str| match JsonSource::configure(config) {
            Err(PluginError::InvalidConfig(e)) => e,
            _ => panic!("expected a configuration error"),
        };
        // Unknown keys and values of the wrong form first, all of them ...
        let e = error(&columns("int"));
        assert!(
            e.starts_with(
                r#"columns[1].nulable: unknown key `nulable` (expected one of: name, type"#
            ),
            "{e}"
        );
        assert!(
            e.contains(r#"; columns[2].type: unknown type "int" (expected one of bool, int32"#),
            "{e}"
        );
        assert_eq!(e.split("; ").count(), 2, "{e}");
        // ... then the rules between keys.
        let e = error(&columns("int32").replace(r#", "nulable": true"#, ""));
        assert_eq!(e, "columns[3].unit: applies only to timestamp columns");
    }

    #[test]
    fn handles_json_values_the_reference_parser_accepts() {
        let run = run(
            CDR,
            &[&json!({"call": {"id": "z"}, "cost": 1e-7, "extra": json!({"k": "v"})}).to_string()],
        );
        assert_eq!(run.rows[0][3], V::Numeric("1e-7".into()));
        assert_eq!(run.rows[0][4], V::Json(r#"{"k":"v"}"#.into()));
    }

    /// A 9-field CDR of about 230 bytes, as the throughput target assumes.
    pub(crate) const BENCH_CONFIG: &str = r#"{"schema": "cdr", "version": 1, "columns": [
        {"name": "call_id", "type": "uuid", "key": true},
        {"name": "caller", "type": "text"},
        {"name": "callee", "type": "text"},
        {"name": "started_at", "type": "timestamp"},
        {"name": "duration_s", "type": "int32"},
        {"name": "cell_id", "type": "int64"},
        {"name": "cost", "type": "numeric"},
        {"name": "roaming", "type": "bool"},
        {"name": "status", "type": "text"}]}"#;

    pub(crate) const BENCH_BODY: &str = r#"{"call_id":"5f0c6b2e-8d1a-4c3e-9b7f-2a6d4e8c1f03","caller":"+447700900123","callee":"+33612345678","started_at":"2026-11-27T15:04:05.123Z","duration_s":347,"cell_id":2341987654,"cost":"0.4250","roaming":false,"status":"completed"}"#;

    #[test]
    fn bench_body_decodes() {
        assert!(
            (200..=260).contains(&BENCH_BODY.len()),
            "{}",
            BENCH_BODY.len()
        );
        let run = run(BENCH_CONFIG, &[BENCH_BODY]);
        assert_eq!(run.outcomes, [MessageOutcome::Rows(1)]);
        assert_eq!(run.rows[0][4], V::Int32(347));
    }

    /// `cargo test --release -p json-source -- --ignored --nocapture bench_decode`
    ///
    /// Prints the best of 5 rounds of 200 batches of 1000 messages, in wall-clock
    /// time and (on Linux) in CPU time of the thread, which stays meaningful on a
    /// busy machine.
    #[test]
    #[ignore = "a benchmark: run it in release, see its doc"]
    fn bench_decode() {
        use sluice_plugin_sdk::rows::RowWriter;
        use std::time::Instant;

        /// Nanoseconds this thread spent on a CPU, if the kernel says.
        fn cpu_ns() -> Option<u64> {
            let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
            stat.split_whitespace().next()?.parse().ok()
        }

        let (mut source, _) = JsonSource::configure(BENCH_CONFIG).unwrap();
        let batch: Vec<Message> = (0..1000).map(|_| message_json(BENCH_BODY)).collect();
        let rounds = 200;
        let per_message = |ns: f64| ns / (rounds * batch.len()) as f64;
        let (mut best_wall, mut best_cpu) = (f64::MAX, f64::MAX);
        for _ in 0..5 {
            let (start, start_cpu) = (Instant::now(), cpu_ns());
            for _ in 0..rounds {
                let mut rows = RowWriter::with_capacity(128 * 1024);
                let outcomes = source.decode_batch(&batch, &mut rows);
                assert_eq!(outcomes.len(), batch.len());
                std::hint::black_box(rows.finish());
            }
            best_wall = best_wall.min(per_message(start.elapsed().as_nanos() as f64));
            if let (Some(a), Some(b)) = (start_cpu, cpu_ns()) {
                best_cpu = best_cpu.min(per_message((b - a) as f64));
            }
        }
        println!(
            "json-source decode ({} bytes, 9 fields): {best_wall:.0} ns/message wall, {best_cpu:.0} ns/message CPU",
            BENCH_BODY.len()
        );
    }
}

#[cfg(test)]
mod record_tests {
    use std::io::Write;

    use sluice_plugin_sdk::rows::OwnedValue as V;
    use sluice_plugin_sdk::testing::{SourceRun, message_json, run_source};
    use sluice_plugin_sdk::{Message, MessageOutcome};

    use super::JsonSource;

    fn config(records: &str) -> String {
        format!(
            r#"{{"schema": "t", "version": 1, "records": "{records}", "max_decompressed_bytes": 100000,
                "columns": [{{"name": "id", "type": "int64", "key": true}},
                            {{"name": "n", "type": "int32"}}]}}"#
        )
    }

    fn run(records: &str, messages: &[Message]) -> SourceRun {
        run_source::<JsonSource>(&config(records), messages).unwrap()
    }

    fn ids(run: &SourceRun) -> Vec<V> {
        run.rows.iter().map(|r| r[0].clone()).collect()
    }

    const NDJSON: &str = "{\"id\": 1, \"n\": 1}\n{\"id\": 2, \"n\": \"x\"}\n\n{\"id\": 3}\n{oops\n";

    #[test]
    fn ndjson_bad_records_are_rejected_alone_with_their_line() {
        let run = run(
            "ndjson",
            &[message_json(NDJSON), message_json("{\"id\": 9}")],
        );
        assert_eq!(ids(&run), [V::Int64(1), V::Int64(3), V::Int64(9)]);
        let MessageOutcome::Partial(p) = &run.outcomes[0] else {
            panic!("{:?}", run.outcomes[0]);
        };
        assert_eq!(p.rows, 2);
        let rejected: Vec<(u32, &[u8])> =
            p.rejected.iter().map(|r| (r.index, &r.body[..])).collect();
        assert_eq!(
            rejected,
            [(1, &b"{\"id\": 2, \"n\": \"x\"}"[..]), (4, &b"{oops"[..])]
        );
        assert_eq!(
            p.rejected[0].reason,
            r#"field "n" (column n): expected an integer, found string "x""#
        );
        assert!(
            p.rejected[1].reason.starts_with("body is not valid JSON"),
            "{}",
            p.rejected[1].reason
        );
        assert_eq!(run.outcomes[1], MessageOutcome::Rows(1));
        assert_eq!(run.rows_of(1), [vec![V::Int64(9), V::Null]]);
    }

    #[test]
    fn array_elements_are_records_and_a_broken_array_is_the_messages_fault() {
        let run = run(
            "array",
            &[
                message_json(r#"[{"id": 1}, 5, {"n": 2}, {"id": 4, "n": 4}]"#),
                message_json(r#"[{"id": 1}, {"#),
            ],
        );
        assert_eq!(ids(&run), [V::Int64(1), V::Int64(4)]);
        let rejected = run.rejected_records(0);
        assert_eq!(rejected.len(), 2);
        assert_eq!((rejected[0].index, &rejected[0].body[..]), (1, &b"5"[..]));
        assert_eq!(
            rejected[0].reason,
            "top level is not a JSON object (found number 5)"
        );
        assert_eq!(
            (rejected[1].index, &rejected[1].body[..]),
            (2, &br#"{"n": 2}"#[..])
        );
        assert_eq!(
            rejected[1].reason,
            r#"missing required field "id" (column id)"#
        );
        assert!(
            run.rejection(1)
                .unwrap()
                .starts_with("records = \"array\": the body is not a valid JSON array"),
            "{:?}",
            run.rejection(1)
        );
    }

    #[test]
    fn compressed_bodies_are_read_by_their_content_encoding() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(NDJSON.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let zst = ruzstd::encoding::compress_to_vec(
            NDJSON.as_bytes(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let run = run(
            "ndjson",
            &[
                Message::new(gz).with_content_encoding("gzip"),
                Message::new(zst).with_content_encoding("zstd"),
            ],
        );
        assert_eq!(
            ids(&run),
            [V::Int64(1), V::Int64(3), V::Int64(1), V::Int64(3)]
        );
        for m in 0..2 {
            let indexes: Vec<u32> = run.rejected_records(m).iter().map(|r| r.index).collect();
            assert_eq!(indexes, [1, 4], "message {m}");
            // The dead letter carries the record decompressed.
            assert_eq!(run.rejected_records(m)[1].body, b"{oops");
        }
    }

    #[test]
    fn a_bomb_is_rejected_whole_naming_the_limit() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b' '; 10 << 20]).unwrap();
        let bomb = gz.finish().unwrap();
        let run = run(
            "ndjson",
            &[Message::new(bomb).with_content_encoding("gzip")],
        );
        assert!(run.rows.is_empty());
        assert_eq!(
            run.rejection(0),
            Some(
                "content-encoding gzip: the body decompresses past max_decompressed_bytes \
                 (100000 bytes); it was not decompressed further"
            )
        );
    }

    #[test]
    fn one_record_per_message_stays_the_default() {
        let config = r#"{"schema": "t", "version": 1,
            "columns": [{"name": "id", "type": "int64", "key": true}]}"#;
        let run = run_source::<JsonSource>(
            config,
            &[
                message_json("{\"id\": 1}\n{\"id\": 2}"),
                message_json("{\"id\": 3}"),
            ],
        )
        .unwrap();
        assert!(
            run.rejection(0)
                .unwrap()
                .starts_with("body is not valid JSON")
        );
        assert_eq!(ids(&run), [V::Int64(3)]);
    }
}
