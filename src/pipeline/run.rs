//! `replayguard run`: a consumer group over the access-event topics, the
//! detector, and alerts to a topic.
//!
//! # Order of operations
//! Records are polled one at a time (librdkafka prefetches in the
//! background) and go through the [`Engine`]. Every `commit_interval` (or
//! `batch_records`):
//! 1. the engine commits state, input offsets and the batch's alerts (outbox)
//!    in one RocksDB write, after the batch's dead letters are acknowledged;
//! 2. the outbox is produced to the alert topic (idempotent producer,
//!    acks=all) and removed once acknowledged;
//! 3. the group offsets are committed to Kafka, with metadata saying from
//!    which offset the partition's live state can be rebuilt.
//!
//! # Where a partition starts
//! The truth is in RocksDB: a partition whose local state covers at least
//! the group's committed offset resumes from its own offset (so resetting the
//! group backwards re-reports nothing). A partition new to this instance, or
//! whose local state is behind the group (another instance went further),
//! is rebuilt: its state is thrown away and its records are read again from
//! the commit metadata's `from=` offset with alerts and dead letters
//! suppressed up to the committed offset, so a replay whose first sighting
//! another instance saw is still caught.
//!
//! # Rebalances
//! Before partitions are revoked, everything is committed and delivered and
//! the group offsets are committed synchronously; the new owner starts where
//! this instance stopped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::BaseRecord;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::engine::Engine;
use super::PipelineError;
use crate::config::Config;
use crate::decode::Decoder;
use crate::sink::kafka::{self as ksink, KafkaAlertSink, KafkaDeadLetterSink};
use crate::sink::{DeadLetter, DeadLetterSink};
use crate::source::kafka::{self as ksrc, CommitMeta, LifecycleMsg};
use crate::source::{MessageKey, Payload};
use crate::state::{RocksStore, StateError, StateStore};

/// What `run` shares with the HTTP server and the signal handler.
#[derive(Default)]
pub struct Status {
    /// Set to stop: finish the batch, commit, deliver, leave the group.
    pub stop: AtomicBool,
    /// State restored, lifecycle read, partitions assigned.
    pub ready: AtomicBool,
    /// Why the detector is not healthy (e.g. the state store is full), if it is not.
    pub unhealthy: Mutex<Option<String>>,
    /// Consumer lag per partition, from librdkafka's statistics.
    pub lag: Mutex<HashMap<String, i64>>,
    /// Partitions assigned to this instance ("topic/partition").
    pub assigned: Mutex<Vec<String>>,
    pub events: AtomicU64,
    pub alerts: AtomicU64,
    /// Live reports, once the pipeline runs.
    pub reports: std::sync::OnceLock<Arc<dyn crate::report::ReportSource>>,
}

