//! TLS to Postgres with libpq's `sslmode`, against the local server (Debian's,
//! `ssl = on` with the snakeoil certificate): what each mode connects to, that
//! the connection really is TLS (`pg_stat_ssl`), that a refused certificate is
//! an error no retry can fix, and that `sluice check` refuses what `run` cannot
//! do.

use std::process::Command;
use std::sync::Arc;

use sluice::capabilities::Grants;
use sluice::capabilities::postgres::{PostgresGrant, classify};
use sluice::plugin_runtime::WriterInstance;
use sluice::plugin_runtime::bindings::v0_1_0::writer::sluice::plugin::postgres::ErrorKind;
use sluice_tests::{TestSchema, cdr_json, cdr_source_config, plugin, plugins_dir, postgres_url};

use super::{message, runtime};

/// The local server's certificate: self-signed, so it is its own root.
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// The tests' Postgres URL with `options` (`key=value&...`) added.
fn url_with(options: &str) -> String {
    let base = postgres_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{options}")
}

/// The tests' URL with its host replaced by `host`.
fn url_to_host(host: &str, options: &str) -> String {
    url_with(options).replace("@127.0.0.1", &format!("@{host}"))
}

/// The DNS name the server's certificate holds (its first subjectAltName).
fn certificate_name() -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in", SNAKEOIL])
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split([',', '\n', ' '])
        .find_map(|part| part.trim().strip_prefix("DNS:"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no DNS name in the snakeoil certificate: {text}"))
}

/// Whether a connection of `grant` is TLS, as the server sees it.
async fn server_sees_tls(grant: &PostgresGrant) -> bool {
    let (client, _task) = grant.connect("test").await.expect("connect");
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// The error of a connection that must fail.
async fn refused(grant: &PostgresGrant) -> tokio_postgres::Error {
    match grant.connect("test").await {
        Ok(_) => panic!("{grant:?} connected"),
        Err(e) => e,
    }
}

fn grant(url: &str) -> PostgresGrant {
    PostgresGrant::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
}

#[tokio::test]
async fn sslmode_require_connects_over_tls() {
    assert!(server_sees_tls(&grant(&url_with("sslmode=require"))).await);
}

#[tokio::test]
async fn the_default_prefer_uses_tls_when_the_server_offers_it() {
    assert!(server_sees_tls(&grant(&postgres_url())).await);
    assert!(server_sees_tls(&grant(&url_with("sslmode=prefer"))).await);
}

#[tokio::test]
async fn sslmode_disable_stays_plain() {
    assert!(!server_sees_tls(&grant(&url_with("sslmode=disable"))).await);
}

#[tokio::test]
async fn verify_ca_with_the_servers_root_connects_by_address() {
    // verify-ca checks the chain, not the name: 127.0.0.1 is not in the
    // certificate and that is fine.
    let url = url_with(&format!("sslmode=verify-ca&sslrootcert={SNAKEOIL}"));
    assert!(server_sees_tls(&grant(&url)).await);
}

#[tokio::test]
async fn verify_full_succeeds_by_the_certificates_name() {
    let url = url_to_host(
        &certificate_name(),
        &format!("sslmode=verify-full&sslrootcert={SNAKEOIL}"),
    );
    assert!(server_sees_tls(&grant(&url)).await, "{url}");
}

#[tokio::test]
async fn verify_full_to_an_address_the_certificate_lacks_fails_without_retry() {
    let url = url_with(&format!("sslmode=verify-full&sslrootcert={SNAKEOIL}"));
    let error = refused(&grant(&url)).await;
    let pg = classify(&error);
    assert_eq!(pg.kind, ErrorKind::Other, "{}", pg.message);
    for part in [
        "not valid for name",
        "127.0.0.1",
        &certificate_name(),
        "sslmode=verify-ca",
        "not retried",
    ] {
        assert!(
            pg.message.contains(part),
            "`{part}` missing: {}",
            pg.message
        );
    }
}

#[tokio::test]
async fn verify_ca_without_a_root_that_signed_it_fails_on_the_issuer() {
    // A real CA, but not the one that signed the server's certificate. (Not the
    // system store: Debian's /etc/ssl/certs holds a hash link to the snakeoil
    // certificate, so OpenSSL, libpq and the system store all trust it.)
    let dir = std::env::temp_dir().join(sluice_tests::unique_name("pgtls-ca"));
    std::fs::create_dir_all(&dir).unwrap();
    let bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap();
    let end = "-----END CERTIFICATE-----";
    let first = &bundle[..bundle.find(end).expect("a CA in the bundle") + end.len()];
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(&other_ca, format!("{first}\n")).unwrap();

    let url = url_with(&format!(
        "sslmode=verify-ca&sslrootcert={}",
        other_ca.display()
    ));
    let error = refused(&grant(&url)).await;
    let pg = classify(&error);
    assert_eq!(pg.kind, ErrorKind::Other, "{}", pg.message);
    assert!(pg.message.contains("UnknownIssuer"), "{}", pg.message);
    assert!(pg.message.contains("sslrootcert=PATH"), "{}", pg.message);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_network_failure_stays_retriable() {
    // Nothing listens on port 1: the TCP connect fails before any TLS.
    let url = url_with("sslmode=verify-ca&sslrootcert=/etc/ssl/certs/ssl-cert-snakeoil.pem")
        .replace(":5432", ":1");
    let error = refused(&grant(&url)).await;
    assert_eq!(classify(&error).kind, ErrorKind::Retriable);
}

/// The writer, through the capability: rows land over a verify-ca connection;
/// over a verify-full connection to a name the certificate lacks, the write
/// fails as fatal (not retriable) with the mismatch named.
#[tokio::test]
async fn a_writer_lands_rows_over_verify_ca_and_fails_fatally_on_a_name_mismatch() {
    let rt = runtime();
    let source_plugin = Arc::new(rt.load(&plugin("json-source")).await.unwrap());
    let writer_plugin = Arc::new(rt.load(&plugin("postgres-writer")).await.unwrap());
    let db = TestSchema::create().await.unwrap();
    let mut source = sluice::plugin_runtime::SourceInstance::new(
        rt.clone(),
        source_plugin,
        "tls-test",
        cdr_source_config(1, ""),
    );
    let schema = source.schema().await.unwrap();
    let messages: Vec<_> = (0..20).map(|i| message(cdr_json(i))).collect();
    let decoded = source.decode(&messages).await.unwrap();
    let writer = |options: String| {
        WriterInstance::new(
            rt.clone(),
            writer_plugin.clone(),
            "tls-test",
            format!(r#"{{"connection":"main","schema":"{}"}}"#, db.name),
            schema.clone(),
            Grants::none().with_postgres("main", grant(&url_with(&options))),
        )
    };

    let mut good = writer(format!("sslmode=verify-ca&sslrootcert={SNAKEOIL}"));
    let rejected = good.write(&decoded.rows).await.unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(db.count("cdr").await.unwrap(), 20);

    let mut mismatch = writer(format!("sslmode=verify-full&sslrootcert={SNAKEOIL}"));
    let error = mismatch.write(&decoded.rows).await.expect_err("refused");
    assert!(!error.is_retriable(), "{error}");
    assert!(error.to_string().contains("not valid for name"), "{error}");
    db.drop_now().await.unwrap();
}

#[test]
fn sluice_check_refuses_an_unknown_sslmode_and_a_missing_root_file_with_the_key_path() {
    let dir = std::env::temp_dir().join(sluice_tests::unique_name("pgtls-check"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("tls.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[daemon]
plugin_dir = "{plugins}"

[connections.rabbit]
type = "amqp"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"

[connections.typo]
type = "postgres"
url = "postgres://sluice:s3cret@127.0.0.1/test?sslmode=verify_full"

[connections.noroot]
type = "postgres"
url = "postgres://sluice:s3cret@127.0.0.1/test?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem"
"#,
            plugins = plugins_dir().display()
        ),
    )
    .unwrap();
    let (code, text) = crate::check::check(&config);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(r#"connections.typo.url: sslmode="verify_full" is not a TLS mode"#),
        "{text}"
    );
    assert!(
        text.contains("connections.noroot.url: sslrootcert: cannot read /nonexistent/ca.pem"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The daemon's `warehouse` connection with `options` added to its URL.
fn use_tls_options(setup: &sluice_tests::daemon::Setup, options: &str) {
    let path = setup.config_path();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("?application_name="), "{text}");
    let text = text.replace(
        "?application_name=",
        &format!("?{options}&application_name="),
    );
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn the_daemon_lands_rows_over_a_verify_ca_connection() {
    use super::daemon::{cdrs, start, world};
    let w = world("pgtls-daemon").await;
    use_tls_options(
        &w.setup,
        &format!("sslmode=verify-ca&sslrootcert={SNAKEOIL}"),
    );
    let mut daemon = start(&w.setup, "daemon");
    w.broker.publish(&w.setup, cdrs(0..200)).await;
    w.wait_rows(200, "rows through verify-ca").await;
    assert_eq!(w.distinct_rows().await, 200);
    // The writer's connection, as the server sees it.
    let tls: Vec<bool> =
        w.db.client
            .query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = $1",
                &[&w.setup.pg_app],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert!(!tls.is_empty() && tls.iter().all(|ssl| *ssl), "{tls:?}");
    daemon.stop_cleanly();
    w.finish().await;
}

#[tokio::test]
async fn the_daemon_reports_a_name_mismatch_as_needing_attention_and_keeps_the_messages() {
    use super::daemon::{LONG, cdrs, start, world};
    use sluice_tests::daemon::eventually;
    let w = world("pgtls-mismatch").await;
    use_tls_options(
        &w.setup,
        &format!("sslmode=verify-full&sslrootcert={SNAKEOIL}"),
    );
    let mut daemon = start(&w.setup, "daemon");
    w.broker.publish(&w.setup, cdrs(0..10)).await;
    eventually(LONG, "the mismatch in the log", || async {
        let log = daemon.log();
        log.contains("needs attention") && log.contains("not valid for name")
    })
    .await;
    assert!(
        !daemon.log().contains("no TLS implementation configured"),
        "{}",
        daemon.log()
    );
    assert_eq!(w.rows().await, 0);
    daemon.stop_cleanly();
    // Nothing was acked: the messages wait in the queue.
    assert_eq!(w.broker.ready(&w.setup.queue).await, 10);
    w.finish().await;
}
