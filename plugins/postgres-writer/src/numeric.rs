//! Decimal text to Postgres's binary `numeric` (what `numeric_send` produces and
//! `numeric_recv` reads): `int16 ndigits, int16 weight, uint16 sign, int16 dscale`,
//! then `ndigits` base-10000 digits, most significant first. The value is
//! `sum(digit[i] * 10000^(weight - i))`; `dscale` is the number of decimal digits
//! after the point that the value displays.
//!
//! Sluice carries numerics as decimal literals (`-12.340`): an optional sign,
//! digits with an optional point (`5.`, `.5`), an optional exponent (`1.5e-3`, as
//! JSON numbers have). That is exactly what is accepted here, the same as the
//! SDK's `rows::is_decimal_literal`; no whitespace, no `NaN` or `Infinity` (the
//! contract has no way to carry them, and `RowReader` refuses them first).

use std::fmt;

const SIGN_POSITIVE: u16 = 0x0000;
const SIGN_NEGATIVE: u16 = 0x4000;

/// The largest display scale the binary format can carry (`NUMERIC_DSCALE_MAX`);
/// `numeric_recv` refuses a larger one as corrupt data rather than as a refused
/// value, so it must be caught here.
const DSCALE_MAX: i64 = 0x3FFF;
/// Exponents beyond this cannot make a storable numeric (at most 131072 digits
/// before the point and 16383 after); bounding it keeps the arithmetic small.
const EXPONENT_MAX: i64 = 1_000_000;

/// Why a decimal text cannot be sent as a `numeric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumericError {
    /// The text is not a decimal number.
    Malformed,
    /// The number is too large or has too many decimals for Postgres's `numeric`.
    OutOfRange,
}

impl fmt::Display for NumericError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NumericError::Malformed => "not a decimal number",
            NumericError::OutOfRange => "out of range for Postgres numeric",
        })
    }
}

/// Appends the binary `numeric` for the decimal `text` to `out`. On error, `out`
/// is left as it was.
pub fn encode(text: &str, out: &mut Vec<u8>) -> Result<(), NumericError> {
    let (negative, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };

    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], parse_exponent(&body[at + 1..])?),
        None => (body, 0),
    };
    let (int, frac) = match mantissa.find('.') {
        Some(at) => (&mantissa[..at], &mantissa[at + 1..]),
        None => (mantissa, ""),
    };
    let (int, frac) = (int.as_bytes(), frac.as_bytes());
    if int.is_empty() && frac.is_empty() || !int.iter().chain(frac).all(u8::is_ascii_digit) {
        return Err(NumericError::Malformed);
    }

    // Postgres keeps the scale as written, shifted by the exponent: `1.50e1` is 15.0.
    let dscale = (frac.len() as i64 - exponent).max(0);
    if dscale > DSCALE_MAX {
        return Err(NumericError::OutOfRange);
    }
    let digits = Digits { int, frac };
    let (Some(first), Some(last)) = (digits.position(|d| d != 0), digits.rposition(|d| d != 0))
    else {
        // Zero (however written) has no digits and is positive, as `make_result` makes it.
        write_header(out, 0, 0, SIGN_POSITIVE, dscale as i16);
        return Ok(());
    };

    // Digit `i` of int ++ frac stands for 10^(point - 1 - i). Base-10000 digit `g`
    // covers the powers 4g .. 4g+3, so the point always falls between two of them.
    let point = int.len() as i64 + exponent;
    let weight = (point - 1 - first as i64).div_euclid(4);
    let lowest = (point - 1 - last as i64).div_euclid(4);
    // `lowest` is at least -dscale/4 (checked above); the weight is int16 on the wire.
    if weight > i64::from(i16::MAX) {
        return Err(NumericError::OutOfRange);
    }
    let ndigits = weight - lowest + 1;
    write_header(
        out,
        ndigits as i16,
        weight as i16,
        if negative {
            SIGN_NEGATIVE
        } else {
            SIGN_POSITIVE
        },
        dscale as i16,
    );
    for group in (lowest..=weight).rev() {
        let mut value = 0u16;
        for power in (4 * group..4 * group + 4).rev() {
            value = value * 10 + u16::from(digits.get(point - 1 - power));
        }
        out.extend_from_slice(&value.to_be_bytes());
    }
    Ok(())
}

fn write_header(out: &mut Vec<u8>, ndigits: i16, weight: i16, sign: u16, dscale: i16) {
    out.extend_from_slice(&ndigits.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
}

fn parse_exponent(text: &str) -> Result<i64, NumericError> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NumericError::Malformed);
    }
    let mut value: i64 = 0;
    for b in digits.bytes() {
        value = value * 10 + i64::from(b - b'0');
        if value > EXPONENT_MAX {
            return Err(NumericError::OutOfRange);
        }
    }
    Ok(if negative { -value } else { value })
}

/// The decimal digits of the integer and fraction parts, seen as one sequence
/// without copying them.
struct Digits<'a> {
    int: &'a [u8],
    frac: &'a [u8],
}

