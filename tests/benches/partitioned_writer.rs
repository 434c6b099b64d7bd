//! Rows per second of `postgres-writer` into a table partitioned by day and into a
//! plain table, fresh and redelivered, beside a plain tokio-postgres client doing
//! the same in the same run (issue #15).
//!
//! N CDR rows (`SLUICE_BENCH_ROWS`, default 1,000,000; the nine columns of the CDR
//! schema, keyed on the call id), their start times spread over three days around
//! the database's clock (yesterday to tomorrow: three daily partitions), in
//! batches of `SLUICE_BENCH_BATCH` (default 1000):
//!
//! - **sluice**: the built `postgres-writer` in Sluice's runtime
//!   (`WriterInstance::write`), into a fresh table: plain (keyed on `call_id`), or
//!   with `partition = { column = "started_at", interval = "1 day" }` (keyed on
//!   `call_id, started_at`); then the same rows again through a new writer instance,
//!   as after a crash (a redelivery: every key is already there).
//! - **plain client**: the same typed rows as one binary COPY per batch into the
//!   same two kinds of table (the partitions made beforehand), then the redelivery
//!   as a plain client writes it: per batch, a binary COPY into a temporary
//!   staging table and `INSERT … SELECT DISTINCT ON … ON CONFLICT DO NOTHING`.
//!
//! Every case runs `SLUICE_BENCH_ROUNDS` times (default 1: 1M rows make long
//! rounds), the order of the two tables alternating, with a `CHECKPOINT` before
//! each measurement; each writes into its own schema, dropped afterwards.
//!
//! `SLUICE_BENCH_PRELOAD=20000000` first fills each table with that many rows
//! spread over the 30 days before (server-side, `generate_series`; the partitions
//! named as the writer names them), then measures the same writes into the grown
//! table; the plain client then writes into the same table with other keys.
//! `SLUICE_BENCH_BASELINE=FILE.wasm` also measures another build of
//! `postgres-writer` in the same rounds (as `sluice before`), e.g. the previous
//! version, so that a change is compared under the same load.
//!
//! Run: `cargo bench -p sluice-tests --bench partitioned_writer --profile dev`
//! (the dev profile optimises dependencies, so the runtime and Postgres client are
//! fast; the plugin is built by `sluice plugin build` as always).
//! `SLUICE_TEST_POSTGRES` points it at another Postgres.

mod common;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, ensure};
use sluice::capabilities::Grants;
use sluice::capabilities::postgres::PostgresGrant;
use sluice::plugin_runtime::{LoadedPlugin, PluginRuntime, RowBatch, WriterInstance};
use sluice_tests::{plugin, postgres_url, unique_name};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

use common::{
    CDR_COLUMNS, CDR_TYPES, CdrRecord, Figures, PgNumeric, PgTimestamp, encode_cdr_batches,
    env_usize, max, median, min, open_cdr_writer, rate, thousands, write_batches,
};

/// The issue's target for the redelivery path.
const TARGET_REDELIVERY: f64 = 116_000.0;
/// Partitioned at this share of plain or better while the table is small.
const TARGET_PARTITIONED_SHARE: f64 = 0.90;

const DAY_MICROS: i64 = 86_400_000_000;
/// 1970-01-01 to 2000-01-01, Postgres's epoch.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// CDR `i`, started within the three days from `first_day` (µs, a midnight UTC).
fn cdr(i: u64, first_day: i64) -> CdrRecord {
    let second = (i * 7919) % (3 * 86_400);
    CdrRecord {
        call_id: format!("c-{i:012}"),
        caller: format!("+3361{:07}", i % 10_000_000),
        callee: format!("+3362{:07}", (i * 7) % 10_000_000),
        started_at: first_day + second as i64 * 1_000_000,
        duration_s: (i % 3600) as i32,
        cell: format!("FR-PAR-{:04}", i % 5000),
        cost: format!("{}.{:02}", i % 10, i % 100),
        call_type: "voice",
        roaming: i.is_multiple_of(7),
    }
}

