//! Reading a plugin's configuration: one `#[derive(Deserialize)]` struct, every
//! problem reported at once, each at its key path.
//!
//! The host hands a plugin its `config` table as JSON text (`"{}"` when there is
//! none). [`parse`] reads it into the plugin's own struct and reports, in one
//! [`PluginError::InvalidConfig`]:
//!
//! - every unknown key, with the keys its table takes (a typo is not ignored);
//! - every value of the wrong type or form (an optional key is checked even when
//!   another key failed; a required key that is missing or wrong stops the table
//!   holding it, after its other keys were checked);
//! - every element of a list on its own (`columns[2].type` and `columns[5].name`).
//!
//! They come sorted by key path.
//!
//! Rules serde cannot express (one key requires another, a number must be more
//! than 0) are checked on the typed value and reported with [`Problems`], once
//! the keys and types are right. The host shows the message under the plugin's
//! table, `pipelines[i].source.config` or `pipelines[i].writers[j].config`.
//!
//! ```
//! use std::time::Duration;
//! use serde::Deserialize;
//! use sluice_plugin_sdk::PluginError;
//! use sluice_plugin_sdk::config::{self, Problems};
//!
//! #[derive(Deserialize)]
//! struct Config {
//!     url: String,
//!     #[serde(default)]
//!     user: Option<String>,
//!     #[serde(default)]
//!     password: Option<String>,
//!     #[serde(default, with = "config::duration::option")]
//!     timeout: Option<Duration>,
//! }
//!
//! fn read(json: &str) -> Result<Config, PluginError> {
//!     let config: Config = config::parse(json)?;
//!     let mut problems = Problems::new();
//!     if config.password.is_some() && config.user.is_none() {
//!         problems.add("password", "is set without `user`");
//!     }
//!     problems.check()?;
//!     Ok(config)
//! }
//!
//! assert!(read(r#"{"url": "http://h", "timeout": "1m30s"}"#).is_ok());
//! let e = read(r#"{"url": 5, "pasword": "x", "timeout": "soon"}"#).err().unwrap();
//! assert_eq!(
//!     e.message(),
//!     "pasword: unknown key `pasword` (expected one of: url, user, password, timeout); \
//!      timeout: \"soon\" is not a duration like \"200ms\", \"30s\" or \"5m\" (expected number at 0); \
//!      url: invalid type: integer `5`, expected a string"
//! );
//! ```
//!
//! Do not mark the struct `#[serde(deny_unknown_fields)]`: it would stop at the
//! first unknown key, where [`parse`] reports them all.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Visitor};
use serde_json::Value;

use crate::PluginError;

/// One thing wrong with a configuration, at its key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: `batch.max_rows`, `columns[2].type`; empty for the whole table.
    pub path: String,
    /// What is wrong, and what was expected.
    pub message: String,
}

impl Problem {
    /// A problem at `path` (empty: the configuration as a whole).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The problems found in a configuration, reported together as one
/// [`PluginError::InvalidConfig`].
///
/// ```
/// use sluice_plugin_sdk::config::Problems;
/// let mut problems = Problems::new();
/// assert!(problems.check().is_ok());
/// problems.add("columns[1].unit", "applies only to timestamp columns");
/// problems.add("", "no key column");
/// assert_eq!(
///     problems.check().unwrap_err().to_string(),
///     "invalid configuration: columns[1].unit: applies only to timestamp columns; no key column"
/// );
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    /// No problems yet.
    pub fn new() -> Problems {
        Problems::default()
    }

    /// Records that the value at `path` (empty: the whole table) is wrong.
    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The problems, in the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> + '_ {
        self.list.iter()
    }

    /// `Ok` when there are none, else all of them as one configuration error.
    pub fn check(&self) -> Result<(), PluginError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(PluginError::InvalidConfig(self.to_string()))
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.list.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl From<Problems> for PluginError {
    fn from(problems: Problems) -> PluginError {
        PluginError::InvalidConfig(problems.to_string())
    }
}

