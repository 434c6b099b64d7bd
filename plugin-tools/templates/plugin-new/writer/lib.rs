//! A Sluice writer plugin: stores every row as a JSON document in a Postgres
//! table, `(key jsonb PRIMARY KEY, doc jsonb)`, through a connection that the
//! pipeline's configuration grants it. It works with any source's schema.
//!
//! Start here and make it land rows in your own store: change `open` (connect,
//! create what the schema needs) and `write` (store a batch), then run
//! `cargo test`.

use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use sluice_plugin_sdk::config::{self, Problems};
use sluice_plugin_sdk::postgres::{Connection, PgValue};
use sluice_plugin_sdk::rows::{RowReader, Value};
use sluice_plugin_sdk::{PluginError, RowBatch, RowRejection, Schema, Writer};

/// The writer. The host opens one per consumer and calls `write` on it for each
/// batch; what it keeps in `self` (here, its connection) lasts from batch to batch.
pub struct Documents {
    connection: Connection,
    schema: Schema,
    insert: String,
}

/// The writer's `config` table, for example
/// `config = { connection = "warehouse", table = "events" }`.
#[derive(Debug, PartialEq)]
pub struct Config {
    /// The name of a Postgres connection granted to the writer
    /// (`grants = { postgres = ["warehouse"] }`). The plugin never sees its URL.
    pub connection: String,
    /// The table: `name` or `schema.name`; by default the source's schema name.
    pub table: String,
}

/// The `config` table as written: a key without `Option` (or
/// `#[serde(default)]`) is required. `config::parse` reports unknown keys and
/// values of the wrong type, all at once, each at its key.
#[derive(Deserialize)]
struct RawConfig {
    connection: String,
    table: Option<String>,
}

impl Config {
    /// Reads the configuration (a JSON object in a string).
    pub fn parse(config: &str, schema: &Schema) -> Result<Config, PluginError> {
        let raw: RawConfig = config::parse(config)?;
        // Rules serde cannot express, each at its key, reported together.
        let mut problems = Problems::new();
        // The name goes into SQL text, so only plain lowercase identifiers pass.
        let table = raw.table.unwrap_or_else(|| schema.name.clone());
        if table.split('.').count() > 2 || !table.split('.').all(Schema::is_valid_name) {
            problems.add(
                "table",
                format!(
                    "{table:?} is not `name` or `schema.name`, in lowercase letters, digits and _"
                ),
            );
        }
        problems.check()?;
        Ok(Config {
            connection: raw.connection,
            table,
        })
    }
}

impl Writer for Documents {
    /// Reads the writer's `config`, opens its connection and creates its table.
    /// Called once on every new instance, before the first `write`.
    fn open(config: &str, schema: &Schema) -> Result<Self, PluginError> {
        let config = Config::parse(config, schema)?;
        // Works only if the writer's `grants.postgres` lists the name. A PgError
        // converts into a PluginError: retriable (the server is down) stays
        // retriable and is retried with backoff; a connection the writer was not
        // granted is a configuration error; anything else is fatal.
        let connection = Connection::open(&config.connection)?;
        connection.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (key jsonb PRIMARY KEY, doc jsonb NOT NULL)",
            config.table
        ))?;
        let insert = format!(
            "INSERT INTO {} (key, doc) \
             SELECT key, doc FROM jsonb_to_recordset($1::text::jsonb) AS r(key jsonb, doc jsonb) \
             ON CONFLICT (key) DO NOTHING",
            config.table
        );
        Ok(Documents {
            connection,
            schema: schema.clone(),
            insert,
        })
    }

    /// Writes a batch. `Ok(rejections)` means every other row is committed;
    /// `Err` means nothing of the batch is, and the host retries it later.
    fn write(&mut self, batch: &RowBatch) -> Result<Vec<RowRejection>, PluginError> {
        let (documents, rejected) = documents(&self.schema, batch)?;
        if !documents.is_empty() {
            // One statement for the whole batch, so Postgres commits all of it or
            // none of it. `ON CONFLICT (key) DO NOTHING` makes it idempotent on the
            // key columns: rows delivered again (after a crash or a retry) are
            // skipped.
            let documents = Json::Array(documents).to_string();
            self.connection
                .execute(&self.insert, &[PgValue::Text(documents)])?;
        }
        Ok(rejected)
    }
}

// Exports `Documents` as the component's `writer` interface (on wasm32; natively,
// in `cargo test`, it exports nothing).
sluice_plugin_sdk::export_writer!(Documents);

/// The rows of a batch as `{"key": {..}, "doc": {..}}` objects (the key columns,
/// and every column, by name), and the rows refused.
pub fn documents(
    schema: &Schema,
    batch: &RowBatch,
) -> Result<(Vec<Json>, Vec<RowRejection>), PluginError> {
    let mut documents = Vec::new();
    let mut rejected = Vec::new();
    for row in RowReader::new(&schema.column_types(), batch) {
        // The host checked the rows against the schema already.
        let row = row.map_err(|e| PluginError::Fatal(e.to_string()))?;
        let mut key = Map::new();
        let mut doc = Map::new();
        for (column, value) in schema.columns.iter().zip(row.iter()) {
            let value = to_json(value);
            if column.key {
                key.insert(column.name.clone(), value.clone());
            }
            doc.insert(column.name.clone(), value);
        }
        let doc = Json::Object(doc);
        // Reject a row the store would refuse, rather than fail the batch: a
        // failed batch is retried, and would fail again, forever. The row's
        // message goes to the dead-letter queue with this reason.
        if contains_nul(&doc) {
            rejected.push(RowRejection {
                row: row.index(),
                reason: "jsonb cannot store the character U+0000".into(),
            });
            continue;
        }
        documents.push(json!({ "key": key, "doc": doc }));
    }
    Ok((documents, rejected))
}

