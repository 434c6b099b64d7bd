//! Source plugins: they turn queue messages into rows of a declared schema.

use std::sync::Arc;

use crate::message::Message;
use crate::plugin::PluginError;
use crate::rows::{RowBatch, RowWriter};
use crate::schema::{Column, Schema};

/// What the host learns about one message of a batch.
// Mirrors the WIT variant: the generated bindings use this type directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageOutcome {
    /// The message decoded into this many rows (0 is allowed). Its rows follow those
    /// of the previous messages of the batch.
    Rows(u32),
    /// The message cannot be decoded. It goes to the dead-letter exchange with this
    /// reason; the rest of the batch goes on.
    Rejected(String),
    /// Some records of the message decoded into rows, others were rejected one
    /// by one (see [`Source::decode_records`]).
    Partial(PartialOutcome),
}

impl MessageOutcome {
    /// The rows this outcome announces.
    pub fn rows(&self) -> u32 {
        match self {
            MessageOutcome::Rows(n) => *n,
            MessageOutcome::Partial(p) => p.rows,
            MessageOutcome::Rejected(_) => 0,
        }
    }
}

/// The outcome of a message some of whose records were rejected.
// Mirrors the WIT record: the generated bindings use this type directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialOutcome {
    /// Rows of the message's good records.
    pub rows: u32,
    /// The rejected records; each goes to the dead-letter exchange on its own.
    pub rejected: Vec<RecordRejection>,
}

/// One record of a message that cannot be decoded.
// Mirrors the WIT record: the generated bindings use this type directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordRejection {
    /// Index of the record in its message, from 0.
    pub index: u32,
    /// The record's bytes: the dead letter's body.
    pub body: Vec<u8>,
    /// Why it cannot be decoded.
    pub reason: String,
}

/// The records of the message being decoded that were rejected one by one
/// (given to [`Source::decode_records`]).
#[derive(Debug, Default)]
pub struct Records {
    rejected: Vec<RecordRejection>,
}

impl Records {
    /// Rejects record `index` of the message (from 0) on its own: `body`, its
    /// bytes, goes to the dead-letter exchange with `reason`, while the rows of
    /// the message's other records land. Write no row for it.
    pub fn reject(&mut self, index: u32, body: impl Into<Vec<u8>>, reason: impl Into<String>) {
        self.rejected.push(RecordRejection {
            index,
            body: body.into(),
            reason: reason.into(),
        });
    }

    /// The records rejected so far.
    pub fn rejected(&self) -> &[RecordRejection] {
        &self.rejected
    }
}

