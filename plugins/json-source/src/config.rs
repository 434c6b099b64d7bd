//! The plugin's configuration: read with the SDK's [`config`] helper (every
//! unknown key and wrong value at once), then checked into [`Config`] (every rule
//! between keys at once).

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use sluice_plugin_sdk::config::{self, Problems};
use sluice_plugin_sdk::{ColumnType, PluginError, Schema};

/// A valid configuration.
#[derive(Debug)]
pub(crate) struct Config {
    pub schema: Schema,
    pub columns: Vec<ColumnSpec>,
    pub records: RecordFraming,
    pub max_decompressed_bytes: u64,
}

/// How many records a message holds, and how they are told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RecordFraming {
    /// The body is one JSON object: one row (or one rejection for the message).
    One,
    /// One JSON object per line (NDJSON); blank lines are skipped.
    Ndjson,
    /// A JSON array of objects.
    Array,
}

/// `max_decompressed_bytes` when the configuration does not say: 64 MiB.
pub(crate) const DEFAULT_MAX_DECOMPRESSED_BYTES: u64 = 64 << 20;

/// How one column is found in a message and read.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ColumnSpec {
    pub name: String,
    pub ty: ColumnType,
    pub nullable: bool,
    /// Keys from the top-level object down to the value.
    pub path: Vec<String>,
    /// The path as rejection reasons show it: dotted, or a JSON array when a key
    /// holds a dot.
    pub path_display: String,
    pub unit: TimeUnit,
    pub encoding: BytesEncoding,
    pub coerce: bool,
}

/// What a number means in a timestamp column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub(crate) enum TimeUnit {
    #[serde(rename = "s")]
    Seconds,
    #[serde(rename = "ms")]
    Millis,
    #[serde(rename = "us")]
    Micros,
}

impl TimeUnit {
    /// Decimal digits to shift a count of this unit by to get microseconds.
    pub fn micros_exponent(self) -> i64 {
        match self {
            TimeUnit::Seconds => 6,
            TimeUnit::Millis => 3,
            TimeUnit::Micros => 0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TimeUnit::Seconds => "seconds",
            TimeUnit::Millis => "milliseconds",
            TimeUnit::Micros => "microseconds",
        }
    }
}

/// How a bytes column's text is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum BytesEncoding {
    Base64,
    Hex,
}

/// The configuration as written.
#[derive(Deserialize)]
struct Raw {
    /// The name of the data set.
    schema: String,
    /// The schema version.
    version: u32,
    columns: Vec<RawColumn>,
    records: Option<RecordFraming>,
    max_decompressed_bytes: Option<u64>,
}

/// One of `columns` as written.
#[derive(Deserialize)]
struct RawColumn {
    name: String,
    #[serde(rename = "type", with = "config::from_str")]
    ty: ColumnType,
    #[serde(default)]
    key: bool,
    nullable: Option<bool>,
    path: Option<KeyPath>,
    unit: Option<TimeUnit>,
    encoding: Option<BytesEncoding>,
    coerce: Option<bool>,
}

/// A column's `path`: a dotted string, or a list of keys (for keys holding dots).
struct KeyPath(Vec<String>);

impl<'de> Deserialize<'de> for KeyPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<KeyPath, D::Error> {
        struct PathVisitor;

