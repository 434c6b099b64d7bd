//! Validation of `[[pipelines]]`: each pipeline's queue, batch, plugins, dead
//! letters and retries, and the checks across pipelines (unique names, one
//! pipeline per queue, one type per exchange).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{Map, Value as Json};

use super::super::raw::{
    Lenient, RawBatch, RawBinding, RawDeadLetter, RawPipeline, RawQueue, RawRetry, RawSource,
    RawWriter, closest, describe, key_path,
};
use super::super::{
    BatchConfig, Binding, DeadLetterConfig, ExchangeType, PipelineConfig, QueueConfig, QueueKind,
    RetryConfig, SourceConfig, StreamConfig, StreamRetention, StreamStart, WriterConfig,
};
use super::{AmqpConnection, Connection, PinKeys, Validator};
use crate::capabilities::{Grants, HttpGrant, TcpGrant};
use crate::pinning::{self, Pin};

/// The largest prefetch AMQP can express (`basic.qos` takes a 16-bit count).
const PREFETCH_MAX: i64 = u16::MAX as i64;

impl Validator<'_> {
    pub(super) fn pipelines(
        &mut self,
        raw: Vec<RawPipeline>,
        connections: &BTreeMap<String, Connection>,
    ) -> Vec<PipelineConfig> {
        if raw.is_empty() {
            self.report(
                "pipelines",
                "no pipelines; expected at least one [[pipelines]] table",
            );
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        // (connection, queue) -> the pipeline consuming it.
        let mut queues: HashMap<(String, String), usize> = HashMap::new();
        // (connection, exchange) -> its type and the binding that declared it.
        let mut exchanges: HashMap<(String, String), (ExchangeType, String)> = HashMap::new();
        for (i, raw) in raw.into_iter().enumerate() {
            let at = format!("pipelines[{i}]");
            let pipeline = self.pipeline(&at, raw, connections);
            if !pipeline.name.is_empty() {
                if let Some(first) = names.get(&pipeline.name) {
                    self.report(
                        format!("{at}.name"),
                        format!(
                            "pipeline name `{}` is already used by pipelines[{first}]; names must be unique",
                            pipeline.name
                        ),
                    );
                } else {
                    names.insert(pipeline.name.clone(), i);
                }
            }
            // A stream is read, not drained: pipelines reading one stream each
            // get every message (under their own consumer names).
            if pipeline.queue.kind != QueueKind::Stream
                && !pipeline.amqp_connection.is_empty()
                && !pipeline.queue.name.is_empty()
            {
                let key = (
                    pipeline.amqp_connection.clone(),
                    pipeline.queue.name.clone(),
                );
                if let Some(first) = queues.get(&key) {
                    self.report(
                        format!("{at}.queue.name"),
                        format!(
                            "queue `{}` on connection `{}` is already consumed by pipelines[{first}]: each message would reach only one of them; to store a feed twice, give one pipeline two writers, or bind a second queue",
                            key.1, key.0
                        ),
                    );
                } else {
                    queues.insert(key, i);
                }
            }
            if pipeline.queue.declare {
                for (j, binding) in pipeline.queue.bindings.iter().enumerate() {
                    let path = format!("{at}.queue.bindings[{j}].exchange_type");
                    let key = (pipeline.amqp_connection.clone(), binding.exchange.clone());
                    match exchanges.get(&key) {
                        Some((ty, first)) if *ty != binding.exchange_type => self.report(
                            path,
                            format!(
                                "exchange `{}` is declared as {} at {first}; an exchange has one type, so declaring it as {} would fail",
                                binding.exchange,
                                ty.as_str(),
                                binding.exchange_type.as_str()
                            ),
                        ),
                        Some(_) => {}
                        None => {
                            exchanges.insert(key, (binding.exchange_type, path));
                        }
                    }
                }
            }
            out.push(pipeline);
        }
        out
    }

    fn pipeline(
        &mut self,
        at: &str,
        raw: RawPipeline,
        connections: &BTreeMap<String, Connection>,
    ) -> PipelineConfig {
        let name_path = format!("{at}.name");
        let name = self
            .required(&name_path, raw.name, "the pipeline's name")
            .filter(|n| self.name(&name_path, n, "pipeline"))
            .unwrap_or_default();

        let (amqp_connection, amqp) = self.pipeline_connection(at, raw.connection, connections);

        let (batch, max_messages) = self.batch(at, raw.batch.unwrap_or_default());
        let consumers_given = raw.consumers.is_some();
        let consumers = self.integer(&format!("{at}.consumers"), raw.consumers, 1..=64, 2);
        let prefetch_path = format!("{at}.prefetch");
        let explicit_prefetch = raw.prefetch.is_some();
        let default_prefetch = max_messages.map_or(2000, |m| (2 * m).min(PREFETCH_MAX));
        let prefetch = self.integer(
            &prefetch_path,
            raw.prefetch,
            1..=PREFETCH_MAX,
            default_prefetch,
        );
        if let (Some(p), Some(m)) = (prefetch, max_messages)
            && p < m
        {
            if explicit_prefetch {
                self.report(
                    prefetch_path,
                    format!(
                        "prefetch {p} is smaller than batch.max_messages {m}: a batch could never fill, and every batch would wait the full max_wait; expected at least {m} (2 × max_messages is a good start)"
                    ),
                );
            } else {
                self.report(
                    format!("{at}.batch.max_messages"),
                    format!(
                        "{m} is more than the largest prefetch ({PREFETCH_MAX}): a batch could never fill; expected at most {PREFETCH_MAX}"
                    ),
                );
            }
        }

        let queue = match raw.queue {
            Some(queue) => self.queue(at, queue, &name, connections),
            None => {
                self.report(
                    format!("{at}.queue"),
                    "missing; expected a table like { name = \"cdr\", bindings = [...] }",
                );
                empty_queue()
            }
        };
        if queue.kind == QueueKind::Stream {
            if consumers_given {
                self.report(
                    format!("{at}.consumers"),
                    "a stream pipeline runs one consumer per stream; to read faster, split the stream into partitions (queue.partitions)",
                );
            }
            if explicit_prefetch {
                self.report(
                    format!("{at}.prefetch"),
                    "applies to queues; a stream consumer takes what it reads in chunks, by credit",
                );
            }
        }
        let source = match raw.source {
            Some(source) => self.source(at, source),
            None => {
                self.report(
                    format!("{at}.source"),
                    "missing; expected a [pipelines.source] table with plugin and config",
                );
                SourceConfig {
                    plugin: String::new(),
                    config: Json::Object(Map::new()),
                    pin: Pin::default(),
                }
            }
        };
        let writers = match raw.writers {
            Some(writers) if !writers.is_empty() => writers
                .into_iter()
                .enumerate()
                .map(|(j, w)| self.writer(&format!("{at}.writers[{j}]"), w, connections))
                .collect(),
            _ => {
                self.report(
                    format!("{at}.writers"),
                    "no writers; expected at least one [[pipelines.writers]] table",
                );
                Vec::new()
            }
        };
        let dead_letter = self.dead_letter(at, &name, &queue, raw.dead_letter.unwrap_or_default());
        let retry = self.retry(at, raw.retry.unwrap_or_default());

        PipelineConfig {
            name,
            amqp_urls: amqp.as_ref().map(|a| a.urls.clone()).unwrap_or_default(),
            amqp_tls: amqp.and_then(|a| a.tls),
            amqp_connection,
            queue,
            prefetch: prefetch.unwrap_or(1) as u16,
            consumers: consumers.unwrap_or(1) as u16,
            batch,
            source,
            writers,
            dead_letter,
            retry,
        }
    }

    /// The amqp connection a pipeline names: its name and settings.
    fn pipeline_connection(
        &mut self,
        at: &str,
        value: Option<Lenient<String>>,
        connections: &BTreeMap<String, Connection>,
    ) -> (String, Option<AmqpConnection>) {
        let path = format!("{at}.connection");
        let Some(name) = self.required(&path, value, "the name of an amqp connection") else {
            return (String::new(), None);
        };
        match connections.get(&name) {
            Some(Connection::Amqp(url)) => (name, url.clone()),
            Some(Connection::Unknown) => (name, None),
            Some(other) => {
                let message = format!(
                    "`{name}` is a {} connection; a pipeline consumes from an amqp connection",
                    other.kind()
                );
                self.report(path, message);
                (name, None)
            }
            None => {
                let message = missing_connection(&name, connections, "amqp");
                self.report(path, message);
                (name, None)
            }
        }
    }

    /// The batch settings, and `max_messages` if it was valid.
    fn batch(&mut self, at: &str, raw: RawBatch) -> (BatchConfig, Option<i64>) {
        let max_messages = self.integer(
            &format!("{at}.batch.max_messages"),
            raw.max_messages,
            1..=100_000,
            1000,
        );
        let max_wait = self.duration(
            &format!("{at}.batch.max_wait"),
            raw.max_wait,
            Duration::from_millis(200),
            // Messages wait unacked; RabbitMQ's consumer_timeout (30 minutes by
            // default) must never be reached by waiting alone.
            (Duration::from_millis(1), Duration::from_secs(600)),
        );
        let batch = BatchConfig {
            max_messages: max_messages.unwrap_or(1) as usize,
            max_wait: max_wait.unwrap_or_default(),
        };
        (batch, max_messages)
    }

    fn queue(
        &mut self,
        at: &str,
        mut raw: RawQueue,
        pipeline: &str,
        connections: &BTreeMap<String, Connection>,
    ) -> QueueConfig {
        let at = format!("{at}.queue");
        let name_path = format!("{at}.name");
        let name = self
            .required(
                &name_path,
                raw.name.take(),
                "the name of the queue to consume",
            )
            .unwrap_or_default();
        self.amqp_name(&name_path, &name, "queue name");
        let declare = self.boolean(&format!("{at}.declare"), raw.declare.take(), true);
        let kind_path = format!("{at}.type");
        let kind = match self
            .typed(&kind_path, raw.kind.take(), QUEUE_TYPES)
            .as_deref()
        {
            None | Some("classic") => QueueKind::Classic,
            Some("quorum") => QueueKind::Quorum,
            Some("stream") => QueueKind::Stream,
            Some(other) => {
                self.report(
                    kind_path,
                    format!("unknown queue type {other:?}; expected {QUEUE_TYPES}"),
                );
                QueueKind::Classic
            }
        };
        let limit_path = format!("{at}.delivery_limit");
        let had_limit = raw.delivery_limit.is_some();
        let delivery_limit = self
            .integer(
                &limit_path,
                raw.delivery_limit.take(),
                1..=i64::from(u32::MAX),
                1,
            )
            .filter(|_| had_limit)
            .map(|n| n as u32);
        if had_limit && kind != QueueKind::Quorum {
            self.report(
                limit_path,
                format!(
                    "delivery_limit applies only to quorum queues; set type = \"quorum\" or remove it (a {} {})",
                    kind.as_str(),
                    if kind == QueueKind::Stream {
                        "sends what Sluice cannot handle to the dead-letter exchange and moves on"
                    } else {
                        "queue redelivers without limit"
                    }
                ),
            );
        }
        let bindings: Vec<Binding> = raw
            .bindings
            .take()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .filter_map(|(j, b)| self.binding(&format!("{at}.bindings[{j}]"), b))
            .collect();
        let stream = if kind == QueueKind::Stream {
            if raw.partitions.is_some() && !bindings.is_empty() {
                self.report(
                    format!("{at}.bindings"),
                    "a partitioned stream is fed by its super stream's exchange, which routes each message to one partition; declare the super stream with `rabbitmq-streams add_super_stream` and remove bindings",
                );
            }
            self.stream(&at, &name, raw, pipeline, connections)
        } else {
            let stream_only = [
                ("connection", raw.connection.is_some()),
                ("partitions", raw.partitions.is_some()),
                ("assigned", raw.assigned.is_some()),
                ("start", raw.start.is_some()),
                ("consumer_name", raw.consumer_name.is_some()),
                ("max_length", raw.max_length.is_some()),
                ("max_age", raw.max_age.is_some()),
                ("max_segment_size", raw.max_segment_size.is_some()),
            ];
            for (key, _) in stream_only.iter().filter(|(_, given)| *given) {
                self.report(
                    format!("{at}.{key}"),
                    format!(
                        "applies only to streams; set type = \"stream\" or remove it (the queue is {})",
                        kind.as_str()
                    ),
                );
            }
            None
        };
        QueueConfig {
            name,
            declare,
            kind,
            delivery_limit,
            bindings,
            stream,
        }
    }

    /// The settings of a stream pipeline's input; `None` when wrong (reported).
    fn stream(
        &mut self,
        at: &str,
        name: &str,
        raw: RawQueue,
        pipeline: &str,
        connections: &BTreeMap<String, Connection>,
    ) -> Option<StreamConfig> {
        let connection_path = format!("{at}.connection");
        let connection = self.required(
            &connection_path,
            raw.connection,
            "the name of a rabbitmq-stream connection",
        );
        let endpoints = match connection.as_ref().map(|c| (c, connections.get(c))) {
            None => None,
            Some((_, Some(Connection::Stream(endpoints)))) => endpoints.clone(),
            Some((_, Some(Connection::Unknown))) => None,
            Some((c, Some(other))) => {
                self.report(
                    &connection_path,
                    format!(
                        "`{c}` is of type {}; a stream is read through a rabbitmq-stream connection (port 5552)",
                        other.kind()
                    ),
                );
                None
            }
            Some((c, None)) => {
                let message = missing_connection(c, connections, "rabbitmq-stream");
                self.report(&connection_path, message);
                None
            }
        };
        let partitions_path = format!("{at}.partitions");
        let partitions = raw.partitions.is_some();
        let count = self.integer(&partitions_path, raw.partitions, 1..=1000, 1);
        let assigned_path = format!("{at}.assigned");
        let assigned = self.typed(
            &assigned_path,
            raw.assigned,
            "a list of partition numbers, like [0, 1]",
        );
        let streams: Vec<String> = match (partitions, count, assigned) {
            (false, _, Some(_)) => {
                self.report(
                    &assigned_path,
                    "applies to partitioned streams; set partitions = N (the streams `<name>-0` … `<name>-<N-1>`) or remove it",
                );
                Vec::new()
            }
            (false, _, None) => vec![name.to_string()],
            (true, None, _) => Vec::new(),
            (true, Some(count), assigned) => {
                let all: Vec<i64> = (0..count).collect();
                let chosen = assigned.unwrap_or_else(|| all.clone());
                let mut seen = std::collections::BTreeSet::new();
                let mut ok = !chosen.is_empty();
                if chosen.is_empty() {
                    self.report(
                        &assigned_path,
                        "is empty; expected at least one partition number (a daemon with none reads nothing)",
                    );
                }
                for n in &chosen {
                    if !(0..count).contains(n) {
                        self.report(
                            &assigned_path,
                            format!(
                                "partition {n} does not exist; expected numbers from 0 to {}",
                                count - 1
                            ),
                        );
                        ok = false;
                    } else if !seen.insert(*n) {
                        self.report(&assigned_path, format!("partition {n} is listed twice"));
                        ok = false;
                    }
                }
                if ok {
                    chosen.iter().map(|n| format!("{name}-{n}")).collect()
                } else {
                    Vec::new()
                }
            }
        };
        for stream in &streams {
            // Stream names are queue names (the AMQP side declares them).
            self.amqp_name(&format!("{at}.name"), stream, "queue name");
        }
        let consumer_path = format!("{at}.consumer_name");
        let consumer_name = match raw.consumer_name {
            None => format!("sluice-{pipeline}"),
            some => self
                .required(&consumer_path, some, "a consumer name")
                .unwrap_or_default(),
        };
        if consumer_name.len() > 255 {
            self.report(
                &consumer_path,
                "is longer than 255 bytes, the stream protocol's limit",
            );
        }
        let start = self.stream_start(&format!("{at}.start"), raw.start);
        let max_length_bytes = self.byte_size(&format!("{at}.max_length"), raw.max_length);
        let max_segment_size_bytes =
            self.byte_size(&format!("{at}.max_segment_size"), raw.max_segment_size);
        let max_age = match raw.max_age {
            None => None,
            some => self.duration(
                &format!("{at}.max_age"),
                some,
                Duration::ZERO,
                (
                    Duration::from_secs(1),
                    Duration::from_secs(100 * 365 * 86_400),
                ),
            ),
        };
        Some(StreamConfig {
            connection: connection?,
            endpoints: endpoints?,
            streams: Some(streams).filter(|s| !s.is_empty())?,
            consumer_name,
            start: start?,
            retention: StreamRetention {
                max_length_bytes,
                max_age,
                max_segment_size_bytes,
            },
        })
    }

    /// `start`: `"first"`, `"last"`, `"next"` or an RFC 3339 time; `first` by
    /// default.
    fn stream_start(&mut self, path: &str, value: Option<toml::Value>) -> Option<StreamStart> {
        const EXPECTED: &str =
            "\"first\", \"last\", \"next\" or a time like \"2026-12-01T00:00:00Z\"";
        let text = match value {
            None => return Some(StreamStart::First),
            Some(toml::Value::String(s)) => s,
            // A TOML datetime written without quotes.
            Some(toml::Value::Datetime(d)) => d.to_string(),
            Some(other) => {
                self.report(
                    path,
                    format!("expected {EXPECTED}, found {}", describe(&other)),
                );
                return None;
            }
        };
        match text.as_str() {
            "first" => Some(StreamStart::First),
            "last" => Some(StreamStart::Last),
            "next" => Some(StreamStart::Next),
            time => match humantime::parse_rfc3339_weak(time) {
                Ok(t) => Some(StreamStart::Timestamp(
                    t.duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as i64),
                )),
                Err(e) => {
                    self.report(
                        path,
                        format!("{time:?} is not a start ({e}); expected {EXPECTED}"),
                    );
                    None
                }
            },
        }
    }

    /// A size in bytes: an integer, or a string with a unit (`"20GB"`,
    /// `"500 MiB"`). `None` when absent or wrong (reported).
    fn byte_size(&mut self, path: &str, value: Option<toml::Value>) -> Option<u64> {
        const EXPECTED: &str = "a size like \"20GB\", \"500MiB\" or a number of bytes";
        let parsed = match value? {
            toml::Value::Integer(n) if n > 0 => Ok(n as u64),
            toml::Value::String(s) => parse_byte_size(&s).ok_or(format!("{s:?} is not a size")),
            other => Err(format!("found {}", describe(&other))),
        };
        match parsed {
            Ok(n) => Some(n),
            Err(why) => {
                self.report(path, format!("{why}; expected {EXPECTED}"));
                None
            }
        }
    }

    fn binding(&mut self, at: &str, raw: RawBinding) -> Option<Binding> {
        let exchange_path = format!("{at}.exchange");
        let exchange = match raw.exchange {
            None => {
                self.report(&exchange_path, "missing; expected the name of an exchange");
                None
            }
            some => match self.typed(&exchange_path, some, "the name of an exchange") {
                Some(e) if e.is_empty() => {
                    self.report(
                        &exchange_path,
                        "the default exchange \"\" cannot be bound (it reaches every queue by its name already); expected the name of an exchange",
                    );
                    None
                }
                other => other,
            },
        };
        if let Some(e) = &exchange {
            self.amqp_name(&exchange_path, e, "exchange name");
        }
        let type_path = format!("{at}.exchange_type");
        let exchange_type = match self
            .typed(
                &type_path,
                raw.exchange_type,
                "\"direct\", \"topic\", \"fanout\" or \"headers\"",
            )
            .as_deref()
        {
            None | Some("topic") => Some(ExchangeType::Topic),
            Some("direct") => Some(ExchangeType::Direct),
            Some("fanout") => Some(ExchangeType::Fanout),
            Some("headers") => Some(ExchangeType::Headers),
            Some(other) => {
                self.report(
                    type_path,
                    format!(
                        "unknown exchange type {other:?}; expected \"direct\", \"topic\", \"fanout\" or \"headers\""
                    ),
                );
                None
            }
        };
        let key_path = format!("{at}.routing_key");
        let routing_key = match (raw.routing_key, exchange_type) {
            (None, Some(t @ (ExchangeType::Direct | ExchangeType::Topic))) => {
                self.report(
                    &key_path,
                    format!(
                        "missing; a {} exchange routes by key, so expected a binding key like \"cdr.#\"{}",
                        t.as_str(),
                        if t == ExchangeType::Topic {
                            " (\"#\" takes every message)"
                        } else {
                            ""
                        }
                    ),
                );
                None
            }
            (None, _) => Some(String::new()),
            (some, _) => self.typed(&key_path, some, "a binding key string"),
        };
        if let Some(key) = &routing_key {
            self.amqp_name(&key_path, key, "routing key");
        }
        Some(Binding {
            exchange: exchange?,
            exchange_type: exchange_type?,
            routing_key: routing_key?,
        })
    }

    fn source(&mut self, at: &str, raw: RawSource) -> SourceConfig {
        let at = format!("{at}.source");
        let plugin = self
            .required(
                &format!("{at}.plugin"),
                raw.plugin,
                "the source plugin's name",
            )
            .unwrap_or_default();
        let config = self.plugin_config(&format!("{at}.config"), raw.config);
        let pin = self.pin(&at, raw.sha256, raw.signer);
        SourceConfig {
            plugin,
            config,
            pin,
        }
    }

    /// The pin of the plugin table at `at` (`sha256`, `signer`).
    fn pin(
        &mut self,
        at: &str,
        sha256: Option<Lenient<String>>,
        signer: Option<Lenient<String>>,
    ) -> Pin {
        let sha256_at = format!("{at}.sha256");
        let sha256 = self
            .typed(
                &sha256_at,
                sha256,
                "the plugin file's SHA-256 (64 hex digits)",
            )
            .and_then(|text| match pinning::parse_sha256(&text) {
                Ok(hash) => Some(hash),
                Err(why) => {
                    self.report(&sha256_at, why);
                    None
                }
            });
        let signer_at = format!("{at}.signer");
        let signer = self
            .typed(&signer_at, signer, "a trusted key's id or file name")
            .and_then(|text| {
                let found = match &self.pin_keys {
                    PinKeys::Invalid => return None,
                    PinKeys::NotVerified => Err(format!(
                        "{text:?}: a signer pin needs daemon.trusted_keys (without them signatures are not verified); add the key to daemon.trusted_keys, or pin by sha256"
                    )),
                    PinKeys::Keys(keys) => pinning::find_signer(&text, keys),
                };
                match found {
                    Ok(pin) => Some(pin),
                    Err(why) => {
                        self.report(&signer_at, why);
                        None
                    }
                }
            });
        Pin { sha256, signer }
    }

    fn writer(
        &mut self,
        at: &str,
        raw: RawWriter,
        connections: &BTreeMap<String, Connection>,
    ) -> WriterConfig {
        let plugin = self
            .required(
                &format!("{at}.plugin"),
                raw.plugin,
                "the writer plugin's name",
            )
            .unwrap_or_default();
        let config = self.plugin_config(&format!("{at}.config"), raw.config);
        let raw_grants = raw.grants.unwrap_or_default();
        let grants_at = format!("{at}.grants");
        let (mut grants, postgres_grants) =
            self.postgres_grants(&grants_at, raw_grants.postgres, connections);
        grants.http = self.grant_list(
            &format!("{grants_at}.http"),
            raw_grants.http,
            "a list of base URLs, like [\"https://api.example.com/v1\"]",
            HttpGrant::parse,
        );
        grants.tcp = self.grant_list(
            &format!("{grants_at}.tcp"),
            raw_grants.tcp,
            "a list of host:port, like [\"127.0.0.1:6379\"]",
            TcpGrant::parse,
        );
        if raw_grants.directory.is_some() {
            let base = self.base.clone();
            grants.directory = self.folder(
                &format!("{grants_at}.directory"),
                raw_grants.directory,
                &base,
            );
        }
        let pin = self.pin(at, raw.sha256, raw.signer);
        WriterConfig {
            plugin,
            config,
            grants,
            postgres_grants,
            pin,
        }
    }

    /// The postgres connections a writer is granted (`grants.postgres`), and
    /// their names in file order.
    fn postgres_grants(
        &mut self,
        grants_at: &str,
        raw: Option<Lenient<Vec<String>>>,
        connections: &BTreeMap<String, Connection>,
    ) -> (Grants, Vec<String>) {
        let mut grants = Grants::none();
        let mut postgres_grants: Vec<String> = Vec::new();
        let grants_path = format!("{grants_at}.postgres");
        let names = self.typed(
            &grants_path,
            raw,
            "a list of postgres connection names, like [\"warehouse\"]",
        );
        for (k, name) in names.unwrap_or_default().into_iter().enumerate() {
            let path = format!("{grants_path}[{k}]");
            if postgres_grants.contains(&name) {
                self.report(path, format!("`{name}` is granted twice"));
                continue;
            }
            match connections.get(&name) {
                Some(Connection::Postgres(grant)) => {
                    if let Some(grant) = grant {
                        grants = grants.with_postgres(name.clone(), (**grant).clone());
                    }
                }
                Some(Connection::Unknown) => {}
                Some(other) => {
                    let message = format!(
                        "`{name}` is an {} connection; only postgres connections can be granted",
                        other.kind()
                    );
                    self.report(path, message);
                }
                None => {
                    let message = missing_connection(&name, connections, "postgres");
                    self.report(path, message);
                }
            }
            postgres_grants.push(name);
        }
        (grants, postgres_grants)
    }

    /// A list of grants of one kind (`grants.http`, `grants.tcp`), each parsed
    /// by `parse`; every item that does not parse, or is there twice, reported.
    fn grant_list<T: PartialEq>(
        &mut self,
        path: &str,
        raw: Option<Lenient<Vec<String>>>,
        expected: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let items = self.typed(path, raw, expected).unwrap_or_default();
        let mut out = Vec::new();
        for (k, item) in items.into_iter().enumerate() {
            let at = format!("{path}[{k}]");
            match parse(&item) {
                Ok(grant) if out.contains(&grant) => {
                    self.report(at, format!("{item:?} is granted twice"));
                }
                Ok(grant) => out.push(grant),
                Err(why) => self.report(at, format!("{item:?}: {why}")),
            }
        }
        out
    }

    /// A plugin's `config` table, as a JSON object.
    fn plugin_config(&mut self, path: &str, value: Option<toml::Value>) -> Json {
        match value {
            None => Json::Object(Map::new()),
            Some(table @ toml::Value::Table(_)) => self.json_of(path, table),
            Some(other) => {
                self.report(
                    path,
                    format!(
                        "expected a table of the plugin's settings, found {}",
                        describe(&other)
                    ),
                );
                Json::Object(Map::new())
            }
        }
    }

    fn json_of(&mut self, path: &str, value: toml::Value) -> Json {
        match value {
            toml::Value::String(s) => Json::String(s),
            toml::Value::Integer(i) => Json::from(i),
            toml::Value::Float(f) => match serde_json::Number::from_f64(f) {
                Some(n) => Json::Number(n),
                None => {
                    self.report(
                        path,
                        format!("{f} has no JSON form; expected a finite number"),
                    );
                    Json::Null
                }
            },
            toml::Value::Boolean(b) => Json::Bool(b),
            // Plugins get JSON, which has no datetime: pass the RFC 3339 text.
            toml::Value::Datetime(d) => Json::String(d.to_string()),
            toml::Value::Array(items) => Json::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| self.json_of(&format!("{path}[{i}]"), item))
                    .collect(),
            ),
            toml::Value::Table(table) => Json::Object(
                table
                    .into_iter()
                    .map(|(k, v)| {
                        let json = self.json_of(&key_path(path, &k), v);
                        (k, json)
                    })
                    .collect(),
            ),
        }
    }

    fn dead_letter(
        &mut self,
        at: &str,
        pipeline: &str,
        queue: &QueueConfig,
        raw: RawDeadLetter,
    ) -> DeadLetterConfig {
        let at = format!("{at}.dead_letter");
        let default_name = format!("{pipeline}.dead");
        let exchange_path = format!("{at}.exchange");
        let exchange = match raw.exchange {
            None => default_name.clone(),
            some => self
                .required(&exchange_path, some, "the name of the dead-letter exchange")
                .unwrap_or_default(),
        };
        self.amqp_name(&exchange_path, &exchange, "exchange name");
        if !exchange.is_empty() && queue.bindings.iter().any(|b| b.exchange == exchange) {
            self.report(
                &exchange_path,
                format!(
                    "`{exchange}` is an exchange the pipeline's queue is bound to: rejected messages could route back into the queue; expected another exchange (the default is \"<pipeline>.dead\")"
                ),
            );
        }
        let queue_path = format!("{at}.queue");
        let dead_queue = match raw.queue {
            None | Some(toml::Value::Boolean(true)) => Some(default_name),
            Some(toml::Value::Boolean(false)) => None,
            Some(toml::Value::String(s)) if !s.is_empty() => Some(s),
            Some(other) => {
                self.report(
                    &queue_path,
                    format!(
                        "expected a queue name, or false for none, found {}",
                        describe(&other)
                    ),
                );
                None
            }
        };
        if let Some(q) = &dead_queue {
            self.amqp_name(&queue_path, q, "queue name");
            if !queue.name.is_empty() && *q == queue.name {
                self.report(
                    &queue_path,
                    format!(
                        "`{q}` is the pipeline's own queue: rejected messages would be consumed again; expected another queue (the default is \"<pipeline>.dead\")"
                    ),
                );
            }
        }
        let type_path = format!("{at}.queue_type");
        let queue_kind = match self
            .typed(&type_path, raw.queue_type, "\"classic\" or \"quorum\"")
            .as_deref()
        {
            None | Some("classic") => QueueKind::Classic,
            Some("quorum") => QueueKind::Quorum,
            Some(other) => {
                self.report(
                    type_path,
                    format!("unknown dead-letter queue type {other:?}; expected \"classic\" or \"quorum\" (quorum on a cluster, so dead letters outlive the loss of a node)"),
                );
                QueueKind::Classic
            }
        };
        let declare = self.boolean(&format!("{at}.declare"), raw.declare, true);
        DeadLetterConfig {
            exchange,
            queue: dead_queue,
            queue_kind,
            declare,
        }
    }

    fn retry(&mut self, at: &str, raw: RawRetry) -> RetryConfig {
        let range = (Duration::from_millis(1), Duration::from_secs(300));
        let initial = self.duration(
            &format!("{at}.retry.initial_backoff"),
            raw.initial_backoff,
            Duration::from_millis(100),
            range,
        );
        let max_path = format!("{at}.retry.max_backoff");
        let max = self.duration(&max_path, raw.max_backoff, Duration::from_secs(30), range);
        if let (Some(initial), Some(max)) = (initial, max)
            && max < initial
        {
            self.report(
                max_path,
                format!(
                    "{} is shorter than initial_backoff ({}); expected at least that",
                    humantime::format_duration(max),
                    humantime::format_duration(initial)
                ),
            );
        }
        RetryConfig {
            initial_backoff: initial.unwrap_or_default(),
            max_backoff: max.unwrap_or_default(),
        }
    }
}

