//! Rows per second through the plugins, beside a plain Rust client in the same run.
//!
//! A stream of 200,000 CDR JSON messages (`cdr_json`, ~230 bytes, 9 fields, keyed
//! on the call id) goes:
//!
//! - through Sluice's runtime: `SourceInstance::decode` (json-source) then
//!   `WriterInstance::write` (postgres-writer) in batches of 1000 and 5000, into a
//!   fresh keyed table (the writer's fast path); the same with two source+writer
//!   pairs on two tokio tasks (half the stream each), as the daemon's two
//!   consumers; and again over the same keys (a redelivery: every row conflicts,
//!   so the writer takes its staging-table path);
//! - through a plain tokio-postgres client that parses the same JSON with serde
//!   into the nine typed values: binary COPY into an unkeyed table, binary COPY
//!   into the keyed table (1 and 2 connections), and staging COPY + `INSERT …
//!   SELECT … ON CONFLICT DO NOTHING` (fresh keys, and all conflicts).
//!
//! Every measurement runs `ROUNDS` times, interleaved (the order rotates each
//! round), with a `CHECKPOINT` between measurements; the report gives the median
//! and the range. The boundary cost is measured without Postgres: json-source
//! decoding in wasm through the runtime against the same code compiled natively,
//! and calls with empty batches.
//!
//! Run: `cargo bench -p sluice-tests --bench plugin_throughput`.
//! `SLUICE_BENCH_MESSAGES` and `SLUICE_BENCH_ROUNDS` shrink it for a smoke run;
//! `SLUICE_TEST_POSTGRES` points it at another Postgres.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use sluice::capabilities::Grants;
use sluice::capabilities::postgres::PostgresGrant;
use sluice::plugin_runtime::{
    LoadedPlugin, Message, PluginRuntime, RowBatch, SourceInstance, WriterInstance,
};
use sluice_plugin_sdk::Source as _;
use sluice_tests::{cdr_json, cdr_source_config, plugin, postgres_url, unique_name};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::{Client, NoTls, Statement};

use common::{
    CDR_COLUMNS, CDR_TYPES, Figures, env_usize, max, median, min, parse_cdr, rate, thousands,
};

/// The targets the issue sets for idempotent writes.
const TARGET_ROWS_PER_SEC: f64 = 116_000.0;
const TARGET_SHARE_OF_PLAIN: f64 = 0.70;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run().await
}

struct Bench {
    rt: Arc<PluginRuntime>,
    source: Arc<LoadedPlugin>,
    writer: Arc<LoadedPlugin>,
    /// The chaos test source, an echo for ordinary bodies.
    chaos: Arc<LoadedPlugin>,
    source_config: String,
    messages: Arc<Vec<Message>>,
    sdk_messages: Vec<sluice_plugin_sdk::Message>,
    admin: Client,
    n: usize,
}

#[derive(Clone, Copy, Debug)]
enum Group {
    PlainUnkeyed,
    PlainKeyed,
    PlainKeyed5000,
    PlainKeyed2Conns,
    PlainStagingFresh,
    Sluice1000,
    Sluice5000,
    Sluice2Workers,
    Boundary,
}

const GROUPS: [Group; 9] = [
    Group::PlainKeyed,
    Group::Sluice1000,
    Group::PlainUnkeyed,
    Group::Sluice5000,
    Group::PlainKeyed5000,
    Group::Sluice2Workers,
    Group::PlainKeyed2Conns,
    Group::PlainStagingFresh,
    Group::Boundary,
];

