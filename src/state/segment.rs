//! Sighting segments: the persisted form of the detector's [`SightingLog`].
//!
//! Appends go to an open segment in memory. A segment is sealed when it is
//! full or at a commit, and sealed segments are written to the store as one
//! value each, in the same atomic write as the offsets they cover. A segment
//! is deleted whole once every record in it has left the live window, so disk
//! use follows the window, and the segments of a shard form an append-only log
//! keyed by sequence number, which turns deletes of a prefix into one range
//! delete.
//!
//! Layout of a sealed segment (little endian):
//! ```text
//! magic "RGS2" | n_windows u32 | n_events u32 | min_t i64 | max_t i64 | origin u64 | base_t i64
//! window index: n_windows x (fp_lo u64, record offset u32), sorted by fp_lo, one per fp_lo
//! events:       n_events x (fp u64, t i64, pos_hash u32)
//! records:      window records, variable length (see `encode_window`): times
//!               and positions as varints (times relative to base_t)
//! ```
//! About 75 bytes per first sighting with a UUID event id and an IPv4 client.
//! (Binary UUIDs and addresses would halve that, but parsing them cost more
//! CPU than the bytes they save: measured, then dropped.)
//! ```text
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::detect::{LookupError, OwnedWindow, Position, SightingInfo, SightingLog, WindowRecord};
use crate::schema::Millis;

const MAGIC: &[u8; 4] = b"RGS2";
const HEADER: usize = 4 + 4 + 4 + 8 + 8 + 8 + 8;
const INDEX_ENTRY: usize = 12;
const EVENT_ENTRY: usize = 20;

/// Windows per segment before it is sealed (default of [`SegmentOptions`]).
pub const SEGMENT_WINDOWS: usize = 4096;

/// Bytes of window records per segment before it is sealed (default of
/// [`SegmentOptions`]): about 13 000 first sightings with UUID event ids, so
/// [`SEGMENT_WINDOWS`] seals first unless event ids are long.
pub const SEGMENT_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
#[error("corrupt sighting segment {seq}: {what}")]
pub struct CorruptSegment {
    pub seq: u64,
    pub what: &'static str,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_info(out: &mut Vec<u8>, base_t: Millis, s: &SightingInfo<&str>) {
    put_varint(out, zigzag(s.received_at.wrapping_sub(base_t)));
    put_varint(out, s.pos.source as u64);
    put_varint(out, s.pos.offset);
    put_str(out, s.event_id);
    put_str(out, s.client_ip);
}

/// A window record: high half of the fingerprint (the low half is the index
/// key), the first sighting, and the previous window's start if any.
fn encode_window(out: &mut Vec<u8>, base_t: Millis, w: &WindowRecord<&str>) {
    out.extend_from_slice(&((w.fp >> 64) as u64).to_le_bytes());
    put_info(out, base_t, &w.first);
    match &w.prev {
        Some(p) => {
            out.push(1);
            put_info(out, base_t, p);
        }
        None => out.push(0),
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|s| u32::from_le_bytes(s.try_into().unwrap()))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
    }
    fn i64(&mut self) -> Option<i64> {
        self.u64().map(|v| v as i64)
    }
    fn varint(&mut self) -> Option<u64> {
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
    fn str(&mut self) -> Option<String> {
        let n = self.varint()? as usize;
        Some(std::str::from_utf8(self.take(n)?).ok()?.to_string())
    }
    fn info(&mut self, base_t: Millis) -> Option<SightingInfo<String>> {
        Some(SightingInfo {
            received_at: base_t.wrapping_add(unzigzag(self.varint()?)),
            pos: Position::new(u32::try_from(self.varint()?).ok()?, self.varint()?),
            event_id: self.str()?,
            client_ip: self.str()?,
        })
    }
    /// The high fingerprint half and the first sighting's time, without the strings.
    fn window_head(&mut self, base_t: Millis) -> Option<(u64, Millis)> {
        let hi = self.u64()?;
        let t = base_t.wrapping_add(unzigzag(self.varint()?));
        Some((hi, t))
    }
    fn window(&mut self, lo: u64, base_t: Millis) -> Option<OwnedWindow> {
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
        if b.len() < HEADER || &b[..4] != MAGIC {
            return Err(bad("bad header"));
        }
        let mut r = Reader { b, at: 4 };
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
            n_windows,
            n_events,
            min_t,
            max_t,
            origin,
            base_t,
        })
    }

    fn index_entry(&self, i: usize) -> (u64, u32) {
        let o = HEADER + i * INDEX_ENTRY;
        (
            u64::from_le_bytes(self.b[o..o + 8].try_into().unwrap()),
            u32::from_le_bytes(self.b[o + 8..o + 12].try_into().unwrap()),
        )
    }

    fn records_start(&self) -> usize {
        HEADER + self.n_windows * INDEX_ENTRY + self.n_events * EVENT_ENTRY
    }

    fn reader_at(&self, off: u32) -> Option<Reader<'a>> {
        let at = self.records_start().checked_add(off as usize)?;
        Some(Reader { b: self.b, at })
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
struct OpenSegment {
    /// (fp_lo, offset into `records`), in append order
    index: Vec<(u64, u32)>,
    events: Vec<(u64, Millis, u32)>,
    records: Vec<u8>,
    min_t: Millis,
    max_t: Millis,
    /// Time the record encoding is relative to (the first record's).
    base_t: Millis,
}

