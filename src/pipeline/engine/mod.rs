//! The processing core shared by `scan` and `run`: decode -> detect -> state
//! commit -> outbox, for any number of shards, over any [`StateStore`].
//!
//! Commit order for a batch:
//! 1. dead letters of the batch are flushed (they are at-least-once too);
//! 2. one atomic store commit: new sighting segments, expired segment
//!    deletes, shard progress (positions, event-time clock, counters),
//!    lifecycle changes, and the batch's alerts into the outbox;
//! 3. [`Engine::deliver`] hands committed alerts to the sink; once it
//!    returns, they are removed from the outbox in the next commit.
//!
//! A crash anywhere restarts from the last commit: state is exactly-once,
//! alerts are at-least-once with deterministic ids.
//!
//! The pieces: [`registry`] (names and ids), [`outbox`] (alerts until
//! acknowledged), [`shard`] (one shard restored or fresh, and its part of a
//! commit); this file coordinates them.

mod outbox;
mod registry;
mod shard;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use outbox::Outbox;
use registry::Registry;
use shard::Shard;

use super::health::InputHealth;
use super::PipelineError;
use crate::config::Config;
use crate::decode::{DecodeError, Decoder};
use crate::detect::{DetectConfig, LifecycleTable, ShardStats, UsageConfig};
use crate::schema::{Alert, LifecycleEvent};
use crate::sink::{AlertSink, DeadLetter, DeadLetterSink};
use crate::source::{MessageKey, Record};
use crate::state::{Commit, SegmentOptions, StateStore};
use crate::telemetry;

/// What the engine needs from the configuration.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub rules: DetectConfig,
    pub usage: UsageConfig,
    pub decoder: Decoder,
    pub segments: SegmentOptions,
    /// Bound of the live index in memory.
    pub max_index_bytes: usize,
}

impl From<&Config> for EngineOptions {
    fn from(c: &Config) -> Self {
        EngineOptions {
            rules: c.detect,
            usage: c.usage,
            decoder: Decoder::new(&c.decode, &c.input)
                .expect("a validated config's input format resolves"),
            segments: c.state.segments(),
            max_index_bytes: c.state.max_index.0 as usize,
        }
    }
}

/// What a commit wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct CommitInfo {
    pub events: u64,
    pub segments: usize,
    pub deleted_segments: usize,
    pub alerts: usize,
}

/// Totals over every shard of an engine.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub stats: ShardStats,
    pub malformed: u64,
    pub live_entries: usize,
    pub index_bytes: usize,
    /// Kafka records without a message key.
    pub key_absent: u64,
    /// Kafka records whose message key is not their key_id.
    pub key_mismatch: u64,
    /// Records read again to rebuild the state of a partition taken over.
    pub rebuilt: u64,
}

/// Decoder, detectors, live state and outbox of one process.
pub struct Engine<S: StateStore> {
    store: Arc<S>,
    opts: EngineOptions,
    seed: u64,
    lifecycle: LifecycleTable,
    lifecycle_pending: Vec<LifecycleEvent>,
    registry: Registry,
    shards: BTreeMap<u32, Shard<S>>,
    outbox: Outbox,
    scratch: Vec<Alert>,
    malformed: u64,
    key_absent: u64,
    key_mismatch: u64,
    rebuilt: u64,
    /// A commit the store refused (e.g. disk full), retried first next time.
    failed: Option<(Commit, CommitInfo)>,
    /// Shards whose usage records go with the next commit.
    usage_reset: Vec<u32>,
    /// Named values for the next commit.
    values: Vec<(String, Vec<u8>)>,
    inputs: InputHealth,
}

