//! Plugins written in Python (the SDK in `plugin-sdk/python`, built by `sluice
//! plugin build` with componentize-py): the CSV source and a writer with a
//! Postgres grant under the daemon, misbehaving Python plugins stopped like
//! Rust ones, and `sluice plugin new --lang python` on a machine where
//! componentize-py was never installed.

use sluice_tests::daemon::header;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice::capabilities::Grants;
use sluice::plugin_runtime::{
    CallError, Column, ColumnType, MessageOutcome, PluginRuntime, RuntimeConfig, Schema,
    SourceInstance, WriterInstance,
};
use sluice_tests::daemon::json_to_toml_inline;
use sluice_tests::{python_plugin, python_plugins_dir, workspace_root};

use super::daemon::{World, start, world};
use super::message;
use super::plugin_limits::{chaos_from, still_works};

/// A runtime with the daemon's default memory limit (256 MiB) and a short time
/// limit, sharing the tests' compiled-component cache (a Python component takes
/// seconds to compile, milliseconds to load once cached).
fn runtime() -> Arc<PluginRuntime> {
    PluginRuntime::new(RuntimeConfig {
        cache_dir: Some(workspace_root().join("target/test-component-cache")),
        call_time_limit: Duration::from_secs(2),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// The CSV source's configuration for the tests' `calls` lines.
fn csv_config() -> serde_json::Value {
    json!({
        "schema": "calls",
        "columns": [
            {"name": "call_id", "type": "text", "key": true, "field": "Call ID"},
            {"name": "secs", "type": "int32"},
            {"name": "cost", "type": "numeric", "nullable": true},
        ]
    })
}

/// A CSV body with a header and the calls `first..first + n`.
fn csv_body(first: u64, n: u64) -> String {
    let mut body = String::from("Call ID,secs,cost\n");
    for i in first..first + n {
        body.push_str(&format!(
            "c-{i:06},{},{}.{:02}\n",
            i % 3600,
            i / 100,
            i % 100
        ));
    }
    body
}

/// A world whose daemon runs the Python plugins.
async fn python_world(tag: &str) -> World {
    let mut w = world(tag).await;
    w.setup.plugin_dir = python_plugins_dir().to_path_buf();
    w
}

#[tokio::test]
async fn csv_lines_land_exactly_once_through_the_python_source_and_bad_lines_are_dead_lettered() {
    let mut w = python_world("py-csv").await;
    w.setup.source = (
        "python-csv-source".into(),
        json_to_toml_inline(&csv_config().to_string()),
        "cdr".into(),
    );
    w.setup.write_config("");

    // 40 messages of 25 lines, one of them published twice (a redelivery), and
    // two bad messages whose good lines must not land either.
    let mut bodies: Vec<String> = (0..40).map(|m| csv_body(m * 25, 25)).collect();
    bodies.push(csv_body(0, 25));
    bodies.push("Call ID,secs,cost\nc-bad-1,1,0.1\nc-bad-2,ten,0.2\n".into());
    bodies.push("Call ID,cost\nc-bad-3,0.3\n".into());
    w.broker.publish(&w.setup, bodies).await;
    let mut daemon = start(&w.setup, "daemon");
    w.wait_rows(1_000, "1,000 rows").await;
    w.wait_dead_letters(2, "the two bad messages dead-lettered")
        .await;
    w.wait_drained().await;
    daemon.stop_cleanly();

    assert_eq!(w.rows().await, 1_000, "each row exactly once");
    let row =
        w.db.client
            .query_one(
                &format!(
                    "SELECT secs, cost::text FROM {}.cdr WHERE call_id = 'c-000777'",
                    w.db.name
                ),
                &[],
            )
            .await
            .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (777, "7.77".to_string())
    );
    let bad: i64 =
        w.db.client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.cdr WHERE call_id LIKE 'c-bad%'",
                    w.db.name
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(bad, 0, "nothing of a rejected message lands");

    let mut reasons: Vec<String> = w
        .broker
        .drain(&w.setup.dead_queue)
        .await
        .iter()
        .map(|(_, h)| {
            assert_eq!(header(h, "x-sluice-plugin"), "python-csv-source@0.1.0");
            assert_eq!(header(h, "x-sluice-stage"), "decode");
            header(h, "x-sluice-reason")
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "line 1: the header has no field 'secs'",
            "line 3, column secs: 'ten' is not an integer"
        ]
    );
    w.finish().await;
}

#[tokio::test]
async fn the_python_writer_lands_rows_through_its_postgres_grant() {
    let w = python_world("py-grant").await;
    let source = format!(
        "plugin = \"python-csv-source\"\nconfig = {}",
        json_to_toml_inline(&csv_config().to_string())
    );
    let writer = format!(
        "plugin = \"py-grant-writer\"\ngrants = {{ postgres = [\"warehouse\"] }}\n\
         config = {{ connection = \"warehouse\", schema = \"{}\", table = \"docs\" }}",
        w.db.name
    );
    w.setup.write_config_plugins(&source, &writer);
    w.broker
        .publish(&w.setup, (0..4).map(|m| csv_body(m * 50, 50)))
        .await;
    let mut daemon = start(&w.setup, "daemon");
    sluice_tests::daemon::eventually(super::daemon::LONG, "200 documents", || async {
        w.db.count_or_zero("docs").await >= 200
    })
    .await;
    w.wait_drained().await;
    daemon.stop_cleanly();
    assert_eq!(w.db.count("docs").await.unwrap(), 200);
    let doc: String =
        w.db.client
            .query_one(
                &format!(
                    "SELECT doc::text FROM {}.docs WHERE key = 'c-000123'",
                    w.db.name
                ),
                &[],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(
        doc,
        r#"{"cost": "1.23", "secs": 123, "call_id": "c-000123"}"#
    );
    assert!(
        daemon
            .log()
            .contains(&format!("py-grant-writer: writing to {}.docs", w.db.name)),
        "the plugin's log line reaches the daemon's log:\n{}",
        daemon.log()
    );
    w.finish().await;
}

#[tokio::test]
async fn the_python_writer_without_its_grant_is_denied() {
    let rt = runtime();
    let loaded = Arc::new(rt.load(&python_plugin("py-grant-writer")).await.unwrap());
    let schema = Schema {
        name: "t".into(),
        version: 1,
        columns: vec![Column {
            name: "id".into(),
            type_: ColumnType::Text,
            nullable: false,
            key: true,
        }],
    };
    let config = json!({"connection": "warehouse", "schema": "public", "table": "never"});
    let mut writer = WriterInstance::new(
        rt,
        loaded,
        "py-denied",
        config.to_string(),
        schema,
        Grants::none(),
    );
    let err = writer.open().await.unwrap_err();
    assert!(matches!(err, CallError::Failed { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("opening the writer") && text.contains("`warehouse` is not granted"),
        "{text}"
    );
}

async fn chaos() -> SourceInstance {
    // Python's own runtime: its memory limit fits CPython.
    chaos_from(runtime(), &python_plugin("py-chaos-source")).await
}

#[tokio::test]
async fn a_python_plugin_that_raises_fails_its_call_like_a_panic() {
    let mut source = chaos().await;
    let err = source
        .decode(&[message("ok"), message("raise")])
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Trap { .. }), "{err}");
    assert!(err.to_string().contains("py-chaos-source@0.1.0"), "{err}");
    still_works(&mut source).await;
}

#[tokio::test]
async fn a_python_endless_loop_is_stopped_at_the_time_limit() {
    let mut source = chaos().await;
    let err = source.decode(&[message("loop")]).await.unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("time limit"), "{err}");
    still_works(&mut source).await;
}

#[tokio::test]
async fn a_python_memory_bomb_is_stopped_at_the_memory_limit() {
    let mut source = chaos().await;
    let err = source.decode(&[message("alloc")]).await.unwrap_err();
    assert!(
        matches!(err, CallError::OutOfMemory { limit_mib: 256, .. }),
        "{err}"
    );
    still_works(&mut source).await;
}

/// Runs `cmd`, asserting success; returns stdout and stderr.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running the command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {}\n{text}", out.status);
    text
}

fn new_build_and_test(kind: &str, parent: &Path, cache: &Path) -> String {
    let sluice = env!("CARGO_BIN_EXE_sluice-under-test");
    let name = format!("my-py-{kind}");
    let out = run(Command::new(sluice)
        .args([
            "plugin", "new", "--kind", kind, "--lang", "python", &name, "--dir",
        ])
        .arg(parent)
        .env("SLUICE_CACHE_DIR", cache));
    assert!(
        out.contains(&format!("Created {kind} plugin `{name}`")),
        "{out}"
    );
    assert!(out.contains("python3 -m pytest"), "{out}");
    let dir = parent.join(&name);
    let tests = run(Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .current_dir(&dir));
    assert!(tests.contains("3 passed"), "{tests}");
    let built = run(Command::new(sluice)
        .args(["plugin", "build", ".", "--out", "dist"])
        .current_dir(&dir)
        .env("SLUICE_CACHE_DIR", cache));
    assert!(built.contains("Python route"), "{built}");
    dir.join("dist")
        .join(format!("{name}.wasm"))
        .display()
        .to_string()
}

#[tokio::test]
async fn plugin_new_lang_python_passes_its_tests_and_builds_with_a_fresh_cache() {
    let parent = std::env::temp_dir().join(sluice_tests::unique_name("py-new"));
    let cache = parent.join("cache");
    std::fs::create_dir_all(&parent).unwrap();
    let source = new_build_and_test("source", &parent, &cache);
    let writer = new_build_and_test("writer", &parent, &cache);
    assert!(
        cache
            .join("python/componentize-py-0.25.1/venv/bin/componentize-py")
            .is_file(),
        "the first build installed componentize-py into the cache"
    );

    // The built components are plugins of the right kind: the runtime loads
    // them, the source decodes and the writer is refused its connection.
    let rt = runtime();
    let loaded = rt.load(Path::new(&source)).await.unwrap();
    let mut s = SourceInstance::new(rt.clone(), loaded.into(), "py-new", "{}".into());
    let decoded = s
        .decode(&[message("1,a\n2,b"), message("x,y")])
        .await
        .unwrap();
    assert_eq!(decoded.outcomes[0], MessageOutcome::Rows(2));
    assert_eq!(
        decoded.outcomes[1],
        MessageOutcome::Rejected("line 1: id 'x' is not an integer".into())
    );
    rt.load(Path::new(&writer)).await.unwrap();
    std::fs::remove_dir_all(&parent).unwrap();
}

#[test]
fn a_dependency_with_native_extensions_is_refused_by_name() {
    let dir = std::env::temp_dir().join(sluice_tests::unique_name("py-native"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("pyproject.toml"),
        "[project]\nname = \"native-dep\"\nversion = \"0.1.0\"\ndependencies = [\"pyyaml==6.0.2\"]\n\
         [tool.sluice]\nkind = \"source\"\nclass = \"plugin:P\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("plugin.py"),
        "from sluice_plugin import Source\nclass P(Source):\n    pass\n",
    )
    .unwrap();
    let err = sluice_plugin_tools::build::build(&sluice_tests::build_options(
        vec![dir.clone()],
        &dir.join("dist"),
    ))
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("pure-Python packages only"), "{text}");
    assert!(text.to_lowercase().contains("pyyaml-6.0.2"), "{text}");
    assert!(!dir.join("dist/native-dep.wasm").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `bytes` with a custom section appended: the same plugin, a different file
/// (a new build, as far as the daemon can tell).
fn with_custom_section(mut bytes: Vec<u8>, tag: &str) -> Vec<u8> {
    let name = b"sluice-test";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    assert!(payload.len() < 128, "one-byte LEB128 size");
    bytes.push(0);
    bytes.push(payload.len() as u8);
    bytes.extend_from_slice(&payload);
    bytes
}

#[tokio::test]
async fn a_python_source_hot_swapped_mid_stream_loses_and_duplicates_nothing() {
    let mut w = python_world("py-swap").await;
    let dir = w.setup.dir.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        python_plugins_dir().join("postgres-writer.wasm"),
        dir.join("postgres-writer.wasm"),
    )
    .unwrap();
    let original = std::fs::read(python_plugin("python-csv-source")).unwrap();
    super::hot_reload::deploy(&dir, "python-csv-source.wasm", &original);
    w.setup.plugin_dir = dir.clone();
    w.setup.source = (
        "python-csv-source".into(),
        json_to_toml_inline(&csv_config().to_string()),
        "cdr".into(),
    );
    w.setup.write_config("");
    let mut daemon = start(&w.setup, "daemon");
    w.broker
        .publish(&w.setup, (0..40).map(|m| csv_body(m * 50, 50)))
        .await;
    w.wait_rows(1, "the first rows").await;

    // The new file is compiled (seconds, for 18 MB) while the old version
    // keeps decoding; messages keep coming meanwhile.
    let publishing = w
        .broker
        .publish(&w.setup, (40..80).map(|m| csv_body(m * 50, 50)));
    super::hot_reload::deploy(
        &dir,
        "python-csv-source.wasm",
        &with_custom_section(original, "v2"),
    );
    publishing.await;
    sluice_tests::daemon::eventually(super::daemon::LONG, "the swap", || async {
        daemon
            .log()
            .contains("plugins_replaced=[\"python-csv-source@0.1.0 -> python-csv-source@0.1.0\"]")
    })
    .await;
    w.broker
        .publish(&w.setup, (80..100).map(|m| csv_body(m * 50, 50)))
        .await;
    w.wait_rows(5_000, "every row").await;
    w.wait_drained().await;
    daemon.stop_cleanly();
    assert_eq!(w.rows().await, 5_000, "each row once");
    assert_eq!(w.distinct_rows().await, 5_000);
    assert_eq!(
        w.broker.ready(&w.setup.dead_queue).await,
        0,
        "nothing dead-lettered"
    );
    let log = daemon.log();
    assert!(
        log.contains(&format!("pipelines_swapped=[\"{}\"]", w.setup.pipeline)),
        "{log}"
    );
    w.finish().await;
}
