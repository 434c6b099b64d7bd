//! The daemon as operators run it: a process consuming a real queue into a real
//! table, through crashes, broker and database failures, and shutdowns.

use std::time::Duration;

use sluice_tests::daemon::{Broker, Daemon, Setup, close_connections_of, eventually};
use sluice_tests::{TestSchema, cdr_json};

/// Starts the daemon built by this package.
pub(crate) fn start(setup: &Setup, log_name: &str) -> Daemon {
    Daemon::start(env!("CARGO_BIN_EXE_sluice-under-test"), setup, log_name)
}

pub(crate) const LONG: Duration = Duration::from_secs(120);

pub(crate) struct World {
    pub(crate) setup: Setup,
    pub(crate) broker: Broker,
    pub(crate) db: TestSchema,
}

pub(crate) async fn world(tag: &str) -> World {
    let w = world_unprepared(tag).await;
    w.broker.prepare(&w.setup).await;
    w
}

/// A world whose queue the daemon itself declares.
pub(crate) async fn world_unprepared(tag: &str) -> World {
    let setup = Setup::new(tag);
    let broker = Broker::connect().await;
    let db = TestSchema::create_named(&setup.pg_schema).await.unwrap();
    World { setup, broker, db }
}

impl World {
    pub(crate) async fn rows(&self) -> i64 {
        self.db.count_or_zero("cdr").await
    }

