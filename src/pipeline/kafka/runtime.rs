//! The runtime of `run`: the state the poll loop and the rebalance callbacks
//! share (one owner, behind one lock that only they take), and the loop.

use std::collections::BTreeMap;

use hashbrown::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};

use super::client::{ClientFactory, Role};
use super::config::KafkaConfig;
use super::forward::Forwarder;
use super::lifecycle::LifecycleReader;
use super::rebalance::Ctx;
use super::reports::{Published, Reporter};
use super::status::Status;
use super::usage::{UsagePublisher, UsageReader};
use crate::config::Config;
use crate::decode::Decoder;
use crate::pipeline::chunk::{ChunkBuffers, DecodePool, RawChunk};
use crate::pipeline::{Engine, PipelineConfig, PipelineError};
use crate::sink::kafka::{self as ksink, KafkaAlertSink, KafkaDeadLetterSink};
use crate::source::kafka as ksrc;
use crate::state::{RocksStore, StateStore};

/// The assigned partitions, by topic then partition (looked up without allocating).
#[derive(Default)]
pub(super) struct Parts(HashMap<String, HashMap<i32, Part>>);

impl Parts {
    pub(super) fn get_mut(&mut self, topic: &str, p: i32) -> Option<&mut Part> {
        self.0.get_mut(topic)?.get_mut(&p)
    }
    pub(super) fn insert(&mut self, topic: String, p: i32, part: Part) {
        self.0.entry(topic).or_default().insert(p, part);
    }
    pub(super) fn remove(&mut self, topic: &str, p: i32) -> Option<Part> {
        self.0.get_mut(topic)?.remove(&p)
    }
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&str, i32, &mut Part)> {
        self.0
            .iter_mut()
            .flat_map(|(t, m)| m.iter_mut().map(move |(p, part)| (t.as_str(), *p, part)))
    }
    pub(super) fn values(&self) -> impl Iterator<Item = &Part> {
        self.0.values().flat_map(|m| m.values())
    }
}

/// One assigned partition.
pub(super) struct Part {
    /// The detector shard of the partition (`None`: a forwarded topic).
    pub(super) shard: Option<u32>,
    pub(super) source: u32,
    pub(super) name: String,
    /// Next offset to read.
    pub(super) next: u64,
    /// Next offset the group may be told: what the state store holds (a
    /// forwarded partition: what is forwarded and acknowledged).
    pub(super) committable: u64,
    /// Offset last committed to the group.
    pub(super) group_committed: Option<u64>,
    pub(super) processed: u64,
    pub(super) rate_mark: (Instant, u64),
}

/// Everything the poll loop and the rebalance callbacks share.
pub(super) struct Runtime {
    pub(super) engine: Engine<RocksStore>,
    pub(super) alerts: KafkaAlertSink,
    pub(super) dlq: KafkaDeadLetterSink,
    pub(super) decoder: Decoder,
    pub(super) parts: Parts,
    pub(super) clients: ClientFactory,
    pub(super) kafka: KafkaConfig,
    /// Retention plus allowed lateness: how far back a first deployment warms.
    pub(super) warm_span: i64,
    /// Topics whose records are forwarded (repartition mode), not detected.
    pub(super) forward_topics: Vec<String>,
    pub(super) forwarder: Option<Forwarder>,
    /// `[pipeline]`: chunks, threads, when a batch is committed.
    pub(super) pipeline: PipelineConfig,
    /// Decodes the chunks cut from polled records, in order.
    pub(super) pool: DecodePool,
    /// The chunk being filled from polled records.
    pub(super) chunk: RawChunk,
    /// Buffers of chunks already dropped, for the next ones.
    buffers: ChunkBuffers,
    /// Time spent polling and cutting chunks since the last commit.
    pub(super) read_busy: Duration,
    /// Decode time already reported as a metric.
    pub(super) decode_reported: Duration,
    pub(super) records_since_commit: usize,
    /// When the first record of the open batch was processed.
    pub(super) batch_opened: Option<Instant>,
    /// The batch of the commit in flight: (records, when it was opened).
    pub(super) committing: (usize, Option<Instant>),
    /// The committed positions the alerts in flight cover (partitions go to
    /// the group once they are acknowledged).
    pub(super) sending_positions: Option<Vec<(u32, u32, u64)>>,
    /// When the alerts in flight were sent.
    pub(super) alerts_sent_at: Option<Instant>,
    pub(super) last_commit: Instant,
    /// Partitions paused because the store refused a commit.
    pub(super) paused: bool,
    /// (key absent, key mismatch, rebuilt) already reported as metrics.
    pub(super) reported: (u64, u64, u64),
    /// Alert-topic positions last written to the store.
    pub(super) persisted_positions: BTreeMap<i32, i64>,
    pub(super) last_group_commit: Instant,
    pub(super) reporter: Reporter,
    /// Publishes checkpointed usage to the usage topic.
    pub(super) usage_pub: Option<UsagePublisher>,
    /// The usage topic's global table.
    pub(super) usage: Option<UsageReader>,
    /// Unreadable usage records already counted in the metric.
    pub(super) usage_unreadable_reported: u64,
}