impl<S: StateStore> Engine<S> {
    /// Opens the engine over a store: lifecycle, registry and the outbox left
    /// by an earlier run are read back.
    pub fn open(store: Arc<S>, opts: impl Into<EngineOptions>) -> Result<Self, PipelineError> {
        let meta = store.meta()?;
        let mut lifecycle = LifecycleTable::default();
        for ev in store.lifecycle()? {
            lifecycle.upsert(ev);
        }
        Ok(Engine {
            registry: Registry::new(store.registry()?),
            outbox: Outbox::restore(store.outbox()?),
            store,
            opts: opts.into(),
            seed: meta.seed,
            lifecycle,
            lifecycle_pending: Vec::new(),
            shards: BTreeMap::new(),
            scratch: Vec::new(),
            malformed: 0,
            key_absent: 0,
            key_mismatch: 0,
            rebuilt: 0,
            failed: None,
            usage_reset: Vec::new(),
            values: Vec::new(),
            inputs: InputHealth::default(),
        })
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub fn rules(&self) -> &DetectConfig {
        &self.opts.rules
    }

    pub fn decoder(&self) -> &Decoder {
        &self.opts.decoder
    }

    pub fn lifecycle(&self) -> &LifecycleTable {
        &self.lifecycle
    }

    /// The id of a named source (a file, or a topic partition).
    pub fn source_id(&mut self, name: &str) -> u32 {
        self.registry.source_id(name)
    }

    pub fn source_name(&self, id: u32) -> &str {
        self.registry.source_name(id)
    }

    /// Opens a shard, restoring its live state from the store.
    pub fn open_shard(&mut self, name: &str) -> Result<u32, PipelineError> {
        let id = self.registry.shard_id(name);
        if !self.shards.contains_key(&id) {
            let s = Shard::restore(&self.store, id, name, &self.opts, self.seed)?;
            self.shards.insert(id, s);
        }
        Ok(id)
    }

    /// Forgets a shard's in-memory state (its partition was revoked). Call
    /// [`Engine::commit`] first: what is not committed is lost.
    pub fn close_shard(&mut self, shard: u32) {
        self.shards.remove(&shard);
    }

    /// Throws a shard's state away, in memory and (with the next commit) in
    /// the store, to rebuild it from the source: records before `live_from`
    /// only rebuild state, later ones are reported as usual.
    pub fn reset_shard(&mut self, shard: u32, live_from: u64) -> Result<(), PipelineError> {
        let old = self
            .shards
            .get(&shard)
            .ok_or(PipelineError::ShardNotOpen(shard))?;
        let fresh = Shard::fresh(&self.store, shard, old, &self.opts, self.seed, live_from)?;
        self.shards.insert(shard, fresh);
        self.usage_reset.push(shard);
        Ok(())
    }

    /// Offset of the first record that is reported (not only rebuilt), while rebuilding.
    pub fn live_from(&self, shard: u32) -> Option<u64> {
        self.shards.get(&shard).and_then(|s| s.live_from)
    }

    /// Where to re-read a shard's source from to rebuild its live state
    /// (see [`crate::state::SegmentLog::rebuild_from`]); `None` when nothing is live.
    pub fn rebuild_from(&self, shard: u32) -> Option<u64> {
        self.shards.get(&shard).and_then(|s| s.log.rebuild_from())
    }

    /// Positions (source id -> next offset) that a shard's state covers.
    pub fn positions(&self, shard: u32) -> BTreeMap<u32, u64> {
        self.shards
            .get(&shard)
            .map(|s| s.positions())
            .unwrap_or_default()
    }

    /// Adds a lifecycle record; it is persisted with the next commit.
    pub fn add_lifecycle(&mut self, ev: LifecycleEvent) -> bool {
        let changed = self.lifecycle.upsert(ev.clone());
        if changed {
            self.lifecycle_pending.push(ev);
        }
        changed
    }

    /// Decodes and detects one record of `shard`. An undecodable record goes
    /// to `dlq`; the position advances either way.
    pub fn process(
        &mut self,
        shard: u32,
        rec: Record<'_>,
        dlq: &mut dyn DeadLetterSink,
    ) -> Result<(), PipelineError> {
        let decoded = self.opts.decoder.decode_record(&rec);
        let s = self.shards.get_mut(&shard).expect("shard opened");
        if !s.in_batch {
            s.in_batch = true;
            s.log.set_origin(rec.pos.offset);
        }
        s.cur = Some((rec.pos.source, rec.pos.offset + 1));
        s.dirty = true;
        if let Some(live_from) = s.live_from {
            if rec.pos.offset < live_from {
                // rebuilding: state only, no alerts, no dead letters, not counted
                self.rebuilt += 1;
                if let Ok(ev) = decoded {
                    self.scratch.clear();
                    s.det
                        .process(&ev, rec.pos, &self.lifecycle, &mut s.log, &mut self.scratch)?;
                    self.scratch.clear();
                }
                if rec.pos.offset + 1 >= live_from {
                    s.caught_up();
                }
                return Ok(());
            }
            s.caught_up();
        }
        if self.inputs.record(rec.pos.source, decoded.is_err()) {
            let input = self.registry.source_name(rec.pos.source);
            self.inputs
                .flag(rec.pos.source, input, self.opts.decoder.format());
        }
        match decoded {
            Ok(ev) => {
                match rec.key {
                    MessageKey::None => {}
                    MessageKey::Absent => self.key_absent += 1,
                    MessageKey::Present(k) => {
                        if k != ev.key_id.as_deref().unwrap_or_default().as_bytes() {
                            self.key_mismatch += 1;
                        }
                    }
                }
                self.scratch.clear();
                s.det
                    .process(&ev, rec.pos, &self.lifecycle, &mut s.log, &mut self.scratch)?;
                for a in &self.scratch {
                    self.outbox.push(a);
                }
                Ok(())
            }
            Err(e) => {
                let name = self.registry.source_name(rec.pos.source).to_string();
                self.dead_letter(&name, &rec, &e, dlq)
            }
        }
    }

    /// The end of a bounded input (`scan`): every shard judges what was
    /// still waiting for the watermark (sequence numbers), as if event time
    /// had passed it all; the alerts go to the outbox with the next commit.
    pub fn end_of_input(&mut self) -> Result<(), PipelineError> {
        for s in self.shards.values_mut() {
            self.scratch.clear();
            s.det.end_of_input(&mut s.log, &mut self.scratch)?;
            // judging changes the keys' state even when nothing is raised
            s.dirty = true;
            for a in &self.scratch {
                self.outbox.push(a);
            }
        }
        self.scratch.clear();
        Ok(())
    }

    /// The one dead-letter path: counted, logged (redacted, rate-limited)
    /// and sent to `dlq` with its position and original bytes.
    pub fn dead_letter(
        &mut self,
        source: &str,
        rec: &Record<'_>,
        e: &DecodeError,
        dlq: &mut dyn DeadLetterSink,
    ) -> Result<(), PipelineError> {
        self.malformed += 1;
        let msg = e.to_string();
        telemetry::DeadLettered {
            source,
            offset: rec.pos.offset,
            error_kind: e.kind(),
            error: &msg,
        }
        .emit();
        dlq.send(&DeadLetter {
            source,
            pos: rec.pos,
            error: e,
            payload: rec.payload,
            key: rec.key,
        })?;
        Ok(())
    }

    fn warn_mostly_dead(&mut self, source: u32) {
        let input = self.registry.source_name(source).to_string();
        self.inputs.flag(source, &input, self.opts.decoder.format());
    }

    /// Judges the inputs that ended before their first
    /// `FIRST_RECORDS` records (`scan`, at the end of its files).
    pub fn finish_inputs(&mut self) {
        for source in self.inputs.unjudged() {
            self.warn_mostly_dead(source);
        }
    }

    /// The inputs of which more than half of the first `FIRST_RECORDS`
    /// records were dead letters (by name, in the order found).
    pub fn mostly_dead_inputs(&self) -> &[String] {
        self.inputs.flagged()
    }

    /// Stores a named value with the next commit.
    pub fn set_value(&mut self, name: &str, v: Vec<u8>) {
        self.values.retain(|(n, _)| n != name);
        self.values.push((name.to_string(), v));
    }

    /// Commits everything since the last commit atomically (see the module
    /// docs). When the store refuses (disk full, I/O error) nothing is lost:
    /// the commit is kept and retried first by the next call.
    pub fn commit(&mut self, dlq: &mut dyn DeadLetterSink) -> Result<CommitInfo, PipelineError> {
        let started = Instant::now();
        dlq.flush()?;
        if let Some((c, info)) = self.failed.take() {
            if let Err(e) = self.store.commit(&c) {
                self.failed = Some((c, info));
                return Err(e.into());
            }
            self.outbox.committed(info.alerts);
        }
        let (outbox_put, outbox_delete_below) = self.outbox.stage();
        let mut c = Commit {
            registry: self.registry.take_pending(),
            lifecycle: std::mem::take(&mut self.lifecycle_pending),
            outbox_put,
            outbox_delete_below,
            usage_reset: std::mem::take(&mut self.usage_reset),
            values: std::mem::take(&mut self.values),
            ..Default::default()
        };
        let mut info = CommitInfo {
            alerts: c.outbox_put.len(),
            ..Default::default()
        };
        for (id, s) in self.shards.iter_mut().filter(|(_, s)| s.dirty) {
            info.events += s.stage(*id, self.opts.rules.retention_ms, &mut c);
        }
        info.segments = c.segments.len();
        info.deleted_segments = c.segment_deletes.len();
        if !c.is_empty() {
            if let Err(e) = self.store.commit(&c) {
                self.failed = Some((c, info));
                return Err(e.into());
            }
        }
        // every segment handed to this commit (and to a retried one) is in
        // the store now: only from here may the segment cache evict them
        for s in self.shards.values_mut() {
            s.log.mark_durable();
        }
        self.outbox.committed(info.alerts);
        telemetry::Committed {
            events: info.events,
            segments: info.segments,
            deleted_segments: info.deleted_segments,
            alerts: info.alerts,
            elapsed: started.elapsed(),
        }
        .emit();
        let t = self.totals();
        telemetry::StateSize {
            live_entries: t.live_entries,
            index_bytes: t.index_bytes,
            segments: self.shards.values().map(|s| s.log.segment_count()).sum(),
        }
        .emit();
        if t.index_bytes > self.opts.max_index_bytes {
            return Err(PipelineError::IndexFull {
                bytes: t.index_bytes,
                limit: self.opts.max_index_bytes,
                entries: t.live_entries,
            });
        }
        Ok(info)
    }

    /// Hands every committed alert to the sink; they leave the outbox with the
    /// next commit. Returns how many were delivered.
    pub fn deliver(&mut self, sink: &mut dyn AlertSink) -> Result<usize, PipelineError> {
        Ok(self.outbox.deliver(sink)?)
    }

    /// Alerts committed but not yet delivered (e.g. left by a crash).
    pub fn undelivered(&self) -> usize {
        self.outbox.undelivered()
    }

    /// Whether delivered alerts wait for a commit to leave the outbox.
    pub fn outbox_delete_pending(&self) -> bool {
        self.outbox.delete_pending()
    }

    /// Whether a refused commit is waiting to be retried.
    pub fn commit_pending(&self) -> bool {
        self.failed.is_some()
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            malformed: self.malformed,
            key_absent: self.key_absent,
            key_mismatch: self.key_mismatch,
            rebuilt: self.rebuilt,
            ..Default::default()
        };
        for s in self.shards.values() {
            t.stats.add(s.det.stats());
            t.live_entries += s.det.index().len();
            t.index_bytes += s.det.index().heap_bytes();
        }
        t
    }

    /// Ids of the shards open in memory.
    pub fn open_shards(&self) -> Vec<u32> {
        self.shards.keys().copied().collect()
    }

    /// The freshest usage of a key in any open shard.
    pub fn usage_of(&self, key_id: &str) -> Option<&crate::detect::KeyUsage> {
        self.shards
            .values()
            .filter_map(|s| s.det.usage().get(key_id))
            .max_by_key(|u| u.last_seen)
    }

    /// Event time of the newest request seen by any open shard.
    pub fn now(&self) -> Option<crate::schema::Millis> {
        self.shards
            .values()
            .filter_map(|s| s.det.clock().max_seen)
            .max()
    }

    /// Rotation reports from the live state.
    pub fn rotation_reports(
        &self,
        cfg: &crate::report::ReportConfig,
    ) -> Vec<crate::report::RotationReport> {
        match self.now() {
            Some(now) => crate::report::reports(cfg, &self.lifecycle, self, now),
            None => Vec::new(),
        }
    }
}

impl<S: StateStore> crate::report::UsageLookup for Engine<S> {
    fn usage(&self, key_id: &str) -> Option<&crate::detect::KeyUsage> {
        self.usage_of(key_id)
    }
}
