//! How a batch lands: fast when it can, idempotent when it must, and row by row
//! only for the rows Postgres refuses.
//!
//! - **Fast path.** The whole batch as one binary `COPY` into the table. One
//!   statement is one transaction, so no `BEGIN`/`COMMIT` round trips.
//! - **Refused row** (a data error naming `line N` of the COPY): that row is
//!   rejected and the batch is sent again without it. At most [`LINE_RETRIES`]
//!   times per piece, so that a batch of many bad rows does not cost a COPY per row;
//!   beyond that, the slow path bisects.
//! - **Slow path**, taken on a duplicate key (a redelivered or retried batch, or a
//!   key twice in the batch) or a refusal without a line number: in one
//!   transaction, `COPY` into a temporary staging table, then `INSERT … SELECT …
//!   ON CONFLICT (keys) DO NOTHING` and `COMMIT` in one round trip: three round
//!   trips for a redelivered batch. Only when Postgres refuses a row is the batch
//!   rolled back and landed again in pieces: a refused piece is undone
//!   to its savepoint and split in two until the refused rows stand alone.
//!   Savepoints (rather than a transaction per piece) keep the batch all or
//!   nothing: when a later piece fails for good, the earlier ones are not
//!   committed either.
//!
//! - **Straight to staging after a duplicate.** Redelivered batches come in runs
//!   (everything unacked when a consumer died comes back), and on the fast path
//!   each of them costs a whole COPY that fails on its first row. So after a
//!   duplicate key the next [`STAGE_AFTER_DUPLICATE`] batches go straight to the
//!   slow path; the one after tries the fast path again.
//!
//! The control flow talks to Postgres through [`Session`] so that it is tested
//! against a fake; `lib.rs` implements it for the host's connection.

use crate::copy_stream::CopyStream;
use crate::refusal;
use crate::sql::Statements;
use sluice_plugin_sdk::RowRejection;
use sluice_plugin_sdk::postgres::PgError;

/// How many refused rows a piece rejects by their line number, each costing one
/// more COPY of the piece, before the rest is isolated by bisection instead.
pub const LINE_RETRIES: u32 = 16;

/// How many batches after one with a duplicate key skip the fast path. The slow
/// path is correct for any batch, only slower for fresh keys: at worst this many
/// fresh batches are staged needlessly after a lone duplicate.
pub const STAGE_AFTER_DUPLICATE: u32 = 16;

/// The calls to Postgres that landing a batch makes.
pub trait Session {
    /// Runs statements in the simple query protocol.
    fn batch_execute(&mut self, sql: &str) -> Result<(), PgError>;
    /// Runs a `COPY … FROM STDIN` with the complete stream `data`.
    fn copy_in(&mut self, statement: &str, data: &[u8]) -> Result<u64, PgError>;
}

/// Which way a batch landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Nothing was left to write.
    Empty,
    /// Straight `COPY` into the table.
    Fast,
    /// Through the staging table, in this many pieces (more than one when rows
    /// had to be isolated by bisection).
    Slow {
        /// How many pieces were copied into the staging table.
        pieces: u32,
    },
}

/// Lands batches on one connection, remembering what that connection holds.
#[derive(Debug)]
pub struct Lander {
    statements: Statements,
    /// Whether this connection has the staging table, as of its last commit.
    stage_ready: bool,
    /// The tuples still to write; kept to reuse its allocation.
    tuples: Vec<u32>,
    /// How many more batches go straight to the slow path (see
    /// [`STAGE_AFTER_DUPLICATE`]).
    stage_first: u32,
}

impl Lander {
    /// A lander running `statements`, on a connection without a staging table.
    pub fn new(statements: Statements) -> Self {
        Lander {
            statements,
            stage_ready: false,
            tuples: Vec::new(),
            stage_first: 0,
        }
    }

    /// The statements it runs.
    pub fn statements(&self) -> &Statements {
        &self.statements
    }

    /// Forgets the staging table: the connection is a new one, or it was dropped.
    pub fn forget_stage(&mut self) {
        self.stage_ready = false;
    }