/// Reads the configuration `json` (empty text reads as `{}`) into `T`, or reports
/// every unknown key and every wrong value, each at its key path (see the
/// [module docs](self)).
///
/// ```
/// use serde::Deserialize;
/// use sluice_plugin_sdk::config;
///
/// #[derive(Debug, Deserialize)]
/// struct Column { name: String, #[serde(rename = "type")] ty: String }
/// #[derive(Debug, Deserialize)]
/// struct Config { columns: Vec<Column> }
///
/// let e = config::parse::<Config>(r#"{"columns": [{"name": "a"}, {"name": 1, "type": "text"}]}"#);
/// assert_eq!(
///     e.unwrap_err().message(),
///     "columns[0].type: missing (required); columns[1].name: invalid type: integer `1`, expected a string"
/// );
/// ```
pub fn parse<T: DeserializeOwned>(json: &str) -> Result<T, PluginError> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    let value: Value = serde_json::from_str(json).map_err(|e| {
        PluginError::InvalidConfig(format!("the configuration is not valid JSON: {e}"))
    })?;
    let mut problems = Problems::new();
    let mut unknown_seen = HashSet::new();
    // The values found wrong so far. Each pass reads the whole value again as if
    // they were absent, so that serde, which stops at the first error, goes on to
    // the next one; a required key found wrong then fails its table as missing,
    // which is not reported again, and the table is left out in turn. Every pass
    // leaves out one more value, so this ends; configurations are small.
    let mut left_out: HashSet<String> = HashSet::new();
    loop {
        let pass = Pass {
            left_out: &left_out,
            unknown: RefCell::new(Vec::new()),
            failure: RefCell::new(None),
        };
        let result = T::deserialize(Node {
            value: &value,
            path: String::new(),
            key_of: None,
            pass: &pass,
        });
        for problem in pass.unknown.take() {
            if unknown_seen.insert(problem.path.clone()) {
                problems.list.push(problem);
            }
        }
        let error = match result {
            Ok(config) => {
                problems.list.sort_by_cached_key(|p| path_order(&p.path));
                problems.check()?;
                return Ok(config);
            }
            Err(error) => error,
        };
        let failure = pass.failure.take().unwrap_or(Failure {
            path: String::new(),
            error,
        });
        match failure.error {
            Error::Missing(field) => {
                let at = key_path(&failure.path, field);
                if !left_out.contains(&at) {
                    problems.add(at, "missing (required)");
                }
            }
            Error::Message(message) => problems.add(failure.path.clone(), message),
        }
        if failure.path.is_empty() || !left_out.insert(failure.path) {
            // The order of a table's keys depends on serde_json's features
            // (sorted, or as written): sorted by path, the message does not.
            problems.list.sort_by_cached_key(|p| path_order(&p.path));
            return Err(problems.into());
        }
    }
}

/// One step of a key path, to sort paths by: keys by name, list elements by
/// index (`columns[2]` before `columns[10]`).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Key(String),
    Index(usize),
}

/// The steps of a key path as [`key_path`] and lists write it.
fn path_order(path: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut chars = path.chars();
    let mut key: Option<String> = None;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let key = key.get_or_insert_with(String::new);
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => key.extend(chars.next()),
                        '"' => break,
                        c => key.push(c),
                    }
                }
            }
            '.' => steps.extend(key.take().map(Step::Key)),
            '[' => {
                steps.extend(key.take().map(Step::Key));
                let digits: String = chars.by_ref().take_while(|c| *c != ']').collect();
                steps.push(Step::Index(digits.parse().unwrap_or(0)));
            }
            c => key.get_or_insert_with(String::new).push(c),
        }
    }
    steps.extend(key.map(Step::Key));
    steps
}

/// Appends `key` to the key path `parent`, quoted unless it is a plain name
/// (`batch.max_rows`, `tables."my.table"`). The host writes the paths of its
/// own configuration with this too, so both read alike.
pub fn key_path(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if plain {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// A value as problems describe what was found instead of what was expected.
fn describe(value: &Value) -> String {
    match value {
        Value::Object(_) => "a table".to_owned(),
        Value::Array(_) => "a list".to_owned(),
        other => other.to_string(),
    }
}

/// Serde helpers for durations written the way Sluice's configuration writes
/// them (`"500ms"`, `"30s"`, `"1h30m"`; see [`time::parse_duration`]).
///
/// ```
/// use std::time::Duration;
/// use serde::Deserialize;
/// use sluice_plugin_sdk::config;
///
/// #[derive(Deserialize)]
/// struct Config {
///     #[serde(with = "config::duration")]
///     rotate_after: Duration,
///     #[serde(default, with = "config::duration::option")]
///     ttl: Option<Duration>,
/// }
/// let c: Config = config::parse(r#"{"rotate_after": "5m"}"#).unwrap();
/// assert_eq!((c.rotate_after, c.ttl), (Duration::from_secs(300), None));
/// ```
///
/// [`time::parse_duration`]: crate::time::parse_duration
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// A required duration: `#[serde(with = "sluice_plugin_sdk::config::duration")]`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        crate::time::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    /// An optional duration:
    /// `#[serde(default, with = "sluice_plugin_sdk::config::duration::option")]`
    /// (without `default`, serde requires the key).
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer};

        /// `None` for `null`, else the duration.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            match Option::<String>::deserialize(deserializer)? {
                None => Ok(None),
                Some(text) => crate::time::parse_duration(&text)
                    .map(Some)
                    .map_err(serde::de::Error::custom),
            }
        }
    }
}

