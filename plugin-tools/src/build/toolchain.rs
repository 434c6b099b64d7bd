//! Which route builds a crate, and the offline toolchain.
//!
//! **Route.** The rustup route is taken when `rustup target list --installed` (run in the
//! crate's directory, so it reports the toolchain cargo would use there) lists a wasm
//! target; otherwise the offline route.
//!
//! **Offline toolchain** (`<cache>/wasm-toolchain`): Debian's `rustc-web`, its std
//! sources (`rust-web-src`), `libllvmNN` and `wasi-libc`, fetched with
//! `apt-get download` into `debs/` and unpacked with `dpkg-deb -x` into a
//! `root-<hash>/` folder (never into `/usr`). Cargo is rustup's (nightly if installed,
//! else stable, with `RUSTC_BOOTSTRAP=1`), std is built from source with
//! `-Zbuild-std=std,panic_abort`, the linker is rustup stable's `rust-lld`. Debian's
//! rustc runs through a generated wrapper (`root-<hash>/bin/rustc`) that sets
//! `LD_LIBRARY_PATH` for it alone; all other variables go on the child cargo only.
//!
//! Layout and concurrency: `manifest` lists the resolved `name version` set; `current`
//! names the ready `root-<hash>` (written last, atomically); a `.lock` file is held
//! shared by builds using the toolchain and exclusively while bootstrapping.
//! Extraction happens in a `.tmp-<pid>` folder renamed into place.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::apt::{self, PackageVersion, ResolveError};
use super::{CargoCommand, Route, WasmTarget};

/// Variables that would redirect or break the child cargo of the offline route. Cargo
/// gives `RUSTFLAGS` precedence over `CARGO_TARGET_<triple>_RUSTFLAGS`, so a host
/// `RUSTFLAGS` would drop the wasi-libc search path.
const OFFLINE_ENV_REMOVE: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTC",
    "CARGO_BUILD_RUSTC_WRAPPER",
    "CARGO_BUILD_RUSTC_WORKSPACE_WRAPPER",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
];

/// Picks the route and target for the crate in `crate_dir`.
pub(crate) fn choose(
    crate_dir: &Path,
    requested: Option<WasmTarget>,
) -> Result<(Route, WasmTarget)> {
    let installed = match installed_targets(crate_dir) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot list the installed rust targets; assuming none");
            Vec::new()
        }
    };
    let (route, target) = select(requested, &installed)?;
    if route == Route::Offline {
        tracing::info!(
            %target,
            "{target} is not installed in the rustup toolchain for this crate: using the offline toolchain \
             (Debian rustc-web + -Zbuild-std)"
        );
    }
    Ok((route, target))
}

/// Route and target from the requested target and the installed wasm targets.
pub(crate) fn select(
    requested: Option<WasmTarget>,
    installed: &[WasmTarget],
) -> Result<(Route, WasmTarget)> {
    match requested {
        None => Ok(WasmTarget::ALL
            .into_iter()
            .find(|t| installed.contains(t))
            .map(|t| (Route::Rustup, t))
            .unwrap_or((Route::Offline, WasmTarget::Wasip1))),
        Some(t) if installed.contains(&t) => Ok((Route::Rustup, t)),
        Some(WasmTarget::Wasip2) => bail!(
            "wasm32-wasip2 is not installed in the rustup toolchain (`rustup target add wasm32-wasip2`), \
             and the offline toolchain cannot build it (Debian 12's wasi-libc has no wasip2 libraries); \
             build for wasm32-wasip1 instead"
        ),
        Some(t) => Ok((Route::Offline, t)),
    }
}

/// The wasm targets in the output of `rustup target list --installed`.
pub(crate) fn parse_installed(list: &str) -> Vec<WasmTarget> {
    let lines: Vec<&str> = list.lines().map(str::trim).collect();
    WasmTarget::ALL
        .into_iter()
        .filter(|t| lines.contains(&t.triple()))
        .collect()
}

fn installed_targets(crate_dir: &Path) -> Result<Vec<WasmTarget>> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(crate_dir)
        .env("RUSTUP_AUTO_INSTALL", "0")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(parse_installed(&String::from_utf8_lossy(&o.stdout))),
        Ok(o) => bail!(
            "rustup target list --installed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        // No rustup (a distribution's Rust): look for std in the sysroot.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => sysroot_targets(crate_dir),
        Err(e) => Err(e).context("running rustup"),
    }
}

