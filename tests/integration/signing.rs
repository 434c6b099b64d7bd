//! Signed plugins: with `trusted_keys`, what runs is what a trusted key signed.
//! Keys and signatures are made here with `sluice plugin keygen|sign` (and the
//! `minisign` tool, to show the format is minisign's own).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sluice::signing::TrustedKey;
use sluice_tests::daemon::eventually;
use sluice_tests::plugin;

use super::daemon::{LONG, World, start, world};
use super::hot_reload::{deploy, marked};

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice-under-test"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("running sluice")
}

fn succeeds(args: &[&str]) -> String {
    let out = sluice(args);
    assert!(
        out.status.success(),
        "sluice {args:?}: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `sluice plugin keygen` into `dir/name.key` and `dir/name.pub`; the public key.
pub(crate) fn keygen(dir: &Path, name: &str) -> TrustedKey {
    let secret = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    succeeds(&[
        "plugin",
        "keygen",
        "--secret-key",
        secret.to_str().unwrap(),
        "--public-key",
        public.to_str().unwrap(),
    ]);
    TrustedKey::read(&public).unwrap()
}

/// `sluice plugin sign FILE --key KEY`.
pub(crate) fn sign(file: &Path, key: &TrustedKey) {
    let secret = key.path.with_extension("key");
    succeeds(&[
        "plugin",
        "sign",
        file.to_str().unwrap(),
        "--key",
        secret.to_str().unwrap(),
        "--trusted-comment",
        "signed by the signing tests",
    ]);
}

/// A world running `marked-source` (version 0) and `postgres-writer` from a
/// plugin folder of its own, both signed by `trusted`, with `trusted_keys`.
pub(crate) async fn signed_world(tag: &str, trusted: &TrustedKey) -> (World, PathBuf) {
    let mut w = world(tag).await;
    let dir = w.setup.dir.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(plugin("postgres-writer"), dir.join("postgres-writer.wasm")).unwrap();
    deploy(&dir, "marked-source.wasm", &marked(0));
    sign(&dir.join("postgres-writer.wasm"), trusted);
    sign(&dir.join("marked-source.wasm"), trusted);
    w.setup.plugin_dir = dir.clone();
    w.setup.source = ("marked-source".into(), "{}".into(), "marked".into());
    w.setup.daemon_extra = format!("trusted_keys = [{:?}]", trusted.path.display().to_string());
    w.setup.write_config("");
    (w, dir)
}

fn ids(range: std::ops::Range<u64>) -> impl Iterator<Item = String> {
    range.map(|i| format!("id-{i:08}"))
}

#[tokio::test]
async fn unsigned_untrusted_and_tampered_plugins_are_refused_while_the_signed_version_keeps_running()
 {
    let keys = std::env::temp_dir().join(sluice_tests::unique_name("keys"));
    std::fs::create_dir_all(&keys).unwrap();
    let ci = keygen(&keys, "ci");
    let laptop = keygen(&keys, "laptop");
    let (w, dir) = signed_world("signed", &ci).await;
    let source = dir.join("marked-source.wasm");
    let mut daemon = start(&w.setup, "daemon");
    w.broker.publish(&w.setup, ids(0..100)).await;
    eventually(LONG, "the rows of the signed version 0", || async {
        w.marked_count(0).await == 100
    })
    .await;
    let log = daemon.log();
    assert!(
        log.contains("plugins are verified") && !log.contains("plugins are not verified"),
        "{log}"
    );
    assert!(
        log.contains("signer=ci.pub") && log.contains("signed by the signing tests"),
        "the load names the signer: {log}"
    );

    // Each bad step: the refusal is logged with its reason, and the version
    // running before keeps landing rows.
    let steps: [(&str, &dyn Fn(), String); 3] = [
        (
            "a file changed after it was signed",
            // Version 1 replaces the file; the signature of version 0 stays.
            &|| deploy(&dir, "marked-source.wasm", &marked(1)),
            format!(
                "its signature by the trusted key ci.pub ({}) does not match the file",
                ci.id
            ),
        ),
        (
            "a file signed by an untrusted key",
            &|| sign(&source, &laptop),
            format!("signed by the untrusted key {}", laptop.id),
        ),
        (
            "an unsigned file",
            &|| std::fs::remove_file(dir.join("marked-source.wasm.minisig")).unwrap(),
            "marked-source.wasm.minisig beside it".to_string(),
        ),
    ];
    let mut sent = 100;
    for (what, act, reason) in steps {
        act();
        eventually(LONG, &format!("{what} refused"), || async {
            daemon
                .log()
                .lines()
                .any(|l| l.contains("plugin refused") && l.contains(&reason))
        })
        .await;
        w.broker.publish(&w.setup, ids(sent..sent + 100)).await;
        sent += 100;
        eventually(LONG, &format!("rows after {what}"), || async {
            w.marked_count(0).await == sent as i64
        })
        .await;
        assert_eq!(w.marked_count(1).await, 0, "{what} does not run");
    }

    // Signed by the trusted key (the signature alone changes): taken.
    sign(&source, &ci);
    eventually(LONG, "the signed version 1 loaded", || async {
        daemon.log().contains("marked-source@")
            && daemon.log().lines().any(|l| {
                l.contains("plugin loaded")
                    && l.contains("marked-source")
                    && l.contains("signer=ci.pub")
            })
            && daemon.log().contains("plugins_replaced=[\"marked-source")
    })
    .await;
    w.broker.publish(&w.setup, ids(sent..sent + 100)).await;
    eventually(LONG, "rows of the signed version 1", || async {
        w.marked_count(1).await == 100
    })
    .await;
    let (total, distinct) = w.marked_total().await;
    assert_eq!((total, distinct), (sent as i64 + 100, sent as i64 + 100));
    assert_eq!(w.broker.ready(&w.setup.dead_queue).await, 0);
    daemon.stop_cleanly();
    w.finish().await;
    let _ = std::fs::remove_dir_all(&keys);
}

#[tokio::test]
async fn without_trusted_keys_the_daemon_warns_that_plugins_are_not_verified() {
    let w = world("unverified").await;
    let daemon = start(&w.setup, "daemon");
    eventually(LONG, "the warning", || async {
        daemon
            .log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("plugins are not verified"))
    })
    .await;
    drop(daemon);
    w.finish().await;
}

/// Runs `minisign` with `args`; `None` if the tool is not installed.
fn minisign(args: &[&str]) -> Output {
    let out = Command::new("minisign")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the minisign tool (scripts/services.sh installs it)");
    assert!(
        out.status.success(),
        "minisign {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test]
async fn minisign_verifies_sluice_signatures_and_sluice_check_and_plugins_show_minisigns() {
    let w = world("minisign").await;
    let keys = w.setup.dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let dir = w.setup.dir.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["json-source", "postgres-writer", "chaos-source"] {
        std::fs::copy(plugin(name), dir.join(format!("{name}.wasm"))).unwrap();
    }

    // A key made by minisign signs json-source (minisign's default comment).
    let (mpub, mkey) = (keys.join("minisign.pub"), keys.join("minisign.key"));
    minisign(&[
        "-G",
        "-W",
        "-p",
        mpub.to_str().unwrap(),
        "-s",
        mkey.to_str().unwrap(),
    ]);
    let json_source = dir.join("json-source.wasm");
    minisign(&[
        "-S",
        "-s",
        mkey.to_str().unwrap(),
        "-m",
        json_source.to_str().unwrap(),
        "-t",
        "built by minisign",
    ]);
    // A key made by sluice signs the writer; minisign verifies it.
    let ci = keygen(&keys, "ci");
    let writer = dir.join("postgres-writer.wasm");
    sign(&writer, &ci);
    let verified = minisign(&[
        "-V",
        "-p",
        ci.path.to_str().unwrap(),
        "-m",
        writer.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&verified.stdout).contains("signed by the signing tests"),
        "{verified:?}"
    );

    // chaos-source stays unsigned: refused by check and plugins, as the daemon would.
    let mut setup = w.setup;
    setup.plugin_dir = dir.clone();
    setup.daemon_extra = format!(
        "trusted_keys = [{:?}, {:?}]",
        mpub.display().to_string(),
        ci.path.display().to_string()
    );
    setup.write_config("");
    let config = setup.config_path();
    let out = sluice(&["check", "--config", config.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("plugin_dir/chaos-source.wasm: not signed: there is no"),
        "{stdout}"
    );
    assert!(
        stdout.contains("plugin_dir/json-source.wasm: signed by minisign.pub")
            && stdout.contains("trusted comment \"built by minisign\""),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "plugin_dir/postgres-writer.wasm: signed by ci.pub ({})",
            ci.id
        )),
        "{stdout}"
    );

    let out = sluice(&["plugins", "--config", config.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    let line = |file: &str| {
        stdout
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("no line for {file}: {stdout}"))
            .to_string()
    };
    assert!(
        line("json-source.wasm").contains("loaded")
            && line("json-source.wasm").contains("(signed by minisign.pub"),
        "{stdout}"
    );
    assert!(line("chaos-source.wasm").contains("refused"), "{stdout}");
    assert!(
        stdout.contains("signatures: required, by a trusted key (minisign.pub"),
        "{stdout}"
    );

    // Signed, it passes.
    sign(&dir.join("chaos-source.wasm"), &ci);
    let out = sluice(&["check", "--config", config.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = w.db.drop_now().await;
    w.broker.cleanup(&setup).await;
}

#[tokio::test]
async fn re_signing_does_not_reload_and_a_dropped_key_refuses_without_stopping_what_runs() {
    use sluice::reload::PluginRegistry;

    let dir = std::env::temp_dir().join(sluice_tests::unique_name("resign"));
    std::fs::create_dir_all(&dir).unwrap();
    let old = keygen(&dir, "old");
    let new = keygen(&dir, "new");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let file = plugins.join("json-source.wasm");
    std::fs::copy(plugin("json-source"), &file).unwrap();
    sign(&file, &old);
    let runtime = crate::runtime();
    let mut registry = PluginRegistry::new(plugins.clone());
    registry.set_trusted_keys(Some(vec![old.clone(), new.clone()]));
    let summary = registry.scan(&runtime, None).await.unwrap();
    assert_eq!(summary.loaded.len(), 1, "{summary:?}");
    let in_use = registry.plugins()["json-source"].clone();
    let signer = |registry: &PluginRegistry| registry.status()[0].signer.clone();
    assert_eq!(signer(&registry).unwrap().key_id, old.id);

    // Re-signed with the new key: the same plugin stays in use, with its new signer.
    sign(&file, &new);
    let summary = registry.scan(&runtime, None).await.unwrap();
    assert!(
        !summary.changed() && summary.refused.is_empty(),
        "{summary:?}"
    );
    assert!(std::sync::Arc::ptr_eq(
        &registry.plugins()["json-source"],
        &in_use
    ));
    assert_eq!(signer(&registry).unwrap().key_id, new.id);

    // Back to the old key's signature, then the old key dropped: refused, and
    // the version in use keeps running (like any refused file).
    sign(&file, &old);
    registry.scan(&runtime, None).await.unwrap();
    registry.set_trusted_keys(Some(vec![new.clone()]));
    let summary = registry.scan(&runtime, None).await.unwrap();
    assert!(
        summary
            .refused
            .iter()
            .any(|r| r.contains(&format!("signed by the untrusted key {}", old.id))),
        "{summary:?}"
    );
    assert!(std::sync::Arc::ptr_eq(
        &registry.plugins()["json-source"],
        &in_use
    ));

    // A fresh registry (a restart) does not load it.
    let mut restarted = PluginRegistry::new(plugins.clone());
    restarted.set_trusted_keys(Some(vec![new.clone()]));
    restarted.scan(&runtime, None).await.unwrap();
    assert!(restarted.plugins().is_empty());
    assert!(restarted.status()[0].refused.is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}
