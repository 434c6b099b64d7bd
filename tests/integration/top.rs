//! `sluice top` against a daemon under load: in a real terminal (tmux), and
//! `--once` as text.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_tests::cdr_json;
use sluice_tests::daemon::{Broker, eventually};

use crate::daemon::{LONG, World, start, world};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice-under-test");

/// Messages that json-source refuses: each is dead-lettered at `decode`.
const POISON: u32 = 5;

/// Publishes CDRs to the world's exchange, 50 every 100 ms, until dropped.
struct Load(Arc<AtomicBool>);

impl Load {
    async fn start(w: &World) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let exchange = w.setup.exchange.clone();
        let stopped = stop.clone();
        let broker = Broker::connect().await;
        tokio::spawn(async move {
            let mut next = 1_000_000u64;
            while !stopped.load(Ordering::Relaxed) {
                broker
                    .publish_to(&exchange, (next..next + 50).map(cdr_json))
                    .await;
                next += 50;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Load(stop)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A daemon consuming under load, after `POISON` messages were dead-lettered.
async fn loaded(tag: &str) -> (World, sluice_tests::daemon::Daemon, Load) {
    let w = world(tag).await;
    // Batches settle every 100 ms at most, so every second of `--once` sees some.
    w.setup
        .write_config("batch = { max_messages = 500, max_wait = \"100ms\" }");
    let poison = (0..POISON).map(|i| format!("{{not json {i}"));
    w.broker.publish(&w.setup, poison).await;
    let daemon = start(&w.setup, "daemon");
    let load = Load::start(&w).await;
    w.wait_dead_letters(POISON, "the poison messages dead-lettered")
        .await;
    w.wait_rows(100, "rows of the load").await;
    (w, daemon, load)
}

/// The table line of `pipeline` on a screen or in a text: its cells, the name
/// first.
fn row_of<'a>(screen: &'a str, pipeline: &str) -> Option<Vec<&'a str>> {
    screen
        .lines()
        .find(|l| l.split_whitespace().next() == Some(pipeline))
        .map(|l| l.split_whitespace().collect())
}

/// Whether a row shows messages and rows moving, and every poison message
/// dead-lettered: `PIPELINE IN/s ROWS/s DEAD/s DEAD LAT UNACKED QUEUE STATE`.
fn shows_load_and_dead_letters(row: &[&str]) -> bool {
    let number = |i: usize| {
        row.get(i)
            .and_then(|c| c.trim_end_matches('k').parse::<f64>().ok())
    };
    number(1).is_some_and(|n| n > 0.0)
        && number(2).is_some_and(|n| n > 0.0)
        && number(4) == Some(f64::from(POISON))
}

/// A tmux server of the test's own (`-L`), killed when dropped.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    /// Runs `command` in a detached 100x30 terminal.
    fn start(name: &str, command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("sluice-{name}"),
            session: name.to_owned(),
        };
        let status = tmux
            .cmd(&["new-session", "-d", "-x", "100", "-y", "30", "-s", name])
            .arg(command)
            .status()
            .expect("running tmux (scripts/services.sh installs it)");
        assert!(status.success(), "tmux new-session: {status}");
        tmux
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket, "-f", "/dev/null"]).args(args);
        cmd
    }

    /// What the terminal shows now.
    fn screen(&self) -> String {
        let out = self
            .cmd(&["capture-pane", "-p", "-t", &self.session])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let status = self
            .cmd(&["send-keys", "-t", &self.session, keys])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Whether the session (the program in it) still runs.
    fn running(&self) -> bool {
        self.cmd(&["has-session", "-t", &self.session])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).output();
    }
}

