//! An exact decimal number as Binance writes it ("0.00100000"), kept without rounding.
//!
//! Binance sends prices and quantities as decimal strings so that no precision is lost on the way.
//! keel keeps them exact too: the recorder writes back the very text that arrived (trailing zeros
//! included), and only training converts to `f64`. Storing a digit count and an integer instead of
//! the text keeps market events free of per-price heap allocations (decode is on the hot path).

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Largest mantissa a [`Decimal`] holds: 2^96 - 1 (28 digits always fit).
pub const MAX_MANTISSA: u128 = (1 << 96) - 1;

/// Largest number of fractional digits accepted. Binance uses at most 8; 18 keeps the `f64`
/// conversion table small while leaving ample room.
pub const MAX_SCALE: u8 = 18;

/// An exact decimal `[-]digits[.digits]`: `mantissa / 10^scale`, with the sign kept separately so
/// that `"-0.0"` survives a round trip.
///
/// Equality is equality of representation: `"0.10"` and `"0.1"` are different `Decimal`s, because
/// the recorder must write back exactly what Binance sent. Compare [`Decimal::to_f64`] values (or
/// use [`Decimal::cmp_value`]) to compare magnitudes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Decimal {
    // 96 bits, not 64: a daily kline's volume of a token with a huge supply, written with 8 decimals
    // ("12345678901234.00000000"), has more than the 19 digits a u64 holds. Split in two words (not a
    // u128) so that a Decimal stays 16 bytes: events hold up to 9 of them and travel by value.
    lo: u64,
    hi: u32,
    scale: u8,
    negative: bool,
}

/// Why a string is not an exact decimal keel can keep.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecimalError {
    /// The string is empty.
    #[error("empty string")]
    Empty,
    /// A character other than a digit, one `.` or a leading `-` (exponents are not accepted: Binance never
    /// sends them, and they would not round-trip exactly).
    #[error("unexpected character {0:?} (expected digits with an optional '.' and leading '-')")]
    BadChar(char),
    /// A `.` with no digit before or after it.
    #[error("a '.' needs digits on both sides")]
    BareDot,
    /// An integer part with leading zeros (`"007"`), which would not be written back identically.
    #[error("leading zeros in the integer part")]
    LeadingZero,
    /// More digits than 96 bits hold (28 always fit), or more than 18 after the `.`.
    #[error("too many digits (at most 28 in all, 18 after the '.')")]
    TooLong,
}

const POW10: [f64; 19] =
    [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18];

impl Decimal {
    /// `mantissa / 10^scale`; `None` when `scale` exceeds [`MAX_SCALE`] or `mantissa` [`MAX_MANTISSA`].
    pub fn new(mantissa: u128, scale: u8, negative: bool) -> Option<Decimal> {
        (scale <= MAX_SCALE && mantissa <= MAX_MANTISSA).then_some(Decimal {
            lo: mantissa as u64,
            hi: (mantissa >> 64) as u32,
            scale,
            negative,
        })
    }

    /// Parses Binance's decimal text (`"0.00100000"`, `"100"`, `"-1.5"`).
    pub fn parse(text: &str) -> Result<Decimal, DecimalError> {
        let bytes = text.as_bytes();
        let (negative, digits) = match bytes.first() {
            None => return Err(DecimalError::Empty),
            Some(b'-') => (true, &bytes[1..]),
            Some(_) => (false, bytes),
        };
        if digits.is_empty() {
            return Err(DecimalError::Empty);
        }
        let mut mantissa: u128 = 0;
        let mut int_digits = 0usize;
        let mut frac_digits: Option<usize> = None;
        for (i, &b) in digits.iter().enumerate() {
            match b {
                b'0'..=b'9' => {
                    mantissa = mantissa
                        .checked_mul(10)
                        .and_then(|m| m.checked_add(u128::from(b - b'0')))
                        .ok_or(DecimalError::TooLong)?;
                    match frac_digits.as_mut() {
                        Some(n) => *n += 1,
                        None => int_digits += 1,
                    }
                }
                b'.' if frac_digits.is_none() => {
                    if int_digits == 0 {
                        return Err(DecimalError::BareDot);
                    }
                    frac_digits = Some(0);
                }
                _ => {
                    // Report the whole (possibly multi-byte) character, not a byte.
                    let offset = text.len() - digits.len() + i;
                    let ch = text.get(offset..).and_then(|s| s.chars().next()).unwrap_or('?');
                    return Err(DecimalError::BadChar(ch));
                }
            }
        }
        if frac_digits == Some(0) || int_digits == 0 {
            return Err(DecimalError::BareDot);
        }
        if int_digits > 1 && digits[0] == b'0' {
            return Err(DecimalError::LeadingZero);
        }
        let scale = frac_digits.unwrap_or(0);
        if scale > usize::from(MAX_SCALE) {
            return Err(DecimalError::TooLong);
        }
        Decimal::new(mantissa, scale as u8, negative).ok_or(DecimalError::TooLong)
    }

