//! One pipeline: consumers that take batches from the queue, decode them with the
//! source plugin, write them with every writer plugin, dead-letter what was
//! refused, and ack only what every writer committed.
//!
//! Each consumer task owns one AMQP session (its channels on the pipeline's shared
//! connection) and its own plugin instances, and
//! handles one batch at a time, so when a batch is done every earlier delivery of
//! its channel is settled and one `ack(multiple)` covers it. Several consumers
//! keep several batches in flight (decoding on one core while another batch is
//! being written). Failures are handled here, in one place:
//!
//! - a writer's retriable error, or any error that is not about the data (a store
//!   refusing to open, an invalid configuration), is retried with backoff while
//!   the messages stay unacked; the pipeline stalls but loses nothing;
//! - a plugin that crashes on a batch (trap, timeout, memory) has the batch split
//!   in halves until the message or row that crashes it is found; that one is
//!   dead-lettered with the crash as its reason and the rest goes on;
//! - a lost broker connection drops the session; the broker requeues what was
//!   not acked, and the consumer reconnects with backoff. Rows written but not
//!   acked are written again on redelivery, and the writers' idempotence on the
//!   key columns keeps one copy.

mod batch;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::batch::{RowSpans, merge_decoded};
use crate::admin::Health;
use crate::config::PipelineConfig;
use crate::metrics::PipelineMetrics;
use crate::plugin_runtime::{
    CallError, DecodedBatch, LoadedPlugin, Message, MessageOutcome, PluginRuntime, RowBatch,
    SourceInstance, WriterInstance,
};
use crate::queue_input::{DeadLetter, Received, Session, SharedConnection};

/// The plugins a pipeline runs.
#[derive(Clone)]
pub struct PipelinePlugins {
    /// The source.
    pub source: Arc<LoadedPlugin>,
    /// The writers, in configuration order.
    pub writers: Vec<Arc<LoadedPlugin>>,
}

/// What a pipeline reports to: its metrics and the daemon's health.
#[derive(Clone)]
pub struct Reporting {
    /// The pipeline's metrics.
    pub metrics: PipelineMetrics,
    /// Readiness and liveness of every consumer.
    pub health: Arc<Health>,
}

/// How often an idle consumer tells the health state it is alive.
const IDLE_BEAT: Duration = Duration::from_secs(1);

/// Starts the pipeline's consumers. They stop when `shutdown` turns true, after
/// finishing (and acking) the batch in hand.
pub fn spawn(
    config: Arc<PipelineConfig>,
    runtime: Arc<PluginRuntime>,
    plugins: watch::Receiver<PipelinePlugins>,
    reporting: Reporting,
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let amqp = SharedConnection::default();
    (0..config.consumers as usize)
        .map(|index| {
            reporting
                .health
                .consumer_down(&config.name, index, "starting");
            let worker = Worker::new(
                config.clone(),
                runtime.clone(),
                plugins.clone(),
                reporting.clone(),
                amqp.clone(),
                index,
            );
            tokio::spawn(run_consumer(worker, shutdown.clone()))
        })
        .collect()
}

/// Why a batch was given up without being acked.
#[derive(Debug, thiserror::Error)]
enum Stop {
    /// The daemon is shutting down; the broker redelivers the batch later.
    #[error("shutting down")]
    Shutdown,
    /// The AMQP session failed; reconnect.
    #[error(transparent)]
    Session(#[from] anyhow::Error),
}

/// Exponential backoff between `initial` and `max`.
struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    fn reset(&mut self) {
        self.next = self.initial;
    }

    /// Sleeps for the next delay, or returns `Stop::Shutdown` if shutdown comes
    /// first.
    async fn wait(
        &mut self,
        shutdown: &mut watch::Receiver<bool>,
        beat: impl Fn(),
    ) -> Result<(), Stop> {
        // `beat` is called every IDLE_BEAT meanwhile: a long wait is a sign of
        // life, not of a wedged consumer (the systemd watchdog watches beats).
        let deadline = tokio::time::Instant::now() + self.next;
        self.next = (self.next * 2).min(self.max);
        loop {
            let step = (tokio::time::Instant::now() + IDLE_BEAT).min(deadline);
            tokio::select! {
                _ = tokio::time::sleep_until(step) => {
                    if step >= deadline {
                        return Ok(());
                    }
                    beat();
                }
                _ = stopped(shutdown) => return Err(Stop::Shutdown),
            }
        }
    }