/// A serde helper for any type that implements [`FromStr`](std::str::FromStr):
/// the value is a string, and the type's parse error is the problem's message.
///
/// ```
/// use serde::Deserialize;
/// use sluice_plugin_sdk::{ColumnType, config};
///
/// #[derive(Debug, Deserialize)]
/// struct Column {
///     #[serde(rename = "type", with = "config::from_str")]
///     ty: ColumnType,
/// }
/// assert_eq!(config::parse::<Column>(r#"{"type": "int64"}"#).unwrap().ty, ColumnType::Int64);
/// assert!(config::parse::<Column>(r#"{"type": "int"}"#).unwrap_err().message().starts_with("type: unknown"));
/// ```
pub mod from_str {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer};

    /// The value parsed with `T::from_str`.
    pub fn deserialize<'de, D, T>(deserializer: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What one pass over the configuration found.
struct Pass<'p> {
    /// Values found wrong by earlier passes, by path: read as absent.
    left_out: &'p HashSet<String>,
    /// Unknown keys.
    unknown: RefCell<Vec<Problem>>,
    /// The first error, where it happened (the deepest value, since it is
    /// recorded on the way out).
    failure: RefCell<Option<Failure>>,
}

impl Pass<'_> {
    /// Records `result`'s error as having happened at `path`, unless an error
    /// deeper down was recorded first.
    fn note<T>(&self, path: &str, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(error) = &result {
            let mut failure = self.failure.borrow_mut();
            if failure.is_none() {
                *failure = Some(Failure {
                    path: path.to_owned(),
                    error: error.clone(),
                });
            }
        }
        result
    }
}

struct Failure {
    /// The value that failed; for [`Error::Missing`], the table missing a key.
    path: String,
    error: Error,
}

/// The error of a pass: a message, or a required key missing (told apart to
/// report it at the key's own path).
#[derive(Clone, Debug)]
enum Error {
    Message(String),
    Missing(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Message(m) => f.write_str(m),
            Error::Missing(field) => write!(f, "missing field `{field}`"),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::Message(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        Error::Missing(field)
    }
}

fn json_error(e: serde_json::Error) -> Error {
    Error::Message(e.to_string())
}

/// One value of the configuration, at `path`, as a serde `Deserializer` that
/// keeps track of where it is. Scalars are read by `serde_json`'s own
/// deserializer; tables and lists by this one, so that each value inside them
/// knows its path.
struct Node<'a> {
    value: &'a Value,
    path: String,
    /// When this value is that of a key of a struct: the key, and the keys that
    /// struct takes (to report this one as unknown if serde ignores it).
    key_of: Option<(&'a str, &'static [&'static str])>,
    pass: &'a Pass<'a>,
}

impl<'a> Node<'a> {
    fn child(
        &self,
        value: &'a Value,
        path: String,
        key_of: Option<(&'a str, &'static [&'static str])>,
    ) -> Self {
        Node {
            value,
            path,
            key_of,
            pass: self.pass,
        }
    }
}

impl<'a> de::Deserializer<'a> for Node<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Object(map) => visitor.visit_map(Table::new(self, map, None)),
            Value::Array(items) => visitor.visit_seq(List::new(self, items)),
            scalar => scalar.deserialize_any(visitor).map_err(json_error),
        }
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.value
            .deserialize_enum(name, variants, visitor)
            .map_err(json_error)
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.value {
            Value::Object(map) => visitor.visit_map(Table::new(self, map, Some(fields))),
            other => Err(Error::Message(format!(
                "expected a table with the keys {}, found {}",
                fields.join(", "),
                describe(other)
            ))),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        // Serde ignores a key of a struct that it does not know: report it.
        if let Some((key, fields)) = self.key_of {
            self.pass.unknown.borrow_mut().push(Problem {
                message: format!(
                    "unknown key `{key}` (expected one of: {})",
                    fields.join(", ")
                ),
                path: self.path,
            });
        }
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        <W: Visitor<'a>>
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
    }
}

/// The keys of a table, each value a [`Node`] at its path.
struct Table<'a> {
    node: Node<'a>,
    entries: serde_json::map::Iter<'a>,
    fields: Option<&'static [&'static str]>,
    next: Option<(&'a str, &'a Value, String)>,
}

