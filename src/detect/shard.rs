//! The detector of one shard (a file scan, or one input partition): the
//! replay rule over the live index, plus the stateless skew and lifecycle
//! rules, all on event time.
//!
//! # Replay rule
//! A request is a replay when its (key_id, nonce) had a first sighting with a
//! different event id no more than `retention` earlier. Every reuse is its own
//! alert; a reuse never extends the window; a sighting after the window starts
//! a new one. Order is event time (`received_at`); equal times keep arrival
//! order. A late event (up to `allowed_lateness` behind the largest time seen)
//! that precedes the current window start takes its place, and the former
//! start becomes a replay of it, so the set of alerts does not depend on
//! arrival order within the lateness.
//!
//! # Liveness
//! The watermark is the largest received_at seen minus the lateness. An entry
//! is live while `time + retention >= watermark`; only live entries count,
//! whether or not a sweep has removed the others yet, so the answer never
//! depends on when sweeps or restarts happen.

use super::config::{DetectConfig, Toggle};
use super::fingerprint::{Fingerprinter, Position};
use super::index::{self, Index};
use super::lifecycle::{self, LifecycleTable};
use super::sequence::{self, SeqEntry, SeqState};
use super::sighting::{LookupError, SightingInfo, SightingLog, WindowRecord};
use super::skew;
use super::usage::{self, DirtyKeys, KeyUsage, UsageConfig};
use crate::schema::alert::{
    self, ReplayBasis, ReplayEvidence, RequestContext, SequenceEvidence, Sighting,
};
use crate::schema::{AccessEvent, Alert, AlertKind, Evidence, Millis, Severity};

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Evaluated by every rule (alerts, if any, were appended).
    Evaluated,
    /// Another delivery of an event id already seen: no alert.
    Duplicate,
    /// The same record at the same position, processed again: no alert.
    Reprocessed,
}

/// Per-shard counters (monotonic), persisted with the shard's progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ShardStats {
    pub events: u64,
    pub duplicates: u64,
    pub reprocessed: u64,
    /// Arrived behind the watermark.
    pub late: u64,
    /// So late that the live window no longer covers them: replay not evaluated.
    pub too_late: u64,
    /// Per alert kind (`AlertKind::index`); stored as a list, so a state
    /// written before a kind existed reads back with zero for it.
    #[serde(with = "alert_counts")]
    pub alerts: [u64; AlertKind::ALL.len()],
    /// Two different (key, nonce) pairs with one 64-bit fingerprint.
    pub fingerprint_conflicts: u64,
}

mod alert_counts {
    use super::AlertKind;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        v: &[u64; AlertKind::ALL.len()],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.as_slice().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<[u64; AlertKind::ALL.len()], D::Error> {
        let v: Vec<u64> = Vec::deserialize(d)?;
        let mut out = [0; AlertKind::ALL.len()];
        for (a, b) in out.iter_mut().zip(v) {
            *a = b;
        }
        Ok(out)
    }
}

impl ShardStats {
    pub fn alerts_total(&self) -> u64 {
        self.alerts.iter().sum()
    }

    /// What changed since `before` (an earlier value of the same counters).
    pub fn since(&self, before: &ShardStats) -> ShardStats {
        let mut d = ShardStats {
            events: self.events - before.events,
            duplicates: self.duplicates - before.duplicates,
            reprocessed: self.reprocessed - before.reprocessed,
            late: self.late - before.late,
            too_late: self.too_late - before.too_late,
            fingerprint_conflicts: self.fingerprint_conflicts - before.fingerprint_conflicts,
            alerts: self.alerts,
        };
        for (a, b) in d.alerts.iter_mut().zip(before.alerts) {
            *a -= b;
        }
        d
    }

    pub fn add(&mut self, o: &ShardStats) {
        self.events += o.events;
        self.duplicates += o.duplicates;
        self.reprocessed += o.reprocessed;
        self.late += o.late;
        self.too_late += o.too_late;
        self.fingerprint_conflicts += o.fingerprint_conflicts;
        for (a, b) in self.alerts.iter_mut().zip(o.alerts) {
            *a += b;
        }
    }
}

/// Event-time progress of a shard, persisted with its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Clock {
    /// Largest received_at seen.
    pub max_seen: Option<Millis>,
    /// Watermark at the last sweep of the live index.
    pub last_sweep: Millis,
}

/// Detector of one shard.
pub struct ShardDetector {
    cfg: DetectConfig,
    fp: Fingerprinter,
    index: Index,
    clock: Clock,
    stats: ShardStats,
    usage_cfg: UsageConfig,
    usage: UsageMap,
    /// Keys whose usage changed since they were last taken, by checkpoint slice.
    usage_dirty: DirtyKeys,
    /// Keys with sequence numbers not judged yet, by the first one's time
    /// (keys by their number, [`SeqState::id`]).
    seq_pending: std::collections::BTreeSet<(Millis, u32)>,
    /// The key of each number.
    seq_keys: Vec<Box<str>>,
    /// The sequence rule's state per key (`detect.sequence = "on"`): apart
    /// from usage, because it is committed with every batch while usage is
    /// checkpointed (see [`UsageMode`]).
    seq: hashbrown::HashMap<Box<str>, SeqState>,
    /// Keys whose sequence state changed since [`ShardDetector::take_dirty_seq`].
    seq_dirty: Vec<Box<str>>,
    /// The context of requests certain to be out of sequence when they are
    /// judged (see [`expect_out_of_sequence`]), by (key
    /// number, received_at, nonce fingerprint), with their event ids:
    /// their alerts then need not read them back from the sighting log. At
    /// most [`SEQ_CONTEXTS`].
    seq_context: hashbrown::HashMap<(u32, Millis, u128), (Box<str>, RequestContext)>,
    /// Keys (by number) whose maximum was folded since its event id was
    /// last read back ([`SeqState::resolve_max`]); some may be resolved
    /// already.
    seq_unresolved: Vec<u32>,
    /// The step of event time the watermark was last in, `[lo, hi)` (see
    /// [`ShardDetector::judge_boundary`]); empty before the first.
    judge_bucket: (Millis, Millis),
    /// Usage handed over with a partition: per key, the input offset it
    /// counts up to (requests before it, read again to rebuild the replay
    /// window, are not counted twice).
    seeded: hashbrown::HashMap<Box<str>, u64>,
}

