//! Kafka producers: alerts (idempotent, acks=all, key = key_id, headers
//! `kind` and `alert_id`) and dead letters (original bytes, headers naming
//! where they came from and why they were refused).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use super::{AlertSink, DeadLetter, DeadLetterSink, OutboxEntry, SinkError};
use crate::source::{MessageKey, Payload};

/// Counts delivery failures and remembers the last offsets written.
#[derive(Default)]
pub struct DeliveryTracker {
    inner: Mutex<Tracked>,
}

#[derive(Default)]
struct Tracked {
    failed: u64,
    last_error: Option<String>,
    /// (topic, partition) -> highest offset acknowledged
    written: BTreeMap<(String, i32), i64>,
    /// acknowledgements without an offset (see [`KafkaAlertSink`])
    offsetless: u64,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(m) => {
                use rdkafka::message::Headers;
                let id = || {
                    m.headers()
                        .and_then(|h| h.iter().find(|h| h.key == "alert_id"))
                        .and_then(|h| h.value)
                        .map(String::from_utf8_lossy)
                };
                if m.offset() < 0 {
                    // acknowledged (as a duplicate of an earlier send, after
                    // a retry across a broker restart) without saying where
                    // it is: whether its batch is really on the topic gets
                    // checked. librdkafka numbers a batch's messages from its
                    // base offset, so only the first one shows it.
                    t.offsetless += 1;
                }
                if tracing::enabled!(target: "replayguard::delivery", tracing::Level::TRACE) {
                    let id = id();
                    tracing::trace!(
                        target: "replayguard::delivery",
                        topic = m.topic(),
                        partition = m.partition(),
                        offset = m.offset(),
                        alert_id = ?id,
                        "acknowledged"
                    );
                }
                let e = t
                    .written
                    .entry((m.topic().to_string(), m.partition()))
                    .or_insert(-1);
                *e = (*e).max(m.offset());
            }
            Err((e, _)) => {
                t.failed += 1;
                t.last_error = Some(e.to_string());
            }
        }
    }
}

impl DeliveryTracker {
    /// Deliveries that failed since the last call, with the last error.
    pub(crate) fn take_failures(&self) -> Option<(u64, String)> {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if t.failed == 0 {
            return None;
        }
        let n = std::mem::take(&mut t.failed);
        Some((n, t.last_error.take().unwrap_or_default()))
    }

    fn take_offsetless(&self) -> u64 {
        std::mem::take(
            &mut self
                .inner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .offsetless,
        )
    }

    /// Highest acknowledged offset per (topic, partition).
    pub fn written(&self) -> BTreeMap<(String, i32), i64> {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .written
            .clone()
    }
}

/// A producer whose delivery reports are tracked. `run` makes one for
/// alerts and one for dead letters (so that the delivery reports of one
/// never count for the other), with its client factory.
pub type Producer_ = BaseProducer<DeliveryTracker>;

/// Sends one record, waiting for room in the local queue when it is full.
pub fn send(p: &Producer_, mut rec: BaseRecord<'_, [u8], [u8], ()>) -> Result<(), SinkError> {
    loop {
        match p.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                p.poll(Duration::from_millis(10));
            }
            Err((e, _)) => return Err(SinkError::Delivery(e.to_string())),
        }
    }
}

/// Waits until everything sent is acknowledged (serving delivery reports
/// every millisecond: `BaseProducer::flush` sleeps in 100 ms steps, which
/// would put 100 ms on every alert).
pub fn wait_acked<C: ProducerContext>(
    p: &BaseProducer<C>,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        p.poll(Duration::ZERO);
        if p.in_flight_count() == 0 {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        p.poll(Duration::from_millis(1));
    }
}

/// Waits until everything sent is acknowledged; fails if anything was not.
fn flush(p: &Producer_, timeout: Duration, what: &str) -> Result<(), SinkError> {
    wait_acked(p, timeout).map_err(|e| SinkError::Delivery(format!("{what}: {e}")))?;
    if let Some((n, e)) = p.context().take_failures() {
        return Err(SinkError::Delivery(format!(
            "{what}: {n} not delivered ({e})"
        )));
    }
    Ok(())
}

