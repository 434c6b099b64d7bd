//! What runs for a configuration and a plugin folder, and what is wrong.
//!
//! `sluice run` (at start and at every reload) and `sluice check` ask the same
//! question and get the same answer. The folder is scanned by
//! [`PluginRegistry`]: which files are plugins, each file's signature verdict,
//! which file's plugin is taken for each name (none while several files
//! declare it, unless one was in use before). Then [`resolve`] says, for each
//! pipeline, which plugins it runs, or every problem that keeps it from
//! running, each at its key path: a plugin missing, claimed by several files,
//! of the wrong world, not matching its pin, a writer importing a capability
//! its grants lack, a granted directory that cannot be one.
//!
//! What only one of them does stays with it: the daemon creates granted
//! directories ([`Directories::Create`]) and logs; `sluice check` asks each
//! source for its schema and opens each writer under a dry run.

use std::sync::Arc;

use crate::capabilities;
use crate::config::{Config, Problem};
use crate::pinning::{Mismatch, Pin};
use crate::pipeline::PipelinePlugins;
use crate::plugin_runtime::{LoadedPlugin, PluginKind};
use crate::reload::{PluginRegistry, file_name};

/// What to do with a writer's granted directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Directories {
    /// Create it now (`sluice run`), so that a pipeline does not start only
    /// to fail on first use.
    Create,
    /// Change nothing (`sluice check`): only a path that exists and is not a
    /// directory is a problem.
    Inspect,
}

/// What every pipeline of a configuration runs, and what is wrong.
#[derive(Debug)]
pub struct Resolution {
    /// One per pipeline, in configuration order.
    pub pipelines: Vec<PipelineResolution>,
    /// Problems with the folder that no pipeline's answer holds: files
    /// refused (at `plugin_dir/<file>`), and names several files declare that
    /// no pipeline uses.
    pub folder: Vec<Problem>,
}

/// The plugins one pipeline names, each found or not.
#[derive(Debug)]
pub struct PipelineResolution {
    /// The pipeline's name.
    pub name: String,
    /// Its source.
    pub source: Slot,
    /// Its writers, in configuration order.
    pub writers: Vec<Slot>,
}

/// One plugin a pipeline names (its source, or one writer).
#[derive(Debug)]
pub struct Slot {
    /// Its table's key path: `pipelines[i].source`, `pipelines[i].writers[j]`.
    pub at: String,
    /// The plugin the name found, in the right world (whatever else is wrong).
    pub plugin: Option<Arc<LoadedPlugin>>,
    /// How that plugin differs from its pin (also among `problems`).
    pub pin_mismatches: Vec<Mismatch>,
    /// What keeps it from running.
    pub problems: Vec<Problem>,
}

impl Slot {
    /// Whether its grants (a writer's) are among its problems.
    pub fn grants_refused(&self) -> bool {
        let grants = format!("{}.grants", self.at);
        self.problems.iter().any(|p| p.path.starts_with(&grants))
    }
}

impl PipelineResolution {
    /// Every slot: the source, then the writers.
    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        std::iter::once(&self.source).chain(&self.writers)
    }

    /// Every problem, source first.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.slots().flat_map(|s| &s.problems)
    }

    /// The plugins to run, or every problem, `; `-separated (each `path:
    /// message`), which is what a paused pipeline reports.
    pub fn plugins(&self) -> Result<PipelinePlugins, String> {
        let problems: Vec<String> = self.problems().map(ToString::to_string).collect();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let found = |slot: &Slot| slot.plugin.clone().expect("no problem: found");
        Ok(PipelinePlugins {
            source: found(&self.source),
            writers: self.writers.iter().map(found).collect(),
        })
    }
}

