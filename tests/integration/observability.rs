//! What ships for monitoring: the Prometheus alert rules (checked and
//! unit-tested with promtool) and the Grafana dashboard, whose every metric
//! must be one a running daemon exports.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_tests::daemon::{eventually, http_get};
use sluice_tests::workspace_root;

use crate::daemon::{LONG, start, world};

fn deploy(path: &str) -> PathBuf {
    workspace_root().join("deploy").join(path)
}

/// Runs promtool (scripts/services.sh installs Debian's `prometheus` package
/// for it) and returns its exit status and output.
fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
        .expect("running promtool (scripts/services.sh installs the prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let (ok, out) = promtool(&["check", "rules", "sluice-alerts.yml"]);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS: 9 rules found"), "{out}");

    let (ok, out) = promtool(&["test", "rules", "sluice-alerts.test.yml"]);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The unit tests cover every alert the rules define.
#[test]
fn every_alert_has_a_unit_test() {
    let names = |text: &str, key: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .map(|n| n.trim().to_owned())
            .collect()
    };
    let rules = std::fs::read_to_string(deploy("prometheus/sluice-alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy("prometheus/sluice-alerts.test.yml")).unwrap();
    let alerts = names(&rules, "- alert:");
    assert_eq!(alerts.len(), 9, "{alerts:?}");
    let tested = names(&tests, "alertname:");
    let untested: Vec<_> = alerts.difference(&tested).collect();
    assert!(untested.is_empty(), "alerts without a test: {untested:?}");
}

/// Every `sluice_*` name in `text` (a PromQL expression, the dashboard's JSON).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("sluice_") {
        // Only a whole word: `sluice_x` inside a longer name is not one.
        let before = rest[..at].chars().next_back();
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.insert(name.clone());
        }
        rest = &rest[at + name.len()..];
    }
    names
}

/// The names of the samples in an OpenMetrics text (histograms with their
/// `_bucket`, `_sum` and `_count`).
fn exported_names(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn metric_names_are_found_whole_in_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.9, sum by (le) (rate(sluice_batch_duration_seconds_bucket{pipeline=~"$pipeline"}[5m]))) / my_sluice_thing"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["sluice_batch_duration_seconds_bucket"]
    );
}

#[tokio::test]
async fn every_metric_of_the_dashboard_and_the_alert_rules_is_one_the_daemon_exports() {
    let dashboard = std::fs::read_to_string(deploy("grafana/sluice.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let variables: Vec<&str> = json["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "instance", "pipeline"]);
    let rules = std::fs::read_to_string(deploy("prometheus/sluice-alerts.yml")).unwrap();
    let used: BTreeSet<String> = metric_names(&dashboard)
        .into_iter()
        .chain(metric_names(&rules))
        .collect();
    assert!(used.len() >= 20, "{used:?}");

    // A daemon that has run everything those metrics count: rows written,
    // a poison message, a source that traps, one that floods its log, and a
    // reload.
    let mut w = world("metric-names").await;
    w.setup.source = ("chaos-source".into(), "{}".into(), "chaos".into());
    w.setup
        .write_config("consumers = 1\nbatch = { max_messages = 20, max_wait = \"200ms\" }");
    let mut bodies: Vec<String> = (0..20).map(|i| format!("good-{i}")).collect();
    bodies.insert(5, "panic".into());
    bodies.insert(12, "flood:2000".into());
    w.broker.publish(&w.setup, bodies).await;
    let mut daemon = start(&w.setup, "daemon");
    w.wait_dead_letters(1, "the panicking message dead-lettered")
        .await;
    eventually(LONG, "the other rows", || async {
        w.db.count_or_zero("chaos").await == 21
    })
    .await;
    daemon.signal("HUP");

    let started = Instant::now();
    let (missing, exported) = loop {
        let metrics = http_get(w.setup.admin_port, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default();
        let exported = exported_names(&metrics);
        let missing: Vec<String> = used.difference(&exported).cloned().collect();
        if missing.is_empty() || started.elapsed() > Duration::from_secs(30) {
            break (missing, exported);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "used by the dashboard or the alert rules, not exported: {missing:?}\nexported: {exported:#?}"
    );
    daemon.stop_cleanly();
    w.finish().await;
}

/// `/status` of the daemon on `port`.
async fn status(port: u16) -> Option<sluice::admin::Status> {
    let (200, body) = http_get(port, "/status").await? else {
        return None;
    };
    Some(serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

#[tokio::test]
async fn status_names_a_stalled_consumer_its_tries_its_batch_and_its_plugins() {
    let mut w = world("status-stall").await;
    w.setup.extra_writers = "\n[[pipelines.writers]]\nplugin = \"chaos-writer\"\n".into();
    w.setup.write_config("consumers = 1");
    let port = w.setup.admin_port;
    // chaos-writer fails every row keyed `fatal`: the batch cannot be written,
    // and nothing tells a poison row from a broken store, so the consumer stalls.
    let fatal = (0..20u64).map(|i| {
        sluice_tests::cdr_json(i).replace(&format!("\"id\":\"c-{i:012}\""), "\"id\":\"fatal\"")
    });
    w.broker.publish(&w.setup, fatal).await;
    let mut daemon = start(&w.setup, "daemon");

    let started = Instant::now();
    let stalled = loop {
        let found = async {
            let s = status(port).await?;
            let p = s
                .pipelines
                .into_iter()
                .find(|p| p.name == w.setup.pipeline)?;
            let c = p.consumers.first()?.clone();
            (c.stalled.as_ref()?.attempts >= 2).then_some((p.unacked, c, s.not_ready))
        };
        if let Some(found) = found.await {
            break found;
        }
        assert!(
            started.elapsed() < LONG,
            "/status never showed the stall after two tries:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (unacked, consumer, not_ready) = stalled;
    let stall = consumer.stalled.as_ref().expect("stalled");
    assert!(stall.reason.starts_with("write: "), "{stall:?}");
    assert!(stall.seconds > 0.0, "{stall:?}");
    assert!(stall.retry_in_seconds.is_some(), "{stall:?}");
    assert!(consumer.connected, "{consumer:?}");
    assert!(unacked > 0 && unacked == consumer.unacked, "{consumer:?}");
    assert!(
        not_ready
            .iter()
            .any(|r| r.contains("consumer 0: stalled for")),
        "{not_ready:?}"
    );
    let plugins: Vec<(&str, &str)> = consumer
        .plugins
        .iter()
        .map(|p| (p.role.as_str(), p.name.as_str()))
        .collect();
    assert_eq!(
        plugins,
        [
            ("source", "json-source"),
            ("writer", "postgres-writer"),
            ("writer", "chaos-writer")
        ]
    );
    assert!(consumer.plugins.iter().all(|p| p.sha256.len() == 64));
    assert!(consumer.plugins_since_unix.is_some());

    // Good messages join the batch: their rows land, the fatal ones are
    // dead-lettered, and the stall is over.
    w.broker
        .publish(&w.setup, (100..130).map(sluice_tests::cdr_json))
        .await;
    w.wait_dead_letters(20, "the fatal rows dead-lettered")
        .await;
    eventually(LONG, "/status without the stall", || async {
        status(port).await.is_some_and(|s| {
            s.pipelines.iter().any(|p| {
                p.name == w.setup.pipeline
                    && p.unacked == 0
                    && p.dead_lettered["write"] == 20
                    && p.consumers.iter().all(|c| c.stalled.is_none())
            })
        })
    })
    .await;
    daemon.stop_cleanly();
    w.finish().await;
}
