//! `sluice plugin new` as a customer uses it: a crate generated outside the
//! repository, tested natively with `cargo test`, built with `sluice plugin
//! build`, dropped into a running daemon's plugin folder, and its rows landing
//! in Postgres.

use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_tests::daemon::{Setup, eventually, http_get, json_to_toml_inline};
use sluice_tests::{cdr_json, cdr_source_config, plugin, workspace_root};

use super::daemon::{LONG, World, start, world};

/// The `sluice` binary.
const SLUICE: &str = env!("CARGO_BIN_EXE_sluice-under-test");

/// Runs `sluice ARGS`, asserts that it succeeds, and returns its stdout.
fn sluice(args: &[&str]) -> String {
    let out = Command::new(SLUICE)
        .args(args)
        .output()
        .expect("running sluice");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sluice {args:?}: {}\n{stderr}",
        out.status
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `sluice plugin new --kind KIND NAME --dir PARENT EXTRA...`: the crate's folder.
fn plugin_new(kind: &str, name: &str, parent: &Path, extra: &[&str]) -> PathBuf {
    let parent_arg = parent.to_str().unwrap();
    let mut args = vec!["plugin", "new", "--kind", kind, name, "--dir", parent_arg];
    args.extend_from_slice(extra);
    let out = sluice(&args);
    assert!(
        out.contains(&format!("Created {kind} plugin `{name}`")),
        "{out}"
    );
    let dir = parent.join(name);
    assert!(
        !dir.starts_with(workspace_root()),
        "the crate is outside the repository"
    );
    dir
}

/// `cargo test` of a generated crate, natively. Its target folder is shared by
/// the tests and kept between runs, so the SDK's dependencies compile once.
fn cargo_test(crate_dir: &Path) {
    let out = Command::new("cargo")
        .arg("test")
        .current_dir(crate_dir)
        .env(
            "CARGO_TARGET_DIR",
            workspace_root().join("target/plugin-new-native"),
        )
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("running cargo test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo test in {}: {}\n{stdout}\n{}",
        crate_dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("test result: ok."), "{stdout}");
}

/// `sluice plugin build CRATE --out DIR`: the component.
fn plugin_build(crate_dir: &Path, out: &Path, name: &str) -> PathBuf {
    let printed = sluice(&[
        "plugin",
        "build",
        crate_dir.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(printed.starts_with(name), "{printed}");
    out.join(format!("{name}.wasm"))
}

/// Deploys a file the documented way: write `*.tmp`, then rename.
fn deploy(plugin_dir: &Path, file: &Path) {
    let name = file.file_name().unwrap().to_str().unwrap();
    let tmp = plugin_dir.join(format!("{name}.tmp"));
    std::fs::copy(file, &tmp).unwrap();
    std::fs::rename(&tmp, plugin_dir.join(name)).unwrap();
}

/// A plugin folder of the test's own, holding a copy of one shipped plugin.
fn plugin_dir_with(setup: &mut Setup, shipped: &str) {
    let dir = setup.dir.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(plugin(shipped), dir.join(format!("{shipped}.wasm"))).unwrap();
    setup.plugin_dir = dir;
}

/// Starts the daemon without the generated plugin (its pipeline paused), drops
/// the plugin into the plugin folder, and waits for the pipeline to resume and
/// the daemon to be ready.
async fn start_then_deploy(w: &World, component: &Path) -> sluice_tests::daemon::Daemon {
    let daemon = start(&w.setup, "daemon");
    let name = &w.setup.pipeline;
    eventually(LONG, "the pipeline to wait for its plugin", || async {
        daemon
            .log()
            .contains(&format!("pipelines_paused=[\"{name}\"]"))
    })
    .await;
    deploy(&w.setup.plugin_dir, component);
    eventually(LONG, "the pipeline to resume", || async {
        daemon
            .log()
            .contains(&format!("pipelines_resumed=[\"{name}\"]"))
    })
    .await;
    let port = w.setup.admin_port;
    eventually(LONG, "the daemon to be ready", || async {
        matches!(http_get(port, "/readyz").await, Some((200, _)))
    })
    .await;
    daemon
}

#[tokio::test]
async fn a_generated_writer_lands_rows_from_the_shipped_json_source() {
    let mut w = world("pnwriter").await;
    plugin_dir_with(&mut w.setup, "json-source");
    let name = "pn-docs-writer";
    // The SDK of the source tree the binary was built from (this repository).
    let crate_dir = plugin_new("writer", name, &w.setup.dir.join("crates"), &[]);
    cargo_test(&crate_dir);
    let component = plugin_build(&crate_dir, &w.setup.dir.join("dist"), name);

    let table = format!("{}.docs", w.db.name);
    w.setup.write_config_plugins(
        &format!(
            "plugin = \"json-source\"\nconfig = {}",
            json_to_toml_inline(&cdr_source_config(1, ""))
        ),
        &format!(
            "plugin = \"{name}\"\ngrants = {{ postgres = [\"warehouse\"] }}\n\
             config = {{ connection = \"warehouse\", table = \"{table}\" }}"
        ),
    );
    let mut daemon = start_then_deploy(&w, &component).await;

    // 200 records, the first 20 twice: stored once each.
    w.broker.publish(&w.setup, (0..200).map(cdr_json)).await;
    w.broker.publish(&w.setup, (0..20).map(cdr_json)).await;
    eventually(LONG, "200 documents", || async {
        w.db.count_or_zero("docs").await >= 200
    })
    .await;
    w.wait_drained().await;
    daemon.stop_cleanly();

    assert_eq!(w.db.count("docs").await.unwrap(), 200);
    let row =
        w.db.client
            .query_one(
                &format!(
                    "SELECT doc->>'caller', (doc->>'duration_s')::int FROM {table} \
                 WHERE key = '{{\"call_id\": \"c-000000000007\"}}'::jsonb"
                ),
                &[],
            )
            .await
            .unwrap();
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("+33610000007")
    );
    assert_eq!(row.get::<_, Option<i32>>(1), Some(7));
    assert_eq!(w.broker.ready(&w.setup.dead_queue).await, 0);
    let log = daemon.log();
    assert!(
        log.contains(&format!("plugins_loaded=[\"{name}@0.1.0\"]")),
        "{log}"
    );
    w.finish().await;
}

#[tokio::test]
async fn a_generated_source_on_the_embedded_sdk_feeds_the_shipped_postgres_writer() {
    let mut w = world("pnsource").await;
    plugin_dir_with(&mut w.setup, "postgres-writer");
    let name = "pn-lines-source";
    // The SDK written out of the binary, as on a machine without the source tree.
    let cache = w.setup.dir.join("cache");
    let crate_dir = plugin_new(
        "source",
        name,
        &w.setup.dir.join("crates"),
        &["--embedded-sdk", "--cache-dir", cache.to_str().unwrap()],
    );
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    let sdk = cache.join("sdk").join(env!("CARGO_PKG_VERSION"));
    assert!(
        manifest.contains(&format!("path = \"{}\"", sdk.display())),
        "{manifest}"
    );
    assert!(sdk.join("wit/sluice-plugin@0.1.0/source.wit").is_file());
    cargo_test(&crate_dir);
    let component = plugin_build(&crate_dir, &w.setup.dir.join("dist"), name);

    w.setup.write_config_plugins(
        &format!("plugin = \"{name}\"\nconfig = {{ schema = \"lines\" }}"),
        &format!(
            "plugin = \"postgres-writer\"\ngrants = {{ postgres = [\"warehouse\"] }}\n\
             config = {{ connection = \"warehouse\", schema = \"{}\", table = \"lines\" }}",
            w.db.name
        ),
    );
    let mut daemon = start_then_deploy(&w, &component).await;

    // Two rows per message, and one message the source rejects.
    let bodies = (0..100).map(|i| format!("k-{i},{i}\nk-{i}-b, second {i}\n"));
    w.broker.publish(&w.setup, bodies).await;
    w.broker
        .publish(&w.setup, ["no separator here".to_string()])
        .await;
    eventually(LONG, "200 rows", || async {
        w.db.count_or_zero("lines").await >= 200
    })
    .await;
    w.wait_dead_letters(1, "the bad message dead-lettered")
        .await;
    daemon.stop_cleanly();

    assert_eq!(w.db.count("lines").await.unwrap(), 200);
    let row =
        w.db.client
            .query_one(
                &format!(
                    "SELECT value, routing_key FROM {}.lines WHERE id = 'k-42-b'",
                    w.db.name
                ),
                &[],
            )
            .await
            .unwrap();
    assert_eq!(row.get::<_, String>(0), "second 42");
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("cdr.voice")
    );
    let dead = w.broker.drain(&w.setup.dead_queue).await;
    let header = |k: &str| match dead[0].1.inner().get(k) {
        Some(lapin::types::AMQPValue::LongString(s)) => {
            String::from_utf8_lossy(s.as_bytes()).into_owned()
        }
        other => panic!("header {k}: {other:?}"),
    };
    assert_eq!(header("x-sluice-reason"), "line 1: expected `id,value`");
    assert_eq!(header("x-sluice-plugin"), format!("{name}@0.1.0"));
    w.finish().await;
}

#[test]
fn a_build_outputs_the_crate_named_even_after_another_crate_of_the_same_name() {
    let dir = std::env::temp_dir().join(sluice_tests::unique_name("same-name"));
    // A crate that calls itself `postgres-writer`, built first...
    let impostor = plugin_new("writer", "postgres-writer", &dir.join("crates"), &[]);
    let theirs = plugin_build(&impostor, &dir.join("theirs"), "postgres-writer");
    // ...then the real one, from this repository.
    let real = workspace_root().join("plugins/postgres-writer");
    let ours = plugin_build(&real, &dir.join("ours"), "postgres-writer");
    let (theirs, ours) = (std::fs::read(theirs).unwrap(), std::fs::read(ours).unwrap());
    assert_ne!(
        ours, theirs,
        "the output is not the other crate's component"
    );
    assert_eq!(
        ours,
        std::fs::read(plugin("postgres-writer")).unwrap(),
        "the output is the real crate's component, as the test support built it"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
