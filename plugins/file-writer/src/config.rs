//! The writer's configuration: a JSON object (the writer's `config` table).
//!
//! ```toml
//! [[pipelines.writers]]
//! plugin = "file-writer"
//! grants = { directory = "out/cdr" }   # the host folder, seen by the plugin as /data
//!
//! [pipelines.writers.config]
//! format = "ndjson"          # "ndjson" (default) or "csv"
//! prefix = "cdr"             # default: the schema's name
//! rotate_bytes = 67108864    # finish a file once it holds this much (default 64 MiB)
//! rotate_after = "5m"        # ... or once it is this old (default 5m)
//! dedupe_window = "15m"      # skip rows whose key is in a file changed this recently (default 15m)
//! dir = "/data"              # where the files go (default /data, the granted directory)
//! ```

use std::time::Duration;

use serde::Deserialize;
use sluice_plugin_sdk::PluginError;
use sluice_plugin_sdk::config::{self, Problems};

/// The files' format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON object per line.
    Ndjson,
    /// A header line, then one RFC 4180 record per row.
    Csv,
}

impl Format {
    /// The file extension.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
        }
    }
}

/// The writer's configuration, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// NDJSON or CSV.
    pub format: Format,
    /// The files' name prefix.
    pub prefix: String,
    /// Finish a file once it holds this many bytes.
    pub rotate_bytes: u64,
    /// Finish a file once it is this old.
    pub rotate_after: Duration,
    /// How far back keys are remembered to skip duplicates.
    pub dedupe_window: Duration,
    /// The directory the files go to.
    pub dir: String,
}

/// The configuration as written; [`Config::parse`] checks the values' rules.
#[derive(Deserialize)]
struct Raw {
    format: Option<Format>,
    prefix: Option<String>,
    rotate_bytes: Option<u64>,
    #[serde(default, with = "config::duration::option")]
    rotate_after: Option<Duration>,
    #[serde(default, with = "config::duration::option")]
    dedupe_window: Option<Duration>,
    dir: Option<String>,
}

impl Config {
    /// Reads the configuration `json`; `schema` (the source schema's name) is the
    /// default prefix. The error lists every problem.
    pub fn parse(json: &str, schema: &str) -> Result<Config, PluginError> {
        let raw: Raw = config::parse(json)?;
        let mut problems = Problems::new();
        let rotate_after = raw.rotate_after.unwrap_or(Duration::from_secs(300));
        let dedupe_window = raw.dedupe_window.unwrap_or(Duration::from_secs(900));
        for (key, duration) in [
            ("rotate_after", rotate_after),
            ("dedupe_window", dedupe_window),
        ] {
            if duration.is_zero() {
                problems.add(key, "must be more than 0");
            }
        }
        let prefix = raw.prefix.unwrap_or_else(|| schema.to_owned());
        if prefix.is_empty()
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            problems.add(
                "prefix",
                format!("{prefix:?} must be ASCII letters, digits, `_`, `-` or `.`"),
            );
        }
        let rotate_bytes = raw.rotate_bytes.unwrap_or(64 << 20);
        if rotate_bytes == 0 {
            problems.add("rotate_bytes", "must be more than 0");
        }
        let dir = raw.dir.unwrap_or_else(|| "/data".to_owned());
        if dir.is_empty() {
            problems.add("dir", "is empty");
        }
        problems.check()?;
        Ok(Config {
            format: raw.format.unwrap_or(Format::Ndjson),
            prefix,
            rotate_bytes,
            rotate_after,
            dedupe_window,
            dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_problems() {
        let c = Config::parse("{}", "cdr").unwrap();
        assert_eq!(
            c,
            Config {
                format: Format::Ndjson,
                prefix: "cdr".into(),
                rotate_bytes: 67_108_864,
                rotate_after: Duration::from_secs(300),
                dedupe_window: Duration::from_secs(900),
                dir: "/data".into(),
            }
        );
        let problems = |json: &str| match Config::parse(json, "cdr") {
            Err(PluginError::InvalidConfig(m)) => m,
            other => panic!("expected a configuration error, got {other:?}"),
        };
        let err = problems(
            r#"{"prefix":"a/b","rotate_bytes":0,"rotate_after":"0s","dedupe_window":"0ms"}"#,
        );
        for part in [
            "prefix: \"a/b\"",
            "rotate_bytes: must be more than 0",
            "rotate_after: must be more than 0",
            "dedupe_window: must be more than 0",
        ] {
            assert!(err.contains(part), "{part} in {err}");
        }
        let err =
            problems(r#"{"format":"parquet","dedupe_window":"x","rotate_bytes":"1MB","dri":"/d"}"#);
        for part in [
            "format: unknown variant `parquet`, expected `ndjson` or `csv`",
            "dedupe_window: \"x\" is not a duration",
            "rotate_bytes: invalid type: string \"1MB\", expected u64",
            "dri: unknown key `dri`",
        ] {
            assert!(err.contains(part), "{part} in {err}");
        }
    }
}
