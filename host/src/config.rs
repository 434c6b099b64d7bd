//! The daemon's configuration: a TOML file read into private serde structs
//! ([`raw`]), then validated ([`validate`]) into [`Config`], a type that cannot hold
//! an invalid state. Validation reports every problem at once, each with its key
//! path (`pipelines[1].batch.max_messages`), so one `sluice check` run shows all
//! that needs fixing.
//!
//! Secrets never need to be in the file: a connection's `password_env` names an
//! environment variable whose value replaces the URL's password. `Debug` output of
//! these types and every error message leave passwords out.
//!
//! `docs/configuration.md` is the user reference; the root `config.toml` is the
//! documented example, and a test parses it so it cannot drift from this code.

mod amqp_url;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::capabilities::Grants;
use crate::pinning::Pin;
use crate::queue_input::AmqpTls;

/// A valid configuration. Configurations compare by value (secrets included),
/// which is how a reload tells what changed.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it was read from, as given.
    pub file: PathBuf,
    /// Process-wide settings (`[daemon]`).
    pub daemon: DaemonConfig,
    /// The pipelines (`[[pipelines]]`), in file order; at least one.
    pub pipelines: Vec<PipelineConfig>,
}

/// Process-wide settings (`[daemon]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// The plugin folder, watched for `*.wasm` files (`plugin_dir`, default
    /// `plugins-dist`): a new or changed file is loaded and swapped in, a refused
    /// one leaves the version loaded before in use, a removed one is unloaded.
    /// `*.tmp` files and dot-files are ignored (deploy by writing `name.wasm.tmp`,
    /// then renaming it). A relative path is resolved against the configuration
    /// file's folder, so the daemon's working directory does not matter.
    pub plugin_dir: PathBuf,
    /// Where compiled components are cached (`cache_dir`, default
    /// `<sluice cache>/components`, see [`crate::plugin_runtime::cache::default_cache_dir`]).
    /// Relative paths are resolved like `plugin_dir`.
    pub cache_dir: PathBuf,
    /// Where the admin server serves `/healthz`, `/readyz` and `/metrics`
    /// (`admin_addr`, an `IP:port`, default `127.0.0.1:9464`; `false` turns the
    /// admin server off). Bound at start; a change applies at the next restart.
    pub admin_addr: Option<SocketAddr>,
    /// How long SIGTERM waits for in-flight batches to commit and be acked before
    /// the daemon exits anyway (`shutdown_timeout`, default 30s); a reload waits
    /// as long at most for the pipelines it stops. Keep it below systemd's
    /// `TimeoutStopSec` (45s in `deploy/sluice.service`, 90s by default), or
    /// systemd kills the daemon first. Whatever is not acked by then is
    /// redelivered, never lost.
    pub shutdown_timeout: Duration,
    /// Linear memory one plugin instance may use, in bytes (config key
    /// `plugin_memory_mib`, in MiB, default 256, 1 to 4096). A change applies at
    /// the next restart.
    pub plugin_memory_limit: usize,
    /// Time one plugin call may spend in plugin code (`plugin_call_timeout`,
    /// default 10s); time spent waiting on the host (a COPY into Postgres) does not
    /// count. A change applies at the next restart.
    pub plugin_call_timeout: Duration,
    /// Wall-clock time one plugin call may take (`plugin_call_deadline`,
    /// default 60s, 10ms to 1h): time the plugin sleeps or waits on its own
    /// WASI I/O (HTTP requests, sockets, files) counts, time in granted store
    /// calls does not. A call past it is stopped and fails like a trap, so a
    /// message that makes a plugin sleep is dead-lettered. A change applies at
    /// the next restart.
    pub plugin_call_deadline: Duration,
    /// Time one call of a granted store (a statement or COPY of the `postgres`
    /// capability, or connecting) may take (`store_call_timeout`, default 5m,
    /// 10ms to 1h). Past it the plugin gets a `retriable` error saying it timed
    /// out: a hung store is a store outage, retried with backoff. Keep it above
    /// the longest statement a healthy store runs (a big COPY under load), or
    /// that batch is retried forever. A change applies at the next restart.
    pub store_call_timeout: Duration,
    /// The public keys plugins must be signed with (`trusted_keys`, a list of
    /// minisign `.pub` files, relative paths resolved like `plugin_dir`; read
    /// when the configuration is loaded). With keys, a plugin file without a
    /// valid signature (`<file>.minisig`) by one of them is refused like a
    /// corrupt file; `None` (the key absent) loads unsigned plugins and the
    /// daemon warns at start that plugins are not verified.
    pub trusted_keys: Option<Vec<crate::signing::TrustedKey>>,
}

