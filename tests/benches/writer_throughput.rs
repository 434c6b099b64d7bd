//! Rows per second through the ClickHouse, Redis and file writers, each beside a
//! plain Rust client doing the same job natively in the same run.
//!
//! The same N CDR rows (`SLUICE_BENCH_ROWS`, default 100,000; the nine columns of
//! the CDR schema the other benchmarks use, keyed on the call id) go, in batches
//! of `SLUICE_BENCH_BATCH` (default 1000):
//!
//! - **ClickHouse**: through `clickhouse-writer` (the built component, in Sluice's
//!   plugin runtime, with `grants.http`), one `RowBinary` insert per batch over
//!   wasi:http into a fresh `ReplacingMergeTree`; beside a plain client that
//!   encodes the same rows as `RowBinary` and POSTs one insert per batch with a
//!   hand-written HTTP/1.1 client on `std::net`.
//! - **Redis** (hash mode): through `redis-writer` (`grants.tcp`), one pipelined
//!   `MULTI`, `HSET` per row, `EXEC` per batch over wasi:sockets; beside a plain
//!   client sending the same commands on a `std::net::TcpStream`. Stream mode with
//!   its dedupe script is measured for the plugin alone.
//! - **Files** (NDJSON): through `file-writer` (`grants.directory`), one append and
//!   `fsync` per batch, with its dedupe set; beside a plain `BufWriter` writing the
//!   same lines with one `fsync` per batch.
//!
//! Every measurement runs `SLUICE_BENCH_ROUNDS` times (default 3), interleaved;
//! the report gives the median and range, and the plugin's share of the plain
//! client's rate: the ratio of the medians, and the median of each round's own
//! ratio (steadier on a noisy disk). Before timing, it checks what each component imports: the
//! file writer (no network feature) must import neither wasi:http nor
//! wasi:sockets, so the host loads it without a network grant.
//!
//! Run: `scripts/services.sh` (ClickHouse, Redis), then
//! `cargo bench -p sluice-tests --bench writer_throughput`.
//! `SLUICE_TEST_CLICKHOUSE` (`http://127.0.0.1:8123`) and `SLUICE_TEST_REDIS`
//! (`127.0.0.1:6379`) point it elsewhere. `SLUICE_BENCH_STORES` picks the stores
//! measured, a comma-separated list of `clickhouse`, `redis` and `files` (default:
//! all three); `SLUICE_BENCH_STORES=files` needs neither ClickHouse nor Redis.
//! The files go under `target/` (the disk the fsyncs measure);
//! `SLUICE_BENCH_FILES_DIR` puts them under another directory (a tmpfs such as
//! `/dev/shm` takes the disk out and leaves the CPU work and the host calls).
//! `SLUICE_BENCH_FILES_KEPT=N` puts N finished files, older than the dedupe
//! window, in the file writer's directory first, as a directory where finished
//! files are kept (default 0).

mod common;

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use sluice::capabilities::{Capability, Grants, HttpGrant, TcpGrant};
use sluice::plugin_runtime::{LoadedPlugin, PluginRuntime, RowBatch, WriterInstance};
use sluice_tests::{plugin, unique_name, workspace_root};

use common::{
    CdrRecord, Figures, encode_cdr_batches, env_usize, max, median, min, open_cdr_writer, rate,
    thousands, write_batches,
};