fn sysroot_targets(crate_dir: &Path) -> Result<Vec<WasmTarget>> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(crate_dir)
        .stdin(Stdio::null())
        .output()
        .context("running rustc (neither rustup nor rustc found)")?;
    if !out.status.success() {
        bail!("rustc --print sysroot failed");
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(WasmTarget::ALL
        .into_iter()
        .filter(|t| {
            std::fs::read_dir(sysroot.join("lib/rustlib").join(t.triple()).join("lib")).is_ok_and(
                |d| {
                    d.filter_map(|e| e.ok())
                        .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
                },
            )
        })
        .collect())
}

/// Cargo of the rustup route: `cargo` from `PATH`, run in the crate's directory, so the
/// crate's toolchain file applies.
pub(crate) fn rustup_cargo() -> CargoCommand {
    CargoCommand {
        program: "cargo".into(),
        env_set: Vec::new(),
        env_remove: Vec::new(),
        build_args: Vec::new(),
    }
}

/// The offline toolchain, ready to use. Holds a shared lock on the toolchain folder
/// while alive, so no bootstrap replaces it under a running build.
#[derive(Debug)]
pub(crate) struct OfflineToolchain {
    /// `rustc --version` of Debian's rustc.
    pub rustc_version: String,
    rustc_wrapper: PathBuf,
    wasi_lib: PathBuf,
    cargo: PathBuf,
    lld: PathBuf,
    _lock: File,
}

/// What a ready `root-<hash>` holds (its `stamp.json`, written before it is renamed
/// into place).
#[derive(Debug, Serialize, Deserialize)]
struct Stamp {
    debs: Vec<String>,
    /// Relative to the root folder.
    lib_dir: PathBuf,
    wasi_lib: PathBuf,
    rustc_version: String,
}

impl OfflineToolchain {
    /// Bootstraps the toolchain in `dir` if needed (idempotent; a few process spawns when
    /// it is already there).
    pub fn ensure(dir: &Path) -> Result<OfflineToolchain> {
        let rustup = RustupTools::find()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock_path = dir.join(".lock");
        const BOOTSTRAPPING: &str = "another sluice bootstrapping the offline toolchain";
        let lock = super::lock_shared(&lock_path, BOOTSTRAPPING)?;
        if let Some(root) = ready(dir) {
            return Ok(Self::new(root, rustup, lock));
        }
        drop(lock); // Closing the file releases the lock.
        {
            let _exclusive = super::lock_exclusive(&lock_path, BOOTSTRAPPING)?;
            if ready(dir).is_none() {
                let t = Instant::now();
                bootstrap(dir).context("bootstrapping the offline wasm toolchain")?;
                tracing::info!(elapsed_ms = t.elapsed().as_millis() as u64, dir = %dir.display(), "offline toolchain bootstrapped");
            }
        }
        let lock = super::lock_shared(&lock_path, BOOTSTRAPPING)?;
        let root = ready(dir).context("the offline toolchain was bootstrapped but does not run")?;
        Ok(Self::new(root, rustup, lock))
    }

    fn new((root, stamp): (PathBuf, Stamp), rustup: RustupTools, lock: File) -> OfflineToolchain {
        OfflineToolchain {
            rustc_version: stamp.rustc_version,
            rustc_wrapper: root.join("bin/rustc"),
            wasi_lib: root.join(&stamp.wasi_lib),
            cargo: rustup.cargo,
            lld: rustup.lld,
            _lock: lock,
        }
    }

    /// The cargo command building for `target` with this toolchain.
    pub fn cargo(&self, target: WasmTarget) -> CargoCommand {
        let mut env_set: Vec<(OsString, OsString)> = vec![
            ("RUSTC".into(), self.rustc_wrapper.clone().into()),
            ("RUSTC_BOOTSTRAP".into(), "1".into()),
            (
                "CARGO_TARGET_WASM32_WASIP1_LINKER".into(),
                self.lld.clone().into(),
            ),
            (
                "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER".into(),
                self.lld.clone().into(),
            ),
        ];
        // wasm32-wasip1's std links against Debian's wasi-libc, not a self-contained one.
        let wasi_lib = self.wasi_lib.to_string_lossy();
        if !wasi_lib.contains(char::is_whitespace) {
            let flags = format!("-C link-self-contained=no -L {wasi_lib}");
            env_set.push(("CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS".into(), flags.into()));
        } else if target == WasmTarget::Wasip1 {
            // The space-separated form cannot carry this path; with `--target`, the
            // encoded flags apply to the target's crates only.
            let flags = ["-C", "link-self-contained=no", "-L", &wasi_lib].join("\x1f");
            env_set.push(("CARGO_ENCODED_RUSTFLAGS".into(), flags.into()));
        }
        CargoCommand {
            program: self.cargo.clone(),
            env_set,
            env_remove: OFFLINE_ENV_REMOVE.iter().map(OsString::from).collect(),
            build_args: vec!["-Zbuild-std=std,panic_abort".into()],
        }
    }
}

