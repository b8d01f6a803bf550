//! The byte layout of a sealed segment (see the module docs of
//! [`super`]): encoding, the open segment being appended to, and a sealed
//! segment read in place.

use crate::detect::{OwnedWindow, Position, SightingInfo, WindowRecord};
use crate::schema::Millis;

/// Segments written now: event ids in hexadecimal forms stored as 16 bytes
/// ([`put_event_id`]).
pub(super) const MAGIC: &[u8; 4] = b"RGS3";
/// Segments written before, still read: every event id as text.
pub(super) const MAGIC_V2: &[u8; 4] = b"RGS2";
pub(super) const HEADER: usize = 4 + 4 + 4 + 8 + 8 + 8 + 8;
pub(super) const INDEX_ENTRY: usize = 12;
pub(super) const EVENT_ENTRY: usize = 20;

#[derive(Debug, thiserror::Error)]
#[error("corrupt sighting segment {seq}: {what}")]
pub struct CorruptSegment {
    pub seq: u64,
    pub what: &'static str,
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub(super) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(super) fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

/// A string as its length and bytes, as version 2 segments wrote event ids
/// and methods (read by [`Reader::str`]).
#[cfg(test)]
pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Strings of the open segment already written, by their offset in its
/// records: a repeated client address, path, client id or user agent is
/// written once per segment, then referred to. Keyed by the low half of the
/// string's 128-bit hash, the high half beside the offset: the full hash
/// stands for the string, as a 128-bit fingerprint stands for a (key,
/// nonce) in the replay rule, so a repeat is recognised without reading
/// back the bytes written (out of cache by then) nor keeping a copy.
pub(super) type Dict =
    hashbrown::HashMap<u64, (u64, u32), std::hash::BuildHasherDefault<Prehashed>>;

/// The hasher of a [`Dict`], whose keys are hashes already.
#[derive(Default)]
pub(super) struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // only u64 keys are hashed; anything else folded in, for completeness
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// The text of a field that is either a text or a code: `2·len` and its
/// bytes (a code is written as `2·code + 1`). Shared strings, methods and
/// event ids ([`put_shared`], [`put_method`], [`put_event_id`]); read by
/// [`Reader::text_or_code`].
fn put_text(out: &mut Vec<u8>, s: &str) {
    put_varint(out, 2 * s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A string that repeats across records: `2·len` and its bytes the first
/// time in the segment, then `2·offset + 1` (where the first one is).
pub(super) fn put_shared(out: &mut Vec<u8>, s: &str, dict: &mut Dict) {
    let h = xxhash_rust::xxh3::xxh3_128(s.as_bytes());
    let (lo, hi) = (h as u64, (h >> 64) as u64);
    match dict.entry(lo) {
        hashbrown::hash_map::Entry::Occupied(e) => {
            let &(e_hi, off) = e.get();
            if e_hi == hi {
                put_varint(out, 2 * off as u64 + 1);
                return;
            }
            // another string with the same low half: written out in full
            // (the first keeps the entry)
            put_text(out, s);
        }
        hashbrown::hash_map::Entry::Vacant(e) => {
            e.insert((hi, out.len() as u32));
            put_text(out, s);
        }
    }
}

fn put_opt_shared(out: &mut Vec<u8>, s: Option<&str>, dict: &mut Dict) {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_shared(out, s, dict);
        }
    }
}

pub(super) fn put_info(out: &mut Vec<u8>, base_t: Millis, s: &SightingInfo<&str>, dict: &mut Dict) {
    put_varint(out, zigzag(s.received_at.wrapping_sub(base_t)));
    put_varint(out, s.pos.source as u64);
    put_varint(out, s.pos.offset);
    put_event_id(out, s.event_id);
    put_shared(out, s.client_ip, dict);
    put_method(out, s.method);
    put_shared(out, s.path, dict);
    put_varint(out, s.status as u64);
    put_opt_shared(out, s.client_id, dict);
    put_opt_shared(out, s.user_agent, dict);
    match &s.seq {
        None => out.push(0),
        Some((key, n)) => {
            let (tag, v) = seq_number(*n, s.received_at);
            out.push(tag);
            put_shared(out, key, dict);
            put_varint(out, v);
        }
    }
}

/// The HTTP methods written as one byte ([`put_method`]), by code.
const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];

