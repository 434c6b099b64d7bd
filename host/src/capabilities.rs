//! What a plugin instance may reach, and the host side of each capability.
//!
//! Everything is denied by default: a plugin reaches a Postgres connection only
//! when its configuration grants it by name, and it gets no filesystem, network,
//! environment or clock through WASI (see [`wasi`]). Each capability has its own
//! module with its WIT host implementation and its tests.

pub mod log;
pub mod postgres;
pub mod wasi;

use std::collections::BTreeMap;

/// The capabilities granted to one plugin instance (a writer in a pipeline).
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// Postgres connections the plugin may open, by the name it asks for.
    pub postgres: BTreeMap<String, postgres::PostgresGrant>,
}

impl Grants {
    /// No capability at all: what source plugins get.
    pub fn none() -> Self {
        Self::default()
    }

    /// Grants a Postgres connection under `name`.
    pub fn with_postgres(
        mut self,
        name: impl Into<String>,
        grant: postgres::PostgresGrant,
    ) -> Self {
        self.postgres.insert(name.into(), grant);
        self
    }
}