/// A value as JSON. Numerics stay exact as strings, bytes are hex, timestamps are
/// microseconds and dates days since 1970-01-01 (as the SDK gives them).
fn to_json(value: Value<'_>) -> Json {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    match value {
        Value::Null => Json::Null,
        Value::Boolean(b) => b.into(),
        Value::Int32(n) => n.into(),
        Value::Int64(n) | Value::Timestamp(n) => n.into(),
        Value::Date(days) => days.into(),
        Value::Float64(x) => x.into(), // NaN and infinities become null
        Value::Numeric(s) | Value::Text(s) => s.into(),
        Value::Bytes(b) => hex(b).into(),
        Value::Uuid(u) => {
            let mut text = String::new();
            for (i, b) in u.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    text.push('-');
                }
                text.push_str(&format!("{b:02x}"));
            }
            text.into()
        }
        Value::Json(text) => serde_json::from_str(text).unwrap_or_else(|_| text.into()),
    }
}

fn contains_nul(value: &Json) -> bool {
    match value {
        Json::String(s) => s.contains('\0'),
        Json::Array(items) => items.iter().any(contains_nul),
        Json::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_plugin_sdk::rows::{OwnedValue, Value};
    use sluice_plugin_sdk::testing::row_batch;
    use sluice_plugin_sdk::{ColumnType, PluginError, RowRejection, Schema, Writer};

    use super::{Config, Documents, documents, to_json};

    fn schema() -> Schema {
        Schema::new("calls", 1)
            .key("call_id", ColumnType::Text)
            .required("seconds", ColumnType::Int32)
            .column("cost", ColumnType::Numeric)
    }

    #[test]
    fn config_names_a_connection_and_a_table() {
        let config = Config::parse(r#"{"connection": "warehouse"}"#, &schema()).unwrap();
        assert_eq!(
            (config.connection.as_str(), config.table.as_str()),
            ("warehouse", "calls")
        );
        let config =
            Config::parse(r#"{"connection": "w", "table": "ops.calls"}"#, &schema()).unwrap();
        assert_eq!(config.table, "ops.calls");
        assert_eq!(
            Config::parse(r#"{"tabel": "calls"}"#, &schema()),
            Err(PluginError::InvalidConfig(
                "connection: missing (required); \
                 tabel: unknown key `tabel` (expected one of: connection, table)"
                    .into()
            ))
        );
        assert!(matches!(
            Config::parse(r#"{"connection": "w", "table": "calls; DROP TABLE x"}"#, &schema()),
            Err(PluginError::InvalidConfig(m)) if m.starts_with("table: \"calls; DROP TABLE x\" is not")
        ));
    }

    #[test]
    fn rows_become_documents_and_what_jsonb_refuses_is_rejected() {
        let rows = [
            vec![
                OwnedValue::Text("c-1".into()),
                OwnedValue::Int32(42),
                OwnedValue::Numeric("0.42".into()),
            ],
            vec![
                OwnedValue::Text("c-\0".into()),
                OwnedValue::Int32(1),
                OwnedValue::Null,
            ],
        ];
        let (docs, rejected) = documents(&schema(), &row_batch(&rows)).unwrap();
        assert_eq!(
            docs,
            [json!({
                "key": {"call_id": "c-1"},
                "doc": {"call_id": "c-1", "seconds": 42, "cost": "0.42"},
            })]
        );
        assert_eq!(
            rejected,
            [RowRejection {
                row: 1,
                reason: "jsonb cannot store the character U+0000".into()
            }]
        );
    }

    #[test]
    fn values_become_json() {
        let uuid = *b"\x12\x34\x56\x78\x9a\xbc\xde\xf0\x12\x34\x56\x78\x9a\xbc\xde\xf0";
        assert_eq!(
            to_json(Value::Uuid(uuid)),
            json!("12345678-9abc-def0-1234-56789abcdef0")
        );
        assert_eq!(to_json(Value::Bytes(&[0, 255])), json!("00ff"));
        assert_eq!(to_json(Value::Json(r#"{"a": [1]}"#)), json!({"a": [1]}));
        assert_eq!(to_json(Value::Float64(f64::NAN)), json!(null));
    }

    #[test]
    fn outside_a_host_open_checks_the_config_then_cannot_connect() {
        // Natively there is no host to ask for a connection: test the logic here,
        // and the whole plugin in a daemon (see the README).
        let err = Documents::open(r#"{"connection": "warehouse"}"#, &schema())
            .err()
            .unwrap();
        assert!(err.message().starts_with("no host:"), "{err}");
    }
}