/// Cargo and rust-lld from rustup.
#[derive(Debug)]
struct RustupTools {
    cargo: PathBuf,
    lld: PathBuf,
}

impl RustupTools {
    fn find() -> Result<RustupTools> {
        let which = |toolchain: &str, tool: &str| -> Option<PathBuf> {
            let out = Command::new("rustup")
                .args(["which", "--toolchain", toolchain, tool])
                .env("RUSTUP_AUTO_INSTALL", "0")
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()?;
            let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            (out.status.success() && p.is_file()).then_some(p)
        };
        if Command::new("rustup")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!(
                "the offline route needs rustup (for cargo and rust-lld), and rustup is not installed; \
                 or install a wasm target in your Rust toolchain"
            );
        }
        let cargo_toolchains: Vec<String> = match std::env::var("SLUICE_WASM_CARGO_TOOLCHAIN") {
            Ok(t) if !t.is_empty() => vec![t],
            _ => vec!["nightly".into(), "stable".into()],
        };
        let cargo = cargo_toolchains
            .iter()
            .find_map(|t| which(t, "cargo"))
            .with_context(|| {
                format!(
                    "no rustup toolchain among {} has cargo",
                    cargo_toolchains.join(", ")
                )
            })?;
        // rust-lld lives in <sysroot>/lib/rustlib/<host>/bin; sysroot = rustc's ../..
        let lld = ["stable", "nightly"]
            .into_iter()
            .filter_map(|t| which(t, "rustc"))
            .find_map(|rustc| {
                let rustlib = rustc.parent()?.parent()?.join("lib/rustlib");
                std::fs::read_dir(rustlib).ok()?.filter_map(|e| e.ok()).find_map(|e| {
                    let lld = e.path().join("bin/rust-lld");
                    lld.is_file().then_some(lld)
                })
            })
            .context("rust-lld not found in the rustup toolchains stable or nightly (`rustup toolchain install stable`)")?;
        Ok(RustupTools { cargo, lld })
    }
}

/// The ready root (and its stamp), if `current` names one whose rustc runs.
fn ready(dir: &Path) -> Option<(PathBuf, Stamp)> {
    let name = std::fs::read_to_string(dir.join("current")).ok()?;
    let root = dir.join(name.trim());
    let stamp: Stamp =
        serde_json::from_slice(&std::fs::read(root.join("stamp.json")).ok()?).ok()?;
    let ok = Command::new(root.join("bin/rustc"))
        .arg("-vV")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        tracing::warn!(root = %root.display(), "the offline toolchain's rustc does not run; checking it again");
        return None;
    }
    Some((root, stamp))
}

