//! Host bindings for each frozen WIT version, one module per version.
//!
//! A released version is never edited: a change to the contract is a new folder
//! under `wit/` and a new module here, and the host keeps loading the old ones.

/// Bindings for `sluice:plugin@0.1.0`.
pub mod v0_1_0 {
    /// The `source-plugin` world. Its `types` and `log` interfaces are shared with
    /// the writer world below.
    pub mod source {
        wasmtime::component::bindgen!({
            path: "../wit/sluice-plugin@0.1.0",
            world: "source-plugin",
            imports: { default: async | trappable },
            exports: { default: async },
            additional_derives: [PartialEq],
        });
    }

    /// The `writer-plugin` world.
    pub mod writer {
        wasmtime::component::bindgen!({
            path: "../wit/sluice-plugin@0.1.0",
            world: "writer-plugin",
            imports: { default: async | trappable },
            exports: { default: async },
            additional_derives: [PartialEq],
            with: {
                "sluice:plugin/types": super::source::sluice::plugin::types,
                "sluice:plugin/log": super::source::sluice::plugin::log,
                "sluice:plugin/postgres.connection": crate::capabilities::postgres::PgConnection,
            },
        });
    }

    pub use source::sluice::plugin::types;
}

/// Bindings for `sluice:plugin@0.2.0`: the source world only, whose messages
/// carry `content-encoding` and whose outcomes can reject single records of a
/// message. Writers still implement the writer world of 0.1.0, which did not
/// change.
pub mod v0_2_0 {
    /// The `source-plugin` world.
    pub mod source {
        wasmtime::component::bindgen!({
            path: "../wit/sluice-plugin@0.2.0",
            world: "source-plugin",
            imports: { default: async | trappable },
            exports: { default: async },
            additional_derives: [PartialEq],
        });
    }

    pub use source::sluice::plugin::types;
}
