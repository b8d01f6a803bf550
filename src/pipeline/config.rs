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
    /// Records per chunk handed between threads. Default 0: 256 on one
    /// thread; with several, 1024 in `scan` and 2048 in `run` (fewer
    /// hand-overs between threads).
    pub chunk_events: usize,
    /// Chunks in flight between two stages. Default 0: 8 on one thread;
    /// with several, 3 in `scan` and 6 in `run` (see
    /// [`PipelineConfig::for_run`]).
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
            chunk_events: 0,
            queue_chunks: 0,
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

/// (chunk_events, queue_chunks) left at 0: on one thread, where a chunk is
/// decoded and judged while it is in cache (both commands) ...
const ONE_THREAD: (usize, usize) = (256, 8);
/// ... with several in `scan`, where each chunk is handed between threads ...
const SCAN_THREADS: (usize, usize) = (1024, 3);
/// ... and in `run`, whose poll thread also steps the commit cycle (see
/// [`PipelineConfig::for_run`]).
const RUN_THREADS: (usize, usize) = (2048, 6);

impl PipelineConfig {
    /// Resolves `threads = 0` to the cores available. The chunk sizes left
    /// at 0 stay 0: their default depends on the command
    /// ([`PipelineConfig::for_scan`], [`PipelineConfig::for_run`]).
    pub fn sanitize(&mut self) {
        self.threads = self.effective_threads();
    }

    /// The settings `scan` runs with: the chunk sizes left at 0 resolved to
    /// what suits its threads.
    pub fn for_scan(self) -> Self {
        self.resolved(SCAN_THREADS)
    }

    /// The settings `run` runs with. With several threads its chunks are
    /// twice `scan`'s and twice as many wait between stages (12 288
    /// records in flight a stage, against 3 072): its poll thread also
    /// copies each record out of librdkafka, routes the decoded chunks and
    /// steps the commit cycle, and with `scan`'s depth the workers waited
    /// for it (1.09–1.44x the records/s against Apache Kafka on 2 cores,
    /// BENCHMARKS.md). On one thread, as `scan`.
    pub fn for_run(self) -> Self {
        self.resolved(RUN_THREADS)
    }

    /// The threads and the chunk sizes left at 0 resolved, `several` being
    /// the sizes with more than one thread.
    fn resolved(mut self, several: (usize, usize)) -> Self {
        self.threads = self.effective_threads();
        self.chunk_events = self.by_threads(self.chunk_events, ONE_THREAD.0, several.0);
        self.queue_chunks = self.by_threads(self.queue_chunks, ONE_THREAD.1, several.1);
        self
    }

    /// The threads in effect (`threads = 0`: the cores available).
    pub fn effective_threads(&self) -> usize {
        match self.threads {
            0 => available_cores(),
            n => n,
        }
    }

    /// Records per chunk in effect in `scan` (`chunk_events = 0`: 256 on one
    /// thread, where a chunk is decoded and judged while it is in cache;
    /// 1024 with several, where each chunk is handed between threads).
    pub fn effective_chunk_events(&self) -> usize {
        self.by_threads(self.chunk_events, ONE_THREAD.0, SCAN_THREADS.0)
    }

    /// Chunks in flight between two stages in effect in `scan` (`queue_chunks = 0`:
    /// 8 on one thread, 3 with several: about as many records either way).
    pub fn effective_queue_chunks(&self) -> usize {
        self.by_threads(self.queue_chunks, ONE_THREAD.1, SCAN_THREADS.1)
    }

    /// `set`, or when it is 0, `one` on one thread and `several` with more.
    fn by_threads(&self, set: usize, one: usize, several: usize) -> usize {
        match set {
            0 if self.effective_threads() == 1 => one,
            0 => several,
            n => n,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.batch_events == 0 {
            return Err("pipeline.batch_events must be at least 1".into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_left_at_zero_suit_the_threads() {
        // (threads, chunk_events, queue_chunks) set -> the sizes in effect;
        // sizes that are given are kept, whatever the threads
        for (threads, chunk_events, queue_chunks, want) in [
            (1, 0, 0, (256, 8)),
            (2, 0, 0, (1024, 3)),
            (2, 64, 5, (64, 5)),
        ] {
            let c = PipelineConfig {
                threads,
                chunk_events,
                queue_chunks,
                ..PipelineConfig::default()
            };
            assert_eq!(
                (c.effective_chunk_events(), c.effective_queue_chunks()),
                want,
                "threads {threads}, chunk_events {chunk_events}, queue_chunks {queue_chunks}"
            );
        }
        // sanitize resolves the threads; each command the sizes left at 0
        let mut c = PipelineConfig {
            threads: 1,
            ..PipelineConfig::default()
        };
        c.sanitize();
        assert_eq!((c.threads, c.chunk_events, c.queue_chunks), (1, 0, 0));
        assert!(c.validate().is_ok());
        for p in [c.clone().for_scan(), c.clone().for_run()] {
            assert_eq!((p.threads, p.chunk_events, p.queue_chunks), (1, 256, 8));
        }
        let two = PipelineConfig {
            threads: 2,
            ..PipelineConfig::default()
        };
        let s = two.clone().for_scan();
        assert_eq!((s.threads, s.chunk_events, s.queue_chunks), (2, 1024, 3));
        let r = two.clone().for_run();
        assert_eq!((r.threads, r.chunk_events, r.queue_chunks), (2, 2048, 6));
        // what is given is kept by both
        let given = PipelineConfig {
            threads: 2,
            chunk_events: 64,
            queue_chunks: 5,
            ..PipelineConfig::default()
        };
        for p in [given.clone().for_scan(), given.for_run()] {
            assert_eq!((p.chunk_events, p.queue_chunks), (64, 5));
        }
        let mut auto = PipelineConfig::default();
        auto.sanitize();
        assert_eq!(auto.threads, available_cores());
    }
}
