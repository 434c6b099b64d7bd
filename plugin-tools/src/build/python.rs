//! Python plugins: a folder with a `pyproject.toml` holding a `[tool.sluice]`
//! table (and no `Cargo.toml`), built with `componentize-py`.
//!
//! `componentize-py` is pinned ([`COMPONENTIZE_PY_VERSION`]) and installed from
//! PyPI on first use into a virtual environment in the cache
//! (`<cache>/python/componentize-py-<version>/venv`), never system-wide; once it is
//! there, building needs no network (unless the plugin lists dependencies).
//!
//! A build, in `<cache>/python-build/<name>-<hash of the folder>/`:
//!
//! 1. the dependencies of `[project] dependencies` are installed with pip into
//!    `deps/`; a package that is not pure Python (a wheel not
//!    `Root-Is-Purelib: true`, or any `.so`/`.pyd` file) is refused, naming it;
//! 2. an entry module `sluice_entry.py` is generated: it imports the class named by
//!    `[tool.sluice] class` and hands it to the SDK's glue
//!    (`sluice_plugin._wasm`), the only place the generated bindings are seen;
//! 3. `componentize-py` builds the component for the `source-plugin` or
//!    `writer-plugin` world of the SDK's WIT (`sluice:plugin@0.1.0`), with the
//!    plugin's folder, the SDK and `deps/` on its Python path, and every WASI
//!    import replaced by a stub that traps (`--stub-wasi`): CPython's libc
//!    imports `wasi:sockets`, which the host grants to no source and to writers
//!    only with a `tcp` grant. A plugin has no files, clock or environment in the
//!    sandbox anyway; the SDK sends `print` and `sys.stderr` to the plugin's log;
//! 4. the component is checked to export that world's interface at that version,
//!    and written to `<out_dir>/<name>.wasm` atomically.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::{BuiltPlugin, Route, WasmTarget, component_summary, lock_exclusive, write_atomically};

/// The `componentize-py` release plugins are built with (from PyPI).
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

/// Flags of `componentize-py componentize` (in the build fingerprint too).
const COMPONENTIZE_FLAGS: &[&str] = &["--stub-wasi"];

/// The WIT package Python plugins are built against (the SDK's, frozen).
pub const WIT_PACKAGE: &str = "sluice:plugin@0.1.0";

/// Whether `dir` is a Python plugin project: a `pyproject.toml` with a
/// `[tool.sluice]` table, and no `Cargo.toml`.
pub fn is_python_project(dir: &Path) -> bool {
    if !dir.is_dir() || dir.join("Cargo.toml").exists() {
        return false;
    }
    std::fs::read_to_string(dir.join("pyproject.toml"))
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
        .is_some_and(|t| t.get("tool").and_then(|t| t.get("sluice")).is_some())
}

/// Which world a Python plugin targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyKind {
    /// `source-plugin`: exports `sluice:plugin/source`.
    Source,
    /// `writer-plugin`: exports `sluice:plugin/writer`.
    Writer,
}

impl PyKind {
    fn world(self) -> &'static str {
        match self {
            PyKind::Source => "source-plugin",
            PyKind::Writer => "writer-plugin",
        }
    }

    fn interface(self) -> &'static str {
        match self {
            PyKind::Source => "source",
            PyKind::Writer => "writer",
        }
    }

    fn export_fn(self) -> &'static str {
        match self {
            PyKind::Source => "source_export",
            PyKind::Writer => "writer_export",
        }
    }

    /// The class name componentize-py looks up in the entry module.
    fn export_class(self) -> &'static str {
        match self {
            PyKind::Source => "Source",
            PyKind::Writer => "Writer",
        }
    }
}

/// What a plugin's `pyproject.toml` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyProject {
    /// `[project] name`: the plugin's name and its output file's.
    pub name: String,
    /// `[project] version`.
    pub version: String,
    /// `[project] description`.
    pub description: String,
    /// `[project] dependencies`: pip requirement strings.
    pub dependencies: Vec<String>,
    /// `[tool.sluice] kind`.
    pub kind: PyKind,
    /// `[tool.sluice] class`, split: the module and the class in it.
    pub module: String,
    /// The class.
    pub class: String,
}

