//! Writer grants (`http`, `tcp`, `directory`, `postgres`): what a writer reaches
//! inside them, what it gets outside them, and a writer refused because it
//! imports a capability its grants don't give. The `grant-probe` test writer
//! tries what its config says when it is opened and fails with the typed error
//! it got (`http: HttpRequestDenied`, `tcp: access-denied`, ...). Denials are
//! also logged by the host; the unit tests of `sluice::capabilities` check those
//! log lines.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use sluice::capabilities::{Capability, Grants, HttpGrant, TcpGrant};
use sluice::config::Config;
use sluice::plugin_runtime::{
    CallError, Column, ColumnType, LoadedPlugin, PluginRuntime, Schema, WriterInstance,
};
use sluice::reload::PluginRegistry;
use sluice::resolution::{self, Directories};
use sluice_tests::{plugin, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::runtime;

async fn probe(rt: &Arc<PluginRuntime>) -> Arc<LoadedPlugin> {
    Arc::new(rt.load(&plugin("grant-probe")).await.unwrap())
}

fn schema() -> Schema {
    Schema {
        name: "probe".into(),
        version: 1,
        columns: vec![Column {
            name: "id".into(),
            type_: ColumnType::Text,
            nullable: false,
            key: true,
        }],
    }
}

/// A probe writer instance with `config` under `grants`, not opened yet.
fn writer(
    rt: &Arc<PluginRuntime>,
    probe: &Arc<LoadedPlugin>,
    config: serde_json::Value,
    grants: Grants,
) -> WriterInstance {
    WriterInstance::new(
        rt.clone(),
        probe.clone(),
        "grants",
        config.to_string(),
        schema(),
        grants,
    )
}

/// Opens the probe with `config` under `grants`: `Ok`, or the error text.
async fn open(
    rt: &Arc<PluginRuntime>,
    probe: &Arc<LoadedPlugin>,
    config: serde_json::Value,
    grants: Grants,
) -> Result<(), String> {
    let mut writer = writer(rt, probe, config, grants);
    writer.open().await.map_err(|e| {
        assert!(matches!(e, CallError::Failed { .. }), "{e}");
        e.to_string()
    })
}

/// A local HTTP server answering 200 to every request; counts them and keeps
/// the request lines.
struct TestServer {
    port: u16,
    hits: Arc<AtomicUsize>,
    lines: Arc<std::sync::Mutex<Vec<String>>>,
}

impl TestServer {
    async fn start() -> Self {
        Self::start_slow(Duration::ZERO).await
    }

    /// A server that waits `delay` before it answers.
    async fn start_slow(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (h, l) = (hits.clone(), lines.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (h, l) = (h.clone(), l.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&head);
                    l.lock()
                        .unwrap()
                        .push(text.lines().next().unwrap_or("").to_string());
                    h.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        Self { port, hits, lines }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn http_grant(url: &str) -> Grants {
    Grants::none().with_http(HttpGrant::parse(url).unwrap())
}

#[tokio::test]
async fn http_under_a_granted_base_url_reaches_the_server() {
    let rt = runtime();
    let probe = probe(&rt).await;
    let server = TestServer::start().await;
    let grants = http_grant(&format!("http://127.0.0.1:{}/x", server.port));
    let url = format!("http://127.0.0.1:{}/x/insert", server.port);
    // A network grant also gives the plugin real clocks.
    let config = json!({ "http": url, "clock": "real" });
    open(&rt, &probe, config, grants).await.unwrap();
    assert_eq!(server.hits(), 1);
    assert_eq!(
        server.lines.lock().unwrap().as_slice(),
        ["GET /x/insert HTTP/1.1"]
    );
}

#[tokio::test]
async fn waiting_for_a_response_is_not_plugin_time() {
    // The test runtime allows 500ms of plugin time per call; the plugin waits
    // twice that in the host, for the response.
    let rt = runtime();
    let probe = probe(&rt).await;
    let server = TestServer::start_slow(Duration::from_millis(1000)).await;
    let grants = http_grant(&format!("http://127.0.0.1:{}/", server.port));
    let url = format!("http://127.0.0.1:{}/slow", server.port);
    open(&rt, &probe, json!({ "http": url }), grants)
        .await
        .unwrap();
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn http_outside_the_grants_is_denied_before_it_leaves_the_host() {
    let rt = runtime();
    let probe = probe(&rt).await;
    let granted = TestServer::start().await;
    let other = TestServer::start().await;
    let grants = || http_grant(&format!("http://127.0.0.1:{}/x", granted.port));
    for url in [
        // Another port on the granted host.
        format!("http://127.0.0.1:{}/x", other.port),
        // The granted port under a name that resolves to the same address: the
        // grant is by IP, so the name is another host.
        format!("http://localhost:{}/x", granted.port),
        // A path outside the prefix, and one that only looks inside it.
        format!("http://127.0.0.1:{}/y", granted.port),
        format!("http://127.0.0.1:{}/x/../y", granted.port),
        format!("http://127.0.0.1:{}/xy", granted.port),
        // Another scheme.
        format!("https://127.0.0.1:{}/x", granted.port),
    ] {
        let err = open(&rt, &probe, json!({ "http": url }), grants())
            .await
            .unwrap_err();
        assert!(err.ends_with("http: HttpRequestDenied"), "{url}: {err}");
    }
    // Without any http grant.
    let url = format!("http://127.0.0.1:{}/x", granted.port);
    let err = open(&rt, &probe, json!({ "http": url }), Grants::none())
        .await
        .unwrap_err();
    assert!(err.ends_with("http: HttpRequestDenied"), "{err}");
    assert_eq!((granted.hits(), other.hits()), (0, 0));
}

#[tokio::test]
async fn tcp_connects_to_the_granted_port_only() {
    let rt = runtime();
    let probe = probe(&rt).await;
    let granted = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let granted_addr = granted.local_addr().unwrap();
    let other_addr = other.local_addr().unwrap();
    let grants = || Grants::none().with_tcp(TcpGrant::parse(&granted_addr.to_string()).unwrap());

    open(
        &rt,
        &probe,
        json!({ "tcp": granted_addr.to_string() }),
        grants(),
    )
    .await
    .unwrap();
    let (_accepted, _) = granted.accept().await.unwrap();

    let err = open(
        &rt,
        &probe,
        json!({ "tcp": other_addr.to_string() }),
        grants(),
    )
    .await
    .unwrap_err();
    assert!(err.ends_with("tcp: access-denied"), "{err}");
    let err = open(
        &rt,
        &probe,
        json!({ "tcp": granted_addr.to_string() }),
        Grants::none(),
    )
    .await
    .unwrap_err();
    assert!(err.ends_with("tcp: access-denied"), "{err}");
    // Nothing reached the other listener.
    let nothing = tokio::time::timeout(Duration::from_millis(100), other.accept()).await;
    assert!(
        nothing.is_err(),
        "a connection reached the port not granted"
    );
}

/// A fresh folder under the system temp dir.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name("sluice_grants"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn the_granted_directory_is_data_and_nothing_else_is_visible() {
    let rt = runtime();
    let probe = probe(&rt).await;
    let root = scratch();
    // Missing: created when the writer is opened.
    let dir = root.join("out/cdr");
    let grants = || Grants::none().with_directory(&dir);

    open(
        &rt,
        &probe,
        json!({ "file": "/data/a.txt", "clock": "real" }),
        grants(),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("a.txt")).unwrap(),
        "written by grant-probe"
    );

    for outside in ["/etc/passwd", "/data/../escape.txt", "/tmp/escape.txt"] {
        let err = open(&rt, &probe, json!({ "file": outside }), grants())
            .await
            .unwrap_err();
        assert!(err.contains("file: "), "{outside}: {err}");
    }
    assert!(!root.join("out/escape.txt").exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

    // Without the grant there is no /data, and the clocks are frozen.
    let err = open(
        &rt,
        &probe,
        json!({ "file": "/data/a.txt", "clock": "frozen" }),
        Grants::none(),
    )
    .await
    .unwrap_err();
    assert!(err.contains("file: ") && !err.contains("clock"), "{err}");
    std::fs::remove_dir_all(root).unwrap();
}

/// On a multi-thread runtime a writer with a directory grant does its file
/// calls on the thread that calls it, inside `block_in_place`. A file call
/// that blocks (opening a FIFO that nobody reads yet, standing in for a hung
/// `fsync`) in as many writers as the runtime has workers must leave the
/// workers free, and the wait, longer than the 500 ms limit of the test
/// runtime, is host time, not plugin time: the writer fails with its own file
/// error, not with a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_file_call_holds_no_worker_and_is_not_plugin_time() {
    let rt = runtime();
    let probe = probe(&rt).await;
    let dir = scratch();
    let writers: Vec<_> = (0..2)
        .map(|i| {
            let fifo = dir.join(format!("fifo{i}"));
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap();
            assert!(made.success(), "mkfifo {}", fifo.display());
            let (rt, probe, grants) = (
                rt.clone(),
                probe.clone(),
                Grants::none().with_directory(&dir),
            );
            let config = json!({ "file": format!("/data/fifo{i}") });
            (
                fifo,
                tokio::spawn(async move { open(&rt, &probe, config, grants).await }),
            )
        })
        .collect();
    // This test's own future runs on the thread of `block_on`, not on a worker,
    // and waits with std's blocking calls: only the spawned tasks need a worker.
    std::thread::sleep(Duration::from_millis(700));
    let (tx, rx) = std::sync::mpsc::channel();
    tokio::spawn(async move { tx.send(()).unwrap() });
    let runtime_went_on = rx.recv_timeout(Duration::from_secs(5)).is_ok();
    let writers_waited = writers.iter().all(|(_, writer)| !writer.is_finished());
    // Release the writers before asserting (a test that fails must not hang):
    // a reader opens each FIFO. The probe's write then fails (a FIFO has no
    // offsets, and std writes at one), which is the answer expected: its own
    // file error, not a timeout.
    for (fifo, _) in &writers {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(&fifo));
    }
    for (_, writer) in writers {
        let err = writer.await.unwrap().unwrap_err();
        assert!(err.contains("file: NotSeekable"), "{err}");
    }
    assert!(
        runtime_went_on,
        "a task spawned while the writers waited in a file call did not run"
    );
    assert!(writers_waited, "a writer did not wait for its FIFO");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A writer with a directory grant, its calls run inside `block_in_place`,
/// is still stopped at its time limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_with_a_directory_is_stopped_at_the_time_limit() {
    let rt = runtime();
    let probe = probe(&rt).await;
    let dir = scratch();
    let mut writer = writer(
        &rt,
        &probe,
        json!({ "file": "/data/a.txt", "spin": true }),
        Grants::none().with_directory(&dir),
    );
    let started = std::time::Instant::now();
    let err = tokio::spawn(async move { writer.open().await })
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, CallError::Timeout { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(dir.join("a.txt").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_postgres_connection_not_granted_is_access_denied() {
    let rt = runtime();
    let probe = probe(&rt).await;
    let err = open(
        &rt,
        &probe,
        json!({ "postgres": "warehouse" }),
        Grants::none(),
    )
    .await
    .unwrap_err();
    assert!(err.contains("postgres: AccessDenied"), "{err}");
    assert!(err.contains("`warehouse` is not granted"), "{err}");
}

#[tokio::test]
async fn the_probe_records_the_capabilities_it_imports() {
    let rt = runtime();
    let probe = probe(&rt).await;
    let needs: Vec<(Capability, &str)> = probe
        .needs
        .iter()
        .map(|n| (n.capability, n.import.split('@').next().unwrap()))
        .collect();
    assert_eq!(
        needs,
        [
            (Capability::Postgres, "sluice:plugin/postgres"),
            (Capability::Http, "wasi:http/outgoing-handler"),
            (Capability::Tcp, "wasi:sockets/tcp"),
        ]
    );
}

/// A config with one pipeline: `marked-source`, then `grant-probe` with `grants`.
fn config_with_probe(dir: &Path, grants: &str) -> Config {
    let text = format!(
        r#"
        [daemon]
        plugin_dir = "plugins"
        [connections.rabbit]
        type = "amqp"
        url = "amqp://guest@127.0.0.1:5672/%2f"
        [[pipelines]]
        name = "probe"
        connection = "rabbit"
        queue = {{ name = "probe" }}
        source = {{ plugin = "marked-source" }}
        [[pipelines.writers]]
        plugin = "grant-probe"
        grants = {grants}
        "#
    );
    Config::from_str_with_env(&text, &dir.join("config.toml"), |_| None).unwrap()
}

#[tokio::test]
async fn a_writer_importing_a_capability_its_grants_lack_is_refused_by_run_and_check() {
    let rt = runtime();
    let dir = scratch();
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    for name in ["grant-probe", "marked-source"] {
        std::fs::copy(plugin(name), dir.join(format!("plugins/{name}.wasm"))).unwrap();
    }
    // The plugin folder as `sluice run` holds it, and what it would start.
    let mut registry = PluginRegistry::new(dir.join("plugins"));
    registry.scan(&rt, None).await.unwrap();
    let run = |config: &Config| {
        resolution::resolve(config, &registry, Directories::Create).pipelines[0].plugins()
    };

    // `sluice run`: the pipeline does not start.
    let config = config_with_probe(&dir, r#"{ tcp = ["127.0.0.1:6379"] }"#);
    let why = match run(&config) {
        Ok(_) => panic!("a writer without its http grant was started"),
        Err(why) => why,
    };
    assert!(
        why.starts_with(
            "pipelines[0].writers[0].grants: writer grant-probe@0.1.0 (grant-probe.wasm) imports wasi:http/outgoing-handler@0.2"
        ),
        "{why}"
    );
    assert!(
        why.contains(
            "but its grants in pipelines[0].writers[0] give no http; add grants.http = [\"https://host:port/path\"] or use another plugin"
        ),
        "{why}"
    );
    assert!(!why.contains("give no tcp"), "{why}");

    // `sluice check`: the same, at the writer's grants, for both capabilities.
    let config = config_with_probe(&dir, "{}");
    let problems = sluice::check::check(&config, &rt).await;
    let at_grants: Vec<_> = problems
        .iter()
        .filter(|p| p.path == "pipelines[0].writers[0].grants")
        .collect();
    assert_eq!(at_grants.len(), 1, "{problems:?}");
    let message = &at_grants[0].message;
    assert!(
        message.contains("imports wasi:http/outgoing-handler@0.2"),
        "{message}"
    );
    assert!(
        message.contains("imports wasi:sockets/tcp@0.2"),
        "{message}"
    );
    assert!(
        message.contains("give no tcp; add grants.tcp = "),
        "{message}"
    );

    // With both grants, and a directory that is created at start.
    let grants =
        r#"{ http = ["http://127.0.0.1:8123"], tcp = ["127.0.0.1:6379"], directory = "out" }"#;
    let config = config_with_probe(&dir, grants);
    assert!(run(&config).is_ok());
    assert!(dir.join("out").is_dir());
    assert!(sluice::check::check(&config, &rt).await.is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}
