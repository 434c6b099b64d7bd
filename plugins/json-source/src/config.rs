//! The plugin's configuration: parsed from JSON, then validated into [`Config`],
//! reporting every problem at once.

use serde_json::{Map, Value};
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeUnit {
    Seconds,
    Millis,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BytesEncoding {
    Base64,
    Hex,
}

const TOP_KEYS: &str = "schema, version, columns, records, max_decompressed_bytes";
const COLUMN_KEYS: &str = "name, type, key, nullable, path, unit, encoding, coerce";

/// Parses and validates the configuration text.
pub(crate) fn parse(config: &str) -> Result<Config, PluginError> {
    let value: Value = serde_json::from_str(config).map_err(|e| {
        PluginError::InvalidConfig(format!("the configuration is not valid JSON: {e}"))
    })?;
    let Value::Object(top) = value else {
        return Err(PluginError::InvalidConfig(
            "the configuration must be a JSON object".to_owned(),
        ));
    };
    let mut problems = Vec::new();

    for key in top.keys() {
        if !matches!(
            key.as_str(),
            "schema" | "version" | "columns" | "records" | "max_decompressed_bytes"
        ) {
            problems.push(format!("unknown key {key:?} (expected {TOP_KEYS})"));
        }
    }
    let name = match top.get("schema") {
        None => {
            problems.push("missing key \"schema\" (the name of the data set)".to_owned());
            String::new()
        }
        Some(Value::String(s)) if Schema::is_valid_name(s) => s.clone(),
        Some(Value::String(s)) => {
            problems.push(format!("\"schema\": invalid name {s:?} ({NAME_RULE})"));
            String::new()
        }
        Some(_) => {
            problems.push("\"schema\" must be a string".to_owned());
            String::new()
        }
    };
    let version = match top.get("version") {
        None => {
            problems.push("missing key \"version\" (the schema version, an integer)".to_owned());
            0
        }
        Some(v) => match v.as_u64().and_then(|v| u32::try_from(v).ok()) {
            Some(v) => v,
            None => {
                problems.push(format!(
                    "\"version\" must be an integer from 0 to {}, found {v}",
                    u32::MAX
                ));
                0
            }
        },
    };
    let records = match top.get("records") {
        None => RecordFraming::One,
        Some(Value::String(s)) if s == "one" => RecordFraming::One,
        Some(Value::String(s)) if s == "ndjson" => RecordFraming::Ndjson,
        Some(Value::String(s)) if s == "array" => RecordFraming::Array,
        Some(other) => {
            problems.push(format!(
                "\"records\" must be \"one\", \"ndjson\" or \"array\", found {other}"
            ));
            RecordFraming::One
        }
    };
    let max_decompressed_bytes = match top.get("max_decompressed_bytes") {
        None => DEFAULT_MAX_DECOMPRESSED_BYTES,
        Some(v) => match v.as_u64().filter(|n| *n > 0) {
            Some(n) => n,
            None => {
                problems.push(format!(
                    "\"max_decompressed_bytes\" must be a positive integer (bytes), found {v}"
                ));
                DEFAULT_MAX_DECOMPRESSED_BYTES
            }
        },
    };
    let mut columns = Vec::new();
    match top.get("columns") {
        None => problems.push("missing key \"columns\" (an array of columns)".to_owned()),
        Some(Value::Array(items)) if items.is_empty() => {
            problems.push("\"columns\" is empty".to_owned())
        }
        Some(Value::Array(items)) => {
            let mut seen = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if let Some(column) = parse_column(i, item, &mut seen, &mut problems) {
                    columns.push(column);
                }
            }
            if !columns.is_empty() && !columns.iter().any(|c: &(ColumnSpec, bool)| c.1) {
                problems
                    .push("no key column: mark at least one column with \"key\": true".to_owned());
            }
        }
        Some(_) => problems.push("\"columns\" must be an array".to_owned()),
    }

    if !problems.is_empty() {
        return Err(PluginError::InvalidConfig(problems.join("; ")));
    }
    let mut schema = Schema::new(name, version);
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
        records,
        max_decompressed_bytes,
    })
}

