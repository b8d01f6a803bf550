//! The live index, in memory: nonce fingerprint -> segment of its window
//! record (12 bytes an entry), event-id fingerprint -> (time, position digest).
//!
//! Times are kept as the low 32 bits of epoch milliseconds and rebuilt against
//! the largest time seen; that is exact while an entry is younger than 2^31 ms
//! (24 days), which sweeping and the retention limit guarantee.

use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use super::sighting::SegRef;
use crate::schema::Millis;

/// The keys are already uniform hashes: use them as they are.
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// A 64-bit fingerprint kept as two halves: aligned to 4 bytes, so that a
/// table slot with a `u32` value is 12 bytes, not 16.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fp([u32; 2]);

impl Fp {
    #[inline]
    fn new(k: u64) -> Self {
        Fp([k as u32, (k >> 32) as u32])
    }

    #[inline]
    fn get(self) -> u64 {
        self.0[0] as u64 | (self.0[1] as u64) << 32
    }
}

impl Hash for Fp {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u64(self.get())
    }
}

type Table<V> = hashbrown::HashMap<Fp, V, BuildHasherDefault<IdentityHasher>>;

/// Sub-tables of an [`FpMap`]. A hash table grows by allocating one twice its
/// size and moving everything over, so one big table briefly needs 1.5x its
/// memory; split in 16, only one sixteenth grows at a time (with 10 M live
/// requests: 290 MB instead of a 430 MB peak).
const PARTS: usize = 16;

/// 64-bit fingerprint -> `V`, split into [`PARTS`] tables by bits 40..44 of
/// the fingerprint (hashbrown uses the low bits for the bucket and the top 7
/// for its tags, so these leave both uniform).
#[derive(Default, Clone)]
pub struct FpMap<V> {
    parts: [Table<V>; PARTS],
}

impl<V: Copy> FpMap<V> {
    #[inline]
    fn part(&self, k: u64) -> &Table<V> {
        &self.parts[(k >> 40) as usize % PARTS]
    }

    #[inline]
    fn part_mut(&mut self, k: u64) -> &mut Table<V> {
        &mut self.parts[(k >> 40) as usize % PARTS]
    }

    #[inline]
    pub fn get(&self, k: &u64) -> Option<&V> {
        self.part(*k).get(&Fp::new(*k))
    }

    #[inline]
    pub fn insert(&mut self, k: u64, v: V) -> Option<V> {
        self.part_mut(k).insert(Fp::new(k), v)
    }

    #[inline]
    pub fn remove(&mut self, k: &u64) -> Option<V> {
        self.part_mut(*k).remove(&Fp::new(*k))
    }

    pub fn retain(&mut self, mut f: impl FnMut(&u64, &mut V) -> bool) {
        for t in &mut self.parts {
            t.retain(|k, v| f(&k.get(), v));
        }
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(Table::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(Table::is_empty)
    }

    pub fn capacity(&self) -> usize {
        self.parts.iter().map(Table::capacity).sum()
    }
}

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

    /// Approximate heap bytes (buckets times slot size plus control bytes).
    pub fn heap_bytes(&self) -> usize {
        self.nonces.capacity() * 13
            + self.events.capacity() * 17
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
    fn the_split_map_behaves_like_one_map() {
        let mut m = FpMap::default();
        let mut model = std::collections::HashMap::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // 5 000 distinct keys, mixed like the fingerprints they stand for
            let k = (x >> 33) % 5_000;
            let k = (k ^ (k >> 7)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let k = k ^ (k >> 31);
            match i % 3 {
                0 | 1 => assert_eq!(m.insert(k, i), model.insert(k, i)),
                _ => assert_eq!(m.remove(&k), model.remove(&k)),
            }
            assert_eq!(m.get(&k), model.get(&k));
        }
        assert_eq!(m.len(), model.len());
        m.retain(|_, v| *v % 2 == 0);
        model.retain(|_, v| *v % 2 == 0);
        assert_eq!(m.len(), model.len());
        for (k, v) in &model {
            assert_eq!(m.get(k), Some(v));
        }
        let used = m.parts.iter().filter(|t| !t.is_empty()).count();
        assert_eq!(used, PARTS, "keys spread over every part");
        assert!(m.capacity() >= m.len());
    }

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