/// A source plugin: decodes queue messages into rows of the schema it declares.
///
/// Export it with [`export_source!`](crate::export_source); test it natively with
/// [`testing::run_source`](crate::testing::run_source).
///
/// ```
/// use sluice_plugin_sdk::{ColumnType, Message, PluginError, Schema, Source};
/// use sluice_plugin_sdk::rows::RowWriter;
///
/// /// Stores each body as one text row, keyed by the message id.
/// struct Lines;
///
/// impl Source for Lines {
///     fn configure(_config: &str) -> Result<(Self, Schema), PluginError> {
///         let schema = Schema::new("lines", 1)
///             .key("id", ColumnType::Text)
///             .required("line", ColumnType::Text);
///         Ok((Lines, schema))
///     }
///
///     fn decode(&mut self, message: &Message, rows: &mut RowWriter) -> Result<(), String> {
///         let id = message.message_id.as_deref().ok_or("no message id")?;
///         let line = std::str::from_utf8(&message.body).map_err(|e| e.to_string())?;
///         rows.text(id).text(line).end_row();
///         Ok(())
///     }
/// }
///
/// // In the plugin crate: sluice_plugin_sdk::export_source!(Lines);
/// let run = sluice_plugin_sdk::testing::run_source::<Lines>(
///     "{}",
///     &[Message::new("hello").with_message_id("m1"), Message::new("no id")],
/// ).unwrap();
/// assert_eq!(run.rows.len(), 1);
/// assert_eq!(run.rejection(1), Some("no message id"));
/// ```
pub trait Source: Sized + 'static {
    /// Reads the plugin's configuration (a JSON object, from the pipeline's
    /// `[pipelines.source.config]` table) and declares the schema of the rows it produces.
    /// Called once on every new instance, before any decoding.
    fn configure(config: &str) -> Result<(Self, Schema), PluginError>;

    /// Appends the rows of one message (zero or more, every column of the schema
    /// in order, each row ended with [`RowWriter::end_row`]), or says why the
    /// message cannot be decoded. On a rejection the SDK drops whatever the call
    /// appended, so a half-written message never reaches a writer.
    fn decode(&mut self, message: &Message, rows: &mut RowWriter) -> Result<(), String>;

    /// Like [`decode`](Self::decode), for a message that holds many records (a
    /// batch of CDRs as NDJSON, a JSON array): a bad record is rejected on its
    /// own with [`Records::reject`] and dead-lettered with its own bytes, while
    /// the rows of the good ones land. An `Err` still rejects the whole message
    /// (its rows and record rejections are dropped). The default calls `decode`.
    fn decode_records(
        &mut self,
        message: &Message,
        rows: &mut RowWriter,
        records: &mut Records,
    ) -> Result<(), String> {
        let _ = records;
        self.decode(message, rows)
    }

    /// Decodes a batch: one outcome per message, in order. The default calls
    /// [`decode_records`](Self::decode_records) for each message and drops the
    /// rows of each rejected one; it also rejects a message whose rows do not fit
    /// the schema.
    fn decode_batch(&mut self, messages: &[Message], rows: &mut RowWriter) -> Vec<MessageOutcome> {
        messages
            .iter()
            .map(|message| {
                let mark = rows.mark();
                let before = rows.count();
                let mut records = Records::default();
                let result = self
                    .decode_records(message, rows, &mut records)
                    .and_then(|()| {
                        if let Some(mistake) = rows.error() {
                            Err(format!(
                                "the plugin wrote rows that do not fit its schema: {mistake}"
                            ))
                        } else if rows.in_row() {
                            Err("the plugin left its last row unfinished (no end_row)".to_owned())
                        } else {
                            Ok(())
                        }
                    });
                match result {
                    Ok(()) if records.rejected.is_empty() => {
                        MessageOutcome::Rows(rows.count() - before)
                    }
                    Ok(()) => MessageOutcome::Partial(PartialOutcome {
                        rows: rows.count() - before,
                        rejected: records.rejected,
                    }),
                    Err(reason) => {
                        rows.reset(mark);
                        MessageOutcome::Rejected(reason)
                    }
                }
            })
            .collect()
    }
}

/// Decodes a batch the way the host receives it, checking what a custom
/// `decode_batch` could get wrong: a batch that breaks the contract is rejected
/// whole (nothing of it can be trusted), instead of failing the writers.
pub(crate) fn decode_checked<S: Source>(
    plugin: &mut S,
    columns: Arc<[Column]>,
    messages: &[Message],
    capacity: usize,
) -> (Vec<MessageOutcome>, RowBatch) {
    let mut rows = RowWriter::checked(columns, capacity);
    let outcomes = plugin.decode_batch(messages, &mut rows);
    let announced: u64 = outcomes.iter().map(|o| u64::from(o.rows())).sum();
    let problem = if outcomes.len() != messages.len() {
        Some(format!(
            "decode_batch gave {} outcomes for {} messages",
            outcomes.len(),
            messages.len()
        ))
    } else if announced != u64::from(rows.count()) {
        Some(format!(
            "decode_batch announced {announced} rows but wrote {}",
            rows.count()
        ))
    } else if let Some(mistake) = rows.error() {
        Some(format!("rows that do not fit the schema: {mistake}"))
    } else if rows.in_row() {
        Some("an unfinished last row (no end_row)".to_owned())
    } else {
        None
    };
    match problem {
        None => (outcomes, rows.finish()),
        Some(problem) => {
            let reason = format!("the plugin broke the row contract: {problem}");
            (
                vec![MessageOutcome::Rejected(reason); messages.len()],
                RowBatch::empty(),
            )
        }
    }
}

