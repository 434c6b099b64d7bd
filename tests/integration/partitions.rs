//! `postgres-writer` with `partition`: CDRs consumed by the daemon land in a table
//! partitioned by day (issue #15), premade and on demand, exactly once, with
//! out-of-range rows and retention handled as configured.

use std::time::Duration;

use sluice_tests::daemon::{Setup, eventually, header, json_to_toml_inline};
use sluice_tests::{TestSchema, cdr_json, cdr_source_config};

use super::daemon::{LONG, World, start, world};

/// Points the setup's pipeline at a `cdr` table partitioned as `partition` (the
/// JSON of the writer's `partition` key), with `consumers` consumers and the CDR
/// source of `version` (`extra_columns` as in [`cdr_source_config`]).
fn configure(setup: &Setup, partition: &str, consumers: u32, version: u32, extra_columns: &str) {
    let source = format!(
        "plugin = \"json-source\"\nconfig = {}",
        json_to_toml_inline(&cdr_source_config(version, extra_columns))
    );
    let writer_config = format!(
        r#"{{"connection":"warehouse","schema":"{}","table":"cdr","partition":{partition}}}"#,
        setup.pg_schema
    );
    let writer = format!(
        "plugin = \"postgres-writer\"\ngrants = {{ postgres = [\"warehouse\"] }}\nconfig = {}",
        json_to_toml_inline(&writer_config)
    );
    setup.write_config_plugins(&source, &writer);
    let path = setup.config_path();
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "connection = \"rabbit\"\n\n",
        &format!("connection = \"rabbit\"\nconsumers = {consumers}\n"),
        1,
    );
    std::fs::write(path, text).unwrap();
}

/// The UTC date `offset` days from the database's today, `YYYY-MM-DD`.
async fn day(db: &TestSchema, offset: i32) -> String {
    db.client
        .query_one(
            "SELECT to_char((now() AT TIME ZONE 'UTC')::date + $1::int, 'YYYY-MM-DD')",
            &[&offset],
        )
        .await
        .unwrap()
        .get(0)
}

/// The name the writer gives the partition of `day` (`YYYY-MM-DD`).
fn partition_of(day: &str) -> String {
    format!("cdr_p{}", day.replace('-', ""))
}

/// CDR `i`, started on `day` (10:mm:ss UTC).
fn cdr_on(day: &str, i: u64) -> String {
    cdr_json(i).replace("2026-11-27T", &format!("{day}T"))
}

/// The partitions of the test's `cdr` table, by name.
async fn partitions(db: &TestSchema) -> Vec<String> {
    db.client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = to_regclass($1) ORDER BY 1",
            &[&format!("{}.cdr", db.name)],
        )
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .unwrap_or_default()
}

