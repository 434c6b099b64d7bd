//! Against the local Redis (`SLUICE_TEST_REDIS`, default `127.0.0.1:6379`), each
//! test under a key prefix of its own, deleted at the end.

use std::sync::atomic::{AtomicU32, Ordering};

use sluice_plugin_sdk::rows::OwnedValue as V;
use sluice_plugin_sdk::tcp::TcpStream;
use sluice_plugin_sdk::testing::row_batch;
use sluice_plugin_sdk::{ColumnType, PluginError, Schema, Writer};

use super::RedisWriter;
use crate::resp::{Connection, Reply};

fn address() -> String {
    std::env::var("SLUICE_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into())
}

/// A client for the test's checks, and the test's key prefix (deleted on drop).
struct Redis {
    connection: Connection<TcpStream>,
    prefix: String,
}

impl Redis {
    fn new() -> Redis {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let prefix = format!(
            "sluice-test:{}:{}:",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Redis {
            connection: Connection::new(TcpStream::connect(&address()).unwrap()),
            prefix,
        }
    }

    fn call(&mut self, args: &[&str]) -> Reply {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.connection.call(&args).unwrap()
    }

    fn hash(&mut self, key: &str) -> Vec<(String, String)> {
        let key = format!("{}{key}", self.prefix);
        let Reply::Array(Some(items)) = self.call(&["HGETALL", &key]) else {
            panic!("HGETALL");
        };
        let mut pairs: Vec<(String, String)> = items
            .chunks(2)
            .map(|p| (text(&p[0]), text(&p[1])))
            .collect();
        pairs.sort();
        pairs
    }

    fn config(&self, extra: &str) -> String {
        format!(
            r#"{{"address":"{}","key_prefix":"{}"{extra}}}"#,
            address(),
            self.prefix
        )
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let pattern = format!("{}*", self.prefix);
        if let Reply::Array(Some(keys)) = self.call(&["KEYS", &pattern]) {
            for key in keys {
                self.call(&["DEL", &text(&key)]);
            }
        }
    }
}

fn text(reply: &Reply) -> String {
    match reply {
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        Reply::Int(n) => n.to_string(),
        other => panic!("not text: {other:?}"),
    }
}

fn schema() -> Schema {
    Schema::new("cdr", 1)
        .key("call_id", ColumnType::Text)
        .key("leg", ColumnType::Int32)
        .required("started_at", ColumnType::Timestamp)
        .column("cost", ColumnType::Numeric)
        .column("raw", ColumnType::Bytes)
}

fn row(id: &str, leg: i32, cost: Option<&str>) -> Vec<V> {
    vec![
        V::Text(id.into()),
        V::Int32(leg),
        V::Timestamp(1_795_773_601_000_001),
        cost.map_or(V::Null, |c| V::Numeric(c.into())),
        V::Bytes(b"\x00\xff".to_vec()),
    ]
}

#[test]
fn hash_mode_keeps_the_latest_state_and_is_idempotent() {
    let mut redis = Redis::new();
    let mut writer = RedisWriter::open(&redis.config(r#","ttl":"1h""#), &schema()).unwrap();
    let batch = row_batch(&[row("c-1", 1, Some("0.42")), row("a:b\\c", 2, None)]);
    assert_eq!(writer.write(&batch).unwrap(), []);
    assert_eq!(writer.write(&batch).unwrap(), []);
    let expected = |cost: Option<&str>| {
        let mut v = vec![
            ("call_id".to_owned(), "c-1".to_owned()),
            ("leg".into(), "1".into()),
            ("raw".into(), "\u{0}\u{fffd}".into()),
            ("started_at".into(), "2026-11-27T10:00:01.000001Z".into()),
        ];
        if let Some(c) = cost {
            v.push(("cost".into(), c.into()));
        }
        v.sort();
        v
    };
    assert_eq!(redis.hash("c-1:1"), expected(Some("0.42")));
    // The colon and the backslash of the key value are escaped.
    assert_eq!(redis.hash("a\\:b\\\\c:2").len(), 4);
    let ttl = text(&redis.call(&["PTTL", &format!("{}c-1:1", redis.prefix)]));
    assert!(ttl.parse::<i64>().unwrap() > 3_500_000, "{ttl}");
    // A later row whose cost is null removes the field.
    assert_eq!(
        writer.write(&row_batch(&[row("c-1", 1, None)])).unwrap(),
        []
    );
    assert_eq!(redis.hash("c-1:1"), expected(None));
}

#[test]
fn stream_mode_dedupes_on_the_key_within_the_ttl() {
    let mut redis = Redis::new();
    let stream = format!("{}stream", redis.prefix);
    let config = redis.config(&format!(
        r#","mode":"stream","stream":"{stream}","ttl":"10m","maxlen":1000"#
    ));
    let mut writer = RedisWriter::open(&config, &schema()).unwrap();
    let rows: Vec<Vec<V>> = (0..100)
        .map(|i| row(&format!("c-{i}"), 1, Some("1")))
        .collect();
    assert_eq!(writer.write(&row_batch(&rows)).unwrap(), []);
    // Redelivered, and in a new instance (as after a crash).
    assert_eq!(writer.write(&row_batch(&rows[..50])).unwrap(), []);
    let mut again = RedisWriter::open(&config, &schema()).unwrap();
    assert_eq!(again.write(&row_batch(&rows)).unwrap(), []);
    assert_eq!(text(&redis.call(&["XLEN", &stream])), "100");
    let Reply::Array(Some(entries)) = redis.call(&["XRANGE", &stream, "-", "+", "COUNT", "1"])
    else {
        panic!("XRANGE");
    };
    let Reply::Array(Some(entry)) = &entries[0] else {
        panic!("entry");
    };
    let Reply::Array(Some(fields)) = &entry[1] else {
        panic!("fields");
    };
    let fields: Vec<String> = fields.iter().map(text).collect();
    assert_eq!(fields[..4], ["call_id", "c-0", "leg", "1"]);
    let marker_ttl = text(&redis.call(&["PTTL", &format!("{}c-0:1", redis.prefix)]));
    assert!(marker_ttl.parse::<i64>().unwrap() > 500_000, "{marker_ttl}");

    // Without dedupe, every write adds entries (at-least-once).
    let plain = format!("{}plain", redis.prefix);
    let config = redis.config(&format!(
        r#","mode":"stream","stream":"{plain}","dedupe":false"#
    ));
    let mut writer = RedisWriter::open(&config, &schema()).unwrap();
    writer.write(&row_batch(&rows[..10])).unwrap();
    writer.write(&row_batch(&rows[..10])).unwrap();
    assert_eq!(text(&redis.call(&["XLEN", &plain])), "20");
}

#[test]
fn a_row_redis_refuses_is_rejected_and_the_rest_lands() {
    let mut redis = Redis::new();
    let taken = format!("{}c-2:1", redis.prefix);
    redis.call(&["SET", &taken, "a string, not a hash"]);
    let mut writer = RedisWriter::open(&redis.config(""), &schema()).unwrap();
    let rows: Vec<Vec<V>> = (0..5).map(|i| row(&format!("c-{i}"), 1, None)).collect();
    let rejected = writer.write(&row_batch(&rows)).unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].row, 2);
    assert!(
        rejected[0].reason.contains("WRONGTYPE"),
        "{}",
        rejected[0].reason
    );
    assert_eq!(redis.hash("c-4:1").len(), 4);
}

#[test]
fn a_lost_connection_is_replaced() {
    let mut redis = Redis::new();
    let mut writer = RedisWriter::open(&redis.config(""), &schema()).unwrap();
    let id = writer.client_id().unwrap();
    redis.call(&["CLIENT", "KILL", "ID", &id.to_string()]);
    assert_eq!(
        writer.write(&row_batch(&[row("c-1", 1, None)])).unwrap(),
        []
    );
    assert_ne!(writer.client_id(), Some(id));
    assert_eq!(redis.hash("c-1:1").len(), 4);
}

#[test]
fn errors_are_classified() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RedisWriter::open(&format!(r#"{{"address":"127.0.0.1:{port}"}}"#), &schema())
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::Retriable(_)), "{err:?}");
    let err = RedisWriter::open(
        &format!(r#"{{"address":"{}","password":"nope"}}"#, address()),
        &schema(),
    )
    .err()
    .unwrap();
    assert!(
        matches!(&err, PluginError::InvalidConfig(m) if m.contains("AUTH")),
        "{err:?}"
    );
    let err = RedisWriter::open(r#"{"mode":"hash","maxlen":5}"#, &schema())
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::InvalidConfig(_)), "{err:?}");
}
