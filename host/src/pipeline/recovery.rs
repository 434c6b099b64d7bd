//! The recovery rules: how a batch that crashes the source, or that a writer
//! fails on, is taken apart until the message or row at fault is alone, and
//! when that one is dead-lettered rather than waited on (see the module docs of
//! `pipeline`).
//!
//! The rules run against two traits, [`Source`] and [`Writer`]: a consumer
//! implements them with its plugin instances, its metrics and its stall (in
//! `pipeline.rs`), and the tests below with fakes, so that each rule can be
//! seen at work without wasm or brokers. Generic code, so the consumer's calls
//! cost what they cost before: nothing is boxed on the way to the plugin.

use super::batch::{RowSpans, merge_decoded};
use super::{Refusal, Stop};
use crate::plugin_runtime::{
    CallError, DecodedBatch, Message, MessageOutcome, PluginError, RowBatch,
};

/// A source as the rules call it.
pub(super) trait Source {
    /// Makes sure the source is configured (its schema declared) before a
    /// call. A failure here is never the messages'.
    async fn configure(&mut self) -> Result<(), CallError>;

    /// Decodes `messages` in one call.
    async fn decode(&mut self, messages: &[Message]) -> Result<DecodedBatch, CallError>;

    /// `name@version` of the source, for the reasons of its dead letters.
    fn label(&self) -> String;

    /// The pipeline and the consumer, for log lines.
    fn place(&self) -> (&str, usize);

    /// Waits out a failure that is not about the messages (`what` failed):
    /// the batch stays unacked and is tried again; `Err` to give it up
    /// (shutdown).
    async fn stall(&mut self, what: &str, error: &CallError) -> Result<(), Stop>;
}

/// One writer as the rules call it.
pub(super) trait Writer {
    /// Writes `rows` in one call: the rows it refused (indices into `rows`)
    /// with their reasons, once it committed the others.
    async fn write(&mut self, rows: &RowBatch) -> Result<Vec<(u32, String)>, CallError>;

    /// Whether the writer committed since it last dead-lettered a row without
    /// a committed piece of the same batch to vouch for the store: the
    /// evidence a batch of one row needs.
    fn proven(&mut self) -> &mut bool;

    /// The pipeline and the consumer, for log lines.
    fn place(&self) -> (&str, usize);

    /// Waits out a failure that is not about the rows, as [`Source::stall`].
    async fn stall(&mut self, what: &str, error: &CallError) -> Result<(), Stop>;
}

/// How many rows may fail on their own, with nothing of the batch committed,
/// before isolating stops: by then the failure is the store's, not the rows'
/// (a batch of 1000 costs at most about 30 writes to tell).
const HOPELESS_LEAVES: usize = 8;

/// What taking a failing batch apart found.
#[derive(Default)]
struct Isolation {
    /// Pieces that committed.
    committed: usize,
    /// Rows the writer rejected in committed pieces, with their reasons.
    rejected: Vec<(u32, String)>,
    /// Rows that failed the write on their own, with the error.
    alone: Vec<(u32, String)>,
}

impl Isolation {
    /// Whether splitting further is pointless: many rows failed alone and
    /// nothing committed.
    fn hopeless(&self) -> bool {
        self.committed == 0 && self.alone.len() >= HOPELESS_LEAVES
    }
}

/// Whether a call was stopped by a time limit (`plugin_call_timeout` or
/// `plugin_call_deadline`): then a batch is taken apart one message or row at
/// a time, since every half holding the slow one would cost a whole limit.
fn stopped_by_a_time_limit(error: &CallError) -> bool {
    matches!(error.kind(), "deadline" | "timeout")
}

/// Whether a writer's failure may be caused by the rows it was given: a crash,
/// a contract breach or the plugin's own non-retriable error while writing.
/// Failures to open, retriable errors, invalid configurations and the host's
/// capability errors are about the store or the setup, never the rows.
fn may_be_the_rows(error: &CallError) -> bool {
    error.func() == "write"
        && (error.is_crash()
            || matches!(
                error,
                CallError::Failed {
                    error: PluginError::Fatal(_),
                    ..
                }
            ))
}

