//! Hot reload while messages flow: plugins replaced, refused, removed and put
//! back, and a configuration change that adds a column, losing nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_tests::daemon::{Daemon, eventually, json_to_toml_inline};
use sluice_tests::{cdr_json, cdr_source_config, plugin};

use super::daemon::{LONG, World, start, world};

const MARK: &[u8] = b"SLUICE-MARK-00000000";

/// A world whose pipeline runs `marked-source` from a plugin folder of its own.
async fn marked_world(tag: &str) -> World {
    let mut w = world(tag).await;
    let dir = w.setup.dir.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(plugin("postgres-writer"), dir.join("postgres-writer.wasm")).unwrap();
    deploy(&dir, "marked-source.wasm", &marked(0));
    w.setup.plugin_dir = dir;
    w.setup.source = ("marked-source".into(), "{}".into(), "marked".into());
    w.setup.write_config("");
    w
}

/// The marked-source component with `version` as its mark.
pub(crate) fn marked(version: u32) -> Vec<u8> {
    let mut bytes = std::fs::read(plugin("marked-source")).unwrap();
    let at = bytes
        .windows(MARK.len())
        .position(|w| w == MARK)
        .expect("the mark is in the built file");
    assert!(
        bytes[at + 1..].windows(MARK.len()).all(|w| w != MARK),
        "the mark is in the file once"
    );
    bytes[at..at + MARK.len()].copy_from_slice(format!("SLUICE-MARK-{version:08}").as_bytes());
    bytes
}