#[tokio::test]
async fn top_in_a_terminal_shows_the_pipeline_its_rates_and_its_dead_letters() {
    let (w, mut daemon, load) = loaded("top-tty").await;
    let pipeline = w.setup.pipeline.clone();
    // `remain-on-exit` is off: when top quits, the session ends with it.
    let command = format!(
        "{SLUICE} top --admin 127.0.0.1:{} 2>{}",
        w.setup.admin_port,
        w.setup.dir.join("top.err").display()
    );
    let tmux = Tmux::start(&pipeline, &command);

    let mut screen = String::new();
    eventually(LONG, "top showing the load and the dead letters", || {
        screen = tmux.screen();
        let shown = row_of(&screen, &pipeline).is_some_and(|r| shows_load_and_dead_letters(&r));
        async move { shown }
    })
    .await;
    println!("sluice top, 100x30:\n{screen}");
    let lines: Vec<&str> = screen.lines().collect();
    assert!(
        lines[0].starts_with("sluice 0.1.0 at 127.0.0.1:"),
        "{screen}"
    );
    assert!(
        lines[1].split_whitespace().collect::<Vec<_>>()
            == [
                "PIPELINE", "IN/s", "ROWS/s", "DEAD/s", "DEAD", "LAT", "ms", "UNACKED", "QUEUE",
                "STATE"
            ],
        "{screen}"
    );
    // The detail of the selected (only) pipeline: its writer and its plugins.
    assert!(
        screen.contains("  writer postgres-writer@0.1.0: "),
        "{screen}"
    );
    assert!(screen.contains("source json-source 0.1.0 ("), "{screen}");
    assert!(screen.contains(&format!("decode {POISON} (")), "{screen}");

    // `s` sorts by the next key; `q` quits, and the terminal's session ends.
    tmux.keys("s");
    eventually(LONG, "the sort key taken", || {
        let sorted = tmux.screen().contains("s sort (by in/s)");
        async move { sorted }
    })
    .await;
    // At 80 columns every column still shows, and the state of the pipeline;
    // only its name is cut to fit.
    let resized = tmux
        .cmd(&["resize-window", "-t", &pipeline, "-x", "80", "-y", "30"])
        .status()
        .unwrap();
    assert!(resized.success());
    eventually(LONG, "the table redrawn at 80 columns", || {
        let screen = tmux.screen();
        let lines: Vec<&str> = screen.lines().collect();
        let fits = lines.len() > 2
            && lines[1].trim_end().ends_with("QUEUE   STATE")
            && lines[2].trim_end().ends_with(" ok")
            && lines[2].starts_with(&pipeline[..10])
            && !lines[2].contains(&pipeline);
        async move { fits }
    })
    .await;
    tmux.keys("q");
    eventually(LONG, "top to quit on q", || {
        let running = tmux.running();
        async move { !running }
    })
    .await;
    let err = std::fs::read_to_string(w.setup.dir.join("top.err")).unwrap_or_default();
    assert!(err.trim().is_empty(), "top wrote to stderr: {err}");

    drop(load);
    daemon.stop_cleanly();
    w.finish().await;
}

#[tokio::test]
async fn top_once_prints_a_text_snapshot_read_from_the_configured_admin_addr() {
    let (w, mut daemon, load) = loaded("top-once").await;
    let pipeline = w.setup.pipeline.clone();

    // `--config`: the admin address is the configuration's. Its rates are
    // over one second: on a busy machine a second may see no batch start, so
    // it is asked again until one does.
    let once = || {
        let out = Command::new(SLUICE)
            .args(["top", "--once", "--config"])
            .arg(w.setup.config_path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{}: {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let mut text = String::new();
    eventually(LONG, "top --once showing the load", || {
        text = once();
        let shown = row_of(&text, &pipeline).is_some_and(|r| shows_load_and_dead_letters(&r));
        async move { shown }
    })
    .await;
    println!("sluice top --once:\n{text}");
    assert!(
        text.starts_with(&format!(
            "sluice 0.1.0 at 127.0.0.1:{}, up ",
            w.setup.admin_port
        )),
        "{text}"
    );
    let row = row_of(&text, &pipeline).expect("shown above");
    assert_eq!(row.last(), Some(&"ok"), "{text}");
    assert!(
        text.contains(&format!("\n{pipeline}: 2 consumer(s), ")),
        "{text}"
    );
    assert!(text.contains("  consumer 0: connected, "), "{text}");
    assert!(text.contains("  consumer 1: connected, "), "{text}");
    assert!(text.contains("    plugins since "), "{text}");

    drop(load);
    daemon.stop_cleanly();

    // Nothing listens any more: the error names the address and the endpoint.
    let out = Command::new(SLUICE)
        .args(["top", "--once", "--admin"])
        .arg(format!("127.0.0.1:{}", w.setup.admin_port))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(&format!(
            "sluice: error: reading http://127.0.0.1:{}/status: is the daemon running, with this admin_addr?",
            w.setup.admin_port
        )),
        "{err}"
    );
    w.finish().await;
}