/// Decodes a batch, isolating messages that crash the source: a batch whose
/// `decode` crashes is split in halves (one message at a time after a time
/// limit) and each piece decoded again, until the message that crashes it is
/// alone; that one is refused with the crash as its reason, and the decoded
/// pieces are merged back in message order. Any other failure (the source's
/// own error, a failure to configure it) is not about the messages: the whole
/// batch waits ([`Source::stall`]) and is tried again.
///
/// Returns the decoded batch and, per message, why it is refused (for a
/// dead letter) if it is.
pub(super) async fn decode<S: Source>(
    source: &mut S,
    messages: &[Message],
) -> Result<(DecodedBatch, Vec<Option<Refusal>>), Stop> {
    loop {
        if let Err(e) = source.configure().await {
            source.stall("configuring the source", &e).await?;
            continue;
        }
        let result = source.decode(messages).await;
        let plugin = source.label();
        match result {
            Ok(decoded) => {
                let refusals = decoded
                    .outcomes
                    .iter()
                    .map(|o| match o {
                        // A partial message's rows go on; its rejected
                        // records become dead letters of their own
                        // (`record_letters`).
                        MessageOutcome::Rows(_) | MessageOutcome::Partial(_) => None,
                        MessageOutcome::Rejected(reason) => Some(Refusal {
                            stage: "decode",
                            plugin: plugin.clone(),
                            reason: reason.clone(),
                        }),
                    })
                    .collect();
                return Ok((decoded, refusals));
            }
            Err(e) if e.is_crash() && e.func() == "decode" => {
                if messages.len() == 1 {
                    let (pipeline, consumer) = source.place();
                    tracing::warn!(pipeline, consumer, error = %e, "a message crashes the source plugin; dead-lettering it");
                    let refusal = Refusal {
                        stage: "decode",
                        plugin,
                        reason: e.to_string(),
                    };
                    let empty = DecodedBatch {
                        outcomes: vec![MessageOutcome::Rejected(refusal.reason.clone())],
                        rows: RowBatch {
                            count: 0,
                            data: Vec::new(),
                        },
                    };
                    return Ok((empty, vec![Some(refusal)]));
                }
                // A slow message costs a whole time limit on every half that
                // holds it (a 60 s deadline and 1,000 messages: ten minutes of
                // halving). Taken one by one, the batch costs one fast call per
                // message and one limit per slow one.
                let pieces = if stopped_by_a_time_limit(&e) {
                    messages.chunks(1).collect::<Vec<_>>()
                } else {
                    let (left, right) = messages.split_at(messages.len() / 2);
                    vec![left, right]
                };
                let mut whole: Option<(DecodedBatch, Vec<Option<Refusal>>)> = None;
                for piece in pieces {
                    let (d, r) = Box::pin(decode(source, piece)).await?;
                    whole = Some(match whole {
                        None => (d, r),
                        Some((wd, mut wr)) => {
                            wr.extend(r);
                            (merge_decoded(wd, d), wr)
                        }
                    });
                }
                return Ok(whole.expect("a batch of two or more messages has pieces"));
            }
            Err(e) => source.stall("decoding", &e).await?,
        }
    }
}

