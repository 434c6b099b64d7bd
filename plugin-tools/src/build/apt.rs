//! The bits of APT the offline toolchain needs: resolving Debian's `rustc-web` package
//! set from `apt-cache` metadata, downloading `.deb` files, installing missing
//! runtime libraries. Parsing is kept in pure functions (unit-tested below).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The compiler package everything else is resolved from.
pub(crate) const RUSTC_WEB: &str = "rustc-web";
/// The standard library sources, built from the same Debian source package.
pub(crate) const RUST_WEB_SRC: &str = "rust-web-src";
/// The C library wasm32-wasip1's std links against.
pub(crate) const WASI_LIBC: &str = "wasi-libc";
/// What Debian's libllvm needs at run time; named when resolving from APT fails.
pub(crate) const LLVM_RUNTIME_FALLBACK: [&str; 4] = ["libz3-4", "libedit2", "libffi8", "libxml2"];

/// A package at an exact version (`name=version` for apt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PackageVersion {
    pub name: String,
    pub version: String,
}

impl PackageVersion {
    pub fn spec(&self) -> String {
        format!("{}={}", self.name, self.version)
    }

    /// The prefix of the file name `apt-get download` gives the package
    /// (`name_version_`, with the epoch's `:` written `%3a`).
    pub fn deb_prefix(&self) -> String {
        format!("{}_{}_", self.name, self.version.replace(':', "%3a"))
    }
}

/// Why the package set could not be resolved.
#[derive(Debug)]
pub(crate) enum ResolveError {
    /// APT's lists don't know a package (or version) we need: `apt-get update` may help.
    Unknown(String),
    /// Anything else (apt-cache missing or failing).
    Other(anyhow::Error),
}

impl From<anyhow::Error> for ResolveError {
    fn from(e: anyhow::Error) -> Self {
        ResolveError::Other(e)
    }
}

/// Resolves the package set from APT's metadata: `rustc-web`'s candidate version, then
/// the `Depends:` chain rustc-web → libstd-rust-web-dev → libstd-rust-web-X.Y →
/// libllvmNN, plus `rust-web-src` (same version) and `wasi-libc`.
pub(crate) fn resolve() -> Result<Vec<PackageVersion>, ResolveError> {
    let unknown = |what: String| ResolveError::Unknown(what);
    let version = candidate(RUSTC_WEB)?
        .ok_or_else(|| unknown(format!("apt knows no `{RUSTC_WEB}` package")))?;
    let pv = |name: &str, version: &str| PackageVersion {
        name: name.to_string(),
        version: version.to_string(),
    };

    let rustc_deps = depends(RUSTC_WEB, &version)?
        .ok_or_else(|| unknown(format!("apt has no record for {RUSTC_WEB}={version}")))?;
    let libstd_dev = rustc_deps
        .iter()
        .find(|d| d.starts_with("libstd-rust") && d.ends_with("-dev"))
        .ok_or_else(|| {
            ResolveError::Other(anyhow::anyhow!(
                "{RUSTC_WEB}={version} depends on no libstd-rust-*-dev"
            ))
        })?
        .clone();
    let dev_deps = depends(&libstd_dev, &version)?
        .ok_or_else(|| unknown(format!("apt has no record for {libstd_dev}={version}")))?;
    let libstd = dev_deps
        .iter()
        .find(|d| is_versioned_libstd(d))
        .ok_or_else(|| {
            ResolveError::Other(anyhow::anyhow!(
                "{libstd_dev}={version} depends on no libstd-rust-*-X.Y"
            ))
        })?
        .clone();
    let libstd_deps = depends(&libstd, &version)?
        .ok_or_else(|| unknown(format!("apt has no record for {libstd}={version}")))?;
    let llvm = libstd_deps
        .iter()
        .find(|d| is_libllvm(d))
        .ok_or_else(|| {
            ResolveError::Other(anyhow::anyhow!(
                "{libstd}={version} depends on no libllvmNN"
            ))
        })?
        .clone();
    let llvm_version =
        candidate(&llvm)?.ok_or_else(|| unknown(format!("apt has no candidate for {llvm}")))?;
    if depends(RUST_WEB_SRC, &version)?.is_none() {
        return Err(unknown(format!(
            "apt has no record for {RUST_WEB_SRC}={version}"
        )));
    }
    let wasi_version = candidate(WASI_LIBC)?
        .ok_or_else(|| unknown(format!("apt knows no `{WASI_LIBC}` package")))?;

    Ok(vec![
        pv(RUSTC_WEB, &version),
        pv(&libstd_dev, &version),
        pv(&libstd, &version),
        pv(RUST_WEB_SRC, &version),
        pv(&llvm, &llvm_version),
        pv(WASI_LIBC, &wasi_version),
    ])
}

/// `libstd-rust-web-1.96` (not `-dev`).
fn is_versioned_libstd(name: &str) -> bool {
    name.starts_with("libstd-rust")
        && name.rsplit('-').next().is_some_and(|v| {
            !v.is_empty()
                && v.chars().all(|c| c.is_ascii_digit() || c == '.')
                && v.contains(|c: char| c.is_ascii_digit())
        })
}

