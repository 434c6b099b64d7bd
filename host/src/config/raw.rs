//! The configuration file as written: serde structs that take every key as
//! optional and every scalar leniently ([`Lenient`]), so that validation sees the
//! whole file and can report every problem at once, rather than serde stopping at
//! the first. Unknown keys are collected with `serde_ignored` for the same reason
//! (`deny_unknown_fields` would stop at the first one).
//!
//! Plugin `config` tables are `toml::Value`s: free-form, passed through.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{DeserializeOwned, Deserializer, Error as _, Visitor};

use super::Problem;

/// A scalar (or list of scalars) that may have the wrong type: the value, or what
/// was found instead, for validation to report with its key path.
#[derive(Debug)]
pub(super) struct Lenient<T>(pub Result<T, toml::Value>);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        Ok(Lenient(T::deserialize(value.clone()).map_err(|_| value)))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table with daemon, connections and pipelines")]
pub(super) struct RawConfig {
    pub daemon: Option<RawDaemon>,
    pub connections: Option<BTreeMap<String, RawConnection>>,
    pub pipelines: Option<Vec<RawPipeline>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table of daemon settings")]
pub(super) struct RawDaemon {
    pub plugin_dir: Option<Lenient<String>>,
    pub cache_dir: Option<Lenient<String>>,
    /// `"IP:port"`, `""` for the default, or `false` for none.
    pub admin_addr: Option<toml::Value>,
    pub shutdown_timeout: Option<Lenient<String>>,
    pub plugin_memory_mib: Option<Lenient<i64>>,
    pub plugin_call_timeout: Option<Lenient<String>>,
    pub plugin_call_deadline: Option<Lenient<String>>,
    pub store_call_timeout: Option<Lenient<String>>,
    pub trusted_keys: Option<Lenient<Vec<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table with type, url (or urls) and optionally password_env and tls")]
pub(super) struct RawConnection {
    #[serde(rename = "type")]
    pub kind: Option<Lenient<String>>,
    pub url: Option<Lenient<String>>,
    /// amqp and rabbitmq-stream connections: the nodes of a cluster, instead
    /// of `url`.
    pub urls: Option<Lenient<Vec<String>>>,
    pub password_env: Option<Lenient<String>>,
    /// amqp connections only.
    pub tls: Option<RawAmqpTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table with ca_file, cert_file and key_file")]
pub(super) struct RawAmqpTls {
    pub ca_file: Option<Lenient<String>>,
    pub cert_file: Option<Lenient<String>>,
    pub key_file: Option<Lenient<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a pipeline table")]
pub(super) struct RawPipeline {
    pub name: Option<Lenient<String>>,
    pub connection: Option<Lenient<String>>,
    pub consumers: Option<Lenient<i64>>,
    pub prefetch: Option<Lenient<i64>>,
    pub batch: Option<RawBatch>,
    pub queue: Option<RawQueue>,
    pub source: Option<RawSource>,
    pub writers: Option<Vec<RawWriter>>,
    pub dead_letter: Option<RawDeadLetter>,
    pub retry: Option<RawRetry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table with max_messages and max_wait")]
pub(super) struct RawBatch {
    pub max_messages: Option<Lenient<i64>>,
    pub max_wait: Option<Lenient<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table with name, type, declare, delivery_limit and bindings")]
pub(super) struct RawQueue {
    pub name: Option<Lenient<String>>,
    pub declare: Option<Lenient<bool>>,
    #[serde(rename = "type")]
    pub kind: Option<Lenient<String>>,
    pub delivery_limit: Option<Lenient<i64>>,
    pub bindings: Option<Vec<RawBinding>>,
    /// Streams only: the rabbitmq-stream connection they are read through.
    pub connection: Option<Lenient<String>>,
    /// Streams only: the partition count (`name-0` … `name-N-1`).
    pub partitions: Option<Lenient<i64>>,
    /// Streams only: the partitions this daemon reads (default all).
    pub assigned: Option<Lenient<Vec<i64>>>,
    /// Streams only: where a consumer with no stored offset starts.
    pub start: Option<toml::Value>,
    /// Streams only: the name offsets are stored under.
    pub consumer_name: Option<Lenient<String>>,
    /// Streams only, when declared: retention and segments.
    pub max_length: Option<toml::Value>,
    pub max_age: Option<Lenient<String>>,
    pub max_segment_size: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table with exchange, exchange_type and routing_key")]
pub(super) struct RawBinding {
    pub exchange: Option<Lenient<String>>,
    pub exchange_type: Option<Lenient<String>>,
    pub routing_key: Option<Lenient<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table with plugin, config, and optionally sha256 and signer")]
pub(super) struct RawSource {
    pub plugin: Option<Lenient<String>>,
    pub config: Option<toml::Value>,
    pub sha256: Option<Lenient<String>>,
    pub signer: Option<Lenient<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table with plugin, config, grants, and optionally sha256 and signer")]
pub(super) struct RawWriter {
    pub plugin: Option<Lenient<String>>,
    pub config: Option<toml::Value>,
    pub grants: Option<RawGrants>,
    pub sha256: Option<Lenient<String>>,
    pub signer: Option<Lenient<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    expecting = "a table of grants, like { postgres = [\"warehouse\"], http = [\"https://host/path\"], tcp = [\"host:port\"], directory = \"out\" }"
)]
pub(super) struct RawGrants {
    pub postgres: Option<Lenient<Vec<String>>>,
    pub http: Option<Lenient<Vec<String>>>,
    pub tcp: Option<Lenient<Vec<String>>>,
    pub directory: Option<Lenient<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table with exchange, queue and declare")]
pub(super) struct RawDeadLetter {
    pub exchange: Option<Lenient<String>>,
    /// A queue name, or `false` for none.
    pub queue: Option<toml::Value>,
    pub queue_type: Option<Lenient<String>>,
    pub declare: Option<Lenient<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a table with initial_backoff and max_backoff")]
pub(super) struct RawRetry {
    pub initial_backoff: Option<Lenient<String>>,
    pub max_backoff: Option<Lenient<String>>,
}

/// Parses `text`. A syntax error, or a table where a value belongs (or the
/// reverse), stops here as one problem with its line and column; anything else is
/// left to validation. The second value holds one problem per unknown key.
pub(super) fn parse(text: &str) -> Result<(RawConfig, Vec<Problem>), Problem> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| syntax_problem(text, &e))?;
    let mut unknown = Vec::new();
    let raw: RawConfig = serde_ignored::deserialize(deserializer, |path| {
        let mut segments = Vec::new();
        collect_segments(&path, &mut segments);
        unknown.push(unknown_key_problem(&segments));
    })
    .map_err(|e| syntax_problem(text, &e))?;
    Ok((raw, unknown))
}

fn syntax_problem(text: &str, error: &toml::de::Error) -> Problem {
    let message = error.message().trim_end().to_string();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            Problem::new(format!("line {line}, column {column}"), message)
        }
        None => Problem::new("", message),
    }
}

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn collect_segments(path: &serde_ignored::Path<'_>, out: &mut Vec<Segment>) {
    use serde_ignored::Path;
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            collect_segments(parent, out);
            out.push(Segment::Index(*index));
        }
        Path::Map { parent, key } => {
            collect_segments(parent, out);
            out.push(Segment::Key(key.clone()));
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => collect_segments(parent, out),
    }
}

/// Key paths are written as plugins' configurations write theirs.
pub(super) use sluice_plugin_sdk::config::key_path;

fn unknown_key_problem(segments: &[Segment]) -> Problem {
    // `shape` names the table kind (indices and connection names left out), to
    // find the keys it takes.
    let mut path = String::new();
    let mut shape = String::new();
    for (i, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Index(n) => {
                path.push_str(&format!("[{n}]"));
                shape.push_str("[]");
            }
            Segment::Key(key) => {
                path = key_path(&path, key);
                // The last key is the unknown one itself, not part of the shape.
                if i + 1 < segments.len() {
                    // A connection's name is any key: `*` stands for it, as is
                    // (`key_path` would quote it, and `known_keys` not find it).
                    shape = if shape == "connections" {
                        "connections.*".to_string()
                    } else {
                        key_path(&shape, key)
                    };
                }
            }
        }
    }
    let unknown = match segments.last() {
        Some(Segment::Key(key)) => key.as_str(),
        _ => "",
    };
    let message = match known_keys(&shape) {
        Some(known) => {
            let mut message = format!("unknown key `{unknown}`");
            if let Some(close) = closest(unknown, known) {
                message.push_str(&format!(" (did you mean `{close}`?)"));
            }
            message.push_str(&format!("; expected one of: {}", known.join(", ")));
            message
        }
        None => format!("unknown key `{unknown}`"),
    };
    Problem::new(path, message)
}

/// The keys a table of this shape takes, straight from the serde structs so the
/// list cannot drift from them.
fn known_keys(shape: &str) -> Option<&'static [&'static str]> {
    Some(match shape {
        "" => fields_of::<RawConfig>(),
        "daemon" => fields_of::<RawDaemon>(),
        "connections.*" => fields_of::<RawConnection>(),
        "connections.*.tls" => fields_of::<RawAmqpTls>(),
        "pipelines[]" => fields_of::<RawPipeline>(),
        "pipelines[].batch" => fields_of::<RawBatch>(),
        "pipelines[].queue" => fields_of::<RawQueue>(),
        "pipelines[].queue.bindings[]" => fields_of::<RawBinding>(),
        "pipelines[].source" => fields_of::<RawSource>(),
        "pipelines[].writers[]" => fields_of::<RawWriter>(),
        "pipelines[].writers[].grants" => fields_of::<RawGrants>(),
        "pipelines[].dead_letter" => fields_of::<RawDeadLetter>(),
        "pipelines[].retry" => fields_of::<RawRetry>(),
        _ => return None,
    })
}

/// The field names a derived `Deserialize` struct passes to `deserialize_struct`.
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Self::Error::custom("probed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// The candidate within edit distance 2 of `word` (a typo), if any.
pub(super) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// How a value found where another was expected reads in a message.
pub(super) fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("the string {s:?}"),
        toml::Value::Integer(i) => format!("the integer {i}"),
        toml::Value::Float(f) => format!("the float {f}"),
        toml::Value::Boolean(b) => format!("`{b}`"),
        toml::Value::Datetime(d) => format!("the datetime {d}"),
        toml::Value::Array(_) => "an array".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_come_from_the_structs() {
        assert_eq!(fields_of::<RawBatch>(), ["max_messages", "max_wait"]);
        assert_eq!(
            fields_of::<RawConnection>(),
            ["type", "url", "urls", "password_env", "tls"]
        );
        assert!(known_keys("connections.*.tls").is_some());
        assert!(known_keys("pipelines[].queue.bindings[]").is_some());
    }

    #[test]
    fn suggests_a_close_key() {
        assert_eq!(
            closest("max_mesages", &["max_messages", "max_wait"]),
            Some("max_messages")
        );
        assert_eq!(closest("colour", &["max_messages", "max_wait"]), None);
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = parse("[daemon]\nplugin_dir = \n").unwrap_err();
        assert!(err.path.starts_with("line 2, column "), "{err:?}");
    }

    #[test]
    fn quotes_keys_that_are_not_bare() {
        assert_eq!(key_path("connections", "my.db"), "connections.\"my.db\"");
        assert_eq!(key_path("", "daemon"), "daemon");
    }
}
