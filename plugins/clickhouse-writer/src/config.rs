//! The writer's configuration: a JSON object (the writer's `config` table).
//!
//! ```toml
//! [[pipelines.writers]]
//! plugin = "clickhouse-writer"
//! grants = { http = ["http://127.0.0.1:8123"] }
//!
//! [pipelines.writers.config]
//! url = "http://127.0.0.1:8123"   # required: ClickHouse's HTTP interface, granted in grants.http
//! database = "default"            # default: "default"; created if missing
//! table = "cdr"                   # default: the source schema's name
//! user = "sluice"                 # default: none (ClickHouse's `default` user)
//! password = "..."                # default: none
//! timeout = "60s"                 # default: 60s, per request
//! ```
//!
//! Plugins cannot read the environment or files, so a password is written in the
//! configuration file itself: keep that file readable by the daemon only.

use std::time::Duration;

use serde::Deserialize;

/// The writer's configuration, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// ClickHouse's HTTP interface, without a query (`http://127.0.0.1:8123`).
    pub url: String,
    /// The database holding the table.
    pub database: String,
    /// The table rows land in.
    pub table: String,
    /// The user to authenticate as (HTTP basic authentication).
    pub user: Option<String>,
    /// Its password.
    pub password: Option<String>,
    /// How long one request may take to answer.
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    url: Option<String>,
    database: Option<String>,
    table: Option<String>,
    user: Option<String>,
    password: Option<String>,
    timeout: Option<String>,
}

impl Config {
    /// Reads the configuration `json`; `default_table` (the source schema's name)
    /// names the table when `table` is not set. The error lists every problem.
    pub fn parse(json: &str, default_table: &str) -> Result<Config, String> {
        let json = if json.trim().is_empty() { "{}" } else { json };
        let raw: Raw = serde_json::from_str(json)
            .map_err(|e| format!("invalid clickhouse-writer config: {e}"))?;
        let mut problems = Vec::new();
        let url = match raw.url {
            None => {
                problems.push(
                    "`url` is required: ClickHouse's HTTP interface, e.g. \"http://127.0.0.1:8123\""
                        .to_owned(),
                );
                String::new()
            }
            Some(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    problems.push(format!("`url` {url:?} must start with http:// or https://"));
                }
                if url.contains(['?', '#']) {
                    problems.push(format!(
                        "`url` {:?} must not have a query: the writer adds its own",
                        url.split('?').next().unwrap_or("")
                    ));
                }
                if url.contains('@') {
                    problems
                        .push("`url` must not hold credentials: use `user` and `password`".into());
                }
                url.trim_end_matches('/').to_owned()
            }
        };
        let database = raw.database.unwrap_or_else(|| "default".to_owned());
        if let Some(why) = identifier_problem(&database) {
            problems.push(format!("`database` {why}"));
        }
        let table = match raw.table {
            Some(table) => {
                if let Some(why) = identifier_problem(&table) {
                    problems.push(format!("`table` {why}"));
                }
                table
            }
            None => {
                if let Some(why) = identifier_problem(default_table) {
                    problems.push(format!(
                        "the source schema's name {default_table:?} {why}, so it cannot name the table: set `table`"
                    ));
                }
                default_table.to_owned()
            }
        };
        if raw.password.is_some() && raw.user.is_none() {
            problems.push("`password` without `user`".into());
        }
        let timeout = match raw.timeout.as_deref().map(parse_duration) {
            None => Duration::from_secs(60),
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => {
                problems.push("`timeout` must be more than 0".into());
                Duration::ZERO
            }
            Some(Err(e)) => {
                problems.push(format!("`timeout`: {e}"));
                Duration::ZERO
            }
        };
        if !problems.is_empty() {
            return Err(format!(
                "invalid clickhouse-writer config: {}",
                problems.join("; ")
            ));
        }
        Ok(Config {
            url,
            database,
            table,
            user: raw.user,
            password: raw.password,
            timeout,
        })
    }
}

/// Why `name` cannot be a database or table name, if it cannot: ASCII letters,
/// digits and `_`, not starting with a digit, at most 127 bytes.
pub fn identifier_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 127
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    (!ok).then(|| {
        format!(
            "{name:?} is not a plain name (ASCII letters, digits and _, not starting with a digit)"
        )
    })
}

pub use sluice_plugin_sdk::time::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::parse(r#"{"url":"http://127.0.0.1:8123/"}"#, "cdr").unwrap();
        assert_eq!(
            c,
            Config {
                url: "http://127.0.0.1:8123".into(),
                database: "default".into(),
                table: "cdr".into(),
                user: None,
                password: None,
                timeout: Duration::from_secs(60),
            }
        );
    }

    #[test]
    fn every_problem_at_once() {
        let err = Config::parse(
            r#"{"url":"http://h:1/?x=1","database":"a-b","table":"1t","password":"p","timeout":"5 parsecs"}"#,
            "cdr",
        )
        .unwrap_err();
        for part in [
            "`url` \"http://h:1/\" must not have a query",
            "`database` \"a-b\" is not a plain name",
            "`table` \"1t\" is not a plain name",
            "`password` without `user`",
            "`timeout`: \"5 parsecs\" is not a duration",
        ] {
            assert!(err.contains(part), "{part} in {err}");
        }
        let err = Config::parse(r#"{"url":"http://h","pasword":"x"}"#, "cdr").unwrap_err();
        assert!(err.contains("unknown field `pasword`"), "{err}");
        let err = Config::parse("", "cdr").unwrap_err();
        assert!(err.contains("`url` is required"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("1w").is_err());
    }
}
