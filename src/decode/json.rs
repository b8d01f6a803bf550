//! A borrowing JSON scanner that finds the values at a set of paths in one
//! pass over a record, without building a tree.
//!
//! The whole record is checked as JSON (what it skips is validated too,
//! iteratively: deep nesting costs no stack), but only the values at the
//! wanted paths are kept, as slices of the input. Objects on a wanted path
//! are entered; everything else is skipped. A line without backslashes and
//! control characters (the common case, found with one vectorized pass)
//! takes the simple path: a string ends at the next quote.
//!
//! What it accepts and refuses is serde_json's: the same grammar, duplicate
//! wanted fields refused, escapes in skipped strings checked for their
//! syntax, surrogates checked only where a string is decoded.

use std::borrow::Cow;

/// A value found at a wanted path, borrowed from the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Val<'a> {
    /// A string's contents between the quotes; `escaped` when they hold a
    /// backslash (decode with [`unescape`]).
    Str {
        raw: &'a str,
        escaped: bool,
    },
    /// A number's text (checked against the JSON grammar).
    Num(&'a str),
    Bool(bool),
    Null,
    Array,
    Object,
}

impl Val<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            Val::Str { .. } => "a string",
            Val::Num(_) => "a number",
            Val::Bool(_) => "a boolean",
            Val::Null => "null",
            Val::Array => "an array",
            Val::Object => "an object",
        }
    }
}

/// Why a record is not the JSON it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanError {
    /// Not JSON: what was expected, at which byte.
    Syntax { at: usize, what: &'static str },
    /// A wanted field appears twice (`path` of the slot).
    Duplicate { slot: usize },
    /// The record is not a JSON object.
    NotObject,
}

/// One node of the path trie: an object whose keys may lead to slots or to
/// nested objects.
#[derive(Debug, Clone, Default)]
struct Node {
    /// Keys compared without regard to ASCII case (header maps).
    case_insensitive: bool,
    children: Vec<Child>,
    /// What a key is first compared with, one per child, side by side (a
    /// node has a few children: a scan of them beats hashing the key).
    probes: Vec<Probe>,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    /// The key's first eight bytes (ASCII lower case in a node that
    /// ignores case), zero-padded: most keys are told apart by it alone.
    head: u64,
    len: usize,
    /// Bytes 8 to 16 of a longer key, as `head` holds the first eight.
    tail: u64,
}

#[derive(Debug, Clone)]
struct Child {
    key: Box<str>,
    /// The slot a value here goes to.
    slot: Option<u16>,
    /// The nested object node.
    node: Option<u32>,
}

/// A set of paths, each leading to a slot. Built once per input format.
#[derive(Debug, Clone)]
pub struct Paths {
    nodes: Vec<Node>,
    slots: usize,
}

impl Paths {
    /// No paths yet; `slots` is how many slots values go to.
    pub fn new(slots: usize) -> Self {
        Paths {
            nodes: vec![Node::default()],
            slots,
        }
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Adds a path (object keys from the root) to `slot`. `case_insensitive`
    /// gives, per segment, whether the object it looks into compares keys
    /// without regard to ASCII case. Returns false if the path conflicts
    /// with one already added (a value and an object at the same key).
    pub fn add(&mut self, segments: &[&str], case_insensitive: &[bool], slot: usize) -> bool {
        let mut node = 0usize;
        for (i, seg) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let ci = case_insensitive.get(i).copied().unwrap_or(false);
            if ci {
                self.nodes[node].case_insensitive = true;
            }
            let found = self.nodes[node].children.iter().position(|c| {
                keys_equal(
                    c.key.as_bytes(),
                    seg.as_bytes(),
                    self.nodes[node].case_insensitive,
                )
            });
            let idx = match found {
                Some(ix) => ix,
                None => {
                    self.nodes[node].children.push(Child {
                        key: (*seg).into(),
                        slot: None,
                        node: None,
                    });
                    self.nodes[node].children.len() - 1
                }
            };
            if last {
                let c = &mut self.nodes[node].children[idx];
                if c.node.is_some() || c.slot.is_some_and(|s| s as usize != slot) {
                    return false;
                }
                c.slot = Some(slot as u16);
            } else {
                if self.nodes[node].children[idx].slot.is_some() {
                    return false;
                }
                let next = match self.nodes[node].children[idx].node {
                    Some(n) => n as usize,
                    None => {
                        self.nodes.push(Node::default());
                        let n = self.nodes.len() - 1;
                        self.nodes[node].children[idx].node = Some(n as u32);
                        n
                    }
                };
                node = next;
            }
        }
        self.index();
        true
    }

