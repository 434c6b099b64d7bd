//! Loads WebAssembly component plugins and runs their calls safely.
//!
//! One [`PluginRuntime`] per process holds the wasmtime `Engine`, one `Linker` per
//! world, the compiled-component cache and the epoch ticker that enforces time
//! limits. [`PluginRuntime::load`] turns a `.wasm` file into a [`LoadedPlugin`]
//! (checked against its world, its WIT version and the imports the host grants);
//! [`SourceInstance`] and [`WriterInstance`] own one wasmtime `Store` each and run
//! calls under a memory limit, a time limit on the plugin's own code and a
//! wall-clock deadline. A trap, a timeout, a passed deadline or a memory bomb
//! fails that one call with a [`CallError`]; the instance is dropped and the next
//! call gets a fresh one.

pub mod bindings;
pub mod cache;
mod instance;
pub mod state;
mod versions;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Engine, Store};

// The host works with one shape of each type, whatever version a plugin
// implements: messages and outcomes of the newest source world (0.2.0), and the
// schema, row and error types that writers (still on 0.1.0) share with sources.
// A plugin of another version has its values converted at the call
// (`instance`), like Spin converts old WIT versions into the newest.
pub use self::bindings::v0_1_0::types::{Column, ColumnType, PluginError, RowBatch, Schema};
pub use self::bindings::v0_1_0::writer::exports::sluice::plugin::writer::RowRejection;
use self::bindings::v0_1_0::{source as source_v0_1_0, writer};
use self::bindings::v0_2_0::source as source_v0_2_0;
pub use self::bindings::v0_2_0::source::exports::sluice::plugin::source::{
    MessageOutcome, PartialOutcome, RecordRejection,
};
pub use self::bindings::v0_2_0::types::{HeaderValue, Message};
pub use self::cache::{CacheOutcome, ComponentCache};
pub use self::instance::{CallError, SourceInstance, WriterInstance};
use self::state::{PluginLabel, PluginState};
use crate::capabilities::{Granted, Grants, Need, needs_of};

/// The WIT versions of `sluice:plugin` this host loads (sources: all of them;
/// writers: [`PluginKind::wit_versions`]).
pub const SUPPORTED_WIT_VERSIONS: &[&str] = &["0.1.0", "0.2.0"];

/// What a source decoded from a batch, whatever WIT version it implements.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedBatch {
    /// One outcome per message, in the order the messages were given.
    pub outcomes: Vec<MessageOutcome>,
    /// The rows of every accepted message (and of the good records of partly
    /// rejected ones), in message order.
    pub rows: RowBatch,
}

/// How often the epoch advances: the granularity of time limits.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Whether the current thread may call `tokio::task::block_in_place`: it runs on
/// a multi-thread tokio runtime (a worker, or the thread in its `block_on`).
/// On a current-thread runtime `block_in_place` panics; outside any runtime
/// there is no runtime to keep free.
pub(crate) fn can_block_in_place() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Limits and places for the runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// Linear memory a plugin instance may use, in bytes.
    pub memory_limit: usize,
    /// Time one call may spend in plugin code (time in host calls excluded).
    pub call_time_limit: Duration,
    /// Wall-clock time one call may take, whatever the plugin does with it
    /// (runs, sleeps, waits on its own HTTP or TCP I/O); time in granted store
    /// calls excluded (they have `store_call_timeout`).
    pub call_deadline: Duration,
    /// Time one call of a granted store (the `postgres` capability) may take
    /// before the plugin gets a retriable error saying it timed out.
    pub store_call_timeout: Duration,
    /// Where plugin instances count what they report on their own (log records
    /// dropped by the rate limit); `None` outside the daemon.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            memory_limit: 256 << 20,
            call_time_limit: Duration::from_secs(10),
            call_deadline: Duration::from_secs(60),
            store_call_timeout: Duration::from_secs(300),
            metrics: None,
        }
    }
}

/// Which world a plugin implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PluginKind {
    /// `sluice:plugin/source-plugin`: decodes messages into rows.
    Source,
    /// `sluice:plugin/writer-plugin`: writes rows to a store.
    Writer,
}

