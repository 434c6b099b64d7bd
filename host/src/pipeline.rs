//! One pipeline: consumers that take batches from the queue, decode them with the
//! source plugin, write them with every writer plugin, dead-letter what was
//! refused, and ack only what every writer committed.
//!
//! Each consumer task owns one AMQP session (its channels on the pipeline's shared
//! connection) and its own plugin instances, and
//! handles one batch at a time, so when a batch is done every earlier delivery of
//! its channel is settled and one `ack(multiple)` covers it. Several consumers
//! keep several batches in flight (decoding on one core while another batch is
//! being written). Failures are handled here, in one place (the rules that take
//! a failing batch apart are in `pipeline/recovery.rs`, tested there with fakes):
//!
//! - a writer's retriable error, or any error that is not about the data (a store
//!   refusing to open, an invalid configuration), is retried with backoff while
//!   the messages stay unacked; the pipeline stalls but loses nothing, and the
//!   stall shows (a log line when it begins and when it ends, the
//!   `sluice_consumer_stalled` gauge, `/readyz`);
//! - a plugin that crashes on a batch (trap, timeout, memory) has the batch split
//!   in halves until the message or row that crashes it is found; that one is
//!   dead-lettered with the crash as its reason and the rest goes on;
//! - a writer that fails a batch with its own non-retriable error twice in a row
//!   gets the same treatment: whatever the error, if it is about some rows, the
//!   halves that hold none of them commit and the rows are found. Rows are
//!   dead-lettered that way only with evidence that the store takes other rows
//!   (a piece of the same batch committed, or, for a batch of one row, the
//!   writer committed since it last dead-lettered a row without such evidence).
//!   Without it the failure may be the store's (a dropped table, a revoked
//!   grant): the batch waits, stalled, and takes in the messages that arrived
//!   meanwhile, whose rows then tell the store's failure from a poison row;
//! - a lost broker connection drops the session; the broker requeues what was
//!   not acked, and the consumer reconnects with backoff. Rows written but not
//!   acked are written again on redelivery, and the writers' idempotence on the
//!   key columns keeps one copy.

mod batch;
mod recovery;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt as _, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::batch::RowSpans;
use crate::admin::{Health, PluginInUse};
use crate::config::PipelineConfig;
use crate::metrics::PipelineMetrics;
use crate::plugin_runtime::{
    CallError, DecodedBatch, LoadedPlugin, Message, MessageOutcome, PluginRuntime, RowBatch,
    SourceInstance, WriterInstance,
};
use crate::queue_input::{
    DeadLetter, Publisher, Received, RecordLetter, Session, SharedConnection,
};
use crate::stream_input::{StreamDeliveries, StreamSession};

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

