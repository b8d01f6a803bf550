//! Durable state: the [`StateStore`] trait, its RocksDB implementation and an
//! in-memory twin.
//!
//! State is split by concern: sighting segments (first sightings and live
//! event ids, per shard), key lifecycle (global), shard progress (offsets,
//! event-time clock, counters) and the alert outbox. Everything one batch
//! changes goes into one [`Commit`], applied atomically: a crash leaves the
//! store at the previous commit or at this one, never between.

mod config;
mod memory;
mod rocks;
pub(crate) mod segment;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::detect::{Clock, ShardStats};
use crate::schema::{LifecycleEvent, Millis};

pub use config::StateConfig;
pub use memory::MemStore;
pub use rocks::{RocksOptions, RocksStore};
pub use segment::{Bytes, SegmentLog, SegmentOptions, SegmentSource, SegmentView};

/// Version of the on-disk layout; a store written by another version is refused.
pub const FORMAT_VERSION: u32 = 6;

/// What the state store can fail with. Callers branch on the kind: a full
/// disk or an I/O error is transient (`run` pauses and retries the same
/// commit), the rest stops the detector.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state store I/O: {source}")]
    Io {
        #[source]
        source: rocksdb::Error,
    },
    #[error("the state store is full (no space left on the device): {source}")]
    NoSpace {
        #[source]
        source: rocksdb::Error,
    },
    #[error("opening the state directory {dir}: {source}")]
    Open {
        dir: String,
        #[source]
        source: rocksdb::Error,
    },
    #[error("creating the state directory {dir}: {source}")]
    CreateDir {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the state directory {0} is in use by another replayguard process (RocksDB holds a lock on it)"
    )]
    Locked(String),
    #[error("{0} holds no replayguard state")]
    NoState(String),
    /// The store refused a commit for another reason (the in-memory twin's
    /// injected failures); transient like I/O.
    #[error("the state store refused the commit: {0}")]
    Refused(String),
    #[error("the state store is being reopened")]
    Reopening,
    #[error("the state directory {dir} was written with layout version {found}; this build reads version {expected}")]
    Version {
        dir: String,
        found: u32,
        expected: u32,
    },
    #[error("corrupt state: {0}")]
    Corrupt(String),
}

impl StateError {
    /// Whether retrying later may succeed (a full disk, an I/O error): the
    /// runtime pauses and retries the same commit instead of stopping.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StateError::NoSpace { .. }
                | StateError::Io { .. }
                | StateError::Refused(_)
                | StateError::Reopening
        )
    }
}

/// Store-wide metadata, written once when the store is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMeta {
    pub format: u32,
    /// Seed of the fingerprint function (random per store, never leaves it).
    pub seed: u64,
}

/// Event-time progress and counters of one shard, written at every commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMeta {
    pub max_seen: Option<Millis>,
    pub last_sweep: Millis,
    pub stats: ShardStats,
    /// Sequence number of the next sighting segment.
    pub next_seq: u64,
    /// Next offset to read, per source id: the input position this state covers.
    pub positions: BTreeMap<u32, u64>,
    /// While rebuilding (a partition taken over, or a first deployment's
    /// warm-up): the offset from which records are reported.
    #[serde(default)]
    pub live_from: Option<u64>,
    /// The input position the shard's usage records cover, when behind
    /// `positions`: usage is written at checkpoints, not with every commit,
    /// and after a restart the records from here to `positions` are read
    /// again for usage only. `None`: usage covers `positions`.
    ///
    /// Written by stores before usage checkpoints came in slices; read as
    /// every slice being at this position (see [`ShardMeta::usage_behind`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_positions: Option<BTreeMap<u32, u64>>,
    /// The checkpoint slices (see [`crate::detect::usage_slice`]) whose usage
    /// records are behind `positions`, with the input position each covers:
    /// a usage checkpoint writes one slice a commit, and after a restart the
    /// records from a slice's position to `positions` are read again for the
    /// usage of its keys only. A slice not listed covers `positions`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub usage_behind: BTreeMap<u8, BTreeMap<u32, u64>>,
}

