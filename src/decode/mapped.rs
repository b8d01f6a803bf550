//! Decoding a gateway's record through a [`Mapping`]: one pass of the path
//! scanner ([`super::json`]) finds every candidate value, then each field
//! takes its first candidate that was sent and converts it leniently.
//! Every error names the format, the field and the path it was read from.

use std::borrow::Cow;

use sha2::Digest;

use super::input::{Mapping, TimeFormat};
use super::json::{self, ScanError, Val};
use super::number::{self, Decimal, Integral};
use super::v1::{self, NAMES};
use super::DecodeError;
use crate::schema::timestamp::{self, Millis};
use crate::schema::AccessEvent;

/// At most this many candidate paths (each field has one or two).
pub const MAX_SLOTS: usize = 24;

/// The prefix of a derived event id (see [`derived_event_id`]).
pub const DERIVED_ID_PREFIX: &str = "sha256:";

/// The event id of a record that carries none: `sha256:` and the first 16
/// bytes of the SHA-256 of the record (white space around it trimmed), in
/// hex. A redelivered copy, byte-identical, gets the same id (so it is a
/// transport duplicate, and alert ids stay deterministic); a cryptographic
/// hash, because a request crafted to collide with an earlier one would
/// otherwise pass as its duplicate.
pub fn derived_event_id(record: &str) -> String {
    let h = sha2::Sha256::digest(record.trim_ascii().as_bytes());
    let mut s = String::with_capacity(DERIVED_ID_PREFIX.len() + 32);
    s.push_str(DERIVED_ID_PREFIX);
    crate::schema::push_hex(&mut s, &h[..16]);
    s
}

struct Ctx<'m> {
    m: &'m Mapping,
}

