//! A RabbitMQ node of a test's own, beside the machine's shared broker (which
//! it leaves alone): its own node name, ports, data and log folders, Erlang
//! cookie and `rabbitmq.conf`, started as a child process and stopped with
//! `rabbitmqctl stop` when dropped (so also when the test fails). And
//! [`TestPki`], a test CA with server and client certificates, for a node with
//! a TLS listener.
//!
//! Debian's `rabbitmq-server` wrapper switches to the `rabbitmq` user, who
//! could not read the test's files; the node runs the real script under
//! `/usr/lib/rabbitmq/bin` as the test's user instead, with `HOME` in its own
//! folder so that its cookie is its own and `rabbitmqctl` finds it.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::unique_name;

const RABBITMQ_BIN: &str = "/usr/lib/rabbitmq/bin";
/// A node starts in about 5 s on an idle machine; a loaded one needs more.
const START_LIMIT: Duration = Duration::from_secs(90);

/// A test CA, and certificates it signed for the server (`localhost` and
/// `127.0.0.1`) and for a client; plus a second CA that signed nothing of
/// these. PEM files in `dir`, keys unencrypted.
pub struct TestPki {
    /// The folder holding the files.
    pub dir: PathBuf,
    /// Removes `dir` on drop, whether the test passed or not.
    _tmp: tempfile::TempDir,
}

impl TestPki {
    /// Makes the files with the `openssl` command in a fresh folder.
    pub fn create(tag: &str) -> TestPki {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{}-", unique_name(tag)))
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let openssl = |command: &str| {
            let out = Command::new("openssl")
                .args(command.split_whitespace())
                .current_dir(&dir)
                .output()
                .expect("running openssl");
            assert!(out.status.success(), "openssl {command}: {out:?}");
        };
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        for ca in ["ca", "other-ca"] {
            openssl(&format!(
                "req -x509 {ec} -keyout {ca}.key -out {ca}.pem -days 2 -subj /CN=sluice-test-{ca}"
            ));
        }
        // Extensions make X.509 v3 certificates: rustls refuses v1 ones.
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n",
        )
        .unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage = clientAuth\n").unwrap();
        for (name, cn) in [("server", "localhost"), ("client", "sluice-test-client")] {
            openssl(&format!(
                "req {ec} -keyout {name}.key -out {name}.csr -subj /CN={cn}"
            ));
            openssl(&format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
                 -out {name}.pem -days 2 -extfile {name}.ext"
            ));
        }
        TestPki { dir, _tmp: tmp }
    }

    /// A file of the set: `ca.pem`, `other-ca.pem`, `server.pem`, `server.key`,
    /// `client.pem`, `client.key`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `rabbitmq.conf` lines for a TLS listener on `port` with the server
    /// certificate, that requires a client certificate signed by the CA.
    pub fn rabbitmq_tls_listener(&self, port: u16) -> String {
        format!(
            "listeners.ssl.default = {port}\n\
             ssl_options.cacertfile = {ca}\n\
             ssl_options.certfile = {cert}\n\
             ssl_options.keyfile = {key}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n",
            ca = self.file("ca.pem").display(),
            cert = self.file("server.pem").display(),
            key = self.file("server.key").display(),
        )
    }
}

/// A running RabbitMQ node of the test's own.
pub struct RabbitNode {
    /// `sluice-<tag>-…@localhost`.
    pub name: String,
    /// Its plain AMQP port (`amqp://guest:guest@127.0.0.1:PORT/%2f`; guest may
    /// connect from anywhere on it).
    pub amqp_port: u16,
    dir: PathBuf,
    /// The environment it was started with, to start it again.
    env: Vec<(&'static str, std::ffi::OsString)>,
    /// The ports it listens on once started.
    listening: Vec<u16>,
    /// In a process group of its own, so that it can be killed whole.
    own_group: bool,
    child: Child,
}

/// How a node is made (see [`RabbitNode::start_with`]).
#[derive(Default)]
pub struct NodeOptions<'a> {
    /// Added to its `rabbitmq.conf` (listeners, `ssl_options`, cluster settings).
    pub extra_conf: &'a str,
    /// Ports it must listen on, beside AMQP's, to count as started.
    pub also_listening: &'a [u16],
    /// Plugins enabled.
    pub plugins: &'a [&'a str],
    /// The Erlang cookie (nodes of one cluster share theirs); a cookie of its
    /// own by default.
    pub cookie: Option<&'a str>,
    /// Starts it in a process group of its own (see [`RabbitNode::group`]).
    pub own_group: bool,
}

impl RabbitNode {
    /// Starts a node with `extra_conf` added to its `rabbitmq.conf` (listeners,
    /// `ssl_options`, cluster settings), and waits until it listens on its
    /// AMQP port and on `also_listening` (e.g. its TLS port).
    pub fn start(tag: &str, extra_conf: &str, also_listening: &[u16]) -> RabbitNode {
        Self::start_with_plugins(tag, extra_conf, also_listening, &[])
    }

    /// A node with the stream plugin, listening for the stream protocol on
    /// the port returned.
    pub fn start_with_streams(tag: &str) -> (RabbitNode, u16) {
        let port = free_port();
        let conf = format!("stream.listeners.tcp.1 = {port}\n");
        let node = Self::start_with_plugins(tag, &conf, &[port], &["rabbitmq_stream"]);
        (node, port)
    }

    /// Like [`RabbitNode::start`], with `plugins` enabled.
    pub fn start_with_plugins(
        tag: &str,
        extra_conf: &str,
        also_listening: &[u16],
        plugins: &[&str],
    ) -> RabbitNode {
        Self::start_with(
            tag,
            NodeOptions {
                extra_conf,
                also_listening,
                plugins,
                ..NodeOptions::default()
            },
        )
    }

