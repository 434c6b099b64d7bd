//! A message body as records: decompressed (by its `content-encoding`, never past
//! `max_decompressed_bytes`), then cut into records (one, NDJSON lines, or the
//! elements of a JSON array).

use std::borrow::Cow;
use std::io::Read;

use serde_json::value::RawValue;

/// The body, decompressed as its `content-encoding` says: `gzip` (or `x-gzip`),
/// `zstd`, or none (absent, empty or `identity`: the body as it is, not copied).
///
/// The decompressor is read into a buffer at most `limit` bytes long, plus one
/// byte to tell "exactly the limit" from "more": a body that decompresses past
/// `limit` is refused after decompressing `limit + 1` bytes of it, however far it
/// would have gone (a gzip of zeros grows a thousandfold).
pub(crate) fn decompress<'a>(
    body: &'a [u8],
    encoding: Option<&str>,
    limit: u64,
) -> Result<Cow<'a, [u8]>, String> {
    let encoding = encoding.map(str::trim).unwrap_or("");
    let decoder: Box<dyn Read + 'a> = match encoding.to_ascii_lowercase().as_str() {
        "" | "identity" => return Ok(Cow::Borrowed(body)),
        "gzip" | "x-gzip" => Box::new(flate2::read::MultiGzDecoder::new(body)),
        "zstd" => Box::new(
            ruzstd::decoding::StreamingDecoder::new(body)
                .map_err(|e| format!("content-encoding zstd: the body is not zstd: {e}"))?,
        ),
        _ => {
            return Err(format!(
                "content-encoding {encoding:?} is not supported (json-source reads gzip and zstd)"
            ));
        }
    };
    let mut out = Vec::new();
    decoder
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| {
            format!("content-encoding {encoding}: the body cannot be decompressed: {e}")
        })?;
    if out.len() as u64 > limit {
        return Err(format!(
            "content-encoding {encoding}: the body decompresses past max_decompressed_bytes \
             ({limit} bytes); it was not decompressed further"
        ));
    }
    Ok(Cow::Owned(out))
}

/// The records of an NDJSON body: each line that is not blank, with its line
/// number from 0 (blank lines are skipped but counted, so an index is the line
/// to look at). A `\r` before the `\n` is dropped.
pub(crate) fn ndjson(body: &[u8]) -> impl Iterator<Item = (u32, &[u8])> {
    body.split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            (u32::try_from(i).unwrap_or(u32::MAX), line)
        })
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
}

/// The elements of a JSON array body, each as its raw text. A body that is not
/// a well-formed JSON array cannot be cut into records: that is the message's
/// error (an element that is valid JSON but not a record that fits, is the
/// record's).
pub(crate) fn array(body: &[u8]) -> Result<Vec<&RawValue>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not valid JSON: {e}"))?;
    let start = text.trim_start();
    if !start.starts_with('[') {
        let found = start
            .chars()
            .next()
            .map_or("nothing".to_owned(), |c| format!("{c:?}"));
        return Err(format!(
            "records = \"array\": the body is not a JSON array (it starts with {found})"
        ));
    }
    serde_json::from_str::<Vec<&RawValue>>(text)
        .map_err(|e| format!("records = \"array\": the body is not a valid JSON array: {e}"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
    }

    #[test]
    fn a_plain_body_is_not_copied() {
        let body = b"{}";
        for encoding in [None, Some(""), Some("identity")] {
            assert!(matches!(
                decompress(body, encoding, 1).unwrap(),
                Cow::Borrowed(b) if b == body
            ));
        }
    }

    #[test]
    fn gzip_and_zstd_bodies_are_decompressed() {
        let data = b"{\"a\": 1}\n{\"a\": 2}\n".repeat(100);
        for encoding in ["gzip", "x-gzip", "GZIP"] {
            assert_eq!(
                decompress(&gzip(&data), Some(encoding), 1 << 20).unwrap(),
                &data[..]
            );
        }
        assert_eq!(
            decompress(&zstd(&data), Some("zstd"), 1 << 20).unwrap(),
            &data[..]
        );
        // Exactly at the limit is within it.
        let limit = data.len() as u64;
        assert!(decompress(&gzip(&data), Some("gzip"), limit).is_ok());
        assert!(decompress(&zstd(&data), Some("zstd"), limit).is_ok());
    }

    #[test]
    fn a_bomb_is_refused_at_the_limit_naming_it() {
        // 64 MiB of zeros: a few tens of kilobytes compressed.
        let zeros = vec![0u8; 64 << 20];
        for (encoding, body) in [("gzip", gzip(&zeros)), ("zstd", zstd(&zeros))] {
            assert!(body.len() < 1 << 20, "{encoding}: {}", body.len());
            let err = decompress(&body, Some(encoding), 1 << 20).unwrap_err();
            assert_eq!(
                err,
                format!(
                    "content-encoding {encoding}: the body decompresses past \
                     max_decompressed_bytes (1048576 bytes); it was not decompressed further"
                )
            );
        }
    }

    #[test]
    fn corrupt_or_unknown_encodings_are_the_messages_error() {
        let err = decompress(b"not gzip", Some("gzip"), 100).unwrap_err();
        assert!(
            err.starts_with("content-encoding gzip: the body cannot be decompressed"),
            "{err}"
        );
        let err = decompress(b"not zstd", Some("zstd"), 100).unwrap_err();
        assert!(
            err.starts_with("content-encoding zstd: the body is not zstd"),
            "{err}"
        );
        let err = decompress(b"{}", Some("br"), 100).unwrap_err();
        assert_eq!(
            err,
            "content-encoding \"br\" is not supported (json-source reads gzip and zstd)"
        );
    }

    #[test]
    fn ndjson_lines_keep_their_line_numbers() {
        let body = b"{\"a\":1}\r\n\n  \n{\"a\":2}\n{bad\n";
        let records: Vec<(u32, &[u8])> = ndjson(body).collect();
        assert_eq!(
            records,
            [
                (0, &b"{\"a\":1}"[..]),
                (3, &b"{\"a\":2}"[..]),
                (4, &b"{bad"[..])
            ]
        );
        assert_eq!(ndjson(b"").count(), 0);
    }

    #[test]
    fn array_elements_are_cut_out_raw() {
        let items = array(br#" [ {"a": 1}, 7, {"b": [1, 2]} ] "#).unwrap();
        let raw: Vec<&str> = items.iter().map(|r| r.get()).collect();
        assert_eq!(raw, [r#"{"a": 1}"#, "7", r#"{"b": [1, 2]}"#]);
        assert!(array(b"[]").unwrap().is_empty());
        let err = array(br#"{"a": 1}"#).unwrap_err();
        assert_eq!(
            err,
            "records = \"array\": the body is not a JSON array (it starts with '{')"
        );
        let err = array(br#"[{"a": 1}, {"#).unwrap_err();
        assert!(
            err.starts_with("records = \"array\": the body is not a valid JSON array"),
            "{err}"
        );
    }
}