impl Status {
    pub fn healthy(&self) -> Result<(), String> {
        match &*self.unhealthy.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    fn set_unhealthy(&self, why: Option<String>) {
        *self.unhealthy.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }
}

/// The assigned partitions, by topic then partition (looked up without allocating).
#[derive(Default)]
struct Parts(HashMap<String, HashMap<i32, Part>>);

impl Parts {
    fn get_mut(&mut self, topic: &str, p: i32) -> Option<&mut Part> {
        self.0.get_mut(topic)?.get_mut(&p)
    }
    fn insert(&mut self, topic: String, p: i32, part: Part) {
        self.0.entry(topic).or_default().insert(p, part);
    }
    fn remove(&mut self, topic: &str, p: i32) -> Option<Part> {
        self.0.get_mut(topic)?.remove(&p)
    }
    fn iter_mut(&mut self) -> impl Iterator<Item = (&str, i32, &mut Part)> {
        self.0
            .iter_mut()
            .flat_map(|(t, m)| m.iter_mut().map(move |(p, part)| (t.as_str(), *p, part)))
    }
    fn values(&self) -> impl Iterator<Item = &Part> {
        self.0.values().flat_map(|m| m.values())
    }
}

/// One assigned partition.
struct Part {
    shard: Option<u32>,
    source: u32,
    name: String,
    /// Next offset to read.
    next: u64,
    /// Offset last committed to the group.
    group_committed: Option<u64>,
    processed: u64,
    rate_mark: (Instant, u64),
}

/// Forwards input records to the repartition topic, keyed by key_id.
struct Forwarder {
    producer: Arc<ksink::Producer_>,
    topic: String,
}

/// Everything the poll loop and the rebalance callbacks share.
struct Runtime {
    engine: Engine<RocksStore>,
    alerts: KafkaAlertSink,
    dlq: KafkaDeadLetterSink,
    decoder: Decoder,
    parts: Parts,
    /// Topics whose records are forwarded (repartition mode), not detected.
    forward_topics: Vec<String>,
    forwarder: Option<Forwarder>,
    records_since_commit: usize,
    last_commit: Instant,
    /// Partitions paused because the store refused a commit.
    paused: bool,
    /// (key absent, key mismatch, rebuilt) already reported as metrics.
    reported: (u64, u64, u64),
    /// Alert-topic positions last written to the store.
    persisted_positions: std::collections::BTreeMap<i32, i64>,
    brokers: String,
    consumer_props: std::collections::BTreeMap<String, String>,
    last_group_commit: Instant,
}

struct Ctx {
    rt: Arc<Mutex<Runtime>>,
    status: Arc<Status>,
}

fn lock(rt: &Mutex<Runtime>) -> MutexGuard<'_, Runtime> {
    rt.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        let mut lag = self.status.lag.lock().unwrap_or_else(|e| e.into_inner());
        for (t, topic) in &s.topics {
            for (p, part) in &topic.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    let name = ksrc::partition_name(t, *p);
                    metrics::gauge!("replayguard_consumer_lag", "partition" => name.clone())
                        .set(part.consumer_lag as f64);
                    lag.insert(name, part.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                {
                    let mut rt = lock(&self.rt);
                    if let Err(e) = rt.on_assign(consumer, tpl) {
                        tracing::error!(error = %e, "preparing assigned partitions");
                        self.status.set_unhealthy(Some(format!("assignment: {e}")));
                    }
                }
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "assign failed");
                }
                self.publish_assignment();
                self.status.ready.store(true, Ordering::Relaxed);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                {
                    let mut rt = lock(&self.rt);
                    rt.on_revoke(consumer, tpl, &self.status);
                }
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "unassign failed");
                }
                self.publish_assignment();
            }
            e => {
                tracing::error!(error = ?e, "rebalance error");
                if !cooperative {
                    let _ = consumer.unassign();
                }
            }
        }
    }
}

impl Ctx {
    fn publish_assignment(&self) {
        let mut names: Vec<String> = lock(&self.rt)
            .parts
            .values()
            .map(|p| p.name.clone())
            .collect();
        names.sort();
        *self
            .status
            .assigned
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = names;
    }
}

impl Runtime {
    fn is_forwarded(&self, topic: &str) -> bool {
        self.forward_topics.iter().any(|t| t == topic)
    }

