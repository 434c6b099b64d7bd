//! `sluice check`: whether a valid [`Config`] can run with the plugins in its
//! plugin folder, without reaching a broker or a database.
//!
//! Every `*.wasm` file in the folder is loaded once (a file that fails to load is
//! a problem of its own); then every plugin a pipeline names must be there, in
//! the right world, each source must accept its configuration and declare a
//! valid schema, and each writer's grants must give the capabilities its
//! component imports (`http`, `tcp`).
//!
//! Each writer is then opened with its configuration and the source's schema
//! under a dry run of its grants ([`capabilities::dry_run`]): the writer parses
//! its configuration as it would at run time, and every capability checks the
//! grant but reaches nothing (no connection, no request, no file). A writer that
//! refuses its configuration is a problem at `writers[j].config`, with the
//! writer's own words; one that traps is a problem too. An error the dry run
//! caused (a connection withheld) is not: the store itself (reachable, table
//! present, password right) is not checked, since that needs connecting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::capabilities;
use crate::capabilities::dry_run::DryRun;
use crate::config::{Config, Problem, WriterConfig};
use crate::plugin_runtime::{
    CallError, LoadedPlugin, PluginKind, PluginRuntime, Schema, SourceInstance, WriterInstance,
};
use crate::reload::file_name;
use crate::signing::{self, Signer, TrustedKey};

