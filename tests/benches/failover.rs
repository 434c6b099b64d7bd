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
//!   (`rabbitmqctl stop`), and the bench polls every 10 ms for the daemon's
//!   next row in Postgres and the plain consumer's next delivery;
//! - the node is started again and the cluster waits for it.
//!
//! Whether each was connected to the stopped node is printed too: a consumer
//! on another node only waits for the election, one on the stopped node also
//! reconnects.
//!
//! `cargo build --release -p sluice && cargo bench -p sluice-tests --bench failover`;
//! `SLUICE_BENCH_ROUNDS` (default 5).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use sluice_tests::cluster::{NODES, RabbitCluster, publish};
use sluice_tests::daemon::{Daemon, Setup};
use sluice_tests::{TestSchema, cdr_json};

use common::{daemon_binary, env_usize, max, median};

/// How long one side may take to resume before the round is a failure.
const LIMIT: Duration = Duration::from_secs(90);

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
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
    for round in 0..rounds {
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
        let (rows_at_stop, plain_at_stop) = (
            db.count_or_zero("cdr").await,
            delivered.load(Ordering::SeqCst),
        );
        let stopped = Instant::now();
        tokio::task::block_in_place(|| cluster.stop(leader));
        let stop_took = stopped.elapsed();
        let (mut daemon_took, mut plain_took) = (None, None);
        while (daemon_took.is_none() || plain_took.is_none()) && stopped.elapsed() < LIMIT {
            if daemon_took.is_none() && db.count_or_zero("cdr").await > rows_at_stop {
                daemon_took = Some(stopped.elapsed());
            }
            if plain_took.is_none() && delivered.load(Ordering::SeqCst) > plain_at_stop {
                plain_took = Some(stopped.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let daemon_took = daemon_took
            .ok_or_else(|| anyhow::anyhow!("the daemon wrote no row within {LIMIT:?}"))?;
        let plain_took = plain_took
            .ok_or_else(|| anyhow::anyhow!("the plain consumer got nothing within {LIMIT:?}"))?;
        println!(
            "round {}: leader node {leader} stopped ({} ms to stop); daemon {}: first row after {} ms; plain consumer {}: first delivery after {} ms",
            round + 1,
            stop_took.as_millis(),
            if connected.0 { "on it" } else { "elsewhere" },
            daemon_took.as_millis(),
            if connected.1 { "on it" } else { "elsewhere" },
            plain_took.as_millis(),
        );
        daemon_times.push(daemon_took.as_secs_f64());
        plain_times.push(plain_took.as_secs_f64());
        publisher.abort();
        plain.abort();
        tokio::task::block_in_place(|| cluster.restart(leader));
        delete_queue(&urls[(leader + 1) % NODES], &plain_queue).await;
    }
    println!(
        "failover, leader stop to first row written: daemon median {:.2} s, max {:.2} s; plain consumer median {:.2} s, max {:.2} s ({rounds} rounds)",
        median(&daemon_times),
        max(&daemon_times),
        median(&plain_times),
        max(&plain_times),
    );
    daemon.stop_cleanly();
    db.drop_now().await?;
    let _ = std::fs::remove_dir_all(&setup.dir);
    drop(cluster);
    Ok(())
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
