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
    /// `by_len[n]`: the children whose key is `n` bytes long (keys longer
    /// than `by_len.len() - 1` are in the last entry).
    by_len: Vec<Vec<u16>>,
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

const LEN_BUCKETS: usize = 48;

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
            let found = self.nodes[node]
                .children
                .iter()
                .position(|c| keys_equal(&c.key, seg, self.nodes[node].case_insensitive));
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
            n.by_len = vec![Vec::new(); LEN_BUCKETS];
            for (i, c) in n.children.iter().enumerate() {
                n.by_len[c.key.len().min(LEN_BUCKETS - 1)].push(i as u16);
            }
        }
    }

    #[inline]
    fn lookup(&self, node: usize, key: &str) -> Option<&Child> {
        let n = &self.nodes[node];
        let bucket = n.by_len.get(key.len().min(LEN_BUCKETS - 1))?;
        bucket
            .iter()
            .map(|&i| &n.children[i as usize])
            .find(|c| keys_equal(&c.key, key, n.case_insensitive))
    }
}

#[inline]
fn keys_equal(a: &str, b: &str, case_insensitive: bool) -> bool {
    if case_insensitive {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

/// What is open while skipping: the first 32 levels inline, deeper ones
/// on the heap.
#[derive(Default)]
struct Stack {
    inline: [bool; 32],
    depth: usize,
    deep: Vec<bool>,
}

impl Stack {
    #[inline]
    fn push(&mut self, object: bool) {
        if self.depth < self.inline.len() {
            self.inline[self.depth] = object;
        } else {
            self.deep.push(object);
        }
        self.depth += 1;
    }

    #[inline]
    fn pop(&mut self) {
        self.depth -= 1;
        if self.depth >= self.inline.len() {
            self.deep.pop();
        }
    }

    #[inline]
    fn last(&self) -> Option<bool> {
        match self.depth {
            0 => None,
            d if d <= self.inline.len() => Some(self.inline[d - 1]),
            _ => self.deep.last().copied(),
        }
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    s: &'a str,
    i: usize,
    /// No backslash and no control character anywhere in the record.
    simple: bool,
}

fn err<T>(at: usize, what: &'static str) -> Result<T, ScanError> {
    Err(ScanError::Syntax { at, what })
}

impl<'a> Cursor<'a> {
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
        self.ws();
        self.b.get(self.i).copied()
    }

    #[inline]
    fn expect(&mut self, c: u8, what: &'static str) -> Result<(), ScanError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            err(self.i, what)
        }
    }

    /// A string, after its opening quote: (contents, whether escaped).
    #[inline]
    fn string(&mut self) -> Result<(&'a str, bool), ScanError> {
        let start = self.i;
        if self.simple {
            // most keys and many values are short: a plain loop over the
            // first bytes beats memchr's setup
            let short = &self.b[start..self.b.len().min(start + 16)];
            if let Some(end) = short.iter().position(|&c| c == b'"') {
                self.i = start + end + 1;
                return Ok((&self.s[start..start + end], false));
            }
            let Some(end) = memchr::memchr(b'"', &self.b[start..]) else {
                return err(self.b.len(), "a closing quote");
            };
            self.i = start + end + 1;
            // the whole input is UTF-8 and quotes are ASCII: char boundaries
            return Ok((&self.s[start..start + end], false));
        }
        let mut escaped = false;
        let mut i = start;
        loop {
            let Some(off) = memchr::memchr2(b'"', b'\\', &self.b[i..]) else {
                return err(self.b.len(), "a closing quote");
            };
            if self.b[i..i + off].iter().any(|&c| c < 0x20) {
                let at = i + self.b[i..i + off]
                    .iter()
                    .position(|&c| c < 0x20)
                    .unwrap_or(0);
                return err(at, "no control character in a string");
            }
            i += off;
            if self.b[i] == b'"' {
                self.i = i + 1;
                return Ok((&self.s[start..i], escaped));
            }
            escaped = true;
            i += 1;
            match self.b.get(i) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 1,
                Some(b'u') => {
                    let hex = self.b.get(i + 1..i + 5);
                    if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                        return err(i, "four hex digits after \\u");
                    }
                    i += 5;
                }
                _ => return err(i, "a valid escape after a backslash"),
            }
        }
    }

    /// A number (checked against the grammar): its text.
    fn number(&mut self) -> Result<&'a str, ScanError> {
        let start = self.i;
        let b = self.b;
        let mut i = start;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        let int_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let int_len = i - int_start;
        if int_len == 0 {
            return err(i, "a digit");
        }
        if int_len > 1 && b[int_start] == b'0' {
            return err(int_start, "no leading zero in a number");
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            let f = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == f {
                return err(i, "a digit after the decimal point");
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
                return err(i, "a digit in the exponent");
            }
        }
        self.i = i;
        Ok(&self.s[start..i])
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), ScanError> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            err(self.i, "a value")
        }
    }

    /// A scalar, or the start of a container (its opening bracket read).
    fn scalar_or_open(&mut self) -> Result<Val<'a>, ScanError> {
        let Some(c) = self.peek() else {
            return err(self.i, "a value");
        };
        Ok(match c {
            b'"' => {
                self.i += 1;
                let (raw, escaped) = self.string()?;
                Val::Str { raw, escaped }
            }
            b'-' | b'0'..=b'9' => Val::Num(self.number()?),
            b't' => {
                self.literal(b"true")?;
                Val::Bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                Val::Bool(false)
            }
            b'n' => {
                self.literal(b"null")?;
                Val::Null
            }
            b'[' => {
                self.i += 1;
                Val::Array
            }
            b'{' => {
                self.i += 1;
                Val::Object
            }
            _ => return err(self.i, "a value"),
        })
    }

    /// Skips the rest of a container whose opening bracket was read,
    /// iteratively (a stack of what is open, not of calls).
    fn skip_open(&mut self, first: Val<'a>) -> Result<(), ScanError> {
        // true: an object is open; false: an array (no allocation for
        // the depths records have)
        let mut stack = Stack::default();
        stack.push(matches!(first, Val::Object));
        // a fresh container: its first member (or its end) comes next
        let mut fresh = true;
        while let Some(in_object) = stack.last() {
            let close = if in_object { b'}' } else { b']' };
            let c = self.peek();
            if fresh && c == Some(close) {
                self.i += 1;
                stack.pop();
                fresh = false;
                continue;
            }
            if !fresh {
                match c {
                    Some(b',') => self.i += 1,
                    Some(x) if x == close => {
                        self.i += 1;
                        stack.pop();
                        continue;
                    }
                    _ => return err(self.i, "a comma or the end of the container"),
                }
            }
            fresh = false;
            if in_object {
                self.expect(b'"', "a key")?;
                self.string()?;
                self.expect(b':', "a colon after the key")?;
            }
            if let v @ (Val::Array | Val::Object) = self.scalar_or_open()? {
                stack.push(matches!(v, Val::Object));
                fresh = true;
            }
        }
        Ok(())
    }

    /// A value for a slot: a scalar; an array gives its first element when
    /// that is a scalar (a header logged as a list), else `Array`; the rest
    /// of a container is skipped.
    fn slot_value(&mut self) -> Result<Val<'a>, ScanError> {
        match self.scalar_or_open()? {
            Val::Array => {
                if self.peek() == Some(b']') {
                    self.i += 1;
                    return Ok(Val::Array);
                }
                let v = self.scalar_or_open()?;
                match v {
                    Val::Array | Val::Object => {
                        self.skip_open(v)?;
                        self.skip_open_rest(false)?;
                        Ok(Val::Array)
                    }
                    scalar => {
                        self.skip_open_rest(false)?;
                        Ok(scalar)
                    }
                }
            }
            Val::Object => {
                self.skip_open(Val::Object)?;
                Ok(Val::Object)
            }
            v => Ok(v),
        }
    }

    /// Skips the remaining members of a container one member into it.
    fn skip_open_rest(&mut self, in_object: bool) -> Result<(), ScanError> {
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
                        self.string()?;
                        self.expect(b':', "a colon after the key")?;
                    }
                    let v = self.scalar_or_open()?;
                    if matches!(v, Val::Array | Val::Object) {
                        self.skip_open(v)?;
                    }
                }
                _ => return err(self.i, "a comma or the end of the container"),
            }
        }
    }

    /// The members of an object whose `{` was read, looking up keys in `node`.
    fn object(
        &mut self,
        paths: &Paths,
        node: usize,
        out: &mut [Option<Val<'a>>],
    ) -> Result<(), ScanError> {
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.expect(b'"', "a key")?;
            let (key, escaped) = self.string()?;
            self.expect(b':', "a colon after the key")?;
            let key: Cow<'_, str> = if escaped {
                unescape(key).map_err(|at| ScanError::Syntax {
                    at: self.i,
                    what: at,
                })?
            } else {
                Cow::Borrowed(key)
            };
            match paths.lookup(node, &key) {
                Some(Child {
                    slot: Some(slot), ..
                }) => {
                    let slot = *slot as usize;
                    let v = self.slot_value()?;
                    if out[slot].is_some() {
                        return Err(ScanError::Duplicate { slot });
                    }
                    out[slot] = Some(v);
                }
                Some(Child {
                    node: Some(next), ..
                }) => match self.scalar_or_open()? {
                    Val::Object => self.object(paths, *next as usize, out)?,
                    v @ Val::Array => self.skip_open(v)?,
                    _ => {}
                },
                _ => {
                    let v = self.scalar_or_open()?;
                    if matches!(v, Val::Array | Val::Object) {
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
                _ => return err(self.i, "a comma or the end of the object"),
            }
        }
    }
}