impl<'a> Table<'a> {
    fn new(
        node: Node<'a>,
        map: &'a serde_json::Map<String, Value>,
        fields: Option<&'static [&'static str]>,
    ) -> Self {
        Table {
            node,
            entries: map.iter(),
            fields,
            next: None,
        }
    }
}

impl<'a> de::MapAccess<'a> for Table<'a> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        for (key, value) in self.entries.by_ref() {
            let path = key_path(&self.node.path, key);
            if self.node.pass.left_out.contains(&path) {
                continue;
            }
            self.next = Some((key.as_str(), value, path));
            return seed
                .deserialize(de::value::BorrowedStrDeserializer::<Error>::new(key))
                .map(Some);
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'a>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let (key, value, path) = self
            .next
            .take()
            .ok_or_else(|| Error::Message("a value without its key".to_owned()))?;
        let child = self
            .node
            .child(value, path.clone(), self.fields.map(|f| (key, f)));
        let result = seed.deserialize(child);
        self.node.pass.note(&path, result)
    }
}

/// The elements of a list, each a [`Node`] at `path[i]`.
struct List<'a> {
    node: Node<'a>,
    items: std::iter::Enumerate<std::slice::Iter<'a, Value>>,
}

impl<'a> List<'a> {
    fn new(node: Node<'a>, items: &'a [Value]) -> Self {
        List {
            node,
            items: items.iter().enumerate(),
        }
    }
}

impl<'a> de::SeqAccess<'a> for List<'a> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'a>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        for (i, value) in self.items.by_ref() {
            let path = format!("{}[{i}]", self.node.path);
            if self.node.pass.left_out.contains(&path) {
                continue;
            }
            let child = self.node.child(value, path.clone(), None);
            let result = seed.deserialize(child);
            return self.node.pass.note(&path, result).map(Some);
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;
    use crate::ColumnType;

    #[derive(Debug, Deserialize)]
    struct Config {
        name: String,
        #[serde(default)]
        batch: Option<Batch>,
        #[serde(default)]
        columns: Vec<Column>,
        #[serde(default, with = "duration::option")]
        timeout: Option<Duration>,
    }

    #[derive(Debug, Deserialize)]
    struct Batch {
        #[serde(default)]
        max_rows: Option<u32>,
        #[serde(default)]
        max_bytes: Option<u64>,
    }

    #[derive(Debug, Deserialize)]
    struct Column {
        name: String,
        #[serde(rename = "type", with = "from_str")]
        ty: ColumnType,
        #[serde(default)]
        key: bool,
    }

