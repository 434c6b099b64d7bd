//! Helpers to test plugins natively (`cargo test`), without wasm or a host.
//!
//! [`run_source`] runs a source the way the host would (configure, then one batch
//! decoded with the SDK's checks) and reads its rows back; [`row_batch`] builds a
//! batch for a writer's tests.

use crate::message::Message;
use crate::rows::{DecodeError, OwnedValue, RowBatch, RowReader, RowWriter};
use crate::schema::ColumnType;

/// A body for [`message_json`]: JSON text as is, or a `serde_json::Value`.
pub trait JsonBody {
    /// The body's bytes.
    fn into_json_body(self) -> Vec<u8>;
}

impl JsonBody for &str {
    /// The text as is (it need not be valid JSON, to test rejections).
    fn into_json_body(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl JsonBody for String {
    /// The text as is (it need not be valid JSON, to test rejections).
    fn into_json_body(self) -> Vec<u8> {
        self.into_bytes()
    }
}

impl JsonBody for serde_json::Value {
    fn into_json_body(self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl JsonBody for &serde_json::Value {
    fn into_json_body(self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

/// A message with this JSON body and the content type `application/json`.
///
/// ```
/// use sluice_plugin_sdk::testing::message_json;
///
/// let m = message_json(serde_json::json!({"id": 1}));
/// assert_eq!(m.body, br#"{"id":1}"#);
/// assert_eq!(message_json(r#"{"id": 1}"#).content_type.as_deref(), Some("application/json"));
/// ```
pub fn message_json(body: impl JsonBody) -> Message {
    Message::new(body.into_json_body()).with_content_type("application/json")
}

/// Encodes rows of owned values into a batch (for a writer's tests).
///
/// ```
/// use sluice_plugin_sdk::ColumnType;
/// use sluice_plugin_sdk::rows::OwnedValue;
/// use sluice_plugin_sdk::testing::{read_rows, row_batch};
///
/// let rows = vec![vec![OwnedValue::Int64(1), OwnedValue::Text("a".into())]];
/// let batch = row_batch(&rows);
/// assert_eq!(read_rows(&[ColumnType::Int64, ColumnType::Text], &batch).unwrap(), rows);
/// ```
pub fn row_batch(rows: &[Vec<OwnedValue>]) -> RowBatch {
    let mut writer = RowWriter::new();
    for row in rows {
        for value in row {
            writer.value(value.as_value());
        }
        writer.end_row();
    }
    writer.finish()
}

/// Decodes every row of a batch into owned values.
pub fn read_rows(
    types: &[ColumnType],
    batch: &RowBatch,
) -> Result<Vec<Vec<OwnedValue>>, DecodeError> {
    RowReader::new(types, batch)
        .map(|row| row.map(|r| r.to_owned_values()))
        .collect()
}

#[cfg(feature = "source")]
pub use source_run::{SourceRun, run_source};

#[cfg(feature = "source")]
mod source_run {
    use super::read_rows;
    use crate::rows::OwnedValue;
    use crate::{Message, MessageOutcome, PluginError, Schema, Source};

    /// What [`run_source`] saw.
    #[derive(Clone, Debug, PartialEq)]
    pub struct SourceRun {
        /// The schema the source declared.
        pub schema: Schema,
        /// One outcome per message.
        pub outcomes: Vec<MessageOutcome>,
        /// The rows of every accepted message, in message order, decoded back.
        pub rows: Vec<Vec<OwnedValue>>,
    }

    impl SourceRun {
        /// The rows of message `message` (none if it was rejected).
        pub fn rows_of(&self, message: usize) -> &[Vec<OwnedValue>] {
            let count = |o: &MessageOutcome| o.rows() as usize;
            let start: usize = self.outcomes[..message].iter().map(count).sum();
            &self.rows[start..start + count(&self.outcomes[message])]
        }

        /// Why message `message` was rejected, if it was.
        pub fn rejection(&self, message: usize) -> Option<&str> {
            match &self.outcomes[message] {
                MessageOutcome::Rejected(reason) => Some(reason),
                MessageOutcome::Rows(_) | MessageOutcome::Partial(_) => None,
            }
        }

        /// The records of message `message` rejected one by one (none unless
        /// its outcome is `Partial`).
        pub fn rejected_records(&self, message: usize) -> &[crate::RecordRejection] {
            match &self.outcomes[message] {
                MessageOutcome::Partial(p) => &p.rejected,
                _ => &[],
            }
        }
    }

    /// Configures a source with `config` and decodes `messages` as one batch, as the
    /// host would (the declared schema validated, rows checked against it), then
    /// reads the rows back.
    ///
    /// Errors: the plugin's own configuration error; `InvalidConfig` for an invalid
    /// declared schema; `Fatal` if the rows cannot be read back (an SDK bug).
    pub fn run_source<S: Source>(
        config: &str,
        messages: &[Message],
    ) -> Result<SourceRun, PluginError> {
        let (mut plugin, schema) = S::configure(config)?;
        schema.validate().map_err(|e| {
            PluginError::InvalidConfig(format!("the declared schema is invalid: {e}"))
        })?;
        let (outcomes, batch) =
            crate::source::decode_checked(&mut plugin, schema.columns.clone().into(), messages, 0);
        let rows = read_rows(&schema.column_types(), &batch)
            .map_err(|e| PluginError::Fatal(format!("the rows cannot be read back: {e}")))?;
        Ok(SourceRun {
            schema,
            outcomes,
            rows,
        })
    }
}

#[cfg(all(test, feature = "source"))]
mod tests {
    use super::*;
    use crate::rows::RowWriter;
    use crate::{MessageOutcome, PluginError, Schema, Source};

    /// Writes one row per comma-separated number; rejects a message holding "bad"
    /// after writing part of its rows; misbehaves on "bug".
    struct Numbers;

    impl Source for Numbers {
        fn configure(config: &str) -> Result<(Self, Schema), PluginError> {
            if config == "bad" {
                return Err(PluginError::InvalidConfig("bad".into()));
            }
            Ok((
                Numbers,
                Schema::new("numbers", 1).key("n", ColumnType::Int64),
            ))
        }

        fn decode(&mut self, message: &Message, rows: &mut RowWriter) -> Result<(), String> {
            let body = std::str::from_utf8(&message.body).map_err(|e| e.to_string())?;
            for part in body.split(',').filter(|p| !p.is_empty()) {
                match part {
                    "bug" => {
                        rows.int32(1).end_row();
                    }
                    "open" => {
                        rows.int64(1);
                    }
                    _ => {
                        let n = part
                            .parse::<i64>()
                            .map_err(|_| format!("not a number: {part}"))?;
                        rows.int64(n).end_row();
                    }
                }
            }
            Ok(())
        }
    }

    #[test]
    fn run_source_drops_rows_of_rejected_messages() {
        let messages = ["1,2", "3,bad,4", "", "5"].map(Message::new);
        let run = run_source::<Numbers>("{}", &messages).unwrap();
        assert_eq!(
            run.outcomes,
            [
                MessageOutcome::Rows(2),
                MessageOutcome::Rejected("not a number: bad".into()),
                MessageOutcome::Rows(0),
                MessageOutcome::Rows(1)
            ]
        );
        assert_eq!(run.rows, [1, 2, 5].map(|n| vec![OwnedValue::Int64(n)]));
        assert_eq!(run.rows_of(3), [vec![OwnedValue::Int64(5)]]);
        assert!(run.rows_of(1).is_empty());
        assert_eq!(run.rejection(1), Some("not a number: bad"));
    }

    #[test]
    fn rows_that_break_the_schema_reject_only_their_message() {
        let messages = ["1", "2,bug", "3,open", "4"].map(Message::new);
        let run = run_source::<Numbers>("{}", &messages).unwrap();
        assert_eq!(run.rows, [1, 4].map(|n| vec![OwnedValue::Int64(n)]));
        assert_eq!(
            run.rejection(1),
            Some(
                "the plugin wrote rows that do not fit its schema: row 2, column 0 (n): an int32 value in an int64 column"
            )
        );
        assert_eq!(
            run.rejection(2),
            Some("the plugin left its last row unfinished (no end_row)")
        );
    }

    #[test]
    fn configuration_errors_come_back() {
        assert_eq!(
            run_source::<Numbers>("bad", &[]),
            Err(PluginError::InvalidConfig("bad".into()))
        );
    }
}