async fn run() -> anyhow::Result<()> {
    let n = env_usize("SLUICE_BENCH_MESSAGES", 200_000);
    let rounds = env_usize("SLUICE_BENCH_ROUNDS", 3);
    println!("plugin_throughput: {n} CDR messages, {rounds} rounds, interleaved");
    println!("started {}", common::machine_line());
    let rt = common::bench_runtime()?;
    let source = Arc::new(rt.load(&plugin("json-source")).await?);
    let writer = Arc::new(rt.load(&plugin("postgres-writer")).await?);
    let chaos = Arc::new(rt.load(&plugin("chaos-source")).await?);
    println!(
        "loaded {} ({:?}, {:.0} ms) and {} ({:?}, {:.0} ms)",
        source.info.label(),
        source.cache,
        source.load_time.as_secs_f64() * 1e3,
        writer.info.label(),
        writer.cache,
        writer.load_time.as_secs_f64() * 1e3
    );

    let bodies: Vec<String> = (0..n as u64).map(cdr_json).collect();
    let avg_len = bodies.iter().map(String::len).sum::<usize>() as f64 / n as f64;
    println!("message body: {avg_len:.0} bytes on average");
    let messages: Vec<Message> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| Message {
            body: b.as_bytes().to_vec(),
            exchange: "cdr".into(),
            routing_key: "cdr.voice".into(),
            headers: Vec::new(),
            content_type: Some("application/json".into()),
            content_encoding: None,
            message_id: Some(format!("m-{i}")),
            timestamp: None,
            redelivered: false,
        })
        .collect();
    let sdk_messages: Vec<sluice_plugin_sdk::Message> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            sluice_plugin_sdk::Message::new(b.as_bytes().to_vec())
                .with_exchange("cdr")
                .with_routing_key("cdr.voice")
                .with_content_type("application/json")
                .with_message_id(format!("m-{i}"))
        })
        .collect();
    drop(bodies);

    let (admin, connection) = tokio_postgres::connect(&postgres_url(), NoTls).await?;
    tokio::spawn(connection);
    let server: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
    println!("postgres {server}");

    let bench = Bench {
        rt,
        source,
        writer,
        chaos,
        source_config: cdr_source_config(1, ""),
        messages: Arc::new(messages),
        sdk_messages,
        admin,
        n,
    };

    let mut figures = Figures::default();
    for round in 0..rounds {
        let offset = (round * 3) % GROUPS.len();
        let order: Vec<Group> = GROUPS[offset..]
            .iter()
            .chain(&GROUPS[..offset])
            .copied()
            .collect();
        println!("\nround {} of {rounds}: {order:?}", round + 1);
        for group in order {
            bench.checkpoint().await?;
            let t = Instant::now();
            bench
                .run_group(group, &mut figures)
                .await
                .with_context(|| format!("{group:?}"))?;
            println!(
                "  {group:?} done in {:.1} s (load average {})",
                t.elapsed().as_secs_f64(),
                common::load_average()
            );
        }
    }

    report(&figures, n);
    println!("\nfinished {}", common::machine_line());
    Ok(())
}

fn grant(app: &str) -> anyhow::Result<Grants> {
    let url = format!("{}?application_name={app}", postgres_url());
    Ok(Grants::none().with_postgres("main", PostgresGrant::from_url(&url)?))
}

fn ns_per(elapsed: Duration, n: usize) -> f64 {
    elapsed.as_nanos() as f64 / n as f64
}

