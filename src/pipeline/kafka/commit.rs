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
//!
//! A commit is begun when its batch is due and finished when the detect
//! workers have staged it, while the poll loop goes on reading the next
//! batch: under load a batch grows while the one before is written. When
//! the input is drained the batch is committed and alerted at once.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::rebalance::Ctx;
use super::runtime::{Runtime, ALERT_POSITIONS, IDLE_WAIT};
use super::status::Status;
use crate::pipeline::{CommitInfo, PipelineError};
use crate::source::kafka::CommitMeta;

/// How long a poll waits for input while records are being decoded, a
/// commit is being staged or alerts await their acknowledgement: they are
/// checked between polls, never waited for (but for a full batch).
const IN_FLIGHT_WAIT: Duration = Duration::from_micros(200);

/// Group offsets are committed at most this often while running (each is a
/// broker round trip sharing the connection with fetches); always on
/// hand-over and shutdown.
const GROUP_COMMIT_INTERVAL: Duration = Duration::from_millis(500);

impl Runtime {
    /// Whether the open batch is due for a commit, `drained` telling whether
    /// the last poll found the consumer's queue empty: once the input is
    /// drained, `max_commit_delay` after its first record or at
    /// `batch_events` records; delivered alerts' removal from the outbox and
    /// a refused commit's retry after `max_commit_delay`. (Group offsets
    /// follow alert acknowledgements: see [`Runtime::pump_alerts`].)
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
        batch || housekeeping
    }

    /// How long the poll loop may wait for the next record: until the open
    /// batch (or pending housekeeping) is due, else [`IDLE_WAIT`]; not at
    /// all while a commit is in flight (it is finished between polls).
    pub(super) fn wait_for_input(&self) -> Duration {
        if self.engine.commit_in_flight()
            || self.engine.alerts_in_flight() > 0
            || self.pool.in_flight() > 0
        {
            return IN_FLIGHT_WAIT;
        }
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

    /// Records the open batch can still take (none when it is full: it
    /// waits for the commit in flight, then is committed).
    pub(super) fn room(&self) -> usize {
        self.pipeline
            .batch_events
            .saturating_sub(self.records_since_commit)
    }

    /// One step of the commit cycle between two polls, never waiting (but
    /// for a full batch): alerts acknowledged are taken out of the outbox
    /// and the next ones sent; the commit in flight is finished once its
    /// workers have staged it; the next one is begun when its batch is due:
    /// when the input is drained (then everything polled is decoded and
    /// routed first: the commit holds all of it), at `max_commit_delay` or
    /// at `batch_events` records.
    pub(super) fn commit_step(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        drained: bool,
        status: &Status,
    ) -> Result<(), PipelineError> {
        self.pump_alerts(consumer, false, CommitMode::Async, status)?;
        if self.engine.commit_in_flight() {
            // waited for only when the open batch is full
            let wait = self.records_since_commit >= self.pipeline.batch_events;
            let finished = self.engine.finish_commit(wait);
            self.finished(finished, consumer, CommitMode::Async, status)?;
        }
        if !self.engine.commit_in_flight() && self.due(drained) {
            if drained {
                // the commit holds everything polled: what is being decoded
                // (a chunk or two) is routed first
                self.flush()?;
            }
            self.begin_commit(consumer, status)?;
        }
        Ok(())
    }

    /// Alert delivery, between polls: a batch sent is checked for its
    /// acknowledgement (waited for when `wait`); once acknowledged, the
    /// positions its commits cover may go to the group, and the alerts
    /// committed since are sent. One batch is in flight at a time.
    pub(super) fn pump_alerts(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        wait: bool,
        mode: CommitMode,
        status: &Status,
    ) -> Result<(), PipelineError> {
        loop {
            if self.engine.alerts_in_flight() > 0 {
                let n = self.engine.delivered(&mut self.alerts, wait)?;
                if n == 0 {
                    return Ok(());
                }
                status.alerts.fetch_add(n as u64, Ordering::Relaxed);
                if let Some(sent) = self.alerts_sent_at.take() {
                    crate::telemetry::AlertsAcknowledged {
                        elapsed: sent.elapsed(),
                    }
                    .emit();
                }
                if let Some(snapshot) = self.sending_positions.take() {
                    self.set_committable(snapshot);
                }
            }
            if self.engine.undelivered() == 0 {
                // every alert committed is delivered: what the store holds may
                // go to the group
                let snapshot = self.committed_snapshot();
                self.set_committable(snapshot);
                break;
            }
            self.sending_positions = Some(self.committed_snapshot());
            self.alerts_sent_at = Some(Instant::now());
            self.engine.send_alerts(&mut self.alerts)?;
            if !wait {
                break;
            }
        }
        if !matches!(mode, CommitMode::Async)
            || self.last_group_commit.elapsed() >= GROUP_COMMIT_INTERVAL
        {
            self.commit_group_offsets(consumer, mode);
        }
        Ok(())
    }

    /// The committed position of every detected partition.
    fn committed_snapshot(&self) -> Vec<(u32, u32, u64)> {
        self.parts
            .values()
            .filter_map(|p| {
                let stream = p.shard?;
                let next = *self.engine.committed_positions(stream)?.get(&p.source)?;
                Some((stream, p.source, next))
            })
            .collect()
    }

    fn set_committable(&mut self, snapshot: Vec<(u32, u32, u64)>) {
        for (_, _, part) in self.parts.iter_mut() {
            if let Some(&(_, _, next)) = snapshot
                .iter()
                .find(|(s, src, _)| Some(*s) == part.shard && *src == part.source)
            {
                part.committable = next;
            }
        }
    }

    /// A commit begun while the input is idle (a usage checkpoint).
    pub(super) fn commit_idle(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        status: &Status,
    ) -> Result<(), PipelineError> {
        self.begin_commit(consumer, status)
    }

    /// Everything polled is committed (usage included), alerted and its
    /// group offsets committed (`mode`) before this returns: on hand-over
    /// and shutdown.
    pub(super) fn commit_cycle(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        mode: CommitMode,
        status: &Status,
    ) -> Result<(), PipelineError> {
        self.flush()?;
        if self.engine.commit_in_flight() {
            let finished = self.engine.finish_commit(true);
            self.finished(finished, consumer, mode, status)?;
        }
        // a usage checkpoint goes with as many commits as it has slices
        self.engine.checkpoint_usage();
        while self.engine.checkpoint_in_progress() {
            self.begin_commit(consumer, status)?;
            let finished = self.engine.finish_commit(true);
            self.finished(finished, consumer, mode, status)?;
        }
        // the next owner of a partition reads its usage from the topic;
        // once it is acknowledged, each reporting partition's mark says that
        // every key's record counts up to this checkpoint (a key it did not
        // write had not changed: a redelivered copy, say)
        if let Some(p) = &self.usage_pub {
            p.flush()?;
            let marks: Vec<(String, u64)> = self
                .parts
                .values()
                .filter_map(|part| {
                    let at = self.engine.usage_counted_to(part.shard?)?;
                    Some((part.name.clone(), at))
                })
                .collect();
            if !marks.is_empty() {
                p.publish_marks(&marks)?;
                p.flush()?;
            }
        }
        self.pump_alerts(consumer, true, mode, status)
    }

    /// Begins the commit of everything routed so far.
    fn begin_commit(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        status: &Status,
    ) -> Result<(), PipelineError> {
        self.last_commit = Instant::now();
        if let Some(f) = &self.forwarder {
            f.wait_acked()?;
        }
        // forwarded partitions: what is acknowledged may be group-committed
        for (_, _, part) in self.parts.iter_mut() {
            if part.shard.is_none() {
                part.committable = part.next;
            }
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
        let begun = self.engine.begin_commit(&mut self.dlq);
        if begun.is_ok() {
            self.committing = (
                std::mem::take(&mut self.records_since_commit),
                self.batch_opened.take(),
            );
        }
        self.store_result(begun, consumer, status)
    }

    /// After a finished (or refused) commit: its alerts delivered, reports,
    /// group offsets.
    fn finished(
        &mut self,
        finished: Result<Option<CommitInfo>, PipelineError>,
        consumer: &BaseConsumer<Ctx>,
        mode: CommitMode,
        status: &Status,
    ) -> Result<(), PipelineError> {
        let info = match finished {
            Ok(Some(info)) => info,
            Ok(None) => return Ok(()),
            Err(e) => return self.store_result(Err(e), consumer, status),
        };
        self.store_result(Ok(()), consumer, status)?;
        status.events.fetch_add(info.events, Ordering::Relaxed);
        // a usage checkpoint's records go to the usage topic
        let usage = self.engine.take_checkpointed_usage();
        if let Some(p) = &self.usage_pub {
            if !usage.is_empty() {
                p.publish(&usage)?;
                crate::telemetry::UsagePublished {
                    records: usage.len() as u64,
                    bytes: usage.iter().map(|u| u.bytes.len() as u64).sum(),
                }
                .emit();
            }
        }
        let (events, opened) = std::mem::take(&mut self.committing);
        self.report_counters();
        if let Some(opened) = opened {
            crate::telemetry::CommitBatch {
                events,
                delay: opened.elapsed(),
            }
            .emit();
        }
        for (stage, busy) in [
            ("read", std::mem::take(&mut self.read_busy)),
            ("decode", {
                let busy = self.pool.busy();
                busy.saturating_sub(std::mem::replace(&mut self.decode_reported, busy))
            }),
        ] {
            crate::telemetry::StageBusy { stage, busy }.emit();
        }
        crate::telemetry::QueueDepth {
            queue: "decode",
            depth: self.pool.in_flight(),
        }
        .emit();
        self.reporter.after_commit(&mut self.engine);
        // its alerts go out (if none are in flight); the group offsets follow
        // their acknowledgement
        self.pump_alerts(consumer, false, mode, status)
    }

    /// A store refusal pauses consumption (and marks the instance
    /// unhealthy) until a commit goes through again; it is retried.
    fn store_result(
        &mut self,
        r: Result<(), PipelineError>,
        consumer: &BaseConsumer<Ctx>,
        status: &Status,
    ) -> Result<(), PipelineError> {
        match r {
            Ok(()) => {
                if self.paused && !self.engine.commit_pending() {
                    self.paused = false;
                    status.set_unhealthy(None);
                    if let Ok(a) = consumer.assignment() {
                        let _ = consumer.resume(&a);
                    }
                    tracing::warn!("the state store accepts commits again: consuming resumes");
                }
                Ok(())
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
                Err(PipelineError::State(e))
            }
            Err(e) => Err(e),
        }
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
        if let Some(u) = &self.usage {
            let unreadable = u.table.unreadable.load(Ordering::Relaxed);
            crate::telemetry::UsageTableSize {
                keys: u.table.len(),
                unreadable: unreadable - self.usage_unreadable_reported,
            }
            .emit();
            self.usage_unreadable_reported = unreadable;
        }
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
            let next = part.committable;
            if !reporting || next == 0 || part.group_committed == Some(next) {
                continue;
            }
            let meta = CommitMeta {
                alerts: alert_positions.clone(),
                rebuild_from: part
                    .shard
                    .map(|s| engine.rebuild_from(s).unwrap_or(next).min(next)),
            };
            if tpl
                .add_partition_offset(topic, p, Offset::Offset(next as i64))
                .is_ok()
            {
                if let Some(mut el) = tpl.find_partition(topic, p) {
                    el.set_metadata(meta.encode());
                }
                part.group_committed = Some(next);
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, mode) {
                tracing::warn!(error = %e, "committing group offsets (they serve lag monitoring and hand-over)");
            }
        }
    }
}
