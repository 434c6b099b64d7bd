//! Sluice's Postgres writer: lands each batch in a table created from the source
//! schema, fast and idempotent on the schema's key columns.
//!
//! - `config`: what the writer's configuration may say.
//! - `table`: creating and evolving the table (`open`).
//! - `copy_stream` and `numeric`: the batch as one binary `COPY` stream.
//! - `landing`: the fast path, the idempotent slow path, and rejecting the rows
//!   Postgres refuses (`write`).
//! - `partition`: time-partitioned tables (the `partition` configuration).
//! - `refusal`: reading the server's errors; `sql`: every statement.

mod config;
mod copy_stream;
mod landing;
mod numeric;
mod partition;
mod refusal;
mod sql;
mod table;

use crate::config::Config;
use crate::copy_stream::CopyStream;
use crate::landing::{Lander, Path, Session};
use crate::partition::{Outside, Partitioner};
use crate::sql::{Statements, TableName};
use sluice_plugin_sdk::postgres::{Connection, PgError, PgErrorKind};
use sluice_plugin_sdk::rows::RowBatch;
use sluice_plugin_sdk::{Column, ColumnType, PluginError, RowRejection, Schema, Writer};

/// The writer: one per plugin instance, holding its connection and the buffers it
/// reuses from batch to batch.
pub struct PostgresWriter {
    /// The grant the connection is opened through.
    grant: String,
    /// `None` after a failure that may have broken the connection (a lost
    /// connection leaves a dead one behind): the next write opens a new one.
    connection: Option<Connection>,
    table: TableName,
    columns: Vec<Column>,
    types: Vec<ColumnType>,
    stream: CopyStream,
    lander: Lander,
    /// The partitions, for a partitioned table.
    partitioner: Option<Partitioner>,
}

impl Writer for PostgresWriter {
    fn open(config: &str, schema: &Schema) -> Result<Self, PluginError> {
        let config = Config::parse(config, &schema.name)?;
        let mut problems = table::schema_problems(schema);
        if let Some(problem) = config
            .partition
            .as_ref()
            .and_then(|p| p.column_problem(schema))
        {
            problems.push(problem);
        }
        if !problems.is_empty() {
            return Err(PluginError::InvalidConfig(format!(
                "schema {} version {} cannot be written to postgres: {}",
                schema.name,
                schema.version,
                problems.join("; ")
            )));
        }
        let partition_column = config.partition.as_ref().map(|p| p.column.as_str());
        let keys = sql::table_keys(schema, partition_column);
        let statements = Statements::new(&config.table, schema, &keys);
        let point_column =
            partition_column.and_then(|name| schema.columns.iter().position(|c| c.name == name));
        let partitioner = config.partition.clone().map(|p| {
            let date_column =
                point_column.is_some_and(|i| schema.columns[i].ty == ColumnType::Date);
            Partitioner::new(p, config.table.clone(), date_column)
        });
        let mut writer = PostgresWriter {
            grant: config.connection,
            connection: None,
            table: config.table,
            columns: schema.columns.clone(),
            types: schema.columns.iter().map(|c| c.ty).collect(),
            stream: point_column.map_or_else(CopyStream::new, CopyStream::with_points),
            lander: Lander::new(statements),
            partitioner,
        };
        writer.connect()?;
        let connection = writer.connection.as_ref().expect("just connected");
        for warning in table::prepare(
            connection,
            &writer.table,
            schema,
            &keys,
            config.partition.as_ref(),
        )? {
            sluice_plugin_sdk::warn!("{warning}");
        }
        if let Some(partitioner) = &mut writer.partitioner {
            let now = Partitioner::now(connection)
                .map_err(|e| plugin_error("reading the database's clock", e))?;
            partitioner
                .premake(connection, now)
                .map_err(|failed| plugin_error(&failed.0, failed.1))?;
        }
        Ok(writer)
    }

