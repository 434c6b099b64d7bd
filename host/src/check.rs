//! `sluice check`: whether a valid [`Config`] can run with the plugins in its
//! plugin folder, without reaching a broker or a database.
//!
//! The folder is scanned and each pipeline's plugins resolved exactly as
//! `sluice run` does it ([`crate::resolution`]): the same files are plugins,
//! the same one is taken for each name, and what keeps a pipeline from running
//! there (a file refused, a plugin missing, claimed by two files, of the wrong
//! world, off its pin, a writer's grants short of its imports) is a problem
//! here. Then each source must accept its configuration and declare a valid
//! schema.
//!
//! Each writer is then opened with its configuration and the source's schema
//! under a dry run of its grants ([`crate::capabilities::dry_run`]): the writer parses
//! its configuration as it would at run time, and every capability checks the
//! grant but reaches nothing (no connection, no request, no file). A writer that
//! refuses its configuration is a problem at `writers[j].config`, with the
//! writer's own words; one that traps is a problem too. An error the dry run
//! caused (a connection withheld) is not: the store itself (reachable, table
//! present, password right) is not checked, since that needs connecting.

use std::sync::Arc;

use tracing::instrument::WithSubscriber as _;

use crate::capabilities::dry_run::DryRun;
use crate::config::{Config, Problem, WriterConfig};
use crate::plugin_runtime::{
    CallError, LoadedPlugin, PluginRuntime, Schema, SourceInstance, WriterInstance,
};
use crate::reload::PluginRegistry;
use crate::resolution::{self, Directories};

/// Every problem that keeps `config` from running with its plugins; empty when
/// none.
pub async fn check(config: &Config, runtime: &Arc<PluginRuntime>) -> Vec<Problem> {
    check_with_registry(config, runtime).await.0
}

/// Like [`check`], with the plugin folder as the daemon would hold it (`None`
/// when the folder cannot be read), for listing who signed what.
pub async fn check_with_registry(
    config: &Config,
    runtime: &Arc<PluginRuntime>,
) -> (Vec<Problem>, Option<PluginRegistry>) {
    let dir = &config.daemon.plugin_dir;
    let mut registry = PluginRegistry::new(dir.clone());
    registry.set_trusted_keys(config.daemon.trusted_keys.clone());
    // The daemon's scan, without its log lines: what they say (a file
    // refused, a name claimed twice) is among the problems printed.
    let scan = registry
        .scan(runtime, None)
        .with_subscriber(tracing::subscriber::NoSubscriber::default())
        .await;
    if let Err(e) = scan {
        let problem = Problem::new(
            "daemon.plugin_dir",
            format!(
                "{}; expected a folder of .wasm plugins (build them with `sluice plugin build --out {}`)",
                crate::telemetry::error_chain(e.as_ref()),
                dir.display()
            ),
        );
        return (vec![problem], None);
    }
    let resolution = resolution::resolve(config, &registry, Directories::Inspect);
    let mut problems = resolution.folder;
    for (i, (pipeline, resolved)) in config
        .pipelines
        .iter()
        .zip(&resolution.pipelines)
        .enumerate()
    {
        let at = format!("pipelines[{i}]");
        problems.extend(resolved.source.problems.iter().cloned());
        // What the source declares, for its writers to be opened with.
        let mut schema: Option<Schema> = None;
        if let Some(plugin) = &resolved.source.plugin {
            let config_json = pipeline.source.config.to_string();
            let mut instance =
                SourceInstance::new(runtime.clone(), plugin.clone(), &pipeline.name, config_json);
            match instance.schema().await {
                Ok(declared) => schema = Some(declared),
                Err(e) => {
                    let path = if e.is_config_error() {
                        format!("{at}.source.config")
                    } else {
                        format!("{at}.source")
                    };
                    problems.push(Problem::new(path, e.to_string()));
                }
            }
        }
        for (writer, slot) in pipeline.writers.iter().zip(&resolved.writers) {
            problems.extend(slot.problems.iter().cloned());
            // A writer whose grants are wrong would not be opened at run time
            // either; one mistake is reported once.
            if let Some(plugin) = &slot.plugin
                && !slot.grants_refused()
                && let Some(schema) = &schema
                && let Some(problem) =
                    open_writer(runtime, plugin, &pipeline.name, writer, schema, &slot.at).await
            {
                problems.push(problem);
            }
        }
    }
    (problems, Some(registry))
}