/// Reads and checks a project's `pyproject.toml`, reporting every problem at once.
pub fn read_project(dir: &Path) -> Result<PyProject> {
    let path = dir.join("pyproject.toml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_project(&text).with_context(|| format!("{}", path.display()))
}

fn parse_project(text: &str) -> Result<PyProject> {
    let table: toml::Table = toml::from_str(text).context("not valid TOML")?;
    let empty = toml::Table::new();
    let project = table
        .get("project")
        .and_then(toml::Value::as_table)
        .unwrap_or(&empty);
    let sluice = table
        .get("tool")
        .and_then(|t| t.get("sluice"))
        .and_then(toml::Value::as_table)
        .unwrap_or(&empty);
    let mut problems = Vec::new();
    let string = |t: &toml::Table, key: &str, problems: &mut Vec<String>, what: &str| match t
        .get(key)
        .map(|v| v.as_str())
    {
        Some(Some(s)) => s.to_owned(),
        Some(None) => {
            problems.push(format!("{what}.{key} is not a string"));
            String::new()
        }
        None => {
            problems.push(format!("{what}.{key} is missing"));
            String::new()
        }
    };
    let name = string(project, "name", &mut problems, "project");
    let version = string(project, "version", &mut problems, "project");
    let description = project
        .get("description")
        .and_then(toml::Value::as_str)
        .unwrap_or("")
        .to_owned();
    if !name.is_empty() && crate::new::check_name(&name).is_err() {
        problems.push(format!(
            "project.name `{name}` is not a plugin name: 1 to 64 lowercase ASCII letters, digits, `-` and `_`, starting with a letter"
        ));
    }
    let mut dependencies = Vec::new();
    match project.get("dependencies") {
        None => {}
        Some(toml::Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) => dependencies.push(s.to_owned()),
                    None => problems.push(format!("project.dependencies[{i}] is not a string")),
                }
            }
        }
        Some(_) => problems.push("project.dependencies is not a list of strings".into()),
    }
    let kind = match sluice.get("kind").and_then(toml::Value::as_str) {
        Some("source") => Some(PyKind::Source),
        Some("writer") => Some(PyKind::Writer),
        Some(other) => {
            problems.push(format!(
                "tool.sluice.kind `{other}` is neither \"source\" nor \"writer\""
            ));
            None
        }
        None => {
            problems.push("tool.sluice.kind is missing (\"source\" or \"writer\")".into());
            None
        }
    };
    let class = string(sluice, "class", &mut problems, "tool.sluice");
    let identifier = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let (module, class) = match class.split_once(':') {
        Some((m, c)) if m.split('.').all(identifier) && identifier(c) => {
            (m.to_owned(), c.to_owned())
        }
        _ => {
            if !class.is_empty() {
                problems.push(format!(
                    "tool.sluice.class `{class}` is not `module:Class` (e.g. \"csv_source:CsvSource\")"
                ));
            }
            (String::new(), String::new())
        }
    };
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(PyProject {
        name,
        version,
        description,
        dependencies,
        kind: kind.expect("no problem reported"),
        module,
        class,
    })
}

/// The pinned componentize-py, in its virtual environment in the cache.
#[derive(Debug, Clone)]
pub struct PyToolchain {
    /// The venv's `python`.
    pub python: PathBuf,
    /// The venv's `componentize-py`.
    pub componentize_py: PathBuf,
}

