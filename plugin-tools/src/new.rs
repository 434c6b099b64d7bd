//! `sluice plugin new`: creates a plugin crate, ready to build and test, from the
//! templates in `plugin-tools/templates/plugin-new/`.
//!
//! The crate depends on the plugin SDK by path. Which SDK, in order:
//!
//! 1. `--sdk PATH`, if given;
//! 2. the SDK of the source tree this binary was built from
//!    (`<repository>/plugin-sdk`, its path fixed at compile time), if it is still
//!    there: a developer's checkout, where the SDK and the daemon change together;
//! 3. otherwise (a binary installed on a machine without the source), the SDK
//!    embedded in the binary, written out to `<cache>/sdk/<version>/`.
//!
//! `--embedded-sdk` picks 3 even when 2 is there. The embedded SDK is every file
//! of `plugin-sdk/` at build time (see `build.rs`), the WIT files included as real
//! files under `wit/` (in the repository `plugin-sdk/wit` is a symlink to
//! `../wit`), since the SDK's `wit_bindgen::generate!` reads them relative to its
//! manifest. Its `Cargo.toml` inherits fields and dependencies from the
//! repository's workspace, which is not there once extracted, so a standalone
//! manifest is written instead, with the inherited values filled in from the
//! embedded workspace manifest. Each run rewrites the files that differ, under a
//! lock, so the folder always holds what the running binary embeds.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use crate::build;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_sdk.rs"));
}

/// The SDK of the source tree this binary was built from.
const SOURCE_TREE_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-sdk");

const CARGO_TOML: &str = include_str!("../templates/plugin-new/Cargo.toml.in");
const GITIGNORE: &str = include_str!("../templates/plugin-new/gitignore");
const SOURCE_LIB: &str = include_str!("../templates/plugin-new/source/lib.rs");
const SOURCE_README: &str = include_str!("../templates/plugin-new/source/README.md");
const WRITER_LIB: &str = include_str!("../templates/plugin-new/writer/lib.rs");
const WRITER_README: &str = include_str!("../templates/plugin-new/writer/README.md");
const PY_PYPROJECT: &str = include_str!("../templates/plugin-new/python/pyproject.toml.in");
const PY_CONFTEST: &str = include_str!("../templates/plugin-new/python/conftest.py.in");
const PY_GITIGNORE: &str = include_str!("../templates/plugin-new/python/gitignore");
const PY_README: &str = include_str!("../templates/plugin-new/python/README.md");
const PY_SOURCE: &str = include_str!("../templates/plugin-new/python/source/plugin.py");
const PY_SOURCE_TEST: &str = include_str!("../templates/plugin-new/python/source/test_plugin.py");
const PY_WRITER: &str = include_str!("../templates/plugin-new/python/writer/plugin.py");
const PY_WRITER_TEST: &str = include_str!("../templates/plugin-new/python/writer/test_plugin.py");

/// The language of the new plugin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate (`cargo test`).
    #[default]
    Rust,
    /// A Python project (`python -m pytest`), built with componentize-py.
    Python,
}

/// Which kind of plugin to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Decodes messages into rows (`Source`, feature `source`).
    Source,
    /// Lands rows in a store (`Writer`, feature `writer`).
    Writer,
}

impl Kind {
    /// `source` or `writer`: also the SDK feature the crate enables.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Writer => "writer",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the new crate's SDK comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SdkChoice {
    /// The source tree's SDK if it is there, else the embedded one.
    Auto,
    /// This SDK folder.
    Path(PathBuf),
    /// The SDK embedded in the binary, written out to the cache.
    Embedded,
}

/// What to create.
#[derive(Clone, Debug)]
pub struct NewOptions {
    /// Source or writer.
    pub kind: Kind,
    /// The crate's (and plugin's) name.
    pub name: String,
    /// Rust or Python.
    pub lang: Lang,
    /// The folder to create the crate in (`<parent>/<name>`); `None` = the
    /// current directory.
    pub parent: Option<PathBuf>,
    /// Which SDK the crate depends on.
    pub sdk: SdkChoice,
    /// The cache the embedded SDK is written to (in `sdk/<version>`): the `sluice`
    /// CLI passes Sluice's cache folder, as for [`build::BuildOptions::cache_dir`].
    pub cache_dir: PathBuf,
}

