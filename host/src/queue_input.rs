//! RabbitMQ with lapin: the topology a pipeline declares, its consuming and
//! dead-letter channels, messages as plugins see them, acks and dead-lettering
//! (with dead letters fitted to the broker's frame, in [`dead_letter`]).

mod dead_letter;
mod tls;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Mutex;

use anyhow::{Context as _, bail};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};

pub use self::dead_letter::{DeadLetter, FRAME_SAFETY_MARGIN, REASON_MAX_BYTES, RecordLetter};
pub use self::tls::{AmqpTls, AmqpTlsError, hint as tls_hint};
use crate::config::{DeadLetterConfig, ExchangeType, PipelineConfig, QueueKind};
use crate::metrics::PipelineMetrics;
use crate::plugin_runtime::{HeaderValue, Message};

/// Headers Sluice adds to a dead-lettered message, saying why it is there.
pub mod headers {
    /// The reason: the plugin's rejection text or the error.
    pub const REASON: &str = "x-sluice-reason";
    /// `name@version` of the plugin that refused the message.
    pub const PLUGIN: &str = "x-sluice-plugin";
    /// `decode` (the source refused it) or `write` (a writer refused its rows).
    pub const STAGE: &str = "x-sluice-stage";
    /// The pipeline.
    pub const PIPELINE: &str = "x-sluice-pipeline";
    /// Where the message was first published.
    pub const ORIGINAL_EXCHANGE: &str = "x-sluice-original-exchange";
    /// Its routing key there.
    pub const ORIGINAL_ROUTING_KEY: &str = "x-sluice-original-routing-key";
    /// When it was dead-lettered (seconds since the Unix epoch).
    pub const FAILED_AT: &str = "x-sluice-failed-at";
    /// Present only when original headers were dropped to fit the broker's
    /// frame: `<count> headers, <bytes> bytes: <names, comma-separated>`.
    pub const DROPPED_HEADERS: &str = "x-sluice-dropped-headers";
    /// Only on the dead letter of one record of a message that holds many: the
    /// record's index in the message, from 0.
    pub const RECORD_INDEX: &str = "x-sluice-record-index";
    /// Only on the dead letter of one record: the `message-id` of the message it
    /// came from (when that message had one).
    pub const ORIGINAL_MESSAGE_ID: &str = "x-sluice-original-message-id";
    /// Stream messages only: the stream it was read from.
    pub const STREAM: &str = "x-sluice-stream";
    /// Stream messages only: its offset in that stream.
    pub const STREAM_OFFSET: &str = "x-sluice-stream-offset";
}

/// The AMQP connection a pipeline's consumers share: one socket, and one lapin I/O
/// thread, for all of them, each consumer on channels of its own.
///
/// Sharing halves the I/O threads of a two-consumer pipeline and lets one socket
/// read carry deliveries for both consumers, which is where a consumer's CPU goes
/// (see BENCHMARKS.md, appendix, section 2 session 2). A consumer whose session fails asks for the
/// connection again: the first to ask after the connection died opens a new one.
///
/// With several URLs (a cluster's nodes, `urls`), the connection goes to one
/// node; once it is lost, the next connection tries the nodes in turn starting
/// with the one after it, so a daemon leaves a node that went down at once
/// (a refused connect costs nothing) and the first try of a fleet of daemons
/// is spread over the nodes (each starts at a random one).
#[derive(Clone, Default)]
pub struct SharedConnection(Arc<Mutex<Slot>>);

#[derive(Default)]
struct Slot {
    connection: Option<Arc<Connection>>,
    /// The node (index in `amqp_urls`) of the last connection opened, `None`
    /// before the first.
    node: Option<usize>,
}

/// How long connecting to one node may take before the next is tried: a node
/// whose host vanished (no refusal, only silence) must not hold the pipeline.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