/// What a request read again does to per-key usage. Usage is checkpointed
/// at an interval with its own input position, not with every commit; after
/// a restart, the records between that position and the committed one are
/// read again, and usage learns from them as it did the first time: they
/// are recognised as themselves (reprocessed), which otherwise changes
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageMode {
    /// A reprocessed request changes nothing.
    Normal,
    /// Committed after the usage checkpoint: a reprocessed request goes
    /// into usage (and only there).
    Catchup,
    /// Already counted in usage handed over with its partition (see
    /// [`ShardDetector::seed_usage`]): every rule but usage.
    Skip,
}

/// A key's state handed over with its partition (the usage topic): what
/// the instance that processed the partition before had counted of it up to
/// `offset` (see [`ShardDetector::seed_usage`]).
#[derive(Debug, Clone)]
pub struct KeySeed {
    pub key: String,
    pub usage: KeyUsage,
    /// The sequence rule's maximum and its bounds (rule on).
    pub seq: Option<SeqState>,
    /// The next offset of the partition it counts up to.
    pub offset: u64,
}

/// A request's fingerprints, computed ahead ([`ShardDetector::prepare`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// (key, event id)
    event: u64,
    /// (key, nonce) or (key, signature), and which
    basis: Option<(u128, ReplayBasis)>,
}

impl ShardDetector {
    pub fn new(cfg: DetectConfig, seed: u64) -> Self {
        ShardDetector {
            cfg,
            fp: Fingerprinter::new(seed),
            index: Index::default(),
            clock: Clock {
                max_seen: None,
                last_sweep: Millis::MIN,
            },
            stats: ShardStats::default(),
            usage_cfg: UsageConfig::default(),
            usage: hashbrown::HashMap::new(),
            usage_dirty: DirtyKeys::default(),
            seq_pending: std::collections::BTreeSet::new(),
            seq_unresolved: Vec::new(),
            seq_keys: Vec::new(),
            seq: hashbrown::HashMap::new(),
            seq_dirty: Vec::new(),
            seq_context: hashbrown::HashMap::new(),
            judge_bucket: (0, 0),
            seeded: hashbrown::HashMap::new(),
        }
    }

    /// Sets the parameters of the usage rules.
    pub fn with_usage(mut self, cfg: UsageConfig) -> Self {
        self.usage_cfg = cfg;
        self
    }

    /// Per-key usage of this shard.
    pub fn usage(&self) -> &UsageMap {
        &self.usage
    }

    /// Restores a key's usage read back from the state store.
    pub fn restore_usage(&mut self, key: &str, mut u: KeyUsage) {
        u.dirty = false;
        self.usage.insert(key.into(), Box::new(u));
    }

    /// A first sighting read back from the sighting log that carries a
    /// sequence number ([`SightingInfo::seq`]); `replay`: a later request
    /// took its place as the first sighting (it is a replay). Call
    /// [`ShardDetector::finish_restore`] after the last one.
    pub fn restore_sequence(&mut self, fp: u128, info: &SightingInfo<String>, replay: bool) {
        let Some((key, n)) = &info.seq else {
            return;
        };
        if self.cfg.sequence != Toggle::On || replay {
            return;
        }
        if let Some(s) = self.seq.get_mut(key.as_str()) {
            s.restore(*n, fp, info.received_at);
        }
    }

    /// Restores a key's sequence state (the maximum and its bounds) read
    /// back from the state store, before [`ShardDetector::restore_sequence`].
    pub fn restore_seq_state(&mut self, key: &str, mut s: SeqState) {
        s.dirty = false;
        s.id = match self.seq.get(key) {
            Some(old) => old.id,
            None => self.seq_key(key),
        };
        // the key's waiting requests are rebuilt: so are their contexts
        let id = s.id;
        self.seq_context.retain(|k, _| k.0 != id);
        self.seq.insert(key.into(), s);
    }

    /// Numbers a key new to the sequence rule.
    fn seq_key(&mut self, key: &str) -> u32 {
        let id = u32::try_from(self.seq_keys.len()).expect("fewer than 2^32 keys per shard");
        self.seq_keys.push(key.into());
        id
    }

    /// After restoring usage and sequence numbers: what waits to be judged
    /// and folded.
    pub fn finish_restore(&mut self) {
        for s in self.seq.values_mut() {
            s.reindex();
            if let Some(next) = s.next_undecided() {
                self.seq_pending.insert((next, s.id));
            }
        }
    }

    /// Reads back from the sighting log the event id of every key's running
    /// maximum folded since the last call: before the state is written
    /// (a commit calls it first, while the maximum's window is surely in
    /// the log).
    pub fn resolve_sequence<L: SightingLog>(&mut self, log: &mut L) -> Result<(), LookupError> {
        self.resolve_sequence_before(Millis::MAX, log)
    }

    /// [`ShardDetector::resolve_sequence`] for the maxima received before
    /// `bound` only (the others stay listed).
    fn resolve_sequence_before<L: SightingLog>(
        &mut self,
        bound: Millis,
        log: &mut L,
    ) -> Result<(), LookupError> {
        let mut keep = Vec::new();
        for id in std::mem::take(&mut self.seq_unresolved) {
            let Some(s) = self.seq.get_mut(&self.seq_keys[id as usize]) else {
                continue;
            };
            if !s.max_unresolved() {
                continue;
            }
            if s.max.as_ref().is_some_and(|m| m.2 >= bound) {
                keep.push(id);
                continue;
            }
            let index = &self.index;
            s.resolve_max(|fp, t| first_event_id(index, log, fp, t))?;
        }
        self.seq_unresolved = keep;
        Ok(())
    }

