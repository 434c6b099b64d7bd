//! Draining a backlog from RabbitMQ into Postgres, beside a plain consumer that only
//! acks, on the same broker in the same run.
//!
//! Each repetition publishes 200,000 persistent CDR messages (with confirms) to a
//! fresh queue and drains it with a plain lapin consumer (prefetch 2000, an ack
//! with `multiple` every 500 messages); then publishes 200,000 more to another
//! fresh queue and starts the real `sluice` binary (target/release/sluice) with the
//! configuration the daemon tests use (2 consumers, batches of 1000, prefetch 2000:
//! the defaults), timing from the process start until the table holds every row
//! and the queue is empty. Startup is included; the rate from the first row seen
//! to the last is reported too, with the daemon's peak RSS (`VmHWM`) read just
//! before SIGTERM. The pair runs twice, in alternating order.
//!
//! Build the daemon first: `cargo build --release -p sluice`, then
//! `cargo bench -p sluice-tests --bench drain_backlog`.
//! `SLUICE_BENCH_MESSAGES` and `SLUICE_BENCH_REPEATS` shrink it for a smoke run;
//! `SLUICE_BENCH_BIN` runs another daemon binary; `SLUICE_BENCH_PIPELINE_EXTRA`
//! adds lines to the pipeline's configuration (experiments, e.g. `consumers = 1`).

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use sluice_tests::daemon::{Broker, Daemon, Setup};
use sluice_tests::{TestSchema, amqp_url, cdr_json};

use common::{
    cpu_by_process, cpu_delta, daemon_binary, env_usize, machine_cpu, process_cpu, rate, rss_kib,
    thousands,
};

/// The processes whose CPU time each drain reports.
const WATCHED: &[&str] = &["beam.smp", "postgres"];

const PREFETCH: u16 = 2000;
const ACK_EVERY: u64 = 500;
/// The target: Sluice drains at 90% or more of the plain consumer's rate.
const TARGET_SHARE: f64 = 0.90;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run().await
}

struct PlainRun {
    publish: Duration,
    drain: Duration,
    /// Share of the machine's CPU busy during the drain (all processes).
    machine_busy: f64,
    /// CPU time of the plain consumer (this process), the broker and Postgres.
    consumer_cpu: Duration,
    broker_cpu: Duration,
    postgres_cpu: Duration,
}

struct SluiceRun {
    publish: Duration,
    /// Process start until every row is in the table and the queue is empty.
    total: Duration,
    /// Process start until the first rows were seen in the table.
    first_row: Duration,
    rows_at_first: usize,
    /// First rows seen until the last.
    steady: Duration,
    vm_hwm_kib: u64,
    max_rss_kib: u64,
    /// CPU time the daemon used (user + system), start to drained.
    daemon_cpu: Duration,
    machine_busy: f64,
    broker_cpu: Duration,
    postgres_cpu: Duration,
    warnings: usize,
}

async fn run() -> anyhow::Result<()> {
    let n = env_usize("SLUICE_BENCH_MESSAGES", 200_000);
    let repeats = env_usize("SLUICE_BENCH_REPEATS", 2);
    let bin = daemon_binary()?;
    println!("drain_backlog: {n} CDR messages per queue, {repeats} repetitions of the pair");
    println!("daemon: {}", bin.display());
    println!("started {}", common::machine_line());
    // Build (or check) the plugins before anything is timed.
    let started = Instant::now();
    let dir = sluice_tests::plugins_dir();
    println!(
        "plugins: {} ({:.1} s)",
        dir.display(),
        started.elapsed().as_secs_f64()
    );

    let mut pairs = Vec::new();
    for rep in 0..repeats {
        // Alternate the order so that neither side always runs on a warmer broker.
        let sluice_first = rep % 2 == 1;
        println!(
            "\nrepetition {} of {repeats} ({} first)",
            rep + 1,
            if sluice_first { "sluice" } else { "plain" }
        );
        let (plain, sluice) = if sluice_first {
            let s = sluice_drain(&bin, n).await?;
            let p = plain_drain(n).await?;
            (p, s)
        } else {
            let p = plain_drain(n).await?;
            let s = sluice_drain(&bin, n).await?;
            (p, s)
        };
        pairs.push((plain, sluice));
    }

    let line = "-".repeat(100);
    println!("\n{line}\nRESULTS: {n} messages per drain\n{line}");
    for (i, (p, s)) in pairs.iter().enumerate() {
        let plain_rate = rate(n as u64, p.drain);
        let total_rate = rate(n as u64, s.total);
        let steady_rate = rate((n - s.rows_at_first) as u64, s.steady);
        println!("repetition {}:", i + 1);
        println!(
            "  publish (persistent, confirms): plain queue {} msg/s, sluice queue {} msg/s",
            thousands(rate(n as u64, p.publish)),
            thousands(rate(n as u64, s.publish))
        );
        println!(
            "  plain lapin consumer (ack only):       {:>8} msg/s ({:.2} s)",
            thousands(plain_rate),
            p.drain.as_secs_f64()
        );
        println!(
            "  sluice, start to drained (total):      {:>8} msg/s ({:.2} s) = {:.0}% of plain  target ≥{:.0}%: {}",
            thousands(total_rate),
            s.total.as_secs_f64(),
            total_rate / plain_rate * 100.0,
            TARGET_SHARE * 100.0,
            if total_rate >= TARGET_SHARE * plain_rate {
                "MET"
            } else {
                "MISSED"
            }
        );
        println!(
            "  sluice, first row to last (steady):    {:>8} msg/s ({:.2} s, first rows after {:.2} s) = {:.0}% of plain",
            thousands(steady_rate),
            s.steady.as_secs_f64(),
            s.first_row.as_secs_f64(),
            steady_rate / plain_rate * 100.0
        );
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        println!(
            "  CPU µs/msg, plain drain:  consumer {:.1}, broker {:.1}, postgres {:.1}; machine {:.0}% busy",
            us(p.consumer_cpu),
            us(p.broker_cpu),
            us(p.postgres_cpu),
            p.machine_busy * 100.0
        );
        println!(
            "  CPU µs/msg, sluice drain: daemon {:.1} ({:.0}% of one core), broker {:.1}, postgres {:.1}; machine {:.0}% busy",
            us(s.daemon_cpu),
            s.daemon_cpu.as_secs_f64() / s.total.as_secs_f64() * 100.0,
            us(s.broker_cpu),
            us(s.postgres_cpu),
            s.machine_busy * 100.0
        );
        println!(
            "  sluice peak RSS (VmHWM) {:.1} MiB; highest VmRSS sampled {:.1} MiB; {} warning/error log lines",
            s.vm_hwm_kib as f64 / 1024.0,
            s.max_rss_kib as f64 / 1024.0,
            s.warnings
        );
    }
    println!("\nfinished {}", common::machine_line());
    Ok(())
}

