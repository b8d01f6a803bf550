//! Exact decimal numbers: JSON numbers (and numeric strings) as integers,
//! without going through a float.
//!
//! JSON Schema counts `200.0`, `2e2` and `1.795824e12` as integers, so an
//! integer field accepts them; `1795857302.417` seconds is exactly
//! 1795857302417 milliseconds. Floats would round both (and accept
//! `200.00000000000001` as 200).

/// A decimal number `±digits × 10^exp`, with `digits` holding at most
/// [`MAX_DIGITS`] significant digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    pub negative: bool,
    pub digits: u128,
    pub exp: i32,
}

/// Significant digits kept exactly (10^36 < 2^127).
const MAX_DIGITS: u32 = 36;

/// What a number is, as an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integral {
    Int(i128),
    /// Has a non-zero fractional part.
    Fraction,
    /// Beyond ±10^36 (or with more significant digits than are kept).
    TooLarge,
}

/// A plain unsigned integer of at most 18 digits without a leading zero
/// (what almost every status and epoch field is): the fast case of
/// [`parse_json`].
#[inline]
pub fn plain_uint(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 18 || (b.len() > 1 && b[0] == b'0') {
        return None;
    }
    let mut v = 0u64;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u64;
    }
    Some(v)
}

/// Parses the JSON number grammar (`-? int frac? exp?`, no leading zeros,
/// no `+`); `None` when `s` is not such a number.
pub fn parse_json(s: &str) -> Option<Decimal> {
    if let Some(v) = plain_uint(s) {
        return Some(Decimal {
            negative: false,
            digits: v as u128,
            exp: 0,
        });
    }
    let b = s.as_bytes();
    let mut i = 0;
    let negative = b.first() == Some(&b'-');
    if negative {
        i += 1;
    }
    let int_start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let int_end = i;
    if int_end == int_start || (int_end - int_start > 1 && b[int_start] == b'0') {
        return None;
    }
    let (mut frac_start, mut frac_end) = (i, i);
    if b.get(i) == Some(&b'.') {
        i += 1;
        frac_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        frac_end = i;
        if frac_end == frac_start {
            return None;
        }
    }
    let mut exp: i64 = 0;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let neg_exp = match b.get(i) {
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
        let e_start = i;
        while let Some(&c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            // saturate: an exponent this large is out of every range anyway
            exp = (exp * 10 + (c - b'0') as i64).min(1 << 40);
            i += 1;
        }
        if i == e_start {
            return None;
        }
        if neg_exp {
            exp = -exp;
        }
    }
    if i != b.len() {
        return None;
    }
    digits_of(
        negative,
        &b[int_start..int_end],
        &b[frac_start..frac_end],
        exp,
    )
}