impl Ctx<'_> {
    fn err(&self, field: usize, slot: Option<usize>, what: String) -> DecodeError {
        let path = match slot {
            Some(s) => self.path_of_slot(s),
            None => self.m.field_paths[field].join(" or "),
        };
        DecodeError::Schema(format!(
            "format {}: field `{}` at {path}: {what}",
            self.m.format, NAMES[field]
        ))
    }

    fn path_of_slot(&self, slot: usize) -> String {
        let f = self.m.slot_field[slot];
        let k = self.m.field_slots[f]
            .iter()
            .position(|&s| s == slot)
            .unwrap_or(0);
        self.m.field_paths[f][k].clone()
    }

    fn missing(&self, field: usize) -> DecodeError {
        DecodeError::Schema(format!(
            "format {}: missing field `{}` (looked at {})",
            self.m.format,
            NAMES[field],
            self.m.field_paths[field].join(", ")
        ))
    }

    fn is_absent(&self, v: &Val<'_>) -> bool {
        match v {
            Val::Null => true,
            Val::Str {
                raw,
                escaped: false,
            } => raw.len() <= self.m.absent_max_len && self.m.absent.iter().any(|a| a == raw),
            Val::Str { raw, escaped: true } => json::unescape(raw)
                .map(|s| self.m.absent.iter().any(|a| *a == *s))
                .unwrap_or(false),
            _ => false,
        }
    }

    /// The first candidate of `field` that was sent, with its slot.
    fn pick<'a>(&self, field: usize, vals: &[Option<Val<'a>>]) -> Option<(usize, Val<'a>)> {
        self.m.field_slots[field]
            .iter()
            .filter_map(|&s| vals[s].map(|v| (s, v)))
            .find(|(_, v)| !self.is_absent(v))
    }

    fn string<'a>(
        &self,
        field: usize,
        vals: &[Option<Val<'a>>],
    ) -> Result<Option<Cow<'a, str>>, DecodeError> {
        let Some((slot, v)) = self.pick(field, vals) else {
            return Ok(None);
        };
        match v {
            Val::Str { raw, escaped } => json::contents(raw, escaped)
                .map(Some)
                .map_err(|e| self.err(field, Some(slot), format!("invalid string: expected {e}"))),
            // an id or a user logged as a number
            Val::Num(t) => Ok(Some(Cow::Borrowed(t))),
            other => Err(self.err(
                field,
                Some(slot),
                format!("expected a string, found {}", other.kind()),
            )),
        }
    }

    /// The common case the `_fast` conversions try inline: `field` has
    /// one candidate path, and its value is either not there (`Some(None)`)
    /// or surely sent (`Some(Some(v))`: a number, or a string without
    /// escapes longer than every absent value). `None`: anything else, for
    /// the general conversion to judge.
    #[inline(always)]
    fn sole<'a>(&self, field: usize, vals: &[Option<Val<'a>>]) -> Option<Option<Val<'a>>> {
        let [slot] = self.m.field_slots[field][..] else {
            return None;
        };
        match vals[slot] {
            None => Some(None),
            Some(v @ Val::Num(_)) => Some(Some(v)),
            Some(
                v @ Val::Str {
                    raw,
                    escaped: false,
                },
            ) if raw.len() > self.m.absent_max_len => Some(Some(v)),
            _ => None,
        }
    }

    /// [`Self::string`], the common case ([`Self::sole`]) inline.
    #[inline(always)]
    fn string_fast<'a>(
        &self,
        field: usize,
        vals: &[Option<Val<'a>>],
    ) -> Result<Option<Cow<'a, str>>, DecodeError> {
        match self.sole(field, vals) {
            Some(None) => Ok(None),
            Some(Some(Val::Num(t) | Val::Str { raw: t, .. })) => Ok(Some(Cow::Borrowed(t))),
            _ => self.string(field, vals),
        }
    }

    #[inline]
    fn required<'a>(
        &self,
        field: usize,
        vals: &[Option<Val<'a>>],
    ) -> Result<Cow<'a, str>, DecodeError> {
        self.string_fast(field, vals)?
            .ok_or_else(|| self.missing(field))
    }

    /// [`Self::status`], a plain integer at the one path ([`Self::sole`])
    /// inline.
    #[inline(always)]
    fn status_fast(&self, vals: &[Option<Val<'_>>]) -> Result<u16, DecodeError> {
        if let Some(Some(Val::Num(t))) = self.sole(v1::STATUS, vals) {
            match number::plain_uint(t) {
                Some(n) if n <= AccessEvent::MAX_STATUS as u64 => return Ok(n as u16),
                _ => {}
            }
        }
        self.status(vals)
    }

    fn status(&self, vals: &[Option<Val<'_>>]) -> Result<u16, DecodeError> {
        let field = v1::STATUS;
        let Some((slot, v)) = self.pick(field, vals) else {
            return Err(self.missing(field));
        };
        let (d, text) = match v {
            Val::Num(t) => (number::parse_json(t), Cow::Borrowed(t)),
            Val::Str { raw, escaped } => {
                let s = json::contents(raw, escaped).unwrap_or(Cow::Borrowed(raw));
                (number::parse_plain(s.trim()), s)
            }
            other => {
                return Err(self.err(
                    field,
                    Some(slot),
                    format!("expected a number, found {}", other.kind()),
                ))
            }
        };
        match d.map(|d| d.integral()) {
            Some(Integral::Int(n)) if (0..=AccessEvent::MAX_STATUS as i128).contains(&n) => {
                Ok(n as u16)
            }
            _ => Err(self.err(
                field,
                Some(slot),
                format!(
                    "{} is not an HTTP status (an integer 0..={})",
                    quoted(&text),
                    AccessEvent::MAX_STATUS
                ),
            )),
        }
    }

    /// [`Self::time`], the common case ([`Self::sole`]) inline when it
    /// reads as a time (an error is left to [`Self::time`], which names it).
    #[inline(always)]
    fn time_fast(
        &self,
        field: usize,
        how: TimeFormat,
        vals: &[Option<Val<'_>>],
    ) -> Result<Option<Millis>, DecodeError> {
        let sent = match self.sole(field, vals) {
            Some(None) => return Ok(None),
            Some(Some(Val::Num(t))) => Some((t, true)),
            Some(Some(Val::Str { raw, .. })) => Some((raw, false)),
            _ => None,
        };
        if let Some(Ok(ms)) = sent.map(|(text, numeric)| parse_time(text, numeric, how)) {
            return Ok(Some(ms));
        }
        self.time(field, how, vals)
    }

    fn time(
        &self,
        field: usize,
        how: TimeFormat,
        vals: &[Option<Val<'_>>],
    ) -> Result<Option<Millis>, DecodeError> {
        let Some((slot, v)) = self.pick(field, vals) else {
            return Ok(None);
        };
        let text: Cow<'_, str> = match v {
            Val::Num(t) => Cow::Borrowed(t),
            Val::Str { raw, escaped } => json::contents(raw, escaped).unwrap_or(Cow::Borrowed(raw)),
            other => {
                return Err(self.err(
                    field,
                    Some(slot),
                    format!("expected a time, found {}", other.kind()),
                ))
            }
        };
        let numeric = matches!(v, Val::Num(_));
        parse_time(&text, numeric, how).map(Some).map_err(|why| {
            self.err(
                field,
                Some(slot),
                format!("cannot read {} as a time ({why})", quoted(&text)),
            )
        })
    }
}

/// A value for an error message: quoted, cut at 64 characters.
fn quoted(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

fn describe(how: TimeFormat) -> &'static str {
    match how {
        TimeFormat::Auto => "time format auto: RFC 3339, or epoch s, ms, µs or ns",
        TimeFormat::Rfc3339 => "time format rfc3339",
        TimeFormat::EpochS => "time format epoch_s",
        TimeFormat::EpochMs => "time format epoch_ms",
        TimeFormat::EpochUs => "time format epoch_us",
        TimeFormat::EpochNs => "time format epoch_ns",
        TimeFormat::Clf => "time format clf, like 28/Nov/2026:09:15:02 +0000",
    }
}

/// Epoch `d` in the unit `10^-shift` s... as milliseconds: `shift` is how
/// many powers of ten to multiply by (3 for seconds, -3 for µs).
fn epoch(d: &Decimal, shift: i32) -> Result<Millis, String> {
    match d.scaled_floor(shift, false) {
        Integral::Int(v) => timestamp::from_epoch_millis(v).map_err(|e| e.to_string()),
        _ => Err("a number out of range".into()),
    }
}

/// The unit `auto` reads an epoch number of this magnitude in, as the power
/// of ten that turns it into milliseconds: seconds below 10^11, then
/// milliseconds, microseconds, nanoseconds from 10^17.
fn auto_shift(magnitude: u128) -> i32 {
    match magnitude {
        0..100_000_000_000 => 3,
        100_000_000_000..100_000_000_000_000 => 0,
        100_000_000_000_000..100_000_000_000_000_000 => -3,
        _ => -6,
    }
}

/// Reads a time as `how` says. `numeric`: it was a JSON number.
pub fn parse_time(text: &str, numeric: bool, how: TimeFormat) -> Result<Millis, String> {
    let number = || {
        if numeric {
            number::parse_json(text)
        } else {
            number::parse_plain(text.trim())
        }
    };
    let unit = |shift: i32| -> Result<Millis, String> {
        let d = number().ok_or_else(|| format!("{}: not a number", describe(how)))?;
        epoch(&d, shift)
    };
    match how {
        TimeFormat::EpochS => unit(3),
        TimeFormat::EpochMs => unit(0),
        TimeFormat::EpochUs => unit(-3),
        TimeFormat::EpochNs => unit(-6),
        TimeFormat::Rfc3339 if !numeric => {
            timestamp::parse_rfc3339(text).map_err(|e| format!("{}: {e}", describe(how)))
        }
        TimeFormat::Clf if !numeric => {
            timestamp::parse_clf(text).map_err(|e| format!("{}: {e}", describe(how)))
        }
        TimeFormat::Rfc3339 | TimeFormat::Clf => Err(format!(
            "{}: expected a string, found a number",
            describe(how)
        )),
        TimeFormat::Auto => {
            // the common case: a plain integer (epoch s, ms, µs or ns) read
            // without building a decimal; exact as the general path is
            let plain = if numeric { text } else { text.trim() };
            if let Some(v) = number::plain_uint(plain) {
                let shift = auto_shift(v as u128);
                let ms = if shift >= 0 {
                    v as i128 * 10i128.pow(shift as u32)
                } else {
                    (v / 10u64.pow(shift.unsigned_abs())) as i128
                };
                return timestamp::from_epoch_millis(ms).map_err(|e| e.to_string());
            }
            if let Some(d) = number() {
                let magnitude = match d.scaled_floor(0, false) {
                    Integral::Int(v) => v.unsigned_abs(),
                    _ => return Err("a number out of range".into()),
                };
                return epoch(&d, auto_shift(magnitude));
            }
            if numeric {
                return Err("a number out of range".into());
            }
            timestamp::parse_rfc3339(text).map_err(|e| format!("{}: {e}", describe(how)))
        }
    }
}

fn scan_error(m: &Mapping, e: ScanError) -> DecodeError {
    match e {
        ScanError::Syntax { at, what } => {
            DecodeError::Syntax(format!("at byte {at}: expected {what}"))
        }
        ScanError::Duplicate { slot } => {
            let c = Ctx { m };
            let f = m.slot_field[slot];
            DecodeError::Schema(format!(
                "format {}: field `{}` at {} appears twice",
                m.format,
                NAMES[f],
                c.path_of_slot(slot)
            ))
        }
        ScanError::NotObject => DecodeError::Schema(format!(
            "format {}: the record is not a JSON object",
            m.format
        )),
    }
}

/// Decodes one record of a mapped format (the tests' way in: the decoder
/// calls [`access_into`]); `plain`: the text is known to be
/// [`super::plain`].
#[cfg(test)]
pub fn access<'a>(m: &Mapping, text: &'a str, plain: bool) -> Result<AccessEvent<'a>, DecodeError> {
    build(m, text, plain)
}