impl SharedConnection {
    /// The live connection, opened if there is none (or the last one died).
    async fn get(&self, pipeline: &PipelineConfig) -> anyhow::Result<Arc<Connection>> {
        let mut slot = self.0.lock().await;
        if let Some(connection) = slot.connection.as_ref()
            && connection.status().connected()
        {
            return Ok(connection.clone());
        }
        let nodes = pipeline.amqp_urls.len().max(1);
        let first = match slot.node {
            Some(last) => last + 1,
            None => random_index(nodes),
        };
        let mut failures = Vec::new();
        for k in 0..nodes {
            let node = (first + k) % nodes;
            match connect_node(pipeline, node).await {
                Ok(connection) => {
                    if nodes > 1 {
                        tracing::info!(
                            pipeline = %pipeline.name,
                            connection = %pipeline.amqp_connection,
                            node = %pipeline.amqp_url_redacted(node),
                            "connected to RabbitMQ"
                        );
                    }
                    let connection = Arc::new(connection);
                    slot.connection = Some(connection.clone());
                    slot.node = Some(node);
                    return Ok(connection);
                }
                Err(e) => failures.push(e),
            }
        }
        // The next try starts where this one did: none of them answered.
        slot.node = Some((first + nodes - 1) % nodes);
        match failures.len() {
            1 => Err(failures.pop().expect("one failure")),
            n => {
                let each: Vec<String> = failures.iter().map(|e| format!("{e:#}")).collect();
                bail!(
                    "none of the {n} nodes of connection `{}` answered: {}",
                    pipeline.amqp_connection,
                    each.join("; ")
                )
            }
        }
    }

    /// Gives back a session's handle; the last session to leave closes the
    /// connection.
    async fn release(&self, connection: Arc<Connection>) {
        let mut slot = self.0.lock().await;
        drop(connection);
        let unused = slot
            .connection
            .as_ref()
            .is_some_and(|held| Arc::strong_count(held) == 1);
        if unused && let Some(connection) = slot.connection.take() {
            let _ = connection.close(200, "sluice shutting down".into()).await;
        }
    }
}

/// Connects to the `node`th of the pipeline's URLs. The error names the
/// connection, the node (when there are several) and, for TLS, what failed.
async fn connect_node(pipeline: &PipelineConfig, node: usize) -> anyhow::Result<Connection> {
    let name = format!("sluice {}", pipeline.name);
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(name.as_bytes().to_vec()));
    // Without a `tls` table this is what `Connection::connect` does: the
    // system trust store, no client certificate.
    let tls = pipeline
        .amqp_tls
        .as_ref()
        .map(AmqpTls::lapin_config)
        .unwrap_or_default();
    let runtime = lapin::runtime::default_runtime().context("lapin's tokio runtime")?;
    let url = pipeline
        .amqp_urls
        .get(node)
        .map(String::as_str)
        .unwrap_or_default();
    let mut context = format!(
        "connecting to RabbitMQ (connection `{}`",
        pipeline.amqp_connection
    );
    if pipeline.amqp_urls.len() > 1 {
        context.push_str(&format!(", node {}", pipeline.amqp_url_redacted(node)));
    }
    if let Some(tls) = &pipeline.amqp_tls {
        context.push_str(&format!("; TLS {}", tls.describe()));
    }
    context.push(')');
    let connecting = Connection::connect_with_config(url, props, tls, runtime);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(e)) => {
            // The hint goes first: the chain ends with rustls's terse name
            // of the failure (`UnknownIssuer`), which it explains.
            if let Some(hint) = tls_hint(&e) {
                context.push_str(&format!(": {hint}"));
            }
            Err(anyhow::Error::new(e).context(context))
        }
        Err(_) => bail!("{context}: no answer within {CONNECT_TIMEOUT:?}"),
    }
}

/// A random index below `n`: where a fleet of daemons starts trying a
/// cluster's nodes, so that they spread over them.
pub(crate) fn random_index(n: usize) -> usize {
    let mut bytes = [0u8; 8];
    // Without randomness (it never fails on Linux), the first node.
    if getrandom::getrandom(&mut bytes).is_err() {
        return 0;
    }
    (u64::from_le_bytes(bytes) % n as u64) as usize
}

