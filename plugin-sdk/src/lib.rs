//! Write [Sluice] plugins in Rust.
//!
//! Sluice pipes queue messages through a *source* plugin, which decodes each
//! message into rows of a declared [`Schema`], into *writer* plugins, which land
//! the rows in a store. Plugins are WebAssembly components implementing the
//! `sluice:plugin` WIT worlds (sources: `source-plugin@0.2.0`, whose messages
//! can hold many records, each rejected on its own; writers:
//! `writer-plugin@0.1.0`); this crate hides the bindings behind two traits and
//! two macros:
//!
//! - a source implements [`Source`] and calls [`export_source!`] (feature `source`);
//! - a writer implements [`Writer`] and calls [`export_writer!`] (feature `writer`),
//!   reaching stores through the capabilities the host grants ([`postgres`]).
//!
//! Rows cross the boundary in one buffer per batch, in the encoding of the
//! [`rows`] module ([`rows::RowWriter`] to write, [`rows::RowReader`] to read).
//! [`config`] reads a plugin's configuration into its own `Deserialize` struct,
//! reporting every problem at once with its key path. [`log`] writes into the
//! host's log, and [`testing`] runs a plugin natively in `cargo test`.
//!
//! A plugin crate is a `cdylib` that depends on this crate with exactly one of the
//! features `source` or `writer`, built with `panic = "abort"` by
//! `sluice plugin build`: for `wasm32-wasip2` when that target is installed
//! (cargo emits a component), else for `wasm32-wasip1` or
//! `wasm32-unknown-unknown` (core modules, then made a component). A panic traps
//! the instance; the SDK first sends its message to the host's log (`panic: ...`).
//!
//! [Sluice]: https://example.invalid/sluice
#![deny(missing_docs)]
// The crate docs link to items of both features; docs are built with both.
#![cfg_attr(
    not(all(feature = "source", feature = "writer")),
    allow(rustdoc::broken_intra_doc_links)
)]

#[cfg(all(target_arch = "wasm32", feature = "source", feature = "writer"))]
compile_error!(
    "sluice-plugin-sdk: enable exactly one of the features `source` and `writer` for a wasm32 \
     plugin. A component implements one world, and with both features the bindings of both \
     worlds would be embedded into it. If cargo unified the features of several plugins of a \
     workspace, build each plugin on its own (`cargo build -p <plugin>`)."
);

/// Defines `schema_to_wit` and `schema_from_wit` for the bindings module imported
/// as `wit_types` where it is invoked (each world has its own generated types).
#[cfg(any(feature = "source", feature = "writer"))]
macro_rules! wit_schema_conversions {
    () => {
        #[allow(dead_code)]
        fn schema_to_wit(schema: &crate::Schema) -> wit_types::Schema {
            use crate::ColumnType as C;
            use wit_types::ColumnType as W;
            let ty = |t: C| match t {
                C::Boolean => W::Boolean,
                C::Int32 => W::Int32,
                C::Int64 => W::Int64,
                C::Float64 => W::Float64,
                C::Numeric => W::Numeric,
                C::Text => W::Text,
                C::Bytes => W::Bytes,
                C::Timestamp => W::Timestamp,
                C::Date => W::Date,
                C::Uuid => W::Uuid,
                C::Json => W::Json,
            };
            wit_types::Schema {
                name: schema.name.clone(),
                version: schema.version,
                columns: schema
                    .columns
                    .iter()
                    .map(|c| wit_types::Column {
                        name: c.name.clone(),
                        type_: ty(c.ty),
                        nullable: c.nullable,
                        key: c.key,
                    })
                    .collect(),
            }
        }

        #[allow(dead_code)]
        fn schema_from_wit(schema: wit_types::Schema) -> crate::Schema {
            use crate::ColumnType as C;
            use wit_types::ColumnType as W;
            let ty = |t: W| match t {
                W::Boolean => C::Boolean,
                W::Int32 => C::Int32,
                W::Int64 => C::Int64,
                W::Float64 => C::Float64,
                W::Numeric => C::Numeric,
                W::Text => C::Text,
                W::Bytes => C::Bytes,
                W::Timestamp => C::Timestamp,
                W::Date => C::Date,
                W::Uuid => C::Uuid,
                W::Json => C::Json,
            };
            crate::Schema {
                name: schema.name,
                version: schema.version,
                columns: schema
                    .columns
                    .into_iter()
                    .map(|c| crate::Column {
                        name: c.name,
                        ty: ty(c.type_),
                        nullable: c.nullable,
                        key: c.key,
                    })
                    .collect(),
            }
        }
    };
}