/// Rows per partition, by partition name.
async fn rows_per_partition(db: &TestSchema) -> Vec<(String, i64)> {
    db.client
        .query(
            &format!(
                "SELECT c.relname::text, count(*) FROM {}.cdr t JOIN pg_class c ON c.oid = t.tableoid \
                 GROUP BY 1 ORDER BY 1",
                db.name
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Creates `cdr` partitioned by day as the writer would, without partitions.
async fn create_partitioned_table(db: &TestSchema) {
    db.client
        .batch_execute(&format!(
            "CREATE TABLE {s}.cdr (call_id text NOT NULL, caller text NOT NULL, callee text NOT NULL, \
             started_at timestamptz NOT NULL, duration_s integer NOT NULL, cell text, cost numeric, \
             call_type text, roaming boolean, PRIMARY KEY (call_id, started_at)) \
             PARTITION BY RANGE (started_at)",
            s = db.name
        ))
        .await
        .unwrap();
}

/// Creates the partition of the day `offset` days from today as the writer would
/// name it, with `rows` rows. Returns the day.
async fn create_day_partition(db: &TestSchema, offset: i32, rows: u64) -> String {
    let (day, next) = (self::day(db, offset).await, self::day(db, offset + 1).await);
    db.client
        .batch_execute(&format!(
            "CREATE TABLE {s}.{p} PARTITION OF {s}.cdr \
             FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
            s = db.name,
            p = partition_of(&day)
        ))
        .await
        .unwrap();
    for i in 0..rows {
        db.client
            .batch_execute(&format!(
                "INSERT INTO {s}.cdr (call_id, caller, callee, started_at, duration_s) \
                 VALUES ('old-{day}-{i}', 'a', 'b', '{day} 10:00:00+00', 1)",
                s = db.name
            ))
            .await
            .unwrap();
    }
    day
}

const DAILY: &str = r#"{"column":"started_at","interval":"1 day","premake":1,"accept":{"past":"7 days","future":"2 days"}}"#;

#[tokio::test]
async fn cdrs_over_five_days_land_in_five_partitions_exactly_once() {
    let w = world("part-days").await;
    configure(&w.setup, DAILY, 2, 1, "");
    let mut days = Vec::new();
    for offset in -3..=1 {
        days.push(day(&w.db, offset).await);
    }
    let mut daemon = start(&w.setup, "daemon");
    // Before any message: today's partition and `premake = 1` more.
    eventually(LONG, "the premade partitions", || async {
        partitions(&w.db).await.len() == 2
    })
    .await;
    assert_eq!(
        partitions(&w.db).await,
        [partition_of(&days[3]), partition_of(&days[4])]
    );
    // Every batch holds rows of all five days: three partitions are made on
    // demand, by two consumers at once.
    let bodies = |range: std::ops::Range<u64>| {
        let days = days.clone();
        range.map(move |i| cdr_on(&days[(i % 5) as usize], i))
    };
    w.broker.publish(&w.setup, bodies(0..5_000)).await;
    w.wait_rows(5_000, "5,000 rows").await;
    w.wait_drained().await;
    // Redelivered: every message again, and 500 new ones.
    w.broker.publish(&w.setup, bodies(0..5_500)).await;
    w.wait_rows(5_500, "5,500 rows").await;
    w.wait_drained().await;
    daemon.stop_cleanly();

    assert_eq!(w.broker.ready(&w.setup.queue).await, 0);
    assert_eq!(w.broker.ready(&w.setup.dead_queue).await, 0);
    assert_eq!(w.rows().await, 5_500);
    assert_eq!(w.distinct_rows().await, 5_500);
    let expected: Vec<(String, i64)> = days.iter().map(|d| (partition_of(d), 1_100)).collect();
    assert_eq!(rows_per_partition(&w.db).await, expected);
    let key: String = w
        .db
        .client
        .query_one(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'p'",
            &[&format!("{}.cdr", w.db.name)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(key, "PRIMARY KEY (call_id, started_at)");
    let log = daemon.log();
    assert!(
        log.contains("partitioned by range of \\\"started_at\\\" every 1 day")
            || log.contains("partitioned by range of \"started_at\" every 1 day"),
        "{log}"
    );
    w.finish().await;
}

#[tokio::test]
async fn two_daemons_creating_the_same_partitions_at_once_both_succeed() {
    let mut w = world("part-two").await;
    // Two daemons on one config: each picks its own admin port.
    w.setup.admin_port = 0;
    let config = r#"{"column":"started_at","interval":"1 day","premake":3,"accept":{"past":"10 days","future":"4 days"}}"#;
    configure(&w.setup, config, 3, 1, "");
    let mut days = Vec::new();
    for offset in -6..=-1 {
        days.push(day(&w.db, offset).await);
    }
    // The messages wait in the queue, so that both daemons start on batches of
    // the same six days at once (and both premake the same four partitions).
    let bodies: Vec<String> = (0..12_000u64)
        .map(|i| cdr_on(&days[(i % 6) as usize], i))
        .collect();
    w.broker.publish(&w.setup, bodies).await;
    let mut a = start(&w.setup, "a");
    let mut b = start(&w.setup, "b");
    w.wait_rows(12_000, "every row").await;
    w.wait_drained().await;
    assert!(a.exited().is_none(), "{}", a.log());
    assert!(b.exited().is_none(), "{}", b.log());
    a.stop_cleanly();
    b.stop_cleanly();

    for log in [a.log(), b.log()] {
        assert!(!log.contains("plugins not ready"), "{log}");
        assert!(!log.contains("creating partition"), "{log}");
    }
    assert_eq!(w.broker.ready(&w.setup.dead_queue).await, 0);
    assert_eq!(w.rows().await, 12_000);
    assert_eq!(w.distinct_rows().await, 12_000);
    let mut expected: Vec<(String, i64)> = days.iter().map(|d| (partition_of(d), 2_000)).collect();
    expected.sort();
    assert_eq!(rows_per_partition(&w.db).await, expected);
    // Six made on demand, today and three more premade: no duplicate, none missing.
    let mut all = expected.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    for offset in 0..=3 {
        all.push(partition_of(&day(&w.db, offset).await));
    }
    all.sort();
    assert_eq!(partitions(&w.db).await, all);
    w.finish().await;
}

/// 1,000 CDRs of today, and two from switches with wrong clocks.
async fn today_and_two_skewed(w: &World) -> Vec<String> {
    let today = day(&w.db, 0).await;
    let mut bodies: Vec<String> = (0..1_000).map(|i| cdr_on(&today, i)).collect();
    bodies.push(cdr_on("1970-01-01", 1_000));
    bodies.push(cdr_on("2099-06-01", 1_001));
    bodies
}

#[tokio::test]
async fn rows_outside_the_accepted_times_are_dead_lettered_with_the_reason() {
    let w = world("part-reject").await;
    let config = r#"{"column":"started_at","interval":"1 day","premake":0,"accept":{"past":"7 days","future":"1 day","outside":"reject"}}"#;
    configure(&w.setup, config, 1, 1, "");
    let bodies = today_and_two_skewed(&w).await;
    w.broker.publish(&w.setup, bodies).await;
    let mut daemon = start(&w.setup, "daemon");
    w.wait_rows(1_000, "today's rows").await;
    w.wait_dead_letters(2, "the two skewed rows").await;
    daemon.stop_cleanly();

    assert_eq!(w.rows().await, 1_000);
    let dead = w.broker.drain(&w.setup.dead_queue).await;
    let mut bodies: Vec<&str> = dead.iter().map(|(b, _)| b.as_str()).collect();
    bodies.sort();
    assert!(bodies[0].contains("1970-01-01T"), "{bodies:?}");
    assert!(bodies[1].contains("2099-06-01T"), "{bodies:?}");
    for (_, headers) in &dead {
        let reason = header(headers, "x-sluice-reason");
        assert!(
            reason.contains("column started_at:")
                && reason.contains(
                    "is outside the times this table accepts (7 days before to 1 day after"
                ),
            "{reason}"
        );
    }
    // No partition for 1970 or 2099: only today's.
    assert_eq!(
        partitions(&w.db).await,
        [partition_of(&day(&w.db, 0).await)]
    );
    w.finish().await;
}

#[tokio::test]
async fn rows_outside_the_accepted_times_go_to_the_default_partition_when_configured() {
    let w = world("part-default").await;
    let config = r#"{"column":"started_at","interval":"1 day","premake":0,"accept":{"past":"7 days","future":"1 day","outside":"default"}}"#;
    configure(&w.setup, config, 1, 1, "");
    let bodies = today_and_two_skewed(&w).await;
    w.broker.publish(&w.setup, bodies).await;
    let mut daemon = start(&w.setup, "daemon");
    w.wait_rows(1_002, "every row").await;
    w.wait_drained().await;
    daemon.stop_cleanly();

    assert_eq!(w.broker.ready(&w.setup.dead_queue).await, 0);
    let today = partition_of(&day(&w.db, 0).await);
    assert_eq!(
        rows_per_partition(&w.db).await,
        [("cdr_default".to_string(), 2), (today.clone(), 1_000)]
    );
    assert_eq!(partitions(&w.db).await, ["cdr_default".to_string(), today]);
    w.finish().await;
}

#[tokio::test]
async fn retention_drops_an_old_partition_while_writes_continue() {
    let w = world("part-retention").await;
    create_partitioned_table(&w.db).await;
    let old = create_day_partition(&w.db, -20, 3).await;
    let kept = create_day_partition(&w.db, -5, 2).await;
    let today = day(&w.db, 0).await;
    let config = r#"{"column":"started_at","interval":"1 day","premake":0,"retention":"10 days","accept":{"past":"2 days","future":"1 day"}}"#;
    configure(&w.setup, config, 2, 1, "");
    let mut daemon = start(&w.setup, "daemon");
    w.broker
        .publish(&w.setup, (0..2_000).map(|i| cdr_on(&today, i)))
        .await;
    eventually(LONG, "the old partition dropped", || async {
        !partitions(&w.db).await.contains(&partition_of(&old))
    })
    .await;
    w.broker
        .publish(&w.setup, (2_000..4_000).map(|i| cdr_on(&today, i)))
        .await;
    w.wait_rows(4_002, "every new row and the kept partition's")
        .await;
    w.wait_drained().await;
    daemon.stop_cleanly();

    assert_eq!(
        rows_per_partition(&w.db).await,
        [(partition_of(&kept), 2), (partition_of(&today), 4_000)]
    );
    // The dropped partition is gone as a table, not only detached.
    let gone: Option<String> =
        w.db.client
            .query_one(
                "SELECT to_regclass($1)::text",
                &[&format!("{}.{}", w.db.name, partition_of(&old))],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(gone, None);
    let log = daemon.log();
    let line = format!(
        "dropped partition \\\"{}\\\".\\\"{}\\\"",
        w.db.name,
        partition_of(&old)
    );
    let plain = format!(
        "dropped partition \"{}\".\"{}\"",
        w.db.name,
        partition_of(&old)
    );
    assert!(log.contains(&line) || log.contains(&plain), "{log}");
    assert!(log.contains("older than the retention of 10 days"), "{log}");
    w.finish().await;
}

/// Waits for the daemon's log to say `what`, and shows it when it does not.
async fn wait_log(daemon: &sluice_tests::daemon::Daemon, what: &str) {
    let limit = Duration::from_secs(60);
    eventually(limit, what, || async { daemon.log().contains(what) }).await;
}

/// Waits until the queue holds `n` ready messages (unacked ones come back when
/// the daemon is gone).
async fn wait_ready(w: &World, n: u32) {
    eventually(LONG, "the messages back in the queue", || async {
        w.broker.ready(&w.setup.queue).await == n
    })
    .await;
}

#[tokio::test]
async fn a_plain_table_under_a_partitioned_config_is_refused_with_what_to_do() {
    let w = world("part-plain").await;
    w.create_table_refusing_777().await;
    configure(&w.setup, DAILY, 1, 1, "");
    w.broker.publish(&w.setup, super::daemon::cdrs(0..10)).await;
    let daemon = start(&w.setup, "daemon");
    wait_log(
        &daemon,
        "exists as a plain table, but this writer's config partitions it by",
    )
    .await;
    let log = daemon.log();
    assert!(log.contains("Sluice does not convert tables"), "{log}");
    assert!(
        log.contains("remove `partition` from the writer's config"),
        "{log}"
    );
    drop(daemon);
    // Nothing written, nothing converted, nothing lost.
    assert_eq!(w.rows().await, 0);
    wait_ready(&w, 10).await;
    let kind: String =
        w.db.client
            .query_one(
                "SELECT relkind::text FROM pg_class WHERE oid = to_regclass($1)",
                &[&format!("{}.cdr", w.db.name)],
            )
            .await
            .unwrap()
            .get(0);
    assert_eq!(kind, "r");
    w.finish().await;
}

#[tokio::test]
async fn a_partitioned_table_under_a_plain_config_is_refused_with_what_to_do() {
    let w = world("part-reverse").await;
    create_partitioned_table(&w.db).await;
    // The setup's own config: the writer without `partition`.
    w.broker.publish(&w.setup, super::daemon::cdrs(0..10)).await;
    let daemon = start(&w.setup, "daemon");
    wait_log(
        &daemon,
        "is partitioned (by started_at), but this writer's config has no `partition`",
    )
    .await;
    drop(daemon);
    assert_eq!(w.rows().await, 0);
    wait_ready(&w, 10).await;
    w.finish().await;
}

#[tokio::test]
async fn a_new_nullable_column_appears_in_every_partition() {
    let w = world("part-evolve").await;
    configure(&w.setup, DAILY, 1, 1, "");
    let mut days = Vec::new();
    for offset in -2..=0 {
        days.push(day(&w.db, offset).await);
    }
    let v1 = days.clone();
    w.broker
        .publish(
            &w.setup,
            (0..300u64).map(move |i| cdr_on(&v1[(i % 3) as usize], i)),
        )
        .await;
    let mut daemon = start(&w.setup, "v1");
    w.wait_rows(300, "the version 1 rows").await;
    w.wait_drained().await;
    daemon.stop_cleanly();

    configure(&w.setup, DAILY, 1, 2, r#",{"name":"imsi","type":"text"}"#);
    let v2 = days.clone();
    w.broker
        .publish(
            &w.setup,
            (300..600u64).map(move |i| {
                cdr_on(&v2[(i % 3) as usize], i).replacen(
                    '{',
                    &format!(r#"{{"imsi":"20801{i:010}","#),
                    1,
                )
            }),
        )
        .await;
    let mut daemon = start(&w.setup, "v2");
    w.wait_rows(600, "the version 2 rows").await;
    w.wait_drained().await;
    daemon.stop_cleanly();

    // Today's, tomorrow's (premade) and the two past days'.
    let all = partitions(&w.db).await;
    assert_eq!(all.len(), 4, "{all:?}");
    for partition in &all {
        let has: bool = w
            .db
            .client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
                 WHERE table_schema = $1 AND table_name = $2 AND column_name = 'imsi' AND data_type = 'text')",
                &[&w.db.name, partition],
            )
            .await
            .unwrap()
            .get(0);
        assert!(has, "partition {partition} has no column imsi");
    }
    let with_imsi: Vec<(String, i64)> = w
        .db
        .client
        .query(
            &format!(
                "SELECT c.relname::text, count(t.imsi) FROM {}.cdr t JOIN pg_class c ON c.oid = t.tableoid \
                 GROUP BY 1 ORDER BY 1",
                w.db.name
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(String, i64)> = days.iter().map(|d| (partition_of(d), 100)).collect();
    assert_eq!(with_imsi, expected);
    assert_eq!(w.rows().await, 600);
    w.finish().await;
}
