//! Dead letters that always fit the broker's frame.
//!
//! AMQP carries a message's properties, headers included, in one content-header
//! frame, and that frame must fit the connection's negotiated `frame_max`
//! (RabbitMQ: 131072 bytes by default). A header frame one byte larger makes the
//! broker close the whole connection (`FRAME_ERROR … frame_too_large`): every
//! consumer of the pipeline loses its session, the batch comes back, and the same
//! dead letter is tried again, forever. The body is not bounded (it is split
//! across body frames).
//!
//! So a dead letter's properties are fitted before it is published, measured
//! with the encoder lapin sends them with (amq-protocol's `gen_frame`), in three
//! steps, each taken only when the one before was not enough:
//!
//! 1. `x-sluice-reason` is cut to [`REASON_MAX_BYTES`], with a marker saying how
//!    many bytes were cut (a source's or a writer's reason is unbounded: a 300 KB
//!    text, or the joined reasons of 2,000 refused rows);
//! 2. the original message's headers are dropped, largest first, until the frame
//!    fits [`FRAME_SAFETY_MARGIN`] below `frame_max`; the dead letter names them
//!    in `x-sluice-dropped-headers`;
//! 3. with every original header dropped (only with a small `frame_max` or large
//!    original properties), the reason is cut further, to what is left.
//!
//! The `x-sluice-*` headers Sluice adds always survive.

use std::borrow::Cow;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame};
use anyhow::bail;
use lapin::BasicProperties;
use lapin::types::generation::{gen_short_string, gen_value};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::Received;
use super::headers;
use crate::plugin_runtime::Message;

/// The most bytes of `x-sluice-reason` a dead letter carries (16 KiB, the cut
/// marker included). Enough for any error text and a few hundred row reasons;
/// what is cut is counted in the marker.
pub const REASON_MAX_BYTES: usize = 16 * 1024;

/// Bytes a dead letter's header frame stays below the negotiated `frame_max`.
/// The measured size is the whole frame (its 8 bytes of framing included), so
/// this is insurance, not overhead: it is what a difference between our
/// measurement and what lapin sends would have to exceed to close the connection.
pub const FRAME_SAFETY_MARGIN: usize = 512;

/// The most bytes of header names listed in `x-sluice-dropped-headers`; the
/// count and total size are always there.
pub(super) const DROPPED_NAMES_MAX_BYTES: usize = 1024;

/// The AMQP class id of `basic`, whose content headers carry a publish's
/// properties.
const BASIC_CLASS_ID: u16 = 60;

/// A message on its way to the dead-letter exchange, and why.
pub struct DeadLetter<'a> {
    /// The message as received.
    pub message: &'a Message,
    /// Its original properties.
    pub received: &'a Received,
    /// The pipeline.
    pub pipeline: &'a str,
    /// `decode` or `write`.
    pub stage: &'static str,
    /// `name@version` of the plugin that refused it.
    pub plugin: &'a str,
    /// Why.
    pub reason: String,
    /// Set when one record of the message is dead-lettered rather than the
    /// message: the dead letter's body is then the record's bytes.
    pub record: Option<RecordLetter<'a>>,
}

/// One rejected record of a message that holds many.
pub struct RecordLetter<'a> {
    /// Its index in the message, from 0 (`x-sluice-record-index`).
    pub index: u32,
    /// Its bytes, as the source found them (decompressed): the dead letter's body.
    pub body: &'a [u8],
}

