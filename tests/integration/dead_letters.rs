//! Dead letters always fit the broker's frame: a refused message whose dead
//! letter would be larger than RabbitMQ's `frame_max` (its original headers, a
//! huge source reason, the joined reasons of several writers) is dead-lettered
//! with its reason cut and headers dropped, never closing the pipeline's
//! connection, and the messages around it land.
//!
//! Before dead letters were fitted, each of these made RabbitMQ close the
//! daemon's connection (`FRAME_ERROR … frame_too_large`): the batch came back and
//! was tried again, forever, so these tests waited out their deadlines.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString};
use sluice_tests::daemon::{Daemon, eventually, http_get};

use crate::daemon::{World, cdrs, start, world};

/// How long a test waits for what a working daemon does in a few seconds.
const WAIT: Duration = Duration::from_secs(60);

/// RabbitMQ's default `frame_max`, which the daemon's and the tests'
/// connections negotiate.
const FRAME_MAX: usize = 131_072;

/// The documented maximum of `x-sluice-reason`.
const REASON_MAX_BYTES: usize = 16 * 1024;

fn text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        None => None,
        other => panic!("header {name}: {other:?}"),
    }
}

fn long_string(bytes: usize) -> AMQPValue {
    AMQPValue::LongString(LongString::from(vec![b'h'; bytes]))
}

/// Headers of about 130 KB whose message's header frame is `slack` bytes short
/// of `frame_max`: the broker takes the message, but not a dead letter of it
/// with Sluice's headers added. `x-blob` is the largest, `x-trace-id` small.
fn headers_near_frame_max(slack: usize) -> FieldTable {
    // The content-header frame of a publish whose only properties are the
    // delivery mode and the headers: 22 bytes of framing, class and flags, 1
    // of delivery mode, 4 of table length; an entry is its name (1 + length),
    // its type tag (1) and a long string (4 + length).
    let entry = |name: &str, value: usize| 1 + name.len() + 1 + 4 + value;
    let fixed = 22 + 1 + 4 + entry("x-trace-id", 8) + entry("x-blob-2", 30_000);
    let blob = FRAME_MAX - slack - fixed - entry("x-blob", 0);
    let mut headers = FieldTable::default();
    headers.insert(
        "x-trace-id".into(),
        AMQPValue::LongString("trace-42".into()),
    );
    headers.insert("x-blob-2".into(), long_string(30_000));
    headers.insert("x-blob".into(), long_string(blob));
    headers
}

/// Asserts the reason was cut to the documented size and says how much.
#[track_caller]
fn assert_cut(reason: &str, whole_bytes: usize) {
    assert!(
        reason.len() <= REASON_MAX_BYTES,
        "x-sluice-reason is {} bytes",
        reason.len()
    );
    let marker = reason.rfind("… [cut: ").expect("a cut marker");
    assert_eq!(
        &reason[marker..],
        format!("… [cut: {} more bytes]", whole_bytes - marker),
        "the marker counts the bytes cut"
    );
}

/// The daemon kept its connection: no session lost, no frame error.
#[track_caller]
fn assert_connection_kept(daemon: &Daemon) {
    let log = daemon.log();
    for bad in [
        "session lost",
        "FRAME_ERROR",
        "frame_too_large",
        "connection closed",
    ] {
        assert!(!log.contains(bad), "`{bad}` in the daemon's log:\n{log}");
    }
    assert!(
        log.contains("dead letter cut to fit the broker's frame"),
        "no log line for the cut:\n{log}"
    );
}

/// The `sluice_dead_letters_cut_total` sample of `kind`.
async fn cut_metric(w: &World, kind: &str) -> String {
    let (_, body) = http_get(w.setup.admin_port, "/metrics")
        .await
        .expect("the admin server answers");
    let prefix = format!(
        r#"sluice_dead_letters_cut_total{{pipeline="{}",kind="{kind}"}} "#,
        w.setup.pipeline
    );
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in:\n{body}"))
        .to_string()
}

/// Waits for `rows` rows in `table`, the dead letters, and an empty queue.
async fn wait_settled(w: &World, table: &str, rows: i64, dead: u32) {
    eventually(WAIT, &format!("{rows} rows in {table}"), || async {
        w.db.count_or_zero(table).await >= rows
    })
    .await;
    eventually(WAIT, &format!("{dead} dead letters"), || async {
        w.broker.ready(&w.setup.dead_queue).await >= dead
    })
    .await;
    eventually(WAIT, "an empty queue", || async {
        w.broker.ready(&w.setup.queue).await == 0
    })
    .await;
}

/// Sets the pipeline's source to `chaos-source` (one row per message, keyed by
/// its body, into table `chaos`), with `extra_writers` after the
/// postgres-writer.
fn chaos_pipeline(w: &mut World, extra_writers: &str) {
    w.setup.source = ("chaos-source".into(), "{}".into(), "chaos".into());
    w.setup.extra_writers = extra_writers.into();
    w.setup.write_config("");
}

fn bodies(range: std::ops::Range<u32>) -> impl Iterator<Item = String> {
    range.map(|i| format!("ok-{i}"))
}

