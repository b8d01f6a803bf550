//! An event id in 24 bytes, as the sequence rule keeps its running
//! maximum's, and the hexadecimal forms sighting segments store in 16
//! bytes ([`hex_code`], [`hex_text`]). The ids gateways write
//! are mostly hexadecimal: UUIDs (Envoy's x-request-id, AWS API Gateway's
//! requestId, `generate`), the 32-hex request ids of Kong and NGINX, and
//! the ids derived for records that carry none (`sha256:` and 32 hex
//! digits, [`crate::decode::derived_event_id`]). Those are held as their 16
//! bytes; other ids up to 22 bytes inline, longer
//! ones on the heap. Every text has exactly one form (the derived equality
//! and hash are the text's), ordered as the text is (bytes) and serialized
//! as a string.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// The longest id held without a heap allocation when it is not hex.
const INLINE: usize = 22;

/// The hexadecimal texts held as 16 bytes: 8-4-4-4-12 with dashes, 32
/// digits, or `sha256:` and 32 digits, in one case (digits only counts as
/// lower case).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Shape {
    Uuid,
    UuidUpper,
    Hex32,
    Hex32Upper,
    Derived,
    DerivedUpper,
}

/// The prefix of [`Shape::Derived`].
const DERIVED: &[u8; 7] = b"sha256:";

impl Shape {
    fn len(self) -> usize {
        match self {
            Shape::Uuid | Shape::UuidUpper => 36,
            Shape::Hex32 | Shape::Hex32Upper => 32,
            Shape::Derived | Shape::DerivedUpper => 39,
        }
    }

    fn upper(self) -> bool {
        matches!(
            self,
            Shape::UuidUpper | Shape::Hex32Upper | Shape::DerivedUpper
        )
    }

    fn dashed(self) -> bool {
        matches!(self, Shape::Uuid | Shape::UuidUpper)
    }

    fn prefix(self) -> &'static [u8] {
        match self {
            Shape::Derived | Shape::DerivedUpper => DERIVED,
            _ => b"",
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Hex(Shape, [u8; 16]),
    Inline(u8, [u8; INLINE]),
    Heap(Box<str>),
}

/// An event id in 24 bytes (see the module's text).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventId(Repr);

const _: () = assert!(std::mem::size_of::<EventId>() == 24);

/// A hex digit's value, with bit 4 set for a-f and bit 5 for A-F; 0xff for
/// any other byte.
#[cfg(any(test, not(target_arch = "x86_64")))]
const NIBBLE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut c = 0;
    while c < 10 {
        t[b'0' as usize + c] = c as u8;
        c += 1;
    }
    let mut c = 0;
    while c < 6 {
        t[b'a' as usize + c] = (10 + c as u8) | 0x10;
        t[b'A' as usize + c] = (10 + c as u8) | 0x20;
        c += 1;
    }
    t
};

/// Where a UUID's 32 digits are.
#[cfg(test)]
const UUID_DIGITS: [usize; 32] = {
    let mut p = [0usize; 32];
    let (mut i, mut at) = (0, 0);
    while i < 32 {
        if at == 8 || at == 13 || at == 18 || at == 23 {
            at += 1;
        }
        p[i] = at;
        i += 1;
        at += 1;
    }
    p
};

/// Where a 32-hex id's digits are.
#[cfg(any(test, not(target_arch = "x86_64")))]
const HEX32_DIGITS: [usize; 32] = {
    let mut p = [0usize; 32];
    let mut i = 0;
    while i < 32 {
        p[i] = i;
        i += 1;
    }
    p
};

/// The 32 hex digits of `b` at `at`, of one case, as 16 bytes, and whether
/// the case is upper; `None` for anything else. Straight-line: a table
/// lookup a digit, no branch until the end. What [`unhex32`] does 16
/// digits at a time where it can (and the tests' measure of it).
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn unhex<const N: usize>(b: &[u8; N], at: &[usize; 32]) -> Option<([u8; 16], bool)> {
    let mut out = [0u8; 16];
    let mut seen = 0u8;
    for i in 0..16 {
        let hi = NIBBLE[b[at[2 * i]] as usize];
        let lo = NIBBLE[b[at[2 * i + 1]] as usize];
        seen |= hi | lo;
        out[i] = hi << 4 | (lo & 0x0f);
    }
    // an invalid byte sets every bit; lower and upper letters both: mixed
    match seen & 0xf0 {
        0x00 | 0x10 => Some((out, false)),
        0x20 => Some((out, true)),
        _ => None,
    }
}

