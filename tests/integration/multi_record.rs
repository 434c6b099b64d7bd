//! Messages that hold many records (issue 14, item 7): NDJSON or a JSON array,
//! plain, gzip or zstd, through json-source and the daemon into Postgres. Every
//! record is one row; a bad record goes to the dead-letter queue alone (its own
//! bytes, its index, the message's id) while the good records of the same message
//! land; a body that decompresses past the configured limit is dead-lettered whole.
//! And a source built against `sluice:plugin@0.1.0` still loads and runs.

use std::collections::BTreeSet;
use std::io::Write;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use sluice_tests::daemon::{http_get, json_to_toml_inline};
use sluice_tests::{cdr_json, cdr_source_config, plugin};

use crate::daemon::{World, start, world};
use crate::{message, runtime};

fn text(headers: &FieldTable, name: &str) -> String {
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("header {name}: {other:?}"),
    }
}

/// The CDR configuration of json-source, with `records` and
/// `max_decompressed_bytes`.
fn cdr_config(records: &str, max_decompressed_bytes: u64) -> String {
    let mut config: serde_json::Value = serde_json::from_str(&cdr_source_config(1, "")).unwrap();
    config["records"] = records.into();
    config["max_decompressed_bytes"] = max_decompressed_bytes.into();
    json_to_toml_inline(&config.to_string())
}

async fn world_with(tag: &str, records: &str, max_decompressed_bytes: u64) -> World {
    let mut w = world(tag).await;
    w.setup.source.1 = cdr_config(records, max_decompressed_bytes);
    w.setup.write_config("");
    w
}

fn compress(encoding: Option<&str>, body: &[u8]) -> Vec<u8> {
    match encoding {
        None => body.to_vec(),
        Some("gzip") => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(body).unwrap();
            e.finish().unwrap()
        }
        Some("zstd") => {
            ruzstd::encoding::compress_to_vec(body, ruzstd::encoding::CompressionLevel::Fastest)
        }
        Some(other) => panic!("{other}"),
    }
}

/// A CDR with no caller: json-source refuses it (the column is not nullable).
fn bad_cdr(i: u64) -> String {
    format!(
        r#"{{"call":{{"id":"c-{i:012}","callee":"+33620000000"}},"start":"2026-11-27T10:00:00Z","duration":5}}"#
    )
}

