//! Hot reload: the plugin folder, kept by file, and the watcher that tells the
//! daemon when the folder or the configuration file changed.
//!
//! The deploy contract: write `name.wasm.tmp` (any `*.tmp`) in the plugin folder,
//! then rename it to `name.wasm`. Temporary files are ignored; a file whose
//! content did not change is a no-op; a new or changed file is loaded (compiled
//! and checked off the pipelines' tasks) and, if it is refused, the version that
//! was loaded from that file before stays in use.
//!
//! Which files are plugins: `*.wasm` files directly in the folder, except
//! dot-files (editors' and copy tools' temporary files) and `*.tmp`.
//!
//! A plugin's name is its identity: pipelines name the plugins they run, and a
//! writer receives the grants of the pipeline that names it. So a file cannot
//! take a plugin's place by declaring its name: while two files declare the
//! same name, neither is taken in its place. The version in use before the
//! second file appeared keeps running; at start (and in `sluice check`, which
//! has no "before"), or if that version's file was changed meanwhile, none
//! runs and the pipelines that need it are paused. It ends when one of the
//! files is removed. The rule depends on the order files appeared in, never on
//! their names, so renaming a file cannot win the name.
//!
//! This registry is the one scan of the folder: `sluice run`, `sluice check`
//! and `sluice plugins` all use it, and [`crate::resolution`] turns what it
//! holds into what each pipeline runs.
//!
//! With trusted keys ([`PluginRegistry::set_trusted_keys`]), a file is loaded
//! only if its signature (`name.wasm.minisig`) by a trusted key verifies
//! against the bytes read for loading; otherwise it is refused like a corrupt
//! file. A signature that changes alone (the file re-signed) is checked again;
//! if the file's content is the one in use, the plugin is not reloaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use notify_debouncer_full::notify::event::{AccessKind, AccessMode};
use notify_debouncer_full::notify::{EventKind, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::metrics::{LoadOutcome, Metrics};
use crate::plugin_runtime::{LoadedPlugin, PluginRuntime};
use crate::signing::{self, Signer, TrustedKey};

/// Plugins by the name they declare.
pub type PluginSet = BTreeMap<String, Arc<LoadedPlugin>>;

/// How long the folder must be quiet before a change is acted on.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// What the plugin folder held at the last scan, file by file.
pub struct PluginRegistry {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileEntry>,
    /// The plugins in use, by name, as of the last scan.
    in_use: PluginSet,
    /// The names several files declare, as of the last scan.
    conflicts: BTreeMap<String, Conflict>,
    /// The keys plugin files must be signed with; `None`: not verified.
    trusted_keys: Option<Vec<TrustedKey>>,
}

struct FileEntry {
    /// Hash of the content last seen in the file (loaded or refused), and of
    /// its signature when signatures are verified.
    seen: String,
    /// The plugin in use from this file: the last version that loaded.
    plugin: Option<Arc<LoadedPlugin>>,
    /// Who signed the plugin in use (when signatures are verified).
    signer: Option<Signer>,
    /// Why the content last seen was refused, if it was.
    refused: Option<String>,
    /// Why its plugin is not in use though it loaded: another file declares
    /// the same name.
    conflict: Option<String>,
}

/// What a scan changed.
#[derive(Debug, Default)]
pub struct ScanSummary {
    /// New plugins (`name@version`).
    pub loaded: Vec<String>,
    /// Plugins whose file changed and loaded (`name@old -> name@new`).
    pub replaced: Vec<String>,
    /// Plugins whose file was removed.
    pub unloaded: Vec<String>,
    /// Files refused, with the reason (the old version, if any, stays).
    pub refused: Vec<String>,
}

impl ScanSummary {
    /// Whether the scan changed which plugins are in use.
    pub fn changed(&self) -> bool {
        !(self.loaded.is_empty() && self.replaced.is_empty() && self.unloaded.is_empty())
    }
}

/// A plugin name that several files declare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The files, in path order.
    pub files: Vec<PathBuf>,
    /// The file whose plugin keeps running (it was in use before the others
    /// appeared); `None`: none runs.
    pub kept: Option<PathBuf>,
}

impl Conflict {
    /// What is wrong, naming the files and what runs.
    pub fn describe(&self, name: &str) -> String {
        let files: Vec<String> = self.files.iter().map(|p| file_name(p)).collect();
        let runs = match &self.kept {
            Some(kept) => format!(
                "the version in use keeps running ({}, which was there first)",
                file_name(kept)
            ),
            None => "none of them runs".to_string(),
        };
        format!(
            "{} files declare the plugin name `{name}` ({}): a name is a plugin's identity, so no file takes its place until all but one are removed; {runs}",
            self.files.len(),
            files.join(", ")
        )
    }
}