    fn wide(self) -> u128 {
        (u128::from(self.hi) << 64) | u128::from(self.lo)
    }

    /// The value as `f64`, correctly rounded for every value Binance sends (mantissa below 2^53).
    pub fn to_f64(self) -> f64 {
        let magnitude = if self.hi == 0 && self.lo < (1 << 53) {
            // Both operands are exact, so the one division rounds once: the nearest f64.
            self.lo as f64 / POW10[usize::from(self.scale)]
        } else {
            self.to_string().trim_start_matches('-').parse::<f64>().unwrap_or(f64::NAN)
        };
        if self.negative { -magnitude } else { magnitude }
    }

    /// The digits as an integer (`"0.0010"` -> 10), when they fit in a u64 (every price and quantity
    /// Binance sends; only some large kline volumes do not), else `u64::MAX`. See [`Decimal::mantissa_wide`].
    pub fn mantissa(self) -> u64 {
        if self.hi == 0 { self.lo } else { u64::MAX }
    }

    /// The digits as an integer, always exact.
    pub fn mantissa_wide(self) -> u128 {
        self.wide()
    }

    /// Number of digits after the `.` (`"0.0010"` -> 4).
    pub fn scale(self) -> u8 {
        self.scale
    }

    /// Whether a leading `-` was present.
    pub fn is_negative(self) -> bool {
        self.negative
    }

    /// Compares values (not representations): `"0.10"` equals `"0.1"` here.
    #[inline]
    pub fn cmp_value(self, other: Decimal) -> std::cmp::Ordering {
        // Prices of one symbol share a scale (its tick size): the digits compare as they are. An order
        // book compares prices ~10 times per level it updates.
        if self.scale == other.scale && !self.negative && !other.negative {
            return (self.hi, self.lo).cmp(&(other.hi, other.lo));
        }
        self.cmp_value_slow(other)
    }

    /// [`Self::cmp_value`] across scales or signs.
    fn cmp_value_slow(self, other: Decimal) -> std::cmp::Ordering {
        use std::cmp::Ordering;
        let (na, nb) = (self.negative && self.wide() != 0, other.negative && other.wide() != 0);
        if na != nb {
            return if na { Ordering::Less } else { Ordering::Greater };
        }
        // Bring both to the larger scale. If that overflows 128 bits, the scaled value exceeds
        // anything the other can hold, so it is the larger magnitude.
        let widen = |m: u128, from: u8, to: u8| m.checked_mul(10u128.pow(u32::from(to - from)));
        let scale = self.scale.max(other.scale);
        let magnitude = match (widen(self.wide(), self.scale, scale), widen(other.wide(), other.scale, scale)) {
            (Some(a), Some(b)) => a.cmp(&b),
            (None, _) => Ordering::Greater,
            (_, None) => Ordering::Less,
        };
        if na { magnitude.reverse() } else { magnitude }
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.negative {
            f.write_str("-")?;
        }
        if self.scale == 0 {
            return write!(f, "{}", self.wide());
        }
        let divisor = 10u128.checked_pow(u32::from(self.scale));
        match divisor {
            Some(d) => {
                write!(f, "{}.{:0width$}", self.wide() / d, self.wide() % d, width = usize::from(self.scale))
            }
            // scale 39+ cannot occur (MAX_SCALE is 18), but stay total.
            None => write!(f, "0.{:0width$}", self.wide(), width = usize::from(self.scale)),
        }
    }
}

