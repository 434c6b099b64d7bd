//! `sluice plugin build`: compiles plugin crates (wit-bindgen guests, `cdylib`) to
//! WebAssembly components, on any machine.
//!
//! Two routes, chosen per crate:
//!
//! * **rustup** (the ordinary one): the rustup toolchain cargo would use for the crate
//!   has a wasm target installed. `wasm32-wasip2` is preferred (cargo emits a component
//!   directly), then `wasm32-wasip1` (componentized here with the WASI preview1 reactor
//!   adapter), then `wasm32-unknown-unknown` (componentized, no adapter).
//! * **offline**: used whenever no wasm target is installed (or `--target` names one
//!   that is not; never for `wasm32-wasip2`). `rustup target add` is never run.
//!   Debian's `rustc-web` and its std sources are fetched with `apt-get download`,
//!   unpacked into the cache (never into `/usr`), and std is built from source with
//!   `-Zbuild-std` (see `build/toolchain.rs`).
//!
//! Componentizing happens in-process with `wit-component` (`build/componentize.rs`).
//! Every output is written as `<out_dir>/<package>.wasm`, atomically (a `*.wasm.tmp`
//! file in `out_dir`, then a rename).
//!
//! Everything here blocks; async callers use `spawn_blocking`.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use sha2::{Digest, Sha256};

mod apt;
mod componentize;
pub mod python;
mod toolchain;

pub use componentize::{ComponentSummary, component_summary};

/// A WebAssembly target plugins can be compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WasmTarget {
    /// `wasm32-wasip2`: cargo emits a component (WASI preview 2 imports).
    Wasip2,
    /// `wasm32-wasip1`: a core module, componentized with the preview1 reactor adapter.
    Wasip1,
    /// `wasm32-unknown-unknown`: a core module without WASI, componentized as is.
    Unknown,
}

impl WasmTarget {
    /// Every target, in order of preference for the rustup route.
    pub const ALL: [WasmTarget; 3] = [WasmTarget::Wasip2, WasmTarget::Wasip1, WasmTarget::Unknown];

    /// The Rust target triple.
    pub fn triple(self) -> &'static str {
        match self {
            WasmTarget::Wasip2 => "wasm32-wasip2",
            WasmTarget::Wasip1 => "wasm32-wasip1",
            WasmTarget::Unknown => "wasm32-unknown-unknown",
        }
    }

    /// The target for a triple (`wasm32-wasip1`), if it is one of ours.
    pub fn from_triple(triple: &str) -> Option<WasmTarget> {
        WasmTarget::ALL.into_iter().find(|t| t.triple() == triple)
    }
}

impl fmt::Display for WasmTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.triple())
    }
}

impl FromStr for WasmTarget {
    type Err = anyhow::Error;

    /// Accepts the triple (`wasm32-wasip1`) or its short form (`wasip2`, `wasip1`,
    /// `unknown`).
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if let Some(t) = WasmTarget::from_triple(s) {
            return Ok(t);
        }
        match s {
            "wasip2" | "p2" => Ok(WasmTarget::Wasip2),
            "wasip1" | "p1" => Ok(WasmTarget::Wasip1),
            "unknown" | "unknown-unknown" => Ok(WasmTarget::Unknown),
            _ => bail!(
                "unknown wasm target `{s}` (expected wasm32-wasip2, wasm32-wasip1 or wasm32-unknown-unknown)"
            ),
        }
    }
}

