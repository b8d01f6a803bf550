//! `[pipeline]`: the threads and queues of the pipelined engine (both
//! commands) and how `run` batches its commits.

use serde::{Deserialize, Serialize};

use crate::units::DurationMs;

/// `[pipeline]`. Records are read (or polled) on one thread and cut into
/// chunks of `chunk_events`; `threads` threads decode them and `threads`
/// detect workers run the rules, each owning the state of some keys; at
/// most `queue_chunks` chunks wait between two stages (then the stage
/// before waits: backpressure, no unbounded buffering).
///
/// In `run` a batch is committed (state, input positions and outbox in one
/// write, then its alerts produced) as soon as the input is momentarily
/// drained, or `max_commit_delay` after its first record, or at
/// `batch_events` records, whichever comes first: at low rates every record
/// is committed and alerted within milliseconds; under load the input is
/// never drained and batches grow to what `max_commit_delay` holds.
/// These settings change speed, latency and memory, never alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Decode threads, and detect workers. Default 0: as many as the cores
    /// this process may run on; 1: everything on one thread.
    pub threads: usize,
    /// Records per chunk handed between threads. Default 256.
    pub chunk_events: usize,
    /// Chunks in flight between two stages. Default 8.
    pub queue_chunks: usize,
    /// Longest a processed record waits for its commit (`run`). Default
    /// 5ms; 0 commits after every poll of the consumer.
    pub max_commit_delay: DurationMs,
    /// Most records in one commit (`run`). Default 20000.
    pub batch_events: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            threads: 0,
            chunk_events: 256,
            queue_chunks: 8,
            max_commit_delay: DurationMs(5),
            batch_events: 20_000,
        }
    }
}

/// The cores this process may run on (its CPU affinity: `taskset -c 1`
/// gives 1).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Longest `max_commit_delay` accepted: alerts held longer than this are no
/// longer "within milliseconds", and the group offsets lag as long.
const MAX_COMMIT_DELAY_MS: i64 = 60_000;

/// Most threads per stage accepted.
const MAX_THREADS: usize = 256;

impl PipelineConfig {
    /// Resolves `threads = 0` to the cores available.
    pub fn sanitize(&mut self) {
        if self.threads == 0 {
            self.threads = available_cores();
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.batch_events == 0 {
            return Err("pipeline.batch_events must be at least 1".into());
        }
        if self.chunk_events == 0 || self.queue_chunks == 0 {
            return Err(
                "pipeline.chunk_events and pipeline.queue_chunks must be at least 1".into(),
            );
        }
        if self.threads > MAX_THREADS {
            return Err(format!(
                "pipeline.threads must be at most {MAX_THREADS} (is {})",
                self.threads
            ));
        }
        if !(0..=MAX_COMMIT_DELAY_MS).contains(&self.max_commit_delay.0) {
            return Err(format!(
                "pipeline.max_commit_delay must be between 0 and {}s (is {})",
                MAX_COMMIT_DELAY_MS / 1000,
                self.max_commit_delay
            ));
        }
        Ok(())
    }
}