/// One pipeline (`[[pipelines]]`): a queue, a source plugin that decodes its
/// messages, and the writers that store the rows. Messages are acked only once
/// every writer committed.
///
/// `Debug` shows `amqp_urls` with their passwords replaced by `***`; `==`
/// compares every setting, the passwords too (a reload restarts a pipeline
/// whose settings differ, so that a new password is used).
#[derive(Clone, PartialEq)]
pub struct PipelineConfig {
    /// The pipeline's name (`name`): lowercase letters, digits, `_` and `-`, unique
    /// in the file. It labels logs and metrics and names the default dead-letter
    /// exchange and queue.
    pub name: String,
    /// The URLs of the amqp connection the pipeline names (`url`, or one per
    /// node of a cluster with `urls`), with the password from the connection's
    /// `password_env` applied. The daemon connects to one; when it loses it,
    /// to the next that answers. Holds secrets: log
    /// [`PipelineConfig::amqp_url_redacted`] instead.
    pub amqp_urls: Vec<String>,
    /// That connection's TLS settings (its `tls` table), with the files read;
    /// `None`: the system trust store and no client certificate.
    pub amqp_tls: Option<AmqpTls>,
    /// The name of that connection (`connection`), for logs.
    pub amqp_connection: String,
    /// The queue consumed (`queue`).
    pub queue: QueueConfig,
    /// Unacked messages the broker may send each consumer (`prefetch`, default
    /// `2 * batch.max_messages`, capped at 65535). It bounds the memory held, and
    /// must be at least `batch.max_messages`, or a batch could never fill and every
    /// batch would wait the full `max_wait`.
    pub prefetch: u16,
    /// Consumers on the queue (`consumers`, default 2, 1 to 64), each with its
    /// own channels on the pipeline's one AMQP connection (a consuming channel
    /// and a dead-letter channel) and its own plugin instances, batching on its
    /// own: one decodes or writes while another fills.
    pub consumers: u16,
    /// When a batch is complete (`batch`).
    pub batch: BatchConfig,
    /// The source plugin (`source`).
    pub source: SourceConfig,
    /// The writer plugins (`writers`), at least one; a message is acked once all
    /// of them committed its rows.
    pub writers: Vec<WriterConfig>,
    /// Where rejected messages go (`dead_letter`).
    pub dead_letter: DeadLetterConfig,
    /// How failures that are not the data's fault are retried (`retry`).
    pub retry: RetryConfig,
}

impl PipelineConfig {
    /// The `i`th of `amqp_urls` with its password, if any, replaced by `***`:
    /// safe to log.
    pub fn amqp_url_redacted(&self, i: usize) -> String {
        self.amqp_urls
            .get(i)
            .map(|url| amqp_url::redact(url))
            .unwrap_or_default()
    }
}

impl fmt::Debug for PipelineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineConfig")
            .field("name", &self.name)
            .field(
                "amqp_urls",
                &(0..self.amqp_urls.len())
                    .map(|i| self.amqp_url_redacted(i))
                    .collect::<Vec<_>>(),
            )
            .field("amqp_tls", &self.amqp_tls)
            .field("amqp_connection", &self.amqp_connection)
            .field("queue", &self.queue)
            .field("prefetch", &self.prefetch)
            .field("consumers", &self.consumers)
            .field("batch", &self.batch)
            .field("source", &self.source)
            .field("writers", &self.writers)
            .field("dead_letter", &self.dead_letter)
            .field("retry", &self.retry)
            .finish()
    }
}

/// The queue a pipeline consumes (`queue`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// The queue's name (`name`, required).
    pub name: String,
    /// Whether the daemon declares the queue (durable) and its bindings at start
    /// (`declare`, default true). With false the queue must exist.
    pub declare: bool,
    /// The queue type (`type`: `"classic"`, `"quorum"` or `"stream"`, default
    /// classic). It must match an existing queue's type, or the declaration
    /// fails.
    pub kind: QueueKind,
    /// Quorum queues only (`delivery_limit`): after this many deliveries RabbitMQ
    /// drops the message (or dead-letters it, with a queue policy), so a message
    /// that keeps crashing consumers cannot loop forever. `None` keeps the
    /// broker's default (20 since RabbitMQ 4.0). An error on a classic queue.
    pub delivery_limit: Option<u32>,
    /// Exchanges the queue is bound to (`bindings`), declared when `declare` is set.
    pub bindings: Vec<Binding>,
    /// Streams only (`type = "stream"`): how they are read.
    pub stream: Option<StreamConfig>,
}

