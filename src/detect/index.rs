//! The live index, in memory: nonce fingerprint -> segment of its window
//! record (12 bytes a slot, see [`FpMap`]), event-id fingerprint -> (time, position digest).
//!
//! Times are kept as the low 32 bits of epoch milliseconds and rebuilt against
//! the largest time seen; that is exact while an entry is younger than 2^31 ms
//! (24 days), which sweeping and the retention limit guarantee.

use std::collections::VecDeque;

pub use super::fp_map::FpMap;
use super::sighting::SegRef;
use crate::schema::Millis;

#[inline]
pub fn pack(t: Millis, aux: u32) -> u64 {
    (t as u32 as u64) | ((aux as u64) << 32)
}

#[inline]
pub fn aux(v: u64) -> u32 {
    (v >> 32) as u32
}

/// Rebuilds the full time of a packed entry; `max_seen` is the largest time
/// seen so far and must not be more than 2^31 ms after it.
#[inline]
pub fn time(v: u64, max_seen: Millis) -> Millis {
    max_seen - (max_seen as u32).wrapping_sub(v as u32) as Millis
}

/// How many segments `seg` is behind `newest` (segment references wrap
/// around at 2^32, and the live ones span far less).
#[inline]
fn age(newest: SegRef, seg: SegRef) -> u32 {
    newest.wrapping_sub(seg)
}

/// Cache lines of the nonce table brought in ahead of an insert.
const NONCE_PREFETCH_LINES: usize = 3;

/// Live index of one shard.
///
/// A window start is found by its nonce fingerprint and points to the
/// segment of the sighting log that holds its record (12 bytes a slot: with
/// 10 M live windows, ~65 MB less than with its time beside it). Its time is
/// in the record; the index keeps, per segment, the newest window start it
/// put there, which tells which entries may still be live without reading
/// the record, and which to drop when the watermark passes a segment.
#[derive(Default)]
pub struct Index {
    /// low 64 bits of the (key_id, nonce) fingerprint -> segment of the window record
    pub nonces: FpMap<SegRef>,
    /// event-id fingerprint -> (received_at, position digest), for every live
    /// event that is not the current window start of its nonce
    pub events: FpMap<u64>,
    /// (segment, newest window start put there), oldest segment first
    segs: VecDeque<(SegRef, Millis)>,
}

