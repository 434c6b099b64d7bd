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

use serde_json::Value;

use crate::sql::{TableName, identifier_problem};

/// The keys a configuration may hold.
const KEYS: [&str; 3] = ["connection", "table", "schema"];

/// The writer's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The name of the Postgres connection grant to write through.
    pub connection: String,
    /// The table rows land in.
    pub table: TableName,
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
                name: table.unwrap_or_else(|| default_table.to_string()),
            },
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
                }
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
            "invalid postgres-writer config: unknown key `extra` (known keys: connection, table, schema); \
             unknown key `tabel` (known keys: connection, table, schema); `schema` must be a string, not 5; \
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
