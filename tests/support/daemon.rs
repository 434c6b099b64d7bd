//! A Sluice daemon as a child process, with its own queue, exchanges and
//! Postgres schema, and the RabbitMQ client side of the tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::{amqp_url, cdr_source_config, plugins_dir, postgres_url, unique_name};

/// Everything one daemon test owns on the shared servers, and its config file.
pub struct Setup {
    /// The pipeline's name (also part of every other name).
    pub pipeline: String,
    /// The queue it consumes.
    pub queue: String,
    /// The exchange messages are published to.
    pub exchange: String,
    /// The dead-letter queue.
    pub dead_queue: String,
    /// The Postgres schema the rows land in (table `cdr`).
    pub pg_schema: String,
    /// The Postgres application name of the daemon's connections.
    pub pg_app: String,
    /// The folder with the config file and logs.
    pub dir: PathBuf,
    /// The admin server's port.
    pub admin_port: u16,
    /// The plugin folder (the shared built test plugins unless a test needs its
    /// own to change plugins in).
    pub plugin_dir: PathBuf,
    /// The source plugin, its config as a TOML inline table, and the table the
    /// rows land in (json-source with the CDR config into `cdr` by default).
    pub source: (String, String, String),
    /// More `[[pipelines.writers]]` tables, after the postgres-writer (empty by
    /// default).
    pub extra_writers: String,
    /// More `[daemon]` keys, one a line (e.g. `plugin_call_deadline = "2s"`;
    /// empty by default). Call a `write_config*` method after setting it.
    pub daemon_extra: String,
    /// Removes `dir` when the setup is dropped, whether the test passed or not.
    _dir: tempfile::TempDir,
    /// The broker's AMQP URLs: the machine's broker by default, a cluster's
    /// nodes (written as `urls`) when there are several.
    pub amqp_urls: Vec<String>,
    /// The broker's stream-protocol URLs, likewise.
    pub stream_urls: Vec<String>,
}

/// `url = "…"` for one URL, `urls = ["…", …]` for several.
fn url_line(urls: &[String]) -> String {
    match urls {
        [one] => format!("url = \"{one}\""),
        many => {
            let quoted: Vec<String> = many.iter().map(|u| format!("\"{u}\"")).collect();
            format!("urls = [{}]", quoted.join(", "))
        }
    }
}

impl Setup {
    /// Fresh names for everything, and a config file.
    pub fn new(tag: &str) -> Self {
        let pipeline = unique_name(tag).replace('_', "-");
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{pipeline}-"))
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let setup = Setup {
            queue: format!("{pipeline}.in"),
            exchange: format!("{pipeline}.x"),
            dead_queue: format!("{pipeline}.dead"),
            pg_schema: pipeline.replace('-', "_"),
            pg_app: format!("{pipeline}-pg"),
            pipeline,
            dir,
            admin_port: free_port(),
            plugin_dir: plugins_dir().to_path_buf(),
            source: (
                "json-source".into(),
                json_to_toml_inline(&cdr_source_config(1, "")),
                "cdr".into(),
            ),
            extra_writers: String::new(),
            daemon_extra: String::new(),
            amqp_urls: vec![amqp_url()],
            stream_urls: vec![crate::stream_url()],
            _dir: tmp,
        };
        setup.write_config("");
        setup
    }

    /// The config file path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// Writes the config; `pipeline_extra` is added to the pipeline table (e.g.
    /// `consumers = 1`).
    pub fn write_config(&self, pipeline_extra: &str) {
        self.write_config_with(pipeline_extra, "");
    }

    /// Like [`write_config`](Self::write_config), with `queue_extra` added to the
    /// queue table (e.g. `type = "quorum"`).
    pub fn write_config_with(&self, pipeline_extra: &str, queue_extra: &str) {
        let plugin_tables = format!(
            r#"[pipelines.source]
plugin = "{source_plugin}"
config = {source}

[[pipelines.writers]]
plugin = "postgres-writer"
grants = {{ postgres = ["warehouse"] }}
config = {{ connection = "warehouse", schema = "{schema}", table = "{table}" }}
{extra_writers}"#,
            schema = self.pg_schema,
            source_plugin = self.source.0,
            source = self.source.1,
            table = self.source.2,
            extra_writers = self.extra_writers,
        );
        self.write_config_text(pipeline_extra, queue_extra, &plugin_tables);
    }