/// The Python that makes the virtual environment: `$SLUICE_PYTHON`, else `python3`.
fn base_python() -> PathBuf {
    std::env::var_os("SLUICE_PYTHON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Installs the pinned componentize-py into `<cache>/python/` unless it is there.
pub fn ensure_toolchain(cache: &Path) -> Result<PyToolchain> {
    let root = cache
        .join("python")
        .join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}"));
    let venv = root.join("venv");
    let tc = PyToolchain {
        python: venv.join("bin").join("python"),
        componentize_py: venv.join("bin").join("componentize-py"),
    };
    let done = root.join(".installed");
    if done.is_file() && tc.componentize_py.is_file() {
        return Ok(tc);
    }
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let _lock = lock_exclusive(
        &cache
            .join("python")
            .join(format!("componentize-py-{COMPONENTIZE_PY_VERSION}.lock")),
        "another sluice installing componentize-py",
    )?;
    if done.is_file() && tc.componentize_py.is_file() {
        return Ok(tc);
    }
    let t = Instant::now();
    tracing::info!(version = COMPONENTIZE_PY_VERSION, dir = %root.display(), "installing componentize-py from PyPI (first Python build)");
    if venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("removing the unfinished {}", venv.display()))?;
    }
    let python = base_python();
    run(
        Command::new(&python).arg("-m").arg("venv").arg(&venv),
        &format!(
            "creating a Python virtual environment with {} (Python plugins need Python 3.10 or later with \
             its venv module: install python3 and python3-venv, or set SLUICE_PYTHON)",
            python.display()
        ),
    )?;
    run(
        Command::new(&tc.python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
            ])
            .arg(format!("componentize-py=={COMPONENTIZE_PY_VERSION}")),
        &format!("installing componentize-py {COMPONENTIZE_PY_VERSION} from PyPI with pip"),
    )?;
    std::fs::write(&done, COMPONENTIZE_PY_VERSION)
        .with_context(|| format!("writing {}", done.display()))?;
    tracing::info!(
        elapsed_ms = t.elapsed().as_millis() as u64,
        "componentize-py installed"
    );
    Ok(tc)
}

/// Runs a command to completion; its stderr (and stdout) go to the user. The
/// error says what was being done.
fn run(cmd: &mut Command, what: &str) -> Result<()> {
    cmd.stdin(Stdio::null())
        .env_remove("VIRTUAL_ENV")
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME");
    let out = cmd
        .output()
        .with_context(|| format!("{what}: could not run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            stdout.trim_end(),
            stderr.trim_end()
        );
    }
    Ok(())
}

/// Builds the Python plugin in `dir` with the SDK in `sdk` (its `python/` and
/// `wit/` folders) into `out_dir`.
pub fn build_one(cache: &Path, out_dir: &Path, dir: &Path, sdk: &Path) -> Result<BuiltPlugin> {
    let project = read_project(dir)?;
    let tc = ensure_toolchain(cache)?;
    let sdk_python = sdk.join("python");
    let wit = sdk.join("wit").join(WIT_PACKAGE.replace(':', "-"));
    for needed in [&sdk_python.join("sluice_plugin"), &wit] {
        if !needed.is_dir() {
            bail!(
                "the plugin SDK at {} has no {}",
                sdk.display(),
                needed.display()
            );
        }
    }

    let hash = hex::encode(&Sha256::digest(dir.as_os_str().as_encoded_bytes())[..6]);
    let work = cache
        .join("python-build")
        .join(format!("{}-{hash}", project.name));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let _lock = lock_exclusive(&work.with_extension("lock"), "another build of this plugin")?;
    for sub in ["app", "deps"] {
        let p = work.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    tracing::info!(package = %project.name, dir = %dir.display(), kind = project.kind.interface(), "building Python plugin");

    let mut python_path = vec![work.join("app"), dir.to_path_buf(), sdk_python.clone()];
    if !project.dependencies.is_empty() {
        let deps = work.join("deps");
        let t = Instant::now();
        run(
            Command::new(&tc.python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--quiet",
                    "--no-compile",
                    "--target",
                ])
                .arg(&deps)
                .args(&project.dependencies),
            &format!(
                "installing the plugin's dependencies ({}) with pip",
                project.dependencies.join(", ")
            ),
        )?;
        check_pure_python(&deps)?;
        tracing::info!(package = %project.name, elapsed_ms = t.elapsed().as_millis() as u64, "dependencies bundled");
        python_path.push(deps);
    }

    std::fs::create_dir_all(work.join("app"))?;
    let entry = entry_module(&project);
    std::fs::write(work.join("app").join("sluice_entry.py"), &entry)
        .context("writing the entry module")?;

    // componentize-py's output differs from one run to the next even from the
    // same sources, and each new component costs the daemons a compile: the
    // last component is kept while nothing it was built from changed.
    let output = work.join("plugin.wasm");
    let fingerprint_file = work.join("plugin.fingerprint");
    let fingerprint = fingerprint(&entry, &project, &[dir, &sdk_python, &wit])?;
    let unchanged = std::fs::read_to_string(&fingerprint_file).ok().as_deref()
        == Some(fingerprint.as_str())
        && output.is_file();
    if unchanged {
        tracing::info!(package = %project.name, "sources unchanged since the last build: component kept");
    } else {
        let _ = std::fs::remove_file(&fingerprint_file);
        componentize(&tc, &project, dir, &wit, &python_path, &output)?;
        std::fs::write(&fingerprint_file, &fingerprint)
            .with_context(|| format!("writing {}", fingerprint_file.display()))?;
    }
    let bytes = std::fs::read(&output).with_context(|| format!("reading {}", output.display()))?;
    let summary = component_summary(&bytes).context("reading the built component")?;
    let want = format!(
        "sluice:plugin/{}@{}",
        project.kind.interface(),
        WIT_PACKAGE.rsplit('@').next().expect("a version")
    );
    if !summary.exports.contains(&want) {
        bail!(
            "the component exports {:?}, not {want}: it was not built for the SDK's WIT",
            summary.exports
        );
    }
    let dest = out_dir.join(format!("{}.wasm", project.name));
    write_atomically(&dest, &bytes)?;
    tracing::info!(package = %project.name, output = %dest.display(), bytes = bytes.len(), exports = %summary.exports.join(" "), "plugin written");
    Ok(BuiltPlugin {
        crate_dir: dir.to_path_buf(),
        package: project.name,
        output: dest,
        bytes: bytes.len() as u64,
        route: Route::Python,
        target: WasmTarget::Wasip2,
    })
}

