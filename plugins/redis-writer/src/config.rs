//! The writer's configuration: a JSON object (the writer's `config` table).
//!
//! ```toml
//! [[pipelines.writers]]
//! plugin = "redis-writer"
//! grants = { tcp = ["127.0.0.1:6379"] }
//!
//! [pipelines.writers.config]
//! address = "127.0.0.1:6379"   # default; must be in grants.tcp
//! mode = "hash"                # "hash" (default) or "stream"
//! key_prefix = "cdr:"          # default: the schema's name and ":"
//! stream = "cdr"               # stream mode: the stream's key (default: the schema's name)
//! db = 0                       # default 0
//! username = "sluice"          # ACL user (Redis 6+); default: none
//! password = "..."             # default: none
//! ttl = "7d"                   # hash mode: expire each hash this long after its last write;
//!                              # stream mode: how long a key's dedupe marker lives (default 1d)
//! dedupe = true                # stream mode: skip rows whose key was added within `ttl` (default true)
//! maxlen = 1000000             # stream mode: trim the stream to about this many entries
//! timeout = "10s"              # connect and reply timeout (default 10s)
//! ```
//!
//! Plugins cannot read the environment or files, so a password is written in the
//! configuration file itself: keep that file readable by the daemon only.

use std::time::Duration;

use serde::Deserialize;
use sluice_plugin_sdk::PluginError;
use sluice_plugin_sdk::config::{self, Problems};

/// What the writer stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One hash per key: the latest state of each key.
    Hash,
    /// One stream entry per row.
    Stream,
}

/// The writer's configuration, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `host:port` of the Redis server.
    pub address: String,
    /// Hash or stream.
    pub mode: Mode,
    /// Prepended to the key values: the hash keys (hash mode), the dedupe markers
    /// (stream mode).
    pub key_prefix: String,
    /// The stream's key (stream mode).
    pub stream: String,
    /// The database number (`SELECT`).
    pub db: u32,
    /// ACL user name.
    pub username: Option<String>,
    /// Password (`AUTH`).
    pub password: Option<String>,
    /// Hash mode: expiry of each hash after its last write. Stream mode: the life
    /// of the dedupe markers.
    pub ttl: Option<Duration>,
    /// Stream mode: skip rows whose key has a live marker.
    pub dedupe: bool,
    /// Stream mode: `XADD ... MAXLEN ~ n`.
    pub maxlen: Option<u64>,
    /// Connect and reply timeout.
    pub timeout: Duration,
}

/// The configuration as written; [`Config::parse`] checks the rules between keys.
#[derive(Deserialize)]
struct Raw {
    address: Option<String>,
    mode: Option<Mode>,
    key_prefix: Option<String>,
    stream: Option<String>,
    db: Option<u32>,
    username: Option<String>,
    password: Option<String>,
    #[serde(default, with = "config::duration::option")]
    ttl: Option<Duration>,
    dedupe: Option<bool>,
    maxlen: Option<u64>,
    #[serde(default, with = "config::duration::option")]
    timeout: Option<Duration>,
}

/// Stream mode's dedupe markers live this long unless `ttl` says otherwise.
pub const DEFAULT_MARKER_TTL: Duration = Duration::from_secs(86_400);

impl Config {
    /// Reads the configuration `json`; `schema` (the source schema's name) gives
    /// the default key prefix and stream. The error lists every problem.
    pub fn parse(json: &str, schema: &str) -> Result<Config, PluginError> {
        let raw: Raw = config::parse(json)?;
        let mut problems = Problems::new();
        let mode = raw.mode.unwrap_or(Mode::Hash);
        // Redis counts expiries in milliseconds: less would be no expiry at all.
        for (key, duration) in [("ttl", raw.ttl), ("timeout", raw.timeout)] {
            if duration.is_some_and(|d| d < Duration::from_millis(1)) {
                problems.add(key, "must be at least 1ms");
            }
        }
        if mode == Mode::Hash {
            for (key, set) in [
                ("stream", raw.stream.is_some()),
                ("dedupe", raw.dedupe.is_some()),
                ("maxlen", raw.maxlen.is_some()),
            ] {
                if set {
                    problems.add(key, "is for mode \"stream\"");
                }
            }
        }
        if raw.password.is_none() && raw.username.is_some() {
            problems.add("username", "is set without `password`");
        }
        if raw.maxlen == Some(0) {
            problems.add("maxlen", "must be more than 0");
        }
        let address = raw.address.unwrap_or_else(|| "127.0.0.1:6379".into());
        if !address.contains(':') {
            problems.add("address", format!("{address:?} is not host:port"));
        }
        problems.check()?;
        Ok(Config {
            address,
            mode,
            key_prefix: raw.key_prefix.unwrap_or_else(|| format!("{schema}:")),
            stream: raw.stream.unwrap_or_else(|| schema.to_owned()),
            db: raw.db.unwrap_or(0),
            username: raw.username,
            password: raw.password,
            ttl: match mode {
                Mode::Hash => raw.ttl,
                Mode::Stream => Some(raw.ttl.unwrap_or(DEFAULT_MARKER_TTL)),
            },
            dedupe: raw.dedupe.unwrap_or(true),
            maxlen: raw.maxlen,
            timeout: raw.timeout.unwrap_or(Duration::from_secs(10)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::parse("{}", "cdr").unwrap();
        assert_eq!(c.address, "127.0.0.1:6379");
        assert_eq!(c.mode, Mode::Hash);
        assert_eq!(c.key_prefix, "cdr:");
        assert_eq!(c.ttl, None);
        let c = Config::parse(r#"{"mode":"stream","maxlen":10}"#, "cdr").unwrap();
        assert_eq!(
            (c.stream.as_str(), c.ttl, c.dedupe, c.maxlen),
            ("cdr", Some(DEFAULT_MARKER_TTL), true, Some(10))
        );
    }

    #[test]
    fn problems() {
        let problems = |json: &str| match Config::parse(json, "cdr") {
            Err(PluginError::InvalidConfig(m)) => m,
            other => panic!("expected a configuration error, got {other:?}"),
        };
        // Unknown keys and values of the wrong form, all at once.
        let err = problems(r#"{"ttl":"soon","mode":"list","tiemout":"1s","db":-1}"#);
        for part in [
            "ttl: \"soon\" is not a duration",
            "mode: unknown variant `list`, expected `hash` or `stream`",
            "tiemout: unknown key `tiemout`",
            "db: invalid value: integer `-1`, expected u32",
        ] {
            assert!(err.contains(part), "{part} in {err}");
        }
        // Then the rules between keys, all at once.
        let err = problems(r#"{"stream":"s","ttl":"0s","username":"u","address":"redis"}"#);
        for part in [
            "stream: is for mode \"stream\"",
            "ttl: must be at least 1ms",
            "username: is set without `password`",
            "address: \"redis\" is not host:port",
        ] {
            assert!(err.contains(part), "{part} in {err}");
        }
    }
}