    /// The setup's configuration with another source and writer: `source` and
    /// `writer` are the TOML lines of `[pipelines.source]` and
    /// `[[pipelines.writers]]`.
    pub fn write_config_plugins(&self, source: &str, writer: &str) {
        let plugin_tables =
            format!("[pipelines.source]\n{source}\n\n[[pipelines.writers]]\n{writer}\n");
        self.write_config_text("", "", &plugin_tables);
    }

    fn write_config_text(&self, pipeline_extra: &str, queue_extra: &str, plugin_tables: &str) {
        let text = format!(
            "{}{}",
            self.daemon_tables(),
            self.pipeline_table(pipeline_extra, queue_extra, plugin_tables)
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Writes a config with more than one pipeline: this setup's daemon and
    /// connection tables (its Postgres connection `warehouse` serves them all),
    /// then one `[[pipelines]]` table per `(setup, pipeline_extra, plugin_tables)`,
    /// each with that setup's names (queue, exchange, dead letters).
    /// `plugin_tables` is the text of its `[pipelines.source]` and
    /// `[[pipelines.writers]]` tables.
    pub fn write_config_pipelines(&self, pipelines: &[(&Setup, &str, &str)]) {
        let mut text = self.daemon_tables();
        for (setup, pipeline_extra, plugin_tables) in pipelines {
            text.push_str(&setup.pipeline_table(pipeline_extra, "", plugin_tables));
        }
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// Writes a stream pipeline's config: `queue_table` is the inline table of
    /// its `queue` (a `rabbitmq-stream` connection named `streams` is there to
    /// name), with this setup's plugins, dead letters and retries.
    pub fn write_stream_config(&self, pipeline_extra: &str, queue_table: &str) {
        let text = format!(
            r#"{daemon}
[connections.streams]
type = "rabbitmq-stream"
{stream_url}

[[pipelines]]
name = "{name}"
connection = "rabbit"
{pipeline_extra}
queue = {queue_table}
dead_letter = {{ exchange = "{name}.dead", queue = "{dead}" }}
retry = {{ initial_backoff = "50ms", max_backoff = "1s" }}

[pipelines.source]
plugin = "{source_plugin}"
config = {source}

[[pipelines.writers]]
plugin = "postgres-writer"
grants = {{ postgres = ["warehouse"] }}
config = {{ connection = "warehouse", schema = "{schema}", table = "{table}" }}
{extra_writers}
"#,
            daemon = self.daemon_tables(),
            stream_url = url_line(&self.stream_urls),
            name = self.pipeline,
            dead = self.dead_queue,
            schema = self.pg_schema,
            source_plugin = self.source.0,
            source = self.source.1,
            table = self.source.2,
            extra_writers = self.extra_writers,
        );
        std::fs::write(self.config_path(), text).unwrap();
    }

    /// The `[daemon]` and `[connections.*]` tables.
    fn daemon_tables(&self) -> String {
        format!(
            r#"
[daemon]
plugin_dir = "{plugins}"
cache_dir = "{cache}"
admin_addr = "127.0.0.1:{admin_port}"
shutdown_timeout = "20s"
plugin_call_timeout = "10s"
{daemon_extra}

[connections.rabbit]
type = "amqp"
{amqp}

[connections.warehouse]
type = "postgres"
url = "{pg}?application_name={app}"
"#,
            plugins = self.plugin_dir.display(),
            cache = crate::workspace_root()
                .join("target/test-component-cache")
                .display(),
            amqp = url_line(&self.amqp_urls),
            pg = postgres_url(),
            app = self.pg_app,
            admin_port = self.admin_port,
            daemon_extra = self.daemon_extra,
        )
    }

    /// This setup's `[[pipelines]]` table.
    fn pipeline_table(
        &self,
        pipeline_extra: &str,
        queue_extra: &str,
        plugin_tables: &str,
    ) -> String {
        format!(
            r#"
[[pipelines]]
name = "{name}"
connection = "rabbit"
{extra}
queue = {{ name = "{queue}", bindings = [{{ exchange = "{exchange}", routing_key = "cdr.#" }}]{queue_extra} }}
dead_letter = {{ exchange = "{name}.dead", queue = "{dead}" }}
retry = {{ initial_backoff = "50ms", max_backoff = "1s" }}

{plugin_tables}
"#,
            name = self.pipeline,
            extra = pipeline_extra,
            queue_extra = queue_extra,
            queue = self.queue,
            exchange = self.exchange,
            dead = self.dead_queue,
        )
    }
}

/// Waits for the confirms of `pending` publishes to `exchange`; an error names
/// the message the broker refused.
async fn settle(
    pending: &mut Vec<(Option<String>, lapin::PublisherConfirm)>,
    exchange: &str,
) -> anyhow::Result<()> {
    for (id, confirm) in pending.drain(..) {
        anyhow::ensure!(
            confirm.await?.is_ack(),
            "the broker refused message {id:?} on exchange `{exchange}`"
        );
    }
    Ok(())
}

/// A TCP port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET http://127.0.0.1:<port><path>`: the status code and the body, or `None`
/// when nothing answers.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The json-source config (JSON) as a TOML inline table.
pub fn json_to_toml_inline(json: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    fn render(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Object(map) => {
                let items: Vec<String> = map
                    .iter()
                    .map(|(k, v)| format!("{k} = {}", render(v)))
                    .collect();
                format!("{{ {} }}", items.join(", "))
            }
            serde_json::Value::Array(items) => {
                format!(
                    "[{}]",
                    items.iter().map(render).collect::<Vec<_>>().join(", ")
                )
            }
            other => other.to_string(),
        }
    }
    render(&value)
}

/// A running daemon.
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `<bin> run --config <setup's config>`, logging to a file. `bin` is
    /// the `sluice` executable (`env!("CARGO_BIN_EXE_sluice-under-test")` in the
    /// integration tests).
    pub fn start(bin: &str, setup: &Setup, log_name: &str) -> Daemon {
        Self::start_with_env(bin, setup, log_name, &[])
    }

    /// Like [`start`](Self::start), with extra environment variables.
    pub fn start_with_env(
        bin: &str,
        setup: &Setup,
        log_name: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        Self::start_config(bin, &setup.config_path(), &setup.dir, log_name, env)
    }

    /// `<bin> run --config <config>`, logging to `<dir>/<log_name>.log`.
    pub fn start_config(
        bin: &str,
        config: &Path,
        dir: &Path,
        log_name: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let log = dir.join(format!("{log_name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info,sluice=debug")
            .env_remove("RUST_BACKTRACE")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .expect("starting the daemon");
        Daemon { child, log }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `HUP`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// `kill -9`, and waits for it to be gone.
    pub fn kill9(mut self) {
        self.signal("KILL");
        self.child.wait().unwrap();
    }

    /// Its exit status if it has exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the daemon to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM, then asserts a clean exit (status 0) within 20 s, showing the
    /// log if not.
    pub fn stop_cleanly(&mut self) {
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "exit {status:?} after SIGTERM; log:\n{}",
            self.log()
        );
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A publisher (and inspector) on the test's own channel.
pub struct Broker {
    _connection: Connection,
    channel: Channel,
}

impl Broker {
    /// Connects to the local RabbitMQ.
    pub async fn connect() -> Broker {
        Self::connect_to(&amqp_url()).await
    }

    /// Connects to the broker at `url` (a test's own node).
    pub async fn connect_to(url: &str) -> Broker {
        Self::try_connect_to(url).await.unwrap()
    }

    /// Like [`connect_to`](Self::connect_to), or why not (a node that is down).
    pub async fn try_connect_to(url: &str) -> anyhow::Result<Broker> {
        let connection = Connection::connect(url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Broker {
            _connection: connection,
            channel,
        })
    }

    /// Declares the setup's queue and binding the way the daemon will, so that
    /// messages published before it starts are kept.
    pub async fn prepare(&self, setup: &Setup) {
        use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
        self.channel
            .exchange_declare(
                setup.exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.channel
            .queue_declare(
                setup.queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.channel
            .queue_bind(
                setup.queue.as_str().into(),
                setup.exchange.as_str().into(),
                "cdr.#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }

    /// Publishes persistent messages to the setup's exchange and waits for every
    /// confirm.
    pub async fn publish(&self, setup: &Setup, bodies: impl IntoIterator<Item = String>) {
        self.publish_to(&setup.exchange, bodies).await;
    }

    /// Publishes persistent messages to `exchange` with routing key `cdr.voice`
    /// and waits for every confirm.
    pub async fn publish_to(&self, exchange: &str, bodies: impl IntoIterator<Item = String>) {
        let messages = bodies.into_iter().enumerate().map(|(i, body)| {
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_message_id(format!("m-{i}").into());
            (body.into_bytes(), props)
        });
        self.publish_messages(exchange, messages).await.unwrap();
    }

    /// Publishes messages with properties of their own (message ids, headers) to
    /// `exchange` with routing key `cdr.voice`, persistent, and waits for every
    /// confirm. An error names the message the broker refused or the channel
    /// failure.
    pub async fn publish_messages(
        &self,
        exchange: &str,
        messages: impl IntoIterator<Item = (Vec<u8>, BasicProperties)>,
    ) -> anyhow::Result<()> {
        let mut pending = Vec::new();
        for (body, props) in messages {
            let id = props.message_id().as_ref().map(|s| s.to_string());
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    "cdr.voice".into(),
                    BasicPublishOptions::default(),
                    &body,
                    props.with_delivery_mode(2),
                )
                .await?;
            pending.push((id, confirm));
            // Bounded: a publish of millions holds a few thousand confirms.
            if pending.len() >= 2000 {
                settle(&mut pending, exchange).await?;
            }
        }
        settle(&mut pending, exchange).await?;
        Ok(())
    }

    /// Publishes one persistent message with `headers` (and no other property)
    /// to the setup's exchange with routing key `cdr.voice`, and waits for its
    /// confirm.
    pub async fn publish_with_headers(&self, setup: &Setup, body: &str, headers: FieldTable) {
        let props = BasicProperties::default().with_headers(headers);
        self.publish_messages(&setup.exchange, [(body.as_bytes().to_vec(), props)])
            .await
            .unwrap();
    }

    /// Messages ready in a queue (not counting those delivered and unacked), or
    /// `None` if the queue does not exist.
    pub async fn try_ready(&self, queue: &str) -> Option<u32> {
        // A passive declare of a missing queue closes its channel: use a
        // throwaway one.
        let channel = self._connection.create_channel().await.ok()?;
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(queue.into(), options, FieldTable::default())
            .await;
        let count = declared.ok()?.message_count();
        let _ = channel.close(200, "done".into()).await;
        Some(count)
    }

    /// Messages ready in a queue (not counting those delivered and unacked).
    pub async fn ready(&self, queue: &str) -> u32 {
        self.try_ready(queue).await.unwrap_or(0)
    }

    /// Takes every message of a queue (acking them): body and headers.
    pub async fn drain(&self, queue: &str) -> Vec<(String, FieldTable)> {
        let mut out = Vec::new();
        while let Some(msg) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let headers = msg
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default();
            out.push((
                String::from_utf8_lossy(&msg.delivery.data).into_owned(),
                headers,
            ));
        }
        out
    }

    /// Deletes queues and exchanges.
    pub async fn delete(&self, queues: &[String], exchanges: &[String]) {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        for q in queues {
            let _ = self
                .channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for x in exchanges {
            let _ = self
                .channel
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }

    /// Deletes the setup's queues and exchanges.
    pub async fn cleanup(&self, setup: &Setup) {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        for q in [&setup.queue, &setup.dead_queue] {
            let _ = self
                .channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for x in [setup.exchange.clone(), format!("{}.dead", setup.pipeline)] {
            let _ = self
                .channel
                .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
}

/// A text header of a message (a dead letter's `x-sluice-reason`, RabbitMQ's
/// `x-first-death-reason`); panics, showing what is there, if it is missing
/// or not text.
pub fn header(headers: &FieldTable, key: &str) -> String {
    match headers.inner().get(key) {
        Some(lapin::types::AMQPValue::LongString(s)) => {
            String::from_utf8_lossy(s.as_bytes()).into_owned()
        }
        other => panic!("header {key}: {other:?}"),
    }
}

/// Polls `f` every 100 ms until it returns true, at most `limit`; panics with
/// `what` otherwise.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < limit {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// The path of a file in the folder of the setup (logs, configs).
pub fn in_dir(setup: &Setup, name: &str) -> PathBuf {
    Path::new(&setup.dir).join(name)
}

/// Whether a `rabbitmqctl list_connections` line holds the connection name
/// `name` (whole: `sluice p-1` is not `sluice p-10`).
fn names_connection(line: &str, name: &str) -> bool {
    line.match_indices(name).any(|(at, _)| {
        !line[at + name.len()..]
            .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

/// Closes the daemon's own broker connections (other suites share the broker, so
/// never `close_all_connections`).
pub fn close_connections_of(pipeline: &str) -> usize {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in text
        .lines()
        .filter(|l| names_connection(l, &format!("sluice {pipeline}")))
    {
        let pid = line.split_whitespace().next().unwrap();
        let status = std::process::Command::new("rabbitmqctl")
            .args([
                "close_connection",
                pid,
                "test: broker closes the connection",
            ])
            .status()
            .unwrap();
        assert!(status.success());
        closed += 1;
    }
    closed
}
