//! Python plugins: rows per second of the Python CSV source against
//! `json-source` on equivalent messages, in the same run, and how long a Python
//! component takes to load the first time (compiled) and once cached.
//!
//! The same CDRs (`cdr_json`, 9 fields) are decoded through Sluice's runtime
//! (`SourceInstance::decode`, batches of 1000 messages):
//!
//! - `json-source` (Rust), one CDR per message, as JSON;
//! - `python-csv-source`, one CDR per message, as a header line and one CSV line;
//! - `python-csv-source`, 100 CDRs per message (a file-like feed).
//!
//! Each measurement runs `ROUNDS` times, interleaved; the report gives the median
//! and the range. Loads: a fresh compiled-code cache (compile + write it), then
//! the cached load (`PluginRuntime::load` with that cache), each a few times.
//!
//! Run: `cargo bench -p sluice-tests --bench python_plugins`.
//! `SLUICE_BENCH_MESSAGES` and `SLUICE_BENCH_ROUNDS` shrink it for a smoke run.

mod common;

use std::sync::Arc;
use std::time::Instant;

use anyhow::ensure;
use sluice::plugin_runtime::{LoadedPlugin, Message, PluginRuntime, RuntimeConfig, SourceInstance};
use sluice_tests::{cdr_json, cdr_source_config, plugin, python_plugin, unique_name};

use common::{env_usize, max, median, min, rate, thousands};

const TARGET_ROWS_PER_SEC: f64 = 20_000.0;
const TARGET_CACHED_LOAD_MS: f64 = 100.0;
const BATCH: usize = 1000;

const CSV_HEADER: &str = "call_id,caller,callee,started_at,duration_s,cell,cost,call_type,roaming";