/// A stream pipeline's input (`queue` with `type = "stream"`): the streams it
/// reads with RabbitMQ's stream protocol, one consumer each, and where a
/// consumer starts. Offsets are stored in RabbitMQ under `consumer_name`, once
/// every writer committed a batch and its dead letters were confirmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// The rabbitmq-stream connection (`connection`, required), by name.
    pub connection: String,
    /// Its endpoints (`url`, or one per node of a cluster with `urls`), with
    /// the password applied. `Debug` leaves the password out. The daemon reads
    /// through one; when it loses it, through the next that answers.
    pub endpoints: Vec<StreamEndpoint>,
    /// The streams this daemon reads: `name`, or with `partitions = N` the
    /// partitions `name-0` … `name-<N-1>` (a super stream's), those in
    /// `assigned` only (default all).
    pub streams: Vec<String>,
    /// The consumer name offsets are stored under (`consumer_name`, default
    /// `sluice-<pipeline>`): the same name on another daemon resumes where this
    /// one stopped.
    pub consumer_name: String,
    /// Where a stream with no stored offset is read from (`start`).
    pub start: StreamStart,
    /// Retention and segment size of the streams the daemon creates (`declare`,
    /// a stream that does not exist yet; `max_length`, `max_age`,
    /// `max_segment_size`, the broker's defaults when absent). An existing
    /// stream is read as it is.
    pub retention: StreamRetention,
}

/// Where a consumer with no stored offset starts (`start`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamStart {
    /// `"first"`: the oldest message the stream holds (the default).
    First,
    /// `"last"`: the last chunk written.
    Last,
    /// `"next"`: only messages written from now on.
    Next,
    /// An RFC 3339 time: messages written since then, in milliseconds since the
    /// Unix epoch.
    Timestamp(i64),
}

/// Retention settings a stream is declared with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamRetention {
    /// `x-max-length-bytes`.
    pub max_length_bytes: Option<u64>,
    /// `x-max-age`, in seconds.
    pub max_age: Option<Duration>,
    /// `x-stream-max-segment-size-bytes`.
    pub max_segment_size_bytes: Option<u64>,
}

/// Where a rabbitmq-stream connection goes (from its URL,
/// `rabbitmq-stream://user:password@host:5552/vhost`).
#[derive(Clone, PartialEq, Eq)]
pub struct StreamEndpoint {
    /// Host name or address.
    pub host: String,
    /// Port (5552 by default).
    pub port: u16,
    /// User (`guest` by default).
    pub user: String,
    /// Password (`guest` by default, or from `password_env`). A secret.
    pub password: String,
    /// Virtual host (`/` by default).
    pub vhost: String,
}

impl fmt::Debug for StreamEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rabbitmq-stream://{}:***@{}:{}/{}",
            self.user, self.host, self.port, self.vhost
        )
    }
}

/// The type of a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueKind {
    /// A classic queue (`"classic"`): one node, the default.
    Classic,
    /// A quorum queue (`"quorum"`): replicated on a cluster, with a delivery limit.
    Quorum,
    /// A stream (`"stream"`): an append-only log read with the stream protocol,
    /// from a stored offset.
    Stream,
}

impl QueueKind {
    /// The name the configuration uses.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Classic => "classic",
            QueueKind::Quorum => "quorum",
            QueueKind::Stream => "stream",
        }
    }

    /// What it is called in messages.
    pub fn noun(self) -> &'static str {
        match self {
            QueueKind::Classic | QueueKind::Quorum => "queue",
            QueueKind::Stream => "stream",
        }
    }
}

/// A binding of the pipeline's queue to an exchange (`queue.bindings[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The exchange (`exchange`), declared durable when the queue is declared. The
    /// default exchange `""` cannot be bound.
    pub exchange: String,
    /// Its type (`exchange_type`, default `"topic"`).
    pub exchange_type: ExchangeType,
    /// The binding key (`routing_key`): required for direct and topic exchanges
    /// (`cdr.#`), `""` by default for fanout and headers.
    pub routing_key: String,
}

/// The type of an exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeType {
    /// `"direct"`: routing key equals binding key.
    Direct,
    /// `"topic"`: binding key pattern with `*` and `#` (the default).
    Topic,
    /// `"fanout"`: every message to every bound queue.
    Fanout,
    /// `"headers"`: bound without arguments here.
    Headers,
}

impl ExchangeType {
    /// The name AMQP and the configuration use.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Topic => "topic",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Headers => "headers",
        }
    }
}

/// When a batch is complete (`batch`): whichever comes first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// At most this many messages (`max_messages`, default 1000, 1 to 100000;
    /// `prefetch` must be at least this).
    pub max_messages: usize,
    /// At most this long after the batch's first message (`max_wait`, default
    /// 200ms, more than 0, at most 10m).
    pub max_wait: Duration,
}

