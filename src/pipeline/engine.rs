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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::PipelineError;
use crate::config::Config;
use crate::decode::Decoder;
use crate::detect::{DetectConfig, LifecycleTable, ShardDetector, ShardStats};
use crate::schema::{Alert, AlertKind, LifecycleEvent};
use crate::sink::{AlertSink, DeadLetter, DeadLetterSink, OutboxEntry};
use crate::source::{MessageKey, Record};
use crate::state::{Commit, SegmentLog, SegmentView, ShardMeta, StateStore};
use crate::telemetry;

/// Registry name prefix of shards.
const SHARD: &str = "shard:";
/// Registry name prefix of sources.
const SOURCE: &str = "source:";

struct Shard<S: StateStore> {
    name: String,
    det: ShardDetector,
    log: SegmentLog<Arc<S>>,
    meta: ShardMeta,
    /// (source, next offset) of the latest record, not yet in `meta.positions`.
    cur: Option<(u32, u64)>,
    /// Segments found expired at restore, deleted with the next commit.
    stale_segments: Vec<u64>,
    /// Stats at the last commit (for per-batch telemetry).
    committed_stats: ShardStats,
    /// While set, records before this offset rebuild state only: no alerts,
    /// no dead letters, not counted (another instance already reported them).
    live_from: Option<u64>,
    /// A batch has started since the last commit (its origin is set).
    in_batch: bool,
    dirty: bool,
}

impl<S: StateStore> Shard<S> {
    /// Rebuilding is over: from here on this instance reports, and counts from zero.
    fn caught_up(&mut self) {
        self.live_from = None;
        self.det.set_stats(ShardStats::default());
        self.committed_stats = ShardStats::default();
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
    rules: DetectConfig,
    usage_rules: crate::detect::UsageConfig,
    decoder: Decoder,
    seed: u64,
    segments: crate::state::SegmentOptions,
    max_index_bytes: usize,
    lifecycle: LifecycleTable,
    lifecycle_pending: Vec<LifecycleEvent>,
    registry: BTreeMap<String, u32>,
    registry_pending: Vec<(String, u32)>,
    source_names: HashMap<u32, String>,
    shards: BTreeMap<u32, Shard<S>>,
    /// Alerts not yet acknowledged by the sink; those before `uncommitted` are
    /// already in the store's outbox.
    outbox: Vec<OutboxEntry>,
    uncommitted: usize,
    outbox_next: u64,
    delete_outbox_below: Option<u64>,
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
}

impl<S: StateStore> Engine<S> {
    /// Opens the engine over a store: lifecycle, registry and the outbox left
    /// by an earlier run are read back.
    pub fn open(store: Arc<S>, config: &Config) -> Result<Self, PipelineError> {
        let meta = store.meta()?;
        let mut lifecycle = LifecycleTable::default();
        for ev in store.lifecycle()? {
            lifecycle.upsert(ev);
        }
        let registry = store.registry()?;
        let source_names = registry
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(SOURCE).map(|n| (*v, n.to_string())))
            .collect();
        let outbox: Vec<OutboxEntry> = store
            .outbox()?
            .into_iter()
            .map(|(seq, json)| OutboxEntry { seq, json })
            .collect();
        let outbox_next = outbox.last().map_or(0, |e| e.seq + 1);
        let uncommitted = outbox.len();
        Ok(Engine {
            store,
            rules: config.detect,
            usage_rules: config.usage,
            decoder: config.decode,
            seed: meta.seed,
            segments: config.state.segments(),
            max_index_bytes: config.state.max_index.0 as usize,
            lifecycle,
            lifecycle_pending: Vec::new(),
            registry,
            registry_pending: Vec::new(),
            source_names,
            shards: BTreeMap::new(),
            outbox,
            uncommitted,
            outbox_next,
            delete_outbox_below: None,
            scratch: Vec::new(),
            malformed: 0,
            key_absent: 0,
            key_mismatch: 0,
            rebuilt: 0,
            failed: None,
            usage_reset: Vec::new(),
            values: Vec::new(),
        })
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub fn rules(&self) -> &DetectConfig {
        &self.rules
    }

    pub fn decoder(&self) -> Decoder {
        self.decoder
    }

    pub fn lifecycle(&self) -> &LifecycleTable {
        &self.lifecycle
    }

    fn id(&mut self, name: String) -> u32 {
        if let Some(id) = self.registry.get(&name) {
            return *id;
        }
        let id = self.registry.values().max().map_or(0, |m| m + 1);
        self.registry.insert(name.clone(), id);
        self.registry_pending.push((name, id));
        id
    }

    /// The id of a named source (a file, or a topic partition).
    pub fn source_id(&mut self, name: &str) -> u32 {
        let id = self.id(format!("{SOURCE}{name}"));
        self.source_names
            .entry(id)
            .or_insert_with(|| name.to_string());
        id
    }

