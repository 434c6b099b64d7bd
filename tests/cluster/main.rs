//! Past one machine: the daemon against a three-node RabbitMQ cluster of the
//! test process's own (`sluice_tests::cluster`), with quorum queues and
//! replicated streams, while nodes are stopped and started under it. Every
//! test has its own queues, streams, exchanges and schema; they share the
//! cluster one at a time (a test binary of its own, so that waiting for the
//! cluster holds no thread the other integration tests need).
//!
//! "Exactly once" is what a user sees: the table (keyed on the call id) holds
//! every message's row once, nothing is left ready or unacked, the dead-letter
//! queue is empty (or holds exactly the poison).

use std::time::{Duration, Instant};

use sluice_tests::cluster::{self, RabbitCluster, publish};
use sluice_tests::daemon::{Broker, Daemon, Setup, eventually, header};
use sluice_tests::streams::Streams;
use sluice_tests::{TestSchema, cdr_json};

/// How long the daemon may take to write again after a node stops: an
/// election takes a few seconds, a reconnect a backoff; generous for a loaded
/// machine (the failover benchmark measures it: BENCHMARKS.md).
const FAILOVER_LIMIT: Duration = Duration::from_secs(45);
const LONG: Duration = Duration::from_secs(180);

fn start(setup: &Setup, log_name: &str) -> Daemon {
    Daemon::start(env!("CARGO_BIN_EXE_sluice-under-test"), setup, log_name)
}

/// Runs blocking cluster work (stopping a node takes seconds) without
/// stalling the test's other tasks (its publisher).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A test's names and schema, its config pointing at the cluster's nodes.
struct World {
    setup: Setup,
    db: TestSchema,
    urls: Vec<String>,
}

impl World {
    async fn new(cluster: &RabbitCluster, tag: &str) -> World {
        let mut setup = Setup::new(tag);
        setup.amqp_urls = cluster.amqp_urls();
        setup.stream_urls = cluster.stream_urls();
        let db = TestSchema::create_named(&setup.pg_schema).await.unwrap();
        World {
            urls: cluster.amqp_urls(),
            setup,
            db,
        }
    }