/// What the export macro generates for a plugin crate. Not public API.
#[doc(hidden)]
pub mod export {
    use std::any::Any;
    use std::cell::RefCell;
    use std::sync::Arc;

    use crate::__bindings_source::exports::sluice::plugin::source as wit;
    use crate::__bindings_source::sluice::plugin::types as wit_types;
    use crate::{Message, MessageOutcome, PluginError, PluginInfo, Source, schema::Column};

    /// Implemented by the type `export_source!` defines in the plugin crate.
    pub trait SourceExport: 'static {
        /// The plugin.
        type Plugin: Source;
        /// The plugin crate's name, version and description.
        fn info() -> PluginInfo;
    }

    struct Configured {
        /// The one plugin instance (its type is the `SourceExport::Plugin` of the
        /// one export in this component).
        plugin: Box<dyn Any>,
        columns: Arc<[Column]>,
        /// Bytes to reserve for the next batch's rows: the last batch's, plus some.
        capacity: usize,
    }

    thread_local! {
        static CONFIGURED: RefCell<Option<Configured>> = const { RefCell::new(None) };
    }

    wit_schema_conversions!();

    impl<T: SourceExport> wit::Guest for T {
        fn about() -> PluginInfo {
            T::info()
        }

        fn configure(config: String) -> Result<wit_types::Schema, PluginError> {
            crate::log::install_panic_hook();
            let (plugin, schema) = T::Plugin::configure(&config)?;
            schema.validate().map_err(|e| {
                PluginError::InvalidConfig(format!("the declared schema is invalid: {e}"))
            })?;
            let declared = schema_to_wit(&schema);
            let configured = Configured {
                plugin: Box::new(plugin),
                columns: schema.columns.into(),
                capacity: 0,
            };
            CONFIGURED.with_borrow_mut(|slot| *slot = Some(configured));
            Ok(declared)
        }

        fn decode(messages: Vec<Message>) -> wit::DecodedBatch {
            CONFIGURED.with_borrow_mut(|slot| {
                let Some(configured) = slot else {
                    return not_configured(messages.len());
                };
                let Some(plugin) = configured.plugin.downcast_mut::<T::Plugin>() else {
                    return not_configured(messages.len());
                };
                let (outcomes, rows) = super::decode_checked(
                    plugin,
                    configured.columns.clone(),
                    &messages,
                    configured.capacity,
                );
                configured.capacity = rows.data.len() + rows.data.len() / 8;
                wit::DecodedBatch { outcomes, rows }
            })
        }
    }

    fn not_configured(messages: usize) -> wit::DecodedBatch {
        wit::DecodedBatch {
            outcomes: vec![MessageOutcome::Rejected("plugin not configured".to_owned()); messages],
            rows: Default::default(),
        }
    }
}