    fn write(&mut self, batch: &RowBatch) -> Result<Vec<RowRejection>, PluginError> {
        let mut rejections = Vec::new();
        self.stream
            .encode(&self.columns, &self.types, batch, &mut rejections)
            .map_err(|e| PluginError::Fatal(format!("the row batch is malformed: {e}")))?;
        if self.connection.is_none() {
            self.connect()?;
        }
        if let Some(partitioner) = &mut self.partitioner {
            let connection = self.connection.as_ref().expect("connected above");
            if let Err(error) = route(partitioner, connection, &mut self.stream, &mut rejections) {
                if error.kind == PgErrorKind::Retriable {
                    self.connection = None;
                }
                return Err(error.error);
            }
        }
        let connection = self.connection.as_mut().expect("connected above");
        let path = match self
            .lander
            .land(connection, &mut self.stream, &mut rejections)
        {
            Ok(path) => path,
            Err(e) => {
                if e.kind == PgErrorKind::Retriable {
                    // Dropping it closes it; the host's retry gets a new one.
                    self.connection = None;
                }
                return Err(plugin_error(&format!("writing to {}", self.table), e));
            }
        };
        rejections.sort_by_key(|r| r.row);
        match path {
            Path::Empty | Path::Fast => {}
            // Normal after a redelivery; worth seeing when it happens all the time.
            Path::Slow { pieces } => sluice_plugin_sdk::debug!(
                "{} rows went through the staging table of {} in {pieces} piece(s)",
                self.stream.len(),
                self.table
            ),
        }
        Ok(rejections)
    }
}

impl PostgresWriter {
    /// Opens a connection through the grant, replacing any other.
    fn connect(&mut self) -> Result<(), PluginError> {
        self.connection = None;
        let connection = Connection::open(&self.grant).map_err(|e| {
            plugin_error(&format!("opening postgres connection `{}`", self.grant), e)
        })?;
        // A staging table this connection kept from an earlier writer (were the
        // host to pool connections) may have the columns of an older schema
        // version; a new connection may have none.
        connection
            .batch_execute(&self.lander.statements().drop_stage)
            .map_err(|e| plugin_error("dropping an old staging table", e))?;
        self.lander.forget_stage();
        self.connection = Some(connection);
        Ok(())
    }
}

/// Before a batch lands in a partitioned table: retires old partitions when it
/// is time, sends the rows outside the accepted times where configured, and
/// creates the partitions the batch needs.
fn route(
    partitioner: &mut Partitioner,
    connection: &Connection,
    stream: &mut CopyStream,
    rejections: &mut Vec<RowRejection>,
) -> Result<(), RoutingError> {
    let now = Partitioner::now(connection)
        .map_err(|e| RoutingError::new("reading the database's clock", e))?;
    // Retention is housekeeping: when it fails, the batch still lands.
    match partitioner.retire(connection, now) {
        Ok(lines) => {
            for line in lines {
                sluice_plugin_sdk::info!("{line}");
            }
        }
        Err(e) => sluice_plugin_sdk::warn!(
            "retiring old partitions failed, trying again in one interval: {}",
            refusal::describe(&e)
        ),
    }
    let config = &partitioner.config;
    let mut starts = std::collections::BTreeSet::new();
    let mut outside = Vec::new();
    for tuple in 0..stream.len() as u32 {
        let point = stream.point(tuple);
        if config.accepts(point, now) {
            starts.insert(config.range_start(point));
        } else {
            outside.push(tuple);
        }
    }
    if !outside.is_empty() && config.outside == Outside::Reject {
        for &tuple in &outside {
            rejections.push(RowRejection {
                row: stream.row(tuple),
                reason: config.outside_reason(stream.point(tuple), now),
            });
        }
        // `outside` is increasing.
        let mut next = outside.iter().peekable();
        stream.retain(|tuple| {
            if next.peek() == Some(&&tuple) {
                next.next();
                false
            } else {
                true
            }
        });
    }
    partitioner
        .ensure(connection, starts)
        .map_err(|failed| RoutingError::new(&failed.0, failed.1))
}

/// A failed step of [`route`], as the plugin error it becomes, with the kind of
/// the Postgres error (to drop a broken connection).
struct RoutingError {
    kind: PgErrorKind,
    error: PluginError,
}

impl RoutingError {
    fn new(doing: &str, error: PgError) -> Self {
        RoutingError {
            kind: error.kind,
            error: plugin_error(doing, error),
        }
    }
}

// Only for wasm: natively, the exports' symbol names (`sluice:plugin/writer@0.1.0#…`)
// break the cdylib's link, and `cargo test` builds the cdylib too.
#[cfg(target_arch = "wasm32")]
sluice_plugin_sdk::export_writer!(PostgresWriter);

impl Session for Connection {
    fn batch_execute(&mut self, sql: &str) -> Result<(), PgError> {
        Connection::batch_execute(self, sql)
    }

    fn copy_in(&mut self, statement: &str, data: &[u8]) -> Result<u64, PgError> {
        Connection::copy_in(self, statement, data)
    }
}

/// The plugin error for a failed step: the SDK decides its kind
/// ([`PgError::plugin_error`]), the message says what was being done.
pub(crate) fn plugin_error(doing: &str, error: PgError) -> PluginError {
    error.plugin_error(format!("{doing}: {}", refusal::describe(&error)))
}
