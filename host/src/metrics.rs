//! The daemon's metrics: one Prometheus registry, served as OpenMetrics text on
//! `/metrics` by [`crate::admin`], and typed handles to update it.
//!
//! [`Metrics`] holds the process-wide families; [`Metrics::pipeline`] gives a
//! cheap, cloneable [`PipelineMetrics`] that labels everything with the pipeline's
//! name. Each method here counts one kind of event: call it from the place that
//! writes that event's log line, so the log and the metric never disagree.
//!
//! Every name starts with `sluice_`; counters end in `_total`, and names carry
//! their unit (`_seconds`, `_messages`). Labels: `pipeline`, `consumer`, `writer`,
//! `plugin`, `func`, `stage`, `kind`, `outcome`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds of the batch size buckets, in messages: a batch holds 1 to
/// `max_messages` (at most 100 000 in practice).
const BATCH_SIZE_BUCKETS: [f64; 14] = [
    1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0, 25_000.0,
    50_000.0, 100_000.0,
];

/// Upper bounds of the batch latency buckets, in seconds: from 1 ms (a small
/// batch into a fast store) to 60 s (a batch that waited for retries).
const BATCH_SECONDS_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds of the plugin call buckets, in seconds: decoding a small batch
/// takes well under a millisecond, and a call is cut at `plugin_call_timeout`
/// (10 s by default, host waits not counted).
const CALL_SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
];

/// The stages a message is refused or retried at (label `stage`).
const STAGES: [&str; 2] = ["decode", "write"];

/// The outcome of loading one plugin file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoadOutcome {
    /// The plugin was compiled (or taken from the cache) and accepted.
    Loaded,
    /// The file was refused (not a component, wrong world, failed to compile).
    Refused,
}

impl LoadOutcome {
    fn as_str(self) -> &'static str {
        match self {
            LoadOutcome::Loaded => "loaded",
            LoadOutcome::Refused => "refused",
        }
    }
}

/// The outcome of a configuration or plugin reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReloadOutcome {
    /// The new configuration and plugins are running.
    Applied,
    /// The reload was refused; the running set was kept.
    Refused,
}