/// Exports a [`Source`] implementation as the plugin's `source` world.
///
/// Use it once, in the plugin crate (a `cdylib` built for wasm, with the SDK's
/// `source` feature). The plugin reports the crate's `name`, `version` and
/// `description` from its `Cargo.toml` as who it is.
///
/// ```ignore
/// struct MySource { /* ... */ }
/// impl sluice_plugin_sdk::Source for MySource { /* ... */ }
/// sluice_plugin_sdk::export_source!(MySource);
/// ```
#[macro_export]
macro_rules! export_source {
    ($plugin:ty) => {
        const _: () = {
            // Not `pub`: the plugin type may be private to its crate.
            struct __SluiceSourceExport;

            impl $crate::__private::SourceExport for __SluiceSourceExport {
                type Plugin = $plugin;

                fn info() -> $crate::PluginInfo {
                    $crate::__plugin_info!()
                }
            }

            // Only wasm exports the world: natively the export names (`sluice:plugin/...#...`)
            // break the linker's version script of a `cdylib`, and no host could call them.
            #[cfg(target_arch = "wasm32")]
            $crate::__bindings_source::__export_source_world!(
                __SluiceSourceExport with_types_in $crate::__bindings_source
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use super::export::SourceExport;
    use crate::__bindings_source::exports::sluice::plugin::source::Guest;
    use crate::rows::{OwnedValue, RowWriter};
    use crate::{ColumnType, Message, MessageOutcome, PluginError, PluginInfo, Schema, Source};

    struct Echo;

    impl Source for Echo {
        fn configure(config: &str) -> Result<(Self, Schema), PluginError> {
            match config {
                "bad schema" => Ok((Echo, Schema::new("t", 1).column("x", ColumnType::Text))),
                _ => Ok((Echo, Schema::new("t", 3).key("body", ColumnType::Text))),
            }
        }

        fn decode(&mut self, message: &Message, rows: &mut RowWriter) -> Result<(), String> {
            rows.text(std::str::from_utf8(&message.body).map_err(|e| e.to_string())?)
                .end_row();
            Ok(())
        }
    }

    struct Exported;

    impl SourceExport for Exported {
        type Plugin = Echo;
        fn info() -> PluginInfo {
            PluginInfo {
                name: "echo".into(),
                version: "1.0.0".into(),
                description: "Echoes.".into(),
            }
        }
    }

    // The macro accepts a type private to its module (compiles natively; the wasm
    // exports themselves are only generated on wasm32).
    crate::export_source!(Echo);

    /// The glue the export macro wires to the component's exports, called directly.
    #[test]
    fn export_glue_configures_then_decodes() {
        assert_eq!(<Exported as Guest>::about().name, "echo");

        let before = <Exported as Guest>::decode(vec![Message::new("a")]);
        assert_eq!(
            before.outcomes,
            [MessageOutcome::Rejected("plugin not configured".into())]
        );
        assert_eq!(before.rows.count, 0);

        let err = <Exported as Guest>::configure("bad schema".into()).unwrap_err();
        assert_eq!(
            err,
            PluginError::InvalidConfig("the declared schema is invalid: no key column".into())
        );

        let schema = <Exported as Guest>::configure("{}".into()).unwrap();
        assert_eq!(
            (schema.name.as_str(), schema.version, schema.columns.len()),
            ("t", 3, 1)
        );
        assert!(schema.columns[0].key && !schema.columns[0].nullable);

        let batch = <Exported as Guest>::decode(vec![
            Message::new("a"),
            Message::new(vec![0xff]),
            Message::new("b"),
        ]);
        assert_eq!(batch.outcomes[0], MessageOutcome::Rows(1));
        assert!(matches!(batch.outcomes[1], MessageOutcome::Rejected(_)));
        let rows = crate::testing::read_rows(&[ColumnType::Text], &batch.rows).unwrap();
        assert_eq!(
            rows,
            [
                [OwnedValue::Text("a".into())],
                [OwnedValue::Text("b".into())]
            ]
        );
    }

    /// A custom `decode_batch` that breaks the contract gets its whole batch rejected.
    #[test]
    fn a_batch_that_breaks_the_contract_is_rejected_whole() {
        struct Liar;
        impl Source for Liar {
            fn configure(_: &str) -> Result<(Self, Schema), PluginError> {
                Ok((Liar, Schema::new("t", 1).key("n", ColumnType::Int32)))
            }
            fn decode(&mut self, _: &Message, _: &mut RowWriter) -> Result<(), String> {
                unreachable!()
            }
            fn decode_batch(
                &mut self,
                messages: &[Message],
                rows: &mut RowWriter,
            ) -> Vec<MessageOutcome> {
                rows.int32(1).end_row();
                messages.iter().map(|_| MessageOutcome::Rows(1)).collect()
            }
        }
        let messages = [Message::new("a"), Message::new("b")];
        let run = crate::testing::run_source::<Liar>("", &messages).unwrap();
        assert!(run.rows.is_empty());
        assert_eq!(
            run.rejection(1),
            Some("the plugin broke the row contract: decode_batch announced 2 rows but wrote 1")
        );
    }
}