/// What each pipeline of `config` runs with the plugins `registry` holds (as
/// of its last scan), and what is wrong.
pub fn resolve(config: &Config, registry: &PluginRegistry, dirs: Directories) -> Resolution {
    let pipelines: Vec<PipelineResolution> = (0..config.pipelines.len())
        .map(|i| resolve_pipeline(config, i, registry, dirs))
        .collect();
    let mut folder: Vec<Problem> = registry
        .refused()
        .map(|(path, reason)| {
            // The path already names the file; the message need not repeat it.
            let prefix = format!("{}: ", path.display());
            let message = reason.strip_prefix(&prefix).unwrap_or(reason);
            Problem::new(format!("plugin_dir/{}", file_name(path)), message)
        })
        .collect();
    for (name, conflict) in registry.conflicts() {
        let named = config
            .pipelines
            .iter()
            .any(|p| p.source.plugin == *name || p.writers.iter().any(|w| w.plugin == *name));
        // A name a pipeline uses is reported there, where it stops something.
        if !named {
            folder.push(Problem::new("daemon.plugin_dir", conflict.describe(name)));
        }
    }
    Resolution { pipelines, folder }
}

/// Pipeline `i` of `config`: see [`resolve`].
fn resolve_pipeline(
    config: &Config,
    i: usize,
    registry: &PluginRegistry,
    dirs: Directories,
) -> PipelineResolution {
    let p = &config.pipelines[i];
    let plugins = registry.plugins();
    let signers = registry.signers();
    let find = |name: &str, kind: PluginKind, pin: &Pin, at: String| -> Slot {
        let mut slot = Slot {
            at: at.clone(),
            plugin: None,
            pin_mismatches: Vec::new(),
            problems: Vec::new(),
        };
        let plugin = match plugins.get(name) {
            Some(plugin) => plugin,
            None => {
                let message = match registry.conflicts().get(name) {
                    Some(conflict) => {
                        format!("{}; the pipeline is paused", conflict.describe(name))
                    }
                    None => {
                        let found = if plugins.is_empty() {
                            "the folder holds no plugin in use".to_string()
                        } else {
                            let names: Vec<&str> = plugins.keys().map(String::as_str).collect();
                            format!("found: {}", names.join(", "))
                        };
                        format!(
                            "no plugin named `{name}` in {} ({found})",
                            config.daemon.plugin_dir.display()
                        )
                    }
                };
                slot.problems
                    .push(Problem::new(format!("{at}.plugin"), message));
                return slot;
            }
        };
        if plugin.kind != kind {
            slot.problems.push(Problem::new(
                format!("{at}.plugin"),
                format!(
                    "`{name}` ({}) is a {} plugin; expected a {kind} plugin here",
                    file_name(&plugin.path),
                    plugin.kind
                ),
            ));
            return slot;
        }
        slot.plugin = Some(plugin.clone());
        // A plugin that does not match its pin is not run: the pipeline waits
        // for the pin or the file to change.
        slot.pin_mismatches = pin.check(plugin, signers.get(&plugin.path));
        for m in &slot.pin_mismatches {
            slot.problems.push(Problem::new(
                format!("{at}.{}", m.key),
                format!(
                    "`{name}` ({}) does not match its pin: {m}; the pipeline waits until the pin or the file changes",
                    file_name(&plugin.path)
                ),
            ));
        }
        slot
    };
    let source = find(
        &p.source.plugin,
        PluginKind::Source,
        &p.source.pin,
        format!("pipelines[{i}].source"),
    );
    let writers = p
        .writers
        .iter()
        .enumerate()
        .map(|(j, w)| {
            let mut slot = find(
                &w.plugin,
                PluginKind::Writer,
                &w.pin,
                format!("pipelines[{i}].writers[{j}]"),
            );
            // A writer that imports a capability its grants don't give is
            // refused before it is started, not on first use.
            if let Some(plugin) = &slot.plugin
                && let Err(why) = capabilities::check_writer_grants(plugin, &w.grants, &slot.at)
            {
                slot.problems
                    .push(Problem::new(format!("{}.grants", slot.at), why));
            }
            if let Some(dir) = &w.grants.directory {
                let ready = match dirs {
                    Directories::Create => capabilities::prepare_directory(dir),
                    Directories::Inspect => capabilities::check_directory(dir),
                };
                if let Err(why) = ready {
                    slot.problems
                        .push(Problem::new(format!("{}.grants.directory", slot.at), why));
                }
            }
            slot
        })
        .collect();
    PipelineResolution {
        name: p.name.clone(),
        source,
        writers,
    }
}