/// The two kinds of table measured.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Table {
    Plain,
    Partitioned,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Plain => "plain table",
            Table::Partitioned => "partitioned by day",
        }
    }
}

struct Bench {
    rt: Arc<PluginRuntime>,
    writer: Arc<LoadedPlugin>,
    /// Another build measured beside it (`SLUICE_BENCH_BASELINE`).
    baseline: Option<Arc<LoadedPlugin>>,
    admin: Client,
    rows: Arc<Vec<CdrRecord>>,
    batches: Arc<Vec<RowBatch>>,
    batch: usize,
    n: usize,
    first_day: i64,
    /// Rows put in each table before measuring.
    preload: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run().await
}

async fn connect() -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(&postgres_url(), NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn run() -> anyhow::Result<()> {
    let n = env_usize("SLUICE_BENCH_ROWS", 1_000_000);
    let batch = env_usize("SLUICE_BENCH_BATCH", 1000);
    let rounds = env_usize("SLUICE_BENCH_ROUNDS", 1);
    let preload = env_usize("SLUICE_BENCH_PRELOAD", 0);
    println!(
        "partitioned_writer: {n} CDR rows over 3 days in batches of {batch}, {rounds} round(s)"
    );
    println!("started {}", common::machine_line());
    let rt = common::bench_runtime()?;
    let writer = Arc::new(
        rt.load(&plugin("postgres-writer"))
            .await
            .context("loading postgres-writer")?,
    );
    let baseline = match std::env::var_os("SLUICE_BENCH_BASELINE") {
        Some(path) => Some(Arc::new(
            rt.load(std::path::Path::new(&path))
                .await
                .with_context(|| format!("loading the baseline {}", path.display()))?,
        )),
        None => None,
    };
    let admin = connect().await?;
    // Yesterday's midnight by the database's clock: rows from yesterday to
    // tomorrow, inside the writer's default accepted times (7 days back, 1 ahead).
    let today: i64 = admin
        .query_one(
            "SELECT (extract(epoch FROM date_trunc('day', now() AT TIME ZONE 'UTC')) * 1000000)::int8",
            &[],
        )
        .await?
        .get(0);
    let first_day = today - DAY_MICROS;
    let rows: Vec<CdrRecord> = (0..n as u64).map(|i| cdr(i, first_day)).collect();
    let batches = encode_cdr_batches(&rows, batch);
    let bench = Bench {
        rt,
        writer,
        baseline,
        admin,
        rows: Arc::new(rows),
        batches: Arc::new(batches),
        batch,
        n,
        first_day,
        preload,
    };
    if preload > 0 {
        println!("each table first holds {preload} rows over the 30 days before");
    }
    let mut figures = Figures::default();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Table::Plain, Table::Partitioned]
        } else {
            [Table::Partitioned, Table::Plain]
        };
        for table in order {
            let schema = bench
                .sluice("sluice", &bench.writer, table, &mut figures)
                .await?;
            if bench.preload > 0 {
                // The plain client into the same grown table, with other keys.
                bench.plain_into(&schema, table, true, &mut figures).await?;
                bench.drop_schema(&schema).await?;
                continue;
            }
            bench.drop_schema(&schema).await?;
            if let Some(baseline) = &bench.baseline {
                let schema = bench
                    .sluice("sluice before", baseline, table, &mut figures)
                    .await?;
                bench.drop_schema(&schema).await?;
            }
            bench.plain(table, &mut figures).await?;
        }
        println!("round {} done {}", round + 1, common::machine_line());
    }
    report(&figures, n);
    println!("\nfinished {}", common::machine_line());
    Ok(())
}

fn label(who: &str, what: &str, table: Table) -> String {
    format!("{who}: {what}, {}", table.name())
}

impl Bench {
    async fn fresh_schema(&self) -> anyhow::Result<String> {
        let schema = unique_name("bench_part");
        self.admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await?;
        Ok(schema)
    }

    async fn checkpoint(&self) -> anyhow::Result<()> {
        self.admin.batch_execute("CHECKPOINT").await?;
        Ok(())
    }

