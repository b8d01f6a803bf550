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
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(m) => {
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
    fn take_failures(&self) -> Option<(u64, String)> {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if t.failed == 0 {
            return None;
        }
        let n = std::mem::take(&mut t.failed);
        Some((n, t.last_error.take().unwrap_or_default()))
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

pub type Producer_ = BaseProducer<DeliveryTracker>;

/// Creates a producer (one for alerts, one for dead letters, so that the
/// delivery reports of one never count for the other).
pub fn producer(
    brokers: &str,
    common: &BTreeMap<String, String>,
    specific: &BTreeMap<String, String>,
) -> Result<Arc<Producer_>, SinkError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "1")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "60000");
    for (k, v) in common.iter().chain(specific) {
        c.set(k, v);
    }
    c.create_with_context(DeliveryTracker::default())
        .map(Arc::new)
        .map_err(|e| SinkError::Delivery(format!("creating the Kafka producer: {e}")))
}

/// Sends one record, waiting for room in the local queue when it is full.
fn send(p: &Producer_, mut rec: BaseRecord<'_, [u8], [u8], ()>) -> Result<(), SinkError> {
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
}

impl KafkaAlertSink {
    pub fn new(producer: Arc<Producer_>, topic: &str) -> Self {
        KafkaAlertSink {
            producer,
            topic: topic.to_string(),
            timeout: Duration::from_secs(65),
        }
    }
}

/// The fields of an alert the message needs (read back from the outbox JSON).
#[derive(serde::Deserialize)]
struct AlertHead<'a> {
    alert_id: &'a str,
    kind: &'a str,
    key_id: std::borrow::Cow<'a, str>,
}

impl AlertSink for KafkaAlertSink {
    fn deliver(&mut self, batch: &[OutboxEntry]) -> Result<(), SinkError> {
        for e in batch {
            let head: AlertHead<'_> = serde_json::from_slice(&e.json)
                .map_err(|err| SinkError::Delivery(format!("outbox entry {}: {err}", e.seq)))?;
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
        flush(&self.producer, self.timeout, "alerts")
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
