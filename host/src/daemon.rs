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
use crate::metrics::{Metrics, ReloadOutcome};
use crate::pipeline::{self, PipelinePlugins, Reporting};
use crate::plugin_runtime::{PluginRuntime, RuntimeConfig};
use crate::reload::{PluginRegistry, ScanSummary};
use crate::resolution::{self, Directories, PipelineResolution};
use crate::service::Systemd;

/// A pipeline that is running, and what it was started from.
struct Running {
    /// Its configuration: a change restarts it.
    settings: PipelineConfig,
    /// The content of its plugins: a change is swapped in at a batch boundary.
    plugin_hashes: Vec<String>,
    /// Where new plugin versions are sent.
    plugins: watch::Sender<PipelinePlugins>,
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

/// Whether a reload must restart a running pipeline started with `running`
/// to apply `wanted`: any setting differs, nested ones (a writer's grants, a
/// TLS file's contents) and passwords included, since a running pipeline
/// keeps connecting with the settings it was started with.
fn must_restart(running: &PipelineConfig, wanted: &PipelineConfig) -> bool {
    running != wanted
}

fn plugin_hashes(plugins: &PipelinePlugins) -> Vec<String> {
    std::iter::once(&plugins.source)
        .chain(&plugins.writers)
        .map(|p| p.sha256.clone())
        .collect()
}

/// Everything `run` owns.
struct Daemon {
    config_path: PathBuf,
    config: Config,
    runtime: Arc<PluginRuntime>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    registry: PluginRegistry,
    running: BTreeMap<String, Running>,
    /// Pipelines waiting for a plugin, with the reason.
    paused: BTreeMap<String, String>,
    /// Where readiness and reloads are reported.
    systemd: Systemd,
}

impl Daemon {
    fn start(&mut self, pipeline: &PipelineConfig, plugins: PipelinePlugins) {
        let (stop, stopped) = watch::channel(false);
        let hashes = plugin_hashes(&plugins);
        let (plugins_tx, plugins_rx) = watch::channel(plugins);
        let reporting = Reporting {
            metrics: self.metrics.pipeline(&pipeline.name),
            health: self.health.clone(),
        };
        let tasks = pipeline::spawn(
            Arc::new(pipeline.clone()),
            self.runtime.clone(),
            plugins_rx,
            reporting,
            stopped,
        );
        let running = Running {
            settings: pipeline.clone(),
            plugin_hashes: hashes,
            plugins: plugins_tx,
            stop,
            tasks,
        };
        self.running.insert(pipeline.name.clone(), running);
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

    /// Makes the running pipelines match `config` and the plugins in use:
    /// pipelines are started, stopped (drained first), restarted when their
    /// settings or plugin contents changed, or paused while a plugin they need is
    /// missing (their messages wait in the queue); unchanged ones are not touched.
    async fn apply(&mut self, config: Config, summary: &mut ApplySummary) {
        let resolution = resolution::resolve(&config, &self.registry, Directories::Create);
        for pipeline in &resolution.pipelines {
            log_pin_mismatches(pipeline);
        }
        let wanted: BTreeMap<String, (PipelineConfig, Result<PipelinePlugins, String>)> = config
            .pipelines
            .iter()
            .zip(&resolution.pipelines)
            .map(|(p, r)| (p.name.clone(), (p.clone(), r.plugins())))
            .collect();
        let mut names = Vec::new();
        let mut stopping = Vec::new();
        for name in self.running.keys().cloned().collect::<Vec<_>>() {
            match wanted.get(&name) {
                None => summary.removed.push(name.clone()),
                Some((_, Err(_))) => {} // paused below
                Some((p, Ok(_))) if must_restart(&self.running[&name].settings, p) => {
                    summary.restarted.push(name.clone())
                }
                Some((_, Ok(r))) if plugin_hashes(r) != self.running[&name].plugin_hashes => {
                    // Same settings, new plugin versions: the consumers swap them
                    // in between two batches; no drain, no reconnect.
                    let running = self.running.get_mut(&name).expect("listed above");
                    running.plugin_hashes = plugin_hashes(r);
                    let _ = running.plugins.send(r.clone());
                    summary.swapped.push(name.clone());
                    continue;
                }
                Some(_) => {
                    summary.unchanged.push(name.clone());
                    continue;
                }
            }
            stopping.push(self.running.remove(&name).expect("listed above"));
            names.push(name);
        }
        if !self.drain(&names, stopping).await {
            tracing::warn!(
                "some stopped pipelines did not finish their batch in time; their messages will be redelivered"
            );
        }
        let was_paused = std::mem::take(&mut self.paused);
        for name in was_paused.keys() {
            if !wanted.contains_key(name) {
                self.health.remove_pipeline(name);
                summary.removed.push(name.clone());
            }
        }
        for (name, (p, r)) in wanted {
            if self.running.contains_key(&name) {
                continue;
            }
            match r {
                Ok(r) => {
                    if was_paused.contains_key(&name) {
                        summary.resumed.push(name.clone());
                    } else if !summary.restarted.contains(&name) {
                        summary.added.push(name.clone());
                    }
                    self.health.remove_pipeline(&name);
                    self.start(&p, r);
                }
                Err(reason) => {
                    tracing::warn!(pipeline = %name, reason = %reason, "pipeline paused: its messages wait in the queue until the reason is fixed (a plugin put in the folder, a grant or the config corrected)");
                    self.health
                        .consumer_down(&name, 0, &format!("paused: {reason}"));
                    summary.paused.push(name.clone());
                    self.paused.insert(name, reason);
                }
            }
        }
        self.config = config;
    }

    /// SIGHUP or a change in the plugin folder or the configuration file:
    /// re-reads the configuration and rescans the plugin folder. An invalid
    /// configuration is refused as a whole (every problem logged) and the running
    /// one stays; a refused plugin file leaves the version loaded before in use.
    async fn reload(&mut self, why: &str) {
        self.systemd.reloading();
        let config = match Config::load(&self.config_path) {
            Ok(config) => config,
            Err(e) => {
                self.metrics.reload(ReloadOutcome::Refused);
                // One line, every problem: log lines are read one at a time.
                let problems: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
                tracing::error!(
                    trigger = why,
                    file = %e.file.display(),
                    problems = %problems.join("; "),
                    "reload refused; the running configuration stays"
                );
                self.systemd.ready(&self.status());
                return;
            }
        };
        if config.daemon.admin_addr != self.config.daemon.admin_addr
            || config.daemon.plugin_memory_limit != self.config.daemon.plugin_memory_limit
            || config.daemon.plugin_call_timeout != self.config.daemon.plugin_call_timeout
            || config.daemon.plugin_call_deadline != self.config.daemon.plugin_call_deadline
            || config.daemon.store_call_timeout != self.config.daemon.store_call_timeout
            || config.daemon.cache_dir != self.config.daemon.cache_dir
        {
            tracing::warn!(
                "admin_addr, cache_dir and plugin limits apply at the next restart, not on reload"
            );
        }
        if config.daemon.plugin_dir != self.registry.dir() {
            self.registry = PluginRegistry::new(config.daemon.plugin_dir.clone());
        }
        if config.daemon.trusted_keys != self.config.daemon.trusted_keys {
            log_trust(&config);
        }
        self.registry
            .set_trusted_keys(config.daemon.trusted_keys.clone());
        let scan = match self.registry.scan(&self.runtime, Some(&self.metrics)).await {
            Ok(scan) => scan,
            Err(e) => {
                self.metrics.reload(ReloadOutcome::Refused);
                tracing::error!(
                    trigger = why,
                    error = crate::telemetry::error_chain(e.as_ref()),
                    "reload refused; the running configuration stays"
                );
                self.systemd.ready(&self.status());
                return;
            }
        };
        let mut summary = ApplySummary::default();
        self.apply(config, &mut summary).await;
        self.metrics.reload(ReloadOutcome::Applied);
        log_reload(why, &scan, &summary);
        self.systemd.ready(&self.status());
    }

    fn status(&self) -> String {
        format!(
            "{} pipelines running ({})",
            self.running.len(),
            self.config_path.display()
        )
    }
}

/// What happened to the pipelines in one reload.
#[derive(Debug, Default)]
struct ApplySummary {
    added: Vec<String>,
    removed: Vec<String>,
    restarted: Vec<String>,
    swapped: Vec<String>,
    resumed: Vec<String>,
    paused: Vec<String>,
    unchanged: Vec<String>,
}

/// Logs each plugin of `pipeline` that does not match its pin: it is not run,
/// and an operator must deploy the pinned file or change the pin.
fn log_pin_mismatches(pipeline: &PipelineResolution) {
    for slot in pipeline.slots() {
        let Some(plugin) = &slot.plugin else { continue };
        for m in &slot.pin_mismatches {
            tracing::error!(
                pipeline = %pipeline.name,
                at = %format!("{}.{}", slot.at, m.key),
                plugin = %plugin.info.name,
                file = %plugin.path.display(),
                pinned = %m.pinned,
                found = %m.found,
                "plugin does not match its pin: it is not run, and the pipeline waits until the pin or the file changes"
            );
        }
    }
}

/// The one line a reload reports its outcome in.
fn log_reload(trigger: &str, scan: &ScanSummary, applied: &ApplySummary) {
    tracing::info!(
        trigger,
        plugins_loaded = ?scan.loaded,
        plugins_replaced = ?scan.replaced,
        plugins_unloaded = ?scan.unloaded,
        plugins_refused = ?scan.refused,
        pipelines_added = ?applied.added,
        pipelines_removed = ?applied.removed,
        pipelines_restarted = ?applied.restarted,
        pipelines_swapped = ?applied.swapped,
        pipelines_resumed = ?applied.resumed,
        pipelines_paused = ?applied.paused,
        pipelines_unchanged = ?applied.unchanged,
        "reload applied"
    );
}

/// Says whether plugin files must be signed, and by which keys: once at start,
/// and when a reload changes `trusted_keys`.
fn log_trust(config: &Config) {
    match &config.daemon.trusted_keys {
        None => tracing::warn!(
            plugin_dir = %config.daemon.plugin_dir.display(),
            "plugins are not verified: without daemon.trusted_keys, any .wasm file written to the plugin folder runs, signed or not"
        ),
        Some(keys) => {
            let keys: Vec<String> = keys
                .iter()
                .map(|k| format!("{} ({})", k.path.display(), k.id))
                .collect();
            tracing::info!(
                plugin_dir = %config.daemon.plugin_dir.display(),
                trusted_keys = ?keys,
                "plugins are verified: a file without a valid signature by a trusted key is refused"
            );
        }
    }
}

/// Sends READY=1 once every consumer is connected to its stores and the broker.
fn notify_when_ready(health: Arc<Health>, status: String, systemd: Systemd) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // Paused pipelines wait for an operator to deploy a plugin; they keep
            // /readyz unready but must not keep systemd waiting for startup.
            let ready = match health.readiness() {
                Ok(()) => true,
                Err(reasons) => reasons.iter().all(|r| r.contains("paused: ")),
            };
            if ready {
                tracing::info!("ready: every consumer is connected");
                systemd.ready(&status);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Runs the daemon on the configuration in `path` until SIGTERM or SIGINT.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    // First of all, so that a SIGTERM during startup is a clean stop once the
    // pipelines are up, not the default action (death with a signal).
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let systemd = Systemd::from_env();
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let metrics = Metrics::new();
    let runtime = PluginRuntime::new(RuntimeConfig {
        cache_dir: Some(config.daemon.cache_dir.clone()),
        memory_limit: config.daemon.plugin_memory_limit,
        call_time_limit: config.daemon.plugin_call_timeout,
        call_deadline: config.daemon.plugin_call_deadline,
        store_call_timeout: config.daemon.store_call_timeout,
        metrics: Some(metrics.clone()),
    })?;
    let health = Health::new();
    let (exit, exiting) = watch::channel(false);
    if let Some(addr) = config.daemon.admin_addr {
        admin::serve(addr, metrics.clone(), health.clone(), exiting.clone()).await?;
    }
    log_trust(&config);
    let mut registry = PluginRegistry::new(config.daemon.plugin_dir.clone());
    registry.set_trusted_keys(config.daemon.trusted_keys.clone());
    let scan = registry.scan(&runtime, Some(&metrics)).await?;
    health.set_plugins_loaded(true);
    let (_watcher, mut changes) = crate::reload::watch(&config.daemon.plugin_dir, path)?;

    let mut daemon = Daemon {
        config_path: path.to_path_buf(),
        config: config.clone(),
        runtime,
        metrics,
        health: health.clone(),
        registry,
        running: BTreeMap::new(),
        paused: BTreeMap::new(),
        systemd: systemd.clone(),
    };
    let mut summary = ApplySummary::default();
    daemon.apply(config, &mut summary).await;
    log_reload("startup", &scan, &summary);
    tracing::info!(pipelines = daemon.running.len(), paused = daemon.paused.len(), config = %path.display(), "sluice running");
    let ready = notify_when_ready(health.clone(), daemon.status(), systemd.clone());
    let watchdog = systemd.spawn_watchdog(health.clone());

    let signal_name = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = hangup.recv() => {
                tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration and the plugins");
                daemon.reload("SIGHUP").await;
            }
            Some(()) = changes.recv() => {
                // Changes that came in while reloading are covered by this reload.
                while changes.try_recv().is_ok() {}
                daemon.reload("files changed").await;
            }
        }
    };
    ready.abort();
    systemd.stopping();
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const TEXT: &str = r#"
        [connections.rabbit]
        type = "amqp"
        url = "amqp://guest@127.0.0.1:5672/%2f"
        [connections.warehouse]
        type = "postgres"
        url = "postgres://postgres@127.0.0.1:5432/postgres"
        password_env = "PG_PASSWORD"
        [[pipelines]]
        name = "cdr"
        connection = "rabbit"
        queue = { name = "cdr" }
        source = { plugin = "json-source", config = { fields = { id = "id" } } }
        [[pipelines.writers]]
        plugin = "postgres-writer"
        grants = { postgres = ["warehouse"], tcp = ["127.0.0.1:6379"] }
        config = { connection = "warehouse", table = "cdr" }
    "#;