/// `Decimal("0.00100000")`: the text, which is what a reader of a test failure or a trace needs.
impl fmt::Debug for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Decimal(\"{self}\")")
    }
}

impl FromStr for Decimal {
    type Err = DecimalError;
    fn from_str(s: &str) -> Result<Decimal, DecimalError> {
        Decimal::parse(s)
    }
}

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Decimal, D::Error> {
        struct DecimalVisitor;
        impl Visitor<'_> for DecimalVisitor {
            type Value = Decimal;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal string such as \"0.00100000\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
                Decimal::parse(v).map_err(|e| E::custom(format!("{v:?} is not a decimal: {e}")))
            }
        }
        deserializer.deserialize_str(DecimalVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    #[test]
    fn parses_and_writes_back_binance_text_exactly() {
        for text in ["0.001", "100", "0.00100000", "25.35190000", "-1.5", "0", "0.0", "-0.0", "123456789.12345678"] {
            let d = Decimal::parse(text).unwrap();
            assert_eq!(d.to_string(), text);
        }
    }

    #[test]
    fn table_of_values() {
        let table: &[(&str, u128, u8, bool, f64)] = &[
            ("0.001", 1, 3, false, 0.001),
            ("0.00100000", 100000, 8, false, 0.001),
            ("25.35190000", 2535190000, 8, false, 25.3519),
            ("-2.5", 25, 1, true, -2.5),
            ("100", 100, 0, false, 100.0),
            ("12345678901234.00000000", 1234567890123400000000, 8, false, 12345678901234.0),
        ];
        for &(text, mantissa, scale, negative, value) in table {
            let d = Decimal::parse(text).unwrap();
            assert_eq!((d.mantissa_wide(), d.scale(), d.is_negative()), (mantissa, scale, negative), "{text}");
            assert_eq!(d.to_f64(), value, "{text}");
        }
    }

    #[test]
    fn rejects_what_would_not_round_trip() {
        let table: &[(&str, DecimalError)] = &[
            ("", DecimalError::Empty),
            ("-", DecimalError::Empty),
            ("1e5", DecimalError::BadChar('e')),
            ("1.2.3", DecimalError::BadChar('.')),
            (" 1", DecimalError::BadChar(' ')),
            ("1,5", DecimalError::BadChar(',')),
            ("ä", DecimalError::BadChar('ä')),
            (".5", DecimalError::BareDot),
            ("5.", DecimalError::BareDot),
            ("007", DecimalError::LeadingZero),
            ("00.5", DecimalError::LeadingZero),
            ("79228162514264337593543950336", DecimalError::TooLong),
            ("340282366920938463463374607431768211456", DecimalError::TooLong),
            ("0.0000000000000000001", DecimalError::TooLong),
            ("NaN", DecimalError::BadChar('N')),
        ];
        for (text, err) in table {
            assert_eq!(Decimal::parse(text).as_ref(), Err(err), "{text:?}");
        }
    }

    #[test]
    fn debug_shows_the_text() {
        assert_eq!(format!("{:?}", Decimal::parse("-0.0010").unwrap()), "Decimal(\"-0.0010\")");
    }

    #[test]
    fn equality_is_representation_and_cmp_value_is_magnitude() {
        let a = Decimal::parse("0.10").unwrap();
        let b = Decimal::parse("0.1").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.cmp_value(b), std::cmp::Ordering::Equal);
        let neg = Decimal::parse("-3").unwrap();
        assert_eq!(neg.cmp_value(b), std::cmp::Ordering::Less);
        assert_eq!(
            Decimal::parse("-0.5").unwrap().cmp_value(Decimal::parse("-0.25").unwrap()),
            std::cmp::Ordering::Less
        );
    }

    #[test]
    fn serde_is_the_decimal_string() {
        let d = Decimal::parse("0.00100000").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"0.00100000\"");
        assert_eq!(serde_json::from_str::<Decimal>("\"0.00100000\"").unwrap(), d);
        assert_eq!(ron::to_string(&d).unwrap(), "\"0.00100000\"");
        assert!(serde_json::from_str::<Decimal>("\"1e3\"").unwrap_err().to_string().contains("not a decimal"));
        // Numbers are refused: a JSON number may already have been rounded, and Binance never sends one.
        assert!(serde_json::from_str::<Decimal>("5").is_err());
    }

    #[test]
    fn wide_values_keep_every_digit() {
        assert_eq!(std::mem::size_of::<Decimal>(), 16);
        let d = Decimal::parse("9999999999999999999.123456789").unwrap();
        assert_eq!(d.to_string(), "9999999999999999999.123456789");
        assert_eq!(d.mantissa(), u64::MAX, "saturates where u64 cannot hold it");
        assert_eq!(d.mantissa_wide(), 9999999999999999999123456789);
        assert_eq!(d.to_f64(), 1e19);
        let max = Decimal::parse("79228162514264337593543950335").unwrap();
        assert_eq!(max.mantissa_wide(), MAX_MANTISSA);
        let small_scaled = Decimal::parse("1.000000000000000000").unwrap();
        assert_eq!(max.cmp_value(small_scaled), std::cmp::Ordering::Greater);
        assert_eq!(small_scaled.cmp_value(max), std::cmp::Ordering::Less);
        let neg_max = Decimal::parse("-79228162514264337593543950335").unwrap();
        assert_eq!(neg_max.cmp_value(Decimal::parse("-1.5").unwrap()), std::cmp::Ordering::Less);
    }

    quickcheck! {
        fn cmp_value_matches_f64_order(a: (u64, u8, bool), b: (u64, u8, bool)) -> bool {
            let da = Decimal::new(u128::from(a.0 >> 12), a.1 % 9, a.2).unwrap();
            let db = Decimal::new(u128::from(b.0 >> 12), b.1 % 9, b.2).unwrap();
            // Mantissas below 2^52 and scales to 8: where f64 tells two values apart, the order agrees.
            let (fa, fb) = (da.to_f64(), db.to_f64());
            fa == fb || da.cmp_value(db) == fa.partial_cmp(&fb).unwrap()
        }

        fn cmp_value_matches_widening_to_one_scale(a: (u64, u8, bool), b: (u64, u8, bool), same_scale: bool) -> bool {
            // Half the cases share a scale (the fast path), half do not; zeros of either sign included.
            let scale_b = if same_scale { a.1 % 9 } else { b.1 % 9 };
            let da = Decimal::new(u128::from(a.0 % 4096), a.1 % 9, a.2).unwrap();
            let db = Decimal::new(u128::from(b.0 % 4096), scale_b, b.2).unwrap();
            let signed = |d: Decimal| {
                let m = i128::try_from(d.mantissa_wide() * 10u128.pow(u32::from(18 - d.scale()))).unwrap();
                if d.is_negative() { -m } else { m }
            };
            da.cmp_value(db) == signed(da).cmp(&signed(db))
        }

        fn display_parse_round_trip(mantissa: u128, scale: u8, negative: bool) -> bool {
            let d = Decimal::new(mantissa & MAX_MANTISSA, scale % (MAX_SCALE + 1), negative).unwrap();
            Decimal::parse(&d.to_string()) == Ok(d)
        }

        fn to_f64_matches_std_parse(mantissa: u128, scale: u8) -> bool {
            let d = Decimal::new(mantissa & MAX_MANTISSA, scale % (MAX_SCALE + 1), false).unwrap();
            d.to_f64() == d.to_string().parse::<f64>().unwrap()
        }

        fn parse_never_panics(text: String) -> bool {
            match Decimal::parse(&text) {
                Ok(d) => d.to_string() == text,
                Err(_) => true,
            }
        }
    }
}
