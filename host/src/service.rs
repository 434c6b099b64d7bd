//! systemd integration (`Type=notify`, see `deploy/sluice.service`): readiness,
//! reload and stop notifications, status text, and a watchdog that pings only
//! while every consumer makes progress.
//!
//! Outside systemd (no `NOTIFY_SOCKET`) every function does nothing. A failed
//! notification is logged at debug and otherwise ignored: systemd's own timeouts
//! catch a daemon that cannot reach it.

use std::sync::Arc;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::admin::Health;

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "systemd notification not sent");
    }
}

/// One notification is `KEY=value` lines: a newline in a status would end it.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// Startup (or a reload) is complete: `READY=1` with `status` as the unit's
/// status text.
pub fn ready(status: &str) {
    let status = one_line(status);
    notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// A reload (SIGHUP) has begun: `RELOADING=1` with the current monotonic time,
/// which systemd 253 and later require. Call [`ready`] when it is done, applied
/// or refused, or systemd waits for it until `TimeoutStartSec`.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the monotonic clock; RELOADING=1 sent without it");
            notify(&[NotifyState::Reloading]);
        }
    }
}

/// Shutdown has begun: `STOPPING=1`.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Sets the unit's status text (`systemctl status`).
pub fn status(text: &str) {
    let text = one_line(text);
    notify(&[NotifyState::Status(&text)]);
}

