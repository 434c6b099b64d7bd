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
use sluice_plugin_sdk::PluginError;
use sluice_plugin_sdk::config::{self, Problems};

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

/// The configuration as written; [`Config::parse`] checks the rules between keys.
#[derive(Deserialize)]
struct Raw {
    url: Option<String>,
    database: Option<String>,
    table: Option<String>,
    user: Option<String>,
    password: Option<String>,
    #[serde(default, with = "config::duration::option")]
    timeout: Option<Duration>,
}

impl Config {
    /// Reads the configuration `json`; `default_table` (the source schema's name)
    /// names the table when `table` is not set. The error lists every problem.
    pub fn parse(json: &str, default_table: &str) -> Result<Config, PluginError> {
        let raw: Raw = config::parse(json)?;
        let mut problems = Problems::new();
        let url = match raw.url {
            None => {
                problems.add(
                    "url",
                    "missing (required): ClickHouse's HTTP interface, e.g. \"http://127.0.0.1:8123\"",
                );
                String::new()
            }
            Some(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    problems.add(
                        "url",
                        format!("{url:?} must start with http:// or https://"),
                    );
                }
                if url.contains(['?', '#']) {
                    problems.add(
                        "url",
                        format!(
                            "{:?} must not have a query: the writer adds its own",
                            url.split('?').next().unwrap_or("")
                        ),
                    );
                }
                if url.contains('@') {
                    problems.add(
                        "url",
                        "must not hold credentials: use `user` and `password`",
                    );
                }
                url.trim_end_matches('/').to_owned()
            }
        };
        let database = raw.database.unwrap_or_else(|| "default".to_owned());
        if let Some(why) = identifier_problem(&database) {
            problems.add("database", why);
        }
        let table = match raw.table {
            Some(table) => {
                if let Some(why) = identifier_problem(&table) {
                    problems.add("table", why);
                }
                table
            }
            None => {
                if let Some(why) = identifier_problem(default_table) {
                    problems.add(
                        "table",
                        format!(
                            "not set, and the source schema's name {why}, so it cannot name the table: set `table`"
                        ),
                    );
                }
                default_table.to_owned()
            }
        };
        if raw.password.is_some() && raw.user.is_none() {
            problems.add("password", "is set without `user`");
        }
        let timeout = raw.timeout.unwrap_or(Duration::from_secs(60));
        if timeout.is_zero() {
            problems.add("timeout", "must be more than 0");
        }
        problems.check()?;
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

    fn problems(json: &str) -> String {
        match Config::parse(json, "cdr") {
            Err(PluginError::InvalidConfig(m)) => m,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn every_problem_at_once() {
        let err = problems(
            r#"{"url":"http://h:1/?x=1","database":"a-b","table":"1t","password":"p","timeout":"0s"}"#,
        );
        for part in [
            "url: \"http://h:1/\" must not have a query",
            "database: \"a-b\" is not a plain name",
            "table: \"1t\" is not a plain name",
            "password: is set without `user`",
            "timeout: must be more than 0",
        ] {
            assert!(err.contains(part), "{part} in {err}");
        }
        // Unknown keys and values of the wrong form, all at once.
        let err = problems(r#"{"url":"http://h","pasword":"x","timeout":"5 parsecs","user":1}"#);
        for part in [
            "pasword: unknown key `pasword` (expected one of: url, database, table, user, password, timeout)",
            "timeout: \"5 parsecs\" is not a duration",
            "user: invalid type: integer `1`, expected a string",
        ] {
            assert!(err.contains(part), "{part} in {err}");
        }
        assert!(problems("").contains("url: missing (required)"));
    }

    #[test]
    fn timeouts_take_the_daemon_s_durations() {
        let c = Config::parse(r#"{"url":"http://h","timeout":"1.5s"}"#, "cdr").unwrap();
        assert_eq!(c.timeout, Duration::from_millis(1500));
    }
}
