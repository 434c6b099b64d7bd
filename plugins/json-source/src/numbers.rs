//! Exact decimal arithmetic on JSON number text: integers without a float round
//! trip, and epoch numbers scaled to microseconds.

/// A decimal number's parts, borrowed from its text: `[sign] int [. frac] [e exp]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decimal<'a> {
    pub negative: bool,
    int: &'a [u8],
    frac: &'a [u8],
    exp: i64,
}

/// How to handle digits below the unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rounding {
    /// Refuse a number with a non-zero fraction.
    Exact,
    /// Round towards negative infinity.
    Floor,
}

/// Why a decimal does not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScaleError {
    /// It has a non-zero fraction (with `Rounding::Exact`).
    Fraction,
    /// It is out of the range of an `i64`.
    OutOfRange,
}

impl<'a> Decimal<'a> {
    /// Parses an optional sign, digits with an optional decimal point (at least one
    /// digit), and an optional exponent; the whole of `s`. JSON numbers are a subset.
    pub fn parse(s: &'a str) -> Option<Self> {
        let b = s.as_bytes();
        let mut i = 0;
        let negative = match b.first() {
            Some(b'-') => {
                i = 1;
                true
            }
            Some(b'+') => {
                i = 1;
                false
            }
            _ => false,
        };
        let run = |i: usize| i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        let int_end = run(i);
        let int = &b[i..int_end];
        i = int_end;
        let mut frac: &[u8] = &[];
        if b.get(i) == Some(&b'.') {
            let end = run(i + 1);
            frac = &b[i + 1..end];
            i = end;
        }
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        let mut exp = 0i64;
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            let negative_exp = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let end = run(i);
            if end == i {
                return None;
            }
            // Saturate: an exponent past a billion is out of any range anyway.
            for &d in &b[i..end] {
                exp = (exp * 10 + i64::from(d - b'0')).min(1_000_000_000);
            }
            if negative_exp {
                exp = -exp;
            }
            i = end;
        }
        (i == b.len()).then_some(Decimal {
            negative,
            int,
            frac,
            exp,
        })
    }

    /// The number times 10^`shift`, as an `i64`.
    pub fn scaled(&self, shift: i64, rounding: Rounding) -> Result<i64, ScaleError> {
        // The common case, a plain integer that fits, without 128-bit arithmetic.
        if self.frac.is_empty() && self.exp == 0 && (0..=6).contains(&shift) && self.int.len() <= 12
        {
            let n = self
                .int
                .iter()
                .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'))
                * 10i64.pow(shift as u32);
            return Ok(if self.negative { -n } else { n });
        }
        // value = D × 10^e, with D the digits of int and frac together.
        let e = self.exp + shift - self.frac.len() as i64;
        let digits = self.int.iter().chain(self.frac);
        let n = (self.int.len() + self.frac.len()) as i64;
        let keep = if e >= 0 { n } else { (n + e).max(0) };
        const LIMIT: u128 = 1 << 63;
        let mut acc: u128 = 0;
        let mut dropped_non_zero = false;
        for (i, &d) in digits.enumerate() {
            if (i as i64) < keep {
                acc = acc * 10 + u128::from(d - b'0');
                if acc > LIMIT {
                    return Err(ScaleError::OutOfRange);
                }
            } else if d != b'0' {
                dropped_non_zero = true;
                break;
            }
        }
        if e > 0 && acc != 0 {
            for _ in 0..e {
                acc *= 10;
                if acc > LIMIT {
                    return Err(ScaleError::OutOfRange);
                }
            }
        }
        if dropped_non_zero {
            match rounding {
                Rounding::Exact => return Err(ScaleError::Fraction),
                Rounding::Floor if self.negative => acc += 1,
                Rounding::Floor => {}
            }
        }
        let value = if self.negative {
            -(acc as i128)
        } else {
            acc as i128
        };
        i64::try_from(value).map_err(|_| ScaleError::OutOfRange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(s: &str) -> Result<i64, ScaleError> {
        Decimal::parse(s).unwrap().scaled(0, Rounding::Exact)
    }

    #[test]
    fn parses_decimal_text() {
        for bad in ["", "-", ".", "e1", "1e", "1.2.3", "--1", "1 ", "0x1", "NaN"] {
            assert_eq!(Decimal::parse(bad), None, "{bad}");
        }
        let d = Decimal::parse("-12.50e-1").unwrap();
        assert!(d.negative);
    }

    #[test]
    fn integers_are_exact() {
        assert_eq!(int("0"), Ok(0));
        assert_eq!(int("-0"), Ok(0));
        assert_eq!(int("42"), Ok(42));
        assert_eq!(int("1.0"), Ok(1));
        assert_eq!(int("1e3"), Ok(1000));
        assert_eq!(int("12.50e1"), Ok(125));
        assert_eq!(int("1500e-2"), Ok(15));
        assert_eq!(int("9223372036854775807"), Ok(i64::MAX));
        assert_eq!(int("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(int("0.000e999999999999"), Ok(0));
        assert_eq!(int("1.5"), Err(ScaleError::Fraction));
        assert_eq!(int("1e-1"), Err(ScaleError::Fraction));
        assert_eq!(int("9223372036854775808"), Err(ScaleError::OutOfRange));
        assert_eq!(int("1e19"), Err(ScaleError::OutOfRange));
        assert_eq!(int("1e999999999999"), Err(ScaleError::OutOfRange));
    }

    #[test]
    fn scaling_floors() {
        let micros = |s: &str| Decimal::parse(s).unwrap().scaled(6, Rounding::Floor);
        assert_eq!(micros("1700000000"), Ok(1_700_000_000_000_000));
        assert_eq!(micros("1700000000.1234567"), Ok(1_700_000_000_123_456));
        assert_eq!(micros("-1.0000001"), Ok(-1_000_001));
        assert_eq!(micros("-0.0000001"), Ok(-1));
        assert_eq!(micros("1e-9"), Ok(0));
        assert_eq!(micros("9.2e12"), Ok(9_200_000_000_000_000_000));
        assert_eq!(micros("9.3e12"), Err(ScaleError::OutOfRange));
        assert_eq!(micros("-9.3e12"), Err(ScaleError::OutOfRange));
    }
}
