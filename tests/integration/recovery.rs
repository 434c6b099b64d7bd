//! The recovery rules of `pipeline.rs`, end to end: a daemon consuming a real
//! queue into Postgres with the crashing test plugins (`chaos-source`,
//! `chaos-writer`). A message that crashes the source, or a row that crashes a
//! writer or that it fails with its own error, is found inside its batch and
//! dead-lettered alone, with its headers; the rest of the batch lands and every
//! message is acked. A lone failing row is dead-lettered only with evidence
//! that the store takes rows; without it the pipeline stalls, visibly.
//!
//! The splitting itself (which pieces are written in which order) is tested
//! with fakes in `host/src/pipeline/recovery.rs`; these tests show what an
//! operator sees.

use lapin::types::{AMQPValue, FieldTable};
use sluice::admin::{PipelineStatus, Status};
use sluice_tests::cdr_json;
use sluice_tests::daemon::{Daemon, eventually, http_get};

use crate::daemon::{LONG, World, start, world};

/// One consumer taking the whole published backlog as one batch, so the
/// poison shares its batch with the good messages.
const ONE_BATCH: &str = "consumers = 1\nbatch = { max_messages = 50, max_wait = \"2s\" }";

fn text(headers: &FieldTable, key: &str) -> String {
    match headers.inner().get(key) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("header {key}: {other:?}"),
    }
}

/// Asserts the `x-sluice-*` headers of a dead letter of `w`'s pipeline.
#[track_caller]
fn assert_dead_letter_headers(w: &World, headers: &FieldTable, stage: &str, plugin: &str) {
    assert_eq!(text(headers, "x-sluice-stage"), stage);
    assert_eq!(text(headers, "x-sluice-plugin"), plugin);
    assert_eq!(text(headers, "x-sluice-pipeline"), w.setup.pipeline);
    assert_eq!(
        text(headers, "x-sluice-original-exchange"),
        w.setup.exchange
    );
    assert_eq!(text(headers, "x-sluice-original-routing-key"), "cdr.voice");
    assert!(
        matches!(
            headers.inner().get("x-sluice-failed-at"),
            Some(AMQPValue::Timestamp(t)) if *t > 1_700_000_000
        ),
        "{headers:?}"
    );
}

/// A CDR whose call id (the key `chaos-writer` reads) is `id`.
fn cdr_with_id(i: u64, id: &str) -> String {
    let body = cdr_json(i);
    let old = format!("\"id\":\"c-{i:012}\"");
    assert!(body.contains(&old), "{body}");
    body.replace(&old, &format!("\"id\":\"{id}\""))
}

/// 50 CDRs, the one at 25 with the call id `id`.
fn cdrs_with_one(id: &str) -> Vec<String> {
    (0..50)
        .map(|i| {
            if i == 25 {
                cdr_with_id(i, id)
            } else {
                cdr_json(i)
            }
        })
        .collect()
}

/// The pipeline's entry in `/status`.
async fn pipeline_status(w: &World) -> Option<PipelineStatus> {
    let (200, body) = http_get(w.setup.admin_port, "/status").await? else {
        return None;
    };
    let status: Status = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    status
        .pipelines
        .into_iter()
        .find(|p| p.name == w.setup.pipeline)
}

/// Waits until `/status` shows `acked` messages acked and none in hand.
async fn wait_all_acked(w: &World, acked: u64) -> PipelineStatus {
    eventually(LONG, &format!("{acked} messages acked"), || async {
        pipeline_status(w)
            .await
            .is_some_and(|p| p.messages_acked == acked && p.unacked == 0)
    })
    .await;
    pipeline_status(w).await.expect("the status")
}