/// Publishes two messages of five records each, `records`-framed and
/// `encoding`-compressed: `batch-1` with record 2 bad, `batch-2` all good. Then
/// checks that the eight good records landed and the bad one alone was
/// dead-lettered with its bytes, index and message id.
async fn good_records_land_and_the_bad_one_is_dead_lettered_alone(
    tag: &str,
    records: &str,
    encoding: Option<&str>,
) {
    let w = world_with(tag, records, 64 << 20).await;
    let record = |i: u64| if i == 2 { bad_cdr(i) } else { cdr_json(i) };
    let frame = |items: Vec<String>| match records {
        "ndjson" => items.join("\n") + "\n",
        "array" => format!("[{}]", items.join(",\n")),
        other => panic!("{other}"),
    };
    let first = frame((0..5).map(record).collect());
    let second = frame((5..10).map(cdr_json).collect());
    let messages = [("batch-1", first), ("batch-2", second)].map(|(id, body)| {
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(id.into());
        if let Some(encoding) = encoding {
            props = props.with_content_encoding(encoding.into());
        }
        (compress(encoding, body.as_bytes()), props)
    });
    w.broker
        .publish_messages(&w.setup.exchange, messages)
        .await
        .unwrap();

    let mut daemon = start(&w.setup, "daemon");
    w.wait_rows(8, "the 8 good records as rows").await;
    w.wait_dead_letters(1, "the bad record, dead-lettered")
        .await;
    w.wait_drained().await;

    let ids: BTreeSet<String> =
        w.db.client
            .query(&format!("SELECT call_id FROM {}.cdr", w.db.name), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    let want: BTreeSet<String> = [0, 1, 3, 4, 5, 6, 7, 8, 9]
        .iter()
        .map(|i| format!("c-{i:012}"))
        .collect();
    assert_eq!(ids, want, "every good record is a row, the bad one is not");

    let dead = w.broker.drain(&w.setup.dead_queue).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (body, headers) = &dead[0];
    assert_eq!(
        body,
        &bad_cdr(2),
        "the dead letter is the record's own bytes"
    );
    assert_eq!(
        headers.inner().get("x-sluice-record-index"),
        Some(&AMQPValue::LongLongInt(2))
    );
    assert_eq!(text(headers, "x-sluice-original-message-id"), "batch-1");
    assert_eq!(text(headers, "x-sluice-stage"), "decode");
    let reason = text(headers, "x-sluice-reason");
    assert!(
        reason.starts_with("record 2: missing required field \"call.caller\" (column caller)"),
        "{reason}"
    );
    assert!(
        daemon.log().contains("record dead-lettered"),
        "{}",
        daemon.log()
    );
    // The record counts as one dead letter of the decode stage.
    let (_, metrics) = http_get(w.setup.admin_port, "/metrics")
        .await
        .expect("the admin server answers");
    let sample = metrics
        .lines()
        .find(|l| {
            l.starts_with("sluice_messages_dead_lettered_total{")
                && l.contains(&format!("pipeline=\"{}\"", w.setup.pipeline))
                && l.contains("stage=\"decode\"")
        })
        .unwrap_or_else(|| panic!("no decode dead-letter count in:\n{metrics}"));
    assert!(sample.ends_with(" 1"), "{sample}");
    daemon.stop_cleanly();
    w.finish().await;
}

#[tokio::test]
async fn ndjson_good_records_land_and_the_bad_one_is_dead_lettered_alone() {
    good_records_land_and_the_bad_one_is_dead_lettered_alone("mr-ndjson", "ndjson", None).await;
}

#[tokio::test]
async fn array_good_records_land_and_the_bad_one_is_dead_lettered_alone() {
    good_records_land_and_the_bad_one_is_dead_lettered_alone("mr-array", "array", None).await;
}

#[tokio::test]
async fn gzip_ndjson_good_records_land_and_the_bad_one_is_dead_lettered_alone() {
    good_records_land_and_the_bad_one_is_dead_lettered_alone("mr-gzip", "ndjson", Some("gzip"))
        .await;
}

#[tokio::test]
async fn zstd_array_good_records_land_and_the_bad_one_is_dead_lettered_alone() {
    good_records_land_and_the_bad_one_is_dead_lettered_alone("mr-zstd", "array", Some("zstd"))
        .await;
}

#[tokio::test]
async fn a_decompression_bomb_is_dead_lettered_whole_naming_the_limit() {
    let w = world_with("mr-bomb", "ndjson", 1_000_000).await;
    // 20 MB of blank lines: 20 KB of gzip, 20 times the limit decompressed.
    let bomb = compress(Some("gzip"), &vec![b'\n'; 20 << 20]);
    assert!(bomb.len() < 100_000, "{}", bomb.len());
    let props = |id: &str| {
        BasicProperties::default()
            .with_message_id(id.into())
            .with_content_encoding("gzip".into())
    };
    let good = compress(Some("gzip"), cdr_json(1).as_bytes());
    w.broker
        .publish_messages(
            &w.setup.exchange,
            [(bomb.clone(), props("bomb")), (good, props("good"))],
        )
        .await
        .unwrap();

    let mut daemon = start(&w.setup, "daemon");
    w.wait_rows(1, "the good message's row").await;
    w.wait_dead_letters(1, "the bomb, dead-lettered").await;
    w.wait_drained().await;
    assert_eq!(w.rows().await, 1);
    let dead = w.broker.drain(&w.setup.dead_queue).await;
    let (body, headers) = &dead[0];
    // `drain` reads bodies as lossy UTF-8: compared the same way.
    assert_eq!(
        body,
        &String::from_utf8_lossy(&bomb),
        "the bomb is dead-lettered as it came"
    );
    assert_eq!(
        text(headers, "x-sluice-reason"),
        "content-encoding gzip: the body decompresses past max_decompressed_bytes \
         (1000000 bytes); it was not decompressed further"
    );
    assert!(headers.inner().get("x-sluice-record-index").is_none());
    daemon.stop_cleanly();
    w.finish().await;
}

#[tokio::test]
async fn a_source_built_against_0_1_0_still_loads_and_runs() {
    let rt = runtime();
    let legacy = rt.load(&plugin("legacy-source")).await.unwrap();
    assert_eq!(legacy.wit_version, "0.1.0");
    let json = rt.load(&plugin("json-source")).await.unwrap();
    assert_eq!(json.wit_version, "0.2.0");

    // Through the daemon, into Postgres: rows for the good messages, a dead
    // letter for the one it rejects.
    let mut w = world("mr-legacy").await;
    w.setup.source = ("legacy-source".into(), "{}".into(), "legacy".into());
    w.setup.write_config("");
    let messages = [
        ("a", b"first".to_vec()),
        ("b", vec![0xff]),
        ("c", b"third".to_vec()),
    ]
    .map(|(id, body)| {
        let props = BasicProperties::default()
            .with_message_id(id.into())
            .with_content_encoding("gzip".into());
        (body, props)
    });
    w.broker
        .publish_messages(&w.setup.exchange, messages)
        .await
        .unwrap();
    let mut daemon = start(&w.setup, "daemon");
    w.wait_dead_letters(1, "the non-UTF-8 message, dead-lettered")
        .await;
    sluice_tests::daemon::eventually(crate::daemon::LONG, "2 legacy rows", || async {
        w.db.count_or_zero("legacy").await == 2
    })
    .await;
    let rows: Vec<(String, String)> =
        w.db.client
            .query(
                &format!("SELECT id, body FROM {}.legacy ORDER BY id", w.db.name),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    // A 0.1.0 source has no content-encoding: it sees the body as published.
    assert_eq!(
        rows,
        [("a".into(), "first".into()), ("c".into(), "third".into())]
    );
    let dead = w.broker.drain(&w.setup.dead_queue).await;
    assert!(
        text(&dead[0].1, "x-sluice-reason").starts_with("body is not UTF-8"),
        "{:?}",
        dead[0].1
    );
    daemon.stop_cleanly();
    w.finish().await;
}

#[tokio::test]
async fn a_0_1_0_source_decodes_in_the_runtime_like_before() {
    let rt = runtime();
    let legacy = std::sync::Arc::new(rt.load(&plugin("legacy-source")).await.unwrap());
    let mut source =
        sluice::plugin_runtime::SourceInstance::new(rt.clone(), legacy, "p", "{}".into());
    let schema = source.schema().await.unwrap();
    assert_eq!(schema.name, "legacy");
    let mut m = message("hello");
    m.message_id = Some("m-1".into());
    let decoded = source.decode(&[m, message(vec![0xff])]).await.unwrap();
    use sluice::plugin_runtime::MessageOutcome;
    assert_eq!(decoded.outcomes[0], MessageOutcome::Rows(1));
    assert!(
        matches!(&decoded.outcomes[1], MessageOutcome::Rejected(r) if r.starts_with("body is not UTF-8"))
    );
    assert_eq!(decoded.rows.count, 1);
}
