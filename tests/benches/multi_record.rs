//! A classic queue carrying 100 CDRs per message (NDJSON), drained into Postgres
//! by the daemon (json-source with `records = "ndjson"`, postgres-writer) and, in
//! the same run, by a plain client doing the same job: a lapin consumer that
//! splits each message into lines, parses them with serde_json, lands every 10
//! messages (1,000 rows) with one binary COPY into a keyed table, and acks them
//! with `multiple`. Both report rows per second, publish excluded.
//!
//! Each drain has its own fresh queue (classic, persistent messages published
//! with confirms) and its own schema. The daemon's time runs from its start
//! until the table holds every row and the queue is empty (startup included).
//!
//! Run with the dev profile (the host then runs its own crates unoptimised, so
//! the daemon's figure is a floor):
//! `cargo build -p sluice && SLUICE_BENCH_BIN=target/debug/sluice cargo bench
//! --profile dev -p sluice-tests --bench multi_record`.
//! `SLUICE_BENCH_MESSAGES` (default 1,000 messages, 100,000 rows) and
//! `SLUICE_BENCH_REPEATS` (default 2) change its size.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sluice_tests::daemon::{Broker, Daemon, Setup, json_to_toml_inline};
use sluice_tests::{TestSchema, amqp_url, cdr_json, cdr_source_config, postgres_url};
use tokio_postgres::NoTls;
use tokio_postgres::binary_copy::BinaryCopyInWriter;

use common::{CDR_COLUMNS, CDR_TYPES, daemon_binary, env_usize, parse_cdr, rate, thousands};

const RECORDS_PER_MESSAGE: u64 = 100;
/// Messages per COPY (and per ack) of the plain client: 1,000 rows, the
/// daemon's default batch of rows.
const PLAIN_BATCH: usize = 10;
const PREFETCH: u16 = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run().await
}

async fn run() -> anyhow::Result<()> {
    let messages = env_usize("SLUICE_BENCH_MESSAGES", 1000);
    let repeats = env_usize("SLUICE_BENCH_REPEATS", 2);
    let rows = messages as u64 * RECORDS_PER_MESSAGE;
    let bin = daemon_binary()?;
    println!(
        "multi_record: {messages} messages of {RECORDS_PER_MESSAGE} CDRs (NDJSON) per queue, \
         {rows} rows, {repeats} repetitions"
    );
    println!("daemon: {}", bin.display());
    println!("started {}", common::machine_line());
    sluice_tests::plugins_dir();
    let bodies: Vec<Vec<u8>> = (0..messages as u64)
        .map(|m| {
            let lines: Vec<String> = (0..RECORDS_PER_MESSAGE)
                .map(|r| cdr_json(m * RECORDS_PER_MESSAGE + r))
                .collect();
            (lines.join("\n") + "\n").into_bytes()
        })
        .collect();
    println!(
        "message body: {} bytes on average",
        bodies.iter().map(Vec::len).sum::<usize>() / bodies.len()
    );

    let mut results = Vec::new();
    for rep in 0..repeats {
        let plain = plain_drain(&bodies, rows).await?;
        let sluice = sluice_drain(&bin, &bodies, rows).await?;
        println!(
            "repetition {}: plain {} rows/s ({:.2} s), sluice {} rows/s ({:.2} s)",
            rep + 1,
            thousands(rate(rows, plain)),
            plain.as_secs_f64(),
            thousands(rate(rows, sluice)),
            sluice.as_secs_f64()
        );
        results.push((plain, sluice));
    }
    let line = "-".repeat(90);
    println!("\n{line}\nRESULTS: {rows} rows in {messages} messages per drain\n{line}");
    for (i, (plain, sluice)) in results.iter().enumerate() {
        let (p, s) = (rate(rows, *plain), rate(rows, *sluice));
        println!(
            "repetition {}: plain consumer + COPY {:>8} rows/s; sluice (start to drained) {:>8} rows/s = {:.0}% of plain",
            i + 1,
            thousands(p),
            thousands(s),
            s / p * 100.0
        );
    }
    println!("\nfinished {}", common::machine_line());
    Ok(())
}

async fn publish(broker: &Broker, setup: &Setup, bodies: &[Vec<u8>]) -> anyhow::Result<()> {
    broker.prepare(setup).await;
    let messages = bodies.iter().enumerate().map(|(i, b)| {
        let props = BasicProperties::default()
            .with_content_type("application/x-ndjson".into())
            .with_message_id(format!("batch-{i}").into());
        (b.clone(), props)
    });
    broker.publish_messages(&setup.exchange, messages).await?;
    ensure!(broker.ready(&setup.queue).await as usize == bodies.len());
    Ok(())
}