/// Opens the writer at `table` (`pipelines[i].writers[j]`) under a dry run of
/// its grants; the problem, if its configuration or its code is at fault.
async fn open_writer(
    runtime: &Arc<PluginRuntime>,
    plugin: &Arc<LoadedPlugin>,
    pipeline: &str,
    writer: &WriterConfig,
    schema: &Schema,
    table: &str,
) -> Option<Problem> {
    let run = Arc::new(DryRun::new());
    let mut instance = WriterInstance::new(
        runtime.clone(),
        plugin.clone(),
        pipeline,
        writer.config.to_string(),
        schema.clone(),
        writer.grants.dry_run(run.clone()),
    );
    let error = instance.open().await.err()?;
    drop(instance);
    judge_open(&error, &run, table)
}

/// Whether a writer's failed `open` under the dry run `run` is a problem.
///
/// A retriable error is the dry run's answer coming back (the configuration
/// parsed; the store is not checked). A configuration error is the writer's
/// verdict on its `config`, unless the dry run refused a granted TCP
/// connection, which the SDK reports as a configuration error (access
/// denied). Any other error after something was withheld may be the dry run's
/// doing too. A crash (trap, time or memory limit) is always a problem.
fn judge_open(error: &CallError, run: &DryRun, table: &str) -> Option<Problem> {
    let withheld = run.withheld();
    let withheld_text = || {
        let names: Vec<String> = withheld.iter().map(ToString::to_string).collect();
        names.join(", ")
    };
    if error.is_crash() {
        let mut message = error.to_string();
        if !withheld.is_empty() {
            message.push_str(&format!(
                " (after `sluice check` withheld its {}: a writer must answer a store it cannot reach with a retriable error)",
                withheld_text()
            ));
        }
        return Some(Problem::new(table, message));
    }
    if error.is_retriable() {
        return None;
    }
    if let CallError::Capability { .. } = error {
        // The host could not set up the grants (the plugin did not run).
        return Some(Problem::new(format!("{table}.grants"), error.to_string()));
    }
    if error.is_config_error() {
        if run.withheld_tcp() {
            return None;
        }
        return Some(Problem::new(format!("{table}.config"), error.to_string()));
    }
    if !withheld.is_empty() {
        return None;
    }
    Some(Problem::new(table, error.to_string()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::plugin_runtime::RuntimeConfig;

    fn config_in(dir: &Path) -> Config {
        let text = r#"
            [connections.rabbit]
            type = "amqp"
            url = "amqp://guest@127.0.0.1:5672/%2f"
            [[pipelines]]
            name = "cdr"
            connection = "rabbit"
            queue = { name = "cdr" }
            source = { plugin = "json-source" }
            writers = [{ plugin = "postgres-writer" }]
        "#;
        Config::from_str_with_env(text, &dir.join("config.toml"), |_| None).unwrap()
    }

    fn runtime() -> Arc<PluginRuntime> {
        PluginRuntime::new(RuntimeConfig::default()).unwrap()
    }

    #[tokio::test]
    async fn reports_a_missing_plugin_folder_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_in(dir.path());
        config.daemon.plugin_dir = dir.path().join("nowhere");
        let problems = check(&config, &runtime()).await;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, "daemon.plugin_dir");
        assert!(problems[0].message.contains("nowhere"), "{problems:?}");
    }

    #[tokio::test]
    async fn reports_bad_files_and_every_missing_plugin() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("plugins-dist")).unwrap();
        std::fs::write(dir.path().join("plugins-dist/broken.wasm"), b"not wasm").unwrap();
        std::fs::write(dir.path().join("plugins-dist/notes.txt"), b"ignored").unwrap();
        let problems = check(&config_in(dir.path()), &runtime()).await;
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "plugin_dir/broken.wasm",
                "pipelines[0].source.plugin",
                "pipelines[0].writers[0].plugin"
            ],
            "{problems:?}"
        );
        assert!(problems[0].message.contains("not a WebAssembly file"));
        assert!(
            problems[1]
                .message
                .contains("no plugin named `json-source`")
        );
        assert!(problems[1].message.contains("holds no plugin"));
    }
}
