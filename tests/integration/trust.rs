//! Data-source security: what runs is what the operator deployed, and a file
//! dropped into the plugin folder cannot take a plugin's place.

use std::time::Duration;

use sluice::reload::PluginRegistry;
use sluice_tests::daemon::{Setup, eventually};
use sluice_tests::{cdr_json, plugin, unique_name};

use crate::daemon::{LONG, start, world};
use crate::runtime;

/// A plugin folder of the setup's own, with copies of the named test plugins.
fn own_plugin_dir(setup: &mut Setup, plugins: &[&str]) -> std::path::PathBuf {
    let dir = setup.dir.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    for name in plugins {
        std::fs::copy(plugin(name), dir.join(format!("{name}.wasm"))).unwrap();
    }
    setup.plugin_dir = dir.clone();
    dir
}

#[tokio::test]
async fn two_files_declaring_one_plugin_name_are_both_refused_and_the_running_version_stays() {
    let dir = std::env::temp_dir().join(unique_name("names"));
    std::fs::create_dir_all(&dir).unwrap();
    let runtime = runtime();

    // At start, two files claim `json-source`: neither is used.
    std::fs::copy(plugin("json-source"), dir.join("json-source.wasm")).unwrap();
    std::fs::copy(plugin("json-source"), dir.join("zz-innocent.wasm")).unwrap();
    let mut registry = PluginRegistry::new(dir.clone());
    let summary = registry.scan(&runtime, None).await.unwrap();
    assert!(!registry.plugins().contains_key("json-source"));
    assert!(
        summary
            .refused
            .iter()
            .any(|r| r.contains("2 files declare the plugin name `json-source`")),
        "{:?}",
        summary.refused
    );
    let refused = registry
        .status()
        .iter()
        .filter(|f| f.refused.is_some())
        .count();
    assert_eq!(refused, 2, "`sluice plugins` shows both files refused");

    // One removed: the other is used.
    std::fs::remove_file(dir.join("zz-innocent.wasm")).unwrap();
    registry.scan(&runtime, None).await.unwrap();
    let in_use = registry.plugins()["json-source"].clone();
    assert!(in_use.path.ends_with("json-source.wasm"));

    // A second file appears while it runs: the running one stays.
    std::fs::copy(plugin("json-source"), dir.join("zz-innocent.wasm")).unwrap();
    registry.scan(&runtime, None).await.unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&registry.plugins()["json-source"], &in_use),
        "the version in use keeps running"
    );
    let status = registry.status();
    let newcomer = status
        .iter()
        .find(|f| f.path.ends_with("zz-innocent.wasm"))
        .unwrap();
    assert!(
        newcomer
            .refused
            .as_deref()
            .is_some_and(|r| r.contains("declare the plugin name")),
        "{:?}",
        newcomer.refused
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_impostor_dropped_beside_a_running_writer_does_not_take_its_place() {
    let mut w = world("impostor").await;
    let dir = own_plugin_dir(&mut w.setup, &["json-source", "postgres-writer"]);
    w.setup.write_config("");
    let daemon = start(&w.setup, "daemon");
    w.broker.publish(&w.setup, (0..50).map(cdr_json)).await;
    w.wait_rows(50, "the first rows").await;

    // A file that declares the writer's name, dropped the documented way.
    let tmp = dir.join("zz-innocent.wasm.tmp");
    std::fs::copy(plugin("postgres-writer"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("zz-innocent.wasm")).unwrap();
    eventually(LONG, "the impostor refused", || async {
        daemon
            .log()
            .contains("2 files declare the plugin name `postgres-writer`")
    })
    .await;

    w.broker.publish(&w.setup, (50..100).map(cdr_json)).await;
    w.wait_rows(100, "the rows after the impostor").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = daemon.log();
    assert!(
        log.contains("pipelines_restarted=[]") && !log.contains("pipelines_restarted=[\""),
        "the pipeline was not restarted onto another writer: {log}"
    );
    assert!(log.contains("the version in use keeps running"), "{log}");
    drop(daemon);
    w.finish().await;
}

const PRIVILEGE_WARNING: &str =
    "a writer is granted a postgres role that can do more than write its tables";

#[tokio::test]
async fn a_writer_granted_a_superuser_connection_is_warned_about() {
    let w = world("superuser").await;
    let daemon = start(&w.setup, "daemon");
    w.broker.publish(&w.setup, (0..10).map(cdr_json)).await;
    w.wait_rows(10, "the rows").await;
    let log = daemon.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(PRIVILEGE_WARNING))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "once per grant, not per connection: {log}"
    );
    assert!(
        warnings[0].contains("superuser") && warnings[0].contains("role=\"postgres\""),
        "{}",
        warnings[0]
    );
    drop(daemon);
    w.finish().await;
}

#[tokio::test]
async fn a_role_with_only_what_the_writer_needs_lands_rows_without_a_warning() {
    let w = world("least-privilege").await;
    // The operations guide's recipe: a login role that may create tables in
    // the pipeline's schema, and nothing else.
    let role = w.setup.pg_schema.replace("least_privilege", "writer");
    w.db.client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT USAGE, CREATE ON SCHEMA {schema} TO {role};",
            schema = w.db.name
        ))
        .await
        .unwrap();
    let config = std::fs::read_to_string(w.setup.config_path()).unwrap();
    let config = config.replace("postgres://postgres@", &format!("postgres://{role}@"));
    assert!(config.contains(&format!("postgres://{role}@")));
    std::fs::write(w.setup.config_path(), config).unwrap();

    let daemon = start(&w.setup, "daemon");
    w.broker.publish(&w.setup, (0..10).map(cdr_json)).await;
    w.wait_rows(10, "the rows").await;
    let log = daemon.log();
    assert!(!log.contains(PRIVILEGE_WARNING), "{log}");
    drop(daemon);
    let owner: String = w
        .db
        .client
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE schemaname = $1 AND tablename = 'cdr'",
            &[&w.db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, role, "the writer made its table as the granted role");
    let client_schema = w.db.name.clone();
    let db = &w.db.client;
    db.batch_execute(&format!(
        "DROP SCHEMA {client_schema} CASCADE; CREATE SCHEMA {client_schema}"
    ))
    .await
    .unwrap();
    db.batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
    w.finish().await;
}