fn empty_queue() -> QueueConfig {
    QueueConfig {
        name: String::new(),
        declare: false,
        kind: QueueKind::Classic,
        delivery_limit: None,
        bindings: Vec::new(),
        stream: None,
    }
}

/// The queue types, as a message lists them.
const QUEUE_TYPES: &str = "\"classic\", \"quorum\" or \"stream\"";

/// `"20GB"`, `"500 MiB"`, `"1000"`: decimal (kB, MB, GB, TB) and binary (KiB,
/// MiB, GiB, TiB) units, case-insensitive; more than 0.
pub(in crate::config) fn parse_byte_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(factor).filter(|n| *n > 0)
}

/// Says that no connection is called `name`, suggesting a close one and listing
/// those of the `kind` needed.
fn missing_connection(
    name: &str,
    connections: &BTreeMap<String, Connection>,
    kind: &str,
) -> String {
    let of_kind: Vec<&str> = connections
        .iter()
        .filter(|(_, c)| c.kind() == kind)
        .map(|(n, _)| n.as_str())
        .collect();
    let mut message = format!("no connection named `{name}`");
    if let Some(close) = closest(name, &of_kind) {
        message.push_str(&format!(" (did you mean `{close}`?)"));
    }
    if of_kind.is_empty() {
        message.push_str(&format!(
            "; expected the name of a [connections.NAME] table with type = \"{kind}\", and there is none"
        ));
    } else {
        message.push_str(&format!(
            "; expected one of the {kind} connections: {}",
            of_kind.join(", ")
        ));
    }
    message
}