    fn index(&mut self) {
        for n in &mut self.nodes {
            let fold = n.case_insensitive;
            n.probes = n
                .children
                .iter()
                .map(|c| {
                    let k = c.key.as_bytes();
                    Probe {
                        head: head(k, 0, k.len(), fold),
                        len: k.len(),
                        tail: if k.len() > 8 {
                            head(k, 8, k.len() - 8, fold)
                        } else {
                            0
                        },
                    }
                })
                .collect();
        }
    }

    /// The child of `node` whose key is `b[start..end]`.
    #[inline(always)]
    fn lookup(&self, node: usize, b: &[u8], start: usize, end: usize) -> Option<&Child> {
        let n = &self.nodes[node];
        let len = end - start;
        let h = head(b, start, len, n.case_insensitive);
        let i = n.probes.iter().position(|p| p.head == h && p.len == len)?;
        if len <= 8 || n.rest_equal(i, b, start, end) {
            return Some(&n.children[i]);
        }
        // two keys alike in their first eight bytes and their length: the
        // rest tells them apart
        (i + 1..n.probes.len())
            .find(|&j| {
                n.probes[j].head == h && n.probes[j].len == len && n.rest_equal(j, b, start, end)
            })
            .map(|j| &n.children[j])
    }
}

impl Node {
    /// Whether child `i`'s key, longer than eight bytes and as long as
    /// `b[start..end]`, has the same bytes after the first eight: one
    /// word compared for keys of up to 16 bytes (nearly all), the bytes
    /// for longer ones.
    #[inline(always)]
    fn rest_equal(&self, i: usize, b: &[u8], start: usize, end: usize) -> bool {
        let len = end - start;
        if len <= 16 {
            return self.probes[i].tail == head(b, start + 8, len - 8, self.case_insensitive);
        }
        keys_equal(
            &self.children[i].key.as_bytes()[8..],
            &b[start + 8..end],
            self.case_insensitive,
        )
    }
}