/// How often consumer 0 asks the broker how many messages wait in the queue
/// (`sluice_queue_ready_messages`, `/status`).
const DEPTH_EVERY: Duration = Duration::from_secs(2);

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
    // A queue has `consumers` consumers; a stream pipeline one per stream
    // (partition) it reads.
    let inputs: Vec<Option<Arc<str>>> = match &config.queue.stream {
        Some(stream) => stream
            .streams
            .iter()
            .map(|s| Some(Arc::from(s.as_str())))
            .collect(),
        None => vec![None; config.consumers as usize],
    };
    inputs
        .into_iter()
        .enumerate()
        .map(|(index, stream)| {
            reporting
                .health
                .consumer_down(&config.name, index, "starting");
            let mut consumer = Consumer::new(
                config.clone(),
                runtime.clone(),
                plugins.clone(),
                reporting.clone(),
                amqp.clone(),
                index,
            );
            consumer.stream = stream;
            tokio::spawn(run_consumer(consumer, shutdown.clone()))
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
    /// A writer failed on every piece of the batch it was given, which cannot
    /// tell a poison row from a store that takes no row: wait, and try again
    /// with more messages.
    #[error("{0}")]
    Inconclusive(CallError),
}

/// Exponential backoff between `initial` and `max`, with jitter: each wait is
/// drawn between half the nominal delay and the whole of it, so that daemons
/// that lost the same broker or database at the same moment do not come back
/// in lockstep (and their retries do not land on a recovering server at once).
struct Backoff {
    initial: Duration,
    max: Duration,
    /// The nominal delay of the next wait; doubles after each wait.
    next: Duration,
    /// The next wait itself: `next` with its jitter, drawn in advance so that
    /// the log line announcing a retry says when it comes.
    pending: Duration,
}

/// `delay` less a random part of up to half of it.
fn jittered(delay: Duration) -> Duration {
    let mut bytes = [0u8; 4];
    // Without randomness (it never fails on Linux), no jitter.
    let draw = getrandom::getrandom(&mut bytes).map_or(u32::MAX, |()| u32::from_le_bytes(bytes));
    delay.mul_f64(0.5 + 0.5 * f64::from(draw) / f64::from(u32::MAX))
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
            pending: jittered(initial),
        }
    }

    fn reset(&mut self) {
        self.next = self.initial;
        self.pending = jittered(self.next);
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
        let deadline = tokio::time::Instant::now() + self.pending;
        self.next = (self.next * 2).min(self.max);
        self.pending = jittered(self.next);
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

    /// How long the next wait will be.
    fn peek(&self) -> Duration {
        self.pending
    }

    /// Makes the next delay at least `floor` (within the maximum).
    fn at_least(&mut self, floor: Duration) {
        let floor = floor.min(self.max);
        if self.next < floor {
            self.next = floor;
            self.pending = jittered(floor);
        }
    }
}

/// The shortest wait after an error that retrying soon cannot fix (a fatal
/// plugin error, a broken contract): such errors need an operator, and retrying
/// them fast only floods the log.
const SLOW_RETRY: Duration = Duration::from_secs(5);

/// What a consumer owns: its plugin instances and its place in the pipeline.
struct Consumer {
    config: Arc<PipelineConfig>,
    runtime: Arc<PluginRuntime>,
    report: Reporting,
    /// The pipeline's AMQP connection, shared with its other consumers.
    amqp: SharedConnection,
    index: usize,
    /// The stream this consumer reads, in a stream pipeline.
    stream: Option<Arc<str>>,
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
    /// Per writer: whether it committed since it last dead-lettered a row
    /// without a committed piece of the same batch to vouch for the store.
    proven: Vec<bool>,
    backoff: Backoff,
    /// The stall under way, if any.
    stall: Option<Stall>,
}

/// A consumer's batch that keeps failing.
struct Stall {
    since: Instant,
    stage: &'static str,
    attempts: u32,
}

/// The outcome of one message after decoding: its rows or why it was refused.
struct Refusal {
    stage: &'static str,
    plugin: String,
    reason: String,
}