async fn plain_drain(bodies: &[Vec<u8>], rows: u64) -> anyhow::Result<Duration> {
    let setup = Setup::new("bench-mr-plain");
    let broker = Broker::connect().await;
    let db = TestSchema::create_named(&setup.pg_schema).await?;
    db.client
        .batch_execute(&format!(
            "CREATE TABLE {s}.cdr (call_id text PRIMARY KEY, caller text NOT NULL, \
             callee text NOT NULL, started_at timestamptz NOT NULL, duration_s integer NOT NULL, \
             cell text, cost numeric, call_type text, roaming boolean)",
            s = db.name
        ))
        .await?;
    publish(&broker, &setup, bodies).await?;

    let started = Instant::now();
    let (client, connection) = tokio_postgres::connect(&postgres_url(), NoTls).await?;
    tokio::spawn(connection);
    let statement = client
        .prepare(&format!(
            "COPY {}.cdr ({CDR_COLUMNS}) FROM STDIN (FORMAT binary)",
            db.name
        ))
        .await?;
    let amqp = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = amqp.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions { global: false })
        .await?;
    let mut consumer = channel
        .basic_consume(
            setup.queue.as_str().into(),
            "bench-mr-plain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut pending = Vec::new();
    let mut received = 0;
    while received < bodies.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await
            .context("no delivery for 60 s")?
            .context("the consumer ended")??;
        received += 1;
        pending.push(delivery);
        if pending.len() == PLAIN_BATCH || received == bodies.len() {
            let sink = client.copy_in(&statement).await?;
            let writer = BinaryCopyInWriter::new(sink, &CDR_TYPES);
            futures::pin_mut!(writer);
            for d in &pending {
                for line in d.data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    let r = parse_cdr(line).map_err(anyhow::Error::msg)?;
                    writer.as_mut().write(&r.values()).await?;
                }
            }
            writer.finish().await?;
            let last = pending.last().expect("a batch").delivery_tag;
            channel
                .basic_ack(last, BasicAckOptions { multiple: true })
                .await?;
            pending.clear();
        }
    }
    let elapsed = started.elapsed();
    let _ = amqp.close(200, "done".into()).await;
    ensure!(db.count("cdr").await? as u64 == rows, "plain: rows missing");
    broker.cleanup(&setup).await;
    db.drop_now().await?;
    let _ = std::fs::remove_dir_all(&setup.dir);
    Ok(elapsed)
}

async fn sluice_drain(
    bin: &std::path::Path,
    bodies: &[Vec<u8>],
    rows: u64,
) -> anyhow::Result<Duration> {
    let mut setup = Setup::new("bench-mr-sluice");
    let mut config: serde_json::Value = serde_json::from_str(&cdr_source_config(1, ""))?;
    config["records"] = "ndjson".into();
    setup.source.1 = json_to_toml_inline(&config.to_string());
    setup.write_config("");
    let broker = Broker::connect().await;
    let db = TestSchema::create_named(&setup.pg_schema).await?;
    publish(&broker, &setup, bodies).await?;

    let started = Instant::now();
    let mut daemon = Daemon::start(bin.to_str().context("a UTF-8 path")?, &setup, "daemon");
    let limit = Duration::from_secs(600);
    let elapsed = loop {
        if started.elapsed() > limit {
            bail!("not drained after {limit:?}; log:\n{}", daemon.log());
        }
        if let Some(status) = daemon.exited() {
            bail!("the daemon exited ({status}); log:\n{}", daemon.log());
        }
        if broker.ready(&setup.queue).await == 0 && db.count_or_zero("cdr").await as u64 >= rows {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .context("the daemon did not stop within 30 s of SIGTERM")?;
    ensure!(status.success(), "the daemon exited with {status}");
    let dead = broker.ready(&setup.dead_queue).await;
    ensure!(dead == 0, "{dead} dead letters");
    ensure!(
        db.count("cdr").await? as u64 == rows,
        "sluice: rows missing"
    );
    broker.cleanup(&setup).await;
    db.drop_now().await?;
    let _ = std::fs::remove_dir_all(&setup.dir);
    Ok(elapsed)
}
