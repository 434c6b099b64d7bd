//! systemd integration (`Type=notify`, see `deploy/sluice.service`): readiness,
//! reload and stop notifications, status text, and a watchdog that pings only
//! while every consumer makes progress.
//!
//! What systemd says through the environment is read once, into [`Systemd`].
//! Outside systemd (no `NOTIFY_SOCKET`) every notification does nothing. A failed
//! notification is logged at debug and otherwise ignored: systemd's own timeouts
//! catch a daemon that cannot reach it.

use std::ffi::OsString;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::admin::Health;

/// What systemd told this process through its environment: where to send
/// notifications, and whether it wants watchdog pings. Read once at start
/// ([`Systemd::from_env`]) and passed along, so that nothing else reads the
/// environment (and tests build one without setting process-wide variables).
#[derive(Clone, Debug, Default)]
pub struct Systemd {
    /// `NOTIFY_SOCKET`: the datagram socket notifications go to; `None`
    /// outside systemd.
    socket: Option<PathBuf>,
    /// `WATCHDOG_USEC`, when `WATCHDOG_PID` is unset or names this process.
    watchdog: Option<Duration>,
}

impl Systemd {
    /// From the process environment.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var_os(name), std::process::id())
    }

    /// From the variables `var` returns, for the process `pid`: as sd-notify
    /// reads them (`WATCHDOG_PID` that does not parse is ignored).
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>, pid: u32) -> Self {
        let number = |name: &str| var(name)?.to_str()?.parse::<u64>().ok();
        let for_us = number("WATCHDOG_PID").is_none_or(|p| p == u64::from(pid));
        Systemd {
            socket: var("NOTIFY_SOCKET").map(PathBuf::from),
            watchdog: number("WATCHDOG_USEC")
                .filter(|_| for_us)
                .map(Duration::from_micros),
        }
    }

    /// Sends `states`, as `sd_notify(3)` does. sd-notify's own `notify` reads
    /// `NOTIFY_SOCKET` at every call; this one uses the socket it was given.
    fn send(&self, states: &[NotifyState<'_>]) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        let sock = UnixDatagram::unbound()?;
        sock.connect(socket)?;
        let sent = sock.send(message.as_bytes())?;
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "the notification was cut short",
            ));
        }
        Ok(())
    }

    fn notify(&self, states: &[NotifyState<'_>]) {
        if let Err(e) = self.send(states) {
            tracing::debug!(error = %e, "systemd notification not sent");
        }
    }

    /// Startup (or a reload) is complete: `READY=1` with `status` as the unit's
    /// status text.
    pub fn ready(&self, status: &str) {
        let status = one_line(status);
        self.notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    /// A reload (SIGHUP) has begun: `RELOADING=1` with the current monotonic
    /// time, which systemd 253 and later require. Call [`Systemd::ready`] when
    /// it is done, applied or refused, or systemd waits for it until
    /// `TimeoutStartSec`.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.notify(&[NotifyState::Reloading, now]),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the monotonic clock; RELOADING=1 sent without it");
                self.notify(&[NotifyState::Reloading]);
            }
        }
    }

    /// Shutdown has begun: `STOPPING=1`.
    pub fn stopping(&self) {
        self.notify(&[NotifyState::Stopping]);
    }

    /// Sets the unit's status text (`systemctl status`).
    pub fn status(&self, text: &str) {
        let text = one_line(text);
        self.notify(&[NotifyState::Status(&text)]);
    }

    /// When systemd enabled the watchdog for this process (`WatchdogSec=`),
    /// starts a task that sends `WATCHDOG=1` every half interval, but only
    /// while every consumer beat within the interval ([`Health::alive_within`]).
    /// A consumer stuck longer stops the pings, a warning names it, and systemd
    /// restarts the daemon. `None` without a watchdog. Needs a tokio runtime.
    pub fn spawn_watchdog(&self, health: Arc<Health>) -> Option<JoinHandle<()>> {
        let interval = self.watchdog?;
        tracing::info!(interval = ?interval, "systemd watchdog enabled");
        let systemd = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let stuck = health.stuck(interval);
                if stuck.is_empty() {
                    systemd.notify(&[NotifyState::Watchdog]);
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
}

/// One notification is `KEY=value` lines: a newline in a status would end it.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A datagram socket standing in for systemd's, in a folder of its own
    /// (removed on drop), and the [`Systemd`] that notifies it.
    struct FakeSystemd {
        socket: UnixDatagram,
        path: PathBuf,
        systemd: Systemd,
        _dir: tempfile::TempDir,
    }

    impl FakeSystemd {
        /// With `WATCHDOG_USEC`/`WATCHDOG_PID` from `vars`, for this process.
        fn new(vars: &[(&str, &str)]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify.sock");
            let socket = UnixDatagram::bind(&path).expect("bind the fake notify socket");
            let systemd = Systemd::from_vars(
                |name| match name {
                    "NOTIFY_SOCKET" => Some(path.clone().into_os_string()),
                    _ => vars
                        .iter()
                        .find(|(k, _)| *k == name)
                        .map(|(_, v)| OsString::from(v)),
                },
                std::process::id(),
            );
            FakeSystemd {
                socket,
                path,
                systemd,
                _dir: dir,
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

    #[test]
    fn sends_ready_with_a_one_line_status() {
        let fake = FakeSystemd::new(&[]);
        fake.systemd.ready("running 2 pipelines\nsecond line");
        assert_eq!(
            fake.recv(),
            "READY=1\nSTATUS=running 2 pipelines second line\n"
        );
        fake.systemd.status("reloading plugins");
        assert_eq!(fake.recv(), "STATUS=reloading plugins\n");
    }

    #[test]
    fn sends_reloading_with_the_monotonic_time() {
        let fake = FakeSystemd::new(&[]);
        fake.systemd.reloading();
        let got = fake.recv();
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
        let fake = FakeSystemd::new(&[]);
        fake.systemd.stopping();
        assert_eq!(fake.recv(), "STOPPING=1\n");
    }

    #[test]
    fn does_nothing_outside_systemd() {
        let outside = Systemd::from_vars(|_| None, std::process::id());
        assert!(outside.send(&[NotifyState::Ready]).is_ok());
        outside.ready("ready");
        outside.reloading();
        outside.stopping();
        outside.status("status");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        assert!(outside.spawn_watchdog(Health::new()).is_none());
    }

    #[test]
    fn a_socket_that_is_gone_fails_that_notification_only() {
        let fake = FakeSystemd::new(&[]);
        std::fs::remove_file(&fake.path).unwrap();
        let error = fake.systemd.send(&[NotifyState::Ready]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}");
        // Logged and ignored: the daemon goes on.
        fake.systemd.ready("ready");
        // systemd back at the same path: the next notification reaches it.
        let back = UnixDatagram::bind(&fake.path).unwrap();
        fake.systemd.stopping();
        back.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0; 64];
        let n = back
            .recv(&mut buf)
            .expect("STOPPING=1 after the socket came back");
        assert_eq!(&buf[..n], b"STOPPING=1\n");
    }

    #[test]
    fn no_watchdog_for_another_process() {
        let other = FakeSystemd::new(&[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        assert!(other.systemd.spawn_watchdog(Health::new()).is_none());
        let ours = FakeSystemd::new(&[("WATCHDOG_USEC", "200000")]);
        assert_eq!(ours.systemd.watchdog, Some(Duration::from_millis(200)));
    }

    #[test]
    fn pings_the_watchdog_only_while_consumers_beat() {
        let pid = std::process::id().to_string();
        let fake = FakeSystemd::new(&[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", &pid)]);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let health = Health::new();
        health.consumer_up("cdr", 0);
        let watchdog = {
            let _guard = runtime.enter();
            fake.systemd
                .spawn_watchdog(health.clone())
                .expect("WATCHDOG_USEC is set for our pid")
        };

        // Beating: a ping every 100 ms.
        let start = Instant::now();
        let mut pings = 0;
        while start.elapsed() < Duration::from_millis(500) {
            health.beat("cdr", 0);
            pings += fake
                .recv_all(Duration::from_millis(20))
                .iter()
                .filter(|m| *m == "WATCHDOG=1\n")
                .count();
        }
        assert!(pings >= 3, "{pings} pings in 500ms");

        // Stuck: once the last beat is older than the interval, no more pings.
        std::thread::sleep(Duration::from_millis(300));
        let _ = fake.recv_all(Duration::from_millis(10));
        assert!(!health.alive_within(Duration::from_millis(200)));
        let late = fake.recv_all(Duration::from_millis(400));
        assert!(late.is_empty(), "pinged while stuck: {late:?}");

        // Alive again: pings resume.
        health.beat("cdr", 0);
        assert_eq!(fake.recv(), "WATCHDOG=1\n");

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
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("sluice.service");
        std::fs::write(&copy, unit.replace(BINARY, stand_in.to_str().unwrap())).unwrap();
        let output = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .env("SYSTEMD_LOG_COLOR", "0")
            .output()
            .expect("run systemd-analyze verify");
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
