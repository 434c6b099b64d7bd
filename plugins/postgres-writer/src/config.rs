//! The writer's configuration: a JSON object (the writer's `config` table in the
//! Sluice configuration), validated into [`Config`] with every problem reported at
//! once.
//!
//! ```toml
//! [[pipelines.writers]]
//! plugin = "postgres-writer"
//! grants = { postgres = ["main"] }
//!
//! [pipelines.writers.config]
//! connection = "main"   # required: a name in the writer's `grants.postgres`
//! table = "cdr"         # default: the source schema's name
//! schema = "telecom"    # default: none, the table is found through search_path
//! ```
//!
//! - `connection`: the Postgres connection, by the name the writer's grants give
//!   it. The writer never sees an address or a password.
//! - `table`: created (`CREATE TABLE IF NOT EXISTS`) from the source schema, with a
//!   primary key on its key columns; new nullable columns of a later schema version
//!   are added. Names are used exactly as written (quoted): `CDR` and `cdr` are two
//!   tables.
//! - `schema`: the Postgres schema holding the table; it must exist. Without it,
//!   the table is created in the first schema of the connection's `search_path`.
//! - `partition`: makes the table partitioned by time; see [`crate::partition`]
//!   for its keys (`column`, `interval`, `premake`, `accept`, `retention`,
//!   `expired`).

use serde::Deserialize;
use sluice_plugin_sdk::PluginError;
use sluice_plugin_sdk::config::{self, Problems};

use crate::partition::{PARTITION_NAME_SUFFIX_MAX, Partitioning, RawPartitioning};
use crate::sql::{IDENTIFIER_MAX_BYTES, TableName, identifier_problem};

/// The writer's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The name of the Postgres connection grant to write through.
    pub connection: String,
    /// The table rows land in.
    pub table: TableName,
    /// How the table is partitioned by time; `None` for a plain table.
    pub partition: Option<Partitioning>,
}

/// The configuration as written; [`Config::parse`] checks the names and the
/// rules between keys.
#[derive(Deserialize)]
struct Raw {
    connection: String,
    table: Option<String>,
    schema: Option<String>,
    partition: Option<RawPartitioning>,
}

