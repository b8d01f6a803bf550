//! Bytes -> wire types. Every failure is a typed [`DecodeError`] that the
//! caller sends to the dead-letter place together with the record's position.

mod fast;
mod input;
mod json;
mod mapped;
mod number;
mod v1;
mod value;

use std::sync::Arc;

pub use input::{Format, InputConfig, TimeConfig, TimeFormat};
pub use mapped::{derived_event_id, DERIVED_ID_PREFIX};

use crate::schema::{AccessEvent, LifecycleEvent};
use input::Mapping;

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {len} bytes, over the limit of {limit} (decode.max_event_bytes)")]
    TooLarge { len: usize, limit: usize },
    #[error("record is empty")]
    Empty,
    #[error("record is not valid UTF-8 (first bad byte at offset {0})")]
    Utf8(usize),
    #[error("invalid JSON: {0}")]
    Syntax(String),
    #[error("record does not match the schema: {0}")]
    Schema(String),
}

impl DecodeError {
    /// A short machine-readable category, for headers and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::Empty => "empty",
            DecodeError::Utf8(_) => "utf8",
            DecodeError::Syntax(_) => "syntax",
            DecodeError::Schema(_) => "schema",
        }
    }
}

/// `[decode]`: the limits of decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// Records longer than this are dead-lettered unread. Default 64KiB.
    #[serde(with = "crate::units::bytes")]
    pub max_event_bytes: usize,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            max_event_bytes: 64 * 1024,
        }
    }
}

impl DecodeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_event_bytes < 64 {
            return Err("decode.max_event_bytes must be at least 64 bytes".into());
        }
        if self.max_event_bytes > 64 << 20 {
            return Err("decode.max_event_bytes must be at most 64MiB".into());
        }
        Ok(())
    }
}

/// The decoder: its limits and the input format, resolved once.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub max_event_bytes: usize,
    /// `None`: access event v1.
    mapping: Option<Arc<Mapping>>,
}

impl Default for Decoder {
    /// Access event v1 with the default limits.
    fn default() -> Self {
        Decoder::with_limit(DecodeConfig::default().max_event_bytes)
    }
}

impl Decoder {
    /// The decoder of `[decode]` and `[input]` (both validated).
    pub fn new(decode: &DecodeConfig, input: &InputConfig) -> Result<Decoder, String> {
        Ok(Decoder {
            max_event_bytes: decode.max_event_bytes,
            mapping: input.mapping()?.map(Arc::new),
        })
    }

    /// Access event v1 with records up to `max_event_bytes`.
    pub fn with_limit(max_event_bytes: usize) -> Decoder {
        Decoder {
            max_event_bytes,
            mapping: None,
        }
    }

    /// The input format this decoder reads.
    pub fn format(&self) -> Format {
        self.mapping.as_ref().map_or(Format::V1, |m| m.format)
    }