/// When systemd enabled the watchdog for this process (`WatchdogSec=`), starts a
/// task that sends `WATCHDOG=1` every half interval, but only while every consumer
/// beat within the interval ([`Health::alive_within`]). A consumer stuck longer
/// stops the pings, a warning names it, and systemd restarts the daemon.
/// `None` without a watchdog. Needs a tokio runtime.
pub fn spawn_watchdog(health: Arc<Health>) -> Option<JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    tracing::info!(interval = ?interval, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let stuck = health.stuck(interval);
            if stuck.is_empty() {
                notify(&[NotifyState::Watchdog]);
            } else {
                tracing::warn!(
                    stuck = %stuck.join("; "),
                    watchdog = ?interval,
                    "not pinging the watchdog: a consumer made no progress; systemd will restart the daemon"
                );
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::*;

    /// Tests that set `NOTIFY_SOCKET` and `WATCHDOG_*` hold this lock.
    static ENV: Mutex<()> = Mutex::new(());

    const VARS: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

    /// A datagram socket standing in for systemd's, with the environment pointing
    /// at it; both are undone on drop.
    struct FakeSystemd {
        socket: UnixDatagram,
        path: PathBuf,
        _lock: std::sync::MutexGuard<'static, ()>,
    }

    impl FakeSystemd {
        fn new(vars: &[(&str, &str)]) -> Self {
            let lock = ENV.lock().unwrap_or_else(|e| e.into_inner());
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "sluice-notify-{}-{}.sock",
                std::process::id(),
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ));
            let _ = std::fs::remove_file(&path);
            let socket = UnixDatagram::bind(&path).expect("bind the fake notify socket");
            // SAFETY: the variables are only read by sd-notify, and only by tests
            // holding `ENV`.
            unsafe {
                std::env::set_var("NOTIFY_SOCKET", &path);
                for (k, v) in vars {
                    std::env::set_var(k, v);
                }
            }
            FakeSystemd {
                socket,
                path,
                _lock: lock,
            }
        }

        fn recv(&self) -> String {
            self.socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut buf = [0; 4096];
            let n = self.socket.recv(&mut buf).expect("a notification");
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }

        /// Every notification that arrives within `wait`.
        fn recv_all(&self, wait: Duration) -> Vec<String> {
            self.socket.set_read_timeout(Some(wait)).unwrap();
            let mut got = Vec::new();
            let mut buf = [0; 4096];
            while let Ok(n) = self.socket.recv(&mut buf) {
                got.push(String::from_utf8(buf[..n].to_vec()).unwrap());
            }
            got
        }
    }

    impl Drop for FakeSystemd {
        fn drop(&mut self) {
            // SAFETY: as in `new`, still holding `ENV`.
            unsafe {
                for k in VARS {
                    std::env::remove_var(k);
                }
            }
            let _ = std::fs::remove_file(&self.path);
        }
    }

    #[test]
    fn sends_ready_with_a_one_line_status() {
        let systemd = FakeSystemd::new(&[]);
        ready("running 2 pipelines\nsecond line");
        assert_eq!(
            systemd.recv(),
            "READY=1\nSTATUS=running 2 pipelines second line\n"
        );
        status("reloading plugins");
        assert_eq!(systemd.recv(), "STATUS=reloading plugins\n");
    }

    #[test]
    fn sends_reloading_with_the_monotonic_time() {
        let systemd = FakeSystemd::new(&[]);
        reloading();
        let got = systemd.recv();
        let mut lines = got.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"), "{got}");
        let usec = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(usec.is_some_and(|u| u > 0), "{got}");
    }

    #[test]
    fn sends_stopping() {
        let systemd = FakeSystemd::new(&[]);
        stopping();
        assert_eq!(systemd.recv(), "STOPPING=1\n");
    }

    #[test]
    fn does_nothing_outside_systemd() {
        let _lock = ENV.lock().unwrap_or_else(|e| e.into_inner());
        assert!(std::env::var_os("NOTIFY_SOCKET").is_none());
        ready("ready");
        reloading();
        stopping();
        status("status");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        assert!(spawn_watchdog(Health::new()).is_none());
    }

    #[test]
    fn a_socket_that_is_gone_is_not_an_error() {
        let systemd = FakeSystemd::new(&[]);
        std::fs::remove_file(&systemd.path).unwrap();
        ready("ready");
        stopping();
    }

    #[test]
    fn no_watchdog_for_another_process() {
        let _systemd = FakeSystemd::new(&[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        assert!(spawn_watchdog(Health::new()).is_none());
    }

    #[test]
    fn pings_the_watchdog_only_while_consumers_beat() {
        let pid = std::process::id().to_string();
        let systemd = FakeSystemd::new(&[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", &pid)]);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let health = Health::new();
        health.consumer_up("cdr", 0);
        let watchdog = {
            let _guard = runtime.enter();
            spawn_watchdog(health.clone()).expect("WATCHDOG_USEC is set for our pid")
        };

        // Beating: a ping every 100 ms.
        let start = Instant::now();
        let mut pings = 0;
        while start.elapsed() < Duration::from_millis(500) {
            health.beat("cdr", 0);
            pings += systemd
                .recv_all(Duration::from_millis(20))
                .iter()
                .filter(|m| *m == "WATCHDOG=1\n")
                .count();
        }
        assert!(pings >= 3, "{pings} pings in 500ms");

        // Stuck: once the last beat is older than the interval, no more pings.
        std::thread::sleep(Duration::from_millis(300));
        let _ = systemd.recv_all(Duration::from_millis(10));
        assert!(!health.alive_within(Duration::from_millis(200)));
        let late = systemd.recv_all(Duration::from_millis(400));
        assert!(late.is_empty(), "pinged while stuck: {late:?}");

        // Alive again: pings resume.
        health.beat("cdr", 0);
        assert_eq!(systemd.recv(), "WATCHDOG=1\n");

        watchdog.abort();
        drop(runtime);
    }

    /// `systemd-analyze verify` on `deploy/sluice.service`, as `deploy/README.md`
    /// says, with `/usr/local/bin/sluice` (not installed here) replaced by an
    /// executable that exists. Any output is a warning or an error, and fails.
    #[test]
    fn unit_file_passes_systemd_analyze_verify() {
        use std::process::Command;

        let unit_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/sluice.service");
        let unit = std::fs::read_to_string(unit_path).expect("deploy/sluice.service");
        if let Err(e) = Command::new("systemd-analyze").arg("--version").output() {
            eprintln!("skipped: systemd-analyze is not available ({e})");
            return;
        }
        const BINARY: &str = "/usr/local/bin/sluice";
        assert!(
            unit.lines()
                .any(|l| l.starts_with(&format!("ExecStart={BINARY} "))),
            "ExecStart no longer runs {BINARY}: update this test and deploy/README.md"
        );
        let stand_in = std::env::current_exe().unwrap();
        let dir = std::env::temp_dir().join(format!("sluice-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("sluice.service");
        std::fs::write(&copy, unit.replace(BINARY, stand_in.to_str().unwrap())).unwrap();
        let output = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .env("SYSTEMD_LOG_COLOR", "0")
            .output()
            .expect("run systemd-analyze verify");
        let _ = std::fs::remove_dir_all(&dir);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && said.trim().is_empty(),
            "systemd-analyze verify: {}\n{said}",
            output.status
        );
    }
}
