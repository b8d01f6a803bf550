//! One detector shard of the engine (one input partition, or one of the
//! key-hash shards of a file scan): its detector, its sighting log and its
//! progress, restored from the store or started fresh, and its part of every
//! commit. A shard lives on one detect worker; the input position and the
//! rebuild point are the stream's (see [`super::stream`]) and are handed to
//! it when it is staged.

use std::sync::Arc;
use std::time::Instant;

use super::workers::{Staged, UsageExtra};
use super::EngineOptions;
use crate::detect::{ShardDetector, ShardStats, USAGE_SLICES};
use crate::state::{SegmentLog, SegmentView, ShardMeta, StateError, StateStore};
use crate::telemetry;

pub(super) struct Shard<S: StateStore> {
    pub(super) name: String,
    pub(super) det: ShardDetector,
    pub(super) log: SegmentLog<Arc<S>>,
    /// Progress as last committed (or restored).
    pub(super) meta: ShardMeta,
    /// Segments to delete with the next commit (expired at restore, or the
    /// whole log of a shard being rebuilt).
    stale_segments: Vec<u64>,
    /// Stats at the last commit (for per-batch telemetry).
    committed_stats: ShardStats,
    /// A batch has started since the last commit (its origin is set).
    pub(super) in_batch: bool,
}

impl<S: StateStore> Shard<S> {
    /// The shard `id` as the store has it (empty when new).
    pub(super) fn restore(
        store: &Arc<S>,
        id: u32,
        name: &str,
        o: &EngineOptions,
        segments: crate::state::SegmentOptions,
        seed: u64,
    ) -> Result<Self, StateError> {
        let started = Instant::now();
        let mut meta = store.shard(id)?.unwrap_or_default();
        meta.upgrade_usage_positions();
        let mut det = ShardDetector::new(o.rules, seed).with_usage(o.usage);
        let mut keys = 0usize;
        store.for_each_usage(Some(id), &mut |_, key, bytes| {
            let u = postcard::from_bytes(bytes)
                .map_err(|e| StateError::Corrupt(format!("usage of {key}: {e}")))?;
            det.restore_usage(key, u);
            keys += 1;
            Ok(())
        })?;
        store.for_each_sequence(id, &mut |_, key, bytes| {
            let s = postcard::from_bytes(bytes)
                .map_err(|e| StateError::Corrupt(format!("sequence state of {key}: {e}")))?;
            det.restore_seq_state(key, s);
            Ok(())
        })?;
        det.restore_clock(meta.clock());
        det.set_stats(meta.stats.clone());
        let mut log = SegmentLog::new(id, store.clone(), meta.next_seq, segments);
        let keep_from = det
            .watermark()
            .map_or(i64::MIN, |wm| wm - o.rules.retention_ms);
        let mut stale = Vec::new();
        let (mut windows, mut events, mut segments) = (0usize, 0usize, 0usize);
        // first sightings that carry a sequence number (detect.sequence)
        let sequence = o.rules.sequence == crate::detect::Toggle::On;
        let mut numbered: Vec<(u128, crate::detect::SightingInfo<String>)> = Vec::new();
        store.for_each_segment(id, &mut |seq, bytes| {
            let v =
                SegmentView::parse(seq, bytes).map_err(|e| StateError::Corrupt(e.to_string()))?;
            if v.max_t < keep_from {
                stale.push(seq);
                return Ok(());
            }
            segments += 1;
            log.note_existing(seq, v.max_t, v.origin);
            for w in v.windows() {
                let (fp, t) = w.ok_or_else(|| {
                    StateError::Corrupt(format!("window record in segment {seq}"))
                })?;
                det.restore_window(fp, t, seq as u32);
                windows += 1;
            }
            for (fp, t, h) in v.events() {
                det.restore_event(fp, t, h);
                events += 1;
            }
            if sequence {
                for w in v.window_records() {
                    let w = w.ok_or_else(|| {
                        StateError::Corrupt(format!("window record in segment {seq}"))
                    })?;
                    if w.first.seq.is_some() {
                        numbered.push((w.fp, w.first));
                    }
                }
            }
            Ok(())
        })?;
        // A first sighting within `retention` after an earlier one of the
        // same nonce was displaced by it (the earlier arrived late): a replay.
        numbered.sort_by(|a, b| {
            (a.0, a.1.received_at, &a.1.event_id).cmp(&(b.0, b.1.received_at, &b.1.event_id))
        });
        numbered.dedup_by(|a, b| a.0 == b.0 && a.1.event_id == b.1.event_id);
        let mut start: Option<(u128, i64)> = None;
        for (fp, info) in &numbered {
            let replay = match start {
                Some((f, t)) if f == *fp && info.received_at - t <= o.rules.retention_ms => true,
                _ => {
                    start = Some((*fp, info.received_at));
                    false
                }
            };
            det.restore_sequence(*fp, info, replay);
        }
        det.finish_restore();
        telemetry::StateRestored {
            shard: name,
            keys,
            windows,
            events,
            segments,
            elapsed: started.elapsed(),
        }
        .emit();
        Ok(Shard {
            name: name.to_string(),
            committed_stats: meta.stats.clone(),
            det,
            log,
            meta,
            stale_segments: stale,
            in_batch: false,
        })
    }