    fn text<'a>(&self, bytes: &'a [u8]) -> Result<&'a str, DecodeError> {
        self.text_plain(bytes).map(|(t, _)| t)
    }

    /// The record as text, and whether it is [`plain`] (then it was not
    /// validated again: ASCII is UTF-8).
    fn text_plain<'a>(&self, bytes: &'a [u8]) -> Result<(&'a str, bool), DecodeError> {
        if bytes.len() > self.max_event_bytes {
            return Err(self.too_large(bytes.len()));
        }
        if plain(bytes) {
            // SAFETY: plain, just checked
            return unsafe { self.text_known_plain(bytes) };
        }
        let text = simdutf8::basic::from_utf8(bytes).map_err(|_| {
            // the fast validator says only "no"; ask std where
            DecodeError::Utf8(
                std::str::from_utf8(bytes)
                    .err()
                    .map_or(0, |e| e.valid_up_to()),
            )
        })?;
        if text.trim_ascii().is_empty() {
            return Err(DecodeError::Empty);
        }
        Ok((text, false))
    }

    /// [`Decoder::text_plain`] of bytes known to be [`plain`].
    ///
    /// # Safety
    /// `bytes` must be [`plain`].
    #[inline]
    unsafe fn text_known_plain<'a>(&self, bytes: &'a [u8]) -> Result<(&'a str, bool), DecodeError> {
        if bytes.len() > self.max_event_bytes {
            return Err(self.too_large(bytes.len()));
        }
        // SAFETY: every byte is ASCII (the bytes are plain: the caller's
        // promise), and ASCII is valid UTF-8
        let text = unsafe { std::str::from_utf8_unchecked(bytes) };
        if text.trim_ascii().is_empty() {
            return Err(DecodeError::Empty);
        }
        Ok((text, true))
    }

    /// Decodes one access event, borrowing strings from `bytes`. In v1 the
    /// common flat shape takes a fast path; everything else, errors
    /// included, is serde_json's. Both find the fields; one set of typed
    /// conversions judges them. A gateway format goes through its mapping
    /// ([`mapped`]).
    pub fn access<'a>(&self, bytes: &'a [u8]) -> Result<AccessEvent<'a>, DecodeError> {
        let mut out = std::mem::MaybeUninit::uninit();
        // SAFETY: not said to be plain (the decoder looks)
        unsafe { self.access_into(bytes, false, &mut out) };
        // SAFETY: `access_into` writes `out` on every path
        unsafe { out.assume_init() }
    }

    /// [`Decoder::access`], the result written to `out`: where the caller
    /// keeps it, never copied there (the decoders write each chunk's
    /// events in place this way; through a return value, each event's
    /// 248 bytes were written on the stack, then read back and copied).
    /// `known_plain`: the source saw that `bytes` are [`plain`] (they are
    /// not looked at again for it).
    ///
    /// Writes `out` on every path ([`Decoder::access`] reads it back).
    ///
    /// # Safety
    /// `known_plain` only for bytes that are [`plain`]: they are then taken
    /// as text without a look.
    unsafe fn access_into<'a>(
        &self,
        bytes: &'a [u8],
        known_plain: bool,
        out: &mut std::mem::MaybeUninit<Result<AccessEvent<'a>, DecodeError>>,
    ) {
        debug_assert!(!known_plain || plain(bytes), "not plain");
        // The `\r` of a CRLF line (and the line end a Kafka producer may
        // leave in a message) is white space after the object: it is
        // decoded without it, so that the line is plain and takes the fast
        // paths (with it, a Windows-written log scanned at 0.65x). Over the
        // limit is judged on the whole line; serde_json, when it decides,
        // reads the whole line too (its errors name the same places).
        let body = self.without_line_end(bytes);
        let checked = match known_plain {
            // SAFETY: the caller says the bytes are plain (and so is the
            // body, which is all of them: a plain line has no `\r`)
            true => unsafe { self.text_known_plain(body) },
            false => self.text_plain(body),
        };
        let (text, plain) = match checked {
            Ok(t) => t,
            Err(e) => {
                out.write(Err(e));
                return;
            }
        };
        let Some(m) = &self.mapping else {
            let mut fields = v1::Fields::default();
            if fast::access_known(text, plain, &mut fields).is_some() {
                fields.build_into(out);
            } else {
                out.write(self.access_slow(bytes, body.len(), text));
            }
            return;
        };
        mapped::access_into(m, text, plain, out);
    }

    /// What [`Decoder::access`] does off the v1 fast path: serde_json.
    /// `body_len` is the length of `bytes` without its line end, `text`
    /// that body checked.
    fn access_slow<'a>(
        &self,
        bytes: &'a [u8],
        body_len: usize,
        text: &'a str,
    ) -> Result<AccessEvent<'a>, DecodeError> {
        if body_len < bytes.len() {
            // the line end back, checked again only when there was one
            v1::slow(self.text(bytes)?)?.build()
        } else {
            v1::slow(text)?.build()
        }
    }

    /// Decodes the payload of a record (an oversize one is refused unread).
    pub fn decode_record<'a>(
        &self,
        rec: &crate::source::Record<'a>,
    ) -> Result<AccessEvent<'a>, DecodeError> {
        let mut out = std::mem::MaybeUninit::uninit();
        self.decode_record_into(rec, &mut out);
        // SAFETY: `decode_record_into` writes `out` on every path
        unsafe { out.assume_init() }
    }

    /// [`Decoder::decode_record`], the result written to `out`, where the
    /// caller keeps it: the event is built there, never copied (through a
    /// return value each event's 248 bytes were written on the stack, then
    /// read back and copied). A record its source found plain
    /// ([`crate::source::Record`]'s `plain`) is not looked at again.
    /// Writes `out` on every path.
    pub fn decode_record_into<'a>(
        &self,
        rec: &crate::source::Record<'a>,
        out: &mut std::mem::MaybeUninit<Result<AccessEvent<'a>, DecodeError>>,
    ) {
        match rec.payload {
            // SAFETY: a record is plain only when its source saw that it is
            // (`Record::plain`'s promise, which only this crate can make)
            crate::source::Payload::Data(b) => unsafe { self.access_into(b, rec.plain, out) },
            crate::source::Payload::Oversize { len, .. } => {
                out.write(Err(self.too_large(len)));
            }
        }
    }

    /// A record without one line end: the `\r` a file's CRLF line keeps,
    /// or a message's `\n` or `\r\n` (unless it is over the limit: that is
    /// judged on the whole record).
    #[inline]
    fn without_line_end<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        if bytes.len() > self.max_event_bytes {
            return bytes;
        }
        match bytes {
            [line @ .., b'\r', b'\n'] | [line @ .., b'\n'] | [line @ .., b'\r'] => line,
            _ => bytes,
        }
    }

    /// The error of a record of `len` bytes, over the limit.
    pub fn too_large(&self, len: usize) -> DecodeError {
        DecodeError::TooLarge {
            len,
            limit: self.max_event_bytes,
        }
    }

    /// Decodes one key lifecycle event v1.
    pub fn lifecycle(&self, bytes: &[u8]) -> Result<LifecycleEvent, DecodeError> {
        lifecycle(self.text(bytes)?)
    }
}

