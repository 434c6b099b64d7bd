//! `sluice run`: loads the plugins, starts every pipeline, serves the admin
//! endpoints, talks to systemd, reloads on SIGHUP, and on SIGTERM or SIGINT
//! drains the pipelines (in-flight batches commit and are acked) before exiting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::{self, Health};
use crate::config::{Config, PipelineConfig};
use crate::metrics::{LoadOutcome, Metrics, ReloadOutcome};
use crate::pipeline::{self, PipelinePlugins, Reporting};
use crate::plugin_runtime::{LoadedPlugin, PluginKind, PluginRuntime, RuntimeConfig};
use crate::service;

/// Plugins by the name they declare.
pub type PluginSet = BTreeMap<String, Arc<LoadedPlugin>>;

/// Loads every `*.wasm` file of `dir`. A file that is refused is logged with the
/// reason and left out; the caller finds out when a pipeline names it.
pub async fn load_plugin_dir(
    runtime: &Arc<PluginRuntime>,
    dir: &Path,
    metrics: Option<&Metrics>,
) -> anyhow::Result<PluginSet> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the plugin folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    files.sort();
    let mut set = PluginSet::new();
    for file in files {
        match runtime.load(&file).await {
            Ok(plugin) => {
                if let Some(m) = metrics {
                    m.plugin_loaded(&plugin.info.name, LoadOutcome::Loaded);
                }
                tracing::info!(
                    plugin = %plugin.info.label(),
                    world = %plugin.kind,
                    file = %file.display(),
                    sha256 = &plugin.sha256[..12],
                    cache = ?plugin.cache,
                    load_ms = plugin.load_time.as_secs_f64() * 1e3,
                    "plugin loaded"
                );
                if let Some(other) = set.insert(plugin.info.name.clone(), Arc::new(plugin)) {
                    tracing::warn!(plugin = %other.info.name, file = %other.path.display(), "two files declare the same plugin name; the later file wins");
                }
            }
            Err(e) => {
                if let Some(m) = metrics {
                    let name = file
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    m.plugin_loaded(&name, LoadOutcome::Refused);
                }
                tracing::error!(error = %e, "plugin refused");
            }
        }
    }
    Ok(set)
}

/// Finds each pipeline's plugins, reporting every missing or mismatched one.
pub fn resolve(config: &Config, plugins: &PluginSet) -> anyhow::Result<Vec<PipelinePlugins>> {
    let mut problems = Vec::new();
    let mut find = |name: &str, kind: PluginKind, at: String| match plugins.get(name) {
        Some(p) if p.kind == kind => Some(p.clone()),
        Some(p) => {
            problems.push(format!(
                "{at}: plugin `{name}` is a {} plugin, not a {kind}",
                p.kind
            ));
            None
        }
        None => {
            problems.push(format!(
                "{at}: no plugin named `{name}` in {}",
                config.daemon.plugin_dir.display()
            ));
            None
        }
    };
    let mut resolved = Vec::new();
    for (i, p) in config.pipelines.iter().enumerate() {
        let source = find(
            &p.source.plugin,
            PluginKind::Source,
            format!("pipelines[{i}].source.plugin"),
        );
        let writers: Vec<_> = p
            .writers
            .iter()
            .enumerate()
            .map(|(j, w)| {
                find(
                    &w.plugin,
                    PluginKind::Writer,
                    format!("pipelines[{i}].writers[{j}].plugin"),
                )
            })
            .collect();
        if let (Some(source), Some(writers)) =
            (source, writers.into_iter().collect::<Option<Vec<_>>>())
        {
            resolved.push(PipelinePlugins { source, writers });
        }
    }
    if problems.is_empty() {
        Ok(resolved)
    } else {
        anyhow::bail!("{}: {}", config.file.display(), problems.join("; "))
    }
}

/// A pipeline that is running, and what it was started from.
struct Running {
    /// What decides whether a reload must restart it: its configuration and the
    /// content of its plugins.
    fingerprint: String,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Asks the consumers to stop after the batch in hand.
    fn stop(self) -> Vec<JoinHandle<()>> {
        let _ = self.stop.send(true);
        self.tasks
    }
}