impl ReloadOutcome {
    fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Applied => "applied",
            ReloadOutcome::Refused => "refused",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabels {
    pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    pipeline: String,
    consumer: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    pipeline: String,
    stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriterLabels {
    pipeline: String,
    writer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    pipeline: String,
    plugin: String,
    func: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    pipeline: String,
    plugin: String,
    func: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    pipeline: String,
    plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoadLabels {
    plugin: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    pipeline: String,
    stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    pipeline: String,
    kind: String,
}

/// What gives way for a dead letter to fit the broker's frame (label `kind` of
/// `dead_letters_cut`).
const DEAD_LETTER_CUTS: [&str; 2] = ["reason", "headers"];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn batch_size_histogram() -> Histogram {
    Histogram::new(BATCH_SIZE_BUCKETS)
}

fn batch_seconds_histogram() -> Histogram {
    Histogram::new(BATCH_SECONDS_BUCKETS)
}

fn call_seconds_histogram() -> Histogram {
    Histogram::new(CALL_SECONDS_BUCKETS)
}

/// The registry and every metric family of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    received: Family<PipelineLabels, Counter>,
    acked: Family<PipelineLabels, Counter>,
    dead_lettered: Family<StageLabels, Counter>,
    rows_written: Family<WriterLabels, Counter>,
    rows_rejected: Family<WriterLabels, Counter>,
    batch_size: HistogramFamily<PipelineLabels>,
    batch_seconds: HistogramFamily<PipelineLabels>,
    call_seconds: HistogramFamily<CallLabels>,
    plugin_failures: Family<FailureLabels, Counter>,
    retries: Family<StageLabels, Counter>,
    connected: Family<ConsumerLabels, Gauge>,
    stalled: Family<ConsumerLabels, Gauge>,
    stalls: Family<StageLabels, Counter>,
    reconnects: Family<PipelineLabels, Counter>,
    plugin_loads: Family<LoadLabels, Counter>,
    reloads: Family<OutcomeLabels, Counter>,
    plugin_log_dropped: Family<PluginLabels, Counter>,
    dead_letters_cut: Family<KindLabels, Counter>,
    stream_offset: Family<StreamLabels, Gauge>,
    stream_lag: Family<StreamLabels, Gauge>,
    queue_ready: Family<PipelineLabels, Gauge>,
    /// Batches and their seconds, as the histograms count them, for
    /// [`Metrics::counts`] (a histogram's totals cannot be read back). Not
    /// registered: `/metrics` has them as `_count` and `_sum`.
    batches: Family<PipelineLabels, Counter>,
    batch_seconds_sum: Family<PipelineLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// The writers each pipeline has counted rows for, so that
    /// [`Metrics::counts`] can read their series (a family cannot be listed).
    writers: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

/// The daemon process's CPU time and memory, read from `/proc/self` at each
/// scrape (`sluice_process_cpu_seconds_total`,
/// `sluice_process_resident_memory_bytes`; left out where `/proc` is not), and
/// when its metrics began (`sluice_process_start_time_seconds`: a change is a
/// restart).
#[derive(Debug)]
struct ProcessCollector {
    /// Seconds since the Unix epoch.
    started: f64,
}

impl ProcessCollector {
    /// User plus system CPU time, in seconds.
    fn cpu_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name, in parentheses, may hold spaces: count from after it.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        (per_second > 0).then(|| ticks as f64 / per_second as f64)
    }

    /// Resident memory, in bytes.
    fn resident_bytes() -> Option<i64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf only reads a configuration value.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        Some(pages * page as i64)
    }
}

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        if let Some(seconds) = Self::cpu_seconds() {
            let counter = ConstCounter::new(seconds);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "CPU time the daemon used, user and system.",
                None,
                counter.metric_type(),
            )?;
            counter.encode(metric)?;
        }
        if let Some(bytes) = Self::resident_bytes() {
            let gauge = ConstGauge::new(bytes);
            let metric = encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Memory the daemon holds in RAM (resident set size).",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        let gauge = ConstGauge::new(self.started);
        let metric = encoder.encode_descriptor(
            "process_start_time_seconds",
            "When the daemon started, in seconds since the Unix epoch.",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)?;
        Ok(())
    }
}

/// One pipeline's counters as they stand, for the admin server's `/status`
/// ([`crate::admin`]). Totals since the daemon started; rates are the
/// reader's to compute from two of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PipelineCounts {
    /// Messages received from the broker.
    pub received: u64,
    /// Messages acked.
    pub acked: u64,
    /// Messages dead-lettered, by stage (`decode`, `write`).
    pub dead_lettered: BTreeMap<String, u64>,
    /// Retries (waits before trying a batch again), by stage.
    pub retries: BTreeMap<String, u64>,
    /// Rows committed, by writer (`name@version`).
    pub rows_written: BTreeMap<String, u64>,
    /// Rows refused, by writer.
    pub rows_rejected: BTreeMap<String, u64>,
    /// Batches settled.
    pub batches: u64,
    /// Their total time, from decoding to ack, in seconds.
    pub batch_seconds_sum: f64,
    /// Messages ready in the queue when the broker was last asked, if it was.
    pub queue_ready: Option<i64>,
}