/// [`unhex`] of 32 digits in a row, 16 at a time with SSE2 on x86-64 (the
/// table's two lookups a digit were 2 % of a scan's instructions).
#[inline]
fn unhex32(b: &[u8; 32]) -> Option<([u8; 16], bool)> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of x86-64; both unaligned loads are inside `b`
        unsafe {
            // per byte: its value as a digit, a lower and an upper letter
            // (wrapping), and which of them it is (below 10, or 6)
            let class = |v: __m128i| {
                let d = _mm_sub_epi8(v, _mm_set1_epi8(b'0' as i8));
                let l = _mm_sub_epi8(v, _mm_set1_epi8(b'a' as i8));
                let u = _mm_sub_epi8(v, _mm_set1_epi8(b'A' as i8));
                let is_d = _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(9)), d);
                let is_l = _mm_cmpeq_epi8(_mm_min_epu8(l, _mm_set1_epi8(5)), l);
                let is_u = _mm_cmpeq_epi8(_mm_min_epu8(u, _mm_set1_epi8(5)), u);
                let ten = _mm_set1_epi8(10);
                let nibble = _mm_or_si128(
                    _mm_and_si128(is_d, d),
                    _mm_or_si128(
                        _mm_and_si128(is_l, _mm_add_epi8(l, ten)),
                        _mm_and_si128(is_u, _mm_add_epi8(u, ten)),
                    ),
                );
                // two digits a 16-bit lane, the first in its low byte: the
                // byte they make, in the lane's low byte
                let pairs = _mm_or_si128(
                    _mm_and_si128(_mm_slli_epi16(nibble, 4), _mm_set1_epi16(0x00f0)),
                    _mm_srli_epi16(nibble, 8),
                );
                (
                    pairs,
                    _mm_movemask_epi8(_mm_or_si128(is_d, _mm_or_si128(is_l, is_u))),
                    _mm_movemask_epi8(is_l),
                    _mm_movemask_epi8(is_u),
                )
            };
            let (p0, ok0, l0, u0) = class(_mm_loadu_si128(b.as_ptr().cast()));
            let (p1, ok1, l1, u1) = class(_mm_loadu_si128(b.as_ptr().add(16).cast()));
            let (lower, upper) = ((l0 | l1) != 0, (u0 | u1) != 0);
            if ok0 & ok1 != 0xffff || (lower && upper) {
                return None;
            }
            let mut out = [0u8; 16];
            _mm_storeu_si128(out.as_mut_ptr().cast(), _mm_packus_epi16(p0, p1));
            Some((out, upper))
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unhex(b, &HEX32_DIGITS)
}

/// A UUID's 32 digits, its four dashes left out.
#[inline]
fn uuid_digits(b: &[u8; 36]) -> [u8; 32] {
    let mut d = [0u8; 32];
    d[..8].copy_from_slice(&b[..8]);
    d[8..12].copy_from_slice(&b[9..13]);
    d[12..16].copy_from_slice(&b[14..18]);
    d[16..20].copy_from_slice(&b[19..23]);
    d[20..].copy_from_slice(&b[24..]);
    d
}

fn hex_shape(b: &[u8]) -> Option<(Shape, [u8; 16])> {
    if let Ok(b) = <&[u8; 32]>::try_from(b) {
        return unhex32(b).map(|(v, up)| {
            let shape = if up { Shape::Hex32Upper } else { Shape::Hex32 };
            (shape, v)
        });
    }
    if let Some(digits) = b.strip_prefix(DERIVED) {
        let digits = <&[u8; 32]>::try_from(digits).ok()?;
        return unhex32(digits).map(|(v, up)| {
            let shape = if up {
                Shape::DerivedUpper
            } else {
                Shape::Derived
            };
            (shape, v)
        });
    }
    let b = <&[u8; 36]>::try_from(b).ok()?;
    if b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    unhex32(&uuid_digits(b)).map(|(v, up)| {
        let shape = if up { Shape::UuidUpper } else { Shape::Uuid };
        (shape, v)
    })
}

