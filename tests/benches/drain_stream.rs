//! Draining a RabbitMQ stream backlog into Postgres, beside the two plain
//! clients it is made of, in the same run on the same broker and database.
//!
//! Publishes N CDR messages (2,000,000 by default) to a fresh stream, and N more
//! spread over four partition streams, with the stream client (batches of 1000,
//! confirmed). Then, timing each:
//!
//! - a plain stream reader (the stream protocol, from the first offset, no
//!   processing) reads the N messages;
//! - a plain keyed binary COPY writes the N parsed rows (serde, batches of 1000,
//!   one transaction each) into a table with the same primary key;
//! - the daemon (`SLUICE_BENCH_BIN`, default target/release/sluice) drains the
//!   stream into a fresh table with json-source and postgres-writer, timed from
//!   process start until every row is in the table (its /metrics counts the
//!   settled messages; the table is counted at the end); peak RSS (VmHWM) and
//!   CPU per message are read just before SIGTERM;
//! - the same daemon on the four partitions (one consumer each);
//! - the redelivery path: a daemon under another consumer name reads the same
//!   stream again into the table that already holds every key.
//!
//! `cargo build --release -p sluice && cargo bench -p sluice-tests --bench drain_stream`;
//! `SLUICE_BENCH_MESSAGES` shrinks it for a smoke run.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use futures::StreamExt;
use rabbitmq_stream_client::Environment;
use rabbitmq_stream_client::types::OffsetSpecification;
use sluice_tests::daemon::{Daemon, Setup, http_get};
use sluice_tests::streams::Streams;
use sluice_tests::{TestSchema, cdr_json};
use tokio_postgres::binary_copy::BinaryCopyInWriter;

use common::{
    CDR_TYPES, daemon_binary, env_usize, parse_cdr, process_cpu, rate, rss_kib, thousands,
};

/// The customer's average load.
const TARGET: f64 = 116_000.0;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run().await
}

struct DaemonRun {
    elapsed: Duration,
    vm_hwm_kib: u64,
    cpu: Duration,
}

async fn run() -> anyhow::Result<()> {
    let n = env_usize("SLUICE_BENCH_MESSAGES", 2_000_000);
    let bin = daemon_binary()?;
    println!("# drain_stream: {n} CDR messages, daemon {}", bin.display());
    println!("# {}", common::machine_line());
    let streams = Streams::connect().await;
    let setup = Setup::new("drain-stream");
    let single = format!("{}.stream", setup.pipeline);
    let parts: Vec<String> = (0..4).map(|p| format!("{single}-{p}")).collect();

    let started = Instant::now();
    streams.create(&single).await;
    streams.publish(&single, (0..n as u64).map(cdr_json)).await;
    let publish = started.elapsed();
    println!(
        "publish to one stream (stream client, batches of 1000, confirmed): {} msg/s",
        thousands(rate(n as u64, publish))
    );
    let per = n / 4;
    for (p, stream) in parts.iter().enumerate() {
        streams.create(stream).await;
        let from = (p * per) as u64;
        streams
            .publish(stream, (from..from + per as u64).map(cdr_json))
            .await;
    }

    let read = plain_read(&single, n).await?;
    let read_rate = rate(n as u64, read);
    println!(
        "plain stream reader, from the first offset: {} msg/s",
        thousands(read_rate)
    );

    let copy_db = TestSchema::create().await?;
    let copy = plain_copy(&copy_db, n).await?;
    let copy_rate = rate(n as u64, copy);
    println!(
        "plain keyed binary COPY, batches of 1000: {} rows/s",
        thousands(copy_rate)
    );
    copy_db.drop_now().await?;
    let plain = read_rate.min(copy_rate);

    let db = TestSchema::create_named(&setup.pg_schema).await?;
    let queue = |name: &str, extra: &str| {
        format!(
            r#"{{ type = "stream", name = "{name}", connection = "streams", declare = false{extra} }}"#
        )
    };
    setup.write_stream_config("", &queue(&single, ""));
    let one = drain(&bin, &setup, &db, n, "one").await?;
    report("daemon, one stream", n, &one, plain);

    // The redelivery path: every key is stored already.
    setup.write_stream_config("", &queue(&single, ", consumer_name = \"bench-again\""));
    let again = drain(&bin, &setup, &db, n, "again").await?;
    report(
        "daemon, the same stream again (every key stored: redelivery path)",
        n,
        &again,
        plain,
    );

    db.client
        .batch_execute(&format!("TRUNCATE {}.cdr", db.name))
        .await?;
    setup.write_stream_config("", &queue(&single, ", partitions = 4"));
    let four = drain(&bin, &setup, &db, per * 4, "four").await?;
    report("daemon, four partitions", per * 4, &four, plain);

    db.drop_now().await?;
    streams.delete(&single).await;
    for p in &parts {
        streams.delete(p).await;
    }
    let _ = std::fs::remove_dir_all(&setup.dir);
    Ok(())
}