    fn peek(&self) -> Duration {
        self.next
    }

    /// Makes the next delay at least `floor` (within the maximum).
    fn at_least(&mut self, floor: Duration) {
        self.next = self.next.max(floor.min(self.max));
    }
}

/// The shortest wait after an error that retrying soon cannot fix (a fatal
/// plugin error, a broken contract): such errors need an operator, and retrying
/// them fast only floods the log.
const SLOW_RETRY: Duration = Duration::from_secs(5);

/// What a consumer owns: its plugin instances and its place in the pipeline.
struct Worker {
    config: Arc<PipelineConfig>,
    runtime: Arc<PluginRuntime>,
    report: Reporting,
    /// The pipeline's AMQP connection, shared with its other consumers.
    amqp: SharedConnection,
    index: usize,
    source: SourceInstance,
    writer_plugins: Vec<Arc<LoadedPlugin>>,
    /// New versions of the plugins, swapped in at a batch boundary.
    plugins_rx: watch::Receiver<PipelinePlugins>,
    /// The schema the writers were opened for.
    schema: Option<crate::plugin_runtime::Schema>,
    /// Created once the source has declared its schema.
    writers: Vec<WriterInstance>,
    /// The column types of the source's schema, to find row boundaries.
    types: Vec<sluice_plugin_sdk::ColumnType>,
    backoff: Backoff,
}

/// The outcome of one message after decoding: its rows or why it was refused.
struct Refusal {
    stage: &'static str,
    plugin: String,
    reason: String,
}

impl Worker {
    fn new(
        config: Arc<PipelineConfig>,
        runtime: Arc<PluginRuntime>,
        mut plugins_rx: watch::Receiver<PipelinePlugins>,
        report: Reporting,
        amqp: SharedConnection,
        index: usize,
    ) -> Self {
        let plugins = plugins_rx.borrow_and_update().clone();
        let source = SourceInstance::new(
            runtime.clone(),
            plugins.source.clone(),
            &config.name,
            config.source.config.to_string(),
        );
        let backoff = Backoff::new(config.retry.initial_backoff, config.retry.max_backoff);
        Self {
            config,
            runtime,
            report,
            amqp,
            index,
            source,
            writer_plugins: plugins.writers.clone(),
            plugins_rx,
            writers: Vec::new(),
            schema: None,
            types: Vec::new(),
            backoff,
        }
    }

