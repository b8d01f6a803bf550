//! Event-time timestamps: integer milliseconds since the Unix epoch.
//!
//! Every timestamp field on the wire accepts either an RFC 3339 string (any
//! offset, any number of fractional digits) or an integer of epoch
//! milliseconds. Internally a timestamp is an `i64` of milliseconds (UTC).
//! Fractional seconds finer than a millisecond are truncated towards the past
//! (floor), so `…00.9999Z` is `…00.999Z`.
//!
//! The accepted range is the RFC 3339 range, years 0000 to 9999. Keeping every
//! value inside it means differences of two timestamps never overflow `i64`.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Milliseconds since 1970-01-01T00:00:00Z.
pub type Millis = i64;

/// 0000-01-01T00:00:00.000Z in epoch milliseconds.
pub const MIN_MILLIS: Millis = -62_167_219_200_000;
/// 9999-12-31T23:59:59.999Z in epoch milliseconds.
pub const MAX_MILLIS: Millis = 253_402_300_799_999;

/// Why a timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("not an RFC 3339 timestamp ({0})")]
    Syntax(&'static str),
    #[error("a number in a string, not an RFC 3339 timestamp: this field takes RFC 3339 or a JSON integer of epoch milliseconds (an input format other than v1 reads numeric strings: see [input.time])")]
    NumericString,
    #[error("{0} is out of range")]
    Range(&'static str),
    #[error("epoch milliseconds {0} outside years 0000-9999")]
    EpochRange(i128),
    #[error("a timestamp must be an RFC 3339 string or an integer of epoch milliseconds, not {0}")]
    Type(&'static str),
}

/// Digits with at most one `.` among them (epoch seconds or milliseconds
/// written as a string).
fn is_numeric(b: &[u8]) -> bool {
    let mut dot = false;
    !b.is_empty()
        && b.iter().all(|&c| match c {
            b'0'..=b'9' => true,
            b'.' if !dot => {
                dot = true;
                true
            }
            _ => false,
        })
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
/// Howard Hinnant's `days_from_civil`.
pub const fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date (year, month, day) of a day count since 1970-01-01.
pub const fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

const fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

const fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if is_leap(y) {
                29
            } else {
                28
            }
        }
    }
}