/// The status of one file, as `sluice plugins` and the logs show it.
#[derive(Debug)]
pub struct FileStatus {
    /// The file.
    pub path: PathBuf,
    /// The plugin in use from it.
    pub plugin: Option<Arc<LoadedPlugin>>,
    /// Who signed the plugin in use, when signatures are verified.
    pub signer: Option<Signer>,
    /// Why its current content was refused.
    pub refused: Option<String>,
}

/// The file name of `path`, for messages (the whole path if it has none).
pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Whether `path` is a plugin file (see the module's docs).
fn is_candidate(path: &Path) -> bool {
    path.extension().is_some_and(|x| x == "wasm")
        && !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Whether `path` is a plugin's signature (`name.wasm.minisig`): re-signing a
/// file changes only its signature, and must be noticed.
fn is_signature(path: &Path) -> bool {
    path.to_str()
        .and_then(|p| p.strip_suffix(signing::SIGNATURE_SUFFIX))
        .is_some_and(|plugin| is_candidate(Path::new(plugin)))
}

impl PluginRegistry {
    /// An empty registry for `dir`; call [`scan`](Self::scan) to fill it.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            files: BTreeMap::new(),
            in_use: PluginSet::new(),
            conflicts: BTreeMap::new(),
            trusted_keys: None,
        }
    }

    /// Sets the keys plugin files must be signed with (`None`: signatures are
    /// not checked). A change applies to every file at the next scan; files
    /// whose content is in use and still verifies are not reloaded.
    pub fn set_trusted_keys(&mut self, keys: Option<Vec<TrustedKey>>) {
        if keys != self.trusted_keys {
            self.trusted_keys = keys;
            for entry in self.files.values_mut() {
                entry.seen.clear();
            }
        }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Brings the registry up to date with the folder. Loading happens only for
    /// files whose content changed.
    pub async fn scan(
        &mut self,
        runtime: &Arc<PluginRuntime>,
        metrics: Option<&Metrics>,
    ) -> anyhow::Result<ScanSummary> {
        let mut summary = ScanSummary::default();
        let mut present: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading the plugin folder {}", self.dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_candidate(p))
            .collect();
        present.sort();
        for path in &present {
            // What the file holds now: its bytes and their hash, or why it
            // cannot be read; and what was seen, to skip a file that did not
            // change.
            let (content, signature, seen) = match std::fs::read(path) {
                // Removed since the folder was listed: the next scan sees it gone.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    let seen = format!("unreadable: {e}");
                    (Err(e), None, seen)
                }
                Ok(bytes) => {
                    let hash = hex::encode(Sha256::digest(&bytes));
                    let signature = self
                        .trusted_keys
                        .as_ref()
                        .map(|_| signing::read_signature(path));
                    let seen = match &signature {
                        None => hash.clone(),
                        Some(Ok(text)) => format!("{hash} {}", hex::encode(Sha256::digest(text))),
                        Some(Err(e)) => format!("{hash} {e}"),
                    };
                    (Ok((bytes, hash)), signature, seen)
                }
            };
            if self.files.get(path).is_some_and(|e| e.seen == seen) {
                continue;
            }
            let previous = self.files.get(path).and_then(|e| e.plugin.clone());
            let previous_signer = self.files.get(path).and_then(|e| e.signer.clone());
            let (bytes, hash) = match content {
                Ok(content) => content,
                Err(e) => {
                    let reason = format!("{}: cannot read the file: {e}", path.display());
                    self.refuse(
                        path,
                        seen,
                        reason,
                        previous,
                        previous_signer,
                        metrics,
                        &mut summary,
                    );
                    continue;
                }
            };
            // The signature is checked against the bytes just read, and those
            // same bytes are loaded: the file cannot change in between.
            let signer = match (&self.trusted_keys, signature) {
                (Some(keys), Some(text)) => {
                    match text.and_then(|text| signing::verify(path, &bytes, &text, keys)) {
                        Ok(signer) => Some(signer),
                        Err(e) => {
                            let reason = format!("{}: {e}", path.display());
                            self.refuse(
                                path,
                                seen,
                                reason,
                                previous,
                                previous_signer,
                                metrics,
                                &mut summary,
                            );
                            continue;
                        }
                    }
                }
                _ => None,
            };
            if let Some(plugin) = previous.as_ref().filter(|p| p.sha256 == hash) {
                // Re-signed, or the trusted keys changed: the content in use is
                // still accepted, so it is not loaded again.
                tracing::info!(
                    plugin = %plugin.info.label(),
                    file = %path.display(),
                    signer = %signer.as_ref().map(ToString::to_string).unwrap_or_else(|| "-".into()),
                    "plugin file checked again (re-signed, or the trusted keys changed); the plugin in use is unchanged"
                );
                self.files.insert(
                    path.clone(),
                    FileEntry {
                        seen,
                        plugin: previous,
                        signer,
                        refused: None,
                        conflict: None,
                    },
                );
                continue;
            }
            match runtime.load_bytes(path, bytes).await {
                Ok(plugin) => {
                    let plugin = Arc::new(plugin);
                    if let Some(m) = metrics {
                        m.plugin_loaded(&plugin.info.name, LoadOutcome::Loaded);
                    }
                    tracing::info!(
                        plugin = %plugin.info.label(),
                        world = %plugin.kind,
                        file = %path.display(),
                        sha256 = &plugin.sha256[..12],
                        signer = %signer.as_ref().map(ToString::to_string).unwrap_or_else(|| "-".into()),
                        cache = ?plugin.cache,
                        load_ms = plugin.load_time.as_secs_f64() * 1e3,
                        "plugin loaded"
                    );
                    match &previous {
                        Some(old) => summary.replaced.push(format!(
                            "{} -> {}",
                            old.info.label(),
                            plugin.info.label()
                        )),
                        None => summary.loaded.push(plugin.info.label()),
                    }
                    self.files.insert(
                        path.clone(),
                        FileEntry {
                            seen,
                            plugin: Some(plugin),
                            signer,
                            refused: None,
                            conflict: None,
                        },
                    );
                }
                Err(e) => {
                    self.refuse(
                        path,
                        seen,
                        e.to_string(),
                        previous,
                        previous_signer,
                        metrics,
                        &mut summary,
                    );
                }
            }
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(plugin) = self.files.remove(&path).and_then(|e| e.plugin) {
                tracing::info!(plugin = %plugin.info.label(), file = %path.display(), "plugin unloaded: its file was removed");
                summary.unloaded.push(plugin.info.label());
            }
        }
        self.settle_names(&mut summary);
        Ok(summary)
    }

    /// Records that the content `seen` in `path` was refused for `reason` (which
    /// names the file); the plugin loaded before from it, if any, stays.
    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &mut self,
        path: &Path,
        seen: String,
        reason: String,
        previous: Option<Arc<LoadedPlugin>>,
        previous_signer: Option<Signer>,
        metrics: Option<&Metrics>,
        summary: &mut ScanSummary,
    ) {
        if let Some(m) = metrics {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            m.plugin_loaded(&name, LoadOutcome::Refused);
        }
        let kept = previous.as_ref().map(|p| p.info.label());
        tracing::error!(error = %reason, kept = ?kept, "plugin refused");
        summary.refused.push(reason.clone());
        self.files.insert(
            path.to_path_buf(),
            FileEntry {
                seen,
                plugin: previous,
                signer: previous_signer,
                refused: Some(reason),
                conflict: None,
            },
        );
    }

    /// Decides which plugin is in use for each name (see the module's docs on
    /// names claimed by several files).
    fn settle_names(&mut self, summary: &mut ScanSummary) {
        let mut claims: BTreeMap<String, Vec<(PathBuf, Arc<LoadedPlugin>)>> = BTreeMap::new();
        for (path, entry) in &mut self.files {
            entry.conflict = None;
            if let Some(plugin) = &entry.plugin {
                claims
                    .entry(plugin.info.name.clone())
                    .or_default()
                    .push((path.clone(), plugin.clone()));
            }
        }
        let mut in_use = PluginSet::new();
        let mut conflicts = BTreeMap::new();
        for (name, claimants) in claims {
            if let [(_, plugin)] = claimants.as_slice() {
                in_use.insert(name, plugin.clone());
                continue;
            }
            let kept = self.in_use.get(&name).and_then(|before| {
                claimants
                    .iter()
                    .find(|(_, p)| Arc::ptr_eq(p, before))
                    .map(|(_, p)| p.clone())
            });
            let conflict = Conflict {
                files: claimants.iter().map(|(p, _)| p.clone()).collect(),
                kept: kept.as_ref().map(|p| p.path.clone()),
            };
            let reason = conflict.describe(&name);
            let files: Vec<String> = conflict.files.iter().map(|p| file_name(p)).collect();
            // ERROR: an operator must remove a file, and until then either a
            // deploy is not taking effect or pipelines are paused.
            match &kept {
                Some(plugin) => {
                    tracing::error!(plugin = %plugin.info.label(), kept = %file_name(&plugin.path), files = ?files, "{reason}")
                }
                None => {
                    tracing::error!(plugin = %name, kept = "none", files = ?files, "{reason}; the pipelines that need it are paused")
                }
            }
            summary.refused.push(reason.clone());
            conflicts.insert(name.clone(), conflict);
            for (path, plugin) in &claimants {
                if kept.as_ref().is_some_and(|k| Arc::ptr_eq(k, plugin)) {
                    continue;
                }
                if let Some(entry) = self.files.get_mut(path) {
                    entry.conflict = Some(reason.clone());
                }
            }
            if let Some(plugin) = kept {
                in_use.insert(name, plugin);
            }
        }
        self.in_use = in_use;
        self.conflicts = conflicts;
    }

    /// The plugin names several files declare, as of the last scan.
    pub fn conflicts(&self) -> &BTreeMap<String, Conflict> {
        &self.conflicts
    }

    /// Who signed each plugin file in use, by path (when signatures are
    /// verified), for `signer` pins.
    pub fn signers(&self) -> BTreeMap<PathBuf, Signer> {
        self.files
            .values()
            .filter_map(|e| Some((e.plugin.as_ref()?.path.clone(), e.signer.clone()?)))
            .collect()
    }

    /// The files whose current content was refused, with the reason (which
    /// names the file).
    pub fn refused(&self) -> impl Iterator<Item = (&Path, &str)> {
        self.files
            .iter()
            .filter_map(|(path, e)| Some((path.as_path(), e.refused.as_deref()?)))
    }

    /// The plugins in use, by name.
    pub fn plugins(&self) -> PluginSet {
        self.in_use.clone()
    }

    /// Every file with what is in use from it and its last refusal.
    pub fn status(&self) -> Vec<FileStatus> {
        self.files
            .iter()
            .map(|(path, e)| FileStatus {
                path: path.clone(),
                plugin: e.plugin.clone(),
                signer: e.signer.clone(),
                refused: e.refused.clone().or_else(|| e.conflict.clone()),
            })
            .collect()
    }
}

