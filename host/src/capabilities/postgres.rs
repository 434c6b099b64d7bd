//! The `postgres` import: host-managed connections that configuration grants to a
//! writer by name.
//!
//! The plugin never sees an address or a password: it asks for a grant name, and
//! the host connects with the grant's settings. Whether an error is worth retrying
//! is decided here, in one place ([`classify`]), so that every writer agrees.
//!
//! Every call is bounded by `store_call_timeout` ([`PluginState::store_call_timeout`]):
//! a store that does not answer (a lock held forever, a half-open connection) is
//! a store outage, answered with a `retriable` error that says it timed out,
//! never a call that hangs. The connection is then closed and its statement
//! cancelled on the server. Time in these calls is the host's: it counts
//! neither against the plugin's CPU time (`CallClock`) nor against its
//! wall-clock deadline (`CallDeadline`).
//!
//! Connections use TLS as the connection string's `sslmode` says, with libpq's
//! meaning ([`tls`]).

pub mod tls;

mod privileges;

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::SinkExt;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, Row, Statement};
use wasmtime::component::Resource;

use super::dry_run::{NOT_REACHED, Withheld};
use crate::plugin_runtime::bindings::v0_1_0::writer::sluice::plugin::postgres::{
    ErrorKind, Host, HostConnection, PgError, PgValue,
};
use crate::plugin_runtime::state::{PluginLabel, PluginState};
use tls::{PgTls, TlsConfigError, TlsHandshakeError};

/// How many connections one plugin instance may hold open at once.
const MAX_CONNECTIONS_PER_INSTANCE: usize = 4;
/// How many prepared statements a connection keeps.
const STATEMENT_CACHE: usize = 64;
/// How long cancelling the statement of a timed-out call may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// A Postgres connection a plugin may open, as configuration grants it.
///
/// Equal grants connect the same way: the same settings (password included)
/// and the same TLS files' contents.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresGrant {
    config: tokio_postgres::Config,
    tls: PgTls,
}

/// Why a connection string is not a grant.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    /// tokio-postgres refused the string (the cause names the option).
    #[error(transparent)]
    Invalid(#[from] tokio_postgres::Error),
    /// The TLS options, or the files they name.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
}

impl PostgresGrant {
    /// A grant from a connection string (`postgres://user@host:5432/db` or the
    /// `host=... dbname=...` form), with libpq's TLS options (`sslmode`,
    /// `sslrootcert`, `sslcert`, `sslkey`): the files they name are read now.
    pub fn from_url(url: &str) -> Result<Self, GrantError> {
        let (rest, options) = tls::split_options(url)?;
        let tls = PgTls::new(&options)?;
        let mut config: tokio_postgres::Config = rest.parse()?;
        config.ssl_mode(tls.wire_mode());
        if config.get_application_name().is_none() {
            config.application_name("sluice");
        }
        // A host that does not answer must not hang a writer (and the watchdog
        // with it) for the TCP timeout's minutes.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        Ok(Self { config, tls })
    }

    /// Sets the password (it comes from the environment, not the config file).
    pub fn with_password(mut self, password: &str) -> Self {
        self.config.password(password);
        self
    }

    /// The connection settings.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS mode, as libpq means it.
    pub fn ssl_mode(&self) -> tls::SslMode {
        self.tls.mode()
    }

    /// Connects (TLS as the grant says) and drives the connection on a task of
    /// its own, which ends when the client is dropped. `who` names the
    /// connection in the log (the plugin and the grant).
    pub async fn connect(
        &self,
        who: &str,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        let (client, connection) = self.config.connect(self.tls.clone()).await?;
        let who = who.to_string();
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(connection = who, error = %e, "postgres connection ended");
            }
        });
        Ok((client, task))
    }
}