    async fn count(&self, schema: &str) -> anyhow::Result<usize> {
        let row = self
            .admin
            .query_one(&format!("SELECT count(*) FROM {schema}.cdr"), &[])
            .await?;
        Ok(row.get::<_, i64>(0) as usize)
    }

    async fn drop_schema(&self, schema: &str) -> anyhow::Result<()> {
        self.admin
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await?;
        Ok(())
    }

    /// A writer instance, opened (its table and partitions made) before timing.
    async fn writer(
        &self,
        plugin: &Arc<LoadedPlugin>,
        schema: &str,
        table: Table,
    ) -> anyhow::Result<WriterInstance> {
        let partition = match table {
            Table::Plain => String::new(),
            Table::Partitioned => {
                r#","partition":{"column":"started_at","interval":"1 day","premake":1,"accept":{"future":"2 days"}}"#.into()
            }
        };
        let config = format!(r#"{{"connection":"main","schema":"{schema}"{partition}}}"#);
        let grants = Grants::none().with_postgres(
            "main",
            PostgresGrant::from_url(&format!("{}?application_name={schema}", postgres_url()))?,
        );
        open_cdr_writer(&self.rt, plugin, config, grants).await
    }

    /// Fills the table (made by the writer) with `preload` rows over the 30 days
    /// before the measured ones, in partitions named as the writer names them.
    async fn preload(&self, schema: &str, table: Table) -> anyhow::Result<()> {
        let started = Instant::now();
        let oldest = self.first_day - 31 * DAY_MICROS;
        if table == Table::Partitioned {
            for day in 0..30 {
                let from = oldest + day * DAY_MICROS;
                let (y, m, d) = sluice_plugin_sdk::time::civil_from_days(from / DAY_MICROS);
                self.admin
                    .batch_execute(&format!(
                        "CREATE TABLE {schema}.cdr_p{y:04}{m:02}{d:02} PARTITION OF {schema}.cdr \
                         FOR VALUES FROM (to_timestamp({})) TO (to_timestamp({}))",
                        from / 1_000_000,
                        (from + DAY_MICROS) / 1_000_000
                    ))
                    .await?;
            }
        }
        self.admin
            .batch_execute(&format!(
                "INSERT INTO {schema}.cdr ({CDR_COLUMNS}) SELECT 'h-' || lpad(g::text, 12, '0'), \
                 '+3361' || lpad((g % 10000000)::text, 7, '0'), '+3362' || lpad((g * 7 % 10000000)::text, 7, '0'), \
                 to_timestamp({} + (g * 7919) % (30 * 86400)), (g % 3600)::int, 'FR-PAR-' || (g % 5000), \
                 (g % 1000) / 100.0, 'voice', g % 7 = 0 \
                 FROM generate_series(1::int8, {}) g; ANALYZE {schema}.cdr",
                oldest / 1_000_000,
                self.preload
            ))
            .await?;
        println!(
            "  {} preloaded with {} rows in {:.0} s",
            table.name(),
            self.preload,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Measures `plugin` writing the rows fresh, then again; returns the schema
    /// holding its table (for the caller to drop).
    async fn sluice(
        &self,
        who: &str,
        plugin: &Arc<LoadedPlugin>,
        table: Table,
        f: &mut Figures,
    ) -> anyhow::Result<String> {
        let schema = self.fresh_schema().await?;
        let writer = self.writer(plugin, &schema, table).await?;
        if self.preload > 0 {
            self.preload(&schema, table).await?;
        }
        let expected = self.preload + self.n;
        self.checkpoint().await?;
        let fresh = write_batches(self.batches.clone(), writer).await?;
        ensure!(self.count(&schema).await? == expected, "fresh rows missing");
        f.push(&label(who, "fresh", table), rate(self.n as u64, fresh));
        // A new instance, as after a crash: the same rows again.
        let writer = self.writer(plugin, &schema, table).await?;
        self.checkpoint().await?;
        let again = write_batches(self.batches.clone(), writer).await?;
        ensure!(
            self.count(&schema).await? == expected,
            "redelivery changed the rows"
        );
        f.push(
            &label(who, "redelivered", table),
            rate(self.n as u64, again),
        );
        if table == Table::Partitioned {
            let partitions: i64 = self
                .admin
                .query_one(
                    "SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass($1)",
                    &[&format!("{schema}.cdr")],
                )
                .await?
                .get(0);
            let expected = if self.preload > 0 { 33 } else { 3 };
            ensure!(
                partitions == expected,
                "{partitions} partitions, expected {expected}"
            );
        }
        Ok(schema)
    }

    /// The plain client: the table as the writer makes it, a binary COPY per
    /// batch; then the redelivery through a staging table.
    async fn plain(&self, table: Table, f: &mut Figures) -> anyhow::Result<()> {
        let schema = self.fresh_schema().await?;
        let partition_by = match table {
            Table::Plain => "",
            Table::Partitioned => " PARTITION BY RANGE (started_at)",
        };
        let key = key_of(table);
        self.admin
            .batch_execute(&format!(
                "CREATE TABLE {schema}.cdr (call_id text NOT NULL, caller text NOT NULL, callee text NOT NULL, \
                 started_at timestamptz NOT NULL, duration_s integer NOT NULL, cell text, cost numeric, \
                 call_type text, roaming boolean, PRIMARY KEY ({key})){partition_by}"
            ))
            .await?;
        if table == Table::Partitioned {
            for day in 0..3 {
                let from = self.first_day + day * DAY_MICROS;
                self.admin
                    .batch_execute(&format!(
                        "CREATE TABLE {schema}.cdr_p{day} PARTITION OF {schema}.cdr FOR VALUES \
                         FROM (to_timestamp({})) TO (to_timestamp({}))",
                        from / 1_000_000,
                        (from + DAY_MICROS) / 1_000_000
                    ))
                    .await?;
            }
        }
        self.plain_into(&schema, table, false, f).await?;
        self.drop_schema(&schema).await
    }

    /// The plain client's writes into the table in `schema`; with `other_keys`,
    /// rows keyed `q-…` (the table already holds the writer's `c-…` rows).
    async fn plain_into(
        &self,
        schema: &str,
        table: Table,
        other_keys: bool,
        f: &mut Figures,
    ) -> anyhow::Result<()> {
        let key = key_of(table);
        let before = self.count(schema).await?;
        let prefix = other_keys.then_some('q');
        let client = connect().await?;
        let copy = client
            .prepare(&format!(
                "COPY {schema}.cdr ({CDR_COLUMNS}) FROM STDIN (FORMAT binary)"
            ))
            .await?;
        self.checkpoint().await?;
        let started = Instant::now();
        for chunk in self.rows.chunks(self.batch) {
            copy_rows(&client, &copy, chunk, prefix).await?;
        }
        let fresh = started.elapsed();
        ensure!(
            self.count(schema).await? == before + self.n,
            "plain COPY rows missing"
        );
        f.push(&label("plain", "fresh", table), rate(self.n as u64, fresh));

        client
            .batch_execute(&format!(
                "CREATE TEMP TABLE bench_stage (LIKE {schema}.cdr INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            ))
            .await?;
        let stage = client
            .prepare(&format!(
                "COPY pg_temp.bench_stage ({CDR_COLUMNS}) FROM STDIN (FORMAT binary)"
            ))
            .await?;
        let insert = format!(
            "INSERT INTO {schema}.cdr ({CDR_COLUMNS}) SELECT DISTINCT ON ({key}) {CDR_COLUMNS} \
             FROM pg_temp.bench_stage ON CONFLICT ({key}) DO NOTHING; COMMIT"
        );
        self.checkpoint().await?;
        let started = Instant::now();
        for chunk in self.rows.chunks(self.batch) {
            client.batch_execute("BEGIN").await?;
            copy_rows(&client, &stage, chunk, prefix).await?;
            client.batch_execute(&insert).await?;
        }
        let again = started.elapsed();
        ensure!(
            self.count(schema).await? == before + self.n,
            "plain redelivery changed the rows"
        );
        f.push(
            &label("plain", "redelivered (staging)", table),
            rate(self.n as u64, again),
        );
        Ok(())
    }
}

/// The table's key as the writer makes it.
fn key_of(table: Table) -> &'static str {
    match table {
        Table::Plain => "call_id",
        Table::Partitioned => "call_id, started_at",
    }
}

/// One binary COPY of `rows`.
async fn copy_rows(
    client: &Client,
    statement: &tokio_postgres::Statement,
    rows: &[CdrRecord],
    prefix: Option<char>,
) -> anyhow::Result<()> {
    let sink = client.copy_in(statement).await?;
    let writer = BinaryCopyInWriter::new(sink, &CDR_TYPES);
    futures::pin_mut!(writer);
    for r in rows {
        let started_at = PgTimestamp(r.started_at - POSTGRES_EPOCH_MICROS);
        let cost = PgNumeric::parse(&r.cost);
        let cell = Some(r.cell.as_str());
        let call_type = Some(r.call_type);
        let roaming = Some(r.roaming);
        let call_id = match prefix {
            Some(p) => format!("{p}{}", &r.call_id[1..]),
            None => r.call_id.clone(),
        };
        let values: [&(dyn ToSql + Sync); 9] = [
            &call_id,
            &r.caller,
            &r.callee,
            &started_at,
            &r.duration_s,
            &cell,
            &cost,
            &call_type,
            &roaming,
        ];
        writer.as_mut().write(&values).await?;
    }
    let written = writer.finish().await?;
    ensure!(written == rows.len() as u64, "COPY wrote {written} rows");
    Ok(())
}

fn report(f: &Figures, n: usize) {
    println!("\nrows/s, {n} rows, median [min-max] of the rounds");
    let line = |label: &str| {
        let v = f.get(label);
        println!(
            "  {label:<52} {:>9}  [{}-{}]",
            thousands(median(v)),
            thousands(min(v)),
            thousands(max(v))
        );
    };
    for table in [Table::Plain, Table::Partitioned] {
        for (who, what) in [
            ("sluice", "fresh"),
            ("sluice before", "fresh"),
            ("plain", "fresh"),
            ("sluice", "redelivered"),
            ("sluice before", "redelivered"),
            ("plain", "redelivered (staging)"),
        ] {
            if !f.get(&label(who, what, table)).is_empty() {
                line(&label(who, what, table));
            }
        }
    }
    let share = |a: &str, b: &str| f.median(a) / f.median(b);
    println!("\nshares of the medians:");
    for what in ["fresh", "redelivered"] {
        let s = share(
            &label("sluice", what, Table::Partitioned),
            &label("sluice", what, Table::Plain),
        );
        println!(
            "  sluice {what}: partitioned at {:.0}% of plain (target ≥ {:.0}%): {}",
            s * 100.0,
            TARGET_PARTITIONED_SHARE * 100.0,
            if s >= TARGET_PARTITIONED_SHARE {
                "met"
            } else {
                "MISSED"
            }
        );
    }
    for table in [Table::Plain, Table::Partitioned] {
        println!(
            "  sluice fresh, {}: {:.0}% of the plain client's COPY",
            table.name(),
            share(
                &label("sluice", "fresh", table),
                &label("plain", "fresh", table)
            ) * 100.0
        );
        let r = f.median(&label("sluice", "redelivered", table));
        println!(
            "  sluice redelivered, {}: {} rows/s, {:.0}% of the plain client's staging (target ≥ {}): {}",
            table.name(),
            thousands(r),
            share(
                &label("sluice", "redelivered", table),
                &label("plain", "redelivered (staging)", table)
            ) * 100.0,
            thousands(TARGET_REDELIVERY),
            if r >= TARGET_REDELIVERY {
                "met"
            } else {
                "MISSED"
            }
        );
    }
}
