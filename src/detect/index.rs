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

pub type FpMap = hashbrown::HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>;

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
