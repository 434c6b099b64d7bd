//! The RabbitMQ stream side of the tests and benchmarks: a real stream client
//! (the stream protocol, port 5552) that creates, fills, reads and deletes
//! streams, and reads the offsets a consumer stored.

use rabbitmq_stream_client::types::{Message, OffsetSpecification, ResponseCode};
use rabbitmq_stream_client::{Client, ClientOptions, Environment};

/// A stream-protocol client of the broker at `host:port`.
pub struct Streams {
    env: Environment,
    host: String,
    port: u16,
}

impl Streams {
    /// The local broker (`SLUICE_TEST_STREAM_URL`'s host and port).
    pub async fn connect() -> Streams {
        let url = url::Url::parse(&crate::stream_url()).expect("a stream URL");
        let host = url.host_str().unwrap_or("127.0.0.1").to_string();
        Streams::connect_to(&host, url.port().unwrap_or(5552)).await
    }

    /// The broker at `host:port`, as guest.
    pub async fn connect_to(host: &str, port: u16) -> Streams {
        let env = Environment::builder()
            .host(host)
            .port(port)
            .build()
            .await
            .unwrap_or_else(|e| {
                panic!("connecting to RabbitMQ streams at {host}:{port} (is rabbitmq_stream enabled?): {e}")
            });
        Streams {
            env,
            host: host.to_string(),
            port,
        }
    }

    /// Creates `stream` (it must not exist), with the broker's default
    /// retention (as a pipeline that declares it without retention settings).
    pub async fn create(&self, stream: &str) {
        self.env
            .stream_creator()
            .create(stream)
            .await
            .unwrap_or_else(|e| panic!("creating stream {stream}: {e:?}"));
    }

    /// Deletes `stream`; one that does not exist is fine.
    pub async fn delete(&self, stream: &str) {
        let _ = self.env.delete_stream(stream).await;
    }

    /// Publishes `bodies` to `stream` in batches of 1000, each confirmed.
    pub async fn publish(&self, stream: &str, bodies: impl IntoIterator<Item = String>) {
        let messages = bodies
            .into_iter()
            .map(|b| Message::builder().body(b.into_bytes()).build());
        self.publish_messages(stream, messages).await;
    }

    /// Publishes `messages` to `stream` in batches of 1000, each confirmed.
    pub async fn publish_messages(
        &self,
        stream: &str,
        messages: impl IntoIterator<Item = Message>,
    ) {
        // A stream just created may take a moment to show in the metadata.
        let mut tries = 0;
        let producer = loop {
            match self.env.producer().build(stream).await {
                Ok(producer) => break producer,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => panic!("a producer on stream {stream}: {e:?}"),
            }
        };
        let mut batch = Vec::with_capacity(1000);
        for message in messages {
            batch.push(message);
            if batch.len() == 1000 {
                confirm(&producer, std::mem::take(&mut batch), stream).await;
            }
        }
        if !batch.is_empty() {
            confirm(&producer, batch, stream).await;
        }
        let _ = producer.close().await;
    }

    /// The offset `consumer` stored on `stream`, if any.
    pub async fn stored_offset(&self, consumer: &str, stream: &str) -> Option<u64> {
        let client = self.client().await;
        let result = client.query_offset(consumer.to_string(), stream).await;
        let _ = client.close().await;
        match result {
            Ok(offset) => Some(offset),
            Err(rabbitmq_stream_client::error::ClientError::RequestError(
                ResponseCode::OffsetNotFound,
            )) => None,
            Err(e) => panic!("querying the offset of {consumer} on {stream}: {e:?}"),
        }
    }

    /// Reads `stream` from its start until `n` messages came (or 30 s passed):
    /// their offsets and bodies. Offsets are not message counts: offsets
    /// stored by consumers are written into the stream and take offsets too.
    pub async fn read(&self, stream: &str, n: usize) -> Vec<(u64, Vec<u8>)> {
        use futures::StreamExt;
        let mut consumer = self
            .env
            .consumer()
            .offset(OffsetSpecification::First)
            .build(stream)
            .await
            .unwrap_or_else(|e| panic!("a consumer on stream {stream}: {e:?}"));
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while out.len() < n {
            let next = tokio::time::timeout_at(deadline, consumer.next()).await;
            match next {
                Ok(Some(Ok(delivery))) => out.push((
                    delivery.offset(),
                    delivery.message().data().unwrap_or_default().to_vec(),
                )),
                _ => break,
            }
        }
        let _ = consumer.handle().close().await;
        out
    }

    async fn client(&self) -> Client {
        let options = ClientOptions::builder()
            .host(&self.host)
            .port(self.port)
            .build();
        Client::connect(options)
            .await
            .unwrap_or_else(|e| panic!("a stream client to {}:{}: {e:?}", self.host, self.port))
    }
}

async fn confirm(
    producer: &rabbitmq_stream_client::Producer<rabbitmq_stream_client::NoDedup>,
    batch: Vec<Message>,
    stream: &str,
) {
    let statuses = producer
        .batch_send_with_confirm(batch)
        .await
        .unwrap_or_else(|e| panic!("publishing to stream {stream}: {e:?}"));
    assert!(
        statuses.iter().all(|s| s.confirmed()),
        "the broker refused messages on stream {stream}"
    );
}
