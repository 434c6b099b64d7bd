//! Dates, timestamps and durations as plugins write and read them.
//!
//! Rows carry timestamps as microseconds since the Unix epoch (UTC) and dates as
//! days since 1970-01-01 (see [`rows`](crate::rows)). A writer that stores text
//! formats them with [`write_timestamp`] and [`write_date`]; a plugin's
//! configuration takes durations such as `"30s"` with [`parse_duration`].
//! Calendar arithmetic is the proleptic Gregorian calendar, for any `i64` day.

use std::io::Write;
use std::time::Duration;

/// Days since 1970-01-01 of the date `year-month-day` (month 1-12, day 1-31).
///
/// ```
/// assert_eq!(sluice_plugin_sdk::time::days_from_civil(1970, 1, 1), 0);
/// assert_eq!(sluice_plugin_sdk::time::days_from_civil(2000, 3, 1), 11_017);
/// ```
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(year, month, day)` of a day number (days since 1970-01-01).
///
/// ```
/// assert_eq!(sluice_plugin_sdk::time::civil_from_days(11_017), (2000, 3, 1));
/// ```
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Appends `YYYY-MM-DD` for a day number; a year outside 0..=9999 is written
/// with its sign (`+10000-01-01`), as RFC 3339's extension does.
///
/// ```
/// let mut out = Vec::new();
/// sluice_plugin_sdk::time::write_date(-1, &mut out);
/// assert_eq!(out, b"1969-12-31");
/// ```
pub fn write_date(days: i64, out: &mut Vec<u8>) {
    let (y, m, d) = civil_from_days(days);
    if (0..=9999).contains(&y) {
        let _ = write!(out, "{y:04}-{m:02}-{d:02}");
    } else {
        let _ = write!(out, "{y:+05}-{m:02}-{d:02}");
    }
}

/// Appends the RFC 3339 form of a timestamp in microseconds since the epoch:
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, always six fraction digits, always UTC.
///
/// ```
/// let mut out = Vec::new();
/// sluice_plugin_sdk::time::write_timestamp(1_500_000, &mut out);
/// assert_eq!(out, b"1970-01-01T00:00:01.500000Z");
/// ```
pub fn write_timestamp(micros: i64, out: &mut Vec<u8>) {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let (days, rem) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    write_date(days, out);
    let _ = write!(
        out,
        "T{:02}:{:02}:{:02}.{fraction:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
}

/// A duration written the way Sluice's configuration writes them: one or more
/// `<number><unit>` parts, optionally spaced (`"500ms"`, `"30s"`, `"1h30m"`,
/// `"1.5s"`, `"2 days"`). The grammar is the daemon's own, for its settings
/// such as `batch.max_wait` (the host calls this function): `humantime`'s, whose
/// units are `ns`, `us`, `ms`, `s`/`sec`, `m`/`min`, `h`/`hr`, `d`, `w`, `M`
/// (30.44 days) and `y` (365.25 days), with plural and long forms (`seconds`,
/// `hours`). A number needs a unit (is `200` seconds or milliseconds?), except
/// `0`. The error says what was expected, and what is wrong.
///
/// ```
/// use std::time::Duration;
/// use sluice_plugin_sdk::time::parse_duration;
/// assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
/// assert!(parse_duration("30").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like \"200ms\", \"30s\" or \"5m\" ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_across_eras() {
        for days in [-800_000, -719_469, -1, 0, 1, 11_016, 11_017, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
    }

    #[test]
    fn timestamps_are_rfc3339_with_microseconds() {
        let text = |micros| {
            let mut out = Vec::new();
            write_timestamp(micros, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(text(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(text(-1), "1969-12-31T23:59:59.999999Z");
        let t = days_from_civil(2026, 11, 27) * 86_400_000_000 + 36_001_000_042;
        assert_eq!(text(t), "2026-11-27T10:00:01.000042Z");
        let far = days_from_civil(10_000, 1, 1) * 86_400_000_000;
        assert_eq!(text(far), "+10000-01-01T00:00:00.000000Z");
    }

    /// The daemon reads its own durations with this function too; these are the
    /// examples both promise to read (and to refuse) the same way.
    #[test]
    fn durations_read_as_the_daemon_reads_them() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        for (text, expected) in [
            ("500ms", ms(500)),
            ("30s", s(30)),
            ("5m", s(300)),
            ("1h30m", s(5400)),
            ("1h 30m", s(5400)),
            ("2d", s(172_800)),
            ("1w", s(604_800)),
            ("1.5s", ms(1500)),
            ("0s", s(0)),
            ("0", s(0)),
            (" 2 days ", s(172_800)),
            ("10sec", s(10)),
            ("3 minutes", s(180)),
            ("250us", Duration::from_micros(250)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
        for bad in [
            "",
            "  ",
            "s",
            "10",
            "10x",
            "-5s",
            "1.s",
            "5 parsecs",
            "1h-30m",
        ] {
            let e = parse_duration(bad).unwrap_err();
            let start = format!("{bad:?} is not a duration like \"200ms\", \"30s\" or \"5m\" (");
            assert!(e.starts_with(&start), "{bad:?}: {e}");
        }
        assert_eq!(
            parse_duration("200").unwrap_err(),
            "\"200\" is not a duration like \"200ms\", \"30s\" or \"5m\" \
             (time unit needed, for example 200sec or 200ms)"
        );
    }
}
