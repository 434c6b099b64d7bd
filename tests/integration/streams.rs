//! Stream pipelines: RabbitMQ streams read with the stream protocol, offsets
//! stored in RabbitMQ once a batch is written, through crashes, lost
//! connections, broker restarts, poison messages and partitions split between
//! daemons. Each test has its own streams, exchanges and schema.

use std::time::Duration;

use lapin::types::AMQPValue;
use rabbitmq_stream_client::types::Message;
use sluice_tests::cdr_json;
use sluice_tests::daemon::{Broker, Daemon, Setup, eventually, http_get};
use sluice_tests::rabbit_node::RabbitNode;
use sluice_tests::streams::Streams;

use crate::daemon::{LONG, World, cdrs, start, world_unprepared};

/// A world for a stream pipeline: the stream is named after the pipeline.
struct StreamWorld {
    w: World,
    streams: Streams,
}

impl StreamWorld {
    async fn new(tag: &str) -> StreamWorld {
        StreamWorld {
            w: world_unprepared(tag).await,
            streams: Streams::connect().await,
        }
    }

    /// The stream (or the partitions' base name).
    fn stream(&self) -> String {
        format!("{}.stream", self.w.setup.pipeline)
    }

    fn consumer_name(&self) -> String {
        format!("sluice-{}", self.w.setup.pipeline)
    }

    /// Writes the config: `queue_extra` goes into the queue table.
    fn write_config(&self, pipeline_extra: &str, queue_extra: &str) {
        self.w.setup.write_stream_config(
            pipeline_extra,
            &format!(
                r#"{{ type = "stream", name = "{}", connection = "streams"{queue_extra} }}"#,
                self.stream()
            ),
        );
    }

    async fn finish(self, streams: &[String]) {
        for s in streams {
            self.streams.delete(s).await;
        }
        self.w.finish().await;
    }
}

