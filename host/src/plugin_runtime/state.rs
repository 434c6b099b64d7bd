//! What a plugin instance's `Store` holds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::capabilities::http::HttpHooks;
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
        memory_limit: usize,
        time_limit: Duration,
    ) -> Self {
        Self {
            files_inline: granted.files_inline,
            wasi: granted.wasi,
            http: WasiHttpCtx::new(),
            http_hooks: granted.http,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(memory_limit),
            grants,
            label,
            clock: CallClock::new(time_limit),
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
