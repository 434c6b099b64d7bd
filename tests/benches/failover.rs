//! Broker failover: the time from the stop of the node leading a quorum queue
//! to the first row the daemon writes after it, over several failovers,
//! beside a plain consumer that fails over the same way in the same run.
//!
//! Starts a three-node RabbitMQ cluster of its own (`sluice_tests::cluster`),
//! and the daemon (`SLUICE_BENCH_BIN`, default target/release/sluice) on a
//! quorum queue with every node in its connection's `urls`. Each round:
//!
//! - a fresh plain queue is declared through the node leading the daemon's
//!   queue (so it leads that one too), bound to the same exchange, and a
//!   plain lapin consumer (no processing, acks every message) connects to a
//!   random node, moving to the next node at once when it loses it;
//! - a publisher sends about 2,000 CDRs a second through the other nodes;
//! - after two seconds of steady flow the leader node is stopped
//!   (`rabbitmqctl stop`, which takes a few seconds: the node closes its
//!   queues and connections before it exits), while watchers note every
//!   instant the daemon's table grows (polled every 5 ms) and the plain
//!   consumer's count grows (every 2 ms). The figure is the longest pause in
//!   that progress from the stop command until 15 s after the node is gone:
//!   how long the pipeline stood still (what a consumer had prefetched keeps
//!   it busy for a moment after the loss; its pause comes after);
//! - the node is started again and the cluster waits for it.
//!
//! Whether each was connected to the stopped node is printed too: a consumer
//! on another node only waits for the election, one on the stopped node also
//! reconnects.
//!
//! `cargo build --release -p sluice && cargo bench -p sluice-tests --bench failover`;
//! `SLUICE_BENCH_ROUNDS` (default 5) rounds with `rabbitmqctl stop`, then as
//! many with the node killed (SIGKILL: a crash, no leadership handed over).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use sluice_tests::cluster::{NODES, RabbitCluster, publish};
use sluice_tests::daemon::{Daemon, Setup};
use sluice_tests::{TestSchema, cdr_json, postgres_url};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use common::{daemon_binary, env_usize, max, median};

/// How long the flow is watched after the node is gone.
const WATCH: Duration = Duration::from_secs(15);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run().await
}

