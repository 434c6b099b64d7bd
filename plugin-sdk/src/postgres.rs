//! The Postgres capability: connections the host manages and grants by name.
//!
//! A writer reaches only the connections its configuration grants
//! (`grants.postgres`); the host holds the address and the credentials.
//!
//! Outside a host (native tests) there is no connection to reach: [`Connection::open`]
//! returns a [`PgError`] of kind [`PgErrorKind::Other`] whose message starts with
//! `no host:`.
//!
//! ```
//! use sluice_plugin_sdk::postgres::{Connection, PgErrorKind};
//!
//! let err = Connection::open("main").unwrap_err();
//! assert_eq!(err.kind, PgErrorKind::Other);
//! assert!(err.message.starts_with("no host:"));
//! ```

use std::fmt;

use crate::plugin::PluginError;

/// A parameter or result value. Results of other Postgres types must be cast to
/// text in the query (`col::text`).
// Mirrors the WIT variant: the generated bindings use this type directly.
#[derive(Clone, Debug, PartialEq)]
pub enum PgValue {
    /// SQL NULL.
    Null,
    /// `boolean`.
    Boolean(bool),
    /// `smallint`, `integer` or `bigint`.
    Int(i64),
    /// `real` or `double precision`.
    Float(f64),
    /// Any text type (and any type given or read as text).
    Text(String),
    /// `bytea`.
    Bytes(Vec<u8>),
}

/// What kind of failure a [`PgError`] is. The host decides, in one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PgErrorKind {
    /// The connection is not granted to this plugin.
    AccessDenied,
    /// The connection was lost or the server is unavailable or overloaded: retry
    /// later. The transaction, if any, is gone.
    Retriable,
    /// The data was refused (a value out of range, a violated constraint, a unique
    /// key already present). Retrying the same data fails again.
    Data,
    /// Any other error (a syntax error, a missing table, a permission error).
    Other,
}