/// A fresh queue with `n` CDR messages in it, published persistent with confirms.
async fn backlog(broker: &Broker, setup: &Setup, n: usize) -> Duration {
    broker.prepare(setup).await;
    let t = Instant::now();
    broker.publish(setup, (0..n as u64).map(cdr_json)).await;
    let elapsed = t.elapsed();
    let ready = broker.ready(&setup.queue).await as usize;
    assert_eq!(ready, n, "the backlog holds every message");
    elapsed
}

/// The plain consumer: prefetch 2000, `ack(multiple)` every 500, nothing else.
async fn plain_drain(n: usize) -> anyhow::Result<PlainRun> {
    let setup = Setup::new("bench-plain");
    let broker = Broker::connect().await;
    let publish = backlog(&broker, &setup, n).await;
    println!(
        "  plain: published {n} in {:.1} s; draining",
        publish.as_secs_f64()
    );

    let procs_before = cpu_by_process(WATCHED);
    let own_before = process_cpu(std::process::id()).unwrap_or_default();
    let cpu_before = machine_cpu();
    let started = Instant::now();
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions { global: false })
        .await?;
    let mut consumer = channel
        .basic_consume(
            setup.queue.as_str().into(),
            "bench-plain".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut received = 0u64;
    let mut last_tag = 0;
    while received < n as u64 {
        let delivery = tokio::time::timeout(Duration::from_secs(60), consumer.next())
            .await
            .context("no delivery for 60 s")?
            .context("the consumer ended")??;
        received += 1;
        last_tag = delivery.delivery_tag;
        if received.is_multiple_of(ACK_EVERY) {
            channel
                .basic_ack(last_tag, BasicAckOptions { multiple: true })
                .await?;
        }
    }
    if !received.is_multiple_of(ACK_EVERY) {
        channel
            .basic_ack(last_tag, BasicAckOptions { multiple: true })
            .await?;
    }
    let drain = started.elapsed();
    let machine_busy = busy_share(cpu_before, machine_cpu());
    let consumer_cpu = process_cpu(std::process::id())
        .unwrap_or_default()
        .saturating_sub(own_before);
    let procs_after = cpu_by_process(WATCHED);
    let broker_cpu = cpu_delta(&procs_before, &procs_after, "beam.smp");
    let postgres_cpu = cpu_delta(&procs_before, &procs_after, "postgres");
    let _ = connection.close(200, "done".into()).await;
    let left = broker.ready(&setup.queue).await;
    ensure!(left == 0, "{left} messages left in the plain queue");
    println!(
        "  plain: drained in {:.2} s ({} msg/s)",
        drain.as_secs_f64(),
        thousands(rate(n as u64, drain))
    );
    broker.cleanup(&setup).await;
    let _ = std::fs::remove_dir_all(&setup.dir);
    Ok(PlainRun {
        publish,
        drain,
        machine_busy,
        consumer_cpu,
        broker_cpu,
        postgres_cpu,
    })
}