    /// The keys whose sequence state changed since the last call, with it
    /// (after [`ShardDetector::resolve_sequence`]).
    pub fn take_dirty_seq(&mut self) -> Vec<(&str, &SeqState)> {
        debug_assert!(
            self.seq.values().all(|s| !s.max_unresolved()),
            "resolve_sequence first"
        );
        take_dirty(&mut self.seq, std::mem::take(&mut self.seq_dirty), |s| {
            s.dirty = false
        })
    }

    /// How many requests' contexts wait for their out_of_sequence alert.
    #[cfg(test)]
    pub(crate) fn seq_contexts_waiting(&self) -> usize {
        self.seq_context.len()
    }

    /// The sequence state of every key (for tests and reports).
    pub fn seq_states(&self) -> &hashbrown::HashMap<Box<str>, SeqState> {
        &self.seq
    }

    /// Takes a key's state from the instance that processed its partition
    /// before (the usage topic): its usage and, with the sequence rule on,
    /// its running maximum, as they were at `offset` of the partition. The
    /// shard is being rebuilt from its input: requests of the key before
    /// `offset` then go to every rule but usage, and the sequence rule takes
    /// them back as a restart does ([`SeqState::restore`]: what the maximum
    /// already holds is not judged again as new).
    pub fn seed_usage(&mut self, seed: KeySeed) {
        let KeySeed {
            key,
            mut usage,
            seq,
            offset,
        } = seed;
        // listed once, however often it is marked
        if !self.usage.get(key.as_str()).is_some_and(|old| old.dirty) {
            self.usage_dirty.push(key.as_str());
        }
        usage.dirty = true;
        self.usage.insert(key.as_str().into(), Box::new(usage));
        if let (Some(mut s), Toggle::On) = (seq, self.cfg.sequence) {
            // a fresh shard: nothing of the key waits to be judged yet
            s.buf.clear();
            s.reindex();
            self.restore_seq_state(&key, s);
            if let Some(s) = self.seq.get_mut(key.as_str()) {
                s.dirty = true;
                self.seq_dirty.push(key.as_str().into());
            }
        }
        self.seeded.insert(key.into(), offset);
    }

    /// Whether a request of `key` at `offset` is counted in seeded usage.
    pub fn usage_seeded_beyond(&self, key: Option<&str>, offset: u64) -> bool {
        key.and_then(|k| self.seeded.get(k))
            .is_some_and(|&o| offset < o)
    }

    /// The rebuild is over: seeded usage needs no more care.
    pub fn forget_seeds(&mut self) {
        self.seeded = hashbrown::HashMap::new();
    }

    /// Whether some key's usage changed since it was last taken.
    pub fn usage_dirty(&self) -> bool {
        !self.usage_dirty.is_empty()
    }

    /// Whether the usage of a key of checkpoint slice `slice` (see
    /// [`usage::usage_slice`]) changed since it was last taken.
    pub fn usage_slice_dirty(&self, slice: usize) -> bool {
        self.usage_dirty.slice_dirty(slice)
    }

    /// The keys of the checkpoint slices in `slices` whose usage changed
    /// since they were last taken, each marked clean, with its usage, its
    /// sequence state (rule on) and, for usage handed over while the shard is
    /// rebuilt, the offset it counts up to: what a usage checkpoint writes
    /// and publishes.
    #[allow(clippy::type_complexity)]
    pub fn take_dirty_usage_for_checkpoint(
        &mut self,
        slices: std::ops::Range<usize>,
    ) -> Vec<(&str, &KeyUsage, Option<&SeqState>, Option<u64>)> {
        let (seq, seeded) = (&self.seq, &self.seeded);
        let keys = self.usage_dirty.take(slices);
        take_dirty(&mut self.usage, keys, |u| u.dirty = false)
            .into_iter()
            .map(|(k, u)| (k, &**u, seq.get(k), seeded.get(k).copied()))
            .collect()
    }

    pub fn config(&self) -> &DetectConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &ShardStats {
        &self.stats
    }

