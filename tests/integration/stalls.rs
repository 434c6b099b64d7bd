//! Nothing blocks a pipeline: rows a store cannot take are dead-lettered, a
//! failure that is the store's stalls the pipeline visibly, and a stall ends by
//! itself once the store or the messages allow it.

use sluice_tests::cdr_json;
use sluice_tests::daemon::{eventually, header, http_get};

use crate::daemon::{LONG, start, world};

/// A CDR whose call id is `id`.
fn cdr_with_id(i: u64, id: &str) -> String {
    let body = cdr_json(i);
    let old = format!("\"id\":\"c-{i:012}\"");
    assert!(body.contains(&old), "{body}");
    body.replace(&old, &format!("\"id\":\"{id}\""))
}

/// `n` characters that compress poorly (a xorshift over 64 symbols): a key
/// that no compression brings under Postgres' btree limit.
fn incompressible(seed: u64, n: usize) -> String {
    const SYMBOLS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            SYMBOLS[(x % 64) as usize] as char
        })
        .collect()
}

async fn metric(port: u16, prefix: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics").await?;
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn keys_too_large_for_the_index_are_dead_lettered_and_the_good_messages_land() {
    let w = world("index-key").await;
    // Two poison messages among 100 good ones: keys of 5,000 characters, over
    // the btree limit of about 2,700 bytes (SQLSTATE 54000).
    let mut bodies: Vec<String> = (0..50).map(cdr_json).collect();
    bodies.push(cdr_with_id(1_000, &incompressible(1, 5_000)));
    bodies.extend((50..100).map(cdr_json));
    bodies.push(cdr_with_id(1_001, &incompressible(2, 5_000)));
    w.broker.publish(&w.setup, bodies).await;
    let mut daemon = start(&w.setup, "daemon");

    w.wait_rows(100, "the good rows").await;
    w.wait_dead_letters(2, "both poison messages dead-lettered")
        .await;
    w.wait_drained().await;
    assert!(
        daemon.wait_exit(std::time::Duration::ZERO).is_none(),
        "the daemon is still running"
    );
    daemon.stop_cleanly();

    assert_eq!(w.rows().await, 100);
    let dead = w.broker.drain(&w.setup.dead_queue).await;
    assert_eq!(dead.len(), 2);
    for (body, headers) in &dead {
        assert!(body.len() > 5_000, "the poison message itself");
        assert_eq!(header(headers, "x-sluice-stage"), "write");
        assert_eq!(header(headers, "x-sluice-plugin"), "postgres-writer@0.1.0");
        let reason = header(headers, "x-sluice-reason");
        assert!(reason.contains("SQLSTATE 54000"), "{reason}");
    }
    w.finish().await;
}

#[tokio::test]
async fn a_row_a_writer_fails_on_with_its_own_error_is_dead_lettered_and_the_rest_land() {
    let mut w = world("own-error").await;
    w.setup.extra_writers = r#"
[[pipelines.writers]]
plugin = "chaos-writer"
"#
    .into();
    w.setup.write_config("");
    let mut bodies: Vec<String> = (0..60).map(cdr_json).collect();
    bodies.insert(30, cdr_with_id(1_000, "fatal"));
    w.broker.publish(&w.setup, bodies).await;
    let mut daemon = start(&w.setup, "daemon");

    w.wait_dead_letters(1, "the poison message dead-lettered")
        .await;
    w.wait_drained().await;
    daemon.stop_cleanly();

    // postgres-writer, the first writer, took every row; the dead letter says
    // which writer refused the message.
    assert_eq!(w.rows().await, 61);
    let dead = w.broker.drain(&w.setup.dead_queue).await;
    assert_eq!(dead.len(), 1);
    let (body, headers) = &dead[0];
    assert!(body.contains("\"id\":\"fatal\""), "{body}");
    assert_eq!(header(headers, "x-sluice-plugin"), "chaos-writer@0.1.0");
    assert_eq!(header(headers, "x-sluice-stage"), "write");
    let reason = header(headers, "x-sluice-reason");
    assert!(
        reason.contains("cannot take the row keyed `fatal`"),
        "{reason}"
    );
    assert!(
        daemon
            .log()
            .contains("a row fails the writer on its own; dead-lettering its message"),
        "{}",
        daemon.log()
    );
    w.finish().await;
}

#[tokio::test]
async fn a_store_that_takes_no_row_stalls_visibly_and_the_stall_ends_when_rows_land() {
    let mut w = world("stall").await;
    w.setup.extra_writers = r#"
[[pipelines.writers]]
plugin = "chaos-writer"
"#
    .into();
    w.setup.write_config("consumers = 1");
    let port = w.setup.admin_port;
    // Every message of the first batch fails the writer: as far as the daemon
    // can tell, the store takes no row. Nothing may be dead-lettered for it.
    let fatal: Vec<String> = (0..20).map(|i| cdr_with_id(i, "fatal")).collect();
    w.broker.publish(&w.setup, fatal).await;
    let mut daemon = start(&w.setup, "daemon");

    eventually(LONG, "/readyz to report the stall", || async {
        matches!(http_get(port, "/readyz").await, Some((503, body)) if body.contains("stalled for"))
    })
    .await;
    assert_eq!(
        metric(port, "sluice_consumer_stalled{").await,
        Some(1.0),
        "the stall gauge"
    );
    assert!(
        metric(port, "sluice_stalls_total{").await.is_some(),
        "the stall counter"
    );
    assert!(
        daemon.log().contains("pipeline stalled"),
        "{}",
        daemon.log()
    );
    assert_eq!(
        http_get(port, "/healthz").await.map(|r| r.0),
        Some(200),
        "a stall is not a reason to restart the daemon"
    );
    assert_eq!(
        w.broker.ready(&w.setup.dead_queue).await,
        0,
        "nothing dead-lettered while the failure may be the store's"
    );

    // Good messages arrive: the batch takes them in, their rows land, and the
    // rows that fail on their own are dead-lettered.
    w.broker.publish(&w.setup, (100..130).map(cdr_json)).await;
    w.wait_dead_letters(20, "the failing messages dead-lettered")
        .await;
    w.wait_drained().await;
    eventually(LONG, "/readyz ready again", || async {
        matches!(http_get(port, "/readyz").await, Some((200, _)))
    })
    .await;
    assert_eq!(metric(port, "sluice_consumer_stalled{").await, Some(0.0));
    assert!(
        daemon.log().contains("pipeline recovered from its stall"),
        "{}",
        daemon.log()
    );
    daemon.stop_cleanly();
    w.finish().await;
}
