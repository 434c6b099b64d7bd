//! Queue messages as a source plugin receives them.

/// The value of an AMQP message header. Nested tables and arrays are given as
/// their JSON text in `Text`.
#[derive(Clone, Debug, PartialEq)]
pub enum HeaderValue {
    /// An AMQP void.
    Void,
    /// A boolean.
    Boolean(bool),
    /// Any AMQP integer type.
    Int(i64),
    /// Any AMQP floating-point type (decimals included).
    Float(f64),
    /// A string, or a nested table or array as JSON text.
    Text(String),
    /// A byte array.
    Bytes(Vec<u8>),
    /// An AMQP timestamp: seconds since 1970-01-01T00:00:00Z.
    Timestamp(u64),
}

/// One message from the queue, with the properties a decoder may need.
///
/// ```
/// use sluice_plugin_sdk::{HeaderValue, Message};
///
/// let m = Message::new(r#"{"id": 1}"#)
///     .with_routing_key("cdr.eu")
///     .with_header("source", HeaderValue::Text("switch-7".into()))
///     .with_content_type("application/json");
/// assert_eq!(m.header("source"), Some(&HeaderValue::Text("switch-7".into())));
/// assert_eq!(m.body, br#"{"id": 1}"#);
/// ```
// The field names and types mirror the WIT record exactly: the generated bindings
// lift messages straight into this type (wit-bindgen's `with`), without a copy.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    /// The message body, as published.
    pub body: Vec<u8>,
    /// The exchange it was published to (empty for the default exchange).
    pub exchange: String,
    /// Its routing key.
    pub routing_key: String,
    /// Its headers, in the order the broker delivered them.
    pub headers: Vec<(String, HeaderValue)>,
    /// The `content-type` property, if set.
    pub content_type: Option<String>,
    /// The `content-encoding` property, if set (`gzip`, `zstd`): how the body is
    /// compressed. The body is given as it was published; decompressing it is the
    /// plugin's business.
    pub content_encoding: Option<String>,
    /// The `message-id` property, if set.
    pub message_id: Option<String>,
    /// The `timestamp` property (seconds since 1970-01-01T00:00:00Z), if set.
    pub timestamp: Option<u64>,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
}

impl Message {
    /// A message with this body and no properties.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Message {
            body: body.into(),
            ..Message::default()
        }
    }

    /// Sets the exchange.
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = exchange.into();
        self
    }

    /// Sets the routing key.
    pub fn with_routing_key(mut self, routing_key: impl Into<String>) -> Self {
        self.routing_key = routing_key.into();
        self
    }

    /// Appends a header.
    pub fn with_header(mut self, name: impl Into<String>, value: HeaderValue) -> Self {
        self.headers.push((name.into(), value));
        self
    }

    /// Sets the `content-type` property.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Sets the `content-encoding` property.
    pub fn with_content_encoding(mut self, content_encoding: impl Into<String>) -> Self {
        self.content_encoding = Some(content_encoding.into());
        self
    }

    /// Sets the `message-id` property.
    pub fn with_message_id(mut self, message_id: impl Into<String>) -> Self {
        self.message_id = Some(message_id.into());
        self
    }

    /// Sets the `timestamp` property (seconds since the epoch).
    pub fn with_timestamp(mut self, seconds: u64) -> Self {
        self.timestamp = Some(seconds);
        self
    }

    /// Marks the message as redelivered.
    pub fn with_redelivered(mut self, redelivered: bool) -> Self {
        self.redelivered = redelivered;
        self
    }

    /// The value of the first header with this name, if any.
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}