/// A request's method: `2·code + 1` for one of [`METHODS`] (one byte
/// instead of four to eight), `2·len` and its text for any other.
fn put_method(out: &mut Vec<u8>, m: &str) {
    match METHODS.iter().position(|&k| k == m) {
        Some(code) => out.push(2 * code as u8 + 1),
        None => put_text(out, m),
    }
}

/// An event id: `2·len` and its text, or `2·code + 1` and the 16 bytes of
/// a hexadecimal form ([`crate::detect::event_id::hex_code`]): UUIDs and
/// 32-hex ids, most gateways' and ours, are 17 bytes instead of 37 or 33.
/// Every byte of a record is copied half a dozen times on its way to disk
/// (the batch, the memtable, the log, the flush).
fn put_event_id(out: &mut Vec<u8>, id: &str) {
    match crate::detect::event_id::hex_code(id) {
        Some((code, v)) => {
            put_varint(out, 2 * u64::from(code) + 1);
            out.extend_from_slice(&v);
        }
        None => put_text(out, id),
    }
}

/// The scales of the sequence-number tags 2 to 4 (tag 1: the number
/// itself): counter nonces are mostly the client's clock in milliseconds,
/// microseconds or nanoseconds, a few units from the request's received_at
/// so scaled. Written as the distance from it, one to three bytes instead
/// of eight or nine: every byte of a segment is copied half a dozen times
/// on its way to disk.
const SEQ_SCALES: [(u8, i128); 3] = [(2, 1), (3, 1_000), (4, 1_000_000)];

/// A sequence number as (tag, varint value) for a request received at `t`.
fn seq_number(n: u64, t: Millis) -> (u8, u64) {
    let mut best = (1, n);
    for (tag, scale) in SEQ_SCALES {
        let d = n as i128 - t as i128 * scale;
        if let Ok(d) = i64::try_from(d) {
            let z = zigzag(d);
            if z < best.1 {
                best = (tag, z);
            }
        }
    }
    best
}

/// The sequence number a (tag, varint value) of [`seq_number`] stands for.
fn seq_number_of(tag: u8, v: u64, t: Millis) -> Option<u64> {
    if tag == 1 {
        return Some(v);
    }
    let &(_, scale) = SEQ_SCALES.iter().find(|(k, _)| *k == tag)?;
    u64::try_from(t as i128 * scale + unzigzag(v) as i128).ok()
}

/// A window record: high half of the fingerprint (the low half is the index
/// key), the first sighting, and the previous window's start if any.
pub(super) fn encode_window(
    out: &mut Vec<u8>,
    base_t: Millis,
    w: &WindowRecord<&str>,
    dict: &mut Dict,
) {
    out.extend_from_slice(&((w.fp >> 64) as u64).to_le_bytes());
    put_info(out, base_t, &w.first, dict);
    match &w.prev {
        Some(p) => {
            out.push(1);
            put_info(out, base_t, p, dict);
        }
        None => out.push(0),
    }
}

