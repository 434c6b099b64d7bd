//! Sluice's ClickHouse writer: lands each batch in a ClickHouse table with one HTTP
//! insert, idempotent on the schema's key columns.
//!
//! # Configuration
//!
//! ```toml
//! [[pipelines.writers]]
//! plugin = "clickhouse-writer"
//! grants = { http = ["http://127.0.0.1:8123"] }
//! config = { url = "http://127.0.0.1:8123", database = "default", table = "cdr" }
//! ```
//!
//! `url` (required), `database` (default `default`), `table` (default: the schema's
//! name), `user` and `password` (HTTP basic authentication; default: none), and
//! `timeout` (per request, default `60s`). See [`config`]. Plugins cannot read
//! environment variables or files, so a password goes into the configuration
//! file: keep that file readable by the daemon only.
//!
//! # What it does
//!
//! - **`open`** asks the server's version (`SELECT version()`), creates the
//!   database (`CREATE DATABASE IF NOT EXISTS`) and the table
//!   (`CREATE TABLE IF NOT EXISTS ... ENGINE = ReplacingMergeTree ORDER BY (<key
//!   columns>)`), with the types of [`columns`]. On an existing table it adds the
//!   columns a newer schema version added, and refuses (configuration error) a
//!   column of another type, a missing key column or another sorting key.
//! - **`write`** sends the whole batch as one `INSERT INTO db.t (...) FORMAT
//!   RowBinary` request: binary values, parsed fast and without loss. ClickHouse
//!   stores an insert of up to `max_insert_block_size` rows (about a million) as
//!   one part, all or nothing.
//! - **Idempotency**: the table is a `ReplacingMergeTree` ordered by the key
//!   columns, so rows written twice (a redelivered message) collapse into one when
//!   ClickHouse merges parts, in the background, at a time of its choosing.
//!   Until then both copies may be visible: **readers use `FINAL`**
//!   (`SELECT ... FROM db.t FINAL`) or aggregate by the key to see each key once.
//!   Of two rows with the same key, the last inserted is kept.
//! - **Rejected rows**: ClickHouse refuses a whole insert for one bad row. When it
//!   refuses data (a parse error, a value out of range, a failed `throwIf` check in
//!   a column default, a constraint), the writer splits the rows in halves and
//!   inserts each, down to the single rows it refuses, and returns those as
//!   rejections with ClickHouse's error text. Rows whose timestamp or date is
//!   outside what `DateTime64` or `Date32` can hold are rejected before sending.
//! - **Errors**: a refused or lost connection, a timeout, an HTTP 5xx or an
//!   overload code (too many parts, memory limit) are retriable; a URL that the
//!   grants do not allow, or failed authentication, is a configuration error.
//!
//! The schema must have key columns (every valid schema does); the writer refuses
//! a schema without, since a `ReplacingMergeTree` needs them to be idempotent.

pub mod client;
pub mod columns;
pub mod config;

use sluice_plugin_sdk::rows::{RowBatch, RowReader};
use sluice_plugin_sdk::{Column, ColumnType, PluginError, RowRejection, Schema, Writer};

use crate::client::{Client, Failure};
use crate::columns::{Encoder, Version, clickhouse_type};
use crate::config::Config;

/// Inserts of more rows than this are sent with `max_insert_block_size` raised, so
/// that ClickHouse still stores them as one block (all or nothing).
const DEFAULT_MAX_INSERT_BLOCK_SIZE: usize = 1_048_576;

/// The writer: one per plugin instance.
pub struct ClickHouseWriter {
    client: Client,
    types: Vec<ColumnType>,
    encoder: Encoder,
    /// `INSERT INTO ... FORMAT RowBinary\n`.
    insert: String,
    /// The batch's encoded rows, back to back.
    rows: Vec<u8>,
    /// For each encoded row: its index in the batch and where it ends in `rows`.
    ends: Vec<(u32, usize)>,
    version: Version,
}

