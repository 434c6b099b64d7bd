//! The admin server (`admin_addr`): `/healthz`, `/readyz` and `/metrics`, and
//! [`Health`], the state `/readyz` and the systemd watchdog
//! ([`crate::service::spawn_watchdog`]) read.
//!
//! - `GET /healthz`: `200 ok` while the process serves HTTP (liveness).
//! - `GET /readyz`: `200 ready` when the plugins are loaded, the daemon is not
//!   draining, and every consumer has its RabbitMQ session open and is not
//!   stalled; otherwise `503` with one line per reason (`pipeline cdr consumer 1:
//!   RabbitMQ session lost: …`, `pipeline cdr consumer 0: stalled for 12.0s at
//!   write: …`).
//!
//! A stalled consumer (a batch it cannot finish: a store down, a batch retried)
//! makes the daemon unready but not dead: it keeps beating while it waits, so
//! `/healthz` and the systemd watchdog stay happy. Restarting the daemon cannot
//! bring a store back; it would only re-read the batch.
//! - `GET /metrics`: every metric, OpenMetrics text ([`Metrics::render`]).
//! - `GET /status`: the daemon at a glance, as JSON ([`Status`]): per pipeline
//!   and consumer, the counters, what is in hand, the queue's depth, stalls and
//!   retries, and the plugin versions running since when. `sluice top` reads it.
//!   Field names are stable: new fields may be added, none renamed or removed.
//!
//! Other paths get `404`, other methods `405`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

/// The `Content-Type` of `/metrics`: [`Metrics::render`] writes OpenMetrics text.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

const JSON_CONTENT_TYPE: &str = "application/json";

/// A client gets this long to send its request headers, so idle or slow
/// connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What `/readyz` and the watchdog know about the daemon.
///
/// A consumer is registered by its first [`Health::consumer_up`],
/// [`Health::consumer_down`] or [`Health::beat`], and stays until
/// [`Health::remove_pipeline`]; call that once the pipeline's consumers have
/// stopped (a later call would register them again).
#[derive(Debug)]
pub struct Health {
    state: Mutex<State>,
    started: Instant,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            started: Instant::now(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Consumers by pipeline, then by index.
    pipelines: BTreeMap<String, BTreeMap<usize, Consumer>>,
    /// Pipelines paused while a plugin they need is missing, and why. Not ready,
    /// but not stuck: they wait for an operator, and a restart would not help.
    paused: BTreeMap<String, String>,
    plugins_loaded: bool,
    draining: bool,
}

#[derive(Debug)]
struct Consumer {
    /// The AMQP session is open and consuming.
    connected: bool,
    /// The consumer loop's last sign of life.
    last_beat: Instant,
    /// Why the session went down last.
    last_error: Option<String>,
    /// Since when, where and why the consumer is stalled, if it is.
    stalled: Option<(Instant, String)>,
    /// Tries of the stalled batch so far.
    attempts: u32,
    /// When the consumer tries again, while it backs off.
    retry_at: Option<Instant>,
    /// Messages in the batch in hand (taken from the queue, not yet acked).
    holding: usize,
    /// The plugins it runs, and since when.
    plugins: Vec<PluginInUse>,
    plugins_since: Option<SystemTime>,
}

impl Consumer {
    fn new() -> Self {
        Self {
            connected: false,
            last_beat: Instant::now(),
            last_error: None,
            stalled: None,
            attempts: 0,
            retry_at: None,
            holding: 0,
            plugins: Vec::new(),
            plugins_since: None,
        }
    }
}

impl Health {
    /// Not ready: no plugins loaded, no consumers.
    pub fn new() -> Arc<Health> {
        Arc::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a panic elsewhere while the
        // lock was held does not make it unusable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_consumer(&self, pipeline: &str, consumer: usize, f: impl FnOnce(&mut Consumer)) {
        let mut state = self.state();
        let consumers = match state.pipelines.get_mut(pipeline) {
            Some(c) => c,
            None => state.pipelines.entry(pipeline.to_owned()).or_default(),
        };
        f(consumers.entry(consumer).or_insert_with(Consumer::new));
    }