/// How a plugin was compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// With the rustup toolchain's own wasm target.
    Rustup,
    /// With the offline toolchain (Debian rustc-web + `-Zbuild-std`) in the cache.
    Offline,
    /// A Python plugin, with the pinned componentize-py in the cache
    /// (`build/python.rs`).
    Python,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Route::Rustup => "rustup",
            Route::Offline => "offline",
            Route::Python => "python",
        })
    }
}

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Plugin crate directories (or their `Cargo.toml` files), built in this order.
    pub crates: Vec<PathBuf>,
    /// Where the components go, as `<out_dir>/<package>.wasm`. Created if missing.
    pub out_dir: PathBuf,
    /// The target; `None` picks one (see the module documentation).
    pub target: Option<WasmTarget>,
    /// Build with cargo's dev profile instead of release.
    pub profile_debug: bool,
    /// The cache (offline toolchain, shared cargo target dir, componentize-py, the
    /// embedded SDK written out): the `sluice` CLI passes Sluice's cache folder
    /// (`--cache-dir`, else `sluice::plugin_runtime::cache::default_cache_dir`).
    pub cache_dir: PathBuf,
}

impl BuildOptions {
    /// Release builds of `crates` into `out_dir`, target chosen automatically,
    /// caching in `cache_dir`.
    pub fn new(
        crates: Vec<PathBuf>,
        out_dir: impl Into<PathBuf>,
        cache_dir: impl Into<PathBuf>,
    ) -> BuildOptions {
        BuildOptions {
            crates,
            out_dir: out_dir.into(),
            target: None,
            profile_debug: false,
            cache_dir: cache_dir.into(),
        }
    }
}

/// One plugin built.
#[derive(Debug, Clone)]
pub struct BuiltPlugin {
    /// The crate's directory (absolute).
    pub crate_dir: PathBuf,
    /// The cargo package name.
    pub package: String,
    /// The component written: `<out_dir>/<package>.wasm`.
    pub output: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// How it was compiled.
    pub route: Route,
    /// The target it was compiled for.
    pub target: WasmTarget,
}

/// Builds every crate of `opts` in sequence (sharing one cargo target dir in the cache,
/// so std is compiled once) and writes their components. Stops at the first failure,
/// with an error naming the crate; the components already written stay.
pub fn build(opts: &BuildOptions) -> Result<Vec<BuiltPlugin>> {
    if opts.crates.is_empty() {
        bail!("no plugin crate to build");
    }
    let cache = absolute(&opts.cache_dir)?;
    let out_dir = absolute(&opts.out_dir)?;
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("creating the cache directory {}", cache.display()))?;
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("creating the output directory {}", out_dir.display()))?;

    // Resolve every crate first: a typo in the last one should not wait for a build.
    let projects = opts
        .crates
        .iter()
        .map(|c| {
            let dir = absolute(c)?;
            if python::is_python_project(&dir) {
                Ok(Project::Python(dir))
            } else {
                crate_manifest(c).map(Project::Crate)
            }
        })
        .collect::<Result<Vec<_>>>()?;

    let mut offline: Option<toolchain::OfflineToolchain> = None;
    let mut sdk: Option<PathBuf> = None;
    let mut built = Vec::with_capacity(projects.len());
    for project in &projects {
        let manifest = match project {
            Project::Crate(manifest) => manifest,
            Project::Python(dir) => {
                if sdk.is_none() {
                    sdk = Some(crate::new::sdk_for_build(&cache)?);
                }
                let sdk = sdk.as_deref().expect("set above");
                let plugin = python::build_one(&cache, &out_dir, dir, sdk)
                    .with_context(|| format!("Python plugin {}", dir.display()))?;
                built.push(plugin);
                continue;
            }
        };
        let crate_dir = manifest
            .parent()
            .expect("a manifest path has a parent")
            .to_path_buf();
        let plugin = build_one(opts, &cache, &out_dir, manifest, &crate_dir, &mut offline)
            .with_context(|| format!("plugin crate {}", crate_dir.display()))?;
        built.push(plugin);
    }
    Ok(built)
}

/// One plugin to build: a crate (its manifest) or a Python project (its folder).
enum Project {
    Crate(PathBuf),
    Python(PathBuf),
}