        impl<'de> Visitor<'de> for PathVisitor {
            type Value = KeyPath;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a dotted string like \"call.id\" or a non-empty list of keys")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<KeyPath, E> {
                if s.split('.').any(str::is_empty) {
                    return Err(E::custom(format!(
                        "{s:?} has an empty segment (for keys holding dots, give the path as a list of keys)"
                    )));
                }
                Ok(KeyPath(s.split('.').map(str::to_owned).collect()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyPath, A::Error> {
                let mut keys = Vec::new();
                while let Some(key) = seq.next_element::<String>()? {
                    keys.push(key);
                }
                if keys.is_empty() {
                    return Err(de::Error::invalid_length(0, &self));
                }
                Ok(KeyPath(keys))
            }
        }

        deserializer.deserialize_any(PathVisitor)
    }
}

/// Reads and checks the configuration text.
pub(crate) fn parse(config: &str) -> Result<Config, PluginError> {
    let raw: Raw = config::parse(config)?;
    let mut problems = Problems::new();
    if !Schema::is_valid_name(&raw.schema) {
        problems.add(
            "schema",
            format!("invalid name {:?} ({NAME_RULE})", raw.schema),
        );
    }
    if raw.max_decompressed_bytes == Some(0) {
        problems.add("max_decompressed_bytes", "must be more than 0 (bytes)");
    }
    if raw.columns.is_empty() {
        problems.add("columns", "is empty");
    } else if !raw.columns.iter().any(|c| c.key) {
        problems.add(
            "columns",
            "no key column: mark at least one column with \"key\": true",
        );
    }
    let mut columns = Vec::new();
    for (i, column) in raw.columns.into_iter().enumerate() {
        let at = |key: &str| format!("columns[{i}].{key}");
        if !Schema::is_valid_name(&column.name) {
            problems.add(
                at("name"),
                format!("invalid name {:?} ({NAME_RULE})", column.name),
            );
        } else if let Some(j) = columns
            .iter()
            .position(|(c, _): &(ColumnSpec, bool)| c.name == column.name)
        {
            problems.add(
                at("name"),
                format!("duplicate name {:?} (also columns[{j}])", column.name),
            );
        }
        if column.key && column.nullable == Some(true) {
            problems.add(at("nullable"), "a key column cannot be nullable");
        }
        for (option, set, to) in [
            ("unit", column.unit.is_some(), ColumnType::Timestamp),
            ("encoding", column.encoding.is_some(), ColumnType::Bytes),
            ("coerce", column.coerce.is_some(), ColumnType::Text),
        ] {
            if set && column.ty != to {
                problems.add(at(option), format!("applies only to {to} columns"));
            }
        }
        let path = match column.path {
            Some(KeyPath(keys)) => keys,
            None => vec![column.name.clone()],
        };
        columns.push((
            ColumnSpec {
                nullable: column.nullable.unwrap_or(!column.key),
                name: column.name,
                ty: column.ty,
                path_display: display_path(&path),
                path,
                unit: column.unit.unwrap_or(TimeUnit::Seconds),
                encoding: column.encoding.unwrap_or(BytesEncoding::Base64),
                coerce: column.coerce.unwrap_or(false),
            },
            column.key,
        ));
    }
    problems.check()?;
    let mut schema = Schema::new(raw.schema, raw.version);
    for (spec, key) in &columns {
        schema = match (key, spec.nullable) {
            (true, _) => schema.key(spec.name.clone(), spec.ty),
            (false, true) => schema.column(spec.name.clone(), spec.ty),
            (false, false) => schema.required(spec.name.clone(), spec.ty),
        };
    }
    // Every rule was checked above with better messages; this is the SDK's word on it.
    schema.validate().map_err(PluginError::InvalidConfig)?;
    Ok(Config {
        schema,
        columns: columns.into_iter().map(|(spec, _)| spec).collect(),
        records: raw.records.unwrap_or(RecordFraming::One),
        max_decompressed_bytes: raw
            .max_decompressed_bytes
            .unwrap_or(DEFAULT_MAX_DECOMPRESSED_BYTES),
    })
}

const NAME_RULE: &str = "use a lowercase ASCII letter, then lowercase ASCII letters, digits or _";

/// `call.id`, or `["a.b","c"]` when a key holds a dot (or is empty).
pub(crate) fn display_path(path: &[String]) -> String {
    if path.iter().any(|k| k.is_empty() || k.contains('.')) {
        serde_json::to_string(path).unwrap_or_default()
    } else {
        path.join(".")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(config: &str) -> String {
        match parse(config) {
            Err(PluginError::InvalidConfig(e)) => e,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_documented_example() {
        let config = parse(
            r#"{ "schema": "cdr", "version": 1,
                 "columns": [
                   {"name": "call_id", "type": "text", "key": true, "path": "call.id"},
                   {"name": "started_at", "type": "timestamp", "path": "start"},
                   {"name": "duration_s", "type": "int32"},
                   {"name": "cost", "type": "numeric", "nullable": true},
                   {"name": "raw", "type": "json", "path": "extra"} ]}"#,
        )
        .unwrap();
        assert_eq!(config.schema.name, "cdr");
        assert_eq!(config.schema.version, 1);
        let c = &config.schema.columns;
        assert!(c[0].key && !c[0].nullable);
        assert!(c[1].nullable && !c[1].key);
        assert_eq!(config.columns[0].path, ["call", "id"]);
        assert_eq!(config.columns[0].path_display, "call.id");
        assert_eq!(config.columns[2].path, ["duration_s"]);
        assert_eq!(config.columns[1].unit, TimeUnit::Seconds);
    }

    #[test]
    fn path_arrays_allow_dots_in_keys() {
        let config = parse(
            r#"{"schema": "t", "version": 2, "columns": [
                {"name": "id", "type": "int64", "key": true, "path": ["meta", "a.b"]},
                {"name": "b", "type": "bytes", "encoding": "hex", "nullable": false},
                {"name": "t", "type": "timestamp", "unit": "ms"},
                {"name": "s", "type": "text", "coerce": true}]}"#,
        )
        .unwrap();
        assert_eq!(config.columns[0].path, ["meta", "a.b"]);
        assert_eq!(config.columns[0].path_display, r#"["meta","a.b"]"#);
        assert!(!config.columns[1].nullable);
        assert_eq!(config.columns[1].encoding, BytesEncoding::Hex);
        assert_eq!(config.columns[2].unit, TimeUnit::Millis);
        assert!(config.columns[3].coerce);
    }

    #[test]
    fn reports_every_problem_at_once() {
        let e = err(r#"{"version": "one", "colums": [], "columns": [
            {"name": "call_id", "type": "text", "key": true},
            {"name": "started_at", "type": "timestamp", "unit": "h"},
            {"name": "duration_s", "type": "int"},
            {"type": "text"},
            {"name": "b", "type": "int32", "tpye": "x", "encoding": "zip"},
            {"name": "p", "type": "text", "path": "a..b", "key": "yes"},
            7 ]}"#);
        let expected = [
            "columns[1].unit: unknown variant `h`, expected one of `s`, `ms`, `us`",
            "columns[2].type: unknown type \"int\"",
            "columns[3].name: missing (required)",
            "columns[4].encoding: unknown variant `zip`, expected `base64` or `hex`",
            "columns[4].tpye: unknown key `tpye`",
            "columns[5].key: invalid type: string \"yes\", expected a boolean",
            "columns[5].path: \"a..b\" has an empty segment",
            "columns[6]: expected a table with the keys name, type, key, nullable, path, unit, encoding, coerce, found 7",
            "colums: unknown key `colums` (expected one of: schema, version, columns, records, max_decompressed_bytes)",
            "schema: missing (required)",
            "version: invalid type: string \"one\", expected u32",
        ];
        let found: Vec<&str> = e.split("; ").collect();
        assert_eq!(found.len(), expected.len(), "{e}");
        for (found, expected) in found.iter().zip(expected) {
            assert!(
                found.starts_with(expected),
                "expected {expected:?}, found {found:?}"
            );
        }
    }

    #[test]
    fn reports_every_broken_rule_at_once() {
        let e = err(r#"{"schema": "Cdr", "version": 1, "columns": [
            {"name": "call_id", "type": "text", "key": true, "nullable": true},
            {"name": "started_at", "type": "int64", "unit": "ms"},
            {"name": "call_id", "type": "bytes", "coerce": true},
            {"name": "Bad", "type": "text", "path": ["a.b", "c"]} ]}"#);
        assert_eq!(
            e.split("; ").collect::<Vec<_>>(),
            [
                format!("schema: invalid name \"Cdr\" ({NAME_RULE})").as_str(),
                "columns[0].nullable: a key column cannot be nullable",
                "columns[1].unit: applies only to timestamp columns",
                "columns[2].name: duplicate name \"call_id\" (also columns[0])",
                "columns[2].coerce: applies only to text columns",
                format!("columns[3].name: invalid name \"Bad\" ({NAME_RULE})").as_str(),
            ]
        );
    }

