//! One pipeline fanning out to four stores: Postgres, ClickHouse (HTTP), Redis
//! (TCP) and files (a granted directory), each writer granted only what it needs.
//! A message is acked once every writer committed its rows, so after a `kill -9`
//! and a restart every store holds every message exactly once.

use std::collections::HashSet;
use std::path::Path;

use sluice_tests::stores::{CLICKHOUSE_HTTP, REDIS, Redis, clickhouse};

use crate::daemon::{World, cdrs, start, world};

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
    w.wait_drained().await;
    daemon.stop_cleanly();
    let log = daemon.log();
    assert!(
        // The host's warnings for a denied request, socket or connection.
        !log.contains("outside its grants") && !log.contains("it was not granted"),
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

#[tokio::test]
async fn a_row_one_writer_refuses_is_dead_lettered_with_that_writers_reason() {
    let mut w = world("fan-out-poison").await;
    // Postgres refuses one row (a check constraint); the file writer takes all.
    w.create_table_refusing_777().await;
    let files = w.setup.dir.join("files");
    w.setup.extra_writers = format!(
        r#"
[[pipelines.writers]]
plugin = "file-writer"
grants = {{ directory = "{}" }}
config = {{ format = "ndjson", prefix = "cdr" }}
"#,
        files.display()
    );
    w.setup.write_config("");
    w.broker.publish(&w.setup, cdrs(0..1_000)).await;
    let mut daemon = start(&w.setup, "daemon");
    w.wait_rows(999, "the rows Postgres takes").await;
    w.wait_dead_letters(1, "the refused message dead-lettered")
        .await;
    w.wait_drained().await;
    daemon.stop_cleanly();

    let dead = w.broker.drain(&w.setup.dead_queue).await;
    assert_eq!(dead.len(), 1, "one message, dead-lettered once");
    let (body, headers) = &dead[0];
    assert!(body.contains("c-000000000777"), "{body}");
    let header = |k: &str| match headers.inner().get(k) {
        Some(lapin::types::AMQPValue::LongString(s)) => {
            String::from_utf8_lossy(s.as_bytes()).into_owned()
        }
        other => panic!("header {k}: {other:?}"),
    };
    assert_eq!(header("x-sluice-plugin"), "postgres-writer@0.1.0");
    assert_eq!(header("x-sluice-stage"), "write");
    assert!(
        header("x-sluice-reason").contains("check constraint"),
        "{}",
        header("x-sluice-reason")
    );
    assert_eq!(w.rows().await, 999);
    // Writers are independent stores: the file writer committed the row before
    // the message was dead-lettered (docs/operations.md, fan-out).
    assert_each_once("files", &file_rows(&files), 1_000);
    w.finish().await;
}