    /// Consumer `consumer` of `pipeline` has its AMQP session open and consuming.
    /// Counts as a beat.
    pub fn consumer_up(&self, pipeline: &str, consumer: usize) {
        self.with_consumer(pipeline, consumer, |c| {
            c.connected = true;
            c.last_beat = Instant::now();
        });
    }

    /// Consumer `consumer` of `pipeline` lost (or could not open) its session,
    /// because of `why`. Counts as a beat: the loop is alive, reconnecting.
    pub fn consumer_down(&self, pipeline: &str, consumer: usize, why: &str) {
        self.with_consumer(pipeline, consumer, |c| {
            c.connected = false;
            c.last_beat = Instant::now();
            c.last_error = Some(why.to_owned());
            // The broker takes back what the session held.
            c.holding = 0;
        });
    }

    /// Consumer `consumer` of `pipeline` holds `messages` unacked messages in
    /// the batch in hand (0 once it is acked).
    pub fn holding(&self, pipeline: &str, consumer: usize, messages: usize) {
        self.with_consumer(pipeline, consumer, |c| c.holding = messages);
    }

    /// Consumer `consumer` of `pipeline` waits `wait` before trying again (a
    /// stalled batch, or a reconnection).
    pub fn backing_off(&self, pipeline: &str, consumer: usize, wait: Duration) {
        self.with_consumer(pipeline, consumer, |c| {
            c.retry_at = Some(Instant::now() + wait);
        });
    }

    /// Consumer `consumer` of `pipeline` runs `plugins` (its source, then its
    /// writers) from now on. The time is kept only when they changed.
    pub fn plugins_in_use(&self, pipeline: &str, consumer: usize, plugins: Vec<PluginInUse>) {
        self.with_consumer(pipeline, consumer, |c| {
            if c.plugins != plugins {
                c.plugins = plugins;
                c.plugins_since = Some(SystemTime::now());
            }
        });
    }

    /// The consumer loop is alive: it finished a batch, waited idle, or is waiting
    /// between retries. The watchdog stops pinging when a consumer has not beaten
    /// for a whole watchdog interval.
    pub fn beat(&self, pipeline: &str, consumer: usize) {
        self.with_consumer(pipeline, consumer, |c| c.last_beat = Instant::now());
    }

    /// Consumer `consumer` of `pipeline` holds a batch it cannot finish, because
    /// of `why` (`None`: it finished one again). Counts as a beat: a stalled
    /// consumer is waiting to retry, not wedged. The first call of a stall sets
    /// its start; later ones update the reason.
    pub fn stalled(&self, pipeline: &str, consumer: usize, why: Option<&str>) {
        self.with_consumer(pipeline, consumer, |c| {
            c.last_beat = Instant::now();
            c.stalled = why.map(|why| {
                let since = c.stalled.as_ref().map_or_else(Instant::now, |s| s.0);
                (since, why.to_owned())
            });
            c.attempts = if c.stalled.is_some() {
                c.attempts + 1
            } else {
                0
            };
        });
    }

    /// Forgets a pipeline's consumers (the pipeline was removed by a reload, or
    /// has stopped).
    pub fn remove_pipeline(&self, pipeline: &str) {
        let mut state = self.state();
        state.pipelines.remove(pipeline);
        state.paused.remove(pipeline);
    }

    /// `pipeline` is paused because of `why` (a plugin it needs is missing): it
    /// makes `/readyz` unready but never stops the watchdog.
    pub fn pipeline_paused(&self, pipeline: &str, why: &str) {
        let mut state = self.state();
        state.pipelines.remove(pipeline);
        state.paused.insert(pipeline.to_owned(), why.to_owned());
    }