#[inline]
fn keys_equal(a: &[u8], b: &[u8], case_insensitive: bool) -> bool {
    if case_insensitive {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// The first eight bytes (at most) of `b[start..start + len]` as a
/// little-endian word, zero-padded; ASCII letters in lower case when
/// `fold`.
#[inline]
fn head(b: &[u8], start: usize, len: usize, fold: bool) -> u64 {
    let w = if let Some(bytes) = b.get(start..start + 8) {
        // the record goes on after the key (its quote at least): one load
        let w = u64::from_le_bytes(bytes.try_into().expect("eight bytes"));
        if len >= 8 {
            w
        } else {
            w & ((1u64 << (len * 8)) - 1)
        }
    } else {
        let mut buf = [0u8; 8];
        let n = len.min(8);
        buf[..n].copy_from_slice(&b[start..start + n]);
        u64::from_le_bytes(buf)
    };
    if fold {
        ascii_lower(w)
    } else {
        w
    }
}

/// ASCII upper-case letters of a word's bytes in lower case, others as
/// they are (as `u8::to_ascii_lowercase` on each byte).
#[inline]
fn ascii_lower(w: u64) -> u64 {
    let low7 = w & !HIGHS;
    // a byte's high bit: above 'Z' / at least 'A' (for its low 7 bits)
    let above_z = low7 + ONES * (0x7f - b'Z') as u64;
    let from_a = low7 + ONES * (0x80 - b'A') as u64;
    let upper = (from_a & !above_z) & !w & HIGHS;
    w | (upper >> 2)
}

/// The containers that enclose the one being skipped, innermost last: a
/// bit each (set: an object) for the first 64 levels, deeper ones on the
/// heap.
#[derive(Default)]
struct Stack {
    bits: u64,
    depth: usize,
    deep: Vec<bool>,
}

impl Stack {
    #[inline]
    fn push(&mut self, object: bool) {
        if self.depth < 64 {
            let bit = 1u64 << self.depth;
            self.bits = if object {
                self.bits | bit
            } else {
                self.bits & !bit
            };
        } else {
            self.deep.push(object);
        }
        self.depth += 1;
    }

    /// The innermost enclosing container (whether it is an object),
    /// removed; `None` when there is none.
    #[inline]
    fn pop(&mut self) -> Option<bool> {
        if self.depth == 0 {
            return None;
        }
        self.depth -= 1;
        if self.depth < 64 {
            Some(self.bits & (1u64 << self.depth) != 0)
        } else {
            self.deep.pop()
        }
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The first `"` at or after `from`. On x86-64, 16 bytes at a time with
/// SSE2 (part of every x86-64 CPU): most keys and values end within the
/// first 16 or 32 bytes, so the search is one or two compares with no loop
/// whose trip count the branch predictor must guess; longer strings go to
/// memchr. Elsewhere, and near the end of the record, eight bytes at a time
/// (SWAR), then memchr.
#[inline(always)]
pub(super) fn find_quote(b: &[u8], from: usize) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if from + 32 <= b.len() {
        let (m0, m1) = quotes_32(&b[from..from + 32]);
        if m0 != 0 {
            return Some(from + m0.trailing_zeros() as usize);
        }
        if m1 != 0 {
            return Some(from + 16 + m1.trailing_zeros() as usize);
        }
        return memchr::memchr(b'"', &b[from + 32..]).map(|p| from + 32 + p);
    }
    find_quote_swar(b, from)
}

/// The first byte at or after `from` that a string's scan stops at: a
/// quote, a backslash or a control character. 16 bytes at a time with SSE2
/// on x86-64 (a call to memchr2 for every escape of a line full of them,
/// `\/` in every URL of a cjson-written log, took a quarter of a Kong
/// scan's time), then byte by byte.
#[inline(always)]
pub(super) fn find_special(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    #[cfg(target_arch = "x86_64")]
    while i + 16 <= b.len() {
        let m = specials_16(&b[i..i + 16]);
        if m != 0 {
            return Some(i + m.trailing_zeros() as usize);
        }
        i += 16;
    }
    b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|p| i + p)
}

/// Which of 16 bytes are quotes, backslashes or control characters.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn specials_16(b: &[u8]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    assert!(b.len() >= 16);
    // SAFETY: SSE2 is part of x86-64; the unaligned load is inside `b`
    unsafe {
        let v = _mm_loadu_si128(b.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // below 0x20, unsigned: the smaller of it and 0x1f is itself
        let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    }
}

/// Which of 32 bytes are quotes: a bit per byte, for each half.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn quotes_32(b: &[u8]) -> (u32, u32) {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    assert!(b.len() >= 32);
    // SAFETY: SSE2 is part of x86-64; both unaligned loads are inside `b`
    unsafe {
        let q = _mm_set1_epi8(b'"' as i8);
        let lo = _mm_loadu_si128(b.as_ptr().cast());
        let hi = _mm_loadu_si128(b.as_ptr().add(16).cast());
        (
            _mm_movemask_epi8(_mm_cmpeq_epi8(lo, q)) as u32,
            _mm_movemask_epi8(_mm_cmpeq_epi8(hi, q)) as u32,
        )
    }
}

/// [`find_quote`] eight bytes at a time (most keys and values are short,
/// where memchr's setup costs more than the search), then memchr for what
/// is longer than 32 bytes.
#[inline]
fn find_quote_swar(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    let stop = b.len().min(from + 32);
    while i + 8 <= stop {
        let w = u64::from_le_bytes(b[i..i + 8].try_into().expect("eight bytes"));
        let x = w ^ (ONES * b'"' as u64);
        // a zero byte of `x` is a quote; the lowest flagged byte is exact
        let m = x.wrapping_sub(ONES) & !x & HIGHS;
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    if i + 8 > b.len() {
        return b[i..].iter().position(|&c| c == b'"').map(|p| i + p);
    }
    memchr::memchr(b'"', &b[i..]).map(|p| i + p)
}

/// A step of the scan failed; what and where is kept in the cursor, so that
/// every step's result fits in two registers (a 24-byte error in each
/// `Result` sent every return, and every value, through the stack).
#[derive(Debug, Clone, Copy)]
struct Fail;

type R<T> = Result<T, Fail>;

/// A value as the cursor sees it: offsets into the record (which is shorter
/// than 4 GiB, checked once), turned into a [`Val`] only for a slot.
#[derive(Debug, Clone, Copy)]
enum Tok {
    Str { start: u32, end: u32, escaped: bool },
    Num { start: u32, end: u32 },
    True,
    False,
    Null,
    Array,
    Object,
}

impl Tok {
    #[inline]
    fn is_container(self) -> bool {
        matches!(self, Tok::Array | Tok::Object)
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    s: &'a str,
    i: usize,
    /// No backslash and no control character anywhere in the record.
    simple: bool,
    /// Why the scan stopped, when a step returned [`Fail`].
    fail: Option<ScanError>,
}

impl<'a> Cursor<'a> {
    #[cold]
    #[inline(never)]
    fn err<T>(&mut self, at: usize, what: &'static str) -> R<T> {
        self.fail = Some(ScanError::Syntax { at, what });
        Err(Fail)
    }

    /// `s[start..end]` for the ends of a token, which are char boundaries:
    /// a string's contents lie between two ASCII quotes, and a number
    /// starts at an ASCII byte and ends at the end of the record or at the
    /// byte after its last digit, which in UTF-8 cannot be a continuation
    /// byte (those follow only a multi-byte lead or another continuation).
    #[inline(always)]
    fn token_text(&self, start: u32, end: u32) -> &'a str {
        let (start, end) = (start as usize, end as usize);
        debug_assert!(start <= end && end <= self.s.len());
        debug_assert!(self.s.is_char_boundary(start) && self.s.is_char_boundary(end));
        // SAFETY: start <= end <= len, as the cursor only moves forward
        // inside the record, and both are char boundaries (above)
        unsafe { self.s.get_unchecked(start..end) }
    }

    #[inline]
    fn val(&self, t: Tok) -> Val<'a> {
        match t {
            Tok::Str {
                start,
                end,
                escaped,
            } => Val::Str {
                raw: self.token_text(start, end),
                escaped,
            },
            Tok::Num { start, end } => Val::Num(self.token_text(start, end)),
            Tok::True => Val::Bool(true),
            Tok::False => Val::Bool(false),
            Tok::Null => Val::Null,
            Tok::Array => Val::Array,
            Tok::Object => Val::Object,
        }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    #[inline]
    fn peek(&mut self) -> Option<u8> {
        // compact JSON: the next byte is what comes next
        match self.b.get(self.i) {
            Some(b' ' | b'\t' | b'\n' | b'\r') => {
                self.ws();
                self.b.get(self.i).copied()
            }
            c => c.copied(),
        }
    }

    #[inline]
    fn expect(&mut self, c: u8, what: &'static str) -> R<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            self.err(self.i, what)
        }
    }

    /// A string, after its opening quote: where its closing quote is, and
    /// whether it holds an escape. The cursor moves past the closing quote.
    #[inline(always)]
    fn string(&mut self) -> R<(usize, bool)> {
        let start = self.i;
        if self.simple {
            let Some(end) = find_quote(self.b, start) else {
                return self.err(self.b.len(), "a closing quote");
            };
            self.i = end + 1;
            return Ok((end, false));
        }
        self.string_escaped()
    }

    /// [`Self::string`] in a record with a backslash or a control character.
    #[inline(never)]
    fn string_escaped(&mut self) -> R<(usize, bool)> {
        let mut escaped = false;
        let mut i = self.i;
        loop {
            let Some(at) = find_special(self.b, i) else {
                return self.err(self.b.len(), "a closing quote");
            };
            if self.b[at] < 0x20 {
                // a string that never ends is reported as that, whatever it holds
                if memchr::memchr2(b'"', b'\\', &self.b[at..]).is_none() {
                    return self.err(self.b.len(), "a closing quote");
                }
                return self.err(at, "no control character in a string");
            }
            i = at;
            if self.b[i] == b'"' {
                self.i = i + 1;
                return Ok((i, escaped));
            }
            escaped = true;
            i += 1;
            match self.b.get(i) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 1,
                Some(b'u') => {
                    let hex = self.b.get(i + 1..i + 5);
                    if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                        return self.err(i, "four hex digits after \\u");
                    }
                    i += 5;
                }
                _ => return self.err(i, "a valid escape after a backslash"),
            }
        }
    }

    /// A number (checked against the grammar): where it ends.
    fn number(&mut self) -> R<usize> {
        let b = self.b;
        let mut i = self.i;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let int_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let int_len = i - int_start;
        if int_len == 0 {
            return self.err(i, "a digit");
        }
        if int_len > 1 && b[int_start] == b'0' {
            return self.err(int_start, "no leading zero in a number");
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            let f = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == f {
                return self.err(i, "a digit after the decimal point");
            }
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let e = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == e {
                return self.err(i, "a digit in the exponent");
            }
        }
        self.i = i;
        Ok(i)
    }

    #[inline]
    fn literal(&mut self, word: &'static [u8], tok: Tok) -> R<Tok> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(tok)
        } else {
            self.err(self.i, "a value")
        }
    }

    /// A scalar, or the start of a container (its opening bracket read).
    #[inline(always)]
    fn scalar_or_open(&mut self) -> R<Tok> {
        let Some(c) = self.peek() else {
            return self.err(self.i, "a value");
        };
        match c {
            b'"' => {
                self.i += 1;
                let start = self.i as u32;
                let (end, escaped) = self.string()?;
                Ok(Tok::Str {
                    start,
                    end: end as u32,
                    escaped,
                })
            }
            b'-' | b'0'..=b'9' => {
                let start = self.i as u32;
                let end = self.number()?;
                Ok(Tok::Num {
                    start,
                    end: end as u32,
                })
            }
            b't' => self.literal(b"true", Tok::True),
            b'f' => self.literal(b"false", Tok::False),
            b'n' => self.literal(b"null", Tok::Null),
            b'[' => {
                self.i += 1;
                Ok(Tok::Array)
            }
            b'{' => {
                self.i += 1;
                Ok(Tok::Object)
            }
            _ => self.err(self.i, "a value"),
        }
    }

    /// A key and its colon, after the opening quote: where the key ends and
    /// whether it holds an escape.
    #[inline(always)]
    fn key(&mut self) -> R<(usize, bool)> {
        let k = self.string()?;
        // `"key":` is the common case
        if self.b.get(self.i) == Some(&b':') {
            self.i += 1;
            return Ok(k);
        }
        self.expect(b':', "a colon after the key")?;
        Ok(k)
    }

    /// Skips the rest of a container whose opening bracket was read,
    /// iteratively (a stack of what encloses it, not of calls).
    fn skip_open(&mut self, first: Tok) -> R<()> {
        let close_of = |object: bool| if object { b'}' } else { b']' };
        let mut in_object = matches!(first, Tok::Object);
        if self.peek() == Some(close_of(in_object)) {
            self.i += 1;
            return Ok(());
        }
        // what encloses the container being skipped (no allocation for
        // the depths records have)
        let mut stack = Stack::default();
        loop {
            // a member of the current container comes next
            if in_object {
                self.expect(b'"', "a key")?;
                self.key()?;
            }
            let v = self.scalar_or_open()?;
            if v.is_container() {
                stack.push(in_object);
                in_object = matches!(v, Tok::Object);
                if self.peek() != Some(close_of(in_object)) {
                    // its first member
                    continue;
                }
                // empty: it ends where it began, a member of its parent
                self.i += 1;
                in_object = stack.pop().expect("just pushed");
            }
            // after a member: a comma and the next, or the container's end
            // (and then after the member that the container was)
            loop {
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        break;
                    }
                    Some(c) if c == close_of(in_object) => {
                        self.i += 1;
                        match stack.pop() {
                            None => return Ok(()),
                            Some(object) => in_object = object,
                        }
                    }
                    _ => return self.err(self.i, "a comma or the end of the container"),
                }
            }
        }
    }

    /// A value for a slot: a scalar; an array gives its first element when
    /// that is a scalar (a header logged as a list), else `Array`; the rest
    /// of a container is skipped.
    fn slot_value(&mut self) -> R<Tok> {
        match self.scalar_or_open()? {
            Tok::Array => {
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Tok::Array);
                }
                let v = self.scalar_or_open()?;
                if v.is_container() {
                    self.skip_open(v)?;
                    self.skip_open_rest(false)?;
                    Ok(Tok::Array)
                } else {
                    self.skip_open_rest(false)?;
                    Ok(v)
                }
            }
            Tok::Object => {
                self.skip_open(Tok::Object)?;
                Ok(Tok::Object)
            }
            v => Ok(v),
        }
    }

    /// Skips the remaining members of a container one member into it.
    fn skip_open_rest(&mut self, in_object: bool) -> R<()> {
        let close = if in_object { b'}' } else { b']' };
        loop {
            match self.peek() {
                Some(x) if x == close => {
                    self.i += 1;
                    return Ok(());
                }
                Some(b',') => {
                    self.i += 1;
                    if in_object {
                        self.expect(b'"', "a key")?;
                        self.key()?;
                    }
                    let v = self.scalar_or_open()?;
                    if v.is_container() {
                        self.skip_open(v)?;
                    }
                }
                _ => return self.err(self.i, "a comma or the end of the container"),
            }
        }
    }

    /// The members of an object whose `{` was read, looking up keys in `node`.
    fn object(&mut self, paths: &Paths, node: usize, out: &mut [Option<Val<'a>>]) -> R<()> {
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.expect(b'"', "a key")?;
            let start = self.i;
            let (end, escaped) = self.key()?;
            let child = if escaped {
                match unescape(&self.s[start..end]) {
                    Ok(key) => paths.lookup(node, key.as_bytes(), 0, key.len()),
                    Err(what) => return self.err(self.i, what),
                }
            } else {
                paths.lookup(node, self.b, start, end)
            };
            match child {
                Some(Child {
                    slot: Some(slot), ..
                }) => {
                    let slot = *slot as usize;
                    let v = self.slot_value()?;
                    if out[slot].is_some() {
                        self.fail = Some(ScanError::Duplicate { slot });
                        return Err(Fail);
                    }
                    out[slot] = Some(self.val(v));
                }
                Some(Child {
                    node: Some(next), ..
                }) => match self.scalar_or_open()? {
                    Tok::Object => self.object(paths, *next as usize, out)?,
                    v @ Tok::Array => self.skip_open(v)?,
                    _ => {}
                },
                _ => {
                    let v = self.scalar_or_open()?;
                    if v.is_container() {
                        self.skip_open(v)?;
                    }
                }
            }
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return self.err(self.i, "a comma or the end of the object"),
            }
        }
    }

    /// The whole record: one object, and nothing after it but white space.
    fn record(&mut self, paths: &Paths, out: &mut [Option<Val<'a>>]) -> R<()> {
        match self.peek() {
            Some(b'{') => self.i += 1,
            Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
                // valid JSON, but not an object
                let v = self.scalar_or_open()?;
                if v.is_container() {
                    self.skip_open(v)?;
                }
                self.ws();
                if self.i != self.b.len() {
                    return self.err(self.i, "the end of the record");
                }
                self.fail = Some(ScanError::NotObject);
                return Err(Fail);
            }
            _ => return self.err(self.i, "a JSON object"),
        }
        self.object(paths, 0, out)?;
        self.ws();
        if self.i != self.b.len() {
            return self.err(self.i, "the end of the record");
        }
        Ok(())
    }
}