    /// Writes every tuple of `stream`, adding the rows Postgres refuses to
    /// `rejections`. On `Err`, nothing of the batch is committed, no transaction
    /// is left open, and `rejections` may hold rows to forget.
    pub fn land<S: Session>(
        &mut self,
        session: &mut S,
        stream: &mut CopyStream,
        rejections: &mut Vec<RowRejection>,
    ) -> Result<Path, PgError> {
        let mut tuples = std::mem::take(&mut self.tuples);
        tuples.clear();
        tuples.extend(0..stream.len() as u32);
        let result = if self.stage_first > 0 && !tuples.is_empty() {
            self.stage_first -= 1;
            Ok(false)
        } else {
            self.fast(session, stream, &mut tuples, rejections)
        };
        let result = match result {
            Ok(true) if tuples.is_empty() => Ok(Path::Empty),
            Ok(true) => Ok(Path::Fast),
            Ok(false) => self.slow(session, stream, tuples.clone(), rejections),
            Err(e) => Err(e),
        };
        self.tuples = tuples;
        result
    }

    /// The fast path. `Ok(true)`: landed; `Ok(false)`: the slow path must land
    /// what is left in `tuples`.
    fn fast<S: Session>(
        &mut self,
        session: &mut S,
        stream: &mut CopyStream,
        tuples: &mut Vec<u32>,
        rejections: &mut Vec<RowRejection>,
    ) -> Result<bool, PgError> {
        let mut retries = LINE_RETRIES;
        loop {
            if tuples.is_empty() {
                return Ok(true);
            }
            let error = match session.copy_in(&self.statements.copy_table, stream.stream(tuples)) {
                Ok(_) => return Ok(true),
                Err(e) => e,
            };
            if refusal::is_unique_violation(&error) {
                self.stage_first = STAGE_AFTER_DUPLICATE;
                return Ok(false);
            }
            if !refusal::is_refused_row(&error) {
                // A lost connection, a missing table: not the rows' fault. The COPY
                // ran in its own transaction, so nothing is left open.
                return Err(error);
            }
            match refusal::refused_index(&error, tuples.len()) {
                Some(index) if retries > 0 => {
                    retries -= 1;
                    reject(stream, rejections, tuples.remove(index), &error);
                }
                // No line (a constraint checked at the end of the statement) or
                // many bad rows: the slow path isolates them.
                _ => return Ok(false),
            }
        }
    }

    /// The slow path, in one transaction: the whole batch at once, else in pieces.
    fn slow<S: Session>(
        &mut self,
        session: &mut S,
        stream: &mut CopyStream,
        tuples: Vec<u32>,
        rejections: &mut Vec<RowRejection>,
    ) -> Result<Path, PgError> {
        if self.slow_whole(session, stream, &tuples)? {
            return Ok(Path::Slow { pieces: 1 });
        }
        self.slow_in_pieces(session, stream, tuples, rejections)
            .map(|path| match path {
                // The whole batch was staged once before.
                Path::Slow { pieces } => Path::Slow { pieces: pieces + 1 },
                other => other,
            })
    }

    /// The whole batch through the staging table, without a savepoint. `Ok(false)`:
    /// Postgres refused a row, the transaction was rolled back, and the batch
    /// must land in pieces.
    fn slow_whole<S: Session>(
        &mut self,
        session: &mut S,
        stream: &mut CopyStream,
        tuples: &[u32],
    ) -> Result<bool, PgError> {
        let statements = &self.statements;
        let begin = if self.stage_ready {
            statements.begin
        } else {
            statements.begin_and_create_stage.as_str()
        };
        let result = session
            .batch_execute(begin)
            .and_then(|()| session.copy_in(&statements.copy_stage, stream.stream(tuples)))
            .and_then(|_| session.batch_execute(&statements.insert_and_commit));
        match result {
            Ok(()) => {
                self.stage_ready = true;
                Ok(true)
            }
            Err(error) => {
                // Best effort, as in `slow_in_pieces`. A staging table created by
                // this transaction is gone with it: `stage_ready` is still false.
                let _ = session.batch_execute(statements.rollback);
                if refusal::is_refused_row(&error) {
                    Ok(false)
                } else {
                    self.stage_ready = false;
                    Err(error)
                }
            }
        }
    }

