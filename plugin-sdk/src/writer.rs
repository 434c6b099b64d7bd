//! Writer plugins: they land rows in a store through the capabilities the host grants.

use crate::plugin::PluginError;
use crate::rows::RowBatch;
use crate::schema::Schema;

/// A row the store refused for good (a value out of range, a violated check). Its
/// message goes to the dead-letter exchange with the reason.
// Mirrors the WIT record: the generated bindings use this type directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowRejection {
    /// Index of the row in the batch, from 0.
    pub row: u32,
    /// Why the store refused it.
    pub reason: String,
}

/// A writer plugin: lands the rows of one schema in a store.
///
/// Export it with [`export_writer!`](crate::export_writer). Read batches with
/// [`RowReader`](crate::rows::RowReader) over [`Schema::column_types`].
///
/// ```
/// use sluice_plugin_sdk::{PluginError, RowBatch, RowRejection, Schema, Writer};
/// use sluice_plugin_sdk::rows::{RowReader, Value};
///
/// /// Counts rows, and refuses negative amounts.
/// struct Counter { types: Vec<sluice_plugin_sdk::ColumnType>, seen: u64 }
///
/// impl Writer for Counter {
///     fn open(_config: &str, schema: &Schema) -> Result<Self, PluginError> {
///         Ok(Counter { types: schema.column_types(), seen: 0 })
///     }
///
///     fn write(&mut self, batch: &RowBatch) -> Result<Vec<RowRejection>, PluginError> {
///         let mut rejected = Vec::new();
///         for row in RowReader::new(&self.types, batch) {
///             let row = row.map_err(|e| PluginError::Fatal(e.to_string()))?;
///             match row.iter().next() {
///                 Some(Value::Int64(n)) if n < 0 => {
///                     rejected.push(RowRejection { row: row.index(), reason: "negative".into() })
///                 }
///                 _ => self.seen += 1,
///             }
///         }
///         Ok(rejected)
///     }
/// }
/// // In the plugin crate: sluice_plugin_sdk::export_writer!(Counter);
/// ```
pub trait Writer: Sized + 'static {
    /// Prepares the writer: reads its configuration (a JSON object, from the
    /// writer's `config` table), connects through the capabilities it was granted,
    /// and creates or evolves what the schema needs. Called once on every new
    /// instance, before any write.
    fn open(config: &str, schema: &Schema) -> Result<Self, PluginError>;

    /// Writes a batch, all or nothing except for the rejected rows: on `Ok`, every
    /// row not listed is durably committed. On `Err`, nothing of the batch may be
    /// visible; the host retries it. Writes must be idempotent on the key columns.
    fn write(&mut self, batch: &RowBatch) -> Result<Vec<RowRejection>, PluginError>;
}

/// What the export macro generates for a plugin crate. Not public API.
#[doc(hidden)]
pub mod export {
    use std::any::Any;
    use std::cell::RefCell;

    use crate::__bindings_writer::exports::sluice::plugin::writer as wit;
    use crate::__bindings_writer::sluice::plugin::types as wit_types;
    use crate::{PluginError, PluginInfo, RowBatch, RowRejection, Writer};

    /// Implemented by the type `export_writer!` defines in the plugin crate.
    pub trait WriterExport: 'static {
        /// The plugin.
        type Plugin: Writer;
        /// The plugin crate's name, version and description.
        fn info() -> PluginInfo;
    }

    thread_local! {
        /// The one plugin instance (its type is the `WriterExport::Plugin` of the one
        /// export in this component).
        static OPENED: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    wit_schema_conversions!();

    impl<T: WriterExport> wit::Guest for T {
        fn about() -> PluginInfo {
            T::info()
        }

        fn open(config: String, schema: wit_types::Schema) -> Result<(), PluginError> {
            crate::log::install_panic_hook();
            // Drop a previous instance first: its connections close before new ones open.
            OPENED.with_borrow_mut(|slot| *slot = None);
            let writer = T::Plugin::open(&config, &schema_from_wit(schema))?;
            OPENED.with_borrow_mut(|slot| *slot = Some(Box::new(writer)));
            Ok(())
        }

        fn write(batch: RowBatch) -> Result<Vec<RowRejection>, PluginError> {
            OPENED.with_borrow_mut(|slot| {
                match slot.as_mut().and_then(|w| w.downcast_mut::<T::Plugin>()) {
                    Some(writer) => writer.write(&batch),
                    None => Err(PluginError::Fatal(
                        "plugin not opened: the host must call open before write".to_owned(),
                    )),
                }
            })
        }
    }
}