fn build_one(
    opts: &BuildOptions,
    cache: &Path,
    out_dir: &Path,
    manifest: &Path,
    crate_dir: &Path,
    offline: &mut Option<toolchain::OfflineToolchain>,
) -> Result<BuiltPlugin> {
    // Package name and cdylib check first: they need no wasm toolchain.
    let package = cargo_package(&toolchain::rustup_cargo(), manifest)?;
    let (route, target) = toolchain::choose(crate_dir, opts.target)?;
    let cargo = match route {
        Route::Rustup => toolchain::rustup_cargo(),
        Route::Offline => {
            if offline.is_none() {
                let t = Instant::now();
                let tc = toolchain::OfflineToolchain::ensure(&cache.join("wasm-toolchain"))?;
                tracing::info!(
                    elapsed_ms = t.elapsed().as_millis() as u64,
                    rustc = %tc.rustc_version,
                    "offline wasm toolchain ready"
                );
                *offline = Some(tc);
            }
            offline.as_ref().expect("set above").cargo(target)
        }
        Route::Python => unreachable!("toolchain::choose picks a Rust route"),
    };
    tracing::info!(package = %package.name, crate_dir = %crate_dir.display(), %route, %target, "building plugin");

    let t = Instant::now();
    let core = compile(
        &cargo,
        cache,
        manifest,
        &package,
        target,
        opts.profile_debug,
    )?;
    tracing::info!(
        package = %package.name,
        elapsed_ms = t.elapsed().as_millis() as u64,
        bytes = core.len(),
        "compiled"
    );

    let t = Instant::now();
    let (component, how, world) = componentize::to_component(&core)?;
    tracing::info!(
        package = %package.name,
        elapsed_ms = t.elapsed().as_millis() as u64,
        bytes = component.len(),
        how,
        exports = %world.exports.join(" "),
        "componentized"
    );

    let output = out_dir.join(format!("{}.wasm", package.name));
    write_atomically(&output, &component)?;
    tracing::info!(package = %package.name, output = %output.display(), bytes = component.len(), "plugin written");
    Ok(BuiltPlugin {
        crate_dir: crate_dir.to_path_buf(),
        package: package.name,
        output,
        bytes: component.len() as u64,
        route,
        target,
    })
}

/// `path` made absolute against the current directory (without resolving symlinks).
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// The absolute `Cargo.toml` of a crate given as its directory or its manifest.
fn crate_manifest(path: &Path) -> Result<PathBuf> {
    let path = absolute(path)?;
    let manifest = if path.is_dir() {
        path.join("Cargo.toml")
    } else {
        path.clone()
    };
    if !manifest.is_file() {
        if !path.exists() {
            bail!("plugin crate {}: no such directory", path.display());
        }
        if path.join("pyproject.toml").is_file() {
            bail!(
                "plugin {}: a pyproject.toml without a [tool.sluice] table (a Python plugin \
                 needs `kind` and `class` there, see the plugin guide) and no Cargo.toml",
                path.display()
            );
        }
        bail!("plugin crate {}: no Cargo.toml", path.display());
    }
    if manifest.file_name().is_none_or(|n| n != "Cargo.toml") {
        bail!(
            "plugin crate {}: expected a crate directory or its Cargo.toml",
            path.display()
        );
    }
    Ok(manifest)
}

/// A cargo command line for plugin builds: which cargo, and the environment of the
/// child process only (never of this process).
#[derive(Debug, Clone)]
pub(crate) struct CargoCommand {
    pub program: PathBuf,
    pub env_set: Vec<(OsString, OsString)>,
    pub env_remove: Vec<OsString>,
    /// Arguments added to `cargo build` (e.g. `-Zbuild-std=std,panic_abort`).
    pub build_args: Vec<String>,
}

impl CargoCommand {
    fn command(&self, cwd: &Path) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.current_dir(cwd);
        for k in &self.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env_set {
            cmd.env(k, v);
        }
        cmd
    }
}

/// The package a manifest describes, from `cargo metadata`.
#[derive(Debug, Clone)]
struct Package {
    name: String,
    id: String,
    manifest_path: PathBuf,
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<MetaPackage>,
}

#[derive(Deserialize)]
struct MetaPackage {
    name: String,
    id: String,
    manifest_path: PathBuf,
    targets: Vec<MetaTarget>,
}

