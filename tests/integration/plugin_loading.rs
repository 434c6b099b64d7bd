//! Loading plugin files: what is accepted, what is refused and how it is said.

use sluice::plugin_runtime::{CacheOutcome, LoadError, PluginKind};
use sluice_tests::{plugin, unique_name};

use super::{runtime, runtime_with_cache};

#[tokio::test]
async fn loads_the_shipped_plugins_with_their_world_and_version() {
    let rt = runtime();
    let source = rt.load(&plugin("json-source")).await.unwrap();
    assert_eq!(source.kind, PluginKind::Source);
    assert_eq!(source.info.name, "json-source");
    assert_eq!(source.info.version, "0.1.0");
    // Sources built with the SDK implement the newest source world; writers
    // the writer world of 0.1.0, which 0.2.0 did not change.
    assert_eq!(source.wit_version, "0.2.0");
    assert_eq!(source.sha256.len(), 64);

    let writer = rt.load(&plugin("postgres-writer")).await.unwrap();
    assert_eq!(writer.kind, PluginKind::Writer);
    assert_eq!(writer.info.name, "postgres-writer");
    assert_eq!(writer.wit_version, "0.1.0");
}

fn scratch_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique_name("sluice_load"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test]
async fn refuses_a_file_that_is_not_wasm() {
    let path = scratch_file("notes.wasm", b"#!/bin/sh\necho hello\n");
    let err = runtime().load(&path).await.unwrap_err();
    assert!(matches!(err, LoadError::NotWasm { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("notes.wasm") && text.contains("not a WebAssembly file"),
        "{text}"
    );
}

#[tokio::test]
async fn refuses_a_truncated_component() {
    let bytes = std::fs::read(plugin("json-source")).unwrap();
    let path = scratch_file("truncated.wasm", &bytes[..bytes.len() / 2]);
    let err = runtime().load(&path).await.unwrap_err();
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("truncated.wasm: corrupt or truncated component"),
        "{err}"
    );
}

#[tokio::test]
async fn refuses_a_corrupt_component() {
    let mut bytes = std::fs::read(plugin("json-source")).unwrap();
    // Keep the header, scramble the body.
    for (i, b) in bytes.iter_mut().enumerate().skip(8) {
        *b = b.wrapping_mul(31).wrapping_add(i as u8);
    }
    let path = scratch_file("corrupt.wasm", &bytes);
    let err = runtime().load(&path).await.unwrap_err();
    assert!(matches!(err, LoadError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("corrupt.wasm"), "{err}");
}

#[tokio::test]
async fn refuses_a_core_module_and_says_how_to_build_a_component() {
    // The smallest valid core module: magic and version 1.
    let path = scratch_file("core.wasm", b"\0asm\x01\0\0\0");
    let err = runtime().load(&path).await.unwrap_err();
    assert!(matches!(err, LoadError::CoreModule { .. }), "{err}");
    assert!(err.to_string().contains("sluice plugin build"), "{err}");
}

#[tokio::test]
async fn refuses_a_component_of_another_world() {
    let err = runtime().load(&plugin("not-a-plugin")).await.unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("not-a-plugin.wasm") && text.contains("greet"),
        "{text}"
    );
}

#[tokio::test]
async fn compiled_components_are_cached_across_restarts() {
    let cache = std::env::temp_dir().join(unique_name("sluice_cache"));
    let first = runtime_with_cache(Some(cache.clone()))
        .load(&plugin("json-source"))
        .await
        .unwrap();
    assert_eq!(first.cache, CacheOutcome::Compiled);
    // A new runtime is what a restarted daemon has.
    let again = runtime_with_cache(Some(cache.clone()))
        .load(&plugin("json-source"))
        .await
        .unwrap();
    assert_eq!(again.cache, CacheOutcome::Hit);
    assert_eq!(again.info, first.info);
    assert_eq!(
        artifacts(&cache).len(),
        1,
        "one artifact per content and engine"
    );
    std::fs::remove_dir_all(cache).unwrap();
}

/// The compiled artifacts in a cache folder.
fn artifacts(cache: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect()
}

#[tokio::test]
async fn a_tampered_compiled_component_is_compiled_again_not_run() {
    let cache = std::env::temp_dir().join(unique_name("sluice_cache_tamper"));
    let first = runtime_with_cache(Some(cache.clone()))
        .load(&plugin("json-source"))
        .await
        .unwrap();
    assert_eq!(first.cache, CacheOutcome::Compiled);
    // Someone writes over the native code of the cached artifact.
    let artifact = artifacts(&cache).pop().unwrap();
    let mut bytes = std::fs::read(&artifact).unwrap();
    for b in &mut bytes[1_000..1_100] {
        *b = 0xcc; // int3
    }
    std::fs::write(&artifact, &bytes).unwrap();
    let again = runtime_with_cache(Some(cache.clone()))
        .load(&plugin("json-source"))
        .await
        .unwrap();
    assert_eq!(
        again.cache,
        CacheOutcome::Compiled,
        "the changed artifact is not taken from the cache"
    );
    assert_ne!(
        std::fs::read(&artifact).unwrap(),
        bytes,
        "and was replaced by a good one"
    );
    std::fs::remove_dir_all(cache).unwrap();
}

#[test]
fn a_cache_folder_others_may_write_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt as _;
    let setup = sluice_tests::daemon::Setup::new("open-cache");
    let cache = setup.dir.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = std::fs::read_to_string(setup.config_path()).unwrap();
    let config = config
        .lines()
        .map(|l| {
            if l.starts_with("cache_dir = ") {
                format!("cache_dir = \"{}\"", cache.display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(setup.config_path(), config).unwrap();
    let mut daemon = sluice_tests::daemon::Daemon::start(
        env!("CARGO_BIN_EXE_sluice-under-test"),
        &setup,
        "daemon",
    );
    let status = daemon
        .wait_exit(std::time::Duration::from_secs(60))
        .expect("the daemon refuses to start");
    assert!(!status.success(), "{status}");
    let log = daemon.log();
    assert!(
        log.contains("daemon.cache_dir") && log.contains("mode 0777"),
        "{log}"
    );
}