    /// The slow path in pieces under savepoints, isolating refused rows.
    fn slow_in_pieces<S: Session>(
        &mut self,
        session: &mut S,
        stream: &mut CopyStream,
        tuples: Vec<u32>,
        rejections: &mut Vec<RowRejection>,
    ) -> Result<Path, PgError> {
        let begin = if self.stage_ready {
            self.statements.begin
        } else {
            self.statements.begin_and_create_stage.as_str()
        };
        let mut transaction = Transaction {
            session,
            statements: &self.statements,
            stream,
            rejections,
            stage_dirty: false,
            pieces: 0,
        };
        let result = transaction
            .session
            .batch_execute(begin)
            .and_then(|()| transaction.piece(tuples))
            .and_then(|()| {
                transaction
                    .session
                    .batch_execute(transaction.statements.commit)
            });
        match result {
            Ok(()) => {
                self.stage_ready = true;
                Ok(Path::Slow {
                    pieces: transaction.pieces,
                })
            }
            Err(error) => {
                // Best effort: after a lost connection there is nothing to roll back,
                // and the host drops the transaction with the connection anyway.
                let _ = transaction
                    .session
                    .batch_execute(transaction.statements.rollback);
                // The connection may be a new one next time: create the stage again.
                self.stage_ready = false;
                Err(error)
            }
        }
    }
}

/// One slow-path transaction.
struct Transaction<'a, S> {
    session: &'a mut S,
    statements: &'a Statements,
    stream: &'a mut CopyStream,
    rejections: &'a mut Vec<RowRejection>,
    /// Whether a piece committed to its savepoint left rows in the staging table.
    stage_dirty: bool,
    pieces: u32,
}

impl<S: Session> Transaction<'_, S> {
    /// Lands `tuples` under a savepoint, rejecting refused rows by line number,
    /// else by bisection. `Err` only for failures that are not a row's fault.
    fn piece(&mut self, mut tuples: Vec<u32>) -> Result<(), PgError> {
        let mut retries = LINE_RETRIES;
        loop {
            if tuples.is_empty() {
                return Ok(());
            }
            let error = match self.stage_and_insert(&tuples)? {
                None => return Ok(()),
                Some(error) => error,
            };
            match refusal::refused_index(&error, tuples.len()) {
                Some(index) if retries > 0 => {
                    retries -= 1;
                    reject(self.stream, self.rejections, tuples.remove(index), &error);
                }
                _ if tuples.len() == 1 => {
                    reject(self.stream, self.rejections, tuples[0], &error);
                    return Ok(());
                }
                _ => {
                    let right = tuples.split_off(tuples.len() / 2);
                    self.piece(tuples)?;
                    return self.piece(right);
                }
            }
        }
    }

    /// Copies `tuples` into the staging table and moves them into the table.
    /// `Ok(Some(error))`: Postgres refused the data; the piece is undone and the
    /// transaction goes on.
    fn stage_and_insert(&mut self, tuples: &[u32]) -> Result<Option<PgError>, PgError> {
        let statements = self.statements;
        self.pieces += 1;
        // Rows a released piece left in the staging table were inserted already;
        // clearing them keeps line numbers and the INSERT about this piece only.
        let savepoint = if self.stage_dirty {
            statements.savepoint_and_clear_stage.as_str()
        } else {
            statements.savepoint
        };
        self.session.batch_execute(savepoint)?;
        let result = self
            .session
            .copy_in(&statements.copy_stage, self.stream.stream(tuples))
            .and_then(|_| self.session.batch_execute(&statements.insert_from_stage));
        match result {
            Ok(()) => {
                self.stage_dirty = true;
                Ok(None)
            }
            Err(error) if refusal::is_refused_row(&error) => {
                self.session.batch_execute(statements.undo_piece)?;
                Ok(Some(error))
            }
            Err(error) => Err(error),
        }
    }
}

