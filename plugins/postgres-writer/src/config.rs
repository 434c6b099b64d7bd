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

use serde_json::Value;

use crate::partition::{PARTITION_NAME_SUFFIX_MAX, Partitioning};
use crate::sql::{IDENTIFIER_MAX_BYTES, TableName, identifier_problem};

/// The keys a configuration may hold.
const KEYS: [&str; 4] = ["connection", "table", "schema", "partition"];

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

impl Config {
    /// Reads the configuration `json`; `default_table` (the source schema's name)
    /// names the table when `table` is not set. The error lists every problem.
    pub fn parse(json: &str, default_table: &str) -> Result<Config, String> {
        // No configuration at all reads as `{}`, so that the error names what is
        // missing rather than complaining about JSON.
        let json = if json.trim().is_empty() { "{}" } else { json };
        let value: Value = serde_json::from_str(json)
            .map_err(|e| format!("postgres-writer config is not valid JSON: {e}"))?;
        let Value::Object(object) = value else {
            return Err("postgres-writer config must be a JSON object".to_string());
        };

        let mut problems = Vec::new();
        for key in object.keys() {
            if !KEYS.contains(&key.as_str()) {
                problems.push(format!(
                    "unknown key `{key}` (known keys: {})",
                    KEYS.join(", ")
                ));
            }
        }
        let mut string = |key: &str| -> Option<String> {
            match object.get(key) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    problems.push(format!("`{key}` must be a string, not {other}"));
                    None
                }
            }
        };
        let connection = string("connection");
        let table = string("table");
        let schema = string("schema");

        // A `connection` of the wrong type was reported above, not as missing.
        match (&connection, object.get("connection")) {
            (None, None | Some(Value::Null)) => problems.push(
                "`connection` is required: the name of a postgres grant of this writer".to_string(),
            ),
            (Some(c), _) if c.is_empty() => problems.push("`connection` is empty".to_string()),
            _ => {}
        }
        match &table {
            Some(table) => {
                if let Some(why) = identifier_problem(table) {
                    problems.push(format!("`table` {why}"));
                }
            }
            None => {
                if let Some(why) = identifier_problem(default_table) {
                    problems.push(format!(
                        "the source schema's name {default_table:?} {why}, so it cannot name the table: set `table`"
                    ));
                }
            }
        }
        if let Some(why) = schema.as_deref().and_then(identifier_problem) {
            problems.push(format!("`schema` {why}"));
        }
        let partition = match object.get("partition") {
            None | Some(Value::Null) => None,
            Some(value) => Partitioning::parse(value, &mut problems),
        };
        let table_name = table.clone().unwrap_or_else(|| default_table.to_string());
        if object.get("partition").is_some_and(|v| !v.is_null())
            && table_name.len() + PARTITION_NAME_SUFFIX_MAX > IDENTIFIER_MAX_BYTES
        {
            problems.push(format!(
                "table name {table_name:?} is too long to name its partitions \
                 (`{table_name}_p2026112713` must fit in {IDENTIFIER_MAX_BYTES} bytes): use a name of at most {} bytes",
                IDENTIFIER_MAX_BYTES - PARTITION_NAME_SUFFIX_MAX
            ));
        }

        if !problems.is_empty() {
            return Err(format!(
                "invalid postgres-writer config: {}",
                problems.join("; ")
            ));
        }
        Ok(Config {
            connection: connection.unwrap_or_default(),
            table: TableName {
                schema,
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

    #[test]
    fn reports_every_problem_at_once() {
        let error = Config::parse(
            r#"{"tabel": "x", "schema": 5, "table": "", "extra": true}"#,
            "calls",
        )
        .unwrap_err();
        assert_eq!(
            error,
            "invalid postgres-writer config: unknown key `extra` (known keys: connection, table, schema, partition); \
             unknown key `tabel` (known keys: connection, table, schema, partition); `schema` must be a string, not 5; \
             `connection` is required: the name of a postgres grant of this writer; `table` is empty"
        );
    }

    #[test]
    fn an_unusable_schema_name_needs_an_explicit_table() {
        let long = "x".repeat(64);
        let error = Config::parse(r#"{"connection": "main"}"#, &long).unwrap_err();
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
        let error = Config::parse(
            &format!(
                r#"{{"table": "{long}", "partition": {{"column": "at", "interval": "1 week"}}}}"#
            ),
            "cdr",
        )
        .unwrap_err();
        assert!(
            error.contains("`partition.interval`: \"1 week\" is not a length of time"),
            "{error}"
        );
        assert!(error.contains("`connection` is required"), "{error}");
        assert!(
            error.contains("is too long to name its partitions"),
            "{error}"
        );
        assert!(error.contains("at most 51 bytes"), "{error}");
        let error =
            Config::parse(r#"{"connection": "main", "partition": "daily"}"#, "cdr").unwrap_err();
        assert!(error.contains("`partition` must be a table"), "{error}");
    }

    #[test]
    fn no_config_or_not_an_object() {
        assert_eq!(
            Config::parse("", "t").unwrap_err(),
            "invalid postgres-writer config: `connection` is required: the name of a postgres grant of this writer"
        );
        assert_eq!(
            Config::parse("[]", "t").unwrap_err(),
            "postgres-writer config must be a JSON object"
        );
        assert!(
            Config::parse("{", "t")
                .unwrap_err()
                .starts_with("postgres-writer config is not valid JSON")
        );
    }

    #[test]
    fn connection_must_be_a_non_empty_string() {
        assert!(
            Config::parse(r#"{"connection": 1}"#, "t")
                .unwrap_err()
                .contains("`connection` must be a string, not 1")
        );
        assert!(
            Config::parse(r#"{"connection": ""}"#, "t")
                .unwrap_err()
                .contains("`connection` is empty")
        );
    }
}