impl Consumer {
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
        report_plugins(
            &report,
            &config.name,
            index,
            &plugins.source,
            &plugins.writers,
        );
        Self {
            config,
            runtime,
            report,
            amqp,
            index,
            stream: None,
            source,
            writer_plugins: plugins.writers.clone(),
            plugins_rx,
            writers: Vec::new(),
            schema: None,
            types: Vec::new(),
            proven: Vec::new(),
            backoff,
            stall: None,
        }
    }

    /// Configures the source and opens every writer, retrying with backoff until
    /// they are up (or shutdown).
    async fn prepare(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), Stop> {
        loop {
            let result = match self.ensure_plugins().await {
                Ok(()) => self.open_writers().await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    self.recovered();
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
        report_plugins(
            &self.report,
            &self.config.name,
            self.index,
            self.source.plugin(),
            &self.writer_plugins,
        );
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

    /// Configures the source, which declares its schema, and creates the
    /// writer instances for that schema (unopened). Does nothing once they
    /// exist; [`refresh_plugins`](Self::refresh_plugins) drops them when the
    /// schema changes.
    async fn ensure_plugins(&mut self) -> Result<(), CallError> {
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
        // Opened writers vouch for their store until they dead-letter a row
        // on its own (see `write`).
        self.proven = vec![true; self.writers.len()];
        Ok(())
    }

    /// Waits out a failure that is not about the data: the messages stay unacked
    /// and the same batch is tried again. The first wait of a stall says so
    /// (log, metric, `/readyz`); [`Consumer::recovered`] ends it.
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
        self.report
            .health
            .backing_off(&self.config.name, self.index, retry_in);
        let why = format!("{stage}: {what} failed: {error}");
        self.report
            .health
            .stalled(&self.config.name, self.index, Some(&why));
        match &mut self.stall {
            Some(stall) => stall.attempts += 1,
            None => {
                self.stall = Some(Stall {
                    since: Instant::now(),
                    stage,
                    attempts: 1,
                });
                self.report.metrics.stalled(self.index, Some(stage));
                tracing::warn!(pipeline = %self.config.name, consumer = self.index, stage, error = %error, "pipeline stalled: a batch cannot be finished; its messages wait in the queue");
            }
        }
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

    /// A batch got through (or the plugins opened): the stall, if any, is over.
    fn recovered(&mut self) {
        self.backoff.reset();
        if let Some(stall) = self.stall.take() {
            self.report.metrics.stalled(self.index, None);
            self.report
                .health
                .stalled(&self.config.name, self.index, None);
            tracing::info!(
                pipeline = %self.config.name,
                consumer = self.index,
                stage = stall.stage,
                attempts = stall.attempts,
                stalled_s = stall.since.elapsed().as_secs_f64(),
                "pipeline recovered from its stall"
            );
        }
    }

    /// Decodes a batch, isolating messages that crash the source
    /// ([`recovery::decode`]).
    async fn decode(
        &mut self,
        messages: &[Message],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(DecodedBatch, Vec<Option<Refusal>>), Stop> {
        let mut source = ConsumerSource {
            consumer: self,
            shutdown,
        };
        recovery::decode(&mut source, messages).await
    }

    /// Writes `rows` with writer `w` until it commits, isolating rows that
    /// fail it ([`recovery::write`]). Returns the rejected rows (indices into
    /// `rows`) with their reasons.
    async fn write(
        &mut self,
        w: usize,
        rows: &RowBatch,
        spans: &RowSpans,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Vec<(u32, String)>, Stop> {
        let mut writer = ConsumerWriter {
            consumer: self,
            w,
            shutdown,
        };
        recovery::write(&mut writer, rows, spans).await
    }

    /// One call of writer `w`, measured.
    async fn call_write(
        &mut self,
        w: usize,
        rows: &RowBatch,
    ) -> Result<Vec<(u32, String)>, CallError> {
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
        result.map(|rejections| rejections.into_iter().map(|r| (r.row, r.reason)).collect())
    }

    /// Handles one batch end to end. Returns once its messages are acked (or
    /// dead-lettered and acked).
    async fn process(
        &mut self,
        input: &mut Input<'_>,
        received: &[Received],
        messages: &[Message],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Stop> {
        let started = Instant::now();
        self.report.metrics.received(messages.len() as u64);
        self.report
            .health
            .holding(&self.config.name, self.index, messages.len());
        let (decoded, mut refusals, spans) = loop {
            let (decoded, refusals) = self.decode(messages, shutdown).await?;
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
        self.recovered();

        let source = self.source.plugin().info.label();
        let mut letters: Vec<DeadLetter> = refusals
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
                    record: None,
                })
            })
            .collect();
        letters.extend(record_letters(
            &decoded.outcomes,
            &refusals,
            messages,
            received,
            &self.config.name,
            &source,
        ));
        if !letters.is_empty() {
            input
                .dead_letter(&self.config.dead_letter, &letters, &self.report.metrics)
                .await?;
            for letter in &letters {
                self.report.metrics.dead_lettered(letter.stage, 1);
                match &letter.record {
                    None => tracing::warn!(
                        pipeline = %self.config.name,
                        stage = letter.stage,
                        plugin = letter.plugin,
                        reason = %letter.logged_reason(),
                        "message dead-lettered"
                    ),
                    Some(record) => tracing::warn!(
                        pipeline = %self.config.name,
                        stage = letter.stage,
                        plugin = letter.plugin,
                        record_index = record.index,
                        message_id = letter.message.message_id.as_deref().unwrap_or(""),
                        reason = %letter.logged_reason(),
                        "record dead-lettered"
                    ),
                }
            }
        }
        let last = received.last().expect("a batch is never empty").tag;
        input.settle(last).await?;
        if let Some(stream) = input.stream() {
            self.report.metrics.stream_offset(stream, last);
        }
        self.report.metrics.acked(messages.len() as u64);
        self.report.metrics.batch(messages.len(), started.elapsed());
        self.report.health.holding(&self.config.name, self.index, 0);
        self.report.health.beat(&self.config.name, self.index);
        tracing::debug!(
            pipeline = %self.config.name,
            consumer = self.index,
            messages = messages.len(),
            rows = decoded.rows.count,
            rows_written,
            dead_lettered = letters.len(),
            first = received[0].tag,
            last,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "batch acked"
        );
        Ok(())
    }
}

/// A consumer's source as the recovery rules call it: its instance, measured,
/// and the consumer's stall.
struct ConsumerSource<'a> {
    consumer: &'a mut Consumer,
    shutdown: &'a mut watch::Receiver<bool>,
}

impl recovery::Source for ConsumerSource<'_> {
    async fn configure(&mut self) -> Result<(), CallError> {
        self.consumer.ensure_plugins().await
    }

    async fn decode(&mut self, messages: &[Message]) -> Result<DecodedBatch, CallError> {
        let consumer = &mut *self.consumer;
        let called = Instant::now();
        let result = consumer.source.decode(messages).await;
        let plugin = consumer.source.plugin().info.label();
        let metrics = &consumer.report.metrics;
        metrics.plugin_call(&plugin, "decode", called.elapsed());
        if let Err(e) = &result {
            metrics.plugin_failure(&plugin, e.func(), e.kind());
        }
        result
    }

    fn label(&self) -> String {
        self.consumer.source.plugin().info.label()
    }

    fn place(&self) -> (&str, usize) {
        (&self.consumer.config.name, self.consumer.index)
    }

    async fn stall(&mut self, what: &str, error: &CallError) -> Result<(), Stop> {
        self.consumer
            .stall("decode", what, error, self.shutdown)
            .await
    }
}

