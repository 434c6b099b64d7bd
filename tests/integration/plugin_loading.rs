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
    assert_eq!(source.wit_version, "0.1.0");
    assert_eq!(source.sha256.len(), 64);

    let writer = rt.load(&plugin("postgres-writer")).await.unwrap();
    assert_eq!(writer.kind, PluginKind::Writer);
    assert_eq!(writer.info.name, "postgres-writer");
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
    let artifacts = std::fs::read_dir(&cache).unwrap().count();
    assert_eq!(artifacts, 1, "one artifact per content and engine");
    std::fs::remove_dir_all(cache).unwrap();
}
