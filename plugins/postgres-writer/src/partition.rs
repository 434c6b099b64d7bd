//! Time-partitioned tables: the `partition` configuration, the ranges and names
//! of partitions, making them ahead of time and on demand, and retiring old ones.
//!
//! ```toml
//! [pipelines.writers.config]
//! connection = "main"
//! table = "cdr"
//! partition = { column = "started_at", interval = "1 day", premake = 3, retention = "90 days", accept = { past = "7 days", future = "1 day", outside = "reject" } }
//! ```
//!
//! - `column` (required): a `timestamp` or `date` column of the schema, not
//!   nullable. The table is created `PARTITION BY RANGE (column)`. Postgres
//!   requires the partition column in every unique index of a partitioned table,
//!   so the primary key is the schema's key columns **plus** this column, and a
//!   row is written once per (key, column value): the same key at two times is
//!   two rows. Sources must send the same time for a redelivered message (CDRs do).
//! - `interval` (required): `"N hours"` (N dividing 24; timestamp columns only) or
//!   `"N days"`. Ranges are aligned on the Unix epoch, in UTC. A partition is named
//!   after the start of its range: `cdr_p20261127` (days), `cdr_p2026112713` (hours).
//! - `premake` (default 2): how many intervals after the current one are created
//!   at `open`. The others are created when a batch holds a row for them.
//! - `accept.past`, `accept.future` (defaults `"7 days"`, `"1 day"`): how far
//!   before and after the database's clock a row's time may be. A switch with a
//!   wrong clock must not create thousands of partitions. `accept.outside`:
//!   `"reject"` (default: the row is rejected, so dead-lettered with the reason)
//!   or `"default"` (it lands in the default partition `cdr_default`).
//! - `retention` (default: none): partitions whose whole range is older than this
//!   are dropped (or with `expired = "detach"`, detached and kept as plain
//!   tables), checked at most once per interval by each writer, and logged. It
//!   must be longer than `accept.past` plus one interval, or rows still accepted
//!   would land in partitions about to be dropped.

use std::collections::BTreeSet;

use serde::Deserialize;
use sluice_plugin_sdk::config::{self, Problems};
use sluice_plugin_sdk::postgres::{Connection, PgError, PgValue};
use sluice_plugin_sdk::time::{civil_from_days, write_date};
use sluice_plugin_sdk::{ColumnType, Schema};

use crate::sql::{TableName, quote_ident};

/// The longest suffix a partition name adds to the table's name: `_p2026112713`.
pub const PARTITION_NAME_SUFFIX_MAX: usize = "_p2026112713".len();

const MICROS_PER_HOUR: i64 = 3_600_000_000;
const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// A length of time as the configuration writes it: `"N hours"` or `"N days"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// How many hours or days.
    pub count: u32,
    /// Whether the unit is the day (else the hour).
    pub days: bool,
}

impl std::str::FromStr for Span {
    type Err = String;

    /// Reads `"1 day"`, `"90 days"`, `"6 hours"`.
    fn from_str(text: &str) -> Result<Span, String> {
        let bad = || format!("{text:?} is not a length of time like \"6 hours\" or \"90 days\"");
        let mut words = text.split_whitespace();
        let (Some(count), Some(unit), None) = (words.next(), words.next(), words.next()) else {
            return Err(bad());
        };
        let count: u32 = count.parse().map_err(|_| bad())?;
        let days = match unit {
            "day" | "days" => true,
            "hour" | "hours" => false,
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("{text:?} is zero"));
        }
        Ok(Span { count, days })
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Span, D::Error> {
        config::from_str::deserialize(deserializer)
    }
}

impl Span {
    /// The span in microseconds.
    pub fn micros(&self) -> i64 {
        i64::from(self.count)
            * if self.days {
                MICROS_PER_DAY
            } else {
                MICROS_PER_HOUR
            }
    }
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = if self.days { "day" } else { "hour" };
        let plural = if self.count == 1 { "" } else { "s" };
        write!(f, "{} {unit}{plural}", self.count)
    }
}

/// Where a row outside the accepted times goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outside {
    /// Rejected: dead-lettered with the reason.
    Reject,
    /// Into the table's default partition.
    Default,
}

/// What retention does with an expired partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expired {
    /// `DROP TABLE`.
    Drop,
    /// `DETACH PARTITION`: the rows stay, in a plain table of the same name.
    Detach,
}

