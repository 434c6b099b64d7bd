//! On-disk cache of compiled components, keyed by the wasm's content and the engine.
//!
//! Compiling a component takes tens of milliseconds to seconds; loading a
//! precompiled artifact takes well under one. The key is the SHA-256 of the wasm
//! bytes plus wasmtime's `precompile_compatibility_hash` (wasmtime version, target
//! and the engine settings that affect code), so a new wasmtime or a changed engine
//! configuration never loads a stale artifact. Files are written to a temporary
//! name and renamed.
//!
//! **A compiled component is native code that runs outside the wasm sandbox**, so
//! the cache must not be a way in:
//!
//! - the folder is created private (0700) and refused when it is not a folder of
//!   the daemon's user, or when its group or others may write to it: whoever can
//!   write there could otherwise put code in place of a plugin's;
//! - every artifact is written private (0600) with an HMAC-SHA256 tag, under a
//!   32-byte key that the daemon creates in the folder (`cache.key`, 0600) and
//!   that others may not read (the key is refused otherwise). An artifact is read
//!   into memory, its tag checked, and only then deserialized from those same
//!   bytes: a file changed after it was written (by another user, a copy from
//!   another host, a disk error) is recompiled, with a warning, never run. The
//!   plugin folder's writers can drop `.wasm` files, which run in the sandbox,
//!   but cannot forge an artifact without the key.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use wasmtime::Engine;
use wasmtime::component::Component;

/// The MAC of an artifact: HMAC-SHA256, stored after the artifact's bytes.
type Tag = Hmac<Sha256>;
const TAG_LEN: usize = 32;
/// The key file, in the cache folder.
const KEY_FILE: &str = "cache.key";

/// Sluice's cache folder: `$SLUICE_CACHE_DIR`, else `$XDG_CACHE_HOME/sluice`,
/// else `~/.cache/sluice`. The daemon keeps compiled components in its
/// `components/` unless `daemon.cache_dir` says otherwise; `sluice plugin build`
/// and `plugin new` keep their toolchains and the written-out SDK beside them (the
/// CLI hands them this folder), so one variable moves every cache Sluice keeps.
pub fn default_cache_dir() -> PathBuf {
    let non_empty = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = non_empty("SLUICE_CACHE_DIR") {
        return dir;
    }
    if let Some(dir) = non_empty("XDG_CACHE_HOME").filter(|d| d.is_absolute()) {
        return dir.join("sluice");
    }
    match non_empty("HOME").or_else(std::env::home_dir) {
        Some(home) => home.join(".cache").join("sluice"),
        None => std::env::temp_dir().join("sluice-cache"),
    }
}

/// Where compiled components are kept.
#[derive(Clone)]
pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
    key: [u8; 32],
}

impl std::fmt::Debug for ComponentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentCache")
            .field("dir", &self.dir)
            .field("engine_key", &self.engine_key)
            .finish_non_exhaustive()
    }
}

/// How a component was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from a precompiled artifact.
    Hit,
    /// Compiled now (and stored for next time, if the cache is writable).
    Compiled,
}

impl ComponentCache {
    /// The cache in `dir` for components compiled by `engine`: creates the
    /// folder (0700) and its key if needed, and refuses a folder or a key that
    /// others could use to put code in place of a plugin's.
    pub fn open(dir: PathBuf, engine: &Engine) -> anyhow::Result<Self> {
        let key = prepare(&dir).with_context(|| {
            format!(
                "the compiled-component cache {} (daemon.cache_dir)",
                dir.display()
            )
        })?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
            key,
        })
    }

    /// The folder holding the artifacts.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    fn tag(&self, bytes: &[u8]) -> Tag {
        let mut mac = Tag::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(bytes);
        mac
    }

    /// Loads the component for `wasm` (whose hash is `sha256`) from the cache, or
    /// compiles it and stores the result. A cache entry that cannot be read or
    /// fails its check, and a cache that cannot be written, only cost time: the
    /// component is compiled and a warning logged.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        sha256: &str,
        wasm: &[u8],
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        let path = self.path_for(sha256);
        match std::fs::read(&path) {
            Ok(stored) => match self.deserialize(engine, &stored) {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = format!("{e:#}"), "discarding a compiled component that fails its check; compiling the plugin again");
                    let _ = std::fs::remove_file(&path);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read a compiled component; compiling the plugin again");
            }
        }
        let component = Component::new(engine, wasm)?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(dir = %self.dir.display(), error = format!("{e:#}"), "cannot write the compiled-component cache");
        }
        Ok((component, CacheOutcome::Compiled))
    }

    /// Checks the tag of `stored` (artifact, then tag) and deserializes the
    /// artifact from those very bytes.
    fn deserialize(&self, engine: &Engine, stored: &[u8]) -> anyhow::Result<Component> {
        let Some(split) = stored.len().checked_sub(TAG_LEN) else {
            bail!("too short to hold its tag");
        };
        let (artifact, tag) = stored.split_at(split);
        self.tag(artifact).verify_slice(tag).map_err(|_| {
            anyhow::anyhow!(
                "its tag does not match: it was not written by this cache, or changed since"
            )
        })?;
        // SAFETY: the bytes are the ones `Component::serialize` produced from an
        // engine with this configuration (the engine key is part of the file's
        // name), as the tag under this cache's private key proves; they are our
        // own copy in memory, so nothing can change them after the check.
        Ok(unsafe { Component::deserialize(engine, artifact) }?)
    }

    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        let mut bytes = component.serialize()?;
        let tag = self.tag(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag);
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp.{}.{unique}", std::process::id()));
        write_private(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} into place", tmp.display()))?;
        Ok(())
    }
}