/// Decodes one record of a mapped format into `out` (built there, not
/// copied: see [`super::Decoder::access_into`]); `plain`: the text is
/// known to be [`super::plain`].
pub fn access_into<'a>(
    m: &Mapping,
    text: &'a str,
    plain: bool,
    out: &mut std::mem::MaybeUninit<Result<AccessEvent<'a>, DecodeError>>,
) {
    out.write(build(m, text, plain));
}

#[inline(always)]
fn build<'a>(m: &Mapping, text: &'a str, plain: bool) -> Result<AccessEvent<'a>, DecodeError> {
    let mut vals: [Option<Val<'a>>; MAX_SLOTS] = [None; MAX_SLOTS];
    let vals = &mut vals[..m.paths.slots()];
    json::scan_known(text, plain, &m.paths, vals).map_err(|e| scan_error(m, e))?;
    let c = Ctx { m };
    let received_at = c
        .time(v1::RECEIVED_AT, m.time.received_at, vals)?
        .ok_or_else(|| c.missing(v1::RECEIVED_AT))?;
    let event_id = match c.string_fast(v1::EVENT_ID, vals)? {
        Some(id) => id,
        None => Cow::Owned(derived_event_id(text)),
    };
    Ok(AccessEvent {
        event_id,
        received_at,
        key_id: c.string_fast(v1::KEY_ID, vals)?,
        nonce: c.string_fast(v1::NONCE, vals)?,
        client_ts: c.time_fast(v1::CLIENT_TS, m.time.client_ts, vals)?,
        client_ip: c.required(v1::CLIENT_IP, vals)?,
        method: c.required(v1::METHOD, vals)?,
        path: c.required(v1::PATH, vals)?,
        status: c.status_fast(vals)?,
        user_agent: c.string_fast(v1::USER_AGENT, vals)?,
        client_id: c.string_fast(v1::CLIENT_ID, vals)?,
        signature: c.string_fast(v1::SIGNATURE, vals)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_times_by_magnitude_exactly() {
        let a = |s: &str, n| parse_time(s, n, TimeFormat::Auto);
        assert_eq!(a("1795857302", true), Ok(1_795_857_302_000));
        assert_eq!(a("1795857302.417", false), Ok(1_795_857_302_417));
        assert_eq!(a("1795857302.417", true), Ok(1_795_857_302_417));
        assert_eq!(a("1795857302417", true), Ok(1_795_857_302_417));
        assert_eq!(a("1795857302417123", false), Ok(1_795_857_302_417));
        assert_eq!(a("1795857302417123456", true), Ok(1_795_857_302_417));
        assert_eq!(a("1795857302.4179", false), Ok(1_795_857_302_417));
        assert_eq!(a("2026-11-28T09:15:02.417Z", false), Ok(1_795_857_302_417));
        assert!(a("28/Nov/2026:09:15:02 +0000", false).is_err());
        assert!(a("abc", false).unwrap_err().contains("RFC 3339"));
        assert!(a("1e400", true).is_err());
        let f = |s: &str, how| parse_time(s, false, how);
        assert_eq!(f("1795857302", TimeFormat::EpochS), Ok(1_795_857_302_000));
        assert_eq!(f("17958573024", TimeFormat::EpochS), Ok(17_958_573_024_000));
        assert_eq!(
            f("1795857302417", TimeFormat::EpochMs),
            Ok(1_795_857_302_417)
        );
        assert_eq!(
            f("1795857302417999", TimeFormat::EpochUs),
            Ok(1_795_857_302_417)
        );
        assert_eq!(
            f("1795857302417999999", TimeFormat::EpochNs),
            Ok(1_795_857_302_417)
        );
        assert_eq!(
            f("28/Nov/2026:09:15:02 +0000", TimeFormat::Clf),
            Ok(1_795_857_302_000)
        );
        assert!(f("1795857302", TimeFormat::Rfc3339).is_err());
        assert!(parse_time("1795857302", true, TimeFormat::Clf).is_err());
    }

    /// The plain-integer shortcut of `auto` gives what the exact decimal
    /// path gives, at every magnitude boundary and around it.
    #[test]
    fn auto_plain_integers_agree_with_the_decimal_path() {
        let general = |v: u64| -> Result<Millis, String> {
            let d = number::parse_json(&v.to_string()).unwrap();
            epoch(&d, auto_shift(v as u128))
        };
        let mut values = vec![0u64, 1, 999_999_999_999_999_999];
        for b in [
            100_000_000_000u64,
            100_000_000_000_000,
            100_000_000_000_000_000,
        ] {
            values.extend([b - 1, b, b + 1, b + 999, b + 1000]);
        }
        values.extend([1_795_857_302, 1_795_857_302_417, 1_795_857_302_417_999]);
        for v in values {
            for numeric in [true, false] {
                assert_eq!(
                    parse_time(&v.to_string(), numeric, TimeFormat::Auto),
                    general(v),
                    "{v} numeric {numeric}"
                );
            }
            assert_eq!(
                parse_time(&format!(" {v} "), false, TimeFormat::Auto),
                general(v)
            );
        }
    }

    /// The inline common cases (`string_fast`, `time_fast`, `status_fast`)
    /// give what the general conversions give, errors included, for every
    /// kind of value at a field with one path and at one with two.
    #[test]
    fn fast_conversions_agree_with_the_general_ones() {
        use super::super::input::{Format, InputConfig};
        let values = [
            None,
            Some(r#""""#),
            Some(r#""-""#),
            Some(r#""--""#),
            Some(r#""n""#),
            Some(r#""ab""#),
            Some(r#""a\u0041b""#),
            Some(r#""\u002d""#),
            Some(r#""1795857302417""#),
            Some(r#"" 1795857302 ""#),
            Some(r#""1795857302.417""#),
            Some(r#""2026-11-28T09:15:02.417Z""#),
            Some(r#""28/Nov/2026:09:15:02 +0000""#),
            Some(r#""200""#),
            Some("1795857302417"),
            Some("1795857302.417"),
            Some("1e3"),
            Some("-5"),
            Some("0"),
            Some("200"),
            Some("999"),
            Some("1000"),
            Some("99999999999999999999999"),
            Some("null"),
            Some("true"),
            Some("[]"),
            Some(r#"["x"]"#),
            Some("{}"),
        ];
        for absent in [None, Some(vec!["".to_string(), "-".into(), "--".into()])] {
            let c = InputConfig {
                format: Format::Kong,
                absent_values: absent.clone(),
                ..InputConfig::default()
            };
            let m = c.mapping().unwrap().unwrap();
            let ctx = Ctx { m: &m };
            for v in values {
                // every header-borne field (one path), and the client id
                // (two: consumer.username, then consumer.id)
                let headers = v.map_or(String::new(), |v| {
                    format!(r#""x-nonce":{v},"x-timestamp":{v}"#)
                });
                let consumer = v.map_or(String::new(), |v| format!(r#""username":{v}"#));
                let status = v.map_or(String::new(), |v| format!(r#""status":{v}"#));
                let line = format!(
                    r#"{{"request":{{"headers":{{{headers}}}}},"consumer":{{{consumer}}},"response":{{{status}}}}}"#
                );
                let mut vals = [None; MAX_SLOTS];
                let vals = &mut vals[..m.paths.slots()];
                json::scan_known(&line, false, &m.paths, vals).unwrap();
                for field in [v1::NONCE, v1::CLIENT_ID, v1::EVENT_ID] {
                    assert_eq!(
                        ctx.string_fast(field, vals),
                        ctx.string(field, vals),
                        "{line} field {field}"
                    );
                }
                assert_eq!(
                    ctx.required(v1::NONCE, vals),
                    ctx.string(v1::NONCE, vals)
                        .and_then(|s| s.ok_or_else(|| ctx.missing(v1::NONCE))),
                    "{line}"
                );
                for how in [
                    TimeFormat::Auto,
                    TimeFormat::EpochMs,
                    TimeFormat::EpochS,
                    TimeFormat::Rfc3339,
                    TimeFormat::Clf,
                ] {
                    assert_eq!(
                        ctx.time_fast(v1::CLIENT_TS, how, vals),
                        ctx.time(v1::CLIENT_TS, how, vals),
                        "{line} {how:?}"
                    );
                }
                assert_eq!(ctx.status_fast(vals), ctx.status(vals), "{line}");
            }
        }
    }

    #[test]
    fn derived_ids_are_stable_and_ignore_surrounding_space() {
        let a = derived_event_id("{\"a\":1}");
        assert_eq!(a, derived_event_id("  {\"a\":1}\r\n"));
        assert_ne!(a, derived_event_id("{\"a\":2}"));
        assert!(a.starts_with(DERIVED_ID_PREFIX) && a.len() == DERIVED_ID_PREFIX.len() + 32);
    }
}