/// One AMQP session of one consumer, on the pipeline's shared connection: a
/// consuming channel and a publishing channel in confirm mode for dead letters.
pub struct Session {
    shared: SharedConnection,
    connection: Arc<Connection>,
    consume: Channel,
    publish: Channel,
    consumer_tag: String,
}

/// A message taken from the queue: its delivery tag on the consuming channel, its
/// properties (kept to dead-letter it faithfully) and the message plugins see.
pub struct Received {
    /// Delivery tag on the session's consuming channel, or a stream message's
    /// offset.
    pub tag: u64,
    /// The AMQP properties, as delivered.
    pub properties: BasicProperties,
    /// The stream it was read from (then `tag` is its offset); `None` for a
    /// queue's message.
    pub stream: Option<Arc<str>>,
}

impl Session {
    /// Opens the consumer's channels on the pipeline's connection (connecting if
    /// needed), declares the pipeline's topology, sets the prefetch and starts
    /// consuming. `consumer` goes into the consumer tag.
    pub async fn open(
        pipeline: &PipelineConfig,
        consumer: usize,
        shared: &SharedConnection,
    ) -> anyhow::Result<(Self, Consumer)> {
        let connection = shared.get(pipeline).await?;
        match Self::open_channels(pipeline, consumer, &connection).await {
            Ok((consume, publish, consumer_tag, stream)) => Ok((
                Self {
                    shared: shared.clone(),
                    connection,
                    consume,
                    publish,
                    consumer_tag,
                },
                stream,
            )),
            Err(e) => {
                shared.release(connection).await;
                Err(e)
            }
        }
    }