#[derive(Deserialize)]
struct MetaTarget {
    #[serde(default)]
    kind: Vec<String>,
    #[serde(default)]
    crate_types: Vec<String>,
}

fn cargo_package(cargo: &CargoCommand, manifest: &Path) -> Result<Package> {
    let crate_dir = manifest.parent().expect("a manifest path has a parent");
    let out = cargo
        .command(crate_dir)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(manifest)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {} metadata", cargo.program.display()))?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    package_from_metadata(&out.stdout, manifest)
}

fn package_from_metadata(json: &[u8], manifest: &Path) -> Result<Package> {
    let meta: Metadata = serde_json::from_slice(json).context("parsing cargo metadata")?;
    let want = std::fs::canonicalize(manifest).unwrap_or_else(|_| manifest.to_path_buf());
    let same = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()) == want;
    let Some(pkg) = meta.packages.into_iter().find(|p| same(&p.manifest_path)) else {
        bail!(
            "{} is a workspace manifest without a package; give the plugin crate's own directory",
            manifest.display()
        );
    };
    let is_cdylib = pkg
        .targets
        .iter()
        .any(|t| t.crate_types.iter().chain(&t.kind).any(|k| k == "cdylib"));
    if !is_cdylib {
        bail!(
            "package `{}` is not a cdylib: a plugin needs `[lib] crate-type = [\"cdylib\"]` in its Cargo.toml",
            pkg.name
        );
    }
    Ok(Package {
        name: pkg.name,
        id: pkg.id,
        manifest_path: pkg.manifest_path,
    })
}

/// Runs `cargo build` and returns the bytes of the crate's `.wasm` artifact.
fn compile(
    cargo: &CargoCommand,
    cache: &Path,
    manifest: &Path,
    package: &Package,
    target: WasmTarget,
    debug: bool,
) -> Result<Vec<u8>> {
    let crate_dir = manifest.parent().expect("a manifest path has a parent");
    let target_dir = cache.join("plugin-target");
    std::fs::create_dir_all(&target_dir)
        .with_context(|| format!("creating {}", target_dir.display()))?;

    // Cargo locks its build directory itself; this lock also covers reading the
    // artifact, which a concurrent build could otherwise overwrite in between.
    let _lock = lock_exclusive(&cache.join("plugin-target.lock"), "another plugin build")?;

    let run = || {
        run_cargo_build(
            cargo,
            crate_dir,
            manifest,
            &target_dir,
            package,
            target,
            debug,
        )
    };
    let messages = run()?;
    let (mut artifact, fresh) = find_artifact(&messages, package)?;
    // A cdylib's output file has no hash in its name: two crates with the same
    // package name (a fork and its original, a template and the real plugin)
    // share `deps/<name>.wasm` in the shared target dir, and cargo takes a crate
    // whose sources are older than that file for fresh, though the file is the
    // other crate's. So which crate wrote the file, and its digest, are recorded
    // beside it; a "fresh" file that does not match that record (another crate,
    // or a builder that keeps no record) is removed and built again.
    let owner = owner_file(&artifact);
    let read = |artifact: &Path| {
        std::fs::read(artifact).with_context(|| format!("reading {}", artifact.display()))
    };
    let record = |bytes: &[u8]| {
        format!(
            "{}\n{}\n",
            manifest.display(),
            hex::encode(Sha256::digest(bytes))
        )
    };
    if fresh && std::fs::read_to_string(&owner).ok() != Some(record(&read(&artifact)?)) {
        tracing::info!(package = %package.name, artifact = %artifact.display(), "the cached artifact may have been built from another crate of the same name; building again");
        for stale in [artifact.clone(), deps_copy(&artifact)] {
            match std::fs::remove_file(&stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", stale.display())),
            }
        }
        let again = run()?;
        let (rebuilt, still_fresh) = find_artifact(&again, package)?;
        if still_fresh {
            bail!(
                "cargo kept {} though it was built from another crate; remove {} and build again",
                rebuilt.display(),
                target_dir.display()
            );
        }
        artifact = rebuilt;
    }
    let bytes = read(&artifact)?;
    std::fs::write(&owner, record(&bytes))
        .with_context(|| format!("writing {}", owner.display()))?;
    Ok(bytes)
}

