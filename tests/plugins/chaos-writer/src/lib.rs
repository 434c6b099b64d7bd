//! A misbehaving writer for the host's tests. It stores nothing; the first
//! column of each row (a text key, as `chaos-source` and `json-source` make)
//! says what to do when a batch holds it:
//!
//! - `fatal`: fail the whole batch with `PluginError::Fatal` (the same error
//!   every time, as a store that cannot take one row's data would);
//! - `panic`: panic;
//! - `sleep:MS`: sleep that long with `std::thread::sleep`;
//! - `flood:N`: log N warning lines (`flood:0` logs until the call is stopped);
//! - `refuse:BYTES`: refuse that row with a reason of that many bytes.
//!
//! Every other row is accepted.

use sluice_plugin_sdk::rows::{RowReader, Value};
use sluice_plugin_sdk::{ColumnType, PluginError, RowBatch, RowRejection, Schema, Writer};

/// The chaos writer.
pub struct Chaos {
    types: Vec<ColumnType>,
}

impl Writer for Chaos {
    fn open(_config: &str, schema: &Schema) -> Result<Self, PluginError> {
        Ok(Chaos {
            types: schema.column_types(),
        })
    }

    fn write(&mut self, batch: &RowBatch) -> Result<Vec<RowRejection>, PluginError> {
        let mut refused = Vec::new();
        for (index, row) in RowReader::new(&self.types, batch).enumerate() {
            let row = row.map_err(|e| PluginError::Fatal(e.to_string()))?;
            let Some(Value::Text(key)) = row.iter().next() else {
                continue;
            };
            if key == "fatal" {
                return Err(PluginError::Fatal(
                    "chaos: the store cannot take the row keyed `fatal`".into(),
                ));
            } else if key == "panic" {
                panic!("chaos: asked to panic in write");
            } else if let Some(ms) = key.strip_prefix("sleep:") {
                let ms: u64 = ms.parse().unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(ms));
            } else if let Some(n) = key.strip_prefix("flood:") {
                let n: u64 = n.parse().unwrap_or(0);
                let mut i = 0u64;
                while n == 0 || i < n {
                    sluice_plugin_sdk::log::warn(&format!("chaos: flood line {i}"));
                    i += 1;
                }
            } else if let Some(bytes) = key.strip_prefix("refuse:") {
                let bytes: usize = bytes.parse().unwrap_or(0);
                refused.push(RowRejection {
                    row: index as u32,
                    reason: "w".repeat(bytes),
                });
            }
        }
        Ok(refused)
    }
}

sluice_plugin_sdk::export_writer!(Chaos);
