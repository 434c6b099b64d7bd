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