impl Writer for ClickHouseWriter {
    fn open(config: &str, schema: &Schema) -> Result<Self, PluginError> {
        let config = Config::parse(config, &schema.name)?;
        if schema.key_columns().next().is_none() {
            return Err(PluginError::InvalidConfig(format!(
                "schema {} has no key column: a ReplacingMergeTree needs one to write idempotently",
                schema.name
            )));
        }
        let client = Client::new(&config);
        let version_text = client.query("SELECT version()")?;
        let version = Version::parse(&version_text).ok_or_else(|| {
            PluginError::Fatal(format!(
                "unexpected answer to SELECT version(): {version_text:?}"
            ))
        })?;
        prepare_table(&client, &config, schema, version)?;
        let names: Vec<String> = schema
            .columns
            .iter()
            .map(|c| format!("`{}`", c.name))
            .collect();
        sluice_plugin_sdk::debug!(
            "ClickHouse {version}: writing to `{}`.`{}`",
            config.database,
            config.table
        );
        Ok(ClickHouseWriter {
            client,
            types: schema.column_types(),
            encoder: Encoder::new(&schema.columns, version),
            insert: format!(
                "INSERT INTO `{}`.`{}` ({}) FORMAT RowBinary\n",
                config.database,
                config.table,
                names.join(", ")
            ),
            rows: Vec::new(),
            ends: Vec::new(),
            version,
        })
    }

    fn write(&mut self, batch: &RowBatch) -> Result<Vec<RowRejection>, PluginError> {
        let mut rejections = Vec::new();
        self.rows.clear();
        self.ends.clear();
        for row in RowReader::new(&self.types, batch) {
            let row =
                row.map_err(|e| PluginError::Fatal(format!("the row batch is malformed: {e}")))?;
            match self.encoder.row(&row.values(), &mut self.rows) {
                Ok(()) => self.ends.push((row.index(), self.rows.len())),
                Err(reason) => rejections.push(RowRejection {
                    row: row.index(),
                    reason,
                }),
            }
        }
        if !self.ends.is_empty() {
            self.insert_rows(0, self.ends.len(), &mut rejections)?;
        }
        rejections.sort_by_key(|r| r.row);
        Ok(rejections)
    }
}

impl ClickHouseWriter {
    /// The server's version, as found by `open`.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Inserts encoded rows `from..to`; when ClickHouse refuses the data, splits
    /// them until the refused rows are alone, and rejects those.
    fn insert_rows(
        &self,
        from: usize,
        to: usize,
        rejections: &mut Vec<RowRejection>,
    ) -> Result<(), Failure> {
        match self.insert(from, to) {
            Ok(()) => Ok(()),
            Err(Failure::Data(message)) if to - from == 1 => {
                rejections.push(RowRejection {
                    row: self.ends[from].0,
                    reason: message,
                });
                Ok(())
            }
            Err(Failure::Data(message)) => {
                if from == 0 && to == self.ends.len() {
                    sluice_plugin_sdk::debug!(
                        "ClickHouse refused a batch of {} rows; finding the refused rows: {message}",
                        to - from
                    );
                }
                let middle = from + (to - from) / 2;
                self.insert_rows(from, middle, rejections)?;
                self.insert_rows(middle, to, rejections)
            }
            Err(other) => Err(other),
        }
    }

    fn insert(&self, from: usize, to: usize) -> Result<(), Failure> {
        let start = if from == 0 { 0 } else { self.ends[from - 1].1 };
        let end = self.ends[to - 1].1;
        let mut body = Vec::with_capacity(self.insert.len() + end - start);
        body.extend_from_slice(self.insert.as_bytes());
        body.extend_from_slice(&self.rows[start..end]);
        let rows = to - from;
        let settings = if rows > DEFAULT_MAX_INSERT_BLOCK_SIZE {
            format!("max_insert_block_size={rows}")
        } else {
            String::new()
        };
        self.client.post(&settings, body).map(drop)
    }
}