#[tokio::test]
async fn a_message_with_130_kb_of_headers_is_dead_lettered_without_its_largest_headers() {
    let w = world("dl-headers").await;
    w.broker.publish(&w.setup, cdrs(0..100)).await;
    w.broker
        .publish_with_headers(&w.setup, "{not json", headers_near_frame_max(64))
        .await;
    w.broker.publish(&w.setup, cdrs(100..200)).await;
    let mut daemon = start(&w.setup, "daemon");

    wait_settled(&w, "cdr", 200, 1).await;
    // The pipeline keeps consuming after it.
    w.broker.publish(&w.setup, cdrs(200..250)).await;
    wait_settled(&w, "cdr", 250, 1).await;
    assert_connection_kept(&daemon);
    assert_eq!(cut_metric(&w, "headers").await, "1");
    assert_eq!(cut_metric(&w, "reason").await, "0");
    daemon.stop_cleanly();

    assert_eq!(w.rows().await, 250);
    let dead = w.broker.drain(&w.setup.dead_queue).await;
    assert_eq!(dead.len(), 1, "dead-lettered once, not in a loop");
    let (body, headers) = &dead[0];
    assert_eq!(body, "{not json");
    let reason = text(headers, "x-sluice-reason").unwrap();
    assert!(reason.starts_with("body is not valid JSON"), "{reason}");
    assert!(!reason.contains("[cut:"), "{reason}");
    assert_eq!(
        text(headers, "x-sluice-plugin").as_deref(),
        Some("json-source@0.1.0")
    );
    assert_eq!(text(headers, "x-sluice-stage").as_deref(), Some("decode"));
    assert_eq!(
        text(headers, "x-sluice-pipeline").as_deref(),
        Some(w.setup.pipeline.as_str())
    );
    // The largest header gave way; the others are still there.
    let dropped = text(headers, "x-sluice-dropped-headers").expect("the dropped headers named");
    assert!(dropped.starts_with("1 headers, "), "{dropped}");
    assert!(dropped.ends_with(" bytes: x-blob"), "{dropped}");
    assert!(!headers.inner().contains_key("x-blob"));
    assert_eq!(text(headers, "x-trace-id").as_deref(), Some("trace-42"));
    assert_eq!(text(headers, "x-blob-2").map(|v| v.len()), Some(30_000));
    w.finish().await;
}

#[tokio::test]
async fn a_300_kb_rejection_reason_is_cut_and_the_batch_around_it_lands() {
    let mut w = world("dl-reason").await;
    chaos_pipeline(&mut w, "");
    let poison = "reject:300000".to_string();
    let published = bodies(0..100)
        .chain(std::iter::once(poison))
        .chain(bodies(100..200));
    w.broker.publish(&w.setup, published).await;
    let mut daemon = start(&w.setup, "daemon");

    wait_settled(&w, "chaos", 200, 1).await;
    w.broker.publish(&w.setup, bodies(200..250)).await;
    wait_settled(&w, "chaos", 250, 1).await;
    assert_connection_kept(&daemon);
    assert_eq!(cut_metric(&w, "reason").await, "1");
    assert_eq!(cut_metric(&w, "headers").await, "0");
    daemon.stop_cleanly();

    assert_eq!(w.db.count("chaos").await.unwrap(), 250);
    let dead = w.broker.drain(&w.setup.dead_queue).await;
    assert_eq!(dead.len(), 1, "dead-lettered once, not in a loop");
    let (body, headers) = &dead[0];
    assert_eq!(body, "reject:300000");
    let reason = text(headers, "x-sluice-reason").unwrap();
    assert!(reason.starts_with("rrrr"), "{}", &reason[..40]);
    assert_cut(&reason, 300_000);
    assert_eq!(
        text(headers, "x-sluice-plugin").as_deref(),
        Some("chaos-source@0.1.0")
    );
    assert_eq!(text(headers, "x-sluice-stage").as_deref(), Some("decode"));
    assert_eq!(text(headers, "x-sluice-dropped-headers"), None);
    w.finish().await;
}

#[tokio::test]
async fn the_joined_reasons_of_two_writers_are_cut_and_the_batch_around_them_lands() {
    // Two writers each refuse the row of `refuse:100000` with a 100 KB reason;
    // the pipeline joins them into one `x-sluice-reason` of 200 KB. (Many
    // refused rows of one message, joined the same way, are covered by the unit
    // test of the cut: json-source makes one row per message.)
    let mut w = world("dl-joined").await;
    chaos_pipeline(
        &mut w,
        r#"
[[pipelines.writers]]
plugin = "chaos-writer"

[[pipelines.writers]]
plugin = "chaos-writer"
"#,
    );
    let poison = "refuse:100000".to_string();
    let published = bodies(0..100)
        .chain(std::iter::once(poison))
        .chain(bodies(100..200));
    w.broker.publish(&w.setup, published).await;
    let mut daemon = start(&w.setup, "daemon");

    // The postgres-writer takes every row, the refused one included.
    wait_settled(&w, "chaos", 201, 1).await;
    w.broker.publish(&w.setup, bodies(200..250)).await;
    wait_settled(&w, "chaos", 251, 1).await;
    assert_connection_kept(&daemon);
    assert_eq!(cut_metric(&w, "reason").await, "1");
    daemon.stop_cleanly();

    assert_eq!(w.db.count("chaos").await.unwrap(), 251);
    let dead = w.broker.drain(&w.setup.dead_queue).await;
    assert_eq!(dead.len(), 1, "dead-lettered once, not in a loop");
    let (body, headers) = &dead[0];
    assert_eq!(body, "refuse:100000");
    let reason = text(headers, "x-sluice-reason").unwrap();
    // `row N: www…; row N: www…`, 200 KB and more before the cut.
    assert!(reason.starts_with("row "), "{}", &reason[..40]);
    let row_prefix = reason.find(':').unwrap() + 2;
    let whole = 2 * (row_prefix + 100_000) + 2;
    assert_cut(&reason, whole);
    assert_eq!(
        text(headers, "x-sluice-plugin").as_deref(),
        Some("chaos-writer@0.1.0")
    );
    assert_eq!(text(headers, "x-sluice-stage").as_deref(), Some("write"));
    w.finish().await;
}
