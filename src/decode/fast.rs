//! A fast path for the common shape of an access event: one JSON object
//! whose fields replayguard reads are scalars, and whose other fields
//! (nested or not) are skipped; strings without escapes are borrowed,
//! escaped ones decoded. It either returns exactly what serde_json would,
//! or gives up (`None`) and lets serde_json decide, so every error, every
//! unusual input and every corner of JSON stays serde_json's.
//!
//! Measured on 420-byte gateway lines: 250 ns against serde_json's 410 ns
//! with borrowed strings (`cargo bench --bench hot_path -- decode`).

use std::borrow::Cow;

use super::v1::{self, Fields};
use super::value::Raw;

struct Cursor<'a> {
    b: &'a [u8],
    s: &'a str,
    i: usize,
    /// The line holds a backslash: a string may hold escapes.
    escapes: bool,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            // nearly always the first byte, and above the space: one compare
            if c > b' ' {
                break;
            }
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// A string, after its opening quote: its contents between the quotes,
    /// and whether they hold an escape (their syntax checked, as serde_json
    /// checks a string it skips; decoded by the caller).
    #[inline(always)]
    fn string(&mut self) -> Option<(&'a str, bool)> {
        if self.escapes {
            return self.string_escaped();
        }
        self.str_body().map(|s| (s, false))
    }

    /// [`Self::string`] in a line with a backslash.
    #[inline(never)]
    fn string_escaped(&mut self) -> Option<(&'a str, bool)> {
        let start = self.i;
        // most strings of such a line have no escape: up to the next quote
        // as in a plain line, then one look for a backslash before it
        let quote = super::json::find_quote(self.b, start)?;
        let span = &self.b[start..quote];
        if !span.iter().fold(false, |any, &c| any | (c == b'\\')) {
            self.i = quote + 1;
            return Some((self.s.get(start..quote)?, false));
        }
        let mut i = start;
        let mut escaped = false;
        loop {
            // the line holds no control character ([`access_known`])
            i = super::json::find_special(self.b, i)?;
            if self.b[i] == b'"' {
                self.i = i + 1;
                return Some((self.s.get(start..i)?, escaped));
            }
            escaped = true;
            i += 1;
            match *self.b.get(i)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 1,
                b'u' if self.b.get(i + 1..i + 5)?.iter().all(u8::is_ascii_hexdigit) => i += 5,
                _ => return None,
            }
        }
    }

    /// A string without escapes, after its opening quote, in a line that
    /// holds no backslash and no control character ([`access_known`]): it
    /// ends at the next quote.
    #[inline(always)]
    fn str_body(&mut self) -> Option<&'a str> {
        let start = self.i;
        // the path scanner's search: 32 bytes in two SSE2 compares, where
        // memchr's call and setup cost more than most strings here
        let end = super::json::find_quote(self.b, start)?;
        self.i = end + 1;
        debug_assert!(self.s.is_char_boundary(start) && self.s.is_char_boundary(end));
        // SAFETY: `start` follows a quote and `end` is one, `start <= end <=
        // len`; the input is UTF-8 and a quote is an ASCII byte, which is
        // never inside a multi-byte character: both are char boundaries
        Some(unsafe { self.s.get_unchecked(start..end) })
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Some(())
        } else {
            None
        }
    }

    /// A JSON number (checked for its grammar); returns its text.
    #[inline(always)]
    fn number(&mut self) -> Option<&'a str> {
        let start = self.i;
        let b = self.b;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let int_start = i;
        while b.get(i).is_some_and(|c| c.is_ascii_digit()) {
            i += 1;
        }
        let int_len = i - int_start;
        if int_len == 0 || (int_len > 1 && b[int_start] == b'0') {
            return None;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            let f = i;
            while b.get(i).is_some_and(|c| c.is_ascii_digit()) {
                i += 1;
            }
            if i == f {
                return None;
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let e = i;
            while b.get(i).is_some_and(|c| c.is_ascii_digit()) {
                i += 1;
            }
            if i == e {
                return None;
            }
        }
        self.i = i;
        Some(&self.s[start..i])
    }

    /// A value of a field replayguard does not read, of any kind, skipped:
    /// an object or array is checked for JSON's grammar as serde_json checks
    /// what it ignores (no duplicate keys are looked for; numbers by their
    /// grammar only). `None` when it is malformed, or nested more than
    /// [`MAX_SKIP_DEPTH`] deep (serde_json decides: its limit is 128).
    /// Gateways and enrichers add nested fields (`upstream`, `headers`,
    /// `geo`): without this, such a line left the fast path, and `scan` ran
    /// at 0.6 of the serde_json floor on it.
    fn skip(&mut self, depth: u32) -> Option<()> {
        self.ws();
        let close = match *self.b.get(self.i)? {
            b'{' => b'}',
            b'[' => b']',
            b'"' => {
                // checked as serde_json checks a string it skips: escapes
                // by their syntax (a lone surrogate is no error here)
                self.i += 1;
                return self.string().map(|_| ());
            }
            _ => return self.value().map(|_| ()),
        };
        if depth >= MAX_SKIP_DEPTH {
            return None;
        }
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&close) {
            self.i += 1;
            return Some(());
        }
        loop {
            if close == b'}' {
                self.eat(b'"')?;
                self.string()?;
                self.eat(b':')?;
            }
            self.skip(depth + 1)?;
            self.ws();
            match *self.b.get(self.i)? {
                b',' => self.i += 1,
                c if c == close => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A scalar value; `None` for objects and arrays (serde_json skips or
    /// refuses them) and for anything malformed. Inlined into the field
    /// loop (called from [`Self::skip`] too, it was not: 2 % more
    /// instructions per event).
    #[inline(always)]
    fn value(&mut self) -> Option<Raw<'a>> {
        self.ws();
        match *self.b.get(self.i)? {
            b'"' => {
                self.i += 1;
                match self.string()? {
                    (s, false) => Some(Raw::Str(Cow::Borrowed(s))),
                    // decoded as serde_json decodes it (a lone surrogate
                    // is its error to report)
                    (s, true) => super::json::unescape(s).ok().map(Raw::Str),
                }
            }
            b'n' => self.literal(b"null").map(|_| Raw::Null),
            b't' => self.literal(b"true").map(|_| Raw::Bool(true)),
            b'f' => self.literal(b"false").map(|_| Raw::Bool(false)),
            b'-' | b'0'..=b'9' => self.number().map(Raw::Num),
            _ => None,
        }
    }
}

/// Each v1 field name as a line writes it after the key's opening quote,
/// closing quote and colon included (`event_id":`), as the first bytes of
/// a little-endian `u128`, with the mask of those bytes: a key where the
/// field order of [`v1::NAMES`] expects it is recognised by one 16-byte
/// compare, instead of a look for its closing quote and a match of its name.
const EXPECTED: [(u128, u128, usize); 12] = {
    let mut out = [(0u128, 0u128, 0usize); 12];
    let mut f = 0;
    while f < 12 {
        let name = v1::NAMES[f].as_bytes();
        let len = name.len() + 2;
        assert!(
            len <= 16,
            "a field name and its quote and colon fit in 16 bytes"
        );
        let mut v = 0u128;
        let mut i = 0;
        while i < len {
            let c = if i < name.len() {
                name[i]
            } else if i == name.len() {
                b'"'
            } else {
                b':'
            };
            v |= (c as u128) << (8 * i);
            i += 1;
        }
        out[f] = (v, (1u128 << (8 * len)) - 1, len);
        f += 1;
    }
    out
};

impl Cursor<'_> {
    /// Whether the key starting here (after its opening quote) is field
    /// `f`, written plainly and followed by its colon; if so, moves past
    /// the colon. `false` says nothing: the key is read the general way.
    #[inline(always)]
    fn expected_key(&mut self, f: usize) -> bool {
        let (Some(&(v, mask, len)), Some(w)) = (EXPECTED.get(f), self.b.get(self.i..self.i + 16))
        else {
            return false;
        };
        let w = u128::from_le_bytes(w.try_into().expect("16 bytes"));
        if w & mask == v {
            self.i += len;
            true
        } else {
            false
        }
    }
}