/// The text of a hex form.
fn render(shape: Shape, v: &[u8; 16]) -> ([u8; 39], usize) {
    let digits: &[u8; 16] = if shape.upper() {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = [b'-'; 39];
    let prefix = shape.prefix();
    out[..prefix.len()].copy_from_slice(prefix);
    let mut at = prefix.len();
    for (i, byte) in v.iter().enumerate() {
        // the dashes come before the 5th, 7th, 9th and 11th byte
        if shape.dashed() && matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        out[at] = digits[(byte >> 4) as usize];
        out[at + 1] = digits[(byte & 0x0f) as usize];
        at += 2;
    }
    debug_assert_eq!(at, shape.len());
    (out, at)
}

/// The forms of [`hex_code`], by code.
const SHAPES: [Shape; 6] = [
    Shape::Uuid,
    Shape::UuidUpper,
    Shape::Hex32,
    Shape::Hex32Upper,
    Shape::Derived,
    Shape::DerivedUpper,
];

/// A hexadecimal id (a UUID of either case, 32 hex digits, `sha256:` and
/// 32 hex digits) as the code of its form (0 to 5) and its 16 bytes, for
/// storage in half its length; `None` for any other id.
pub fn hex_code(s: &str) -> Option<(u8, [u8; 16])> {
    let (shape, v) = hex_shape(s.as_bytes())?;
    let code = SHAPES.iter().position(|&k| k == shape).expect("listed");
    Some((code as u8, v))
}

/// The text of the id [`hex_code`] gave `(code, v)` for; `None` for a code
/// it never gives.
pub fn hex_text(code: u8, v: &[u8; 16]) -> Option<String> {
    let &shape = SHAPES.get(usize::from(code))?;
    let (text, len) = render(shape, v);
    Some(String::from_utf8(text[..len].to_vec()).expect("ASCII"))
}

impl EventId {
    pub fn new(s: &str) -> Self {
        let b = s.as_bytes();
        if let Some((shape, v)) = hex_shape(b) {
            return EventId(Repr::Hex(shape, v));
        }
        if b.len() <= INLINE {
            let mut inline = [0u8; INLINE];
            inline[..b.len()].copy_from_slice(b);
            return EventId(Repr::Inline(b.len() as u8, inline));
        }
        EventId(Repr::Heap(s.into()))
    }

    /// Calls `f` with the id's text.
    #[inline]
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match &self.0 {
            Repr::Hex(shape, v) => {
                let (text, len) = render(*shape, v);
                f(&text[..len])
            }
            Repr::Inline(len, b) => f(&b[..*len as usize]),
            Repr::Heap(s) => f(s.as_bytes()),
        }
    }

    /// The id against the text `other`, as the texts compare.
    #[inline]
    pub fn cmp_bytes(&self, other: &[u8]) -> Ordering {
        self.with_bytes(|b| b.cmp(other))
    }

    /// Whether the id's text is `other`.
    #[inline]
    pub fn eq_bytes(&self, other: &[u8]) -> bool {
        match &self.0 {
            Repr::Inline(len, b) => &b[..*len as usize] == other,
            Repr::Heap(s) => s.as_bytes() == other,
            Repr::Hex(shape, v) => {
                other.len() == shape.len() && hex_shape(other) == Some((*shape, *v))
            }
        }
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with_bytes(|b| f.write_str(std::str::from_utf8(b).expect("built from a str")))
    }
}

impl std::fmt::Debug for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.with_bytes(|b| {
            std::fmt::Debug::fmt(std::str::from_utf8(b).expect("built from a str"), f)
        })
    }
}

impl Ord for EventId {
    fn cmp(&self, o: &Self) -> Ordering {
        // one shape: the bytes are in the order of their digits
        if let (Repr::Hex(a, x), Repr::Hex(b, y)) = (&self.0, &o.0) {
            if a == b {
                return x.cmp(y);
            }
        }
        self.with_bytes(|a| o.cmp_bytes(a).reverse())
    }
}