    pub fn source_name(&self, id: u32) -> &str {
        self.source_names.get(&id).map_or("?", |s| s.as_str())
    }

    /// Opens a shard, restoring its live state from the store.
    pub fn open_shard(&mut self, name: &str) -> Result<u32, PipelineError> {
        let id = self.id(format!("{SHARD}{name}"));
        if self.shards.contains_key(&id) {
            return Ok(id);
        }
        let started = Instant::now();
        let meta = self.store.shard(id)?.unwrap_or_default();
        let mut det = ShardDetector::new(self.rules, self.seed).with_usage(self.usage_rules);
        let mut keys = 0usize;
        self.store.for_each_usage(Some(id), &mut |_, key, bytes| {
            let u = postcard::from_bytes(bytes)
                .map_err(|e| crate::state::StateError::Corrupt(format!("usage of {key}: {e}")))?;
            det.restore_usage(key, u);
            keys += 1;
            Ok(())
        })?;
        det.restore_clock(meta.clock());
        let stats = ShardStats::from(&meta.stats);
        det.set_stats(stats.clone());
        let mut log = SegmentLog::new(id, self.store.clone(), meta.next_seq, self.segments);
        let keep_from = det
            .watermark()
            .map_or(i64::MIN, |wm| wm - self.rules.retention_ms);
        let mut stale = Vec::new();
        let (mut windows, mut events, mut segments) = (0usize, 0usize, 0usize);
        self.store.for_each_segment(id, &mut |seq, bytes| {
            let v = SegmentView::parse(seq, bytes)
                .map_err(|e| crate::state::StateError::Corrupt(e.to_string()))?;
            if v.max_t < keep_from {
                stale.push(seq);
                return Ok(());
            }
            segments += 1;
            log.note_existing(seq, v.max_t, v.origin);
            for w in v.windows() {
                let (fp, t) = w.ok_or_else(|| {
                    crate::state::StateError::Corrupt(format!("window record in segment {seq}"))
                })?;
                det.restore_window(fp, t, seq as u32);
                windows += 1;
            }
            for (fp, t, h) in v.events() {
                det.restore_event(fp, t, h);
                events += 1;
            }
            Ok(())
        })?;
        // a rebuild or warm-up interrupted by a crash goes on
        let live_from = meta.live_from;
        telemetry::StateRestored {
            shard: name,
            keys,
            windows,
            events,
            segments,
            elapsed: started.elapsed(),
        }
        .emit();
        self.shards.insert(
            id,
            Shard {
                name: name.to_string(),
                det,
                log,
                meta,
                cur: None,
                stale_segments: stale,
                committed_stats: stats,
                live_from,
                in_batch: false,
                dirty: true,
            },
        );
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
        let name = match self.shards.get(&shard) {
            Some(s) => s.name.clone(),
            None => return Err(PipelineError::Input(format!("shard {shard} is not open"))),
        };
        let mut all = Vec::new();
        self.store.for_each_segment(shard, &mut |seq, _| {
            all.push(seq);
            Ok(())
        })?;
        let old = self.shards.remove(&shard).expect("checked");
        let mut det = ShardDetector::new(self.rules, self.seed).with_usage(self.usage_rules);
        self.usage_reset.push(shard);
        det.restore_clock(Default::default());
        let next_seq = old.log.next_seq();
        self.shards.insert(
            shard,
            Shard {
                name,
                det,
                log: SegmentLog::new(shard, self.store.clone(), next_seq, self.segments),
                meta: ShardMeta {
                    next_seq,
                    ..Default::default()
                },
                cur: None,
                stale_segments: all,
                committed_stats: ShardStats::default(),
                live_from: Some(live_from),
                in_batch: false,
                dirty: true,
            },
        );
        Ok(())
    }

    /// Offset of the first record that is reported (not only rebuilt), while rebuilding.
    pub fn live_from(&self, shard: u32) -> Option<u64> {
        self.shards.get(&shard).and_then(|s| s.live_from)
    }

    /// Where to re-read a shard's source from to rebuild its live state
    /// (see [`SegmentLog::rebuild_from`]); `None` when nothing is live.
    pub fn rebuild_from(&self, shard: u32) -> Option<u64> {
        self.shards.get(&shard).and_then(|s| s.log.rebuild_from())
    }