/// A consumer's writer `w` as the recovery rules call it.
struct ConsumerWriter<'a> {
    consumer: &'a mut Consumer,
    w: usize,
    shutdown: &'a mut watch::Receiver<bool>,
}

impl recovery::Writer for ConsumerWriter<'_> {
    async fn write(&mut self, rows: &RowBatch) -> Result<Vec<(u32, String)>, CallError> {
        self.consumer.call_write(self.w, rows).await
    }

    fn proven(&mut self) -> &mut bool {
        &mut self.consumer.proven[self.w]
    }

    fn place(&self) -> (&str, usize) {
        (&self.consumer.config.name, self.consumer.index)
    }

    async fn stall(&mut self, what: &str, error: &CallError) -> Result<(), Stop> {
        self.consumer
            .stall("write", what, error, self.shutdown)
            .await
    }
}

/// Dead letters for the records a source rejected one by one (`partial`
/// outcomes): each carries the record's bytes and its index, and is published
/// (confirmed) with the batch's other dead letters, before the message is acked
/// with its good rows landed. A message dead-lettered whole anyway (a writer
/// refused one of its rows) carries its bad records inside it: they get no
/// letter of their own, so nothing is dead-lettered twice.
fn record_letters<'a>(
    outcomes: &'a [MessageOutcome],
    refusals: &[Option<Refusal>],
    messages: &'a [Message],
    received: &'a [Received],
    pipeline: &'a str,
    source: &'a str,
) -> Vec<DeadLetter<'a>> {
    let mut letters = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        let MessageOutcome::Partial(partial) = outcome else {
            continue;
        };
        if refusals[i].is_some() {
            continue;
        }
        letters.extend(partial.rejected.iter().map(|r| DeadLetter {
            message: &messages[i],
            received: &received[i],
            pipeline,
            stage: "decode",
            plugin: source,
            reason: format!("record {}: {}", r.index, r.reason),
            record: Some(RecordLetter {
                index: r.index,
                body: &r.body,
            }),
        }));
    }
    letters
}