/// `sluice_<name>{pipeline="<pipeline>"...}` summed over label sets, from `/metrics`.
async fn metric(port: u16, name: &str, pipeline: &str) -> f64 {
    let (_, text) = http_get(port, "/metrics").await.expect("/metrics answers");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("pipeline=\"{pipeline}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn sigterm_and_wait(daemon: &mut Daemon) {
    daemon.signal("TERM");
    let status = daemon
        .wait_exit(Duration::from_secs(20))
        .expect("exits within 20 s of SIGTERM");
    assert!(status.success(), "exit {status:?}; log:\n{}", daemon.log());
}

#[tokio::test]
async fn a_hundred_thousand_stream_messages_land_once_and_sigterm_stores_the_offset() {
    let sw = StreamWorld::new("stream-100k").await;
    let stream = sw.stream();
    sw.write_config("", "");
    // The daemon declares the stream; publish once it exists.
    let mut daemon = start(&sw.w.setup, "daemon");
    eventually(LONG, "the daemon to declare the stream", || async {
        sw.w.broker.try_ready(&stream).await.is_some()
    })
    .await;
    sw.streams.publish(&stream, cdrs(0..100_000)).await;
    sw.w.wait_rows(100_000, "100,000 rows").await;
    assert_eq!(sw.w.distinct_rows().await, 100_000);
    let read = sw.streams.read(&stream, 100_000).await;
    assert_eq!(read.len(), 100_000);
    let last = read.last().map(|(offset, _)| *offset).unwrap();

    // /metrics: the stored offset, and no lag once drained (measured every 5 s).
    let port = sw.w.setup.admin_port;
    let pipeline = &sw.w.setup.pipeline;
    eventually(
        LONG,
        "the committed offset and a zero lag in /metrics",
        || async {
            let (_, text) = http_get(port, "/metrics").await.unwrap_or_default();
            let series = |name: &str| {
                text.lines()
                    .find(|l| {
                        l.starts_with(name)
                            && l.contains(&format!("pipeline=\"{pipeline}\""))
                            && l.contains(&format!("stream=\"{stream}\""))
                    })
                    .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            };
            series("sluice_stream_committed_offset") == Some(last)
                && series("sluice_stream_lag_messages") == Some(0)
        },
    )
    .await;

    sigterm_and_wait(&mut daemon);
    assert!(
        daemon.log().contains("stream offset stored"),
        "{}",
        daemon.log()
    );
    assert_eq!(
        sw.streams.stored_offset(&sw.consumer_name(), &stream).await,
        Some(last),
        "the offset of the last message is stored"
    );
    assert_eq!(sw.w.rows().await, 100_000);
    assert_eq!(sw.w.broker.ready(&sw.w.setup.dead_queue).await, 0);
    sw.finish(&[stream]).await;
}

#[tokio::test]
async fn after_kill_9_a_restart_reads_again_at_most_one_batch_and_every_row_lands_once() {
    let sw = StreamWorld::new("stream-kill").await;
    let stream = sw.stream();
    sw.streams.create(&stream).await;
    sw.streams.publish(&stream, cdrs(0..30_000)).await;
    sw.write_config("batch = { max_messages = 1000, max_wait = \"50ms\" }", "");
    let daemon = start(&sw.w.setup, "daemon-1");
    sw.w.wait_rows(8_000, "some rows before the crash").await;
    let rows_before = sw.w.rows().await;
    daemon.kill9();

    let mut daemon = start(&sw.w.setup, "daemon-2");
    sw.w.wait_rows(30_000, "every row after the restart").await;
    assert_eq!(sw.w.distinct_rows().await, 30_000);
    let port = sw.w.setup.admin_port;
    let read_again =
        metric(port, "sluice_messages_received_total", &sw.w.setup.pipeline).await as i64;
    assert!(
        read_again <= 30_000 - rows_before + 1_000,
        "the restart read {read_again} messages; {rows_before} rows were in the table before the crash, so at most {} were due (one batch window more)",
        30_000 - rows_before + 1_000
    );
    assert!(
        daemon.log().contains("stored_offset=Some("),
        "the restart resumed after a stored offset:\n{}",
        daemon.log()
    );
    sigterm_and_wait(&mut daemon);
    assert_eq!(sw.w.rows().await, 30_000);
    sw.finish(&[stream]).await;
}

#[tokio::test]
async fn poison_messages_in_a_stream_are_dead_lettered_with_their_stream_and_offset() {
    let sw = StreamWorld::new("stream-poison").await;
    let stream = sw.stream();
    sw.streams.create(&stream).await;
    let messages = (0..1_000u64).map(|i| {
        let body = if i % 100 == 7 {
            "{not json".to_string()
        } else {
            cdr_json(i)
        };
        Message::builder()
            .body(body.into_bytes())
            .properties()
            .message_id(format!("m-{i}"))
            .message_builder()
            .application_properties()
            .insert("feed", "switch-7")
            .message_builder()
            .build()
    });
    sw.streams.publish_messages(&stream, messages).await;
    sw.write_config("", "");
    let mut daemon = start(&sw.w.setup, "daemon");
    sw.w.wait_rows(990, "the 990 good rows").await;
    sw.w.wait_dead_letters(10, "10 dead letters").await;
    sigterm_and_wait(&mut daemon);

    let letters = sw.w.broker.drain(&sw.w.setup.dead_queue).await;
    assert_eq!(letters.len(), 10);
    let mut offsets = Vec::new();
    for (body, headers) in &letters {
        assert_eq!(body, "{not json");
        let header = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            Some(other) => format!("{other:?}"),
            None => panic!("header {name} missing: {headers:?}"),
        };
        assert!(header("x-sluice-stage").contains("decode"));
        assert!(header("x-sluice-stream").contains(&stream));
        let offset = header("x-sluice-stream-offset");
        let digits: String = offset.chars().filter(char::is_ascii_digit).collect();
        offsets.push(digits.parse::<u64>().expect(&offset));
        assert!(
            header("feed").contains("switch-7"),
            "application properties are kept"
        );
    }
    offsets.sort_unstable();
    let expected: Vec<u64> = (0..10).map(|k| k * 100 + 7).collect();
    assert_eq!(offsets, expected, "each dead letter names its own offset");
    assert_eq!(sw.w.rows().await, 990);
    assert_eq!(
        sw.streams.stored_offset(&sw.consumer_name(), &stream).await,
        Some(999),
        "the pipeline moved on past the poison"
    );
    sw.finish(&[stream]).await;
}