fn clickhouse_url() -> String {
    std::env::var("SLUICE_TEST_CLICKHOUSE").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

fn redis_address() -> String {
    std::env::var("SLUICE_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into())
}

fn cdr(i: u64) -> CdrRecord {
    // 2026-11-27T10:MM:SSZ, as in cdr_json.
    let day = common::days_from_civil(2026, 11, 27);
    let seconds = day * 86_400 + 10 * 3600 + ((i / 60) % 60) as i64 * 60 + (i % 60) as i64;
    CdrRecord {
        call_id: format!("c-{i:012}"),
        caller: format!("+3361{:07}", i % 10_000_000),
        callee: format!("+3362{:07}", (i * 7) % 10_000_000),
        started_at: seconds * 1_000_000,
        duration_s: (i % 3600) as i32,
        cell: format!("FR-PAR-{:04}", i % 5000),
        cost: format!("{}.{:02}", i % 10, i % 100),
        call_type: "voice",
        roaming: i.is_multiple_of(7),
    }
}

struct Bench {
    rt: Arc<PluginRuntime>,
    clickhouse: Arc<LoadedPlugin>,
    redis: Arc<LoadedPlugin>,
    files: Arc<LoadedPlugin>,
    rows: Arc<Vec<CdrRecord>>,
    batches: Arc<Vec<RowBatch>>,
    batch: usize,
    db: String,
    tmp: PathBuf,
    n: usize,
    /// Finished files older than the window put in the file writer's directory.
    files_kept: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run().await
}

async fn run() -> anyhow::Result<()> {
    let n = env_usize("SLUICE_BENCH_ROWS", 100_000);
    let batch = env_usize("SLUICE_BENCH_BATCH", 1000);
    let rounds = env_usize("SLUICE_BENCH_ROUNDS", 3);
    let stores = Stores::from_env()?;
    println!("writer_throughput: {n} CDR rows in batches of {batch}, {rounds} rounds, interleaved");
    println!("started {}", common::machine_line());
    let rt = common::bench_runtime()?;
    let load = |name: &'static str| {
        let rt = rt.clone();
        async move {
            let p = rt
                .load(&plugin(name))
                .await
                .with_context(|| format!("loading {name}"))?;
            let needs: Vec<String> = p.needs.iter().map(|n| n.to_string()).collect();
            println!(
                "loaded {} ({:?}, {:.0} ms); capabilities its imports need: [{}]",
                p.info.label(),
                p.cache,
                p.load_time.as_secs_f64() * 1e3,
                needs.join(", ")
            );
            anyhow::Ok(Arc::new(p))
        }
    };
    let clickhouse = load("clickhouse-writer").await?;
    let redis = load("redis-writer").await?;
    let files = load("file-writer").await?;
    let postgres = load("postgres-writer").await?;
    // A writer that enables no network feature imports no network capability.
    let caps = |p: &LoadedPlugin| p.needs.iter().map(|n| n.capability).collect::<Vec<_>>();
    let (http, tcp) = (Capability::Http, Capability::Tcp);
    for (p, wants) in [
        (&files, &[][..]),
        (&postgres, &[][..]),
        (&clickhouse, &[http][..]),
        (&redis, &[tcp][..]),
    ] {
        let network: Vec<Capability> = caps(p)
            .into_iter()
            .filter(|c| *c != Capability::Postgres)
            .collect();
        ensure!(
            network == wants,
            "{} imports the network capabilities {network:?}, expected {wants:?}",
            p.info.label()
        );
    }

    if stores.clickhouse {
        let ch_version = clickhouse_query(&clickhouse_url(), "SELECT version()")?;
        println!("clickhouse {}", ch_version.trim());
    }
    if stores.redis {
        let mut redis_conn = Resp::connect(&redis_address())?;
        let info = redis_conn.call(&[b"INFO", b"server"])?;
        let version = String::from_utf8_lossy(&info)
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:").map(str::to_owned))
            .unwrap_or_default();
        println!("redis {version}");
    }

    let rows: Vec<CdrRecord> = (0..n as u64).map(cdr).collect();
    let batches = encode_cdr_batches(&rows, batch);
    let db = unique_name("sluice_bench");
    if stores.clickhouse {
        clickhouse_query(&clickhouse_url(), &format!("CREATE DATABASE {db}"))?;
    }
    let files_parent = std::env::var_os("SLUICE_BENCH_FILES_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let tmp = files_parent.join(unique_name("bench-files"));
    std::fs::create_dir_all(&tmp)?;
    println!("files under {}", tmp.display());
    let bench = Bench {
        rt,
        clickhouse,
        redis,
        files,
        rows: Arc::new(rows),
        batches: Arc::new(batches),
        batch,
        db: db.clone(),
        tmp: tmp.clone(),
        n,
        files_kept: env_usize("SLUICE_BENCH_FILES_KEPT", 0),
    };

    let groups: Vec<Group> = [
        Group::ClickHousePlugin,
        Group::ClickHousePlain,
        Group::RedisPlugin,
        Group::RedisPlain,
        Group::RedisStreamPlugin,
        Group::FilesPlugin,
        Group::FilesPlain,
    ]
    .into_iter()
    .filter(|g| stores.has(*g))
    .collect();
    let mut figures = Figures::default();
    let result = async {
        for round in 0..rounds {
            let offset = (round * 3) % groups.len();
            let order: Vec<Group> = groups[offset..]
                .iter()
                .chain(&groups[..offset])
                .copied()
                .collect();
            println!("\nround {} of {rounds}", round + 1);
            for group in order {
                let t = Instant::now();
                let (label, elapsed) = bench
                    .run_group(group, round)
                    .await
                    .with_context(|| format!("{group:?}"))?;
                figures.push(label, rate(n as u64, elapsed));
                println!(
                    "  {label}: {} rows/s ({:.1} s with setup and checks; load average {})",
                    thousands(rate(n as u64, elapsed)),
                    t.elapsed().as_secs_f64(),
                    common::load_average()
                );
            }
        }
        anyhow::Ok(())
    }
    .await;
    if stores.clickhouse {
        let _ = clickhouse_query(&clickhouse_url(), &format!("DROP DATABASE IF EXISTS {db}"));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    result?;

    report(&figures, n, batch, &stores);
    println!("\nfinished {}", common::machine_line());
    Ok(())
}

/// The stores measured (`SLUICE_BENCH_STORES`).
struct Stores {
    clickhouse: bool,
    redis: bool,
    files: bool,
}

impl Stores {
    fn from_env() -> anyhow::Result<Stores> {
        let Ok(list) = std::env::var("SLUICE_BENCH_STORES") else {
            return Ok(Stores {
                clickhouse: true,
                redis: true,
                files: true,
            });
        };
        let mut stores = Stores {
            clickhouse: false,
            redis: false,
            files: false,
        };
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "clickhouse" => stores.clickhouse = true,
                "redis" => stores.redis = true,
                "files" => stores.files = true,
                other => {
                    bail!("SLUICE_BENCH_STORES: unknown store {other:?} (clickhouse, redis, files)")
                }
            }
        }
        ensure!(
            stores.clickhouse || stores.redis || stores.files,
            "SLUICE_BENCH_STORES names no store"
        );
        Ok(stores)
    }

    fn has(&self, group: Group) -> bool {
        match group {
            Group::ClickHousePlugin | Group::ClickHousePlain => self.clickhouse,
            Group::RedisPlugin | Group::RedisPlain | Group::RedisStreamPlugin => self.redis,
            Group::FilesPlugin | Group::FilesPlain => self.files,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Group {
    ClickHousePlugin,
    ClickHousePlain,
    RedisPlugin,
    RedisPlain,
    RedisStreamPlugin,
    FilesPlugin,
    FilesPlain,
}

const CH_PLUGIN: &str = "clickhouse-writer (wasm)";
const CH_PLAIN: &str = "plain HTTP client, RowBinary";
const REDIS_PLUGIN: &str = "redis-writer hash (wasm)";
const REDIS_PLAIN: &str = "plain RESP client, MULTI/HSET/EXEC";
const REDIS_STREAM: &str = "redis-writer stream + dedupe (wasm)";
const FILES_PLUGIN: &str = "file-writer ndjson (wasm)";
const FILES_PLAIN: &str = "plain BufWriter + fsync per batch";

impl Bench {
    /// A writer instance of `plugin`, opened (its table or files set up) before timing.
    async fn writer(
        &self,
        plugin: &Arc<LoadedPlugin>,
        config: String,
        grants: Grants,
    ) -> anyhow::Result<WriterInstance> {
        open_cdr_writer(&self.rt, plugin, config, grants).await
    }

    async fn run_group(
        &self,
        group: Group,
        round: usize,
    ) -> anyhow::Result<(&'static str, Duration)> {
        let n = self.n;
        let rows = self.rows.clone();
        let batch = self.batch;
        Ok(match group {
            Group::ClickHousePlugin => {
                let table = format!("wasm_{round}");
                let config = format!(
                    r#"{{"url":"{}","database":"{}","table":"{table}"}}"#,
                    clickhouse_url(),
                    self.db
                );
                let grants = Grants::none()
                    .with_http(HttpGrant::parse(&clickhouse_url()).map_err(anyhow::Error::msg)?);
                let w = self.writer(&self.clickhouse, config, grants).await?;
                let elapsed = write_batches(self.batches.clone(), w).await?;
                self.check_clickhouse(&table)?;
                (CH_PLUGIN, elapsed)
            }
            Group::ClickHousePlain => {
                let table = format!("plain_{round}");
                let (db, url) = (self.db.clone(), clickhouse_url());
                // The table the plugin creates on this server.
                let probe = format!("wasm_{round}");
                let ddl = clickhouse_query(
                    &url,
                    &format!("SHOW CREATE TABLE {db}.{probe} FORMAT TabSeparatedRaw"),
                )
                .unwrap_or_default();
                let ddl = if ddl.is_empty() {
                    format!(
                        "CREATE TABLE {db}.{table} (call_id String, caller String, callee String, \
                         started_at Int64, duration_s Int32, cell Nullable(String), cost Nullable(String), \
                         call_type Nullable(String), roaming Nullable(UInt8)) \
                         ENGINE = ReplacingMergeTree ORDER BY (call_id)"
                    )
                } else {
                    ddl.replace(&format!("{db}.{probe}"), &format!("{db}.{table}"))
                };
                clickhouse_query(&url, &ddl)?;
                let elapsed = tokio::task::spawn_blocking(move || {
                    plain_clickhouse(&url, &db, &table, &rows, batch)
                })
                .await??;
                self.check_clickhouse(&format!("plain_{round}"))?;
                (CH_PLAIN, elapsed)
            }
            Group::RedisPlugin => {
                let prefix = format!("{}:wasm{round}:", self.db);
                let config = format!(
                    r#"{{"address":"{}","mode":"hash","key_prefix":"{prefix}"}}"#,
                    redis_address()
                );
                let grants = Grants::none()
                    .with_tcp(TcpGrant::parse(&redis_address()).map_err(anyhow::Error::msg)?);
                let w = self.writer(&self.redis, config, grants).await?;
                let elapsed = write_batches(self.batches.clone(), w).await?;
                check_and_clean_redis(&prefix, n)?;
                (REDIS_PLUGIN, elapsed)
            }
            Group::RedisPlain => {
                let prefix = format!("{}:plain{round}:", self.db);
                let p = prefix.clone();
                let elapsed =
                    tokio::task::spawn_blocking(move || plain_redis(&p, &rows, batch)).await??;
                check_and_clean_redis(&prefix, n)?;
                (REDIS_PLAIN, elapsed)
            }
            Group::RedisStreamPlugin => {
                let prefix = format!("{}:stream{round}:", self.db);
                let stream = format!("{prefix}stream");
                let config = format!(
                    r#"{{"address":"{}","mode":"stream","stream":"{stream}","key_prefix":"{prefix}","ttl":"10m"}}"#,
                    redis_address()
                );
                let grants = Grants::none()
                    .with_tcp(TcpGrant::parse(&redis_address()).map_err(anyhow::Error::msg)?);
                let w = self.writer(&self.redis, config, grants).await?;
                let elapsed = write_batches(self.batches.clone(), w).await?;
                let mut r = Resp::connect(&redis_address())?;
                let len = r.call(&[b"XLEN", stream.as_bytes()])?;
                ensure!(
                    String::from_utf8_lossy(&len) == n.to_string(),
                    "XLEN {len:?}"
                );
                // n markers and the stream.
                check_and_clean_redis(&prefix, n + 1)?;
                (REDIS_STREAM, elapsed)
            }
            Group::FilesPlugin => {
                let dir = self.tmp.join(format!("wasm{round}"));
                std::fs::create_dir_all(&dir)?;
                keep_finished_files(&dir, self.files_kept)?;
                let config = r#"{"format":"ndjson","prefix":"cdr"}"#.to_string();
                let grants = Grants::none().with_directory(&dir);
                let w = self.writer(&self.files, config, grants).await?;
                let elapsed = write_batches(self.batches.clone(), w).await?;
                ensure!(
                    count_lines(&dir)? == n + self.files_kept,
                    "lines in {}",
                    dir.display()
                );
                (FILES_PLUGIN, elapsed)
            }
            Group::FilesPlain => {
                let dir = self.tmp.join(format!("plain{round}"));
                std::fs::create_dir_all(&dir)?;
                let d = dir.clone();
                let elapsed =
                    tokio::task::spawn_blocking(move || plain_files(&d, &rows, batch)).await??;
                ensure!(count_lines(&dir)? == n, "lines in {}", dir.display());
                (FILES_PLAIN, elapsed)
            }
        })
    }

    fn check_clickhouse(&self, table: &str) -> anyhow::Result<()> {
        let count = clickhouse_query(
            &clickhouse_url(),
            &format!("SELECT count() FROM {}.{table} FINAL", self.db),
        )?;
        ensure!(count.trim() == self.n.to_string(), "{table}: {count} rows");
        Ok(())
    }
}

fn report(figures: &Figures, n: usize, batch: usize, stores: &Stores) {
    println!("\n## Results: {n} rows, batches of {batch} (median of rounds, [min - max])\n");
    println!(
        "| store | Sluice writer (wasm) rows/s | plain client rows/s | writer / plain | same round [min - max] |"
    );
    println!("|---|---|---|---|---|");
    let cell = |label: &str| {
        let v = figures.get(label);
        format!(
            "{} [{} - {}]",
            thousands(median(v)),
            thousands(min(v)),
            thousands(max(v))
        )
    };
    for (store, plugin, plain, measured) in [
        ("ClickHouse", CH_PLUGIN, CH_PLAIN, stores.clickhouse),
        ("Redis, hash", REDIS_PLUGIN, REDIS_PLAIN, stores.redis),
        ("files, NDJSON", FILES_PLUGIN, FILES_PLAIN, stores.files),
    ] {
        if !measured {
            continue;
        }
        let ratio = median(figures.get(plugin)) / median(figures.get(plain));
        // Each round measures the writer and the plain client one after the
        // other: their ratio within a round is less exposed to the disk's and
        // the machine's slow spells than the ratio of medians.
        let paired: Vec<f64> = figures
            .get(plugin)
            .iter()
            .zip(figures.get(plain))
            .map(|(w, p)| w / p * 100.0)
            .collect();
        println!(
            "| {store} | {} | {} | {:.0} % | {:.0} % [{:.0} - {:.0}] |",
            cell(plugin),
            cell(plain),
            ratio * 100.0,
            median(&paired),
            min(&paired),
            max(&paired)
        );
    }
    if stores.redis {
        println!(
            "| Redis, stream + dedupe | {} | - | - | - |",
            cell(REDIS_STREAM)
        );
    }
}

// --- ClickHouse: a plain HTTP/1.1 client ------------------------------------

/// POSTs `body` to ClickHouse; the answer's body, or an error with its text.
fn clickhouse_post(url: &str, body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let authority = url
        .strip_prefix("http://")
        .context("SLUICE_TEST_CLICKHOUSE must be http://host:port")?
        .trim_end_matches('/');
    let mut stream = TcpStream::connect(authority)?;
    stream.set_nodelay(true)?;
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let mut length = None;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    let mut out = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim(), 16)?;
            if size == 0 {
                break;
            }
            let start = out.len();
            out.resize(start + size, 0);
            reader.read_exact(&mut out[start..])?;
            reader.read_line(&mut String::new())?;
        }
    } else if let Some(length) = length {
        out.resize(length, 0);
        reader.read_exact(&mut out)?;
    } else {
        reader.read_to_end(&mut out)?;
    }
    if !status.contains(" 200 ") {
        bail!(
            "ClickHouse: {}: {}",
            status.trim(),
            String::from_utf8_lossy(&out)
        );
    }
    Ok(out)
}

fn clickhouse_query(url: &str, sql: &str) -> anyhow::Result<String> {
    Ok(String::from_utf8(clickhouse_post(url, sql.as_bytes())?)?)
}

fn varint_string(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len() as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(s);
}

/// One RowBinary insert per batch, the rows encoded from their typed values.
fn plain_clickhouse(
    url: &str,
    db: &str,
    table: &str,
    rows: &[CdrRecord],
    batch: usize,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let head = format!(
        "INSERT INTO {db}.{table} (call_id, caller, callee, started_at, duration_s, cell, cost, call_type, roaming) FORMAT RowBinary\n"
    );
    let mut body = Vec::new();
    for chunk in rows.chunks(batch) {
        body.clear();
        body.extend_from_slice(head.as_bytes());
        for r in chunk {
            varint_string(&mut body, r.call_id.as_bytes());
            varint_string(&mut body, r.caller.as_bytes());
            varint_string(&mut body, r.callee.as_bytes());
            // Int64 microseconds, or DateTime64(6) ticks: the same bytes.
            body.extend_from_slice(&r.started_at.to_le_bytes());
            body.extend_from_slice(&r.duration_s.to_le_bytes());
            body.push(0);
            varint_string(&mut body, r.cell.as_bytes());
            body.push(0);
            varint_string(&mut body, r.cost.as_bytes());
            body.push(0);
            varint_string(&mut body, r.call_type.as_bytes());
            body.push(0);
            body.push(u8::from(r.roaming));
        }
        clickhouse_post(url, &body)?;
    }
    Ok(t.elapsed())
}

// --- Redis: a plain RESP client ----------------------------------------------

struct Resp {
    reader: BufReader<TcpStream>,
}

impl Resp {
    fn connect(address: &str) -> anyhow::Result<Resp> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Resp {
            reader: BufReader::with_capacity(64 * 1024, stream),
        })
    }

    fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Reads one reply; its payload (bulk/simple/integer text; arrays read and
    /// dropped, their length returned as text). An error reply is an error.
    fn reply(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        ensure!(line.ends_with(b"\r\n"), "connection closed");
        line.truncate(line.len() - 2);
        let (kind, rest) = line.split_first().context("empty reply")?;
        match kind {
            b'+' | b':' => Ok(rest.to_vec()),
            b'-' => bail!("redis: {}", String::from_utf8_lossy(rest)),
            b'$' => {
                let n: i64 = std::str::from_utf8(rest)?.parse()?;
                if n < 0 {
                    return Ok(Vec::new());
                }
                let mut data = vec![0; n as usize + 2];
                self.reader.read_exact(&mut data)?;
                data.truncate(n as usize);
                Ok(data)
            }
            b'*' => {
                let n: i64 = std::str::from_utf8(rest)?.parse()?;
                for _ in 0..n.max(0) {
                    self.reply()?;
                }
                Ok(n.to_string().into_bytes())
            }
            _ => bail!("unexpected reply {line:?}"),
        }
    }

    fn send(&mut self, buf: &[u8]) -> anyhow::Result<()> {
        let s = self.reader.get_mut();
        s.write_all(buf)?;
        s.flush()?;
        Ok(())
    }

    fn call(&mut self, args: &[&[u8]]) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        Self::command(&mut out, args);
        self.send(&out)?;
        self.reply()
    }
}