/// The sum of the `sluice_plugin_failures_total` samples of `plugin`'s calls of
/// `func` that failed with `kind`.
async fn failures(w: &World, plugin: &str, func: &str, kind: &str) -> f64 {
    let (_, body) = http_get(w.setup.admin_port, "/metrics")
        .await
        .expect("the admin server answers");
    let labels = format!("plugin=\"{plugin}\",func=\"{func}\",kind=\"{kind}\"");
    body.lines()
        .filter(|l| l.starts_with("sluice_plugin_failures_total{") && l.contains(&labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Stops the daemon and asserts that nothing it held comes back to the queue:
/// every message was acked, not just taken.
async fn stop_with_nothing_unacked(w: &World, daemon: &mut Daemon) {
    daemon.stop_cleanly();
    assert_eq!(
        w.broker.ready(&w.setup.queue).await,
        0,
        "a message the daemon held unacked would be back in the queue"
    );
}

async fn chaos_keys(w: &World) -> Vec<String> {
    w.db.client
        .query(
            &format!("SELECT id FROM {}.chaos ORDER BY id", w.db.name),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_message_that_crashes_the_source_mid_batch_is_dead_lettered_alone_and_the_rest_land() {
    let mut w = world("source-crash").await;
    w.setup.source = ("chaos-source".into(), "{}".into(), "chaos".into());
    w.setup.write_config(ONE_BATCH);
    let mut bodies: Vec<String> = (0..49).map(|i| format!("ok-{i:02}")).collect();
    bodies.insert(25, "panic".into());
    w.broker.publish(&w.setup, bodies).await;
    let mut daemon = start(&w.setup, "daemon");

    let status = wait_all_acked(&w, 50).await;
    assert_eq!(status.dead_lettered.get("decode"), Some(&1), "{status:?}");
    assert!(
        status.retries.values().all(|n| *n == 0),
        "no stall: {status:?}"
    );
    // A batch of one would fail once: more failures show the batch was split
    // around the poison.
    let traps = failures(&w, "chaos-source@0.1.0", "decode", "trap").await;
    assert!(traps >= 2.0, "{traps} failed decodes");
    let log = daemon.log();
    assert!(
        log.contains("a message crashes the source plugin; dead-lettering it"),
        "{log}"
    );
    assert!(!log.contains("pipeline stalled"), "{log}");
    stop_with_nothing_unacked(&w, &mut daemon).await;

    let expected: Vec<String> = (0..49).map(|i| format!("ok-{i:02}")).collect();
    assert_eq!(chaos_keys(&w).await, expected, "every other message's row");
    let dead = w.broker.drain(&w.setup.dead_queue).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (body, headers) = &dead[0];
    assert_eq!(body, "panic");
    assert_dead_letter_headers(&w, headers, "decode", "chaos-source@0.1.0");
    let reason = text(headers, "x-sluice-reason");
    assert!(
        reason.starts_with("plugin chaos-source@0.1.0 trapped in `decode`")
            && reason.contains("chaos: asked to panic"),
        "{reason}"
    );
    w.finish().await;
}

#[tokio::test]
async fn a_panic_a_memory_bomb_and_an_endless_loop_in_one_batch_are_each_dead_lettered_alone() {
    let mut w = world("source-crashes").await;
    w.setup.source = ("chaos-source".into(), "{}".into(), "chaos".into());
    w.setup.daemon_extra = "plugin_memory_mib = 64\nplugin_call_deadline = \"2s\"".into();
    w.setup.write_config(ONE_BATCH);
    let mut bodies: Vec<String> = (0..27).map(|i| format!("ok-{i:02}")).collect();
    bodies.insert(5, "panic".into());
    bodies.insert(14, "alloc".into());
    bodies.insert(22, "loop".into());
    w.broker.publish(&w.setup, bodies).await;
    let mut daemon = start(&w.setup, "daemon");

    let status = wait_all_acked(&w, 30).await;
    assert_eq!(status.dead_lettered.get("decode"), Some(&3), "{status:?}");
    stop_with_nothing_unacked(&w, &mut daemon).await;

    assert_eq!(chaos_keys(&w).await.len(), 27);
    let mut dead = w.broker.drain(&w.setup.dead_queue).await;
    dead.sort_by(|a, b| a.0.cmp(&b.0));
    let seen: Vec<(&str, String)> = dead
        .iter()
        .map(|(body, headers)| {
            assert_dead_letter_headers(&w, headers, "decode", "chaos-source@0.1.0");
            (body.as_str(), text(headers, "x-sluice-reason"))
        })
        .collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0].0, "alloc");
    assert!(
        seen[0]
            .1
            .contains("went over its memory limit of 64 MiB in `decode`"),
        "{seen:?}"
    );
    assert_eq!(seen[1].0, "loop");
    assert!(seen[1].1.contains("deadline of 2s in `decode`"), "{seen:?}");
    assert_eq!(seen[2].0, "panic");
    assert!(seen[2].1.contains("chaos: asked to panic"), "{seen:?}");
    w.finish().await;
}

/// A pipeline of json-source into postgres-writer and then chaos-writer, with
/// `bodies` published before it starts.
async fn chaos_writer_world(tag: &str, pipeline_extra: &str, bodies: Vec<String>) -> World {
    let mut w = world(tag).await;
    w.setup.extra_writers = "\n[[pipelines.writers]]\nplugin = \"chaos-writer\"\n".into();
    w.setup.write_config(pipeline_extra);
    w.broker.publish(&w.setup, bodies).await;
    w
}

/// The row keyed `key` fails chaos-writer in the middle of a batch of 50: its
/// message is dead-lettered alone, with `reason` in its reason, and the others
/// are acked. Returns the daemon's log and the pipeline's status.
async fn one_failing_row_in_a_batch(
    tag: &str,
    key: &str,
    reason: &str,
) -> (String, PipelineStatus) {
    let w = chaos_writer_world(tag, ONE_BATCH, cdrs_with_one(key)).await;
    let mut daemon = start(&w.setup, "daemon");

    let status = wait_all_acked(&w, 50).await;
    assert_eq!(status.dead_lettered.get("write"), Some(&1), "{status:?}");
    let log = daemon.log();
    assert!(
        log.contains("a row fails the writer on its own; dead-lettering its message"),
        "{log}"
    );
    stop_with_nothing_unacked(&w, &mut daemon).await;

    // Every writer is given every row: postgres-writer, before chaos-writer,
    // stored all 50, and chaos-writer took the 49 others.
    assert_eq!(w.distinct_rows().await, 50);
    let dead = w.broker.drain(&w.setup.dead_queue).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let (body, headers) = &dead[0];
    assert!(body.contains(&format!("\"id\":\"{key}\"")), "{body}");
    assert_dead_letter_headers(&w, headers, "write", "chaos-writer@0.1.0");
    let got = text(headers, "x-sluice-reason");
    assert!(got.starts_with("row ") && got.contains(reason), "{got}");
    w.finish().await;
    (log, status)
}

#[tokio::test]
async fn a_row_that_crashes_a_writer_mid_batch_is_dead_lettered_alone_at_once() {
    let (log, status) = one_failing_row_in_a_batch(
        "writer-crash",
        "panic",
        "plugin chaos-writer@0.1.0 trapped in `write`: panicked: chaos: asked to panic in write",
    )
    .await;
    // A crash is taken apart at once, without waiting.
    assert!(!log.contains("pipeline stalled"), "{log}");
    assert_eq!(
        status.retries.get("write").copied().unwrap_or(0),
        0,
        "{status:?}"
    );
}

#[tokio::test]
async fn a_row_a_writer_fails_with_its_own_error_gets_one_more_try_then_is_dead_lettered_alone() {
    let (log, status) = one_failing_row_in_a_batch(
        "writer-fatal",
        "fatal",
        "plugin chaos-writer@0.1.0 failed in `write`: chaos: the store cannot take the row keyed `fatal`",
    )
    .await;
    // Its own error is retried once before the batch is taken apart.
    assert!(log.contains("writing failed and needs attention"), "{log}");
    assert_eq!(status.retries.get("write"), Some(&1), "{status:?}");
}

#[tokio::test]
async fn a_row_that_holds_a_writer_past_its_deadline_is_found_one_row_at_a_time() {
    let mut w = world("writer-slow").await;
    w.setup.extra_writers = "\n[[pipelines.writers]]\nplugin = \"chaos-writer\"\n".into();
    w.setup.daemon_extra = "plugin_call_deadline = \"2s\"".into();
    w.setup.write_config(ONE_BATCH);
    w.broker
        .publish(&w.setup, cdrs_with_one("sleep:600000"))
        .await;
    let mut daemon = start(&w.setup, "daemon");

    let status = wait_all_acked(&w, 50).await;
    assert_eq!(status.dead_lettered.get("write"), Some(&1), "{status:?}");
    // The whole batch, then the sleeper alone: halving would have cost a
    // deadline on every half that held it.
    let deadlines = failures(&w, "chaos-writer@0.1.0", "write", "deadline").await;
    assert_eq!(deadlines, 2.0);
    stop_with_nothing_unacked(&w, &mut daemon).await;

    let dead = w.broker.drain(&w.setup.dead_queue).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_dead_letter_headers(&w, &dead[0].1, "write", "chaos-writer@0.1.0");
    let reason = text(&dead[0].1, "x-sluice-reason");
    assert!(
        reason.contains("wall-clock deadline of 2s in `write`"),
        "{reason}"
    );
    w.finish().await;
}

#[tokio::test]
async fn a_lone_failing_row_is_dead_lettered_only_with_evidence_the_store_takes_rows() {
    let w = chaos_writer_world("lone-row", "consumers = 1", Vec::new()).await;
    let port = w.setup.admin_port;
    let mut daemon = start(&w.setup, "daemon");
    eventually(LONG, "the daemon ready", || async {
        matches!(http_get(port, "/readyz").await, Some((200, _)))
    })
    .await;

    // A writer just opened vouches for its store: a lone row that fails it is
    // the row's fault.
    w.broker.publish(&w.setup, [cdr_with_id(1, "fatal")]).await;
    w.wait_dead_letters(1, "the first lone row dead-lettered")
        .await;
    wait_all_acked(&w, 1).await;

    // Another lone failing row, with nothing committed since: the store may be
    // what fails (a dropped table). It waits, and the stall shows.
    w.broker.publish(&w.setup, [cdr_with_id(2, "fatal")]).await;
    eventually(LONG, "the stall, tried again and again", || async {
        pipeline_status(&w).await.is_some_and(|p| {
            let attempts = p
                .consumers
                .first()
                .and_then(|c| c.stalled.as_ref())
                .map(|s| s.attempts);
            p.unacked == 1 && attempts >= Some(4)
        })
    })
    .await;
    assert_eq!(
        w.broker.ready(&w.setup.dead_queue).await,
        1,
        "nothing dead-lettered without evidence"
    );
    assert!(
        matches!(http_get(port, "/readyz").await, Some((503, body)) if body.contains("stalled for")),
        "/readyz reports the stall"
    );
    let log = daemon.log();
    assert!(log.contains("pipeline stalled"), "{log}");
    assert!(
        log.contains("writing (no row of the batch could be written alone) failed"),
        "{log}"
    );

    // A good message arrives: the waiting batch takes it in, its row lands and
    // vouches for the store, and the failing row is dead-lettered.
    w.broker.publish(&w.setup, [cdr_json(3)]).await;
    w.wait_dead_letters(2, "the second lone row dead-lettered")
        .await;
    let status = wait_all_acked(&w, 3).await;
    assert_eq!(status.dead_lettered.get("write"), Some(&2), "{status:?}");
    assert!(status.consumers[0].stalled.is_none(), "{status:?}");
    eventually(LONG, "the recovery logged", || async {
        daemon.log().contains("pipeline recovered from its stall")
    })
    .await;
    stop_with_nothing_unacked(&w, &mut daemon).await;

    // postgres-writer, the first writer, took both "fatal" rows (one key) and
    // the good one.
    assert_eq!(w.distinct_rows().await, 2);
    for (body, headers) in w.broker.drain(&w.setup.dead_queue).await {
        assert!(body.contains("\"id\":\"fatal\""), "{body}");
        assert_dead_letter_headers(&w, &headers, "write", "chaos-writer@0.1.0");
    }
    w.finish().await;
}