    /// Configures the source and opens every writer, retrying with backoff until
    /// they are up (or shutdown).
    async fn prepare(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), Stop> {
        loop {
            let result = match self.ensure_writers().await {
                Ok(()) => self.open_writers().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    self.backoff.reset();
                    return Ok(());
                }
                Err(e) => {
                    let why = format!("plugins not ready: {e}");
                    self.report
                        .health
                        .consumer_down(&self.config.name, self.index, &why);
                    self.stall("write", "opening the plugins", &e, shutdown)
                        .await?;
                }
            }
        }
    }

    /// Swaps in new plugin versions, if the daemon sent any, between two batches:
    /// the batch in hand finished on the old versions, the next one runs on the
    /// new. Writers are kept unless their plugin changed or the source now
    /// declares another schema (then they are opened again for it, which applies
    /// additive changes to the store).
    async fn refresh_plugins(&mut self) {
        if !self.plugins_rx.has_changed().unwrap_or(false) {
            return;
        }
        let new = self.plugins_rx.borrow_and_update().clone();
        let started = Instant::now();
        let mut kept = Vec::new();
        if new.source.sha256 != self.source.plugin().sha256 {
            // Configure the new version before letting go of the old: one that
            // fails there (a trap, a refused configuration) is refused, and the
            // old version keeps running.
            let mut candidate = SourceInstance::new(
                self.runtime.clone(),
                new.source.clone(),
                &self.config.name,
                self.config.source.config.to_string(),
            );
            match candidate.schema().await {
                Ok(_) => self.source = candidate,
                Err(e) => kept.push((self.source.plugin().info.label(), e)),
            }
        }
        // An error here: `decode` meets the same error and stalls with it.
        let schema = self.source.schema().await.ok();
        if schema.is_none() || schema != self.schema {
            // A new schema: the writers are opened again for it (which applies
            // additive changes, or stalls with what is incompatible).
            self.writers.clear();
            self.writer_plugins = new.writers.clone();
        } else {
            for (i, plugin) in new.writers.iter().enumerate() {
                if self
                    .writers
                    .get(i)
                    .is_none_or(|w| w.plugin().sha256 == plugin.sha256)
                {
                    continue;
                }
                let wc = &self.config.writers[i];
                let mut candidate = WriterInstance::new(
                    self.runtime.clone(),
                    plugin.clone(),
                    &self.config.name,
                    wc.config.to_string(),
                    schema.clone().expect("checked above"),
                    wc.grants.clone(),
                );
                match candidate.open().await {
                    Ok(()) => {
                        self.writers[i] = candidate;
                        self.writer_plugins[i] = plugin.clone();
                    }
                    Err(e) => kept.push((self.writers[i].plugin().info.label(), e)),
                }
            }
        }
        for (old, error) in &kept {
            tracing::error!(
                pipeline = %self.config.name,
                consumer = self.index,
                kept = %old,
                error = %error,
                "new plugin version refused: it failed when opened; the old version keeps running"
            );
        }
        tracing::info!(
            pipeline = %self.config.name,
            consumer = self.index,
            source = %self.source.plugin().info.label(),
            refused = kept.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "plugins swapped at a batch boundary"
        );
    }

    async fn open_writers(&mut self) -> Result<(), CallError> {
        for writer in &mut self.writers {
            writer.open().await?;
        }
        Ok(())
    }

    /// Creates the writer instances for the source's schema (once).
    async fn ensure_writers(&mut self) -> Result<(), CallError> {
        if self.writers.len() == self.writer_plugins.len() {
            return Ok(());
        }
        let schema = self.source.schema().await?;
        self.schema = Some(schema.clone());
        self.types = schema
            .columns
            .iter()
            .map(|c| batch::sdk_type(c.type_))
            .collect();
        self.writers = self
            .writer_plugins
            .iter()
            .zip(&self.config.writers)
            .map(|(plugin, wc)| {
                WriterInstance::new(
                    self.runtime.clone(),
                    plugin.clone(),
                    &self.config.name,
                    wc.config.to_string(),
                    schema.clone(),
                    wc.grants.clone(),
                )
            })
            .collect();
        Ok(())
    }

    /// Waits out a failure that is not about the data: the messages stay unacked
    /// and the same batch is tried again.
    async fn stall(
        &mut self,
        stage: &'static str,
        what: &str,
        error: &CallError,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Stop> {
        if !error.is_retriable() {
            self.backoff.at_least(SLOW_RETRY);
        }
        let retry_in = self.backoff.peek();
        self.report.metrics.retry(stage);
        self.report.health.beat(&self.config.name, self.index);
        if error.is_retriable() {
            tracing::warn!(pipeline = %self.config.name, consumer = self.index, error = %error, ?retry_in, "{what} failed; retrying, messages stay in the queue");
        } else {
            tracing::error!(pipeline = %self.config.name, consumer = self.index, error = %error, ?retry_in, "{what} failed and needs attention; retrying, messages stay in the queue");
        }
        let (health, name, index) = (&self.report.health, &self.config.name, self.index);
        self.backoff
            .wait(shutdown, || health.beat(name, index))
            .await
    }

    /// Decodes a batch, isolating messages that crash the source.
    async fn decode(
        &mut self,
        messages: &[Message],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(DecodedBatch, Vec<Option<Refusal>>), Stop> {
        loop {
            if let Err(e) = self.ensure_writers().await {
                self.stall("decode", "configuring the source", &e, shutdown)
                    .await?;
                continue;
            }
            let called = Instant::now();
            let result = self.source.decode(messages).await;
            let plugin = self.source.plugin().info.label();
            self.report
                .metrics
                .plugin_call(&plugin, "decode", called.elapsed());
            if let Err(e) = &result {
                self.report
                    .metrics
                    .plugin_failure(&plugin, e.func(), e.kind());
            }
            match result {
                Ok(decoded) => {
                    let refusals = decoded
                        .outcomes
                        .iter()
                        .map(|o| match o {
                            MessageOutcome::Rows(_) => None,
                            MessageOutcome::Rejected(reason) => Some(Refusal {
                                stage: "decode",
                                plugin: plugin.clone(),
                                reason: reason.clone(),
                            }),
                        })
                        .collect();
                    return Ok((decoded, refusals));
                }
                Err(e) if e.is_crash() && e.func() == "decode" => {
                    if messages.len() == 1 {
                        tracing::warn!(pipeline = %self.config.name, error = %e, "a message crashes the source plugin; dead-lettering it");
                        let refusal = Refusal {
                            stage: "decode",
                            plugin: self.source.plugin().info.label(),
                            reason: e.to_string(),
                        };
                        let empty = DecodedBatch {
                            outcomes: vec![MessageOutcome::Rejected(refusal.reason.clone())],
                            rows: RowBatch {
                                count: 0,
                                data: Vec::new(),
                            },
                        };
                        return Ok((empty, vec![Some(refusal)]));
                    }
                    let (left, right) = messages.split_at(messages.len() / 2);
                    let (a, ra) = Box::pin(self.decode(left, shutdown)).await?;
                    let (b, rb) = Box::pin(self.decode(right, shutdown)).await?;
                    return Ok((merge_decoded(a, b), ra.into_iter().chain(rb).collect()));
                }
                Err(e) => self.stall("decode", "decoding", &e, shutdown).await?,
            }
        }
    }

    /// Writes `rows` with writer `w` until it commits, isolating rows that crash
    /// it. Returns the rejected rows (indices into `rows`) with their reasons.
    async fn write(
        &mut self,
        w: usize,
        rows: &RowBatch,
        spans: &RowSpans,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Vec<(u32, String)>, Stop> {
        loop {
            let called = Instant::now();
            let result = self.writers[w].write(rows).await;
            let plugin = self.writers[w].plugin().info.label();
            self.report
                .metrics
                .plugin_call(&plugin, "write", called.elapsed());
            if let Err(e) = &result {
                self.report
                    .metrics
                    .plugin_failure(&plugin, e.func(), e.kind());
            }
            match result {
                Ok(rejections) => {
                    return Ok(rejections.into_iter().map(|r| (r.row, r.reason)).collect());
                }
                Err(e) if e.is_crash() && e.func() == "write" => {
                    if rows.count <= 1 {
                        tracing::warn!(pipeline = %self.config.name, error = %e, "a row crashes a writer plugin; dead-lettering its message");
                        return Ok((0..rows.count).map(|r| (r, e.to_string())).collect());
                    }
                    let mid = rows.count / 2;
                    let (left, right) = (
                        spans.slice(rows, 0, mid),
                        spans.slice(rows, mid, rows.count),
                    );
                    let left_spans = spans.sub(0, mid);
                    let right_spans = spans.sub(mid, rows.count);
                    let mut out = Box::pin(self.write(w, &left, &left_spans, shutdown)).await?;
                    let right_out = Box::pin(self.write(w, &right, &right_spans, shutdown)).await?;
                    out.extend(right_out.into_iter().map(|(r, reason)| (r + mid, reason)));
                    return Ok(out);
                }
                Err(e) => self.stall("write", "writing", &e, shutdown).await?,
            }
        }
    }

    /// Handles one batch end to end. Returns once its messages are acked (or
    /// dead-lettered and acked).
    async fn process(
        &mut self,
        session: &Session,
        received: Vec<Received>,
        messages: Vec<Message>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Stop> {
        let started = Instant::now();
        self.report.metrics.received(messages.len() as u64);
        let (decoded, mut refusals, spans) = loop {
            let (decoded, refusals) = self.decode(&messages, shutdown).await?;
            match RowSpans::new(&self.types, &decoded.rows) {
                Ok(spans) => break (decoded, refusals, spans),
                Err(e) => {
                    // Only a plugin not built with the SDK (which checks rows
                    // against the schema) gets here: nothing can be written or
                    // attributed to a message, so the batch waits for an operator.
                    let error = CallError::Contract {
                        plugin: self.source.plugin().info.label(),
                        func: "decode",
                        reason: format!("its rows do not fit the schema it declared: {e}"),
                    };
                    self.stall("decode", "reading the decoded rows", &error, shutdown)
                        .await?;
                }
            }
        };
        let owners = batch::row_owners(&decoded.outcomes);
        let mut rows_written = 0u64;
        if decoded.rows.count > 0 {
            for w in 0..self.writers.len() {
                let rejected = self.write(w, &decoded.rows, &spans, shutdown).await?;
                let written = u64::from(decoded.rows.count) - rejected.len() as u64;
                rows_written += written;
                let plugin = self.writers[w].plugin().info.label();
                self.report.metrics.rows_written(&plugin, written);
                self.report
                    .metrics
                    .rows_rejected(&plugin, rejected.len() as u64);
                for (row, reason) in rejected {
                    let message = owners[row as usize] as usize;
                    let refusal = refusals[message].get_or_insert_with(|| Refusal {
                        stage: "write",
                        plugin: plugin.clone(),
                        reason: String::new(),
                    });
                    if !refusal.reason.is_empty() {
                        refusal.reason.push_str("; ");
                    }
                    // The header names the first writer that refused; a later
                    // writer's reason says whose it is.
                    if refusal.plugin != plugin {
                        refusal.reason.push_str(&format!("{plugin}: "));
                    }
                    refusal.reason.push_str(&format!("row {row}: {reason}"));
                }
            }
        }
        self.backoff.reset();

        let letters: Vec<DeadLetter> = refusals
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.as_ref().map(|r| DeadLetter {
                    message: &messages[i],
                    received: &received[i],
                    pipeline: &self.config.name,
                    stage: r.stage,
                    plugin: &r.plugin,
                    reason: r.reason.clone(),
                })
            })
            .collect();
        if !letters.is_empty() {
            session
                .dead_letter(&self.config.dead_letter, &letters, &self.report.metrics)
                .await?;
            for letter in &letters {
                self.report.metrics.dead_lettered(letter.stage, 1);
                tracing::warn!(
                    pipeline = %self.config.name,
                    stage = letter.stage,
                    plugin = letter.plugin,
                    reason = %letter.logged_reason(),
                    "message dead-lettered"
                );
            }
        }
        let last = received.last().expect("a batch is never empty").tag;
        session.ack_through(last).await?;
        self.report.metrics.acked(messages.len() as u64);
        self.report.metrics.batch(messages.len(), started.elapsed());
        self.report.health.beat(&self.config.name, self.index);
        tracing::debug!(
            pipeline = %self.config.name,
            consumer = self.index,
            messages = messages.len(),
            rows = decoded.rows.count,
            rows_written,
            dead_lettered = letters.len(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "batch acked"
        );
        Ok(())
    }
}

/// Resolves once shutdown is asked for.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, not in a caller's
    // `select!` arm.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Runs one consumer until shutdown: session after session, batch after batch.
async fn run_consumer(mut worker: Worker, mut shutdown: watch::Receiver<bool>) {
    let name = worker.config.name.clone();
    let mut reconnect = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    // Connect to the stores before taking messages: a daemon that reports ready
    // has its writers open.
    if worker.prepare(&mut shutdown).await.is_ok() {
        loop {
            if *shutdown.borrow() {
                break;
            }
            match consume(&mut worker, &mut shutdown, &mut reconnect).await {
                Ok(()) | Err(Stop::Shutdown) => break,
                Err(Stop::Session(e)) => {
                    let why = format!("RabbitMQ session lost: {e:#}");
                    worker
                        .report
                        .health
                        .consumer_down(&name, worker.index, &why);
                    worker.report.metrics.connected(worker.index, false);
                    tracing::warn!(pipeline = %name, consumer = worker.index, error = format!("{e:#}"), retry_in = ?reconnect.peek(), "RabbitMQ session lost; unacked messages return to the queue; reconnecting");
                    let health = &worker.report.health;
                    let beat = || health.beat(&name, worker.index);
                    if reconnect.wait(&mut shutdown, beat).await.is_err() {
                        break;
                    }
                    worker.report.metrics.reconnected();
                }
            }
        }
    }
    worker.report.metrics.connected(worker.index, false);
    tracing::info!(pipeline = %name, consumer = worker.index, "consumer stopped");
}

/// How long a filling batch lets deliveries pile up after one arrives, before
/// taking them all. Waiting on the consumer for each delivery costs a wake-up of
/// this task by lapin's I/O thread per message (a futex call on each side and a
/// context switch, on a loaded machine more CPU than the message's own handling);
/// with this pause one wake-up takes every message that came meanwhile (about 40
/// at 40,000 msg/s). A batch waits at most this much longer to fill, and never
/// past its `max_wait`.
const COALESCE: Duration = Duration::from_millis(1);

/// Adds what the consumer yielded to the batch: a delivery, or the error or end
/// of the consumer, which end the session.
fn take(
    next: Option<Result<lapin::message::Delivery, lapin::Error>>,
    received: &mut Vec<Received>,
    messages: &mut Vec<Message>,
) -> Result<(), Stop> {
    match next {
        Some(Ok(delivery)) => {
            let (r, m) = crate::queue_input::receive(delivery);
            received.push(r);
            messages.push(m);
            Ok(())
        }
        Some(Err(e)) => Err(Stop::Session(e.into())),
        None => Err(Stop::Session(anyhow::anyhow!(
            "the broker ended the consumer"
        ))),
    }
}

/// Fills a batch that has its first message, until it holds `max_messages`,
/// `deadline` passes or shutdown is asked for (then returns `true`).
async fn fill(
    worker: &mut Worker,
    stream: &mut lapin::Consumer,
    received: &mut Vec<Received>,
    messages: &mut Vec<Message>,
    deadline: tokio::time::Instant,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, Stop> {
    use futures::FutureExt as _;
    use tokio::time::{Instant, sleep_until};
    let max = worker.config.batch.max_messages;
    let mut beat_due = Instant::now() + IDLE_BEAT;
    while messages.len() < max {
        // Take what has arrived, without asking to be woken for it.
        while messages.len() < max {
            match stream.next().now_or_never() {
                None => break,
                Some(next) => take(next, received, messages)?,
            }
        }
        let now = Instant::now();
        if messages.len() >= max || now >= deadline {
            break;
        }
        if now >= beat_due {
            worker.report.health.beat(&worker.config.name, worker.index);
            beat_due = now + IDLE_BEAT;
        }
        // Nothing more yet: wait for the next delivery, then let others join it.
        tokio::select! {
            biased;
            _ = stopped(shutdown) => return Ok(true),
            next = stream.next() => take(next, received, messages)?,
            _ = sleep_until(deadline.min(beat_due)) => continue,
        }
        if messages.len() < max {
            tokio::select! {
                biased;
                _ = stopped(shutdown) => return Ok(true),
                _ = sleep_until(deadline.min(Instant::now() + COALESCE)) => {}
            }
        }
    }
    Ok(false)
}

/// One AMQP session: consume batches until shutdown or a session error.
async fn consume(
    worker: &mut Worker,
    shutdown: &mut watch::Receiver<bool>,
    reconnect: &mut Backoff,
) -> Result<(), Stop> {
    let (session, mut stream) = Session::open(&worker.config, worker.index, &worker.amqp).await?;
    worker
        .report
        .health
        .consumer_up(&worker.config.name, worker.index);
    worker.report.metrics.connected(worker.index, true);
    tracing::info!(pipeline = %worker.config.name, consumer = worker.index, queue = %worker.config.queue.name, "consuming");
    let max_wait = worker.config.batch.max_wait;
    loop {
        // Wait for the first message of a batch, or for shutdown, telling the
        // health state now and then that an idle consumer is alive.
        let first = tokio::select! {
            d = stream.next() => d,
            _ = tokio::time::sleep(IDLE_BEAT) => {
                worker.report.health.beat(&worker.config.name, worker.index);
                continue;
            }
            _ = stopped(shutdown) => {
                session.cancel().await.ok();
                session.close().await;
                return Ok(());
            }
        };
        let max = worker.config.batch.max_messages;
        let (mut received, mut messages) = (Vec::with_capacity(max), Vec::with_capacity(max));
        take(first, &mut received, &mut messages)?;
        let stopping = fill(
            worker,
            &mut stream,
            &mut received,
            &mut messages,
            tokio::time::Instant::now() + max_wait,
            shutdown,
        )
        .await?;
        if stopping {
            // Stop the flow first, then finish what is in hand.
            session.cancel().await.ok();
        }
        worker.refresh_plugins().await;
        match worker.process(&session, received, messages, shutdown).await {
            // Only a session that got a batch through resets the reconnect backoff:
            // one that opens and fails on every batch backs off like a failed
            // connection.
            Ok(()) => reconnect.reset(),
            Err(Stop::Shutdown) => {
                session.close().await;
                return Err(Stop::Shutdown);
            }
            Err(e) => return Err(e),
        }
        if stopping || *shutdown.borrow() {
            session.cancel().await.ok();
            session.close().await;
            return Ok(());
        }
    }
}