pub(super) fn lock(rt: &Mutex<Runtime>) -> MutexGuard<'_, Runtime> {
    rt.lock().unwrap_or_else(|e| e.into_inner())
}

/// Name of the stored alert-topic positions.
pub(super) const ALERT_POSITIONS: &str = "alert_positions";

/// How long the poll loop waits for a record when no batch is open (it
/// returns as soon as one comes; this paces the lifecycle table, group
/// offsets and reports while the input is idle).
pub(super) const IDLE_WAIT: Duration = Duration::from_millis(50);

impl Runtime {
    pub(super) fn is_forwarded(&self, topic: &str) -> bool {
        self.forward_topics.iter().any(|t| t == topic)
    }

    /// Handles one polled record: into the chunk being filled (a forwarded
    /// one is forwarded now).
    fn process(&mut self, m: &BorrowedMessage<'_>) -> Result<(), PipelineError> {
        let Some(part) = self.parts.get_mut(m.topic(), m.partition()) else {
            return Ok(()); // from a partition given away meanwhile: its new owner reads it
        };
        let offset = m.offset() as u64;
        if offset < part.next {
            return Ok(()); // already processed (a fetch racing a seek)
        }
        part.next = offset + 1;
        part.processed += 1;
        if self.records_since_commit == 0 {
            self.batch_opened = Some(Instant::now());
        }
        self.records_since_commit += 1;
        let rec = ksrc::record(m, part.source, self.decoder.max_event_bytes);
        match part.shard {
            Some(stream) => {
                self.chunk.push(stream, &rec);
                Ok(())
            }
            None => {
                let fwd = self
                    .forwarder
                    .as_ref()
                    .expect("forwarding partition without forwarder");
                let name = part.name.clone();
                match self.decoder.decode_record(&rec) {
                    // keyed by key_id; an unsigned request by its event id
                    // (a redelivered copy still meets the first one)
                    Ok(ev) => fwd.forward(
                        ev.key_id.as_deref().unwrap_or(&ev.event_id).as_bytes(),
                        m.payload().unwrap_or(&[]),
                    ),
                    Err(e) => self.engine.dead_letter(&name, &rec, &e, &mut self.dlq),
                }
            }
        }
    }

    /// Hands the chunk being filled to the decoders (routing the oldest
    /// decoded ones first when the pool is full: backpressure), then routes
    /// every chunk already decoded.
    pub(super) fn submit(&mut self) -> Result<(), PipelineError> {
        if !self.chunk.is_empty() {
            while !self.pool.has_room() {
                self.route_next(true)?;
            }
            let next = self
                .buffers
                .chunk(self.pipeline.effective_chunk_events(), 0);
            let full = std::mem::replace(&mut self.chunk, next);
            self.pool.submit(full);
        }
        while self.route_next(false)? {}
        Ok(())
    }