/// Tells the health state which plugins consumer `index` runs.
fn report_plugins(
    report: &Reporting,
    pipeline: &str,
    index: usize,
    source: &LoadedPlugin,
    writers: &[Arc<LoadedPlugin>],
) {
    let in_use = |role: &str, p: &LoadedPlugin| PluginInUse {
        role: role.to_owned(),
        name: p.info.name.clone(),
        version: p.info.version.clone(),
        sha256: p.sha256.clone(),
    };
    let plugins = std::iter::once(in_use("source", source))
        .chain(writers.iter().map(|w| in_use("writer", w)))
        .collect();
    report.health.plugins_in_use(pipeline, index, plugins);
}

/// Consumer 0 reads the queue's depth when it is due (never more than once per
/// [`DEPTH_EVERY`]); a failure is only logged: it is the session's to notice.
/// (A `Consumer` is not `Sync`: this takes only what it reads.)
async fn read_depth(
    (config, index, metrics): (&PipelineConfig, usize, &PipelineMetrics),
    session: &Session,
    due: &mut tokio::time::Instant,
) {
    let now = tokio::time::Instant::now();
    if index != 0 || now < *due {
        return;
    }
    *due = now + DEPTH_EVERY;
    match session.queue_ready(&config.queue.name).await {
        Ok(ready) => metrics.queue_ready(ready),
        Err(e) => {
            tracing::debug!(pipeline = %config.name, error = %format!("{e:#}"), "could not read the queue's depth")
        }
    }
}

/// Resolves once shutdown is asked for.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not `Send`: drop it here, not in a caller's
    // `select!` arm.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Runs one consumer until shutdown: session after session, batch after batch.
async fn run_consumer(mut consumer: Consumer, mut shutdown: watch::Receiver<bool>) {
    let name = consumer.config.name.clone();
    let mut reconnect = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    // Connect to the stores before taking messages: a daemon that reports ready
    // has its writers open.
    if consumer.prepare(&mut shutdown).await.is_ok() {
        loop {
            if *shutdown.borrow() {
                break;
            }
            match consume(&mut consumer, &mut shutdown, &mut reconnect).await {
                Ok(()) | Err(Stop::Shutdown) => break,
                Err(Stop::Inconclusive(_)) => {
                    unreachable!("consume() waits out an inconclusive batch itself")
                }
                Err(Stop::Session(e)) => {
                    let error = crate::telemetry::error_chain(e.as_ref());
                    let why = format!("RabbitMQ session lost: {error}");
                    consumer
                        .report
                        .health
                        .consumer_down(&name, consumer.index, &why);
                    consumer.report.metrics.connected(consumer.index, false);
                    tracing::warn!(pipeline = %name, consumer = consumer.index, error, retry_in = ?reconnect.peek(), "RabbitMQ session lost; unacked messages return to the queue; reconnecting");
                    let health = &consumer.report.health;
                    let beat = || health.beat(&name, consumer.index);
                    if reconnect.wait(&mut shutdown, beat).await.is_err() {
                        break;
                    }
                    consumer.report.metrics.reconnected();
                }
            }
        }
    }
    consumer.report.metrics.connected(consumer.index, false);
    tracing::info!(pipeline = %name, consumer = consumer.index, "consumer stopped");
}

/// How long a filling batch lets deliveries pile up after one arrives, before
/// taking them all. Waiting on the consumer for each delivery costs a wake-up of
/// this task by lapin's I/O thread per message (a futex call on each side and a
/// context switch, on a loaded machine more CPU than the message's own handling);
/// with this pause one wake-up takes every message that came meanwhile (about 40
/// at 40,000 msg/s). A batch waits at most this much longer to fill, and never
/// past its `max_wait`.
const COALESCE: Duration = Duration::from_millis(1);

/// How often a stream consumer measures its lag.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// Where a consumer's batches come from, and how they are settled.
enum Input<'a> {
    /// A queue: acked on its consuming channel.
    Queue(&'a Session),
    /// A stream: its offset stored; dead letters go through the pipeline's
    /// AMQP connection.
    Stream(&'a mut StreamSession, &'a Publisher),
}