    /// Decides where each assigned partition starts (see the module docs) and
    /// writes it into `tpl`.
    fn on_assign(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        tpl: &mut TopicPartitionList,
    ) -> Result<(), PipelineError> {
        let committed = consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(15))
            .map_err(|e| PipelineError::Input(format!("reading committed offsets: {e}")))?;
        for el in committed.elements() {
            let (topic, p) = (el.topic().to_string(), el.partition());
            let name = ksrc::partition_name(&topic, p);
            let source = self.engine.source_id(&name);
            let group = match el.offset() {
                Offset::Offset(o) if o >= 0 => Some(o as u64),
                _ => None,
            };
            let meta = CommitMeta::decode(el.metadata());
            let mut part = Part {
                shard: None,
                source,
                name: name.clone(),
                next: 0,
                group_committed: group,
                processed: 0,
                rate_mark: (Instant::now(), 0),
            };
            let start = if self.is_forwarded(&topic) {
                // no state: the group offset is the truth
                group.map_or(Offset::Beginning, |g| Offset::Offset(g as i64))
            } else {
                let shard = self.engine.open_shard(&name)?;
                part.shard = Some(shard);
                let local = self.engine.positions(shard).get(&source).copied();
                match (local, group) {
                    (Some(l), g) if g.is_none_or(|g| l >= g) => {
                        tracing::info!(partition = %name, offset = l, "resuming from the local state");
                        Offset::Offset(l as i64)
                    }
                    (_, None) => {
                        tracing::info!(partition = %name, "new partition: reading from the beginning");
                        Offset::Beginning
                    }
                    (local, Some(g)) => {
                        // rebuild: another instance went further than this one's state
                        let from = match &meta {
                            Some(m) => m.rebuild_from.unwrap_or(g),
                            None => 0,
                        };
                        tracing::info!(
                            partition = %name,
                            local = ?local,
                            committed = g,
                            rebuild_from = from,
                            "rebuilding the partition's state before reporting from the committed offset"
                        );
                        self.engine.reset_shard(shard, g)?;
                        // the previous owner may have produced alerts past its
                        // last group commit: they are on the topic after these positions
                        if let Some(m) = &meta {
                            if !m.alerts.is_empty() {
                                let ids = ksink::alert_ids_since(
                                    &self.brokers,
                                    &self.consumer_props,
                                    self.alerts.topic(),
                                    &m.alerts,
                                    Duration::from_millis(1500),
                                )?;
                                tracing::info!(partition = %name, on_topic = ids.len(), "alerts already produced past the hand-over point");
                                self.alerts.skip_ids(ids);
                            }
                        }
                        Offset::Offset(from.min(g) as i64)
                    }
                }
            };
            if let Offset::Offset(o) = start {
                part.next = o as u64;
            }
            tpl.set_partition_offset(&topic, p, start)
                .map_err(|e| PipelineError::Input(format!("setting the start of {name}: {e}")))?;
            self.parts.insert(topic, p, part);
        }
        Ok(())
    }

    fn on_revoke(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        tpl: &TopicPartitionList,
        status: &Status,
    ) {
        if let Err(e) = self.commit_cycle(consumer, CommitMode::Sync, status) {
            tracing::error!(error = %e, "committing before partitions were revoked");
        }
        for el in tpl.elements() {
            if let Some(part) = self.parts.remove(el.topic(), el.partition()) {
                tracing::info!(partition = %part.name, offset = part.next, "partition revoked");
                if let Some(shard) = part.shard {
                    self.engine.close_shard(shard);
                }
            }
        }
    }

    /// Handles one polled record.
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
        self.records_since_commit += 1;
        let rec = ksrc::record(m, part.source, self.decoder.max_event_bytes);
        match part.shard {
            Some(shard) => self.engine.process(shard, rec, &mut self.dlq),
            None => {
                let fwd = self
                    .forwarder
                    .as_ref()
                    .expect("forwarding partition without forwarder");
                let decoded = match rec.payload {
                    Payload::Data(b) => self.decoder.access(b),
                    Payload::Oversize { len, .. } => Err(crate::decode::DecodeError::TooLarge {
                        len,
                        limit: self.decoder.max_event_bytes,
                    }),
                };
                match decoded {
                    Ok(ev) => {
                        let mut r = BaseRecord::<[u8], [u8], ()>::to(&fwd.topic)
                            .key(ev.key_id.as_bytes())
                            .payload(m.payload().unwrap_or(&[]));
                        loop {
                            match fwd.producer.send(r) {
                                Ok(()) => break,
                                Err((
                                    rdkafka::error::KafkaError::MessageProduction(
                                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                                    ),
                                    back,
                                )) => {
                                    r = back;
                                    fwd.producer.poll(Duration::from_millis(10));
                                }
                                Err((e, _)) => {
                                    return Err(PipelineError::Sink(
                                        crate::sink::SinkError::Delivery(format!(
                                            "forwarding to {}: {e}",
                                            fwd.topic
                                        )),
                                    ))
                                }
                            }
                        }
                        Ok(())
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        crate::telemetry::DeadLettered {
                            source: &part.name,
                            offset,
                            error_kind: e.kind(),
                            error: &msg,
                        }
                        .emit();
                        self.engine.count_malformed();
                        self.dlq
                            .send(&DeadLetter {
                                source: &part.name,
                                pos: rec.pos,
                                error: &e,
                                payload: rec.payload,
                                key: rec.key,
                            })
                            .map_err(PipelineError::from)
                    }
                }
            }
        }
    }

    fn due(&self, cfg: &crate::config::KafkaSection) -> bool {
        let work = self.records_since_commit > 0
            || self.engine.undelivered() > 0
            || self.engine.commit_pending()
            || self.engine.outbox_delete_pending();
        let timely = self.records_since_commit >= cfg.batch_records
            || self.last_commit.elapsed() >= cfg.commit_interval.as_std();
        // group offsets left behind by the last commits go out once idle, too
        let group_behind = self.last_group_commit.elapsed() >= GROUP_COMMIT_INTERVAL
            && self
                .parts
                .values()
                .any(|p| p.group_committed != Some(p.next) && p.next > 0);
        (work && timely) || group_behind
    }

    /// State + offsets + outbox to RocksDB, alerts to Kafka, offsets to the group.
    fn commit_cycle(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        mode: CommitMode,
        status: &Status,
    ) -> Result<(), PipelineError> {
        self.last_commit = Instant::now();
        if let Some(f) = &self.forwarder {
            ksink::wait_acked(&f.producer, Duration::from_secs(65)).map_err(|e| {
                PipelineError::Sink(crate::sink::SinkError::Delivery(format!("forwarding: {e}")))
            })?;
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
            Err(e @ PipelineError::State(StateError::NoSpace(_) | StateError::Io(_))) => {
                if !self.paused {
                    self.paused = true;
                    if let Ok(a) = consumer.assignment() {
                        let _ = consumer.pause(&a);
                    }
                    tracing::error!(error = %e, "the state store refused a commit: consuming paused until it accepts again");
                }
                status.set_unhealthy(Some(e.to_string()));
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        self.records_since_commit = 0;
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
        let n = self.engine.deliver(&mut self.alerts)?;
        status.alerts.fetch_add(n as u64, Ordering::Relaxed);
        // group offsets: lag monitoring and the hand-over point for other
        // instances. At most once per GROUP_COMMIT_INTERVAL while running (each
        // is a broker round trip sharing the connection with fetches); always
        // on hand-over and shutdown (synchronous mode).
        if matches!(mode, CommitMode::Async)
            && self.last_group_commit.elapsed() < GROUP_COMMIT_INTERVAL
        {
            return Ok(());
        }
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

/// Reports from the live runtime, for the HTTP server.
struct LiveReports {
    rt: Arc<Mutex<Runtime>>,
    cfg: crate::report::ReportConfig,
}

impl crate::report::ReportSource for LiveReports {
    fn rotations(&self) -> Vec<crate::report::RotationReport> {
        lock(&self.rt).engine.rotation_reports(&self.cfg)
    }

    fn usage(&self, key_id: &str) -> Option<crate::report::UsageView> {
        let g = lock(&self.rt);
        let u = g.engine.usage_of(key_id)?;
        Some(crate::report::UsageView::new(
            key_id,
            u,
            g.engine.now().unwrap_or(u.last_seen),
        ))
    }
}

/// Produces the rotation reports to the reports topic (fire and forget:
/// they are snapshots, the next one supersedes them).
fn publish_reports(
    p: &rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    reports: &[crate::report::RotationReport],
) {
    for r in reports {
        let json = serde_json::to_vec(r).expect("report serializes");
        let rec = BaseRecord::<str, [u8], ()>::to(topic)
            .key(&r.key_id)
            .payload(&json);
        if let Err((e, _)) = p.send(rec) {
            tracing::warn!(error = %e, topic, "producing a rotation report");
        }
    }
    if !reports.is_empty() {
        metrics::counter!("replayguard_reports_total").increment(reports.len() as u64);
    }
}

/// Name of the stored alert-topic positions.
const ALERT_POSITIONS: &str = "alert_positions";

/// Group offsets are committed at most this often while running.
const GROUP_COMMIT_INTERVAL: Duration = Duration::from_millis(500);

/// Records polled before they are processed under one lock.
const MICRO_BATCH: usize = 512;

/// What `run` was asked to do.
pub struct RunArgs {
    pub config: Config,
}

fn admin_config(cfg: &crate::config::KafkaSection) -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.properties {
        c.set(k, v);
    }
    c
}

/// Properties of the clients that read the alert topic back.
fn reader_props(k: &crate::config::KafkaSection) -> std::collections::BTreeMap<String, String> {
    k.properties
        .iter()
        .chain(&k.consumer_properties)
        .map(|(a, b)| (a.clone(), b.clone()))
        .collect()
}

/// A Kafka client that cannot be created was given properties librdkafka
/// refuses: a configuration error (exit 2), not a runtime failure.
fn client_error(what: &str, e: rdkafka::error::KafkaError) -> PipelineError {
    use rdkafka::error::KafkaError;
    match e {
        KafkaError::ClientCreation(_) | KafkaError::ClientConfig(..) => {
            PipelineError::Config(crate::config::ConfigError::Invalid(format!(
                "{what}: {e} (check kafka.properties, kafka.consumer_properties and \
                 kafka.producer_properties)"
            )))
        }
        e => PipelineError::Input(format!("{what}: {e}")),
    }
}

/// Creates the topics replayguard writes to, when they are missing.
fn create_topics(
    cfg: &crate::config::KafkaSection,
    report_topic: &str,
) -> Result<(), PipelineError> {
    let admin: AdminClient<DefaultClientContext> = admin_config(cfg)
        .create()
        .map_err(|e| client_error("Kafka admin client", e))?;
    let mut names = vec![cfg.alert_topic.clone(), cfg.dead_letter_topic.clone()];
    if !report_topic.is_empty() {
        names.push(report_topic.to_string());
    }
    if cfg.repartition {
        names.push(cfg.repartition_topic());
    }
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(15))
        .map_err(|e| PipelineError::Input(format!("Kafka metadata from {}: {e}", cfg.brokers)))?;
    let existing: Vec<&str> = md.topics().iter().map(|t| t.name()).collect();
    let missing: Vec<NewTopic<'_>> = names
        .iter()
        .filter(|n| !existing.contains(&n.as_str()))
        .map(|n| NewTopic::new(n, cfg.topic_partitions, TopicReplication::Fixed(-1)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PipelineError::Input(e.to_string()))?;
    let res = rt
        .block_on(admin.create_topics(missing.iter(), &AdminOptions::new()))
        .map_err(|e| PipelineError::Input(format!("creating topics: {e}")))?;
    for r in res {
        match r {
            Ok(t) => tracing::info!(topic = %t, "created topic"),
            Err((t, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %t, "topic exists")
            }
            Err((t, e)) => tracing::warn!(topic = %t, error = %e, "could not create topic"),
        }
    }
    Ok(())
}

/// Applies what the lifecycle reader sent; returns whether it has caught up.
fn apply_lifecycle(
    rx: &Receiver<LifecycleMsg>,
    rt: &Mutex<Runtime>,
    topic: &str,
    caught_up: &mut bool,
) -> Result<(), PipelineError> {
    let mut rt_guard: Option<MutexGuard<'_, Runtime>> = None;
    while let Ok(msg) = rx.try_recv() {
        let rt = rt_guard.get_or_insert_with(|| lock(rt));
        match msg {
            LifecycleMsg::Record {
                partition,
                offset,
                key,
                bytes,
            } => {
                let decoder = rt.decoder;
                match decoder.lifecycle(&bytes) {
                    Ok(ev) => {
                        if rt.engine.add_lifecycle(ev) {
                            metrics::counter!("replayguard_lifecycle_updates_total").increment(1);
                        }
                    }
                    Err(e) => {
                        let name = ksrc::partition_name(topic, partition);
                        let msg = e.to_string();
                        crate::telemetry::DeadLettered {
                            source: &name,
                            offset: offset as u64,
                            error_kind: e.kind(),
                            error: &msg,
                        }
                        .emit();
                        rt.engine.count_malformed();
                        let src = rt.engine.source_id(&name);
                        let dl = DeadLetter {
                            source: &name,
                            pos: crate::detect::Position::new(src, offset as u64),
                            error: &e,
                            payload: Payload::Data(&bytes),
                            key: key
                                .as_deref()
                                .map_or(MessageKey::Absent, MessageKey::Present),
                        };
                        rt.dlq.send(&dl)?;
                    }
                }
            }
            LifecycleMsg::CaughtUp => *caught_up = true,
            LifecycleMsg::Error(e) => tracing::warn!(error = %e, "lifecycle reader"),
        }
    }
    Ok(())
}

/// Runs the detector until `status.stop` is set or an error stops it.
pub fn run(args: RunArgs, status: Arc<Status>) -> Result<(), PipelineError> {
    let config = args.config;
    let k = &config.kafka;
    let dir = config
        .state
        .dir
        .clone()
        .unwrap_or_else(|| std::path::PathBuf::from("replayguard-state"));
    let store = Arc::new(RocksStore::open(&dir, &config.state.rocks())?);
    let mut engine = Engine::open(store, &config)?;
    tracing::info!(state_dir = %dir.display(), brokers = %k.brokers, group = %k.group, "starting");
    if k.create_topics {
        create_topics(k, &config.report.topic)?;
    }
    let producer = |what: &str| {
        ksink::producer(&k.brokers, &k.properties, &k.producer_properties)
            .map_err(|e| client_error(&format!("{what} producer"), e))
    };
    let mut alerts = KafkaAlertSink::new(producer("alert")?, &k.alert_topic)
        .with_reader(&k.brokers, reader_props(k));
    let dlq = KafkaDeadLetterSink::new(producer("dead-letter")?, &k.dead_letter_topic);
    // alerts a crash left in the outbox: those already on the alert topic
    // (produced, not yet removed from the outbox) are not produced again
    let left = engine.undelivered();
    crate::telemetry::OutboxRedelivery { count: left }.emit();
    if left > 0 {
        let from: std::collections::BTreeMap<i32, i64> = engine
            .store()
            .value(ALERT_POSITIONS)?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let props: std::collections::BTreeMap<String, String> = k
            .properties
            .iter()
            .chain(&k.consumer_properties)
            .map(|(a, b)| (a.clone(), b.clone()))
            .collect();
        let ids = ksink::alert_ids_since(
            &k.brokers,
            &props,
            &k.alert_topic,
            &from,
            Duration::from_millis(1500),
        )?;
        tracing::info!(
            on_topic = ids.len(),
            "read the alert topic since the last commit"
        );
        alerts.skip_ids(ids);
    }
    engine.deliver(&mut alerts)?;
    if alerts.skipped > 0 {
        tracing::info!(
            skipped = alerts.skipped,
            "outbox alerts already on the alert topic were not produced again"
        );
    }

    let forwarder = if k.repartition {
        Some(Forwarder {
            producer: producer("repartition")?,
            topic: k.repartition_topic(),
        })
    } else {
        None
    };
    let rt = Arc::new(Mutex::new(Runtime {
        decoder: engine.decoder(),
        engine,
        alerts,
        dlq,
        parts: Parts::default(),
        forward_topics: if k.repartition {
            k.input_topics.clone()
        } else {
            Vec::new()
        },
        forwarder,
        records_since_commit: 0,
        last_commit: Instant::now(),
        paused: false,
        reported: (0, 0, 0),
        last_group_commit: Instant::now(),
        persisted_positions: Default::default(),
        brokers: k.brokers.clone(),
        consumer_props: reader_props(k),
    }));

    let report_cfg = config.report.rules(config.usage.top_clients);
    let _ = status.reports.set(Arc::new(LiveReports {
        rt: rt.clone(),
        cfg: report_cfg,
    }));
    let report_producer: Option<
        rdkafka::producer::ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    > = if config.report.topic.is_empty() {
        None
    } else {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &k.brokers)
            .set("linger.ms", "50");
        for (key, v) in k.properties.iter().chain(&k.producer_properties) {
            c.set(key, v);
        }
        Some(c.create().map_err(|e| client_error("report producer", e))?)
    };
    let mut last_report = Instant::now();

    // the lifecycle table: read whole before consuming events
    let (tx, rx) = mpsc::channel();
    let lc_stop = Arc::new(AtomicBool::new(false));
    let mut lifecycle_caught_up = k.lifecycle_topic.is_empty();
    let lc_thread = if k.lifecycle_topic.is_empty() {
        None
    } else {
        let mut c = rdkafka::ClientConfig::new();
        c.set("bootstrap.servers", &k.brokers)
            .set("group.id", format!("{}-lifecycle", k.group))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        for (key, v) in k.properties.iter().chain(&k.consumer_properties) {
            c.set(key, v);
        }
        let c: BaseConsumer = c
            .create()
            .map_err(|e| client_error("lifecycle consumer", e))?;
        let (topic, quiet, stop) = (
            k.lifecycle_topic.clone(),
            k.lifecycle_quiet.as_std(),
            lc_stop.clone(),
        );
        Some(
            std::thread::Builder::new()
                .name("lifecycle".into())
                .spawn(move || ksrc::read_lifecycle(c, topic, quiet, tx, stop))
                .map_err(|e| PipelineError::Input(e.to_string()))?,
        )
    };
    while !lifecycle_caught_up && !status.stop.load(Ordering::Relaxed) {
        apply_lifecycle(&rx, &rt, &k.lifecycle_topic, &mut lifecycle_caught_up)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    {
        let mut g = lock(&rt);
        let Runtime { engine, dlq, .. } = &mut *g;
        engine.commit(dlq)?;
        tracing::info!(keys = engine.lifecycle().len(), "lifecycle table loaded");
    }

    let mut cc = ksrc::consumer_config(&k.brokers, &k.group, &k.properties, &k.consumer_properties);
    cc.set(
        "statistics.interval.ms",
        (k.log_interval.0.max(1000)).to_string(),
    );
    let consumer: BaseConsumer<Ctx> = cc
        .create_with_context(Ctx {
            rt: rt.clone(),
            status: status.clone(),
        })
        .map_err(|e| client_error("Kafka consumer", e))?;
    let mut topics: Vec<String> = k.input_topics.clone();
    if k.repartition {
        topics.push(k.repartition_topic());
    }
    let refs: Vec<&str> = topics.iter().map(|s| s.as_str()).collect();
    consumer
        .subscribe(&refs)
        .map_err(|e| PipelineError::Input(format!("subscribing to {topics:?}: {e}")))?;
    tracing::info!(topics = ?topics, "subscribed");

    let mut last_log = Instant::now();
    let mut batch = Vec::with_capacity(MICRO_BATCH);
    let mut last_commit = Instant::now();
    let result = loop {
        if status.stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        if let Err(e) = apply_lifecycle(&rx, &rt, &k.lifecycle_topic, &mut lifecycle_caught_up) {
            break Err(e);
        }
        // poll a micro-batch without holding the runtime (rebalance callbacks
        // take it), then process it under one lock
        let wait = k
            .commit_interval
            .as_std()
            .saturating_sub(last_commit.elapsed())
            .max(Duration::from_millis(1));
        let mut timeout = wait;
        while batch.len() < MICRO_BATCH {
            match consumer.poll(timeout) {
                Some(Ok(m)) => batch.push(m),
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => break,
            }
            timeout = Duration::ZERO;
        }
        let mut g = lock(&rt);
        let mut failed = None;
        for m in batch.drain(..) {
            if let Err(e) = g.process(&m) {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        if g.due(k) {
            last_commit = Instant::now();
            match g.commit_cycle(&consumer, CommitMode::Async, &status) {
                Ok(()) => {}
                Err(PipelineError::State(StateError::NoSpace(_) | StateError::Io(_))) => {
                    // paused and unhealthy; retried at the next interval
                    drop(g);
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
                Err(e) => break Err(e),
            }
        }
        if last_log.elapsed() >= k.log_interval.as_std() {
            last_log = Instant::now();
            g.log_progress(&status);
        }
        if let Some(p) = &report_producer {
            if last_report.elapsed() >= config.report.interval.as_std() {
                last_report = Instant::now();
                let reports = g.engine.rotation_reports(&report_cfg);
                drop(g);
                publish_reports(p, &config.report.topic, &reports);
            }
        }
    };
    drop(batch);
    // graceful end: everything committed and delivered, offsets handed over
    tracing::info!("stopping: committing and delivering");
    let end = lock(&rt).commit_cycle(&consumer, CommitMode::Sync, &status);
    drop(consumer); // leaves the group (revoke callback commits again: nothing left)
    lc_stop.store(true, Ordering::Relaxed);
    if let Some(t) = lc_thread {
        let _ = t.join();
    }
    result.and(end)
}