impl ShardMeta {
    /// Reads a store's whole-shard usage position as one per slice.
    pub fn upgrade_usage_positions(&mut self) {
        if let Some(p) = self.usage_positions.take() {
            for slice in 0..crate::detect::USAGE_SLICES as u8 {
                self.usage_behind.entry(slice).or_insert_with(|| p.clone());
            }
        }
    }

    pub fn clock(&self) -> Clock {
        Clock {
            max_seen: self.max_seen,
            last_sweep: self.last_sweep,
        }
    }

    pub fn set_clock(&mut self, c: Clock) {
        self.max_seen = c.max_seen;
        self.last_sweep = c.last_sweep;
    }
}

/// Everything one batch changes, applied atomically.
#[derive(Default)]
pub struct Commit {
    /// New names in the registry (shards and sources) with their ids.
    pub registry: Vec<(String, u32)>,
    pub shards: Vec<(u32, ShardMeta)>,
    pub segments: Vec<(u32, u64, Arc<Vec<u8>>)>,
    pub segment_deletes: Vec<(u32, u64)>,
    /// Per shard, the lowest segment sequence still live: everything below it
    /// is deleted, so whole files there may be dropped.
    pub segment_floors: Vec<(u32, u64)>,
    pub lifecycle: Vec<LifecycleEvent>,
    /// Per-key usage records (shard, key_id, postcard bytes): only at a
    /// usage checkpoint, a slice of keys at a time (see [`ShardMeta::usage_behind`]).
    pub usage: Vec<(u32, String, Vec<u8>)>,
    /// Per-key sequence-rule state (shard, key_id, postcard bytes).
    pub sequence: Vec<(u32, String, Vec<u8>)>,
    /// Shards whose every usage and sequence record is removed (before
    /// `usage` and `sequence` are applied).
    pub usage_reset: Vec<u32>,
    pub outbox_put: Vec<(u64, Vec<u8>)>,
    /// Removes the outbox entries with a sequence number in this range: the
    /// alerts delivered since the commit before. Successive commits' ranges
    /// do not overlap (each starts where the one before ended): RocksDB
    /// fragments overlapping range tombstones when it flushes, in time
    /// that grows with the square of their number.
    pub outbox_delete: Option<std::ops::Range<u64>>,
    /// Named values of the pipeline (e.g. alert-topic positions).
    pub values: Vec<(String, Vec<u8>)>,
}

impl Commit {
    pub fn is_empty(&self) -> bool {
        self.registry.is_empty()
            && self.shards.is_empty()
            && self.segments.is_empty()
            && self.segment_deletes.is_empty()
            && self.lifecycle.is_empty()
            && self.usage.is_empty()
            && self.sequence.is_empty()
            && self.usage_reset.is_empty()
            && self.outbox_put.is_empty()
            && self.outbox_delete.is_none()
            && self.values.is_empty()
    }

    /// About how many bytes the commit's puts take in a write batch (keys,
    /// values and a few bytes of framing each); shard metadata and lifecycle
    /// records, small and encoded later, by a fixed allowance.
    pub fn approx_bytes(&self) -> usize {
        const FRAME: usize = 24;
        let keyed = |k: &str, v: &[u8]| k.len() + v.len() + FRAME;
        let mut n = 12 + 1024 * (self.shards.len() + self.lifecycle.len() + self.registry.len());
        n += self
            .segments
            .iter()
            .map(|(_, _, b)| b.len() + 12 + FRAME)
            .sum::<usize>();
        n += (self.segment_deletes.len() + self.usage_reset.len() * 2) * (2 * 12 + FRAME);
        n += self
            .usage
            .iter()
            .map(|(_, k, v)| keyed(k, v) + 4)
            .sum::<usize>();
        n += self
            .sequence
            .iter()
            .map(|(_, k, v)| keyed(k, v) + 4)
            .sum::<usize>();
        n += self
            .outbox_put
            .iter()
            .map(|(_, v)| v.len() + 8 + FRAME)
            .sum::<usize>();
        n += self
            .values
            .iter()
            .map(|(k, v)| keyed(k, v) + 2)
            .sum::<usize>();
        n
    }
}

/// Visitor of stored segments: (sequence, bytes).
pub type SegmentVisitor<'a> = dyn FnMut(u64, &[u8]) -> Result<(), StateError> + 'a;

