//! Keyed hashes of nonces and event ids. Raw nonces are never kept: the live
//! index and the state store hold these fingerprints only.

use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64_with_seed};

/// Where a record came from: a source (a file, or a topic partition) and an
/// offset in it (a line number, or a Kafka offset). A record processed again
/// at the same position is recognised as itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Position {
    pub source: u32,
    pub offset: u64,
}

impl Position {
    pub const fn new(source: u32, offset: u64) -> Self {
        Position { source, offset }
    }

    /// 32-bit digest kept in the live index to tell "itself" from "a copy".
    #[inline]
    pub fn hash32(&self) -> u32 {
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.source.to_le_bytes());
        b[4..].copy_from_slice(&self.offset.to_le_bytes());
        xxh3_64_with_seed(&b, 0x5eed) as u32
    }
}

/// Fingerprint function, keyed by a per-state random seed so that nobody
/// outside can aim two nonces at one fingerprint.
#[derive(Debug, Clone)]
pub struct Fingerprinter {
    seed: u64,
    scratch: Vec<u8>,
}

impl Fingerprinter {
    pub fn new(seed: u64) -> Self {
        Fingerprinter {
            seed,
            scratch: Vec::with_capacity(256),
        }
    }

    /// 128-bit fingerprint of (key_id, nonce); the low 64 bits index the live
    /// state, the full value confirms a match.
    #[inline]
    pub fn nonce(&mut self, key_id: &str, nonce: &str) -> u128 {
        self.keyed(b'N', key_id, nonce)
    }

    /// 128-bit fingerprint of (key_id, signature), kept apart from every
    /// nonce fingerprint by its domain byte. State holds only this hash,
    /// never the signature.
    #[inline]
    pub fn signature(&mut self, key_id: &str, signature: &str) -> u128 {
        self.keyed(b'S', key_id, signature)
    }

    /// 128-bit fingerprint of (domain, key_id, value), the key length-prefixed.
    #[inline]
    fn keyed(&mut self, domain: u8, key_id: &str, value: &str) -> u128 {
        let s = &mut self.scratch;
        s.clear();
        s.push(domain);
        s.extend_from_slice(&(key_id.len() as u32).to_le_bytes());
        s.extend_from_slice(key_id.as_bytes());
        s.extend_from_slice(value.as_bytes());
        xxh3_128_with_seed(s, self.seed)
    }

    /// 64-bit fingerprint of a request's identity, (key_id, event_id), for
    /// transport-duplicate detection. A redelivered copy carries both; the
    /// key is part of it so that every decision about a request depends only
    /// on requests of the same key (what lets detection be sharded by key).
    #[inline]
    pub fn event(&mut self, key_id: Option<&str>, event_id: &str) -> u64 {
        let s = &mut self.scratch;
        s.clear();
        match key_id {
            Some(k) => {
                s.push(b'K');
                s.extend_from_slice(&(k.len() as u32).to_le_bytes());
                s.extend_from_slice(k.as_bytes());
            }
            None => s.push(b'U'),
        }
        s.extend_from_slice(event_id.as_bytes());
        // a distinct seed keeps event and nonce fingerprints apart
        xxh3_64_with_seed(s, self.seed ^ 0x9e37_79b9_7f4a_7c15)
    }
}