    /// A node made as `options` say.
    pub fn start_with(tag: &str, options: NodeOptions<'_>) -> RabbitNode {
        let name = unique_name(tag).replace('_', "-");
        let dir = std::env::temp_dir().join(&name);
        let home = dir.join("home");
        for sub in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let cookie = home.join(".erlang.cookie");
        let cookie_text = match options.cookie {
            Some(shared) => shared.to_string(),
            None => format!("{name}-cookie"),
        };
        std::fs::write(&cookie, cookie_text).unwrap();
        set_mode(&cookie, 0o400);
        std::fs::write(
            dir.join("enabled_plugins"),
            format!("[{}].\n", options.plugins.join(",")),
        )
        .unwrap();
        let amqp_port = free_port();
        let conf = format!(
            "listeners.tcp.default = {amqp_port}\nloopback_users = none\n{}",
            options.extra_conf
        );
        std::fs::write(dir.join("rabbitmq.conf"), conf).unwrap();
        let name = format!("{name}@localhost");
        let mut env = node_env(&dir, &name);
        env.extend([
            ("RABBITMQ_NODE_PORT", amqp_port.to_string().into()),
            ("RABBITMQ_DIST_PORT", free_port().to_string().into()),
            ("RABBITMQ_MNESIA_BASE", dir.join("mnesia").into_os_string()),
            ("RABBITMQ_LOG_BASE", dir.join("log").into_os_string()),
            (
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                dir.join("enabled_plugins").into_os_string(),
            ),
            (
                "RABBITMQ_CONFIG_FILE",
                dir.join("rabbitmq.conf").into_os_string(),
            ),
        ]);
        let child = spawn(&dir, &env, options.own_group);
        let mut node = RabbitNode {
            name,
            amqp_port,
            dir,
            env,
            listening: [&[amqp_port], options.also_listening].concat(),
            own_group: options.own_group,
            child,
        };
        let listening = node.listening.clone();
        node.wait_listening(&listening);
        node
    }

    /// The process group the node runs in, when it has one of its own
    /// ([`NodeOptions::own_group`]): killing it kills the node whole.
    pub fn group(&self) -> Option<u32> {
        self.own_group.then(|| self.child.id())
    }

    /// Stops the node (`rabbitmqctl stop`, as an operator would) and waits
    /// until it is gone.
    pub fn stop(&mut self) {
        if let Err(e) = self.ctl(&["stop"]) {
            panic!("stopping RabbitMQ node {}: {e}", self.name);
        }
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < START_LIMIT,
                "RabbitMQ node {} still running {START_LIMIT:?} after `rabbitmqctl stop`",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the node with SIGKILL, as a crash or a power loss would (a node
    /// in a process group of its own only: the Erlang VM is the script's
    /// child), and waits until it is gone.
    pub fn kill(&mut self) {
        let group = self.group().expect("a node in a process group of its own");
        // SAFETY: a signal to a process group of our own.
        unsafe { libc::kill(-(group as i32), libc::SIGKILL) };
        self.child.wait().unwrap();
    }

    /// Starts a stopped node again, with its data, and waits until it listens.
    pub fn restart(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_some(),
            "RabbitMQ node {} is running",
            self.name
        );
        self.child = spawn(&self.dir, &self.env, self.own_group);
        let listening = self.listening.clone();
        self.wait_listening(&listening);
    }

    /// Its folder (data, logs, cookie).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the node's process runs.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// The plain AMQP URL, as guest.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// `rabbitmqctl -n <node> <args>`: its output, or what went wrong.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(Path::new(RABBITMQ_BIN).join("rabbitmqctl"))
            .envs(node_env(&self.dir, &self.name))
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .map_err(|e| format!("rabbitmqctl: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// Waits until the node listens on `ports` again (after `start_app`).
    pub fn wait_listening(&mut self, ports: &[u16]) {
        let started = Instant::now();
        loop {
            let up = ports.iter().all(|port| {
                let addr = SocketAddr::from(([127, 0, 0, 1], *port));
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            });
            if up {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "RabbitMQ node {} exited ({status}) before listening:\n{}",
                    self.name,
                    self.startup_log()
                );
            }
            if started.elapsed() > START_LIMIT {
                panic!(
                    "RabbitMQ node {} not listening on {ports:?} after {START_LIMIT:?}:\n{}",
                    self.name,
                    self.startup_log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What the node printed, and its log, for a failure message.
    fn startup_log(&self) -> String {
        let out = std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default();
        let log = std::fs::read_dir(self.dir.join("log"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect::<Vec<_>>()
            .join("\n");
        format!("{out}\n{log}")
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        // `stop` halts the Erlang VM; the script, our child, then exits.
        if self.running() {
            let _ = self.ctl(&["stop"]);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `rabbitmq-server` with `env`, its output into `server.out`.
fn spawn(dir: &Path, env: &[(&'static str, std::ffi::OsString)], own_group: bool) -> Child {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.out"))
        .unwrap();
    let mut command = Command::new(Path::new(RABBITMQ_BIN).join("rabbitmq-server"));
    command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if own_group {
        command.process_group(0);
    }
    command.spawn().expect("starting rabbitmq-server")
}

/// The environment `rabbitmq-server` and `rabbitmqctl` share for one node.
fn node_env(dir: &Path, name: &str) -> Vec<(&'static str, std::ffi::OsString)> {
    vec![
        ("HOME", dir.join("home").into_os_string()),
        ("RABBITMQ_NODENAME", name.into()),
    ]
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A TCP port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
