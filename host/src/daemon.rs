//! `sluice run`: loads the plugins, starts every pipeline, and on SIGTERM or
//! SIGINT drains them (in-flight batches commit and are acked) before exiting.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::config::Config;
use crate::pipeline::{self, PipelinePlugins};
use crate::plugin_runtime::{LoadedPlugin, PluginKind, PluginRuntime, RuntimeConfig};

/// Plugins by the name they declare.
pub type PluginSet = BTreeMap<String, Arc<LoadedPlugin>>;

/// Loads every `*.wasm` file of `dir`. A file that is refused is logged with the
/// reason and left out; the caller finds out when a pipeline names it.
pub async fn load_plugin_dir(
    runtime: &Arc<PluginRuntime>,
    dir: &Path,
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
            Err(e) => tracing::error!(error = %e, "plugin refused"),
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

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let runtime = PluginRuntime::new(RuntimeConfig {
        cache_dir: Some(config.daemon.cache_dir.clone()),
        memory_limit: config.daemon.plugin_memory_limit,
        call_time_limit: config.daemon.plugin_call_timeout,
    })?;
    let plugins = load_plugin_dir(&runtime, &config.daemon.plugin_dir).await?;
    let resolved = resolve(&config, &plugins)?;

    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    for (pipeline, plugins) in config.pipelines.iter().zip(resolved) {
        tasks.extend(pipeline::spawn(
            Arc::new(pipeline.clone()),
            runtime.clone(),
            plugins,
            stopped.clone(),
        ));
    }
    tracing::info!(pipelines = config.pipelines.len(), plugins = plugins.len(), config = %config.file.display(), "sluice running");

    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal = signal_name, timeout = ?config.daemon.shutdown_timeout, "stopping: finishing in-flight batches");
    let _ = stop.send(true);
    let drain = futures::future::join_all(tasks);
    match tokio::time::timeout(config.daemon.shutdown_timeout, drain).await {
        Ok(_) => tracing::info!("stopped: every in-flight batch was committed and acked"),
        Err(_) => tracing::warn!(
            timeout = ?config.daemon.shutdown_timeout,
            "stopped before every batch finished; their messages were not acked and will be redelivered"
        ),
    }
    Ok(())
}
