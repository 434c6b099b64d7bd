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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    address: Option<String>,
    mode: Option<Mode>,
    key_prefix: Option<String>,
    stream: Option<String>,
    db: Option<u32>,
    username: Option<String>,
    password: Option<String>,
    ttl: Option<String>,
    dedupe: Option<bool>,
    maxlen: Option<u64>,
    timeout: Option<String>,
}

/// Stream mode's dedupe markers live this long unless `ttl` says otherwise.
pub const DEFAULT_MARKER_TTL: Duration = Duration::from_secs(86_400);

impl Config {
    /// Reads the configuration `json`; `schema` (the source schema's name) gives
    /// the default key prefix and stream.
    pub fn parse(json: &str, schema: &str) -> Result<Config, String> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        let raw: Raw =
            serde_json::from_str(json).map_err(|e| format!("invalid redis-writer config: {e}"))?;
        let mut problems = Vec::new();
        let mode = raw.mode.unwrap_or(Mode::Hash);
        let mut duration = |key: &str, text: Option<String>| -> Option<Duration> {
            match parse_duration(text.as_deref()?) {
                Ok(d) if d >= Duration::from_millis(1) => Some(d),
                Ok(_) => {
                    problems.push(format!("`{key}` must be at least 1ms"));
                    None
                }
                Err(e) => {
                    problems.push(format!("`{key}`: {e}"));
                    None
                }
            }
        };
        let ttl = duration("ttl", raw.ttl);
        let timeout = duration("timeout", raw.timeout).unwrap_or(Duration::from_secs(10));
        if mode == Mode::Hash {
            for (key, set) in [
                ("stream", raw.stream.is_some()),
                ("dedupe", raw.dedupe.is_some()),
                ("maxlen", raw.maxlen.is_some()),
            ] {
                if set {
                    problems.push(format!("`{key}` is for mode \"stream\""));
                }
            }
        }
        if raw.password.is_none() && raw.username.is_some() {
            problems.push("`username` without `password`".into());
        }
        if raw.maxlen == Some(0) {
            problems.push("`maxlen` must be more than 0".into());
        }
        let address = raw.address.unwrap_or_else(|| "127.0.0.1:6379".into());
        if !address.contains(':') {
            problems.push(format!("`address` {address:?} is not host:port"));
        }
        if !problems.is_empty() {
            return Err(format!(
                "invalid redis-writer config: {}",
                problems.join("; ")
            ));
        }
        Ok(Config {
            address,
            mode,
            key_prefix: raw.key_prefix.unwrap_or_else(|| format!("{schema}:")),
            stream: raw.stream.unwrap_or_else(|| schema.to_owned()),
            db: raw.db.unwrap_or(0),
            username: raw.username,
            password: raw.password,
            ttl: match mode {
                Mode::Hash => ttl,
                Mode::Stream => Some(ttl.unwrap_or(DEFAULT_MARKER_TTL)),
            },
            dedupe: raw.dedupe.unwrap_or(true),
            maxlen: raw.maxlen,
            timeout,
        })
    }
}

pub use sluice_plugin_sdk::time::parse_duration;

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
        let err = Config::parse(
            r#"{"stream":"s","ttl":"soon","username":"u","address":"redis"}"#,
            "cdr",
        )
        .unwrap_err();
        for part in [
            "`stream` is for mode \"stream\"",
            "`ttl`: \"soon\" is not a duration",
            "`username` without `password`",
            "`address` \"redis\" is not host:port",
        ] {
            assert!(err.contains(part), "{part} in {err}");
        }
        let err = Config::parse(r#"{"mode":"list"}"#, "cdr").unwrap_err();
        assert!(err.contains("unknown variant `list`"), "{err}");
    }
}