/// The real daemon draining a backlog into a fresh schema.
async fn sluice_drain(bin: &std::path::Path, n: usize) -> anyhow::Result<SluiceRun> {
    let setup = Setup::new("bench-sluice");
    // For experiments only (e.g. `consumers = 1`); the reported figures use the
    // defaults.
    if let Ok(extra) = std::env::var("SLUICE_BENCH_PIPELINE_EXTRA") {
        println!("  sluice: pipeline settings added: {extra}");
        setup.write_config(&extra);
    }
    let db = TestSchema::create_named(&setup.pg_schema).await?;
    let broker = Broker::connect().await;
    let publish = backlog(&broker, &setup, n).await;
    println!(
        "  sluice: published {n} in {:.1} s; starting the daemon",
        publish.as_secs_f64()
    );

    let result = watch_daemon(bin, &setup, &db, &broker, n, publish).await;
    broker.cleanup(&setup).await;
    db.drop_now().await?;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&setup.dir);
    } else {
        println!("  (daemon log kept in {})", setup.dir.display());
    }
    result
}

async fn watch_daemon(
    bin: &std::path::Path,
    setup: &Setup,
    db: &TestSchema,
    broker: &Broker,
    n: usize,
    publish: Duration,
) -> anyhow::Result<SluiceRun> {
    let table = format!("{}.cdr", db.name);
    let procs_before = cpu_by_process(WATCHED);
    let cpu_before = machine_cpu();
    let started = Instant::now();
    let mut daemon = Daemon::start(bin.to_str().context("a UTF-8 path")?, setup, "daemon");
    let pid = daemon.pid();
    let mut first: Option<(Duration, usize)> = None;
    let mut max_rss = 0;
    let limit = Duration::from_secs(600);
    let total = loop {
        if started.elapsed() > limit {
            bail!("not drained after {limit:?}; log:\n{}", tail(&daemon.log()));
        }
        if let Some(status) = daemon.exited() {
            bail!(
                "the daemon exited ({status}); log:\n{}",
                tail(&daemon.log())
            );
        }
        if let Some((_, rss)) = rss_kib(pid) {
            max_rss = max_rss.max(rss);
        }
        if first.is_none() {
            // Cheap until the first rows land: an index-free EXISTS.
            let seen = db
                .client
                .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])
                .await
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false);
            if seen {
                let at = started.elapsed();
                first = Some((at, db.count("cdr").await? as usize));
            }
        } else {
            // The full count only once nothing is left ready in the queue: the
            // tail is at most two prefetch windows.
            let ready = broker.ready(&setup.queue).await;
            if ready == 0 && db.count("cdr").await? as usize >= n {
                break started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The rows are committed; their acks follow within milliseconds.
    let machine_busy = busy_share(cpu_before, machine_cpu());
    let daemon_cpu = process_cpu(pid).context("reading /proc/<pid>/stat")?;
    let procs_after = cpu_by_process(WATCHED);
    let broker_cpu = cpu_delta(&procs_before, &procs_after, "beam.smp");
    let postgres_cpu = cpu_delta(&procs_before, &procs_after, "postgres");
    let (hwm, rss) = rss_kib(pid).context("reading /proc/<pid>/status")?;
    max_rss = max_rss.max(rss);
    let count = db.count("cdr").await? as usize;
    ensure!(count == n, "{count} rows for {n} messages");
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .context("the daemon did not stop within 30 s of SIGTERM")?;
    ensure!(status.success(), "the daemon exited with {status}");
    // After a clean stop, anything unacked would be back in the queue.
    let left = broker.ready(&setup.queue).await;
    let dead = broker.ready(&setup.dead_queue).await;
    ensure!(
        left == 0 && dead == 0,
        "{left} messages left, {dead} dead-lettered"
    );
    let log = daemon.log();
    let warning_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    let warnings = warning_lines.len();
    for line in warning_lines.iter().take(10) {
        println!("  sluice log: {line}");
    }
    let (first_row, rows_at_first) = first.expect("set before the loop ends");
    println!(
        "  sluice: drained in {:.2} s ({} msg/s), first rows after {:.2} s, VmHWM {:.1} MiB",
        total.as_secs_f64(),
        thousands(rate(n as u64, total)),
        first_row.as_secs_f64(),
        hwm as f64 / 1024.0
    );
    Ok(SluiceRun {
        publish,
        total,
        first_row,
        rows_at_first,
        steady: total - first_row,
        vm_hwm_kib: hwm,
        max_rss_kib: max_rss,
        daemon_cpu,
        machine_busy,
        broker_cpu,
        postgres_cpu,
        warnings,
    })
}

/// The share of all cores that was busy between two `/proc/stat` readings.
fn busy_share(before: Option<(f64, f64)>, after: Option<(f64, f64)>) -> f64 {
    match (before, after) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) / (t1 - t0),
        _ => f64::NAN,
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