    /// Whether the plugins are loaded (and the pipelines resolved).
    pub fn set_plugins_loaded(&self, loaded: bool) {
        self.state().plugins_loaded = loaded;
    }

    /// Whether the daemon is draining for shutdown: not ready, and no longer
    /// checked by the watchdog (the shutdown timeout bounds the drain).
    pub fn set_draining(&self, draining: bool) {
        self.state().draining = draining;
    }

    /// `Ok` when the plugins are loaded, the daemon is not draining and every
    /// registered consumer is up; otherwise every reason it is not, one per line
    /// of the `/readyz` answer.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let state = self.state();
        let mut reasons = Vec::new();
        if !state.plugins_loaded {
            reasons.push("plugins not loaded".to_owned());
        }
        if state.draining {
            reasons.push("draining: the daemon is shutting down".to_owned());
        }
        let now = Instant::now();
        for (pipeline, consumers) in &state.pipelines {
            for (index, c) in consumers {
                if let Some((since, why)) = &c.stalled {
                    let quiet = now.saturating_duration_since(*since).as_secs_f64();
                    reasons.push(format!(
                        "pipeline {pipeline} consumer {index}: stalled for {quiet:.1}s at {why}"
                    ));
                } else if !c.connected {
                    reasons.push(match &c.last_error {
                        Some(why) => format!("pipeline {pipeline} consumer {index}: {why}"),
                        None => format!("pipeline {pipeline} consumer {index}: not consuming yet"),
                    });
                }
            }
        }
        for (pipeline, why) in &state.paused {
            reasons.push(format!("pipeline {pipeline} paused: {why}"));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// Whether every registered consumer beat within `window`. Always true while
    /// draining.
    pub fn alive_within(&self, window: Duration) -> bool {
        self.stuck(window).is_empty()
    }

    /// The consumers that have not beaten within `window`, described as
    /// `pipeline cdr consumer 1: no progress for 42.1s`; none while draining.
    pub fn stuck(&self, window: Duration) -> Vec<String> {
        let state = self.state();
        if state.draining {
            return Vec::new();
        }
        let now = Instant::now();
        let mut stuck = Vec::new();
        for (pipeline, consumers) in &state.pipelines {
            for (index, c) in consumers {
                let quiet = now.saturating_duration_since(c.last_beat);
                if quiet > window {
                    stuck.push(format!(
                        "pipeline {pipeline} consumer {index}: no progress for {:.1}s",
                        quiet.as_secs_f64()
                    ));
                }
            }
        }
        stuck
    }

    /// The daemon at a glance, for `/status`: the consumers as this state knows
    /// them, with `metrics`' counters of their pipelines.
    pub fn status(&self, metrics: &Metrics) -> Status {
        let ready = self.readiness();
        let state = self.state();
        let now = Instant::now();
        let mut pipelines = Vec::new();
        for (name, consumers) in &state.pipelines {
            let consumers: Vec<ConsumerStatus> = consumers
                .iter()
                .map(|(index, c)| ConsumerStatus {
                    index: *index,
                    connected: c.connected,
                    unacked: c.holding,
                    last_error: c.last_error.clone(),
                    stalled: c.stalled.as_ref().map(|(since, why)| Stalled {
                        reason: why.clone(),
                        seconds: now.saturating_duration_since(*since).as_secs_f64(),
                        attempts: c.attempts,
                        retry_in_seconds: c
                            .retry_at
                            .map(|at| at.saturating_duration_since(now).as_secs_f64()),
                    }),
                    plugins: c.plugins.clone(),
                    plugins_since_unix: c.plugins_since.map(unix_seconds),
                })
                .collect();
            pipelines.push(PipelineStatus {
                unacked: consumers.iter().map(|c| c.unacked).sum(),
                consumers,
                ..PipelineStatus::from_counts(name, metrics)
            });
        }
        for (name, why) in &state.paused {
            pipelines.push(PipelineStatus {
                paused: Some(why.clone()),
                ..PipelineStatus::from_counts(name, metrics)
            });
        }
        pipelines.sort_by(|a, b| a.name.cmp(&b.name));
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            time_unix: unix_seconds(SystemTime::now()),
            ready: ready.is_ok(),
            not_ready: ready.err().unwrap_or_default(),
            draining: state.draining,
            pipelines,
        }
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One plugin a consumer runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInUse {
    /// `source` or `writer`.
    pub role: String,
    /// The plugin's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The SHA-256 of its file, hex.
    pub sha256: String,
}

/// The answer of `GET /status`. Totals count since the daemon started; a reader
/// computes rates from two answers (`time_unix` tells how far apart).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_seconds: f64,
    /// When this answer was made, in seconds since the Unix epoch.
    pub time_unix: f64,
    /// What `/readyz` would answer: ready or not.
    pub ready: bool,
    /// Why not, one reason a line, as `/readyz` gives them.
    pub not_ready: Vec<String>,
    /// The daemon is shutting down.
    pub draining: bool,
    /// Every pipeline, running or paused, by name.
    pub pipelines: Vec<PipelineStatus>,
}

/// One pipeline in [`Status`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineStatus {
    /// Its name.
    pub name: String,
    /// Why it is paused (a plugin it needs is missing or refused), if it is.
    pub paused: Option<String>,
    /// Messages received from the broker (a batch tried again counts again).
    pub messages_received: u64,
    /// Messages acked (written by every writer, or dead-lettered).
    pub messages_acked: u64,
    /// Messages its consumers hold in the batches in hand, not acked yet.
    pub unacked: usize,
    /// Messages ready in its queue when the broker was last asked (every 2 s
    /// while consuming); `null` before the first answer.
    pub queue_ready: Option<i64>,
    /// Messages dead-lettered, by stage (`decode`, `write`).
    pub dead_lettered: BTreeMap<String, u64>,
    /// Retries of a batch, by stage.
    pub retries: BTreeMap<String, u64>,
    /// Rows committed, by writer (`name@version`).
    pub rows_written: BTreeMap<String, u64>,
    /// Rows refused, by writer (their messages are dead-lettered).
    pub rows_rejected: BTreeMap<String, u64>,
    /// Batches settled.
    pub batches: u64,
    /// Their total time from decoding to ack, in seconds (the mean latency over
    /// a while is the difference of this over the difference of `batches`).
    pub batch_seconds_sum: f64,
    /// Its consumers (none while paused).
    pub consumers: Vec<ConsumerStatus>,
}

impl PipelineStatus {
    fn from_counts(name: &str, metrics: &Metrics) -> Self {
        let counts = metrics.counts(name);
        PipelineStatus {
            name: name.to_owned(),
            paused: None,
            messages_received: counts.received,
            messages_acked: counts.acked,
            unacked: 0,
            queue_ready: counts.queue_ready,
            dead_lettered: counts.dead_lettered,
            retries: counts.retries,
            rows_written: counts.rows_written,
            rows_rejected: counts.rows_rejected,
            batches: counts.batches,
            batch_seconds_sum: counts.batch_seconds_sum,
            consumers: Vec::new(),
        }
    }
}

/// One consumer in [`PipelineStatus`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsumerStatus {
    /// Its index in the pipeline (0, 1, …).
    pub index: usize,
    /// Its RabbitMQ session is open and consuming.
    pub connected: bool,
    /// Messages in its batch in hand, not acked yet.
    pub unacked: usize,
    /// Why its session went down last, if it did.
    pub last_error: Option<String>,
    /// Its stall, if it holds a batch it cannot finish.
    pub stalled: Option<Stalled>,
    /// The plugins it runs: the source, then the writers.
    pub plugins: Vec<PluginInUse>,
    /// Since when it runs them (started or swapped in), seconds since the Unix
    /// epoch.
    pub plugins_since_unix: Option<f64>,
}