impl PluginKind {
    /// The world's name, as `sluice plugins` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Source => "source",
            PluginKind::Writer => "writer",
        }
    }

    /// The WIT versions of this world the host loads. 0.2.0 changed the source
    /// world only; writers implement the writer world of 0.1.0.
    pub fn wit_versions(self) -> &'static [&'static str] {
        match self {
            PluginKind::Source => SUPPORTED_WIT_VERSIONS,
            PluginKind::Writer => &["0.1.0"],
        }
    }

    fn export_interface(self) -> &'static str {
        match self {
            PluginKind::Source => "sluice:plugin/source",
            PluginKind::Writer => "sluice:plugin/writer",
        }
    }

    /// Non-WASI imports a plugin of this world may have.
    fn host_imports(self) -> &'static [&'static str] {
        match self {
            PluginKind::Source => &["sluice:plugin/types", "sluice:plugin/log"],
            PluginKind::Writer => &[
                "sluice:plugin/types",
                "sluice:plugin/log",
                "sluice:plugin/postgres",
            ],
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// WASI interfaces linked for every plugin, locked down (see
/// [`crate::capabilities::wasi`]): Rust's std imports them whether or not the
/// plugin uses them. Sockets and HTTP are not among them.
const WASI_IMPORTS: &[&str] = &[
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
];

/// WASI interfaces only writers may import: the network, which they reach only
/// through their `http` and `tcp` grants. A writer that imports them without the
/// grant is refused when its pipeline starts
/// ([`crate::capabilities::check_writer_grants`]).
const WRITER_WASI_IMPORTS: &[&str] = &["wasi:http/", "wasi:sockets/"];

/// Why a plugin file was refused. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: cannot read the file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Not WebAssembly at all.
    #[error("{path}: not a WebAssembly file (it does not start with the `\\0asm` magic bytes)")]
    NotWasm {
        /// The file.
        path: PathBuf,
    },
    /// A core module rather than a component.
    #[error(
        "{path}: a core WebAssembly module, not a component; build plugins with `sluice plugin build`, which turns the module into a component"
    )]
    CoreModule {
        /// The file.
        path: PathBuf,
    },
    /// Not a valid component (corrupt, truncated).
    #[error("{path}: corrupt or truncated component: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What the validator said.
        reason: String,
    },
    /// A component, but not a Sluice plugin world.
    #[error(
        "{path}: exports neither `sluice:plugin/source` nor `sluice:plugin/writer`, so it is not a Sluice plugin (it exports: {exports})"
    )]
    WrongWorld {
        /// The file.
        path: PathBuf,
        /// What it exports instead.
        exports: String,
    },
    /// A Sluice plugin built against a WIT version this host does not know.
    #[error(
        "{path}: implements `{interface}@{version}`, which this host does not support (supported: {supported})"
    )]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The exported interface.
        interface: String,
        /// Its version.
        version: String,
        /// What the host supports.
        supported: String,
    },
    /// An import the host does not provide to this kind of plugin.
    #[error(
        "{path}: imports `{import}`, which the host does not grant to {kind} plugins (allowed: {allowed})"
    )]
    ImportNotGranted {
        /// The file.
        path: PathBuf,
        /// The import.
        import: String,
        /// The plugin's world.
        kind: PluginKind,
        /// What it could import.
        allowed: String,
    },
    /// The exports or imports don't have the types of the world (a missing
    /// function, a changed signature).
    #[error("{path}: does not match the {kind} world of sluice:plugin@{version}: {reason}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The world it claims.
        kind: PluginKind,
        /// The WIT version it claims.
        version: String,
        /// What wasmtime found wrong.
        reason: String,
    },
    /// The plugin failed its first call (`about`).
    #[error("{path}: failed when asked who it is: {reason}")]
    About {
        /// The file.
        path: PathBuf,
        /// The error.
        reason: String,
    },
}

/// What a plugin says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// What it does.
    pub description: String,
}

impl PluginInfo {
    /// `name@version`, as logs and dead-letter headers show it.
    pub fn label(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[derive(Clone)]
pub(crate) enum PluginPre {
    Source(SourcePre),
    Writer(writer::WriterPluginPre<PluginState>),
}

/// A source, prepared with the bindings of the WIT version it implements.
#[derive(Clone)]
pub(crate) enum SourcePre {
    V0_1_0(source_v0_1_0::SourcePluginPre<PluginState>),
    V0_2_0(source_v0_2_0::SourcePluginPre<PluginState>),
}

/// A plugin file that passed every check, ready to instantiate.
#[derive(Clone)]
pub struct LoadedPlugin {
    /// What the plugin says about itself.
    pub info: PluginInfo,
    /// Its world.
    pub kind: PluginKind,
    /// The `sluice:plugin` WIT version it implements.
    pub wit_version: String,
    /// SHA-256 of the file's content, hex.
    pub sha256: String,
    /// The file it came from.
    pub path: PathBuf,
    /// Whether it came from the compiled-component cache.
    pub cache: CacheOutcome,
    /// How long loading took.
    pub load_time: Duration,
    /// The capabilities its imports ask for (`postgres`, `http`, `tcp`), each
    /// with an import that asks for it. A writer is refused in a pipeline whose
    /// grants don't give the `http` or `tcp` it imports.
    pub needs: Vec<Need>,
    pub(crate) pre: PluginPre,
}

impl fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("info", &self.info)
            .field("kind", &self.kind)
            .field("wit_version", &self.wit_version)
            .field("sha256", &self.sha256)
            .field("path", &self.path)
            .field("cache", &self.cache)
            .field("needs", &self.needs)
            .finish_non_exhaustive()
    }
}

