//! Sluice as a service: systemd notifications, the admin endpoints, `sluice
//! check`, and configuration reloads on SIGHUP.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_tests::daemon::{Daemon, close_connections_of, eventually, http_get};
use sluice_tests::plugins_dir;

use super::daemon::{LONG, cdrs, start, world};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice-under-test");

/// Collects the datagrams a daemon sends to `NOTIFY_SOCKET`.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &std::path::Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Waits (at most `limit`) for a datagram containing `needle`; returns it.
    fn wait_for(&mut self, needle: &str, limit: Duration) -> String {
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        while started.elapsed() < limit {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if msg.contains(needle) {
                    return msg;
                }
            }
        }
        panic!(
            "no `{needle}` from the daemon within {limit:?}; saw {:?}",
            self.seen
        );
    }
}

#[tokio::test]
async fn systemd_hears_ready_watchdog_reloading_and_stopping() {
    let w = world("notify").await;
    let mut socket = NotifySocket::bind(&w.setup.dir);
    let env = [
        ("NOTIFY_SOCKET", socket.path.to_str().unwrap()),
        ("WATCHDOG_USEC", "1000000"),
    ];
    let mut daemon = Daemon::start_with_env(SLUICE, &w.setup, "daemon", &env);

    let ready = socket.wait_for("READY=1", LONG);
    assert!(ready.contains("STATUS="), "{ready}");
    socket.wait_for("WATCHDOG=1", Duration::from_secs(5));
    socket.wait_for("WATCHDOG=1", Duration::from_secs(5));

    daemon.signal("HUP");
    let reloading = socket.wait_for("RELOADING=1", Duration::from_secs(10));
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    socket.wait_for("READY=1", Duration::from_secs(30));

    daemon.signal("TERM");
    socket.wait_for("STOPPING=1", Duration::from_secs(10));
    assert!(daemon.wait_exit(Duration::from_secs(20)).unwrap().success());
    w.finish().await;
}

fn metric(text: &str, name: &str, pipeline: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l.contains(&format!("pipeline=\"{pipeline}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} for {pipeline} in:\n{text}"))
}

#[tokio::test]
async fn metrics_count_what_was_published_and_readyz_follows_the_broker_connection() {
    let w = world("metrics").await;
    w.setup.write_config("consumers = 1");
    let port = w.setup.admin_port;
    let mut daemon = start(&w.setup, "daemon");
    eventually(LONG, "/readyz to answer 200", || async {
        matches!(http_get(port, "/readyz").await, Some((200, _)))
    })
    .await;
    assert_eq!(http_get(port, "/healthz").await.unwrap().0, 200);

    w.broker.publish(&w.setup, cdrs(0..500)).await;
    w.wait_rows(500, "500 rows").await;
    let p = &w.setup.pipeline;
    eventually(LONG, "the acks to be counted", || async {
        let (_, text) = http_get(port, "/metrics").await.unwrap();
        metric(&text, "sluice_messages_acked_total", p) >= 500.0
    })
    .await;
    let (status, text) = http_get(port, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "sluice_messages_received_total", p), 500.0);
    assert_eq!(metric(&text, "sluice_messages_acked_total", p), 500.0);
    assert_eq!(metric(&text, "sluice_rows_written_total", p), 500.0);
    assert_eq!(metric(&text, "sluice_messages_dead_lettered_total", p), 0.0);
    assert!(text.contains("sluice_batch_duration_seconds"), "{text}");
    assert!(
        text.contains("sluice_plugin_call_duration_seconds"),
        "{text}"
    );

    // The broker drops the daemon's connection: unready until it reconnects.
    let closed = tokio::task::spawn_blocking({
        let p = p.clone();
        move || close_connections_of(&p)
    })
    .await
    .unwrap();
    assert_eq!(closed, 1);
    let mut saw_unready = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if let Some((503, body)) = http_get(port, "/readyz").await {
            saw_unready = Some(body);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = saw_unready.expect("/readyz never turned 503 after the connection was closed");
    assert!(body.contains("RabbitMQ session lost"), "{body}");
    eventually(LONG, "/readyz to be ready again", || async {
        matches!(http_get(port, "/readyz").await, Some((200, _)))
    })
    .await;
    let (_, text) = http_get(port, "/metrics").await.unwrap();
    assert!(metric(&text, "sluice_amqp_reconnects_total", p) >= 1.0);

    daemon.stop_cleanly();
    w.finish().await;
}

