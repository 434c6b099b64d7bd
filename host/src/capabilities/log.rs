//! The `log` import: a plugin's records go into the host's structured log, tagged
//! with the plugin and the pipeline it serves.
//!
//! Each plugin instance may log [`LOG_RATE`] records a second, in bursts of up
//! to [`LOG_BURST`] ([`TokenBucket`]); records over that are dropped and counted,
//! and the count is reported ([`LogLimiter`]): one `plugin log records dropped`
//! line per [`DROPPED_SUMMARY_INTERVAL`] at most per instance, with the metric
//! `sluice_plugin_log_records_dropped_total`. One `write` that logged in a loop
//! used to write gigabytes in seconds. A panic's record is never dropped: it
//! explains the trap that follows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::plugin_runtime::bindings::v0_1_0::source::sluice::plugin::log::{Host, Level};
use crate::plugin_runtime::state::{PluginLabel, PluginState};

/// The SDK's panic hook logs at error level with this prefix; the host keeps the
/// message to explain the trap that follows (with `panic = "abort"` it is otherwise
/// lost).
const PANIC_PREFIX: &str = "panic: ";

/// Longest record kept; a plugin cannot flood the log with megabyte lines.
const MAX_RECORD: usize = 4096;

/// Records a second one plugin instance may log, on average. Far above what a
/// plugin logs about its work (a line per batch or per error), far below what
/// fills a disk (a record is up to 4 KiB: at most ~400 KiB/s an instance).
pub(crate) const LOG_RATE: u32 = 100;

/// Records an instance may log at once after a quiet spell: room for a batch
/// whose every message earns a warning, or a burst of errors while a store
/// goes away.
pub(crate) const LOG_BURST: u32 = 500;

/// How often, at most, an instance's dropped records are reported.
pub(crate) const DROPPED_SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            refilled: now,
        }
    }

    /// Takes a token if there is one at `now`.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now.max(self.refilled);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The log rate limit of one plugin instance, and the count of what it dropped
/// that was not reported yet.
pub(crate) struct LogLimiter {
    bucket: TokenBucket,
    label: Arc<PluginLabel>,
    metrics: Option<Arc<Metrics>>,
    /// Dropped since the last report.
    dropped: u64,
    /// When the dropped records were last reported; `None` before the first
    /// report.
    reported: Option<Instant>,
    created: Instant,
}

impl LogLimiter {
    /// A limiter with a full bucket; `metrics` counts the dropped records (none
    /// outside the daemon).
    pub(crate) fn new(label: Arc<PluginLabel>, metrics: Option<Arc<Metrics>>) -> Self {
        let now = Instant::now();
        Self {
            bucket: TokenBucket::new(LOG_RATE, LOG_BURST, now),
            label,
            metrics,
            dropped: 0,
            reported: None,
            created: now,
        }
    }

    /// Whether a record may be logged now; if not, it is counted as dropped
    /// (and the count reported if the last report is an interval old: a flood
    /// in one long call is reported while it lasts).
    fn admit(&mut self) -> bool {
        let now = Instant::now();
        if self.bucket.take(now) {
            return true;
        }
        self.dropped += 1;
        let since = self.reported.unwrap_or(self.created);
        if now.saturating_duration_since(since) >= DROPPED_SUMMARY_INTERVAL {
            self.report(now);
        }
        false
    }

    /// A call has ended: reports what it dropped, unless a report went out less
    /// than an interval ago (the count then waits for the next one). The first
    /// flood of an instance is reported at the end of its call.
    pub(crate) fn call_ended(&mut self) {
        let now = Instant::now();
        let due = self
            .reported
            .is_none_or(|at| now.saturating_duration_since(at) >= DROPPED_SUMMARY_INTERVAL);
        if self.dropped > 0 && due {
            self.report(now);
        }
    }

    /// Logs the count of dropped records and counts them in the metrics.
    fn report(&mut self, now: Instant) {
        let dropped = std::mem::take(&mut self.dropped);
        self.reported = Some(now);
        if dropped == 0 {
            return;
        }
        tracing::warn!(
            plugin = &*self.label.plugin,
            pipeline = &*self.label.pipeline,
            dropped,
            rate = LOG_RATE,
            burst = LOG_BURST,
            "plugin log records dropped"
        );
        if let Some(metrics) = &self.metrics {
            metrics.plugin_log_dropped(&self.label.pipeline, &self.label.plugin, dropped);
        }
    }
}

impl Drop for LogLimiter {
    /// The instance is gone (after a trap, a deadline, a reload): nothing it
    /// dropped goes unreported.
    fn drop(&mut self) {
        if self.dropped > 0 {
            self.report(Instant::now());
        }
    }
}