impl OpenSegment {
    fn is_empty(&self) -> bool {
        self.index.is_empty() && self.events.is_empty()
    }

    fn note_time(&mut self, t: Millis) {
        if self.is_empty() {
            self.min_t = t;
            self.max_t = t;
            self.base_t = t;
        } else {
            self.min_t = self.min_t.min(t);
            self.max_t = self.max_t.max(t);
        }
    }

    fn find(&self, fp: u128) -> Option<OwnedWindow> {
        let lo = fp as u64;
        let &(_, off) = self.index.iter().rev().find(|(k, _)| *k == lo)?;
        Reader {
            b: &self.records,
            at: off as usize,
        }
        .window(lo, self.base_t)
        .filter(|w| w.fp == fp)
    }

    fn seal(&mut self, origin: u64) -> Vec<u8> {
        // stable sort, then keep the last appended record of each fingerprint
        let mut idx = std::mem::take(&mut self.index);
        idx.sort_by_key(|e| e.0);
        let mut dedup: Vec<(u64, u32)> = Vec::with_capacity(idx.len());
        for e in idx {
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
        self.events.clear();
        self.records.clear();
        out
    }
}

/// Reads committed segments back from the state store.
pub trait SegmentSource {
    /// Calls `f` with the bytes of segment `seq` of `shard`, if it exists.
    fn with_segment(&self, shard: u32, seq: u64, f: &mut dyn FnMut(&[u8])) -> Result<bool, String>;
}

/// How segments are cut and cached (from `[state]`). Changes speed and
/// memory, never what is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentOptions {
    /// Window records per segment before it is sealed.
    pub max_windows: usize,
    /// Encoded bytes of records per segment before it is sealed (long event
    /// ids make records large: this keeps a segment, and a cache entry, small).
    pub max_bytes: usize,
    /// Bytes of durable segments kept in memory for evidence lookups.
    pub cache_bytes: usize,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            max_windows: SEGMENT_WINDOWS,
            max_bytes: SEGMENT_BYTES,
            cache_bytes: 64 << 20,
        }
    }
}

/// The [`SightingLog`] of one shard: open segment, sealed segments that are
/// not yet durable, a bounded cache of durable segments, and the store behind
/// them.
///
/// A sealed segment is written to the store by the next commit. Until the
/// engine says that commit is durable ([`SegmentLog::mark_durable`]) it stays
/// in `pending`, whatever the cache budget: the store does not have it yet,
/// so it is the only copy. Only durable segments are cached and evicted.
pub struct SegmentLog<S: SegmentSource> {
    shard: u32,
    source: S,
    opts: SegmentOptions,
    /// Sequence number of the open segment.
    next_seq: u64,
    open: OpenSegment,
    /// Sealed and not yet durable in the store, by sequence.
    pending: BTreeMap<u64, Arc<Vec<u8>>>,
    /// Of `pending`, those not yet handed to a commit ([`SegmentLog::take_sealed`]).
    unhanded: Vec<u64>,
    /// Recent durable segments, by sequence.
    cache: BTreeMap<u64, Arc<Vec<u8>>>,
    cache_bytes: usize,
    /// Newest time and origin of each segment that exists in the store (or is pending).
    max_t: BTreeMap<u64, (Millis, u64)>,
    /// Input offset of the batch being appended (see [`SegmentLog::set_origin`]).
    origin: u64,
    /// Lookups that had to go to the store.
    pub store_reads: u64,
}

impl<S: SegmentSource> SegmentLog<S> {
    pub fn new(shard: u32, source: S, next_seq: u64, opts: SegmentOptions) -> Self {
        SegmentLog {
            shard,
            source,
            opts: SegmentOptions {
                max_windows: opts.max_windows.max(1),
                max_bytes: opts.max_bytes.max(1),
                cache_bytes: opts.cache_bytes,
            },
            next_seq,
            open: OpenSegment::default(),
            pending: BTreeMap::new(),
            unhanded: Vec::new(),
            cache: BTreeMap::new(),
            cache_bytes: 0,
            max_t: BTreeMap::new(),
            origin: 0,
            store_reads: 0,
        }
    }