/// Where the manifest path of the crate that built `artifact`, and the
/// artifact's SHA-256, are kept.
fn owner_file(artifact: &Path) -> PathBuf {
    let mut name = artifact.file_name().unwrap_or_default().to_os_string();
    name.push(".sluice-owner");
    artifact.with_file_name(name)
}

/// The copy of an uplifted artifact (`<profile>/<name>.wasm`) that cargo keeps
/// in `<profile>/deps/`, whose timestamp decides freshness.
fn deps_copy(artifact: &Path) -> PathBuf {
    let name = artifact.file_name().unwrap_or_default();
    artifact.with_file_name("deps").join(name)
}

/// Runs `cargo build` of the crate's library for `target`, and returns cargo's
/// JSON messages.
fn run_cargo_build(
    cargo: &CargoCommand,
    crate_dir: &Path,
    manifest: &Path,
    target_dir: &Path,
    package: &Package,
    target: WasmTarget,
    debug: bool,
) -> Result<Vec<CargoMessage>> {
    let mut cmd = cargo.command(crate_dir);
    cmd.arg("build");
    if !debug {
        cmd.arg("--release");
    }
    cmd.args(["--lib", "--target", target.triple(), "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--message-format=json-render-diagnostics")
        .args(&cargo.build_args);
    // Guests: small and fast; a panic is a trap anyway.
    let profile = if debug { "DEV" } else { "RELEASE" };
    cmd.env(format!("CARGO_PROFILE_{profile}_PANIC"), "abort");
    if !debug {
        for (k, v) in [
            ("CARGO_PROFILE_RELEASE_LTO", "true"),
            ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1"),
            ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "3"),
            ("CARGO_PROFILE_RELEASE_DEBUG", "false"),
            ("CARGO_PROFILE_RELEASE_STRIP", "debuginfo"),
        ] {
            cmd.env(k, v);
        }
    }
    // Diagnostics are rendered by cargo on stderr, straight to the user; stdout carries
    // the JSON messages.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    tracing::debug!(?cmd, "running cargo");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {} build", cargo.program.display()))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut messages = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's output")?;
        if let Ok(msg) = serde_json::from_str::<CargoMessage>(&line) {
            messages.push(msg);
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!(
            "cargo build of package `{}` for {target} failed ({status}); see the errors above",
            package.name
        );
    }
    Ok(messages)
}

/// One JSON line of cargo's `--message-format=json` output (the fields we use).
#[derive(Debug, Deserialize)]
struct CargoMessage {
    reason: String,
    #[serde(default)]
    package_id: Option<String>,
    #[serde(default)]
    manifest_path: Option<PathBuf>,
    #[serde(default)]
    target: Option<ArtifactTarget>,
    #[serde(default)]
    filenames: Vec<PathBuf>,
    /// Whether cargo took the artifact as up to date, without compiling.
    #[serde(default)]
    fresh: bool,
}

#[derive(Debug, Deserialize)]
struct ArtifactTarget {
    #[serde(default)]
    kind: Vec<String>,
    #[serde(default)]
    crate_types: Vec<String>,
}