/// "topic/partition" -> ("topic", "partition").
fn split_source(s: &str) -> (&str, &str) {
    s.rsplit_once('/').unwrap_or((s, ""))
}

/// Alerts to the alert topic.
pub struct KafkaAlertSink {
    producer: Arc<Producer_>,
    topic: String,
    timeout: Duration,
    /// Alert ids known to be on the topic already (delivered before a crash
    /// or by the previous owner of a partition): acknowledged, not produced.
    skip: std::collections::HashSet<String>,
    skip_until: std::time::Instant,
    /// Alerts not produced again because they were already on the topic.
    pub skipped: u64,
    /// How to read the alert topic back.
    reader: Option<ClientConfig>,
    /// Alerts produced again because an offset-less acknowledgement turned
    /// out not to be on the topic.
    pub resent: u64,
    /// The batch sent and not yet known to be delivered.
    in_flight: Option<InFlight>,
    /// Where the alert topic stood before the oldest batch not yet known to
    /// be delivered was sent (kept when a delivery fails, until the batch
    /// goes out again and is acknowledged whole).
    undelivered_from: Option<BTreeMap<i32, i64>>,
}

/// A batch of alerts sent, until every one is acknowledged.
struct InFlight {
    /// Where the alert topic stood before it was sent.
    before: BTreeMap<i32, i64>,
    batch: Vec<OutboxEntry>,
    /// Times an acknowledgement without an offset was checked against the topic.
    checks: u32,
}

impl KafkaAlertSink {
    pub fn new(producer: Arc<Producer_>, topic: &str) -> Self {
        KafkaAlertSink {
            producer,
            topic: topic.to_string(),
            timeout: Duration::from_secs(65),
            skip: Default::default(),
            skip_until: std::time::Instant::now(),
            skipped: 0,
            reader: None,
            resent: 0,
            in_flight: None,
            undelivered_from: None,
        }
    }

    /// Lets the sink read the alert topic back (with a reader made by the
    /// client factory), to check acknowledgements that came without an offset.
    pub fn with_reader(mut self, reader: ClientConfig) -> Self {
        self.reader = Some(reader);
        self
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Where the alert topic stood before any alert not yet known to be
    /// delivered was sent: the next offset per partition as far as this
    /// producer knows, or, while a batch is in flight (or failed), where it
    /// stood before that batch. A batch spans partitions and is acknowledged
    /// partition by partition; a position past part of a batch still in the
    /// outbox would hide that part from the check after a crash (see
    /// `redeliver_outbox`), and it would be produced twice.
    pub fn positions(&self) -> BTreeMap<i32, i64> {
        match &self.undelivered_from {
            Some(p) => p.clone(),
            None => self.written(),
        }
    }

    /// Next offset per alert-topic partition, as far as this producer knows.
    fn written(&self) -> BTreeMap<i32, i64> {
        self.producer
            .context()
            .written()
            .into_iter()
            .filter(|((t, _), _)| t == &self.topic)
            .map(|((_, p), o)| (p, o + 1))
            .collect()
    }

    /// Alert ids already on the topic are not produced again for a while
    /// (long enough for the records that raised them to be processed again).
    pub fn skip_ids(&mut self, ids: std::collections::HashSet<String>) {
        if ids.is_empty() {
            return;
        }
        self.skip.extend(ids);
        self.skip_until = std::time::Instant::now() + Duration::from_secs(600);
    }
}

/// Reads the alert ids on `topic` from `from` (next offset per partition;
/// partitions not named: from the beginning) to its high watermarks as of
/// the call, with a reader of configuration `reader` (it never commits).
pub fn alert_ids_since(
    reader: &ClientConfig,
    topic: &str,
    from: &BTreeMap<i32, i64>,
) -> Result<std::collections::HashSet<String>, SinkError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = reader
        .create()
        .map_err(|e| SinkError::Delivery(format!("alert reader: {e}")))?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| SinkError::Delivery(format!("alert topic metadata: {e}")))?;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut remaining = std::collections::HashMap::new();
    for p in 0..n as i32 {
        let (lo, hi) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| SinkError::Delivery(format!("alert topic watermarks: {e}")))?;
        let o = from.get(&p).copied().unwrap_or(0).max(lo);
        if o < hi {
            remaining.insert(p, hi);
            tpl.add_partition_offset(topic, p, rdkafka::Offset::Offset(o))
                .map_err(|e| SinkError::Delivery(e.to_string()))?;
        }
    }
    let mut ids = std::collections::HashSet::new();
    if remaining.is_empty() {
        return Ok(ids);
    }
    consumer
        .assign(&tpl)
        .map_err(|e| SinkError::Delivery(format!("alert reader: {e}")))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(SinkError::Delivery(format!(
                "reading {topic} back to its end took over 60 s"
            )));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                if let Some(h) = m.headers() {
                    use rdkafka::message::Headers;
                    if let Some(v) = h.iter().find(|h| h.key == "alert_id").and_then(|h| h.value) {
                        ids.insert(String::from_utf8_lossy(v).into_owned());
                    }
                }
                if remaining
                    .get(&m.partition())
                    .is_some_and(|hi| m.offset() + 1 >= *hi)
                {
                    remaining.remove(&m.partition());
                }
            }
            Some(Err(e)) => return Err(SinkError::Delivery(format!("reading {topic}: {e}"))),
            None => {
                // a partition whose last offsets are not records (markers)
                if let Ok(pos) = consumer.position() {
                    remaining.retain(|p, hi| {
                        !pos.find_partition(topic, *p).is_some_and(
                            |el| matches!(el.offset(), rdkafka::Offset::Offset(o) if o >= *hi),
                        )
                    });
                }
            }
        }
    }
    Ok(ids)
}

