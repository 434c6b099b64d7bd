//! `sluice check` as a user runs it: writers judge their own configuration
//! under a dry run of their grants, URL options are read as the clients read
//! them, and nothing is reached (no connection, no table, no directory).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use sluice_tests::daemon::{Setup, eventually, http_get, json_to_toml_inline};
use sluice_tests::{TestSchema, cdr_source_config, postgres_url};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice-under-test");

/// A plugin folder of the setup's own with the shipped plugins only (the
/// shared test folder also holds a file that is not a plugin, which `check`
/// rightly reports).
fn shipped_plugins(setup: &mut Setup) {
    let dir = setup.dir.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    for name in [
        "json-source",
        "postgres-writer",
        "redis-writer",
        "clickhouse-writer",
        "file-writer",
    ] {
        std::fs::copy(sluice_tests::plugin(name), dir.join(format!("{name}.wasm"))).unwrap();
    }
    setup.plugin_dir = dir;
}

/// Runs `sluice check` on the setup's config: its exit code and what it printed.
pub(crate) fn check(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(SLUICE)
        .args(["check", "--config"])
        .arg(config)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// A port that listens, for the test to see whether anything connected.
fn listener() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn nothing_connected(listener: &TcpListener, what: &str) {
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("`sluice check` connected to {what} (from {peer})"),
        Err(e) => panic!("accept on {what}: {e}"),
    }
}

/// The setup's config with its postgres connection pointed at `url`.
fn with_postgres_url(setup: &Setup, url: &str) -> PathBuf {
    let path = setup.config_path();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&postgres_url(), url);
    std::fs::write(&path, text).unwrap();
    path
}

fn source_table() -> String {
    format!(
        "plugin = \"json-source\"\nconfig = {}",
        json_to_toml_inline(&cdr_source_config(1, ""))
    )
}

#[test]
fn check_reports_a_writer_config_typo_at_its_key_path() {
    let mut setup = Setup::new("check-typo");
    shipped_plugins(&mut setup);
    setup.write_config_plugins(
        &source_table(),
        &format!(
            "plugin = \"postgres-writer\"\ngrants = {{ postgres = [\"warehouse\"] }}\nconfig = {{ connection = \"warehouse\", schema = \"{}\", tabel = \"cdr\" }}",
            setup.pg_schema
        ),
    );
    let (code, text) = check(&setup.config_path());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(": 1 problem:\n"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("pipelines[0].writers[0].config"))
        .unwrap_or_else(|| panic!("no problem at the writer's config:\n{text}"));
    assert!(line.contains("unknown key `tabel`"), "{line}");
}

#[test]
fn check_reports_a_bad_amqp_url_option_at_its_key_path() {
    let mut setup = Setup::new("check-url");
    shipped_plugins(&mut setup);
    setup.write_config("");
    let path = setup.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let amqp = sluice_tests::amqp_url();
    assert!(text.contains(&amqp));
    std::fs::write(&path, text.replace(&amqp, &format!("{amqp}?heartbeat=abc"))).unwrap();

    let (code, text) = check(&path);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("connections.rabbit.url: option heartbeat: invalid digit found in string"),
        "{text}"
    );
    assert!(
        !text.contains("guest:guest"),
        "a password was printed:\n{text}"
    );
}

