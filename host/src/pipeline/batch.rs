//! Bookkeeping on a decoded batch: which message each row came from, where each
//! row starts in the buffer, and putting split batches back together.

use std::ops::Range;

use sluice_plugin_sdk::ColumnType as SdkType;
use sluice_plugin_sdk::rows::RowReader;

use crate::plugin_runtime::{ColumnType, DecodedBatch, MessageOutcome, RowBatch};

/// For each row of the batch, the index of the message it came from.
pub(super) fn row_owners(outcomes: &[MessageOutcome]) -> Vec<u32> {
    let mut owners = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        let rows = match outcome {
            MessageOutcome::Rows(n) => *n,
            MessageOutcome::Partial(p) => p.rows,
            MessageOutcome::Rejected(_) => 0,
        };
        owners.extend(std::iter::repeat_n(i as u32, rows as usize));
    }
    owners
}

/// Concatenates two decoded halves of a batch (rows are self-delimiting, so
/// buffers append).
pub(super) fn merge_decoded(mut a: DecodedBatch, b: DecodedBatch) -> DecodedBatch {
    a.outcomes.extend(b.outcomes);
    a.rows.count += b.rows.count;
    a.rows.data.extend_from_slice(&b.rows.data);
    a
}

/// Byte offsets of the rows of a batch, to split it without decoding twice.
pub(super) struct RowSpans {
    /// `starts[i]` is where row `i` begins (relative to `starts[0]`, the offset in
    /// the batch these spans were cut from); one more entry for the end.
    starts: Vec<usize>,
}

impl RowSpans {
    pub(super) fn new(types: &[SdkType], batch: &RowBatch) -> Result<Self, String> {
        let mut starts = Vec::with_capacity(batch.count as usize + 1);
        let mut at = 0;
        starts.push(0);
        for row in RowReader::from_parts(types, &batch.data, batch.count) {
            let row = row.map_err(|e| e.to_string())?;
            at += row.raw().len();
            starts.push(at);
        }
        if starts.len() != batch.count as usize + 1 || at != batch.data.len() {
            return Err(format!(
                "the batch announces {} rows that do not fill its {} bytes",
                batch.count,
                batch.data.len()
            ));
        }
        Ok(Self { starts })
    }

    fn range(&self, from: u32, to: u32) -> Range<usize> {
        let origin = self.starts[0];
        self.starts[from as usize] - origin..self.starts[to as usize] - origin
    }

    /// Rows `from..to` (relative to this span's batch) as a batch of their own.
    pub(super) fn slice(&self, batch: &RowBatch, from: u32, to: u32) -> RowBatch {
        let range = self.range(from, to);
        RowBatch {
            count: to - from,
            data: batch.data[range].to_vec(),
        }
    }

    /// The spans of rows `from..to`, for the batch [`slice`](Self::slice) makes.
    pub(super) fn sub(&self, from: u32, to: u32) -> RowSpans {
        RowSpans {
            starts: self.starts[from as usize..=to as usize].to_vec(),
        }
    }
}

/// The SDK's twin of a WIT column type.
pub(super) fn sdk_type(t: ColumnType) -> SdkType {
    match t {
        ColumnType::Boolean => SdkType::Boolean,
        ColumnType::Int32 => SdkType::Int32,
        ColumnType::Int64 => SdkType::Int64,
        ColumnType::Float64 => SdkType::Float64,
        ColumnType::Numeric => SdkType::Numeric,
        ColumnType::Text => SdkType::Text,
        ColumnType::Bytes => SdkType::Bytes,
        ColumnType::Timestamp => SdkType::Timestamp,
        ColumnType::Date => SdkType::Date,
        ColumnType::Uuid => SdkType::Uuid,
        ColumnType::Json => SdkType::Json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_plugin_sdk::rows::RowWriter;

    fn batch(ids: &[&str]) -> RowBatch {
        let mut w = RowWriter::new();
        for id in ids {
            w.text(id).int64(id.len() as i64).end_row();
        }
        let b = w.finish();
        RowBatch {
            count: b.count,
            data: b.data,
        }
    }

    #[test]
    fn rows_belong_to_their_messages() {
        let outcomes = [
            MessageOutcome::Rows(2),
            MessageOutcome::Rejected("bad".into()),
            MessageOutcome::Rows(0),
            MessageOutcome::Rows(1),
            MessageOutcome::Partial(crate::plugin_runtime::PartialOutcome {
                rows: 2,
                rejected: vec![crate::plugin_runtime::RecordRejection {
                    index: 1,
                    body: b"{".to_vec(),
                    reason: "bad".into(),
                }],
            }),
        ];
        assert_eq!(row_owners(&outcomes), vec![0, 0, 3, 4, 4]);
    }

    #[test]
    fn a_batch_splits_into_halves_that_hold_the_same_rows() {
        let types = [SdkType::Text, SdkType::Int64];
        let whole = batch(&["a", "bb", "ccc", "dddd", "eeeee"]);
        let spans = RowSpans::new(&types, &whole).unwrap();
        let left = spans.slice(&whole, 0, 2);
        let right = spans.slice(&whole, 2, 5);
        assert_eq!(left.data, batch(&["a", "bb"]).data);
        assert_eq!(right.data, batch(&["ccc", "dddd", "eeeee"]).data);
        // And again, inside the right half.
        let right_spans = spans.sub(2, 5);
        assert_eq!(
            right_spans.slice(&right, 1, 3).data,
            batch(&["dddd", "eeeee"]).data
        );
        assert_eq!(right_spans.slice(&right, 0, 1).count, 1);
    }

    #[test]
    fn merged_halves_equal_the_whole() {
        let a = DecodedBatch {
            outcomes: vec![MessageOutcome::Rows(2)],
            rows: batch(&["a", "b"]),
        };
        let b = DecodedBatch {
            outcomes: vec![
                MessageOutcome::Rejected("x".into()),
                MessageOutcome::Rows(1),
            ],
            rows: batch(&["c"]),
        };
        let merged = merge_decoded(a, b);
        assert_eq!(merged.rows.data, batch(&["a", "b", "c"]).data);
        assert_eq!(merged.rows.count, 3);
        assert_eq!(merged.outcomes.len(), 3);
    }

    #[test]
    fn a_short_buffer_is_an_error_not_a_panic() {
        let types = [SdkType::Text, SdkType::Int64];
        let mut b = batch(&["a", "b"]);
        b.count = 3;
        assert!(RowSpans::new(&types, &b).is_err());
    }
}