    /// Sequence number the next segment will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Segments currently kept (stored or pending).
    pub fn segment_count(&self) -> usize {
        self.max_t.len()
    }

    /// Bytes of durable segments cached.
    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// Bytes of sealed segments waiting for a durable commit.
    pub fn pending_bytes(&self) -> usize {
        self.pending.values().map(|b| b.len()).sum()
    }

    /// Registers a segment found in the store at startup.
    pub fn note_existing(&mut self, seq: u64, max_t: Millis, origin: u64) {
        self.max_t.insert(seq, (max_t, origin));
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// The input offset at which the records appended from now on start
    /// (the position of the batch). Segments remember it: re-reading the
    /// source from the origin of the oldest kept segment rebuilds the state.
    pub fn set_origin(&mut self, offset: u64) {
        if self.open.is_empty() {
            self.origin = offset;
        }
    }

    /// Where to start re-reading the source to rebuild every live segment;
    /// `None` when no segment is kept (nothing before `current` matters).
    pub fn rebuild_from(&self) -> Option<u64> {
        self.max_t.values().map(|(_, o)| *o).min()
    }

    fn widen(&self, seg: u32) -> u64 {
        // the newest possible sequence with these low 32 bits
        self.next_seq - (self.next_seq as u32).wrapping_sub(seg) as u64
    }

    fn seal(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.max_t.insert(seq, (self.open.max_t, self.origin));
        let bytes: Arc<Vec<u8>> = Arc::new(self.open.seal(self.origin));
        self.pending.insert(seq, bytes);
        self.unhanded.push(seq);
    }

    /// Seals the open segment and hands over every segment sealed since the
    /// last call, to be written in the next commit. They stay findable here
    /// until [`SegmentLog::mark_durable`].
    pub fn take_sealed(&mut self) -> Vec<(u64, Arc<Vec<u8>>)> {
        self.seal();
        let seqs = std::mem::take(&mut self.unhanded);
        seqs.into_iter()
            .filter_map(|q| self.pending.get(&q).map(|b| (q, b.clone())))
            .collect()
    }

    /// Every segment handed over by [`SegmentLog::take_sealed`] is now in the
    /// store (its commit succeeded): it moves from `pending` to the cache,
    /// which may evict it.
    pub fn mark_durable(&mut self) {
        let keep: Vec<u64> = self.unhanded.clone();
        let pending = std::mem::take(&mut self.pending);
        for (seq, bytes) in pending {
            if keep.contains(&seq) {
                self.pending.insert(seq, bytes);
                continue;
            }
            self.cache_bytes += bytes.len();
            self.cache.insert(seq, bytes);
        }
        while self.cache_bytes > self.opts.cache_bytes {
            let Some((_, b)) = self.cache.pop_first() else {
                break;
            };
            self.cache_bytes -= b.len();
        }
    }

    /// Forgets the segments whose every record is older than `keep_from` and
    /// returns their sequence numbers, to be deleted in the next commit.
    pub fn expire(&mut self, keep_from: Millis) -> Vec<u64> {
        let gone: Vec<u64> = self
            .max_t
            .iter()
            .filter(|(_, &(t, _))| t < keep_from)
            .map(|(&s, _)| s)
            .collect();
        for s in &gone {
            self.max_t.remove(s);
            if let Some(b) = self.cache.remove(s) {
                self.cache_bytes -= b.len();
            }
            // a pending segment may expire too: nothing live refers to it,
            // and its deletion follows its write in commit order
            if self.pending.remove(s).is_some() {
                self.unhanded.retain(|q| q != s);
            }
        }
        gone
    }

    /// The lowest sequence still kept; every segment below it is deleted.
    pub fn floor(&self) -> u64 {
        self.max_t.keys().next().copied().unwrap_or(self.next_seq)
    }

    fn append_common(&mut self, t: Millis) {
        self.open.note_time(t);
    }

    fn full(&self) -> bool {
        self.open.index.len() >= self.opts.max_windows
            || self.open.records.len() >= self.opts.max_bytes
    }
}

impl<S: SegmentSource> SightingLog for SegmentLog<S> {
    fn append_window(&mut self, rec: &WindowRecord<&str>, keep_until: Millis) -> u32 {
        if self.full() {
            self.seal();
        }
        self.append_common(rec.first.received_at);
        self.append_common(keep_until.max(rec.first.received_at));
        let off = self.open.records.len() as u32;
        encode_window(&mut self.open.records, self.open.base_t, rec);
        self.open.index.push((rec.fp as u64, off));
        self.next_seq as u32
    }