/// Whether every byte is ASCII and none is a control character or a
/// backslash: what nearly every access log line is. One pass that the
/// compiler vectorizes (no early exit), in place of a UTF-8 validation and
/// the path scanner's own look for escapes: such a record is valid UTF-8,
/// and its strings hold no escape ([`json::scan_known`]).
#[inline]
pub fn plain(b: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above
        return unsafe { plain_avx2(b) };
    }
    plain_any(b)
}

/// [`plain`], compiled for 32-byte vectors (the fold vectorizes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn plain_avx2(b: &[u8]) -> bool {
    plain_any(b)
}

#[inline(always)]
fn plain_any(b: &[u8]) -> bool {
    // as i8, the bytes 0x80..=0xff are negative: one compare finds them
    // and the control characters (0x00..=0x1f) alike
    !b.iter()
        .fold(false, |odd, &c| odd | ((c as i8) < 0x20) | (c == b'\\'))
}

/// A lifecycle event with its timestamps as raw text, converted exactly as
/// an access event's are.
#[derive(serde::Deserialize)]
#[serde(rename = "LifecycleEvent")]
struct RawLifecycle<'a> {
    key_id: String,
    state: crate::schema::KeyState,
    #[serde(borrow)]
    at: &'a serde_json::value::RawValue,
    #[serde(default)]
    successor: Option<String>,
    #[serde(borrow, default)]
    grace_until: Option<&'a serde_json::value::RawValue>,
}

fn lifecycle(text: &str) -> Result<LifecycleEvent, DecodeError> {
    let r: RawLifecycle<'_> = serde_json::from_str(text).map_err(v1::json_error)?;
    if r.key_id.is_empty() {
        return Err(DecodeError::Schema("field `key_id` is empty".into()));
    }
    fn raw(v: &serde_json::value::RawValue) -> Result<value::Raw<'_>, DecodeError> {
        value::Raw::from_json_text(v.get())
    }
    Ok(LifecycleEvent {
        key_id: r.key_id,
        state: r.state,
        at: value::timestamp("at", Some(raw(r.at)?))?,
        successor: r.successor,
        grace_until: match r.grace_until {
            Some(g) => value::opt_timestamp("grace_until", Some(raw(g)?))?,
            None => None,
        },
    })
}