    fn problems<T: DeserializeOwned + fmt::Debug>(json: &str) -> Vec<String> {
        match parse::<T>(json) {
            Err(PluginError::InvalidConfig(m)) => m.split("; ").map(str::to_owned).collect(),
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn a_good_configuration_reads_into_the_struct() {
        let c: Config = parse(
            r#"{"name": "cdr", "batch": {"max_rows": 10}, "timeout": "1m30s",
                "columns": [{"name": "id", "type": "int64", "key": true}]}"#,
        )
        .unwrap();
        assert_eq!((c.name.as_str(), c.columns[0].name.as_str()), ("cdr", "id"));
        assert_eq!(c.batch.unwrap().max_rows, Some(10));
        assert_eq!(c.timeout, Some(Duration::from_secs(90)));
        assert_eq!(
            (c.columns[0].ty, c.columns[0].key),
            (ColumnType::Int64, true)
        );
    }

    #[test]
    fn unknown_keys_are_reported_at_their_path_with_the_keys_expected() {
        assert_eq!(
            problems::<Config>(r#"{"name": "x", "nmae": 1, "batch": {"max_rowz": 5}}"#),
            [
                "batch.max_rowz: unknown key `max_rowz` (expected one of: max_rows, max_bytes)",
                "nmae: unknown key `nmae` (expected one of: name, batch, columns, timeout)",
            ]
        );
        // A key that is not a plain name is quoted in the path.
        assert_eq!(
            problems::<Batch>(r#"{"max rows": 5}"#),
            ["\"max rows\": unknown key `max rows` (expected one of: max_rows, max_bytes)"]
        );
    }

    #[test]
    fn every_problem_is_reported_at_once_with_nested_paths() {
        let found = problems::<Config>(
            r#"{"name": 7, "extra": true, "timeout": "soon",
                "batch": {"max_rows": -1, "max_bytes": "lots", "flush": 1},
                "columns": [
                  {"name": "a", "type": "text"},
                  {"name": "b", "type": "int"},
                  {"type": "text", "tpye": "x"},
                  {"name": "d", "type": "json", "key": "yes"},
                  7]}"#,
        );
        let expected = [
            "name: invalid type: integer `7`, expected a string",
            "extra: unknown key `extra`",
            "timeout: \"soon\" is not a duration",
            "batch.max_rows: invalid value: integer `-1`, expected u32",
            "batch.max_bytes: invalid type: string \"lots\", expected u64",
            "batch.flush: unknown key `flush`",
            "columns[1].type: unknown type \"int\"",
            "columns[2].tpye: unknown key `tpye`",
            "columns[2].name: missing (required)",
            "columns[3].key: invalid type: string \"yes\", expected a boolean",
            "columns[4]: expected a table with the keys name, type, key, found 7",
        ];
        for part in expected {
            assert!(
                found.iter().any(|p| p.starts_with(part)),
                "missing {part:?} in:\n{found:#?}"
            );
        }
        assert_eq!(found.len(), expected.len(), "{found:#?}");
    }

    #[test]
    fn problems_are_sorted_by_path_with_list_indexes_as_numbers() {
        let columns: Vec<String> = (0..12)
            .map(|i| format!(r#"{{"name": "c{i}", "type": "int"}}"#))
            .collect();
        let found = problems::<Config>(&format!(
            r#"{{"name": "x", "columns": [{}], "a b": 1}}"#,
            columns.join(",")
        ));
        let paths: Vec<&str> = found
            .iter()
            .map(|p| p.split(": ").next().unwrap())
            .collect();
        let mut expected = vec!["\"a b\"".to_owned()];
        expected.extend((0..12).map(|i| format!("columns[{i}].type")));
        assert_eq!(paths, expected);
    }

    #[test]
    fn a_required_key_found_wrong_is_not_also_reported_missing() {
        assert_eq!(
            problems::<Column>(r#"{"name": "a", "type": 5}"#),
            ["type: invalid type: integer `5`, expected a string"]
        );
        assert_eq!(problems::<Column>("{}"), ["name: missing (required)"]);
    }

    #[test]
    fn no_configuration_is_an_empty_table_and_bad_json_is_one_problem() {
        assert_eq!(parse::<Batch>("").unwrap().max_rows, None);
        assert_eq!(parse::<Batch>("  ").unwrap().max_bytes, None);
        let e = parse::<Batch>("{").unwrap_err();
        assert!(
            e.message()
                .starts_with("the configuration is not valid JSON: EOF while parsing"),
            "{e}"
        );
        assert_eq!(
            problems::<Batch>("[1]"),
            ["expected a table with the keys max_rows, max_bytes, found a list"]
        );
    }

    #[test]
    fn maps_and_enums_keep_their_paths() {
        #[derive(Debug, Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Mode {
            Hash,
            Stream,
        }
        #[derive(Debug, Deserialize)]
        struct Modes {
            modes: BTreeMap<String, Mode>,
        }
        let m: Modes = parse(r#"{"modes": {"a": "hash", "b": "stream"}}"#).unwrap();
        assert!(matches!(m.modes["b"], Mode::Stream));
        assert_eq!(
            problems::<Modes>(r#"{"modes": {"a": "list", "b": "hash"}}"#),
            ["modes.a: unknown variant `list`, expected `hash` or `stream`"]
        );
    }

    #[test]
    fn problems_added_after_the_parse_join_the_same_error() {
        let mut problems = Problems::new();
        problems.add("password", "is set without `user`");
        problems.add("", "no key column");
        assert_eq!(
            PluginError::from(problems.clone()),
            PluginError::InvalidConfig("password: is set without `user`; no key column".into())
        );
        assert_eq!(problems.iter().count(), 2);
        assert!(Problems::new().check().is_ok());
    }
}