fn fingerprint(config: &PipelineConfig, plugins: &PipelinePlugins) -> String {
    // The Debug form covers every setting (passwords redacted: a password change
    // alone does not restart a pipeline) and the hashes cover the plugin files.
    let hashes: Vec<&str> = std::iter::once(&plugins.source)
        .chain(&plugins.writers)
        .map(|p| p.sha256.as_str())
        .collect();
    format!("{config:?} {hashes:?}")
}

/// Everything `run` owns.
struct Daemon {
    config_path: PathBuf,
    config: Config,
    runtime: Arc<PluginRuntime>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    running: BTreeMap<String, Running>,
}

impl Daemon {
    fn start(&mut self, pipeline: &PipelineConfig, plugins: PipelinePlugins) {
        let (stop, stopped) = watch::channel(false);
        let fingerprint = fingerprint(pipeline, &plugins);
        let reporting = Reporting {
            metrics: self.metrics.pipeline(&pipeline.name),
            health: self.health.clone(),
        };
        let tasks = pipeline::spawn(
            Arc::new(pipeline.clone()),
            self.runtime.clone(),
            plugins,
            reporting,
            stopped,
        );
        self.running.insert(
            pipeline.name.clone(),
            Running {
                fingerprint,
                stop,
                tasks,
            },
        );
    }

    /// Stops pipelines and waits for them, at most `shutdown_timeout`.
    async fn drain(&self, names: &[String], stopping: Vec<Running>) -> bool {
        let tasks: Vec<_> = stopping.into_iter().flat_map(Running::stop).collect();
        let drained = tokio::time::timeout(
            self.config.daemon.shutdown_timeout,
            futures::future::join_all(tasks),
        )
        .await
        .is_ok();
        for name in names {
            self.health.remove_pipeline(name);
        }
        drained
    }

    /// SIGHUP: re-reads the configuration and rescans the plugin folder. An
    /// invalid configuration, or one naming plugins that are missing, is refused
    /// as a whole and the running pipelines carry on. Otherwise pipelines are
    /// added, removed or restarted (drained first) as the new configuration says;
    /// unchanged ones are not touched.
    async fn reload(&mut self) {
        service::reloading();
        let outcome = self.try_reload().await;
        match &outcome {
            Ok(summary) => {
                self.metrics.reload(ReloadOutcome::Applied);
                tracing::info!(
                    added = ?summary.added,
                    removed = ?summary.removed,
                    restarted = ?summary.restarted,
                    unchanged = ?summary.unchanged,
                    "reload applied"
                );
            }
            Err(e) => {
                self.metrics.reload(ReloadOutcome::Refused);
                tracing::error!(
                    error = format!("{e:#}"),
                    "reload refused; the running configuration stays"
                );
            }
        }
        service::ready(&self.status());
    }