impl Input<'_> {
    /// Publishes dead letters and waits for the broker's confirms.
    async fn dead_letter(
        &self,
        dl: &crate::config::DeadLetterConfig,
        letters: &[DeadLetter<'_>],
        metrics: &PipelineMetrics,
    ) -> anyhow::Result<()> {
        match self {
            Input::Queue(session) => session.dead_letter(dl, letters, metrics).await,
            Input::Stream(_, publisher) => publisher.dead_letter(dl, letters, metrics).await,
        }
    }

    /// Settles every message up to `last` (a delivery tag or an offset).
    async fn settle(&mut self, last: u64) -> anyhow::Result<()> {
        match self {
            Input::Queue(session) => session.ack_through(last).await,
            Input::Stream(session, _) => session.store_offset(last).await,
        }
    }

    /// The stream read, if any.
    fn stream(&self) -> Option<&str> {
        match self {
            Input::Queue(_) => None,
            Input::Stream(session, _) => Some(session.stream()),
        }
    }

    /// For a stream: measures how far the stored offset is behind its end,
    /// for `/metrics`.
    async fn measure_lag(&mut self, metrics: &PipelineMetrics) {
        if let Input::Stream(session, _) = self
            && let Some(end) = session.end().await
        {
            let done = session.stored().map_or(0, |o| o + 1);
            metrics.stream_lag(session.stream(), (end + 1).saturating_sub(done));
        }
    }

    /// Stops the flow of new messages (those in hand are finished).
    async fn stop_flow(&self) {
        if let Input::Queue(session) = self {
            session.cancel().await.ok();
        }
    }
}

/// Messages as a consumer takes them: a queue's deliveries or a stream's.
trait Deliveries {
    /// The next message if one has arrived, without waiting.
    fn try_next(&mut self) -> Option<Result<(Received, Message), Stop>>;

    /// Waits for the next message.
    fn next(&mut self) -> impl Future<Output = Result<(Received, Message), Stop>> + Send;
}

impl Deliveries for lapin::Consumer {
    fn try_next(&mut self) -> Option<Result<(Received, Message), Stop>> {
        StreamExt::next(self).now_or_never().map(delivered)
    }

    async fn next(&mut self) -> Result<(Received, Message), Stop> {
        delivered(StreamExt::next(self).await)
    }
}

impl Deliveries for StreamDeliveries {
    fn try_next(&mut self) -> Option<Result<(Received, Message), Stop>> {
        StreamDeliveries::try_next(self).map(|r| r.map_err(Stop::Session))
    }

    async fn next(&mut self) -> Result<(Received, Message), Stop> {
        StreamDeliveries::next(self).await.map_err(Stop::Session)
    }
}

/// What a lapin consumer yielded: a delivery, or the error or end of the
/// consumer, which end the session.
fn delivered(
    next: Option<Result<lapin::message::Delivery, lapin::Error>>,
) -> Result<(Received, Message), Stop> {
    match next {
        Some(Ok(delivery)) => Ok(crate::queue_input::receive(delivery)),
        Some(Err(e)) => Err(Stop::Session(e.into())),
        None => Err(Stop::Session(anyhow::anyhow!(
            "the broker ended the consumer"
        ))),
    }
}

/// Adds a message to the batch.
fn push(next: (Received, Message), received: &mut Vec<Received>, messages: &mut Vec<Message>) {
    received.push(next.0);
    messages.push(next.1);
}