/// The process-wide plugin runtime.
pub struct PluginRuntime {
    engine: Engine,
    source_linker: Linker<PluginState>,
    writer_linker: Linker<PluginState>,
    cache: Option<ComponentCache>,
    config: RuntimeConfig,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// `SLUICE_WASM_PROFILER=perfmap` makes wasmtime write `/tmp/perf-<pid>.map`,
/// which lets `perf report` name the plugins' compiled functions (see the
/// operations guide); unset or empty, no profiler.
fn profiler_from_env() -> anyhow::Result<wasmtime::ProfilingStrategy> {
    match std::env::var("SLUICE_WASM_PROFILER").as_deref() {
        Err(_) | Ok("") | Ok("none") => Ok(wasmtime::ProfilingStrategy::None),
        Ok("perfmap") => Ok(wasmtime::ProfilingStrategy::PerfMap),
        Ok(other) => anyhow::bail!(
            "SLUICE_WASM_PROFILER={other:?}: the profilers this build has are `perfmap` and `none`"
        ),
    }
}

impl PluginRuntime {
    /// Creates the engine, the linkers and the epoch ticker.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Arc<Self>> {
        let mut wasm_config = wasmtime::Config::new();
        wasm_config.epoch_interruption(true);
        // The default for this build; said explicitly because it keeps plain calls
        // cheap (no component-model async machinery on the call path).
        wasm_config.concurrency_support(false);
        wasm_config.profiler(profiler_from_env()?);
        let engine = Engine::new(&wasm_config)?;