/// The fields of an alert the message needs (read back from the outbox JSON).
#[derive(serde::Deserialize)]
struct AlertHead<'a> {
    alert_id: &'a str,
    kind: &'a str,
    key_id: std::borrow::Cow<'a, str>,
}

impl KafkaAlertSink {
    fn send_all<'a>(
        &mut self,
        batch: impl Iterator<Item = &'a OutboxEntry>,
    ) -> Result<(), SinkError> {
        for e in batch {
            let head: AlertHead<'_> = serde_json::from_slice(&e.json)
                .map_err(|err| SinkError::Delivery(format!("outbox entry {}: {err}", e.seq)))?;
            if self.skip.contains(head.alert_id) {
                self.skipped += 1;
                continue;
            }
            let headers = OwnedHeaders::new_with_capacity(2)
                .insert(Header {
                    key: "kind",
                    value: Some(head.kind.as_bytes()),
                })
                .insert(Header {
                    key: "alert_id",
                    value: Some(head.alert_id.as_bytes()),
                });
            send(
                &self.producer,
                BaseRecord::to(&self.topic)
                    .key(head.key_id.as_bytes())
                    .payload(&e.json[..])
                    .headers(headers),
            )?;
        }
        Ok(())
    }
}

impl AlertSink for KafkaAlertSink {
    /// Produces the batch and waits for every acknowledgement (see
    /// [`AlertSink::delivered`] for what is checked).
    fn deliver(&mut self, batch: &[OutboxEntry]) -> Result<(), SinkError> {
        self.send(batch)?;
        while !self.delivered(true)? {}
        Ok(())
    }

    /// Produces the batch (idempotent, acks=all); librdkafka sends it at once
    /// (`linger.ms` 0) and batches what queues up while requests are in flight.
    fn send(&mut self, batch: &[OutboxEntry]) -> Result<(), SinkError> {
        debug_assert!(self.in_flight.is_none(), "one batch at a time");
        if !self.skip.is_empty() && std::time::Instant::now() > self.skip_until {
            self.skip.clear();
        }
        let before = self.positions();
        if self.undelivered_from.is_none() {
            self.undelivered_from = Some(before.clone());
        }
        self.send_all(batch.iter())?;
        self.in_flight = Some(InFlight {
            before,
            batch: batch.to_vec(),
            checks: 0,
        });
        Ok(())
    }