impl Index {
    pub fn len(&self) -> usize {
        self.nonces.len() + self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate heap bytes (the tables' slots and the segment list).
    pub fn heap_bytes(&self) -> usize {
        self.nonces.heap_bytes()
            + self.events.heap_bytes()
            + self.segs.capacity() * std::mem::size_of::<(SegRef, Millis)>()
    }

    /// Points `fp` at the window that starts at `t` in segment `seg`.
    pub fn insert_window(&mut self, fp: u64, t: Millis, seg: SegRef) {
        self.nonces.insert(fp, seg);
        match self.segs.back().copied() {
            Some((s, m)) if s == seg => {
                if t > m {
                    self.segs.back_mut().expect("just seen").1 = t;
                }
            }
            // segments come in order; an older one only if a log hands them out otherwise
            Some((s, _)) if age(s, seg) < u32::MAX / 2 => match self.seg_slot(s, seg) {
                Ok(i) => self.segs[i].1 = self.segs[i].1.max(t),
                Err(i) => self.segs.insert(i, (seg, t)),
            },
            _ => self.segs.push_back((seg, t)),
        }
    }

    /// The newest window start the index put in segment `seg`, if it may
    /// still hold live ones.
    pub fn segment_newest(&self, seg: SegRef) -> Option<Millis> {
        let &(newest, _) = self.segs.back()?;
        self.seg_slot(newest, seg).ok().map(|i| self.segs[i].1)
    }

    /// Where `seg` is (or would go) in `segs`, which is in segment order:
    /// ages relative to `newest`, a segment no newer than it, fall along it.
    fn seg_slot(&self, newest: SegRef, seg: SegRef) -> Result<usize, usize> {
        self.segs
            .binary_search_by(|&(x, _)| age(newest, seg).cmp(&age(newest, x)))
    }

    /// Brings the slots of an event-id fingerprint and of a nonce
    /// fingerprint into cache ahead of their lookups ([`FpMap::prefetch`]).
    #[inline]
    pub fn prefetch(&self, event: u64, nonce: Option<u64>) {
        // an event id is mostly looked up (and found absent where its run
        // says so); a nonce mostly inserted, which walks to the end of the
        // run to move it up by one
        self.events.prefetch(event, 1);
        if let Some(n) = nonce {
            self.nonces.prefetch(n, NONCE_PREFETCH_LINES);
        }
    }

    /// The segment of `fp`'s window, unless every window start in it is
    /// before `keep_from` (then the window is no longer live).
    #[inline]
    pub fn window_segment(&self, fp: u64, keep_from: Millis) -> Option<SegRef> {
        let seg = *self.nonces.get(&fp)?;
        self.segment_newest(seg)
            .filter(|&t| t >= keep_from)
            .map(|_| seg)
    }

    /// Drops entries whose time is before `keep_from`: event ids by their
    /// own time, window starts with their segment once its newest is.
    pub fn sweep(&mut self, keep_from: Millis, max_seen: Millis) {
        self.events.retain(|_, v| time(*v, max_seen) >= keep_from);
        let Some(&(newest, _)) = self.segs.back() else {
            return;
        };
        let mut dead = Vec::new();
        self.segs.retain(|&(s, t)| {
            if t < keep_from {
                dead.push(s);
            }
            t >= keep_from
        });
        if dead.is_empty() {
            return;
        }
        // Usually the dead segments are the oldest ones: an entry is dead
        // when it is older than the oldest survivor. The others (a segment
        // of late requests) are searched.
        let oldest_kept = self.segs.front().map(|&(s, _)| age(newest, s));
        let rest: Vec<u32> = match oldest_kept {
            Some(o) => dead
                .iter()
                .map(|&s| age(newest, s))
                .filter(|&a| a < o)
                .rev()
                .collect(),
            None => Vec::new(),
        };
        self.nonces.retain(|_, &mut seg| {
            let a = age(newest, seg);
            match oldest_kept {
                None => false,
                Some(o) => a <= o && (rest.is_empty() || rest.binary_search(&a).is_err()),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_time_round_trips_within_24_days() {
        let max = 1_764_291_723_004i64;
        for age in [0i64, 1, 390_000, 7 * 86_400_000, (1 << 31) - 1] {
            let v = pack(max - age, 77);
            assert_eq!(time(v, max), max - age);
            assert_eq!(aux(v), 77);
        }
        // across a 2^32 boundary of the low bits
        let max = (5i64 << 32) + 10;
        assert_eq!(time(pack(max - 20, 0), max), max - 20);
    }

    #[test]
    fn window_starts_leave_with_their_segment() {
        // segments 7, 8, 9 (numbers near the wrap of 2^32 in a second round)
        for base in [7u32, u32::MAX - 1] {
            let mut ix = Index::default();
            let (a, b, c) = (base, base.wrapping_add(1), base.wrapping_add(2));
            ix.insert_window(1, 100, a);
            ix.insert_window(2, 150, a);
            // segment b holds only late requests: its newest is older than a's
            ix.insert_window(3, 120, b);
            ix.insert_window(4, 300, c);
            assert_eq!(ix.segment_newest(a), Some(150));
            assert_eq!(ix.segment_newest(b), Some(120));
            assert_eq!(ix.window_segment(1, 140), Some(a), "150 in a is live");
            assert_eq!(ix.window_segment(3, 140), None, "b's newest is 120");
            // nothing passed: everything stays
            ix.sweep(100, 300);
            assert_eq!(ix.nonces.len(), 4);
            // 130 passes b but not a (not the oldest: searched, not cut)
            ix.sweep(130, 300);
            assert_eq!(ix.nonces.len(), 3);
            assert!(ix.nonces.get(&3).is_none());
            assert_eq!(ix.segment_newest(b), None);
            assert_eq!(ix.window_segment(2, 130), Some(a));
            // 200 passes a: cut at the oldest survivor
            ix.sweep(200, 300);
            assert_eq!(ix.nonces.len(), 1);
            assert_eq!(ix.window_segment(4, 200), Some(c));
            // an entry moved to a newer segment stays with it
            ix.insert_window(4, 400, c.wrapping_add(1));
            ix.sweep(350, 400);
            assert_eq!(ix.window_segment(4, 350), Some(c.wrapping_add(1)));
            ix.sweep(401, 401);
            assert!(ix.is_empty());
        }
        // a segment handed out of order is placed in order
        let mut ix = Index::default();
        ix.insert_window(1, 10, 5);
        ix.insert_window(2, 30, 9);
        ix.insert_window(3, 20, 7);
        ix.insert_window(4, 25, 7);
        let order: Vec<_> = ix.segs.iter().copied().collect();
        assert_eq!(order, vec![(5, 10), (7, 25), (9, 30)]);
    }
}