impl fmt::Debug for PostgresGrant {
    // Never print the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresGrant")
            .field("hosts", &self.config.get_hosts())
            .field("ports", &self.config.get_ports())
            .field("user", &self.config.get_user())
            .field("dbname", &self.config.get_dbname())
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// A connection held by a plugin instance (the `connection` resource).
pub struct PgConnection {
    grant: String,
    client: Client,
    /// For the cancel request, which is a connection of its own (with TLS if
    /// the grant asks for it).
    tls: PgTls,
    statements: HashMap<String, Statement>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PgConnection {
    fn drop(&mut self) {
        // Dropping the client ends the connection task, which rolls back any open
        // transaction on the server; abort covers a task stuck on a dead socket.
        self.task.abort();
    }
}

impl PgConnection {
    /// Gives the connection up after one of its calls timed out: cancels the
    /// statement on the server (a lock it holds is released, a `pg_sleep` ends)
    /// and closes the connection, so that its later calls fail as retriable
    /// (the transaction, if any, is gone) rather than queue behind it. Returns
    /// the plugin's error.
    fn abandon(&mut self, label: &PluginLabel, call: &str, limit: Duration) -> PgError {
        let cancel = self.client.cancel_token();
        let tls = self.tls.clone();
        tokio::spawn(async move {
            // Best effort: the server may be the thing that hangs.
            let _ = tokio::time::timeout(CANCEL_TIMEOUT, cancel.cancel_query(tls)).await;
        });
        self.task.abort();
        tracing::warn!(
            plugin = &*label.plugin,
            pipeline = &*label.pipeline,
            connection = self.grant,
            call,
            limit = ?limit,
            "postgres call timed out (store_call_timeout); connection closed, statement cancelled"
        );
        host_error(
            ErrorKind::Retriable,
            format!(
                "postgres `{call}` on connection `{}` timed out after {limit:?} (store_call_timeout); the connection was closed and the statement cancelled: retry later",
                self.grant
            ),
        )
    }

    /// Waits until the server has finished the last extended-protocol request.
    ///
    /// tokio-postgres returns from `execute` and from a COPY's `finish` on
    /// CommandComplete, but outside a transaction block the server commits at the
    /// Sync that follows, and a backend terminated in between rolls the statement
    /// back after the client saw it succeed. A simple query behind it answers only
    /// once that Sync was processed, so success here means committed; a failure
    /// here is retriable, and the writer's idempotence absorbs the retry if the
    /// commit did happen.
    async fn settle(&self) -> Result<(), tokio_postgres::Error> {
        self.client.batch_execute("").await
    }