    /// Positions (source id -> next offset) that a shard's state covers.
    pub fn positions(&self, shard: u32) -> BTreeMap<u32, u64> {
        let Some(s) = self.shards.get(&shard) else {
            return BTreeMap::new();
        };
        let mut p = s.meta.positions.clone();
        if let Some((src, next)) = s.cur {
            p.insert(src, next);
        }
        p
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
        let decoded = self.decoder.decode_record(&rec);
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
        match decoded {
            Ok(ev) => {
                match rec.key {
                    MessageKey::None => {}
                    MessageKey::Absent => self.key_absent += 1,
                    MessageKey::Present(k) => {
                        if k != ev.key_id.as_bytes() {
                            self.key_mismatch += 1;
                        }
                    }
                }
                self.scratch.clear();
                s.det
                    .process(&ev, rec.pos, &self.lifecycle, &mut s.log, &mut self.scratch)?;
                for a in self.scratch.drain(..) {
                    self.outbox.push(OutboxEntry {
                        seq: self.outbox_next,
                        json: serde_json::to_vec(&a).expect("alert serializes"),
                    });
                    self.outbox_next += 1;
                }
                Ok(())
            }
            Err(e) => {
                let name = self
                    .source_names
                    .get(&rec.pos.source)
                    .cloned()
                    .unwrap_or_else(|| "?".into());
                self.dead_letter(&name, &rec, &e, dlq)
            }
        }
    }

    /// The one dead-letter path: counted, logged (redacted, rate-limited)
    /// and sent to `dlq` with its position and original bytes.
    pub fn dead_letter(
        &mut self,
        source: &str,
        rec: &Record<'_>,
        e: &crate::decode::DecodeError,
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
            self.uncommitted += info.alerts;
        }
        let mut c = Commit {
            registry: std::mem::take(&mut self.registry_pending),
            lifecycle: std::mem::take(&mut self.lifecycle_pending),
            outbox_put: self.outbox[self.uncommitted..]
                .iter()
                .map(|e| (e.seq, e.json.clone()))
                .collect(),
            outbox_delete_below: self.delete_outbox_below.take(),
            usage_reset: std::mem::take(&mut self.usage_reset),
            values: std::mem::take(&mut self.values),
            ..Default::default()
        };
        let mut info = CommitInfo {
            alerts: c.outbox_put.len(),
            ..Default::default()
        };
        for (id, s) in self.shards.iter_mut() {
            if !s.dirty {
                continue;
            }
            s.dirty = false;
            s.in_batch = false;
            if let Some((src, next)) = s.cur.take() {
                s.meta.positions.insert(src, next);
            }
            for (seq, bytes) in s.log.take_sealed() {
                c.segments.push((*id, seq, bytes));
            }
            let mut dels = std::mem::take(&mut s.stale_segments);
            if let Some(wm) = s.det.watermark() {
                dels.extend(s.log.expire(wm - self.rules.retention_ms));
            }
            c.segment_deletes.extend(dels.into_iter().map(|q| (*id, q)));
            c.segment_floors.push((*id, s.log.floor()));
            for (key, u) in s.det.take_dirty_usage() {
                c.usage.push((
                    *id,
                    key.to_string(),
                    postcard::to_stdvec(u).expect("usage serializes"),
                ));
            }
            s.meta.set_clock(s.det.clock());
            s.meta.stats = s.det.stats().into();
            s.meta.live_from = s.live_from;
            s.meta.next_seq = s.log.next_seq();
            c.shards.push((*id, s.meta.clone()));
            let now = s.det.stats();
            let before = &s.committed_stats;
            info.events += now.events - before.events;
            telemetry::EventsProcessed {
                shard: &s.name,
                count: now.events - before.events,
                duplicates: now.duplicates - before.duplicates,
                late: now.late - before.late,
            }
            .emit();
            for k in AlertKind::ALL {
                telemetry::AlertsRaised {
                    kind: k,
                    count: now.alerts[k.index()] - before.alerts[k.index()],
                }
                .emit();
            }
            s.committed_stats = now.clone();
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
        self.uncommitted += info.alerts;
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
        if t.index_bytes > self.max_index_bytes {
            return Err(PipelineError::IndexFull {
                bytes: t.index_bytes,
                limit: self.max_index_bytes,
                entries: t.live_entries,
            });
        }
        Ok(info)
    }

    /// Hands every committed alert to the sink; they leave the outbox with the
    /// next commit. Returns how many were delivered.
    pub fn deliver(&mut self, sink: &mut dyn AlertSink) -> Result<usize, PipelineError> {
        let n = self.uncommitted;
        if n == 0 {
            return Ok(0);
        }
        sink.deliver(&self.outbox[..n])?;
        self.delete_outbox_below = Some(self.outbox[n - 1].seq + 1);
        self.outbox.drain(..n);
        self.uncommitted = 0;
        Ok(n)
    }

    /// Alerts committed but not yet delivered (e.g. left by a crash).
    pub fn undelivered(&self) -> usize {
        self.uncommitted
    }

    /// Whether delivered alerts wait for a commit to leave the outbox.
    pub fn outbox_delete_pending(&self) -> bool {
        self.delete_outbox_below.is_some()
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
