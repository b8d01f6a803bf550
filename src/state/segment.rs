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
//! magic "RGS3" | n_windows u32 | n_events u32 | min_t i64 | max_t i64 | origin u64 | base_t i64
//! window index: n_windows x (fp_lo u64, record offset u32), sorted by fp_lo, one per fp_lo
//! events:       n_events x (fp u64, t i64, pos_hash u32)
//! records:      window records, variable length (see `encode_window`): times
//!               and positions as varints (times relative to base_t)
//! ```
//! A first sighting with a UUID event id and an IPv4 client is a record of
//! about 50 bytes and 12 in the index. Hexadecimal event ids (UUIDs, 32-hex ids) are stored as 16
//! bytes, sequence numbers as their distance from the request's clock:
//! every byte is copied about six times on its way to disk. ("RGS2"
//! segments, every event id as text, are still read.) Binary addresses
//! would save a few more bytes, but parsing them cost more than the bytes
//! they save: measured, then dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::StateError;
use crate::detect::{LookupError, OwnedWindow, SightingLog, WindowRecord};
use crate::schema::Millis;

/// Windows per segment before it is sealed (default of [`SegmentOptions`]).
pub const SEGMENT_WINDOWS: usize = 4096;

/// Bytes of window records per segment before it is sealed (default of
/// [`SegmentOptions`]): about 13 000 first sightings with UUID event ids, so
/// [`SEGMENT_WINDOWS`] seals first unless event ids are long.
pub const SEGMENT_BYTES: usize = 1 << 20;

#[path = "segment_format.rs"]
mod format;
pub use format::SegmentView;
use format::{encode_window, OpenSegment};

/// A visitor of one segment's bytes.
pub type Bytes<'a> = dyn FnMut(&[u8]) + 'a;

/// Reads committed segments back from the state store.
pub trait SegmentSource {
    /// Calls `f` with the bytes of segment `seq` of `shard`, if it exists.
    fn with_segment(&self, shard: u32, seq: u64, f: &mut Bytes<'_>) -> Result<bool, StateError>;
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
    /// The same segments by (newest time, sequence): expiry takes them from
    /// the front instead of walking every kept segment at every commit
    /// (`run` seals a segment per commit: hundreds a second, kept for the
    /// retention).
    by_time: BTreeSet<(Millis, u64)>,
    /// Their origins, counted: the rebuild position without a walk.
    origins: BTreeMap<u64, usize>,
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
            by_time: BTreeSet::new(),
            origins: BTreeMap::new(),
            origin: 0,
            store_reads: 0,
        }
    }

    /// How this log cuts and caches segments.
    pub fn options(&self) -> SegmentOptions {
        self.opts
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
        self.keep(seq, max_t, origin);
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Registers a kept segment in `max_t` and its two orders.
    fn keep(&mut self, seq: u64, t: Millis, origin: u64) {
        if let Some((t0, o0)) = self.max_t.insert(seq, (t, origin)) {
            self.unindex(seq, t0, o0);
        }
        self.by_time.insert((t, seq));
        *self.origins.entry(origin).or_insert(0) += 1;
    }

    fn unindex(&mut self, seq: u64, t: Millis, origin: u64) {
        self.by_time.remove(&(t, seq));
        if let std::collections::btree_map::Entry::Occupied(mut e) = self.origins.entry(origin) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
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
        self.origins.keys().next().copied()
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
        self.keep(seq, self.open.max_t, self.origin);
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
        let mut gone = Vec::new();
        while let Some(&(t, s)) = self.by_time.first() {
            if t >= keep_from {
                break;
            }
            gone.push(s);
            let (_, origin) = self.max_t.remove(&s).expect("indexed segments are kept");
            self.unindex(s, t, origin);
        }
        // in sequence order, as they are deleted
        gone.sort_unstable();
        for s in &gone {
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
        let o = &mut self.open;
        encode_window(&mut o.records, o.base_t, rec, &mut o.dict);
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
            .map_err(|e| LookupError::Io(e.to_string()))?;
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
#[path = "segment_tests.rs"]
mod tests;