const NAME_RULE: &str = "use a lowercase ASCII letter, then lowercase ASCII letters, digits or _";

/// Validates `columns[i]`; returns it with its key flag, or `None` after recording
/// its problems. `seen` holds the names of the columns before it.
fn parse_column<'c>(
    i: usize,
    item: &'c Value,
    seen: &mut Vec<&'c str>,
    problems: &mut Vec<String>,
) -> Option<(ColumnSpec, bool)> {
    let Value::Object(obj) = item else {
        seen.push("");
        problems.push(format!("columns[{i}]: must be an object"));
        return None;
    };
    let before = problems.len();
    let name = match obj.get("name") {
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => {
            problems.push(format!("columns[{i}]: \"name\" must be a string"));
            None
        }
        None => {
            problems.push(format!("columns[{i}]: missing key \"name\""));
            None
        }
    };
    let at = match name {
        Some(n) => format!("columns[{i}] ({n})"),
        None => format!("columns[{i}]"),
    };
    if let Some(name) = name {
        if !Schema::is_valid_name(name) {
            problems.push(format!("{at}: invalid name {name:?} ({NAME_RULE})"));
        } else if let Some(j) = seen.iter().position(|n| *n == name) {
            problems.push(format!("{at}: duplicate name {name:?} (also columns[{j}])"));
        }
    }
    seen.push(name.unwrap_or(""));
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "name" | "type" | "key" | "nullable" | "path" | "unit" | "encoding" | "coerce"
        ) {
            problems.push(format!(
                "{at}: unknown key {key:?} (expected {COLUMN_KEYS})"
            ));
        }
    }
    let ty = match obj.get("type") {
        Some(Value::String(s)) => match s.parse::<ColumnType>() {
            Ok(ty) => Some(ty),
            Err(e) => {
                problems.push(format!("{at}: {e}"));
                None
            }
        },
        Some(_) => {
            problems.push(format!("{at}: \"type\" must be a string"));
            None
        }
        None => {
            problems.push(format!("{at}: missing key \"type\""));
            None
        }
    };
    let key = bool_option(obj, "key", &at, problems).unwrap_or(false);
    let nullable = match bool_option(obj, "nullable", &at, problems) {
        Some(true) if key => {
            problems.push(format!("{at}: a key column cannot be nullable"));
            false
        }
        Some(n) => n,
        None => !key,
    };
    let path = match obj.get("path") {
        None => name.map(|n| vec![n.to_owned()]).unwrap_or_default(),
        Some(Value::String(s)) if s.split('.').any(str::is_empty) => {
            problems.push(format!(
                "{at}: \"path\" {s:?} has an empty segment (for keys holding dots, give the path as an array of keys)"
            ));
            Vec::new()
        }
        Some(Value::String(s)) => s.split('.').map(str::to_owned).collect(),
        Some(Value::Array(keys)) if !keys.is_empty() && keys.iter().all(Value::is_string) => keys
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(_) => {
            problems.push(format!(
                "{at}: \"path\" must be a dotted string or a non-empty array of keys"
            ));
            Vec::new()
        }
    };
    let applies = |option: &str, to: ColumnType, problems: &mut Vec<String>| {
        if obj.contains_key(option) && ty.is_some_and(|t| t != to) {
            problems.push(format!("{at}: {option:?} applies only to {to} columns"));
        }
    };
    applies("unit", ColumnType::Timestamp, problems);
    applies("encoding", ColumnType::Bytes, problems);
    applies("coerce", ColumnType::Text, problems);
    let unit = match obj.get("unit").map(|u| u.as_str()) {
        None | Some(Some("s")) => TimeUnit::Seconds,
        Some(Some("ms")) => TimeUnit::Millis,
        Some(Some("us")) => TimeUnit::Micros,
        Some(_) => {
            problems.push(format!("{at}: \"unit\" must be \"s\", \"ms\" or \"us\""));
            TimeUnit::Seconds
        }
    };
    let encoding = match obj.get("encoding").map(|u| u.as_str()) {
        None | Some(Some("base64")) => BytesEncoding::Base64,
        Some(Some("hex")) => BytesEncoding::Hex,
        Some(_) => {
            problems.push(format!("{at}: \"encoding\" must be \"base64\" or \"hex\""));
            BytesEncoding::Base64
        }
    };
    let coerce = bool_option(obj, "coerce", &at, problems).unwrap_or(false);

    if problems.len() > before {
        return None;
    }
    let (name, ty) = (name?, ty?);
    Some((
        ColumnSpec {
            name: name.to_owned(),
            ty,
            nullable,
            path_display: display_path(&path),
            path,
            unit,
            encoding,
            coerce,
        },
        key,
    ))
}