    async fn statement(&mut self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        if self.statements.len() >= STATEMENT_CACHE {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }
}

/// Classifies a client error for the plugin: retriable (connection lost, server
/// shutting down or overloaded, serialization failure), data (the rows were
/// refused), or other (a TLS handshake that refused the certificate or was
/// refused: retrying the same connection cannot fix it).
pub fn classify(error: &tokio_postgres::Error) -> PgError {
    if tls_refused(error) {
        return host_error(ErrorKind::Other, error_chain(error));
    }
    let Some(db) = error.as_db_error() else {
        // No server error: the connection broke, timed out or was closed.
        return PgError {
            kind: ErrorKind::Retriable,
            code: None,
            message: error_chain(error),
            detail: None,
            context: None,
        };
    };
    let code = db.code().code();
    PgError {
        kind: kind_of_sqlstate(code),
        code: Some(code.to_string()),
        message: db.message().to_string(),
        detail: db.detail().map(str::to_string),
        context: db.where_().map(str::to_string),
    }
}

/// Whether `error` is a TLS handshake that no retry can fix: a certificate
/// refused either way, or a server without TLS when the grant requires it.
fn tls_refused(error: &tokio_postgres::Error) -> bool {
    let mut source = error.source();
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<TlsHandshakeError>() {
            return tls.is_permanent();
        }
        // tokio-postgres's own words when the server answers that it has no TLS.
        if e.to_string() == "server does not support TLS" {
            return true;
        }
        source = e.source();
    }
    false
}

fn kind_of_sqlstate(code: &str) -> ErrorKind {
    match code {
        // Admin shutdown, crash shutdown, cannot connect now, serialization
        // failure, deadlock: the same statement can succeed later.
        "57P01" | "57P02" | "57P03" | "40001" | "40P01" => ErrorKind::Retriable,
        // Query canceled (statement timeout, or pg_cancel_backend): try again.
        "57014" => ErrorKind::Retriable,
        // Connection exceptions; insufficient resources (disk full, too many
        // connections); operator intervention.
        c if c.starts_with("08") || c.starts_with("53") => ErrorKind::Retriable,
        // Data exceptions and integrity constraint violations: the data is refused.
        c if c.starts_with("22") || c.starts_with("23") => ErrorKind::Data,
        // Program limit exceeded: a value too large for an index (`index row
        // size … exceeds btree version 4 maximum`, a key of a few KB) or a row
        // too large. The rest of class 54 is about statements, not data.
        "54000" => ErrorKind::Data,
        _ => ErrorKind::Other,
    }
}

fn error_chain(error: &(dyn StdError + 'static)) -> String {
    crate::telemetry::error_chain(error)
}

fn host_error(kind: ErrorKind, message: String) -> PgError {
    PgError {
        kind,
        code: None,
        message,
        detail: None,
        context: None,
    }
}

/// A parameter as the plugin sent it, converted to whatever type the statement
/// expects (integers to any integer width, with a range check).
#[derive(Debug)]
struct Param<'a>(&'a PgValue);

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self.0 {
            PgValue::Null => Ok(IsNull::Yes),
            PgValue::Boolean(v) => v.to_sql(ty, out),
            PgValue::Int(v) => match ty {
                t if *t == Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                t if *t == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                t if *t == Type::OID => u32::try_from(*v)?.to_sql(ty, out),
                t if *t == Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            PgValue::Float(v) => match ty {
                t if *t == Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            PgValue::Text(v) => v.as_str().to_sql(ty, out),
            PgValue::Bytes(v) => v.as_slice().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        // Checked value by value in `to_sql`, which names the mismatch.
        true
    }

    to_sql_checked!();
}

fn param_refs<'a>(params: &'a [Param<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

fn row_values(row: &Row) -> Result<Vec<PgValue>, PgError> {
    fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
        row: &'a Row,
        i: usize,
    ) -> Result<Option<T>, PgError> {
        row.try_get(i)
            .map_err(|e| host_error(ErrorKind::Other, error_chain(&e)))
    }
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::BOOL {
            get::<bool>(row, i)?.map(PgValue::Boolean)
        } else if *ty == Type::INT2 {
            get::<i16>(row, i)?.map(|v| PgValue::Int(v.into()))
        } else if *ty == Type::INT4 {
            get::<i32>(row, i)?.map(|v| PgValue::Int(v.into()))
        } else if *ty == Type::INT8 {
            get::<i64>(row, i)?.map(PgValue::Int)
        } else if *ty == Type::OID {
            get::<u32>(row, i)?.map(|v| PgValue::Int(v.into()))
        } else if *ty == Type::FLOAT4 {
            get::<f32>(row, i)?.map(|v| PgValue::Float(v.into()))
        } else if *ty == Type::FLOAT8 {
            get::<f64>(row, i)?.map(PgValue::Float)
        } else if *ty == Type::BYTEA {
            get::<Vec<u8>>(row, i)?.map(PgValue::Bytes)
        } else if <&str as tokio_postgres::types::FromSql>::accepts(ty) {
            get::<String>(row, i)?.map(PgValue::Text)
        } else {
            return Err(host_error(
                ErrorKind::Other,
                format!(
                    "result column `{}` has type {ty}, which the postgres capability does not return; cast it to text (`{}::text`)",
                    column.name(),
                    column.name()
                ),
            ));
        };
        values.push(value.unwrap_or(PgValue::Null));
    }
    Ok(values)
}

impl PluginState {
    fn connection(&mut self, r: &Resource<PgConnection>) -> wasmtime::Result<&mut PgConnection> {
        Ok(self.table.get_mut(r)?)
    }

