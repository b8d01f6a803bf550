//! The processing core shared by `scan` and `run`: decoded chunks -> router
//! -> detect workers -> state commit -> outbox, for any number of input
//! streams, over any [`StateStore`].
//!
//! An input *stream* (a file scan, or one Kafka partition) has one event-time
//! clock and one input position; its requests are detected by one or more
//! *shards* (a partition: one; a scan: one per detect thread when its
//! state is created, by a hash of the key). The router ([`Engine::process_chunk`], on the caller's thread)
//! walks every record in arrival order, keeps the stream's clock and
//! position, dead-letters what did not decode, and hands each request to the
//! shard of its key together with the stream's largest time before it. A
//! shard lives on one detect worker ([`workers`]), which runs the rules in
//! that order. Every decision about a request reads only state of its own
//! key and the stream's clock, so the alerts are the same for any number of
//! shards, workers, queue sizes or batch sizes.
//!
//! Commit order for a batch:
//! 1. dead letters of the batch are flushed (they are at-least-once too);
//! 2. every worker stages its shards (the barrier: everything routed before
//!    is processed): new sighting segments, expired segment deletes, shard
//!    progress (the stream's positions, the shard's clock, counters), usage,
//!    and the alerts raised;
//! 3. one atomic store commit of all that, lifecycle changes, and the alerts
//!    into the outbox;
//! 4. [`Engine::deliver`] hands committed alerts to the sink; once it
//!    returns, they are removed from the outbox in the next commit.
//!
//! A crash anywhere restarts from the last commit: state is exactly-once,
//! alerts are at-least-once with deterministic ids.
//!
//! The pieces: [`registry`] (names and ids), [`outbox`] (alerts until
//! acknowledged), [`shard`] (one shard restored or fresh, and its part of a
//! commit), [`workers`] (the threads that own shards); this file routes and
//! coordinates them.

mod outbox;
mod registry;
mod shard;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use outbox::Outbox;
use registry::Registry;
use workers::{Detectors, ShardInfo, StageShard, Step};

use super::chunk::{route_hash, DecodedChunk, RawChunk};
use super::health::InputHealth;
use super::PipelineError;
use crate::config::Config;
use crate::decode::{DecodeError, Decoder};
use crate::detect::{
    usage_slice, DetectConfig, KeySeed, KeyUsage, LifecycleTable, ShardStats, UsageConfig,
    UsageMode, USAGE_SLICES,
};
use crate::schema::{LifecycleEvent, Millis};
use crate::sink::{AlertSink, DeadLetter, DeadLetterSink};
use crate::source::Record;
use crate::state::{Commit, SegmentOptions, StateStore};
use crate::telemetry;

/// Most key-hash shards of a file scan (one per detect thread, at most this).
pub const MAX_SCAN_SHARDS: u32 = 64;

/// What the engine needs from the configuration.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub rules: DetectConfig,
    pub usage: UsageConfig,
    pub decoder: Decoder,
    pub segments: SegmentOptions,
    /// Bound of the live index in memory.
    pub max_index_bytes: usize,
    /// Detect workers; 0 or 1: detection on the caller's thread.
    pub threads: usize,
    /// Work items queued per detect worker before the router waits.
    pub queue: usize,
    /// Usage is written with a commit at most this often (and when asked:
    /// [`Engine::checkpoint_usage`]); zero: with every commit.
    pub usage_checkpoint: std::time::Duration,
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
            threads: c.pipeline.effective_threads(),
            queue: c.pipeline.effective_queue_chunks(),
            usage_checkpoint: c.state.usage_checkpoint_interval.as_std(),
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

/// One input stream: its shards, event-time clock and position.
#[derive(Debug)]
struct Stream {
    name: String,
    shards: Vec<u32>,
    /// Largest received_at routed so far.
    max_seen: Option<Millis>,
    /// Next offset per source: the input position routed so far (but for
    /// `cur`'s source).
    positions: BTreeMap<u32, u64>,
    /// The source being read and its next offset (kept apart from
    /// `positions`: one update per record).
    cur: Option<(u32, u64)>,
    /// While set, records before this offset rebuild state only: no alerts,
    /// no dead letters, not counted (another instance already reported them,
    /// or they are a first deployment's warm-up).
    live_from: Option<u64>,
    /// Routed or changed since the last commit.
    dirty: bool,
    /// Usage is behind the committed position (a restart between two usage
    /// checkpoints): records from `from` to `until` are read again and go
    /// into usage; until then the stream takes no usage checkpoint.
    catchup: Option<Catchup>,
}

/// The records a stream reads again for usage: per source, from where the
/// usage of a shard's checkpoint slice stands (`from`, per (shard, slice)
/// behind) to the committed position (`until`).
#[derive(Debug, Clone)]
struct Catchup {
    from: HashMap<(u32, u8), BTreeMap<u32, u64>>,
    until: BTreeMap<u32, u64>,
}

impl Catchup {
    /// How a record at `offset` of `source` is read by `shard`, for a key
    /// of checkpoint slice `slice` (`None`: no key, no usage).
    #[inline]
    fn mode(&self, shard: u32, slice: Option<usize>, source: u32, offset: u64) -> UsageMode {
        let Some(from) = slice.and_then(|sl| self.from.get(&(shard, sl as u8))) else {
            return UsageMode::Normal;
        };
        match self.until.get(&source) {
            Some(&until) if offset < until && offset >= from.get(&source).copied().unwrap_or(0) => {
                UsageMode::Catchup
            }
            _ => UsageMode::Normal,
        }
    }

