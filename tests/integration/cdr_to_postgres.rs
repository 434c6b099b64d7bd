//! `json-source` decoding CDRs and `postgres-writer` landing them in a real
//! Postgres, through the runtime, as the daemon runs them.

use std::sync::Arc;

use sluice::capabilities::Grants;
use sluice::capabilities::postgres::PostgresGrant;
use sluice::plugin_runtime::{
    CallError, DecodedBatch, Message, MessageOutcome, PluginRuntime, SourceInstance, WriterInstance,
};
use sluice_tests::{TestSchema, cdr_json, cdr_source_config, plugin, postgres_url, unique_name};

use super::{message, runtime};

struct Plugins {
    rt: Arc<PluginRuntime>,
    source: Arc<sluice::plugin_runtime::LoadedPlugin>,
    writer: Arc<sluice::plugin_runtime::LoadedPlugin>,
}

async fn plugins() -> Plugins {
    let rt = runtime();
    let source = rt.load(&plugin("json-source")).await.unwrap().into();
    let writer = rt.load(&plugin("postgres-writer")).await.unwrap().into();
    Plugins { rt, source, writer }
}

/// A grant whose connections carry a unique application name, so a test can find
/// (and kill) its own backends and no one else's.
fn grant(app: &str) -> Grants {
    let url = format!("{}?application_name={app}", postgres_url());
    Grants::none().with_postgres("main", PostgresGrant::from_url(&url).unwrap())
}

impl Plugins {
    fn source(&self, config: String) -> SourceInstance {
        SourceInstance::new(self.rt.clone(), self.source.clone(), "cdr-test", config)
    }