/// Deploys a file the documented way: write `*.tmp`, then rename.
pub(crate) fn deploy(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn ids(range: std::ops::Range<u64>) -> impl Iterator<Item = String> {
    range.map(|i| format!("id-{i:08}"))
}

impl World {
    pub(crate) async fn marked_count(&self, version: u32) -> i64 {
        let sql = format!(
            "SELECT count(*) FROM {}.marked WHERE mark = $1",
            self.db.name
        );
        let mark = format!("{version:08}");
        self.db
            .client
            .query_one(&sql, &[&mark])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0)
    }

    pub(crate) async fn marked_total(&self) -> (i64, i64) {
        let sql = format!(
            "SELECT count(*), count(DISTINCT id) FROM {}.marked",
            self.db.name
        );
        self.db
            .client
            .query_one(&sql, &[])
            .await
            .map(|r| (r.get(0), r.get(1)))
            .unwrap_or((0, 0))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test]
async fn replacing_the_source_ten_times_mid_stream_loses_and_duplicates_nothing() {
    let w = marked_world("swap").await;
    let mut daemon = start(&w.setup, "daemon");
    w.broker.publish(&w.setup, ids(0..10_000)).await;
    eventually(LONG, "rows of version 0", || async {
        w.marked_count(0).await > 0
    })
    .await;

    let mut swaps = Vec::new();
    for version in 1..=10u32 {
        // Messages keep coming while the new version is deployed.
        let start_id = u64::from(version) * 10_000;
        let publishing = w.broker.publish(&w.setup, ids(start_id..start_id + 10_000));
        let deployed = Instant::now();
        deploy(&w.setup.plugin_dir, "marked-source.wasm", &marked(version));
        publishing.await;
        eventually(LONG, &format!("rows of version {version}"), || async {
            w.marked_count(version).await > 0
        })
        .await;
        swaps.push(deployed.elapsed());
    }
    eventually(LONG, "every row", || async {
        w.marked_total().await.0 >= 110_000
    })
    .await;
    w.wait_drained().await;
    daemon.stop_cleanly();

    assert_eq!(
        w.marked_total().await,
        (110_000, 110_000),
        "each message once"
    );
    for version in 0..=10 {
        assert!(
            w.marked_count(version).await > 0,
            "no rows of version {version}"
        );
    }
    assert_eq!(
        w.broker.ready(&w.setup.dead_queue).await,
        0,
        "nothing dead-lettered"
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("plugins_replaced=[\"marked-source@0.1.0 -> marked-source@0.1.0\"]")
            .count(),
        10,
        "{log}"
    );
    // Swapped in place by the consumers, not drained and restarted.
    assert_eq!(
        log.matches(&format!("pipelines_swapped=[\"{}\"]", w.setup.pipeline))
            .count(),
        10,
        "{log}"
    );
    assert!(!log.contains("pipelines_restarted=[\""), "{log}");
    // What a swap adds to the batch it happens before (instantiating and
    // configuring the new version), from the consumers' own measurements.
    let mut added: Vec<Duration> = log
        .lines()
        .filter(|l| l.contains("plugins swapped at a batch boundary"))
        .filter_map(|l| {
            l.rsplit("elapsed_ms=")
                .next()?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
        .collect();
    assert!(added.len() >= 10, "{log}");
    added.sort();
    swaps.sort();
    eprintln!(
        "swap: rename to first row of the new version over {} swaps: p50 {:?}, p99 {:?}; latency added to the batch at the swap over {} consumer swaps: p50 {:?}, p99 {:?}",
        swaps.len(),
        percentile(&swaps, 0.5),
        percentile(&swaps, 0.99),
        added.len(),
        percentile(&added, 0.5),
        percentile(&added, 0.99),
    );
    w.finish().await;
}

#[tokio::test]
async fn corrupt_truncated_and_wrong_world_files_are_refused_and_the_old_version_keeps_running() {
    let w = marked_world("badfiles").await;
    let mut daemon = start(&w.setup, "daemon");
    w.broker.publish(&w.setup, ids(0..2_000)).await;
    eventually(LONG, "the first rows", || async {
        w.marked_total().await.0 >= 2_000
    })
    .await;

    let good = marked(0);
    let mut corrupt = good.clone();
    for (i, b) in corrupt.iter_mut().enumerate().skip(64) {
        *b ^= (i % 251) as u8 | 1;
    }
    let truncated = good[..good.len() / 3].to_vec();
    let wrong_world = std::fs::read(plugin("not-a-plugin")).unwrap();
    let bad: [(&str, &[u8]); 3] = [
        ("corrupt", &corrupt),
        ("truncated", &truncated),
        ("wrong world", &wrong_world),
    ];
    for (round, (what, bytes)) in bad.iter().enumerate() {
        let refusals_before = daemon.log().matches("plugin refused").count();
        deploy(&w.setup.plugin_dir, "marked-source.wasm", bytes);
        eventually(LONG, &format!("the {what} file to be refused"), || async {
            daemon.log().matches("plugin refused").count() > refusals_before
        })
        .await;
        let from = 2_000 + round as u64 * 1_000;
        w.broker.publish(&w.setup, ids(from..from + 1_000)).await;
        eventually(LONG, "rows after the refusal", || async {
            w.marked_total().await.0 >= (from + 1_000) as i64
        })
        .await;
    }
    // A version that loads but traps when the consumers configure it.
    // Consumers swap at a batch boundary, so it is refused once messages come.
    deploy(
        &w.setup.plugin_dir,
        "marked-source.wasm",
        &marked(99_999_999),
    );
    let swapped = format!("pipelines_swapped=[\"{}\"]", w.setup.pipeline);
    eventually(LONG, "the trapping version to load", || async {
        daemon.log().contains(&swapped)
    })
    .await;
    w.broker.publish(&w.setup, ids(5_000..6_000)).await;
    eventually(LONG, "the trapping version to be refused", || async {
        daemon.log().contains("new plugin version refused")
    })
    .await;
    eventually(LONG, "rows after the refusal", || async {
        w.marked_total().await.0 >= 6_000
    })
    .await;
    let log = daemon.log();
    assert!(
        log.contains("version 99999999 traps when configured"),
        "{log}"
    );
    assert!(log.contains("corrupt or truncated component"), "{log}");
    assert!(log.contains("exports neither"), "{log}");
    assert!(log.contains("kept=Some(\"marked-source@0.1.0\")"), "{log}");
    assert_eq!(
        w.marked_count(0).await,
        6_000,
        "every row by the old version"
    );
    assert!(!log.contains("pipeline paused"), "{log}");
    daemon.stop_cleanly();
    w.finish().await;
}

#[tokio::test]
async fn removing_the_plugin_pauses_the_pipeline_and_putting_it_back_drains_the_backlog() {
    let w = marked_world("remove").await;
    let mut daemon = start(&w.setup, "daemon");
    w.broker.publish(&w.setup, ids(0..1_000)).await;
    eventually(LONG, "the first rows", || async {
        w.marked_total().await.0 >= 1_000
    })
    .await;

    let file: PathBuf = w.setup.plugin_dir.join("marked-source.wasm");
    std::fs::remove_file(&file).unwrap();
    eventually(LONG, "the pipeline to pause", || async {
        daemon.log().contains("pipeline paused")
    })
    .await;
    w.broker.publish(&w.setup, ids(1_000..3_000)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        w.broker.ready(&w.setup.queue).await,
        2_000,
        "paused: the messages wait in the queue"
    );
    assert_eq!(w.marked_total().await.0, 1_000);
    let readyz = sluice_tests::daemon::http_get(w.setup.admin_port, "/readyz")
        .await
        .unwrap();
    assert_eq!(readyz.0, 503);
    assert!(readyz.1.contains("paused"), "{}", readyz.1);

    deploy(&w.setup.plugin_dir, "marked-source.wasm", &marked(1));
    eventually(LONG, "the backlog to drain", || async {
        w.marked_total().await.0 >= 3_000
    })
    .await;
    assert_eq!(w.marked_count(1).await, 2_000);
    assert_eq!(
        w.broker.ready(&w.setup.dead_queue).await,
        0,
        "nothing dead-lettered"
    );
    daemon.stop_cleanly();
    w.finish().await;
}

#[tokio::test]
async fn a_config_change_that_adds_a_column_alters_the_table_and_new_rows_fill_it() {
    let mut w = world("addcol").await;
    let mut daemon: Daemon = start(&w.setup, "daemon");
    w.broker.publish(&w.setup, (0..1_000).map(cdr_json)).await;
    w.wait_rows(1_000, "rows of schema version 1").await;

    // Schema version 2: a new nullable column, applied by editing the file.
    let v2 = cdr_source_config(2, r#",{"name":"imsi","type":"text"}"#);
    w.setup.source.1 = json_to_toml_inline(&v2);
    w.setup.write_config("");
    let restarted = format!("pipelines_restarted=[\"{}\"]", w.setup.pipeline);
    eventually(LONG, "the reload", || async {
        daemon.log().contains(&restarted)
    })
    .await;
    let with_imsi = (1_000..2_000)
        .map(|i| cdr_json(i).replacen('{', &format!(r#"{{"imsi":"20801{i:010}","#), 1));
    w.broker.publish(&w.setup, with_imsi).await;
    w.wait_rows(2_000, "rows of schema version 2").await;
    let counts =
        w.db.client
            .query_one(
                &format!("SELECT count(imsi), count(*) FROM {}.cdr", w.db.name),
                &[],
            )
            .await
            .unwrap();
    assert_eq!(
        (counts.get::<_, i64>(0), counts.get::<_, i64>(1)),
        (1_000, 2_000)
    );
    daemon.stop_cleanly();
    w.finish().await;
}

#[tokio::test]
async fn an_incompatible_schema_change_pauses_the_pipeline_until_the_config_is_fixed() {
    let mut w = world("incompat").await;
    let mut daemon = start(&w.setup, "daemon");
    w.broker.publish(&w.setup, (0..500).map(cdr_json)).await;
    w.wait_rows(500, "rows of the first schema").await;

    // duration_s changes type: the table cannot follow, the writer says why.
    let good = w.setup.source.1.clone();
    w.setup.source.1 = good.replace(
        r#"path = "duration", type = "int32""#,
        r#"path = "duration", type = "text""#,
    );
    assert_ne!(w.setup.source.1, good, "the test changes the schema");
    w.setup.write_config("");
    let restarted = format!("pipelines_restarted=[\"{}\"]", w.setup.pipeline);
    eventually(LONG, "the restart", || async {
        daemon.log().contains(&restarted)
    })
    .await;
    w.broker.publish(&w.setup, (500..1_000).map(cdr_json)).await;
    eventually(LONG, "the writer to refuse the schema", || async {
        daemon
            .log()
            .lines()
            .any(|l| l.contains("needs attention") && l.contains("duration_s"))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        w.rows().await,
        500,
        "nothing written with the incompatible schema"
    );
    assert_eq!(
        w.broker.ready(&w.setup.queue).await,
        500,
        "the messages wait in the queue"
    );
    assert_eq!(
        w.broker.ready(&w.setup.dead_queue).await,
        0,
        "nothing dead-lettered"
    );

    // The operator puts the schema back: the backlog lands.
    w.setup.source.1 = good;
    w.setup.write_config("");
    w.wait_rows(1_000, "the backlog after the fix").await;
    daemon.stop_cleanly();
    w.finish().await;
}

#[tokio::test]
async fn a_reload_that_adds_a_pipeline_starts_it() {
    let w = world("addpipe").await;
    let mut daemon = start(&w.setup, "daemon");
    w.broker.publish(&w.setup, (0..200).map(cdr_json)).await;
    w.wait_rows(200, "rows of the first pipeline").await;

    // A second pipeline: the same one under another name, so with its own queue,
    // exchange and dead letters (all named after the pipeline).
    let text = std::fs::read_to_string(w.setup.config_path()).unwrap();
    let block = &text[text.find("[[pipelines]]").unwrap()..];
    let second = format!("{}-b", w.setup.pipeline);
    let added = format!("{text}\n{}", block.replace(&w.setup.pipeline, &second));
    std::fs::write(w.setup.config_path(), added).unwrap();
    daemon.signal("HUP");
    eventually(LONG, "the new pipeline to start", || async {
        daemon.log().lines().any(|l| {
            l.contains("reload applied") && l.contains(&format!("pipelines_added=[\"{second}\"]"))
        })
    })
    .await;
    // Ready again means the new pipeline declared its queue, exchange and binding
    // and consumes (it registered as starting before the reload line was logged).
    let port = w.setup.admin_port;
    eventually(LONG, "the new pipeline to consume", || async {
        matches!(
            sluice_tests::daemon::http_get(port, "/readyz").await,
            Some((200, _))
        )
    })
    .await;
    w.broker
        .publish_to(&format!("{second}.x"), (200..400).map(cdr_json))
        .await;
    w.wait_rows(400, "rows of the added pipeline").await;
    // One edit, one reload (two at most: the file watcher and the SIGHUP), after
    // the startup's: the reload's own reads of the config and the plugins are not
    // changes, or each reload would trigger the next.
    let reloads = || {
        let log = daemon.log();
        log.matches("reload applied").count() - log.matches("trigger=\"startup\"").count()
    };
    let settled = reloads();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(reloads(), settled, "reloads keep coming:\n{}", daemon.log());
    assert!(
        settled <= 2,
        "{settled} reloads for one edit:\n{}",
        daemon.log()
    );
    daemon.stop_cleanly();
    assert_eq!(w.distinct_rows().await, 400);
    w.broker
        .delete(
            &[format!("{second}.in"), format!("{second}.dead")],
            &[format!("{second}.x"), format!("{second}.dead")],
        )
        .await;
    w.finish().await;
}