/// `libllvm22`.
fn is_libllvm(name: &str) -> bool {
    name.strip_prefix("libllvm")
        .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit()))
}

/// The shared-library packages Debian's rustc needs at run time that are not installed:
/// the `Depends:` of the libllvm and libstd-rust-X.Y packages of `set`, minus the
/// packages of the set itself.
pub(crate) fn missing_runtime_packages(set: &[PackageVersion]) -> Vec<String> {
    let ours: BTreeSet<&str> = set.iter().map(|p| p.name.as_str()).collect();
    let mut wanted = BTreeSet::new();
    let mut resolved_any = false;
    for p in set
        .iter()
        .filter(|p| is_libllvm(&p.name) || is_versioned_libstd(&p.name))
    {
        if let Ok(Some(deps)) = depends(&p.name, &p.version) {
            resolved_any = true;
            wanted.extend(deps.into_iter().filter(|d| !ours.contains(d.as_str())));
        }
    }
    if !resolved_any {
        wanted.extend(LLVM_RUNTIME_FALLBACK.iter().map(|s| s.to_string()));
    }
    wanted.into_iter().filter(|p| !is_installed(p)).collect()
}

/// The candidate version of a package, `None` when apt knows none.
pub(crate) fn candidate(package: &str) -> Result<Option<String>> {
    let out = apt_cache(&["policy", package])?;
    Ok(parse_candidate(&out))
}

/// The package names of the `Depends:` and `Pre-Depends:` of `package=version`
/// (first alternative of each), `None` when apt has no such record.
pub(crate) fn depends(package: &str, version: &str) -> Result<Option<Vec<String>>> {
    let out = Command::new("apt-cache")
        .args(["show", &format!("{package}={version}")])
        .stdin(Stdio::null())
        .output()
        .context("running apt-cache (is this a Debian system?)")?;
    if !out.status.success() {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(None);
    }
    let mut deps = Vec::new();
    for field in ["Pre-Depends", "Depends"] {
        if let Some(v) = first_record_field(&text, field) {
            deps.extend(parse_depends(&v));
        }
    }
    Ok(Some(deps))
}

fn apt_cache(args: &[&str]) -> Result<String> {
    let out = Command::new("apt-cache")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running apt-cache (is this a Debian system?)")?;
    if !out.status.success() {
        bail!(
            "apt-cache {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `Candidate: X` of `apt-cache policy` output; `None` for `(none)` or no record.
pub(crate) fn parse_candidate(policy: &str) -> Option<String> {
    policy
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "(none)")
        .map(str::to_string)
}

/// A field of the first record of `apt-cache show` output, continuation lines joined.
pub(crate) fn first_record_field(show: &str, field: &str) -> Option<String> {
    let mut lines = show.lines().take_while(|l| !l.trim().is_empty());
    let prefix = format!("{field}:");
    let first = lines.by_ref().find(|l| l.starts_with(&prefix))?;
    let mut value = first[prefix.len()..].trim().to_string();
    for l in lines {
        if l.starts_with(' ') || l.starts_with('\t') {
            value.push(' ');
            value.push_str(l.trim());
        } else {
            break;
        }
    }
    Some(value)
}

/// Package names of a `Depends:` value: `a (>= 1), b | c, d:any` → `a, b, d`.
pub(crate) fn parse_depends(value: &str) -> Vec<String> {
    value
        .split(',')
        .filter_map(|dep| {
            let first = dep.split('|').next()?.trim();
            let name = first
                .split(|c: char| c.is_whitespace() || c == '(' || c == '[' || c == '<')
                .next()?;
            let name = name.split(':').next()?.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// Whether dpkg has `package` installed.
pub(crate) fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Status}", package])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "installed"
        })
}

/// `apt-get update` (root only).
pub(crate) fn update() -> Result<()> {
    run_apt(
        Command::new("apt-get").args(["update", "-q", "-o", "DPkg::Lock::Timeout=120"]),
        "apt-get update",
    )
}

/// `apt-get install -y --no-install-recommends PACKAGES` (root only).
pub(crate) fn install(packages: &[String]) -> Result<()> {
    run_apt(
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "-o",
                "DPkg::Lock::Timeout=120",
            ])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("apt-get install {}", packages.join(" ")),
    )
}

/// Downloads `packages` into `dest` (through a temporary directory, so an interrupted
/// download leaves no truncated `.deb` behind). Returns the files.
pub(crate) fn download(
    packages: &[PackageVersion],
    dest: &Path,
    as_root: bool,
) -> Result<Vec<PathBuf>> {
    let tmp = dest.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(&tmp).args(["download", "-q"]);
    if as_root {
        // Root-owned folders are not writable by apt's `_apt` sandbox user.
        cmd.args(["-o", "APT::Sandbox::User=root"]);
    }
    cmd.args(packages.iter().map(PackageVersion::spec));
    let result = run_apt(&mut cmd, "apt-get download").and_then(|()| {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&tmp)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".deb") {
                let to = dest.join(&name);
                std::fs::rename(entry.path(), &to)
                    .with_context(|| format!("moving {}", to.display()))?;
                files.push(to);
            }
        }
        Ok(files)
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn run_apt(cmd: &mut Command, what: &str) -> Result<()> {
    // apt's progress goes to our stderr: stdout may be the CLI's result.
    let status = cmd
        .stdin(Stdio::null())
        .stdout(super::toolchain::stderr_stdio())
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// The `.deb` of `package` in `dir`, if downloaded.
pub(crate) fn find_deb(dir: &Path, package: &PackageVersion) -> Option<PathBuf> {
    let prefix = package.deb_prefix();
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .find_map(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            (name.starts_with(&prefix) && name.ends_with(".deb")).then(|| e.path())
        })
}