/// The source plugin of a pipeline (`source`).
#[derive(Clone, Debug, PartialEq)]
pub struct SourceConfig {
    /// The plugin's name, as it reports it (`plugin`), found in the plugin folder.
    pub plugin: String,
    /// Its configuration (`config`, a table, default empty), passed through as a
    /// JSON object; TOML datetimes become strings.
    pub config: serde_json::Value,
    /// The exact plugin it must be (`sha256`, `signer`; nothing by default).
    pub pin: Pin,
}

/// A writer plugin of a pipeline (`writers[]`).
#[derive(Clone, Debug, PartialEq)]
pub struct WriterConfig {
    /// The plugin's name, as it reports it (`plugin`).
    pub plugin: String,
    /// Its configuration (`config`, a table, default empty), as a JSON object.
    pub config: serde_json::Value,
    /// What the plugin may reach (`grants`); nothing by default.
    pub grants: Grants,
    /// The names of the postgres connections granted (`grants.postgres`), in file
    /// order, for display.
    pub postgres_grants: Vec<String>,
    /// The exact plugin it must be (`sha256`, `signer`; nothing by default).
    pub pin: Pin,
}

/// Where rejected messages go (`dead_letter`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetterConfig {
    /// The exchange rejected messages are published to, with the reason in
    /// headers (`exchange`, default `"<pipeline>.dead"`). It must not be an
    /// exchange the pipeline's queue is bound to, or rejects would loop back.
    pub exchange: String,
    /// A durable queue bound to the exchange with `#` (`queue`, default
    /// `"<pipeline>.dead"`), so a rejected message is never unroutable. `false`
    /// gives `None`: then bind a queue to the exchange yourself. Dead letters are
    /// published as mandatory, so without a bound queue they are unroutable: the
    /// consumer drops its session, the batch returns to the queue and is retried
    /// after a reconnect backoff, never dropped.
    pub queue: Option<String>,
    /// The type `queue` is declared with (`queue_type`: `"classic"`, the
    /// default, or `"quorum"`). On a cluster, quorum: a classic queue lives on
    /// one node, and while that node is down dead letters cannot be published,
    /// so the batches holding them wait.
    pub queue_kind: QueueKind,
    /// Whether the daemon declares the exchange and queue (`declare`, default true).
    pub declare: bool,
}

/// How failures that are not the data's fault are retried (`retry`): the batch
/// stays unacked and is tried again after a backoff that doubles up to
/// `max_backoff`. Errors that retrying cannot fix soon (a fatal plugin error, a
/// broken contract, a plugin configuration error) wait at least 5s (or
/// `max_backoff`, if shorter).
///
/// Retries last as long as the store is down. RabbitMQ's `consumer_timeout`
/// (30 minutes by default) closes the channel of a consumer that holds a message
/// unacked longer than that; its messages are then redelivered, so nothing is
/// lost, but an outage that long restarts the consumers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryConfig {
    /// The first backoff (`initial_backoff`, default 100ms).
    pub initial_backoff: Duration,
    /// The longest backoff (`max_backoff`, default 30s, at most 5m, at least
    /// `initial_backoff`).
    pub max_backoff: Duration,
}

impl Config {
    /// Reads and validates the file at `path`. Passwords named by `password_env`
    /// come from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problems: vec![Problem::new(
                "",
                format!("cannot read the configuration file: {e}"),
            )],
        })?;
        Config::from_str(&text, path)
    }

    /// Validates `text`, the content of `file` (relative paths in it are resolved
    /// against `file`'s folder). Passwords come from the process environment.
    pub fn from_str(text: &str, file: &Path) -> Result<Config, ConfigError> {
        Config::from_str_with_env(text, file, |name| std::env::var(name).ok())
    }

    /// Like [`Config::from_str`], with `env` looking up environment variables
    /// (`None` when unset): for tests, and for callers that hold their own
    /// environment.
    pub fn from_str_with_env(
        text: &str,
        file: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            file: file.to_path_buf(),
            problems,
        };
        let (raw, unknown) = raw::parse(text).map_err(|p| fail(vec![p]))?;
        validate::validate(raw, unknown, file, &env).map_err(fail)
    }
}

/// Why a configuration was refused: every problem found, each with its key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong, in file order as far as possible; never empty.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// One thing wrong with a configuration: where (a key path such as
/// `pipelines[1].batch.max_messages`, `line L, column C` for a syntax error,
/// `plugin_dir/<file>` for a plugin file `sluice check` refused, or empty for
/// the file as a whole) and what is wrong. The same type as a plugin's
/// configuration problems, shown the same way (`path: message`).
pub use sluice_plugin_sdk::config::Problem;