        let mut source_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut source_linker)?;
        // Each version's interfaces have their own names (`sluice:plugin/log@0.1.0`,
        // `…@0.2.0`), so one linker serves sources of every version.
        source_v0_1_0::SourcePlugin::add_to_linker::<_, HasSelf<PluginState>>(
            &mut source_linker,
            |s| s,
        )?;
        source_v0_2_0::SourcePlugin::add_to_linker::<_, HasSelf<PluginState>>(
            &mut source_linker,
            |s| s,
        )?;
        let mut writer_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut writer_linker)?;
        // Outbound HTTP, for writers only; every request is checked against the
        // writer's grants (`capabilities::http`).
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut writer_linker)?;
        writer::WriterPlugin::add_to_linker::<_, HasSelf<PluginState>>(&mut writer_linker, |s| s)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("sluice-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })?;
        }
        let cache = config
            .cache_dir
            .clone()
            .map(|dir| ComponentCache::open(dir, &engine))
            .transpose()?;
        Ok(Arc::new(Self {
            engine,
            source_linker,
            writer_linker,
            cache,
            config,
            ticker_stop,
        }))
    }

    /// The runtime's limits and places.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Reads, checks and prepares the plugin in `path`. Compilation runs on a
    /// blocking thread, off the async workers.
    pub async fn load(self: &Arc<Self>, path: &Path) -> Result<LoadedPlugin, LoadError> {
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| LoadError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        self.load_bytes(path, bytes).await
    }

    /// Like [`load`](Self::load), with the file's content read by the caller:
    /// the bytes a caller checked (their signature, their hash) are the bytes
    /// that are loaded, whatever happens to the file meanwhile.
    pub async fn load_bytes(
        self: &Arc<Self>,
        path: &Path,
        bytes: Vec<u8>,
    ) -> Result<LoadedPlugin, LoadError> {
        let started = Instant::now();
        let this = self.clone();
        let owned = path.to_path_buf();
        let prepared = tokio::task::spawn_blocking(move || this.prepare(&owned, &bytes))
            .await
            .map_err(|e| LoadError::Invalid {
                path: path.to_path_buf(),
                reason: format!("loader task failed: {e}"),
            })??;
        let info = instance::about(self, &prepared.pre)
            .await
            .map_err(|e| LoadError::About {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(LoadedPlugin {
            info,
            kind: prepared.kind,
            wit_version: prepared.wit_version,
            sha256: prepared.sha256,
            path: prepared.path,
            cache: prepared.cache,
            load_time: started.elapsed(),
            needs: prepared.needs,
            pre: prepared.pre,
        })
    }

    /// The CPU-bound part of loading: validation, compilation, type checks.
    fn prepare(&self, path: &Path, bytes: &[u8]) -> Result<Prepared, LoadError> {
        let path_buf = path.to_path_buf();
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::NotWasm { path: path_buf });
        }
        if wasmparser::Parser::is_core_wasm(bytes) {
            return Err(LoadError::CoreModule { path: path_buf });
        }
        let sha256 = hex::encode(Sha256::digest(bytes));
        let (component, cache) = match &self.cache {
            Some(cache) => cache.load_or_compile(&self.engine, &sha256, bytes),
            None => Component::new(&self.engine, bytes)
                .map(|c| (c, CacheOutcome::Compiled))
                .map_err(anyhow::Error::from),
        }
        .map_err(|e| LoadError::Invalid {
            path: path_buf.clone(),
            reason: format!("{e:#}"),
        })?;

        let (kind, wit_version) = self.world_of(path, &component)?;
        let needs = self.check_imports(path, &component, kind)?;
        let mismatch = |e: wasmtime::Error| LoadError::Mismatch {
            path: path_buf.clone(),
            kind,
            version: wit_version.clone(),
            reason: format!("{e:#}"),
        };
        let pre = match kind {
            PluginKind::Source => {
                let pre = self
                    .source_linker
                    .instantiate_pre(&component)
                    .map_err(mismatch)?;
                PluginPre::Source(if wit_version == "0.1.0" {
                    SourcePre::V0_1_0(source_v0_1_0::SourcePluginPre::new(pre).map_err(mismatch)?)
                } else {
                    SourcePre::V0_2_0(source_v0_2_0::SourcePluginPre::new(pre).map_err(mismatch)?)
                })
            }
            PluginKind::Writer => {
                let pre = self
                    .writer_linker
                    .instantiate_pre(&component)
                    .map_err(mismatch)?;
                PluginPre::Writer(writer::WriterPluginPre::new(pre).map_err(mismatch)?)
            }
        };
        Ok(Prepared {
            path: path_buf,
            kind,
            wit_version,
            sha256,
            cache,
            needs,
            pre,
        })
    }

    /// Finds the plugin's world from what it exports.
    fn world_of(
        &self,
        path: &Path,
        component: &Component,
    ) -> Result<(PluginKind, String), LoadError> {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        for name in &exports {
            for kind in [PluginKind::Source, PluginKind::Writer] {
                let Some(version) = name
                    .strip_prefix(kind.export_interface())
                    .and_then(|v| v.strip_prefix('@'))
                else {
                    continue;
                };
                if !kind.wit_versions().contains(&version) {
                    return Err(LoadError::UnsupportedVersion {
                        path: path.to_path_buf(),
                        interface: kind.export_interface().to_string(),
                        version: version.to_string(),
                        supported: kind.wit_versions().join(", "),
                    });
                }
                return Ok((kind, version.to_string()));
            }
        }
        Err(LoadError::WrongWorld {
            path: path.to_path_buf(),
            exports: if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            },
        })
    }

    /// Refuses a component that imports anything its world does not allow;
    /// returns the capabilities its imports ask for.
    fn check_imports(
        &self,
        path: &Path,
        component: &Component,
        kind: PluginKind,
    ) -> Result<Vec<Need>, LoadError> {
        let wasi: Vec<&str> = match kind {
            PluginKind::Source => WASI_IMPORTS.to_vec(),
            PluginKind::Writer => [WASI_IMPORTS, WRITER_WASI_IMPORTS].concat(),
        };
        let ty = component.component_type();
        let mut names = Vec::new();
        for (name, item) in ty.imports(&self.engine) {
            let unversioned = name.split('@').next().unwrap_or(name);
            let granted = kind.host_imports().contains(&unversioned)
                || (wasi.iter().any(|prefix| name.starts_with(prefix))
                    && matches!(item.ty, ComponentItem::ComponentInstance(_)));
            if !granted {
                let mut allowed: Vec<String> =
                    kind.host_imports().iter().map(|s| s.to_string()).collect();
                allowed.extend(wasi.iter().map(|p| format!("{p}*")));
                return Err(LoadError::ImportNotGranted {
                    path: path.to_path_buf(),
                    import: name.to_string(),
                    kind,
                    allowed: allowed.join(", "),
                });
            }
            names.push(name);
        }
        Ok(needs_of(names))
    }

    pub(crate) fn new_store(
        &self,
        label: Arc<PluginLabel>,
        grants: Arc<Grants>,
        granted: Granted,
    ) -> Store<PluginState> {
        let state = PluginState::new(label, grants, granted, &self.config);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut ctx| {
            if ctx.data_mut().clock.check() {
                Ok(wasmtime::UpdateDeadline::Interrupt)
            } else {
                // Yield to the executor every tick so that a long call shares the
                // worker thread with the rest of the daemon. (A call that runs in
                // `block_in_place`, see `instance::run_call`, holds no worker: its
                // `block_on` polls it again at once.)
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        store
    }
}

/// A plugin past the CPU-bound checks, before its `about` call.
struct Prepared {
    path: PathBuf,
    kind: PluginKind,
    wit_version: String,
    sha256: String,
    cache: CacheOutcome,
    needs: Vec<Need>,
    pre: PluginPre,
}