/// Where an SDK was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SdkOrigin {
    /// Given with `--sdk`.
    Given,
    /// The source tree the binary was built from.
    SourceTree,
    /// Written out of the binary.
    Embedded,
}

/// A crate created.
#[derive(Clone, Debug)]
pub struct Created {
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// Its folder (absolute).
    pub dir: PathBuf,
    /// The SDK folder its `Cargo.toml` points to (absolute).
    pub sdk: PathBuf,
    /// Where that SDK came from.
    pub sdk_origin: SdkOrigin,
    /// Rust or Python.
    pub lang: Lang,
}

impl fmt::Display for Created {
    /// What was made, and what to do next.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = match self.sdk_origin {
            SdkOrigin::Given => "--sdk",
            SdkOrigin::SourceTree => "the source tree sluice was built from",
            SdkOrigin::Embedded => "written out of the sluice binary",
        };
        writeln!(
            f,
            "Created {} plugin `{}` in {}",
            self.kind,
            self.name,
            self.dir.display()
        )?;
        writeln!(f, "  SDK: {} ({origin})", self.sdk.display())?;
        writeln!(f, "Next:")?;
        writeln!(f, "  cd {}", self.dir.display())?;
        match self.lang {
            Lang::Rust => writeln!(f, "  cargo test")?,
            Lang::Python => writeln!(f, "  python3 -m pytest")?,
        }
        writeln!(f, "  sluice plugin build . --out dist")
    }
}

/// Creates the plugin crate `opts.parent/opts.name`.
pub fn create(opts: &NewOptions) -> Result<Created> {
    check_name(&opts.name)?;
    let parent = match &opts.parent {
        Some(p) => absolute(p)?,
        None => std::env::current_dir().context("finding the current directory")?,
    };
    let dir = parent.join(&opts.name);
    check_target(&dir)?;
    let (sdk, sdk_origin) = match &opts.sdk {
        SdkChoice::Path(path) => (given_sdk(path)?, SdkOrigin::Given),
        SdkChoice::Auto => match source_tree_sdk() {
            Some(sdk) => (sdk, SdkOrigin::SourceTree),
            None => (extract_embedded(opts)?, SdkOrigin::Embedded),
        },
        SdkChoice::Embedded => (extract_embedded(opts)?, SdkOrigin::Embedded),
    };
    let (files, sdk) = match opts.lang {
        Lang::Rust => (
            render(opts.kind, &opts.name, &sdk)?
                .into_iter()
                .map(|(path, text)| (path.to_owned(), text))
                .collect(),
            sdk,
        ),
        Lang::Python => {
            let sdk = sdk.join("python");
            (render_python(opts.kind, &opts.name, &sdk)?, sdk)
        }
    };
    write_crate(&parent, &dir, &files)?;
    Ok(Created {
        kind: opts.kind,
        name: opts.name.clone(),
        dir,
        sdk,
        sdk_origin,
        lang: opts.lang,
    })
}

/// Refuses a name cargo would refuse, or that could not name a plugin.
pub fn check_name(name: &str) -> Result<()> {
    const RULE: &str = "a plugin name is 1 to 64 lowercase ASCII letters, digits, `-` and `_`, \
                        starting with a letter, such as `cdr-source`";
    let mut bytes = name.bytes();
    let valid = name.len() <= 64
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        bail!("invalid plugin name `{name}`: {RULE}");
    }
    // The library's name: cargo refuses keywords and the names of std's crates.
    const RESERVED: &str = "abstract alloc as async await become box break const continue core \
        crate do dyn else enum extern false final fn for gen if impl in let loop macro match mod \
        move mut override priv proc_macro pub ref return self static std struct super test trait \
        true try type typeof unsafe unsized use virtual where while yield";
    let lib = name.replace('-', "_");
    if RESERVED.split_whitespace().any(|k| k == lib) {
        bail!(
            "invalid plugin name `{name}`: `{lib}` is a Rust keyword or the name of a standard crate"
        );
    }
    if lib == "sluice_plugin_sdk" {
        bail!("invalid plugin name `{name}`: it is the SDK's own name");
    }
    Ok(())
}

