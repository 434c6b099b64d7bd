//! TLS to RabbitMQ with a private CA and a client certificate, against a node
//! the tests start for themselves ([`RabbitNode`]) with a TLS listener that
//! requires a client certificate signed by the test CA: rows land over mutual
//! TLS; without the client certificate, or trusting a CA that did not sign the
//! server's certificate, the daemon says why it cannot connect and lands
//! nothing; `sluice check` and `run` refuse a missing CA file with its key path.

use std::time::Duration;

use sluice_tests::TestSchema;
use sluice_tests::daemon::{Broker, Setup, eventually, http_get};
use sluice_tests::rabbit_node::{RabbitNode, TestPki, free_port};

use super::daemon::{LONG, World, cdrs, start};

/// A node with a TLS listener; its port.
fn tls_node(pki: &TestPki) -> (RabbitNode, u16) {
    let tls_port = free_port();
    let node = RabbitNode::start(
        "sluice-tls",
        &pki.rabbitmq_tls_listener(tls_port),
        &[tls_port],
    );
    (node, tls_port)
}

/// Points the setup's `rabbit` connection at `url` with the `tls` table
/// `tls` (TOML inline table text).
fn use_connection(setup: &Setup, url: &str, tls: &str) {
    let path = setup.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let shared = format!("url = \"{}\"\n", sluice_tests::amqp_url());
    assert!(text.contains(&shared), "{text}");
    let text = text.replace(&shared, &format!("url = \"{url}\"\ntls = {tls}\n"));
    std::fs::write(path, text).unwrap();
}

/// A world on the test's node: the setup's queue declared there.
async fn world_on(node: &RabbitNode, tag: &str) -> World {
    let setup = Setup::new(tag);
    let broker = Broker::connect_to(&node.amqp_url()).await;
    broker.prepare(&setup).await;
    let db = TestSchema::create_named(&setup.pg_schema).await.unwrap();
    World { setup, broker, db }
}

fn tls_table(pki: &TestPki, ca: &str, client: bool) -> String {
    let mut table = format!("{{ ca_file = \"{}\"", pki.file(ca).display());
    if client {
        table.push_str(&format!(
            ", cert_file = \"{}\", key_file = \"{}\"",
            pki.file("client.pem").display(),
            pki.file("client.key").display()
        ));
    }
    table.push_str(" }");
    table
}

#[tokio::test]
async fn the_daemon_consumes_over_mutual_tls_with_a_private_ca() {
    let pki = TestPki::create("amqptls-pki");
    let (node, tls_port) = tls_node(&pki);
    let w = world_on(&node, "amqptls-ok").await;
    use_connection(
        &w.setup,
        &format!("amqps://guest:guest@127.0.0.1:{tls_port}/%2f"),
        &tls_table(&pki, "ca.pem", true),
    );
    let mut daemon = start(&w.setup, "daemon");
    w.broker.publish(&w.setup, cdrs(0..200)).await;
    w.wait_rows(200, "200 rows over TLS").await;
    assert_eq!(w.distinct_rows().await, 200);
    w.wait_drained().await;
    // As the node sees the daemon's connection: TLS, with the client
    // certificate.
    let connections = node
        .ctl(&[
            "list_connections",
            "-q",
            "--no-table-headers",
            "ssl",
            "peer_cert_subject",
            "client_properties",
        ])
        .unwrap();
    let daemons: Vec<&str> = connections
        .lines()
        .filter(|l| l.contains(&format!("sluice {}", w.setup.pipeline)))
        .collect();
    assert!(!daemons.is_empty(), "{connections}");
    for line in &daemons {
        assert!(
            line.starts_with("true") && line.contains("CN=sluice-test-client"),
            "{line}"
        );
    }
    daemon.stop_cleanly();
    assert_eq!(w.broker.ready(&w.setup.queue).await, 0);
    w.finish().await;
}

/// Waits until the daemon's `/readyz` and log say its session is lost for a
/// reason that contains every part of `why`; returns the log.
async fn wait_refused(w: &World, daemon: &sluice_tests::daemon::Daemon, why: &[&str]) -> String {
    eventually(LONG, &format!("the log to name {why:?}"), || async {
        let log = daemon.log();
        log.contains("RabbitMQ session lost") && why.iter().all(|part| log.contains(part))
    })
    .await;
    let (status, body) = http_get(w.setup.admin_port, "/readyz")
        .await
        .expect("the admin server answers");
    assert_eq!(status, 503, "{body}");
    // The latest failure of each consumer: without a client certificate,
    // TLS 1.3 may end in a reset rather than the alert, so only the parts
    // every attempt names are asserted.
    assert!(
        body.contains("RabbitMQ session lost")
            && body.contains("connecting to RabbitMQ (connection `rabbit`; TLS trusts"),
        "{body}"
    );
    daemon.log()
}

#[tokio::test]
async fn without_the_client_certificate_or_with_another_ca_nothing_lands_and_the_daemon_says_why() {
    let pki = TestPki::create("amqptls-pki");
    let (node, tls_port) = tls_node(&pki);
    let url = format!("amqps://guest:guest@127.0.0.1:{tls_port}/%2f");

    // The node requires a client certificate; none is given.
    let anonymous = world_on(&node, "amqptls-nocert").await;
    use_connection(&anonymous.setup, &url, &tls_table(&pki, "ca.pem", false));
    // The client trusts a CA that did not sign the node's certificate.
    let stranger = world_on(&node, "amqptls-otherca").await;
    use_connection(
        &stranger.setup,
        &url,
        &tls_table(&pki, "other-ca.pem", true),
    );

    let mut daemons = Vec::new();
    for w in [&anonymous, &stranger] {
        w.broker.publish(&w.setup, cdrs(0..10)).await;
        daemons.push(start(&w.setup, "daemon"));
    }
    let log = wait_refused(
        &anonymous,
        &daemons[0],
        &["requires a client certificate", "CertificateRequired"],
    )
    .await;
    eprintln!("no client certificate:\n{log}");
    let log = wait_refused(
        &stranger,
        &daemons[1],
        &[
            "no trusted CA signed the broker's certificate",
            "UnknownIssuer",
        ],
    )
    .await;
    eprintln!("another CA:\n{log}");

    for (w, daemon) in [&anonymous, &stranger].into_iter().zip(&mut daemons) {
        assert!(daemon.exited().is_none(), "{}", daemon.log());
        daemon.stop_cleanly();
        assert_eq!(w.rows().await, 0);
        assert_eq!(w.broker.ready(&w.setup.queue).await, 10);
    }
    anonymous.finish().await;
    stranger.finish().await;
}

#[test]
fn check_and_run_refuse_a_missing_ca_file_with_its_key_path() {
    let setup = Setup::new("amqptls-check");
    use_connection(
        &setup,
        "amqps://guest:s3cret@127.0.0.1:5671/%2f",
        "{ ca_file = \"missing-ca.pem\" }",
    );
    // Relative to the configuration file's folder.
    let expected = format!(
        "connections.rabbit.tls.ca_file: cannot read {}: No such file or directory",
        setup.dir.join("missing-ca.pem").display()
    );
    let (code, text) = crate::check::check(&setup.config_path());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&expected), "{text}");
    assert!(!text.contains("s3cret"), "{text}");

    let mut daemon = start(&setup, "run");
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .expect("run exits");
    assert!(!status.success());
    assert!(daemon.log().contains(&expected), "{}", daemon.log());
}