/// Scans `s` (one JSON object) and puts the value at each path of `paths`
/// into its slot of `out` (which must have `paths.slots()` entries, all
/// `None`).
#[cfg(test)]
pub fn scan<'a>(s: &'a str, paths: &Paths, out: &mut [Option<Val<'a>>]) -> Result<(), ScanError> {
    scan_known(s, false, paths, out)
}

/// [`scan`] on the path for records with escapes, whatever the record (to
/// check the simple path against it).
#[cfg(test)]
pub fn scan_escaped_path<'a>(
    s: &'a str,
    paths: &Paths,
    out: &mut [Option<Val<'a>>],
) -> Result<(), ScanError> {
    scan_with(s, false, paths, out)
}

/// [`scan`] of a record the caller may already know to be free of
/// backslashes and control characters (`simple`; else it is found out here).
pub fn scan_known<'a>(
    s: &'a str,
    simple: bool,
    paths: &Paths,
    out: &mut [Option<Val<'a>>],
) -> Result<(), ScanError> {
    // one pass (vectorized: no early exit): a backslash means an escape
    // somewhere, a control character unusual white space or an invalid string
    let simple = simple
        || !s
            .bytes()
            .fold(false, |odd, c| odd | (c < 0x20) | (c == b'\\'));
    scan_with(s, simple, paths, out)
}