impl Host for PluginState {
    async fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        let enabled = match level {
            Level::Trace => tracing::enabled!(target: "sluice::plugin", tracing::Level::TRACE),
            Level::Debug => tracing::enabled!(target: "sluice::plugin", tracing::Level::DEBUG),
            Level::Info => tracing::enabled!(target: "sluice::plugin", tracing::Level::INFO),
            Level::Warn => tracing::enabled!(target: "sluice::plugin", tracing::Level::WARN),
            Level::Error => tracing::enabled!(target: "sluice::plugin", tracing::Level::ERROR),
        };
        let panic = matches!(level, Level::Error) && message.starts_with(PANIC_PREFIX);
        // A record nobody would see costs no token; a panic's record is always
        // kept, it explains the trap that follows.
        if !panic && (!enabled || !self.log.admit()) {
            return Ok(());
        }
        let mut message = message;
        if message.len() > MAX_RECORD {
            let mut cut = MAX_RECORD;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let plugin = &*self.label.plugin;
        let pipeline = &*self.label.pipeline;
        match level {
            Level::Trace => {
                tracing::trace!(target: "sluice::plugin", plugin, pipeline, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "sluice::plugin", plugin, pipeline, "{message}")
            }
            Level::Info => tracing::info!(target: "sluice::plugin", plugin, pipeline, "{message}"),
            Level::Warn => tracing::warn!(target: "sluice::plugin", plugin, pipeline, "{message}"),
            Level::Error => {
                tracing::error!(target: "sluice::plugin", plugin, pipeline, "{message}");
                if let Some(panic) = message.strip_prefix(PANIC_PREFIX) {
                    self.last_panic = Some(panic.to_string());
                }
            }
        }
        Ok(())
    }
}

// The `types` interface has no functions; its host trait is empty.
impl crate::plugin_runtime::bindings::v0_1_0::types::Host for PluginState {}
impl crate::plugin_runtime::bindings::v0_2_0::types::Host for PluginState {}

/// `log` of 0.2.0 is the same interface as 0.1.0's; it logs the same way.
impl crate::plugin_runtime::bindings::v0_2_0::source::sluice::plugin::log::Host for PluginState {
    async fn log(
        &mut self,
        level: crate::plugin_runtime::bindings::v0_2_0::source::sluice::plugin::log::Level,
        message: String,
    ) -> wasmtime::Result<()> {
        use crate::plugin_runtime::bindings::v0_2_0::source::sluice::plugin::log::Level as L;
        let level = match level {
            L::Trace => Level::Trace,
            L::Debug => Level::Debug,
            L::Info => Level::Info,
            L::Warn => Level::Warn,
            L::Error => Level::Error,
        };
        Host::log(self, level, message).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::tests::capture_warnings;

    #[test]
    fn the_bucket_gives_its_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100, 500, start);
        let burst = (0..1000).filter(|_| bucket.take(start)).count();
        assert_eq!(burst, 500, "a full bucket gives its burst at once");
        assert!(!bucket.take(start), "then nothing");
        // 100 a second: 10 in 100 ms, however they are asked for.
        let later = start + Duration::from_millis(100);
        let refilled = (0..1000).filter(|_| bucket.take(later)).count();
        assert_eq!(refilled, 10);
        // A long quiet spell fills it up to the burst, not beyond.
        let much_later = later + Duration::from_secs(3600);
        let refilled = (0..1000).filter(|_| bucket.take(much_later)).count();
        assert_eq!(refilled, 500);
    }

    #[test]
    fn the_bucket_ignores_a_clock_that_goes_back() {
        let start = Instant::now() + Duration::from_secs(1);
        let mut bucket = TokenBucket::new(1, 1, start);
        assert!(bucket.take(start));
        assert!(!bucket.take(start - Duration::from_secs(1)));
        assert!(!bucket.take(start), "no token made up from going back");
        assert!(bucket.take(start + Duration::from_secs(1)));
    }

    fn label() -> Arc<PluginLabel> {
        Arc::new(PluginLabel {
            plugin: "chatty@1.0.0".into(),
            pipeline: "cdr".into(),
        })
    }

    #[tokio::test]
    async fn dropped_records_are_reported_once_per_call_with_their_count_and_metric() {
        let metrics = Metrics::new();
        let ((), logs) = capture_warnings(async {
            let mut limiter = LogLimiter::new(label(), Some(metrics.clone()));
            let admitted = (0..600).filter(|_| limiter.admit()).count();
            // Fewer than the burst plus what trickled in meanwhile.
            assert!((500..510).contains(&admitted), "{admitted}");
            limiter.call_ended();
            // A second flood right after is counted, but waits for the interval
            // (or the instance's end) to be reported.
            let admitted = (0..100).filter(|_| limiter.admit()).count();
            assert!(admitted < 10, "{admitted}");
            limiter.call_ended();
            drop(limiter);
        })
        .await;
        let reports: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("plugin log records dropped"))
            .collect();
        assert_eq!(reports.len(), 2, "{logs}");
        assert!(
            reports[0].contains(r#"plugin="chatty@1.0.0" pipeline="cdr" dropped="#),
            "{logs}"
        );
        let count = |line: &str| -> u64 {
            let at = line.find("dropped=").expect("a dropped field") + "dropped=".len();
            line[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        let total = count(reports[0]) + count(reports[1]);
        assert!(count(reports[0]) >= 90, "{logs}");
        assert!(
            metrics.render().lines().any(|l| l
                == format!(
                    r#"sluice_plugin_log_records_dropped_total{{pipeline="cdr",plugin="chatty@1.0.0"}} {total}"#
                )),
            "{}",
            metrics.render()
        );
    }

    #[tokio::test]
    async fn an_instance_that_drops_nothing_reports_nothing() {
        let ((), logs) = capture_warnings(async {
            let mut limiter = LogLimiter::new(label(), None);
            assert!((0..100).all(|_| limiter.admit()));
            limiter.call_ended();
        })
        .await;
        assert!(!logs.contains("dropped"), "{logs}");
    }
}
