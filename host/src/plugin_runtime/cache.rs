//! On-disk cache of compiled components, keyed by the wasm's content and the engine.
//!
//! Compiling a component takes tens of milliseconds to seconds; loading a
//! precompiled artifact takes well under one. The key is the SHA-256 of the wasm
//! bytes plus wasmtime's `precompile_compatibility_hash` (wasmtime version, target
//! and the engine settings that affect code), so a new wasmtime or a changed engine
//! configuration never loads a stale artifact. Files are written to a temporary
//! name and renamed: a loaded artifact is memory-mapped and must never change in
//! place.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where compiled components are kept.
#[derive(Clone, Debug)]
pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
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
    /// A cache in `dir` for components compiled by `engine`.
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Self {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    /// The folder holding the artifacts.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_for(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}-{}.cwasm", self.engine_key))
    }

    /// Loads the component for `wasm` (whose hash is `sha256`) from the cache, or
    /// compiles it and stores the result. A cache that cannot be read or written
    /// only costs time: the component is compiled in memory and a warning logged.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        sha256: &str,
        wasm: &[u8],
    ) -> anyhow::Result<(Component, CacheOutcome)> {
        let path = self.path_for(sha256);
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` from this
            // engine configuration (the engine key is part of its name), under a
            // temporary name and renamed into place, and is never modified after.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unreadable compiled component");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let component = Component::new(engine, wasm)?;
        if let Err(e) = self.store(&path, &component) {
            tracing::warn!(dir = %self.dir.display(), error = format!("{e:#}"), "cannot write the compiled-component cache");
        }
        Ok((component, CacheOutcome::Compiled))
    }

    fn store(&self, path: &Path, component: &Component) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let bytes = component.serialize()?;
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp.{}.{unique}", std::process::id()));
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} into place", tmp.display()))?;
        Ok(())
    }
}
