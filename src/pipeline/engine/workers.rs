//! The detect workers: each owns some of the engine's shards (a shard is on
//! exactly one worker, so per-key state is never shared or locked) and runs
//! the rules over the events routed to them, in the order they were routed.
//! Everything a worker is told comes through one FIFO queue, bounded
//! (`pipeline.queue_chunks`): the router waits when a worker is behind.
//!
//! With one thread the engine keeps a single worker on its own thread and
//! calls it directly ([`Detectors::inline`]): the same code, no queues.

use std::collections::BTreeMap;

use hashbrown::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use super::shard::Shard;
use super::EngineOptions;
use crate::detect::{prefetch, KeySeed, KeyUsage, LifecycleTable, Prepared, ShardStats, UsageMode};
use crate::pipeline::chunk::DecodedChunk;
use crate::pipeline::PipelineError;
use crate::schema::{Alert, Millis};
use crate::state::{Commit, SegmentOptions, StateStore};

/// How many steps ahead of the one processed a worker brings the live
/// index's slots into cache: enough requests for a miss to memory (~100 ns)
/// to finish behind their work, few enough that the slots stay cached.
const PREFETCH_AHEAD: usize = 3;

/// How many steps ahead a worker brings a request's bytes and decoded
/// event into cache (decoded on another thread, often another core).
const TOUCH_AHEAD: usize = 8;

/// Brings record `idx` of `chunk`, its bytes and its decoded event, into
/// cache: a hint, no effect on what memory holds.
#[inline]
fn touch(chunk: &DecodedChunk, idx: usize) {
    if let crate::source::Payload::Data(b) = chunk.raw().record(idx).payload {
        prefetch(b.as_ptr(), b.len());
    }
    if let Some(ev) = chunk.events().get(idx) {
        prefetch(
            (ev as *const Result<_, _>).cast(),
            std::mem::size_of_val(ev),
        );
    }
}

/// One step of a worker's work, in routing order.
#[derive(Debug, Clone, Copy)]
pub(super) enum Step {
    /// Record `idx` of the chunk, decoded, for `shard`; `max_before` is its
    /// stream's largest received_at before it (the stream's clock).
    Event {
        idx: u32,
        shard: u32,
        /// Routing order, over every stream: alerts are committed in it.
        seq: u64,
        max_before: Option<Millis>,
        /// Before the stream's `live_from`: state only, no alerts.
        rebuild: bool,
        /// Committed after the usage checkpoint (read again after a restart).
        usage: UsageMode,
    },
    /// The shard's stream finished rebuilding: counting starts from zero.
    CaughtUp { shard: u32 },
}

/// What a worker knows about one of its shards after opening or staging it,
/// for the engine's totals and the Kafka runtime's hand-over metadata.
#[derive(Debug, Clone, Default)]
pub(super) struct ShardInfo {
    pub stats: ShardStats,
    pub live_entries: usize,
    pub index_bytes: usize,
    pub segments: usize,
    /// Where re-reading the input rebuilds this shard's live state.
    pub rebuild_from: Option<u64>,
}

impl ShardInfo {
    fn of<S: StateStore>(s: &Shard<S>) -> ShardInfo {
        ShardInfo {
            stats: s.det.stats().clone(),
            live_entries: s.det.index().len(),
            index_bytes: s.det.index().heap_bytes(),
            segments: s.log.segment_count(),
            rebuild_from: s.log.rebuild_from(),
        }
    }
}

/// A shard read back from the store.
pub(super) struct Opened {
    pub info: ShardInfo,
    pub positions: BTreeMap<u32, u64>,
    pub live_from: Option<u64>,
    pub max_seen: Option<Millis>,
    /// The checkpoint slices whose usage is behind `positions`, with where
    /// each stands.
    pub usage_behind: BTreeMap<u8, BTreeMap<u32, u64>>,
}

/// What the engine asks of a shard at a commit.
pub(super) struct StageShard {
    pub id: u32,
    pub positions: BTreeMap<u32, u64>,
    pub live_from: Option<u64>,
    /// The usage checkpoint slices written with this commit (their usage
    /// then covers `positions`); empty between checkpoints.
    pub slices: std::ops::Range<usize>,
}

