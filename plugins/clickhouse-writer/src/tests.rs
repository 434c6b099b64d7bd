//! Against the local ClickHouse (`SLUICE_TEST_CLICKHOUSE`, default
//! `http://127.0.0.1:8123`; `scripts/services.sh` starts it), each test in a
//! database of its own, dropped at the end.

use std::sync::atomic::{AtomicU32, Ordering};

use sluice_plugin_sdk::http::Request;
use sluice_plugin_sdk::rows::OwnedValue as V;
use sluice_plugin_sdk::testing::row_batch;
use sluice_plugin_sdk::{ColumnType, PluginError, RowRejection, Schema, Writer};

use super::ClickHouseWriter;

fn url() -> String {
    std::env::var("SLUICE_TEST_CLICKHOUSE").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// Runs a statement; returns the answer's text, panics on an error answer.
fn ch(sql: &str) -> String {
    let response = Request::post(format!("{}/", url()))
        .body(sql)
        .send()
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert!(response.is_success(), "{sql}: {}", response.text());
    response.text().into_owned()
}

/// A database for one test, dropped when it goes.
struct TestDb(String);

impl TestDb {
    fn new() -> TestDb {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        TestDb(format!(
            "sluice_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    fn config(&self) -> String {
        format!(r#"{{"url":"{}","database":"{}"}}"#, url(), self.0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        ch(&format!("DROP DATABASE IF EXISTS `{}`", self.0));
    }
}

fn every_type() -> Schema {
    Schema::new("cdr", 1)
        .key("call_id", ColumnType::Text)
        .key("leg", ColumnType::Int32)
        .required("started_at", ColumnType::Timestamp)
        .column("duration", ColumnType::Int64)
        .column("cost", ColumnType::Numeric)
        .column("score", ColumnType::Float64)
        .column("roaming", ColumnType::Boolean)
        .column("raw", ColumnType::Bytes)
        .column("day", ColumnType::Date)
        .column("id", ColumnType::Uuid)
        .column("extra", ColumnType::Json)
}

fn row(i: i32) -> Vec<V> {
    vec![
        V::Text(format!("c-{i}\ttab\nline\\")),
        V::Int32(i),
        V::Timestamp(1_795_773_601_123_456 + i64::from(i)),
        if i % 2 == 0 {
            V::Null
        } else {
            V::Int64(-(1 << 40))
        },
        V::Numeric("123456789012345678901234567890.000000000001".into()),
        V::Float64(0.1 + f64::from(i)),
        V::Boolean(i % 3 == 0),
        V::Bytes(vec![0, 255, b'\t', b'\n', i as u8]),
        V::Date(-1),
        V::Uuid([
            0x0d, 0x2d, 0x8a, 0x3c, 0x11, 0x11, 0x42, 0x22, 0x83, 0x33, 0x44, 0x44, 0x55, 0x55,
            0x66, i as u8,
        ]),
        V::Json(r#"{"a":[1,2]}"#.into()),
    ]
}

#[test]
fn creates_the_table_and_lands_every_type_without_loss_once() {
    let db = TestDb::new();
    let schema = every_type();
    let mut writer = ClickHouseWriter::open(&db.config(), &schema).unwrap();
    let rows: Vec<Vec<V>> = (0..50).map(row).collect();
    assert_eq!(writer.write(&row_batch(&rows)).unwrap(), []);
    // A redelivery of the same rows, then some of them again.
    assert_eq!(writer.write(&row_batch(&rows)).unwrap(), []);
    assert_eq!(writer.write(&row_batch(&rows[..10])).unwrap(), []);

    let t = format!("`{}`.cdr", db.0);
    assert_eq!(ch(&format!("SELECT count() FROM {t} FINAL")), "50\n");
    let types = ch(&format!(
        "SELECT name, type FROM system.columns WHERE database = '{}' AND table = 'cdr' FORMAT TabSeparated",
        db.0
    ));
    let v = writer.version();
    let (ts, date) = if v.has_datetime64() {
        ("DateTime64(6, \\'UTC\\')", "Nullable(Date32)")
    } else {
        ("Int64", "Nullable(Int32)")
    };
    assert_eq!(
        types,
        format!(
            "call_id\tString\nleg\tInt32\nstarted_at\t{ts}\nduration\tNullable(Int64)\ncost\tNullable(String)\n\
             score\tNullable(Float64)\nroaming\tNullable(UInt8)\nraw\tNullable(String)\nday\t{date}\n\
             id\tNullable(UUID)\nextra\tNullable(String)\n"
        )
    );
    // Values read back exactly: text with escapes, the numeric literal, the bytes,
    // the float's bits, the microseconds, the uuid.
    let answer = ch(&format!(
        "SELECT call_id, leg, {}, duration, cost, hex(reinterpretAsString(score)), roaming, hex(raw), {}, id, extra \
         FROM {t} FINAL WHERE leg = 7 FORMAT TabSeparated",
        if v.has_datetime64() {
            "toUnixTimestamp64Micro(started_at)"
        } else {
            "started_at"
        },
        if v.has_date32() {
            "toInt32(day)"
        } else {
            "day"
        },
    ));
    assert_eq!(
        answer,
        format!(
            "c-7\\ttab\\nline\\\\\t7\t{}\t{}\t123456789012345678901234567890.000000000001\t{}\t0\t00FF090A07\t-1\t\
             0d2d8a3c-1111-4222-8333-444455556607\t{{\"a\":[1,2]}}\n",
            1_795_773_601_123_456i64 + 7,
            -(1i64 << 40),
            (0.1f64 + 7.0)
                .to_le_bytes()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<String>()
        )
    );
    assert_eq!(
        ch(&format!(
            "SELECT count() FROM {t} FINAL WHERE duration IS NULL"
        )),
        "25\n"
    );
}

#[test]
fn refused_rows_are_found_and_rejected_the_rest_lands() {
    let db = TestDb::new();
    ch(&format!("CREATE DATABASE `{}`", db.0));
    // A check the way ClickHouse 18 can have one: a default that throws.
    ch(&format!(
        "CREATE TABLE `{}`.calls (call_id String, seconds Int32, checked UInt8 DEFAULT throwIf(seconds < 0)) \
         ENGINE = ReplacingMergeTree ORDER BY (call_id)",
        db.0
    ));
    let schema = Schema::new("calls", 1)
        .key("call_id", ColumnType::Text)
        .required("seconds", ColumnType::Int32);
    let mut writer = ClickHouseWriter::open(&db.config(), &schema).unwrap();
    let rows: Vec<Vec<V>> = (0..20)
        .map(|i| {
            let seconds = if i == 3 || i == 17 { -1 } else { i };
            vec![V::Text(format!("c-{i}")), V::Int32(seconds)]
        })
        .collect();
    let rejected = writer.write(&row_batch(&rows)).unwrap();
    assert_eq!(
        rejected.iter().map(|r| r.row).collect::<Vec<_>>(),
        [3, 17],
        "{rejected:?}"
    );
    assert!(
        rejected[0].reason.contains("Code: 395") && rejected[0].reason.contains("throwIf"),
        "{}",
        rejected[0].reason
    );
    assert_eq!(
        ch(&format!(
            "SELECT count(), sum(seconds) FROM `{}`.calls FINAL",
            db.0
        )),
        format!("18\t{}\n", (0..20).sum::<i32>() - 3 - 17)
    );
}

#[test]
fn a_new_nullable_column_is_added_and_a_changed_type_refused() {
    let db = TestDb::new();
    let v1 = Schema::new("cdr", 1).key("call_id", ColumnType::Text);
    ClickHouseWriter::open(&db.config(), &v1).unwrap();
    let v2 = v1.clone().column("cell", ColumnType::Text);
    let mut writer = ClickHouseWriter::open(&db.config(), &v2).unwrap();
    let batch = row_batch(&[vec![V::Text("a".into()), V::Text("FR-1".into())]]);
    assert_eq!(writer.write(&batch).unwrap(), []);
    assert_eq!(
        ch(&format!("SELECT cell FROM `{}`.cdr FINAL", db.0)),
        "FR-1\n"
    );

    let changed = Schema::new("cdr", 3)
        .key("call_id", ColumnType::Text)
        .column("cell", ColumnType::Int64);
    let Err(PluginError::InvalidConfig(message)) = ClickHouseWriter::open(&db.config(), &changed)
    else {
        panic!("a changed column type must be refused");
    };
    assert!(
        message.contains("column `cell` is Nullable(String) in the table, the schema's int64 column needs Nullable(Int64)"),
        "{message}"
    );
    let rekeyed = Schema::new("cdr", 4).key("cell", ColumnType::Text);
    let Err(PluginError::InvalidConfig(message)) = ClickHouseWriter::open(&db.config(), &rekeyed)
    else {
        panic!("another sorting key must be refused");
    };
    assert!(
        message.contains("the table is ordered by (call_id), the schema's key is (cell)"),
        "{message}"
    );
}

#[test]
fn out_of_range_values_are_rejected_before_sending_on_new_servers() {
    let db = TestDb::new();
    let schema = Schema::new("t", 1)
        .key("id", ColumnType::Int64)
        .required("at", ColumnType::Timestamp);
    let mut writer = ClickHouseWriter::open(&db.config(), &schema).unwrap();
    let far = 400 * 365 * 86_400_000_000i64;
    let rejected = writer
        .write(&row_batch(&[
            vec![V::Int64(1), V::Timestamp(0)],
            vec![V::Int64(2), V::Timestamp(far)],
        ]))
        .unwrap();
    if writer.version().has_datetime64() {
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].row, 1);
    } else {
        // Int64 microseconds hold any timestamp.
        assert_eq!(rejected, Vec::<RowRejection>::new());
        assert_eq!(
            ch(&format!("SELECT at FROM `{}`.t FINAL WHERE id = 2", db.0)),
            format!("{far}\n")
        );
    }
}

#[test]
fn errors_are_classified() {
    let schema = Schema::new("t", 1).key("id", ColumnType::Int64);
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = ClickHouseWriter::open(&format!(r#"{{"url":"http://127.0.0.1:{port}"}}"#), &schema)
        .err()
        .unwrap();
    assert!(
        matches!(&err, PluginError::Retriable(m) if m.contains(&format!("http://127.0.0.1:{port}/"))),
        "{err:?}"
    );
    let err = ClickHouseWriter::open(
        &format!(
            r#"{{"url":"{}","user":"default","password":"wrong"}}"#,
            url()
        ),
        &schema,
    )
    .err()
    .unwrap();
    assert!(
        matches!(&err, PluginError::InvalidConfig(m) if m.contains("Code: 193")),
        "{err:?}"
    );
    let err = ClickHouseWriter::open(r#"{"url":"http://h","nope":1}"#, &schema)
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::InvalidConfig(_)), "{err:?}");
}
