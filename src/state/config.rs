//! `[state]`: where and how state is kept, and its memory bounds.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::RocksOptions;
use crate::units::ByteSize;

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// State directory. Default: none (`scan` then uses a temporary one).
    pub dir: Option<PathBuf>,
    /// RocksDB block cache. Default 16MiB (reads are rare: replay evidence
    /// older than the cached segments, restarts).
    pub block_cache: ByteSize,
    /// All RocksDB memtables together. Default 32MiB.
    pub write_buffer: ByteSize,
    /// Recent sighting segments kept in memory for replay evidence. Default 16MiB.
    /// (Segments sealed but not yet committed are kept whatever this says.)
    pub segment_cache: ByteSize,
    /// First sightings per segment before it is sealed. Default 4096.
    pub segment_windows: usize,
    /// Bytes of first-sighting records per segment before it is sealed
    /// (matters with long event ids). Default 1MiB.
    pub segment_bytes: ByteSize,
    /// Upper bound of the live index in memory (about 17 bytes per slot,
    /// one slot per live request). Past it the detector stops with an error
    /// rather than grow without bound. Default 1GiB (about 30 M live requests).
    pub max_index: ByteSize,
    /// Per-key usage is written with a commit at most this often (and at
    /// the end of a scan, before a partition is handed over, at shutdown),
    /// not with every commit: with many keys, rewriting every touched key's
    /// usage at every commit costs more than everything else. After a crash
    /// the records since the last usage checkpoint are read again, for usage
    /// only (as Flink re-reads its sources from a checkpoint). Default 5s; 0:
    /// with every commit.
    pub usage_checkpoint_interval: crate::units::DurationMs,
    /// fsync the write-ahead log at every commit. Default false: a commit
    /// survives a crash of the process either way (the OS holds the write);
    /// after a power loss RocksDB recovers a consistent prefix, and `run`
    /// then finds its state behind the group's committed offset and rebuilds
    /// the partition (`scan` can be run again). Set true to fsync anyway.
    pub sync: bool,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: None,
            // 64/64/64 MiB until 2026-12-05: these cost no speed and take
            // ~100 MiB off the peak at 10 M live requests (BENCHMARKS.md)
            block_cache: ByteSize::mib(16),
            write_buffer: ByteSize::mib(32),
            segment_cache: ByteSize::mib(16),
            segment_windows: super::segment::SEGMENT_WINDOWS,
            segment_bytes: ByteSize(super::segment::SEGMENT_BYTES as u64),
            max_index: ByteSize::mib(1024),
            usage_checkpoint_interval: crate::units::DurationMs::secs(5),
            sync: false,
        }
    }
}

impl StateConfig {
    pub fn segments(&self) -> super::SegmentOptions {
        super::SegmentOptions {
            max_windows: self.segment_windows,
            max_bytes: self.segment_bytes.0 as usize,
            cache_bytes: self.segment_cache.0 as usize,
        }
    }

    /// Refuses bounds RocksDB or the segment log cannot work with.
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_windows == 0 || self.segment_bytes.0 == 0 {
            return Err("state.segment_windows and state.segment_bytes must be positive".into());
        }
        if self.block_cache.0 < 1 << 20 || self.write_buffer.0 < 4 << 20 {
            return Err(
                "state.block_cache must be at least 1MiB and state.write_buffer at least 4MiB"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn rocks(&self) -> RocksOptions {
        RocksOptions {
            block_cache_bytes: self.block_cache.0 as usize,
            write_buffer_bytes: self.write_buffer.0 as usize,
            sync: self.sync,
            read_only: false,
        }
    }
}
