//! A pipeline pins the exact plugin it runs (`sha256` on a source or writer
//! table): another build of the same plugin dropped in its place is not run,
//! the pipeline waits with its messages in the queue, and changing the pin in
//! the configuration (a reload) resumes it. `signer` pins the trusted key that
//! signed it: a file signed by another trusted key is not run.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sluice_tests::daemon::{eventually, http_get};
use sluice_tests::{cdr_json, plugin};

use crate::daemon::{LONG, start, world};
use crate::hot_reload::deploy;
use crate::signing::{keygen, sign, signed_world};

/// The file's SHA-256 as the docs tell operators to get it: `sha256sum`.
fn sha256sum(file: &Path) -> String {
    let out = Command::new("sha256sum").arg(file).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().next().unwrap().to_string()
}

/// Another build of the plugin at `path`: the same component with a custom
/// section appended (a valid component with another content hash), as a
/// rebuild with another compiler or a patched dependency would be.
fn another_build(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    let name = b"sluice-test-build";
    let payload = b"build 2";
    // A custom section: id 0, its size, then its name (length-prefixed) and
    // payload; every size here is under 128, one LEB128 byte each.
    let size = 1 + name.len() + payload.len();
    bytes.extend([0u8, size as u8, name.len() as u8]);
    bytes.extend(name);
    bytes.extend(payload);
    bytes
}

#[tokio::test]
async fn a_writer_pinned_by_hash_does_not_run_another_build_until_the_pin_changes() {
    let mut w = world("pinned").await;
    let dir = w.setup.dir.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(plugin("json-source"), dir.join("json-source.wasm")).unwrap();
    let writer = dir.join("postgres-writer.wasm");
    deploy(
        &dir,
        "postgres-writer.wasm",
        &std::fs::read(plugin("postgres-writer")).unwrap(),
    );
    let build1 = sha256sum(&writer);
    let build2_bytes = another_build(&writer);
    w.setup.plugin_dir = dir.clone();
    // Added to the postgres-writer's table: its pin.
    w.setup.extra_writers = format!("sha256 = \"{build1}\"\n");
    w.setup.write_config("");
    let (code, out) = crate::check::check(&w.setup.config_path());
    assert_eq!(code, Some(0), "the pinned build is there: {out}");

    let daemon = start(&w.setup, "daemon");
    w.broker.publish(&w.setup, (0..20).map(cdr_json)).await;
    w.wait_rows(20, "the rows through the pinned build").await;

    // Build 2 is deployed without a change of pin: it is not run.
    deploy(&dir, "postgres-writer.wasm", &build2_bytes);
    let build2 = sha256sum(&writer);
    assert_ne!(build1, build2);
    let at = "pipelines[0].writers[0].sha256";
    eventually(LONG, "the mismatch logged", || async {
        daemon.log().contains("does not match its pin")
    })
    .await;
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("does not match its pin"))
        .unwrap();
    assert!(
        line.contains("ERROR")
            && line.contains(&format!("pinned={build1}"))
            && line.contains(&format!("found={build2}"))
            && line.contains(at),
        "{line}"
    );
    w.broker.publish(&w.setup, (20..40).map(cdr_json)).await;
    eventually(LONG, "the new messages waiting in the queue", || async {
        w.broker.ready(&w.setup.queue).await == 20
    })
    .await;
    let (status, body) = http_get(w.setup.admin_port, "/readyz")
        .await
        .expect("the admin server answers");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("paused") && body.contains(at) && body.contains(&build1),
        "/readyz says why: {body}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.rows().await, 20, "no row through a build not pinned");

    // `sluice check` reports it at the pin's key path, and fails.
    let (code, out) = crate::check::check(&w.setup.config_path());
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(at) && out.contains(&build1) && out.contains(&build2),
        "{out}"
    );

    // The deploy's other half: the operator pins build 2, the reload resumes
    // the pipeline, and the waiting messages land.
    w.setup.extra_writers = format!("sha256 = \"{build2}\"\n");
    w.setup.write_config("");
    w.wait_rows(40, "the waiting rows, through the newly pinned build")
        .await;
    let log = daemon.log();
    assert!(log.contains("pipelines_resumed=[\""), "{log}");
    let (code, out) = crate::check::check(&w.setup.config_path());
    assert_eq!(code, Some(0), "{out}");
    drop(daemon);
    w.finish().await;
}

#[tokio::test]
async fn a_writer_pinned_to_a_signer_runs_only_what_that_key_signed() {
    let keys = std::env::temp_dir().join(sluice_tests::unique_name("pin-keys"));
    std::fs::create_dir_all(&keys).unwrap();
    let ci = keygen(&keys, "ci");
    let team = keygen(&keys, "team");
    // Both files signed by `ci`; both keys trusted; the writer pinned to `team`.
    let (mut w, dir) = signed_world("pin-signer", &ci).await;
    w.setup.daemon_extra = format!(
        "trusted_keys = [{:?}, {:?}]",
        ci.path.display().to_string(),
        team.path.display().to_string()
    );
    w.setup.extra_writers = "signer = \"team.pub\"\n".into();
    w.setup.write_config("");
    let at = "pipelines[0].writers[0].signer";
    let (code, out) = crate::check::check(&w.setup.config_path());
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(at) && out.contains(&format!("signed by ci.pub ({})", ci.id)),
        "{out}"
    );

    let daemon = start(&w.setup, "daemon");
    w.broker
        .publish(&w.setup, (0..10).map(|i| format!("id-{i:08}")))
        .await;
    eventually(LONG, "the pipeline paused on its signer pin", || async {
        daemon.log().contains("does not match its pin")
    })
    .await;
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("does not match its pin"))
        .unwrap();
    assert!(
        line.contains("ERROR")
            && line.contains(at)
            && line.contains(&format!("pinned=team.pub ({})", team.id))
            && line.contains(&format!("found=signed by ci.pub ({})", ci.id)),
        "{line}"
    );
    let (status, body) = http_get(w.setup.admin_port, "/readyz").await.unwrap();
    assert!(status == 503 && body.contains(at), "{status} {body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.marked_count(0).await, 0, "nothing ran");

    // The writer signed by `team` (only its signature is deployed again): it
    // matches, and the waiting messages land.
    sign(&dir.join("postgres-writer.wasm"), &team);
    eventually(LONG, "the waiting rows", || async {
        w.marked_count(0).await == 10
    })
    .await;
    let (code, out) = crate::check::check(&w.setup.config_path());
    assert_eq!(code, Some(0), "{out}");
    drop(daemon);
    w.finish().await;
    std::fs::remove_dir_all(&keys).unwrap();
}