fn csv_config() -> String {
    let col =
        |name: &str, ty: &str, extra: &str| format!(r#"{{"name":"{name}","type":"{ty}"{extra}}}"#);
    format!(
        r#"{{"schema":"cdr","version":1,"columns":[{}]}}"#,
        [
            col("call_id", "text", r#","key":true"#),
            col("caller", "text", ""),
            col("callee", "text", ""),
            col("started_at", "timestamp", ""),
            col("duration_s", "int32", ""),
            col("cell", "text", r#","nullable":true"#),
            col("cost", "numeric", r#","nullable":true"#),
            col("call_type", "text", r#","nullable":true"#),
            col("roaming", "bool", r#","nullable":true"#),
        ]
        .join(",")
    )
}

/// CDR `i` as one CSV line, from the same JSON the json-source decodes.
fn csv_line(i: u64) -> String {
    let v: serde_json::Value = serde_json::from_str(&cdr_json(i)).unwrap();
    format!(
        "{},{},{},{},{},{},{},{},{}",
        v["call"]["id"].as_str().unwrap(),
        v["call"]["caller"].as_str().unwrap(),
        v["call"]["callee"].as_str().unwrap(),
        v["start"].as_str().unwrap(),
        v["duration"],
        v["cell"].as_str().unwrap(),
        v["cost"].as_str().unwrap(),
        v["type"].as_str().unwrap(),
        v["roaming"],
    )
}

fn message(body: String) -> Message {
    Message {
        body: body.into_bytes(),
        exchange: "cdr".into(),
        routing_key: "cdr.voice".into(),
        headers: Vec::new(),
        content_type: None,
        content_encoding: None,
        message_id: None,
        timestamp: None,
        redelivered: false,
    }
}

fn runtime(cache: &std::path::Path) -> anyhow::Result<Arc<PluginRuntime>> {
    PluginRuntime::new(RuntimeConfig {
        cache_dir: Some(cache.to_path_buf()),
        ..RuntimeConfig::default()
    })
}

/// Decodes every message in batches; returns rows per second.
async fn decode_all(
    rt: &Arc<PluginRuntime>,
    loaded: &Arc<LoadedPlugin>,
    config: &str,
    messages: &[Message],
    expect_rows: u64,
) -> anyhow::Result<f64> {
    let mut source = SourceInstance::new(rt.clone(), loaded.clone(), "bench", config.into());
    source.schema().await?;
    let started = Instant::now();
    let mut rows = 0u64;
    for batch in messages.chunks(BATCH) {
        let decoded = source.decode(batch).await?;
        rows += u64::from(decoded.rows.count);
    }
    let elapsed = started.elapsed();
    ensure!(
        rows == expect_rows,
        "decoded {rows} rows, expected {expect_rows}"
    );
    Ok(rate(rows, elapsed))
}

fn line(name: &str, figures: &[f64], unit: &str) {
    println!(
        "{name:<52} {:>10} {unit}  (range {} to {})",
        thousands(median(figures)),
        thousands(min(figures)),
        thousands(max(figures))
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run().await
}

async fn run() -> anyhow::Result<()> {
    let n = env_usize("SLUICE_BENCH_MESSAGES", 100_000) as u64;
    let rounds = env_usize("SLUICE_BENCH_ROUNDS", 3);
    println!("{}", common::machine_line());
    let csv_path = python_plugin("python-csv-source");
    println!(
        "python-csv-source.wasm: {:.1} MB; {n} CDRs, batches of {BATCH}, {rounds} rounds",
        std::fs::metadata(&csv_path)?.len() as f64 / 1e6
    );

    // Loads: first (compile, fill the cache), then cached, each in a new runtime.
    let mut first = Vec::new();
    let mut cached = Vec::new();
    for _ in 0..rounds {
        let cache = std::env::temp_dir().join(unique_name("py-bench-cache"));
        let t = Instant::now();
        runtime(&cache)?.load(&csv_path).await?;
        first.push(t.elapsed().as_secs_f64() * 1000.0);
        for _ in 0..3 {
            let t = Instant::now();
            runtime(&cache)?.load(&csv_path).await?;
            cached.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        std::fs::remove_dir_all(&cache)?;
    }

    let cache = std::env::temp_dir().join(unique_name("py-bench-cache"));
    let rt = runtime(&cache)?;
    let json: Arc<LoadedPlugin> = Arc::new(rt.load(&plugin("json-source")).await?);
    let csv: Arc<LoadedPlugin> = Arc::new(rt.load(&csv_path).await?);
    let json_config = cdr_source_config(1, "");
    let csv_config = csv_config();
    let json_msgs: Vec<Message> = (0..n).map(|i| message(cdr_json(i))).collect();
    let csv_msgs: Vec<Message> = (0..n)
        .map(|i| message(format!("{CSV_HEADER}\n{}\n", csv_line(i))))
        .collect();
    let csv_files: Vec<Message> = (0..n / 100)
        .map(|m| {
            let mut body = format!("{CSV_HEADER}\n");
            for i in m * 100..m * 100 + 100 {
                body.push_str(&csv_line(i));
                body.push('\n');
            }
            message(body)
        })
        .collect();

    let (mut r_json, mut r_csv, mut r_files) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        r_json.push(decode_all(&rt, &json, &json_config, &json_msgs, n).await?);
        r_csv.push(decode_all(&rt, &csv, &csv_config, &csv_msgs, n).await?);
        r_files.push(decode_all(&rt, &csv, &csv_config, &csv_files, n / 100 * 100).await?);
    }
    std::fs::remove_dir_all(&cache)?;

    println!();
    line("json-source (Rust), 1 CDR per message", &r_json, "rows/s");
    line("python-csv-source, 1 CDR per message", &r_csv, "rows/s");
    line(
        "python-csv-source, 100 CDRs per message",
        &r_files,
        "rows/s",
    );
    line(
        "python-csv-source first load (compile + cache)",
        &first,
        "ms",
    );
    line("python-csv-source cached load", &cached, "ms");
    println!();
    let worst = median(&r_csv).min(median(&r_files));
    println!(
        "target >= {} rows/s: {} (slowest median {}); cached load < {TARGET_CACHED_LOAD_MS} ms: {} (median {:.1} ms)",
        thousands(TARGET_ROWS_PER_SEC),
        if worst >= TARGET_ROWS_PER_SEC {
            "met"
        } else {
            "NOT met"
        },
        thousands(worst),
        if median(&cached) < TARGET_CACHED_LOAD_MS {
            "met"
        } else {
            "NOT met"
        },
        median(&cached),
    );
    Ok(())
}