/// The manifest file: one `name version` per line.
pub(crate) fn format_manifest(set: &[PackageVersion]) -> String {
    set.iter()
        .map(|p| format!("{} {}\n", p.name, p.version))
        .collect()
}

pub(crate) fn parse_manifest(text: &str) -> Vec<PackageVersion> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (name, version) = (it.next()?, it.next()?);
            Some(PackageVersion {
                name: name.to_string(),
                version: version.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "Package: libstd-rust-web-1.96
Source: rustc-web
Version: 1.96.0+dfsg1-1~deb12u2
Installed-Size: 123
Depends: libc6 (>= 2.34), libgcc-s1 (>= 4.2), libllvm22,
 libstdc++6 (>= 11)
Pre-Depends: multiarch-support
Description: Rust standard libraries

Package: libstd-rust-web-1.96
Version: 1.85.0+dfsg3-1~deb12u3
Depends: libllvm19
";

    #[test]
    fn depends_of_the_first_record_with_continuations() {
        let v = first_record_field(SHOW, "Depends").unwrap();
        assert_eq!(
            parse_depends(&v),
            ["libc6", "libgcc-s1", "libllvm22", "libstdc++6"]
        );
        assert_eq!(
            first_record_field(SHOW, "Pre-Depends").unwrap(),
            "multiarch-support"
        );
        assert_eq!(first_record_field(SHOW, "Recommends"), None);
    }

    #[test]
    fn depends_alternatives_and_arch_qualifiers() {
        assert_eq!(
            parse_depends(
                "libstd-rust-web-dev (= 1.96.0+dfsg1-1~deb12u2), gcc, libc-dev, binutils (>= 2.26)"
            ),
            ["libstd-rust-web-dev", "gcc", "libc-dev", "binutils"]
        );
        assert_eq!(
            parse_depends("a | b, c:any (>= 1) [amd64], d <!nocheck>"),
            ["a", "c", "d"]
        );
        assert_eq!(parse_depends(""), Vec::<String>::new());
    }

    #[test]
    fn picks_the_dependency_chain() {
        let rustc = parse_depends(
            "libc6 (>= 2.34), libgcc-s1 (>= 3.0), libstd-rust-web-dev (= 1.96.0+dfsg1-1~deb12u2), gcc, libc-dev, binutils (>= 2.26)",
        );
        assert_eq!(
            rustc
                .iter()
                .find(|d| d.starts_with("libstd-rust") && d.ends_with("-dev"))
                .unwrap(),
            "libstd-rust-web-dev"
        );
        let dev = parse_depends("libstd-rust-web-1.96 (= 1.96.0+dfsg1-1~deb12u2)");
        assert_eq!(
            dev.iter().find(|d| is_versioned_libstd(d)).unwrap(),
            "libstd-rust-web-1.96"
        );
        assert!(!is_versioned_libstd("libstd-rust-web-dev"));
        assert!(is_versioned_libstd("libstd-rust-1.85"));
        let libstd = first_record_field(SHOW, "Depends")
            .map(|v| parse_depends(&v))
            .unwrap();
        assert_eq!(libstd.iter().find(|d| is_libllvm(d)).unwrap(), "libllvm22");
        assert!(!is_libllvm("libllvm-22-ocaml"));
    }

    #[test]
    fn candidate_lines() {
        let policy = "rustc-web:\n  Installed: (none)\n  Candidate: 1.96.0+dfsg1-1~deb12u2\n  Version table:\n";
        assert_eq!(
            parse_candidate(policy).as_deref(),
            Some("1.96.0+dfsg1-1~deb12u2")
        );
        assert_eq!(
            parse_candidate("rustc-web:\n  Installed: (none)\n  Candidate: (none)\n"),
            None
        );
        assert_eq!(parse_candidate(""), None);
    }

    #[test]
    fn deb_names_and_manifest() {
        let p = PackageVersion {
            name: "libllvm22".into(),
            version: "1:22.1.8-1~deb12u1".into(),
        };
        assert_eq!(p.deb_prefix(), "libllvm22_1%3a22.1.8-1~deb12u1_");
        assert_eq!(p.spec(), "libllvm22=1:22.1.8-1~deb12u1");
        let set = vec![
            p.clone(),
            PackageVersion {
                name: "wasi-libc".into(),
                version: "0.0~git20220510.9886d3d-2".into(),
            },
        ];
        assert_eq!(parse_manifest(&format_manifest(&set)), set);
    }
}