/// Creates the database and the table, or checks and evolves an existing table.
fn prepare_table(
    client: &Client,
    config: &Config,
    schema: &Schema,
    version: Version,
) -> Result<(), Failure> {
    let (db, table) = (&config.database, &config.table);
    client.query(&format!("CREATE DATABASE IF NOT EXISTS `{db}`"))?;
    let existing = existing_columns(client, db, table)?;
    let keys: Vec<String> = schema
        .key_columns()
        .map(|c| format!("`{}`", c.name))
        .collect();
    if existing.is_empty() {
        let columns: Vec<String> = schema
            .columns
            .iter()
            .map(|c| format!("`{}` {}", c.name, clickhouse_type(c, version)))
            .collect();
        client.query(&format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.`{table}` ({}) ENGINE = ReplacingMergeTree ORDER BY ({})",
            columns.join(", "),
            keys.join(", ")
        ))?;
        // Another instance may have created it first, with another schema version.
        let existing = existing_columns(client, db, table)?;
        return check_or_add(client, config, schema, version, &existing);
    }
    check_or_add(client, config, schema, version, &existing)
}

/// `(name, type)` of each column of the table, none if it does not exist.
fn existing_columns(
    client: &Client,
    db: &str,
    table: &str,
) -> Result<Vec<(String, String)>, Failure> {
    let answer = client.query(&format!(
        "SELECT name, type FROM system.columns WHERE database = '{db}' AND table = '{table}' FORMAT TabSeparated"
    ))?;
    Ok(answer
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(name, ty)| (name.to_owned(), ty.replace("\\'", "'")))
        .collect())
}

/// Checks the existing table against the schema, adds the columns it lacks.
fn check_or_add(
    client: &Client,
    config: &Config,
    schema: &Schema,
    version: Version,
    existing: &[(String, String)],
) -> Result<(), Failure> {
    let (db, table) = (&config.database, &config.table);
    let mut problems = Vec::new();
    let mut missing: Vec<&Column> = Vec::new();
    for column in &schema.columns {
        let wanted = clickhouse_type(column, version);
        match existing.iter().find(|(name, _)| *name == column.name) {
            Some((_, ty)) if *ty == wanted => {}
            Some((_, ty)) => problems.push(format!(
                "column `{}` is {ty} in the table, the schema's {} column needs {wanted}",
                column.name, column.ty
            )),
            None if column.key => problems.push(format!(
                "key column `{}` is not in the table (the sorting key cannot change)",
                column.name
            )),
            None => missing.push(column),
        }
    }
    let sorting = client.query(&format!(
        "SELECT engine, sorting_key FROM system.tables WHERE database = '{db}' AND name = '{table}' FORMAT TabSeparated"
    ))?;
    let keys: Vec<&str> = schema.key_columns().map(|c| c.name.as_str()).collect();
    if let Some((engine, sorting_key)) = sorting.trim_end().split_once('\t') {
        if !engine.contains("ReplacingMergeTree") {
            sluice_plugin_sdk::warn!(
                "`{db}`.`{table}` is a {engine}, not a ReplacingMergeTree: redelivered rows will be stored twice"
            );
        } else if sorting_key.replace(' ', "") != keys.join(",") {
            problems.push(format!(
                "the table is ordered by ({sorting_key}), the schema's key is ({})",
                keys.join(", ")
            ));
        }
    }
    if !problems.is_empty() {
        return Err(Failure::Config(format!(
            "`{db}`.`{table}` does not fit schema {} version {}: {}",
            schema.name,
            schema.version,
            problems.join("; ")
        )));
    }
    for column in missing {
        let ty = clickhouse_type(column, version);
        let added = client.query(&format!(
            "ALTER TABLE `{db}`.`{table}` ADD COLUMN `{}` {ty}",
            column.name
        ));
        if let Err(e) = added {
            // Another instance may have added it meanwhile.
            let now = existing_columns(client, db, table)?;
            if !now.iter().any(|(n, t)| *n == column.name && *t == ty) {
                return Err(e);
            }
        } else {
            sluice_plugin_sdk::info!("added column `{}` {ty} to `{db}`.`{table}`", column.name);
        }
    }
    Ok(())
}

// Only for wasm: natively, the exports' symbol names break the cdylib's link.
#[cfg(target_arch = "wasm32")]
sluice_plugin_sdk::export_writer!(ClickHouseWriter);

#[cfg(test)]
mod tests;