    /// A shard with nothing in it that replaces `old` (its segments are
    /// deleted with the next commit).
    pub(super) fn fresh(
        store: &Arc<S>,
        id: u32,
        old: &Shard<S>,
        o: &EngineOptions,
        seed: u64,
    ) -> Result<Self, StateError> {
        let mut all = Vec::new();
        store.for_each_segment(id, &mut |seq, _| {
            all.push(seq);
            Ok(())
        })?;
        let next_seq = old.log.next_seq();
        Ok(Shard {
            name: old.name.clone(),
            det: ShardDetector::new(o.rules, seed).with_usage(o.usage),
            log: SegmentLog::new(id, store.clone(), next_seq, old.log.options()),
            meta: ShardMeta {
                next_seq,
                ..Default::default()
            },
            stale_segments: all,
            committed_stats: ShardStats::default(),
            in_batch: false,
        })
    }

    /// Rebuilding is over: from here on this instance reports, and counts from zero.
    pub(super) fn caught_up(&mut self) {
        self.det.forget_seeds();
        self.det.set_stats(ShardStats::default());
        self.committed_stats = ShardStats::default();
    }

    /// Adds this shard's changes since the last commit to `out`, with the
    /// stream's input position and rebuild point; returns the events it
    /// processed since then. The usage of the keys of the checkpoint slices
    /// in `slices` goes with it (a usage checkpoint writes one slice a
    /// commit, see [`crate::detect::usage_slice`]); every other slice that
    /// changed notes where its stored usage stands. With usage, the sequence
    /// state of the same keys goes to `out.usage_extra` (published with it),
    /// with how far handed-over usage counts while the shard is rebuilt.
    pub(super) fn stage(
        &mut self,
        id: u32,
        retention_ms: i64,
        positions: &std::collections::BTreeMap<u32, u64>,
        live_from: Option<u64>,
        slices: std::ops::Range<usize>,
        out: &mut Staged,
    ) -> u64 {
        self.in_batch = false;
        let Staged {
            commit: c,
            usage_extra,
            ..
        } = out;
        // a slice left out that changed is behind from the last commit on
        for slice in 0..USAGE_SLICES {
            if !slices.contains(&slice) && self.det.usage_slice_dirty(slice) {
                self.meta
                    .usage_behind
                    .entry(slice as u8)
                    .or_insert_with(|| self.meta.positions.clone());
            }
        }
        if !slices.is_empty() {
            // one scratch buffer, each record copied out at its exact size
            let mut scratch = Vec::with_capacity(4096);
            for (key, u, seq, counted_to) in
                self.det.take_dirty_usage_for_checkpoint(slices.clone())
            {
                c.usage
                    .push((id, key.to_string(), encode_exact(u, &mut scratch)));
                // the sequence state goes with the usage to the usage topic
                // (the store has it already, written with every commit)
                if seq.is_some() || counted_to.is_some() {
                    usage_extra.push(UsageExtra {
                        shard: id,
                        key: key.to_string(),
                        seq: seq.map(|s| encode_exact(s, &mut scratch)),
                        counted_to,
                    });
                }
            }
            for slice in slices {
                self.meta.usage_behind.remove(&(slice as u8));
            }
        }
        self.meta.positions.clone_from(positions);
        for (seq, bytes) in self.log.take_sealed() {
            c.segments.push((id, seq, bytes));
        }
        let mut dels = std::mem::take(&mut self.stale_segments);
        if let Some(wm) = self.det.watermark() {
            dels.extend(self.log.expire(wm - retention_ms));
        }
        c.segment_deletes.extend(dels.into_iter().map(|q| (id, q)));
        c.segment_floors.push((id, self.log.floor()));
        let mut scratch = Vec::new();
        for (key, s) in self.det.take_dirty_seq() {
            c.sequence
                .push((id, key.to_string(), encode_exact(s, &mut scratch)));
        }
        self.meta.set_clock(self.det.clock());
        self.meta.stats = self.det.stats().clone();
        self.meta.live_from = live_from;
        self.meta.next_seq = self.log.next_seq();
        c.shards.push((id, self.meta.clone()));
        let delta = self.det.stats().since(&self.committed_stats);
        telemetry::BatchProcessed {
            shard: &self.name,
            stats: &delta,
        }
        .emit();
        self.committed_stats = self.det.stats().clone();
        delta.events
    }
}

/// `v` in postcard, in a vector of exactly its size (`scratch` is reused).
fn encode_exact<T: serde::Serialize>(v: &T, scratch: &mut Vec<u8>) -> Vec<u8> {
    scratch.clear();
    let buf = postcard::to_extend(v, std::mem::take(scratch)).expect("state serializes");
    let out = buf.to_vec();
    *scratch = buf;
    out
}