/// Writes `rows` with `writer` until it commits. Returns the rejected rows
/// (indices into `rows`, in order) with their reasons: those the writer
/// refused, and those found to fail the write on their own.
///
/// A crash is taken apart at once ([`isolate`]); the writer's own
/// non-retriable error gets one more try first (a store can be wrong about
/// what is retriable). Any other failure waits ([`Writer::stall`]) and the
/// whole batch is tried again. A row that fails alone is refused only with
/// evidence that the store takes rows: a piece of the batch committed, or, for
/// a batch of one row, the writer is [proven](Writer::proven). Without it the
/// answer is [`Stop::Inconclusive`]: the store may be what fails.
pub(super) async fn write<W: Writer>(
    writer: &mut W,
    rows: &RowBatch,
    spans: &RowSpans,
) -> Result<Vec<(u32, String)>, Stop> {
    let mut failed_before = false;
    loop {
        let error = match writer.write(rows).await {
            Ok(rejected) => {
                *writer.proven() = true;
                return Ok(rejected);
            }
            Err(e) => e,
        };
        // A plugin's own error may pass (it did not say `retriable`, but a
        // store can be wrong about that): one more try before taking the
        // batch apart. A crash is taken apart at once.
        let take_apart = may_be_the_rows(&error) && (error.is_crash() || failed_before);
        failed_before = may_be_the_rows(&error);
        if !take_apart {
            writer.stall("writing", &error).await?;
            continue;
        }
        let mut found = Isolation::default();
        if rows.count > 1 {
            let one_by_one = stopped_by_a_time_limit(&error);
            if let Err(e) = isolate(writer, rows, spans, 0, one_by_one, &mut found).await {
                // The store went away meanwhile: what committed stays (writes
                // are idempotent), the whole batch is tried again.
                failed_before = false;
                writer.stall("writing", &e).await?;
                continue;
            }
        } else {
            found.alone.push((0, error.to_string()));
        }
        let vouched = found.committed > 0 || (found.alone.len() == 1 && *writer.proven());
        if !found.alone.is_empty() && !vouched {
            return Err(Stop::Inconclusive(error));
        }
        *writer.proven() = found.committed > 0;
        let (pipeline, consumer) = writer.place();
        for (row, reason) in &found.alone {
            tracing::warn!(pipeline, consumer, row, error = %reason, "a row fails the writer on its own; dead-lettering its message");
        }
        let mut rejected = found.rejected;
        rejected.append(&mut found.alone);
        rejected.sort_by_key(|(row, _)| *row);
        return Ok(rejected);
    }
}