    async fn writer(
        &self,
        source: &mut SourceInstance,
        schema: &TestSchema,
        grants: Grants,
    ) -> WriterInstance {
        let config = format!(r#"{{"connection":"main","schema":"{}"}}"#, schema.name);
        let sluice_schema = source.schema().await.unwrap();
        WriterInstance::new(
            self.rt.clone(),
            self.writer.clone(),
            "cdr-test",
            config,
            sluice_schema,
            grants,
        )
    }
}

fn cdrs(range: std::ops::Range<u64>) -> Vec<Message> {
    range.map(|i| message(cdr_json(i))).collect()
}

fn rows_per_message(decoded: &DecodedBatch) -> Vec<u32> {
    decoded
        .outcomes
        .iter()
        .map(|o| match o {
            MessageOutcome::Rows(n) => *n,
            MessageOutcome::Rejected(r) => panic!("unexpected rejection: {r}"),
            MessageOutcome::Partial(p) => panic!("unexpected record rejections: {p:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_cdr_batch_lands_in_postgres_with_every_field() {
    let p = plugins().await;
    let db = TestSchema::create().await.unwrap();
    let mut source = p.source(cdr_source_config(1, ""));
    let mut writer = p.writer(&mut source, &db, grant(&unique_name("app"))).await;

    let decoded = source.decode(&cdrs(0..500)).await.unwrap();
    assert_eq!(rows_per_message(&decoded), vec![1; 500]);
    let rejected = writer.write(&decoded.rows).await.unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(db.count("cdr").await.unwrap(), 500);

    let row = db
        .client
        .query_one(
            &format!(
                "SELECT caller, callee, started_at::text, duration_s, cell, cost::text, call_type, roaming \
                 FROM {}.cdr WHERE call_id = 'c-000000000123'",
                db.name
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "+33610000123");
    assert_eq!(row.get::<_, String>(1), "+33620000861");
    assert_eq!(row.get::<_, String>(2), "2026-11-27 10:02:03+00");
    assert_eq!(row.get::<_, i32>(3), 123);
    assert_eq!(row.get::<_, String>(4), "FR-PAR-0123");
    assert_eq!(row.get::<_, String>(5), "3.23");
    assert_eq!(row.get::<_, String>(6), "voice");
    assert!(!row.get::<_, bool>(7));
    db.drop_now().await.unwrap();
}

#[tokio::test]
async fn writing_the_same_rows_again_leaves_one_copy_of_each() {
    let p = plugins().await;
    let db = TestSchema::create().await.unwrap();
    let mut source = p.source(cdr_source_config(1, ""));
    let mut writer = p.writer(&mut source, &db, grant(&unique_name("app"))).await;

    let first = source.decode(&cdrs(0..300)).await.unwrap();
    writer.write(&first.rows).await.unwrap();
    // A redelivery of the same batch, then a batch that half overlaps.
    writer.write(&first.rows).await.unwrap();
    let overlapping = source.decode(&cdrs(150..450)).await.unwrap();
    let rejected = writer.write(&overlapping.rows).await.unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");
    assert_eq!(db.count("cdr").await.unwrap(), 450);
    let distinct: i64 = db
        .client
        .query_one(
            &format!("SELECT count(DISTINCT call_id) FROM {}.cdr", db.name),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, 450);
    db.drop_now().await.unwrap();
}

#[tokio::test]
async fn malformed_messages_are_rejected_with_the_field_named() {
    let p = plugins().await;
    let mut source = p.source(cdr_source_config(1, ""));
    let good = cdr_json(1);
    let missing_id = good.replace(r#""id":"c-000000000001","#, "");
    let bad_duration = good.replace(r#""duration":1,"#, r#""duration":"abc","#);
    let null_caller = good.replace(r#""caller":"+33610000001""#, r#""caller":null"#);
    let batch = vec![
        message(good.clone()),
        message("not json at all"),
        message(missing_id),
        message(bad_duration),
        message(null_caller),
        message(r#"[1, 2, 3]"#),
    ];
    let decoded = source.decode(&batch).await.unwrap();
    assert_eq!(decoded.outcomes[0], MessageOutcome::Rows(1));
    assert_eq!(
        decoded.rows.count, 1,
        "rejected messages leave no rows behind"
    );
    let reason = |i: usize| match &decoded.outcomes[i] {
        MessageOutcome::Rejected(r) => r.clone(),
        other => panic!("message {i} was not rejected: {other:?}"),
    };
    assert!(reason(1).contains("not valid JSON"), "{}", reason(1));
    assert!(
        reason(2).contains("call.id") && reason(2).contains("call_id"),
        "{}",
        reason(2)
    );
    assert!(
        reason(3).contains("duration") && reason(3).contains("abc"),
        "{}",
        reason(3)
    );
    assert!(reason(4).contains("caller"), "{}", reason(4));
    assert!(reason(5).contains("object"), "{}", reason(5));
}

#[tokio::test]
async fn a_source_version_with_a_new_nullable_column_adds_it_to_the_table() {
    let p = plugins().await;
    let db = TestSchema::create().await.unwrap();
    let app = unique_name("app");
    let mut v1 = p.source(cdr_source_config(1, ""));
    let mut writer = p.writer(&mut v1, &db, grant(&app)).await;
    writer
        .write(&v1.decode(&cdrs(0..10)).await.unwrap().rows)
        .await
        .unwrap();

    let mut v2 = p.source(cdr_source_config(2, r#",{"name":"imsi","type":"text"}"#));
    let mut writer = p.writer(&mut v2, &db, grant(&app)).await;
    let messages: Vec<Message> = (10..20)
        .map(|i| message(cdr_json(i).replacen('{', &format!(r#"{{"imsi":"20801{i:010}","#), 1)))
        .collect();
    let rejected = writer
        .write(&v2.decode(&messages).await.unwrap().rows)
        .await
        .unwrap();
    assert!(rejected.is_empty(), "{rejected:?}");

    let counts = db
        .client
        .query_one(
            &format!("SELECT count(imsi), count(*) FROM {}.cdr", db.name),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (counts.get::<_, i64>(0), counts.get::<_, i64>(1)),
        (10, 20),
        "new rows fill it, old rows are null"
    );
    db.drop_now().await.unwrap();
}

#[tokio::test]
async fn rows_the_database_refuses_are_rejected_and_the_rest_land() {
    let p = plugins().await;
    let db = TestSchema::create().await.unwrap();
    let mut source = p.source(cdr_source_config(1, ""));
    let mut writer = p.writer(&mut source, &db, grant(&unique_name("app"))).await;
    writer.open().await.unwrap();
    db.client
        .batch_execute(&format!(
            "ALTER TABLE {}.cdr ADD CONSTRAINT short_calls CHECK (duration_s < 100)",
            db.name
        ))
        .await
        .unwrap();

    // Durations are i % 3600: rows 100..=119 break the check.
    let decoded = source.decode(&cdrs(80..120)).await.unwrap();
    let rejected = writer.write(&decoded.rows).await.unwrap();
    let rows: Vec<u32> = rejected.iter().map(|r| r.row).collect();
    assert_eq!(rows, (20..40).collect::<Vec<u32>>());
    assert!(
        rejected[0].reason.contains("short_calls"),
        "{}",
        rejected[0].reason
    );
    assert_eq!(db.count("cdr").await.unwrap(), 20);
    db.drop_now().await.unwrap();
}

#[tokio::test]
async fn a_writer_without_the_postgres_grant_is_denied() {
    let p = plugins().await;
    let db = TestSchema::create().await.unwrap();
    let mut source = p.source(cdr_source_config(1, ""));
    let mut writer = p.writer(&mut source, &db, Grants::none()).await;
    let err = writer.open().await.unwrap_err();
    assert!(matches!(err, CallError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("`main` is not granted"), "{err}");
    db.drop_now().await.unwrap();
}

#[tokio::test]
async fn a_killed_backend_is_retriable_and_the_next_write_lands_once() {
    let p = plugins().await;
    let db = TestSchema::create().await.unwrap();
    let app = unique_name("app");
    let mut source = p.source(cdr_source_config(1, ""));
    let mut writer = p.writer(&mut source, &db, grant(&app)).await;
    let batch = source.decode(&cdrs(0..100)).await.unwrap();
    writer.write(&batch.rows).await.unwrap();

    let killed: i64 = db
        .client
        .query_one("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", &[&app])
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    let next = source.decode(&cdrs(100..200)).await.unwrap();
    let err = writer.write(&next.rows).await.unwrap_err();
    assert!(err.is_retriable(), "{err}");
    // The host retries the same batch: a fresh instance reconnects and lands it.
    let rejected = writer.write(&next.rows).await.unwrap();
    assert!(rejected.is_empty());
    assert_eq!(db.count("cdr").await.unwrap(), 200);
    db.drop_now().await.unwrap();
}