/// The root config.toml in `dir`, its plugin folder holding the shipped source
/// and Postgres writer. (The test plugins' folder also holds a file that is not
/// a plugin, which `check` rightly reports.)
fn root_config_with_shipped_plugins(dir: &std::path::Path) -> std::path::PathBuf {
    let shipped = dir.join("plugins");
    std::fs::create_dir_all(&shipped).unwrap();
    for name in ["json-source", "postgres-writer"] {
        std::fs::copy(
            sluice_tests::plugin(name),
            shipped.join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    let root = sluice_tests::workspace_root().join("config.toml");
    let good = std::fs::read_to_string(root).unwrap().replace(
        "plugin_dir = \"plugins-dist\"",
        &format!("plugin_dir = \"{}\"", shipped.display()),
    );
    let path = dir.join("good.toml");
    std::fs::write(&path, good).unwrap();
    path
}

#[test]
fn the_wasm_profiler_writes_a_perf_map_naming_plugin_functions() {
    let dir = std::env::temp_dir().join(sluice_tests::unique_name("profiler"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = root_config_with_shipped_plugins(&dir);
    let check = |profiler: &str| {
        let child = Command::new(SLUICE)
            .args(["check", "--config"])
            .arg(&config)
            .env("SLUICE_WASM_PROFILER", profiler)
            .env_remove("RUST_BACKTRACE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", child.id()));
        let out = child.wait_with_output().unwrap();
        let text = std::fs::read_to_string(&map).unwrap_or_default();
        let _ = std::fs::remove_file(&map);
        (out, text)
    };

    let (out, map) = check("perfmap");
    assert!(out.status.success(), "{out:?}");
    // perf's map format: start address, size, name; the source's own code.
    let line = map
        .lines()
        .find(|l| l.contains("wasm[") && l.contains("json_source"))
        .unwrap_or_else(|| panic!("no json-source function in the perf map:\n{map}"));
    assert_eq!(line.splitn(3, ' ').count(), 3, "{line}");

    let (out, map) = check("vtune");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SLUICE_WASM_PROFILER=\"vtune\""),
        "{stderr}"
    );
    assert!(map.is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sluice_check_reports_every_problem_with_its_key_path() {
    let dir = std::env::temp_dir().join(sluice_tests::unique_name("check"));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            r#"
[daemon]
plugin_dir = "{plugins}"
shutdown_timeot = "30s"

[connections.rabbit]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"

[[pipelines]]
name = "cdr"
connection = "rabit"
batch = {{ max_messages = 1000, max_wait = "soon" }}
prefetch = 10
queue = {{ name = "cdr" }}

[pipelines.source]
plugin = "json-source"

[[pipelines.writers]]
plugin = "postgres-writer"
grants = {{ postgres = ["warehouse"] }}
config = {{ connection = "warehouse" }}
"#,
            plugins = plugins_dir().display()
        ),
    )
    .unwrap();
    let out = Command::new(SLUICE)
        .args(["check", "--config"])
        .arg(&bad)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for path in [
        "daemon.shutdown_timeot",
        "pipelines[0].connection",
        "pipelines[0].batch.max_wait",
        "pipelines[0].prefetch",
        "pipelines[0].writers[0].grants.postgres",
    ] {
        assert!(text.contains(path), "`{path}` missing from:\n{text}");
    }

    // The root config.toml, with a plugin folder holding the shipped plugins, is
    // good.
    let good_path = root_config_with_shipped_plugins(&dir);
    let out = Command::new(SLUICE)
        .args(["check", "--config"])
        .arg(&good_path)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sighup_applies_a_valid_config_and_refuses_an_invalid_one_keeping_the_old() {
    let w = world("reload").await;
    let mut daemon = start(&w.setup, "daemon");
    w.broker.publish(&w.setup, cdrs(0..1_000)).await;
    w.wait_rows(1_000, "rows before the reloads").await;

    // An invalid config: refused as a whole, every problem listed, flow goes on.
    let good = std::fs::read_to_string(w.setup.config_path()).unwrap();
    std::fs::write(
        w.setup.config_path(),
        good.replace("consumers", "consumerz")
            .replace("connection = \"rabbit\"", "connection = \"rabit\""),
    )
    .unwrap();
    daemon.signal("HUP");
    eventually(LONG, "the refusal to be logged", || async {
        daemon.log().contains("reload refused")
    })
    .await;
    let log = daemon.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap()
        .to_string();
    assert!(refusal.contains("pipelines[0].connection"), "{refusal}");
    w.broker.publish(&w.setup, cdrs(1_000..2_000)).await;
    w.wait_rows(2_000, "rows after the refused reload").await;

    // A valid config with a change (one consumer instead of two): applied.
    std::fs::write(w.setup.config_path(), &good).unwrap();
    w.setup.write_config("consumers = 1");
    daemon.signal("HUP");
    eventually(LONG, "the reload to be applied", || async {
        daemon.log().contains("reload applied")
    })
    .await;
    assert!(
        daemon
            .log()
            .lines()
            .any(|l| l.contains("reload applied") && l.contains(&w.setup.pipeline)),
        "{}",
        daemon.log()
    );
    w.broker.publish(&w.setup, cdrs(2_000..3_000)).await;
    w.wait_rows(3_000, "rows after the applied reload").await;

    daemon.stop_cleanly();
    assert_eq!(w.distinct_rows().await, 3_000);
    assert_eq!(w.rows().await, 3_000);
    w.finish().await;
}
