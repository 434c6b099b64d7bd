//! What a plugin instance's `Store` holds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::capabilities::http::HttpHooks;
use crate::capabilities::log::LogLimiter;
use crate::capabilities::wasi::OutputTail;
use crate::capabilities::{Granted, Grants};

/// Names that go into every log line about an instance.
#[derive(Debug)]
pub struct PluginLabel {
    /// `name@version` of the plugin.
    pub plugin: Arc<str>,
    /// The pipeline the instance serves (empty outside a pipeline).
    pub pipeline: Arc<str>,
}

/// The store data of one plugin instance. Owned by exactly one task.
pub struct PluginState {
    pub(crate) wasi: WasiCtx,
    /// `wasi:http` (linked for writers only), with hooks that check the grants.
    pub(crate) http: WasiHttpCtx,
    pub(crate) http_hooks: HttpHooks,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) grants: Arc<Grants>,
    pub(crate) label: Arc<PluginLabel>,
    pub(crate) clock: CallClock,
    /// The wall-clock deadline of the current call; shared with the future that
    /// stops the call when it passes (`instance::run_call`).
    pub(crate) deadline: Arc<CallDeadline>,
    /// How long one call of a granted store (the `postgres` capability) may take
    /// before it is given up as a store outage.
    pub(crate) store_call_timeout: Duration,
    /// The rate limit of the plugin's log records.
    pub(crate) log: LogLimiter,
    pub(crate) output: OutputTail,
    /// The message of the last panic the plugin reported (see `capabilities::log`).
    pub(crate) last_panic: Option<String>,
    pub(crate) pg_open: usize,
    /// Whether the WASI context runs filesystem calls on the calling thread
    /// (a writer with a directory grant): calls into the instance then run
    /// inside `block_in_place` (`instance::run_call`).
    pub(crate) files_inline: bool,
}

impl PluginState {
    pub(crate) fn new(
        label: Arc<PluginLabel>,
        grants: Arc<Grants>,
        granted: Granted,
        limits: &super::RuntimeConfig,
    ) -> Self {
        Self {
            files_inline: granted.files_inline,
            wasi: granted.wasi,
            http: WasiHttpCtx::new(),
            http_hooks: granted.http,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory_limit),
            grants,
            log: LogLimiter::new(label.clone(), limits.metrics.clone()),
            label,
            clock: CallClock::new(limits.call_time_limit),
            deadline: Arc::new(CallDeadline::new(limits.call_deadline)),
            store_call_timeout: limits.store_call_timeout,
            output: granted.output,
            last_panic: None,
            pg_open: 0,
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

/// A pause between two epoch checks longer than this means the plugin was not
/// running in between: it waited in a host call.
const QUIET_GAP: Duration = Duration::from_millis(100);

/// Measures the time a call spends in the plugin's own code.
///
/// The limit is on the plugin's time, not on the wall clock: time spent in host
/// calls (a COPY to Postgres that takes a while under load) does not count, so a
/// busy store cannot make a healthy writer trap. The `postgres` capability
/// reports its time ([`CallClock::add_host_time`]). WASI calls can't (a writer
/// waiting on an HTTP response or a socket blocks in `wasi:io/poll`), so they are
/// told apart by the epoch checks: those run only while plugin code runs, one
/// per tick, and a pause longer than [`QUIET_GAP`] between two of them is taken
/// as time in the host.
///
/// That holds wherever a WASI call does its work: awaited on tokio's blocking
/// pool, or on the calling thread (the filesystem calls of a writer with a
/// directory grant, see `capabilities::wasi::files_inline`). Either way no
/// plugin code runs, so no epoch check, until it returns: a slow `fsync` is
/// host time, and the plugin's own code still meets a check every tick.
#[derive(Debug)]
pub(crate) struct CallClock {
    limit: Duration,
    started: Instant,
    in_host: Duration,
    /// The last epoch check, or the end of the last reported host call.
    last_seen: Instant,
    pub(crate) exceeded: bool,
}

impl CallClock {
    fn new(limit: Duration) -> Self {
        let now = Instant::now();
        Self {
            limit,
            started: now,
            in_host: Duration::ZERO,
            last_seen: now,
            exceeded: false,
        }
    }

    pub(crate) fn start(&mut self) {
        self.started = Instant::now();
        self.last_seen = self.started;
        self.in_host = Duration::ZERO;
        self.exceeded = false;
    }

    /// Records that a host call begun at `since` has just returned.
    pub(crate) fn add_host_time(&mut self, since: Instant) {
        self.in_host += since.elapsed();
        self.last_seen = Instant::now();
    }

    /// Whether the plugin has used up its time; remembers it if so. Called on
    /// each epoch tick while plugin code runs.
    pub(crate) fn check(&mut self) -> bool {
        let now = Instant::now();
        let gap = now.saturating_duration_since(self.last_seen);
        if gap > QUIET_GAP {
            self.in_host += gap - super::EPOCH_TICK;
        }
        self.last_seen = now;
        let in_guest = now
            .saturating_duration_since(self.started)
            .saturating_sub(self.in_host);
        if in_guest > self.limit {
            self.exceeded = true;
        }
        self.exceeded
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }
}

/// The wall-clock deadline of one call: the time the call may take, whatever the
/// plugin does with it (runs, sleeps, waits on its own HTTP request or socket),
/// minus the time the host spends on a granted store's work.
///
/// [`CallClock`] limits the plugin's own code only, and takes any pause between
/// two epoch checks as time in the host; a plugin that sleeps (`wasi:clocks`,
/// `wasi:io/poll`) runs no code and meets no check, so that limit never sees it.
/// This deadline is watched from outside the plugin instead: the future that
/// runs the call waits on [`CallDeadline::passed`] next to it and drops the call
/// when it fires (`instance::run_call`).
///
/// Store calls (the `postgres` capability) have a limit of their own
/// (`store_call_timeout`) and are taken out of this one
/// ([`CallDeadline::store_call`]), so that a slow store is reported as a store
/// outage, not as the plugin's fault. Shared between the store data and the
/// call's watcher, which run in the same task: the lock is never contended.
#[derive(Debug)]
pub(crate) struct CallDeadline {
    limit: Duration,
    times: Mutex<DeadlineTimes>,
}

#[derive(Debug, Clone, Copy)]
struct DeadlineTimes {
    started: Instant,
    /// Time in store calls that have returned, since `started`.
    in_store: Duration,
    /// When the store call under way began.
    store_since: Option<Instant>,
    /// Whether the deadline fired for this call.
    passed: bool,
}

impl CallDeadline {
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            limit,
            times: Mutex::new(DeadlineTimes {
                started: Instant::now(),
                in_store: Duration::ZERO,
                store_since: None,
                passed: false,
            }),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, DeadlineTimes> {
        self.times.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call starts now.
    pub(crate) fn start(&self) {
        *self.times() = DeadlineTimes {
            started: Instant::now(),
            in_store: Duration::ZERO,
            store_since: None,
            passed: false,
        };
    }

    /// Takes the time until the returned guard drops out of the deadline: a
    /// store call under way.
    pub(crate) fn store_call(&self) -> StoreCall<'_> {
        self.times().store_since = Some(Instant::now());
        StoreCall(self)
    }

    /// The time of the call that counts against the deadline, at `now`.
    fn used(&self, now: Instant) -> Duration {
        let times = *self.times();
        let in_store = times.in_store
            + times
                .store_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        now.saturating_duration_since(times.started)
            .saturating_sub(in_store)
    }

    /// Resolves once the call has used up its deadline, and remembers that it
    /// did. The used time does not grow during a store call, so sleeping for
    /// what is left never wakes too late; it wakes early at most, and sleeps
    /// again.
    pub(crate) async fn passed(&self) {
        loop {
            let used = self.used(Instant::now());
            if used >= self.limit {
                self.times().passed = true;
                return;
            }
            // Not less than an epoch tick: a deadline is not kept to the
            // microsecond, and a store call that began with microseconds left
            // must not make this loop spin.
            tokio::time::sleep((self.limit - used).max(super::EPOCH_TICK)).await;
        }
    }

    /// Whether the deadline fired during the current call.
    pub(crate) fn has_passed(&self) -> bool {
        self.times().passed
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }
}

/// A store call under way (see [`CallDeadline::store_call`]); its time is taken
/// out of the deadline when it drops.
pub(crate) struct StoreCall<'a>(&'a CallDeadline);

impl Drop for StoreCall<'_> {
    fn drop(&mut self) {
        let mut times = self.0.times();
        if let Some(since) = times.store_since.take() {
            times.in_store += since.elapsed();
        }
    }
}