#[tokio::test]
async fn two_daemons_split_four_partitions_and_every_row_lands_once() {
    let sw = StreamWorld::new("stream-split").await;
    let base = sw.stream();
    let partitions: Vec<String> = (0..4).map(|p| format!("{base}-{p}")).collect();
    for p in &partitions {
        sw.streams.create(p).await;
    }
    for (p, stream) in partitions.iter().enumerate() {
        let from = p as u64 * 5_000;
        sw.streams.publish(stream, cdrs(from..from + 5_000)).await;
    }
    // The second daemon: the same pipeline, its own folder and admin port.
    let mut other = Setup::new("stream-split-b");
    other.pipeline = sw.w.setup.pipeline.clone();
    other.pg_schema = sw.w.setup.pg_schema.clone();
    other.dead_queue = sw.w.setup.dead_queue.clone();
    sw.write_config("", ", partitions = 4, assigned = [0, 1]");
    other.write_stream_config(
        "",
        &format!(
            r#"{{ type = "stream", name = "{base}", connection = "streams", partitions = 4, assigned = [2, 3] }}"#
        ),
    );
    let mut a = start(&sw.w.setup, "daemon-a");
    let mut b = start(&other, "daemon-b");
    sw.w.wait_rows(20_000, "20,000 rows from four partitions")
        .await;
    assert_eq!(sw.w.distinct_rows().await, 20_000);
    let pipeline = &sw.w.setup.pipeline;
    for (setup, daemon) in [(&sw.w.setup, &a), (&other, &b)] {
        let got = metric(setup.admin_port, "sluice_messages_received_total", pipeline).await;
        assert_eq!(
            got,
            10_000.0,
            "each daemon read its two partitions:\n{}",
            daemon.log()
        );
    }
    sigterm_and_wait(&mut a);
    sigterm_and_wait(&mut b);
    for p in &partitions {
        assert_eq!(
            sw.streams.stored_offset(&sw.consumer_name(), p).await,
            Some(4_999),
            "{p}"
        );
    }
    sw.finish(&partitions).await;
}

#[tokio::test]
async fn a_stream_deleted_under_a_running_pipeline_pauses_it_alone_until_it_is_back() {
    let sw = StreamWorld::new("stream-deleted").await;
    let base = sw.stream();
    let partitions: Vec<String> = (0..2).map(|p| format!("{base}-{p}")).collect();
    for p in &partitions {
        sw.streams.create(p).await;
    }
    sw.write_config("", ", partitions = 2, declare = false");
    let mut daemon = start(&sw.w.setup, "daemon");
    sw.streams.publish(&partitions[0], cdrs(0..100)).await;
    sw.streams.publish(&partitions[1], cdrs(100..200)).await;
    sw.w.wait_rows(200, "the first 200 rows").await;

    sw.streams.delete(&partitions[1]).await;
    eventually(LONG, "the loss of the stream to be logged", || async {
        daemon
            .log()
            .contains(&format!("stream `{}`", partitions[1]))
    })
    .await;
    // The other partition keeps going.
    sw.streams.publish(&partitions[0], cdrs(200..300)).await;
    sw.w.wait_rows(300, "the other partition's rows").await;
    let port = sw.w.setup.admin_port;
    let (status, body) = http_get(port, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("does not exist") || body.contains("deleted"),
        "{body}"
    );
    assert!(daemon.exited().is_none(), "the daemon keeps running");

    // Back: the consumer resumes by itself.
    sw.streams.create(&partitions[1]).await;
    sw.streams.publish(&partitions[1], cdrs(300..400)).await;
    sw.w.wait_rows(400, "the re-created stream's rows").await;
    assert_eq!(sw.w.distinct_rows().await, 400);
    sigterm_and_wait(&mut daemon);
    sw.finish(&partitions).await;
}

/// Closes every stream-protocol connection of the node (not the AMQP ones).
fn close_stream_connections(node: &RabbitNode) {
    node.ctl(&[
        "eval",
        "[rabbit_stream_reader:close(P, <<\"test\">>) || P <- pg:get_members(rabbit_stream_connections)].",
    ])
    .ok();
}