/// Connects a client of its own.
async fn connect() -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(&postgres_url(), NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Parses a batch natively, then sends it as one binary COPY (one statement, so
/// one transaction, like the writer's fast path). Returns the parse time.
async fn plain_copy_batch(
    client: &Client,
    statement: &Statement,
    batch: &[Message],
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let rows = batch
        .iter()
        .map(|m| parse_cdr(&m.body))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let parse = t.elapsed();
    let sink = client.copy_in(statement).await?;
    let writer = BinaryCopyInWriter::new(sink, &CDR_TYPES);
    futures::pin_mut!(writer);
    for r in &rows {
        writer.as_mut().write(&r.values()).await?;
    }
    let written = writer.finish().await?;
    ensure!(written == batch.len() as u64, "COPY wrote {written} rows");
    Ok(parse)
}

/// Where a decode+write run spent its time.
#[derive(Default, Clone, Copy)]
struct SluiceTimes {
    decode: Duration,
    write: Duration,
    total: Duration,
}

/// Decodes and writes `messages` in batches of `batch` through one source and one
/// writer instance, as one daemon consumer does.
async fn sluice_run(
    source: &mut SourceInstance,
    writer: &mut WriterInstance,
    messages: &[Message],
    batch: usize,
) -> anyhow::Result<SluiceTimes> {
    let mut times = SluiceTimes::default();
    let started = Instant::now();
    for chunk in messages.chunks(batch) {
        let t = Instant::now();
        let decoded = source.decode(chunk).await?;
        times.decode += t.elapsed();
        ensure!(
            decoded.rows.count as usize == chunk.len(),
            "decoded {} rows from {} messages",
            decoded.rows.count,
            chunk.len()
        );
        let t = Instant::now();
        let rejected = writer.write(&decoded.rows).await?;
        times.write += t.elapsed();
        ensure!(rejected.is_empty(), "rows rejected: {:?}", &rejected[..1]);
    }
    times.total = started.elapsed();
    Ok(times)
}

impl Bench {
    async fn checkpoint(&self) -> anyhow::Result<()> {
        self.admin.batch_execute("CHECKPOINT").await?;
        Ok(())
    }

    async fn fresh_schema(&self) -> anyhow::Result<String> {
        let name = unique_name("sluice_bench");
        self.admin
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await?;
        Ok(name)
    }

    async fn drop_schema(&self, name: &str) -> anyhow::Result<()> {
        self.admin
            .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
            .await?;
        Ok(())
    }

    async fn count(&self, schema: &str) -> anyhow::Result<usize> {
        let n: i64 = self
            .admin
            .query_one(&format!("SELECT count(*) FROM {schema}.cdr"), &[])
            .await?
            .get(0);
        Ok(n as usize)
    }

    /// The table postgres-writer creates for the CDR schema, keyed or not.
    async fn create_table(&self, schema: &str, keyed: bool) -> anyhow::Result<()> {
        let key = if keyed { ", PRIMARY KEY (call_id)" } else { "" };
        self.admin
            .batch_execute(&format!(
                "CREATE TABLE {schema}.cdr (call_id text NOT NULL, caller text NOT NULL, \
                 callee text NOT NULL, started_at timestamptz NOT NULL, duration_s integer NOT NULL, \
                 cell text, cost numeric, call_type text, roaming boolean{key})"
            ))
            .await?;
        Ok(())
    }

    /// A source and a writer instance, instantiated, configured and opened (the
    /// table created) before any timing.
    async fn sluice_pair(&self, schema: &str) -> anyhow::Result<(SourceInstance, WriterInstance)> {
        let mut source = SourceInstance::new(
            self.rt.clone(),
            self.source.clone(),
            "bench",
            self.source_config.clone(),
        );
        let declared = source.schema().await?;
        let mut writer = WriterInstance::new(
            self.rt.clone(),
            self.writer.clone(),
            "bench",
            format!(r#"{{"connection":"main","schema":"{schema}"}}"#),
            declared,
            grant(&unique_name("bench"))?,
        );
        writer.open().await?;
        Ok((source, writer))
    }

    async fn run_group(&self, group: Group, f: &mut Figures) -> anyhow::Result<()> {
        let n = self.n;
        match group {
            Group::PlainUnkeyed => {
                let (elapsed, _, schema) = self.plain_copy(false, 1000, 1).await?;
                f.push("plain COPY, unkeyed table", rate(n as u64, elapsed));
                self.drop_schema(&schema).await?;
            }
            Group::PlainKeyed => {
                let (elapsed, parse, schema) = self.plain_copy(true, 1000, 1).await?;
                f.push("plain COPY, keyed table", rate(n as u64, elapsed));
                f.push("plain: serde parse ns/msg", ns_per(parse, n));
                f.push(
                    "plain: COPY ns/row (excl. parse)",
                    ns_per(elapsed - parse, n),
                );
                // The same rows again through a staging table: every key conflicts.
                let elapsed = self.plain_staging(&schema, 1000).await?;
                ensure!(self.count(&schema).await? == n);
                f.push(
                    "plain staging + ON CONFLICT, all conflicts",
                    rate(n as u64, elapsed),
                );
                self.drop_schema(&schema).await?;
            }
            Group::PlainKeyed5000 => {
                let (elapsed, _, schema) = self.plain_copy(true, 5000, 1).await?;
                f.push("plain COPY, keyed table, b=5000", rate(n as u64, elapsed));
                self.drop_schema(&schema).await?;
            }
            Group::PlainKeyed2Conns => {
                let (elapsed, _, schema) = self.plain_copy(true, 1000, 2).await?;
                f.push(
                    "plain COPY, keyed table, 2 connections",
                    rate(n as u64, elapsed),
                );
                self.drop_schema(&schema).await?;
            }
            Group::PlainStagingFresh => {
                let schema = self.fresh_schema().await?;
                self.create_table(&schema, true).await?;
                let elapsed = self.plain_staging(&schema, 1000).await?;
                ensure!(self.count(&schema).await? == n);
                f.push(
                    "plain staging + ON CONFLICT, fresh keys",
                    rate(n as u64, elapsed),
                );
                self.drop_schema(&schema).await?;
            }
            Group::Sluice1000 => {
                let schema = self.fresh_schema().await?;
                let (mut source, mut writer) = self.sluice_pair(&schema).await?;
                let t = sluice_run(&mut source, &mut writer, &self.messages, 1000).await?;
                ensure!(self.count(&schema).await? == n);
                f.push("sluice decode+write, fresh keys", rate(n as u64, t.total));
                f.push("sluice b=1000: decode ns/msg", ns_per(t.decode, n));
                f.push("sluice b=1000: write ns/row", ns_per(t.write, n));
                self.checkpoint().await?;
                let t = sluice_run(&mut source, &mut writer, &self.messages, 1000).await?;
                ensure!(self.count(&schema).await? == n);
                f.push("sluice redelivery (all conflicts)", rate(n as u64, t.total));
                f.push("sluice redelivery: write ns/row", ns_per(t.write, n));
                drop((source, writer));
                self.drop_schema(&schema).await?;
            }
            Group::Sluice5000 => {
                let schema = self.fresh_schema().await?;
                let (mut source, mut writer) = self.sluice_pair(&schema).await?;
                let t = sluice_run(&mut source, &mut writer, &self.messages, 5000).await?;
                ensure!(self.count(&schema).await? == n);
                f.push(
                    "sluice decode+write, fresh keys, b=5000",
                    rate(n as u64, t.total),
                );
                drop((source, writer));
                self.drop_schema(&schema).await?;
            }
            Group::Sluice2Workers => {
                let schema = self.fresh_schema().await?;
                let a = self.sluice_pair(&schema).await?;
                let b = self.sluice_pair(&schema).await?;
                let half = n / 2;
                let started = Instant::now();
                let tasks: Vec<_> = [(a, 0..half), (b, half..n)]
                    .into_iter()
                    .map(|((mut source, mut writer), range)| {
                        let messages = self.messages.clone();
                        tokio::spawn(async move {
                            sluice_run(&mut source, &mut writer, &messages[range], 1000).await
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await??;
                }
                let elapsed = started.elapsed();
                ensure!(self.count(&schema).await? == n);
                f.push(
                    "sluice decode+write, fresh keys, 2 workers",
                    rate(n as u64, elapsed),
                );
                self.drop_schema(&schema).await?;
            }
            Group::Boundary => self.boundary(f).await?,
        }
        Ok(())
    }

    /// Plain binary COPY of the stream into a fresh table, in batches, on `conns`
    /// connections (contiguous shares of the stream). Returns the elapsed time,
    /// the parse time (summed over connections), and the schema (left in place).
    async fn plain_copy(
        &self,
        keyed: bool,
        batch: usize,
        conns: usize,
    ) -> anyhow::Result<(Duration, Duration, String)> {
        let schema = self.fresh_schema().await?;
        self.create_table(&schema, keyed).await?;
        let sql = format!("COPY {schema}.cdr ({CDR_COLUMNS}) FROM STDIN (FORMAT binary)");
        let mut clients = Vec::new();
        for _ in 0..conns {
            let client = connect().await?;
            let statement = client.prepare(&sql).await?;
            clients.push((client, statement));
        }
        let share = self.n.div_ceil(conns);
        let started = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, (client, statement))| {
                let messages = self.messages.clone();
                let range = (i * share).min(self.n)..((i + 1) * share).min(self.n);
                tokio::spawn(async move {
                    let mut parse = Duration::ZERO;
                    for chunk in messages[range].chunks(batch) {
                        parse += plain_copy_batch(&client, &statement, chunk).await?;
                    }
                    anyhow::Ok(parse)
                })
            })
            .collect();
        let mut parse = Duration::ZERO;
        for task in tasks {
            parse += task.await??;
        }
        let elapsed = started.elapsed();
        ensure!(self.count(&schema).await? == self.n);
        Ok((elapsed, parse, schema))
    }

    /// The idempotent upsert a plain client would write: per batch, in one
    /// transaction, a binary COPY into a temporary staging table then `INSERT …
    /// SELECT DISTINCT ON (key) … ON CONFLICT (key) DO NOTHING`.
    async fn plain_staging(&self, schema: &str, batch: usize) -> anyhow::Result<Duration> {
        let client = connect().await?;
        client
            .batch_execute(&format!(
                "CREATE TEMP TABLE bench_stage (LIKE {schema}.cdr INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            ))
            .await?;
        let copy = client
            .prepare(&format!(
                "COPY pg_temp.bench_stage ({CDR_COLUMNS}) FROM STDIN (FORMAT binary)"
            ))
            .await?;
        let insert = format!(
            "INSERT INTO {schema}.cdr ({CDR_COLUMNS}) SELECT DISTINCT ON (call_id) {CDR_COLUMNS} \
             FROM pg_temp.bench_stage ON CONFLICT (call_id) DO NOTHING; COMMIT"
        );
        let started = Instant::now();
        for chunk in self.messages.chunks(batch) {
            client.batch_execute("BEGIN").await?;
            plain_copy_batch(&client, &copy, chunk).await?;
            client.batch_execute(&insert).await?;
        }
        Ok(started.elapsed())
    }

    /// The cost of the wasm boundary, without Postgres.
    async fn boundary(&self, f: &mut Figures) -> anyhow::Result<()> {
        let n = self.n;
        // json-source in wasm, through the runtime, batches of 1000.
        let mut source = SourceInstance::new(
            self.rt.clone(),
            self.source.clone(),
            "bench",
            self.source_config.clone(),
        );
        source.schema().await?;
        let t = Instant::now();
        for chunk in self.messages.chunks(1000) {
            black_box(source.decode(chunk).await?);
        }
        f.push("wasm decode (runtime) ns/msg", ns_per(t.elapsed(), n));

        // The boundary alone: chaos-source (a test plugin) echoes each body as one
        // text row, so the call does almost nothing but lift the same messages
        // into the guest and lower a row batch of about the same size back.
        let mut echo = SourceInstance::new(
            self.rt.clone(),
            self.chaos.clone(),
            "bench",
            "{}".to_string(),
        );
        echo.schema().await?;
        let t = Instant::now();
        for chunk in self.messages.chunks(1000) {
            black_box(echo.decode(chunk).await?);
        }
        f.push(
            "wasm echo source (boundary only) ns/msg",
            ns_per(t.elapsed(), n),
        );
        drop(echo);

        // The same code compiled natively, decoding into a checked RowWriter as
        // the SDK's wasm export does.
        let (mut native, schema) = json_source::JsonSource::configure(&self.source_config)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let t = Instant::now();
        for chunk in self.sdk_messages.chunks(1000) {
            let mut rows = sluice_plugin_sdk::RowWriter::for_schema(&schema);
            let outcomes = native.decode_batch(chunk, &mut rows);
            black_box((outcomes, rows.finish()));
        }
        f.push(
            "native decode (decode_batch) ns/msg",
            ns_per(t.elapsed(), n),
        );

        // `run_source` also configures per batch and reads every row back.
        let t = Instant::now();
        for chunk in self.sdk_messages.chunks(1000) {
            let run = sluice_plugin_sdk::testing::run_source::<json_source::JsonSource>(
                &self.source_config,
                chunk,
            )
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            black_box(run);
        }
        f.push(
            "native run_source (+read-back) ns/msg",
            ns_per(t.elapsed(), n),
        );

        // The plain client's serde decoder, for scale.
        let t = Instant::now();
        for m in self.messages.iter() {
            black_box(parse_cdr(&m.body).map_err(anyhow::Error::msg)?);
        }
        f.push(
            "native serde parse (plain client) ns/msg",
            ns_per(t.elapsed(), n),
        );

        // Fixed cost of one call.
        const CALLS: usize = 20_000;
        let t = Instant::now();
        for _ in 0..CALLS {
            black_box(source.decode(&[]).await?);
        }
        f.push(
            "decode call, 0 messages, ns/call",
            ns_per(t.elapsed(), CALLS),
        );
        let one = &self.messages[..1];
        let t = Instant::now();
        for _ in 0..CALLS {
            black_box(source.decode(one).await?);
        }
        f.push(
            "decode call, 1 message, ns/call",
            ns_per(t.elapsed(), CALLS),
        );

        let schema = self.fresh_schema().await?;
        let (_, mut writer) = self.sluice_pair(&schema).await?;
        let empty = RowBatch {
            count: 0,
            data: Vec::new(),
        };
        let t = Instant::now();
        for _ in 0..CALLS {
            black_box(writer.write(&empty).await?);
        }
        f.push("write call, 0 rows, ns/call", ns_per(t.elapsed(), CALLS));
        drop(writer);
        self.drop_schema(&schema).await?;
        Ok(())
    }
}

fn report(f: &Figures, n: usize) {
    let line = "-".repeat(118);
    println!("\n{line}");
    println!(
        "RESULTS: {n} messages, median of {} rounds [min - max]",
        f.get("plain COPY, keyed table").len()
    );
    println!("{line}");
    println!(
        "{:<46} {:>10} {:>23} {:>10}  target",
        "path (batch 1000 unless said)", "rows/s", "[min - max]", "vs plain"
    );
    // Ratios per round, then their median: robust to a noisy round.
    let ratio = |a: &str, b: &str| -> (f64, Vec<f64>) {
        let r: Vec<f64> = f.get(a).iter().zip(f.get(b)).map(|(x, y)| x / y).collect();
        (median(&r), r)
    };
    let rows: &[(&str, Option<&str>, bool)] = &[
        (
            "plain COPY, unkeyed table",
            Some("plain COPY, keyed table"),
            false,
        ),
        ("plain COPY, keyed table", None, false),
        ("plain COPY, keyed table, b=5000", None, false),
        ("plain COPY, keyed table, 2 connections", None, false),
        (
            "plain staging + ON CONFLICT, fresh keys",
            Some("plain COPY, keyed table"),
            false,
        ),
        (
            "plain staging + ON CONFLICT, all conflicts",
            Some("plain COPY, keyed table"),
            false,
        ),
        (
            "sluice decode+write, fresh keys",
            Some("plain COPY, keyed table"),
            true,
        ),
        (
            "sluice decode+write, fresh keys, b=5000",
            Some("plain COPY, keyed table, b=5000"),
            true,
        ),
        (
            "sluice decode+write, fresh keys, 2 workers",
            Some("plain COPY, keyed table, 2 connections"),
            true,
        ),
        (
            "sluice redelivery (all conflicts)",
            Some("plain staging + ON CONFLICT, all conflicts"),
            false,
        ),
    ];
    for (label, base, targeted) in rows {
        let v = f.get(label);
        let (share, _) = base.map(|b| ratio(label, b)).unwrap_or((f64::NAN, vec![]));
        let share_text = if share.is_finite() {
            format!("{:.0}%", share * 100.0)
        } else {
            "".into()
        };
        let target = if *targeted {
            let med = median(v);
            let ok_rate = med >= TARGET_ROWS_PER_SEC;
            let ok_share = share >= TARGET_SHARE_OF_PLAIN;
            format!(
                "≥116,000/s: {}; ≥70% of plain: {}",
                if ok_rate { "MET" } else { "MISSED" },
                if ok_share { "MET" } else { "MISSED" }
            )
        } else if label.starts_with("sluice redelivery") {
            format!(
                "≥116,000/s: {}",
                if median(v) >= TARGET_ROWS_PER_SEC {
                    "MET"
                } else {
                    "MISSED"
                }
            )
        } else {
            String::new()
        };
        println!(
            "{:<46} {:>10} {:>23} {:>10}  {}",
            label,
            thousands(median(v)),
            format!("[{} - {}]", thousands(min(v)), thousands(max(v))),
            share_text,
            target
        );
    }
    println!(
        "(\"vs plain\": median of per-round ratios to the plain client doing the same job: keyed COPY at the same batch size and concurrency; redelivery vs plain staging with all conflicts)"
    );

    println!("\nwhere the time goes (ns per message or row, median [min - max])");
    for label in [
        "plain: serde parse ns/msg",
        "plain: COPY ns/row (excl. parse)",
        "sluice b=1000: decode ns/msg",
        "sluice b=1000: write ns/row",
        "sluice redelivery: write ns/row",
        "wasm decode (runtime) ns/msg",
        "wasm echo source (boundary only) ns/msg",
        "native decode (decode_batch) ns/msg",
        "native run_source (+read-back) ns/msg",
        "native serde parse (plain client) ns/msg",
        "decode call, 0 messages, ns/call",
        "decode call, 1 message, ns/call",
        "write call, 0 rows, ns/call",
    ] {
        let v = f.get(label);
        println!(
            "  {:<44} {:>9.0} [{:.0} - {:.0}]",
            label,
            median(v),
            min(v),
            max(v)
        );
    }
    let wasm = f.median("wasm decode (runtime) ns/msg");
    let native = f.median("native decode (decode_batch) ns/msg");
    let write = f.median("sluice b=1000: write ns/row");
    let copy = f.median("plain: COPY ns/row (excl. parse)");
    println!("\nboundary cost per row:");
    println!(
        "  decode: wasm through the runtime {wasm:.0} ns/msg vs the same code native {native:.0} ns/msg: \
         +{:.0} ns/row ({:.2}x), of which the fixed call cost is {:.1} ns/row at 1000 per batch",
        wasm - native,
        wasm / native,
        f.median("decode call, 0 messages, ns/call") / 1000.0
    );
    let echo = f.median("wasm echo source (boundary only) ns/msg");
    println!(
        "  crossing alone (echo source: lift the message, lower one row of its body): {echo:.0} ns/row; \
         json-source's own work in wasm then costs {:.0} ns/msg vs {native:.0} native ({:.2}x)",
        wasm - echo,
        (wasm - echo) / native
    );
    println!(
        "  write: postgres-writer {write:.0} ns/row vs plain COPY {copy:.0} ns/row (its serde parse excluded): \
         +{:.0} ns/row (COPY encoding in wasm, copies across the boundary, call cost {:.1} ns/row)",
        write - copy,
        f.median("write call, 0 rows, ns/call") / 1000.0
    );
}