    #[test]
    fn requires_a_key_column_and_columns() {
        let e = err(r#"{"schema": "t", "version": 1, "columns": [{"name": "a", "type": "text"}]}"#);
        assert_eq!(
            e,
            "columns: no key column: mark at least one column with \"key\": true"
        );
        let e = err(r#"{"schema": "t", "version": -1, "columns": []}"#);
        assert_eq!(e, "version: invalid value: integer `-1`, expected u32");
        let e = err(r#"{"schema": "t", "version": 1, "columns": [], "max_decompressed_bytes": 0}"#);
        assert_eq!(
            e,
            "max_decompressed_bytes: must be more than 0 (bytes); columns: is empty"
        );
        assert!(err("[]").starts_with("expected a table with the keys schema, version"));
        assert!(err("{").starts_with("the configuration is not valid JSON: EOF while parsing"));
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;

    const COLUMNS: &str = r#""schema": "t", "version": 1,
        "columns": [{"name": "id", "type": "int64", "key": true}]"#;

    #[test]
    fn one_record_per_message_and_64_mib_unless_told_otherwise() {
        let config = parse(&format!("{{{COLUMNS}}}")).unwrap();
        assert_eq!(config.records, RecordFraming::One);
        assert_eq!(config.max_decompressed_bytes, 64 << 20);
        let config = parse(&format!(
            r#"{{{COLUMNS}, "records": "ndjson", "max_decompressed_bytes": 1000}}"#
        ))
        .unwrap();
        assert_eq!(config.records, RecordFraming::Ndjson);
        assert_eq!(config.max_decompressed_bytes, 1000);
        let config = parse(&format!(r#"{{{COLUMNS}, "records": "array"}}"#)).unwrap();
        assert_eq!(config.records, RecordFraming::Array);
    }

    #[test]
    fn a_wrong_framing_or_limit_is_reported_with_the_rest() {
        let Err(PluginError::InvalidConfig(e)) = parse(&format!(
            r#"{{{COLUMNS}, "records": "csv", "max_decompressed_bytes": "1k", "extra": 1}}"#
        )) else {
            panic!("accepted");
        };
        assert!(
            e.contains(
                r#"records: unknown variant `csv`, expected one of `one`, `ndjson`, `array`"#
            ),
            "{e}"
        );
        assert!(
            e.contains(r#"max_decompressed_bytes: invalid type: string "1k", expected u64"#),
            "{e}"
        );
        assert!(e.contains(r#"extra: unknown key `extra`"#), "{e}");
    }
}
