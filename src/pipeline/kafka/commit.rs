//! The commit cycle of `run`, in the order the guarantees need:
//! 1. the engine commits state, input offsets and the batch's alerts (the
//!    outbox) in one RocksDB write, after the batch's dead letters (and
//!    forwarded records) are acknowledged;
//! 2. the outbox is produced to the alert topic (idempotent producer,
//!    acks=all) and removed once acknowledged;
//! 3. the group offsets are committed to Kafka, with metadata saying from
//!    which offset the partition's live state can be rebuilt. They serve lag
//!    monitoring and the hand-over to another instance; the truth is in
//!    RocksDB.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::rebalance::Ctx;
use super::runtime::{Runtime, ALERT_POSITIONS, IDLE_WAIT};
use super::status::Status;
use crate::pipeline::PipelineError;
use crate::source::kafka::CommitMeta;

/// Group offsets are committed at most this often while running (each is a
/// broker round trip sharing the connection with fetches); always on
/// hand-over and shutdown.
const GROUP_COMMIT_INTERVAL: Duration = Duration::from_millis(500);

impl Runtime {
    /// Whether a commit cycle is due, `drained` telling whether the last
    /// poll found the consumer's queue empty: the open batch once the input
    /// is drained, `max_commit_delay` after its first record or at
    /// `batch_events` records; delivered alerts' removal from the outbox and
    /// a refused commit's retry after `max_commit_delay`; group offsets left
    /// behind by the last commits once idle.
    pub(super) fn due(&self, drained: bool) -> bool {
        let delay = self.pipeline.max_commit_delay.as_std();
        let batch = self.records_since_commit > 0
            && (drained
                || self.records_since_commit >= self.pipeline.batch_events
                || self.batch_opened.is_some_and(|t| t.elapsed() >= delay));
        let housekeeping = (self.engine.undelivered() > 0
            || self.engine.commit_pending()
            || self.engine.outbox_delete_pending())
            && self.last_commit.elapsed() >= delay;
        let group_behind = self.last_group_commit.elapsed() >= GROUP_COMMIT_INTERVAL
            && self
                .parts
                .values()
                .any(|p| p.group_committed != Some(p.next) && p.next > 0);
        batch || housekeeping || group_behind
    }

    /// How long the poll loop may wait for the next record: until the open
    /// batch (or pending housekeeping) is due, else [`IDLE_WAIT`].
    pub(super) fn wait_for_input(&self) -> Duration {
        let delay = self.pipeline.max_commit_delay.as_std();
        let since = match self.batch_opened {
            Some(t) if self.records_since_commit > 0 => Some(t),
            _ if self.engine.outbox_delete_pending() || self.engine.undelivered() > 0 => {
                Some(self.last_commit)
            }
            _ => None,
        };
        match since {
            Some(t) => delay.saturating_sub(t.elapsed()),
            None => IDLE_WAIT,
        }
    }

    /// Records the open batch can still take.
    pub(super) fn room(&self) -> usize {
        self.pipeline
            .batch_events
            .saturating_sub(self.records_since_commit)
            .max(1)
    }

    /// State + offsets + outbox to RocksDB, alerts to Kafka, offsets to the group.
    pub(super) fn commit_cycle(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        mode: CommitMode,
        status: &Status,
    ) -> Result<(), PipelineError> {
        self.last_commit = Instant::now();
        let cycle = Instant::now();
        self.flush()?;
        if let Some(f) = &self.forwarder {
            f.wait_acked()?;
        }
        // where the alert topic stood before this commit's alerts go out: after
        // a crash, the alerts on it from there on are not produced again
        let positions = self.alerts.positions();
        if !positions.is_empty() && positions != self.persisted_positions {
            self.engine.set_value(
                ALERT_POSITIONS,
                serde_json::to_vec(&positions).expect("serializes"),
            );
            self.persisted_positions = positions;
        }
        match self.engine.commit(&mut self.dlq) {
            Ok(info) => {
                status.events.fetch_add(info.events, Ordering::Relaxed);
                if self.paused {
                    self.paused = false;
                    status.set_unhealthy(None);
                    if let Ok(a) = consumer.assignment() {
                        let _ = consumer.resume(&a);
                    }
                    tracing::warn!("the state store accepts commits again: consuming resumes");
                }
            }
            Err(PipelineError::State(e)) if e.is_transient() => {
                if !self.paused {
                    self.paused = true;
                    if let Ok(a) = consumer.assignment() {
                        let _ = consumer.pause(&a);
                    }
                    tracing::error!(error = %e, "the state store refused a commit: consuming paused until it accepts again");
                }
                status.set_unhealthy(Some(e.to_string()));
                return Err(PipelineError::State(e));
            }
            Err(e) => return Err(e),
        }
        let events = std::mem::take(&mut self.records_since_commit);
        let opened = self.batch_opened.take();
        self.report_counters();
        let delivering = Instant::now();
        let n = self.engine.deliver(&mut self.alerts)?;
        status.alerts.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(opened) = opened {
            crate::telemetry::CommitBatch {
                events,
                delay: opened.elapsed(),
                delivery: (n > 0).then(|| delivering.elapsed()),
            }
            .emit();
        }
        for (stage, busy) in [
            ("read", std::mem::take(&mut self.read_busy)),
            ("decode", self.pool.take_busy()),
            ("commit", cycle.elapsed()),
        ] {
            crate::telemetry::StageBusy { stage, busy }.emit();
        }
        crate::telemetry::QueueDepth {
            queue: "decode",
            depth: self.pool.in_flight(),
        }
        .emit();
        self.reporter.after_commit(&mut self.engine);
        if matches!(mode, CommitMode::Async)
            && self.last_group_commit.elapsed() < GROUP_COMMIT_INTERVAL
        {
            return Ok(());
        }
        self.commit_group_offsets(consumer, mode);
        Ok(())
    }

    fn report_counters(&mut self) {
        let t = self.engine.totals();
        let (a, m, r) = self.reported;
        crate::telemetry::KeyChecks {
            absent: t.key_absent - a,
            mismatch: t.key_mismatch - m,
        }
        .emit();
        crate::telemetry::Rebuilt {
            records: t.rebuilt - r,
        }
        .emit();
        self.reported = (t.key_absent, t.key_mismatch, t.rebuilt);
    }

    /// The group offsets of every reporting partition that moved, with
    /// replayguard's metadata (see [`CommitMeta`]).
    fn commit_group_offsets(&mut self, consumer: &BaseConsumer<Ctx>, mode: CommitMode) {
        self.last_group_commit = Instant::now();
        let alert_positions = self.alerts.positions();
        let mut tpl = TopicPartitionList::new();
        let engine = &self.engine;
        for (topic, p, part) in self.parts.iter_mut() {
            let reporting = part.shard.is_none_or(|s| engine.live_from(s).is_none());
            if !reporting || part.group_committed == Some(part.next) {
                continue;
            }
            let meta = CommitMeta {
                alerts: alert_positions.clone(),
                rebuild_from: part
                    .shard
                    .map(|s| engine.rebuild_from(s).unwrap_or(part.next).min(part.next)),
            };
            if tpl
                .add_partition_offset(topic, p, Offset::Offset(part.next as i64))
                .is_ok()
            {
                if let Some(mut el) = tpl.find_partition(topic, p) {
                    el.set_metadata(meta.encode());
                }
                part.group_committed = Some(part.next);
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, mode) {
                tracing::warn!(error = %e, "committing group offsets (they serve lag monitoring and hand-over)");
            }
        }
    }
}