#[inline]
fn digits(b: &[u8], at: usize, n: usize) -> Result<u32, TimestampError> {
    let mut v = 0u32;
    for i in 0..n {
        let c = *b.get(at + i).ok_or(TimestampError::Syntax("too short"))?;
        if !c.is_ascii_digit() {
            return Err(TimestampError::Syntax("expected a digit"));
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Ok(v)
}

#[inline]
fn expect(b: &[u8], at: usize, what: &[u8], msg: &'static str) -> Result<(), TimestampError> {
    match b.get(at) {
        Some(c) if what.contains(c) => Ok(()),
        _ => Err(TimestampError::Syntax(msg)),
    }
}

/// Parses an RFC 3339 date-time (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`).
/// `T` may be `t` or a space and `Z` may be `z`, as RFC 3339 allows. A leap
/// second (`:60`) is accepted and counts as the first millisecond after `:59.999`.
pub fn parse_rfc3339(s: &str) -> Result<Millis, TimestampError> {
    match utc_millis(s.as_bytes()) {
        Some(ms) => Ok(ms),
        None => parse_rfc3339_general(s),
    }
}

/// The shape gateways and `generate` write, `YYYY-MM-DDTHH:MM:SS.mmmZ`,
/// read eight bytes at a time: `None` for anything else, a leap second or
/// a value out of range included (the general parser then decides, and
/// names what is wrong). Two timestamps a request: this is ~4 % of a
/// `scan`'s instructions otherwise.
///
/// Requests come in time order, many a second: the minute of the last
/// one read on this thread is kept ([`LAST_MINUTE`]), and a timestamp in
/// the same minute (the same first 16 bytes, found valid then) has only
/// its seconds read.
#[inline]
fn utc_millis(b: &[u8]) -> Option<Millis> {
    let b: &[u8; 24] = b.try_into().ok()?;
    let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    let minute = u128::from_le_bytes(b[..16].try_into().expect("16 bytes"));
    let (seconds, millis) = seconds_word(word(16))?;
    let (last, at) = LAST_MINUTE.get();
    if minute == last {
        return Some(at + (seconds * 1000 + millis) as Millis);
    }
    // the other two words and their digit bytes (0xff where a digit must
    // be): "YYYY-MM-", "DDTHH:MM"
    const SHAPE: [(u64, u64); 2] = [
        (0x00ff_ff00_ffff_ffff, u64::from_le_bytes(*b"0000-00-")),
        (0xffff_00ff_ff00_ffff, u64::from_le_bytes(*b"00T00:00")),
    ];
    let mut d = [0u64; 2];
    for (k, &(digits, template)) in SHAPE.iter().enumerate() {
        d[k] = digit_word(word(k * 8), digits, template)?;
    }
    let at = |k: usize, i: usize| ((d[k] >> (8 * i)) & 0xff) as u32;
    let two = |k: usize, i: usize| at(k, i) * 10 + at(k, i + 1);
    let year = at(0, 0) * 1000 + at(0, 1) * 100 + two(0, 2);
    let month = two(0, 5);
    let day = at(1, 0) * 10 + at(1, 1);
    let hour = two(1, 3);
    let minute_of_hour = two(1, 6);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year as i64, month)
        || hour > 23
        || minute_of_hour > 59
    {
        return None;
    }
    let days = days_from_civil(year as i64, month, day);
    let start = (days * 86_400 + (hour * 3600 + minute_of_hour * 60) as i64) * 1000;
    LAST_MINUTE.set((minute, start));
    Some(start + (seconds * 1000 + millis) as Millis)
}

thread_local! {
    /// The first 16 bytes (`YYYY-MM-DDTHH:MM`) of the last timestamp
    /// [`utc_millis`] read on this thread whose minute is valid, and that
    /// minute's start in milliseconds. Zero bytes are never a timestamp's.
    static LAST_MINUTE: std::cell::Cell<(u128, Millis)> = const { std::cell::Cell::new((0, 0)) };
}

/// The seconds and milliseconds of `:SS.mmmZ` (eight bytes, little
/// endian); `None` for any other shape, and for a leap second.
#[inline(always)]
fn seconds_word(w: u64) -> Option<(u32, u32)> {
    let d = digit_word(w, 0x00ff_ffff_00ff_ff00, u64::from_le_bytes(*b":00.000Z"))?;
    let at = |i: usize| ((d >> (8 * i)) & 0xff) as u32;
    let seconds = at(1) * 10 + at(2);
    let millis = at(4) * 100 + at(5) * 10 + at(6);
    (seconds <= 59).then_some((seconds, millis))
}

/// The digit values of an eight-byte word whose separators (the bytes not
/// in `digits`) are `template`'s and whose other bytes are ASCII digits;
/// `None` otherwise.
#[inline(always)]
fn digit_word(w: u64, digits: u64, template: u64) -> Option<u64> {
    const HIGH: u64 = 0xf0f0_f0f0_f0f0_f0f0;
    const THREES: u64 = 0x3030_3030_3030_3030;
    // separators exact; a digit byte's high nibble is 3, and still 3
    // after adding 6 (as in `sequence::number`)
    let seps = !digits;
    let plus6 = w.wrapping_add(0x0606_0606_0606_0606);
    if (w ^ template) & seps != 0
        || (w & HIGH & digits) != THREES & digits
        || (plus6 & HIGH & digits) != THREES & digits
    {
        return None;
    }
    // the digits' values (separators masked out first: no borrows)
    Some((w & digits) - (THREES & digits))
}

/// [`parse_rfc3339`] for every form it takes, byte by byte.
fn parse_rfc3339_general(s: &str) -> Result<Millis, TimestampError> {
    let b = s.as_bytes();
    let year = digits(b, 0, 4)? as i64;
    if b.get(4) != Some(&b'-') && is_numeric(b) {
        // epoch seconds or milliseconds written as a string: say so
        return Err(TimestampError::NumericString);
    }
    expect(b, 4, b"-", "expected '-' after the year")?;
    let month = digits(b, 5, 2)?;
    expect(b, 7, b"-", "expected '-' after the month")?;
    let day = digits(b, 8, 2)?;
    expect(b, 10, b"Tt ", "expected 'T' between date and time")?;
    let hour = digits(b, 11, 2)?;
    expect(b, 13, b":", "expected ':' after the hour")?;
    let minute = digits(b, 14, 2)?;
    expect(b, 16, b":", "expected ':' after the minutes")?;
    let second = digits(b, 17, 2)?;
    let mut i = 19;
    let mut millis = 0u32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(c) = b.get(i) {
            if !c.is_ascii_digit() {
                break;
            }
            if i - start < 3 {
                millis = millis * 10 + (c - b'0') as u32;
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return Err(TimestampError::Syntax("expected digits after '.'"));
        }
        for _ in n..3 {
            millis *= 10;
        }
    }
    let offset_minutes: i64 = match b.get(i) {
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = digits(b, i + 1, 2)?;
            expect(b, i + 3, b":", "expected ':' in the offset")?;
            let om = digits(b, i + 4, 2)?;
            if oh > 23 {
                return Err(TimestampError::Range("offset hour"));
            }
            if om > 59 {
                return Err(TimestampError::Range("offset minute"));
            }
            i += 6;
            let m = (oh * 60 + om) as i64;
            if sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => {
            return Err(TimestampError::Syntax(
                "expected 'Z' or an offset like +02:00",
            ))
        }
    };
    if i != b.len() {
        return Err(TimestampError::Syntax(
            "unexpected characters after the offset",
        ));
    }
    if !(1..=12).contains(&month) {
        return Err(TimestampError::Range("month"));
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err(TimestampError::Range("day"));
    }
    if hour > 23 {
        return Err(TimestampError::Range("hour"));
    }
    if minute > 59 {
        return Err(TimestampError::Range("minute"));
    }
    if second > 60 {
        return Err(TimestampError::Range("second"));
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour as i64 * 3600 + minute as i64 * 60 + second as i64
        - offset_minutes * 60;
    let ms = secs * 1000 + millis as i64;
    if !(MIN_MILLIS..=MAX_MILLIS).contains(&ms) {
        return Err(TimestampError::Range("instant (after applying the offset)"));
    }
    Ok(ms)
}

/// Parses a Common Log Format time, as NGINX's `$time_local` and Apache's
/// `%t` write it: `28/Nov/2026:09:15:02 +0000` (English month names, an
/// offset of `±HHMM`).
pub fn parse_clf(s: &str) -> Result<Millis, TimestampError> {
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let clf = |m| TimestampError::Syntax(m);
    let b = s.as_bytes();
    if b.len() != 26 {
        return Err(clf(
            "not a Common Log Format time like 28/Nov/2026:09:15:02 +0000",
        ));
    }
    let day = digits(b, 0, 2)?;
    expect(b, 2, b"/", "expected '/' after the day")?;
    let month = MONTHS
        .iter()
        .position(|m| m[..] == b[3..6])
        .ok_or(clf("expected a month name like Nov"))? as u32
        + 1;
    expect(b, 6, b"/", "expected '/' after the month")?;
    let year = digits(b, 7, 4)? as i64;
    expect(b, 11, b":", "expected ':' after the year")?;
    let hour = digits(b, 12, 2)?;
    expect(b, 14, b":", "expected ':' after the hour")?;
    let minute = digits(b, 15, 2)?;
    expect(b, 17, b":", "expected ':' after the minutes")?;
    let second = digits(b, 18, 2)?;
    expect(b, 20, b" ", "expected ' ' before the offset")?;
    expect(b, 21, b"+-", "expected an offset like +0000")?;
    let (oh, om) = (digits(b, 22, 2)?, digits(b, 24, 2)?);
    if oh > 23 || om > 59 {
        return Err(TimestampError::Range("offset"));
    }
    let sign = if b[21] == b'-' { -1 } else { 1 };
    let rfc = format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{}{oh:02}:{om:02}",
        if sign < 0 { '-' } else { '+' }
    );
    parse_rfc3339(&rfc)
}

/// Checks an integer of epoch milliseconds against the supported range.
pub fn from_epoch_millis(v: i128) -> Result<Millis, TimestampError> {
    if (MIN_MILLIS as i128..=MAX_MILLIS as i128).contains(&v) {
        Ok(v as Millis)
    } else {
        Err(TimestampError::EpochRange(v))
    }
}

/// Formats as RFC 3339 UTC with milliseconds: `2026-11-28T01:02:03.004Z`.
pub fn format_rfc3339(ms: Millis) -> String {
    let mut s = String::with_capacity(24);
    write_rfc3339(&mut s, ms);
    s
}

/// Appends the RFC 3339 form of `ms` to `out`.
pub fn write_rfc3339(out: &mut String, ms: Millis) {
    use std::fmt::Write;
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let secs = rem / 1000;
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        y,
        m,
        d,
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        rem % 1000
    );
}

