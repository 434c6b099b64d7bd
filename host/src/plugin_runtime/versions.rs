//! Values of each WIT version converted to and from the one shape the host works
//! with (see the re-exports of [`super`]): a source of 0.1.0 gets its messages
//! without `content-encoding`, and its outcomes and schema come back in the
//! host's types. Every conversion is total: 0.2.0 only added to 0.1.0.

use super::bindings::{v0_1_0, v0_2_0};
use super::{
    Column, ColumnType, DecodedBatch, Message, MessageOutcome, PluginError, RowBatch, Schema,
};

use v0_1_0::types as t1;
use v0_2_0::types as t2;

/// A message as a 0.1.0 source receives it: everything but `content-encoding`,
/// which 0.1.0 has no field for (such a source sees the body as it came).
pub(super) fn message_to_v0_1_0(m: &Message) -> t1::Message {
    t1::Message {
        body: m.body.clone(),
        exchange: m.exchange.clone(),
        routing_key: m.routing_key.clone(),
        headers: m
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), header_to_v0_1_0(value)))
            .collect(),
        content_type: m.content_type.clone(),
        message_id: m.message_id.clone(),
        timestamp: m.timestamp,
        redelivered: m.redelivered,
    }
}

fn header_to_v0_1_0(v: &t2::HeaderValue) -> t1::HeaderValue {
    match v {
        t2::HeaderValue::Void => t1::HeaderValue::Void,
        t2::HeaderValue::Boolean(b) => t1::HeaderValue::Boolean(*b),
        t2::HeaderValue::Int(i) => t1::HeaderValue::Int(*i),
        t2::HeaderValue::Float(f) => t1::HeaderValue::Float(*f),
        t2::HeaderValue::Text(s) => t1::HeaderValue::Text(s.clone()),
        t2::HeaderValue::Bytes(b) => t1::HeaderValue::Bytes(b.clone()),
        t2::HeaderValue::Timestamp(t) => t1::HeaderValue::Timestamp(*t),
    }
}

/// A 0.1.0 source's batch: its two outcomes exist unchanged in 0.2.0.
pub(super) fn decoded_from_v0_1_0(
    d: v0_1_0::source::exports::sluice::plugin::source::DecodedBatch,
) -> DecodedBatch {
    use v0_1_0::source::exports::sluice::plugin::source::MessageOutcome as O;
    DecodedBatch {
        outcomes: d
            .outcomes
            .into_iter()
            .map(|o| match o {
                O::Rows(n) => MessageOutcome::Rows(n),
                O::Rejected(reason) => MessageOutcome::Rejected(reason),
            })
            .collect(),
        rows: d.rows,
    }
}

/// A 0.2.0 source's batch; the rows move, nothing is copied.
pub(super) fn decoded_from_v0_2_0(
    d: v0_2_0::source::exports::sluice::plugin::source::DecodedBatch,
) -> DecodedBatch {
    DecodedBatch {
        outcomes: d.outcomes,
        rows: RowBatch {
            count: d.rows.count,
            data: d.rows.data,
        },
    }
}

/// A schema declared by a 0.2.0 source, in the type writers receive.
pub(super) fn schema_from_v0_2_0(s: t2::Schema) -> Schema {
    Schema {
        name: s.name,
        version: s.version,
        columns: s
            .columns
            .into_iter()
            .map(|c| Column {
                name: c.name,
                type_: column_type_from_v0_2_0(c.type_),
                nullable: c.nullable,
                key: c.key,
            })
            .collect(),
    }
}

fn column_type_from_v0_2_0(t: t2::ColumnType) -> ColumnType {
    match t {
        t2::ColumnType::Boolean => ColumnType::Boolean,
        t2::ColumnType::Int32 => ColumnType::Int32,
        t2::ColumnType::Int64 => ColumnType::Int64,
        t2::ColumnType::Float64 => ColumnType::Float64,
        t2::ColumnType::Numeric => ColumnType::Numeric,
        t2::ColumnType::Text => ColumnType::Text,
        t2::ColumnType::Bytes => ColumnType::Bytes,
        t2::ColumnType::Timestamp => ColumnType::Timestamp,
        t2::ColumnType::Date => ColumnType::Date,
        t2::ColumnType::Uuid => ColumnType::Uuid,
        t2::ColumnType::Json => ColumnType::Json,
    }
}

/// A 0.2.0 plugin's error, in the host's type.
pub(super) fn error_from_v0_2_0(e: t2::PluginError) -> PluginError {
    match e {
        t2::PluginError::InvalidConfig(m) => PluginError::InvalidConfig(m),
        t2::PluginError::Retriable(m) => PluginError::Retriable(m),
        t2::PluginError::Fatal(m) => PluginError::Fatal(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin_runtime::{PartialOutcome, RecordRejection};

    #[test]
    fn a_0_1_0_source_sees_every_field_but_content_encoding() {
        let m = Message {
            body: b"{}".to_vec(),
            exchange: "x".into(),
            routing_key: "k".into(),
            headers: vec![("h".into(), t2::HeaderValue::Int(7))],
            content_type: Some("application/json".into()),
            content_encoding: Some("gzip".into()),
            message_id: Some("m-1".into()),
            timestamp: Some(9),
            redelivered: true,
        };
        let old = message_to_v0_1_0(&m);
        assert_eq!(old.body, m.body);
        assert_eq!(
            old.headers,
            vec![("h".to_string(), t1::HeaderValue::Int(7))]
        );
        assert_eq!(
            (old.message_id.as_deref(), old.timestamp, old.redelivered),
            (Some("m-1"), Some(9), true)
        );
    }

    #[test]
    fn outcomes_of_both_versions_become_the_hosts() {
        use v0_1_0::source::exports::sluice::plugin::source as s1;
        let old = decoded_from_v0_1_0(s1::DecodedBatch {
            outcomes: vec![
                s1::MessageOutcome::Rows(2),
                s1::MessageOutcome::Rejected("bad".into()),
            ],
            rows: RowBatch {
                count: 2,
                data: vec![1, 2],
            },
        });
        assert_eq!(
            old.outcomes,
            [
                MessageOutcome::Rows(2),
                MessageOutcome::Rejected("bad".into())
            ]
        );
        assert_eq!(old.rows.data, [1, 2]);

        use v0_2_0::source::exports::sluice::plugin::source as s2;
        let partial = MessageOutcome::Partial(PartialOutcome {
            rows: 1,
            rejected: vec![RecordRejection {
                index: 3,
                body: b"{".to_vec(),
                reason: "EOF".into(),
            }],
        });
        let new = decoded_from_v0_2_0(s2::DecodedBatch {
            outcomes: vec![partial.clone()],
            rows: t2::RowBatch {
                count: 1,
                data: vec![5],
            },
        });
        assert_eq!(new.outcomes, [partial]);
        assert_eq!((new.rows.count, new.rows.data), (1, vec![5]));
    }
}