    async fn try_reload(&mut self) -> anyhow::Result<ReloadSummary> {
        let config = Config::load(&self.config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
        if config.daemon.admin_addr != self.config.daemon.admin_addr
            || config.daemon.plugin_memory_limit != self.config.daemon.plugin_memory_limit
            || config.daemon.plugin_call_timeout != self.config.daemon.plugin_call_timeout
            || config.daemon.cache_dir != self.config.daemon.cache_dir
        {
            tracing::warn!(
                "admin_addr, cache_dir and plugin limits apply at the next restart, not on reload"
            );
        }
        let plugins = load_plugin_dir(
            &self.runtime,
            &config.daemon.plugin_dir,
            Some(&self.metrics),
        )
        .await?;
        let resolved = resolve(&config, &plugins)?;

        let mut summary = ReloadSummary::default();
        let wanted: BTreeMap<&str, (&PipelineConfig, PipelinePlugins)> = config
            .pipelines
            .iter()
            .zip(resolved)
            .map(|(p, r)| (p.name.as_str(), (p, r)))
            .collect();
        let mut to_stop = Vec::new();
        let mut stopping = Vec::new();
        for name in self.running.keys().cloned().collect::<Vec<_>>() {
            match wanted.get(name.as_str()) {
                None => summary.removed.push(name.clone()),
                Some((p, r)) if fingerprint(p, r) != self.running[&name].fingerprint => {
                    summary.restarted.push(name.clone())
                }
                Some(_) => {
                    summary.unchanged.push(name.clone());
                    continue;
                }
            }
            stopping.push(self.running.remove(&name).expect("listed above"));
            to_stop.push(name);
        }
        if !self.drain(&to_stop, stopping).await {
            tracing::warn!(
                "some stopped pipelines did not finish their batch in time; their messages will be redelivered"
            );
        }
        for (name, (p, r)) in wanted {
            if !self.running.contains_key(name) {
                if !summary.restarted.iter().any(|n| n == name) {
                    summary.added.push(name.to_string());
                }
                self.start(p, r);
            }
        }
        self.config = config;
        Ok(summary)
    }

    fn status(&self) -> String {
        format!(
            "{} pipelines running ({})",
            self.running.len(),
            self.config_path.display()
        )
    }
}

#[derive(Default)]
struct ReloadSummary {
    added: Vec<String>,
    removed: Vec<String>,
    restarted: Vec<String>,
    unchanged: Vec<String>,
}

/// Sends READY=1 once every consumer is connected to its stores and the broker.
fn notify_when_ready(health: Arc<Health>, status: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if health.readiness().is_ok() {
                tracing::info!("ready: every consumer is connected");
                service::ready(&status);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Runs the daemon on the configuration in `path` until SIGTERM or SIGINT.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let runtime = PluginRuntime::new(RuntimeConfig {
        cache_dir: Some(config.daemon.cache_dir.clone()),
        memory_limit: config.daemon.plugin_memory_limit,
        call_time_limit: config.daemon.plugin_call_timeout,
    })?;
    let metrics = Metrics::new();
    let health = Health::new();
    let (exit, exiting) = watch::channel(false);
    if let Some(addr) = config.daemon.admin_addr {
        admin::serve(addr, metrics.clone(), health.clone(), exiting.clone()).await?;
    }
    let plugins = load_plugin_dir(&runtime, &config.daemon.plugin_dir, Some(&metrics)).await?;
    let resolved = resolve(&config, &plugins)?;
    health.set_plugins_loaded(true);

    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut daemon = Daemon {
        config_path: path.to_path_buf(),
        config,
        runtime,
        metrics,
        health: health.clone(),
        running: BTreeMap::new(),
    };
    for (pipeline, plugins) in daemon.config.pipelines.clone().iter().zip(resolved) {
        daemon.start(pipeline, plugins);
    }
    tracing::info!(pipelines = daemon.running.len(), plugins = plugins.len(), config = %path.display(), "sluice running");
    let ready = notify_when_ready(health.clone(), daemon.status());
    let watchdog = service::spawn_watchdog(health.clone());

    let signal_name = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = hangup.recv() => {
                tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration and the plugins");
                daemon.reload().await;
            }
        }
    };
    ready.abort();
    service::stopping();
    health.set_draining(true);
    let timeout = daemon.config.daemon.shutdown_timeout;
    tracing::info!(
        signal = signal_name,
        ?timeout,
        "stopping: finishing in-flight batches"
    );
    let names: Vec<String> = daemon.running.keys().cloned().collect();
    let running: Vec<Running> = std::mem::take(&mut daemon.running).into_values().collect();
    if daemon.drain(&names, running).await {
        tracing::info!("stopped: every in-flight batch was committed and acked");
    } else {
        tracing::warn!(
            ?timeout,
            "stopped before every batch finished; their messages were not acked and will be redelivered"
        );
    }
    if let Some(w) = watchdog {
        w.abort();
    }
    let _ = exit.send(true);
    Ok(())
}
