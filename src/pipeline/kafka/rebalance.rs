//! Partition assignment and revocation. The consumer context is thin: it
//! hands every rebalance event to the runtime (the single owner of the
//! partitions' state) and applies the assignment librdkafka asks for.
//!
//! Before partitions are revoked, everything is committed and delivered and
//! the group offsets are committed synchronously, so the new owner starts
//! where this instance stopped. Where an assigned partition starts is
//! [`super::start::decide`]'s decision.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::client::Role;
use super::runtime::{lock, Part, Runtime};
use super::start::{self, Known, LogLookup, Start};
use super::status::Status;
use crate::pipeline::PipelineError;
use crate::schema::Millis;
use crate::sink::kafka as ksink;
use crate::source::kafka::{self as ksrc, CommitMeta};

/// The consumer's context: statistics and rebalance events.
pub(super) struct Ctx {
    pub(super) rt: Arc<Mutex<Runtime>>,
    pub(super) status: Arc<Status>,
}

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        let mut lag = self.status.lag.lock().unwrap_or_else(|e| e.into_inner());
        for (t, topic) in &s.topics {
            for (p, part) in &topic.partitions {
                if *p >= 0 && part.consumer_lag >= 0 {
                    let name = ksrc::partition_name(t, *p);
                    crate::telemetry::ConsumerLag {
                        partition: &name,
                        lag: part.consumer_lag,
                    }
                    .emit();
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
                if let Err(e) = lock(&self.rt).on_assign(consumer, tpl) {
                    tracing::error!(error = %e, "preparing assigned partitions");
                    self.status.set_unhealthy(Some(format!("assignment: {e}")));
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
                lock(&self.rt).on_revoke(consumer, tpl, &self.status);
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
        let names = lock(&self.rt)
            .parts
            .values()
            .map(|p| p.name.clone())
            .collect();
        self.status.set_assigned(names);
    }
}

/// The log of one partition, for a first deployment's start position.
struct PartitionLog<'a> {
    consumer: &'a BaseConsumer<Ctx>,
    rt: &'a Runtime,
    topic: &'a str,
    partition: i32,
}

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);

impl LogLookup for PartitionLog<'_> {
    fn watermarks(&mut self) -> Result<(u64, u64), String> {
        let (lo, hi) = self
            .consumer
            .fetch_watermarks(self.topic, self.partition, LOOKUP_TIMEOUT)
            .map_err(|e| format!("watermarks of {}/{}: {e}", self.topic, self.partition))?;
        Ok((lo.max(0) as u64, hi.max(0) as u64))
    }

    fn newest_timestamp(&mut self, high: u64) -> Result<Option<Millis>, String> {
        if high == 0 {
            return Ok(None);
        }
        // read the newest record back with a reader of its own
        let c: BaseConsumer = self
            .rt
            .clients
            .create(
                "start-position reader",
                &self
                    .rt
                    .clients
                    .config(Role::Reader, Some("replayguard-start")),
            )
            .map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(self.topic, self.partition, Offset::Offset(high as i64 - 1))
            .map_err(|e| e.to_string())?;
        c.assign(&tpl).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                return Ok(m.timestamp().to_millis());
            }
        }
        // the last offset may be a transaction marker: no record to read
        Ok(None)
    }

    fn offset_for_time(&mut self, t: Millis) -> Result<Option<u64>, String> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(self.topic, self.partition, Offset::Offset(t))
            .map_err(|e| e.to_string())?;
        let got = self
            .consumer
            .offsets_for_times(tpl, LOOKUP_TIMEOUT)
            .map_err(|e| {
                format!(
                    "offsets for times of {}/{}: {e}",
                    self.topic, self.partition
                )
            })?;
        Ok(got
            .find_partition(self.topic, self.partition)
            .and_then(|el| match el.offset() {
                Offset::Offset(o) if o >= 0 => Some(o as u64),
                _ => None,
            }))
    }
}

