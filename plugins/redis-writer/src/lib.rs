//! Sluice's Redis writer: speaks RESP itself over a TCP connection the host
//! grants, one pipelined `MULTI`/`EXEC` transaction per batch.
//!
//! # Configuration
//!
//! ```toml
//! [[pipelines.writers]]
//! plugin = "redis-writer"
//! grants = { tcp = ["127.0.0.1:6379"] }
//! config = { address = "127.0.0.1:6379", mode = "hash", key_prefix = "cdr:" }
//! ```
//!
//! Keys: `address`, `mode` (`hash` or `stream`), `key_prefix`, `stream`, `db`,
//! `username`, `password`, `ttl`, `dedupe`, `maxlen`, `timeout`: see [`config`].
//! Plugins cannot read environment variables or files, so a password goes into the
//! configuration file: keep that file readable by the daemon only.
//!
//! # Hash mode: the latest state of each key (idempotent)
//!
//! Each row becomes `HSET <key_prefix><key> <column> <value> ...` with every
//! non-null column, and `HDEL <key> <column> ...` for its null columns, so the
//! hash holds exactly the last row written for the key. With `ttl`, a
//! `PEXPIRE <key>` follows. The key is the prefix and the key columns' values
//! joined with `:`; a `:` or `\` inside a value is escaped with `\` so that
//! two keys never collide (`cdr:c-1`, `cdr:a\:b:2`). Writing the same rows again
//! leaves the same hashes: redelivery is harmless.
//!
//! # Stream mode: one entry per row
//!
//! Each row becomes `XADD <stream> [MAXLEN ~ maxlen] * <column> <value> ...`
//! (null columns left out). Redis gives each entry a new id, so a plain `XADD` of
//! a redelivered row would add it twice. With `dedupe` (the default) each row goes
//! through a small Lua script that first sets a marker key
//! `<key_prefix><key>` with `SET NX PX <ttl>` and adds the entry only if the
//! marker was not there: a row whose key was added within `ttl` (default one day)
//! is skipped. The bound: a redelivery, or a new row with the same key, later
//! than `ttl` adds a second entry. With `dedupe = false` stream mode is
//! at-least-once.
//!
//! # Transactions and errors
//!
//! The whole batch is written as one buffer (`MULTI`, the commands, `EXEC`) and
//! the replies are read after it. If the connection breaks before `EXEC` is
//! applied, nothing of the batch is; the writer reconnects once at once (the
//! batch is idempotent), and otherwise returns a retriable error and reconnects
//! on the next write. Redis applies every command of an `EXEC` even when one
//! fails: a command that fails for its row (`WRONGTYPE`: the key holds another
//! type) rejects that row, the others stay written. An out-of-memory, read-only
//! or loading server is retriable; an authentication failure is a configuration
//! error. Redis Cluster is not supported (a stream row's marker and stream are two
//! keys in one script).
//!
//! Values are stored as text (bytes unchanged): see [`format`].

pub mod config;
pub mod format;
pub mod resp;

use std::io;

use sluice_plugin_sdk::rows::{RowBatch, RowReader, Value};
use sluice_plugin_sdk::tcp::TcpStream;
use sluice_plugin_sdk::{Column, ColumnType, PluginError, RowRejection, Schema, Writer};

use crate::config::{Config, Mode};
use crate::resp::{Connection, Reply, command};

/// Stream mode with dedupe: add the entry only if the key's marker was not set.
/// KEYS: marker, stream. ARGV: ttl in ms, maxlen or "", then field, value, ...
const DEDUPE_SCRIPT: &str = "if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then \
     if ARGV[2] == '' then return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3)) end \
     return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3)) \
     end return false";

/// The writer: one per plugin instance, with its connection.
pub struct RedisWriter {
    config: Config,
    columns: Vec<Column>,
    types: Vec<ColumnType>,
    /// `None` after a failure: the next write connects again.
    connection: Option<Connection<TcpStream>>,
    /// The dedupe script's SHA1, from `SCRIPT LOAD`.
    script: Option<String>,
    /// The connection's `CLIENT ID` (for tests that cut it).
    client_id: Option<i64>,
    /// The batch's commands, and for each command inside MULTI the row it is for.
    buf: Vec<u8>,
    command_rows: Vec<u32>,
    scratch: Vec<u8>,
    ranges: Vec<(usize, usize)>,
}

