//! One pipeline fanning out to four stores: Postgres, ClickHouse (HTTP), Redis
//! (TCP) and files (a granted directory), each writer granted only what it needs.
//! A message is acked once every writer committed its rows, so after a `kill -9`
//! and a restart every store holds every message exactly once.

use std::collections::HashSet;
use std::path::Path;

use sluice_tests::daemon::eventually;
use sluice_tests::stores::{CLICKHOUSE_HTTP, REDIS, Redis, clickhouse};

use crate::daemon::{LONG, World, cdrs, start, world};

/// The three customer-store writers of `w`, as `[[pipelines.writers]]` tables.
fn store_writers(w: &World, database: &str, files: &Path) -> String {
    format!(
        r#"
[[pipelines.writers]]
plugin = "clickhouse-writer"
grants = {{ http = ["http://{CLICKHOUSE_HTTP}"] }}
config = {{ url = "http://{CLICKHOUSE_HTTP}", database = "{database}", table = "cdr" }}

[[pipelines.writers]]
plugin = "redis-writer"
grants = {{ tcp = ["{REDIS}"] }}
config = {{ address = "{REDIS}", mode = "hash", key_prefix = "{prefix}:" }}

[[pipelines.writers]]
plugin = "file-writer"
grants = {{ directory = "{files}" }}
config = {{ format = "ndjson", prefix = "cdr" }}
"#,
        prefix = w.setup.pipeline,
        files = files.display(),
    )
}

/// The call ids in every file the file writer left, finished or still open,
/// each line checked to be a whole JSON object.
fn file_rows(dir: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends in the middle of a line",
            path.display()
        );
        for line in text.lines() {
            let row: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not a JSON row ({e}): {line}", path.display()));
            ids.push(row["call_id"].as_str().expect("call_id").to_string());
        }
    }
    ids
}

fn assert_each_once(store: &str, ids: &[String], n: usize) {
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), n, "{store}: distinct call ids");
    assert_eq!(
        ids.len(),
        n,
        "{store}: rows (a duplicate is a row written twice)"
    );
}

#[tokio::test]
async fn ten_thousand_messages_land_in_four_stores_exactly_once_across_a_kill_9() {
    const N: u64 = 10_000;
    let mut w = world("fan-out").await;
    let database = w.setup.pg_schema.clone();
    let files = w.setup.dir.join("files");
    w.setup.extra_writers = store_writers(&w, &database, &files);
    w.setup.write_config("");
    let mut redis = Redis::connect();
    let keys = format!("{}:*", w.setup.pipeline);

    w.broker.publish(&w.setup, cdrs(0..N / 2)).await;
    let daemon = start(&w.setup, "first");
    w.wait_rows(1_000, "the first rows").await;
    daemon.kill9();
    let landed = w.rows().await;
    assert!(landed < N as i64, "killed mid-stream ({landed} rows)");

    w.broker.publish(&w.setup, cdrs(N / 2..N)).await;
    let mut daemon = start(&w.setup, "second");
    w.wait_rows(N as i64, "every row in Postgres after the restart")
        .await;
    eventually(LONG, "an empty queue", || async {
        w.broker.ready(&w.setup.queue).await == 0
    })
    .await;
    daemon.stop_cleanly();
    let log = daemon.log();
    assert!(
        !log.contains("access denied"),
        "no writer was denied: {log}"
    );

    assert_eq!(w.rows().await, N as i64, "Postgres rows");
    assert_eq!(w.distinct_rows().await, N as i64, "Postgres distinct rows");

    // ClickHouse: ReplacingMergeTree on the key, read with FINAL as documented.
    let counts = clickhouse(&format!(
        "SELECT count(), uniqExact(call_id) FROM {database}.cdr FINAL"
    ));
    assert_eq!(
        counts.trim(),
        format!("{N}\t{N}"),
        "ClickHouse rows, distinct"
    );
    let sample = clickhouse(&format!(
        "SELECT caller, duration_s FROM {database}.cdr FINAL WHERE call_id = 'c-000000000042'"
    ));
    assert_eq!(
        sample.trim(),
        "+33610000042\t42",
        "a ClickHouse row's values"
    );

    // Redis: one hash per key, latest state.
    assert_eq!(redis.keys(&keys).len(), N as usize, "Redis hashes");
    let caller = redis.cmd(&[
        "HGET",
        &format!("{}:c-000000000042", w.setup.pipeline),
        "caller",
    ]);
    assert_eq!(
        caller,
        sluice_tests::stores::Reply::Text("+33610000042".into()),
        "a Redis hash's field"
    );

    // Files: whole lines only, each message once.
    assert_each_once("files", &file_rows(&files), N as usize);

    assert_eq!(
        w.broker.ready(&w.setup.dead_queue).await,
        0,
        "nothing dead-lettered"
    );
    clickhouse(&format!("DROP DATABASE IF EXISTS {database}"));
    redis.delete_matching(&keys);
    w.finish().await;
}