    /// Runs `call` (named `name` in errors) on connection `this` as one store
    /// call: bounded by `store_call_timeout`, its time the host's (taken out of
    /// the plugin's CPU time and of its wall-clock deadline). A call that times
    /// out abandons the connection ([`PgConnection::abandon`]).
    async fn store_call<T>(
        &mut self,
        this: &Resource<PgConnection>,
        name: &'static str,
        call: impl AsyncFnOnce(&mut PgConnection) -> Result<T, PgError>,
    ) -> wasmtime::Result<Result<T, PgError>> {
        let started = Instant::now();
        let limit = self.store_call_timeout;
        let deadline = self.deadline.clone();
        let in_store = deadline.store_call();
        let label = self.label.clone();
        let conn = self.connection(this)?;
        let result = match tokio::time::timeout(limit, call(&mut *conn)).await {
            Ok(result) => result,
            Err(_) => Err(conn.abandon(&label, name, limit)),
        };
        drop(in_store);
        self.clock.add_host_time(started);
        Ok(result)
    }
}

/// `future`, a store call outside any connection (connecting), bounded by
/// `limit`.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    future: impl Future<Output = Result<T, PgError>>,
) -> Result<T, PgError> {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| {
            Err(host_error(
                ErrorKind::Retriable,
                format!(
                    "postgres {what} timed out after {limit:?} (store_call_timeout): retry later"
                ),
            ))
        })
}

impl Host for PluginState {}

impl HostConnection for PluginState {
    async fn open(
        &mut self,
        name: String,
    ) -> wasmtime::Result<Result<Resource<PgConnection>, PgError>> {
        let started = Instant::now();
        let Some(grant) = self.grants.postgres.get(&name).cloned() else {
            let granted: Vec<&str> = self.grants.postgres.keys().map(String::as_str).collect();
            tracing::warn!(
                plugin = &*self.label.plugin,
                pipeline = &*self.label.pipeline,
                connection = name,
                "plugin asked for a postgres connection it was not granted"
            );
            return Ok(Err(host_error(
                ErrorKind::AccessDenied,
                format!(
                    "postgres connection `{name}` is not granted to this plugin (granted: {})",
                    if granted.is_empty() {
                        "none".to_string()
                    } else {
                        granted.join(", ")
                    }
                ),
            )));
        };
        if self.pg_open >= MAX_CONNECTIONS_PER_INSTANCE {
            return Ok(Err(host_error(
                ErrorKind::Other,
                format!(
                    "a plugin instance may hold at most {MAX_CONNECTIONS_PER_INSTANCE} postgres connections"
                ),
            )));
        }
        if let Some(run) = &self.grants.dry_run {
            // `sluice check`: the grant was checked; the store is not reached.
            run.withhold(Withheld::Postgres(name.clone()));
            return Ok(Err(host_error(
                ErrorKind::Retriable,
                format!("{NOT_REACHED}: postgres connection `{name}` is not opened"),
            )));
        }
        let result = {
            let _in_store = self.deadline.store_call();
            let who = format!("{}/{name}", self.label.plugin);
            let connect = async { grant.connect(&who).await.map_err(|e| classify(&e)) };
            bounded(
                self.store_call_timeout,
                &format!("connection `{name}`: connecting"),
                connect,
            )
            .await
        };
        self.clock.add_host_time(started);
        let (client, task) = match result {
            Ok(pair) => pair,
            Err(e) => return Ok(Err(e)),
        };
        let checking = Instant::now();
        {
            let _in_store = self.deadline.store_call();
            privileges::warn_if_privileged(&client, &name, &self.label).await;
        }
        self.clock.add_host_time(checking);
        self.pg_open += 1;
        let conn = PgConnection {
            grant: name,
            client,
            tls: grant.tls.clone(),
            statements: HashMap::new(),
            task,
        };
        Ok(Ok(self.table.push(conn)?))
    }

