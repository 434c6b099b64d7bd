//! RabbitMQ streams, read with the stream protocol: one subscription per stream
//! partition, resumed after the offset stored under the pipeline's consumer
//! name, and that offset stored once a batch is settled (every writer committed
//! it and its dead letters were confirmed).
//!
//! The client is `rabbitmq-stream-client`, pinned to 0.4.4: 0.5 and later fail
//! against RabbitMQ 3.10 (the broker on Debian 12) while connecting. It is used
//! at its lowest level ([`Client`]) because Sluice needs what the crate's
//! `Consumer` hides: the end of the connection and a stream deleted under a
//! subscription (`metadata_update`) must reach the pipeline, which reconnects
//! with backoff (the crate does not reconnect by itself).
//!
//! Flow control is the protocol's credit, one chunk at a time: the broker
//! sends a chunk, and the next only once that one is in the consumer's channel
//! (which holds at most [`CHUNKS_BUFFERED`] chunks), so a slow pipeline stops
//! the reads and never buffers a stream in memory. One chunk at a time is also
//! what keeps the chunks in order: the crate runs its handler for each frame
//! in a task of its own, so two chunks in flight can be handed over in either
//! order (seen here: offsets 4512.. before 3488..).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use rabbitmq_stream_client::types::{
    Message as StreamMessage, MessageResult, OffsetSpecification, ResponseCode, ResponseKind,
    SimpleValue,
};
use rabbitmq_stream_client::{Client, ClientOptions};
use tokio::sync::mpsc;

use crate::config::{PipelineConfig, StreamConfig, StreamRetention, StreamStart};
use crate::plugin_runtime::{HeaderValue, Message};
use crate::queue_input::Received;

/// Chunks the broker may send before the first is handed over: one (see the
/// module's documentation).
const INITIAL_CREDIT: u16 = 1;

/// Chunks waiting for the consumer, at most. A chunk holds what a producer
/// sent in one batch (up to a few thousand messages).
const CHUNKS_BUFFERED: usize = 4;

/// How long a request to the broker may take before the connection is deemed
/// lost (the crate waits for a response forever).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// The subscription that reads the stream.
const READ: u8 = 1;

/// Receives the last chunk of a stream, on the connection that asks where a
/// stream ends (see [`StreamSession::end`]).
struct EndProbe {
    /// One past the last offset seen.
    end: AtomicU64,
    arrived: tokio::sync::Notify,
}

impl EndProbe {
    /// The probe connection's handler.
    fn handler(
        self: Arc<Self>,
    ) -> impl FnOnce(MessageResult) -> Handled + Clone + Send + Sync + 'static {
        move |item| {
            Box::pin(async move {
                if let Some(Ok(response)) = item
                    && let ResponseKind::Deliver(chunk) = response.kind()
                {
                    let end = chunk.chunk_first_offset + chunk.messages.len() as u64;
                    self.end.fetch_max(end, Ordering::Relaxed);
                    self.arrived.notify_one();
                }
                Ok(())
            })
        }
    }
}

/// What a connection's handler returns (the crate takes closures, run for
/// each frame in a task of their own).
type Handled =
    futures::future::BoxFuture<'static, rabbitmq_stream_client::RabbitMQStreamResult<()>>;

/// What the connection's reader hands to the consumer.
enum Event {
    /// A chunk: its first offset and its messages.
    Chunk(u64, Vec<StreamMessage>),
    /// The subscription ended: the stream was deleted or moved, or the
    /// connection was lost.
    Ended(String),
}

/// Receives what the broker sends on the connection.
#[derive(Clone)]
struct Reader {
    events: mpsc::Sender<Event>,
    /// To grant credit; emptied when the session closes (the client holds
    /// this handler: keeping it here for good would leak both).
    client: Arc<std::sync::Mutex<Option<Client>>>,
    stream: Arc<str>,
}