/// Exports a [`Writer`] implementation as the plugin's `writer` world.
///
/// Use it once, in the plugin crate (a `cdylib` built for wasm, with the SDK's
/// `writer` feature). The plugin reports the crate's `name`, `version` and
/// `description` from its `Cargo.toml` as who it is.
///
/// ```ignore
/// struct MyWriter { /* ... */ }
/// impl sluice_plugin_sdk::Writer for MyWriter { /* ... */ }
/// sluice_plugin_sdk::export_writer!(MyWriter);
/// ```
#[macro_export]
macro_rules! export_writer {
    ($plugin:ty) => {
        const _: () = {
            // Not `pub`: the plugin type may be private to its crate.
            struct __SluiceWriterExport;

            impl $crate::__private::WriterExport for __SluiceWriterExport {
                type Plugin = $plugin;

                fn info() -> $crate::PluginInfo {
                    $crate::__plugin_info!()
                }
            }

            // Only wasm exports the world: natively the export names (`sluice:plugin/...#...`)
            // break the linker's version script of a `cdylib`, and no host could call them.
            #[cfg(target_arch = "wasm32")]
            $crate::__bindings_writer::__export_writer_world!(
                __SluiceWriterExport with_types_in $crate::__bindings_writer
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use super::export::WriterExport;
    use crate::__bindings_writer::exports::sluice::plugin::writer::Guest;
    use crate::__bindings_writer::sluice::plugin::types as wit_types;
    use crate::{PluginError, PluginInfo, RowBatch, RowRejection, Schema, Writer};

    struct Rejector {
        schema: Schema,
    }

    impl Writer for Rejector {
        fn open(config: &str, schema: &Schema) -> Result<Self, PluginError> {
            if config == "retry" {
                return Err(PluginError::Retriable("store down".into()));
            }
            Ok(Rejector {
                schema: schema.clone(),
            })
        }

        fn write(&mut self, batch: &RowBatch) -> Result<Vec<RowRejection>, PluginError> {
            Ok((0..batch.count)
                .map(|row| RowRejection {
                    row,
                    reason: self.schema.name.clone(),
                })
                .collect())
        }
    }

    struct Exported;

    impl WriterExport for Exported {
        type Plugin = Rejector;
        fn info() -> PluginInfo {
            PluginInfo {
                name: "rejector".into(),
                version: "0.1.0".into(),
                description: String::new(),
            }
        }
    }

    // The macro accepts a type private to its module (compiles natively; the wasm
    // exports themselves are only generated on wasm32).
    crate::export_writer!(Rejector);

    /// The glue the export macro wires to the component's exports, called directly.
    #[test]
    fn export_glue_opens_then_writes() {
        let batch = || RowBatch {
            count: 2,
            data: vec![0, 0],
        };
        assert_eq!(
            <Exported as Guest>::write(batch()),
            Err(PluginError::Fatal(
                "plugin not opened: the host must call open before write".into()
            ))
        );
        let schema = wit_types::Schema {
            name: "cdr".into(),
            version: 1,
            columns: vec![wit_types::Column {
                name: "id".into(),
                type_: wit_types::ColumnType::Uuid,
                nullable: false,
                key: true,
            }],
        };
        assert_eq!(
            <Exported as Guest>::open("retry".into(), schema.clone()),
            Err(PluginError::Retriable("store down".into()))
        );
        <Exported as Guest>::open("{}".into(), schema).unwrap();
        let rejected = <Exported as Guest>::write(batch()).unwrap();
        assert_eq!(
            rejected,
            [
                RowRejection {
                    row: 0,
                    reason: "cdr".into()
                },
                RowRejection {
                    row: 1,
                    reason: "cdr".into()
                }
            ]
        );
    }
}