pub(super) struct Reader<'a> {
    pub(super) b: &'a [u8],
    pub(super) at: usize,
    /// Where the records start in `b` (shared strings refer to offsets
    /// from there).
    pub(super) base: usize,
    /// A segment of version 2 (event ids as text).
    pub(super) v2: bool,
}

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    pub(super) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    pub(super) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
    }
    pub(super) fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
    }
    pub(super) fn i64(&mut self) -> Option<i64> {
        self.u64().map(|v| v as i64)
    }
    pub(super) fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    pub(super) fn str(&mut self) -> Option<String> {
        let n = self.varint()? as usize;
        Some(std::str::from_utf8(self.take(n)?).ok()?.to_string())
    }
    /// A field [`put_text`] wrote as a text (`Ok`), or the code written
    /// in its place (`Err`).
    fn text_or_code(&mut self) -> Option<Result<String, u64>> {
        let v = self.varint()?;
        if v % 2 != 0 {
            return Some(Err(v / 2));
        }
        let n = usize::try_from(v / 2).ok()?;
        Some(Ok(std::str::from_utf8(self.take(n)?).ok()?.to_string()))
    }

    /// A method written by [`put_method`] (by `put_str` in a version 2
    /// segment).
    pub(super) fn method(&mut self) -> Option<String> {
        if self.v2 {
            return self.str();
        }
        match self.text_or_code()? {
            Ok(text) => Some(text),
            Err(code) => METHODS
                .get(usize::try_from(code).ok()?)
                .map(|m| m.to_string()),
        }
    }

    /// An event id written by [`put_event_id`] (by `put_str` in a
    /// version 2 segment).
    pub(super) fn event_id(&mut self) -> Option<String> {
        if self.v2 {
            return self.str();
        }
        match self.text_or_code()? {
            Ok(text) => Some(text),
            Err(code) => {
                let b: &[u8; 16] = self.take(16)?.try_into().ok()?;
                crate::detect::event_id::hex_text(u8::try_from(code).ok()?, b)
            }
        }
    }
    pub(super) fn info(&mut self, base_t: Millis) -> Option<SightingInfo<String>> {
        let received_at = base_t.wrapping_add(unzigzag(self.varint()?));
        Some(SightingInfo {
            received_at,
            pos: Position::new(u32::try_from(self.varint()?).ok()?, self.varint()?),
            event_id: self.event_id()?,
            client_ip: self.shared()?,
            method: self.method()?,
            path: self.shared()?,
            status: u16::try_from(self.varint()?).ok()?,
            client_id: self.opt_shared()?,
            user_agent: self.opt_shared()?,
            seq: match self.u8()? {
                0 => None,
                tag @ 1..=4 => {
                    let key = self.shared()?;
                    Some((key, seq_number_of(tag, self.varint()?, received_at)?))
                }
                _ => return None,
            },
        })
    }
    /// A string written by [`put_shared`].
    pub(super) fn shared(&mut self) -> Option<String> {
        let off = match self.text_or_code()? {
            Ok(text) => return Some(text),
            Err(off) => off,
        };
        let at = self.base.checked_add(usize::try_from(off).ok()?)?;
        // the first occurrence, before this one, written inline
        if at >= self.at {
            return None;
        }
        let mut r = Reader {
            b: self.b,
            at,
            base: self.base,
            v2: self.v2,
        };
        // an odd value there would refer to yet another place
        r.text_or_code()?.ok()
    }

    fn opt_shared(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.shared()?)),
            _ => None,
        }
    }

    /// The high fingerprint half and the first sighting's time, without the strings.
    pub(super) fn window_head(&mut self, base_t: Millis) -> Option<(u64, Millis)> {
        let hi = self.u64()?;
        let t = base_t.wrapping_add(unzigzag(self.varint()?));
        Some((hi, t))
    }
    pub(super) fn window(&mut self, lo: u64, base_t: Millis) -> Option<OwnedWindow> {
        let hi = self.u64()?;
        let first = self.info(base_t)?;
        let prev = match self.u8()? {
            0 => None,
            1 => Some(self.info(base_t)?),
            _ => return None,
        };
        Some(WindowRecord {
            fp: (hi as u128) << 64 | lo as u128,
            first,
            prev,
        })
    }
}

/// A sealed segment, read in place.
pub struct SegmentView<'a> {
    b: &'a [u8],
    /// Written before event ids were stored by form (see [`MAGIC_V2`]).
    v2: bool,
    n_windows: usize,
    n_events: usize,
    pub min_t: Millis,
    pub max_t: Millis,
    /// Input offset from which re-reading the source rebuilds this segment.
    pub origin: u64,
    base_t: Millis,
}

impl<'a> SegmentView<'a> {
    pub fn parse(seq: u64, b: &'a [u8]) -> Result<Self, CorruptSegment> {
        let bad = |what| CorruptSegment { seq, what };
        let v2 = match b.get(..4) {
            Some(m) if b.len() >= HEADER && m == MAGIC => false,
            Some(m) if b.len() >= HEADER && m == MAGIC_V2 => true,
            _ => return Err(bad("bad header")),
        };
        let mut r = Reader {
            b,
            at: 4,
            base: 0,
            v2,
        };
        let n_windows = r.u32().unwrap() as usize;
        let n_events = r.u32().unwrap() as usize;
        let min_t = r.i64().unwrap();
        let max_t = r.i64().unwrap();
        let origin = r.u64().unwrap();
        let base_t = r.i64().unwrap();
        let need = HEADER + n_windows * INDEX_ENTRY + n_events * EVENT_ENTRY;
        if b.len() < need {
            return Err(bad("truncated"));
        }
        Ok(SegmentView {
            b,
            v2,
            n_windows,
            n_events,
            min_t,
            max_t,
            origin,
            base_t,
        })
    }