impl Reader {
    /// The connection's handler (the crate takes closures).
    fn handler(self) -> impl FnOnce(MessageResult) -> Handled + Clone + Send + Sync + 'static {
        move |item| {
            Box::pin(async move {
                self.handle(item).await;
                Ok(())
            })
        }
    }

    async fn handle(&self, item: MessageResult) {
        let event = match item {
            Some(Ok(response)) => match response.kind() {
                ResponseKind::Deliver(chunk) => {
                    let event = Event::Chunk(chunk.chunk_first_offset, chunk.messages);
                    let client = self.client.lock().ok().and_then(|c| c.clone());
                    // Full: this waits, and the connection's reads with it.
                    if self.events.send(event).await.is_ok()
                        && let Some(client) = client
                    {
                        let _ = client.credit(READ, 1).await;
                    }
                    return;
                }
                ResponseKind::MetadataUpdate(_) => Event::Ended(format!(
                    "stream `{}` was deleted, or its leader moved to another node",
                    self.stream
                )),
                _ => return,
            },
            Some(Err(e)) => Event::Ended(format!("the stream connection failed: {e}")),
            None => Event::Ended("the broker closed the stream connection".to_string()),
        };
        let _ = self.events.send(event).await;
    }
}

/// A subscription to one stream, with what settles its batches.
pub struct StreamSession {
    client: Client,
    reader_client: Arc<std::sync::Mutex<Option<Client>>>,
    stream: String,
    consumer_name: String,
    /// The offset last stored, if any.
    stored: Option<u64>,
    /// The second connection: offsets are stored and the stream's end is
    /// probed on it. Not on the reading one: a store written right after a
    /// credit waits there for the broker's delayed ACK (Nagle's algorithm,
    /// which the crate does not turn off), and the next chunk with it: 40 ms
    /// pauses every few batches, measured (BENCHMARKS.md, section 9).
    control: Client,
    probe: Arc<EndProbe>,
}

/// The messages of a subscription, in offset order.
pub struct StreamDeliveries {
    events: mpsc::Receiver<Event>,
    chunk: VecDeque<(u64, StreamMessage)>,
    /// The offset the next message must have at least: where the
    /// subscription resumed (its first chunk may start before it), then one
    /// past the last chunk taken.
    from: u64,
    stream: Arc<str>,
}

/// Where a subscription starts: after the stored offset, or where the
/// configuration says for a consumer that has none.
fn start_at(stored: Option<u64>, start: StreamStart) -> (OffsetSpecification, u64) {
    match (stored, start) {
        (Some(offset), _) => (OffsetSpecification::Offset(offset + 1), offset + 1),
        (None, StreamStart::First) => (OffsetSpecification::First, 0),
        (None, StreamStart::Last) => (OffsetSpecification::Last, 0),
        (None, StreamStart::Next) => (OffsetSpecification::Next, 0),
        (None, StreamStart::Timestamp(ms)) => (OffsetSpecification::Timestamp(ms), 0),
    }
}

async fn timed<T, E: Into<anyhow::Error>>(
    what: &str,
    call: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(result) => result.map_err(Into::into).with_context(|| what.to_string()),
        Err(_) => bail!("{what}: no answer from the broker in {REQUEST_TIMEOUT:?}"),
    }
}

/// The stream protocol's options that create a stream with its retention.
fn creation_options(retention: &StreamRetention) -> HashMap<String, String> {
    let mut options = HashMap::new();
    if let Some(n) = retention.max_length_bytes {
        options.insert("max-length-bytes".to_string(), n.to_string());
    }
    if let Some(age) = retention.max_age {
        options.insert("max-age".to_string(), format!("{}s", age.as_secs().max(1)));
    }
    if let Some(n) = retention.max_segment_size_bytes {
        options.insert("stream-max-segment-size-bytes".to_string(), n.to_string());
    }
    options
}