/// A consumer's stall in [`ConsumerStatus`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stalled {
    /// Where and why: `write: writing failed: …`.
    pub reason: String,
    /// For how long, in seconds.
    pub seconds: f64,
    /// Tries of the batch so far.
    pub attempts: u32,
    /// When it tries again, in seconds from now (0 while it tries).
    pub retry_in_seconds: Option<f64>,
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `addr` (port 0 picks a free
/// port) until `shutdown` turns true (or its sender is dropped). Returns the bound
/// address and the accept loop's task.
///
/// Pass a receiver that turns true when the daemon exits, not when draining
/// starts: while draining, `/readyz` answers 503 and `/metrics` stays scrapeable.
/// At shutdown, open connections finish the request in hand and close.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin server to {addr} (`admin_addr`)"))?;
    let bound = listener
        .local_addr()
        .context("reading the admin server's address")?;
    tracing::info!(addr = %bound, "admin server listening: /healthz, /readyz, /metrics, /status");
    let task = tokio::spawn(accept_loop(listener, metrics, health, shutdown));
    Ok((bound, task))
}

async fn accept_loop(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, usually: wait instead of spinning.
                tracing::warn!(error = %e, "admin server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let health = health.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&req, &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stopped(&mut shutdown) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(peer = %peer, error = %e, "admin server: connection ended with an error");
            }
        });
    }
    tracing::debug!("admin server stopped");
}