/// What a batch exchange can fail with.
enum Failure {
    /// The connection broke or timed out: reconnect.
    Io(io::Error),
    /// An answer that says what to do.
    Plugin(PluginError),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

impl Writer for RedisWriter {
    fn open(config: &str, schema: &Schema) -> Result<Self, PluginError> {
        let config = Config::parse(config, &schema.name)?;
        if schema.key_columns().next().is_none() {
            return Err(PluginError::InvalidConfig(format!(
                "schema {} has no key column: redis-writer keys hashes and dedupe markers on it",
                schema.name
            )));
        }
        let mut writer = RedisWriter {
            config,
            columns: schema.columns.clone(),
            types: schema.column_types(),
            connection: None,
            script: None,
            client_id: None,
            buf: Vec::new(),
            command_rows: Vec::new(),
            scratch: Vec::new(),
            ranges: Vec::new(),
        };
        writer.connect()?;
        Ok(writer)
    }

    fn write(&mut self, batch: &RowBatch) -> Result<Vec<RowRejection>, PluginError> {
        self.encode(batch)?;
        if self.command_rows.is_empty() {
            return Ok(Vec::new());
        }
        let fresh = self.connection.is_none();
        if fresh {
            self.connect()?;
        }
        match self.exchange() {
            Ok(rejections) => Ok(rejections),
            Err(Failure::Plugin(e)) => {
                self.connection = None;
                Err(e)
            }
            Err(Failure::Io(e)) if fresh => {
                self.connection = None;
                Err(self.lost(e))
            }
            Err(Failure::Io(e)) => {
                // A connection idle for a while may have been closed by the server
                // (its `timeout`, a restart). The batch is idempotent: once more on
                // a new connection.
                sluice_plugin_sdk::debug!("redis {}: {e}; reconnecting once", self.config.address);
                self.connection = None;
                self.connect()?;
                self.exchange().map_err(|f| {
                    self.connection = None;
                    match f {
                        Failure::Io(e) => self.lost(e),
                        Failure::Plugin(e) => e,
                    }
                })
            }
        }
    }
}

impl RedisWriter {
    /// The current connection's `CLIENT ID`, if connected.
    pub fn client_id(&self) -> Option<i64> {
        self.connection.as_ref().and(self.client_id)
    }

    fn lost(&self, e: io::Error) -> PluginError {
        PluginError::Retriable(format!(
            "redis {}: connection lost: {e}",
            self.config.address
        ))
    }

    /// Connects, authenticates, selects the database, loads the script.
    fn connect(&mut self) -> Result<(), PluginError> {
        self.connection = None;
        let address = self.config.address.clone();
        let mut stream = TcpStream::connect_timeout(&address, self.config.timeout)?;
        let timeouts = stream
            .set_read_timeout(Some(self.config.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.config.timeout)));
        let lost = |e: io::Error| PluginError::Retriable(format!("redis {address}: {e}"));
        timeouts.map_err(lost)?;
        let mut connection = Connection::new(stream);
        if let Some(password) = &self.config.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &self.config.username {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            expect_ok(
                &address,
                "AUTH",
                connection.call(&args).map_err(lost)?,
                true,
            )?;
        }
        if self.config.db != 0 {
            let db = self.config.db.to_string();
            expect_ok(
                &address,
                "SELECT",
                connection.call(&[b"SELECT", db.as_bytes()]).map_err(lost)?,
                true,
            )?;
        }
        self.client_id = match connection.call(&[b"CLIENT", b"ID"]).map_err(lost)? {
            Reply::Int(id) => Some(id),
            _ => None,
        };
        if self.config.mode == Mode::Stream && self.config.dedupe {
            match connection
                .call(&[b"SCRIPT", b"LOAD", DEDUPE_SCRIPT.as_bytes()])
                .map_err(lost)?
            {
                Reply::Bulk(Some(sha)) => self.script = Some(String::from_utf8_lossy(&sha).into()),
                other => return Err(unexpected(&address, "SCRIPT LOAD", other)),
            }
        }
        self.connection = Some(connection);
        Ok(())
    }