/// An error from the server or the host.
///
/// ```
/// use sluice_plugin_sdk::PluginError;
/// use sluice_plugin_sdk::postgres::{PgError, PgErrorKind};
///
/// let e = PgError {
///     kind: PgErrorKind::Data,
///     code: Some("22003".into()),
///     message: "integer out of range".into(),
///     detail: None,
///     context: Some("COPY cdr, line 12, column n".into()),
/// };
/// assert_eq!(e.to_string(), "integer out of range (SQLSTATE 22003; COPY cdr, line 12, column n)");
/// assert!(matches!(PluginError::from(e), PluginError::Fatal(m) if m.contains("22003")));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgError {
    /// What kind of failure this is.
    pub kind: PgErrorKind,
    /// The SQLSTATE code, when the server sent one (e.g. `23505`).
    pub code: Option<String>,
    /// The primary message.
    pub message: String,
    /// The server's detail, if any.
    pub detail: Option<String>,
    /// The server's context (`where`), e.g. `COPY cdr, line 12, column x`.
    pub context: Option<String>,
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind == PgErrorKind::AccessDenied {
            f.write_str("access denied: ")?;
        }
        f.write_str(&self.message)?;
        let extras = [
            self.code.as_deref().map(|c| format!("SQLSTATE {c}")),
            self.detail.clone(),
            self.context.clone(),
        ];
        let mut extras = extras.into_iter().flatten().peekable();
        if extras.peek().is_some() {
            f.write_str(" (")?;
            for (i, extra) in extras.enumerate() {
                if i > 0 {
                    f.write_str("; ")?;
                }
                f.write_str(&extra)?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl std::error::Error for PgError {}

impl PgError {
    /// The plugin error this error's kind calls for, with `message`: decided
    /// here, once, for every writer. A retriable error stays retriable; a
    /// connection the writer was not granted is its configuration's fault (as
    /// a denied HTTP request or TCP connect is); anything else is fatal (a
    /// writer isolates the rows the store refuses before it gets here).
    pub fn plugin_error(&self, message: String) -> PluginError {
        match self.kind {
            PgErrorKind::Retriable => PluginError::Retriable(message),
            PgErrorKind::AccessDenied => PluginError::InvalidConfig(message),
            PgErrorKind::Data | PgErrorKind::Other => PluginError::Fatal(message),
        }
    }
}

impl From<PgError> for PluginError {
    /// [`PgError::plugin_error`] with the error's text, which keeps the
    /// SQLSTATE, detail and context.
    fn from(e: PgError) -> Self {
        e.plugin_error(e.to_string())
    }
}

#[cfg(target_arch = "wasm32")]
use crate::__bindings_writer::sluice::plugin::postgres as wit;

#[cfg(target_arch = "wasm32")]
impl From<wit::PgError> for PgError {
    fn from(e: wit::PgError) -> Self {
        PgError {
            kind: match e.kind {
                wit::ErrorKind::AccessDenied => PgErrorKind::AccessDenied,
                wit::ErrorKind::Retriable => PgErrorKind::Retriable,
                wit::ErrorKind::Data => PgErrorKind::Data,
                wit::ErrorKind::Other => PgErrorKind::Other,
            },
            code: e.code,
            message: e.message,
            detail: e.detail,
            context: e.context,
        }
    }
}

/// A connection granted to the plugin. Dropping it closes it; a transaction still
/// open is rolled back.
pub struct Connection {
    #[cfg(target_arch = "wasm32")]
    inner: wit::Connection,
    /// Outside wasm no connection can exist, so its methods are unreachable.
    #[cfg(not(target_arch = "wasm32"))]
    never: std::convert::Infallible,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// Opens the connection granted under `name` (a key of the writer's
    /// `grants.postgres`). Fails with [`PgErrorKind::AccessDenied`] when it is not
    /// granted.
    pub fn open(name: &str) -> Result<Connection, PgError> {
        #[cfg(target_arch = "wasm32")]
        return wit::Connection::open(name)
            .map(|inner| Connection { inner })
            .map_err(PgError::from);
        #[cfg(not(target_arch = "wasm32"))]
        Err(PgError {
            kind: PgErrorKind::Other,
            code: None,
            message: format!(
                "no host: cannot open Postgres connection {name:?} outside a Sluice host"
            ),
            detail: None,
            context: None,
        })
    }

    /// Runs one or more statements without parameters, in the simple query protocol
    /// (`BEGIN`, `COMMIT`, `CREATE TABLE ...; CREATE INDEX ...`).
    pub fn batch_execute(&self, sql: &str) -> Result<(), PgError> {
        #[cfg(target_arch = "wasm32")]
        return self.inner.batch_execute(sql).map_err(PgError::from);
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = sql;
            match self.never {}
        }
    }

    /// Runs one statement with parameters (`$1`, `$2`, ...); returns the number of
    /// rows it affected.
    pub fn execute(&self, statement: &str, params: &[PgValue]) -> Result<u64, PgError> {
        #[cfg(target_arch = "wasm32")]
        return self.inner.execute(statement, params).map_err(PgError::from);
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = (statement, params);
            match self.never {}
        }
    }

    /// Runs one query with parameters; returns its rows.
    pub fn query(&self, statement: &str, params: &[PgValue]) -> Result<Vec<Vec<PgValue>>, PgError> {
        #[cfg(target_arch = "wasm32")]
        return self.inner.query(statement, params).map_err(PgError::from);
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = (statement, params);
            match self.never {}
        }
    }

    /// Runs a `COPY ... FROM STDIN` statement and sends it `data` (for
    /// `WITH (FORMAT binary)`, the complete binary COPY stream, header and trailer
    /// included). Returns the number of rows copied.
    pub fn copy_in(&self, statement: &str, data: &[u8]) -> Result<u64, PgError> {
        #[cfg(target_arch = "wasm32")]
        return self.inner.copy_in(statement, data).map_err(PgError::from);
        #[cfg(not(target_arch = "wasm32"))]
        {
            let _ = (statement, data);
            match self.never {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: PgErrorKind) -> PgError {
        PgError {
            kind,
            code: None,
            message: "m".into(),
            detail: None,
            context: None,
        }
    }

    #[test]
    fn each_kind_has_one_plugin_error() {
        let kinds = |kind| match PluginError::from(error(kind)) {
            PluginError::Retriable(_) => "retriable",
            PluginError::InvalidConfig(_) => "invalid-config",
            PluginError::Fatal(_) => "fatal",
        };
        assert_eq!(kinds(PgErrorKind::Retriable), "retriable");
        assert_eq!(kinds(PgErrorKind::AccessDenied), "invalid-config");
        assert_eq!(kinds(PgErrorKind::Data), "fatal");
        assert_eq!(kinds(PgErrorKind::Other), "fatal");
        assert_eq!(
            error(PgErrorKind::AccessDenied).plugin_error("opening: x".into()),
            PluginError::InvalidConfig("opening: x".into())
        );
    }
}