    /// Where reading `source` again starts.
    fn start(&self, source: u32) -> u64 {
        self.from
            .values()
            .map(|f| f.get(&source).copied().unwrap_or(0))
            .min()
            .unwrap_or(0)
    }
}

impl Stream {
    /// The next offset of `source` is `next`.
    #[inline]
    fn advance(&mut self, source: u32, next: u64) {
        match &mut self.cur {
            Some((s, n)) if *s == source => *n = next,
            _ => {
                if let Some((s, n)) = self.cur.replace((source, next)) {
                    self.positions.insert(s, n);
                }
            }
        }
        if let Some(c) = &mut self.catchup {
            if c.until.get(&source).is_some_and(|&u| next >= u) {
                c.until.remove(&source);
                if c.until.is_empty() {
                    self.catchup = None;
                }
            }
        }
    }

    /// Next offset per source routed so far (while catching up, never
    /// before the position committed before the restart).
    fn positions(&self) -> BTreeMap<u32, u64> {
        let mut p = self.positions.clone();
        if let Some((s, n)) = self.cur {
            p.insert(s, n);
        }
        if let Some(c) = &self.catchup {
            for (s, u) in &c.until {
                let e = p.entry(*s).or_insert(*u);
                *e = (*e).max(*u);
            }
        }
        p
    }
}

/// Which shard of a stream of `n` shards a request with this [`route_hash`]
/// goes to: by its key, an unsigned request by its event id (a redelivered
/// copy meets the first).
fn route(hash: u64, n: usize) -> usize {
    (hash % n as u64) as usize
}

/// Router, detect workers, outbox and commits of one process.
pub struct Engine<S: StateStore> {
    store: Arc<S>,
    opts: EngineOptions,
    lifecycle: Arc<LifecycleTable>,
    lifecycle_pending: Vec<LifecycleEvent>,
    registry: Registry,
    /// Open streams, by id (the id of their first shard).
    streams: BTreeMap<u32, Stream>,
    detectors: Detectors<S>,
    /// Per open shard, as of its last staging.
    infos: HashMap<u32, ShardInfo>,
    /// Steps being routed, per worker.
    steps: Vec<Vec<Step>>,
    /// Requests routed so far (the routing order of the next).
    routed: u64,
    outbox: Outbox,
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
    /// The commit begun and not finished.
    pending: Option<PendingCommit>,
    /// Per stream, the input positions of its last finished commit.
    committed: HashMap<u32, BTreeMap<u32, u64>>,
    /// Detect time already reported as a metric.
    detect_busy_reported: std::time::Duration,
    /// Writes commits off the routing thread (with detect threads).
    writer: Option<Writer>,
    /// The next commit begins a usage checkpoint that callers wait for
    /// ([`Engine::checkpoint_usage`]).
    checkpoint_due: bool,
    /// The checkpoint slice the next commit writes, while a usage
    /// checkpoint is in progress (one slice a commit).
    checkpoint_next: Option<usize>,
    /// The checkpoint in progress was asked for: [`Engine::commit`] goes on
    /// until it is complete.
    checkpoint_forced: bool,
    last_checkpoint: Instant,
    /// Requests routed since the last usage checkpoint began.
    routed_since_checkpoint: u64,
    /// Keep the usage records each checkpoint writes, to publish them
    /// ([`Engine::take_checkpointed_usage`]).
    collect_usage: bool,
    /// Usage records written by finished checkpoints, not taken yet.
    checkpointed: Vec<CheckpointedUsage>,
}

/// One key's usage as a checkpoint wrote it, with the stream (a partition)
/// and the input offset it covers: what `run` publishes to the usage topic.
#[derive(Debug, Clone)]
pub struct CheckpointedUsage {
    pub stream: String,
    pub offset: u64,
    pub key: String,
    /// The usage, postcard.
    pub bytes: Vec<u8>,
    /// The key's sequence-rule state (rule on), postcard: its running
    /// maximum goes with the partition too.
    pub seq: Option<Vec<u8>>,
}

impl CheckpointedUsage {
    /// What a new owner of the partition is given of the key (see
    /// [`Engine::seed_usage`]).
    pub fn seed(&self) -> Result<KeySeed, postcard::Error> {
        Ok(KeySeed {
            key: self.key.clone(),
            usage: postcard::from_bytes(&self.bytes)?,
            seq: self.seq.as_deref().map(postcard::from_bytes).transpose()?,
            offset: self.offset,
        })
    }
}

/// A commit begun: the workers' answers to come, and the engine's part.
struct PendingCommit {
    phase: Phase,
    started: Instant,
    /// Per stream staged, the positions it commits.
    positions: Vec<(u32, BTreeMap<u32, u64>)>,
    /// The usage records it writes, to publish once written.
    usage: Vec<CheckpointedUsage>,
}

enum Phase {
    /// The workers stage their shards.
    Staging {
        replies: Vec<crossbeam_channel::Receiver<workers::Staged>>,
        /// Registry, lifecycle, usage resets and named values.
        commit: Box<Commit>,
    },
    /// The writer thread writes it.
    Writing { info: CommitInfo },
}