/// Opens a stream-protocol connection to the `node`th of the pipeline's
/// stream endpoints.
async fn connect(stream: &StreamConfig, node: usize) -> anyhow::Result<Client> {
    let endpoint = &stream.endpoints[node];
    let options = ClientOptions::builder()
        .host(&endpoint.host)
        .port(endpoint.port)
        .user(&endpoint.user)
        .password(&endpoint.password)
        .v_host(&endpoint.vhost)
        .build();
    timed(
        &format!(
            "connecting to RabbitMQ's stream protocol at {}:{} (connection `{}`; is the rabbitmq_stream plugin enabled?)",
            endpoint.host, endpoint.port, stream.connection
        ),
        Client::connect(options),
    )
    .await
}

impl StreamSession {
    /// Connects, checks the stream exists, reads the stored offset and
    /// subscribes after it.
    ///
    /// With several endpoints (a cluster's nodes), each is tried in turn from a
    /// random one until one connects and subscribes: a stream is read from any
    /// node holding a replica (a follower serves only what a quorum of the
    /// nodes has written, so nothing read there is taken back), and offsets are
    /// stored in the stream itself, so the node read from may change at every
    /// reconnect. Random, so that the partitions of a super stream and the
    /// daemons of a fleet spread over the nodes.
    pub async fn open(
        pipeline: &PipelineConfig,
        stream: &str,
    ) -> anyhow::Result<(Self, StreamDeliveries)> {
        let config = pipeline
            .queue
            .stream
            .as_ref()
            .ok_or_else(|| anyhow!("pipeline `{}` reads no stream", pipeline.name))?;
        let nodes = config.endpoints.len();
        let first = crate::queue_input::random_index(nodes);
        let mut failures = Vec::new();
        for k in 0..nodes {
            let node = (first + k) % nodes;
            let opened = match connect(config, node).await {
                Ok(client) => {
                    let opened = Self::subscribe(
                        config,
                        node,
                        stream,
                        client.clone(),
                        pipeline.queue.declare,
                    )
                    .await;
                    if opened.is_err() {
                        let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
                    }
                    opened
                }
                Err(e) => Err(e),
            };
            match opened {
                Ok(opened) => {
                    if nodes > 1 {
                        let endpoint = &config.endpoints[node];
                        tracing::info!(
                            pipeline = %pipeline.name,
                            stream,
                            node = %format!("{}:{}", endpoint.host, endpoint.port),
                            "reading stream through node"
                        );
                    }
                    return Ok(opened);
                }
                Err(e) => failures.push(e),
            }
        }
        match failures.len() {
            1 => Err(failures.pop().expect("one failure")),
            n => {
                let each: Vec<String> = failures.iter().map(|e| format!("{e:#}")).collect();
                bail!(
                    "none of the {n} nodes of connection `{}` could serve stream `{stream}`: {}",
                    config.connection,
                    each.join("; ")
                )
            }
        }
    }