fn bool_option(
    obj: &Map<String, Value>,
    key: &str,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<bool> {
    match obj.get(key) {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            problems.push(format!("{at}: {key:?} must be true or false"));
            None
        }
    }
}

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
        let e = err(r#"{"schema": "Cdr", "colums": [], "columns": [
            {"name": "call_id", "type": "text", "key": true, "nullable": true},
            {"name": "started_at", "type": "timestamp", "unit": "h"},
            {"name": "duration_s", "type": "int"},
            {"type": "text"},
            {"name": "duration_s", "type": "int32", "tpye": "x", "encoding": "hex"},
            {"name": "p", "type": "text", "path": "a..b", "key": "yes"},
            7 ]}"#);
        let expected = [
            "unknown key \"colums\" (expected schema, version, columns, records, max_decompressed_bytes)",
            "\"schema\": invalid name \"Cdr\"",
            "missing key \"version\"",
            "columns[0] (call_id): a key column cannot be nullable",
            "columns[1] (started_at): \"unit\" must be \"s\", \"ms\" or \"us\"",
            "columns[2] (duration_s): unknown type \"int\"",
            "columns[3]: missing key \"name\"",
            "columns[4] (duration_s): duplicate name \"duration_s\" (also columns[2])",
            "columns[4] (duration_s): unknown key \"tpye\"",
            "columns[4] (duration_s): \"encoding\" applies only to bytes columns",
            "columns[5] (p): \"key\" must be true or false",
            "columns[5] (p): \"path\" \"a..b\" has an empty segment",
            "columns[6]: must be an object",
        ];
        for part in expected {
            assert!(e.contains(part), "missing {part:?} in:\n{e}");
        }
        assert_eq!(e.split("; ").count(), expected.len(), "{e}");
    }

    #[test]
    fn requires_a_key_column_and_columns() {
        let e = err(r#"{"schema": "t", "version": 1, "columns": [{"name": "a", "type": "text"}]}"#);
        assert_eq!(
            e,
            "no key column: mark at least one column with \"key\": true"
        );
        let e = err(r#"{"schema": "t", "version": -1, "columns": []}"#);
        assert_eq!(
            e,
            "\"version\" must be an integer from 0 to 4294967295, found -1; \"columns\" is empty"
        );
        assert_eq!(err("[]"), "the configuration must be a JSON object");
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
            r#"{{{COLUMNS}, "records": "csv", "max_decompressed_bytes": 0, "extra": 1}}"#
        )) else {
            panic!("accepted");
        };
        assert!(
            e.contains(r#""records" must be "one", "ndjson" or "array", found "csv""#),
            "{e}"
        );
        assert!(
            e.contains(r#""max_decompressed_bytes" must be a positive integer (bytes), found 0"#),
            "{e}"
        );
        assert!(e.contains(r#"unknown key "extra""#), "{e}");
    }
}