    pub(super) fn index_entry(&self, i: usize) -> (u64, u32) {
        let o = HEADER + i * INDEX_ENTRY;
        (
            u64::from_le_bytes(self.b[o..o + 8].try_into().unwrap()),
            u32::from_le_bytes(self.b[o + 8..o + 12].try_into().unwrap()),
        )
    }

    pub(super) fn records_start(&self) -> usize {
        HEADER + self.n_windows * INDEX_ENTRY + self.n_events * EVENT_ENTRY
    }

    pub(super) fn reader_at(&self, off: u32) -> Option<Reader<'a>> {
        let at = self.records_start().checked_add(off as usize)?;
        Some(Reader {
            b: self.b,
            at,
            base: self.records_start(),
            v2: self.v2,
        })
    }

    /// The window record with fingerprint `fp`, if this segment holds it.
    pub fn find(&self, fp: u128) -> Option<OwnedWindow> {
        let lo = fp as u64;
        let (mut a, mut b) = (0, self.n_windows);
        while a < b {
            let m = (a + b) / 2;
            let (k, off) = self.index_entry(m);
            match k.cmp(&lo) {
                std::cmp::Ordering::Less => a = m + 1,
                std::cmp::Ordering::Greater => b = m,
                std::cmp::Ordering::Equal => {
                    return self
                        .reader_at(off)?
                        .window(lo, self.base_t)
                        .filter(|w| w.fp == fp)
                }
            }
        }
        None
    }

    /// (fingerprint, first sighting's time) of every window record (one per
    /// 64-bit fingerprint, the last appended); `None` for a damaged record.
    pub fn windows(&self) -> impl Iterator<Item = Option<(u128, Millis)>> + '_ {
        (0..self.n_windows).map(|i| {
            let (lo, off) = self.index_entry(i);
            let (hi, t) = self.reader_at(off)?.window_head(self.base_t)?;
            Some(((hi as u128) << 64 | lo as u128, t))
        })
    }

    /// Every window record in full (one per 64-bit fingerprint, the last
    /// appended); `None` for a damaged record.
    pub fn window_records(&self) -> impl Iterator<Item = Option<OwnedWindow>> + '_ {
        (0..self.n_windows).map(|i| {
            let (lo, off) = self.index_entry(i);
            self.reader_at(off)?.window(lo, self.base_t)
        })
    }

    /// Every live-event record: (fingerprint, time, position digest).
    pub fn events(&self) -> impl Iterator<Item = (u64, Millis, u32)> + '_ {
        let base = HEADER + self.n_windows * INDEX_ENTRY;
        (0..self.n_events).map(move |i| {
            let o = base + i * EVENT_ENTRY;
            let b = &self.b[o..o + EVENT_ENTRY];
            (
                u64::from_le_bytes(b[..8].try_into().unwrap()),
                i64::from_le_bytes(b[8..16].try_into().unwrap()),
                u32::from_le_bytes(b[16..20].try_into().unwrap()),
            )
        })
    }
}

/// The segment being appended to.
#[derive(Default)]
pub(super) struct OpenSegment {
    /// (fp_lo, offset into `records`), in append order
    pub(super) index: Vec<(u64, u32)>,
    pub(super) events: Vec<(u64, Millis, u32)>,
    pub(super) records: Vec<u8>,
    /// The shared strings of `records`.
    pub(super) dict: Dict,
    pub(super) min_t: Millis,
    pub(super) max_t: Millis,
    /// Time the record encoding is relative to (the first record's).
    pub(super) base_t: Millis,
}

impl OpenSegment {
    pub(super) fn is_empty(&self) -> bool {
        self.index.is_empty() && self.events.is_empty()
    }

    pub(super) fn note_time(&mut self, t: Millis) {
        if self.is_empty() {
            self.min_t = t;
            self.max_t = t;
            self.base_t = t;
        } else {
            self.min_t = self.min_t.min(t);
            self.max_t = self.max_t.max(t);
        }
    }