    /// A quorum queue, quorum dead letters (which outlive a node), with
    /// `queue_extra` added to the queue table.
    fn write_quorum_config(&self, pipeline_extra: &str, queue_extra: &str) {
        self.setup.write_config_with(
            pipeline_extra,
            &format!(r#", type = "quorum"{queue_extra}"#),
        );
        self.quorum_dead_letters();
    }

    fn quorum_dead_letters(&self) {
        let path = self.setup.config_path();
        let text = std::fs::read_to_string(&path).unwrap().replace(
            &format!(r#"queue = "{}" }}"#, self.setup.dead_queue),
            &format!(
                r#"queue = "{}", queue_type = "quorum" }}"#,
                self.setup.dead_queue
            ),
        );
        assert!(text.contains("queue_type = \"quorum\""));
        std::fs::write(path, text).unwrap();
    }

    async fn rows(&self, table: &str) -> i64 {
        self.db.count_or_zero(table).await
    }

    async fn distinct_calls(&self) -> i64 {
        let sql = format!("SELECT count(DISTINCT call_id) FROM {}.cdr", self.db.name);
        self.db.client.query_one(&sql, &[]).await.unwrap().get(0)
    }

    async fn wait_rows(&self, n: i64, what: &str) {
        eventually(LONG, what, || async { self.rows("cdr").await >= n }).await;
    }

    /// Waits until the daemon declared its queue and bound it (what is
    /// published before is unroutable, and lost).
    async fn wait_bound(&self, cluster: &RabbitCluster, queue: &str) {
        eventually(LONG, "the daemon's queue bound", || async {
            cluster.bound(&self.setup.exchange, queue)
        })
        .await;
    }

    /// Waits until `queue` holds nothing ready or unacked.
    async fn wait_settled(&self, cluster: &RabbitCluster, queue: &str) {
        eventually(LONG, "nothing ready or unacked", || async {
            cluster.depth(queue) == (0, 0)
        })
        .await;
    }

    /// What "exactly once" means to a user: `n` rows, `n` distinct calls, no
    /// dead letters, and (when `settled`, for a queue) nothing left ready or
    /// unacked.
    async fn assert_exactly_once(&self, cluster: &RabbitCluster, n: i64, settled: bool) {
        if settled {
            self.wait_settled(cluster, &self.setup.queue).await;
        }
        assert_eq!(self.rows("cdr").await, n);
        assert_eq!(self.distinct_calls().await, n);
        assert_eq!(
            cluster.depth(&self.setup.dead_queue),
            (0, 0),
            "no dead letters"
        );
    }

    async fn finish(self) {
        self.db.drop_now().await.unwrap();
        let _ = std::fs::remove_dir_all(&self.setup.dir);
    }
}

fn cdrs(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(cdr_json).collect()
}

/// The heart of a leader failover test: 20,000 CDRs published at a steady
/// pace; once 3,000 rows landed, the node leading `queue` (a quorum queue or
/// a stream) is stopped, and the daemon must write again within
/// [`FAILOVER_LIMIT`]; a new leader is elected and every row lands; the node
/// comes back and 2,000 more land, the daemon going on wherever it is
/// connected. Returns the new leader.
async fn lose_the_leader_mid_stream(cluster: &mut RabbitCluster, w: &World, queue: &str) -> usize {
    let leader = cluster.leader(queue).expect("a leader");
    let publisher = tokio::spawn(publish(
        w.urls.clone(),
        w.setup.exchange.clone(),
        cdrs(0..20_000),
        500,
        Duration::from_millis(100),
    ));
    w.wait_rows(3_000, "rows before the stop").await;
    let at_stop = w.rows("cdr").await;
    let stopped = Instant::now();
    blocking(|| cluster.stop(leader));
    eventually(
        FAILOVER_LIMIT,
        "a row written after the node stopped",
        || async { w.rows("cdr").await > at_stop },
    )
    .await;
    // Stopping takes a moment of its own; measured from the stop command.
    eprintln!(
        "{queue}: leader stopped, next row after {:?}",
        stopped.elapsed()
    );
    let new_leader = blocking(|| cluster.wait_new_leader(queue, leader));
    publisher.await.unwrap();
    w.wait_rows(20_000, "every row after the failover").await;

    blocking(|| cluster.restart(leader));
    publish(
        w.urls.clone(),
        w.setup.exchange.clone(),
        cdrs(20_000..22_000),
        500,
        Duration::ZERO,
    )
    .await;
    w.wait_rows(22_000, "rows after the node came back").await;
    new_leader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_leading_a_quorum_queue_stops_mid_stream_and_every_message_lands_once() {
    let mut cluster = cluster::shared().await;
    let w = World::new(&cluster, "qq-leader").await;
    w.write_quorum_config("", "");
    let mut daemon = start(&w.setup, "daemon");
    w.wait_bound(&cluster, &w.setup.queue).await;
    lose_the_leader_mid_stream(&mut cluster, &w, &w.setup.queue).await;
    w.assert_exactly_once(&cluster, 22_000, true).await;
    daemon.stop_cleanly();
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_leading_a_replicated_stream_stops_mid_stream_and_every_message_lands_once() {
    let mut cluster = cluster::shared().await;
    let w = World::new(&cluster, "stream-leader").await;
    let stream = format!("{}.stream", w.setup.pipeline);
    w.setup.write_stream_config(
        "",
        &format!(
            r#"{{ type = "stream", name = "{stream}", connection = "streams", bindings = [{{ exchange = "{}", routing_key = "cdr.#" }}] }}"#,
            w.setup.exchange
        ),
    );
    w.quorum_dead_letters();
    let mut daemon = start(&w.setup, "daemon");
    w.wait_bound(&cluster, &stream).await;
    let members = cluster
        .queue_info(&stream, &["members"])
        .expect("the stream listed");
    for i in 0..cluster::NODES {
        assert!(
            members[0].contains(&cluster.node(i).name),
            "the stream is replicated on every node: {members:?}"
        );
    }
    let new_leader = lose_the_leader_mid_stream(&mut cluster, &w, &stream).await;
    w.assert_exactly_once(&cluster, 22_000, false).await;
    daemon.stop_cleanly();

    // The offset stored (in the stream, so on the surviving replicas too) is
    // at least that of the 22,000th message (a chunk published again after
    // the stop put some twice in the stream): a restart does not read the
    // stream again from before the failover.
    let streams = Streams::connect_to("127.0.0.1", cluster.stream_port(new_leader)).await;
    let read = streams.read(&stream, 22_000).await;
    assert_eq!(read.len(), 22_000);
    let consumer = format!("sluice-{}", w.setup.pipeline);
    let stored = streams
        .stored_offset(&consumer, &stream)
        .await
        .expect("an offset stored");
    assert!(
        stored >= read[21_999].0,
        "stored {stored}, 22,000th message at {}",
        read[21_999].0
    );
    streams.delete(&stream).await;
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_all_three_nodes_under_load_loses_nothing() {
    let mut cluster = cluster::shared().await;
    let w = World::new(&cluster, "rolling").await;
    w.write_quorum_config("", "");
    let mut daemon = start(&w.setup, "daemon");
    w.wait_bound(&cluster, &w.setup.queue).await;

    // About 500 messages a second for the whole restart.
    let total = 40_000;
    let publisher = tokio::spawn(publish(
        w.urls.clone(),
        w.setup.exchange.clone(),
        cdrs(0..total),
        250,
        Duration::from_millis(500),
    ));
    w.wait_rows(1_000, "rows before the restart").await;
    for node in 0..cluster::NODES {
        blocking(|| cluster.stop(node));
        let at_stop = w.rows("cdr").await;
        eventually(FAILOVER_LIMIT, "rows while a node is down", || async {
            w.rows("cdr").await > at_stop
        })
        .await;
        blocking(|| cluster.restart(node));
    }
    publisher.await.unwrap();
    w.wait_rows(total as i64, "every row after the rolling restart")
        .await;
    w.assert_exactly_once(&cluster, total as i64, true).await;
    daemon.stop_cleanly();
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_on_a_quorum_queue_one_killed_every_message_lands_once() {
    let cluster = cluster::shared().await;
    let w = World::new(&cluster, "three-daemons").await;
    w.write_quorum_config("", "");
    // Three daemons on the one config, each with an admin port of its own.
    let config = std::fs::read_to_string(w.setup.config_path()).unwrap();
    let admin = format!("admin_addr = \"127.0.0.1:{}\"", w.setup.admin_port);
    let mut daemons: Vec<Daemon> = (0..3)
        .map(|k| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let path = w.setup.dir.join(format!("config-{k}.toml"));
            let text = config.replace(&admin, &format!("admin_addr = \"127.0.0.1:{port}\""));
            std::fs::write(&path, text).unwrap();
            Daemon::start_config(
                env!("CARGO_BIN_EXE_sluice-under-test"),
                &path,
                &w.setup.dir,
                &format!("daemon-{k}"),
                &[],
            )
        })
        .collect();
    w.wait_bound(&cluster, &w.setup.queue).await;
    eventually(LONG, "three daemons consuming", || async {
        cluster
            .queue_info(&w.setup.queue, &["consumers"])
            .and_then(|f| f.first()?.parse::<u32>().ok())
            .is_some_and(|n| n >= 3)
    })
    .await;

    let total = 30_000;
    let publisher = tokio::spawn(publish(
        w.urls.clone(),
        w.setup.exchange.clone(),
        cdrs(0..total),
        500,
        Duration::from_millis(100),
    ));
    w.wait_rows(5_000, "rows before the kill").await;
    daemons.remove(1).kill9();
    publisher.await.unwrap();
    w.wait_rows(total as i64, "every row after one daemon was killed")
        .await;
    w.assert_exactly_once(&cluster, total as i64, true).await;
    for daemon in &mut daemons {
        daemon.stop_cleanly();
    }
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_killing_the_daemon_is_dead_lettered_by_the_delivery_limit_across_a_failover()
 {
    let mut cluster = cluster::shared().await;
    let mut w = World::new(&cluster, "qq-limit").await;
    // A message that holds its consumer (the source sleeps on it far past any
    // test), as one that crashes the daemon would; the test kills the daemon
    // each time it holds it.
    w.setup.source = ("chaos-source".into(), "{}".into(), "chaos".into());
    w.setup.daemon_extra = "plugin_call_deadline = \"1h\"".into();
    w.write_quorum_config(
        "consumers = 1\nbatch = { max_messages = 1, max_wait = \"10ms\" }",
        ", delivery_limit = 2",
    );
    let mut daemon = start(&w.setup, "daemon-0");
    w.wait_bound(&cluster, &w.setup.queue).await;
    publish(
        w.urls.clone(),
        w.setup.exchange.clone(),
        vec!["sleep:3600000 poison".into()],
        1,
        Duration::ZERO,
    )
    .await;

    // Deliveries 1 to 3: each taken and held, then the daemon killed (the
    // message returns to the queue, its delivery count one more). Between the
    // first and the second the node leading the queue stops: the count is
    // the queue's replicated state, and survives.
    for delivery in 1..=3 {
        eventually(LONG, "the poison held by the daemon", || async {
            cluster.depth(&w.setup.queue) == (0, 1)
        })
        .await;
        daemon.kill9();
        if delivery == 1 {
            let leader = cluster.leader(&w.setup.queue).expect("a leader");
            blocking(|| cluster.stop(leader));
            blocking(|| cluster.wait_new_leader(&w.setup.queue, leader));
        }
        daemon = start(&w.setup, &format!("daemon-{delivery}"));
    }
    // Returned three times, past the limit of 2: the queue dead-letters it
    // to the pipeline's dead-letter exchange, instead of a fourth delivery.
    eventually(LONG, "the poison in the dead-letter queue", || async {
        cluster.depth(&w.setup.dead_queue).0 == 1
    })
    .await;
    assert_eq!(cluster.depth(&w.setup.queue), (0, 0));

    // The daemon goes on with the messages after it.
    let good: Vec<String> = (0..100).map(|i| format!("good-{i}")).collect();
    publish(
        w.urls.clone(),
        w.setup.exchange.clone(),
        good,
        100,
        Duration::ZERO,
    )
    .await;
    eventually(LONG, "the good messages' rows", || async {
        w.rows("chaos").await == 100
    })
    .await;
    let mut inspector = None;
    for url in &w.urls {
        if let Ok(b) = Broker::try_connect_to(url).await {
            inspector = Some(b);
            break;
        }
    }
    let dead = inspector
        .expect("a node answers")
        .drain(&w.setup.dead_queue)
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, "sleep:3600000 poison");
    assert_eq!(header(&dead[0].1, "x-first-death-reason"), "delivery_limit");
    daemon.stop_cleanly();
    blocking(|| cluster.start_stopped());
    w.finish().await;
}
