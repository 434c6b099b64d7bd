//! A source built against the frozen `sluice:plugin@0.1.0` WIT, as plugins built
//! before 0.2.0 are: the host must keep loading and running it. Each message is
//! one row `(id, body)`: its `message-id` and its body as text; a body that is not
//! UTF-8 is rejected.

wit_bindgen::generate!({
    world: "sluice:plugin/source-plugin@0.1.0",
    path: "../../../wit/sluice-plugin@0.1.0",
});

use exports::sluice::plugin::source::{DecodedBatch, Guest, MessageOutcome};
use sluice::plugin::types::{
    Column, ColumnType, Message, PluginError, PluginInfo, RowBatch, Schema,
};

struct Legacy;

/// Appends a text value in Sluice's row encoding (version 1): tag 1, a 4-byte
/// little-endian length, the UTF-8 bytes.
fn text(data: &mut Vec<u8>, s: &str) {
    data.push(1);
    data.extend_from_slice(&(s.len() as u32).to_le_bytes());
    data.extend_from_slice(s.as_bytes());
}

impl Guest for Legacy {
    fn about() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: env!("CARGO_PKG_DESCRIPTION").into(),
        }
    }

    fn configure(_config: String) -> Result<Schema, PluginError> {
        let column = |name: &str, key: bool| Column {
            name: name.into(),
            type_: ColumnType::Text,
            nullable: false,
            key,
        };
        Ok(Schema {
            name: "legacy".into(),
            version: 1,
            columns: vec![column("id", true), column("body", false)],
        })
    }

    fn decode(messages: Vec<Message>) -> DecodedBatch {
        let mut data = Vec::new();
        let mut count = 0;
        let outcomes = messages
            .iter()
            .map(|m| match std::str::from_utf8(&m.body) {
                Ok(body) => {
                    text(&mut data, m.message_id.as_deref().unwrap_or(""));
                    text(&mut data, body);
                    count += 1;
                    MessageOutcome::Rows(1)
                }
                Err(e) => MessageOutcome::Rejected(format!("body is not UTF-8: {e}")),
            })
            .collect();
        DecodedBatch {
            outcomes,
            rows: RowBatch { count, data },
        }
    }
}

export!(Legacy);