#[tokio::test]
async fn check_opens_nothing_and_passes_a_good_config_with_the_stores_unreachable() {
    let mut setup = Setup::new("check-good");
    shipped_plugins(&mut setup);
    setup.write_config("");

    // Postgres at a port that listens: the writer is opened, nothing connects.
    let (pg, pg_port) = listener();
    let path = with_postgres_url(
        &setup,
        &format!("postgres://postgres@127.0.0.1:{pg_port}/test"),
    );
    let (code, text) = check(&path);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ok (1 pipeline)"), "{text}");
    nothing_connected(&pg, "the postgres port");

    // The real Postgres, with the writer's schema there: still no table.
    let schema = TestSchema::create_named(&setup.pg_schema).await.unwrap();
    setup.write_config("");
    let (code, text) = check(&setup.config_path());
    assert_eq!(code, Some(0), "{text}");
    let found: Option<String> = schema
        .client
        .query_one(
            "SELECT to_regclass($1)::text",
            &[&format!("{}.cdr", setup.pg_schema)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(found, None, "`sluice check` created the table");
    schema.drop_now().await.unwrap();

    // Writers that reach their stores over TCP, HTTP and a directory: each is
    // opened (a typo would be reported), and reaches nothing.
    let (redis, redis_port) = listener();
    let (clickhouse, clickhouse_port) = listener();
    let out = setup.dir.join("never-created");
    setup.extra_writers = format!(
        r#"
[[pipelines.writers]]
plugin = "redis-writer"
grants = {{ tcp = ["127.0.0.1:{redis_port}"] }}
config = {{ address = "127.0.0.1:{redis_port}", mode = "hash", key_prefix = "cdr:" }}

[[pipelines.writers]]
plugin = "redis-writer"
grants = {{ tcp = ["localhost:{redis_port}"] }}
config = {{ address = "localhost:{redis_port}", mode = "hash", key_prefix = "cdr:" }}

[[pipelines.writers]]
plugin = "clickhouse-writer"
grants = {{ http = ["http://127.0.0.1:{clickhouse_port}"] }}
config = {{ url = "http://127.0.0.1:{clickhouse_port}", table = "cdr" }}

[[pipelines.writers]]
plugin = "file-writer"
grants = {{ directory = "{out}" }}
config = {{ format = "ndjson", prefix = "cdr" }}
"#,
        out = out.display()
    );
    setup.write_config("");
    let (code, text) = check(&setup.config_path());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ok (1 pipeline)"), "{text}");
    nothing_connected(&redis, "the redis port");
    nothing_connected(&clickhouse, "the clickhouse port");
    assert!(
        !out.exists(),
        "`sluice check` created the granted directory"
    );

    // The same writers with a typo each: every one is reported at its config.
    setup.extra_writers = setup
        .extra_writers
        .replace("mode = \"hash\"", "mdoe = \"hash\"")
        .replace("table = \"cdr\" }", "tabel = \"cdr\" }")
        .replace("format = \"ndjson\"", "fromat = \"ndjson\"");
    setup.write_config("");
    let (code, text) = check(&setup.config_path());
    assert_eq!(code, Some(1), "{text}");
    for j in 1..=4 {
        assert!(
            text.contains(&format!("pipelines[0].writers[{j}].config")),
            "writer {j} not reported:\n{text}"
        );
    }
    assert!(
        !out.exists(),
        "`sluice check` created the granted directory"
    );
}

/// A world whose plugin folder is its own, with json-source and
/// postgres-writer: the folder, for the test to add files to.
async fn world_with_own_plugins(tag: &str) -> (crate::daemon::World, PathBuf) {
    let mut w = crate::daemon::world(tag).await;
    let dir = w.setup.dir.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["json-source", "postgres-writer"] {
        std::fs::copy(sluice_tests::plugin(name), dir.join(format!("{name}.wasm"))).unwrap();
    }
    w.setup.plugin_dir = dir.clone();
    w.setup.write_config("");
    (w, dir)
}

#[tokio::test]
async fn a_dot_file_is_not_a_plugin_to_check_or_run() {
    let (w, dir) = world_with_own_plugins("check-dotfile").await;
    // Were they plugins, the first would claim json-source's name (and pause
    // the pipeline), the second would be refused as no WebAssembly.
    std::fs::copy(
        sluice_tests::plugin("json-source"),
        dir.join(".json-source.wasm"),
    )
    .unwrap();
    std::fs::write(dir.join(".broken.wasm"), b"an editor's swap file").unwrap();

    let (code, text) = check(&w.setup.config_path());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ok (1 pipeline)"), "{text}");
    assert!(!text.contains(".json-source.wasm"), "{text}");
    assert!(!text.contains(".broken.wasm"), "{text}");

    let daemon = crate::daemon::start(&w.setup, "daemon");
    w.broker
        .publish(&w.setup, (0..20).map(sluice_tests::cdr_json))
        .await;
    w.wait_rows(20, "the rows, through json-source.wasm").await;
    let log = daemon.log();
    assert!(!log.contains(".json-source.wasm"), "{log}");
    assert!(!log.contains(".broken.wasm"), "{log}");
    assert!(!log.contains("plugin refused"), "{log}");
    drop(daemon);
    w.finish().await;
}

#[tokio::test]
async fn two_files_declaring_one_name_are_reported_by_check_and_logged_by_run_and_neither_runs() {
    let (w, dir) = world_with_own_plugins("check-twice").await;
    // A second file declaring `json-source`, sorting after the first.
    std::fs::copy(
        sluice_tests::plugin("json-source"),
        dir.join("zz-json-source.wasm"),
    )
    .unwrap();

    // `sluice check`: one problem, at the source, naming both files and what
    // runs.
    let (code, text) = check(&w.setup.config_path());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(": 1 problem:\n"), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("pipelines[0].source.plugin"))
        .unwrap_or_else(|| panic!("no problem at the source:\n{text}"));
    assert!(
        line.contains(
            "2 files declare the plugin name `json-source` (json-source.wasm, zz-json-source.wasm)"
        ) && line.contains("none of them runs"),
        "{line}"
    );

    // `sluice run`: the same verdict, logged with both files; the pipeline is
    // paused and its messages wait.
    let daemon = crate::daemon::start(&w.setup, "daemon");
    eventually(crate::daemon::LONG, "the name conflict logged", || async {
        daemon
            .log()
            .contains("declare the plugin name `json-source`")
    })
    .await;
    let log = daemon.log();
    let logged = log
        .lines()
        .find(|l| l.contains("declare the plugin name `json-source`"))
        .unwrap();
    assert!(
        logged.contains("ERROR")
            && logged.contains("json-source.wasm")
            && logged.contains("zz-json-source.wasm")
            && logged.contains("kept=\"none\"")
            && logged.contains("none of them runs"),
        "{logged}"
    );
    w.broker
        .publish(&w.setup, (0..20).map(sluice_tests::cdr_json))
        .await;
    eventually(crate::daemon::LONG, "the pipeline paused", || async {
        let Some((status, body)) = http_get(w.setup.admin_port, "/readyz").await else {
            return false;
        };
        status == 503 && body.contains("paused") && body.contains("zz-json-source.wasm")
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        w.rows().await,
        0,
        "a plugin ran while two files claim its name"
    );
    assert_eq!(w.broker.ready(&w.setup.queue).await, 20);

    // One file removed: both agree again, and the one left runs.
    std::fs::remove_file(dir.join("zz-json-source.wasm")).unwrap();
    w.wait_rows(20, "the waiting rows, once one file is left")
        .await;
    let (code, text) = check(&w.setup.config_path());
    assert_eq!(code, Some(0), "{text}");
    drop(daemon);
    w.finish().await;
}