/// Downloads, unpacks and checks the toolchain; called with the exclusive lock held.
fn bootstrap(dir: &Path) -> Result<()> {
    check_platform()?;
    let as_root = is_root();
    let debs_dir = dir.join("debs");
    std::fs::create_dir_all(&debs_dir)
        .with_context(|| format!("creating {}", debs_dir.display()))?;
    // Leftovers of an interrupted bootstrap (nobody else is in here: we hold the lock).
    for (folder, prefix) in [(dir, ".tmp-"), (debs_dir.as_path(), ".download-")] {
        for e in std::fs::read_dir(folder)?.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    // 1. The package set: the manifest's while its .deb files are all here.
    let t = Instant::now();
    let manifest_path = dir.join("manifest");
    let kept = std::fs::read_to_string(&manifest_path)
        .map(|s| apt::parse_manifest(&s))
        .unwrap_or_default();
    let set = if !kept.is_empty() && kept.iter().all(|p| apt::find_deb(&debs_dir, p).is_some()) {
        tracing::info!(manifest = %manifest_path.display(), "offline toolchain packages already downloaded");
        kept
    } else {
        let set = resolve_and_download(&debs_dir, as_root)?;
        write_file_atomically(&manifest_path, apt::format_manifest(&set).as_bytes())?;
        tracing::info!(
            elapsed_ms = t.elapsed().as_millis() as u64,
            "offline toolchain packages downloaded"
        );
        set
    };
    let debs: Vec<PathBuf> = set
        .iter()
        .map(|p| {
            apt::find_deb(&debs_dir, p)
                .with_context(|| format!("{} missing in {}", p.spec(), debs_dir.display()))
        })
        .collect::<Result<_>>()?;
    let mut deb_names: Vec<String> = debs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    deb_names.sort();

    // 2. Unpack into root-<hash of the .deb names>, unless already there.
    let hash = hex::encode(Sha256::digest(deb_names.join("\n").as_bytes()));
    let root_name = format!("root-{}", &hash[..16]);
    let root = dir.join(&root_name);
    let stamp_ok = std::fs::read(root.join("stamp.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Stamp>(&b).ok())
        .is_some_and(|s| s.debs == deb_names);
    if stamp_ok {
        // Unpacked before, but its rustc did not run: the system libraries, most likely.
        let stamp: Stamp = serde_json::from_slice(&std::fs::read(root.join("stamp.json"))?)?;
        ensure_system_packages(&root, &root.join(&stamp.lib_dir), &set, as_root)?;
    } else {
        let t = Instant::now();
        let tmp = dir.join(format!(".tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = unpack(&tmp, &root, &debs, &deb_names, &set, as_root);
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result?;
        if root.exists() {
            std::fs::remove_dir_all(&root)
                .with_context(|| format!("removing the stale {}", root.display()))?;
        }
        std::fs::rename(&tmp, &root)
            .with_context(|| format!("renaming {} to {}", tmp.display(), root.display()))?;
        tracing::info!(elapsed_ms = t.elapsed().as_millis() as u64, root = %root.display(), "offline toolchain unpacked");
    }

    // 3. Switch `current`, then drop older roots (nobody uses them: we hold the lock).
    write_file_atomically(&dir.join("current"), format!("{root_name}\n").as_bytes())?;
    for e in std::fs::read_dir(dir)?.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("root-") && name != root_name {
            tracing::info!(old = %e.path().display(), "removing an older offline toolchain");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Ok(())
}

/// Unpacks the `.deb` files into `tmp` (to be renamed to `root`), writes the rustc
/// wrapper (with `root`'s paths) and the stamp, after checking that rustc runs.
fn unpack(
    tmp: &Path,
    root: &Path,
    debs: &[PathBuf],
    deb_names: &[String],
    set: &[PackageVersion],
    as_root: bool,
) -> Result<()> {
    let rust = tmp.join("rust");
    let wasi = tmp.join("wasi-libc");
    std::fs::create_dir_all(&rust)?;
    std::fs::create_dir_all(&wasi)?;
    for deb in debs {
        let is_wasi = deb.file_name().is_some_and(|n| {
            n.to_string_lossy()
                .starts_with(&format!("{}_", apt::WASI_LIBC))
        });
        let into = if is_wasi { &wasi } else { &rust };
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(into)
            .stdin(Stdio::null())
            .status()
            .context("running dpkg-deb")?;
        if !status.success() {
            bail!("dpkg-deb -x {} failed ({status})", deb.display());
        }
    }

    let rustc = rust.join("usr/bin/rustc");
    if !rustc.is_file() {
        bail!("rustc-web did not provide usr/bin/rustc");
    }
    if !rust.join("usr/lib/rustlib/src/rust/library/std").is_dir() {
        bail!(
            "{} did not provide usr/lib/rustlib/src/rust/library/std",
            apt::RUST_WEB_SRC
        );
    }
    // The private libraries: usr/lib/<multiarch>/librustc_driver-*.so.
    let lib_dir = find_dir_with(&rust.join("usr/lib"), |n| {
        n.starts_with("librustc_driver-") && n.ends_with(".so")
    })
    .context("librustc_driver-*.so not found in the unpacked rustc-web")?;
    // Debian 12 names the folder wasm32-wasi; later releases wasm32-wasip1.
    let wasi_lib = ["wasm32-wasip1", "wasm32-wasi"]
        .into_iter()
        .map(|d| wasi.join("usr/lib").join(d))
        .find(|d| d.join("libc.a").is_file())
        .context("wasi-libc's libc.a not found under usr/lib/wasm32-wasi*")?;

    ensure_system_packages(tmp, &lib_dir, set, as_root)?;
    let out = Command::new(&rustc)
        .arg("--version")
        .env("LD_LIBRARY_PATH", prepend_path(&lib_dir))
        .stdin(Stdio::null())
        .output()
        .context("running the unpacked rustc")?;
    if !out.status.success() {
        bail!(
            "the unpacked rustc does not run: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let rustc_version = String::from_utf8_lossy(&out.stdout).trim().to_string();

    // The wrapper, with the final paths.
    let rel = |p: &Path| p.strip_prefix(tmp).expect("under tmp").to_path_buf();
    let final_lib = root.join(rel(&lib_dir));
    let final_rustc = root.join(rel(&rustc));
    let bin = tmp.join("bin");
    std::fs::create_dir_all(&bin)?;
    let script = format!(
        "#!/bin/sh\n\
         # Debian's rustc-web, with its private libLLVM and librustc_driver on the library\n\
         # path of this process only. Generated by `sluice plugin build`.\n\
         LD_LIBRARY_PATH={lib}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}} exec {rustc} \"$@\"\n",
        lib = shell_quote(&final_lib),
        rustc = shell_quote(&final_rustc),
    );
    let wrapper = bin.join("rustc");
    std::fs::write(&wrapper, script)?;
    set_executable(&wrapper)?;

    let stamp = Stamp {
        debs: deb_names.to_vec(),
        lib_dir: rel(&lib_dir),
        wasi_lib: rel(&wasi_lib),
        rustc_version,
    };
    std::fs::write(tmp.join("stamp.json"), serde_json::to_vec_pretty(&stamp)?)?;
    Ok(())
}

/// Resolves the package set from apt-cache and downloads what is missing, running
/// `apt-get update` once (as root) when apt's lists don't know the packages or are stale.
fn resolve_and_download(debs_dir: &Path, as_root: bool) -> Result<Vec<PackageVersion>> {
    for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
        if which(tool).is_none() {
            bail!(
                "the offline route needs Debian's APT ({tool} not found); install a wasm target instead: \
                 `rustup target add wasm32-wasip2`"
            );
        }
    }
    let mut updated = false;
    loop {
        let set = match apt::resolve() {
            Ok(set) => set,
            Err(ResolveError::Unknown(why)) if as_root && !updated => {
                tracing::info!("{why}: running apt-get update");
                apt::update()?;
                updated = true;
                continue;
            }
            Err(ResolveError::Unknown(why)) if as_root => bail!(
                "{why}, even after apt-get update: the offline route needs Debian 12's bookworm-security \
                 repository in the APT sources (`deb http://deb.debian.org/debian-security bookworm-security main`)"
            ),
            Err(ResolveError::Unknown(why)) => bail!(
                "{why}: run `sudo apt-get update` and retry (the offline route downloads Debian's rustc-web \
                 from bookworm-security); or install a wasm target: `rustup target add wasm32-wasip2`"
            ),
            Err(ResolveError::Other(e)) => {
                return Err(e.context("resolving the offline toolchain's packages"));
            }
        };
        tracing::info!(packages = %set.iter().map(PackageVersion::spec).collect::<Vec<_>>().join(" "), "offline toolchain packages");
        let missing: Vec<PackageVersion> = set
            .iter()
            .filter(|p| apt::find_deb(debs_dir, p).is_none())
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(set);
        }
        match apt::download(&missing, debs_dir, as_root) {
            Ok(_) if set.iter().all(|p| apt::find_deb(debs_dir, p).is_some()) => return Ok(set),
            Ok(_) => bail!(
                "apt-get download did not provide every package in {}",
                debs_dir.display()
            ),
            Err(e) if as_root && !updated => {
                tracing::warn!(error = %format!("{e:#}"), "download failed; running apt-get update and retrying");
                apt::update()?;
                updated = true;
            }
            Err(e) if as_root => return Err(e),
            Err(e) => {
                return Err(e.context(
                    "downloading the offline toolchain's packages failed; if APT's lists are stale, \
                     run `sudo apt-get update` and retry",
                ));
            }
        }
    }
}

/// Checks that the unpacked rustc finds its shared libraries (ldd) and that a C linker
/// (`cc`, for build scripts) exists; installs what is missing when root, else fails
/// naming the packages.
fn ensure_system_packages(
    root: &Path,
    lib_dir: &Path,
    set: &[PackageVersion],
    as_root: bool,
) -> Result<()> {
    let missing_libs = missing_shared_libs(root, lib_dir)?;
    let mut packages = Vec::new();
    if !missing_libs.is_empty() {
        let mut p = apt::missing_runtime_packages(set);
        if p.is_empty() {
            p = apt::LLVM_RUNTIME_FALLBACK
                .iter()
                .map(|s| s.to_string())
                .collect();
        }
        tracing::info!(libs = %missing_libs.join(" "), packages = %p.join(" "), "shared libraries missing for rustc-web");
        packages.extend(p);
    }
    if which("cc").is_none() {
        tracing::info!("no C linker (cc) for build scripts");
        packages.extend(["gcc".to_string(), "libc6-dev".to_string()]);
    }
    if packages.is_empty() {
        return Ok(());
    }
    if !as_root {
        bail!(
            "the offline toolchain needs system packages that are not installed{}: run `sudo apt-get install {}` and retry",
            if missing_libs.is_empty() {
                String::new()
            } else {
                format!(" (missing {})", missing_libs.join(", "))
            },
            packages.join(" ")
        );
    }
    apt::install(&packages)?;
    let still = missing_shared_libs(root, lib_dir)?;
    if !still.is_empty() {
        bail!(
            "shared libraries still missing for rustc-web after installing {}: {}",
            packages.join(" "),
            still.join(", ")
        );
    }
    Ok(())
}

/// Libraries `ldd` reports `not found` for rustc, librustc_driver and libLLVM.
fn missing_shared_libs(root: &Path, lib_dir: &Path) -> Result<Vec<String>> {
    if which("ldd").is_none() {
        return Ok(Vec::new()); // The `rustc --version` check catches it.
    }
    let mut files = vec![root.join("rust/usr/bin/rustc")];
    for e in std::fs::read_dir(lib_dir)?.filter_map(|e| e.ok()) {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("librustc_driver-") || n.starts_with("libLLVM") {
            files.push(e.path());
        }
    }
    let out = Command::new("ldd")
        .args(&files)
        .env("LD_LIBRARY_PATH", prepend_path(lib_dir))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("running ldd")?;
    Ok(parse_ldd_missing(&String::from_utf8_lossy(&out.stdout)))
}

/// `libz3.so.4 => not found` lines of ldd output → the library names, deduplicated.
pub(crate) fn parse_ldd_missing(ldd: &str) -> Vec<String> {
    let mut v: Vec<String> = ldd
        .lines()
        .filter(|l| l.contains("=> not found"))
        .filter_map(|l| l.split("=>").next().map(|s| s.trim().to_string()))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn check_platform() -> Result<()> {
    if !cfg!(target_os = "linux") {
        bail!(
            "the offline route works on Debian Linux only; install a wasm target: `rustup target add wasm32-wasip2`"
        );
    }
    if let Ok(os) = std::fs::read_to_string("/etc/os-release")
        && !os.lines().any(|l| l.trim() == "VERSION_CODENAME=bookworm")
    {
        tracing::warn!("the offline route was written for Debian 12 (bookworm); trying anyway");
    }
    Ok(())
}

/// The first folder under `dir` (itself or one level down) holding a file matching `pred`.
fn find_dir_with(dir: &Path, pred: impl Fn(&str) -> bool) -> Option<PathBuf> {
    let has = |d: &Path| {
        std::fs::read_dir(d).ok().is_some_and(|rd| {
            rd.filter_map(|e| e.ok())
                .any(|e| pred(&e.file_name().to_string_lossy()))
        })
    };
    if has(dir) {
        return Some(dir.to_path_buf());
    }
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.is_dir() && has(p))
}

fn prepend_path(dir: &Path) -> OsString {
    let mut v = OsString::from(dir);
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|o| !o.is_empty()) {
        v.push(":");
        v.push(old);
    }
    v
}

/// `path` quoted for sh.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(unix)]
fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}

#[cfg(not(unix))]
fn set_executable(_: &Path) -> Result<()> {
    Ok(())
}

#[cfg(unix)]
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn is_root() -> bool {
    false
}

/// Our stderr, for child processes whose progress output must not land on stdout.
pub(crate) fn stderr_stdio() -> Stdio {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        if let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() {
            return Stdio::from(fd);
        }
    }
    Stdio::inherit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_list_parsing() {
        let list = "x86_64-unknown-linux-gnu\nwasm32-unknown-unknown\nwasm32-wasip1\n";
        assert_eq!(
            parse_installed(list),
            [WasmTarget::Wasip1, WasmTarget::Unknown]
        );
        assert_eq!(parse_installed("x86_64-unknown-linux-gnu\n"), []);
        assert_eq!(
            parse_installed("wasm32-wasip2\r\nwasm32-wasip1\r\n"),
            [WasmTarget::Wasip2, WasmTarget::Wasip1]
        );
        // wasm32-wasip1-threads is another target.
        assert_eq!(parse_installed("wasm32-wasip1-threads\n"), []);
    }

    #[test]
    fn route_selection() {
        use Route::*;
        use WasmTarget::*;
        assert_eq!(select(None, &[]).unwrap(), (Offline, Wasip1));
        assert_eq!(select(None, &[Unknown]).unwrap(), (Rustup, Unknown));
        assert_eq!(select(None, &[Unknown, Wasip1]).unwrap(), (Rustup, Wasip1));
        assert_eq!(select(None, &[Wasip1, Wasip2]).unwrap(), (Rustup, Wasip2));
        assert_eq!(select(Some(Wasip1), &[Wasip2]).unwrap(), (Offline, Wasip1));
        assert_eq!(select(Some(Unknown), &[]).unwrap(), (Offline, Unknown));
        assert_eq!(
            select(Some(Unknown), &[Unknown]).unwrap(),
            (Rustup, Unknown)
        );
        assert_eq!(select(Some(Wasip2), &[Wasip2]).unwrap(), (Rustup, Wasip2));
        let err = select(Some(Wasip2), &[Wasip1]).unwrap_err().to_string();
        assert!(err.contains("rustup target add wasm32-wasip2"), "{err}");
    }

    #[test]
    fn ldd_missing_libraries() {
        let out = "/c/rust/usr/bin/rustc:\n\tlinux-vdso.so.1 (0x00007ffd)\n\tlibrustc_driver-abc.so => /c/lib/librustc_driver-abc.so (0x7f)\n\
                   /c/lib/libLLVM.so.22.1:\n\tlibz3.so.4 => not found\n\tlibedit.so.2 => not found\n\
                   /c/lib/librustc_driver-abc.so:\n\tlibz3.so.4 => not found\n";
        assert_eq!(parse_ldd_missing(out), ["libedit.so.2", "libz3.so.4"]);
        assert!(
            parse_ldd_missing("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n").is_empty()
        );
    }

    #[test]
    fn offline_cargo_env_is_for_the_child_only() {
        let tc = OfflineToolchain {
            rustc_version: "rustc 1.96.0".into(),
            rustc_wrapper: "/c/root-x/bin/rustc".into(),
            wasi_lib: "/c/root-x/wasi-libc/usr/lib/wasm32-wasi".into(),
            cargo: "/r/nightly/bin/cargo".into(),
            lld: "/r/stable/lib/rustlib/x86_64-unknown-linux-gnu/bin/rust-lld".into(),
            _lock: tempfile_for_test(),
        };
        let before = std::env::var_os("RUSTC");
        let cmd = tc.cargo(WasmTarget::Wasip1);
        assert_eq!(std::env::var_os("RUSTC"), before);
        let get = |k: &str| {
            cmd.env_set
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        };
        assert_eq!(get("RUSTC").unwrap(), "/c/root-x/bin/rustc");
        assert_eq!(get("RUSTC_BOOTSTRAP").unwrap(), "1");
        assert_eq!(
            get("CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS").unwrap(),
            "-C link-self-contained=no -L /c/root-x/wasi-libc/usr/lib/wasm32-wasi"
        );
        assert!(cmd.env_remove.iter().any(|k| k == "RUSTFLAGS"));
        assert_eq!(cmd.build_args, ["-Zbuild-std=std,panic_abort"]);
    }

    fn tempfile_for_test() -> File {
        let p = std::env::temp_dir().join(format!("sluice-pb-lock-{}", std::process::id()));
        let f = super::super::lock_file(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        f
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote(Path::new("/a b/c")), "'/a b/c'");
        assert_eq!(shell_quote(Path::new("/it's")), r"'/it'\''s'");
    }
}