/// Takes apart `rows`, a piece of a batch that `writer` failed on (rows
/// `offset..` of the batch): writes both halves, then splits again those
/// that failed in a way that may be the rows', down to single rows. Both
/// halves are tried before either is split, so that a half of good rows
/// commits (and vouches for the store) before single rows are counted
/// against it. `one_by_one` (the batch was stopped by a time limit) writes
/// the rows one at a time instead: halving would cost a whole limit on
/// every half that holds a slow row. Records what committed and which rows
/// failed alone in `found`; stops early when that is
/// [hopeless](Isolation::hopeless). `Err`: a failure that is not the rows'
/// (the store went away meanwhile).
async fn isolate<W: Writer>(
    writer: &mut W,
    rows: &RowBatch,
    spans: &RowSpans,
    offset: u32,
    one_by_one: bool,
    found: &mut Isolation,
) -> Result<(), CallError> {
    let mid = rows.count / 2;
    let pieces: Vec<(u32, u32)> = if one_by_one {
        (0..rows.count).map(|r| (r, r + 1)).collect()
    } else {
        vec![(0, mid), (mid, rows.count)]
    };
    let mut failed = Vec::new();
    for (from, to) in pieces {
        if one_by_one && found.hopeless() {
            return Ok(());
        }
        let piece = spans.slice(rows, from, to);
        match writer.write(&piece).await {
            Ok(rejected) => {
                found.committed += 1;
                let at = offset + from;
                found
                    .rejected
                    .extend(rejected.into_iter().map(|(r, why)| (r + at, why)));
            }
            Err(e) if may_be_the_rows(&e) && piece.count == 1 => {
                found.alone.push((offset + from, e.to_string()));
            }
            Err(e) if may_be_the_rows(&e) => failed.push((from, to, piece)),
            Err(e) => return Err(e),
        }
    }
    for (from, to, piece) in failed {
        if found.hopeless() {
            return Ok(());
        }
        let piece_spans = spans.sub(from, to);
        let isolated = isolate(writer, &piece, &piece_spans, offset + from, false, found);
        Box::pin(isolated).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sluice_plugin_sdk::ColumnType as SdkType;
    use sluice_plugin_sdk::rows::{RowReader, RowWriter, Value};

    use super::*;

    /// The fakes' rows: one text column, the row's key.
    const TYPES: [SdkType; 1] = [SdkType::Text];

    /// Keys the fakes fail on, each with the error of its kind (see [`error`]).
    const POISONS: [&str; 3] = ["panic", "slow", "fatal"];

    /// The error a fake plugin's call gets for `kind`: a crash (`panic`), a
    /// time limit (`slow`), its own non-retriable error (`fatal`) or a store
    /// that is down (`down`).
    fn error(kind: &str, func: &'static str) -> CallError {
        let plugin = "fake@1".to_string();
        match kind {
            "panic" => CallError::Trap {
                plugin,
                func,
                reason: "panicked".into(),
            },
            "slow" => CallError::Deadline {
                plugin,
                func,
                limit: Duration::from_secs(2),
            },
            "fatal" => CallError::Failed {
                plugin,
                func,
                error: PluginError::Fatal("the store cannot take it".into()),
            },
            "down" => CallError::Failed {
                plugin,
                func,
                error: PluginError::Retriable("store down".into()),
            },
            other => unreachable!("no error kind {other}"),
        }
    }

    /// A batch of rows with these keys.
    fn rows(keys: &[&str]) -> RowBatch {
        let mut w = RowWriter::new();
        for key in keys {
            w.text(key).end_row();
        }
        let b = w.finish();
        RowBatch {
            count: b.count,
            data: b.data,
        }
    }

    /// The keys of a batch's rows.
    fn keys(batch: &RowBatch) -> Vec<String> {
        RowReader::from_parts(&TYPES, &batch.data, batch.count)
            .map(|row| match row.expect("a row").iter().next() {
                Some(Value::Text(key)) => key.to_owned(),
                other => panic!("a row without a key: {other:?}"),
            })
            .collect()
    }

    /// A writer that fails every batch holding a poison row (with that
    /// poison's error), refuses rows keyed `refuse`, commits the rest, and
    /// fails the calls numbered in `store_down` (from 0) as a store that is
    /// down. It records each call's keys and each stall; after `stall_limit`
    /// stalls it gives the batch up, as a shutdown would.
    struct FakeWriter {
        calls: Vec<Vec<String>>,
        store_down: Vec<usize>,
        proven: bool,
        stalls: Vec<String>,
        stall_limit: usize,
    }

    impl FakeWriter {
        /// A writer just opened: opened writers vouch for their store.
        fn new() -> Self {
            FakeWriter {
                calls: Vec::new(),
                store_down: Vec::new(),
                proven: true,
                stalls: Vec::new(),
                stall_limit: 10,
            }
        }

        /// Writes a batch of rows keyed `keys` the way a consumer does.
        fn write_keys(&mut self, keys: &[&str]) -> Result<Vec<(u32, String)>, Stop> {
            let batch = rows(keys);
            let spans = RowSpans::new(&TYPES, &batch).expect("rows fit their types");
            futures::executor::block_on(write(self, &batch, &spans))
        }

        fn calls(&self) -> Vec<Vec<&str>> {
            self.calls
                .iter()
                .map(|c| c.iter().map(String::as_str).collect())
                .collect()
        }
    }

    impl Writer for FakeWriter {
        async fn write(&mut self, batch: &RowBatch) -> Result<Vec<(u32, String)>, CallError> {
            let keys = keys(batch);
            self.calls.push(keys.clone());
            if self.store_down.contains(&(self.calls.len() - 1)) {
                return Err(error("down", "write"));
            }
            if let Some(poison) = keys.iter().find(|k| POISONS.contains(&k.as_str())) {
                return Err(error(poison, "write"));
            }
            Ok(keys
                .iter()
                .enumerate()
                .filter(|(_, k)| *k == "refuse")
                .map(|(i, _)| (i as u32, "refused".to_owned()))
                .collect())
        }

        fn proven(&mut self) -> &mut bool {
            &mut self.proven
        }

        fn place(&self) -> (&str, usize) {
            ("fake", 0)
        }

        async fn stall(&mut self, what: &str, error: &CallError) -> Result<(), Stop> {
            self.stalls.push(format!("{what}: {}", error.kind()));
            if self.stalls.len() > self.stall_limit {
                return Err(Stop::Shutdown);
            }
            Ok(())
        }
    }

    /// The rows of a result, without the reasons.
    fn refused(result: &[(u32, String)]) -> Vec<u32> {
        result.iter().map(|(row, _)| *row).collect()
    }

    #[test]
    fn crashing_rows_are_found_by_halving_and_both_halves_are_written_before_either_is_split() {
        let mut writer = FakeWriter::new();
        let result = writer
            .write_keys(&["a", "panic", "c", "d", "e", "f", "panic", "h"])
            .unwrap();
        assert_eq!(
            writer.calls(),
            [
                vec!["a", "panic", "c", "d", "e", "f", "panic", "h"],
                // Both halves before either is split, so the good one's rows
                // commit and vouch for the store.
                vec!["a", "panic", "c", "d"],
                vec!["e", "f", "panic", "h"],
                vec!["a", "panic"],
                vec!["c", "d"],
                vec!["a"],
                vec!["panic"],
                vec!["e", "f"],
                vec!["panic", "h"],
                vec!["panic"],
                vec!["h"],
            ]
        );
        assert_eq!(refused(&result), [1, 6], "indices in the whole batch");
        assert!(
            result[0].1.contains("trapped in `write`: panicked"),
            "{result:?}"
        );
        assert!(writer.stalls.is_empty(), "a crash is taken apart at once");
        assert!(writer.proven, "pieces committed");
    }

    #[test]
    fn a_writers_own_error_gets_one_more_try_before_the_batch_is_taken_apart() {
        let mut writer = FakeWriter::new();
        let result = writer.write_keys(&["a", "fatal", "c", "d"]).unwrap();
        assert_eq!(writer.stalls, ["writing: failed"]);
        assert_eq!(
            writer.calls(),
            [
                vec!["a", "fatal", "c", "d"],
                vec!["a", "fatal", "c", "d"],
                vec!["a", "fatal"],
                vec!["c", "d"],
                vec!["a"],
                vec!["fatal"],
            ]
        );
        assert_eq!(refused(&result), [1]);
        assert!(
            result[0].1.contains("the store cannot take it"),
            "{result:?}"
        );
    }

    #[test]
    fn a_retriable_error_is_waited_out_and_never_taken_apart() {
        let mut writer = FakeWriter::new();
        writer.store_down = vec![0, 1];
        let result = writer.write_keys(&["a", "b", "c"]).unwrap();
        assert!(result.is_empty());
        assert_eq!(writer.calls(), vec![vec!["a", "b", "c"]; 3]);
        assert_eq!(writer.stalls, ["writing: failed", "writing: failed"]);

        // Until the consumer gives the batch up (shutdown).
        let mut writer = FakeWriter::new();
        writer.store_down = (0..100).collect();
        writer.stall_limit = 3;
        let result = writer.write_keys(&["a", "b"]);
        assert!(matches!(result, Err(Stop::Shutdown)), "{result:?}");
        assert_eq!(writer.calls.len(), 4);
        assert!(writer.calls.iter().all(|c| c.len() == 2), "never split");
    }

    #[test]
    fn a_lone_failing_row_is_dead_lettered_only_with_evidence_that_the_store_takes_rows() {
        let mut writer = FakeWriter::new();
        // Just opened: the store took the writer, the row is the problem.
        let result = writer.write_keys(&["fatal"]).unwrap();
        assert_eq!(refused(&result), [0]);
        assert!(!writer.proven, "that row used up the evidence");

        // Another lone failing row, with nothing committed since: the store may
        // be what fails (a dropped table). Nothing is dead-lettered.
        let result = writer.write_keys(&["fatal"]);
        assert!(matches!(result, Err(Stop::Inconclusive(_))), "{result:?}");
        assert!(!writer.proven);

        // A batch that commits is evidence again.
        assert!(writer.write_keys(&["ok"]).unwrap().is_empty());
        assert!(writer.proven);
        let result = writer.write_keys(&["fatal"]).unwrap();
        assert_eq!(refused(&result), [0]);
    }

    #[test]
    fn rows_that_fail_alone_with_nothing_committed_are_not_dead_lettered() {
        let mut writer = FakeWriter::new();
        let result = writer.write_keys(&["fatal", "fatal"]);
        assert!(matches!(result, Err(Stop::Inconclusive(_))), "{result:?}");
        assert_eq!(
            writer.calls(),
            [
                vec!["fatal", "fatal"],
                vec!["fatal", "fatal"],
                vec!["fatal"],
                vec!["fatal"],
            ]
        );
        // With a good row beside them, they are.
        let mut writer = FakeWriter::new();
        let result = writer.write_keys(&["fatal", "fatal", "ok"]).unwrap();
        assert_eq!(refused(&result), [0, 1]);
    }

    #[test]
    fn taking_a_batch_apart_stops_after_eight_rows_fail_alone_with_nothing_committed() {
        let mut writer = FakeWriter::new();
        let result = writer.write_keys(&["panic"; 64]);
        assert!(matches!(result, Err(Stop::Inconclusive(_))), "{result:?}");
        let alone = writer.calls.iter().filter(|c| c.len() == 1).count();
        assert_eq!(alone, HOPELESS_LEAVES);
        assert!(writer.calls.len() <= 30, "{} writes", writer.calls.len());
    }

    #[test]
    fn a_batch_stopped_by_a_time_limit_is_written_one_row_at_a_time() {
        let mut writer = FakeWriter::new();
        let result = writer.write_keys(&["a", "slow", "c", "d"]).unwrap();
        assert_eq!(
            writer.calls(),
            [
                vec!["a", "slow", "c", "d"],
                vec!["a"],
                vec!["slow"],
                vec!["c"],
                vec!["d"],
            ]
        );
        assert_eq!(refused(&result), [1]);
        assert!(result[0].1.contains("deadline"), "{result:?}");
    }

    #[test]
    fn rows_refused_in_a_committed_piece_keep_their_index_in_the_batch() {
        let mut writer = FakeWriter::new();
        let result = writer.write_keys(&["a", "panic", "refuse", "d"]).unwrap();
        assert_eq!(
            result
                .iter()
                .map(|(row, why)| (*row, why.starts_with("plugin fake@1 trapped")))
                .collect::<Vec<_>>(),
            [(1, true), (2, false)]
        );
        assert_eq!(result[1].1, "refused");
    }

    #[test]
    fn a_store_that_fails_while_a_batch_is_taken_apart_has_the_whole_batch_written_again() {
        let mut writer = FakeWriter::new();
        // The first half's write meets a store that went away.
        writer.store_down = vec![1];
        let result = writer.write_keys(&["a", "panic", "c", "d"]).unwrap();
        assert_eq!(writer.stalls, ["writing: failed"]);
        assert_eq!(
            writer.calls(),
            [
                vec!["a", "panic", "c", "d"],
                vec!["a", "panic"],
                vec!["a", "panic", "c", "d"],
                vec!["a", "panic"],
                vec!["c", "d"],
                vec!["a"],
                vec!["panic"],
            ]
        );
        assert_eq!(refused(&result), [1]);
    }

    /// A source that crashes on every batch holding a message `panic` or
    /// `slow` (with that poison's error), rejects `bad`, and decodes any other
    /// message into one row keyed by its body. Its first `unconfigured`
    /// configurations and first `own_errors` decodes fail with its own error.
    /// It records each call's bodies and each stall.
    #[derive(Default)]
    struct FakeSource {
        calls: Vec<Vec<String>>,
        unconfigured: usize,
        own_errors: usize,
        stalls: Vec<String>,
    }

    fn message(body: &str) -> Message {
        Message {
            body: body.as_bytes().to_vec(),
            exchange: "x".into(),
            routing_key: "k".into(),
            headers: Vec::new(),
            content_type: None,
            content_encoding: None,
            message_id: None,
            timestamp: None,
            redelivered: false,
        }
    }

    impl FakeSource {
        /// Decodes messages with these bodies the way a consumer does.
        fn decode_bodies(&mut self, bodies: &[&str]) -> (DecodedBatch, Vec<Option<Refusal>>) {
            let messages: Vec<Message> = bodies.iter().map(|b| message(b)).collect();
            futures::executor::block_on(decode(self, &messages)).expect("decoded")
        }

        fn calls(&self) -> Vec<Vec<&str>> {
            self.calls
                .iter()
                .map(|c| c.iter().map(String::as_str).collect())
                .collect()
        }
    }

    impl Source for FakeSource {
        async fn configure(&mut self) -> Result<(), CallError> {
            if self.unconfigured > 0 {
                self.unconfigured -= 1;
                return Err(CallError::Failed {
                    plugin: "fake-source@1".into(),
                    func: "configure",
                    error: PluginError::InvalidConfig("no such field".into()),
                });
            }
            Ok(())
        }

        async fn decode(&mut self, messages: &[Message]) -> Result<DecodedBatch, CallError> {
            let bodies: Vec<String> = messages
                .iter()
                .map(|m| String::from_utf8_lossy(&m.body).into_owned())
                .collect();
            self.calls.push(bodies.clone());
            if self.own_errors > 0 {
                self.own_errors -= 1;
                return Err(error("down", "decode"));
            }
            if let Some(poison) = bodies.iter().find(|b| POISONS.contains(&b.as_str())) {
                return Err(error(poison, "decode"));
            }
            let mut rows = RowWriter::new();
            let mut outcomes = Vec::new();
            for body in &bodies {
                if body == "bad" {
                    outcomes.push(MessageOutcome::Rejected("not a record".into()));
                } else {
                    rows.text(body).end_row();
                    outcomes.push(MessageOutcome::Rows(1));
                }
            }
            let b = rows.finish();
            Ok(DecodedBatch {
                outcomes,
                rows: RowBatch {
                    count: b.count,
                    data: b.data,
                },
            })
        }

        fn label(&self) -> String {
            "fake-source@1".into()
        }

        fn place(&self) -> (&str, usize) {
            ("fake", 0)
        }

        async fn stall(&mut self, what: &str, error: &CallError) -> Result<(), Stop> {
            self.stalls.push(format!("{what}: {}", error.kind()));
            Ok(())
        }
    }

    /// Per message: `-` for decoded, else the refusal's plugin and reason.
    fn refusals(refusals: &[Option<Refusal>]) -> Vec<String> {
        refusals
            .iter()
            .map(|r| match r {
                None => "-".into(),
                Some(r) => format!("{} {}: {}", r.stage, r.plugin, r.reason),
            })
            .collect()
    }

    #[test]
    fn a_message_that_crashes_the_source_is_found_by_halving_and_the_rest_decoded_in_order() {
        let mut source = FakeSource::default();
        let (decoded, refused) =
            source.decode_bodies(&["a", "b", "bad", "d", "e", "panic", "g", "h"]);
        assert_eq!(
            source.calls(),
            [
                vec!["a", "b", "bad", "d", "e", "panic", "g", "h"],
                vec!["a", "b", "bad", "d"],
                vec!["e", "panic", "g", "h"],
                vec!["e", "panic"],
                vec!["e"],
                vec!["panic"],
                vec!["g", "h"],
            ]
        );
        assert_eq!(
            refusals(&refused),
            [
                "-",
                "-",
                "decode fake-source@1: not a record",
                "-",
                "-",
                "decode fake-source@1: plugin fake@1 trapped in `decode`: panicked",
                "-",
                "-",
            ]
        );
        assert_eq!(
            decoded.outcomes[5],
            MessageOutcome::Rejected("plugin fake@1 trapped in `decode`: panicked".into())
        );
        assert_eq!(decoded.outcomes.len(), 8);
        assert_eq!(keys(&decoded.rows), ["a", "b", "d", "e", "g", "h"]);
        assert!(source.stalls.is_empty(), "a crash is taken apart at once");
    }

    #[test]
    fn a_message_past_a_time_limit_has_its_batch_decoded_one_message_at_a_time() {
        let mut source = FakeSource::default();
        let (decoded, refused) = source.decode_bodies(&["a", "slow", "c"]);
        assert_eq!(
            source.calls(),
            [vec!["a", "slow", "c"], vec!["a"], vec!["slow"], vec!["c"]]
        );
        let refused = refusals(&refused);
        assert_eq!((refused[0].as_str(), refused[2].as_str()), ("-", "-"));
        assert!(
            refused[1].starts_with("decode fake-source@1: plugin fake@1 ran past its wall-clock deadline of 2s in `decode`"),
            "{refused:?}"
        );
        assert_eq!(keys(&decoded.rows), ["a", "c"]);
    }

    #[test]
    fn a_source_that_fails_with_its_own_error_or_cannot_be_configured_waits_and_never_splits() {
        let mut source = FakeSource {
            unconfigured: 1,
            own_errors: 2,
            ..FakeSource::default()
        };
        let (decoded, refused) = source.decode_bodies(&["a", "b"]);
        assert_eq!(
            source.stalls,
            [
                "configuring the source: failed",
                "decoding: failed",
                "decoding: failed"
            ]
        );
        assert_eq!(source.calls(), vec![vec!["a", "b"]; 3]);
        assert_eq!(refusals(&refused), ["-", "-"]);
        assert_eq!(keys(&decoded.rows), ["a", "b"]);
    }

    fn failed(func: &'static str, error: PluginError) -> CallError {
        CallError::Failed {
            plugin: "w@1".into(),
            func,
            error,
        }
    }

    #[test]
    fn only_failures_while_writing_that_are_not_the_stores_may_be_the_rows() {
        assert!(may_be_the_rows(&failed(
            "write",
            PluginError::Fatal("x".into())
        )));
        assert!(may_be_the_rows(&CallError::Trap {
            plugin: "w@1".into(),
            func: "write",
            reason: "panicked".into(),
        }));
        assert!(!may_be_the_rows(&failed(
            "write",
            PluginError::Retriable("store down".into())
        )));
        assert!(!may_be_the_rows(&failed(
            "write",
            PluginError::InvalidConfig("tabel".into())
        )));
        assert!(!may_be_the_rows(&failed(
            "open",
            PluginError::Fatal("x".into())
        )));
        assert!(!may_be_the_rows(&CallError::Capability {
            plugin: "w@1".into(),
            reason: "no directory".into(),
        }));
    }

    #[test]
    fn isolating_is_hopeless_only_when_many_rows_failed_alone_and_nothing_committed() {
        let mut found = Isolation {
            alone: (0..HOPELESS_LEAVES as u32 - 1)
                .map(|r| (r, "e".into()))
                .collect(),
            ..Isolation::default()
        };
        assert!(!found.hopeless());
        found.alone.push((99, "e".into()));
        assert!(found.hopeless());
        found.committed = 1;
        assert!(!found.hopeless(), "a committed piece vouches for the store");
    }
}