/// The `partition` configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitioning {
    /// The column the table is partitioned by.
    pub column: String,
    /// The length of each partition's range.
    pub interval: Span,
    /// How many intervals after the current one `open` creates.
    pub premake: u32,
    /// How long before the database's clock a row's time may be.
    pub past: Span,
    /// How long after the database's clock a row's time may be.
    pub future: Span,
    /// Where rows outside those bounds go.
    pub outside: Outside,
    /// Partitions older than this are retired.
    pub retention: Option<Span>,
    /// How they are retired.
    pub expired: Expired,
}

/// The `partition` table as written; [`Partitioning::new`] checks the rules
/// between its keys.
#[derive(Debug, Deserialize)]
pub struct RawPartitioning {
    column: String,
    interval: Span,
    premake: Option<u32>,
    #[serde(default)]
    accept: RawAccept,
    retention: Option<Span>,
    expired: Option<Expired>,
}

/// `partition.accept` as written.
#[derive(Debug, Default, Deserialize)]
struct RawAccept {
    past: Option<Span>,
    future: Option<Span>,
    outside: Option<Outside>,
}

impl Partitioning {
    /// Checks `raw` (at `partition` in the writer's configuration), adding what
    /// is wrong with it to `problems`.
    pub fn new(raw: RawPartitioning, problems: &mut Problems) -> Option<Partitioning> {
        let before = problems.iter().count();
        if raw.column.is_empty() {
            problems.add(
                "partition.column",
                "is empty: name the timestamp or date column to partition by",
            );
        }
        let interval = raw.interval;
        if !interval.days && 24 % interval.count != 0 {
            problems.add(
                "partition.interval",
                format!(
                    "{interval} does not divide a day: use 1, 2, 3, 4, 6, 8, 12 or 24 hours, or days"
                ),
            );
        }
        let premake = raw.premake.unwrap_or(2);
        if premake > 1000 {
            problems.add(
                "partition.premake",
                format!("must be a whole number from 0 to 1000, not {premake}"),
            );
        }
        let past = raw.accept.past.unwrap_or(Span {
            count: 7,
            days: true,
        });
        let future = raw.accept.future.unwrap_or(Span {
            count: 1,
            days: true,
        });
        if let Some(retention) = &raw.retention
            && retention.micros() <= past.micros() + interval.micros()
        {
            problems.add(
                "partition.retention",
                format!(
                    "{retention} must be longer than `partition.accept.past` ({past}) plus one \
                     interval ({interval}), or accepted rows would land in partitions about to be dropped"
                ),
            );
        }
        if problems.iter().count() > before {
            return None;
        }
        Some(Partitioning {
            column: raw.column,
            interval,
            premake,
            past,
            future,
            outside: raw.accept.outside.unwrap_or(Outside::Reject),
            retention: raw.retention,
            expired: raw.expired.unwrap_or(Expired::Drop),
        })
    }