impl PartialOrd for EventId {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq<str> for EventId {
    fn eq(&self, other: &str) -> bool {
        self.eq_bytes(other.as_bytes())
    }
}

impl Default for EventId {
    fn default() -> Self {
        EventId::new("")
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_bytes(|b| s.serialize_str(std::str::from_utf8(b).expect("built from a str")))
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(EventId::new(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 16-at-a-time reading is the table's, for every byte at every
    /// place of ids of each case, of digits only, and of mixed case.
    #[test]
    fn digits_read_sixteen_at_a_time_read_as_the_table_reads_them() {
        for base in [
            "9e2256eeae5e4bab92d297d30255f9c0",
            "9E2256EEAE5E4BAB92D297D30255F9C0",
            "12345678901234567890123456789012",
            "0123456789abcdefABCDEF0123456789",
        ] {
            let base: [u8; 32] = base.as_bytes().try_into().unwrap();
            assert_eq!(unhex32(&base), unhex(&base, &HEX32_DIGITS));
            for at in 0..32 {
                for byte in 0..=255u8 {
                    let mut b = base;
                    b[at] = byte;
                    assert_eq!(unhex32(&b), unhex(&b, &HEX32_DIGITS), "{b:?}");
                }
            }
        }
        let uuid: [u8; 36] = *b"9e2256ee-ae5e-4bab-92d2-97d30255f9c0";
        for at in 0..36 {
            for byte in 0..=255u8 {
                let mut b = uuid;
                b[at] = byte;
                assert_eq!(unhex32(&uuid_digits(&b)), unhex(&b, &UUID_DIGITS), "{b:?}");
            }
        }
    }

    /// Ids of every form and their neighbours: hex of both cases and
    /// lengths, digits only, mixed case, a misplaced dash, non-hex letters,
    /// the inline limit and beyond, multi-byte characters.
    fn samples() -> Vec<String> {
        let mut v: Vec<String> = [
            "",
            "a",
            "e-1",
            "9e2256ee-ae5e-4bab-92d2-97d30255f9c0",
            "9E2256EE-AE5E-4BAB-92D2-97D30255F9C0",
            "9e2256EE-ae5e-4bab-92d2-97d30255f9c0",
            "9e2256ee-ae5e-4bab-92d2-97d30255f9cg",
            "9e2256eeae5e-4bab-92d2-97d30255f9c0-",
            "12345678-1234-1234-1234-123456789012",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "9e2256eeae5e4bab92d297d30255f9c0",
            "9E2256EEAE5E4BAB92D297D30255F9C0",
            "12345678901234567890123456789012",
            "9e2256eeae5e4bab92d297d30255f9c",
            "9e2256eeae5e4bab92d297d30255f9c01",
            "0123456789012345678901",
            "01234567890123456789012",
            "9e2256ee-ae5e-4bab-32d2-97d30255f9c0-and-some-more-bytes",
            "sha256:9e2256eeae5e4bab92d297d30255f9c0",
            "sha256:9E2256EEAE5E4BAB92D297D30255F9C0",
            "sha256:9e2256eeae5e4bab92d297d30255f9c",
            "sha256:9e2256eeae5e4bab92d297d30255f9c01",
            "sha256:9e2256EEae5e4bab92d297d30255f9c0",
            "sha255:9e2256eeae5e4bab92d297d30255f9c0",
            "SHA256:9e2256eeae5e4bab92d297d30255f9c0",
            "sha256-9e2256eeae5e4bab92d297d30255f9c0",
            "é",
            "ééééééééééé",
            "éééééééééééé",
            "b",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // every byte at every place of a UUID and of a 32-hex id
        for base in [
            "9e2256ee-ae5e-4bab-92d2-97d30255f9c0",
            "9e2256eeae5e4bab92d297d30255f9c0",
            "sha256:9e2256eeae5e4bab92d297d30255f9c0",
        ] {
            for at in [0, 6, 7, 8, 9, 13, base.len() - 1] {
                for c in [
                    b'0', b'9', b'a', b'f', b'g', b'A', b'F', b'G', b'-', b'/', b':', b'@', b'`',
                ] {
                    let mut b = base.as_bytes().to_vec();
                    b[at] = c;
                    v.push(String::from_utf8(b).unwrap());
                }
            }
        }
        v
    }

    #[test]
    fn every_form_keeps_the_text_its_order_and_its_wire_form() {
        let all = samples();
        for a in &all {
            let e = EventId::new(a);
            assert_eq!(e.to_string(), *a);
            assert_eq!(format!("{e:?}"), format!("{a:?}"));
            assert!(e == *a.as_str());
            // what a stored sequence record written with `String` holds
            let bytes = postcard::to_allocvec(&e).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(a).unwrap());
            assert_eq!(postcard::from_bytes::<EventId>(&bytes).unwrap(), e);
            for b in &all {
                let f = EventId::new(b);
                assert_eq!(e.cmp(&f), a.cmp(b), "{a} vs {b}");
                assert_eq!(e == f, a == b, "{a} vs {b}");
                assert_eq!(e.cmp_bytes(b.as_bytes()), a.cmp(b), "{a} vs {b}");
                assert_eq!(e.eq_bytes(b.as_bytes()), a == b, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn hex_ids_take_no_heap_and_others_keep_their_form() {
        let hex = |s: &str| matches!(EventId::new(s).0, Repr::Hex(..));
        assert!(hex("9e2256ee-ae5e-4bab-92d2-97d30255f9c0"));
        assert!(hex("9E2256EE-AE5E-4BAB-92D2-97D30255F9C0"));
        assert!(hex("9e2256eeae5e4bab92d297d30255f9c0"));
        assert!(hex("12345678901234567890123456789012"));
        assert!(hex("sha256:9e2256eeae5e4bab92d297d30255f9c0"));
        let derived = crate::decode::derived_event_id("{\"a\":1}");
        assert!(hex(&derived), "{derived}");
        assert!(!hex("sha256:9e2256eeae5e4bab92d297d30255f9cg"));
        assert!(!hex("9e2256EE-ae5e-4bab-92d2-97d30255f9c0"));
        assert!(!hex("9e2256ee-ae5e-4bab-92d2-97d30255f9cg"));
        assert!(matches!(
            EventId::new("0123456789012345678901").0,
            Repr::Inline(22, _)
        ));
        assert!(matches!(
            EventId::new("01234567890123456789012").0,
            Repr::Heap(_)
        ));
    }
}