struct TsVisitor;

impl<'de> Visitor<'de> for TsVisitor {
    type Value = Millis;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an RFC 3339 string or an integer of epoch milliseconds")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Millis, E> {
        from_epoch_millis(v as i128).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Millis, E> {
        from_epoch_millis(v as i128).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, _v: f64) -> Result<Millis, E> {
        Err(E::custom(TimestampError::Type("a fractional number")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Millis, E> {
        parse_rfc3339(v).map_err(E::custom)
    }

    fn visit_bool<E: de::Error>(self, _v: bool) -> Result<Millis, E> {
        Err(E::custom(TimestampError::Type("a boolean")))
    }
}

/// `#[serde(deserialize_with = "timestamp::de")]` for a required timestamp.
pub fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
    d.deserialize_any(TsVisitor)
}

/// `#[serde(deserialize_with = "timestamp::de_opt")]` for a nullable timestamp.
pub fn de_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
    struct OptVisitor;
    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<Millis>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("null, an RFC 3339 string or an integer of epoch milliseconds")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            de(d).map(Some)
        }
    }
    d.deserialize_option(OptVisitor)
}

/// `#[serde(serialize_with = "timestamp::ser")]`: RFC 3339 UTC with milliseconds.
pub fn ser<S: Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339(*ms))
}