    /// What makes the partition column unusable in `schema`, if anything.
    pub fn column_problem(&self, schema: &Schema) -> Option<String> {
        let Some(column) = schema.columns.iter().find(|c| c.name == self.column) else {
            return Some(format!(
                "`partition.column` {:?} is not a column of schema {} (columns: {})",
                self.column,
                schema.name,
                schema
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        match column.ty {
            ColumnType::Timestamp => {}
            ColumnType::Date if self.interval.days => {}
            ColumnType::Date => {
                return Some(format!(
                    "`partition.column` {:?} is a date, so `partition.interval` must be in days, not {}",
                    self.column, self.interval
                ));
            }
            other => {
                return Some(format!(
                    "`partition.column` {:?} is {other}, but a table can only be partitioned by a timestamp or date column",
                    self.column
                ));
            }
        }
        column.nullable.then(|| {
            format!(
                "`partition.column` {:?} is nullable in schema {}: a row without a time has no partition; make it \
                 not nullable in the source's schema",
                self.column, schema.name
            )
        })
    }

    /// The start (µs since the epoch) of the range holding `micros`.
    pub fn range_start(&self, micros: i64) -> i64 {
        let interval = self.interval.micros();
        micros.div_euclid(interval) * interval
    }

    /// The name of the partition whose range starts at `start`.
    pub fn partition_name(&self, table: &str, start: i64) -> String {
        let days = start.div_euclid(MICROS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        if self.interval.days {
            format!("{table}_p{y:04}{m:02}{d:02}")
        } else {
            let hour = start.rem_euclid(MICROS_PER_DAY) / MICROS_PER_HOUR;
            format!("{table}_p{y:04}{m:02}{d:02}{hour:02}")
        }
    }

    /// The start of the range of a partition named `name`, when the name is one
    /// this writer gives its partitions of `table`.
    pub fn range_of_name(&self, table: &str, name: &str) -> Option<i64> {
        let digits = name.strip_prefix(table)?.strip_prefix("_p")?;
        let want = if self.interval.days { 8 } else { 10 };
        if digits.len() != want || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let number = |range: std::ops::Range<usize>| digits[range].parse::<i64>().ok();
        let days =
            sluice_plugin_sdk::time::days_from_civil(number(0..4)?, number(4..6)?, number(6..8)?);
        let hour = if want == 10 { number(8..10)? } else { 0 };
        let start = days * MICROS_PER_DAY + hour * MICROS_PER_HOUR;
        // A name this writer would give that range, not one of another interval.
        (self.range_start(start) == start && self.partition_name(table, start) == name)
            .then_some(start)
    }

    /// Whether a row at `micros` is within the accepted times around `now`.
    pub fn accepts(&self, micros: i64, now: i64) -> bool {
        micros >= now.saturating_sub(self.past.micros())
            && micros < now.saturating_add(self.future.micros())
    }

    /// The reason a row at `micros` is rejected for being out of bounds.
    pub fn outside_reason(&self, micros: i64, now: i64) -> String {
        format!(
            "column {}: {} is outside the times this table accepts ({} before to {} after the database's clock, \
             {}): `partition.accept.outside` is \"reject\"",
            self.column,
            timestamp(micros),
            self.past,
            self.future,
            timestamp(now)
        )
    }

    /// `CREATE TABLE … PARTITION OF` for the range starting at `start`.
    pub fn create_partition(&self, table: &TableName, start: i64, date_column: bool) -> String {
        let bound = |micros: i64| {
            let mut out = Vec::new();
            if date_column {
                write_date(micros.div_euclid(MICROS_PER_DAY), &mut out);
            } else {
                sluice_plugin_sdk::time::write_timestamp(micros, &mut out);
            }
            String::from_utf8(out).unwrap_or_default()
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {table} FOR VALUES FROM ('{}') TO ('{}')",
            sibling(table, &self.partition_name(&table.name, start)),
            bound(start),
            bound(start + self.interval.micros())
        )
    }

    /// `CREATE TABLE … PARTITION OF … DEFAULT`.
    pub fn create_default(&self, table: &TableName) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {table} DEFAULT",
            sibling(table, &default_name(&table.name))
        )
    }
}

/// The default partition's name.
pub fn default_name(table: &str) -> String {
    format!("{table}_default")
}

/// A table beside `table`, in the same schema.
pub fn sibling(table: &TableName, name: &str) -> TableName {
    TableName {
        schema: table.schema.clone(),
        name: name.to_string(),
    }
}

fn timestamp(micros: i64) -> String {
    let mut out = Vec::new();
    sluice_plugin_sdk::time::write_timestamp(micros, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// The database's clock, in µs since the epoch: the writer's own clock may be
/// frozen (plugins get real clocks only when granted), and the database's is the
/// one every daemon writing the table shares.
pub const NOW: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8";

/// The partitions of a table: name, whether a concurrent detach of it is pending.
/// `$1` is the quoted table name.
pub const PARTITIONS: &str = "SELECT c.relname::text, i.inhdetachpending FROM pg_inherits i \
     JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1::text) ORDER BY 1";

/// Takes the session's advisory lock on retiring a table's partitions, if free.
/// `$1` names the table.
const TRY_LOCK_RETENTION: &str = "SELECT pg_try_advisory_lock(hashtext($1))";
/// Releases it.
const UNLOCK_RETENTION: &str = "SELECT pg_advisory_unlock(hashtext($1))";

/// `duplicate_table`, and the unique violation on the catalogs a racing
/// `CREATE TABLE IF NOT EXISTS` can hit: another writer created it first.
fn created_by_another(error: &PgError) -> bool {
    matches!(error.code.as_deref(), Some("42P07" | "23505"))
}

/// A partitioned table as one writer sees it: which ranges it knows to have a
/// partition, and when it next checks retention.
#[derive(Debug)]
pub struct Partitioner {
    /// The configuration.
    pub config: Partitioning,
    table: TableName,
    /// Whether the partition column is a date (else a timestamp).
    date_column: bool,
    /// Range starts known to have a partition.
    known: BTreeSet<i64>,
    /// The database time from which retention may run again.
    next_retention: i64,
}

impl Partitioner {
    /// The partitioner of `table`.
    pub fn new(config: Partitioning, table: TableName, date_column: bool) -> Self {
        Partitioner {
            config,
            table,
            date_column,
            known: BTreeSet::new(),
            next_retention: i64::MIN,
        }
    }

    /// The database's clock.
    pub fn now(connection: &Connection) -> Result<i64, PgError> {
        let rows = connection.query(NOW, &[])?;
        match rows.first().and_then(|r| r.first()) {
            Some(PgValue::Int(now)) => Ok(*now),
            other => Err(PgError {
                kind: sluice_plugin_sdk::postgres::PgErrorKind::Other,
                code: None,
                message: format!("reading the database's clock returned {other:?}"),
                detail: None,
                context: None,
            }),
        }
    }

    /// Creates the default partition if configured, and the current range's
    /// partition and `premake` after it.
    pub fn premake(
        &mut self,
        connection: &Connection,
        now: i64,
    ) -> Result<(), Box<(String, PgError)>> {
        if self.config.outside == Outside::Default {
            let sql = self.config.create_default(&self.table);
            connection
                .batch_execute(&sql)
                .or_else(|e| {
                    if created_by_another(&e) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(|e| {
                    (
                        format!("creating the default partition of {}", self.table),
                        e,
                    )
                })?;
        }
        let first = self.config.range_start(now);
        let step = self.config.interval.micros();
        let starts: Vec<i64> = (0..=i64::from(self.config.premake))
            .map(|i| first + i * step)
            .collect();
        self.ensure(connection, starts)
    }

    /// Makes sure the ranges starting at `starts` have a partition.
    /// The error says what was being done.
    pub fn ensure(
        &mut self,
        connection: &Connection,
        starts: impl IntoIterator<Item = i64>,
    ) -> Result<(), Box<(String, PgError)>> {
        for start in starts {
            if self.known.contains(&start) {
                continue;
            }
            let name = self.config.partition_name(&self.table.name, start);
            match connection.batch_execute(&self.config.create_partition(
                &self.table,
                start,
                self.date_column,
            )) {
                Ok(()) => {}
                // Several consumers and daemons create the same partition at once.
                Err(e) if created_by_another(&e) => {}
                Err(e) => {
                    return Err(Box::new((
                        format!(
                            "creating partition {} of {}",
                            quote_ident(&name),
                            self.table
                        ),
                        e,
                    )));
                }
            }
            self.known.insert(start);
        }
        Ok(())
    }

    /// Retires the partitions older than the retention, at most once per
    /// interval. Returns the lines to log.
    pub fn retire(&mut self, connection: &Connection, now: i64) -> Result<Vec<String>, PgError> {
        let Some(retention) = self.config.retention.clone() else {
            return Ok(Vec::new());
        };
        if now < self.next_retention {
            return Ok(Vec::new());
        }
        self.next_retention = now + self.config.interval.micros();
        // One writer at a time (the others skip this turn): two detaching the
        // same partition would fail each other.
        let lock = [PgValue::Text(format!("sluice retention {}", self.table))];
        let locked = connection.query(TRY_LOCK_RETENTION, &lock)?;
        if locked.first().and_then(|r| r.first()) != Some(&PgValue::Boolean(true)) {
            return Ok(Vec::new());
        }
        let result = self.retire_locked(connection, now, &retention);
        let unlocked = connection.query(UNLOCK_RETENTION, &lock);
        let log = result?;
        unlocked?;
        Ok(log)
    }

    fn retire_locked(
        &mut self,
        connection: &Connection,
        now: i64,
        retention: &Span,
    ) -> Result<Vec<String>, PgError> {
        let cutoff = now - retention.micros();
        let rows = connection.query(PARTITIONS, &[PgValue::Text(self.table.quoted())])?;
        let mut log = Vec::new();
        for row in rows {
            let (Some(PgValue::Text(name)), Some(PgValue::Boolean(pending))) =
                (row.first(), row.get(1))
            else {
                continue;
            };
            let Some(start) = self.config.range_of_name(&self.table.name, name) else {
                continue;
            };
            if start + self.config.interval.micros() > cutoff {
                continue;
            }
            let partition = sibling(&self.table, name);
            // A detach another writer left pending (`CONCURRENTLY` was interrupted)
            // is finished first.
            // CONCURRENTLY keeps writes to the other partitions going (a plain
            // detach locks the whole table); Postgres allows it only without a
            // default partition.
            let detach = if *pending {
                format!(
                    "ALTER TABLE {} DETACH PARTITION {partition} FINALIZE",
                    self.table
                )
            } else if self.config.outside == Outside::Default {
                format!("ALTER TABLE {} DETACH PARTITION {partition}", self.table)
            } else {
                format!(
                    "ALTER TABLE {} DETACH PARTITION {partition} CONCURRENTLY",
                    self.table
                )
            };
            let result = match self.config.expired {
                Expired::Detach => connection.batch_execute(&detach),
                // Detached first, then dropped without touching the parent again.
                Expired::Drop => connection.batch_execute(&detach).and_then(|()| {
                    connection.batch_execute(&format!("DROP TABLE IF EXISTS {partition}"))
                }),
            };
            match result {
                Ok(()) => {}
                // Another writer retired it meanwhile (42P01: gone; 42809/42P17:
                // no longer a partition).
                Err(e) if matches!(e.code.as_deref(), Some("42P01" | "42809" | "42P17")) => {
                    continue;
                }
                Err(e) => return Err(e),
            }
            self.known.remove(&start);
            let what = match self.config.expired {
                Expired::Drop => "dropped",
                Expired::Detach => "detached",
            };
            log.push(format!(
                "{what} partition {partition} of {} (rows from {} to {}): older than the retention of {retention}",
                self.table,
                timestamp(start),
                timestamp(start + self.config.interval.micros())
            ));
        }
        Ok(log)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use sluice_plugin_sdk::Column;

    /// `json` read as the writer's `partition` key.
    pub(crate) fn parse(json: &str) -> Result<Partitioning, String> {
        #[derive(Deserialize)]
        struct Writer {
            partition: RawPartitioning,
        }
        let raw: Writer = config::parse(&format!(r#"{{"partition": {json}}}"#))
            .map_err(|e| e.message().to_owned())?;
        let mut problems = Problems::new();
        match Partitioning::new(raw.partition, &mut problems) {
            Some(p) if problems.is_empty() => Ok(p),
            _ => Err(problems.to_string()),
        }
    }

    fn daily() -> Partitioning {
        parse(r#"{"column": "at", "interval": "1 day"}"#).unwrap()
    }

    #[test]
    fn defaults() {
        let p = daily();
        assert_eq!(p.premake, 2);
        assert_eq!(
            p.past,
            Span {
                count: 7,
                days: true
            }
        );
        assert_eq!(
            p.future,
            Span {
                count: 1,
                days: true
            }
        );
        assert_eq!(p.outside, Outside::Reject);
        assert_eq!(p.retention, None);
        assert_eq!(p.expired, Expired::Drop);
    }

    #[test]
    fn every_problem_is_reported() {
        let problems = parse(
            r#"{"interval": "1 week", "premake": -1, "colour": 1,
                "accept": {"past": "a week", "outside": "drop"}, "expired": "burn"}"#,
        )
        .unwrap_err();
        let problems: Vec<&str> = problems.split("; ").collect();
        assert_eq!(
            problems,
            [
                "partition.accept.outside: unknown variant `drop`, expected `reject` or `default`",
                "partition.accept.past: \"a week\" is not a length of time like \"6 hours\" or \"90 days\"",
                "partition.colour: unknown key `colour` (expected one of: column, interval, premake, accept, retention, expired)",
                "partition.column: missing (required)",
                "partition.expired: unknown variant `burn`, expected `drop` or `detach`",
                "partition.interval: \"1 week\" is not a length of time like \"6 hours\" or \"90 days\"",
                "partition.premake: invalid value: integer `-1`, expected u32",
            ]
        );
        // The rules between keys, once the keys read.
        let problems =
            parse(r#"{"column": "", "interval": "5 hours", "premake": 1001}"#).unwrap_err();
        assert_eq!(
            problems,
            "partition.column: is empty: name the timestamp or date column to partition by; \
             partition.interval: 5 hours does not divide a day: use 1, 2, 3, 4, 6, 8, 12 or 24 hours, or days; \
             partition.premake: must be a whole number from 0 to 1000, not 1001"
        );
    }

    #[test]
    fn retention_must_outlast_the_accepted_past() {
        let problems =
            parse(r#"{"column": "at", "interval": "1 day", "retention": "7 days"}"#).unwrap_err();
        assert!(
            problems.contains("must be longer than `partition.accept.past` (7 days)"),
            "{problems:?}"
        );
        assert!(parse(r#"{"column": "at", "interval": "1 day", "retention": "9 days"}"#).is_ok());
    }

    #[test]
    fn names_show_the_range() {
        let p = daily();
        // 2026-11-27 13:45 UTC
        let t = sluice_plugin_sdk::time::days_from_civil(2026, 11, 27) * MICROS_PER_DAY
            + 13 * MICROS_PER_HOUR
            + 45 * 60_000_000;
        let start = p.range_start(t);
        assert_eq!(p.partition_name("cdr", start), "cdr_p20261127");
        assert_eq!(p.range_of_name("cdr", "cdr_p20261127"), Some(start));
        assert_eq!(p.range_of_name("cdr", "cdr_p2026112713"), None);
        assert_eq!(p.range_of_name("cdr", "cdrx_p20261127"), None);
        assert_eq!(p.range_of_name("cdr", "cdr_default"), None);
        let hourly = parse(r#"{"column": "at", "interval": "1 hour"}"#).unwrap();
        let start = hourly.range_start(t);
        assert_eq!(hourly.partition_name("cdr", start), "cdr_p2026112713");
        assert_eq!(hourly.range_of_name("cdr", "cdr_p2026112713"), Some(start));
        assert_eq!(
            hourly.create_partition(
                &TableName {
                    schema: Some("s".into()),
                    name: "cdr".into()
                },
                start,
                false
            ),
            r#"CREATE TABLE IF NOT EXISTS "s"."cdr_p2026112713" PARTITION OF "s"."cdr" FOR VALUES FROM ('2026-11-27T13:00:00.000000Z') TO ('2026-11-27T14:00:00.000000Z')"#
        );
        assert_eq!(
            p.create_partition(
                &TableName {
                    schema: None,
                    name: "cdr".into()
                },
                p.range_start(t),
                true
            ),
            r#"CREATE TABLE IF NOT EXISTS "cdr_p20261127" PARTITION OF "cdr" FOR VALUES FROM ('2026-11-27') TO ('2026-11-28')"#
        );
        // Before the epoch, too.
        assert_eq!(p.partition_name("cdr", p.range_start(-1)), "cdr_p19691231");
    }

    #[test]
    fn accepted_times_are_around_now() {
        let p = daily();
        let now = 100 * MICROS_PER_DAY;
        assert!(p.accepts(now, now));
        assert!(p.accepts(now - 7 * MICROS_PER_DAY, now));
        assert!(!p.accepts(now - 7 * MICROS_PER_DAY - 1, now));
        assert!(!p.accepts(now + MICROS_PER_DAY, now));
        assert!(!p.accepts(0, now));
        assert!(
            p.outside_reason(0, now)
                .contains("1970-01-01T00:00:00.000000Z is outside")
        );
    }

    #[test]
    fn the_column_must_be_a_non_null_time() {
        let schema = |ty, nullable| Schema {
            name: "cdr".into(),
            version: 1,
            columns: vec![
                Column {
                    name: "id".into(),
                    ty: ColumnType::Int64,
                    nullable: false,
                    key: true,
                },
                Column {
                    name: "at".into(),
                    ty,
                    nullable,
                    key: false,
                },
            ],
        };
        let p = daily();
        assert_eq!(
            p.column_problem(&schema(ColumnType::Timestamp, false)),
            None
        );
        assert_eq!(p.column_problem(&schema(ColumnType::Date, false)), None);
        assert!(
            p.column_problem(&schema(ColumnType::Text, false))
                .unwrap()
                .contains("timestamp or date")
        );
        assert!(
            p.column_problem(&schema(ColumnType::Timestamp, true))
                .unwrap()
                .contains("nullable")
        );
        let hourly = parse(r#"{"column": "at", "interval": "2 hours"}"#).unwrap();
        assert!(
            hourly
                .column_problem(&schema(ColumnType::Date, false))
                .unwrap()
                .contains("in days")
        );
        let other = parse(r#"{"column": "nope", "interval": "1 day"}"#).unwrap();
        assert!(
            other
                .column_problem(&schema(ColumnType::Date, false))
                .unwrap()
                .contains("not a column")
        );
    }
}
