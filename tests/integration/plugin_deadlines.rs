//! The wall-clock deadline of a plugin call, the time limit of a store call, and
//! the rate limit of plugin logs: a plugin that sleeps is stopped at its deadline
//! (its message dead-lettered, the rest landing), a store that hangs is a
//! retriable outage, and a plugin that floods its log is cut and counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::capabilities::Grants;
use sluice::capabilities::postgres::PostgresGrant;
use sluice::plugin_runtime::{
    CallError, Column, ColumnType, MessageOutcome, PluginRuntime, RowBatch, RuntimeConfig, Schema,
    SourceInstance, WriterInstance,
};
use sluice_tests::daemon::{Daemon, eventually, header, http_get};
use sluice_tests::{plugin, postgres_url, unique_name};

use super::daemon::{LONG, World, start, world};
use super::message;

/// The wall-clock deadline of the runtime-level tests.
const DEADLINE: Duration = Duration::from_secs(1);
/// How late past its limit a stopped call may come back: the timer's
/// granularity, unwinding the plugin, a machine shared with other builds.
const MARGIN: Duration = Duration::from_millis(1500);

fn runtime(store_call_timeout: Duration) -> Arc<PluginRuntime> {
    PluginRuntime::new(RuntimeConfig {
        memory_limit: 64 << 20,
        call_time_limit: Duration::from_millis(500),
        call_deadline: DEADLINE,
        store_call_timeout,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// The schema of `chaos-source` rows, which `chaos-writer` reads.
fn chaos_schema() -> Schema {
    let column = |name: &str, key: bool| Column {
        name: name.into(),
        type_: ColumnType::Text,
        nullable: !key,
        key,
    };
    Schema {
        name: "chaos".into(),
        version: 1,
        columns: vec![column("id", true), column("note", false)],
    }
}

/// A batch of `chaos-source` rows keyed by `keys`.
fn rows(keys: &[&str]) -> RowBatch {
    let mut writer = sluice_plugin_sdk::rows::RowWriter::new();
    for key in keys {
        writer.text(key).null().end_row();
    }
    let batch = writer.finish();
    RowBatch {
        count: batch.count,
        data: batch.data,
    }
}

async fn chaos_writer(rt: &Arc<PluginRuntime>, grants: Grants) -> WriterInstance {
    let loaded = rt.load(&plugin("chaos-writer")).await.unwrap();
    WriterInstance::new(
        rt.clone(),
        loaded.into(),
        "deadlines-test",
        "{}".into(),
        chaos_schema(),
        grants,
    )
}

#[track_caller]
fn assert_stopped_at_the_deadline(err: &CallError, func: &str, took: Duration) {
    assert!(
        matches!(err, CallError::Deadline { limit, .. } if *limit == DEADLINE),
        "{err}"
    );
    assert_eq!((err.func(), err.kind()), (func, "deadline"));
    assert!(err.is_crash(), "the pipeline isolates the message: {err}");
    assert!(
        err.to_string().contains("wall-clock deadline of 1s"),
        "{err}"
    );
    assert!(
        took >= DEADLINE && took < DEADLINE + MARGIN,
        "stopped after {took:?}"
    );
}

#[tokio::test]
async fn a_source_that_sleeps_in_decode_is_stopped_at_its_deadline() {
    let rt = runtime(Duration::from_secs(60));
    let loaded = rt.load(&plugin("chaos-source")).await.unwrap();
    let mut source = SourceInstance::new(rt, loaded.into(), "deadlines-test", "{}".into());
    source.schema().await.unwrap();
    let started = Instant::now();
    let err = source
        .decode(&[message("ok"), message("sleep:60000")])
        .await
        .unwrap_err();
    assert_stopped_at_the_deadline(&err, "decode", started.elapsed());
    assert!(err.to_string().contains("chaos-source@0.1.0"), "{err}");

    // A fresh instance takes the next batch; sleeping under the deadline is fine.
    let decoded = source
        .decode(&[message("ok"), message("sleep:300")])
        .await
        .expect("a fresh instance decodes");
    assert_eq!(
        decoded.outcomes,
        vec![MessageOutcome::Rows(1), MessageOutcome::Rows(1)]
    );
}

#[tokio::test]
async fn a_writer_that_sleeps_in_write_is_stopped_at_its_deadline() {
    let rt = runtime(Duration::from_secs(60));
    let mut writer = chaos_writer(&rt, Grants::none()).await;
    writer.open().await.unwrap();
    let started = Instant::now();
    let err = writer
        .write(&rows(&["a", "sleep:60000", "b"]))
        .await
        .unwrap_err();
    assert_stopped_at_the_deadline(&err, "write", started.elapsed());
    writer
        .write(&rows(&["a", "b"]))
        .await
        .expect("a fresh instance writes");
}

/// A writer with a directory grant runs its calls in `block_in_place` on a
/// multi-thread runtime (its filesystem calls run on the calling thread): the
/// deadline holds there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_with_a_directory_grant_that_sleeps_is_stopped_at_its_deadline() {
    let rt = runtime(Duration::from_secs(60));
    let dir = std::env::temp_dir().join(unique_name("deadline_dir"));
    let mut writer = chaos_writer(&rt, Grants::none().with_directory(&dir)).await;
    writer.open().await.unwrap();
    let started = Instant::now();
    let err = writer.write(&rows(&["sleep:60000"])).await.unwrap_err();
    assert_stopped_at_the_deadline(&err, "write", started.elapsed());
    writer
        .write(&rows(&["a"]))
        .await
        .expect("a fresh instance writes");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Active statements of the Postgres application `app`.
async fn active_statements(client: &tokio_postgres::Client, app: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND state = 'active'",
            &[&app],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_store_call_that_hangs_is_a_retriable_timeout_not_a_deadline() {
    // The store call may take 2 s, longer than the plugin's 1 s deadline: time
    // in store calls does not count against the deadline.
    let store_call_timeout = Duration::from_secs(2);
    let rt = runtime(store_call_timeout);
    let probe = Arc::new(rt.load(&plugin("grant-probe")).await.unwrap());
    let app = unique_name("hung_store");
    let url = format!("{}?application_name={app}", postgres_url());
    let grants = Grants::none().with_postgres("warehouse", PostgresGrant::from_url(&url).unwrap());
    let config = json!({ "postgres": "warehouse", "sql": "SELECT pg_sleep(60)" });
    let mut writer = WriterInstance::new(
        rt.clone(),
        probe,
        "deadlines-test",
        config.to_string(),
        Schema {
            name: "probe".into(),
            version: 1,
            columns: vec![Column {
                name: "id".into(),
                type_: ColumnType::Text,
                nullable: false,
                key: true,
            }],
        },
        grants,
    );
    let started = Instant::now();
    let err = writer.open().await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, CallError::Failed { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("sql: Retriable") && text.contains("timed out after 2s (store_call_timeout)"),
        "{text}"
    );
    assert!(
        took >= store_call_timeout && took < store_call_timeout + MARGIN,
        "came back after {took:?}"
    );

    // The statement was cancelled on the server, not left running.
    let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    eventually(
        Duration::from_secs(10),
        "the hung statement cancelled",
        || async { active_statements(&client, &app).await == 0 },
    )
    .await;
}

/// The value of the metric line that starts with `prefix`, summed over its
/// series.
async fn metric(port: u16, prefix: &str) -> f64 {
    let Some((200, body)) = http_get(port, "/metrics").await else {
        return 0.0;
    };
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A world whose pipeline runs `chaos-source` under a 2 s call deadline, one
/// consumer, batches of up to 20.
async fn chaos_world(tag: &str) -> World {
    let mut w = world(tag).await;
    w.setup.source = ("chaos-source".into(), "{}".into(), "chaos".into());
    w.setup.daemon_extra = "plugin_call_deadline = \"2s\"".into();
    w
}

fn batch_settings() -> &'static str {
    "consumers = 1\nbatch = { max_messages = 20, max_wait = \"500ms\" }"
}

async fn chaos_rows(w: &World) -> i64 {
    w.db.count_or_zero("chaos").await
}

async fn drained(w: &World, daemon: &Daemon) {
    w.wait_drained().await;
    assert!(
        !daemon.log().contains("panicked"),
        "the daemon stays up:\n{}",
        daemon.log()
    );
}

#[tokio::test]
async fn a_message_that_makes_the_source_sleep_for_minutes_is_dead_lettered_at_the_deadline() {
    let w = chaos_world("sleepy").await;
    w.setup.write_config(batch_settings());
    let mut bodies: Vec<String> = (0..10).map(|i| format!("good-{i}")).collect();
    bodies.insert(5, "sleep:600000".into());
    w.broker.publish(&w.setup, bodies).await;
    let started = Instant::now();
    let mut daemon = start(&w.setup, "daemon");

    eventually(LONG, "the ten good rows", || async {
        chaos_rows(&w).await == 10
    })
    .await;
    w.wait_dead_letters(1, "the sleeper dead-lettered").await;
    drained(&w, &daemon).await;
    println!(
        "sleep: the sleeper dead-lettered and the queue drained {:?} after the daemon started",
        started.elapsed()
    );
    let failures = metric(w.setup.admin_port, "sluice_plugin_failures_total{pipeline=").await;
    let metrics = http_get(w.setup.admin_port, "/metrics").await.unwrap().1;
    assert!(failures >= 1.0, "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sluice_plugin_failures_total")
                && l.contains("plugin=\"chaos-source@0.1.0\",func=\"decode\",kind=\"deadline\"")),
        "{metrics}"
    );
    daemon.stop_cleanly();

    let dead = w.broker.drain(&w.setup.dead_queue).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (body, headers) = &dead[0];
    assert_eq!(body, "sleep:600000");
    let reason = header(headers, "x-sluice-reason");
    assert!(
        reason.contains("wall-clock deadline of 2s in `decode`"),
        "{reason}"
    );
    assert_eq!(header(headers, "x-sluice-stage"), "decode");
    assert_eq!(chaos_rows(&w).await, 10);
    w.finish().await;
}

#[tokio::test]
async fn a_writer_that_floods_its_log_is_cut_to_its_rate_and_the_rest_counted() {
    let w = chaos_world("flood").await;
    w.setup.write_config_plugins(
        "plugin = \"chaos-source\"\nconfig = {}",
        "plugin = \"chaos-writer\"\nconfig = {}",
    );
    // `write_config_plugins` takes no pipeline settings: one consumer, one batch.
    let text = std::fs::read_to_string(w.setup.config_path())
        .unwrap()
        .replace(
            "connection = \"rabbit\"\n",
            &format!("connection = \"rabbit\"\n{}\n", batch_settings()),
        );
    std::fs::write(w.setup.config_path(), text).unwrap();
    // `flood:0` logs until its call is stopped (at the 2 s deadline).
    let bodies = ["good-1", "flood:0", "good-2"].map(String::from);
    w.broker.publish(&w.setup, bodies).await;
    let mut daemon = start(&w.setup, "daemon");

    w.wait_dead_letters(1, "the flooder dead-lettered").await;
    drained(&w, &daemon).await;
    eventually(LONG, "the dropped records counted", || async {
        metric(
            w.setup.admin_port,
            "sluice_plugin_log_records_dropped_total{",
        )
        .await
            > 0.0
    })
    .await;
    let dropped_metric = metric(
        w.setup.admin_port,
        "sluice_plugin_log_records_dropped_total{",
    )
    .await;
    daemon.stop_cleanly();

    let log = daemon.log();
    let flood_lines = log
        .lines()
        .filter(|l| l.contains("chaos: flood line"))
        .count();
    // Each call that floods is one instance (it is dropped at the deadline):
    // its burst, plus its rate over the 2 s deadline (and a second for a late
    // timer on a busy machine). The batch of three is split until the flooder
    // is alone: up to three calls flood.
    let per_call = 500 + 100 * 3;
    assert!(
        flood_lines > 0 && flood_lines <= 3 * per_call,
        "{flood_lines} flood lines"
    );
    let summaries: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("plugin log records dropped"))
        .collect();
    assert!(!summaries.is_empty(), "{}", &log[..log.len().min(20_000)]);
    assert!(
        summaries
            .iter()
            .all(|l| l.contains("chaos-writer@0.1.0") && l.contains("dropped=")),
        "{summaries:#?}"
    );
    let dropped_logged: f64 = summaries
        .iter()
        .filter_map(|l| {
            let at = l.find("dropped=")? + "dropped=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum();
    assert_eq!(dropped_logged, dropped_metric, "{summaries:#?}");
    let size = std::fs::metadata(w.setup.dir.join("daemon.log"))
        .unwrap()
        .len();
    println!(
        "flood: {flood_lines} flood lines logged, {dropped_logged} dropped in {} summary lines, log {size} bytes",
        summaries.len()
    );
    assert!(size < 4 << 20, "the log holds {size} bytes");

    let dead = w.broker.drain(&w.setup.dead_queue).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, "flood:0");
    assert!(
        header(&dead[0].1, "x-sluice-reason").contains("wall-clock deadline of 2s in `write`"),
        "{:?}",
        dead[0]
    );
    w.finish().await;
}
