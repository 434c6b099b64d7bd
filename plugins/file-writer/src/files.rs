//! File names: `<prefix>-<start-utc>-<instance-id>.<ext>`, and `.open` while written.
//!
//! `<start-utc>` is when the file was created, `YYYYMMDDTHHMMSS.ffffffZ`, so names
//! sort by time; `<instance-id>` is 16 hex digits drawn at random by each writer
//! instance, so no two instances (consumers, daemons) ever pick the same name.

use std::hash::{BuildHasher, RandomState};
use std::io::Write;

use crate::config::Format;

/// What a file name says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileName {
    /// The final name (without `.open`).
    pub base: String,
    /// The format, from the extension.
    pub format: Format,
    /// Whether it is still being written (or was left by a crash).
    pub open: bool,
}

/// The suffix of files being written.
pub const OPEN: &str = ".open";

/// Parses `name` if it is a file of this writer's `prefix`.
pub fn parse(prefix: &str, name: &str) -> Option<FileName> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (base_rest, open) = match rest.strip_suffix(OPEN) {
        Some(r) => (r, true),
        None => (rest, false),
    };
    // YYYYMMDDTHHMMSS.ffffffZ-<16 hex>.<ext>
    let b = base_rest.as_bytes();
    if b.len() < 23 + 1 + 16 + 2 {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let stamp_ok = digits(0..8)
        && b[8] == b'T'
        && digits(9..15)
        && b[15] == b'.'
        && digits(16..22)
        && b[22] == b'Z'
        && b[23] == b'-';
    let id_ok = b[24..40]
        .iter()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
    if !stamp_ok || !id_ok || b[40] != b'.' {
        return None;
    }
    let format = match &base_rest[41..] {
        "ndjson" => Format::Ndjson,
        "csv" => Format::Csv,
        _ => return None,
    };
    Some(FileName {
        base: format!("{prefix}-{base_rest}"),
        format,
        open,
    })
}

/// The final name of a file started at `micros` (since the epoch) by `instance`.
pub fn name(prefix: &str, micros: i64, instance: &str, format: Format) -> String {
    let mut stamp = Vec::new();
    let seconds = micros.div_euclid(1_000_000);
    let (days, rem) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (y, m, d) = sluice_plugin_sdk::time::civil_from_days(days);
    let _ = write!(
        stamp,
        "{:04}{m:02}{d:02}T{:02}{:02}{:02}.{:06}Z",
        y.clamp(0, 9999),
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        micros.rem_euclid(1_000_000)
    );
    format!(
        "{prefix}-{}-{instance}.{}",
        String::from_utf8_lossy(&stamp),
        format.extension()
    )
}

/// 16 random hex digits (the randomness of std's hash map keys, which the host
/// draws from its real random source).
pub fn instance_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let a = RandomState::new().hash_one(nanos);
    let b = RandomState::new().hash_one(a);
    format!("{:016x}", a ^ b.rotate_left(29))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = name(
            "cdr",
            1_795_773_601_000_042,
            "0123456789abcdef",
            Format::Csv,
        );
        assert_eq!(n, "cdr-20261127T100001.000042Z-0123456789abcdef.csv");
        assert_eq!(
            parse("cdr", &n),
            Some(FileName {
                base: n.clone(),
                format: Format::Csv,
                open: false
            })
        );
        let open = format!("{n}{OPEN}");
        assert!(parse("cdr", &open).unwrap().open);
        // Another prefix that starts the same, other files, a partial name.
        assert_eq!(parse("cd", &n), None);
        assert_eq!(parse("cdr", "cdr-notes.txt"), None);
        assert_eq!(parse("cdr", &n.replace(".csv", ".parquet")), None);
        assert_eq!(parse("cdr", &n[..30]), None);
        let a = instance_id();
        assert_eq!(a.len(), 16);
        assert_ne!(a, instance_id());
    }
}