/// Resolves when `shutdown` turns true or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn respond(req: &Request<Incoming>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/healthz" | "/readyz" | "/metrics" | "/status") {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz, /metrics or /status\n",
        );
    }
    if req.method() != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET"));
        return response;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match health.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(reasons) => {
                let mut body = String::new();
                for reason in reasons {
                    body.push_str(&reason.replace('\n', " "));
                    body.push('\n');
                }
                text(StatusCode::SERVICE_UNAVAILABLE, body)
            }
        },
        "/status" => {
            let status = health.status(metrics);
            let body = serde_json::to_string_pretty(&status).expect("a status serialises");
            with_type(StatusCode::OK, JSON_CONTENT_TYPE, body)
        }
        _ => with_type(StatusCode::OK, METRICS_CONTENT_TYPE, metrics.render()),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    with_type(status, TEXT_CONTENT_TYPE, body)
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// An answer read off the wire.
    struct Answer {
        status: u16,
        headers: String,
        body: String,
    }

    async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut raw = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut raw))
            .await
            .expect("the server answers within 5s")
            .expect("read");
        let (headers, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
        let status = headers
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        Answer {
            status,
            headers: headers.to_ascii_lowercase(),
            body: body.to_owned(),
        }
    }

    async fn start() -> (
        SocketAddr,
        JoinHandle<()>,
        Arc<Metrics>,
        Arc<Health>,
        watch::Sender<bool>,
    ) {
        let metrics = Metrics::new();
        let health = Health::new();
        let (stop, stopped) = watch::channel(false);
        let (addr, task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            health.clone(),
            stopped,
        )
        .await
        .expect("serve");
        (addr, task, metrics, health, stop)
    }

    #[tokio::test]
    async fn healthz_answers_ok_on_a_port_it_picked() {
        let (addr, _task, _metrics, _health, _stop) = start().await;
        assert_ne!(addr.port(), 0);
        let answer = request(addr, "GET", "/healthz").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "ok\n");
    }

    #[tokio::test]
    async fn readyz_follows_plugins_consumers_and_draining() {
        let (addr, _task, _metrics, health, _stop) = start().await;

        let answer = request(addr, "GET", "/readyz").await;
        assert_eq!(answer.status, 503);
        assert_eq!(answer.body, "plugins not loaded\n");

        health.set_plugins_loaded(true);
        health.consumer_up("cdr", 0);
        health.consumer_up("cdr", 1);
        let answer = request(addr, "GET", "/readyz").await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "ready\n"));

        health.consumer_down("cdr", 1, "RabbitMQ session lost: connection reset by peer");
        health.beat("sms", 0);
        health.pipeline_paused("mms", "no plugin named `mms-source`");
        let answer = request(addr, "GET", "/readyz").await;
        assert_eq!(answer.status, 503);
        assert_eq!(
            answer.body,
            "pipeline cdr consumer 1: RabbitMQ session lost: connection reset by peer\n\
             pipeline sms consumer 0: not consuming yet\n\
             pipeline mms paused: no plugin named `mms-source`\n"
        );
        // Paused is not stuck: it waits for an operator, and a restart would not help.
        assert!(
            health
                .stuck(Duration::ZERO)
                .iter()
                .all(|s| !s.contains("mms"))
        );

        health.consumer_up("cdr", 1);
        health.remove_pipeline("sms");
        health.remove_pipeline("mms");
        let answer = request(addr, "GET", "/readyz").await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "ready\n"));

        health.set_draining(true);
        let answer = request(addr, "GET", "/readyz").await;
        assert_eq!(answer.status, 503);
        assert_eq!(answer.body, "draining: the daemon is shutting down\n");
    }

    #[tokio::test]
    async fn metrics_serves_the_registry_as_openmetrics() {
        let (addr, _task, metrics, _health, _stop) = start().await;
        metrics.pipeline("cdr").received(10);
        let answer = request(addr, "GET", "/metrics").await;
        assert_eq!(answer.status, 200);
        assert!(
            answer
                .headers
                .contains(&format!("content-type: {METRICS_CONTENT_TYPE}")),
            "{}",
            answer.headers
        );
        assert!(
            answer
                .body
                .lines()
                .any(|l| l == r#"sluice_messages_received_total{pipeline="cdr"} 10"#),
            "{}",
            answer.body
        );
        assert!(answer.body.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn status_gives_counters_stalls_and_plugins_per_pipeline_and_consumer() {
        let (addr, _task, metrics, health, _stop) = start().await;
        health.set_plugins_loaded(true);
        let cdr = metrics.pipeline("cdr");
        cdr.received(10);
        cdr.acked(6);
        cdr.dead_lettered("decode", 2);
        cdr.rows_written("postgres-writer@0.2.0", 4);
        cdr.batch(6, Duration::from_millis(250));
        cdr.queue_ready(1500);
        health.consumer_up("cdr", 0);
        health.holding("cdr", 0, 4);
        let plugin = |role: &str, name: &str| PluginInUse {
            role: role.into(),
            name: name.into(),
            version: "0.2.0".into(),
            sha256: "ab".repeat(32),
        };
        health.plugins_in_use(
            "cdr",
            0,
            vec![
                plugin("source", "json-source"),
                plugin("writer", "postgres-writer"),
            ],
        );
        health.stalled("cdr", 1, Some("write: writing failed: connection refused"));
        health.stalled("cdr", 1, Some("write: writing failed: connection refused"));
        health.backing_off("cdr", 1, Duration::from_secs(30));
        health.pipeline_paused("sms", "no plugin named `sms-source`");

        let answer = request(addr, "GET", "/status").await;
        assert_eq!(answer.status, 200);
        assert!(
            answer.headers.contains("content-type: application/json"),
            "{}",
            answer.headers
        );
        let status: Status = serde_json::from_str(&answer.body).expect(&answer.body);
        assert!(!status.ready);
        let [cdr, sms] = &status.pipelines[..] else {
            panic!("two pipelines: {status:#?}")
        };
        assert_eq!(cdr.name, "cdr");
        assert_eq!(cdr.paused, None);
        assert_eq!((cdr.messages_received, cdr.messages_acked), (10, 6));
        assert_eq!((cdr.unacked, cdr.queue_ready), (4, Some(1500)));
        assert_eq!(cdr.dead_lettered["decode"], 2);
        assert_eq!(cdr.rows_written["postgres-writer@0.2.0"], 4);
        assert_eq!((cdr.batches, cdr.batch_seconds_sum), (1, 0.25));
        let [c0, c1] = &cdr.consumers[..] else {
            panic!("two consumers: {cdr:#?}")
        };
        assert!(c0.connected && c0.stalled.is_none());
        assert_eq!(c0.plugins[1].name, "postgres-writer");
        assert!(c0.plugins_since_unix.is_some_and(|t| t > 1.6e9));
        let stall = c1.stalled.as_ref().expect("consumer 1 is stalled");
        assert_eq!(stall.reason, "write: writing failed: connection refused");
        assert_eq!(stall.attempts, 2);
        assert!(
            stall
                .retry_in_seconds
                .is_some_and(|s| s > 20.0 && s <= 30.0)
        );
        assert_eq!(sms.paused.as_deref(), Some("no plugin named `sms-source`"));
        assert!(sms.consumers.is_empty());
    }

    #[tokio::test]
    async fn unknown_paths_get_404_and_other_methods_405() {
        let (addr, _task, _metrics, _health, _stop) = start().await;
        assert_eq!(request(addr, "GET", "/").await.status, 404);
        assert_eq!(request(addr, "GET", "/metricsz").await.status, 404);
        let answer = request(addr, "POST", "/metrics").await;
        assert_eq!(answer.status, 405);
        assert!(answer.headers.contains("allow: get"), "{}", answer.headers);
        assert_eq!(request(addr, "DELETE", "/healthz").await.status, 405);
        // The query string is not part of the path.
        assert_eq!(request(addr, "GET", "/healthz?verbose=1").await.status, 200);
    }

    #[tokio::test]
    async fn stops_accepting_when_shutdown_turns_true() {
        let (addr, task, _metrics, _health, stop) = start().await;
        assert_eq!(request(addr, "GET", "/healthz").await.status, 200);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the accept loop ends")
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn refuses_an_address_in_use_with_the_config_key() {
        let (addr, _task, metrics, health, _stop) = start().await;
        let (_, stopped) = watch::channel(false);
        let e = serve(addr, metrics, health, stopped).await.unwrap_err();
        assert!(format!("{e:#}").contains("admin_addr"), "{e:#}");
    }

    #[test]
    fn a_consumer_that_stops_beating_is_stuck_unless_draining() {
        let health = Health::new();
        assert!(health.alive_within(Duration::ZERO), "no consumers: alive");
        health.consumer_up("cdr", 0);
        health.beat("cdr", 1);
        assert!(health.alive_within(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(30));
        health.beat("cdr", 1);
        let stuck = health.stuck(Duration::from_millis(20));
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        assert!(
            stuck[0].starts_with("pipeline cdr consumer 0: no progress for "),
            "{stuck:?}"
        );
        assert!(!health.alive_within(Duration::from_millis(20)));
        health.set_draining(true);
        assert!(health.alive_within(Duration::from_millis(20)));
    }

    #[test]
    fn a_stalled_consumer_is_unready_but_alive_until_it_recovers() {
        let health = Health::new();
        health.set_plugins_loaded(true);
        health.consumer_up("cdr", 0);
        assert_eq!(health.readiness(), Ok(()));
        health.stalled("cdr", 0, Some("write: writing failed: store down"));
        std::thread::sleep(Duration::from_millis(20));
        health.stalled("cdr", 0, Some("write: writing failed: still down"));
        let reasons = health.readiness().unwrap_err();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].starts_with("pipeline cdr consumer 0: stalled for 0.0")
                && reasons[0].ends_with("s at write: writing failed: still down"),
            "the stall keeps its start and shows the latest reason: {reasons:?}"
        );
        assert!(
            health.alive_within(Duration::from_secs(60)),
            "a stall beats: the watchdog must not restart the daemon for it"
        );
        health.stalled("cdr", 0, None);
        assert_eq!(health.readiness(), Ok(()));
    }
}