/// The crate's folder must not exist, or be empty.
fn check_target(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
        Ok(meta) if !meta.is_dir() => {
            bail!("{} exists and is not a directory", dir.display())
        }
        Ok(_) => {
            let mut entries =
                std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
            if entries.next().is_some() {
                bail!(
                    "{} already exists and is not empty: choose another name or --dir, or remove it",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// `path` made absolute against the current directory (without resolving symlinks).
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// The SDK given with `--sdk` (its folder or its `Cargo.toml`), checked.
fn given_sdk(path: &Path) -> Result<PathBuf> {
    let path = if path.file_name().is_some_and(|n| n == "Cargo.toml") && path.is_file() {
        path.parent().unwrap_or(Path::new("."))
    } else {
        path
    };
    let dir = std::fs::canonicalize(path)
        .with_context(|| format!("--sdk {}: no such directory", path.display()))?;
    check_sdk(&dir).with_context(|| format!("--sdk {}", path.display()))?;
    Ok(dir)
}

/// The source tree's SDK, if it is (still) there.
fn source_tree_sdk() -> Option<PathBuf> {
    let dir = std::fs::canonicalize(SOURCE_TREE_SDK).ok()?;
    check_sdk(&dir).ok().map(|()| dir)
}

/// Checks that `dir` holds the package `sluice-plugin-sdk` (errors say why not,
/// without naming `dir`: callers do).
fn check_sdk(dir: &Path) -> Result<()> {
    let manifest = dir.join("Cargo.toml");
    let Ok(text) = std::fs::read_to_string(&manifest) else {
        bail!("no Cargo.toml there, so it is not the plugin SDK");
    };
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    let name = table
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(toml::Value::as_str);
    if name != Some("sluice-plugin-sdk") {
        bail!(
            "not the plugin SDK: its Cargo.toml is {}, not the package sluice-plugin-sdk",
            name.map_or("no package".to_owned(), |n| format!("the package `{n}`"))
        );
    }
    Ok(())
}

/// The SDK `sluice plugin build` builds Python plugins with: the source tree's if
/// it is there, else the one embedded in the binary, written out to the cache.
pub fn sdk_for_build(cache: &Path) -> Result<PathBuf> {
    match source_tree_sdk() {
        Some(sdk) => Ok(sdk),
        None => extract_sdk(cache),
    }
}

fn extract_embedded(opts: &NewOptions) -> Result<PathBuf> {
    extract_sdk(&absolute(&opts.cache_dir)?)
}

/// Writes the SDK embedded in this binary to `<cache>/sdk/<version>/` (only the
/// files that differ) and returns that folder.
pub fn extract_sdk(cache: &Path) -> Result<PathBuf> {
    let (manifest, version) =
        standalone_manifest(embedded_file("Cargo.toml")?, embedded::WORKSPACE_MANIFEST)
            .context("making the embedded SDK's Cargo.toml standalone")?;
    let sdks = cache.join("sdk");
    std::fs::create_dir_all(&sdks).with_context(|| format!("creating {}", sdks.display()))?;
    let dir = sdks.join(&version);
    let _lock = build::lock_exclusive(
        &sdks.join(format!("{version}.lock")),
        "another sluice writing out the SDK",
    )?;
    for (relative, bytes) in embedded::SDK_FILES {
        if *relative != "Cargo.toml" {
            write_if_changed(&dir.join(relative), bytes)?;
        }
    }
    write_if_changed(&dir.join("Cargo.toml"), manifest.as_bytes())?;
    Ok(dir)
}

fn embedded_file(relative: &str) -> Result<&'static str> {
    let (_, bytes) = embedded::SDK_FILES
        .iter()
        .find(|(r, _)| *r == relative)
        .ok_or_else(|| anyhow!("the embedded SDK has no {relative}"))?;
    std::str::from_utf8(bytes).with_context(|| format!("the embedded SDK's {relative}"))
}

/// `path` holding `bytes`: left alone if it does already, else written through a
/// temporary file and a rename (a concurrent build never reads half a file).
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|existing| existing == bytes) {
        return Ok(());
    }
    let parent = path.parent().expect("a file path has a parent");
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The SDK's manifest with everything it inherits from the workspace filled in
/// (`x.workspace = true` in `[package]`, the dependency tables and `[lints]`), so
/// that it builds outside the workspace. Returns it with the SDK's version.
pub fn standalone_manifest(sdk: &str, workspace: &str) -> Result<(String, String)> {
    let mut manifest: toml::Table = toml::from_str(sdk).context("parsing the SDK's Cargo.toml")?;
    let root: toml::Table =
        toml::from_str(workspace).context("parsing the workspace's Cargo.toml")?;
    let ws = root
        .get("workspace")
        .and_then(toml::Value::as_table)
        .ok_or_else(|| anyhow!("the workspace's Cargo.toml has no [workspace]"))?;
    let empty = toml::Table::new();
    let table = |key: &str| {
        ws.get(key)
            .and_then(toml::Value::as_table)
            .unwrap_or(&empty)
    };
    let (ws_package, ws_deps) = (table("package"), table("dependencies"));

    let package = manifest
        .get_mut("package")
        .and_then(toml::Value::as_table_mut)
        .ok_or_else(|| anyhow!("the SDK's Cargo.toml has no [package]"))?;
    package.remove("workspace");
    for (key, value) in package.iter_mut() {
        if inherits(value) {
            *value = ws_package.get(key).cloned().ok_or_else(|| {
                anyhow!("package.{key} is inherited, but [workspace.package] has no {key}")
            })?;
        }
    }
    let version = package
        .get("version")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| anyhow!("the SDK has no version"))?
        .to_owned();

    resolve_dependencies(&mut manifest, ws_deps)?;
    if let Some(targets) = manifest
        .get_mut("target")
        .and_then(toml::Value::as_table_mut)
    {
        for (_, target) in targets.iter_mut() {
            let Some(target) = target.as_table_mut() else {
                continue;
            };
            resolve_dependencies(target, ws_deps)?;
        }
    }
    if manifest.get("lints").is_some_and(inherits) {
        match ws.get("lints") {
            Some(lints) => manifest.insert("lints".into(), lints.clone()),
            None => manifest.remove("lints"),
        };
    }
    let text = format!(
        "# The Sluice plugin SDK {version}, written out of sluice {} by `sluice plugin new`.\n\
         # What it inherits from the Sluice workspace is filled in. Rewritten when it differs\n\
         # from what the binary embeds: edits here do not last.\n\n{}",
        env!("CARGO_PKG_VERSION"),
        toml::to_string(&manifest).context("writing the SDK's Cargo.toml")?
    );
    Ok((text, version))
}

/// `{ workspace = true }`.
fn inherits(value: &toml::Value) -> bool {
    value
        .as_table()
        .and_then(|t| t.get("workspace"))
        .and_then(toml::Value::as_bool)
        == Some(true)
}

/// Fills in the inherited entries of the dependency tables of `table` (the
/// manifest, or one `[target.'cfg(..)']` table), as cargo would: the workspace's
/// entry, with the member's features added and its other keys (`optional`) set.
fn resolve_dependencies(table: &mut toml::Table, ws_deps: &toml::Table) -> Result<()> {
    for kind in ["dependencies", "dev-dependencies", "build-dependencies"] {
        let Some(deps) = table.get_mut(kind).and_then(toml::Value::as_table_mut) else {
            continue;
        };
        for (name, dep) in deps.iter_mut() {
            if !inherits(dep) {
                continue;
            }
            let mut resolved = match ws_deps.get(name) {
                Some(toml::Value::String(version)) => {
                    toml::Table::from_iter([("version".to_owned(), version.clone().into())])
                }
                Some(toml::Value::Table(t)) => t.clone(),
                _ => {
                    bail!("{kind}.{name} is inherited, but [workspace.dependencies] has no {name}")
                }
            };
            if resolved.contains_key("path") {
                bail!("{kind}.{name} is a path dependency of the workspace, which is not embedded");
            }
            for (key, value) in dep.as_table().expect("inherits() saw a table") {
                match key.as_str() {
                    "workspace" => {}
                    "features" => {
                        let mut features = resolved
                            .get("features")
                            .and_then(toml::Value::as_array)
                            .cloned()
                            .unwrap_or_default();
                        for f in value.as_array().into_iter().flatten() {
                            if !features.contains(f) {
                                features.push(f.clone());
                            }
                        }
                        resolved.insert("features".into(), features.into());
                    }
                    _ => {
                        resolved.insert(key.clone(), value.clone());
                    }
                }
            }
            *dep = resolved.into();
        }
    }
    Ok(())
}

/// The files of the new crate: (path relative to the crate, contents).
fn render(kind: Kind, name: &str, sdk: &Path) -> Result<Vec<(&'static str, String)>> {
    let sdk = sdk
        .to_str()
        .ok_or_else(|| anyhow!("the SDK's path {} is not UTF-8", sdk.display()))?;
    let description = match kind {
        Kind::Source => "A Sluice source plugin: decodes `id,value` lines into rows.",
        Kind::Writer => "A Sluice writer plugin: stores rows as JSON documents in Postgres.",
    };
    let (lib, readme) = match kind {
        Kind::Source => (SOURCE_LIB, SOURCE_README),
        Kind::Writer => (WRITER_LIB, WRITER_README),
    };
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{kind}}", kind.as_str())
            // TOML strings, quoted and escaped.
            .replace("{{sdk_path}}", &toml::Value::from(sdk).to_string())
            .replace(
                "{{description}}",
                &toml::Value::from(description).to_string(),
            )
    };
    Ok(vec![
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", lib.to_owned()),
        ("README.md", fill(readme)),
        (".gitignore", GITIGNORE.to_owned()),
    ])
}