    pub(crate) async fn distinct_rows(&self) -> i64 {
        self.db
            .client
            .query_one(
                &format!("SELECT count(DISTINCT call_id) FROM {}.cdr", self.db.name),
                &[],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or(0)
    }

    /// Creates the `cdr` table beforehand, with a check constraint that refuses
    /// the row of message 777 (duration 777): a row the store refuses.
    pub(crate) async fn create_table_refusing_777(&self) {
        self.db
            .client
            .batch_execute(&format!(
                "CREATE TABLE {s}.cdr (call_id text PRIMARY KEY, caller text NOT NULL, callee text NOT NULL, \
                 started_at timestamptz NOT NULL, duration_s integer NOT NULL CHECK (duration_s <> 777), cell text, \
                 cost numeric, call_type text, roaming boolean)",
                s = self.db.name
            ))
            .await
            .unwrap();
    }

    pub(crate) async fn wait_rows(&self, n: i64, what: &str) {
        eventually(LONG, what, || async { self.rows().await >= n }).await;
    }

    /// Waits until the pipeline's queue has no ready message.
    pub(crate) async fn wait_drained(&self) {
        eventually(LONG, "an empty queue", || async {
            self.broker.ready(&self.setup.queue).await == 0
        })
        .await;
    }

    /// Waits until the dead-letter queue holds exactly `n` messages.
    pub(crate) async fn wait_dead_letters(&self, n: u32, what: &str) {
        eventually(LONG, what, || async {
            self.broker.ready(&self.setup.dead_queue).await == n
        })
        .await;
    }

    pub(crate) async fn finish(self) {
        self.broker.cleanup(&self.setup).await;
        self.db.drop_now().await.unwrap();
    }
}

pub(crate) fn cdrs(range: std::ops::Range<u64>) -> impl Iterator<Item = String> {
    range.map(cdr_json)
}

#[tokio::test]
async fn ten_thousand_messages_land_exactly_once_and_are_all_acked() {
    let w = world("ten-k").await;
    w.broker.publish(&w.setup, cdrs(0..10_000)).await;
    let mut daemon = start(&w.setup, "daemon");
    w.wait_rows(10_000, "10,000 rows").await;
    w.wait_drained().await;

    daemon.signal("TERM");
    let status = daemon
        .wait_exit(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert!(
        status.success(),
        "exit status {status:?}; log:\n{}",
        daemon.log()
    );
    // With the daemon gone, anything it left unacked would be back in the queue.
    assert_eq!(
        w.broker.ready(&w.setup.queue).await,
        0,
        "every message was acked"
    );
    assert_eq!(w.rows().await, 10_000);
    assert_eq!(w.distinct_rows().await, 10_000);
    assert_eq!(w.broker.ready(&w.setup.dead_queue).await, 0);
    w.finish().await;
}

#[tokio::test]
async fn poison_messages_are_dead_lettered_with_their_reasons_and_the_rest_land() {
    let w = world("poison").await;
    // The table exists already, with a constraint some rows break.
    w.create_table_refusing_777().await;
    let mut bodies = Vec::new();
    let mut poison = 0;
    for i in 0..2_000u64 {
        bodies.push(match i % 100 {
            13 => "{not json".to_string(),
            42 => cdr_json(i).replace("\"call\":{\"id\"", "\"call\":{\"no_id\""),
            _ if i == 777 => cdr_json(i), // duration 777: refused by the table
            _ => cdr_json(i),
        });
        if i % 100 == 13 || i % 100 == 42 || i == 777 {
            poison += 1;
        }
    }
    w.broker.publish(&w.setup, bodies).await;
    let mut daemon = start(&w.setup, "daemon");
    let good = 2_000 - poison;
    w.wait_rows(good, "the good rows").await;
    w.wait_dead_letters(poison as u32, "every poison message dead-lettered")
        .await;
    w.wait_drained().await;
    daemon.stop_cleanly();

    assert_eq!(w.rows().await, good);
    let dead = w.broker.drain(&w.setup.dead_queue).await;
    assert_eq!(
        dead.len() as i64,
        poison,
        "each poison message once: none requeued in a loop"
    );
    let header = |h: &lapin::types::FieldTable, k: &str| match h.inner().get(k) {
        Some(lapin::types::AMQPValue::LongString(s)) => {
            String::from_utf8_lossy(s.as_bytes()).into_owned()
        }
        other => panic!("header {k}: {other:?}"),
    };
    let mut stages = std::collections::BTreeMap::new();
    for (body, headers) in &dead {
        let reason = header(headers, "x-sluice-reason");
        let plugin = header(headers, "x-sluice-plugin");
        let stage = header(headers, "x-sluice-stage");
        assert_eq!(header(headers, "x-sluice-pipeline"), w.setup.pipeline);
        if body.starts_with("{not json") {
            assert!(reason.contains("not valid JSON"), "{reason}");
            assert_eq!(
                (plugin.as_str(), stage.as_str()),
                ("json-source@0.1.0", "decode")
            );
        } else if body.contains("no_id") {
            assert!(reason.contains("call.id"), "{reason}");
        } else {
            assert!(body.contains("c-000000000777"), "{body}");
            assert!(reason.contains("check constraint"), "{reason}");
            assert_eq!(
                (plugin.as_str(), stage.as_str()),
                ("postgres-writer@0.1.0", "write")
            );
        }
        *stages.entry(stage).or_insert(0) += 1;
    }
    assert_eq!(stages.get("write"), Some(&1));
    w.finish().await;
}

#[tokio::test]
async fn kill_9_mid_stream_then_a_restart_lands_every_message_exactly_once() {
    let w = world("kill9").await;
    w.broker.publish(&w.setup, cdrs(0..20_000)).await;
    let daemon = start(&w.setup, "first");
    w.wait_rows(2_000, "the first rows").await;
    daemon.kill9();
    let landed = w.rows().await;
    assert!(landed < 20_000, "killed mid-stream ({landed} rows)");

    let mut daemon = start(&w.setup, "second");
    w.wait_rows(20_000, "every row after the restart").await;
    w.wait_drained().await;
    daemon.stop_cleanly();
    assert_eq!(w.rows().await, 20_000);
    assert_eq!(w.distinct_rows().await, 20_000);
    assert_eq!(
        w.broker.ready(&w.setup.dead_queue).await,
        0,
        "nothing dead-lettered by mistake"
    );
    w.finish().await;
}

#[tokio::test]
async fn sigterm_mid_stream_exits_zero_promptly_and_leaves_nothing_written_unacked() {
    let w = world("sigterm").await;
    w.broker.publish(&w.setup, cdrs(0..30_000)).await;
    let mut daemon = start(&w.setup, "daemon");
    w.wait_rows(3_000, "the first rows").await;
    let asked = std::time::Instant::now();
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(Duration::from_secs(20))
        .expect("exits within the drain bound");
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "took {:?}",
        asked.elapsed()
    );
    assert!(
        daemon
            .log()
            .contains("every in-flight batch was committed and acked"),
        "{}",
        daemon.log()
    );

    // Every written row was acked, every unwritten message is back in the queue.
    // The broker requeues what the closed channels held unacked (prefetched, not
    // yet processed) shortly after the exit, so wait for the count to settle; a
    // row written but not acked would push the sum above the total.
    let rows = w.rows().await;
    eventually(
        Duration::from_secs(10),
        "the unprocessed messages to be requeued",
        || async { rows + w.broker.ready(&w.setup.queue).await as i64 >= 30_000 },
    )
    .await;
    let queued = w.broker.ready(&w.setup.queue).await as i64;
    assert_eq!(rows + queued, 30_000, "rows {rows} + queued {queued}");
    assert!(queued > 0, "stopped mid-stream, not after the end");

    let mut daemon = start(&w.setup, "again");
    w.wait_rows(30_000, "the rest after a restart").await;
    daemon.stop_cleanly();
    assert_eq!(w.distinct_rows().await, 30_000);
    w.finish().await;
}

#[tokio::test]
async fn killed_postgres_backends_are_retried_and_nothing_is_lost_or_dead_lettered() {
    let w = world("pgkill").await;
    w.setup.write_config(
        "consumers = 2\nbatch = { max_messages = 200, max_wait = \"50ms\" }\nprefetch = 400",
    );
    w.broker.publish(&w.setup, cdrs(0..20_000)).await;
    let mut daemon = start(&w.setup, "daemon");
    w.wait_rows(1_000, "the first rows").await;
    let mut kills = 0;
    for _ in 0..10 {
        let killed: i64 = w
            .db
            .client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                &[&w.setup.pg_app],
            )
            .await
            .unwrap()
            .get(0);
        kills += killed;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(kills > 0, "no backend to kill");
    w.wait_rows(20_000, "every row").await;
    w.wait_drained().await;
    daemon.stop_cleanly();
    assert_eq!(w.distinct_rows().await, 20_000);
    assert_eq!(w.rows().await, 20_000);
    assert_eq!(
        w.broker.ready(&w.setup.dead_queue).await,
        0,
        "nothing dead-lettered by mistake"
    );
    assert!(daemon.log().contains("retrying"), "the retries are logged");
    w.finish().await;
}

#[tokio::test]
async fn the_broker_closing_the_connections_mid_stream_is_recovered_without_loss() {
    let w = world("amqpclose").await;
    w.broker.publish(&w.setup, cdrs(0..20_000)).await;
    let mut daemon = start(&w.setup, "daemon");
    w.wait_rows(2_000, "the first rows").await;
    let closed = tokio::task::spawn_blocking({
        let p = w.setup.pipeline.clone();
        move || close_connections_of(&p)
    })
    .await
    .unwrap();
    assert!(closed >= 1, "found no connection of the daemon to close");
    w.wait_rows(20_000, "every row after the reconnect").await;
    w.wait_drained().await;
    daemon.stop_cleanly();
    assert_eq!(w.distinct_rows().await, 20_000);
    assert_eq!(w.rows().await, 20_000);
    assert!(daemon.log().contains("reconnecting"), "{}", daemon.log());
    w.finish().await;
}

#[tokio::test]
async fn three_daemons_on_one_queue_one_killed_and_restarted_land_every_message_once() {
    let mut w = world("three").await;
    // Three daemons on one config: let each pick its own admin port.
    w.setup.admin_port = 0;
    w.setup.write_config("");
    w.broker.publish(&w.setup, cdrs(0..30_000)).await;
    let a = start(&w.setup, "a");
    let mut b = start(&w.setup, "b");
    let mut c = start(&w.setup, "c");
    w.wait_rows(3_000, "the first rows").await;
    a.kill9();
    let mut a = start(&w.setup, "a-again");
    w.wait_rows(30_000, "every row").await;
    w.wait_drained().await;
    for d in [&mut a, &mut b, &mut c] {
        d.stop_cleanly();
    }
    assert_eq!(w.rows().await, 30_000);
    assert_eq!(w.distinct_rows().await, 30_000);
    w.finish().await;
}

#[tokio::test]
async fn a_quorum_queue_with_a_delivery_limit_is_declared_and_consumed() {
    let w = world_unprepared("quorum").await;
    w.setup
        .write_config_with("", r#", type = "quorum", delivery_limit = 5"#);
    let mut daemon = start(&w.setup, "daemon");
    // Ready means its topology is declared (queue, exchange, binding) and it
    // consumes: publishing earlier could hit an exchange that is not there yet.
    let port = w.setup.admin_port;
    eventually(LONG, "the daemon to be ready", || async {
        matches!(
            sluice_tests::daemon::http_get(port, "/readyz").await,
            Some((200, _))
        )
    })
    .await;
    w.broker.publish(&w.setup, cdrs(0..5_000)).await;
    w.wait_rows(5_000, "every row").await;
    let listed = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-q",
            "--no-table-headers",
            "name",
            "type",
            "arguments",
        ])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    let line = listed
        .lines()
        .find(|l| l.starts_with(&format!("{}\t", w.setup.queue)))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        line.contains("quorum") && line.contains("x-delivery-limit"),
        "{line}"
    );
    daemon.stop_cleanly();
    assert_eq!(w.distinct_rows().await, 5_000);
    w.finish().await;
}
