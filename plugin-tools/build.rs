//! Embeds the plugin SDK's sources and WIT files, so that `sluice plugin new` can
//! write the SDK out of the binary on a machine without the source tree (see
//! `src/new.rs`).
//!
//! Generates `$OUT_DIR/embedded_sdk.rs`: every file under `../plugin-sdk` (the
//! `wit` symlink followed, so the WIT files are embedded as real files; dot-files,
//! `target/` and `__pycache__/` left out) as `include_bytes!`, and the workspace manifest the
//! SDK inherits its package fields and dependencies from. The file list is made
//! here rather than written by hand, so a file added to the SDK is embedded
//! without anyone remembering to.

use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let sdk = root.join("plugin-sdk");
    // A directory is scanned recursively for changes, so new files count too. The
    // WIT folder is named on its own: the SDK reaches it through a symlink.
    for path in [sdk.clone(), root.join("wit"), root.join("Cargo.toml")] {
        println!("cargo::rerun-if-changed={}", path.display());
    }

    let mut files = Vec::new();
    collect(&sdk, &sdk, &mut files);
    files.sort();
    let mut out = String::from(
        "/// The SDK's files: (path relative to the SDK's root, with `/`; contents).\n\
         pub(crate) static SDK_FILES: &[(&str, &[u8])] = &[\n",
    );
    for (relative, absolute) in &files {
        out.push_str(&format!(
            "    ({relative:?}, include_bytes!({:?})),\n",
            absolute.display().to_string()
        ));
    }
    out.push_str("];\n");
    out.push_str(&format!(
        "/// The workspace manifest (for the fields the SDK inherits).\n\
         pub(crate) static WORKSPACE_MANIFEST: &str = include_str!({:?});\n",
        root.join("Cargo.toml").display().to_string()
    ));
    let dest = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("embedded_sdk.rs");
    std::fs::write(dest, out).unwrap();
}

/// Every file under `dir`, following symlinks, as (path relative to `base`, path).
fn collect(base: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with('.') || name == "target" || name == "__pycache__" {
            continue;
        }
        // `metadata` follows symlinks: plugin-sdk/wit -> ../wit.
        let meta =
            std::fs::metadata(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        if meta.is_dir() {
            collect(base, &path, files);
        } else if meta.is_file() {
            let relative = path.strip_prefix(base).unwrap();
            let relative: Vec<_> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            files.push((relative.join("/"), path));
        }
    }
}