impl Metrics {
    /// A registry with every family registered and no samples yet.
    pub fn new() -> Arc<Metrics> {
        let mut m = Metrics {
            registry: Registry::with_prefix("sluice"),
            received: Family::default(),
            acked: Family::default(),
            dead_lettered: Family::default(),
            rows_written: Family::default(),
            rows_rejected: Family::default(),
            batch_size: Family::new_with_constructor(batch_size_histogram as fn() -> Histogram),
            batch_seconds: Family::new_with_constructor(
                batch_seconds_histogram as fn() -> Histogram,
            ),
            call_seconds: Family::new_with_constructor(call_seconds_histogram as fn() -> Histogram),
            plugin_failures: Family::default(),
            retries: Family::default(),
            connected: Family::default(),
            stalled: Family::default(),
            stalls: Family::default(),
            reconnects: Family::default(),
            plugin_loads: Family::default(),
            reloads: Family::default(),
            plugin_log_dropped: Family::default(),
            dead_letters_cut: Family::default(),
            stream_offset: Family::default(),
            stream_lag: Family::default(),
            queue_ready: Family::default(),
            batches: Family::default(),
            batch_seconds_sum: Family::default(),
            writers: Mutex::default(),
        };
        let registry = &mut m.registry;
        // Counter names are registered without `_total`: the encoder adds it.
        registry.register(
            "messages_received",
            "Messages received from RabbitMQ.",
            m.received.clone(),
        );
        registry.register(
            "messages_acked",
            "Messages acked after every writer committed their rows (dead-lettered ones included).",
            m.acked.clone(),
        );
        registry.register(
            "messages_dead_lettered",
            "Messages sent to the dead-letter exchange, by the stage that refused them (decode, write).",
            m.dead_lettered.clone(),
        );
        registry.register(
            "rows_written",
            "Rows committed, by writer.",
            m.rows_written.clone(),
        );
        registry.register(
            "rows_rejected",
            "Rows a writer refused (their messages are dead-lettered), by writer.",
            m.rows_rejected.clone(),
        );
        registry.register_with_unit(
            "batch_size",
            "Messages per batch.",
            Unit::Other("messages".into()),
            m.batch_size.clone(),
        );
        registry.register_with_unit(
            "batch_duration",
            "Time from decoding a batch to acking it (retries and dead-lettering included).",
            Unit::Seconds,
            m.batch_seconds.clone(),
        );
        registry.register_with_unit(
            "plugin_call_duration",
            "Time of one plugin call, by plugin and function.",
            Unit::Seconds,
            m.call_seconds.clone(),
        );
        registry.register(
            "plugin_failures",
            "Plugin calls that failed, by kind (trap, timeout, deadline, memory, failed, contract).",
            m.plugin_failures.clone(),
        );
        registry.register(
            "retries",
            "Waits before trying a batch again, by stage (decode, write), whatever the failure.",
            m.retries.clone(),
        );
        registry.register(
            "amqp_connected",
            "1 while the consumer's RabbitMQ session is open and consuming, else 0.",
            m.connected.clone(),
        );
        registry.register(
            "consumer_stalled",
            "1 while the consumer holds a batch it cannot finish (a store down, a plugin failing, a batch retried), else 0.",
            m.stalled.clone(),
        );
        registry.register(
            "stalls",
            "Stalls that began, by stage (decode, write): a batch that failed and waits to be tried again.",
            m.stalls.clone(),
        );
        registry.register(
            "amqp_reconnects",
            "RabbitMQ sessions reopened after being lost.",
            m.reconnects.clone(),
        );
        registry.register(
            "plugin_loads",
            "Plugin files loaded or refused, by plugin and outcome.",
            m.plugin_loads.clone(),
        );
        registry.register(
            "reloads",
            "Configuration and plugin reloads, by outcome (applied, refused).",
            m.reloads.clone(),
        );
        registry.register(
            "plugin_log_records_dropped",
            "Log records of plugins dropped by the per-instance rate limit, by plugin.",
            m.plugin_log_dropped.clone(),
        );
        registry.register(
            "dead_letters_cut",
            "Dead letters cut to fit the broker's frame_max, by what was cut: reason (x-sluice-reason cut) or headers (original headers dropped).",
            m.dead_letters_cut.clone(),
        );
        registry.register(
            "stream_committed_offset",
            "Stream pipelines: the offset last stored (settled: written by every writer or dead-lettered), by stream partition.",
            m.stream_offset.clone(),
        );
        registry.register(
            "stream_lag_messages",
            "Stream pipelines: messages between the stored offset and the stream's end, by stream partition (measured every 5 s while the pipeline runs).",
            m.stream_lag.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector {
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        }));
        registry.register_with_unit(
            "queue_ready",
            "Messages ready in the pipeline's queue (not yet delivered to a consumer), as RabbitMQ reported it last (every 2 s while consuming).",
            Unit::Other("messages".into()),
            m.queue_ready.clone(),
        );
        Arc::new(m)
    }

    /// Every metric in the OpenMetrics text format (served as
    /// [`crate::admin::METRICS_CONTENT_TYPE`]), ending with `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The handle for one pipeline's metrics. Cheap; clone it into each consumer.
    ///
    /// Creates the pipeline's series at zero, dead letters and retries included,
    /// so that `rate()` and `increase()` see their first event.
    pub fn pipeline(self: &Arc<Self>, pipeline: &str) -> PipelineMetrics {
        let labels = PipelineLabels {
            pipeline: pipeline.to_owned(),
        };
        for stage in STAGES {
            let stage = StageLabels {
                pipeline: pipeline.to_owned(),
                stage: stage.to_owned(),
            };
            let _ = self.dead_lettered.get_or_create(&stage);
            let _ = self.retries.get_or_create(&stage);
            let _ = self.stalls.get_or_create(&stage);
        }
        for kind in DEAD_LETTER_CUTS {
            let _ = self.dead_letters_cut.get_or_create(&KindLabels {
                pipeline: pipeline.to_owned(),
                kind: kind.to_owned(),
            });
        }
        PipelineMetrics {
            received: self.received.get_or_create_owned(&labels),
            acked: self.acked.get_or_create_owned(&labels),
            batch_size: self.batch_size.get_or_create_owned(&labels),
            batch_seconds: self.batch_seconds.get_or_create_owned(&labels),
            batches: self.batches.get_or_create_owned(&labels),
            batch_seconds_sum: self.batch_seconds_sum.get_or_create_owned(&labels),
            reconnects: self.reconnects.get_or_create_owned(&labels),
            name: Arc::from(pipeline),
            metrics: self.clone(),
        }
    }

    /// `pipeline`'s counters as they stand (zero for a pipeline never seen).
    pub fn counts(&self, pipeline: &str) -> PipelineCounts {
        let labels = PipelineLabels {
            pipeline: pipeline.to_owned(),
        };
        let stage = |stage: &str| StageLabels {
            pipeline: pipeline.to_owned(),
            stage: stage.to_owned(),
        };
        let counter = |family: &Family<StageLabels, Counter>, s: &str| {
            family.get(&stage(s)).map_or(0, |c| c.get())
        };
        let writers = self
            .writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(pipeline)
            .cloned()
            .unwrap_or_default();
        let by_writer = |family: &Family<WriterLabels, Counter>| {
            writers
                .iter()
                .map(|w| {
                    let labels = WriterLabels {
                        pipeline: pipeline.to_owned(),
                        writer: w.clone(),
                    };
                    (w.clone(), family.get(&labels).map_or(0, |c| c.get()))
                })
                .collect()
        };
        PipelineCounts {
            received: self.received.get(&labels).map_or(0, |c| c.get()),
            acked: self.acked.get(&labels).map_or(0, |c| c.get()),
            dead_lettered: STAGES
                .iter()
                .map(|s| (s.to_string(), counter(&self.dead_lettered, s)))
                .collect(),
            retries: STAGES
                .iter()
                .map(|s| (s.to_string(), counter(&self.retries, s)))
                .collect(),
            rows_written: by_writer(&self.rows_written),
            rows_rejected: by_writer(&self.rows_rejected),
            batches: self.batches.get(&labels).map_or(0, |c| c.get()),
            batch_seconds_sum: self.batch_seconds_sum.get(&labels).map_or(0.0, |c| c.get()),
            queue_ready: self.queue_ready.get(&labels).map(|g| g.get()),
        }
    }

    /// Counts one plugin file loaded or refused.
    pub fn plugin_loaded(&self, plugin: &str, outcome: LoadOutcome) {
        self.plugin_loads
            .get_or_create(&LoadLabels {
                plugin: plugin.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Counts one reload, applied or refused.
    pub fn reload(&self, outcome: ReloadOutcome) {
        self.reloads
            .get_or_create(&OutcomeLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// Counts `records` log records of `plugin` (serving `pipeline`) dropped by
    /// the log rate limit.
    pub fn plugin_log_dropped(&self, pipeline: &str, plugin: &str, records: u64) {
        self.plugin_log_dropped
            .get_or_create(&PluginLabels {
                pipeline: pipeline.to_owned(),
                plugin: plugin.to_owned(),
            })
            .inc_by(records);
    }
}

/// One pipeline's metrics, labelled `pipeline="<name>"`. Cheap to clone.
///
/// Series stay after a pipeline is removed (counters must not go backwards), but
/// call [`PipelineMetrics::connected`] with `false` as each consumer stops, or the
/// gauge keeps reporting a session that is gone.
#[derive(Clone, Debug)]
pub struct PipelineMetrics {
    metrics: Arc<Metrics>,
    name: Arc<str>,
    received: Counter,
    acked: Counter,
    batch_size: Histogram,
    batch_seconds: Histogram,
    batches: Counter,
    batch_seconds_sum: Counter<f64, std::sync::atomic::AtomicU64>,
    reconnects: Counter,
}

impl PipelineMetrics {
    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counts messages received from the broker.
    pub fn received(&self, messages: u64) {
        self.received.inc_by(messages);
    }

    /// Records the offset stored on `stream`.
    pub fn stream_offset(&self, stream: &str, offset: u64) {
        self.metrics
            .stream_offset
            .get_or_create(&self.stream_labels(stream))
            .set(i64::try_from(offset).unwrap_or(i64::MAX));
    }

    /// Records how far the stored offset is behind `stream`'s end.
    pub fn stream_lag(&self, stream: &str, messages: u64) {
        self.metrics
            .stream_lag
            .get_or_create(&self.stream_labels(stream))
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    fn stream_labels(&self, stream: &str) -> StreamLabels {
        StreamLabels {
            pipeline: self.name.to_string(),
            stream: stream.to_string(),
        }
    }

    /// Counts messages acked (settled: written by every writer, or dead-lettered).
    pub fn acked(&self, messages: u64) {
        self.acked.inc_by(messages);
    }

    /// Counts messages dead-lettered at `stage` (`decode` or `write`).
    pub fn dead_lettered(&self, stage: &str, messages: u64) {
        self.metrics
            .dead_lettered
            .get_or_create(&self.stage(stage))
            .inc_by(messages);
    }

    /// Counts rows `writer` committed.
    pub fn rows_written(&self, writer: &str, rows: u64) {
        self.metrics
            .writers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(self.name.to_string())
            .or_default()
            .insert(writer.to_owned());
        self.metrics
            .rows_written
            .get_or_create(&self.writer(writer))
            .inc_by(rows);
    }

    /// Counts rows `writer` refused.
    pub fn rows_rejected(&self, writer: &str, rows: u64) {
        self.metrics
            .rows_rejected
            .get_or_create(&self.writer(writer))
            .inc_by(rows);
    }

    /// Records one settled batch: its size, and the time from receiving its first
    /// message to its ack.
    pub fn batch(&self, messages: usize, elapsed: Duration) {
        self.batch_size.observe(messages as f64);
        self.batch_seconds.observe(elapsed.as_secs_f64());
        self.batches.inc();
        self.batch_seconds_sum.inc_by(elapsed.as_secs_f64());
    }

    /// Records the time of one call of `plugin`'s function `func`.
    pub fn plugin_call(&self, plugin: &str, func: &str, elapsed: Duration) {
        self.metrics
            .call_seconds
            .get_or_create(&CallLabels {
                pipeline: self.name.to_string(),
                plugin: plugin.to_owned(),
                func: func.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one failed call of `plugin`'s function `func`; `kind` is `trap`,
    /// `timeout`, `deadline`, `memory`, `failed` or `contract`.
    pub fn plugin_failure(&self, plugin: &str, func: &str, kind: &str) {
        self.metrics
            .plugin_failures
            .get_or_create(&FailureLabels {
                pipeline: self.name.to_string(),
                plugin: plugin.to_owned(),
                func: func.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts one retry of a batch at `stage` (`decode` or `write`).
    pub fn retry(&self, stage: &str) {
        self.metrics.retries.get_or_create(&self.stage(stage)).inc();
    }

    /// Sets whether consumer `consumer`'s RabbitMQ session is open and consuming.
    /// Its stalled gauge starts at 0 with it, so that alerts see it before its
    /// first stall.
    pub fn connected(&self, consumer: usize, up: bool) {
        let labels = ConsumerLabels {
            pipeline: self.name.to_string(),
            consumer,
        };
        self.metrics
            .connected
            .get_or_create(&labels)
            .set(i64::from(up));
        let _ = self.metrics.stalled.get_or_create(&labels);
    }

    /// Sets whether consumer `consumer` is stalled; `stage` is where a stall
    /// began (counted once per stall), `None` when it ends.
    pub fn stalled(&self, consumer: usize, stage: Option<&str>) {
        self.metrics
            .stalled
            .get_or_create(&ConsumerLabels {
                pipeline: self.name.to_string(),
                consumer,
            })
            .set(i64::from(stage.is_some()));
        if let Some(stage) = stage {
            self.metrics.stalls.get_or_create(&self.stage(stage)).inc();
        }
    }

    /// Sets how many messages are ready in the pipeline's queue, as the broker
    /// just said.
    pub fn queue_ready(&self, messages: u32) {
        self.metrics
            .queue_ready
            .get_or_create(&PipelineLabels {
                pipeline: self.name.to_string(),
            })
            .set(i64::from(messages));
    }

    /// Counts one RabbitMQ session reopened after being lost.
    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// Counts one dead letter cut to fit the broker's frame; `kind` is `reason`
    /// (its reason was cut) or `headers` (original headers were dropped).
    pub fn dead_letter_cut(&self, kind: &str) {
        self.metrics
            .dead_letters_cut
            .get_or_create(&KindLabels {
                pipeline: self.name.to_string(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    fn stage(&self, stage: &str) -> StageLabels {
        StageLabels {
            pipeline: self.name.to_string(),
            stage: stage.to_owned(),
        }
    }

    fn writer(&self, writer: &str) -> WriterLabels {
        WriterLabels {
            pipeline: self.name.to_string(),
            writer: writer.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[track_caller]
    fn assert_lines(text: &str, lines: &[&str]) {
        let missing: Vec<_> = lines.iter().filter(|l| !has_line(text, l)).collect();
        assert!(missing.is_empty(), "missing {missing:#?} in:\n{text}");
    }

    #[test]
    fn renders_pipeline_counters_with_their_labels() {
        let metrics = Metrics::new();
        let cdr = metrics.pipeline("cdr");
        cdr.received(7);
        cdr.clone().received(3);
        cdr.acked(9);
        cdr.dead_lettered("decode", 1);
        cdr.dead_lettered("write", 2);
        cdr.rows_written("warehouse", 40);
        cdr.rows_written("archive", 38);
        cdr.rows_rejected("archive", 2);
        cdr.retry("write");
        cdr.retry("write");
        cdr.reconnected();
        metrics.pipeline("sms").received(1);

        let text = metrics.render();
        assert_lines(
            &text,
            &[
                "# TYPE sluice_messages_received counter",
                r#"sluice_messages_received_total{pipeline="cdr"} 10"#,
                r#"sluice_messages_received_total{pipeline="sms"} 1"#,
                r#"sluice_messages_acked_total{pipeline="cdr"} 9"#,
                r#"sluice_messages_dead_lettered_total{pipeline="cdr",stage="decode"} 1"#,
                r#"sluice_messages_dead_lettered_total{pipeline="cdr",stage="write"} 2"#,
                r#"sluice_rows_written_total{pipeline="cdr",writer="warehouse"} 40"#,
                r#"sluice_rows_written_total{pipeline="cdr",writer="archive"} 38"#,
                r#"sluice_rows_rejected_total{pipeline="cdr",writer="archive"} 2"#,
                r#"sluice_retries_total{pipeline="cdr",stage="write"} 2"#,
                r#"sluice_amqp_reconnects_total{pipeline="cdr"} 1"#,
            ],
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn renders_batch_histograms_in_messages_and_seconds() {
        let metrics = Metrics::new();
        let cdr = metrics.pipeline("cdr");
        cdr.batch(1000, Duration::from_millis(40));
        cdr.batch(3, Duration::from_secs(2));

        let text = metrics.render();
        assert_lines(
            &text,
            &[
                "# TYPE sluice_batch_size_messages histogram",
                "# UNIT sluice_batch_size_messages messages",
                r#"sluice_batch_size_messages_count{pipeline="cdr"} 2"#,
                r#"sluice_batch_size_messages_sum{pipeline="cdr"} 1003.0"#,
                r#"sluice_batch_size_messages_bucket{le="1.0",pipeline="cdr"} 0"#,
                r#"sluice_batch_size_messages_bucket{le="5.0",pipeline="cdr"} 1"#,
                r#"sluice_batch_size_messages_bucket{le="1000.0",pipeline="cdr"} 2"#,
                r#"sluice_batch_size_messages_bucket{le="100000.0",pipeline="cdr"} 2"#,
                "# TYPE sluice_batch_duration_seconds histogram",
                "# UNIT sluice_batch_duration_seconds seconds",
                r#"sluice_batch_duration_seconds_count{pipeline="cdr"} 2"#,
                r#"sluice_batch_duration_seconds_bucket{le="0.001",pipeline="cdr"} 0"#,
                r#"sluice_batch_duration_seconds_bucket{le="0.05",pipeline="cdr"} 1"#,
                r#"sluice_batch_duration_seconds_bucket{le="2.5",pipeline="cdr"} 2"#,
                r#"sluice_batch_duration_seconds_bucket{le="60.0",pipeline="cdr"} 2"#,
                r#"sluice_batch_duration_seconds_bucket{le="+Inf",pipeline="cdr"} 2"#,
            ],
        );
    }

    #[test]
    fn renders_plugin_calls_and_failures_by_plugin_and_function() {
        let metrics = Metrics::new();
        let cdr = metrics.pipeline("cdr");
        cdr.plugin_call("json-source", "decode", Duration::from_micros(300));
        cdr.plugin_failure("json-source", "decode", "trap");
        cdr.plugin_failure("postgres-writer", "write", "timeout");
        cdr.plugin_failure("postgres-writer", "write", "timeout");

        let text = metrics.render();
        assert_lines(
            &text,
            &[
                r#"sluice_plugin_call_duration_seconds_count{pipeline="cdr",plugin="json-source",func="decode"} 1"#,
                r#"sluice_plugin_call_duration_seconds_bucket{le="0.0005",pipeline="cdr",plugin="json-source",func="decode"} 1"#,
                r#"sluice_plugin_failures_total{pipeline="cdr",plugin="json-source",func="decode",kind="trap"} 1"#,
                r#"sluice_plugin_failures_total{pipeline="cdr",plugin="postgres-writer",func="write",kind="timeout"} 2"#,
            ],
        );
    }

    #[test]
    fn connected_gauge_follows_each_consumer() {
        let metrics = Metrics::new();
        let cdr = metrics.pipeline("cdr");
        cdr.connected(0, true);
        cdr.connected(1, true);
        cdr.connected(1, false);

        let text = metrics.render();
        assert_lines(
            &text,
            &[
                "# TYPE sluice_amqp_connected gauge",
                r#"sluice_amqp_connected{pipeline="cdr",consumer="0"} 1"#,
                r#"sluice_amqp_connected{pipeline="cdr",consumer="1"} 0"#,
                r#"sluice_consumer_stalled{pipeline="cdr",consumer="0"} 0"#,
            ],
        );
    }

    #[test]
    fn counts_plugin_loads_and_reloads_by_outcome() {
        let metrics = Metrics::new();
        metrics.plugin_loaded("json-source", LoadOutcome::Loaded);
        metrics.plugin_loaded("broken", LoadOutcome::Refused);
        metrics.reload(ReloadOutcome::Applied);
        metrics.reload(ReloadOutcome::Refused);
        metrics.reload(ReloadOutcome::Refused);

        let text = metrics.render();
        assert_lines(
            &text,
            &[
                r#"sluice_plugin_loads_total{plugin="json-source",outcome="loaded"} 1"#,
                r#"sluice_plugin_loads_total{plugin="broken",outcome="refused"} 1"#,
                r#"sluice_reloads_total{outcome="applied"} 1"#,
                r#"sluice_reloads_total{outcome="refused"} 2"#,
            ],
        );
    }

    #[test]
    fn a_new_pipeline_starts_its_series_at_zero() {
        let metrics = Metrics::new();
        // A family without series is left out altogether.
        assert!(!metrics.render().contains("sluice_messages_received"));
        metrics.pipeline("cdr");
        assert_lines(
            &metrics.render(),
            &[
                r#"sluice_messages_received_total{pipeline="cdr"} 0"#,
                r#"sluice_messages_acked_total{pipeline="cdr"} 0"#,
                r#"sluice_messages_dead_lettered_total{pipeline="cdr",stage="decode"} 0"#,
                r#"sluice_messages_dead_lettered_total{pipeline="cdr",stage="write"} 0"#,
                r#"sluice_retries_total{pipeline="cdr",stage="write"} 0"#,
                r#"sluice_amqp_reconnects_total{pipeline="cdr"} 0"#,
                r#"sluice_batch_size_messages_count{pipeline="cdr"} 0"#,
                r#"sluice_dead_letters_cut_total{pipeline="cdr",kind="reason"} 0"#,
                r#"sluice_dead_letters_cut_total{pipeline="cdr",kind="headers"} 0"#,
            ],
        );
    }

    #[test]
    fn renders_the_process_cpu_and_memory() {
        // Burn some CPU, so the process has used at least a clock tick.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let text = Metrics::new().render();
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert!(value("sluice_process_cpu_seconds_total") > 0.0);
        // More than a megabyte: this test process, at least.
        assert!(value("sluice_process_resident_memory_bytes") > 1e6);
        assert!(value("sluice_process_start_time_seconds") > 1.6e9);
        assert!(
            text.contains("# TYPE sluice_process_cpu_seconds counter"),
            "{text}"
        );
    }

    #[test]
    fn counts_read_back_what_was_counted() {
        let metrics = Metrics::new();
        let zero = metrics.counts("cdr");
        assert_eq!(
            (zero.received, zero.batches, zero.queue_ready),
            (0, 0, None)
        );
        assert_eq!(zero.dead_lettered["write"], 0);
        let cdr = metrics.pipeline("cdr");
        cdr.received(10);
        cdr.acked(9);
        cdr.dead_lettered("write", 2);
        cdr.rows_written("postgres-writer@0.1.0", 7);
        cdr.rows_rejected("postgres-writer@0.1.0", 1);
        cdr.retry("write");
        cdr.batch(9, Duration::from_millis(500));
        cdr.queue_ready(42);
        metrics.pipeline("sms").received(5);

        let counts = metrics.counts("cdr");
        assert_eq!((counts.received, counts.acked), (10, 9));
        assert_eq!(counts.dead_lettered["write"], 2);
        assert_eq!(counts.dead_lettered["decode"], 0);
        assert_eq!(counts.retries["write"], 1);
        assert_eq!(counts.rows_written["postgres-writer@0.1.0"], 7);
        assert_eq!(counts.rows_rejected["postgres-writer@0.1.0"], 1);
        assert_eq!((counts.batches, counts.batch_seconds_sum), (1, 0.5));
        assert_eq!(counts.queue_ready, Some(42));
        assert_lines(
            &metrics.render(),
            &[
                "# TYPE sluice_queue_ready_messages gauge",
                r#"sluice_queue_ready_messages{pipeline="cdr"} 42"#,
            ],
        );
    }

    #[test]
    fn counts_dead_letters_cut_by_what_was_cut() {
        let metrics = Metrics::new();
        let cdr = metrics.pipeline("cdr");
        cdr.dead_letter_cut("reason");
        cdr.dead_letter_cut("reason");
        cdr.dead_letter_cut("headers");

        assert_lines(
            &metrics.render(),
            &[
                "# TYPE sluice_dead_letters_cut counter",
                r#"sluice_dead_letters_cut_total{pipeline="cdr",kind="reason"} 2"#,
                r#"sluice_dead_letters_cut_total{pipeline="cdr",kind="headers"} 1"#,
            ],
        );
    }
}