    async fn open_channels(
        pipeline: &PipelineConfig,
        consumer: usize,
        connection: &Connection,
    ) -> anyhow::Result<(Channel, Channel, String, Consumer)> {
        let consume = connection
            .create_channel()
            .await
            .context("opening the consuming channel")?;
        declare_topology(&consume, pipeline).await?;
        consume
            .basic_qos(pipeline.prefetch, BasicQosOptions { global: false })
            .await
            .context("setting the prefetch")?;
        let publish = connection
            .create_channel()
            .await
            .context("opening the dead-letter channel")?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        let consumer_tag = format!(
            "sluice-{}-{}-{}",
            pipeline.name,
            consumer,
            std::process::id()
        );
        let stream = consume
            .basic_consume(
                pipeline.queue.name.as_str().into(),
                consumer_tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming from queue `{}`", pipeline.queue.name))?;
        Ok((consume, publish, consumer_tag, stream))
    }

    /// How many messages are ready in `queue` (not delivered to any consumer
    /// yet), by a passive declare on a channel of its own: an error there (the
    /// queue deleted under us) closes that channel, not the session's.
    pub async fn queue_ready(&self, queue: &str) -> anyhow::Result<u32> {
        let channel = self
            .connection
            .create_channel()
            .await
            .context("opening a channel to read the queue's depth")?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        if channel.status().connected() {
            let _ = channel.close(200, "depth read".into()).await;
        }
        let declared = declared.with_context(|| format!("reading the depth of queue `{queue}`"))?;
        Ok(declared.message_count())
    }

    /// Acks every delivery up to and including `tag` on the consuming channel.
    pub async fn ack_through(&self, tag: u64) -> anyhow::Result<()> {
        self.consume
            .basic_ack(tag, BasicAckOptions { multiple: true })
            .await
            .context("acking")?;
        Ok(())
    }

    /// Stops the broker from sending more messages; those already sent stay ours
    /// until acked or the channel closes.
    pub async fn cancel(&self) -> anyhow::Result<()> {
        self.consume
            .basic_cancel(
                self.consumer_tag.as_str().into(),
                BasicCancelOptions::default(),
            )
            .await
            .context("cancelling the consumer")?;
        Ok(())
    }

    /// Closes the session's channels (unacked messages go back to the queue), and
    /// the connection if no other consumer of the pipeline uses it.
    pub async fn close(self) {
        if self.connection.status().connected() {
            let _ = self
                .consume
                .close(200, "sluice consumer stopping".into())
                .await;
            let _ = self
                .publish
                .close(200, "sluice consumer stopping".into())
                .await;
        }
        self.shared.release(self.connection).await;
    }

    /// Publishes the messages to the dead-letter exchange with their reasons, and
    /// returns once the broker confirmed every one of them. Only then may they be
    /// acked: a message is never both unacked-lost and unpublished.
    ///
    /// Each dead letter's properties are fitted to the connection's negotiated
    /// `frame_max` first (its reason cut, original headers dropped: see
    /// [`dead_letter`]), because a header frame too large for it makes the broker
    /// close the connection of every consumer of the pipeline.
    pub async fn dead_letter(
        &self,
        dl: &DeadLetterConfig,
        letters: &[DeadLetter<'_>],
        metrics: &PipelineMetrics,
    ) -> anyhow::Result<()> {
        publish_dead_letters(&self.connection, &self.publish, dl, letters, metrics).await
    }
}

/// The AMQP side of a stream consumer: the pipeline's topology declared (its
/// streams, the dead-letter exchange and queue), and a channel in confirm mode
/// for dead letters, on the pipeline's shared connection.
pub struct Publisher {
    shared: SharedConnection,
    connection: Arc<Connection>,
    publish: Channel,
}

impl Publisher {
    /// Declares the topology and opens the dead-letter channel.
    pub async fn open(
        pipeline: &PipelineConfig,
        shared: &SharedConnection,
    ) -> anyhow::Result<Self> {
        let connection = shared.get(pipeline).await?;
        let opened = async {
            let publish = connection
                .create_channel()
                .await
                .context("opening the dead-letter channel")?;
            declare_topology(&publish, pipeline).await?;
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .context("enabling publisher confirms")?;
            anyhow::Ok(publish)
        }
        .await;
        match opened {
            Ok(publish) => Ok(Self {
                shared: shared.clone(),
                connection,
                publish,
            }),
            Err(e) => {
                shared.release(connection).await;
                Err(e)
            }
        }
    }

    /// Publishes dead letters and waits for their confirms, like
    /// [`Session::dead_letter`].
    pub async fn dead_letter(
        &self,
        dl: &DeadLetterConfig,
        letters: &[DeadLetter<'_>],
        metrics: &PipelineMetrics,
    ) -> anyhow::Result<()> {
        publish_dead_letters(&self.connection, &self.publish, dl, letters, metrics).await
    }

    /// Closes the channel, and the connection if no other consumer uses it.
    pub async fn close(self) {
        if self.connection.status().connected() {
            let _ = self
                .publish
                .close(200, "sluice consumer stopping".into())
                .await;
        }
        self.shared.release(self.connection).await;
    }
}

/// Publishes the messages to the dead-letter exchange with their reasons, and
/// returns once the broker confirmed every one of them. Only then may they be
/// acked: a message is never both unacked-lost and unpublished.
///
/// Each dead letter's properties are fitted to the connection's negotiated
/// `frame_max` first (its reason cut, original headers dropped: see
/// [`dead_letter`]), because a header frame too large for it makes the broker
/// close the connection of every consumer of the pipeline.
async fn publish_dead_letters(
    connection: &Connection,
    publish: &Channel,
    dl: &DeadLetterConfig,
    letters: &[DeadLetter<'_>],
    metrics: &PipelineMetrics,
) -> anyhow::Result<()> {
    let frame_max = connection.configuration().frame_max();
    let failed_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut confirms = Vec::with_capacity(letters.len());
    for letter in letters {
        let fitted = letter.fit(frame_max, failed_at)?;
        if fitted.reason_cut_bytes > 0 {
            metrics.dead_letter_cut("reason");
        }
        if !fitted.dropped.is_empty() {
            metrics.dead_letter_cut("headers");
        }
        if fitted.reason_cut_bytes > 0 || !fitted.dropped.is_empty() {
            let names: Vec<&str> = fitted.dropped.iter().map(|(n, _)| n.as_str()).collect();
            tracing::warn!(
                pipeline = letter.pipeline,
                stage = letter.stage,
                plugin = letter.plugin,
                frame_max,
                frame_bytes = fitted.frame_bytes,
                reason_bytes = fitted.reason_bytes,
                reason_cut_bytes = fitted.reason_cut_bytes,
                dropped_headers = names.len(),
                dropped_header_bytes = fitted.dropped_bytes(),
                dropped_header_names = %dead_letter::cut(&names.join(", "), dead_letter::DROPPED_NAMES_MAX_BYTES),
                "dead letter cut to fit the broker's frame"
            );
        }
        let props = fitted.properties;
        let confirm = publish
            .basic_publish(
                dl.exchange.as_str().into(),
                letter.message.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                letter.body(),
                props,
            )
            .await
            .context("publishing to the dead-letter exchange")?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        let confirmation = confirm
            .await
            .context("waiting for the dead-letter confirm")?;
        if confirmation.is_nack() {
            bail!(
                "the broker refused a message on dead-letter exchange `{}`",
                dl.exchange
            );
        }
        if !confirmation.is_ack() {
            bail!("publisher confirms are not enabled on the dead-letter channel");
        }
        if confirmation.take_message().is_some() {
            bail!(
                "dead-letter exchange `{}` routed the message nowhere (no queue bound)",
                dl.exchange
            );
        }
    }
    Ok(())
}

/// Declares what the pipeline's configuration says to declare: its queue (classic
/// or quorum), the exchanges it is bound to, and the dead-letter exchange and
/// queue. Declaring is idempotent; a declaration that conflicts with an existing
/// queue (another type, say) is an error that names it.
pub async fn declare_topology(channel: &Channel, pipeline: &PipelineConfig) -> anyhow::Result<()> {
    let queue = &pipeline.queue;
    if queue.declare {
        let mut args = FieldTable::default();
        if queue.kind == QueueKind::Quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            if let Some(limit) = queue.delivery_limit {
                args.insert("x-delivery-limit".into(), AMQPValue::LongUInt(limit));
                // A message past its limit (one that kept killing the
                // consumers that took it: Sluice itself never rejects) goes to
                // the pipeline's dead letters instead of being dropped.
                let dl = &pipeline.dead_letter;
                args.insert(
                    "x-dead-letter-exchange".into(),
                    AMQPValue::LongString(dl.exchange.as_str().into()),
                );
            }
        }
        // A stream pipeline's streams are created with the stream protocol,
        // before this runs (see `stream_input`): an AMQP declaration would have
        // to repeat every argument the stream was created with, those a tool
        // added included, or fail. (A stream with bindings is not partitioned:
        // the binding is the stream `queue.name`'s.)
        if queue.stream.is_none() {
            channel
                .queue_declare(
                    queue.name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    args,
                )
                .await
                .with_context(|| format!("declaring queue `{}`", queue.name))?;
        }
        for binding in &queue.bindings {
            declare_exchange(
                channel,
                &binding.exchange,
                exchange_kind(binding.exchange_type),
            )
            .await?;
            channel
                .queue_bind(
                    queue.name.as_str().into(),
                    binding.exchange.as_str().into(),
                    binding.routing_key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| {
                    format!(
                        "binding queue `{}` to exchange `{}`",
                        queue.name, binding.exchange
                    )
                })?;
        }
    }
    let dl = &pipeline.dead_letter;
    if dl.declare {
        declare_exchange(channel, &dl.exchange, ExchangeKind::Topic).await?;
        if let Some(dlq) = &dl.queue {
            let mut args = FieldTable::default();
            if dl.queue_kind == QueueKind::Quorum {
                args.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("quorum".into()),
                );
            }
            channel
                .queue_declare(
                    dlq.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    args,
                )
                .await
                .with_context(|| format!("declaring dead-letter queue `{dlq}`"))?;
            channel
                .queue_bind(
                    dlq.as_str().into(),
                    dl.exchange.as_str().into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("binding dead-letter queue `{dlq}`"))?;
        }
    }
    Ok(())
}

async fn declare_exchange(channel: &Channel, name: &str, kind: ExchangeKind) -> anyhow::Result<()> {
    // The default exchange and the broker's `amq.*` exchanges exist already and
    // may not be declared by clients.
    if name.is_empty() || name.starts_with("amq.") {
        return Ok(());
    }
    channel
        .exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declaring exchange `{name}`"))
}

fn exchange_kind(t: ExchangeType) -> ExchangeKind {
    match t {
        ExchangeType::Direct => ExchangeKind::Direct,
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Fanout => ExchangeKind::Fanout,
        ExchangeType::Headers => ExchangeKind::Headers,
    }
}

/// Splits a delivery into what the host keeps and what the plugin sees. The body
/// moves; nothing is copied.
pub fn receive(delivery: lapin::message::Delivery) -> (Received, Message) {
    let props = &delivery.properties;
    let headers = props
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), header_value(v)))
                .collect()
        })
        .unwrap_or_default();
    let message = Message {
        body: delivery.data,
        exchange: delivery.exchange.as_str().to_string(),
        routing_key: delivery.routing_key.as_str().to_string(),
        headers,
        content_type: props.content_type().as_ref().map(short),
        content_encoding: props.content_encoding().as_ref().map(short),
        message_id: props.message_id().as_ref().map(short),
        timestamp: *props.timestamp(),
        redelivered: delivery.redelivered,
    };
    (
        Received {
            tag: delivery.delivery_tag,
            properties: delivery.properties,
            stream: None,
        },
        message,
    )
}