/// How deep [`Cursor::skip`] follows objects and arrays in a field it skips.
const MAX_SKIP_DEPTH: u32 = 32;

/// Finds the v1 fields of `s` if it has the common shape; `None` means
/// "ask serde_json". Values are converted by the caller ([`Fields::build`]),
/// exactly as the slow path's.
pub fn access(s: &str) -> Option<Fields<'_>> {
    let mut f = Fields::default();
    access_known(s, false, &mut f).map(|()| f)
}

/// [`access`] of a line whose bytes were looked at already: `plain` says
/// it is [`super::plain`] (ASCII, no control character, no backslash), so
/// the look for escapes and control characters is not made again.
///
/// The fields are written into `f`, which must be empty (its default): the
/// caller's, so that they are never moved. Returned, they were copied twice
/// (288 bytes each time, read back right after they were written field by
/// field); with the event built in place too ([`super::Decoder::access_into`]),
/// `memmove` fell from 6.8 % to 4.3 % of a one-core scan's samples. After
/// `None`, `f` holds what was found before the fast path gave up.
#[inline]
pub fn access_known<'a>(s: &'a str, plain: bool, f: &mut Fields<'a>) -> Option<()> {
    debug_assert!(f.vals.iter().all(Option::is_none), "fields not empty");
    // one pass over the line (vectorized: no early exit): a control
    // character means an invalid string or unusual white space (serde_json
    // decides); a backslash, that strings may hold escapes
    let escapes = !plain && {
        let (control, backslash) = s.bytes().fold((false, false), |(k, b), c| {
            (k | (c < 0x20), b | (c == b'\\'))
        });
        if control {
            return None;
        }
        backslash
    };
    let mut c = Cursor {
        b: s.as_bytes(),
        s,
        i: 0,
        escapes,
    };
    c.eat(b'{')?;
    let mut seen = 0u16;
    c.ws();
    if c.b.get(c.i) == Some(&b'}') {
        c.i += 1;
    } else {
        // the field expected next: the one after the last found, in the
        // order of `v1::NAMES` (the order `generate` and most producers
        // write them in)
        let mut next = 0;
        loop {
            c.eat(b'"')?;
            let field = if c.expected_key(next) {
                Some(next)
            } else {
                let (key, escaped) = c.string()?;
                if escaped {
                    return None; // an escaped field name: serde_json decodes it
                }
                c.eat(b':')?;
                v1::field_index(key)
            };
            match field {
                Some(i) => {
                    let v = c.value()?;
                    let bit = 1u16 << i;
                    if seen & bit != 0 {
                        return None; // a duplicate field: serde_json reports it
                    }
                    seen |= bit;
                    f.vals[i] = Some(v);
                    next = i + 1;
                }
                // a field of its own: skipped, whatever its kind
                None => c.skip(1)?,
            }
            c.ws();
            match c.b.get(c.i) {
                Some(b',') => c.i += 1,
                Some(b'}') => {
                    c.i += 1;
                    break;
                }
                _ => return None,
            }
            c.ws();
        }
    }
    c.ws();
    if c.i != c.b.len() {
        return None;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    use crate::schema::AccessEvent;

    /// What a path makes of a line: the event, or the kind of error.
    type Outcome<'a> = Result<AccessEvent<'a>, &'static str>;

    fn fast(s: &str) -> Option<Outcome<'_>> {
        let got = access(s).map(|mut f| f.build().map_err(|e| e.kind()));
        // what the decoder calls, told whether the line is plain
        let mut f = Fields::default();
        let known = access_known(s, crate::decode::plain(s.as_bytes()), &mut f)
            .map(|()| f.build().map_err(|e| e.kind()));
        assert_eq!(got, known, "{s:?}");
        got
    }

    fn serde(s: &str) -> Outcome<'_> {
        v1::slow(s)
            .and_then(|mut f| f.build())
            .map_err(|e| e.kind())
    }

    const BASE: &str = r#"{"event_id":"e1","received_at":"2026-11-28T00:00:00.5Z","key_id":"k1","nonce":"n1","client_ts":1795824000000,"client_ip":"10.0.0.1","method":"GET","path":"/v1/x","status":200,"user_agent":"ua","client_id":null,"signature":"ab"}"#;

    #[test]
    fn the_common_shape_takes_the_fast_path() {
        assert_eq!(fast(BASE), Some(serde(BASE)));
        assert!(fast(BASE).unwrap().is_ok());
        let spaced = BASE
            .replace(",\"", " , \"")
            .replace("\":", "\" :  ")
            .replace('{', "{ ");
        assert_eq!(fast(&spaced), Some(serde(&spaced)));
        assert!(fast(&spaced).unwrap().is_ok());
        // tabs and newlines between tokens are left to serde_json, with the same result
        let tabbed = BASE.replace(",\"", ",\n\t\"");
        assert!(access(&tabbed).is_none());
        assert!(serde(&tabbed).is_ok());
        let extra = BASE.replace(
            "\"status\"",
            "\"x\":1.5e3,\"y\":true,\"z\":null,\"w\":\"s\",\"status\"",
        );
        assert_eq!(fast(&extra), Some(serde(&extra)));
        assert!(fast(&extra).unwrap().is_ok());
        // nested fields of its own (a gateway's upstream, headers, tags)
        for nested in [
            r#""upstream":{"host":"10.1.2.3","port":8080}"#,
            r#""tags":["a","b"]"#,
            r#""e":{},"f":[],"g":[[],{}]"#,
            r#""h":{"a":[1,-2.5e-3,{"b":null,"c":[true,false,"x"]}], "d" : { "e" : [ ] } }"#,
            r#""headers":{"key_id":"not this one","nonce":"nor this"}"#,
        ] {
            let line = BASE.replace("\"status\"", &format!("{nested},\"status\""));
            assert_eq!(fast(&line), Some(serde(&line)), "{line}");
            assert!(fast(&line).unwrap().is_ok(), "{line}");
        }
        let inner = BASE.replace(
            "\"status\"",
            r#""headers":{"key_id":"k9","nonce":"n9"},"status""#,
        );
        let ev = fast(&inner).unwrap().unwrap();
        assert_eq!(
            (ev.key_id.as_deref(), ev.nonce.as_deref()),
            (Some("k1"), Some("n1"))
        );
    }

    /// A key is first compared with the field the order of `v1::NAMES`
    /// expects there ([`EXPECTED`]): near misses, keys out of that order and
    /// keys close to the line's end are judged as any other key is.
    #[test]
    fn a_key_where_another_is_expected_is_judged_as_any_other() {
        fn agree(line: &str) -> Option<Outcome<'_>> {
            let got = fast(line);
            if let Some(got) = &got {
                assert_eq!(got, &serde(line), "{line}");
            }
            got
        }
        // the expected keys take the fast path
        assert!(agree(BASE).unwrap().is_ok());
        for (from, to, takes_fast_path) in [
            // an unknown field where key_id is expected, then key_id missing
            (r#""key_id":"#, r#""key_idx":"#, true),
            (r#""key_id":"#, r#""key_i":"#, true),
            (r#""key_id":"#, r#""Key_id":"#, true),
            (r#""key_id":"#, r#""key_id ":"#, true),
            // white space before the colon: read the general way
            (r#""key_id":"#, r#""key_id" :"#, true),
            (r#""key_id":"#, r#""key_id"  :  "#, true),
            // an escape in the name: serde_json's
            (r#""key_id":"#, r#""key\u005fid":"#, false),
            // the expected field twice in a row: serde_json's error
            (r#""nonce":"n1","#, r#""nonce":"n1","nonce":"n2","#, false),
            // a field before its place, then the one expected after it
            (
                r#""received_at":"#,
                r#""key_id":"k0","received_at":"#,
                false,
            ),
            // the first field missing: none is where it is expected
            (r#""event_id":"e1","#, "", true),
        ] {
            let line = BASE.replacen(from, to, 1);
            assert_ne!(line, BASE, "{from} in BASE");
            let got = agree(&line);
            assert_eq!(got.is_some(), takes_fast_path, "{line}");
        }
        let reversed = {
            let inner = &BASE[1..BASE.len() - 1];
            let mut fields: Vec<&str> = inner.split(",\"").collect();
            fields.reverse();
            let fields: Vec<String> = fields
                .iter()
                .map(|f| f.trim_start_matches('"').to_string())
                .collect();
            format!("{{\"{}}}", fields.join(",\""))
        };
        assert!(agree(&reversed).unwrap().is_ok(), "{reversed}");
        // keys near the end of the line: fewer than 16 bytes after the quote
        for line in [
            r#"{"event_id":"e1"}"#,
            r#"{"event_id":1}"#,
            r#"{"event_id":"#,
            r#"{"event_id""#,
            r#"{"event_id"#,
            r#"{"event_i"#,
            r#"{"event_id":"e1","received_at":"2026-11-28T00:00:00Z","key_id":"k"}"#,
            r#"{"event_id":"e1","received_at":"2026-11-28T00:00:00Z","key_id":""}"#,
            r#"{"event_id":"e1","received_at":"2026-11-28T00:00:00Z","key_id":null}"#,
        ] {
            agree(line);
            assert!(v1::slow(line).is_err() || fast(line).is_some(), "{line}");
        }
    }

    #[test]
    fn escaped_strings_are_decoded_on_the_fast_path() {
        for (from, to, want) in [
            ("\"e1\"", r#""e\u0031""#, "e1"),
            ("\"/v1/x\"", r#""\/v1\/x""#, "/v1/x"),
            (
                "\"ua\"",
                r#""say \"hi\" \\ caf\u00e9 \ud83d\ude00\t\n""#,
                "say \"hi\" \\ café 😀\t\n",
            ),
            ("\"ua\"", r#""\u0000""#, "\u{0}"),
        ] {
            let line = BASE.replacen(from, to, 1);
            let got = fast(&line).unwrap_or_else(|| panic!("fast path: {line}"));
            assert_eq!(got, serde(&line), "{line}");
            let ev = got.unwrap();
            let field = match from {
                "\"e1\"" => ev.event_id.to_string(),
                "\"/v1/x\"" => ev.path.to_string(),
                _ => ev.user_agent.clone().unwrap().to_string(),
            };
            assert_eq!(field, want, "{line}");
        }
        // escapes in a field of its own, nested or not, checked by their
        // syntax only, as serde_json checks what it skips
        for extra in [
            r#""x":"a\"b\\","y":{"k\"ey":["\u00e9","\ud800"]}"#,
            r#""x":"\udc00""#,
        ] {
            let line = BASE.replace("\"status\"", &format!("{extra},\"status\""));
            let got = fast(&line).unwrap_or_else(|| panic!("fast path: {line}"));
            assert_eq!(got, serde(&line), "{line}");
            assert!(got.is_ok(), "{line}");
        }
    }

    #[test]
    fn anything_unusual_is_left_to_serde_json() {
        for s in [
            BASE.replace("\"key_id\"", "\"key\\u005fid\""), // an escaped field name
            BASE.replace("\"e1\"", "\"e\\ud800\""),         // a lone surrogate
            BASE.replace("\"e1\"", "\"e\\udc00\\ud800\""),
            BASE.replace("\"e1\"", "\"e\\x\""), // no such escape
            BASE.replace("\"e1\"", "\"e\\u12g4\""),
            BASE.replace("\"e1\"", "\"e\\u12\""),
            BASE.replace("\"e1\"", "\"e\\\""), // the closing quote escaped
            BASE.replace("\"ab\"", "\"ab\",\"x\":\"\\x\""), // the same in a field of its own
            BASE.replace("\"ab\"", "\"ab\",\"x\":{\"a\":[\"\\u12g4\"]}"),
            BASE.replace("\"ab\"", "\"ab\",\"x\":{\"\\q\":1}"),
            BASE.replace("\"k1\"", "\"k1\",\"key_id\":\"k2\""), // a duplicate
            BASE.replace("\"status\":200", "\"status\":070"),   // a leading zero
            BASE.to_string() + "x",                             // trailing junk
            BASE.replace("\"ab\"", "{\"a\":1}"),                // a field replayguard reads, nested
            BASE.replace("\"ab\"", "[\"ab\"]"),
            BASE.replace("\"ab\"", "\"ab\",\"n\":{\"a\":1,}"), // malformed inside a skipped field
            BASE.replace("\"ab\"", "\"ab\",\"n\":[1,]"),
            BASE.replace("\"ab\"", "\"ab\",\"n\":{\"a\" 1}"),
            BASE.replace("\"ab\"", "\"ab\",\"n\":[01]"),
            BASE.replace("\"ab\"", "\"ab\",\"n\":{\"a\":1]"),
            BASE.replace("\"ab\"", "\"ab\",\"n\":[1"),
            BASE.replace("\"ab\"", "\"ab\",\"n\":{a:1}"),
            BASE.replace(
                "\"ab\"",
                &format!("\"ab\",\"n\":{}1{}", "[".repeat(40), "]".repeat(40)),
            ), // deep
            "[]".to_string(),
            "".to_string(),
        ] {
            assert!(access(&s).is_none(), "{s}");
        }
    }

    #[test]
    fn flat_lines_are_judged_on_the_fast_path_as_serde_json_judges_them() {
        for (s, want) in [
            (
                BASE.replace("\"status\":200", "\"status\":\"200\""),
                Err("schema"),
            ),
            (BASE.replace("\"status\":200", "\"status\":2e2"), Ok(200)),
            (BASE.replace("\"status\":200", "\"status\":200.0"), Ok(200)),
            (
                BASE.replace("\"status\":200", "\"status\":200.5"),
                Err("schema"),
            ),
            (
                BASE.replace("\"status\":200", "\"status\":70000"),
                Err("schema"),
            ),
            (BASE.replace("\"status\":200,", ""), Err("schema")),
            (BASE.replace("1795824000000", "-1"), Ok(200)),
            (BASE.replace("1795824000000", "1.795824e12"), Ok(200)),
            (
                BASE.replace("2026-11-28T00:00:00.5Z", "2026-13-28T00:00:00Z"),
                Err("schema"),
            ),
            ("{}".to_string(), Err("schema")),
        ] {
            let got = fast(&s).unwrap_or_else(|| panic!("fast path: {s}"));
            assert_eq!(
                got.as_ref().map(|e| e.status),
                want.as_ref().map(|v| *v),
                "{s}"
            );
            assert_eq!(got, serde(&s), "{s}");
        }
        let line = BASE.replace("1795824000000", "1.795824e12");
        let ev = fast(&line).unwrap().unwrap();
        assert_eq!(ev.client_ts, Some(1_795_824_000_000));
    }

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9 :./-]{0,12}",
            ".{0,8}",
            Just("a\\\"b".to_string()),
            Just("\\u00e9\\/".to_string()),
            Just("\\ud83d\\ude00".to_string()),
            Just("\\ud83d".to_string()),
            Just("\\udc00x".to_string()),
            Just("\\ud83d\\n".to_string()),
            Just("\\x".to_string()),
            Just("\\u12g4".to_string()),
            Just("end\\".to_string()),
            Just("tab\tin".to_string()),
            Just("nul\u{0}in".to_string()),
        ]
    }

    fn arb_value() -> impl Strategy<Value = String> {
        prop_oneof![
            arb_string().prop_map(|s| serde_json::to_string(&s).unwrap()),
            arb_string().prop_map(|s| format!("\"{s}\"")), // raw, maybe invalid
            any::<u64>().prop_map(|v| v.to_string()),
            (0u64..2000).prop_map(|v| v.to_string()),
            any::<i64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| v.to_string()),
            Just("null".to_string()),
            Just("true".to_string()),
            Just("[1,{\"a\":2}]".to_string()),
            arb_nested(),
            Just("\"2026-11-28T00:00:00Z\"".to_string()),
            Just("1795824000000".to_string()),
            Just("-0".to_string()),
            Just("1e400".to_string()),
        ]
    }

    /// Objects and arrays, valid or broken in the ways a skipper can get
    /// wrong, up to 40 deep.
    fn arb_nested() -> BoxedStrategy<String> {
        let leaf = prop_oneof![
            Just("1".to_string()),
            Just("-0.5e+2".to_string()),
            Just("01".to_string()),
            Just("\"s\"".to_string()),
            Just("\"a\\\"b\"".to_string()),
            Just("\"\\u00e9\\/\\ud800\"".to_string()),
            Just("\"\\x\"".to_string()),
            Just("\"\\u12\"".to_string()),
            Just("\"a\\\"".to_string()),
            Just("null".to_string()),
            Just("nul".to_string()),
            Just("".to_string()),
        ];
        leaf.prop_recursive(40, 200, 4, |inner| {
            let items = prop::collection::vec(inner, 0..4);
            prop_oneof![
                items.clone().prop_map(|v| format!("[{}]", v.join(","))),
                items.clone().prop_map(|v| format!(
                    "{{{}}}",
                    v.iter()
                        .enumerate()
                        .map(|(i, x)| format!("\"k{i}\":{x}"))
                        .collect::<Vec<_>>()
                        .join(",")
                )),
                items.clone().prop_map(|v| format!("[{},]", v.join(","))),
                // closed by the other bracket
                items.clone().prop_map(|v| format!("[{}}}", v.join(","))),
                items
                    .clone()
                    .prop_map(|v| format!("{{\"a\":[{}}}", v.join(","))),
                items
                    .clone()
                    .prop_map(|v| format!("{{\"a\":{}", v.join(","))),
                items.prop_map(|v| format!("[ {} ]", v.join(" , "))),
            ]
        })
        .boxed()
    }

    fn arb_object() -> impl Strategy<Value = String> {
        let keys = prop_oneof![
            Just("event_id"),
            Just("received_at"),
            Just("key_id"),
            Just("nonce"),
            Just("client_ts"),
            Just("client_ip"),
            Just("method"),
            Just("path"),
            Just("status"),
            Just("user_agent"),
            Just("client_id"),
            Just("signature"),
            Just("other"),
        ];
        // a valid event, in any field order, plus random extra fields (which
        // may repeat, replace or break a field)
        let required = Just(vec![
            ("event_id", "\"e-1\"".to_string()),
            (
                "received_at",
                "\"2026-11-28T00:00:00.123+01:00\"".to_string(),
            ),
            ("key_id", "\"k\"".to_string()),
            ("client_ts", "1795824000000".to_string()),
            ("client_ip", "\"10.1.2.3\"".to_string()),
            ("method", "\"GET\"".to_string()),
            ("path", "\"/a\"".to_string()),
            ("status", "200".to_string()),
        ])
        .prop_shuffle();
        let extra = prop::collection::vec((keys, arb_value()), 0..4);
        let ws = prop_oneof![Just(""), Just(" "), Just("\n")];
        (required, extra, ws).prop_map(|(mut fields, extra, w)| {
            for (k, v) in extra {
                fields.push((k, v));
            }
            let body: Vec<String> = fields
                .into_iter()
                .map(|(k, v)| format!("{w}\"{k}\"{w}:{w}{v}"))
                .collect();
            format!("{{{}}}", body.join(","))
        })
    }

    /// A line with one nested field of its own, `value`.
    fn with_nested(value: &str) -> String {
        BASE.replace("\"status\"", &format!("\"n\":{value},\"status\""))
    }

    /// The nested property below is not vacuous: valid nested fields take
    /// the fast path, broken ones do not.
    #[test]
    fn generated_nested_fields_often_take_the_fast_path() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut hits, mut valid, mut invalid) = (0, 0, 0);
        for _ in 0..3000 {
            let line = with_nested(&arb_nested().new_tree(&mut runner).unwrap().current());
            let ok = serde(&line).is_ok();
            match fast(&line) {
                Some(got) => {
                    assert_eq!(got, serde(&line), "{line}");
                    hits += 1;
                }
                None if ok && !line.contains('\\') => {
                    // only nesting past the skipper's depth is left to serde_json
                    let depth = line.bytes().fold((0i32, 0i32), |(d, m), c| match c {
                        b'[' | b'{' => (d + 1, m.max(d + 1)),
                        b']' | b'}' => (d - 1, m),
                        _ => (d, m),
                    });
                    assert!(depth.1 > MAX_SKIP_DEPTH as i32, "{line}");
                }
                None => {}
            }
            if ok {
                valid += 1;
            } else {
                invalid += 1;
            }
        }
        assert!(
            hits * 5 > valid,
            "{hits} of {valid} valid lines took the fast path"
        );
        assert!(
            invalid * 5 > valid,
            "{invalid} invalid against {valid} valid"
        );
    }

    /// The property below is not vacuous: many generated objects take the fast path.
    #[test]
    fn generated_objects_often_take_the_fast_path() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut hits, mut total) = (0, 0);
        for _ in 0..2000 {
            let s = arb_object().new_tree(&mut runner).unwrap().current();
            total += 1;
            if fast(&s).is_some_and(|r| r.is_ok()) {
                hits += 1;
            }
        }
        assert!(hits * 10 > total, "{hits} of {total} took the fast path");
        assert!(hits < total, "and some did not");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

        /// Whenever the fast path answers, serde_json gives the same answer.
        #[test]
        fn fast_path_agrees_with_serde_json(s in arb_object()) {
            if let Some(got) = fast(&s) {
                prop_assert_eq!(got, serde(&s));
            }
        }

        /// A nested field of its own, valid or not: same property.
        #[test]
        fn nested_fields_agree(v in arb_nested()) {
            let s = with_nested(&v);
            if let Some(got) = fast(&s) {
                prop_assert_eq!(got, serde(&s));
            }
        }

        /// Mutations of a valid line: same property.
        #[test]
        fn mutated_lines_agree(i in 0usize..BASE.len(), c in any::<char>()) {
            let mut s = BASE.to_string();
            if s.is_char_boundary(i) {
                s.insert(i, c);
                if let Some(got) = fast(&s) {
                    prop_assert_eq!(got, serde(&s));
                }
            }
        }

        /// Full-shape events with random valid values always take the fast path.
        #[test]
        fn valid_events_take_the_fast_path(id in "[a-f0-9-]{1,36}", st in 0u16..1000, t in 0u64..253_402_300_799_999) {
            let s = format!(r#"{{"event_id":"{id}","received_at":{t},"key_id":"k","client_ts":{t},"client_ip":"i","method":"m","path":"p","status":{st}}}"#);
            let got = fast(&s);
            prop_assert!(got.as_ref().is_some_and(|r| r.is_ok()));
            prop_assert_eq!(got.unwrap(), serde(&s));
        }
    }
}

#[cfg(test)]
mod generated {
    #[test]
    fn generated_lines_take_the_fast_path() {
        let mut out = Vec::new();
        crate::generate::generate(
            &crate::generate::GenConfig {
                events: 5000,
                ..Default::default()
            },
            &Default::default(),
            &mut out,
            None,
            None,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let slow: Vec<&str> = text
            .lines()
            .filter(|l| super::access(l).is_none_or(|mut f| f.build().is_err()))
            .collect();
        assert!(
            slow.is_empty(),
            "{} of 5000 lines missed the fast path, e.g. {}",
            slow.len(),
            slow[0]
        );
    }
}