async fn run() -> anyhow::Result<()> {
    let rounds = env_usize("SLUICE_BENCH_ROUNDS", 5);
    let bin = daemon_binary()?;
    println!(
        "# failover: {rounds} leader stops, daemon {}",
        bin.display()
    );
    println!("# {}", common::machine_line());
    let mut cluster = RabbitCluster::start("failover");
    let urls = cluster.amqp_urls();
    let mut setup = Setup::new("failover");
    setup.amqp_urls = urls.clone();
    setup.write_config_with("", r#", type = "quorum""#);
    let config = std::fs::read_to_string(setup.config_path())?.replace(
        &format!(r#"queue = "{}" }}"#, setup.dead_queue),
        &format!(
            r#"queue = "{}", queue_type = "quorum" }}"#,
            setup.dead_queue
        ),
    );
    std::fs::write(setup.config_path(), config)?;
    let db = TestSchema::create_named(&setup.pg_schema).await?;
    let mut daemon = Daemon::start(bin.to_str().expect("a UTF-8 path"), &setup, "daemon");
    while !cluster.bound(&setup.exchange, &setup.queue) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut next_id = 0u64;
    let (mut daemon_times, mut plain_times) = (Vec::new(), Vec::new());
    let (mut crash_daemon, mut crash_plain) = (Vec::new(), Vec::new());
    // Half the rounds stop the node as an operator does, half kill it.
    for round in 0..2 * rounds {
        let crash = round >= rounds;
        let leader = cluster.leader(&setup.queue).expect("a leader");
        let plain_queue = format!("{}.plain-{round}", setup.pipeline);
        declare_plain(&urls[leader], &plain_queue, &setup.exchange).await?;
        let delivered = Arc::new(AtomicU64::new(0));
        let plain = tokio::spawn(plain_consumer(
            urls.clone(),
            plain_queue.clone(),
            delivered.clone(),
        ));
        let others: Vec<String> = (0..NODES)
            .filter(|&i| i != leader)
            .map(|i| urls[i].clone())
            .collect();
        // 2,000 a second for 30 s at most: the round ends the publisher.
        let bodies: Vec<String> = (next_id..next_id + 60_000).map(cdr_json).collect();
        next_id += 60_000;
        let publisher = tokio::spawn(publish(
            others,
            setup.exchange.clone(),
            bodies,
            200,
            Duration::from_millis(100),
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let connected = connected_to(&cluster, leader, &setup.pipeline);
        let (rows_grew, rows_watch) = watch_rows(&setup.pg_schema).await?;
        let (plain_grew, plain_watch) = watch_counter(delivered.clone());
        let stopped = Instant::now();
        tokio::task::block_in_place(|| {
            if crash {
                cluster.kill(leader)
            } else {
                cluster.stop(leader)
            }
        });
        let gone = Instant::now();
        // The flow is watched for a while after the node is gone: what a
        // consumer had prefetched keeps it busy for a moment, and its pause
        // comes when that runs out before the new leader delivers.
        tokio::time::sleep(WATCH).await;
        let until = Instant::now();
        let daemon_pause =
            outage(&rows_grew.lock().unwrap(), stopped, gone, until).ok_or_else(|| {
                anyhow::anyhow!("the daemon wrote nothing within {WATCH:?} of the node's loss")
            })?;
        let plain_pause =
            outage(&plain_grew.lock().unwrap(), stopped, gone, until).ok_or_else(|| {
                anyhow::anyhow!(
                    "the plain consumer got nothing within {WATCH:?} of the node's loss"
                )
            })?;
        println!(
            "round {}: leader node {leader} {} ({} ms until the node was gone); \
             daemon ({}): longest pause {} ms, from {} ms after the stop began; \
             plain consumer ({}): longest pause {} ms, from {} ms",
            round + 1,
            if crash {
                "killed (SIGKILL)"
            } else {
                "stopped (`rabbitmqctl stop`)"
            },
            (gone - stopped).as_millis(),
            if connected.0 {
                "connected to it"
            } else {
                "on another node"
            },
            daemon_pause.0.as_millis(),
            daemon_pause.1.as_millis(),
            if connected.1 {
                "connected to it"
            } else {
                "on another node"
            },
            plain_pause.0.as_millis(),
            plain_pause.1.as_millis(),
        );
        let (daemon_times, plain_times) = if crash {
            (&mut crash_daemon, &mut crash_plain)
        } else {
            (&mut daemon_times, &mut plain_times)
        };
        daemon_times.push(daemon_pause.0.as_secs_f64());
        plain_times.push(plain_pause.0.as_secs_f64());
        rows_watch.abort();
        plain_watch.abort();
        publisher.abort();
        plain.abort();
        tokio::task::block_in_place(|| cluster.restart(leader));
        delete_queue(&urls[(leader + 1) % NODES], &plain_queue).await;
    }
    for (how, daemon, plain) in [
        ("stopped", &daemon_times, &plain_times),
        ("killed", &crash_daemon, &crash_plain),
    ] {
        println!(
            "failover, leader {how}: longest pause in progress: daemon median {:.2} s, max {:.2} s; plain consumer median {:.2} s, max {:.2} s ({rounds} rounds)",
            median(daemon),
            max(daemon),
            median(plain),
            max(plain),
        );
    }
    daemon.stop_cleanly();
    db.drop_now().await?;
    let _ = std::fs::remove_dir_all(&setup.dir);
    drop(cluster);
    Ok(())
}

/// The instants at which a count grew.
type Progress = Arc<Mutex<Vec<Instant>>>;

/// Watches the rows of `<schema>.cdr` grow (every 5 ms, on a connection of
/// its own).
async fn watch_rows(schema: &str) -> anyhow::Result<(Progress, JoinHandle<()>)> {
    let (client, connection) = tokio_postgres::connect(&postgres_url(), NoTls).await?;
    tokio::spawn(connection);
    let sql = format!("SELECT count(*) FROM {schema}.cdr");
    let grew = Progress::default();
    let progress = grew.clone();
    let task = tokio::spawn(async move {
        let mut last = -1i64;
        loop {
            if let Ok(row) = client.query_one(&sql, &[]).await {
                let n: i64 = row.get(0);
                if n > last {
                    progress.lock().unwrap().push(Instant::now());
                    last = n;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    Ok((grew, task))
}

/// Watches a counter grow (every 2 ms).
fn watch_counter(counter: Arc<AtomicU64>) -> (Progress, JoinHandle<()>) {
    let grew = Progress::default();
    let progress = grew.clone();
    let task = tokio::spawn(async move {
        let mut last = u64::MAX;
        loop {
            let n = counter.load(Ordering::SeqCst);
            if n != last {
                progress.lock().unwrap().push(Instant::now());
                last = n;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    (grew, task)
}

/// The outage a stop caused, from the instants of progress: the longest
/// pause between `stopped` (the stop command) and `until`, and when it began
/// (from `stopped`). `None` when nothing progressed after the node was `gone`.
fn outage(
    progress: &[Instant],
    stopped: Instant,
    gone: Instant,
    until: Instant,
) -> Option<(Duration, Duration)> {
    progress.iter().find(|&&t| t > gone && t <= until)?;
    let mut previous = stopped;
    let mut longest = (Duration::ZERO, Duration::ZERO);
    for &t in progress.iter().filter(|&&t| t > stopped && t <= until) {
        if t - previous > longest.0 {
            longest = (t - previous, previous - stopped);
        }
        previous = t;
    }
    Some(longest)
}

/// Declares a quorum queue through the node at `url` (which then leads it),
/// bound to `exchange` like the daemon's queue.
async fn declare_plain(url: &str, queue: &str, exchange: &str) -> anyhow::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "cdr.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let _ = connection.close(200, "declared".into()).await;
    Ok(())
}

async fn delete_queue(url: &str, queue: &str) {
    if let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "deleted".into()).await;
    }
}

/// A plain consumer: from a random node, to the next one as soon as it loses
/// it; counts what it gets.
async fn plain_consumer(urls: Vec<String>, queue: String, delivered: Arc<AtomicU64>) {
    let mut node = std::process::id() as usize + queue.len();
    loop {
        node += 1;
        let url = &urls[node % urls.len()];
        let Ok(connection) = Connection::connect(
            url,
            ConnectionProperties::default().with_connection_name("plain consumer".into()),
        )
        .await
        else {
            continue;
        };
        let consumed = async {
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(2000, lapin::options::BasicQosOptions::default())
                .await?;
            let mut consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "plain".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            while let Some(delivery) = consumer.next().await {
                let delivery = delivery?;
                delivered.fetch_add(1, Ordering::SeqCst);
                delivery.ack(BasicAckOptions::default()).await?;
            }
            anyhow::Ok(())
        };
        let _ = consumed.await;
    }
}

/// Whether the daemon's connection and the plain consumer's are on node
/// `node` (by the server port they connected to).
fn connected_to(cluster: &RabbitCluster, node: usize, pipeline: &str) -> (bool, bool) {
    let port = cluster.node(node).amqp_port.to_string();
    let out = cluster
        .node(node)
        .ctl(&[
            "list_connections",
            "port",
            "client_properties",
            "--no-table-headers",
            "--quiet",
        ])
        .unwrap_or_default();
    let on_it = |name: &str| {
        out.lines()
            .any(|line| line.starts_with(&format!("{port}\t")) && line.contains(name))
    };
    (
        on_it(&format!("sluice {pipeline}")),
        on_it("plain consumer"),
    )
}