impl Digits<'_> {
    /// The digit at `index`, 0 outside the written digits.
    fn get(&self, index: i64) -> u8 {
        let Ok(index) = usize::try_from(index) else {
            return 0;
        };
        let digit = if index < self.int.len() {
            self.int[index]
        } else {
            match self.frac.get(index - self.int.len()) {
                Some(d) => *d,
                None => return 0,
            }
        };
        digit - b'0'
    }

    fn position(&self, pred: impl Fn(u8) -> bool) -> Option<usize> {
        self.int
            .iter()
            .chain(self.frac)
            .position(|&d| pred(d - b'0'))
    }

    fn rposition(&self, pred: impl Fn(u8) -> bool) -> Option<usize> {
        let in_frac = self.frac.iter().rposition(|&d| pred(d - b'0'));
        match in_frac {
            Some(i) => Some(self.int.len() + i),
            None => self.int.iter().rposition(|&d| pred(d - b'0')),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Result<String, NumericError> {
        let mut out = vec![0xAA]; // encode must append, never clear
        encode(text, &mut out)?;
        assert_eq!(out[0], 0xAA);
        Ok(out[1..].iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Expected bytes are `encode(numeric_send('<text>'::numeric), 'hex')` from
    /// Postgres 15.
    #[test]
    fn matches_numeric_send() {
        let cases = [
            ("0", "0000000000000000"),
            ("-0", "0000000000000000"),
            ("0.00", "0000000000000002"),
            ("1", "00010000000000000001"),
            ("-1", "00010000400000000001"),
            ("12345.678", "0003000100000003000109291a7c"),
            ("-12.340", "0002000040000003000c0d48"),
            ("0.0001", "0001ffff000000040001"),
            ("0.00001", "0001fffe0000000503e8"),
            ("10000", "00010001000000000001"),
            ("00012.3400", "0002000000000004000c0d48"),
            ("1.50e1", "0001000000000001000f"),
            ("1e-7", "0001fffe00000007000a"),
            ("-2.5E+3", "000100004000000009c4"),
            (".5", "0001ffff000000011388"),
            ("5.", "00010000000000000005"),
            (
                "99999999999999999999.99999999",
                "0007000400000008270f270f270f270f270f270f270f",
            ),
            ("1e100", "00010019000000000001"),
            (
                "123456789012345678901234567890",
                "0008000700000000000c0d801ed204d2162e23340d801ed2",
            ),
            ("0.000000000000000000000000000001", "0001fff80000001e0064"),
            ("1e131071", "00017fff0000000003e8"),
            ("0e5", "0000000000000000"),
            ("+7", "00010000000000000007"),
        ];
        for (text, expected) in cases {
            assert!(sluice_plugin_sdk::rows::is_decimal_literal(text), "{text}");
            assert_eq!(hex(text).as_deref(), Ok(expected), "{text}");
        }
    }

    #[test]
    fn rejects_malformed_text_and_leaves_the_buffer_alone() {
        for text in [
            "", " ", "-", "+", ".", "-.", "1.2.3", "--1", "1e", "1e+", "e5", "abc", "1,5", "0x1A",
            "1_000", "١٢", "1 2", "12a", "NaN", "Infinity", "-inf", " 1", "1 ",
        ] {
            let mut out = vec![1, 2, 3];
            assert_eq!(
                encode(text, &mut out),
                Err(NumericError::Malformed),
                "{text:?}"
            );
            // The same rule as the SDK's, which decides what a source may send.
            assert!(
                !sluice_plugin_sdk::rows::is_decimal_literal(text),
                "{text:?}"
            );
            assert_eq!(out, [1, 2, 3]);
        }
    }

    #[test]
    fn rejects_what_the_wire_format_cannot_carry() {
        // Weight 32768 does not fit in int16.
        assert_eq!(hex("1e131072"), Err(NumericError::OutOfRange));
        // 16384 decimals exceed the largest dscale.
        assert_eq!(
            hex(&format!("0.{}1", "0".repeat(16383))),
            Err(NumericError::OutOfRange)
        );
        assert_eq!(hex("1e-16384"), Err(NumericError::OutOfRange));
        assert_eq!(hex("1e99999999999999999999"), Err(NumericError::OutOfRange));
        // The largest scale still fits.
        assert!(hex(&format!("0.{}1", "0".repeat(16382))).is_ok());
    }

    #[test]
    fn many_digits_round_trip_through_groups() {
        // 40 significant digits either side of the point.
        let int = "1234567890".repeat(4);
        let frac = "0987654321".repeat(4);
        let text = format!("-{int}.{frac}");
        let mut out = Vec::new();
        encode(&text, &mut out).unwrap();
        let word = |i: usize| u16::from_be_bytes([out[2 * i], out[2 * i + 1]]);
        let (ndigits, weight, sign, dscale) = (word(0) as usize, word(1) as i16, word(2), word(3));
        assert_eq!((weight, sign, dscale), (9, SIGN_NEGATIVE, 40));
        let digits: String = (0..ndigits)
            .map(|i| format!("{:04}", word(4 + i)))
            .collect();
        assert_eq!(digits, format!("{int}{frac}"));
    }
}