impl DeadLetter<'_> {
    /// The reason as logged: cut like the header (at most [`REASON_MAX_BYTES`]),
    /// so that one refused message cannot write a 300 KB log line.
    pub fn logged_reason(&self) -> Cow<'_, str> {
        cut(&self.reason, REASON_MAX_BYTES)
    }

    /// What the dead letter carries: the message's body, or the record's bytes.
    pub fn body(&self) -> &[u8] {
        match &self.record {
            Some(record) => record.body,
            None => &self.message.body,
        }
    }

    /// The dead letter's properties, fitted to `frame_max`: the original
    /// properties, persistent, with the `x-sluice-*` headers added.
    pub(super) fn fit(&self, frame_max: u32, failed_at: u64) -> anyhow::Result<Fitted> {
        let mut original = Cow::Borrowed(&self.received.properties);
        if self.record.is_some() && original.content_encoding().is_some() {
            // A record's bytes are as the source read them, decompressed. AMQP
            // properties cannot be unset, so the encoding says so instead.
            original = Cow::Owned(
                original
                    .into_owned()
                    .with_content_encoding("identity".into()),
            );
        }
        fit(
            &original,
            &Added {
                reason: &self.reason,
                plugin: self.plugin,
                stage: self.stage,
                pipeline: self.pipeline,
                exchange: &self.message.exchange,
                routing_key: &self.message.routing_key,
                failed_at,
                record: self.record.as_ref().map(|r| AddedRecord {
                    index: r.index,
                    original_message_id: self.message.message_id.as_deref(),
                }),
                stream: self
                    .received
                    .stream
                    .as_deref()
                    .map(|stream| (stream, self.received.tag)),
            },
            self.body().len(),
            frame_max,
        )
    }
}

/// The headers Sluice adds to a dead letter, before fitting.
pub(super) struct Added<'a> {
    pub reason: &'a str,
    pub plugin: &'a str,
    pub stage: &'a str,
    pub pipeline: &'a str,
    pub exchange: &'a str,
    pub routing_key: &'a str,
    /// Seconds since the Unix epoch.
    pub failed_at: u64,
    /// For a record's dead letter: which record of which message.
    pub record: Option<AddedRecord<'a>>,
    /// A stream message's stream and offset.
    pub stream: Option<(&'a str, u64)>,
}

/// The headers Sluice adds to a record's dead letter.
pub(super) struct AddedRecord<'a> {
    pub index: u32,
    /// The message's `message-id`, if it had one.
    pub original_message_id: Option<&'a str>,
}

/// A dead letter's properties, and what had to give way for them to fit.
#[derive(Debug)]
pub(super) struct Fitted {
    /// What to publish.
    pub properties: BasicProperties,
    /// The encoded size of its content-header frame, framing included.
    pub frame_bytes: usize,
    /// The reason's size before any cut.
    pub reason_bytes: usize,
    /// Bytes of the reason that were cut (0: it is whole).
    pub reason_cut_bytes: usize,
    /// The original headers dropped, with their encoded sizes, largest first.
    pub dropped: Vec<(String, usize)>,
}

impl Fitted {
    /// The encoded size of the dropped headers, together.
    pub fn dropped_bytes(&self) -> usize {
        self.dropped.iter().map(|(_, size)| size).sum()
    }
}

/// `text`, or if it is longer than `max` bytes, its start and a marker saying
/// how many bytes were cut (`… [cut: 283417 more bytes]`), at most `max` bytes in
/// all and cut at a character boundary. A `max` smaller than the marker gives
/// the marker alone.
pub fn cut(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    // The marker's length for the largest count it can show: the real one is no
    // longer, so the result stays within `max`.
    let longest_marker = marker(text.len()).len();
    let mut keep = max.saturating_sub(longest_marker);
    while !text.is_char_boundary(keep) {
        keep -= 1;
    }
    let mut out = String::with_capacity(max);
    out.push_str(&text[..keep]);
    out.push_str(&marker(text.len() - keep));
    Cow::Owned(out)
}

fn marker(cut_bytes: usize) -> String {
    format!("… [cut: {cut_bytes} more bytes]")
}

/// The bytes cut from a text of `whole` bytes that came out of [`cut`] as `out`.
fn cut_bytes(whole: &str, out: &str) -> usize {
    if whole.len() == out.len() {
        0
    } else {
        // `out` is a kept prefix followed by the marker.
        out.rfind("… [cut: ")
            .map(|prefix| whole.len() - prefix)
            .unwrap_or(0)
    }
}

/// The encoded size of a dead letter's content-header frame, exactly as lapin
/// writes it for `basic.publish` (frame type, channel, length, class, weight,
/// body size, property flags, properties, frame end).
pub(super) fn header_frame_bytes(properties: &BasicProperties, body_size: usize) -> usize {
    let frame = AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: BASIC_CLASS_ID,
            body_size: body_size as u64,
            properties: properties.clone(),
        },
    );
    match gen_frame(&frame)(WriteContext::from(Vec::new())) {
        Ok(ctx) => ctx.write.len(),
        // Writing to a Vec cannot fail; a size that fits nothing makes the
        // caller drop and cut until it can measure.
        Err(_) => usize::MAX,
    }
}