/// The files of a new Python project, whose tests import the SDK in `sdk_python`
/// (the SDK's `python/` folder).
fn render_python(kind: Kind, name: &str, sdk_python: &Path) -> Result<Vec<(String, String)>> {
    if !sdk_python.join("sluice_plugin").is_dir() {
        bail!(
            "the plugin SDK has no Python SDK ({} is missing)",
            sdk_python.join("sluice_plugin").display()
        );
    }
    let sdk = sdk_python
        .to_str()
        .ok_or_else(|| anyhow!("the SDK's path {} is not UTF-8", sdk_python.display()))?;
    let module = name.replace('-', "_");
    let class: String = module
        .split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let description = match kind {
        Kind::Source => "A Sluice source plugin in Python: decodes `id,value` lines into rows.",
        Kind::Writer => {
            "A Sluice writer plugin in Python: stores rows as JSON documents in Postgres."
        }
    };
    let (plugin, test) = match kind {
        Kind::Source => (PY_SOURCE, PY_SOURCE_TEST),
        Kind::Writer => (PY_WRITER, PY_WRITER_TEST),
    };
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{kind}}", kind.as_str())
            .replace("{{module}}", &module)
            .replace("{{class}}", &class)
            .replace("{{description}}", description)
            // A Python string literal (JSON's quoting is valid Python).
            .replace(
                "{{sdk_path}}",
                &serde_json::to_string(sdk).expect("a string serializes"),
            )
    };
    Ok(vec![
        ("pyproject.toml".into(), fill(PY_PYPROJECT)),
        (format!("{module}.py"), fill(plugin)),
        ("tests/test_plugin.py".into(), fill(test)),
        ("conftest.py".into(), fill(PY_CONFTEST)),
        ("README.md".into(), fill(PY_README)),
        (".gitignore".into(), PY_GITIGNORE.to_owned()),
    ])
}