/// A worker's part of a commit.
pub(super) struct Staged {
    pub commit: Commit,
    /// With the routing order of the request that raised them, and the shard.
    pub alerts: Vec<(u64, u32, Alert)>,
    pub events: u64,
    pub infos: Vec<(u32, ShardInfo)>,
    /// What the usage topic gets beside the usage of keys the commit
    /// writes, where there is something (see [`UsageExtra`]).
    pub usage_extra: Vec<UsageExtra>,
    pub error: Option<PipelineError>,
}

/// What a usage checkpoint publishes of a key beside its usage.
pub(super) struct UsageExtra {
    pub shard: u32,
    pub key: String,
    /// The sequence state, postcard (rule on).
    pub seq: Option<Vec<u8>>,
    /// The offset the key's usage counts up to when that is beyond the
    /// stream's position: usage handed over, while the partition is
    /// rebuilt (the records before it are not counted again).
    pub counted_to: Option<u64>,
}

pub(super) enum Msg {
    Steps {
        chunk: Arc<DecodedChunk>,
        steps: Vec<Step>,
        lifecycle: Arc<LifecycleTable>,
    },
    Open {
        id: u32,
        name: String,
        segments: SegmentOptions,
        reply: Sender<Result<Opened, PipelineError>>,
    },
    Close {
        id: u32,
    },
    /// Replaces a shard by an empty one (its stored state goes with the
    /// next commit).
    Reset {
        id: u32,
        reply: Sender<Result<(), PipelineError>>,
    },
    EndOfInput,
    Stage {
        shards: Vec<StageShard>,
        reply: Sender<Staged>,
    },
    /// Every commit so far is durable.
    Durable,
    Usage {
        keys: Arc<Vec<String>>,
        reply: Sender<Vec<(String, KeyUsage)>>,
    },
    /// Usage handed over with a partition (see [`ShardDetector::seed_usage`]).
    Seed {
        shard: u32,
        usage: Vec<KeySeed>,
    },
}

/// The shards of one worker and what they raised since the last commit.
struct Worker<S: StateStore> {
    store: Arc<S>,
    opts: EngineOptions,
    seed: u64,
    shards: HashMap<u32, Shard<S>>,
    /// Raised since the last commit: (routing order, shard, alert).
    alerts: Vec<(u64, u32, Alert)>,
    scratch: Vec<Alert>,
    /// The first error; the worker does nothing more until it is reported.
    failed: Option<PipelineError>,
    busy: Arc<AtomicU64>,
    /// Bring each request into cache [`TOUCH_AHEAD`] steps ahead: a worker
    /// on a thread of its own reads requests decoded on another one; the
    /// inline worker (one thread) reads them right after decoding them
    /// itself, still in its cache (touching them anyway cost a one-core
    /// scan 2-3 %: 1.028x and 1.022x without, 15 rounds each).
    touch: bool,
}