/// The encoded size of one field-table entry: its name and its typed value.
fn entry_bytes(name: &ShortString, value: &AMQPValue) -> usize {
    let encoded = gen_short_string(name.as_str())(WriteContext::from(Vec::new()))
        .and_then(|ctx| gen_value(value)(ctx));
    match encoded {
        Ok(ctx) => ctx.write.len(),
        Err(_) => usize::MAX,
    }
}

/// The names of the headers Sluice sets: an original header of the same name is
/// replaced, never kept beside it.
const ADDED_NAMES: [&str; 12] = [
    headers::REASON,
    headers::PLUGIN,
    headers::STAGE,
    headers::PIPELINE,
    headers::ORIGINAL_EXCHANGE,
    headers::ORIGINAL_ROUTING_KEY,
    headers::FAILED_AT,
    headers::DROPPED_HEADERS,
    headers::RECORD_INDEX,
    headers::ORIGINAL_MESSAGE_ID,
    headers::STREAM,
    headers::STREAM_OFFSET,
];

/// Builds a dead letter's properties from the original ones and what Sluice
/// adds, and fits them to `frame_max` (see the module documentation). Fails only
/// when even the smallest form does not fit: every original header dropped, the
/// reason reduced to its marker. That takes a `frame_max` near the AMQP minimum
/// (4096) and a pipeline or plugin name of kilobytes, which is configuration,
/// never a message.
pub(super) fn fit(
    original: &BasicProperties,
    added: &Added<'_>,
    body_size: usize,
    frame_max: u32,
) -> anyhow::Result<Fitted> {
    let budget = usize::try_from(frame_max)
        .unwrap_or(usize::MAX)
        .saturating_sub(FRAME_SAFETY_MARGIN);
    let mut originals: Vec<(ShortString, AMQPValue, usize)> = original
        .headers()
        .as_ref()
        .map(|table| {
            table
                .inner()
                .iter()
                .filter(|(name, _)| !ADDED_NAMES.contains(&name.as_str()))
                .map(|(name, value)| (name.clone(), value.clone(), entry_bytes(name, value)))
                .collect()
        })
        .unwrap_or_default();
    let build = |kept: &[(ShortString, AMQPValue, usize)], reason: &str, dropped: Option<&str>| {
        let mut table = FieldTable::default();
        for (name, value, _) in kept {
            table.insert(name.clone(), value.clone());
        }
        let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
        table.insert(headers::REASON.into(), text(reason));
        table.insert(headers::PLUGIN.into(), text(added.plugin));
        table.insert(headers::STAGE.into(), text(added.stage));
        table.insert(headers::PIPELINE.into(), text(added.pipeline));
        table.insert(headers::ORIGINAL_EXCHANGE.into(), text(added.exchange));
        table.insert(
            headers::ORIGINAL_ROUTING_KEY.into(),
            text(added.routing_key),
        );
        table.insert(
            headers::FAILED_AT.into(),
            AMQPValue::Timestamp(added.failed_at),
        );
        if let Some(dropped) = dropped {
            table.insert(headers::DROPPED_HEADERS.into(), text(dropped));
        }
        if let Some(record) = &added.record {
            table.insert(
                headers::RECORD_INDEX.into(),
                AMQPValue::LongLongInt(i64::from(record.index)),
            );
            if let Some(id) = record.original_message_id {
                table.insert(headers::ORIGINAL_MESSAGE_ID.into(), text(id));
            }
        }
        if let Some((stream, offset)) = added.stream {
            table.insert(headers::STREAM.into(), text(stream));
            table.insert(
                headers::STREAM_OFFSET.into(),
                AMQPValue::LongLongInt(i64::try_from(offset).unwrap_or(i64::MAX)),
            );
        }
        // Persistent, whatever it was: a dead letter is kept until someone looks.
        original.clone().with_headers(table).with_delivery_mode(2)
    };
    let done = |properties: BasicProperties,
                frame_bytes: usize,
                reason: &str,
                dropped: Vec<(String, usize)>| Fitted {
        properties,
        frame_bytes,
        reason_bytes: added.reason.len(),
        reason_cut_bytes: cut_bytes(added.reason, reason),
        dropped,
    };

    // 1. The reason, cut to its documented maximum; every original header kept.
    let reason = cut(added.reason, REASON_MAX_BYTES);
    let properties = build(&originals, &reason, None);
    let size = header_frame_bytes(&properties, body_size);
    if size <= budget {
        return Ok(done(properties, size, &reason, Vec::new()));
    }

    // 2. Drop original headers, largest first (ties by name, so the same message
    // always loses the same ones), until the frame fits. Sizes add up, so one
    // pass picks them; the dropped-headers header is counted at its largest.
    let reserve = entry_bytes(
        &headers::DROPPED_HEADERS.into(),
        &AMQPValue::LongString(LongString::from(vec![0u8; DROPPED_NAMES_MAX_BYTES + 64])),
    );
    originals.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
    let mut excess = (size + reserve).saturating_sub(budget);
    let mut split = 0;
    while excess > 0 && split < originals.len() {
        excess = excess.saturating_sub(originals[split].2);
        split += 1;
    }
    let dropped: Vec<(String, usize)> = originals
        .drain(..split)
        .map(|(name, _, size)| (name.as_str().to_string(), size))
        .collect();
    let names = dropped
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let total: usize = dropped.iter().map(|(_, size)| size).sum();
    let dropped_header = |names: &str| {
        format!(
            "{} headers, {total} bytes: {}",
            dropped.len(),
            cut(names, DROPPED_NAMES_MAX_BYTES)
        )
    };
    // No original header to drop: no header saying none was.
    let mut summary = (!dropped.is_empty()).then(|| dropped_header(&names));
    let properties = build(&originals, &reason, summary.as_deref());
    let size = header_frame_bytes(&properties, body_size);
    if size <= budget {
        return Ok(done(properties, size, &reason, dropped));
    }

    // 3. Every original header is gone and it still does not fit: cut the
    // reason to what is left, then the list of dropped names. Each pass
    // measures again; the cuts only shrink, so two passes settle it.
    let mut reason = reason.into_owned();
    for _ in 0..3 {
        let properties = build(&originals, &reason, summary.as_deref());
        let size = header_frame_bytes(&properties, body_size);
        if size <= budget {
            return Ok(done(properties, size, &reason, dropped));
        }
        let excess = size - budget;
        let room = reason.len().saturating_sub(excess);
        reason = cut(added.reason, room).into_owned();
        if room == 0 && summary.is_some() {
            summary = Some(dropped_header(&cut(&names, 0)));
        }
    }
    bail!(
        "a dead letter of pipeline `{}` cannot fit the broker's frame_max of {frame_max} bytes \
         even with every original header dropped and its reason cut: raise `frame_max` in the \
         AMQP URL, or shorten the pipeline's or the plugin's name",
        added.pipeline
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RabbitMQ's default `frame_max`.
    const RABBITMQ_FRAME_MAX: u32 = 131_072;

    fn added(reason: &str) -> Added<'_> {
        Added {
            reason,
            plugin: "json-source@0.1.0",
            stage: "decode",
            pipeline: "cdr",
            exchange: "cdr.x",
            routing_key: "cdr.voice",
            failed_at: 1_700_000_000,
            record: None,
            stream: None,
        }
    }

    fn original(headers: &[(&str, usize)]) -> BasicProperties {
        let mut table = FieldTable::default();
        for (name, size) in headers {
            table.insert(
                (*name).into(),
                AMQPValue::LongString(LongString::from(vec![b'h'; *size])),
            );
        }
        BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id("m-1".into())
            .with_headers(table)
    }

    fn header<'a>(p: &'a BasicProperties, name: &str) -> Option<&'a AMQPValue> {
        p.headers().as_ref().and_then(|t| t.inner().get(name))
    }

    fn text(p: &BasicProperties, name: &str) -> String {
        match header(p, name) {
            Some(AMQPValue::LongString(s)) => String::from_utf8(s.as_bytes().to_vec()).unwrap(),
            other => panic!("header {name}: {other:?}"),
        }
    }

    #[test]
    fn a_short_text_is_not_cut() {
        assert!(matches!(cut("row 3: too long", 100), Cow::Borrowed(_)));
        assert_eq!(cut("", 0), "");
    }

    #[test]
    fn a_long_text_is_cut_to_its_maximum_with_a_marker_counting_the_cut() {
        let reason = "r".repeat(300_000);
        let out = cut(&reason, REASON_MAX_BYTES);
        assert!(out.len() <= REASON_MAX_BYTES, "{}", out.len());
        assert!(out.len() > REASON_MAX_BYTES - 40, "{}", out.len());
        let kept = out.find('…').unwrap();
        assert!(reason.starts_with(&out[..kept]));
        assert!(
            out.ends_with(&format!("… [cut: {} more bytes]", 300_000 - kept)),
            "{}",
            &out[kept..]
        );
        assert_eq!(cut_bytes(&reason, &out), 300_000 - kept);
    }

    #[test]
    fn cutting_never_splits_a_character() {
        // 3-byte characters, so most cut points fall inside one.
        let reason = "€".repeat(10_000);
        for max in [40, 41, 42, 43, 1000, 1001] {
            let out = cut(&reason, max);
            assert!(out.len() <= max, "max {max}: {}", out.len());
            let kept = out.rfind("… [cut: ").unwrap();
            assert!(out[..kept].chars().all(|c| c == '€'));
            assert!(out.ends_with(&format!("[cut: {} more bytes]", reason.len() - kept)));
        }
    }

    #[test]
    fn a_maximum_below_the_marker_gives_the_marker_alone() {
        assert_eq!(cut("abcdefghij", 3), "… [cut: 10 more bytes]");
    }

    #[test]
    fn the_joined_reasons_of_2000_refused_rows_are_cut_to_the_maximum() {
        // As the pipeline joins a writer's row rejections for one message: the
        // 237 KB case of issue 12.
        let reason = (0..2000)
            .map(|row| {
                format!(
                    "row {row}: new row for relation \"cdr\" violates check constraint \
                     \"cdr_duration_s_check\" (duration {row} is out of range, see the \
                     documentation of the table for the allowed values)"
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        assert!(reason.len() > 237_000, "{}", reason.len());
        let fitted = fit(&original(&[]), &added(&reason), 200, RABBITMQ_FRAME_MAX).unwrap();
        let published = text(&fitted.properties, headers::REASON);
        assert!(published.len() <= REASON_MAX_BYTES);
        assert!(published.starts_with("row 0: new row for relation"));
        assert!(published.ends_with(&format!("… [cut: {} more bytes]", fitted.reason_cut_bytes)));
        assert_eq!(
            fitted.reason_cut_bytes,
            reason.len() - published.rfind("… [cut: ").unwrap()
        );
        assert!(fitted.dropped.is_empty());
        assert!(header(&fitted.properties, headers::DROPPED_HEADERS).is_none());
    }

    #[test]
    fn a_dead_letter_that_fits_keeps_everything() {
        let props = original(&[("x-trace-id", 16), ("x-tenant", 8)]);
        let fitted = fit(&props, &added("not valid JSON"), 10, RABBITMQ_FRAME_MAX).unwrap();
        let p = &fitted.properties;
        assert_eq!(text(p, headers::REASON), "not valid JSON");
        assert_eq!(text(p, headers::PLUGIN), "json-source@0.1.0");
        assert_eq!(text(p, headers::STAGE), "decode");
        assert_eq!(text(p, headers::PIPELINE), "cdr");
        assert_eq!(text(p, headers::ORIGINAL_EXCHANGE), "cdr.x");
        assert_eq!(text(p, headers::ORIGINAL_ROUTING_KEY), "cdr.voice");
        assert_eq!(
            header(p, headers::FAILED_AT),
            Some(&AMQPValue::Timestamp(1_700_000_000))
        );
        assert_eq!(text(p, "x-trace-id").len(), 16);
        assert_eq!(text(p, "x-tenant").len(), 8);
        assert!(header(p, headers::DROPPED_HEADERS).is_none());
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "m-1");
        assert_eq!((fitted.reason_cut_bytes, fitted.dropped.len()), (0, 0));
        assert_eq!(fitted.frame_bytes, header_frame_bytes(p, 10));
    }

    #[test]
    fn the_measured_size_is_the_frame_lapin_writes() {
        // An empty property set: 7 bytes of frame header, 12 of class, weight
        // and body size, 2 of property flags, 1 frame end.
        assert_eq!(header_frame_bytes(&BasicProperties::default(), 0), 22);
        // A header adds its name (1 + len), its type tag (1) and a long string
        // (4 + len), and the table its length (4).
        let mut table = FieldTable::default();
        table.insert("ab".into(), AMQPValue::LongString("xyz".into()));
        let p = BasicProperties::default().with_headers(table);
        assert_eq!(header_frame_bytes(&p, 0), 22 + 4 + 3 + 1 + 4 + 3);
        assert_eq!(
            entry_bytes(&"ab".into(), &AMQPValue::LongString("xyz".into())),
            3 + 1 + 4 + 3
        );
    }

    #[test]
    fn original_headers_too_large_to_fit_are_dropped_largest_first_and_named() {
        // About 130 KB of headers: the original fitted the frame, the dead letter
        // with Sluice's headers added would not.
        let props = original(&[
            ("x-blob", 100_000),
            ("x-blob-2", 30_500),
            ("x-trace-id", 16),
        ]);
        assert!(header_frame_bytes(&props, 10) <= RABBITMQ_FRAME_MAX as usize);
        let fitted = fit(&props, &added("not valid JSON"), 10, RABBITMQ_FRAME_MAX).unwrap();
        let p = &fitted.properties;
        assert!(fitted.frame_bytes <= RABBITMQ_FRAME_MAX as usize - FRAME_SAFETY_MARGIN);
        assert_eq!(fitted.frame_bytes, header_frame_bytes(p, 10));
        assert_eq!(fitted.dropped, vec![("x-blob".to_string(), 100_000 + 12)]);
        assert!(header(p, "x-blob").is_none());
        assert_eq!(text(p, "x-blob-2").len(), 30_500);
        assert_eq!(text(p, "x-trace-id").len(), 16);
        assert_eq!(
            text(p, headers::DROPPED_HEADERS),
            "1 headers, 100012 bytes: x-blob"
        );
        assert_eq!(text(p, headers::REASON), "not valid JSON");
    }

    #[test]
    fn many_small_headers_are_dropped_and_their_names_listed_within_a_bound() {
        let names: Vec<String> = (0..20_000).map(|i| format!("x-h-{i:05}")).collect();
        let headers_: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 4)).collect();
        let props = original(&headers_);
        let fitted = fit(&props, &added(&"r".repeat(300_000)), 10, RABBITMQ_FRAME_MAX).unwrap();
        assert!(fitted.frame_bytes <= RABBITMQ_FRAME_MAX as usize - FRAME_SAFETY_MARGIN);
        assert!(!fitted.dropped.is_empty());
        let kept = fitted.properties.headers().as_ref().unwrap().inner().len();
        assert_eq!(kept + fitted.dropped.len(), 20_000 + 8);
        let summary = text(&fitted.properties, headers::DROPPED_HEADERS);
        assert!(
            summary.starts_with(&format!(
                "{} headers, {} bytes: x-h-",
                fitted.dropped.len(),
                fitted.dropped_bytes()
            )),
            "{summary}"
        );
        assert!(
            summary.len() < DROPPED_NAMES_MAX_BYTES + 64,
            "{}",
            summary.len()
        );
        assert!(summary.contains("more bytes]"), "{summary}");
        assert!(fitted.reason_cut_bytes > 0);
    }

    #[test]
    fn original_sluice_headers_are_replaced_not_kept() {
        let props = original(&[(headers::REASON, 200_000), (headers::DROPPED_HEADERS, 5)]);
        let fitted = fit(&props, &added("new reason"), 10, RABBITMQ_FRAME_MAX).unwrap();
        assert_eq!(text(&fitted.properties, headers::REASON), "new reason");
        assert!(header(&fitted.properties, headers::DROPPED_HEADERS).is_none());
        assert!(fitted.dropped.is_empty());
    }

    #[test]
    fn whatever_the_input_the_frame_fits_the_smallest_frame_max() {
        // The AMQP minimum frame_max, long original properties, a huge reason and
        // headers: the reason is cut below its usual maximum to make room.
        let long = "p".repeat(255);
        let props = original(&[("x-blob", 100_000), ("x-small", 10)])
            .with_correlation_id(long.as_str().into())
            .with_reply_to(long.as_str().into())
            .with_app_id(long.as_str().into())
            .with_type(long.as_str().into());
        for frame_max in [4096, 8192, 20_000, RABBITMQ_FRAME_MAX] {
            for reason in ["short".to_string(), "€".repeat(100_000)] {
                let fitted = fit(&props, &added(&reason), 1 << 30, frame_max).unwrap();
                assert!(
                    fitted.frame_bytes <= frame_max as usize - FRAME_SAFETY_MARGIN,
                    "frame_max {frame_max}: {}",
                    fitted.frame_bytes
                );
                assert_eq!(
                    fitted.frame_bytes,
                    header_frame_bytes(&fitted.properties, 1 << 30)
                );
                let published = text(&fitted.properties, headers::REASON);
                assert!(published.len() <= REASON_MAX_BYTES);
                assert_eq!(text(&fitted.properties, headers::PIPELINE), "cdr");
                assert_eq!(fitted.properties.app_id().as_ref().unwrap().as_str(), long);
            }
        }
    }

    #[test]
    fn a_records_dead_letter_names_its_index_and_its_message() {
        let mut a = added("record 7: expected value");
        a.record = Some(AddedRecord {
            index: 7,
            original_message_id: Some("m-1"),
        });
        let fitted = fit(&original(&[]), &a, 10, RABBITMQ_FRAME_MAX).unwrap();
        let p = &fitted.properties;
        assert_eq!(
            header(p, headers::RECORD_INDEX),
            Some(&AMQPValue::LongLongInt(7))
        );
        assert_eq!(text(p, headers::ORIGINAL_MESSAGE_ID), "m-1");
        assert_eq!(text(p, headers::REASON), "record 7: expected value");
        // A whole message's dead letter has neither.
        let whole = fit(&original(&[]), &added("bad"), 10, RABBITMQ_FRAME_MAX).unwrap();
        assert!(header(&whole.properties, headers::RECORD_INDEX).is_none());
        assert!(header(&whole.properties, headers::ORIGINAL_MESSAGE_ID).is_none());
    }

    #[test]
    fn a_records_dead_letter_carries_the_record_decompressed() {
        let message = Message {
            body: b"compressed".to_vec(),
            exchange: "cdr.x".into(),
            routing_key: "cdr.voice".into(),
            headers: Vec::new(),
            content_type: None,
            content_encoding: Some("gzip".into()),
            message_id: Some("m-1".into()),
            timestamp: None,
            redelivered: false,
        };
        let received = Received {
            tag: 1,
            properties: original(&[]).with_content_encoding("gzip".into()),
            stream: None,
        };
        let letter = DeadLetter {
            message: &message,
            received: &received,
            pipeline: "cdr",
            stage: "decode",
            plugin: "json-source@0.1.0",
            reason: "record 4: bad".into(),
            record: Some(RecordLetter {
                index: 4,
                body: b"{oops",
            }),
        };
        assert_eq!(letter.body(), b"{oops");
        let fitted = letter.fit(RABBITMQ_FRAME_MAX, 1).unwrap();
        let p = &fitted.properties;
        assert_eq!(p.content_encoding().as_ref().unwrap().as_str(), "identity");
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "m-1");
        assert_eq!(text(p, headers::ORIGINAL_MESSAGE_ID), "m-1");
        assert_eq!(fitted.frame_bytes, header_frame_bytes(p, 5));
        // The message's own dead letter keeps its encoding and body.
        let whole = DeadLetter {
            record: None,
            ..letter
        };
        assert_eq!(whole.body(), b"compressed");
        let fitted = whole.fit(RABBITMQ_FRAME_MAX, 1).unwrap();
        assert_eq!(
            fitted
                .properties
                .content_encoding()
                .as_ref()
                .unwrap()
                .as_str(),
            "gzip"
        );
    }

    #[test]
    fn a_configuration_that_leaves_no_room_is_an_error_naming_frame_max() {
        let mut a = added("reason");
        let pipeline = "p".repeat(5000);
        a.pipeline = &pipeline;
        let err = fit(&original(&[]), &a, 10, 4096).unwrap_err().to_string();
        assert!(err.contains("frame_max of 4096"), "{err}");
    }
}