/// Scans `s` (one JSON object) and puts the value at each path of `paths`
/// into its slot of `out` (which must have `paths.slots()` entries, all
/// `None`).
pub fn scan<'a>(s: &'a str, paths: &Paths, out: &mut [Option<Val<'a>>]) -> Result<(), ScanError> {
    // one pass (vectorized: no early exit): a backslash means an escape
    // somewhere, a control character unusual white space or an invalid string
    let simple = !s
        .bytes()
        .fold(false, |odd, c| odd | (c < 0x20) | (c == b'\\'));
    let mut c = Cursor {
        b: s.as_bytes(),
        s,
        i: 0,
        simple,
    };
    match c.peek() {
        Some(b'{') => c.i += 1,
        Some(b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
            // valid JSON, but not an object
            let v = c.scalar_or_open()?;
            if matches!(v, Val::Array | Val::Object) {
                c.skip_open(v)?;
            }
            c.ws();
            if c.i != c.b.len() {
                return err(c.i, "the end of the record");
            }
            return Err(ScanError::NotObject);
        }
        _ => return err(c.i, "a JSON object"),
    }
    c.object(paths, 0, out)?;
    c.ws();
    if c.i != c.b.len() {
        return err(c.i, "the end of the record");
    }
    Ok(())
}

/// Decodes a string's escapes (contents between the quotes, escapes already
/// checked for their syntax). Lone surrogates are refused, as serde_json
/// refuses them.
pub fn unescape(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    if !raw.contains('\\') {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('\\') {
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