/// Parses a plain decimal string: `-?digits(.digits)?` (a numeric string
/// such as `"1795857302.417"` or `"200"`; leading zeros allowed).
pub fn parse_plain(s: &str) -> Option<Decimal> {
    if let Some(v) = plain_uint(s) {
        // a header's epoch time or a status: the common case
        return Some(Decimal {
            negative: false,
            digits: v as u128,
            exp: 0,
        });
    }
    let b = s.as_bytes();
    let (negative, rest) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    let (int, frac) = match rest.iter().position(|&c| c == b'.') {
        Some(p) => (&rest[..p], &rest[p + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    if int.is_empty() || !int.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if rest.len() != int.len() && (frac.is_empty() || !frac.iter().all(u8::is_ascii_digit)) {
        return None;
    }
    digits_of(negative, int, frac, 0)
}

fn digits_of(negative: bool, int: &[u8], frac: &[u8], exp: i64) -> Option<Decimal> {
    let mut digits: u128 = 0;
    let mut n: u32 = 0;
    // digits dropped past MAX_DIGITS: the exponent grows by one for each
    let mut dropped: i64 = 0;
    let mut dropped_nonzero = false;
    for &c in int.iter().chain(frac) {
        let d = (c - b'0') as u128;
        if n == 0 && d == 0 {
            continue; // leading zeros carry nothing
        }
        if n < MAX_DIGITS {
            digits = digits * 10 + d;
            n += 1;
        } else {
            dropped += 1;
            dropped_nonzero |= d != 0;
        }
    }
    if dropped_nonzero {
        // more precision than is kept: only ever seen in hostile input
        return Some(Decimal {
            negative,
            digits: u128::MAX,
            exp: i32::MAX,
        });
    }
    let exp = exp - frac.len() as i64 + dropped;
    let exp = exp.clamp(i32::MIN as i64 / 2, i32::MAX as i64 / 2) as i32;
    Some(Decimal {
        negative: negative && digits != 0,
        digits,
        exp,
    })
}

fn pow10(e: u32) -> Option<u128> {
    10u128.checked_pow(e)
}

impl Decimal {
    /// The value as an integer, if it is one.
    pub fn integral(&self) -> Integral {
        if self.exp == 0 && self.digits <= i128::MAX as u128 {
            let v = self.digits as i128;
            return Integral::Int(if self.negative { -v } else { v });
        }
        self.scaled_floor(0, true)
    }

    /// `value × 10^shift`, rounded towards negative infinity (`exact`:
    /// refuse a non-zero remainder instead). Used for unit conversion: epoch
    /// seconds with a fraction to milliseconds is `shift = 3`.
    pub fn scaled_floor(&self, shift: i32, exact: bool) -> Integral {
        if self.exp == i32::MAX {
            return Integral::TooLarge;
        }
        if self.digits == 0 {
            return Integral::Int(0);
        }
        let e = self.exp + shift;
        let magnitude = if e >= 0 {
            match pow10(e as u32).and_then(|p| self.digits.checked_mul(p)) {
                Some(v) => v,
                None => return Integral::TooLarge,
            }
        } else {
            let Some(p) = pow10(e.unsigned_abs()) else {
                // every digit is below the unit
                if exact {
                    return Integral::Fraction;
                }
                return Integral::Int(if self.negative { -1 } else { 0 });
            };
            let (q, r) = (self.digits / p, self.digits % p);
            if r != 0 {
                if exact {
                    return Integral::Fraction;
                }
                if self.negative {
                    return signed(q + 1, true);
                }
            }
            q
        };
        signed(magnitude, self.negative)
    }
}

fn signed(m: u128, negative: bool) -> Integral {
    if m > 10u128.pow(MAX_DIGITS) {
        return Integral::TooLarge;
    }
    let v = m as i128;
    Integral::Int(if negative { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(s: &str) -> Integral {
        parse_json(s).unwrap().integral()
    }

    #[test]
    fn integral_forms_are_integers_exactly() {
        assert_eq!(int("200"), Integral::Int(200));
        assert_eq!(int("200.0"), Integral::Int(200));
        assert_eq!(int("2e2"), Integral::Int(200));
        assert_eq!(int("2E+2"), Integral::Int(200));
        assert_eq!(int("20000e-2"), Integral::Int(200));
        assert_eq!(int("1.795824e12"), Integral::Int(1_795_824_000_000));
        assert_eq!(int("-0"), Integral::Int(0));
        assert_eq!(int("-0.0e5"), Integral::Int(0));
        assert_eq!(int("-12.50e1"), Integral::Int(-125));
        assert_eq!(int("0.000"), Integral::Int(0));
    }

    #[test]
    fn fractions_and_huge_numbers_are_not() {
        assert_eq!(int("200.5"), Integral::Fraction);
        assert_eq!(int("200.00000000000001"), Integral::Fraction);
        assert_eq!(int("1e-400"), Integral::Fraction);
        assert_eq!(int("1e40"), Integral::TooLarge);
        assert_eq!(int("1e999999999999"), Integral::TooLarge);
        assert_eq!(
            int("99999999999999999999999999999999999999999"),
            Integral::TooLarge
        );
    }

    #[test]
    fn only_json_numbers_parse() {
        for bad in [
            "", "-", "01", "1.", ".5", "1e", "1e+", "+1", "0x10", "1 ", "NaN", "1.5.5",
        ] {
            assert!(parse_json(bad).is_none(), "{bad:?}");
        }
        for bad in ["", "-", "1.", ".5", "1e3", "+1", "1,5", " 1"] {
            assert!(parse_plain(bad).is_none(), "{bad:?}");
        }
        assert_eq!(parse_plain("007").unwrap().integral(), Integral::Int(7));
    }

    #[test]
    fn scaling_converts_units_exactly_and_floors_the_rest() {
        let s = |t: &str, shift| parse_plain(t).unwrap().scaled_floor(shift, false);
        assert_eq!(s("1795857302.417", 3), Integral::Int(1_795_857_302_417));
        assert_eq!(s("1795857302.4179", 3), Integral::Int(1_795_857_302_417));
        assert_eq!(s("1795857302", 3), Integral::Int(1_795_857_302_000));
        assert_eq!(s("1795857302417999", -3), Integral::Int(1_795_857_302_417));
        assert_eq!(s("-0.5", 0), Integral::Int(-1));
        assert_eq!(s("-1.5", 3), Integral::Int(-1500));
        assert_eq!(s("0.0001", 0), Integral::Int(0));
        assert_eq!(
            parse_plain("1.5").unwrap().scaled_floor(0, true),
            Integral::Fraction
        );
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_integer_arithmetic(v in -1_000_000_000_000_000i64..1_000_000_000_000_000, e in 0u32..6) {
            let p = 10i64.pow(e);
            // v written with a fraction of e digits: v / 10^e
            let a = v.unsigned_abs();
            let sign = if v < 0 { "-" } else { "" };
            let text = if e == 0 {
                v.to_string()
            } else {
                format!("{sign}{}.{:0w$}", a / p as u64, a % p as u64, w = e as usize)
            };
            let d = parse_json(&text).unwrap();
            proptest::prop_assert_eq!(d.scaled_floor(e as i32, true), Integral::Int(v as i128));
            proptest::prop_assert_eq!(d.scaled_floor(0, false), Integral::Int(v.div_euclid(p) as i128));
        }
    }
}