/// Runs componentize-py.
fn componentize(
    tc: &PyToolchain,
    project: &PyProject,
    dir: &Path,
    wit: &Path,
    python_path: &[PathBuf],
    output: &Path,
) -> Result<()> {
    let t = Instant::now();
    let mut cmd = Command::new(&tc.componentize_py);
    cmd.current_dir(dir)
        .arg("-d")
        .arg(wit)
        .args(["-w", project.kind.world(), "--quiet", "componentize"])
        .args(COMPONENTIZE_FLAGS)
        .arg("sluice_entry");
    for p in python_path {
        cmd.arg("-p").arg(p);
    }
    cmd.arg("-o").arg(output);
    run(
        &mut cmd,
        &format!(
            "componentize-py {COMPONENTIZE_PY_VERSION} building the {} world (an import error names the module the plugin could not find)",
            project.kind.world()
        ),
    )?;
    tracing::info!(
        package = %project.name,
        elapsed_ms = t.elapsed().as_millis() as u64,
        "componentized"
    );
    Ok(())
}

/// A digest of everything a component is built from: the tool's version, the
/// entry module, the dependency list, and every file under `dirs` but compiled
/// output (`__pycache__`, dot-folders, `.wasm` files).
fn fingerprint(entry: &str, project: &PyProject, dirs: &[&Path]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(COMPONENTIZE_PY_VERSION);
    h.update([0u8]);
    for flag in COMPONENTIZE_FLAGS {
        h.update(flag);
        h.update([0u8]);
    }
    h.update(entry);
    h.update([0u8]);
    for d in &project.dependencies {
        h.update(d);
        h.update([0u8]);
    }
    for dir in dirs {
        let mut files = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
                let path = e?.path();
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                if name.starts_with('.') || name == "__pycache__" || name.ends_with(".wasm") {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        files.sort();
        for f in files {
            h.update(f.as_os_str().as_encoded_bytes());
            h.update([0u8]);
            h.update(std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?);
            h.update([0u8]);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// The module componentize-py wraps: the plugin's class handed to the SDK's glue.
fn entry_module(p: &PyProject) -> String {
    let quote = |s: &str| format!("{s:?}");
    format!(
        "# Generated by `sluice plugin build`: the plugin's class, exported through the SDK.\n\
         from sluice_plugin._wasm import {export}\n\
         from {module} import {class} as _Plugin\n\n\
         {wit_class} = {export}(_Plugin, ({name}, {version}, {description}))\n",
        export = p.kind.export_fn(),
        module = p.module,
        class = p.class,
        wit_class = p.kind.export_class(),
        name = quote(&p.name),
        version = quote(&p.version),
        description = quote(&p.description),
    )
}

/// Refuses installed packages that are not pure Python: componentize-py bundles
/// Python files only, and a native extension would fail at run time.
fn check_pure_python(deps: &Path) -> Result<()> {
    let mut native = Vec::new();
    let entries = std::fs::read_dir(deps).with_context(|| format!("reading {}", deps.display()))?;
    for entry in entries {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if let Some(dist) = name.strip_suffix(".dist-info") {
            let wheel = std::fs::read_to_string(path.join("WHEEL")).unwrap_or_default();
            if wheel.lines().any(|l| l.trim() == "Root-Is-Purelib: false") {
                native.push(format!("{dist} (its wheel is platform-specific)"));
            }
        }
    }
    let mut stack = vec![deps.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e == "so" || e == "pyd" || e == "dylib")
            {
                let rel = path.strip_prefix(deps).unwrap_or(&path);
                native.push(format!("{} (a native extension)", rel.display()));
            }
        }
    }
    if !native.is_empty() {
        native.sort();
        native.dedup();
        bail!(
            "a Python plugin can bundle pure-Python packages only, and these are not: {}. \
             Native extensions cannot run in the plugin sandbox: use a pure-Python package, \
             or write the plugin in Rust",
            native.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[project]
name = "csv-in"
version = "1.2.0"
description = "x"
dependencies = ["python-dateutil==2.9.0"]

[tool.sluice]
kind = "source"
class = "csv_in.main:CsvIn"
"#;

    #[test]
    fn reads_a_project() {
        let p = parse_project(GOOD).unwrap();
        assert_eq!(p.name, "csv-in");
        assert_eq!(p.kind, PyKind::Source);
        assert_eq!(
            (p.module.as_str(), p.class.as_str()),
            ("csv_in.main", "CsvIn")
        );
        assert_eq!(p.dependencies, ["python-dateutil==2.9.0"]);
        let entry = entry_module(&p);
        assert!(
            entry.contains("from csv_in.main import CsvIn as _Plugin"),
            "{entry}"
        );
        assert!(
            entry.contains("Source = source_export(_Plugin, (\"csv-in\", \"1.2.0\", \"x\"))"),
            "{entry}"
        );
    }

    #[test]
    fn every_problem_of_a_project_is_reported() {
        let err = parse_project(
            "[project]\nname = \"Bad Name\"\ndependencies = \"x\"\n[tool.sluice]\nkind = \"sink\"\nclass = \"nocolon\"\n",
        )
        .unwrap_err()
        .to_string();
        for part in [
            "project.version is missing",
            "`Bad Name` is not a plugin name",
            "project.dependencies is not a list",
            "kind `sink` is neither",
            "class `nocolon` is not `module:Class`",
        ] {
            assert!(err.contains(part), "{part}: {err}");
        }
    }

    #[test]
    fn recognises_python_projects_only() {
        let dir = std::env::temp_dir().join(format!("sluice-py-detect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!is_python_project(&dir));
        std::fs::write(dir.join("pyproject.toml"), "[project]\nname = \"x\"\n").unwrap();
        assert!(!is_python_project(&dir), "no [tool.sluice]");
        std::fs::write(dir.join("pyproject.toml"), GOOD).unwrap();
        assert!(is_python_project(&dir));
        std::fs::write(dir.join("Cargo.toml"), "").unwrap();
        assert!(
            !is_python_project(&dir),
            "a crate with a pyproject is a crate"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn native_extensions_are_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("sluice-py-native-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("pure-1.0.dist-info")).unwrap();
        std::fs::write(
            dir.join("pure-1.0.dist-info/WHEEL"),
            "Root-Is-Purelib: true\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("pure")).unwrap();
        std::fs::write(dir.join("pure/__init__.py"), "").unwrap();
        check_pure_python(&dir).unwrap();
        std::fs::create_dir_all(dir.join("fast-2.0.dist-info")).unwrap();
        std::fs::write(
            dir.join("fast-2.0.dist-info/WHEEL"),
            "Root-Is-Purelib: false\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("fast")).unwrap();
        std::fs::write(dir.join("fast/_speed.cpython-311-x86_64-linux-gnu.so"), "").unwrap();
        let err = check_pure_python(&dir).unwrap_err().to_string();
        assert!(
            err.contains("fast-2.0 (its wheel is platform-specific)"),
            "{err}"
        );
        assert!(
            err.contains("fast/_speed.cpython-311-x86_64-linux-gnu.so (a native extension)"),
            "{err}"
        );
        assert!(!err.contains("pure-1.0"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