/// One pipelined MULTI, HSET per row, EXEC per batch; every reply read.
fn plain_redis(prefix: &str, rows: &[CdrRecord], batch: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut r = Resp::connect(&redis_address())?;
    let mut buf = Vec::new();
    for chunk in rows.chunks(batch) {
        buf.clear();
        Resp::command(&mut buf, &[b"MULTI"]);
        for row in chunk {
            let key = format!("{prefix}{}", row.call_id);
            let started = {
                let mut s = Vec::new();
                timestamp(row.started_at, &mut s);
                s
            };
            let duration = row.duration_s.to_string();
            Resp::command(
                &mut buf,
                &[
                    b"HSET",
                    key.as_bytes(),
                    b"call_id",
                    row.call_id.as_bytes(),
                    b"caller",
                    row.caller.as_bytes(),
                    b"callee",
                    row.callee.as_bytes(),
                    b"started_at",
                    &started,
                    b"duration_s",
                    duration.as_bytes(),
                    b"cell",
                    row.cell.as_bytes(),
                    b"cost",
                    row.cost.as_bytes(),
                    b"call_type",
                    row.call_type.as_bytes(),
                    b"roaming",
                    if row.roaming { b"true" } else { b"false" },
                ],
            );
        }
        Resp::command(&mut buf, &[b"EXEC"]);
        r.send(&buf)?;
        r.reply()?; // OK
        for _ in chunk {
            r.reply()?; // QUEUED
        }
        let n = r.reply()?;
        ensure!(
            n == chunk.len().to_string().as_bytes(),
            "EXEC replied {n:?}"
        );
    }
    Ok(t.elapsed())
}