    pub(super) fn find(&self, fp: u128) -> Option<OwnedWindow> {
        let lo = fp as u64;
        let &(_, off) = self.index.iter().rev().find(|(k, _)| *k == lo)?;
        Reader {
            b: &self.records,
            at: off as usize,
            base: 0,
            v2: false,
        }
        .window(lo, self.base_t)
        .filter(|w| w.fp == fp)
    }

    pub(super) fn seal(&mut self, origin: u64) -> Vec<u8> {
        // by fingerprint, then offset (the order records were appended: a
        // stable sort by fingerprint), then keep the last appended record of
        // each. A radix sort: the fingerprints are random, and a comparison
        // sort (`sort_unstable` of the pairs) mispredicted half its branches
        // (1.7 % of a one-core scan's samples)
        radsort::sort_by_key(&mut self.index, |e| e.0);
        let mut dedup: Vec<(u64, u32)> = Vec::with_capacity(self.index.len());
        for &e in &self.index {
            match dedup.last_mut() {
                Some(last) if last.0 == e.0 => *last = e,
                _ => dedup.push(e),
            }
        }
        let mut out = Vec::with_capacity(
            HEADER
                + dedup.len() * INDEX_ENTRY
                + self.events.len() * EVENT_ENTRY
                + self.records.len(),
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(dedup.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.events.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.min_t.to_le_bytes());
        out.extend_from_slice(&self.max_t.to_le_bytes());
        out.extend_from_slice(&origin.to_le_bytes());
        out.extend_from_slice(&self.base_t.to_le_bytes());
        for (k, off) in &dedup {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
        }
        for (fp, t, h) in &self.events {
            out.extend_from_slice(&fp.to_le_bytes());
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&h.to_le_bytes());
        }
        out.extend_from_slice(&self.records);
        self.index.clear();
        self.events.clear();
        self.records.clear();
        self.dict.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::timestamp::{MAX_MILLIS, MIN_MILLIS};

    /// Every method reads back as written: the common ones in one byte.
    #[test]
    fn methods_read_back_as_written() {
        for m in METHODS
            .iter()
            .copied()
            .chain(["", "get", "PROPFIND", "GETX", "P"])
        {
            let mut b = Vec::new();
            put_method(&mut b, m);
            if METHODS.contains(&m) {
                assert_eq!(b.len(), 1, "{m}");
            }
            let mut r = Reader {
                b: &b,
                at: 0,
                base: 0,
                v2: false,
            };
            assert_eq!(r.method().as_deref(), Some(m));
            assert_eq!(r.at, b.len());
        }
    }

    /// Every number reads back as written, whatever its distance from the
    /// request's clock; counters of the clock in ms, µs or ns take 1 to 3
    /// bytes.
    #[test]
    fn sequence_numbers_read_back_as_written() {
        let times = [MIN_MILLIS, -1, 0, 1, 1_793_491_200_000, MAX_MILLIS];
        for t in times {
            let mut ns = vec![0, 1, 9, 127, 128, u64::MAX, u64::MAX - 1, 1 << 63];
            for scale in [1i128, 1_000, 1_000_000] {
                for d in [-300_000i128, -1, 0, 1, 5_000, 1 << 40] {
                    if let Ok(n) = u64::try_from(t as i128 * scale + d) {
                        ns.push(n);
                    }
                }
            }
            for n in ns {
                let (tag, v) = seq_number(n, t);
                assert_eq!(seq_number_of(tag, v, t), Some(n), "{n} at {t}");
                let mut b = Vec::new();
                put_varint(&mut b, v);
                let mut plain = Vec::new();
                put_varint(&mut plain, n);
                assert!(b.len() <= plain.len(), "{n} at {t}");
            }
        }
        let t = 1_793_491_200_000;
        for n in [
            t as u64 + 3,
            t as u64 * 1_000 + 1,
            t as u64 * 1_000_000 - 40_000,
        ] {
            let (tag, v) = seq_number(n, t);
            assert!(tag > 1 && v < 1 << 21, "{n}: {tag} {v}");
        }
        // a tag beyond the known ones is damage, not a number
        assert_eq!(seq_number_of(5, 0, t), None);
        assert_eq!(seq_number_of(4, zigzag(-1), 0), None);
    }
}