/// `#[serde(serialize_with = "timestamp::ser_opt")]`.
pub fn ser_opt<S: Serializer>(ms: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => ser(ms, s),
        None => s.serialize_none(),
    }
}

/// `#[serde(with = "timestamp::rfc3339")]`: written as RFC 3339 UTC with
/// milliseconds, read as any timestamp [`de()`] accepts.
pub mod rfc3339 {
    pub use super::{de as deserialize, ser as serialize};
}

/// `#[serde(with = "timestamp::rfc3339_opt")]`, for a nullable timestamp.
pub mod rfc3339_opt {
    pub use super::{de_opt as deserialize, ser_opt as serialize};
}

/// Deserializes what [`ser()`] writes (and everything [`de()`] accepts).
pub fn de_str<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
    de(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_log_format() {
        assert_eq!(
            parse_clf("28/Nov/2026:09:15:02 +0000").unwrap(),
            parse_rfc3339("2026-11-28T09:15:02Z").unwrap()
        );
        assert_eq!(
            parse_clf("28/Nov/2026:11:15:02 +0200").unwrap(),
            parse_rfc3339("2026-11-28T09:15:02Z").unwrap()
        );
        assert_eq!(
            parse_clf("01/Jan/1970:00:00:00 -0130").unwrap(),
            90 * 60 * 1000
        );
        for bad in [
            "28/Nov/2026:09:15:02",
            "28/nov/2026:09:15:02 +0000",
            "31/Nov/2026:09:15:02 +0000",
            "28/Nov/2026:24:15:02 +0000",
            "28/Nov/2026:09:15:02 +2400",
            "28/Nov/2026T09:15:02 +0000",
            "2026-11-28T09:15:02Z",
        ] {
            assert!(parse_clf(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_number_in_a_string_is_named_as_such() {
        for s in ["1795857302417", "1795857302.417", "17958573024"] {
            assert_eq!(parse_rfc3339(s), Err(TimestampError::NumericString), "{s}");
        }
        let e = parse_rfc3339("1795857302.417").unwrap_err().to_string();
        assert!(
            e.contains("a number in a string") && e.contains("[input.time]"),
            "{e}"
        );
        // what is not a number keeps the syntax error
        for s in ["1795.857.302", "2026/11/28", "2026-11-28"] {
            assert!(
                matches!(parse_rfc3339(s), Err(TimestampError::Syntax(_))),
                "{s}"
            );
        }
    }

    #[test]
    fn epoch_and_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.001Z").unwrap(), 1);
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00").unwrap(), 0);
        assert_eq!(parse_rfc3339("1969-12-31T23:00:00-01:00").unwrap(), 0);
        assert_eq!(parse_rfc3339("1970-01-01t00:00:01z").unwrap(), 1000);
        assert_eq!(parse_rfc3339("1970-01-01 00:00:01Z").unwrap(), 1000);
        assert_eq!(
            parse_rfc3339("2026-11-28T01:02:03.456789+05:30").unwrap(),
            parse_rfc3339("2026-11-27T19:32:03.456Z").unwrap()
        );
    }

    #[test]
    fn fractions_truncate_to_millis() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.9Z").unwrap(), 900);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.99Z").unwrap(), 990);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00.9999999Z").unwrap(), 999);
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59.9999Z").unwrap(), -1);
    }

    /// The eight-bytes-at-a-time reading is the general parser's, for
    /// every byte changed at every place of the shape it takes, and for
    /// every date of four centuries at many times of day.
    #[test]
    fn the_common_shape_reads_as_the_general_parser_does() {
        let check = |s: &str| {
            assert_eq!(parse_rfc3339(s), parse_rfc3339_general(s), "{s:?}");
        };
        for base in [
            "2026-11-01T00:00:00.000Z",
            "1999-12-31T23:59:59.999Z",
            "2024-02-29T12:34:56.789Z",
            "2023-02-29T12:34:56.789Z",
            "0000-01-01T00:00:00.000Z",
            "9999-12-31T23:59:59.999Z",
            "2026-06-30T23:59:60.500Z",
        ] {
            check(base);
            assert!(
                utc_millis(base.as_bytes()).is_some()
                    || base.contains(":60")
                    || base.starts_with("2023-02-29")
            );
            for at in 0..base.len() {
                for byte in 0..=255u8 {
                    let mut b = base.as_bytes().to_vec();
                    b[at] = byte;
                    if let Ok(s) = std::str::from_utf8(&b) {
                        check(s);
                    }
                }
            }
        }
        for day in (days_from_civil(1900, 1, 1)..days_from_civil(2300, 1, 1)).step_by(7) {
            for ms in [0, 1, 999, 59_999, 3_599_999, 43_210_987, 86_399_999] {
                let t = day * 86_400_000 + ms;
                let s = format_rfc3339(t);
                assert_eq!(s.len(), 24, "{s}");
                assert_eq!(utc_millis(s.as_bytes()), Some(t), "{s}");
                check(&s);
            }
        }
    }

    /// The minute kept from the last timestamp read ([`LAST_MINUTE`])
    /// gives the same value as reading every byte, whatever came before:
    /// the same minute, the next one, one far away, or one not valid.
    #[test]
    fn a_timestamp_in_the_minute_read_last_reads_the_same() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut t = days_from_civil(2026, 11, 1) * 86_400_000;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            t = match x % 8 {
                // mostly a few ms later (the same minute), sometimes a jump
                0 => (x >> 8) as i64 % (days_from_civil(2300, 1, 1) * 86_400_000),
                1 => t - (x >> 8) as i64 % 120_000,
                _ => t + (x >> 8) as i64 % 700,
            }
            .max(0);
            let s = format_rfc3339(t);
            assert_eq!(utc_millis(s.as_bytes()), Some(t), "{s}");
            if x.is_multiple_of(5) {
                // the same minute with a second or a shape the short path refuses
                for tail in [":60.000Z", ":5x.000Z", ":59.000z", "-59.000Z"] {
                    let bad = format!("{}{tail}", &s[..16]);
                    assert_eq!(utc_millis(bad.as_bytes()), None, "{bad}");
                    assert_eq!(parse_rfc3339(&bad), parse_rfc3339_general(&bad), "{bad}");
                }
                assert_eq!(utc_millis(s.as_bytes()), Some(t), "{s}");
            }
        }
        // a minute that is not valid is never kept
        for bad in ["2026-02-30T10:00", "2026-13-01T10:00", "2026-11-01T24:00"] {
            let s = format!("{bad}:00.000Z");
            assert_eq!(utc_millis(s.as_bytes()), None, "{s}");
            assert_eq!(utc_millis(s.as_bytes()), None, "{s}, twice");
        }
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "",
            "2026-11-28",
            "2026-11-28T01:02:03",
            "2026-11-28T01:02:03.Z",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
            "2026-01-01T00:00:61Z",
            "2026-01-01T00:00:00+24:00",
            "2026-01-01T00:00:00+01",
            "2026-01-01T00:00:00Zjunk",
            "+2026-01-01T00:00:00Z",
            "0000-01-01T00:00:00+00:01",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad} should be refused");
        }
        assert!(parse_rfc3339("2024-02-29T00:00:00Z").is_ok());
        assert!(parse_rfc3339("2000-02-29T00:00:00Z").is_ok());
        assert!(parse_rfc3339("1900-02-29T00:00:00Z").is_err());
    }

    #[test]
    fn range_limits() {
        assert_eq!(parse_rfc3339("0000-01-01T00:00:00Z").unwrap(), MIN_MILLIS);
        assert_eq!(
            parse_rfc3339("9999-12-31T23:59:59.999Z").unwrap(),
            MAX_MILLIS
        );
        assert!(from_epoch_millis(MAX_MILLIS as i128 + 1).is_err());
        assert!(from_epoch_millis(MIN_MILLIS as i128 - 1).is_err());
        assert!(from_epoch_millis(u64::MAX as i128).is_err());
    }

    #[test]
    fn format_round_trips() {
        for ms in [
            0,
            1,
            -1,
            999,
            1_764_291_723_004,
            MIN_MILLIS,
            MAX_MILLIS,
            -86_400_001,
        ] {
            let s = format_rfc3339(ms);
            assert_eq!(parse_rfc3339(&s).unwrap(), ms, "{s}");
        }
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn civil_round_trip_every_day_of_four_centuries() {
        let start = days_from_civil(1900, 1, 1);
        for z in start..start + 146_097 {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
            assert!(d >= 1 && d <= days_in_month(y, m));
        }
    }
}