    fn append_event(&mut self, fp: u64, received_at: Millis, pos_hash: u32) {
        self.append_common(received_at);
        self.open.events.push((fp, received_at, pos_hash));
    }

    fn window(&mut self, seg: u32, fp: u128) -> Result<Option<OwnedWindow>, LookupError> {
        let seq = self.widen(seg);
        if seq == self.next_seq {
            return Ok(self.open.find(fp));
        }
        let parse = |b: &[u8]| {
            SegmentView::parse(seq, b)
                .map(|v| v.find(fp))
                .map_err(|e| LookupError::Corrupt(e.to_string()))
        };
        if let Some(b) = self.pending.get(&seq).or_else(|| self.cache.get(&seq)) {
            return parse(b);
        }
        self.store_reads += 1;
        let mut found = Ok(None);
        let exists = self
            .source
            .with_segment(self.shard, seq, &mut |b| found = parse(b))
            .map_err(LookupError::Io)?;
        if !exists {
            // A live entry points here, so the segment must exist: a miss is
            // lost state, never a fingerprint collision (which would silently
            // turn a replay into a first sighting).
            return Err(LookupError::Missing {
                shard: self.shard,
                seq,
            });
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoStore;
    impl SegmentSource for NoStore {
        fn with_segment(&self, _: u32, _: u64, _: &mut dyn FnMut(&[u8])) -> Result<bool, String> {
            Ok(false)
        }
    }

    fn info(t: Millis, id: &str) -> SightingInfo<&str> {
        SightingInfo {
            received_at: t,
            pos: Position::new(1, t as u64),
            event_id: id,
            client_ip: "10.0.0.1",
        }
    }

    #[test]
    fn find_in_open_sealed_and_parsed() {
        let mut log = SegmentLog::new(0, NoStore, 0, SegmentOptions::default());
        log.set_origin(1234);
        let a = log.append_window(
            &WindowRecord {
                fp: 7 | (1u128 << 64),
                first: info(10, "a"),
                prev: None,
            },
            10,
        );
        let b = log.append_window(
            &WindowRecord {
                fp: 7 | (1u128 << 64),
                first: info(5, "b"),
                prev: Some(info(1, "p")),
            },
            12,
        );
        log.append_event(99, 3, 42);
        assert_eq!(a, b);
        let w = log.window(a, 7 | (1u128 << 64)).unwrap().unwrap();
        assert_eq!(w.first.event_id, "b");
        assert!(
            log.window(a, 7 | (2u128 << 64)).unwrap().is_none(),
            "full fingerprint is checked"
        );
        let sealed = log.take_sealed();
        assert_eq!(sealed.len(), 1);
        let w = log.window(a, 7 | (1u128 << 64)).unwrap().unwrap();
        assert_eq!(w.first.event_id, "b");
        assert_eq!(w.prev.unwrap().event_id, "p");
        let v = SegmentView::parse(0, &sealed[0].1).unwrap();
        assert_eq!(
            (v.min_t, v.max_t),
            (3, 12),
            "max_t covers what a record supersedes"
        );
        assert_eq!(v.windows().count(), 1);
        assert_eq!(v.events().collect::<Vec<_>>(), vec![(99, 3, 42)]);
        assert!(log.expire(12).is_empty());
        assert_eq!(log.expire(13), vec![0]);
        assert_eq!(log.segment_count(), 0);
    }

    fn round_trip(x: &str) -> String {
        let mut b = Vec::new();
        put_str(&mut b, x);
        Reader { b: &b, at: 0 }.str().unwrap()
    }

    proptest::proptest! {
        #[test]
        fn any_string_round_trips(x in ".{0,60}") {
            proptest::prop_assert_eq!(round_trip(&x), x);
        }

        #[test]
        fn varints_round_trip(v in proptest::num::i64::ANY) {
            let mut b = Vec::new();
            put_varint(&mut b, zigzag(v));
            proptest::prop_assert_eq!(unzigzag(Reader { b: &b, at: 0 }.varint().unwrap()), v);
        }
    }

    #[test]
    fn corrupt_segments_are_errors() {
        assert!(SegmentView::parse(1, b"nope").is_err());
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&1000u32.to_le_bytes());
        b.extend_from_slice(&[0u8; 36]);
        assert!(SegmentView::parse(1, &b).is_err());
    }
}