fn report(what: &str, n: usize, run: &DaemonRun, plain: f64) {
    let r = rate(n as u64, run.elapsed);
    println!(
        "{what}: {} msg/s start to last row ({:.0} % of the slower plain client; target {} msg/s: {}), peak RSS {} MiB, CPU {:.1} µs/message",
        thousands(r),
        100.0 * r / plain,
        thousands(TARGET),
        if r >= TARGET { "met" } else { "not met" },
        run.vm_hwm_kib / 1024,
        run.cpu.as_secs_f64() * 1e6 / n as f64,
    );
}

/// Reads `n` messages of `stream` from its start with the crate's consumer.
async fn plain_read(stream: &str, n: usize) -> anyhow::Result<Duration> {
    let env = Environment::builder().build().await?;
    let started = Instant::now();
    let mut consumer = env
        .consumer()
        .offset(OffsetSpecification::First)
        .build(stream)
        .await?;
    let mut seen = 0;
    let mut bytes = 0usize;
    while seen < n {
        let delivery = tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await
            .context("the plain reader waited 60 s")?
            .context("the stream ended")??;
        bytes += delivery.message().data().map_or(0, <[u8]>::len);
        seen += 1;
    }
    let elapsed = started.elapsed();
    ensure!(bytes > 0);
    let _ = consumer.handle().close().await;
    Ok(elapsed)
}

/// Parses `n` CDRs and COPYs them in binary into a keyed table, 1000 a
/// transaction.
async fn plain_copy(db: &TestSchema, n: usize) -> anyhow::Result<Duration> {
    db.client
        .batch_execute(&format!(
            "CREATE TABLE {s}.cdr (call_id text PRIMARY KEY, caller text NOT NULL, callee text NOT NULL, \
             started_at timestamptz NOT NULL, duration_s integer NOT NULL, cell text, cost numeric, \
             call_type text, roaming boolean)",
            s = db.name
        ))
        .await?;
    let bodies: Vec<String> = (0..n as u64).map(cdr_json).collect();
    let started = Instant::now();
    for chunk in bodies.chunks(1000) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|b| parse_cdr(b.as_bytes()).map_err(anyhow::Error::msg))
            .collect::<Result<_, _>>()?;
        db.client.batch_execute("BEGIN").await?;
        let sink = db
            .client
            .copy_in(&format!(
                "COPY {}.cdr (call_id, caller, callee, started_at, duration_s, cell, cost, call_type, roaming) FROM STDIN (FORMAT binary)",
                db.name
            ))
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &CDR_TYPES);
        futures::pin_mut!(writer);
        for r in &rows {
            writer.as_mut().write(&r.values()).await?;
        }
        writer.finish().await?;
        db.client.batch_execute("COMMIT").await?;
    }
    Ok(started.elapsed())
}

/// Starts the daemon and waits until it settled `n` messages and the table
/// holds `n` rows.
async fn drain(
    bin: &std::path::Path,
    setup: &Setup,
    db: &TestSchema,
    n: usize,
    log: &str,
) -> anyhow::Result<DaemonRun> {
    let started = Instant::now();
    let mut daemon = Daemon::start(&bin.to_string_lossy(), setup, log);
    let port = setup.admin_port;
    loop {
        if settled(port, &setup.pipeline).await >= n as f64 {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(1200),
            "not drained after 20 minutes; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let vm_hwm_kib = rss_kib(daemon.pid()).map_or(0, |(_, hwm)| hwm);
    let cpu = process_cpu(daemon.pid()).unwrap_or_default();
    daemon.stop_cleanly();
    let rows = db.count("cdr").await?;
    let distinct: i64 = db
        .client
        .query_one(
            &format!("SELECT count(DISTINCT call_id) FROM {}.cdr", db.name),
            &[],
        )
        .await?
        .get(0);
    ensure!(
        rows >= n as i64 && distinct == rows,
        "{rows} rows, {distinct} distinct, {n} expected"
    );
    Ok(DaemonRun {
        elapsed,
        vm_hwm_kib,
        cpu,
    })
}

/// `sluice_messages_acked_total` of the pipeline (0 before the daemon answers).
async fn settled(port: u16, pipeline: &str) -> f64 {
    let Some((_, text)) = http_get(port, "/metrics").await else {
        return 0.0;
    };
    text.lines()
        .filter(|l| {
            l.starts_with("sluice_messages_acked_total")
                && l.contains(&format!("pipeline=\"{pipeline}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