    async fn subscribe(
        config: &StreamConfig,
        node: usize,
        stream: &str,
        client: Client,
        declare: bool,
    ) -> anyhow::Result<(Self, StreamDeliveries)> {
        let metadata = timed(
            &format!("asking where stream `{stream}` is"),
            client.metadata(vec![stream.to_string()]),
        )
        .await?;
        let mut code = metadata.get(stream).map(|m| m.response_code.clone());
        if declare && matches!(code, Some(ResponseCode::StreamDoesNotExist) | None) {
            let response = timed(
                &format!("creating stream `{stream}`"),
                client.create_stream(stream, creation_options(&config.retention)),
            )
            .await?;
            match response.code() {
                ResponseCode::Ok => {
                    tracing::info!(stream, retention = ?config.retention, "stream created")
                }
                // Created meanwhile by another consumer or daemon.
                ResponseCode::StreamAlreadyExists => {}
                other => bail!("creating stream `{stream}` was refused: {other:?}"),
            }
            code = Some(ResponseCode::Ok);
        }
        match code.as_ref() {
            Some(ResponseCode::Ok) => {}
            Some(ResponseCode::StreamDoesNotExist) | None => bail!(
                "stream `{stream}` does not exist; declare it (queue.declare = true, the default) or create it with `rabbitmq-streams add_super_stream` / `rabbitmqadmin declare queue ... queue_type=stream`"
            ),
            Some(code) => bail!("stream `{stream}` is not available: {code:?}"),
        }
        let stored = match client
            .query_offset(config.consumer_name.clone(), stream)
            .await
        {
            Ok(offset) => Some(offset),
            Err(rabbitmq_stream_client::error::ClientError::RequestError(
                ResponseCode::OffsetNotFound,
            )) => None,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "reading the offset stored for consumer `{}` on stream `{stream}`",
                    config.consumer_name
                )));
            }
        };
        let (spec, from) = start_at(stored, config.start);
        let (tx, rx) = mpsc::channel(CHUNKS_BUFFERED);
        let reader_client = Arc::new(std::sync::Mutex::new(Some(client.clone())));
        let reader = Reader {
            events: tx,
            client: reader_client.clone(),
            stream: Arc::from(stream),
        };
        client.set_handler(reader.handler()).await;
        let mut properties = HashMap::new();
        properties.insert("name".to_string(), config.consumer_name.clone());
        let response = timed(
            &format!("subscribing to stream `{stream}`"),
            client.subscribe(READ, stream, spec.clone(), INITIAL_CREDIT, properties),
        )
        .await?;
        if !response.is_ok() {
            bail!(
                "subscribing to stream `{stream}` was refused: {:?}",
                response.code()
            );
        }
        tracing::info!(
            stream,
            consumer_name = %config.consumer_name,
            stored_offset = ?stored,
            start = ?spec,
            "reading stream"
        );
        let control = connect(config, node).await?;
        let probe = Arc::new(EndProbe {
            end: AtomicU64::new(0),
            arrived: tokio::sync::Notify::new(),
        });
        control.set_handler(probe.clone().handler()).await;
        let session = Self {
            reader_client,
            client,
            stream: stream.to_string(),
            consumer_name: config.consumer_name.clone(),
            stored,
            control,
            probe,
        };
        let deliveries = StreamDeliveries {
            events: rx,
            chunk: VecDeque::new(),
            from,
            stream: Arc::from(stream),
        };
        Ok((session, deliveries))
    }

    /// The stream read.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The offset last stored, if any.
    pub fn stored(&self) -> Option<u64> {
        self.stored
    }

    /// Stores `offset` as the last one settled: a restart resumes after it.
    /// The protocol does not answer a store; [`StreamSession::close`] makes
    /// sure the last one arrived.
    pub async fn store_offset(&mut self, offset: u64) -> anyhow::Result<()> {
        timed(
            &format!("storing offset {offset} on stream `{}`", self.stream),
            self.control
                .store_offset(&self.consumer_name, &self.stream, offset),
        )
        .await?;
        self.stored = Some(offset);
        Ok(())
    }

    /// The offset of the stream's last message, as far as the broker tells:
    /// a short subscription at its last chunk (RabbitMQ 3.10 has no request
    /// for it), on the control connection (the reading one may be waiting for
    /// the pipeline, and would not answer). `None` when the stream is empty or
    /// the broker did not answer.
    pub async fn end(&mut self) -> Option<u64> {
        let (client, probe) = (&self.control, &self.probe);
        let subscribed = timed(
            "probing the stream's end",
            client.subscribe(
                READ,
                &self.stream,
                OffsetSpecification::Last,
                1,
                HashMap::new(),
            ),
        )
        .await
        .ok()?;
        if subscribed.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), probe.arrived.notified()).await;
            let _ = timed("ending the probe", client.unsubscribe(READ)).await;
        }
        match probe.end.load(Ordering::Relaxed) {
            0 => None,
            next => Some(next - 1),
        }
    }

    /// Ends the subscription after making sure the broker has the last stored
    /// offset (a query on the same connection is answered after the store was
    /// applied), then closes the connection.
    pub async fn close(self) {
        if let Some(stored) = self.stored {
            // The broker applies a store after it answers requests sent
            // later: ask until it shows (a few milliseconds), for at most 5 s.
            let mut last = None;
            for _ in 0..50 {
                let confirmed = timed(
                    "confirming the stored offset",
                    self.control
                        .query_offset(self.consumer_name.clone(), &self.stream),
                )
                .await;
                match confirmed {
                    Ok(offset) if offset >= stored => {
                        last = Some(Ok(offset));
                        break;
                    }
                    Ok(offset) => last = Some(Ok(offset)),
                    Err(e) => {
                        last = Some(Err(e));
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            match last {
                Some(Ok(offset)) if offset >= stored => {
                    tracing::info!(stream = %self.stream, offset, "stream offset stored")
                }
                Some(Ok(offset)) => {
                    tracing::warn!(stream = %self.stream, stored, broker_has = offset, "the broker has not applied the last stored offset yet; a restart reads again what came after the one it has")
                }
                Some(Err(e)) => {
                    tracing::warn!(stream = %self.stream, error = %format!("{e:#}"), "could not confirm the stored offset; a restart may read again what was written since the last one")
                }
                None => {}
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.unsubscribe(READ)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.close()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.control.close()).await;
    }
}

impl Drop for StreamSession {
    fn drop(&mut self) {
        if let Ok(mut client) = self.reader_client.lock() {
            client.take();
        }
    }
}

impl StreamDeliveries {
    /// The next message if one has arrived, without waiting.
    pub fn try_next(&mut self) -> Option<anyhow::Result<(Received, Message)>> {
        loop {
            if let Some((offset, message)) = self.chunk.pop_front() {
                return Some(Ok(receive(&self.stream, offset, message)));
            }
            match self.events.try_recv() {
                Ok(event) => {
                    if let Err(e) = self.take(event) {
                        return Some(Err(e));
                    }
                }
                Err(mpsc::error::TryRecvError::Empty) => return None,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return Some(Err(anyhow!("the stream connection's reader stopped")));
                }
            }
        }
    }

    /// Waits for the next message.
    pub async fn next(&mut self) -> anyhow::Result<(Received, Message)> {
        loop {
            if let Some(next) = self.try_next() {
                return next;
            }
            match self.events.recv().await {
                Some(event) => self.take(event)?,
                None => bail!("the stream connection's reader stopped"),
            }
        }
    }

    fn take(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::Chunk(first, messages) => {
                let end = first + messages.len() as u64;
                // Chunks come in offset order; one that does not would make a
                // batch store an offset below messages not yet written. Read
                // again from the stored offset instead.
                if end <= self.from && !messages.is_empty() {
                    bail!(
                        "stream `{}`: a chunk at offset {first} came after offset {}; reading again from the stored offset",
                        self.stream,
                        self.from
                    );
                }
                for (i, message) in messages.into_iter().enumerate() {
                    let offset = first + i as u64;
                    if offset >= self.from {
                        self.chunk.push_back((offset, message));
                    }
                }
                self.from = self.from.max(end);
                Ok(())
            }
            Event::Ended(why) => Err(anyhow!(why)),
        }
    }
}

/// A stream message as the pipeline handles it: the plugin's view (body,
/// content type, message id, creation time, application properties as headers;
/// the stream as routing key, so dead letters are routed by it) and the host's
/// (its offset, and AMQP properties that carry it to the dead-letter exchange).
fn receive(stream: &Arc<str>, offset: u64, message: StreamMessage) -> (Received, Message) {
    let mut headers = Vec::new();
    let mut table = FieldTable::default();
    if let Some(application) = message.application_properties() {
        for (key, value) in application.iter() {
            let key: &str = key;
            headers.push((key.to_string(), header_value(value)));
            if let Some(amqp) = amqp_value(value) {
                table.insert(key.into(), amqp);
            }
        }
    }
    let properties = message.properties();
    let text = |s: &str| s.to_string();
    let content_type = properties
        .and_then(|p| p.content_type.as_ref())
        .map(|s| text(s));
    let content_encoding = properties
        .and_then(|p| p.content_encoding.as_ref())
        .map(|s| text(s));
    let message_id = properties
        .and_then(|p| p.message_id.as_ref())
        .map(message_id_text);
    let timestamp = properties
        .and_then(|p| p.creation_time.as_ref())
        .and_then(debug_seconds);
    let mut amqp = BasicProperties::default().with_headers(table);
    if let Some(t) = &content_type {
        amqp = amqp.with_content_type(t.as_str().into());
    }
    if let Some(e) = &content_encoding {
        amqp = amqp.with_content_encoding(e.as_str().into());
    }
    if let Some(id) = &message_id {
        amqp = amqp.with_message_id(id.as_str().into());
    }
    if let Some(t) = timestamp {
        amqp = amqp.with_timestamp(t);
    }
    let body = message.data().map(<[u8]>::to_vec).unwrap_or_default();
    (
        Received {
            tag: offset,
            properties: amqp,
            stream: Some(stream.clone()),
        },
        Message {
            body,
            exchange: String::new(),
            routing_key: stream.to_string(),
            headers,
            content_type,
            content_encoding,
            message_id,
            timestamp,
            redelivered: false,
        },
    )
}

/// A message id as text. The crate keeps its `MessageId` type private, so it
/// is read from its `Debug` form: the quoted text of a string or binary id
/// (`String(Str("m-1"))`), or the number of a numeric one (`ULong(7)`).
fn message_id_text(id: &impl std::fmt::Debug) -> String {
    let debug = format!("{id:?}");
    if let (Some(open), Some(close)) = (debug.find('"'), debug.rfind('"'))
        && close > open
    {
        return debug[open + 1..close].replace("\\\"", "\"");
    }
    let inner = debug
        .rsplit('(')
        .next()
        .unwrap_or(&debug)
        .trim_end_matches(')');
    inner.to_string()
}

/// The number in a value's `Debug` form (`Double(OrderedFloat(1.5))`).
fn debug_number(value: &impl std::fmt::Debug) -> Option<f64> {
    let debug = format!("{value:?}");
    let inner = debug.rsplit('(').next()?.trim_end_matches(')');
    inner.parse().ok()
}

/// Seconds since the Unix epoch of a timestamp, from its `Debug` form
/// (`Timestamp(2026-12-06T17:00:00.123Z)`).
fn debug_seconds(value: &impl std::fmt::Debug) -> Option<u64> {
    let debug = format!("{value:?}");
    let inner = debug.split_once('(')?.1.trim_end_matches(')');
    let time = humantime::parse_rfc3339_weak(inner).ok()?;
    time.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

fn header_value(value: &SimpleValue) -> HeaderValue {
    match value {
        SimpleValue::Null => HeaderValue::Void,
        SimpleValue::Boolean(b) => HeaderValue::Boolean(*b),
        SimpleValue::Ubyte(n) => HeaderValue::Int((*n).into()),
        SimpleValue::Ushort(n) => HeaderValue::Int((*n).into()),
        SimpleValue::Uint(n) => HeaderValue::Int((*n).into()),
        SimpleValue::Ulong(n) => HeaderValue::Int(i64::try_from(*n).unwrap_or(i64::MAX)),
        SimpleValue::Byte(n) => HeaderValue::Int((*n).into()),
        SimpleValue::Short(n) => HeaderValue::Int((*n).into()),
        SimpleValue::Int(n) => HeaderValue::Int((*n).into()),
        SimpleValue::Long(n) => HeaderValue::Int(*n),
        // The crate gives no access to these values but their `Debug` form.
        SimpleValue::Float(f) => debug_number(f).map_or(HeaderValue::Void, HeaderValue::Float),
        SimpleValue::Double(f) => debug_number(f).map_or(HeaderValue::Void, HeaderValue::Float),
        SimpleValue::Char(c) => HeaderValue::Text(c.to_string()),
        SimpleValue::Timestamp(t) => {
            debug_seconds(t).map_or(HeaderValue::Void, HeaderValue::Timestamp)
        }
        SimpleValue::Uuid(u) => HeaderValue::Text(format!("{u:?}")),
        SimpleValue::Binary(b) => HeaderValue::Bytes(b.to_vec()),
        SimpleValue::String(s) => HeaderValue::Text(s.to_string()),
        SimpleValue::Symbol(s) => HeaderValue::Text(s.to_string()),
    }
}

/// The AMQP 0.9.1 header a dead letter carries for an application property.
fn amqp_value(value: &SimpleValue) -> Option<AMQPValue> {
    Some(match header_value(value) {
        HeaderValue::Void => AMQPValue::Void,
        HeaderValue::Boolean(b) => AMQPValue::Boolean(b),
        HeaderValue::Int(n) => AMQPValue::LongLongInt(n),
        HeaderValue::Float(f) => AMQPValue::Double(f),
        HeaderValue::Text(s) => AMQPValue::LongString(LongString::from(s.into_bytes())),
        HeaderValue::Bytes(b) => AMQPValue::ByteArray(b.into()),
        HeaderValue::Timestamp(t) => AMQPValue::Timestamp(t),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_resumes_after_its_stored_offset_or_where_configured() {
        assert!(matches!(
            start_at(Some(41), StreamStart::First),
            (OffsetSpecification::Offset(42), 42)
        ));
        assert!(matches!(
            start_at(None, StreamStart::First),
            (OffsetSpecification::First, 0)
        ));
        assert!(matches!(
            start_at(None, StreamStart::Next),
            (OffsetSpecification::Next, 0)
        ));
        assert!(matches!(
            start_at(None, StreamStart::Timestamp(1_700_000_000_000)),
            (OffsetSpecification::Timestamp(1_700_000_000_000), 0)
        ));
    }

    #[test]
    fn messages_before_the_resumed_offset_are_skipped_in_a_chunk() {
        let (_tx, rx) = mpsc::channel(1);
        let mut deliveries = StreamDeliveries {
            events: rx,
            chunk: VecDeque::new(),
            from: 12,
            stream: Arc::from("cdr-0"),
        };
        let messages = (0..5)
            .map(|i| StreamMessage::builder().body(format!("m{i}")).build())
            .collect();
        deliveries.take(Event::Chunk(10, messages)).unwrap();
        let offsets: Vec<u64> = deliveries.chunk.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, [12, 13, 14]);
        let Some(Ok((received, message))) = deliveries.try_next() else {
            panic!("a message");
        };
        assert_eq!(received.tag, 12);
        assert_eq!(message.body, b"m2");
        assert_eq!(message.routing_key, "cdr-0");
        assert_eq!(received.stream.as_deref(), Some("cdr-0"));
        let late = vec![StreamMessage::builder().body("old").build()];
        let err = deliveries.take(Event::Chunk(10, late)).unwrap_err();
        assert!(err.to_string().contains("came after offset 15"), "{err}");
    }

    #[test]
    fn message_ids_read_as_text() {
        let message = StreamMessage::builder()
            .properties()
            .message_id("m-7".to_string())
            .message_builder()
            .build();
        let id = message.properties().unwrap().message_id.as_ref().unwrap();
        assert_eq!(message_id_text(id), "m-7");
        let message = StreamMessage::builder()
            .properties()
            .message_id(42u64)
            .message_builder()
            .build();
        let id = message.properties().unwrap().message_id.as_ref().unwrap();
        assert_eq!(message_id_text(id), "42");
    }

    #[test]
    fn an_ended_subscription_is_an_error_that_says_why() {
        let (tx, rx) = mpsc::channel(1);
        let mut deliveries = StreamDeliveries {
            events: rx,
            chunk: VecDeque::new(),
            from: 0,
            stream: Arc::from("cdr"),
        };
        tx.try_send(Event::Ended("stream `cdr` was deleted".into()))
            .unwrap();
        let Some(Err(err)) = deliveries.try_next() else {
            panic!("an error");
        };
        assert!(err.to_string().contains("deleted"), "{err}");
    }
}