/// Creates `path` readable and writable by its owner only, with `bytes`.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The daemon's effective user id.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Makes sure `dir` is a private folder of ours, and returns its key (made
/// now if it has none).
fn prepare(dir: &Path) -> anyhow::Result<[u8; 32]> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .context("creating the folder")?;
    }
    let meta = std::fs::metadata(dir).context("reading the folder's owner and mode")?;
    if !meta.is_dir() {
        bail!("not a folder");
    }
    let mode = meta.mode() & 0o7777;
    if meta.uid() != euid() {
        bail!(
            "the folder belongs to uid {}, not to the daemon's user (uid {}): its owner could replace compiled plugins with any code; give the daemon a folder of its own",
            meta.uid(),
            euid()
        );
    }
    if mode & 0o022 != 0 {
        bail!(
            "the folder's group or others may write to it (mode {mode:04o}): they could replace compiled plugins with any code; `chmod 700` it or give the daemon a private folder"
        );
    }
    let key_path = dir.join(KEY_FILE);
    match std::fs::read(&key_path) {
        Ok(key) => {
            let meta = std::fs::metadata(&key_path)?;
            if meta.uid() != euid() || meta.mode() & 0o077 != 0 {
                bail!(
                    "{} may be read or changed by others (owner uid {}, mode {:04o}): whoever reads it can forge compiled plugins; remove it (the daemon makes a new one) and keep the folder private",
                    key_path.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                );
            }
            key.try_into().map_err(|key: Vec<u8>| {
                anyhow::anyhow!(
                    "{} holds {} bytes, not 32: remove it and the daemon makes a new one",
                    key_path.display(),
                    key.len()
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::getrandom(&mut key)
                .map_err(|e| anyhow::anyhow!("drawing a key for the cache: {e}"))?;
            // Made under a temporary name and linked into place, so that two
            // daemons starting at once agree on one key.
            let tmp = dir.join(format!("{KEY_FILE}.tmp.{}", std::process::id()));
            write_private(&tmp, &key).with_context(|| format!("writing {}", tmp.display()))?;
            let linked = std::fs::hard_link(&tmp, &key_path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => Ok(key),
                // Another daemon won: use its key.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => prepare(dir),
                Err(e) => Err(e).with_context(|| format!("creating {}", key_path.display())),
            }
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", key_path.display())),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A cache folder that does not exist yet, in a temporary folder removed
    /// on drop.
    fn temp_dir(parent: &tempfile::TempDir) -> PathBuf {
        parent.path().join("components")
    }

    fn engine() -> Engine {
        Engine::default()
    }

    /// The smallest component there is: the preamble of a component binary
    /// (magic, version 0x0d, layer 1), and nothing in it.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    #[test]
    fn a_new_cache_is_private_and_keeps_its_key() {
        let parent = tempfile::tempdir().unwrap();
        let dir = temp_dir(&parent);
        let cache = ComponentCache::open(dir.clone(), &engine()).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let key_mode = std::fs::metadata(dir.join(KEY_FILE)).unwrap().mode() & 0o777;
        assert_eq!(key_mode, 0o600);
        let again = ComponentCache::open(dir.clone(), &engine()).unwrap();
        assert_eq!(cache.key, again.key, "the key survives a restart");
    }

    #[test]
    fn a_folder_others_may_write_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = temp_dir(&parent);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ComponentCache::open(dir.clone(), &engine()).unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("daemon.cache_dir") && text.contains("mode 0777"),
            "{text}"
        );
    }

    #[test]
    fn a_key_others_may_read_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let dir = temp_dir(&parent);
        ComponentCache::open(dir.clone(), &engine()).unwrap();
        let key = dir.join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ComponentCache::open(dir.clone(), &engine()).unwrap_err();
        assert!(format!("{e:#}").contains("cache.key"), "{e:#}");
    }

    #[test]
    fn a_changed_artifact_is_compiled_again_not_loaded() {
        let parent = tempfile::tempdir().unwrap();
        let dir = temp_dir(&parent);
        let engine = engine();
        let cache = ComponentCache::open(dir.clone(), &engine).unwrap();
        let wasm = EMPTY_COMPONENT;
        let (_, first) = cache.load_or_compile(&engine, "abc", wasm).unwrap();
        assert_eq!(first, CacheOutcome::Compiled);
        let (_, second) = cache.load_or_compile(&engine, "abc", wasm).unwrap();
        assert_eq!(second, CacheOutcome::Hit);
        let path = cache.path_for("abc");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // One byte of the native code changed: the tag no longer matches.
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (_, third) = cache.load_or_compile(&engine, "abc", wasm).unwrap();
        assert_eq!(third, CacheOutcome::Compiled, "recompiled, not run");
        // An artifact from another cache (another key) is not taken either.
        let other_parent = tempfile::tempdir().unwrap();
        let other = ComponentCache::open(temp_dir(&other_parent), &engine).unwrap();
        other.load_or_compile(&engine, "abc", wasm).unwrap();
        std::fs::copy(other.path_for("abc"), &path).unwrap();
        let (_, fourth) = cache.load_or_compile(&engine, "abc", wasm).unwrap();
        assert_eq!(fourth, CacheOutcome::Compiled);
    }
}