    /// Whether every alert sent is acknowledged. An acknowledgement without
    /// an offset (a broker answering a retried send as a duplicate,
    /// typically after it restarted) is checked against the topic, and what
    /// is not there is produced again. It was first seen with a
    /// Kafka-protocol imitation that lost acknowledged batches; Apache Kafka
    /// answers a duplicate with DUPLICATE_SEQUENCE_NUMBER, which librdkafka
    /// also reports without an offset, and an unclean leader election can
    /// lose an acknowledged batch. The check costs nothing while
    /// acknowledgements carry offsets, so it stays.
    fn delivered(&mut self, wait: bool) -> Result<bool, SinkError> {
        loop {
            if self.in_flight.is_none() {
                return Ok(true);
            }
            self.producer.poll(Duration::ZERO);
            if self.producer.in_flight_count() > 0 && !wait {
                return Ok(false);
            }
            if let Err(e) = flush(&self.producer, self.timeout, "alerts") {
                self.in_flight = None;
                return Err(e);
            }
            if self.producer.context().take_offsetless() == 0 || self.reader.is_none() {
                self.in_flight = None;
                self.undelivered_from = None;
                return Ok(true);
            }
            let f = self.in_flight.as_mut().expect("checked");
            if f.checks == 5 {
                self.in_flight = None;
                return Err(SinkError::Delivery(format!(
                    "alerts acknowledged without an offset and not found on {}",
                    self.topic
                )));
            }
            f.checks += 1;
            let reader = self.reader.as_ref().expect("checked");
            let on_topic = alert_ids_since(reader, &self.topic, &f.before)?;
            let missing: Vec<OutboxEntry> = f
                .batch
                .iter()
                .filter(|e| {
                    serde_json::from_slice::<AlertHead<'_>>(&e.json).is_ok_and(|h| {
                        !on_topic.contains(h.alert_id) && !self.skip.contains(h.alert_id)
                    })
                })
                .cloned()
                .collect();
            tracing::warn!(
                batch = f.batch.len(),
                not_on_topic = missing.len(),
                "the broker acknowledged alerts without an offset: checked the topic for them"
            );
            if missing.is_empty() {
                self.in_flight = None;
                self.undelivered_from = None;
                return Ok(true);
            }
            self.resent += missing.len() as u64;
            crate::telemetry::AlertsResent {
                count: missing.len() as u64,
            }
            .emit();
            self.send_all(missing.iter())?;
        }
    }
}

/// Undecodable records to the dead-letter topic.
pub struct KafkaDeadLetterSink {
    producer: Arc<Producer_>,
    topic: String,
    timeout: Duration,
    pending: usize,
}

impl KafkaDeadLetterSink {
    pub fn new(producer: Arc<Producer_>, topic: &str) -> Self {
        KafkaDeadLetterSink {
            producer,
            topic: topic.to_string(),
            timeout: Duration::from_secs(65),
            pending: 0,
        }
    }
}

impl DeadLetterSink for KafkaDeadLetterSink {
    fn send(&mut self, dl: &DeadLetter<'_>) -> Result<(), SinkError> {
        let (bytes, truncated) = match dl.payload {
            Payload::Data(b) => (b, false),
            Payload::Oversize { prefix, .. } => (prefix, true),
        };
        let (topic, partition) = split_source(dl.source);
        let offset = dl.pos.offset.to_string();
        let error = dl.error.to_string();
        let headers = OwnedHeaders::new_with_capacity(6)
            .insert(Header {
                key: "source_topic",
                value: Some(topic.as_bytes()),
            })
            .insert(Header {
                key: "source_partition",
                value: Some(partition.as_bytes()),
            })
            .insert(Header {
                key: "source_offset",
                value: Some(offset.as_bytes()),
            })
            .insert(Header {
                key: "error_kind",
                value: Some(dl.error.kind().as_bytes()),
            })
            .insert(Header {
                key: "error",
                value: Some(error.as_bytes()),
            })
            .insert(Header {
                key: "truncated",
                value: Some(if truncated {
                    &b"true"[..]
                } else {
                    &b"false"[..]
                }),
            });
        let mut rec = BaseRecord::to(&self.topic).payload(bytes).headers(headers);
        if let MessageKey::Present(k) = dl.key {
            rec = rec.key(k);
        }
        send(&self.producer, rec)?;
        self.pending += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        if self.pending == 0 {
            return Ok(());
        }
        flush(&self.producer, self.timeout, "dead letters")?;
        self.pending = 0;
        Ok(())
    }
}