/// [`scan`] of a record without a backslash or a control character
/// (`simple`: strings end at the next quote), or of any record (strings
/// searched for escapes).
fn scan_with<'a>(
    s: &'a str,
    simple: bool,
    paths: &Paths,
    out: &mut [Option<Val<'a>>],
) -> Result<(), ScanError> {
    if u32::try_from(s.len()).is_err() {
        return Err(ScanError::Syntax {
            at: u32::MAX as usize,
            what: "a record shorter than 4 GiB",
        });
    }
    let mut c = Cursor {
        b: s.as_bytes(),
        s,
        i: 0,
        simple,
        fail: None,
    };
    match c.record(paths, out) {
        Ok(()) => Ok(()),
        Err(Fail) => Err(c.fail.take().unwrap_or(ScanError::Syntax {
            at: c.i,
            what: "a JSON object",
        })),
    }
}

/// A found string's text: borrowed as it is when the scan saw no escape in
/// it, decoded otherwise.
#[inline]
pub fn contents(raw: &str, escaped: bool) -> Result<Cow<'_, str>, &'static str> {
    if escaped {
        unescape(raw)
    } else {
        Ok(Cow::Borrowed(raw))
    }
}

/// Decodes a string's escapes (contents between the quotes, escapes already
/// checked for their syntax). Lone surrogates are refused, as serde_json
/// refuses them.
pub fn unescape(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    // memchr on the bytes: `str::find` of a char took twice its time here
    let Some(first) = memchr::memchr(b'\\', raw.as_bytes()) else {
        return Ok(Cow::Borrowed(raw));
    };
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    let mut next = Some(first);
    while let Some(i) = next {
        out.push_str(&rest[..i]);
        let b = rest.as_bytes();
        let (ch, used) = match b.get(i + 1) {
            Some(b'"') => ('"', 2),
            Some(b'\\') => ('\\', 2),
            Some(b'/') => ('/', 2),
            Some(b'b') => ('\u{8}', 2),
            Some(b'f') => ('\u{c}', 2),
            Some(b'n') => ('\n', 2),
            Some(b'r') => ('\r', 2),
            Some(b't') => ('\t', 2),
            Some(b'u') => {
                let hi = hex4(rest, i + 2).ok_or("four hex digits after \\u")?;
                if (0xD800..0xDC00).contains(&hi) {
                    // a pair: \uD8xx\uDCxx
                    if rest.as_bytes().get(i + 6..i + 8) != Some(b"\\u") {
                        return Err("a low surrogate after a high one");
                    }
                    let lo = hex4(rest, i + 8).ok_or("four hex digits after \\u")?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err("a low surrogate after a high one");
                    }
                    let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    (char::from_u32(c).ok_or("a valid code point")?, 12)
                } else if (0xDC00..0xE000).contains(&hi) {
                    return Err("no lone low surrogate");
                } else {
                    (char::from_u32(hi).ok_or("a valid code point")?, 6)
                }
            }
            _ => return Err("a valid escape after a backslash"),
        };
        out.push(ch);
        rest = &rest[i + used..];
        next = memchr::memchr(b'\\', rest.as_bytes());
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

fn hex4(s: &str, at: usize) -> Option<u32> {
    u32::from_str_radix(s.get(at..at + 4)?, 16).ok()
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