    /// Encodes the batch's commands into `buf` (MULTI ... EXEC).
    fn encode(&mut self, batch: &RowBatch) -> Result<(), PluginError> {
        self.buf.clear();
        self.command_rows.clear();
        if batch.count == 0 {
            return Ok(());
        }
        if let Some(script) = &self.script {
            // Cheap, and the script is there at EXEC even after a SCRIPT FLUSH.
            command(
                &mut self.buf,
                &[b"SCRIPT", b"LOAD", DEDUPE_SCRIPT.as_bytes()],
            );
            debug_assert!(!script.is_empty());
        }
        command(&mut self.buf, &[b"MULTI"]);
        let ttl_ms = self.config.ttl.map(|t| t.as_millis().to_string());
        let maxlen = self
            .config
            .maxlen
            .map(|m| m.to_string())
            .unwrap_or_default();
        for row in RowReader::new(&self.types, batch) {
            let row =
                row.map_err(|e| PluginError::Fatal(format!("the row batch is malformed: {e}")))?;
            let values = row.values();
            // scratch holds: the key, then each non-null column's name and value.
            self.scratch.clear();
            self.ranges.clear();
            self.scratch
                .extend_from_slice(self.config.key_prefix.as_bytes());
            let mut first = true;
            for (column, value) in self.columns.iter().zip(&values) {
                if column.key {
                    if !first {
                        self.scratch.push(b':');
                    }
                    first = false;
                    let start = self.scratch.len();
                    format::value(value, &mut self.scratch);
                    escape_key_part(&mut self.scratch, start);
                }
            }
            let key = (0, self.scratch.len());
            let mut nulls = Vec::new();
            for (column, value) in self.columns.iter().zip(&values) {
                if matches!(value, Value::Null) {
                    nulls.push(column.name.as_bytes());
                    continue;
                }
                let start = self.scratch.len();
                self.scratch.extend_from_slice(column.name.as_bytes());
                self.ranges.push((start, self.scratch.len()));
                let start = self.scratch.len();
                format::value(value, &mut self.scratch);
                self.ranges.push((start, self.scratch.len()));
            }
            let scratch = &self.scratch;
            let key = &scratch[key.0..key.1];
            let fields = self.ranges.iter().map(|&(a, b)| &scratch[a..b]);
            let index = row.index();
            let mut args: Vec<&[u8]> = Vec::with_capacity(8 + self.ranges.len());
            match self.config.mode {
                Mode::Hash => {
                    args.push(b"HSET");
                    args.push(key);
                    args.extend(fields);
                    command(&mut self.buf, &args);
                    self.command_rows.push(index);
                    if !nulls.is_empty() {
                        args.clear();
                        args.push(b"HDEL");
                        args.push(key);
                        args.extend(nulls.iter().copied());
                        command(&mut self.buf, &args);
                        self.command_rows.push(index);
                    }
                    if let Some(ttl) = &ttl_ms {
                        command(&mut self.buf, &[b"PEXPIRE", key, ttl.as_bytes()]);
                        self.command_rows.push(index);
                    }
                }
                Mode::Stream => {
                    let stream = self.config.stream.as_bytes();
                    match (&self.script, &ttl_ms) {
                        (Some(sha), Some(ttl)) => {
                            args.extend([
                                b"EVALSHA".as_slice(),
                                sha.as_bytes(),
                                b"2",
                                key,
                                stream,
                                ttl.as_bytes(),
                                maxlen.as_bytes(),
                            ]);
                        }
                        _ => {
                            args.extend([b"XADD".as_slice(), stream]);
                            if !maxlen.is_empty() {
                                args.extend([b"MAXLEN".as_slice(), b"~", maxlen.as_bytes()]);
                            }
                            args.push(b"*");
                        }
                    }
                    args.extend(fields);
                    command(&mut self.buf, &args);
                    self.command_rows.push(index);
                }
            }
        }
        command(&mut self.buf, &[b"EXEC"]);
        Ok(())
    }

