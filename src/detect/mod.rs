//! The rules: replay, skew and key lifecycle, on event time.
//!
//! Synchronous and deterministic: no I/O of their own and no clock. The input
//! is (prior state, event), the output the new state and the alerts. State
//! lives in [`ShardDetector`] (the live index) and in a [`SightingLog`] that
//! the caller supplies (the state module persists it; tests use [`VecLog`]).

mod cache;
mod config;
pub mod event_id;
mod fingerprint;
mod fp_map;
mod index;
mod lifecycle;
mod sequence;
mod shard;
mod sighting;
mod skew;
pub(crate) mod usage;

pub use cache::prefetch;
pub use config::{DetectConfig, Toggle};
pub use fingerprint::Position;
pub use lifecycle::LifecycleTable;
pub use sequence::number as sequence_number;
pub use sequence::{EventId, SeqState};
pub use shard::{Clock, KeySeed, Prepared, ShardDetector, ShardStats, UsageMode, Verdict};
pub use sighting::{LookupError, OwnedWindow, SightingInfo, SightingLog, VecLog, WindowRecord};
pub use usage::{usage_slice, KeyUsage, UsageConfig, USAGE_SLICES};

#[cfg(test)]
mod tests;
