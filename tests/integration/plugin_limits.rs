//! Misbehaving plugins fail their own call with a clear error; the host, and the
//! next call, carry on.

use sluice::plugin_runtime::{CallError, MessageOutcome, SourceInstance};
use sluice_tests::plugin;

use super::{message, runtime};

async fn chaos() -> SourceInstance {
    chaos_from(runtime(), &plugin("chaos-source")).await
}

/// A source instance of the chaos plugin at `path` (the Rust one, or the
/// Python one with the same behaviours), in `rt`.
pub(crate) async fn chaos_from(
    rt: std::sync::Arc<sluice::plugin_runtime::PluginRuntime>,
    path: &std::path::Path,
) -> SourceInstance {
    let loaded = rt.load(path).await.unwrap();
    SourceInstance::new(rt, loaded.into(), "limits-test", "{}".into())
}

/// After a failed call the instance is replaced: a normal batch decodes.
pub(crate) async fn still_works(source: &mut SourceInstance) {
    let decoded = source
        .decode(&[message("ok-1"), message("ok-2")])
        .await
        .expect("a fresh instance decodes");
    assert_eq!(
        decoded.outcomes,
        vec![MessageOutcome::Rows(1), MessageOutcome::Rows(1)]
    );
}

#[tokio::test]
async fn a_panicking_plugin_fails_its_call_with_the_panic_message() {
    let mut source = chaos().await;
    let err = source
        .decode(&[message("ok"), message("panic")])
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Trap { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("chaos-source@0.1.0") && text.contains("chaos: asked to panic"),
        "{text}"
    );
    still_works(&mut source).await;
}

#[tokio::test]
async fn an_endless_loop_is_stopped_at_the_time_limit() {
    let mut source = chaos().await;
    let started = std::time::Instant::now();
    let err = source.decode(&[message("loop")]).await.unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "stopped after {:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("time limit"), "{err}");
    still_works(&mut source).await;
}

#[tokio::test]
async fn a_memory_bomb_is_stopped_at_the_memory_limit() {
    let mut source = chaos().await;
    let err = source.decode(&[message("alloc")]).await.unwrap_err();
    assert!(
        matches!(err, CallError::OutOfMemory { limit_mib: 64, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("memory limit of 64 MiB"), "{err}");
    still_works(&mut source).await;
}

#[tokio::test]
async fn plugins_see_no_environment_files_or_clock() {
    // The host has an environment, a file and a clock to leak (cargo runs
    // tests with PATH and CARGO_* set; nothing is set here, since setting a
    // variable in a multi-threaded test binary races its readers).
    assert!(
        std::env::vars_os().next().is_some(),
        "the test process has no environment: the probe could not tell"
    );
    assert!(std::path::Path::new("/etc/passwd").exists());
    let mut source = chaos().await;
    let decoded = source.decode(&[message("probe")]).await.unwrap();
    let types = [
        sluice_plugin_sdk::ColumnType::Text,
        sluice_plugin_sdk::ColumnType::Text,
    ];
    let batch = sluice_plugin_sdk::RowBatch {
        count: decoded.rows.count,
        data: decoded.rows.data,
    };
    let rows = sluice_plugin_sdk::testing::read_rows(&types, &batch).unwrap();
    assert_eq!(
        rows[0][1],
        sluice_plugin_sdk::OwnedValue::Text("env=0 file=false clock=0".into())
    );
}

#[tokio::test]
async fn a_configuration_the_plugin_refuses_is_reported_as_such() {
    let rt = runtime();
    let loaded = rt.load(&plugin("chaos-source")).await.unwrap();
    let mut source =
        SourceInstance::new(rt, loaded.into(), "limits-test", r#"{"fail": true}"#.into());
    let err = source.schema().await.unwrap_err();
    assert!(err.is_config_error(), "{err}");
    assert!(
        err.to_string()
            .contains("invalid configuration: asked to fail"),
        "{err}"
    );
}