/// The thread that writes commits to the store (with detect threads), so
/// that routing goes on meanwhile. One commit at a time.
struct Writer {
    jobs: crossbeam_channel::Sender<Commit>,
    done: crossbeam_channel::Receiver<(Commit, Result<(), crate::state::StateError>)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start<S: StateStore>(store: Arc<S>) -> Writer {
        let (jobs, rx) = crossbeam_channel::bounded::<Commit>(1);
        let (tx, done) = crossbeam_channel::bounded(1);
        let thread = std::thread::Builder::new()
            .name("rg-commit".into())
            .spawn(move || {
                for c in rx {
                    let r = store.commit(&c);
                    if tx.send((c, r)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the commit thread");
        Writer {
            jobs,
            done,
            thread: Some(thread),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // a commit being written finishes (the store stays consistent either way)
        let (dead, _) = crossbeam_channel::bounded(1);
        drop(std::mem::replace(&mut self.jobs, dead));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<S: StateStore> Engine<S> {
    /// Opens the engine over a store: lifecycle, registry and the outbox left
    /// by an earlier run are read back; detect workers are started.
    pub fn open(store: Arc<S>, opts: impl Into<EngineOptions>) -> Result<Self, PipelineError> {
        let opts = opts.into();
        let meta = store.meta()?;
        let mut lifecycle = LifecycleTable::default();
        for ev in store.lifecycle()? {
            lifecycle.upsert(ev);
        }
        let detectors = Detectors::new(
            store.clone(),
            opts.clone(),
            meta.seed,
            opts.threads,
            opts.queue,
        );
        let writer = (opts.threads > 1).then(|| Writer::start(store.clone()));
        Ok(Engine {
            registry: Registry::new(store.registry()?),
            outbox: Outbox::restore(store.outbox()?),
            steps: vec![Vec::new(); detectors.count()],
            routed: 0,
            detectors,
            store,
            opts,
            lifecycle: Arc::new(lifecycle),
            lifecycle_pending: Vec::new(),
            streams: BTreeMap::new(),
            infos: HashMap::new(),
            malformed: 0,
            key_absent: 0,
            key_mismatch: 0,
            rebuilt: 0,
            failed: None,
            usage_reset: Vec::new(),
            values: Vec::new(),
            inputs: InputHealth::default(),
            pending: None,
            committed: HashMap::new(),
            detect_busy_reported: std::time::Duration::ZERO,
            writer,
            checkpoint_due: false,
            checkpoint_next: None,
            checkpoint_forced: false,
            last_checkpoint: Instant::now(),
            routed_since_checkpoint: 0,
            collect_usage: false,
            checkpointed: Vec::new(),
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

    /// Opens a stream of one shard (a partition), restoring it from the store.
    pub fn open_shard(&mut self, name: &str) -> Result<u32, PipelineError> {
        self.open_stream(name, 1)
    }

    /// Opens a stream of key-hash shards, restoring them from the store;
    /// returns the stream's id. A stream the store knows keeps the shards it
    /// was created with (the alerts are the same for any number: it is a
    /// matter of speed); a new one gets `shards`. A stream of one shard
    /// keeps its state under `name`, the others under `name#0`, `name#1`, ...
    pub fn open_stream(&mut self, name: &str, shards: u32) -> Result<u32, PipelineError> {
        let shards = self.registry.stream_shards(name).unwrap_or(shards);
        let names: Vec<String> = match shards {
            0 | 1 => vec![name.to_string()],
            n => (0..n).map(|i| format!("{name}#{i}")).collect(),
        };
        let ids: Vec<(u32, String)> = names
            .into_iter()
            .map(|n| (self.registry.shard_id(&n), n))
            .collect();
        let id = ids[0].0;
        if self.streams.contains_key(&id) {
            return Ok(id);
        }
        // the segment cache is shared by the stream's shards
        let mut segments = self.opts.segments;
        segments.cache_bytes /= ids.len();
        let opened = self.detectors.open(&ids, segments)?;
        let mut stream = Stream {
            name: name.to_string(),
            shards: ids.iter().map(|(i, _)| *i).collect(),
            max_seen: None,
            positions: BTreeMap::new(),
            cur: None,
            live_from: None,
            // restoring may have found expired segments to delete
            dirty: true,
            catchup: None,
        };
        let mut usage_from: HashMap<(u32, u8), BTreeMap<u32, u64>> = HashMap::new();
        for (k, o) in opened.into_iter().enumerate() {
            stream.max_seen = stream.max_seen.max(o.max_seen);
            for (slice, u) in o.usage_behind {
                usage_from.insert((ids[k].0, slice), u);
            }
            // the shards of a stream commit together; should they ever
            // differ, the lowest position re-reads the rest (recognised as
            // reprocessed, never as replays)
            for (src, next) in o.positions {
                let e = stream.positions.entry(src).or_insert(next);
                *e = (*e).min(next);
            }
            // a rebuild or warm-up interrupted by a crash goes on
            stream.live_from = stream.live_from.max(o.live_from);
            self.infos.insert(ids[k].0, o.info);
        }
        if !usage_from.is_empty() {
            let c = Catchup {
                until: stream.positions.iter().map(|(s, p)| (*s, *p)).collect(),
                from: usage_from,
            };
            let until: BTreeMap<u32, u64> = c
                .until
                .iter()
                .filter(|(s, p)| c.start(**s) < **p)
                .map(|(s, p)| (*s, *p))
                .collect();
            if !until.is_empty() {
                tracing::info!(stream = %name, committed = ?until,
                    "usage is behind the committed position: records are read again for usage");
                stream.catchup = Some(Catchup { until, ..c });
            }
        }
        self.committed.insert(id, stream.positions());
        self.streams.insert(id, stream);
        Ok(id)
    }

    /// Forgets a stream's in-memory state (its partition was revoked). Call
    /// [`Engine::commit`] first: what is not committed is lost.
    pub fn close_shard(&mut self, stream: u32) {
        self.committed.remove(&stream);
        if let Some(s) = self.streams.remove(&stream) {
            for id in s.shards {
                self.detectors.close(id);
                self.infos.remove(&id);
            }
        }
    }

    /// The shards of an open stream.
    fn shards_of(&self, stream: u32) -> Result<Vec<u32>, PipelineError> {
        Ok(self
            .streams
            .get(&stream)
            .ok_or(PipelineError::ShardNotOpen(stream))?
            .shards
            .clone())
    }

    /// Throws a stream's state away, in memory and (with the next commit) in
    /// the store, to rebuild it from the source: records before `live_from`
    /// only rebuild state, later ones are reported as usual.
    pub fn reset_shard(&mut self, stream: u32, live_from: u64) -> Result<(), PipelineError> {
        let shards = self.shards_of(stream)?;
        for id in &shards {
            self.detectors.reset(*id)?;
            self.infos.insert(*id, ShardInfo::default());
            self.usage_reset.push(*id);
        }
        let s = self.streams.get_mut(&stream).expect("checked");
        s.max_seen = None;
        s.positions.clear();
        s.cur = None;
        s.catchup = None;
        s.live_from = Some(live_from);
        s.dirty = true;
        Ok(())
    }

    /// Offset of the first record that is reported (not only rebuilt), while rebuilding.
    pub fn live_from(&self, stream: u32) -> Option<u64> {
        self.streams.get(&stream).and_then(|s| s.live_from)
    }

    /// Where to re-read a stream's source from to rebuild its live state, as
    /// of the last commit (see [`crate::state::SegmentLog::rebuild_from`]);
    /// `None` when nothing is live.
    pub fn rebuild_from(&self, stream: u32) -> Option<u64> {
        let s = self.streams.get(&stream)?;
        s.shards
            .iter()
            .filter_map(|id| self.infos.get(id).and_then(|i| i.rebuild_from))
            .min()
    }

    /// Positions (source id -> next offset) that a stream's state covers
    /// once committed.
    pub fn positions(&self, stream: u32) -> BTreeMap<u32, u64> {
        self.streams
            .get(&stream)
            .map(|s| s.positions())
            .unwrap_or_default()
    }

    /// Where a stream's input must be read from after opening it: the
    /// committed positions, or earlier when usage is behind them (the records
    /// in between are read again for usage; see [`UsageMode`]).
    pub fn read_from(&self, stream: u32) -> BTreeMap<u32, u64> {
        let Some(s) = self.streams.get(&stream) else {
            return BTreeMap::new();
        };
        let mut p = s.positions();
        if let Some(c) = &s.catchup {
            for (src, until) in &c.until {
                p.insert(*src, c.start(*src).min(*until));
            }
        }
        p
    }

    /// The next commit is a usage checkpoint (at the end of a scan, before
    /// a partition is handed over or the process stops).
    pub fn checkpoint_usage(&mut self) {
        self.checkpoint_due = true;
    }

    /// Keeps the usage records each checkpoint writes, for
    /// [`Engine::take_checkpointed_usage`].
    pub fn collect_checkpointed_usage(&mut self) {
        self.collect_usage = true;
    }

    /// The usage records finished checkpoints wrote, of streams with one
    /// source (partitions), since the last call.
    pub fn take_checkpointed_usage(&mut self) -> Vec<CheckpointedUsage> {
        std::mem::take(&mut self.checkpointed)
    }

    /// Hands usage over to a stream being rebuilt (after
    /// [`Engine::reset_shard`]): per key, its usage, its sequence state and
    /// the input offset they count up to (see
    /// [`crate::detect::ShardDetector::seed_usage`]).
    pub fn seed_usage(&mut self, stream: u32, usage: Vec<KeySeed>) -> Result<(), PipelineError> {
        let shards = self.shards_of(stream)?;
        let mut per: Vec<Vec<KeySeed>> = vec![Vec::new(); shards.len()];
        for seed in usage {
            let i = route(route_hash(Some(&seed.key), ""), shards.len());
            per[i].push(seed);
        }
        for (i, u) in per.into_iter().enumerate() {
            if !u.is_empty() {
                self.detectors.seed(shards[i], u);
            }
        }
        Ok(())
    }

    /// Where every key's usage of a one-source stream (a partition) counts
    /// up to once the last commit was a usage checkpoint: its position, when
    /// it reports (not rebuilding) and is not reading records again for
    /// usage. A key a checkpoint did not write had not changed, so its
    /// newest record counts up to there too (see `schemas/usage-record.v1.md`,
    /// partition marks).
    pub fn usage_counted_to(&self, stream: u32) -> Option<u64> {
        let s = self.streams.get(&stream)?;
        let committed = self.committed.get(&stream)?;
        if s.live_from.is_some()
            || s.catchup.is_some()
            || committed.len() != 1
            || self.checkpoint_in_progress()
        {
            return None;
        }
        committed.values().next().copied()
    }

    /// Whether requests were routed since the last usage checkpoint began,
    /// or one is in progress (the usage in the store is behind what is live).
    pub fn usage_behind(&self) -> bool {
        self.routed_since_checkpoint > 0 || self.checkpoint_in_progress()
    }

    /// Whether a usage checkpoint is asked for or not complete: its slices
    /// go with the next commits, one a commit.
    pub fn checkpoint_in_progress(&self) -> bool {
        self.checkpoint_due || self.checkpoint_next.is_some()
    }

    /// Adds a lifecycle record; it is persisted with the next commit and
    /// applies to the requests routed after it.
    pub fn add_lifecycle(&mut self, ev: LifecycleEvent) -> bool {
        let changed = Arc::make_mut(&mut self.lifecycle).upsert(ev.clone());
        if changed {
            self.lifecycle_pending.push(ev);
        }
        changed
    }

    /// Decodes and detects one record of `stream` (see
    /// [`Engine::process_chunk`]).
    pub fn process(
        &mut self,
        stream: u32,
        rec: Record<'_>,
        dlq: &mut dyn DeadLetterSink,
    ) -> Result<(), PipelineError> {
        let mut raw = RawChunk::with_capacity(1, 0);
        raw.push(stream, &rec);
        let chunk = DecodedChunk::decode(raw, &self.opts.decoder);
        self.process_chunk(Arc::new(chunk), dlq)
    }

    /// Routes the records of a decoded chunk, in order: an undecodable one
    /// goes to `dlq`, a request to the shard of its key with its stream's
    /// clock. Every record moves its stream's position. Records of a stream
    /// not open (a partition revoked meanwhile) are skipped.
    pub fn process_chunk(
        &mut self,
        chunk: Arc<DecodedChunk>,
        dlq: &mut dyn DeadLetterSink,
    ) -> Result<(), PipelineError> {
        let raw = chunk.raw();
        let events = chunk.events();
        let routes = chunk.routes();
        let mut dead = Vec::new();
        let Engine {
            streams,
            detectors,
            steps,
            routed,
            rebuilt,
            inputs,
            registry,
            opts,
            key_absent,
            key_mismatch,
            ..
        } = self;
        let recs = raw.records();
        let mut run_start = 0;
        // records of one chunk mostly come from one stream: looked up once
        // per run of records of the same stream
        while run_start < recs.len() {
            let id = recs[run_start].stream;
            let run_end = recs[run_start..]
                .iter()
                .position(|r| r.stream != id)
                .map_or(recs.len(), |n| run_start + n);
            let run = run_start..run_end;
            run_start = run_end;
            let Some(st) = streams.get_mut(&id) else {
                continue;
            };
            for i in run {
                let rec = &recs[i];
                st.dirty = true;
                let info = routes[i];
                let shard = info.map(|r| st.shards[route(r.hash, st.shards.len())]);
                // read before `advance`, which ends the catch-up at its last record
                let usage = match (&st.catchup, shard) {
                    (Some(c), Some(shard)) => {
                        let slice = events[i]
                            .as_ref()
                            .ok()
                            .and_then(|ev| ev.key_id.as_deref())
                            .map(usage_slice);
                        c.mode(shard, slice, rec.pos.source, rec.pos.offset)
                    }
                    _ => UsageMode::Normal,
                };
                st.advance(rec.pos.source, rec.pos.offset + 1);
                let mut rebuild = false;
                if let Some(live_from) = st.live_from {
                    if rec.pos.offset < live_from {
                        // rebuilding: state only, no alerts, no dead letters, not counted
                        rebuild = true;
                        *rebuilt += 1;
                    } else {
                        caught_up(st, detectors, steps);
                    }
                }
                if let (Some(info), Some(shard)) = (info, shard) {
                    let max_before = st.max_seen;
                    st.max_seen = Some(
                        st.max_seen
                            .map_or(info.received_at, |m| m.max(info.received_at)),
                    );
                    *routed += 1;
                    steps[detectors.worker_of(shard)].push(Step::Event {
                        idx: i as u32,
                        shard,
                        seq: *routed,
                        max_before,
                        rebuild,
                        usage,
                    });
                }
                if rebuild {
                    if rec.pos.offset + 1 >= st.live_from.unwrap_or(0) {
                        caught_up(st, detectors, steps);
                    }
                    continue;
                }
                let failed = info.is_none();
                if inputs.record(rec.pos.source, failed) {
                    let input = registry.source_name(rec.pos.source);
                    inputs.flag(rec.pos.source, input, opts.decoder.format());
                }
                if failed {
                    dead.push(i);
                } else if let Some(key) = rec.message_key() {
                    // a Kafka record: its message key against its key_id
                    let key_id = events[i].as_ref().ok().and_then(|ev| ev.key_id.as_deref());
                    match key.map(|k| raw.slice(k)) {
                        None => *key_absent += 1,
                        Some(k) => {
                            if k != key_id.unwrap_or_default().as_bytes() {
                                *key_mismatch += 1;
                            }
                        }
                    }
                }
            }
        }
        self.routed_since_checkpoint += recs.len() as u64;
        self.detectors
            .dispatch(&chunk, &mut self.steps, &self.lifecycle);
        for i in dead {
            let rec = raw.record(i);
            let Err(e) = &events[i] else { continue };
            let name = self.registry.source_name(rec.pos.source).to_string();
            self.dead_letter(&name, &rec, e, dlq)?;
        }
        Ok(())
    }

    /// The end of a bounded input (`scan`): every shard judges what was
    /// still waiting for the watermark (sequence numbers), as if event time
    /// had passed it all; the alerts go to the outbox with the next commit.
    pub fn end_of_input(&mut self) -> Result<(), PipelineError> {
        self.detectors.end_of_input();
        for s in self.streams.values_mut() {
            // judging changes the keys' state even when nothing is raised
            s.dirty = true;
        }
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

    /// Judges the inputs that ended before their first
    /// `FIRST_RECORDS` records (`scan`, at the end of its files).
    pub fn finish_inputs(&mut self) {
        for source in self.inputs.unjudged() {
            let input = self.registry.source_name(source).to_string();
            self.inputs.flag(source, &input, self.opts.decoder.format());
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

    /// Commits everything routed so far atomically (see the module docs),
    /// waiting for it: a commit in flight first, then a new one. When the
    /// store refuses (disk full, I/O error) nothing is lost: the commit is
    /// kept and retried first by the next call.
    ///
    /// A usage checkpoint asked for ([`Engine::checkpoint_usage`]) is
    /// complete when this returns: its slices go with as many commits.
    pub fn commit(&mut self, dlq: &mut dyn DeadLetterSink) -> Result<CommitInfo, PipelineError> {
        if self.pending.is_some() {
            self.finish_commit(true)?;
        }
        let mut total = CommitInfo::default();
        loop {
            self.begin_commit(dlq)?;
            let info = self
                .finish_commit(true)?
                .expect("a commit waited for is finished");
            total.events += info.events;
            total.segments += info.segments;
            total.deleted_segments += info.deleted_segments;
            total.alerts += info.alerts;
            if !(self.checkpoint_forced && self.checkpoint_in_progress()) {
                return Ok(total);
            }
        }
    }

    /// Whether a commit is begun and not finished.
    pub fn commit_in_flight(&self) -> bool {
        self.pending.is_some()
    }

    /// Begins a commit of everything routed so far: dead letters flushed,
    /// then every worker is asked to stage its shards once it has processed
    /// what was routed before (records routed from now on belong to the next
    /// commit). A commit the store refused earlier is retried first. Finish
    /// it with [`Engine::finish_commit`]; one at a time.
    pub fn begin_commit(&mut self, dlq: &mut dyn DeadLetterSink) -> Result<(), PipelineError> {
        assert!(self.pending.is_none(), "one commit at a time");
        let started = Instant::now();
        dlq.flush()?;
        if let Some((c, info)) = self.failed.take() {
            if let Err(e) = self.store.commit(&c) {
                self.failed = Some((c, info));
                return Err(e.into());
            }
            self.detectors.durable();
            self.outbox.committed(info.alerts);
        }
        // a checkpoint begins when asked for (again from its first slice)
        // or when its interval has passed, and writes a slice a commit
        let begins = if self.checkpoint_due {
            self.checkpoint_forced = true;
            true
        } else if self.checkpoint_next.is_none()
            && self.last_checkpoint.elapsed() >= self.opts.usage_checkpoint
        {
            self.checkpoint_forced = false;
            true
        } else {
            false
        };
        if begins {
            self.checkpoint_due = false;
            self.checkpoint_next = Some(0);
            self.last_checkpoint = Instant::now();
            self.routed_since_checkpoint = 0;
        }
        let slices = match self.checkpoint_next {
            Some(first) => {
                let end = first + 1;
                self.checkpoint_next = (end < USAGE_SLICES).then_some(end);
                first..end
            }
            None => 0..0,
        };
        let checkpoint = !slices.is_empty();
        let mut wanted = Vec::new();
        let mut positions = Vec::new();
        for (id, s) in self
            .streams
            .iter_mut()
            .filter(|(_, s)| s.dirty || checkpoint)
        {
            s.dirty = false;
            let pos = s.positions();
            positions.push((*id, pos.clone()));
            for shard in &s.shards {
                wanted.push(StageShard {
                    id: *shard,
                    positions: pos.clone(),
                    live_from: s.live_from,
                    // a stream reading records again for usage takes none
                    slices: if s.catchup.is_none() {
                        slices.clone()
                    } else {
                        0..0
                    },
                });
            }
        }
        self.pending = Some(PendingCommit {
            phase: Phase::Staging {
                replies: self.detectors.stage(wanted),
                commit: Box::new(Commit {
                    registry: self.registry.take_pending(),
                    lifecycle: std::mem::take(&mut self.lifecycle_pending),
                    usage_reset: std::mem::take(&mut self.usage_reset),
                    values: std::mem::take(&mut self.values),
                    ..Default::default()
                }),
            },
            started,
            positions,
            usage: Vec::new(),
        });
        Ok(())
    }

    /// Finishes the commit in flight once every worker has staged its part
    /// (waiting for them when `wait`): one atomic store write, then the
    /// segments it holds may leave memory. `None` when the workers are not
    /// done yet (not waiting) or no commit is in flight.
    pub fn finish_commit(&mut self, wait: bool) -> Result<Option<CommitInfo>, PipelineError> {
        loop {
            let Some(p) = &mut self.pending else {
                return Ok(None);
            };
            match &p.phase {
                Phase::Staging { replies, .. } => {
                    if !wait && !replies.iter().all(|r| !r.is_empty()) {
                        return Ok(None);
                    }
                    let (c, info) = self.assemble()?;
                    let p = self.pending.as_mut().expect("checked");
                    match &self.writer {
                        Some(w) if !c.is_empty() => {
                            w.jobs.send(c).expect("the writer thread runs");
                            p.phase = Phase::Writing { info };
                        }
                        _ => {
                            if !c.is_empty() {
                                if let Err(e) = self.store.commit(&c) {
                                    self.pending = None;
                                    self.failed = Some((c, info));
                                    return Err(e.into());
                                }
                            }
                            return self.complete(info).map(Some);
                        }
                    }
                }
                Phase::Writing { info } => {
                    let info = *info;
                    let w = self.writer.as_ref().expect("writing needs the writer");
                    let (c, r) = if wait {
                        w.done.recv().expect("the writer thread answers")
                    } else {
                        match w.done.try_recv() {
                            Ok(x) => x,
                            Err(_) => return Ok(None),
                        }
                    };
                    if let Err(e) = r {
                        self.pending = None;
                        self.failed = Some((c, info));
                        return Err(e.into());
                    }
                    return self.complete(info).map(Some);
                }
            }
        }
    }

    /// Every worker's part of the staged commit and the engine's, in one
    /// [`Commit`].
    fn assemble(&mut self) -> Result<(Commit, CommitInfo), PipelineError> {
        let p = self.pending.as_mut().expect("a commit in flight");
        let Phase::Staging { replies, commit } = &mut p.phase else {
            unreachable!("assembled while staging");
        };
        let replies = std::mem::take(replies);
        let mut c = *std::mem::take(commit);
        let mut events = 0;
        let mut error = None;
        let mut alerts = Vec::new();
        let mut usage_extra: HashMap<(u32, String), workers::UsageExtra> = HashMap::new();
        for rx in replies {
            let mut part = rx.recv().expect("a worker answers");
            if let Some(e) = part.error.take() {
                error.get_or_insert(e);
                continue;
            }
            events += part.events;
            alerts.append(&mut part.alerts);
            for (id, info) in part.infos {
                self.infos.insert(id, info);
            }
            let w = part.commit;
            c.shards.extend(w.shards);
            c.segments.extend(w.segments);
            c.segment_deletes.extend(w.segment_deletes);
            c.segment_floors.extend(w.segment_floors);
            c.usage.extend(w.usage);
            c.sequence.extend(w.sequence);
            if self.collect_usage {
                usage_extra.extend(
                    part.usage_extra
                        .into_iter()
                        .map(|x| ((x.shard, x.key.clone()), x)),
                );
            }
        }
        if let Some(e) = error {
            self.pending = None;
            return Err(e);
        }
        // in the order of the requests that raised them, whatever the workers
        alerts.sort_by_key(|(seq, shard, _)| (*seq, *shard));
        for (_, _, a) in &alerts {
            self.outbox.push(a);
        }
        let (outbox_put, outbox_delete) = self.outbox.stage();
        c.outbox_put = outbox_put;
        c.outbox_delete = outbox_delete;
        if self.collect_usage && !c.usage.is_empty() {
            let p = self.pending.as_mut().expect("a commit in flight");
            for (shard, key, bytes) in &c.usage {
                let Some((stream, st)) = self
                    .streams
                    .iter()
                    .find(|(_, st)| st.shards.contains(shard))
                else {
                    continue;
                };
                let Some((_, pos)) = p.positions.iter().find(|(id, _)| id == stream) else {
                    continue;
                };
                if pos.len() != 1 {
                    continue;
                }
                let extra = usage_extra.remove(&(*shard, key.clone()));
                let pos = *pos.values().next().expect("one");
                p.usage.push(CheckpointedUsage {
                    stream: st.name.clone(),
                    // handed-over usage counts up to its own offset while
                    // the partition is rebuilt: a next owner must not count
                    // the records before it again
                    offset: extra
                        .as_ref()
                        .and_then(|x| x.counted_to)
                        .map_or(pos, |c| c.max(pos)),
                    key: key.clone(),
                    bytes: bytes.clone(),
                    seq: extra.and_then(|x| x.seq),
                });
            }
        }
        let info = CommitInfo {
            alerts: c.outbox_put.len(),
            events,
            segments: c.segments.len(),
            deleted_segments: c.segment_deletes.len(),
        };
        Ok((c, info))
    }

    /// The commit in flight is written.
    fn complete(&mut self, info: CommitInfo) -> Result<CommitInfo, PipelineError> {
        let mut p = self.pending.take().expect("a commit in flight");
        self.checkpointed.append(&mut p.usage);
        // every segment handed to this commit (and to a retried one) is in
        // the store now: only from here may the segment caches evict them
        self.detectors.durable();
        self.outbox.committed(info.alerts);
        for (stream, pos) in p.positions {
            self.committed.insert(stream, pos);
        }
        telemetry::Committed {
            events: info.events,
            segments: info.segments,
            deleted_segments: info.deleted_segments,
            alerts: info.alerts,
            elapsed: p.started.elapsed(),
        }
        .emit();
        let t = self.totals();
        telemetry::StateSize {
            live_entries: t.live_entries,
            index_bytes: t.index_bytes,
            segments: self.infos.values().map(|i| i.segments).sum(),
        }
        .emit();
        let busy = self.detectors.busy();
        telemetry::StageBusy {
            stage: "detect",
            busy: busy.saturating_sub(std::mem::replace(&mut self.detect_busy_reported, busy)),
        }
        .emit();
        for (w, depth) in self.detectors.queue_depths().into_iter().enumerate() {
            telemetry::QueueDepth {
                queue: &format!("detect-{w}"),
                depth,
            }
            .emit();
        }
        if t.index_bytes > self.opts.max_index_bytes {
            return Err(PipelineError::IndexFull {
                bytes: t.index_bytes,
                limit: self.opts.max_index_bytes,
                entries: t.live_entries,
            });
        }
        Ok(info)
    }

    /// Time the detect workers spent on requests so far, together.
    pub fn detect_busy(&self) -> std::time::Duration {
        self.detectors.busy()
    }

    /// The input positions of a stream as of its last finished commit.
    pub fn committed_positions(&self, stream: u32) -> Option<&BTreeMap<u32, u64>> {
        self.committed.get(&stream)
    }

    /// Hands every committed alert to the sink; they leave the outbox with the
    /// next commit. Returns how many were delivered.
    pub fn deliver(&mut self, sink: &mut dyn AlertSink) -> Result<usize, PipelineError> {
        Ok(self.outbox.deliver(sink)?)
    }

    /// Sends every committed alert to the sink without waiting for its
    /// acknowledgement (see [`Engine::delivered`]); nothing when a batch is
    /// being sent already.
    pub fn send_alerts(&mut self, sink: &mut dyn AlertSink) -> Result<(), PipelineError> {
        Ok(self.outbox.send(sink)?)
    }

    /// How many alerts sent with [`Engine::send_alerts`] the sink has
    /// acknowledged (waiting for them when `wait`); they leave the outbox
    /// with the next commit.
    pub fn delivered(
        &mut self,
        sink: &mut dyn AlertSink,
        wait: bool,
    ) -> Result<usize, PipelineError> {
        Ok(self.outbox.delivered(sink, wait)?)
    }

    /// Alerts sent and not acknowledged yet.
    pub fn alerts_in_flight(&self) -> usize {
        self.outbox.sending()
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

    /// Totals as of the last commit (the shards' counters are read when
    /// they are staged).
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            malformed: self.malformed,
            key_absent: self.key_absent,
            key_mismatch: self.key_mismatch,
            rebuilt: self.rebuilt,
            ..Default::default()
        };
        for i in self.infos.values() {
            t.stats.add(&i.stats);
            t.live_entries += i.live_entries;
            t.index_bytes += i.index_bytes;
        }
        t
    }

    /// Ids of the shards open, over every stream.
    pub fn open_shards(&self) -> Vec<u32> {
        self.streams
            .values()
            .flat_map(|s| s.shards.iter().copied())
            .collect()
    }

    /// Per key, the freshest usage of any open shard (what was routed so far).
    pub fn usage(&mut self, keys: Vec<String>) -> HashMap<String, KeyUsage> {
        let mut out: HashMap<String, KeyUsage> = HashMap::new();
        for (k, u) in self.detectors.usage(keys) {
            match out.get(&k) {
                Some(old) if old.last_seen >= u.last_seen => {}
                _ => {
                    out.insert(k, u);
                }
            }
        }
        out
    }

    /// The freshest usage of a key in any open shard.
    pub fn usage_of(&mut self, key_id: &str) -> Option<KeyUsage> {
        self.usage(vec![key_id.to_string()]).remove(key_id)
    }

    /// Event time of the newest request routed to any open stream.
    pub fn now(&self) -> Option<Millis> {
        self.streams.values().filter_map(|s| s.max_seen).max()
    }

    /// Rotation reports from the live state.
    pub fn rotation_reports(
        &mut self,
        cfg: &crate::report::ReportConfig,
    ) -> Vec<crate::report::RotationReport> {
        let Some(now) = self.now() else {
            return Vec::new();
        };
        let mut keys: Vec<String> = Vec::new();
        for (k, recs) in self.lifecycle.keys() {
            keys.push(k.to_string());
            keys.extend(recs.records().iter().filter_map(|r| r.successor.clone()));
        }
        keys.sort();
        keys.dedup();
        let usage = self.usage(keys);
        crate::report::reports(cfg, &self.lifecycle, &usage, now)
    }
}

/// A stream finished rebuilding: its shards count from zero from here on.
fn caught_up<S: StateStore>(st: &mut Stream, d: &Detectors<S>, steps: &mut [Vec<Step>]) {
    st.live_from = None;
    for id in &st.shards {
        steps[d.worker_of(*id)].push(Step::CaughtUp { shard: *id });
    }
    tracing::debug!(stream = %st.name, "rebuilt: reporting from here on");
}