/// Every problem that keeps `config` from running with its plugins; empty when
/// none.
pub async fn check(config: &Config, runtime: &Arc<PluginRuntime>) -> Vec<Problem> {
    let mut problems = Vec::new();
    let dir = &config.daemon.plugin_dir;
    let keys = config.daemon.trusted_keys.as_deref();
    let mut signers = BTreeMap::new();
    let plugins = match load_folder(runtime, dir, keys, &mut signers, &mut problems).await {
        Ok(plugins) => plugins,
        Err(problem) => return vec![problem],
    };
    let available = || {
        if plugins.is_empty() {
            "the folder holds no plugin".to_string()
        } else {
            let names: Vec<&str> = plugins.keys().map(String::as_str).collect();
            format!("found: {}", names.join(", "))
        }
    };

    for (i, pipeline) in config.pipelines.iter().enumerate() {
        let at = format!("pipelines[{i}]");
        // What the source declares, for its writers to be opened with.
        let mut schema: Option<Schema> = None;
        let wanted = std::iter::once((
            format!("{at}.source"),
            &pipeline.source.plugin,
            PluginKind::Source,
            None,
        ))
        .chain(pipeline.writers.iter().enumerate().map(|(j, w)| {
            (
                format!("{at}.writers[{j}]"),
                &w.plugin,
                PluginKind::Writer,
                Some(w),
            )
        }));
        for (table, name, kind, writer) in wanted {
            let path = format!("{table}.plugin");
            let Some(found) = plugins.get(name.as_str()) else {
                problems.push(Problem::new(
                    path,
                    format!(
                        "no plugin named `{name}` in {} ({})",
                        dir.display(),
                        available()
                    ),
                ));
                continue;
            };
            if found.len() > 1 {
                let files: Vec<String> = found.iter().map(|p| file_name(&p.path)).collect();
                problems.push(Problem::new(
                    &path,
                    format!(
                        "plugin `{name}` is in {} files ({}); which one runs would be a matter of chance: keep one",
                        found.len(),
                        files.join(", ")
                    ),
                ));
            }
            let plugin = &found[0];
            if plugin.kind != kind {
                problems.push(Problem::new(
                    path,
                    format!(
                        "`{name}` ({}) is a {} plugin; expected a {kind} plugin here",
                        file_name(&plugin.path),
                        plugin.kind
                    ),
                ));
                continue;
            }
            // A plugin that does not match its pin is not run: the pipeline
            // would wait for the pin or the file to change.
            let pin = writer.map_or(&pipeline.source.pin, |w| &w.pin);
            for m in pin.check(plugin, signers.get(&plugin.path)) {
                problems.push(Problem::new(
                    format!("{table}.{}", m.key),
                    format!(
                        "`{name}` ({}) does not match its pin: {m}; the pipeline would wait until the pin or the file changes",
                        file_name(&plugin.path)
                    ),
                ));
            }
            if let Some(writer) = writer {
                let before = problems.len();
                if let Err(why) = capabilities::check_writer_grants(plugin, &writer.grants, &table)
                {
                    problems.push(Problem::new(format!("{table}.grants"), why));
                }
                // Created when the pipeline starts; `check` changes nothing.
                if let Some(dir) = &writer.grants.directory
                    && dir.exists()
                    && !dir.is_dir()
                {
                    problems.push(Problem::new(
                        format!("{table}.grants.directory"),
                        format!("{} exists and is not a directory", dir.display()),
                    ));
                }
                // A writer whose grants are wrong would not be opened at run
                // time either; one mistake is reported once.
                if problems.len() == before
                    && let Some(schema) = &schema
                    && let Some(problem) =
                        open_writer(runtime, plugin, &pipeline.name, writer, schema, &table).await
                {
                    problems.push(problem);
                }
            }
            if kind == PluginKind::Source {
                let config_json = pipeline.source.config.to_string();
                let mut instance = SourceInstance::new(
                    runtime.clone(),
                    Arc::new(plugin.clone()),
                    &pipeline.name,
                    config_json,
                );
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
        }
    }
    problems
}

/// Opens the writer at `table` (`pipelines[i].writers[j]`) under a dry run of
/// its grants; the problem, if its configuration or its code is at fault.
async fn open_writer(
    runtime: &Arc<PluginRuntime>,
    plugin: &LoadedPlugin,
    pipeline: &str,
    writer: &WriterConfig,
    schema: &Schema,
    table: &str,
) -> Option<Problem> {
    let run = Arc::new(DryRun::new());
    let mut instance = WriterInstance::new(
        runtime.clone(),
        Arc::new(plugin.clone()),
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

/// Loads every `*.wasm` in `dir`, by plugin name (several files may claim one
/// name). A file that fails to load is pushed to `problems`; a folder that cannot
/// be read is the error.
async fn load_folder(
    runtime: &Arc<PluginRuntime>,
    dir: &Path,
    trusted_keys: Option<&[TrustedKey]>,
    signers: &mut BTreeMap<PathBuf, Signer>,
    problems: &mut Vec<Problem>,
) -> Result<BTreeMap<String, Vec<LoadedPlugin>>, Problem> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Problem::new(
            "daemon.plugin_dir",
            format!(
                "cannot read the plugin folder {}: {e}; expected a folder of .wasm plugins (build them with `sluice plugin build --out {}`)",
                dir.display(),
                dir.display()
            ),
        )
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
        .collect();
    files.sort();
    let mut plugins: BTreeMap<String, Vec<LoadedPlugin>> = BTreeMap::new();
    for file in files {
        // As the daemon does: the bytes whose signature is checked are loaded.
        let loaded = match std::fs::read(&file) {
            Err(e) => Err(format!("cannot read the file: {e}")),
            Ok(bytes) => match trusted_keys.map(|keys| signing::check(&file, &bytes, keys)) {
                Some(Err(e)) => Err(e.to_string()),
                signed => {
                    if let Some(Ok(signer)) = signed {
                        signers.insert(file.clone(), signer);
                    }
                    runtime
                        .load_bytes(&file, bytes)
                        .await
                        .map_err(|e| e.to_string())
                }
            },
        };
        match loaded {
            Ok(plugin) => plugins
                .entry(plugin.info.name.clone())
                .or_default()
                .push(plugin),
            Err(message) => {
                // The path already names the file; the message need not repeat it.
                let prefix = format!("{}: ", file.display());
                let message = message.strip_prefix(&prefix).unwrap_or(&message);
                problems.push(Problem::new(
                    format!("plugin_dir/{}", file_name(&file)),
                    message,
                ));
            }
        }
    }
    Ok(plugins)
}

#[cfg(test)]
mod tests {

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