impl<S: StateStore> Worker<S> {
    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Steps {
                chunk,
                steps,
                lifecycle,
            } => {
                if self.failed.is_none() {
                    let t = Instant::now();
                    if let Err(e) = self.steps(&chunk, &steps, &lifecycle) {
                        self.failed = Some(e);
                    }
                    self.busy
                        .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
            }
            Msg::Open {
                id,
                name,
                segments,
                reply,
            } => {
                let _ = reply.send(self.open(id, &name, segments));
            }
            Msg::Close { id } => {
                self.shards.remove(&id);
            }
            Msg::Reset { id, reply } => {
                let _ = reply.send(self.reset(id));
            }
            Msg::EndOfInput => {
                if self.failed.is_none() {
                    if let Err(e) = self.end_of_input() {
                        self.failed = Some(e);
                    }
                }
            }
            Msg::Stage { shards, reply } => {
                let _ = reply.send(self.stage(&shards));
            }
            Msg::Durable => {
                for s in self.shards.values_mut() {
                    s.log.mark_durable();
                }
            }
            Msg::Seed { shard, usage } => {
                if let Some(s) = self.shards.get_mut(&shard) {
                    for seed in usage {
                        s.det.seed_usage(seed);
                    }
                }
            }
            Msg::Usage { keys, reply } => {
                let mut out = Vec::new();
                for k in keys.iter() {
                    for s in self.shards.values() {
                        if let Some(u) = s.det.usage().get(k.as_str()) {
                            out.push((k.clone(), (**u).clone()));
                        }
                    }
                }
                let _ = reply.send(out);
            }
        }
    }

    /// [`ShardDetector::prepare`] of the event of `step`, by its shard.
    #[inline]
    fn prepare(
        &mut self,
        step: &Step,
        events: &crate::pipeline::chunk::Decoded<'_>,
    ) -> Option<Prepared> {
        let Step::Event { idx, shard, .. } = *step else {
            return None;
        };
        match (self.shards.get_mut(&shard), events.get(idx as usize)) {
            (Some(s), Some(Ok(ev))) => Some(s.det.prepare(ev)),
            _ => None,
        }
    }

    fn steps(
        &mut self,
        chunk: &DecodedChunk,
        steps: &[Step],
        lifecycle: &LifecycleTable,
    ) -> Result<(), PipelineError> {
        let recs = chunk.raw().records();
        let events = chunk.events();
        // the request PREFETCH_AHEAD steps on is prepared (fingerprints,
        // index slots brought into cache) while this one is processed
        let mut prepared = [None; PREFETCH_AHEAD + 1];
        for (i, step) in steps.iter().enumerate().take(PREFETCH_AHEAD) {
            prepared[i] = self.prepare(step, events);
        }
        for (i, step) in steps.iter().enumerate() {
            if let (true, Some(Step::Event { idx, .. })) = (self.touch, steps.get(i + TOUCH_AHEAD))
            {
                touch(chunk, *idx as usize);
            }
            if let Some(ahead) = steps.get(i + PREFETCH_AHEAD) {
                prepared[(i + PREFETCH_AHEAD) % (PREFETCH_AHEAD + 1)] = self.prepare(ahead, events);
            }
            let prepared = prepared[i % (PREFETCH_AHEAD + 1)].take();
            match *step {
                Step::Event {
                    idx,
                    shard,
                    seq,
                    max_before,
                    rebuild,
                    usage,
                } => {
                    let s = self
                        .shards
                        .get_mut(&shard)
                        .ok_or(PipelineError::ShardNotOpen(shard))?;
                    let pos = recs[idx as usize].pos;
                    let Ok(ev) = &events[idx as usize] else {
                        continue; // only decoded events are routed
                    };
                    if !s.in_batch {
                        s.in_batch = true;
                        s.log.set_origin(pos.offset);
                    }
                    self.scratch.clear();
                    if let Some(m) = max_before {
                        s.det.catch_up(m, &mut s.log, &mut self.scratch)?;
                    }
                    // what catching up with the stream's clock judged (sequence
                    // numbers) is new even at a request read again: after a
                    // restart the stream's clock starts at its most advanced
                    // shard's, ahead of a shard that had fewer requests, and
                    // the first request read again for usage moves that shard
                    // on to it
                    let judged = self.scratch.len();
                    // rebuilding with usage handed over: what it counts is skipped
                    let usage =
                        if rebuild && s.det.usage_seeded_beyond(ev.key_id.as_deref(), pos.offset) {
                            UsageMode::Skip
                        } else {
                            usage
                        };
                    // read again after a restart, committed before it: its
                    // alerts were committed then, and it was counted then
                    let catchup = usage == UsageMode::Catchup;
                    let stats = catchup.then(|| s.det.stats().clone());
                    s.det.process_prepared(
                        ev,
                        prepared,
                        pos,
                        lifecycle,
                        &mut s.log,
                        &mut self.scratch,
                        usage,
                    )?;
                    if let Some(stats) = stats {
                        s.det.set_stats(stats);
                    }
                    // a rebuild (a partition taken over) re-reads what the
                    // previous owner judged and alerted on: nothing is kept
                    let keep = match (rebuild, catchup) {
                        (true, _) => 0,
                        (false, true) => judged,
                        (false, false) => self.scratch.len(),
                    };
                    self.alerts
                        .extend(self.scratch.drain(..keep).map(|a| (seq, shard, a)));
                }
                Step::CaughtUp { shard } => {
                    if let Some(s) = self.shards.get_mut(&shard) {
                        s.caught_up();
                    }
                }
            }
        }
        Ok(())
    }

    fn open(
        &mut self,
        id: u32,
        name: &str,
        segments: SegmentOptions,
    ) -> Result<Opened, PipelineError> {
        let s = Shard::restore(&self.store, id, name, &self.opts, segments, self.seed)?;
        let opened = Opened {
            info: ShardInfo::of(&s),
            positions: s.meta.positions.clone(),
            live_from: s.meta.live_from,
            max_seen: s.det.clock().max_seen,
            usage_behind: s.meta.usage_behind.clone(),
        };
        self.shards.insert(id, s);
        Ok(opened)
    }

    fn reset(&mut self, id: u32) -> Result<(), PipelineError> {
        let old = self
            .shards
            .get(&id)
            .ok_or(PipelineError::ShardNotOpen(id))?;
        let fresh = Shard::fresh(&self.store, id, old, &self.opts, self.seed)?;
        self.shards.insert(id, fresh);
        Ok(())
    }

    fn end_of_input(&mut self) -> Result<(), PipelineError> {
        let mut ids: Vec<u32> = self.shards.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let s = self.shards.get_mut(&id).expect("listed");
            self.scratch.clear();
            s.det.end_of_input(&mut s.log, &mut self.scratch)?;
            self.alerts
                .extend(self.scratch.drain(..).map(|a| (u64::MAX, id, a)));
        }
        Ok(())
    }

    fn stage(&mut self, shards: &[StageShard]) -> Staged {
        let mut out = Staged {
            commit: Commit::default(),
            alerts: Vec::new(),
            events: 0,
            infos: Vec::new(),
            usage_extra: Vec::new(),
            error: self.failed.take(),
        };
        if out.error.is_some() {
            return out;
        }
        let retention = self.opts.rules.retention_ms;
        for req in shards {
            let Some(s) = self.shards.get_mut(&req.id) else {
                out.error = Some(PipelineError::ShardNotOpen(req.id));
                return out;
            };
            // the maximum folded since the last commit is written with its
            // event id, read back from the sighting log
            if let Err(e) = s.det.resolve_sequence(&mut s.log) {
                out.error = Some(e.into());
                return out;
            }
            // A shard's clock stays where its last request put it: catching
            // up here would make its state depend on when commits happen
            // (alerts would not change). A quiet shard judges what waits for
            // the watermark at its next request, or at the end of the input.
            out.events += s.stage(
                req.id,
                retention,
                &req.positions,
                req.live_from,
                req.slices.clone(),
                &mut out,
            );
            out.infos.push((req.id, ShardInfo::of(s)));
        }
        out.alerts = std::mem::take(&mut self.alerts);
        out
    }
}