/// Fills a batch that has its first message, until it holds `max_messages`,
/// `deadline` passes or shutdown is asked for (then returns `true`).
async fn fill(
    consumer: &mut Consumer,
    deliveries: &mut impl Deliveries,
    received: &mut Vec<Received>,
    messages: &mut Vec<Message>,
    deadline: tokio::time::Instant,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, Stop> {
    use tokio::time::{Instant, sleep_until};
    let max = consumer.config.batch.max_messages;
    let mut beat_due = Instant::now() + IDLE_BEAT;
    while messages.len() < max {
        // Take what has arrived, without asking to be woken for it.
        while messages.len() < max {
            match deliveries.try_next() {
                None => break,
                Some(next) => push(next?, received, messages),
            }
        }
        let now = Instant::now();
        if messages.len() >= max || now >= deadline {
            break;
        }
        if now >= beat_due {
            consumer
                .report
                .health
                .beat(&consumer.config.name, consumer.index);
            beat_due = now + IDLE_BEAT;
        }
        // Nothing more yet: wait for the next delivery, then let others join it.
        tokio::select! {
            biased;
            _ = stopped(shutdown) => return Ok(true),
            next = deliveries.next() => push(next?, received, messages),
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

/// One session: a queue's AMQP session, or a stream's subscription with the
/// AMQP channel its dead letters go through. Consumes batches until shutdown or
/// a session error.
async fn consume(
    consumer: &mut Consumer,
    shutdown: &mut watch::Receiver<bool>,
    reconnect: &mut Backoff,
) -> Result<(), Stop> {
    let Some(stream) = consumer.stream.clone() else {
        let (session, mut deliveries) =
            Session::open(&consumer.config, consumer.index, &consumer.amqp).await?;
        consumer.consuming(&consumer.config.queue.name.clone());
        let mut input = Input::Queue(&session);
        let outcome = batches(consumer, &mut input, &mut deliveries, shutdown, reconnect).await;
        match outcome {
            Ok(()) | Err(Stop::Shutdown) => {
                session.cancel().await.ok();
                session.close().await;
            }
            // The session is broken: what was not acked returns to the queue.
            Err(_) => {}
        }
        return outcome;
    };
    // The stream first (created if it is declared and missing), then what is
    // bound to it and the dead-letter side.
    let (mut session, mut deliveries) = StreamSession::open(&consumer.config, &stream).await?;
    let publisher = match Publisher::open(&consumer.config, &consumer.amqp).await {
        Ok(publisher) => publisher,
        Err(e) => {
            session.close().await;
            return Err(Stop::Session(e));
        }
    };
    consumer.consuming(&stream);
    let mut input = Input::Stream(&mut session, &publisher);
    let outcome = batches(consumer, &mut input, &mut deliveries, shutdown, reconnect).await;
    // What was settled is stored; what was not is read again after a restart
    // or a reconnect.
    session.close().await;
    publisher.close().await;
    outcome
}

impl Consumer {
    /// A session opened: the consumer is up.
    fn consuming(&mut self, from: &str) {
        self.report
            .health
            .consumer_up(&self.config.name, self.index);
        self.report.metrics.connected(self.index, true);
        tracing::info!(
            pipeline = %self.config.name,
            consumer = self.index,
            kind = self.config.queue.kind.noun(),
            from,
            "consuming"
        );
    }
}

/// Takes batches from `deliveries` and processes them, until shutdown
/// (`Ok`, or `Stop::Shutdown` while a batch waited) or a session error.
async fn batches(
    consumer: &mut Consumer,
    input: &mut Input<'_>,
    deliveries: &mut impl Deliveries,
    shutdown: &mut watch::Receiver<bool>,
    reconnect: &mut Backoff,
) -> Result<(), Stop> {
    let max_wait = consumer.config.batch.max_wait;
    let mut lag_due = tokio::time::Instant::now();
    let mut depth_due = tokio::time::Instant::now();
    loop {
        if input.stream().is_some() && tokio::time::Instant::now() >= lag_due {
            input.measure_lag(&consumer.report.metrics).await;
            lag_due = tokio::time::Instant::now() + LAG_EVERY;
        }
        if let Input::Queue(session) = &*input {
            let reader = (&*consumer.config, consumer.index, &consumer.report.metrics);
            read_depth(reader, session, &mut depth_due).await;
        }
        // Wait for the first message of a batch, or for shutdown, telling the
        // health state now and then that an idle consumer is alive.
        let first = tokio::select! {
            d = deliveries.next() => d?,
            _ = tokio::time::sleep(IDLE_BEAT) => {
                consumer.report.health.beat(&consumer.config.name, consumer.index);
                continue;
            }
            _ = stopped(shutdown) => return Ok(()),
        };
        let max = consumer.config.batch.max_messages;
        let (mut received, mut messages) = (Vec::with_capacity(max), Vec::with_capacity(max));
        push(first, &mut received, &mut messages);
        let stopping = fill(
            consumer,
            deliveries,
            &mut received,
            &mut messages,
            tokio::time::Instant::now() + max_wait,
            shutdown,
        )
        .await?;
        if stopping {
            // Stop the flow first, then finish what is in hand.
            input.stop_flow().await;
        }
        loop {
            consumer.refresh_plugins().await;
            match consumer
                .process(input, &received, &messages, shutdown)
                .await
            {
                // Only a session that got a batch through resets the reconnect
                // backoff: one that opens and fails on every batch backs off like
                // a failed connection.
                Ok(()) => {
                    reconnect.reset();
                    break;
                }
                Err(Stop::Inconclusive(error)) => {
                    let what = "writing (no row of the batch could be written alone)";
                    consumer.stall("write", what, &error, shutdown).await?;
                    // Take in what arrived meanwhile: rows that land show the
                    // store is fine, and the failing rows are then dead-lettered.
                    if !stopping {
                        while messages.len() < max {
                            match deliveries.try_next() {
                                None => break,
                                Some(next) => push(next?, &mut received, &mut messages),
                            }
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if stopping || *shutdown.borrow() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin_runtime::{PartialOutcome, RecordRejection};

    #[test]
    fn each_rejected_record_is_a_letter_unless_its_message_is_dead_lettered_whole() {
        let rejected = |index: u32, body: &str| RecordRejection {
            index,
            body: body.as_bytes().to_vec(),
            reason: "bad".into(),
        };
        let outcomes = vec![
            MessageOutcome::Partial(PartialOutcome {
                rows: 1,
                rejected: vec![rejected(1, "{x"), rejected(3, "7")],
            }),
            MessageOutcome::Partial(PartialOutcome {
                rows: 2,
                rejected: vec![rejected(0, "{y")],
            }),
            MessageOutcome::Rows(4),
        ];
        // A writer refused a row of message 1: it goes whole, its record with it.
        let refusals = vec![
            None,
            Some(Refusal {
                stage: "write",
                plugin: "w@1".into(),
                reason: "row 2: no".into(),
            }),
            None,
        ];
        let message = |id: &str| Message {
            body: b"whole".to_vec(),
            exchange: "x".into(),
            routing_key: "k".into(),
            headers: Vec::new(),
            content_type: None,
            content_encoding: Some("gzip".into()),
            message_id: Some(id.into()),
            timestamp: None,
            redelivered: false,
        };
        let messages = vec![message("m0"), message("m1"), message("m2")];
        let received: Vec<Received> = (1..=3)
            .map(|tag| Received {
                tag,
                properties: Default::default(),
                stream: None,
            })
            .collect();
        let letters = record_letters(&outcomes, &refusals, &messages, &received, "p", "s@2");
        let seen: Vec<String> = letters
            .iter()
            .map(|l| {
                let r = l.record.as_ref().expect("a record's letter");
                format!(
                    "{:?} #{} {:?} {} {:?}",
                    l.message.message_id,
                    r.index,
                    String::from_utf8_lossy(l.body()),
                    l.stage,
                    l.reason
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                r#"Some("m0") #1 "{x" decode "record 1: bad""#,
                r#"Some("m0") #3 "7" decode "record 3: bad""#,
            ]
        );
    }

    #[test]
    fn backoff_waits_between_half_and_all_of_a_doubling_delay() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let mut backoff = Backoff::new(initial, max);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            backoff.reset();
            let first = backoff.peek();
            assert!(first >= initial / 2 && first <= initial, "{first:?}");
            seen.insert(first);
        }
        assert!(
            seen.len() > 10,
            "the waits are spread, not in lockstep: {seen:?}"
        );
        backoff.at_least(Duration::from_secs(5));
        let capped = backoff.peek();
        assert!(capped >= max / 2 && capped <= max, "{capped:?}");
    }
}