/// The memory limit of an instance, remembering when it was hit so the error can
/// say so (a failed `memory.grow` otherwise surfaces as an opaque trap).
pub(crate) struct MemoryLimiter {
    limit: usize,
    pub(crate) hit: Option<usize>,
}

impl MemoryLimiter {
    fn new(limit: usize) -> Self {
        Self { limit, hit: None }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = Some(desired);
            // Trap rather than return -1: Rust guests abort on allocation failure
            // anyway, and a trap here carries the reason.
            wasmtime::bail!(
                "plugin memory limit of {} bytes exceeded (it asked for {desired})",
                self.limit
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }

    fn instances(&self) -> usize {
        // A component has a handful of core instances (the adapter adds some).
        64
    }

    fn memories(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_deadline_passes_after_its_limit_of_wall_clock_time() {
        let deadline = CallDeadline::new(Duration::from_millis(100));
        deadline.start();
        assert!(!deadline.has_passed());
        let started = Instant::now();
        deadline.passed().await;
        let took = started.elapsed();
        assert!(deadline.has_passed());
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_millis(600),
            "{took:?}"
        );
        // A new call starts with a fresh deadline.
        deadline.start();
        assert!(!deadline.has_passed());
        assert!(deadline.used(Instant::now()) < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn store_calls_are_taken_out_of_the_deadline() {
        let deadline = CallDeadline::new(Duration::from_millis(200));
        deadline.start();
        {
            let _in_store = deadline.store_call();
            // Time in a store call under way does not count either.
            std::thread::sleep(Duration::from_millis(150));
            assert!(deadline.used(Instant::now()) < Duration::from_millis(50));
            std::thread::sleep(Duration::from_millis(150));
        }
        assert!(deadline.used(Instant::now()) < Duration::from_millis(50));
        let started = Instant::now();
        deadline.passed().await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(150) && took < Duration::from_millis(700),
            "the 300 ms in the store were not counted: {took:?}"
        );
    }

    #[tokio::test]
    async fn a_deadline_used_up_before_a_store_call_passes_during_it() {
        let deadline = CallDeadline::new(Duration::from_millis(50));
        deadline.start();
        std::thread::sleep(Duration::from_millis(80));
        let _in_store = deadline.store_call();
        let started = Instant::now();
        deadline.passed().await;
        assert!(started.elapsed() < Duration::from_millis(50));
    }
}