    /// Routes the oldest decoded chunk (waiting for it when `wait`); false
    /// when there was none.
    fn route_next(&mut self, wait: bool) -> Result<bool, PipelineError> {
        match self.pool.next(wait) {
            Some(d) => {
                self.engine.process_chunk(Arc::new(d), &mut self.dlq)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Everything polled is routed to the detect workers (before a commit).
    pub(super) fn flush(&mut self) -> Result<(), PipelineError> {
        self.submit()?;
        while self.route_next(true)? {}
        Ok(())
    }

    fn log_progress(&mut self, status: &Status) {
        let lag = status.lag.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let engine = &self.engine;
        for (_, _, part) in self.parts.iter_mut() {
            let (t0, n0) = part.rate_mark;
            let secs = t0.elapsed().as_secs_f64().max(1e-3);
            let rate = (part.processed - n0) as f64 / secs;
            part.rate_mark = (Instant::now(), part.processed);
            let rebuilding = part.shard.and_then(|s| engine.live_from(s));
            tracing::info!(
                partition = %part.name,
                offset = part.next,
                lag = lag.get(&part.name).copied().unwrap_or(-1),
                events_per_sec = rate.round(),
                rebuilding_until = ?rebuilding,
                "partition progress"
            );
        }
        let t = self.engine.totals();
        if t.key_absent + t.key_mismatch > 0 {
            tracing::warn!(
                key_absent = t.key_absent,
                key_mismatch = t.key_mismatch,
                "events whose message key is not their key_id: per-key state needs every event of a key \
                 on one partition (key messages by key_id, or set kafka.repartition = true)"
            );
        }
    }
}

/// What `run` was asked to do.
pub struct RunArgs {
    pub config: Config,
}

/// Alerts a crash left in the outbox: those already on the alert topic
/// (produced, not yet removed from the outbox) are not produced again.
fn redeliver_outbox(
    engine: &mut Engine<RocksStore>,
    alerts: &mut KafkaAlertSink,
    clients: &ClientFactory,
    topic: &str,
) -> Result<(), PipelineError> {
    let left = engine.undelivered();
    crate::telemetry::OutboxRedelivery { count: left }.emit();
    if left > 0 {
        let from: BTreeMap<i32, i64> = engine
            .store()
            .value(ALERT_POSITIONS)?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let ids = ksink::alert_ids_since(
            &clients.config(Role::Reader, Some("replayguard-alert-reader")),
            topic,
            &from,
        )?;
        tracing::info!(
            on_topic = ids.len(),
            "read the alert topic since the last commit"
        );
        alerts.skip_ids(ids);
    }
    engine.deliver(alerts)?;
    if alerts.skipped > 0 {
        tracing::info!(
            skipped = alerts.skipped,
            "outbox alerts already on the alert topic were not produced again"
        );
    }
    Ok(())
}

/// Runs the detector until `status.stop` is set or an error stops it.
pub fn run(args: RunArgs, status: Arc<Status>) -> Result<(), PipelineError> {
    let mut config = args.config;
    config.pipeline = config.pipeline.for_run();
    let k = &config.kafka;
    let clients = ClientFactory::new(k);
    let dir = config
        .state
        .dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("replayguard-state"));
    let store = Arc::new(RocksStore::open(&dir, &config.state.rocks())?);
    let mut engine = Engine::open(store.clone(), &config)?;
    tracing::info!(state_dir = %dir.display(), brokers = %k.brokers, group = %k.group, start = %k.start, "starting");
    if k.create_topics {
        super::admin::create_topics(&clients, k, &config.report.topic)?;
    }
    let producer = |what: &str| -> Result<Arc<ksink::Producer_>, PipelineError> {
        let c = clients.config(Role::Producer, None);
        Ok(Arc::new(clients.create_with_context(
            &format!("{what} producer"),
            &c,
            ksink::DeliveryTracker::default(),
        )?))
    };
    let mut alerts = KafkaAlertSink::new(producer("alert")?, &k.alert_topic)
        .with_reader(clients.config(Role::Reader, Some("replayguard-alert-reader")));
    let dlq = KafkaDeadLetterSink::new(producer("dead-letter")?, &k.dead_letter_topic);
    // the usage changelog: published at checkpoints, read whole as a global table
    let (usage_pub, usage) = if k.usage_topic.is_empty() {
        (None, None)
    } else {
        engine.collect_checkpointed_usage();
        (
            Some(UsagePublisher::new(producer("usage")?, &k.usage_topic)),
            Some(UsageReader::start(&clients, &k.usage_topic, &k.group)?),
        )
    };
    redeliver_outbox(&mut engine, &mut alerts, &clients, &k.alert_topic)?;

    let forwarder = if k.repartition {
        Some(Forwarder::new(
            producer("repartition")?,
            k.repartition_topic(),
        ))
    } else {
        None
    };
    let report_topic = if config.report.topic.is_empty() {
        None
    } else {
        let c = clients.config(Role::ReportProducer, None);
        Some((
            clients.create("report producer", &c)?,
            config.report.topic.clone(),
            config.report.interval.as_std(),
        ))
    };
    let published = Arc::new(Published::new(
        store,
        usage.as_ref().map(|u| u.table.clone()),
    ));
    let _ = status.reports.set(published.clone());
    let rules = engine.rules();
    let engine_decoder = engine.decoder().clone();
    let threads = config.pipeline.effective_threads();
    let buffers = ChunkBuffers::new(config.pipeline.effective_queue_chunks() + 2);
    let rt = Arc::new(Mutex::new(Runtime {
        decoder: engine.decoder().clone(),
        warm_span: rules.retention_ms + rules.allowed_lateness_ms,
        engine,
        alerts,
        dlq,
        parts: Parts::default(),
        clients: clients.clone(),
        kafka: k.clone(),
        forward_topics: if k.repartition {
            k.input_topics.clone()
        } else {
            Vec::new()
        },
        forwarder,
        pool: DecodePool::new(
            engine_decoder,
            if threads > 1 { threads } else { 0 },
            config.pipeline.effective_queue_chunks(),
        ),
        chunk: buffers.chunk(config.pipeline.effective_chunk_events(), 0),
        buffers,
        read_busy: Duration::ZERO,
        decode_reported: Duration::ZERO,
        // resolved once (above): what is in effect is read for every chunk
        pipeline: config.pipeline.clone(),
        records_since_commit: 0,
        batch_opened: None,
        committing: (0, None),
        sending_positions: None,
        alerts_sent_at: None,
        last_commit: Instant::now(),
        paused: false,
        reported: (0, 0, 0),
        last_group_commit: Instant::now(),
        persisted_positions: Default::default(),
        reporter: Reporter::new(published, config.report.clone(), report_topic),
        usage_pub,
        usage,
        usage_unreadable_reported: 0,
    }));

    // the lifecycle table: read whole before consuming events
    let mut lifecycle = LifecycleReader::start(&clients, k)?;
    while !lifecycle.caught_up() && !status.stop.load(Ordering::Relaxed) {
        lifecycle.apply(&rt)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    {
        let mut g = lock(&rt);
        let Runtime {
            engine, dlq, usage, ..
        } = &mut *g;
        engine.commit(dlq)?;
        tracing::info!(keys = engine.lifecycle().len(), "lifecycle table loaded");
        if let Some(u) = usage {
            if !u.catch_up(Duration::from_secs(30)) {
                tracing::warn!("the usage topic was not read to its end within 30 s: reports and hand-overs may lack usage for a while");
            }
            tracing::info!(keys = u.table.len(), "usage table loaded");
        }
    }

    let mut cc = clients.config(Role::Group, None);
    cc.set(
        "statistics.interval.ms",
        (k.log_interval.0.max(1000)).to_string(),
    );
    let mut consumer: BaseConsumer<Ctx> = clients.create_with_context(
        "Kafka consumer",
        &cc,
        Ctx {
            rt: rt.clone(),
            status: status.clone(),
        },
    )?;
    let mut topics: Vec<String> = k.input_topics.clone();
    if k.repartition {
        topics.push(k.repartition_topic());
    }
    let refs: Vec<&str> = topics.iter().map(|s| s.as_str()).collect();
    consumer
        .subscribe(&refs)
        .map_err(PipelineError::kafka(format!("subscribing to {topics:?}")))?;
    tracing::info!(topics = ?topics, "subscribed");

    // the poll loop sleeps between polls; a record arriving wakes it (see
    // `poll_loop`)
    let poller = std::thread::current();
    consumer.set_nonempty_callback(move || poller.unpark());
    let result = poll_loop(&consumer, &rt, &status, &mut lifecycle, k);
    // graceful end: everything committed and delivered, offsets handed over
    tracing::info!("stopping: committing and delivering");
    let end = lock(&rt).commit_cycle(&consumer, CommitMode::Sync, &status);
    drop(consumer); // leaves the group (revoke callback commits again: nothing left)
    lifecycle.stop();
    if let Some(u) = &mut lock(&rt).usage {
        u.stop();
    }
    result.and(end)
}

/// Polls micro-batches without holding the runtime (rebalance callbacks take
/// it), cuts them into chunks for the decoders under one lock, and steps the
/// commit cycle: a batch is committed when the consumer's queue is
/// momentarily empty, when it is `max_commit_delay` old or holds
/// `batch_events` records (see [`PipelineConfig`]).
fn poll_loop(
    consumer: &BaseConsumer<Ctx>,
    rt: &Mutex<Runtime>,
    status: &Status,
    lifecycle: &mut LifecycleReader,
    k: &KafkaConfig,
) -> Result<(), PipelineError> {
    let mut last_log = Instant::now();
    let chunk_events = lock(rt).pipeline.effective_chunk_events();
    let mut batch = Vec::with_capacity(chunk_events);
    loop {
        if status.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        lifecycle.apply(rt)?;
        let (mut timeout, room) = {
            let g = lock(rt);
            (g.wait_for_input(), g.room())
        };
        let mut drained = false;
        let mut polled_at = None;
        while batch.len() < room.min(chunk_events) {
            match consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => batch.push(m),
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None if !timeout.is_zero() => {
                    // Waits without polling: librdkafka's poll counts in
                    // whole milliseconds, and rdkafka turns a shorter wait
                    // (the 200 µs of work in flight, the last fraction of
                    // a commit delay) into a busy loop of zero-time polls,
                    // which took most of a core at 20 000 records/s. The
                    // consumer queue's nonempty callback unparks this
                    // thread when a record (or a rebalance) arrives.
                    std::thread::park_timeout(timeout);
                    timeout = Duration::ZERO;
                    continue;
                }
                None => {
                    drained = true;
                    break;
                }
            }
            if polled_at.is_none() {
                polled_at = Some(Instant::now());
            }
            timeout = Duration::ZERO;
        }
        let mut g = lock(rt);
        let idle = batch.is_empty();
        for m in batch.drain(..) {
            g.process(&m)?;
        }
        g.submit()?;
        if let Some(t) = polled_at {
            g.read_busy += t.elapsed();
        }
        match g.commit_step(consumer, drained, status) {
            Ok(()) => {}
            Err(PipelineError::State(e)) if e.is_transient() => {
                // paused and unhealthy; retried after a pause
                drop(g);
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            Err(e) => return Err(e),
        }
        if idle && !g.due(drained) {
            // idle: the usage in the store catches up with what is live
            // (between checkpoints it is up to state.usage_checkpoint_interval
            // behind); a checkpoint in progress goes on without waiting, a
            // slice a commit
            let going_on = g.engine.checkpoint_in_progress();
            if g.engine.usage_behind()
                && !g.engine.commit_in_flight()
                && (going_on || g.last_commit.elapsed() >= IDLE_WAIT)
            {
                if !going_on {
                    g.engine.checkpoint_usage();
                }
                g.commit_idle(consumer, status)?;
            }
            let Runtime {
                reporter, engine, ..
            } = &mut *g;
            reporter.on_idle(engine);
        }
        if last_log.elapsed() >= k.log_interval.as_std() {
            last_log = Instant::now();
            g.log_progress(status);
        }
    }
}