#[tokio::test]
async fn the_daemon_recovers_from_a_closed_stream_connection_and_a_broker_restart() {
    let (mut node, stream_port) = RabbitNode::start_with_streams("stream-node");
    let sw = StreamWorld {
        w: world_unprepared("stream-restart").await,
        streams: Streams::connect_to("127.0.0.1", stream_port).await,
    };
    let stream = sw.stream();
    sw.streams.create(&stream).await;
    // This world's broker is the node of its own.
    let node_amqp = node.amqp_url();
    let node_streams = format!("rabbitmq-stream://guest:guest@127.0.0.1:{stream_port}/%2f");
    sw.write_config("", "");
    let config = std::fs::read_to_string(sw.w.setup.config_path())
        .unwrap()
        .replace(&sluice_tests::amqp_url(), &node_amqp)
        .replace(&sluice_tests::stream_url(), &node_streams);
    std::fs::write(sw.w.setup.config_path(), config).unwrap();
    let mut daemon = start(&sw.w.setup, "daemon");
    sw.streams.publish(&stream, cdrs(0..5_000)).await;
    sw.w.wait_rows(5_000, "the first rows").await;

    close_stream_connections(&node);
    sw.streams.publish(&stream, cdrs(5_000..10_000)).await;
    sw.w.wait_rows(10_000, "rows after the stream connection was closed")
        .await;

    node.ctl(&["stop_app"]).expect("stop_app");
    node.ctl(&["start_app"]).expect("start_app");
    node.wait_listening(&[node.amqp_port, stream_port]);
    let streams = Streams::connect_to("127.0.0.1", stream_port).await;
    streams.publish(&stream, cdrs(10_000..15_000)).await;
    sw.w.wait_rows(15_000, "rows after the broker restarted")
        .await;
    assert_eq!(sw.w.distinct_rows().await, 15_000);
    assert!(
        daemon.log().contains("reconnecting"),
        "the daemon noticed:\n{}",
        daemon.log()
    );
    sigterm_and_wait(&mut daemon);
    let broker = Broker::connect_to(&node_amqp).await;
    assert_eq!(broker.ready(&sw.w.setup.dead_queue).await, 0);
    sw.w.db.drop_now().await.unwrap();
    drop(node);
}

#[tokio::test]
async fn a_stream_session_hands_out_every_message_once_with_the_offset_a_plain_reader_sees() {
    let streams = Streams::connect().await;
    let setup = Setup::new("stream-session");
    let stream = format!("{}.stream", setup.pipeline);
    streams.create(&stream).await;
    streams.publish(&stream, cdrs(0..5_000)).await;
    let plain = streams.read(&stream, 5_000).await;
    assert_eq!(plain.len(), 5_000);

    setup.write_stream_config(
        "",
        &format!(r#"{{ type = "stream", name = "{stream}", connection = "streams" }}"#),
    );
    let config = sluice::config::Config::load(&setup.config_path()).unwrap();
    let pipeline = &config.pipelines[0];
    let (session, mut deliveries) = sluice::stream_input::StreamSession::open(pipeline, &stream)
        .await
        .unwrap();
    let mut seen = Vec::with_capacity(5_000);
    while seen.len() < 5_000 {
        let (received, message) = tokio::time::timeout(Duration::from_secs(30), deliveries.next())
            .await
            .expect("a message within 30 s")
            .unwrap();
        seen.push((received.tag, message.body));
    }
    assert_eq!(
        seen, plain,
        "the same messages, in the same order, with the same offsets"
    );
    session.close().await;
    streams.delete(&stream).await;
}

#[tokio::test]
async fn sigterm_mid_stream_exits_promptly_with_the_offset_of_what_was_written_stored() {
    let sw = StreamWorld::new("stream-term").await;
    let stream = sw.stream();
    sw.streams.create(&stream).await;
    sw.streams.publish(&stream, cdrs(0..50_000)).await;
    sw.write_config("batch = { max_messages = 1000, max_wait = \"50ms\" }", "");
    let mut daemon = start(&sw.w.setup, "daemon-1");
    sw.w.wait_rows(5_000, "some rows before SIGTERM").await;
    let asked = std::time::Instant::now();
    sigterm_and_wait(&mut daemon);
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "exited {took:?} after SIGTERM"
    );
    let rows = sw.w.rows().await;
    assert!(rows < 50_000, "SIGTERM came mid-stream ({rows} rows)");
    let stored = sw
        .streams
        .stored_offset(&sw.consumer_name(), &stream)
        .await
        .expect("an offset is stored");
    // Every message up to the stored offset has its row, and nothing past the
    // last batch in hand was written.
    let read = sw.streams.read(&stream, 50_000).await;
    let settled = read.iter().take_while(|(o, _)| *o <= stored).count() as i64;
    assert!(
        settled <= rows && rows <= settled + 1_000,
        "{rows} rows, {settled} messages up to stored offset {stored}"
    );

    let mut daemon = start(&sw.w.setup, "daemon-2");
    sw.w.wait_rows(50_000, "the rest after a restart").await;
    assert_eq!(sw.w.distinct_rows().await, 50_000);
    sigterm_and_wait(&mut daemon);
    assert_eq!(sw.w.rows().await, 50_000);
    sw.finish(&[stream]).await;
}