/// Watches the plugin folder and the configuration file. Each quiet moment
/// after a relevant change sends one `()` on the returned channel. Keep the
/// returned watcher alive as long as events are wanted.
pub fn watch(
    plugin_dir: &Path,
    config_file: &Path,
) -> anyhow::Result<(
    Debouncer<RecommendedWatcher, RecommendedCache>,
    mpsc::UnboundedReceiver<()>,
)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let config_file = config_file
        .canonicalize()
        .unwrap_or_else(|_| config_file.to_path_buf());
    let config_name = config_file.file_name().map(|n| n.to_os_string());
    let plugin_dir_abs = plugin_dir
        .canonicalize()
        .unwrap_or_else(|_| plugin_dir.to_path_buf());
    let handler = {
        let plugin_dir = plugin_dir_abs.clone();
        move |result: DebounceEventResult| match result {
            Ok(events) => {
                // Reading a file is not changing it: the reload itself opens the
                // config and every plugin, and counting those accesses would make
                // each reload trigger the next. A close after writing is a change.
                let relevant = events
                    .iter()
                    .filter(|e| changes_content(&e.kind))
                    .flat_map(|e| e.paths.iter())
                    .any(|p| {
                        let in_plugins = p.parent() == Some(plugin_dir.as_path())
                            && (is_candidate(p) || is_signature(p));
                        let is_config = p.file_name().map(|n| n.to_os_string()) == config_name;
                        in_plugins || is_config
                    });
                if relevant {
                    let _ = tx.send(());
                }
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %e, "watching the plugin folder");
                }
            }
        }
    };
    let mut debouncer =
        new_debouncer(DEBOUNCE, None, handler).context("starting the file watcher")?;
    debouncer
        .watch(&plugin_dir_abs, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", plugin_dir.display()))?;
    if let Some(parent) = config_file.parent()
        && parent != plugin_dir_abs
    {
        debouncer
            .watch(parent, RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", parent.display()))?;
    }
    Ok((debouncer, rx))
}

/// Whether a watcher event can mean the file's content changed (anything but a
/// read-only access).
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_a_file_is_not_a_change() {
        use notify_debouncer_full::notify::event::{CreateKind, ModifyKind};
        assert!(!changes_content(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(changes_content(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(changes_content(&EventKind::Modify(ModifyKind::Any)));
        assert!(changes_content(&EventKind::Create(CreateKind::File)));
    }

    #[test]
    fn temporary_and_hidden_files_are_not_plugins() {
        assert!(is_candidate(Path::new("/p/json-source.wasm")));
        assert!(!is_candidate(Path::new("/p/json-source.wasm.tmp")));
        assert!(!is_candidate(Path::new("/p/.json-source.wasm")));
        assert!(!is_candidate(Path::new("/p/notes.txt")));
    }

    #[test]
    fn a_plugins_signature_is_watched_but_its_temporary_file_is_not() {
        assert!(is_signature(Path::new("/p/json-source.wasm.minisig")));
        assert!(!is_signature(Path::new("/p/json-source.wasm.minisig.tmp")));
        assert!(!is_signature(Path::new("/p/.json-source.wasm.minisig")));
        assert!(!is_signature(Path::new("/p/notes.minisig")));
        assert!(!is_candidate(Path::new("/p/json-source.wasm.minisig")));
    }
}
