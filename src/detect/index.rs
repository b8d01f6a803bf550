//! The live index: fingerprint -> (time, reference), in memory, 16 bytes per entry.
//!
//! Times are kept as the low 32 bits of epoch milliseconds and rebuilt against
//! the largest time seen; that is exact while an entry is younger than 2^31 ms
//! (24 days), which sweeping and the retention limit guarantee.

use std::hash::{BuildHasherDefault, Hasher};

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

type Table = hashbrown::HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>;

/// Sub-tables of an [`FpMap`]. A hash table grows by allocating one twice its
/// size and moving everything over, so one big table briefly needs 1.5x its
/// memory; split in 16, only one sixteenth grows at a time (with 10 M live
/// requests: 290 MB instead of a 430 MB peak).
const PARTS: usize = 16;

/// fingerprint -> packed (time, aux), split into [`PARTS`] tables by bits
/// 40..44 of the fingerprint (hashbrown uses the low bits for the bucket and
/// the top 7 for its tags, so these leave both uniform).
#[derive(Default, Clone)]
pub struct FpMap {
    parts: [Table; PARTS],
}

impl FpMap {
    #[inline]
    fn part(&self, k: u64) -> &Table {
        &self.parts[(k >> 40) as usize % PARTS]
    }

    #[inline]
    fn part_mut(&mut self, k: u64) -> &mut Table {
        &mut self.parts[(k >> 40) as usize % PARTS]
    }

    #[inline]
    pub fn get(&self, k: &u64) -> Option<&u64> {
        self.part(*k).get(k)
    }

    #[inline]
    pub fn insert(&mut self, k: u64, v: u64) -> Option<u64> {
        self.part_mut(k).insert(k, v)
    }

    #[inline]
    pub fn remove(&mut self, k: &u64) -> Option<u64> {
        self.part_mut(*k).remove(k)
    }

    pub fn retain(&mut self, mut f: impl FnMut(&u64, &mut u64) -> bool) {
        for t in &mut self.parts {
            t.retain(&mut f);
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

/// Live index of one shard.
#[derive(Default)]
pub struct Index {
    /// low 64 bits of the (key_id, nonce) fingerprint -> (window start, segment)
    pub nonces: FpMap,
    /// event-id fingerprint -> (received_at, position digest), for every live
    /// event that is not the current window start of its nonce
    pub events: FpMap,
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
        (self.nonces.capacity() + self.events.capacity()) * 17
    }

    /// Drops entries whose time is before `keep_from`.
    pub fn sweep(&mut self, keep_from: Millis, max_seen: Millis) {
        self.nonces.retain(|_, v| time(*v, max_seen) >= keep_from);
        self.events.retain(|_, v| time(*v, max_seen) >= keep_from);
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
}