impl Config {
    /// Reads the configuration `json`; `default_table` (the source schema's name)
    /// names the table when `table` is not set. The error lists every problem.
    pub fn parse(json: &str, default_table: &str) -> Result<Config, PluginError> {
        let raw: Raw = config::parse(json)?;
        let mut problems = Problems::new();
        if raw.connection.is_empty() {
            problems.add(
                "connection",
                "is empty: name a postgres grant of this writer",
            );
        }
        match &raw.table {
            Some(table) => {
                if let Some(why) = identifier_problem(table) {
                    problems.add("table", why);
                }
            }
            None => {
                if let Some(why) = identifier_problem(default_table) {
                    problems.add(
                        "table",
                        format!(
                            "not set, and the source schema's name {default_table:?} {why}, so it cannot name the table: set `table`"
                        ),
                    );
                }
            }
        }
        if let Some(why) = raw.schema.as_deref().and_then(identifier_problem) {
            problems.add("schema", why);
        }
        let table_name = raw.table.unwrap_or_else(|| default_table.to_string());
        let partition = match raw.partition {
            None => None,
            Some(raw) => {
                if table_name.len() + PARTITION_NAME_SUFFIX_MAX > IDENTIFIER_MAX_BYTES {
                    problems.add(
                        "table",
                        format!(
                            "{table_name:?} is too long to name its partitions \
                             (`{table_name}_p2026112713` must fit in {IDENTIFIER_MAX_BYTES} bytes): use a name of at most {} bytes",
                            IDENTIFIER_MAX_BYTES - PARTITION_NAME_SUFFIX_MAX
                        ),
                    );
                }
                Partitioning::new(raw, &mut problems)
            }
        };
        problems.check()?;
        Ok(Config {
            connection: raw.connection,
            table: TableName {
                schema: raw.schema,
                name: table_name,
            },
            partition,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config() {
        let config = Config::parse(
            r#"{"connection": "main", "table": "cdr", "schema": "public"}"#,
            "calls",
        )
        .unwrap();
        assert_eq!(
            config,
            Config {
                connection: "main".into(),
                table: TableName {
                    schema: Some("public".into()),
                    name: "cdr".into()
                },
                partition: None,
            }
        );
    }

    #[test]
    fn table_defaults_to_the_schema_name_and_schema_to_none() {
        let config = Config::parse(r#"{"connection": "main"}"#, "calls").unwrap();
        assert_eq!(
            config.table,
            TableName {
                schema: None,
                name: "calls".into()
            }
        );
    }

    /// The message of the configuration error `json` gets.
    fn problems(json: &str, default_table: &str) -> String {
        match Config::parse(json, default_table) {
            Err(PluginError::InvalidConfig(m)) => m,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn reports_every_problem_at_once() {
        assert_eq!(
            problems(
                r#"{"tabel": "x", "schema": 5, "table": "", "extra": true}"#,
                "calls"
            ),
            "connection: missing (required); \
             extra: unknown key `extra` (expected one of: connection, table, schema, partition); \
             schema: invalid type: integer `5`, expected a string; \
             tabel: unknown key `tabel` (expected one of: connection, table, schema, partition)"
        );
        // Then the names, once the keys and types are right.
        assert_eq!(
            problems(
                r#"{"connection": "", "table": "", "schema": "a\u0000b"}"#,
                "calls"
            ),
            "connection: is empty: name a postgres grant of this writer; table: is empty; \
             schema: contains a NUL character"
        );
    }

    #[test]
    fn an_unusable_schema_name_needs_an_explicit_table() {
        let long = "x".repeat(64);
        let error = problems(r#"{"connection": "main"}"#, &long);
        assert!(
            error.starts_with("table: not set, and the source schema's name"),
            "{error}"
        );
        assert!(error.contains("set `table`"), "{error}");
        assert!(Config::parse(r#"{"connection": "main", "table": "t"}"#, &long).is_ok());
    }

    #[test]
    fn partition_problems_are_reported_with_the_others() {
        let config = Config::parse(
            r#"{"connection": "main", "partition": {"column": "started_at", "interval": "1 day"}}"#,
            "cdr",
        )
        .unwrap();
        assert_eq!(config.partition.unwrap().column, "started_at");
        let long = "x".repeat(52);
        let error = problems(
            &format!(
                r#"{{"table": "{long}", "partition": {{"column": "at", "interval": "1 week"}}}}"#
            ),
            "cdr",
        );
        assert!(
            error.contains("partition.interval: \"1 week\" is not a length of time"),
            "{error}"
        );
        assert!(error.contains("connection: missing (required)"), "{error}");
        let error = problems(
            &format!(
                r#"{{"connection": "main", "table": "{long}", "partition": {{"column": "at", "interval": "5 hours"}}}}"#
            ),
            "cdr",
        );
        assert!(
            error.contains("is too long to name its partitions"),
            "{error}"
        );
        assert!(error.contains("at most 51 bytes"), "{error}");
        assert!(
            error.contains("partition.interval: 5 hours does not divide a day"),
            "{error}"
        );
        let error = problems(r#"{"connection": "main", "partition": "daily"}"#, "cdr");
        assert!(
            error.starts_with("partition: expected a table with the keys column, interval,"),
            "{error}"
        );
    }

    #[test]
    fn no_config_or_not_an_object() {
        assert_eq!(problems("", "t"), "connection: missing (required)");
        assert!(
            problems("[]", "t").starts_with("expected a table with the keys connection, table"),
            "{}",
            problems("[]", "t")
        );
        assert!(
            problems("{", "t").starts_with("the configuration is not valid JSON"),
            "{}",
            problems("{", "t")
        );
    }

    #[test]
    fn connection_must_be_a_non_empty_string() {
        assert_eq!(
            problems(r#"{"connection": 1}"#, "t"),
            "connection: invalid type: integer `1`, expected a string"
        );
        assert_eq!(
            problems(r#"{"connection": ""}"#, "t"),
            "connection: is empty: name a postgres grant of this writer"
        );
    }
}