/// Checks that `expected` keys start with `prefix`, then deletes them.
fn check_and_clean_redis(prefix: &str, expected: usize) -> anyhow::Result<()> {
    let mut r = Resp::connect(&redis_address())?;
    let script = b"local keys = redis.call('KEYS', ARGV[1]) \
        for i = 1, #keys, 1000 do redis.call('UNLINK', unpack(keys, i, math.min(i + 999, #keys))) end \
        return #keys";
    let pattern = format!("{prefix}*");
    let n = r.call(&[b"EVAL", script, b"0", pattern.as_bytes()])?;
    ensure!(
        n == expected.to_string().as_bytes(),
        "{} keys under {prefix}, expected {expected}",
        String::from_utf8_lossy(&n)
    );
    Ok(())
}

// --- Files: plain buffered writes ----------------------------------------------

use sluice_plugin_sdk::time::write_timestamp as timestamp;

/// The same NDJSON lines, one write and one fsync per batch.
fn plain_files(dir: &Path, rows: &[CdrRecord], batch: usize) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let file = std::fs::File::create(dir.join("cdr-plain.ndjson"))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(512);
    for chunk in rows.chunks(batch) {
        for r in chunk {
            line.clear();
            line.extend_from_slice(b"{\"call_id\":");
            serde_json::to_writer(&mut line, &r.call_id)?;
            line.extend_from_slice(b",\"caller\":");
            serde_json::to_writer(&mut line, &r.caller)?;
            line.extend_from_slice(b",\"callee\":");
            serde_json::to_writer(&mut line, &r.callee)?;
            line.extend_from_slice(b",\"started_at\":\"");
            timestamp(r.started_at, &mut line);
            let _ = write!(line, "\",\"duration_s\":{},\"cell\":", r.duration_s);
            serde_json::to_writer(&mut line, &r.cell)?;
            line.extend_from_slice(b",\"cost\":");
            serde_json::to_writer(&mut line, &r.cost)?;
            line.extend_from_slice(b",\"call_type\":");
            serde_json::to_writer(&mut line, &r.call_type)?;
            let _ = writeln!(line, ",\"roaming\":{}}}", r.roaming);
            out.write_all(&line)?;
        }
        out.flush()?;
        out.get_ref().sync_data()?;
    }
    Ok(t.elapsed())
}

/// `n` finished files of one line each, named as file-writer names them and
/// last changed two hours ago (outside the default 15-minute window).
fn keep_finished_files(dir: &Path, n: usize) -> anyhow::Result<()> {
    let old = std::time::SystemTime::now() - Duration::from_secs(7200);
    for i in 0..n {
        let path = dir.join(format!(
            "cdr-20261127T080000.{i:06}Z-00000000000000aa.ndjson"
        ));
        let file = std::fs::File::create(&path)?;
        (&file).write_all(b"{\"call_id\":\"kept\"}\n")?;
        file.set_modified(old)?;
    }
    Ok(())
}

fn count_lines(dir: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let data = std::fs::read(entry?.path())?;
        n += data.iter().filter(|&&b| b == b'\n').count();
    }
    Ok(n)
}