/// The engine's detect workers: inline (one, on the engine's thread), or
/// threads fed by bounded queues.
pub(super) struct Detectors<S: StateStore> {
    inline: Option<Worker<S>>,
    queues: Vec<Sender<Msg>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Which worker holds each shard.
    owner: HashMap<u32, usize>,
    busy: Arc<AtomicU64>,
}

impl<S: StateStore> Detectors<S> {
    /// `threads` <= 1: one worker, called directly.
    pub(super) fn new(
        store: Arc<S>,
        opts: EngineOptions,
        seed: u64,
        threads: usize,
        queue: usize,
    ) -> Self {
        let busy = Arc::new(AtomicU64::new(0));
        let worker = |busy: &Arc<AtomicU64>, touch: bool| Worker {
            store: store.clone(),
            opts: opts.clone(),
            seed,
            shards: HashMap::new(),
            alerts: Vec::new(),
            scratch: Vec::new(),
            failed: None,
            busy: busy.clone(),
            touch,
        };
        if threads <= 1 {
            return Detectors {
                inline: Some(worker(&busy, false)),
                queues: Vec::new(),
                threads: Vec::new(),
                owner: HashMap::new(),
                busy,
            };
        }
        let mut queues = Vec::new();
        let mut handles = Vec::new();
        for i in 0..threads {
            let (tx, rx): (Sender<Msg>, Receiver<Msg>) = bounded(queue.max(1));
            let mut w = worker(&busy, true);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("rg-detect-{i}"))
                    .spawn(move || {
                        for msg in rx {
                            w.handle(msg);
                        }
                    })
                    .expect("spawning a detect thread"),
            );
            queues.push(tx);
        }
        Detectors {
            inline: None,
            queues,
            threads: handles,
            owner: HashMap::new(),
            busy,
        }
    }

    /// How many workers there are.
    pub(super) fn count(&self) -> usize {
        self.queues.len().max(1)
    }

    /// The worker of a shard.
    pub(super) fn worker_of(&self, shard: u32) -> usize {
        self.owner.get(&shard).copied().unwrap_or(0)
    }

    fn send(&mut self, worker: usize, msg: Msg) {
        match &mut self.inline {
            Some(w) => w.handle(msg),
            None => {
                // a worker thread ends only when its queue is dropped
                self.queues[worker]
                    .send(msg)
                    .expect("detect threads run while the engine lives");
            }
        }
    }

    /// Work items queued per worker (for the queue-depth metric).
    pub(super) fn queue_depths(&self) -> Vec<usize> {
        self.queues.iter().map(|q| q.len()).collect()
    }

    /// Time the workers spent on events so far, together.
    pub(super) fn busy(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.busy.load(Ordering::Relaxed))
    }

    /// Opens shards, each on the least loaded worker (restoring them in
    /// parallel when there are threads).
    pub(super) fn open(
        &mut self,
        shards: &[(u32, String)],
        segments: SegmentOptions,
    ) -> Result<Vec<Opened>, PipelineError> {
        let mut load = vec![0usize; self.count()];
        for w in self.owner.values() {
            load[*w] += 1;
        }
        let mut replies = Vec::new();
        for (id, name) in shards {
            let w = (0..load.len()).min_by_key(|w| load[*w]).unwrap_or(0);
            load[w] += 1;
            self.owner.insert(*id, w);
            let (tx, rx) = unbounded();
            self.send(
                w,
                Msg::Open {
                    id: *id,
                    name: name.clone(),
                    segments,
                    reply: tx,
                },
            );
            replies.push(rx);
        }
        replies
            .into_iter()
            .map(|rx| rx.recv().expect("a worker answers"))
            .collect()
    }

    pub(super) fn close(&mut self, shard: u32) {
        if let Some(w) = self.owner.remove(&shard) {
            self.send(w, Msg::Close { id: shard });
        }
    }

    pub(super) fn reset(&mut self, shard: u32) -> Result<(), PipelineError> {
        let w = self.worker_of(shard);
        let (tx, rx) = unbounded();
        self.send(
            w,
            Msg::Reset {
                id: shard,
                reply: tx,
            },
        );
        rx.recv().expect("a worker answers")
    }

    /// Hands each worker its steps of a chunk.
    pub(super) fn dispatch(
        &mut self,
        chunk: &Arc<DecodedChunk>,
        steps: &mut [Vec<Step>],
        lifecycle: &Arc<LifecycleTable>,
    ) {
        for (w, steps) in steps.iter_mut().enumerate() {
            if steps.is_empty() {
                continue;
            }
            let s = std::mem::take(steps);
            self.send(
                w,
                Msg::Steps {
                    chunk: chunk.clone(),
                    steps: s,
                    lifecycle: lifecycle.clone(),
                },
            );
        }
    }

    pub(super) fn end_of_input(&mut self) {
        for w in 0..self.count() {
            self.send(w, Msg::EndOfInput);
        }
    }

    /// Asks every worker to stage the given shards once it has finished
    /// what it was given before (the barrier of a commit); the answers come
    /// on the returned channels, while the workers go on with what is
    /// routed after.
    pub(super) fn stage(&mut self, shards: Vec<StageShard>) -> Vec<Receiver<Staged>> {
        let mut per: Vec<Vec<StageShard>> = (0..self.count()).map(|_| Vec::new()).collect();
        for s in shards {
            per[self.worker_of(s.id)].push(s);
        }
        let mut replies = Vec::new();
        for (w, shards) in per.into_iter().enumerate() {
            let (tx, rx) = unbounded();
            self.send(w, Msg::Stage { shards, reply: tx });
            replies.push(rx);
        }
        replies
    }

    pub(super) fn durable(&mut self) {
        for w in 0..self.count() {
            self.send(w, Msg::Durable);
        }
    }

    /// Hands usage over to a shard (before the records that rebuild it).
    pub(super) fn seed(&mut self, shard: u32, usage: Vec<KeySeed>) {
        let w = self.worker_of(shard);
        self.send(w, Msg::Seed { shard, usage });
    }

    /// The usage of `keys` in every shard that has it.
    pub(super) fn usage(&mut self, keys: Vec<String>) -> Vec<(String, KeyUsage)> {
        let keys = Arc::new(keys);
        let mut replies = Vec::new();
        for w in 0..self.count() {
            let (tx, rx) = unbounded();
            self.send(
                w,
                Msg::Usage {
                    keys: keys.clone(),
                    reply: tx,
                },
            );
            replies.push(rx);
        }
        replies
            .into_iter()
            .flat_map(|rx| rx.recv().expect("a worker answers"))
            .collect()
    }
}

impl<S: StateStore> Drop for Detectors<S> {
    fn drop(&mut self) {
        self.queues.clear();
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}