#[cfg(test)]
fn parse_messages(output: &str) -> Vec<CargoMessage> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The `.wasm` file of the package's cdylib among cargo's `compiler-artifact` messages.
/// The crate's `.wasm` artifact, and whether cargo took it as up to date.
fn find_artifact(messages: &[CargoMessage], package: &Package) -> Result<(PathBuf, bool)> {
    let ours = |m: &CargoMessage| {
        m.package_id.as_deref() == Some(package.id.as_str())
            || m.manifest_path.as_deref() == Some(package.manifest_path.as_path())
    };
    let mut found = None;
    for m in messages
        .iter()
        .filter(|m| m.reason == "compiler-artifact" && ours(m))
    {
        let Some(t) = &m.target else { continue };
        if !t.kind.iter().chain(&t.crate_types).any(|k| k == "cdylib") {
            continue;
        }
        if let Some(f) = m
            .filenames
            .iter()
            .find(|f| f.extension().is_some_and(|e| e == "wasm"))
        {
            found = Some((f.clone(), m.fresh));
        }
    }
    found.ok_or_else(|| {
        anyhow!(
            "cargo produced no .wasm file for package `{}`: is it a cdylib (`[lib] crate-type = [\"cdylib\"]`)?",
            package.name
        )
    })
}

/// Writes `bytes` to `dest` through a `*.wasm.tmp` file in the same directory and a
/// rename, so a folder watcher never sees a partial plugin.
fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<()> {
    // An unchanged plugin is left alone: rewriting it would wake every daemon
    // watching the folder for a reload that changes nothing.
    if std::fs::read(dest).is_ok_and(|existing| existing == bytes) {
        return Ok(());
    }
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = dest.parent().expect("output path has a parent");
    let stem = dest
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin");
    let tmp = dir.join(format!(
        "{stem}.{}-{}.wasm.tmp",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("writing {}", tmp.display()))?;
        drop(f);
        std::fs::rename(&tmp, dest)
            .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Opens (creating) `path` and takes an exclusive lock on it (`flock`), logging when it
/// has to wait for `holder`. The lock goes with the returned file.
pub(crate) fn lock_exclusive(path: &Path, holder: &str) -> Result<File> {
    lock_with(path, holder, File::try_lock, File::lock)
}

/// Like [`lock_exclusive`], with a shared lock.
pub(crate) fn lock_shared(path: &Path, holder: &str) -> Result<File> {
    lock_with(path, holder, File::try_lock_shared, File::lock_shared)
}

fn lock_with(
    path: &Path,
    holder: &str,
    try_lock: fn(&File) -> Result<(), std::fs::TryLockError>,
    lock: fn(&File) -> std::io::Result<()>,
) -> Result<File> {
    let f = lock_file(path)?;
    match try_lock(&f) {
        Ok(()) => return Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => {
            tracing::info!(lock = %path.display(), "waiting for {holder} to finish");
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("locking {}", path.display()));
        }
    }
    lock(&f).with_context(|| format!("locking {}", path.display()))?;
    Ok(f)
}

pub(crate) fn lock_file(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening lock file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package() -> Package {
        Package {
            name: "guest-check".into(),
            id: "path+file:///tmp/guest-check#0.1.0".into(),
            manifest_path: "/tmp/guest-check/Cargo.toml".into(),
        }
    }

    #[test]
    fn finds_the_cdylib_wasm_artifact() {
        let out = r#"{"reason":"compiler-artifact","package_id":"registry+https://github.com/rust-lang/crates.io-index#wit-bindgen@0.61.0","manifest_path":"/r/wit-bindgen/Cargo.toml","target":{"kind":["lib"],"crate_types":["lib"],"name":"wit_bindgen"},"filenames":["/t/wasm32-wasip1/release/deps/libwit_bindgen-1.rlib"],"fresh":true}
{"reason":"build-script-executed","package_id":"x","linked_libs":[],"out_dir":"/t"}
not json at all
{"reason":"compiler-artifact","package_id":"path+file:///tmp/guest-check#0.1.0","manifest_path":"/tmp/guest-check/Cargo.toml","target":{"kind":["cdylib","rlib"],"crate_types":["cdylib","rlib"],"name":"guest_check"},"filenames":["/t/wasm32-wasip1/release/libguest_check.rlib","/t/wasm32-wasip1/release/guest_check.wasm"],"fresh":false}
{"reason":"build-finished","success":true}"#;
        let msgs = parse_messages(out);
        assert_eq!(msgs.len(), 4);
        let f = find_artifact(&msgs, &package()).unwrap();
        assert_eq!(
            f,
            (
                PathBuf::from("/t/wasm32-wasip1/release/guest_check.wasm"),
                false
            )
        );
    }

    #[test]
    fn an_artifact_keeps_its_owner_beside_it_and_its_deps_copy_below() {
        let artifact = Path::new("/t/wasm32-wasip1/release/guest_check.wasm");
        assert_eq!(
            owner_file(artifact),
            PathBuf::from("/t/wasm32-wasip1/release/guest_check.wasm.sluice-owner")
        );
        assert_eq!(
            deps_copy(artifact),
            PathBuf::from("/t/wasm32-wasip1/release/deps/guest_check.wasm")
        );
    }

    #[test]
    fn no_cdylib_artifact_is_a_clear_error() {
        let out = r#"{"reason":"compiler-artifact","package_id":"path+file:///tmp/guest-check#0.1.0","manifest_path":"/tmp/guest-check/Cargo.toml","target":{"kind":["lib"],"crate_types":["lib"],"name":"guest_check"},"filenames":["/t/libguest_check.rlib"]}"#;
        let err = find_artifact(&parse_messages(out), &package())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("guest-check") && err.contains("cdylib"),
            "{err}"
        );
    }

    #[test]
    fn artifact_matched_by_manifest_path_when_ids_differ() {
        let out = r#"{"reason":"compiler-artifact","package_id":"guest-check 0.1.0 (path+file:///tmp/guest-check)","manifest_path":"/tmp/guest-check/Cargo.toml","target":{"kind":["cdylib"],"crate_types":["cdylib"],"name":"guest_check"},"filenames":["/t/guest_check.wasm"]}"#;
        assert_eq!(
            find_artifact(&parse_messages(out), &package()).unwrap(),
            (PathBuf::from("/t/guest_check.wasm"), false)
        );
    }

    #[test]
    fn metadata_rejects_non_cdylib_and_virtual_manifests() {
        let dir = std::env::temp_dir().join(format!("sluice-pb-meta-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = dir.join("Cargo.toml");
        std::fs::write(&manifest, "").unwrap();
        let m = manifest.display().to_string();
        let lib = format!(
            r#"{{"packages":[{{"name":"p","id":"id","manifest_path":"{m}","targets":[{{"kind":["lib"],"crate_types":["lib"]}}]}}]}}"#
        );
        let err = package_from_metadata(lib.as_bytes(), &manifest)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a cdylib"), "{err}");
        let cdylib = lib.replace(
            r#"["lib"],"crate_types":["lib"]"#,
            r#"["cdylib"],"crate_types":["cdylib"]"#,
        );
        assert_eq!(
            package_from_metadata(cdylib.as_bytes(), &manifest)
                .unwrap()
                .name,
            "p"
        );
        let err = package_from_metadata(br#"{"packages":[]}"#, &manifest)
            .unwrap_err()
            .to_string();
        assert!(err.contains("workspace manifest"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn crate_without_manifest_is_named() {
        let dir = std::env::temp_dir().join(format!("sluice-pb-nomanifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = crate_manifest(&dir).unwrap_err().to_string();
        assert!(
            err.contains("no Cargo.toml") && err.contains(&dir.display().to_string()),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            "wasm32-wasip1".parse::<WasmTarget>().unwrap(),
            WasmTarget::Wasip1
        );
        assert_eq!("wasip2".parse::<WasmTarget>().unwrap(), WasmTarget::Wasip2);
        assert_eq!(
            "wasm32-unknown-unknown".parse::<WasmTarget>().unwrap(),
            WasmTarget::Unknown
        );
        assert!("x86_64".parse::<WasmTarget>().is_err());
    }

    #[test]
    fn atomic_write_leaves_no_tmp() {
        let dir = std::env::temp_dir().join(format!("sluice-pb-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("p.wasm");
        write_atomically(&dest, b"abc").unwrap();
        write_atomically(&dest, b"abcd").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"abcd");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("p.wasm")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