pub mod config;
#[cfg(feature = "http")]
pub mod http;
pub mod log;
mod message;
mod plugin;
#[cfg(feature = "writer")]
pub mod postgres;
pub mod rows;
mod schema;
#[cfg(feature = "source")]
mod source;
#[cfg(feature = "tcp")]
pub mod tcp;
pub mod testing;
pub mod time;
#[cfg(feature = "writer")]
mod writer;

pub use message::{HeaderValue, Message};
pub use plugin::{PluginError, PluginInfo};
pub use rows::{OwnedValue, RowBatch, RowWriter, Value};
pub use schema::{Column, ColumnType, Schema, UnknownColumnType};
#[cfg(feature = "source")]
pub use source::{MessageOutcome, PartialOutcome, RecordRejection, Records, Source};
#[cfg(feature = "writer")]
pub use writer::{RowRejection, Writer};

/// The plugin crate's own name, version and description, from its Cargo.toml
/// (`env!` is expanded in the crate that invokes the export macro). Not public API.
#[doc(hidden)]
#[macro_export]
macro_rules! __plugin_info {
    () => {
        $crate::PluginInfo {
            name: ::std::string::String::from(::core::env!("CARGO_PKG_NAME")),
            version: ::std::string::String::from(::core::env!("CARGO_PKG_VERSION")),
            description: ::std::string::String::from(::core::env!("CARGO_PKG_DESCRIPTION")),
        }
    };
}

/// What the export macros expand to. Not public API.
#[doc(hidden)]
pub mod __private {
    #[cfg(feature = "source")]
    pub use crate::source::export::SourceExport;
    #[cfg(feature = "writer")]
    pub use crate::writer::export::WriterExport;
    pub use wit_bindgen;
}

// The generated types that have an SDK twin of the same shape (records and variants
// with the same fields and cases) are mapped onto it with `with`, so the bindings
// lift messages and lower row batches straight into and out of the SDK's types:
// no copy per message. Enums (column-type, error-kind) are not mapped, since the
// bindings call generated helpers on them; they are converted where used.

/// Bindings of the `source-plugin` world. Not public API.
#[cfg(feature = "source")]
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod __bindings_source {
    wit_bindgen::generate!({
        world: "sluice:plugin/source-plugin@0.2.0",
        path: "wit/sluice-plugin@0.2.0",
        with: {
            "sluice:plugin/types@0.2.0/plugin-info": crate::PluginInfo,
            "sluice:plugin/types@0.2.0/header-value": crate::HeaderValue,
            "sluice:plugin/types@0.2.0/message": crate::Message,
            "sluice:plugin/types@0.2.0/row-batch": crate::RowBatch,
            "sluice:plugin/types@0.2.0/plugin-error": crate::PluginError,
            "sluice:plugin/source@0.2.0/message-outcome": crate::MessageOutcome,
            "sluice:plugin/source@0.2.0/partial-outcome": crate::PartialOutcome,
            "sluice:plugin/source@0.2.0/record-rejection": crate::RecordRejection,
        },
        pub_export_macro: true,
        export_macro_name: "__export_source_world",
        default_bindings_module: "$crate::__bindings_source",
    });
}

/// Bindings of the `writer-plugin` world. Not public API.
#[cfg(feature = "writer")]
#[doc(hidden)]
#[allow(missing_docs, clippy::all)]
pub mod __bindings_writer {
    wit_bindgen::generate!({
        world: "sluice:plugin/writer-plugin@0.1.0",
        path: "wit/sluice-plugin@0.1.0",
        with: {
            "sluice:plugin/types@0.1.0/plugin-info": crate::PluginInfo,
            "sluice:plugin/types@0.1.0/row-batch": crate::RowBatch,
            "sluice:plugin/types@0.1.0/plugin-error": crate::PluginError,
            "sluice:plugin/writer@0.1.0/row-rejection": crate::RowRejection,
            "sluice:plugin/postgres@0.1.0/pg-value": crate::postgres::PgValue,
        },
        pub_export_macro: true,
        export_macro_name: "__export_writer_world",
        default_bindings_module: "$crate::__bindings_writer",
    });
}