    /// Sends the batch, reads every reply; the rows whose command failed.
    fn exchange(&mut self) -> Result<Vec<RowRejection>, Failure> {
        let address = self.config.address.clone();
        let connection = self.connection.as_mut().expect("connected");
        connection.send(&self.buf)?;
        if self.script.is_some() {
            match connection.reply()? {
                Reply::Bulk(Some(_)) => {}
                other => return Err(Failure::Plugin(unexpected(&address, "SCRIPT LOAD", other))),
            }
        }
        let multi = connection.reply()?;
        // Read every queued reply before judging, to keep the connection in step.
        let mut queue_error = None;
        for _ in 0..self.command_rows.len() {
            match connection.reply()? {
                Reply::Simple(s) if s == "QUEUED" => {}
                Reply::Error(e) => {
                    queue_error.get_or_insert(e);
                }
                other => {
                    queue_error.get_or_insert(format!("unexpected reply {other:?}"));
                }
            }
        }
        let exec = connection.reply()?;
        if let Reply::Error(e) = multi {
            return Err(Failure::Plugin(error_reply(&address, "MULTI", &e)));
        }
        let items = match exec {
            Reply::Array(Some(items)) if items.len() == self.command_rows.len() => items,
            Reply::Error(e) => {
                // EXECABORT: nothing was applied; the first queueing error says why.
                let why = queue_error.unwrap_or(e);
                return Err(Failure::Plugin(error_reply(&address, "EXEC", &why)));
            }
            other => return Err(Failure::Plugin(unexpected(&address, "EXEC", other))),
        };
        let mut rejections: Vec<RowRejection> = Vec::new();
        for (item, &row) in items.iter().zip(&self.command_rows) {
            if let Reply::Error(e) = item {
                if is_retriable(e) {
                    return Err(Failure::Plugin(error_reply(&address, "EXEC", e)));
                }
                if rejections.last().is_none_or(|r| r.row != row) {
                    rejections.push(RowRejection {
                        row,
                        reason: format!("redis refused it: {e}"),
                    });
                }
            }
        }
        Ok(rejections)
    }
}

/// Escapes `\` and `:` in `buf[start..]` with a `\`.
fn escape_key_part(buf: &mut Vec<u8>, start: usize) {
    if !buf[start..].iter().any(|b| matches!(b, b'\\' | b':')) {
        return;
    }
    let part: Vec<u8> = buf.drain(start..).collect();
    for b in part {
        if matches!(b, b'\\' | b':') {
            buf.push(b'\\');
        }
        buf.push(b);
    }
}

fn is_retriable(error: &str) -> bool {
    const PREFIXES: [&str; 8] = [
        "OOM",
        "READONLY",
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "NOSCRIPT",
    ];
    PREFIXES.iter().any(|p| error.starts_with(p))
}

/// The plugin error for an error reply.
fn error_reply(address: &str, doing: &str, error: &str) -> PluginError {
    let message = format!("redis {address}: {doing}: {error}");
    if error.starts_with("NOAUTH")
        || error.starts_with("WRONGPASS")
        || error.starts_with("NOPERM")
        || error.contains("AUTH")
    {
        PluginError::InvalidConfig(message)
    } else if is_retriable(error) {
        PluginError::Retriable(message)
    } else {
        PluginError::Fatal(message)
    }
}

fn unexpected(address: &str, doing: &str, reply: Reply) -> PluginError {
    match reply {
        Reply::Error(e) => error_reply(address, doing, &e),
        other => PluginError::Fatal(format!(
            "redis {address}: {doing}: unexpected reply {other:?}"
        )),
    }
}

/// `+OK`, or the error for what came instead; `setup` errors (AUTH, SELECT) are
/// the configuration's.
fn expect_ok(address: &str, doing: &str, reply: Reply, setup: bool) -> Result<(), PluginError> {
    match reply {
        Reply::Simple(s) if s == "OK" => Ok(()),
        Reply::Error(e) if setup => Err(PluginError::InvalidConfig(format!(
            "redis {address}: {doing}: {e}"
        ))),
        other => Err(unexpected(address, doing, other)),
    }
}

// Only for wasm: natively, the exports' symbol names break the cdylib's link.
#[cfg(target_arch = "wasm32")]
sluice_plugin_sdk::export_writer!(RedisWriter);

#[cfg(test)]
mod tests;