fn short(s: &ShortString) -> String {
    s.as_str().to_string()
}

fn header_value(v: &AMQPValue) -> HeaderValue {
    match v {
        AMQPValue::Void => HeaderValue::Void,
        AMQPValue::Boolean(b) => HeaderValue::Boolean(*b),
        AMQPValue::ShortShortInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::ShortInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::ShortUInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::LongInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::LongUInt(i) => HeaderValue::Int((*i).into()),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::Float(f) => HeaderValue::Float((*f).into()),
        AMQPValue::Double(f) => HeaderValue::Float(*f),
        AMQPValue::DecimalValue(d) => {
            HeaderValue::Float(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => HeaderValue::Text(s.as_str().to_string()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => HeaderValue::Text(text.to_string()),
            Err(_) => HeaderValue::Bytes(s.as_bytes().to_vec()),
        },
        AMQPValue::ByteArray(b) => HeaderValue::Bytes(b.as_slice().to_vec()),
        AMQPValue::Timestamp(t) => HeaderValue::Timestamp(*t),
        // Nested tables and arrays: their JSON text.
        AMQPValue::FieldTable(_) | AMQPValue::FieldArray(_) => {
            HeaderValue::Text(serde_json::to_string(v).unwrap_or_default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_header_values_map_to_plugin_header_values() {
        assert_eq!(header_value(&AMQPValue::LongUInt(7)), HeaderValue::Int(7));
        assert_eq!(
            header_value(&AMQPValue::LongString("cdr".into())),
            HeaderValue::Text("cdr".into())
        );
        assert_eq!(
            header_value(&AMQPValue::Timestamp(1_700_000_000)),
            HeaderValue::Timestamp(1_700_000_000)
        );
        let mut nested = FieldTable::default();
        nested.insert("a".into(), AMQPValue::Boolean(true));
        match header_value(&AMQPValue::FieldTable(nested)) {
            HeaderValue::Text(json) => assert!(json.contains('a'), "{json}"),
            other => panic!("{other:?}"),
        }
    }
}