/// The fast path alone: `Some` only for the flat shape it understands.
/// Public for the differential fuzz target (fuzz/), which checks that
/// serde_json decodes the same event from every line the fast path accepts.
#[doc(hidden)]
pub fn fast_path(text: &str) -> Option<Result<AccessEvent<'_>, DecodeError>> {
    fast::access(text).map(|mut f| f.build())
}

/// The slow path alone (serde_json), the reference the fast path must agree
/// with (the differential fuzz target and property tests).
#[doc(hidden)]
pub fn slow_path(text: &str) -> Result<AccessEvent<'_>, DecodeError> {
    v1::slow(text)?.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"event_id":"e1","received_at":"2026-11-28T00:00:00Z","key_id":"k1","nonce":"n1","client_ts":1795824000000,"client_ip":"10.0.0.1","method":"GET","path":"/v1/x","status":200,"extra":{"a":[1,2,3]}}"#;

    #[test]
    fn decodes_and_borrows() {
        let ev = Decoder::default().access(OK.as_bytes()).unwrap();
        assert_eq!(Some(ev.received_at), ev.client_ts);
        assert!(matches!(ev.event_id, std::borrow::Cow::Borrowed(_)));
        assert_eq!(ev.nonce.as_deref(), Some("n1"));
    }

    #[test]
    fn null_and_absent_nonce_mean_none() {
        let d = Decoder::default();
        let null = OK.replace(r#""nonce":"n1""#, r#""nonce":null"#);
        assert_eq!(d.access(null.as_bytes()).unwrap().nonce, None);
        let absent = OK.replace(r#""nonce":"n1","#, "");
        assert_eq!(d.access(absent.as_bytes()).unwrap().nonce, None);
    }

    #[test]
    fn unsigned_requests_decode_without_key_and_client_time() {
        let d = Decoder::default();
        for (from, to) in [
            ("\"key_id\":\"k1\",", ""),
            ("\"key_id\":\"k1\"", "\"key_id\":null"),
        ] {
            let line = OK.replace(from, to);
            assert_eq!(d.access(line.as_bytes()).unwrap().key_id, None, "{line}");
        }
        let line = OK.replace("\"client_ts\":1795824000000,", "");
        assert_eq!(d.access(line.as_bytes()).unwrap().client_ts, None);
        let line = OK.replace("1795824000000", "null");
        assert_eq!(d.access(line.as_bytes()).unwrap().client_ts, None);
    }

    #[test]
    fn typed_errors() {
        let d = Decoder::with_limit(1024);
        let kind = |s: &[u8]| d.access(s).unwrap_err().kind();
        assert_eq!(kind(b"not json"), "syntax");
        assert_eq!(kind(&OK.as_bytes()[..50]), "syntax");
        assert_eq!(kind(b"   "), "empty");
        assert_eq!(kind(b"{\"event_id\":\"\xff\"}"), "utf8");
        assert_eq!(kind(&[b' '; 2000]), "too_large");
        for (from, to) in [
            ("\"status\":200", "\"status\":70000"),
            ("\"status\":200", "\"status\":1000"),
            ("\"status\":200", "\"status\":\"200\""),
            ("\"path\":\"/v1/x\",", ""),
            ("\"client_ts\":1795824000000", "\"client_ts\":true"),
            ("\"key_id\":\"k1\"", "\"key_id\":\"\""),
            ("\"key_id\":\"k1\"", "\"key_id\":\"k1\",\"key_id\":\"k2\""),
            ("1795824000000", "1795824000000.5"),
            ("1795824000000", "99999999999999999999"),
        ] {
            assert_eq!(kind(OK.replace(from, to).as_bytes()), "schema", "{to}");
        }
        assert_eq!(kind(b"[1,2]"), "schema");
        let e = d
            .access(
                OK.replace("2026-11-28T00:00:00Z", "2026-11-31T00:00:00Z")
                    .as_bytes(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("day"), "{e}");
    }

    #[test]
    fn deep_nesting_never_overflows_the_stack() {
        let d = Decoder::with_limit(1 << 20);
        let deep = |field: &str| {
            let mut s = OK.replacen('{', &format!("{{\"{field}\":"), 1);
            let nest = "[".repeat(100_000) + &"]".repeat(100_000) + ",";
            s.insert_str(field.len() + 4, &nest);
            s
        };
        // in a known field: refused (serde_json stops at 128 levels)
        let e = d.access(deep("event_id").as_bytes()).unwrap_err();
        assert!(matches!(e.kind(), "syntax" | "schema"), "{e}");
        // in an unknown field: skipped without recursion, the event decodes
        assert!(d.access(deep("x").as_bytes()).is_ok());
        // and the default limit refuses such a record before parsing at all
        assert_eq!(
            Decoder::default()
                .access(deep("x").as_bytes())
                .unwrap_err()
                .kind(),
            "too_large"
        );
    }
}

/// Bounded, stable-Rust equivalents of the fuzz targets in fuzz/ (run by
/// `cargo test` in CI): arbitrary and mutated input never panics, every
/// failure is typed, and whatever the fast path accepts serde_json agrees with.
#[cfg(test)]
mod robustness {
    use super::*;
    use proptest::prelude::*;

    const OK: &str = r#"{"event_id":"e1","received_at":"2026-11-28T00:00:00.123+02:00","key_id":"k1","nonce":"n1","client_ts":1795824000000,"client_ip":"10.0.0.1","method":"GET","path":"/v1/x","status":200,"user_agent":"ua","client_id":"c","signature":"s"}"#;
    const LC: &str = r#"{"key_id":"k1","state":"rotating","at":"2026-11-28T00:00:00Z","successor":"k2","grace_until":1795824600000}"#;

    /// A CRLF line decodes as its LF twin does, on the fast paths, in v1
    /// and in a gateway format; a broken one gets serde_json's error on the
    /// whole line (v1); one over the limit with its `\r` stays over it.
    #[test]
    fn the_carriage_return_of_a_crlf_line_is_white_space() {
        let kong = r#"{"request":{"id":"0b9a7e4c1f2d3a4b5c6d7e8f90a1b2c3","method":"POST","uri":"/api/v3/order","headers":{"user-agent":"okhttp/4.12.0","x-api-key":"key-live-7f3a","x-nonce":"n-1001","x-timestamp":"1795857302400"}},"response":{"status":200},"client_ip":"203.0.113.7","consumer":{"username":"acme-trader"},"started_at":1795857302417}"#;
        let v1 = Decoder::default();
        let k = Decoder::new(
            &DecodeConfig::default(),
            &InputConfig {
                format: Format::Kong,
                ..Default::default()
            },
        )
        .unwrap();
        for (d, line) in [(&v1, OK), (&k, kong)] {
            let crlf = format!("{line}\r");
            let want = d.access(line.as_bytes()).unwrap();
            assert_eq!(d.access(crlf.as_bytes()).unwrap(), want);
        }
        // decoded as the plain line it is without its \r: the fast path
        let crlf = format!("{OK}\r");
        assert_eq!(v1.without_line_end(crlf.as_bytes()), OK.as_bytes());
        assert_eq!(
            v1.text_plain(v1.without_line_end(crlf.as_bytes())).unwrap(),
            (OK, true)
        );
        assert!(fast::access_known(OK, true, &mut v1::Fields::default()).is_some());
        assert_eq!(v1.without_line_end(b"a\r\r"), b"a\r");
        assert_eq!(v1.without_line_end(b"a\n"), b"a");
        assert_eq!(v1.without_line_end(b"a\r\n"), b"a");
        assert_eq!(v1.without_line_end(b"a\n\n"), b"a\n");
        assert_eq!(v1.without_line_end(b"a\n\r"), b"a\n");
        // a Kafka message with its line end: the same event
        for end in ["\n", "\r\n"] {
            let msg = format!("{OK}{end}");
            assert_eq!(v1.without_line_end(msg.as_bytes()), OK.as_bytes());
            assert_eq!(
                v1.access(msg.as_bytes()).unwrap(),
                v1.access(OK.as_bytes()).unwrap()
            );
        }
        for broken in [
            &OK[..OK.len() - 1],
            "{\"event_id\":1}",
            "\r",
            "{\"a\":\"\r\"}",
        ] {
            let crlf = format!("{broken}\r");
            let got = v1.access(crlf.as_bytes()).map_err(|e| e.to_string());
            let whole = v1
                .text(crlf.as_bytes())
                .and_then(v1::slow)
                .and_then(|mut f| f.build())
                .map_err(|e| e.to_string());
            assert_eq!(got, whole, "{crlf:?}");
        }
        let small = Decoder::with_limit(OK.len());
        assert!(small.access(format!("{OK}\r").as_bytes()).is_err());
        assert!(small.access(OK.as_bytes()).is_ok());
    }

    /// [`Decoder::access`]'s result, checked against [`Decoder::access_into`]
    /// told that the bytes are plain, when they are (then the decoder does
    /// not look at them again).
    fn access_checked(d: &Decoder, bytes: &[u8]) -> Result<String, String> {
        let told = d
            .access(bytes)
            .map(|ev| format!("{ev:?}"))
            .map_err(|e| e.to_string());
        if plain(bytes) {
            let mut known = std::mem::MaybeUninit::uninit();
            // SAFETY: plain, just checked
            unsafe { d.access_into(bytes, true, &mut known) };
            // SAFETY: `access_into` writes `out` on every path
            let known = unsafe { known.assume_init() }
                .map(|ev| format!("{ev:?}"))
                .map_err(|e| e.to_string());
            assert_eq!(known, told, "{}", String::from_utf8_lossy(bytes));
        }
        told
    }

    fn check_access(d: &Decoder, bytes: &[u8]) {
        // its checks only: the event itself is looked at below
        let _ = access_checked(d, bytes);
        match d.access(bytes) {
            Ok(ev) => {
                assert!(!ev.event_id.is_empty());
                assert!(ev.key_id.as_deref().is_none_or(|k| !k.is_empty()));
                assert!(ev.status <= AccessEvent::MAX_STATUS);
            }
            Err(e) => assert!(!e.to_string().is_empty() && !e.kind().is_empty()),
        }
        // every gateway format: typed failures, never a panic
        for format in Format::ALL {
            let input = InputConfig {
                format,
                ..InputConfig::default()
            };
            let g = Decoder::new(&DecodeConfig::default(), &input).unwrap();
            if let Err(e) = access_checked(&g, bytes) {
                assert!(!e.is_empty());
            }
        }
        if let Ok(text) = std::str::from_utf8(bytes) {
            if let Some(fast) = fast_path(text) {
                assert_eq!(
                    fast.map_err(|e| e.kind()),
                    slow_path(text).map_err(|e| e.kind()),
                    "{text}"
                );
            }
        }
    }

    fn check_lifecycle(d: &Decoder, bytes: &[u8]) {
        match d.lifecycle(bytes) {
            Ok(ev) => assert!(!ev.key_id.is_empty()),
            Err(e) => assert!(!e.kind().is_empty()),
        }
    }

    /// A valid record with bytes overwritten, inserted or cut off.
    fn mutated(base: &'static str) -> impl Strategy<Value = Vec<u8>> {
        (
            0..base.len(),
            prop::collection::vec(any::<u8>(), 0..8),
            0..3u8,
        )
            .prop_map(move |(at, bytes, how)| {
                let mut v = base.as_bytes().to_vec();
                match how {
                    0 => {
                        for (i, b) in bytes.into_iter().enumerate() {
                            if let Some(x) = v.get_mut(at + i) {
                                *x = b;
                            }
                        }
                    }
                    1 => {
                        v.splice(at..at, bytes);
                    }
                    _ => v.truncate(at),
                }
                v
            })
    }

    /// Tokens that make JSON records odd in ways real input is.
    fn tokens() -> impl Strategy<Value = Vec<u8>> {
        let tok = prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"",
            "\\",
            "\\u0000",
            "\\ud800",
            "null",
            "true",
            "-0",
            "1e999",
            "18446744073709551616",
            "-9223372036854775809",
            "0.5",
            "\"event_id\"",
            "\"key_id\"",
            "\"received_at\"",
            "\"client_ts\"",
            "\"status\"",
            "\"nonce\"",
            "\"2026-02-30T00:00:00Z\"",
            "\"2026-11-28T00:00:00+25:00\"",
            "\u{feff}",
            "\u{1F600}",
            " ",
            "\n",
            "\"x\"",
        ]);
        prop::collection::vec(tok, 0..40).prop_map(|v| v.concat().into_bytes())
    }

    #[test]
    fn the_seed_records_decode_and_take_the_fast_path() {
        // otherwise the mutations would only exercise error paths
        assert!(fast_path(OK).is_some_and(|r| r.is_ok()));
        Decoder::default().access(OK.as_bytes()).unwrap();
        Decoder::default().lifecycle(LC.as_bytes()).unwrap();
    }

    /// What [`plain`] says, byte by byte.
    fn plain_reference(b: &[u8]) -> bool {
        b.iter().all(|&c| (0x20..0x80).contains(&c) && c != b'\\')
    }

    fn check_plain(b: &[u8]) {
        let want = plain_reference(b);
        assert_eq!(plain(b), want, "{b:?}");
        assert_eq!(plain_any(b), want, "{b:?}");
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2
            assert_eq!(unsafe { plain_avx2(b) }, want, "{b:?}");
        }
    }

    #[test]
    fn plain_finds_every_odd_byte_at_every_place() {
        for len in 0..=130 {
            let base = vec![b'a'; len];
            check_plain(&base);
            for at in 0..len {
                for odd in [
                    0u8, 0x09, 0x0a, 0x1f, b'\\', 0x7f, 0x80, 0xc3, 0xff, b' ', b'~',
                ] {
                    let mut b = base.clone();
                    b[at] = odd;
                    check_plain(&b);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn plain_agrees_with_its_definition(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            check_plain(&bytes);
        }

        /// A gateway record decodes to the same event (or the same error)
        /// whether or not the decoder finds it plain: an escape or a
        /// control character anywhere takes the other path.
        #[test]
        fn a_plain_record_decodes_as_any_other(
            at in 0usize..400,
            insert in "[\\\\\t\n\"é a-z0-9{}:,]{0,2}",
        ) {
            let line = r#"{"request":{"id":"0b9a7e4c1f2d3a4b5c6d7e8f90a1b2c3","method":"POST","uri":"/api/v3/order","headers":{"user-agent":"okhttp/4.12.0","x-api-key":"key-live-7f3a","x-nonce":"n-1001","x-timestamp":"1795857302400"}},"response":{"status":200},"client_ip":"203.0.113.7","consumer":{"username":"acme-trader"},"started_at":1795857302417}"#;
            let mut s = line.to_string();
            let mut at = at.min(s.len());
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            s.insert_str(at, &insert);
            let d = Decoder::new(
                &DecodeConfig::default(),
                &InputConfig { format: Format::Kong, ..Default::default() },
            )
            .unwrap();
            let m = d.mapping.as_ref().unwrap();
            let got = d.access(s.as_bytes()).map_err(|e| e.to_string());
            let unplain = mapped::access(m, &s, false).map_err(|e| e.to_string());
            prop_assert_eq!(&got, &unplain, "{}", s);
            if plain(s.as_bytes()) {
                let told = mapped::access(m, &s, true).map_err(|e| e.to_string());
                prop_assert_eq!(&told, &unplain, "{}", s);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let d = Decoder::default();
            check_access(&d, &bytes);
            check_lifecycle(&d, &bytes);
        }

        #[test]
        fn mutated_access_events_never_panic(bytes in mutated(OK)) {
            check_access(&Decoder::default(), &bytes);
        }

        #[test]
        fn mutated_lifecycle_events_never_panic(bytes in mutated(LC)) {
            check_lifecycle(&Decoder::default(), &bytes);
        }

        #[test]
        fn json_token_soup_never_panics(bytes in tokens()) {
            let d = Decoder::default();
            check_access(&d, &bytes);
            check_lifecycle(&d, &bytes);
        }

        #[test]
        fn any_limit_is_enforced(limit in 64usize..400, bytes in mutated(OK)) {
            let d = Decoder::with_limit(limit);
            match d.access(&bytes) {
                Err(DecodeError::TooLarge { len, .. }) => prop_assert!(len > limit),
                _ => prop_assert!(bytes.len() <= limit),
            }
        }
    }
}