    pub fn set_stats(&mut self, stats: ShardStats) {
        self.stats = stats;
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    /// Largest received_at seen minus the allowed lateness.
    pub fn watermark(&self) -> Option<Millis> {
        self.clock
            .max_seen
            .map(|m| m.saturating_sub(self.cfg.allowed_lateness_ms))
    }

    /// Whether an entry at `t` is still live at watermark `wm`.
    #[inline]
    fn live(&self, t: Millis, wm: Millis) -> bool {
        t + self.cfg.retention_ms >= wm
    }

    /// Restores event-time progress (before restoring entries).
    pub fn restore_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// Whether a persisted entry at `t` is still live; callers restore only those.
    pub fn restorable(&self, t: Millis) -> bool {
        match self.watermark() {
            Some(wm) => self.live(t, wm) && t <= self.clock.max_seen.unwrap_or(t),
            None => false,
        }
    }

    /// Restores a window start read back from the state store, in log
    /// order. A later record for the same fingerprint replaces an earlier one;
    /// a later record that is no longer live removes it (as it did live).
    pub fn restore_window(&mut self, fp: u128, t: Millis, seg: u32) {
        if self.restorable(t) {
            self.index.insert_window(fp as u64, t, seg);
        } else {
            self.index.nonces.remove(&(fp as u64));
        }
    }

    /// Restores a live event id read back from the state store.
    pub fn restore_event(&mut self, fp: u64, t: Millis, pos_hash: u32) {
        if self.restorable(t) {
            self.index.events.insert(fp, index::pack(t, pos_hash));
        }
    }

    /// Advances event time to include `t`; sweeps expired entries when the
    /// watermark has moved far enough since the last sweep.
    fn advance(&mut self, t: Millis) -> Millis {
        let max = match self.clock.max_seen {
            Some(m) if m >= t => return m - self.cfg.allowed_lateness_ms,
            Some(m) => {
                let wm = t - self.cfg.allowed_lateness_ms;
                if wm - self.clock.last_sweep.max(Millis::MIN / 2) >= self.cfg.sweep_interval_ms() {
                    // times are rebuilt against the old maximum, which every entry is close to
                    self.index.sweep(wm - self.cfg.retention_ms, m);
                    self.clock.last_sweep = wm;
                }
                t
            }
            None => {
                self.clock.last_sweep = t - self.cfg.allowed_lateness_ms;
                t
            }
        };
        self.clock.max_seen = Some(max);
        max - self.cfg.allowed_lateness_ms
    }

    /// Moves event time on to `t` (a no-op when it is not later than the
    /// largest time seen); returns the watermark. Sequence numbers the
    /// watermark passes are judged first, before the sweep can forget their
    /// sightings (and before a request at `t`, which cannot change them: it
    /// is not earlier than the watermark).
    fn tick<L: SightingLog>(
        &mut self,
        t: Millis,
        log: &mut L,
        out: &mut Vec<Alert>,
    ) -> Result<Millis, LookupError> {
        // A request not later than the largest time seen leaves the
        // watermark where it is: whatever the watermark's last move made
        // due was judged then (the common case of requests a little out of
        // order, and of every request of the same millisecond).
        if self.cfg.sequence == Toggle::On && self.clock.max_seen.is_none_or(|m| t > m) {
            let next_wm =
                self.clock.max_seen.map_or(t, |m| m.max(t)) - self.cfg.allowed_lateness_ms;
            // Judged when the watermark crosses a multiple of a step of
            // event time rather than at every request: each key's due
            // requests are then judged in one visit, one after the other in
            // its buffer, instead of one cache miss each. The verdicts do
            // not depend on when a request is judged (only on the requests
            // before it, all known once the watermark has passed it); the
            // points where judging happens depend only on event time, so a
            // restart judges at the same requests as an uninterrupted run
            // (alerts go with the request that triggered them, and a
            // request read again after a restart raises nothing again).
            // Before a sweep everything due is judged, so nothing judged
            // later has lost its sighting.
            let sweep_due = next_wm - self.clock.last_sweep.max(Millis::MIN / 2)
                >= self.cfg.sweep_interval_ms();
            let crossed = match self.watermark() {
                None => true,
                Some(prev) => next_wm >= self.judge_boundary(prev),
            };
            // The fold points are not all judge points (the fold interval
            // need not be a multiple of the judge step): a fold point passed
            // between two judge points would leave a quiet key's last
            // requests unfolded until the next one, after the sighting log
            // forgot them.
            if sweep_due || crossed || self.fold_due(next_wm) {
                let judged = out.len();
                self.judge_sequences(next_wm, log, out)?;
                for a in &out[judged..] {
                    self.stats.alerts[a.kind.index()] += 1;
                }
            }
            // A maximum folded above whose window the sweep below forgets
            // (event time jumped on by more than the retention): its event
            // id is read now, while the log has it. Otherwise the next
            // commit reads it (at most a sweep interval later: far from
            // the retention).
            if sweep_due && !self.seq_unresolved.is_empty() {
                self.resolve_sequence_before(next_wm - self.cfg.retention_ms, log)?;
            }
        }
        Ok(self.advance(t))
    }

    /// Whether moving the watermark to `until` passes a fold point: a
    /// multiple of half the time between the tolerance and the retention,
    /// where every key's requests more than the tolerance before the
    /// watermark are folded into its maximum (see
    /// [`ShardDetector::judge_sequences`]).
    fn fold_due(&self, until: Millis) -> bool {
        let interval = ((self.cfg.retention_ms - self.cfg.sequence_tolerance_ms) / 2).max(1);
        match self.watermark() {
            Some(prev) => until.div_euclid(interval) > prev.div_euclid(interval),
            None => true,
        }
    }

    /// The event time between two judgings of sequence numbers: a second,
    /// less with a short retention (a quiet key's requests must be folded
    /// well before the sighting log forgets them).
    fn judge_step(&self) -> Millis {
        let interval = (self.cfg.retention_ms - self.cfg.sequence_tolerance_ms) / 2;
        (interval / 8).clamp(1, 1_000)
    }

    /// The first multiple of [`ShardDetector::judge_step`] after
    /// `watermark`: where the next judging is due. Remembered for the step
    /// `watermark` is in, so that most requests divide nothing.
    fn judge_boundary(&mut self, watermark: Millis) -> Millis {
        let (lo, hi) = self.judge_bucket;
        if (lo..hi).contains(&watermark) {
            return hi;
        }
        let step = self.judge_step();
        let lo = watermark.div_euclid(step).saturating_mul(step);
        let hi = lo.saturating_add(step);
        self.judge_bucket = (lo, hi);
        hi
    }

    /// Moves this shard's event time on to `max_seen`, the largest
    /// received_at of the whole input stream so far. When a stream's
    /// requests are sharded by key, every shard judges by the stream's
    /// clock, not by the times of the requests it happened to get: called
    /// before each request with the stream's largest time before it, it
    /// makes every decision exactly the one a single shard would take, since
    /// everything else a decision reads belongs to the request's own key.
    /// Alerts of sequence numbers the watermark passes go to `out`.
    pub fn catch_up<L: SightingLog>(
        &mut self,
        max_seen: Millis,
        log: &mut L,
        out: &mut Vec<Alert>,
    ) -> Result<(), LookupError> {
        if self.clock.max_seen.is_some_and(|m| m >= max_seen) {
            return Ok(());
        }
        self.tick(max_seen, log, out).map(|_| ())
    }

    /// Runs every rule over one event, in arrival order, appending alerts to `out`.
    pub fn process<L: SightingLog>(
        &mut self,
        ev: &AccessEvent<'_>,
        pos: Position,
        lifecycle: &LifecycleTable,
        log: &mut L,
        out: &mut Vec<Alert>,
    ) -> Result<Verdict, LookupError> {
        self.process_with(ev, pos, lifecycle, log, out, UsageMode::Normal)
    }

    /// [`ShardDetector::process`] of a request read again after a restart
    /// (see [`UsageMode`]).
    pub fn process_with<L: SightingLog>(
        &mut self,
        ev: &AccessEvent<'_>,
        pos: Position,
        lifecycle: &LifecycleTable,
        log: &mut L,
        out: &mut Vec<Alert>,
        usage_mode: UsageMode,
    ) -> Result<Verdict, LookupError> {
        self.process_prepared(ev, None, pos, lifecycle, log, out, usage_mode)
    }

    /// [`ShardDetector::process_with`] of a request [`prepare`]d a few
    /// requests before (its fingerprints computed and their index slots
    /// brought into cache); `None` computes them here.
    ///
    /// [`prepare`]: ShardDetector::prepare
    #[allow(clippy::too_many_arguments)]
    pub fn process_prepared<L: SightingLog>(
        &mut self,
        ev: &AccessEvent<'_>,
        prepared: Option<Prepared>,
        pos: Position,
        lifecycle: &LifecycleTable,
        log: &mut L,
        out: &mut Vec<Alert>,
        usage_mode: UsageMode,
    ) -> Result<Verdict, LookupError> {
        let t = ev.received_at;
        self.stats.events += 1;
        if let Some(wm) = self.watermark() {
            if t < wm {
                self.stats.late += 1;
            }
        }
        let wm = self.tick(t, log, out)?;
        let first_alert = out.len();

        // the sequence number (rule on) and the nonce fingerprint, derived
        // once for the replay rule and the sequence rule
        let mut seq = Sequenced {
            n: match self.cfg.sequence {
                Toggle::On => ev.nonce.as_deref().and_then(sequence::number),
                Toggle::Off => None,
            },
            fp: None,
        };
        if self.live(t, wm) {
            if let Some(v) = self.replay(ev, prepared, wm, pos, &mut seq, log, out)? {
                out.truncate(first_alert);
                match v {
                    Verdict::Duplicate => self.stats.duplicates += 1,
                    Verdict::Reprocessed => {
                        self.stats.reprocessed += 1;
                        // committed, but after the usage checkpoint: usage
                        // learns from it now, as it did the first time
                        if usage_mode == UsageMode::Catchup {
                            if let Some(key_id) = ev.key_id.as_deref() {
                                let mut ignored = Vec::new();
                                self.observe_usage(key_id, ev, &mut ignored);
                            }
                        }
                    }
                    Verdict::Evaluated => {}
                }
                return Ok(v);
            }
        } else {
            self.stats.too_late += 1;
        }

        // every other rule is per key: an unsigned request is only counted
        // (and recognised when it comes twice)
        let Some(key_id) = ev.key_id.as_deref() else {
            return Ok(Verdict::Evaluated);
        };
        if let Some(client_ts) = ev.client_ts {
            if let Some((kind, evidence)) = skew::check(&self.cfg, t, client_ts) {
                out.push(self.alert(kind, Severity::Medium, ev, Evidence::Skew(evidence)));
            }
        }
        if let Some(rec) = lifecycle.state_at(key_id, t) {
            if let Some((kind, severity, evidence)) = lifecycle::check(rec, t) {
                out.push(self.alert(kind, severity, ev, Evidence::Lifecycle(evidence)));
            }
        }
        if usage_mode != UsageMode::Skip {
            self.observe_usage(key_id, ev, out);
        }
        if t >= wm {
            if let Sequenced {
                n: Some(n),
                fp: Some(fp),
            } = seq
            {
                let u = match self.seq.get_mut(key_id) {
                    Some(s) => s,
                    None => {
                        let mut s = SeqState::default();
                        s.id = self.seq_key(key_id);
                        self.seq.entry(key_id.into()).or_insert(s)
                    }
                };
                if !u.dirty {
                    u.dirty = true;
                    self.seq_dirty.push(key_id.into());
                }
                // The key's first request not judged yet, before a change
                // that may move it (where the key waits in `seq_pending`).
                // Read only when a request is removed or put back: that
                // request is a minute old, most often no longer cached,
                // and an insert says itself whether it went first.
                let mut moved: Option<Option<Millis>> = None;
                // a replay is never also out of sequence, and has its
                // original's number: only first sightings are kept (they
                // are what the sighting log gives back at restart)
                let mut replay = false;
                for a in &out[first_alert..] {
                    if a.kind == AlertKind::Replay {
                        if a.event_id == *ev.event_id {
                            replay = true;
                        } else {
                            let before = u.next_undecided();
                            if let Some(e) = u.remove(a.received_at, fp) {
                                // this request took the place of a later
                                // one (of the same nonce)
                                moved.get_or_insert(before);
                                self.seq_context.remove(&(u.id, e.received_at, e.fp()));
                            }
                        }
                    }
                }
                if !replay {
                    // read again while rebuilding a partition handed over:
                    // a request its previous owner had when it published
                    // the key's state is in the seeded state already
                    if !self.seeded.is_empty()
                        && self.seeded.get(key_id).is_some_and(|&o| pos.offset < o)
                    {
                        moved.get_or_insert(u.next_undecided());
                        u.reinsert(ev, n, fp);
                    } else if let Some(at) = u.insert(ev, n, fp) {
                        if moved.is_none() && u.is_first_undecided(at) {
                            // it goes before the one that was first, if any
                            moved = Some(u.buf.get(at + 1).map(|e| e.received_at));
                        }
                        if u.max_n().is_some_and(|m| n < m) {
                            expect_out_of_sequence(&mut self.seq_context, u.id, ev, fp);
                        }
                    }
                }
                if let Some(before) = moved {
                    retrack(&mut self.seq_pending, u.id, before, u.next_undecided());
                }
            }
        }
        for a in &out[first_alert..] {
            self.stats.alerts[a.kind.index()] += 1;
        }
        Ok(Verdict::Evaluated)
    }

    /// One request of `key_id` into its usage (the usage rules' alerts to `out`).
    fn observe_usage(&mut self, key_id: &str, ev: &AccessEvent<'_>, out: &mut Vec<Alert>) {
        let t = ev.received_at;
        let u = match self.usage.get_mut(key_id) {
            Some(u) => u,
            None => self
                .usage
                .entry(key_id.into())
                .or_insert_with(|| Box::new(KeyUsage::new(t))),
        };
        if !u.dirty || u.total == 0 {
            self.usage_dirty.push(key_id);
        }
        usage::observe(&self.usage_cfg, u, ev, out);
    }

    /// Judges the sequence numbers received before `until` (the watermark:
    /// nothing earlier can still arrive), key by key.
    fn judge_sequences<L: SightingLog>(
        &mut self,
        until: Millis,
        log: &mut L,
        out: &mut Vec<Alert>,
    ) -> Result<(), LookupError> {
        let tolerance = self.cfg.sequence_tolerance_ms;
        let mut hits: Vec<(SeqEntry, SequenceEvidence)> = Vec::new();
        let mut due: smallvec::SmallVec<[u32; 8]> = smallvec::SmallVec::new();
        while let Some(&(r, _)) = self.seq_pending.first() {
            if r >= until {
                break;
            }
            // the keys whose next request is at `r`, in key order (the order
            // their alerts come out, whatever order the keys were met in)
            due.clear();
            while let Some(&(_, id)) = self.seq_pending.first().filter(|p| p.0 == r) {
                self.seq_pending.pop_first();
                due.push(id);
            }
            if due.len() > 1 {
                due.sort_unstable_by(|a, b| {
                    self.seq_keys[*a as usize].cmp(&self.seq_keys[*b as usize])
                });
            }
            for &id in &due {
                self.judge_key(id, until, &mut hits, log, out)?;
            }
        }
        // Everything before the watermark is judged now: what is more than
        // the tolerance before it counts only through the maximum. Folded
        // for every key each time the watermark crosses a multiple of the
        // fold interval (a point of event time, so the state is the same
        // whatever the batches and restarts), so that a quiet key keeps
        // nothing the sighting log may have forgotten.
        if self.fold_due(until) {
            let bound = until.saturating_sub(tolerance);
            for (key, u) in self.seq.iter_mut() {
                if u.oldest().is_some_and(|r| r < bound) {
                    let before = u.max_n();
                    let listed = u.max_unresolved();
                    u.fold(bound);
                    if !listed && u.max_unresolved() {
                        self.seq_unresolved.push(u.id);
                    }
                    if !u.dirty {
                        u.dirty = true;
                        self.seq_dirty.push(key.clone());
                    }
                    if u.max_n() != before {
                        touch_usage(&mut self.usage, &mut self.usage_dirty, key);
                    }
                }
            }
        }
        Ok(())
    }

    /// Judges one key's requests received before `until` (see
    /// [`ShardDetector::judge_sequences`]).
    fn judge_key<L: SightingLog>(
        &mut self,
        id: u32,
        until: Millis,
        hits: &mut Vec<(SeqEntry, SequenceEvidence)>,
        log: &mut L,
        out: &mut Vec<Alert>,
    ) -> Result<(), LookupError> {
        let tolerance = self.cfg.sequence_tolerance_ms;
        let key = &self.seq_keys[id as usize];
        let Some(u) = self.seq.get_mut(key) else {
            return Ok(());
        };
        let before = u.max_n();
        let listed = u.max_unresolved();
        let index = &self.index;
        u.judge(
            until - 1,
            tolerance,
            |fp, t| first_event_id(index, log, fp, t),
            |e, evidence| hits.push((e.clone(), evidence)),
        )?;
        if !listed && u.max_unresolved() {
            self.seq_unresolved.push(id);
        }
        if u.max_n() != before {
            touch_usage(&mut self.usage, &mut self.usage_dirty, key);
        }
        if !u.dirty {
            u.dirty = true;
            self.seq_dirty.push(key.clone());
        }
        let next = u.next_undecided();
        let first = out.len();
        for (e, evidence) in hits.drain(..) {
            let (event_id, request) = match self.seq_context.remove(&(id, e.received_at, e.fp())) {
                Some((event_id, context)) => (event_id.into_string(), Some(context)),
                None => match first_sighting(&self.index, log, e.fp(), e.received_at)? {
                    Some(info) => (info.event_id.clone(), Some(info.as_ref().request_context())),
                    // another (key, nonce) with the same 64-bit fingerprint
                    // took the slot: the request is gone from the log
                    None => {
                        self.stats.fingerprint_conflicts += 1;
                        continue;
                    }
                },
            };
            out.push(Alert {
                alert_id: alert::alert_id(AlertKind::OutOfSequence, key, &event_id),
                kind: AlertKind::OutOfSequence,
                severity: Severity::High,
                key_id: key.to_string(),
                event_id,
                received_at: e.received_at,
                request,
                evidence: Evidence::Sequence(evidence),
                detector_version: alert::DETECTOR_VERSION.to_string(),
            });
        }
        // in the order of (received_at, event id), whatever the order of
        // their fingerprints in the buffer
        out[first..]
            .sort_by(|a, b| (a.received_at, &a.event_id).cmp(&(b.received_at, &b.event_id)));
        if let Some(next) = next {
            self.seq_pending.insert((next, id));
        }
        Ok(())
    }

    /// The end of a bounded input (`scan`): every sequence number still
    /// waiting for the watermark is judged now, as if it had passed them all.
    pub fn end_of_input<L: SightingLog>(
        &mut self,
        log: &mut L,
        out: &mut Vec<Alert>,
    ) -> Result<(), LookupError> {
        let first = out.len();
        if self.cfg.sequence == Toggle::On {
            self.judge_sequences(Millis::MAX, log, out)?;
        }
        for a in &out[first..] {
            self.stats.alerts[a.kind.index()] += 1;
        }
        Ok(())
    }

    fn alert(
        &self,
        kind: AlertKind,
        severity: Severity,
        ev: &AccessEvent<'_>,
        evidence: Evidence,
    ) -> Alert {
        usage::make_alert(kind, severity, ev, ev.event_id.as_bytes(), evidence)
    }

    fn replay_alert(
        &self,
        key_id: &str,
        basis: ReplayBasis,
        subject: SightingInfo<&str>,
        first: SightingInfo<&str>,
    ) -> Alert {
        let accepted = subject.status < 400;
        // the same client: by client_id when both have one, else by address
        let same_client = match (subject.client_id, first.client_id) {
            (Some(a), Some(b)) => a == b,
            _ => subject.client_ip == first.client_ip,
        };
        let severity = match (accepted, same_client) {
            (true, false) => Severity::Critical,
            (true, true) => Severity::High,
            (false, _) => Severity::Medium,
        };
        Alert {
            alert_id: alert::alert_id(AlertKind::Replay, key_id, subject.event_id),
            kind: AlertKind::Replay,
            severity,
            key_id: key_id.to_string(),
            event_id: subject.event_id.to_string(),
            received_at: subject.received_at,
            request: Some(subject.request_context()),
            evidence: Evidence::Replay(ReplayEvidence {
                first_sighting: Sighting {
                    event_id: first.event_id.to_string(),
                    received_at: first.received_at,
                    client_ip: first.client_ip.to_string(),
                    status: first.status,
                    client_id: first.client_id.map(str::to_string),
                },
                age_ms: subject.received_at - first.received_at,
                same_ip: subject.client_ip == first.client_ip,
                retention_ms: self.cfg.retention_ms,
                accepted,
                basis,
            }),
            detector_version: alert::DETECTOR_VERSION.to_string(),
        }
    }

    /// Remembers a live event id that is not a window start.
    fn remember_event<L: SightingLog>(&mut self, fp: u64, t: Millis, pos: Position, log: &mut L) {
        let h = pos.hash32();
        self.index.events.insert(fp, index::pack(t, h));
        log.append_event(fp, t, h);
    }

    /// Makes `first` the window start of `fp`; `replaces` is the time of the
    /// entry it takes the slot from, if any.
    fn start_window<L: SightingLog>(
        &mut self,
        fp: u128,
        first: SightingInfo<&str>,
        prev: Option<SightingInfo<&str>>,
        replaces: Option<Millis>,
        log: &mut L,
    ) {
        let t = first.received_at;
        let keep = replaces.map_or(t, |r| r.max(t));
        let seg = log.append_window(&WindowRecord { fp, first, prev }, keep);
        self.index.insert_window(fp as u64, t, seg);
    }

    /// A request's fingerprints for the replay rule: its identity (key,
    /// event id) and what judges it: its nonce; without one, its signature
    /// (if the rule is on).
    #[inline]
    fn fingerprints(&mut self, ev: &AccessEvent<'_>) -> Prepared {
        let event = self.fp.event(ev.key_id.as_deref(), &ev.event_id);
        let basis = match (
            ev.key_id.as_deref(),
            ev.nonce.as_deref(),
            ev.signature.as_deref(),
        ) {
            (Some(key_id), Some(nonce), _) => {
                Some((self.fp.nonce(key_id, nonce), ReplayBasis::Nonce))
            }
            (Some(key_id), None, Some(sig)) if self.cfg.signature_replay => {
                Some((self.fp.signature(key_id, sig), ReplayBasis::Signature))
            }
            _ => None,
        };
        Prepared { event, basis }
    }

    /// Prepares `ev` for [`ShardDetector::process_prepared`] a few requests
    /// before it is processed: computes its fingerprints and brings their
    /// slots of the live index into cache. With millions of live windows
    /// the replay rule's two lookups are misses to memory, which the work
    /// on the requests in between then hides. Changes no state.
    pub fn prepare(&mut self, ev: &AccessEvent<'_>) -> Prepared {
        let p = self.fingerprints(ev);
        self.index
            .prefetch(p.event, p.basis.map(|(nfp, _)| nfp as u64));
        p
    }

    /// Duplicate detection and the replay rule. Returns `Some` verdict when
    /// the event is a duplicate (no further rules), `None` to go on.
    #[allow(clippy::too_many_arguments)]
    fn replay<L: SightingLog>(
        &mut self,
        ev: &AccessEvent<'_>,
        prepared: Option<Prepared>,
        wm: Millis,
        pos: Position,
        seq: &mut Sequenced,
        log: &mut L,
        out: &mut Vec<Alert>,
    ) -> Result<Option<Verdict>, LookupError> {
        let t = ev.received_at;
        let max_seen = self.clock.max_seen.unwrap_or(t);
        let prepared = match prepared {
            Some(p) => {
                debug_assert_eq!(p, self.fingerprints(ev), "prepared for another request");
                p
            }
            None => self.fingerprints(ev),
        };
        let efp = prepared.event;
        if let Some(&v) = self.index.events.get(&efp) {
            if self.live(index::time(v, max_seen), wm) {
                return Ok(Some(if index::aux(v) == pos.hash32() {
                    Verdict::Reprocessed
                } else {
                    Verdict::Duplicate
                }));
            }
        }
        let (Some(key_id), Some((nfp, basis))) = (ev.key_id.as_deref(), prepared.basis) else {
            self.remember_event(efp, t, pos, log);
            return Ok(None);
        };
        if basis == ReplayBasis::Nonce {
            seq.fp = Some(nfp);
        }
        let me = SightingInfo {
            received_at: t,
            pos,
            event_id: &*ev.event_id,
            client_ip: &*ev.client_ip,
            method: &*ev.method,
            path: &*ev.path,
            status: ev.status,
            client_id: ev.client_id.as_deref(),
            user_agent: ev.user_agent.as_deref(),
            // kept with the sighting for the sequence rule's restart
            seq: seq.n.map(|n| (key_id, n)),
        };
        // the window's segment, unless the watermark has passed all of it
        let current = self
            .index
            .window_segment(nfp as u64, wm.saturating_sub(self.cfg.retention_ms));
        let Some(seg) = current else {
            self.start_window(nfp, me, None, None, log);
            return Ok(None);
        };
        let Some(w) = log.window(seg, nfp)? else {
            // another (key, nonce) with the same 64-bit fingerprint: the newer
            // takes the slot, and its record outlives the segment of the other
            self.stats.fingerprint_conflicts += 1;
            let replaces = self.index.segment_newest(seg);
            self.start_window(nfp, me, None, replaces, log);
            return Ok(None);
        };
        if !self.live(w.first.received_at, wm) {
            self.start_window(nfp, me, None, None, log);
            return Ok(None);
        }
        if w.first.event_id == me.event_id {
            return Ok(Some(if w.first.pos == pos {
                Verdict::Reprocessed
            } else {
                Verdict::Duplicate
            }));
        }
        let first = w.first.as_ref();
        if t >= first.received_at {
            if t - first.received_at <= self.cfg.retention_ms {
                out.push(self.replay_alert(key_id, basis, me, first));
                self.remember_event(efp, t, pos, log);
            } else {
                // the window has passed: this sighting starts a new one
                let fp_first = self.fp.event(Some(key_id), first.event_id);
                self.remember_event(fp_first, first.received_at, first.pos, log);
                self.start_window(nfp, me, Some(first), None, log);
            }
            return Ok(None);
        }
        // A late event earlier than the current window start: judge it against
        // the window before, if that is still live.
        let prev = w
            .prev
            .as_ref()
            .map(|p| p.as_ref())
            .filter(|p| self.live(p.received_at, wm));
        match prev {
            Some(p) if t >= p.received_at && t - p.received_at <= self.cfg.retention_ms => {
                out.push(self.replay_alert(key_id, basis, me, p));
                self.remember_event(efp, t, pos, log);
            }
            Some(p) if t < p.received_at => {
                // only possible beyond the allowed lateness: no longer decidable
                self.remember_event(efp, t, pos, log);
            }
            _ => {
                if first.received_at - t <= self.cfg.retention_ms {
                    // this event opens the window and the former start replays it
                    out.push(self.replay_alert(key_id, basis, first, me));
                    let fp_first = self.fp.event(Some(key_id), first.event_id);
                    self.remember_event(fp_first, first.received_at, first.pos, log);
                    self.start_window(nfp, me, prev, Some(first.received_at), log);
                } else {
                    // only possible beyond the allowed lateness: an older window we no longer track
                    self.remember_event(efp, t, pos, log);
                }
            }
        }
        Ok(None)
    }
}

/// The first sighting of fingerprint `fp` received at `t`, from its window
/// in the sighting log (the sequence rule keeps fingerprints, not
/// sightings). `None` only when another (key, nonce) with the same 64-bit
/// fingerprint took the slot.
fn first_sighting<L: SightingLog>(
    index: &Index,
    log: &mut L,
    fp: u128,
    t: Millis,
) -> Result<Option<SightingInfo<String>>, LookupError> {
    let Some(&seg) = index.nonces.get(&(fp as u64)) else {
        return Ok(None);
    };
    let Some(w) = log.window(seg, fp)? else {
        return Ok(None);
    };
    Ok(std::iter::once(w.first)
        .chain(w.prev)
        .find(|i| i.received_at == t))
}

/// The event id of [`first_sighting`].
fn first_event_id<L: SightingLog>(
    index: &Index,
    log: &mut L,
    fp: u128,
    t: Millis,
) -> Result<Option<String>, LookupError> {
    Ok(first_sighting(index, log, fp, t)?.map(|i| i.event_id))
}

/// Most requests whose context waits for their out_of_sequence alert, per
/// shard (~1 MB); beyond, alerts read it back from the sighting log.
const SEQ_CONTEXTS: usize = 4096;

/// A request just taken into its key's buffer whose number is below the
/// key's maximum: the maximum it will be judged against is at least that
/// (every request folded in was received more than the tolerance before
/// it), so it will be out of sequence unless a late request of the same
/// nonce makes it a replay ([`SeqState::remove`]). Its context is kept
/// until then. Judged a minute or more later, its sighting would otherwise
/// be read back from the store for the alert, most often from a segment
/// no longer cached: a read of the whole segment for each alert.
fn expect_out_of_sequence(
    contexts: &mut hashbrown::HashMap<(u32, Millis, u128), (Box<str>, RequestContext)>,
    id: u32,
    ev: &AccessEvent<'_>,
    fp: u128,
) {
    if contexts.len() < SEQ_CONTEXTS {
        contexts.insert(
            (id, ev.received_at, fp),
            (ev.event_id.as_ref().into(), usage::request_context(ev)),
        );
    }
}

/// Moves `key` in a set ordered by time from `before` to `after`.
fn retrack(
    set: &mut std::collections::BTreeSet<(Millis, u32)>,
    id: u32,
    before: Option<Millis>,
    after: Option<Millis>,
) {
    if before == after {
        return;
    }
    if let Some(b) = before {
        set.remove(&(b, id));
    }
    if let Some(a) = after {
        set.insert((a, id));
    }
}

/// What the replay rule and the sequence rule share about one request: its
/// sequence number (rule on) and, with a nonce, its nonce fingerprint.
#[derive(Clone, Copy)]
struct Sequenced {
    n: Option<u64>,
    fp: Option<u128>,
}

/// Per-key usage of a shard. The records are boxed: a table of 100 000
/// keys then holds pointers (24 bytes a slot, not ~380), so its unused
/// slots and its growth (old and new table side by side) cost little.
pub type UsageMap = hashbrown::HashMap<Box<str>, Box<KeyUsage>>;

/// Marks a key's usage record changed, so that the next usage checkpoint
/// writes and publishes it: the sequence state goes with it to the usage
/// topic, and a key whose maximum moved while it was quiet must not hand a
/// stale one over.
fn touch_usage(usage: &mut UsageMap, dirty: &mut DirtyKeys, key: &str) {
    if let Some(u) = usage.get_mut(key) {
        if !u.dirty {
            u.dirty = true;
            dirty.push(key);
        }
    }
}

/// The entries of `map` listed in `keys`, each marked clean.
fn take_dirty<V>(
    map: &mut hashbrown::HashMap<Box<str>, V>,
    keys: Vec<Box<str>>,
    clean: impl Fn(&mut V),
) -> Vec<(&str, &V)> {
    for k in &keys {
        if let Some(v) = map.get_mut(k) {
            clean(v);
        }
    }
    let map = &*map;
    keys.into_iter()
        .filter_map(|k| map.get_key_value(&k).map(|(k, v)| (&**k, v)))
        .collect()
}