fn reject(stream: &CopyStream, rejections: &mut Vec<RowRejection>, tuple: u32, error: &PgError) {
    rejections.push(RowRejection {
        row: stream.row(tuple),
        reason: refusal::reason(error),
    });
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::copy_stream::tests::{batch, columns};
    use crate::sql::TableName;
    use sluice_plugin_sdk::ColumnType;
    use sluice_plugin_sdk::Schema;
    use sluice_plugin_sdk::postgres::PgErrorKind;
    use sluice_plugin_sdk::rows::Value;

    /// Key, text ("v<key>"), and a numeric that is malformed for negative keys.
    const TYPES: [ColumnType; 3] = [ColumnType::Int64, ColumnType::Text, ColumnType::Numeric];

    /// What the fake server refuses a row for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fault {
        /// A value out of range: refused while the COPY reads it, with a line
        /// number, into the table and into the staging table alike.
        Overflow,
        /// A check constraint of the table: refused with a line number by a COPY
        /// into the table, without one by the INSERT from the staging table.
        Check,
        /// A constraint checked at the end of the statement (a foreign key):
        /// refused without a line number, always.
        Deferred,
    }

    #[derive(Debug, Clone, Default, PartialEq)]
    struct Snapshot {
        /// Rows inserted by the open transaction, key to text.
        pending: BTreeMap<i64, String>,
        stage: Vec<(i64, String)>,
        stage_exists: bool,
    }

    /// An in-memory Postgres that understands exactly the statements of
    /// [`Statements`]: autocommit COPY, transactions, savepoints, a temporary
    /// staging table, unique keys, and refusals by [`Fault`].
    #[derive(Default)]
    struct FakeServer {
        statements: Option<Statements>,
        table: BTreeMap<i64, String>,
        stage_exists: bool,
        faults: BTreeMap<i64, Fault>,
        /// Transaction state, then the savepoint stack.
        transaction: Option<(Snapshot, Vec<Snapshot>)>,
        aborted: bool,
        /// Fails the n-th call (from 1) with a lost connection.
        lose_connection_at: Option<usize>,
        calls: Vec<String>,
    }

    fn pg_error(kind: PgErrorKind, code: &str, message: &str, context: Option<String>) -> PgError {
        PgError {
            kind,
            code: Some(code.into()),
            message: message.into(),
            detail: None,
            context,
        }
    }

    impl FakeServer {
        fn new(statements: &Statements) -> Self {
            FakeServer {
                statements: Some(statements.clone()),
                ..Default::default()
            }
        }

        fn st(&self) -> &Statements {
            self.statements.as_ref().unwrap()
        }

        fn lost(&mut self) -> Option<PgError> {
            if self.lose_connection_at == Some(self.calls.len()) {
                // The server ends the transaction with the connection.
                self.transaction = None;
                self.aborted = false;
                return Some(PgError {
                    kind: PgErrorKind::Retriable,
                    code: None,
                    message: "connection closed".into(),
                    detail: None,
                    context: None,
                });
            }
            None
        }

        fn fail(&mut self, error: PgError) -> PgError {
            if self.transaction.is_some() {
                self.aborted = true;
            }
            error
        }

        fn rows(stream: &[u8]) -> Vec<(i64, String)> {
            let mut at = 19;
            let mut rows = Vec::new();
            loop {
                let fields = i16::from_be_bytes([stream[at], stream[at + 1]]);
                at += 2;
                if fields == -1 {
                    return rows;
                }
                assert_eq!(fields, 3);
                assert_eq!(&stream[at..at + 4], 8i32.to_be_bytes());
                let key = i64::from_be_bytes(stream[at + 4..at + 12].try_into().unwrap());
                at += 12;
                let len = i32::from_be_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
                let text = String::from_utf8(stream[at + 4..at + 4 + len].to_vec()).unwrap();
                at += 4 + len;
                // 1.5 as a binary numeric.
                assert_eq!(&stream[at..at + 4], 12i32.to_be_bytes());
                at += 16;
                rows.push((key, text));
            }
        }

        fn exists(&self, key: i64) -> bool {
            self.table.contains_key(&key)
                || self
                    .transaction
                    .as_ref()
                    .is_some_and(|(state, _)| state.pending.contains_key(&key))
        }

        fn copy_into_table(&mut self, rows: Vec<(i64, String)>) -> Result<u64, PgError> {
            let mut seen = BTreeSet::new();
            for (line, (key, _)) in rows.iter().enumerate() {
                let at = Some(format!("COPY t, line {}", line + 1));
                match self.faults.get(key) {
                    Some(Fault::Overflow) => {
                        let at = Some(format!("COPY t, line {}, column c1", line + 1));
                        return Err(pg_error(
                            PgErrorKind::Data,
                            "22003",
                            "numeric field overflow",
                            at,
                        ));
                    }
                    Some(Fault::Check) => {
                        return Err(pg_error(
                            PgErrorKind::Data,
                            "23514",
                            "violates check constraint",
                            at,
                        ));
                    }
                    _ => {}
                }
                if self.exists(*key) || !seen.insert(*key) {
                    return Err(pg_error(
                        PgErrorKind::Data,
                        "23505",
                        "duplicate key value",
                        at,
                    ));
                }
            }
            if rows
                .iter()
                .any(|(key, _)| self.faults.get(key) == Some(&Fault::Deferred))
            {
                return Err(pg_error(
                    PgErrorKind::Data,
                    "23503",
                    "violates foreign key constraint",
                    None,
                ));
            }
            let n = rows.len() as u64;
            match &mut self.transaction {
                Some((state, _)) => state.pending.extend(rows),
                None => self.table.extend(rows),
            }
            Ok(n)
        }

        fn copy_into_stage(&mut self, rows: Vec<(i64, String)>) -> Result<u64, PgError> {
            let Some((state, _)) = &mut self.transaction else {
                // Autocommit: ON COMMIT DELETE ROWS empties it at once.
                return Ok(rows.len() as u64);
            };
            if !state.stage_exists {
                return Err(pg_error(
                    PgErrorKind::Other,
                    "42P01",
                    "relation does not exist",
                    None,
                ));
            }
            for (line, (key, _)) in rows.iter().enumerate() {
                if self.faults.get(key) == Some(&Fault::Overflow) {
                    let at = Some(format!("COPY sluice_stage_t, line {}, column c1", line + 1));
                    return Err(pg_error(
                        PgErrorKind::Data,
                        "22003",
                        "numeric field overflow",
                        at,
                    ));
                }
            }
            let n = rows.len() as u64;
            state.stage.extend(rows);
            Ok(n)
        }

        fn insert_from_stage(&mut self) -> Result<(), PgError> {
            let stage = self.transaction.as_ref().unwrap().0.stage.clone();
            let mut distinct = BTreeMap::new();
            for (key, text) in stage {
                distinct.entry(key).or_insert(text);
            }
            for key in distinct.keys() {
                if matches!(self.faults.get(key), Some(Fault::Check | Fault::Deferred)) {
                    return Err(pg_error(
                        PgErrorKind::Data,
                        "23514",
                        "violates check constraint",
                        None,
                    ));
                }
            }
            let fresh: Vec<_> = distinct
                .into_iter()
                .filter(|(key, _)| !self.exists(*key))
                .collect();
            self.transaction.as_mut().unwrap().0.pending.extend(fresh);
            Ok(())
        }

        fn statement(&mut self, sql: &str) -> Result<(), PgError> {
            let in_failed = pg_error(
                PgErrorKind::Other,
                "25P02",
                "current transaction is aborted",
                None,
            );
            if self.aborted && !sql.starts_with("ROLLBACK") {
                return Err(in_failed);
            }
            if sql == "BEGIN" {
                assert!(self.transaction.is_none(), "BEGIN inside a transaction");
                let state = Snapshot {
                    stage_exists: self.stage_exists,
                    ..Default::default()
                };
                self.transaction = Some((state, Vec::new()));
            } else if sql == "COMMIT" {
                let (state, _) = self
                    .transaction
                    .take()
                    .expect("COMMIT without a transaction");
                self.table.extend(state.pending);
                self.stage_exists = state.stage_exists;
            } else if sql == "ROLLBACK" {
                self.transaction = None;
                self.aborted = false;
            } else if let Some(name) = sql.strip_prefix("SAVEPOINT ") {
                assert_eq!(name, "sluice_piece");
                let (state, savepoints) = self
                    .transaction
                    .as_mut()
                    .expect("SAVEPOINT outside a transaction");
                savepoints.push(state.clone());
            } else if sql == "ROLLBACK TO SAVEPOINT sluice_piece" {
                let (state, savepoints) = self.transaction.as_mut().unwrap();
                *state = savepoints.last().expect("no savepoint").clone();
                self.aborted = false;
            } else if sql == "RELEASE SAVEPOINT sluice_piece" {
                self.transaction
                    .as_mut()
                    .unwrap()
                    .1
                    .pop()
                    .expect("no savepoint");
            } else if sql.starts_with("TRUNCATE pg_temp.\"sluice_stage_t\"") {
                self.transaction.as_mut().unwrap().0.stage.clear();
            } else if sql.starts_with("CREATE TEMP TABLE IF NOT EXISTS \"sluice_stage_t\"") {
                self.transaction
                    .as_mut()
                    .expect("stage created in autocommit")
                    .0
                    .stage_exists = true;
            } else if sql.starts_with("INSERT INTO \"t\"") {
                self.insert_from_stage()?;
            } else {
                panic!("unexpected statement {sql}");
            }
            Ok(())
        }

        fn table_keys(&self) -> Vec<i64> {
            self.table.keys().copied().collect()
        }

        fn copies(&self) -> usize {
            self.calls.iter().filter(|c| c.starts_with("COPY")).count()
        }
    }

    impl Session for FakeServer {
        fn batch_execute(&mut self, sql: &str) -> Result<(), PgError> {
            self.calls.push(sql.to_string());
            if let Some(e) = self.lost() {
                return Err(e);
            }
            // Like the simple query protocol: stop at the first error.
            for statement in sql.split("; ") {
                if let Err(e) = self.statement(statement) {
                    return Err(self.fail(e));
                }
            }
            Ok(())
        }

        fn copy_in(&mut self, statement: &str, data: &[u8]) -> Result<u64, PgError> {
            self.calls.push(statement.to_string());
            if let Some(e) = self.lost() {
                return Err(e);
            }
            if self.aborted {
                return Err(pg_error(
                    PgErrorKind::Other,
                    "25P02",
                    "current transaction is aborted",
                    None,
                ));
            }
            let rows = Self::rows(data);
            let result = if statement == self.st().copy_table {
                self.copy_into_table(rows)
            } else if statement == self.st().copy_stage {
                self.copy_into_stage(rows)
            } else {
                panic!("unexpected COPY {statement}");
            };
            result.map_err(|e| self.fail(e))
        }
    }

    struct Setup {
        server: FakeServer,
        lander: Lander,
        stream: CopyStream,
    }

    fn setup() -> Setup {
        let schema = Schema {
            name: "t".into(),
            version: 1,
            columns: columns(&TYPES),
        };
        let statements = Statements::new(
            &TableName {
                schema: None,
                name: "t".into(),
            },
            &schema,
            &["c0"],
        );
        Setup {
            server: FakeServer::new(&statements),
            lander: Lander::new(statements),
            stream: CopyStream::new(),
        }
    }

    impl Setup {
        /// Writes a batch with rows of these keys, as `write` does.
        fn write_rows(&mut self, keys: &[i64]) -> Result<(Path, Vec<RowRejection>), PgError> {
            let texts: Vec<String> = keys.iter().map(|k| format!("v{k}")).collect();
            let rows: Vec<Vec<Value>> = keys
                .iter()
                .zip(&texts)
                .map(|(k, t)| {
                    vec![
                        Value::Int64(*k),
                        Value::Text(t),
                        Value::Numeric(if *k < 0 { "oops" } else { "1.5" }),
                    ]
                })
                .collect();
            let mut rejections = Vec::new();
            self.stream
                .encode(&columns(&TYPES), &TYPES, &batch(&rows), &mut rejections)
                .unwrap();
            self.server.calls.clear();
            let result = self
                .lander
                .land(&mut self.server, &mut self.stream, &mut rejections);
            assert!(
                self.server.transaction.is_none(),
                "transaction left open: {:?}",
                self.server.calls
            );
            rejections.sort_by_key(|r| r.row);
            Ok((result?, rejections))
        }

        /// The path taken and the rejected rows' indices.
        fn write(&mut self, keys: &[i64]) -> Result<(Path, Vec<u32>), PgError> {
            let (path, rejections) = self.write_rows(keys)?;
            Ok((path, rejections.iter().map(|r| r.row).collect()))
        }
    }

    #[test]
    fn a_new_batch_takes_one_copy() {
        let mut s = setup();
        assert_eq!(s.write(&[1, 2, 3]).unwrap(), (Path::Fast, vec![]));
        assert_eq!(s.server.calls, [s.lander.statements().copy_table.clone()]);
        assert_eq!(s.server.table_keys(), [1, 2, 3]);
    }

    #[test]
    fn a_redelivered_batch_lands_once_through_the_staging_table() {
        let mut s = setup();
        s.write(&[1, 2, 3]).unwrap();
        // Partly new, partly written before: a retry after a crash.
        assert_eq!(
            s.write(&[2, 3, 4]).unwrap(),
            (Path::Slow { pieces: 1 }, vec![])
        );
        assert_eq!(s.server.table_keys(), [1, 2, 3, 4]);
        assert_eq!(s.server.table[&2], "v2");
        // The staging table is created once per connection.
        assert!(s.server.calls[1].contains("CREATE TEMP TABLE"));
        assert_eq!(
            s.write(&[4, 5]).unwrap(),
            (Path::Slow { pieces: 1 }, vec![])
        );
        // Straight to the staging table: no COPY into the table first.
        assert_eq!(s.server.calls[0], "BEGIN");
        assert_eq!(s.server.table_keys(), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn after_a_duplicate_the_next_batches_go_straight_to_staging_then_fast_again() {
        let mut s = setup();
        s.write(&[1]).unwrap();
        assert_eq!(s.write(&[1, 2]).unwrap().0, Path::Slow { pieces: 1 });
        assert_eq!(s.server.copies(), 2, "the failed COPY, then the stage's");
        for batch in 0..STAGE_AFTER_DUPLICATE as i64 {
            let key = 100 + batch;
            assert_eq!(s.write(&[key]).unwrap().0, Path::Slow { pieces: 1 });
            assert_eq!(s.server.copies(), 1, "only the stage's COPY");
        }
        assert_eq!(s.write(&[500]).unwrap(), (Path::Fast, vec![]));
        assert_eq!(s.server.table.len(), 2 + STAGE_AFTER_DUPLICATE as usize + 1);
    }

    #[test]
    fn a_clean_redelivery_takes_three_round_trips_and_no_savepoint() {
        let mut s = setup();
        s.write(&[1, 2]).unwrap();
        s.write(&[2, 3]).unwrap();
        assert_eq!(s.server.calls.len(), 4, "{:?}", s.server.calls);
        assert_eq!(
            s.write(&[3, 4]).unwrap(),
            (Path::Slow { pieces: 1 }, vec![])
        );
        let st = s.lander.statements();
        assert_eq!(
            s.server.calls,
            [
                "BEGIN",
                st.copy_stage.as_str(),
                st.insert_and_commit.as_str()
            ]
        );
        assert_eq!(s.server.table_keys(), [1, 2, 3, 4]);
    }

    #[test]
    fn a_key_twice_in_one_batch_lands_once() {
        let mut s = setup();
        assert_eq!(
            s.write(&[7, 8, 7]).unwrap(),
            (Path::Slow { pieces: 1 }, vec![])
        );
        assert_eq!(s.server.table_keys(), [7, 8]);
    }

    #[test]
    fn refused_rows_are_rejected_by_line_with_their_index_in_the_batch() {
        let mut s = setup();
        s.server.faults.insert(11, Fault::Overflow);
        s.server.faults.insert(13, Fault::Check);
        s.server.faults.insert(16, Fault::Overflow);
        let (path, rejected) = s.write(&[10, 11, 12, 13, 14, 15, 16, 17]).unwrap();
        assert_eq!((path, rejected), (Path::Fast, vec![1, 3, 6]));
        assert_eq!(s.server.table_keys(), [10, 12, 14, 15, 17]);
        assert_eq!(s.server.copies(), 4);
    }

    #[test]
    fn rejection_reasons_come_from_the_server() {
        let mut s = setup();
        s.server.faults.insert(2, Fault::Overflow);
        let rejections = s.write_rows(&[1, 2, -3]).unwrap().1;
        assert_eq!(
            rejections,
            [
                RowRejection { row: 1, reason: "postgres refused the row: numeric field overflow (column c1) [SQLSTATE 22003]".into() },
                RowRejection { row: 2, reason: r#"column c2: invalid numeric literal "oops""#.into() },
            ]
        );
    }

    #[test]
    fn indices_map_back_to_the_batch_after_rows_left_out_before_and_during_the_copy() {
        let mut s = setup();
        s.server.faults.insert(5, Fault::Overflow);
        s.server.faults.insert(7, Fault::Check);
        // Negative keys carry a malformed numeric: left out before the COPY.
        let (path, rejected) = s.write(&[1, -1, 5, 6, -2, 7, 8]).unwrap();
        assert_eq!((path, rejected), (Path::Fast, vec![1, 2, 4, 5]));
        assert_eq!(s.server.table_keys(), [1, 6, 8]);
        // The same on the slow path, with bisection.
        s.server.faults.insert(9, Fault::Deferred);
        let (path, rejected) = s.write(&[-3, 9, 1, 10, -4, 5, 11]).unwrap();
        assert!(matches!(path, Path::Slow { .. }), "{path:?}");
        assert_eq!(rejected, [0, 1, 4, 5]);
        assert_eq!(s.server.table_keys(), [1, 6, 8, 10, 11]);
    }

    #[test]
    fn duplicates_and_refused_rows_together() {
        let mut s = setup();
        s.write(&[1, 2]).unwrap();
        s.server.faults.insert(4, Fault::Overflow);
        s.server.faults.insert(6, Fault::Check);
        // 4 comes before the duplicate: rejected on the fast path; then the
        // duplicate sends the rest to the slow path, where 6 is refused by the
        // INSERT without a line number and isolated by bisection.
        let (path, rejected) = s.write(&[3, 4, 1, 5, 6, 7]).unwrap();
        assert!(
            matches!(path, Path::Slow { pieces } if pieces > 1),
            "{path:?}"
        );
        assert_eq!(rejected, [1, 4]);
        assert_eq!(s.server.table_keys(), [1, 2, 3, 5, 7]);
    }

    #[test]
    fn refusals_without_a_line_are_isolated_by_bisection() {
        let mut s = setup();
        let keys: Vec<i64> = (0..100).collect();
        for bad in [0, 37, 38, 99] {
            s.server.faults.insert(bad, Fault::Deferred);
        }
        let (path, rejected) = s.write(&keys).unwrap();
        assert!(matches!(path, Path::Slow { .. }));
        assert_eq!(rejected, [0, 37, 38, 99]);
        let expected: Vec<i64> = keys
            .iter()
            .copied()
            .filter(|k| ![0, 37, 38, 99].contains(k))
            .collect();
        assert_eq!(s.server.table_keys(), expected);
        // Bisection, not a COPY per row.
        assert!(s.server.copies() < 60, "{}", s.server.copies());
    }

    #[test]
    fn many_refused_rows_stop_costing_a_copy_each() {
        let mut s = setup();
        let keys: Vec<i64> = (0..1000).collect();
        for bad in (0..1000).step_by(10) {
            s.server.faults.insert(bad, Fault::Overflow);
        }
        let (_, rejected) = s.write(&keys).unwrap();
        assert_eq!(rejected, (0..1000).step_by(10).collect::<Vec<u32>>());
        assert_eq!(s.server.table.len(), 900);
        assert!(s.server.copies() < 600, "{}", s.server.copies());
    }

    #[test]
    fn a_batch_of_only_refused_rows_lands_nothing() {
        let mut s = setup();
        for bad in 0..5 {
            s.server.faults.insert(bad, Fault::Deferred);
        }
        let (_, rejected) = s.write(&[0, 1, 2, 3, 4]).unwrap();
        assert_eq!(rejected, [0, 1, 2, 3, 4]);
        assert!(s.server.table.is_empty());
    }

    #[test]
    fn a_lost_connection_on_the_slow_path_commits_nothing_and_recreates_the_stage() {
        let mut s = setup();
        s.write(&[1]).unwrap();
        s.server.faults.insert(3, Fault::Deferred);
        // Calls: COPY t (duplicate); the whole batch: BEGIN+CREATE, COPY stage,
        // INSERT+COMMIT (refused), ROLLBACK; in pieces: BEGIN+CREATE, SAVEPOINT,
        // COPY stage, INSERT (refused: bisect), undo, then the first half commits
        // to its savepoint (SAVEPOINT, COPY, INSERT), then the second half's
        // SAVEPOINT fails.
        s.server.lose_connection_at = Some(14);
        let error = s.write(&[1, 2, 3]).unwrap_err();
        assert_eq!(error.kind, PgErrorKind::Retriable);
        assert_eq!(
            s.server.table_keys(),
            [1],
            "the first half must not be committed"
        );
        assert_eq!(s.server.calls.last().unwrap(), "ROLLBACK");
        // A new connection has no staging table: the next slow path creates it.
        s.server.lose_connection_at = None;
        s.server.stage_exists = false;
        assert_eq!(s.write(&[1, 2, 3]).unwrap().1, [2]);
        assert_eq!(s.server.table_keys(), [1, 2]);
    }

    #[test]
    fn other_errors_fail_the_batch_without_rejecting_rows() {
        let mut s = setup();
        s.server.lose_connection_at = Some(1);
        let error = s.write(&[1, 2]).unwrap_err();
        assert_eq!(error.kind, PgErrorKind::Retriable);
        assert!(s.server.table.is_empty());
        s.server.lose_connection_at = None;
        assert_eq!(s.write(&[1, 2]).unwrap(), (Path::Fast, vec![]));
    }

    #[test]
    fn an_empty_batch_sends_nothing() {
        let mut s = setup();
        assert_eq!(s.write(&[]).unwrap(), (Path::Empty, vec![]));
        assert!(s.server.calls.is_empty());
    }
}