impl Runtime {
    /// Decides where each assigned partition starts and writes it into `tpl`.
    pub(super) fn on_assign(
        &mut self,
        consumer: &BaseConsumer<Ctx>,
        tpl: &mut TopicPartitionList,
    ) -> Result<(), PipelineError> {
        let committed = consumer
            .committed_offsets(tpl.clone(), LOOKUP_TIMEOUT)
            .map_err(PipelineError::kafka("reading committed offsets"))?;
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
                committable: 0,
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
                let known = Known {
                    local: self.engine.positions(shard).get(&source).copied(),
                    group,
                    rebuild_from: meta.as_ref().and_then(|m| m.rebuild_from),
                    has_metadata: meta.is_some(),
                };
                let decided = start::decide(
                    known,
                    self.kafka.start,
                    self.warm_span,
                    &mut PartitionLog {
                        consumer,
                        rt: self,
                        topic: &topic,
                        partition: p,
                    },
                    wall_clock_ms(),
                )
                .map_err(|reason| PipelineError::StartPosition {
                    partition: name.clone(),
                    reason,
                })?;
                self.begin(shard, &name, known, decided, meta.as_ref())?
            };
            if let Offset::Offset(o) = start {
                part.next = o as u64;
                part.committable = o as u64;
            }
            // usage behind the committed position: the records in between
            // are read again for usage (the group still gets the committed one)
            let start = match (start, part.shard) {
                (Offset::Offset(o), Some(stream)) => {
                    match self.engine.read_from(stream).get(&source) {
                        Some(&from) if from < o as u64 => {
                            tracing::info!(partition = %name, from, committed = o,
                                "reading again from the last usage checkpoint, for usage only");
                            part.next = from;
                            Offset::Offset(from as i64)
                        }
                        _ => start,
                    }
                }
                _ => start,
            };
            tpl.set_partition_offset(&topic, p, start)
                .map_err(PipelineError::kafka(format!("setting the start of {name}")))?;
            self.parts.insert(topic, p, part);
        }
        Ok(())
    }

    /// Applies a start decision to a shard; returns the offset to read from.
    fn begin(
        &mut self,
        shard: u32,
        name: &str,
        known: Known,
        decided: Start,
        meta: Option<&CommitMeta>,
    ) -> Result<Offset, PipelineError> {
        Ok(match decided {
            Start::Resume { offset } => {
                if known.local.is_some() {
                    tracing::info!(partition = %name, offset, "resuming from the local state");
                } else {
                    tracing::info!(partition = %name, offset, start = %self.kafka.start, "new partition: reporting from the start position");
                }
                Offset::Offset(offset as i64)
            }
            Start::Rebuild { from, live_from } => {
                tracing::info!(
                    partition = %name,
                    local = ?known.local,
                    committed = live_from,
                    rebuild_from = from,
                    metadata = known.has_metadata,
                    "rebuilding the partition's state before reporting from the committed offset"
                );
                self.engine.reset_shard(shard, live_from)?;
                self.hand_usage_over(shard, name)?;
                // the previous owner may have produced alerts past its last
                // group commit: they are on the topic after these positions
                if let Some(m) = meta.filter(|m| !m.alerts.is_empty()) {
                    let ids = ksink::alert_ids_since(
                        &self
                            .clients
                            .config(Role::Reader, Some("replayguard-alert-reader")),
                        self.alerts.topic(),
                        &m.alerts,
                    )?;
                    tracing::info!(partition = %name, on_topic = ids.len(), "alerts already produced past the hand-over point");
                    self.alerts.skip_ids(ids);
                }
                Offset::Offset(from as i64)
            }
            Start::Warm {
                warm_from,
                live_from,
            } => {
                tracing::info!(
                    partition = %name,
                    warm_from,
                    live_from,
                    start = %self.kafka.start,
                    "first deployment: warming the replay window (no alerts) before reporting"
                );
                self.engine.reset_shard(shard, live_from)?;
                // (a replacement for an instance whose disk is lost finds its usage)
                self.hand_usage_over(shard, name)?;
                Offset::Offset(warm_from as i64)
            }
        })
    }

    /// A partition whose state is rebuilt gets its keys' usage from the
    /// usage topic, as the instance that had it last published it (before
    /// handing it over, or at its last checkpoint): the rebuild then does
    /// not count again what that usage counts.
    fn hand_usage_over(&mut self, shard: u32, name: &str) -> Result<(), PipelineError> {
        let Some(u) = &self.usage else {
            return Ok(());
        };
        let t = Instant::now();
        if !u.catch_up(Duration::from_secs(15)) {
            tracing::warn!(partition = %name, "the usage topic was not read to its end within 15 s: the partition's usage starts from what the table has");
        }
        let usage = if u.table.is_empty() {
            Vec::new()
        } else {
            u.table.of_partition(name)
        };
        let keys = usage.len();
        self.engine.seed_usage(shard, usage)?;
        crate::telemetry::UsageHandedOver {
            partition: name,
            keys,
            elapsed: t.elapsed(),
        }
        .emit();
        Ok(())
    }

    pub(super) fn on_revoke(
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
}

/// The wall clock, only as the last resort of a first deployment's start
/// position (when the newest record's timestamp cannot be read); no rule
/// ever sees it.
fn wall_clock_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}