    /// The one pipeline of `text`, its Postgres password `password`.
    fn pipeline(text: &str, password: &str) -> PipelineConfig {
        let config = Config::from_str_with_env(text, Path::new("/etc/sluice.toml"), |name| {
            (name == "PG_PASSWORD").then(|| password.to_string())
        })
        .unwrap();
        config.pipelines[0].clone()
    }

    #[test]
    fn an_equal_configuration_read_again_does_not_restart_a_pipeline() {
        assert!(!must_restart(
            &pipeline(TEXT, "secret"),
            &pipeline(TEXT, "secret")
        ));
    }

    #[test]
    fn a_change_in_a_nested_setting_restarts_a_pipeline() {
        let running = pipeline(TEXT, "secret");
        let changed = [
            ("a writer's granted address", TEXT.replace("6379", "6380")),
            (
                "a value deep in the source's config",
                TEXT.replace("id = \"id\"", "id = \"call_id\""),
            ),
            (
                "a writer's config",
                TEXT.replace("table = \"cdr\"", "table = \"calls\""),
            ),
        ];
        for (what, text) in changed {
            assert!(
                must_restart(&running, &pipeline(&text, "secret")),
                "{what} changed and the pipeline was not restarted"
            );
        }
        // A password is not in the pipeline's Debug text, and still a setting:
        // the running pipeline would keep connecting with the old one.
        let rotated = pipeline(TEXT, "rotated");
        assert_eq!(format!("{running:?}"), format!("{rotated:?}"));
        assert!(must_restart(&running, &rotated));
    }
}