    async fn batch_execute(
        &mut self,
        this: Resource<PgConnection>,
        sql: String,
    ) -> wasmtime::Result<Result<(), PgError>> {
        self.store_call(&this, "batch-execute", async |conn| {
            conn.client
                .batch_execute(&sql)
                .await
                .map_err(|e| classify(&e))
        })
        .await
    }

    async fn execute(
        &mut self,
        this: Resource<PgConnection>,
        statement: String,
        params: Vec<PgValue>,
    ) -> wasmtime::Result<Result<u64, PgError>> {
        self.store_call(&this, "execute", async |conn| {
            let stmt = conn.statement(&statement).await.map_err(|e| classify(&e))?;
            let params: Vec<Param> = params.iter().map(Param).collect();
            let refs = param_refs(&params);
            let n = conn
                .client
                .execute(&stmt, &refs)
                .await
                .map_err(|e| classify(&e))?;
            conn.settle().await.map_err(|e| classify(&e))?;
            Ok(n)
        })
        .await
    }

    async fn query(
        &mut self,
        this: Resource<PgConnection>,
        statement: String,
        params: Vec<PgValue>,
    ) -> wasmtime::Result<Result<Vec<Vec<PgValue>>, PgError>> {
        self.store_call(&this, "query", async |conn| {
            let stmt = conn.statement(&statement).await.map_err(|e| classify(&e))?;
            let params: Vec<Param> = params.iter().map(Param).collect();
            let refs = param_refs(&params);
            let rows = conn
                .client
                .query(&stmt, &refs)
                .await
                .map_err(|e| classify(&e))?;
            rows.iter().map(row_values).collect::<Result<Vec<_>, _>>()
        })
        .await
    }

    async fn copy_in(
        &mut self,
        this: Resource<PgConnection>,
        statement: String,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<u64, PgError>> {
        self.store_call(&this, "copy-in", async |conn| {
            let stmt = conn.statement(&statement).await.map_err(|e| classify(&e))?;
            let sink = conn
                .client
                .copy_in::<_, Bytes>(&stmt)
                .await
                .map_err(|e| classify(&e))?;
            futures::pin_mut!(sink);
            sink.send(Bytes::from(data))
                .await
                .map_err(|e| classify(&e))?;
            let n = sink.finish().await.map_err(|e| classify(&e))?;
            conn.settle().await.map_err(|e| classify(&e))?;
            Ok(n)
        })
        .await
    }

    async fn drop(&mut self, this: Resource<PgConnection>) -> wasmtime::Result<()> {
        let conn = self.table.delete(this)?;
        tracing::trace!(
            plugin = &*self.label.plugin,
            connection = conn.grant,
            "plugin closed a postgres connection"
        );
        self.pg_open = self.pg_open.saturating_sub(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_once_for_every_writer() {
        assert_eq!(kind_of_sqlstate("57P01"), ErrorKind::Retriable); // pg_terminate_backend
        assert_eq!(kind_of_sqlstate("08006"), ErrorKind::Retriable);
        assert_eq!(kind_of_sqlstate("53300"), ErrorKind::Retriable); // too many connections
        assert_eq!(kind_of_sqlstate("40001"), ErrorKind::Retriable);
        assert_eq!(kind_of_sqlstate("23505"), ErrorKind::Data); // unique violation
        assert_eq!(kind_of_sqlstate("22003"), ErrorKind::Data); // numeric out of range
        assert_eq!(kind_of_sqlstate("54000"), ErrorKind::Data); // index row too large
        assert_eq!(kind_of_sqlstate("54001"), ErrorKind::Other); // statement too complex
        assert_eq!(kind_of_sqlstate("42P01"), ErrorKind::Other); // undefined table
        assert_eq!(kind_of_sqlstate("42501"), ErrorKind::Other); // permission denied
    }

    #[test]
    fn grant_debug_never_shows_the_password() {
        let grant = PostgresGrant::from_url("postgres://sluice:s3cret@127.0.0.1/test").unwrap();
        let shown = format!("{grant:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("sluice"));
    }
}