/// Visitor of usage records: (shard, key_id, bytes).
pub type UsageVisitor<'a> = dyn FnMut(u32, &str, &[u8]) -> Result<(), StateError> + 'a;

/// The durable state. Implementations: [`RocksStore`] and [`MemStore`].
pub trait StateStore: SegmentSource + Send + Sync + 'static {
    /// Store metadata (created with a random seed on first open).
    fn meta(&self) -> Result<StoreMeta, StateError>;
    /// Registered names (`shard:…`, `source:…`) and their ids.
    fn registry(&self) -> Result<BTreeMap<String, u32>, StateError>;
    /// A named value written by a commit.
    fn value(&self, name: &str) -> Result<Option<Vec<u8>>, StateError>;
    fn shard(&self, shard: u32) -> Result<Option<ShardMeta>, StateError>;
    /// Visits the segments of a shard in sequence order.
    fn for_each_segment(&self, shard: u32, f: &mut SegmentVisitor<'_>) -> Result<(), StateError>;
    fn lifecycle(&self) -> Result<Vec<LifecycleEvent>, StateError>;
    /// The usage record of one key in one shard.
    fn usage_record(&self, shard: u32, key_id: &str) -> Result<Option<Vec<u8>>, StateError>;
    /// Visits the usage records of a shard (every shard when `None`): (shard, key_id, bytes).
    fn for_each_usage(
        &self,
        shard: Option<u32>,
        f: &mut UsageVisitor<'_>,
    ) -> Result<(), StateError>;
    /// Visits the sequence-rule records of a shard: (shard, key_id, bytes).
    fn for_each_sequence(&self, shard: u32, f: &mut UsageVisitor<'_>) -> Result<(), StateError>;
    /// Alerts committed but not yet acknowledged by the sink, in order.
    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>, StateError>;
    /// Applies a commit atomically (and durably, if so configured).
    fn commit(&self, c: &Commit) -> Result<(), StateError>;
    /// Approximate bytes on disk (or in memory, for the twin).
    fn size_bytes(&self) -> u64;
}

impl<T: SegmentSource + ?Sized> SegmentSource for Arc<T> {
    fn with_segment(&self, shard: u32, seq: u64, f: &mut Bytes<'_>) -> Result<bool, StateError> {
        (**self).with_segment(shard, seq, f)
    }
}

/// A fresh random seed for a new store.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Key of a sighting segment: shard then sequence, big endian, so a shard's
/// segments are contiguous and in order.
pub fn segment_key(shard: u32, seq: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&shard.to_be_bytes());
    k[4..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Key of a usage record: shard, then the key id.
pub fn usage_key(shard: u32, key_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key_id.len());
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(key_id.as_bytes());
    k
}

/// Key of a lifecycle record: length-prefixed key id, then `at` (order-preserving).
pub fn lifecycle_key(ev: &LifecycleEvent) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + ev.key_id.len() + 8);
    k.extend_from_slice(&(ev.key_id.len() as u32).to_be_bytes());
    k.extend_from_slice(ev.key_id.as_bytes());
    k.extend_from_slice(&((ev.at as u64) ^ (1 << 63)).to_be_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_shard_usage_position_reads_as_every_slice_behind() {
        // a store written before checkpoints came in slices
        let at: BTreeMap<u32, u64> = [(0, 1_234), (3, 77)].into();
        let old = ShardMeta {
            usage_positions: Some(at.clone()),
            ..Default::default()
        };
        let json = serde_json::to_string(&old).unwrap();
        assert!(!json.contains("usage_behind"), "{json}");
        let mut meta: ShardMeta = serde_json::from_str(&json).unwrap();
        meta.upgrade_usage_positions();
        assert_eq!(meta.usage_positions, None);
        assert_eq!(meta.usage_behind.len(), crate::detect::USAGE_SLICES);
        assert!(meta.usage_behind.values().all(|p| *p == at));
        // written again: slices only, and read back the same
        let json = serde_json::to_string(&meta).unwrap();
        assert!(!json.contains("usage_positions"), "{json}");
        assert_eq!(serde_json::from_str::<ShardMeta>(&json).unwrap(), meta);
        // usage that covers its positions writes neither
        let json = serde_json::to_string(&ShardMeta::default()).unwrap();
        assert!(!json.contains("usage"), "{json}");
    }
}