/// Writes the crate into a hidden folder next to `dir`, then renames it to `dir`
/// (which may exist, empty): an interrupted run leaves no half-made crate.
fn write_crate(parent: &Path, dir: &Path, files: &[(String, String)]) -> Result<()> {
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = dir.file_name().expect("a crate folder has a name");
    let staging = parent.join(format!(
        ".{}.new-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        for (relative, contents) in files {
            let path = staging.join(relative);
            std::fs::create_dir_all(path.parent().expect("a file path has a parent"))
                .with_context(|| format!("creating {}", staging.display()))?;
            std::fs::write(&path, contents)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        std::fs::rename(&staging, dir).with_context(|| format!("creating {}", dir.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sluice-plugin-new-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn names_follow_cargo_and_plugin_rules() {
        for good in ["cdr-source", "a", "kafka_writer2"] {
            check_name(good).unwrap();
        }
        for bad in ["", "Cdr", "2fast", "-x", "a b", "é", "a.b", &"x".repeat(65)] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains("lowercase ASCII letters"), "{bad}: {err}");
        }
        let err = check_name("self").unwrap_err().to_string();
        assert!(err.contains("keyword"), "{err}");
        assert!(check_name("proc-macro").is_err());
        assert!(check_name("sluice-plugin-sdk").is_err());
    }

    #[test]
    fn an_existing_non_empty_folder_or_a_file_is_refused() {
        let dir = temp_dir("target");
        check_target(&dir.join("missing")).unwrap();
        std::fs::create_dir(dir.join("empty")).unwrap();
        check_target(&dir.join("empty")).unwrap();
        std::fs::create_dir(dir.join("full")).unwrap();
        std::fs::write(dir.join("full/notes"), "").unwrap();
        let err = check_target(&dir.join("full")).unwrap_err().to_string();
        assert!(err.contains("full") && err.contains("not empty"), "{err}");
        std::fs::write(dir.join("file"), "").unwrap();
        let err = check_target(&dir.join("file")).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_sdk_is_embedded_with_real_wit_files() {
        let names: Vec<&str> = embedded::SDK_FILES.iter().map(|(n, _)| *n).collect();
        for want in [
            "Cargo.toml",
            "src/lib.rs",
            "src/testing.rs",
            "wit/sluice-plugin@0.1.0/types.wit",
            "wit/sluice-plugin@0.1.0/writer.wit",
        ] {
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
        // Everything in the source tree is in the binary.
        let src = Path::new(SOURCE_TREE_SDK).join("src");
        for entry in std::fs::read_dir(&src).unwrap() {
            let name = format!("src/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(names.contains(&name.as_str()), "{name} not embedded");
        }
    }

    #[test]
    fn the_python_sdk_is_embedded_without_compiled_files() {
        let names: Vec<&str> = embedded::SDK_FILES.iter().map(|(n, _)| *n).collect();
        for want in [
            "python/sluice_plugin/__init__.py",
            "python/sluice_plugin/_wasm.py",
            "python/sluice_plugin/testing.py",
        ] {
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("__pycache__")),
            "{names:?}"
        );
    }

    #[test]
    fn a_python_project_names_its_module_and_class_after_the_plugin() {
        let sdk = Path::new(SOURCE_TREE_SDK).join("python");
        let files = render_python(Kind::Source, "cdr-feed_v2", &sdk).unwrap();
        let file = |name: &str| {
            &files
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("no {name}"))
                .1
        };
        assert!(file("pyproject.toml").contains("class = \"cdr_feed_v2:CdrFeedV2\""));
        assert!(file("pyproject.toml").contains("kind = \"source\""));
        assert!(file("cdr_feed_v2.py").contains("class CdrFeedV2(Source):"));
        assert!(file("tests/test_plugin.py").contains("from cdr_feed_v2 import CdrFeedV2"));
        assert!(
            file("conftest.py").contains(&serde_json::to_string(sdk.to_str().unwrap()).unwrap())
        );
        assert!(
            !files.iter().any(|(_, text)| text.contains("{{")),
            "a placeholder left"
        );
        let err = render_python(Kind::Writer, "x", Path::new("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("no Python SDK"), "{err}");
    }

    #[test]
    fn the_standalone_manifest_inherits_nothing() {
        let (text, version) = standalone_manifest(
            embedded_file("Cargo.toml").unwrap(),
            embedded::WORKSPACE_MANIFEST,
        )
        .unwrap();
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
        assert!(!text.contains("workspace ="), "{text}");
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(table["package"]["name"].as_str(), Some("sluice-plugin-sdk"));
        assert_eq!(table["package"]["edition"].as_str(), Some("2024"));
        assert!(table["dependencies"]["wit-bindgen"]["version"].is_str());
        assert!(table["features"].get("writer").is_some());
    }

    #[test]
    fn inherited_dependencies_merge_as_cargo_does() {
        let sdk = r#"
[package]
name = "sluice-plugin-sdk"
version.workspace = true
[dependencies]
a.workspace = true
b = { workspace = true, features = ["y"], optional = true }
c = "1"
[target.'cfg(unix)'.dependencies]
d.workspace = true
[lints]
workspace = true
"#;
        let ws = r#"
[workspace.package]
version = "9.1.0"
[workspace.dependencies]
a = "1.2"
b = { version = "2", features = ["x"] }
d = { version = "3", default-features = false }
"#;
        let (text, version) = standalone_manifest(sdk, ws).unwrap();
        assert_eq!(version, "9.1.0");
        let t: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(t["dependencies"]["a"]["version"].as_str(), Some("1.2"));
        let b = &t["dependencies"]["b"];
        assert_eq!(b["features"].as_array().unwrap().len(), 2);
        assert_eq!(b["optional"].as_bool(), Some(true));
        assert_eq!(t["dependencies"]["c"].as_str(), Some("1"));
        assert_eq!(
            t["target"]["cfg(unix)"]["dependencies"]["d"]["default-features"].as_bool(),
            Some(false)
        );
        assert!(t.get("lints").is_none());
        let missing = standalone_manifest(sdk, "[workspace]\n")
            .unwrap_err()
            .to_string();
        assert!(missing.contains("package.version"), "{missing}");
    }

    #[test]
    fn extraction_writes_real_files_and_is_idempotent() {
        let cache = temp_dir("extract");
        let dir = extract_sdk(&cache).unwrap();
        assert_eq!(dir, cache.join("sdk").join(env!("CARGO_PKG_VERSION")));
        let wit = dir.join("wit/sluice-plugin@0.1.0/types.wit");
        assert!(std::fs::symlink_metadata(dir.join("wit")).unwrap().is_dir());
        assert!(
            std::fs::read_to_string(&wit)
                .unwrap()
                .contains("package sluice:plugin@0.1.0")
        );
        check_sdk(&dir).unwrap();
        // A file edited in the cache is put back; unchanged files are not rewritten.
        std::fs::write(dir.join("src/lib.rs"), "edited").unwrap();
        let before = std::fs::metadata(&wit).unwrap().modified().unwrap();
        assert_eq!(extract_sdk(&cache).unwrap(), dir);
        assert_ne!(
            std::fs::read_to_string(dir.join("src/lib.rs")).unwrap(),
            "edited"
        );
        assert_eq!(std::fs::metadata(&wit).unwrap().modified().unwrap(), before);
        std::fs::remove_dir_all(&cache).unwrap();
    }

    #[test]
    fn creates_a_crate_and_refuses_to_overwrite_it() {
        let parent = temp_dir("create");
        let opts = NewOptions {
            kind: Kind::Writer,
            name: "events-writer".into(),
            lang: Lang::Rust,
            parent: Some(parent.join("plugins")),
            sdk: SdkChoice::Path(SOURCE_TREE_SDK.into()),
            // Not used: the SDK is given.
            cache_dir: parent.join("cache"),
        };
        let created = create(&opts).unwrap();
        assert_eq!(created.dir, parent.join("plugins/events-writer"));
        assert_eq!(created.sdk_origin, SdkOrigin::Given);
        let manifest = std::fs::read_to_string(created.dir.join("Cargo.toml")).unwrap();
        assert!(!manifest.contains("{{"), "{manifest}");
        let table: toml::Table = toml::from_str(&manifest).unwrap();
        assert_eq!(table["package"]["name"].as_str(), Some("events-writer"));
        assert!(table["workspace"].as_table().unwrap().is_empty());
        let sdk = &table["dependencies"]["sluice-plugin-sdk"];
        assert_eq!(sdk["path"].as_str(), created.sdk.to_str());
        assert_eq!(
            sdk["features"].as_array().unwrap()[0].as_str(),
            Some("writer")
        );
        assert_eq!(table["lib"]["crate-type"].as_array().unwrap().len(), 2);
        assert_eq!(table["profile"]["release"]["panic"].as_str(), Some("abort"));
        for file in ["src/lib.rs", "README.md", ".gitignore"] {
            assert!(created.dir.join(file).is_file(), "{file}");
        }
        let readme = std::fs::read_to_string(created.dir.join("README.md")).unwrap();
        assert!(readme.contains("plugin = \"events-writer\"") && !readme.contains("{{"));
        assert!(created.to_string().contains("cargo test"));

        let err = create(&opts).unwrap_err().to_string();
        assert!(
            err.contains("events-writer") && err.contains("not empty"),
            "{err}"
        );
        let bad_sdk = NewOptions {
            name: "other".into(),
            sdk: SdkChoice::Path(parent.clone()),
            ..opts.clone()
        };
        let err = format!("{:#}", create(&bad_sdk).unwrap_err());
        assert!(
            err.contains("--sdk") && err.contains("not the plugin SDK"),
            "{err}"
        );
        // Nothing is left behind by the failed run.
        let names: Vec<_> = std::fs::read_dir(parent.join("plugins"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["events-writer"]);
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
