//! Kafka input: message -> [`Record`], the offset-commit metadata format,
//! and the lifecycle reader (a global table: every instance reads the whole
//! topic).
//!
//! The clients are made by `pipeline::kafka`'s factory; the consumer group
//! itself (rebalances, where each partition starts) is driven there, the
//! only place that knows the state store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::{MessageKey, Payload, Record};
use crate::detect::Position;

/// Offset-commit metadata: the format tag of what replayguard writes there.
pub const COMMIT_METADATA_TAG: &str = "rg1";

/// Name of the shard (and source) of a topic partition.
pub fn partition_name(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// A message as a [`Record`] of source `source`; `max` is the decoder's limit.
pub fn record<'a>(m: &'a BorrowedMessage<'a>, source: u32, max: usize) -> Record<'a> {
    let bytes = m.payload().unwrap_or(&[]);
    let payload = if bytes.len() > max {
        Payload::Oversize {
            len: bytes.len(),
            prefix: &bytes[..1024.min(bytes.len())],
        }
    } else {
        Payload::Data(bytes)
    };
    Record {
        pos: Position::new(source, m.offset() as u64),
        payload,
        key: match m.key() {
            Some(k) => MessageKey::Present(k),
            None => MessageKey::Absent,
        },
        plain: false,
    }
}

/// What the commit metadata says about a partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommitMeta {
    /// Re-reading from here rebuilds the live state at the committed offset.
    pub rebuild_from: Option<u64>,
    /// Alert-topic positions (next offset per partition) when the offset was
    /// committed: every alert produced later is on the topic after them.
    pub alerts: BTreeMap<i32, i64>,
}

impl CommitMeta {
    pub fn encode(&self) -> String {
        let mut s = COMMIT_METADATA_TAG.to_string();
        if let Some(r) = self.rebuild_from {
            s.push_str(&format!(" from={r}"));
        }
        if !self.alerts.is_empty() {
            let a: Vec<String> = self
                .alerts
                .iter()
                .map(|(p, o)| format!("{p}:{o}"))
                .collect();
            s.push_str(&format!(" alerts={}", a.join(",")));
        }
        s
    }

    /// `None` when the metadata was not written by replayguard.
    pub fn decode(s: &str) -> Option<CommitMeta> {
        let mut parts = s.split_whitespace();
        if parts.next()? != COMMIT_METADATA_TAG {
            return None;
        }
        let mut m = CommitMeta::default();
        for p in parts {
            if let Some(v) = p.strip_prefix("from=") {
                m.rebuild_from = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("alerts=") {
                for pair in v.split(',') {
                    if let Some((p, o)) = pair.split_once(':') {
                        if let (Ok(p), Ok(o)) = (p.parse(), o.parse()) {
                            m.alerts.insert(p, o);
                        }
                    }
                }
            }
        }
        Some(m)
    }
}

/// A record of the lifecycle topic, or a record that could not be read.
pub enum LifecycleMsg {
    Record {
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        bytes: Vec<u8>,
    },
    /// The reader has read everything there was at startup.
    CaughtUp,
    Error(String),
}

/// Reads the whole lifecycle topic from the beginning, then follows it,
/// sending what it reads to `tx`, until `stop` is set. It has caught up once
/// every partition's position reached its high watermark as of assignment
/// (a partition added later is read from its beginning too).
pub fn read_lifecycle(
    consumer: BaseConsumer,
    topic: String,
    tx: Sender<LifecycleMsg>,
    stop: Arc<AtomicBool>,
) {
    let mut assigned = 0usize;
    let mut targets: Vec<i64> = Vec::new();
    let mut last_metadata: Option<Instant> = None;
    let mut caught_up = false;
    while !stop.load(Ordering::Relaxed) {
        // (re)assign every partition from the beginning; partitions may appear later
        if last_metadata.is_none_or(|t| t.elapsed() > Duration::from_secs(30)) {
            last_metadata = Some(Instant::now());
            match consumer.fetch_metadata(Some(&topic), Duration::from_secs(5)) {
                Ok(md) => {
                    let n = md
                        .topics()
                        .iter()
                        .find(|t| t.name() == topic)
                        .map_or(0, |t| t.partitions().len());
                    if n == 0 && !caught_up {
                        let _ = tx.send(LifecycleMsg::Error(format!(
                            "the lifecycle topic {topic} does not exist (yet): every key counts as active"
                        )));
                    }
                    if n > assigned {
                        let mut tpl = TopicPartitionList::new();
                        for p in 0..n as i32 {
                            let _ = tpl.add_partition_offset(&topic, p, Offset::Beginning);
                        }
                        if let Err(e) = consumer.assign(&tpl) {
                            let _ = tx.send(LifecycleMsg::Error(format!("assigning {topic}: {e}")));
                        }
                        targets = (0..n as i32)
                            .map(|p| {
                                consumer
                                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                                    .map_or(0, |(_, hi)| hi)
                            })
                            .collect();
                        assigned = n;
                    }
                }
                Err(e) => {
                    let _ = tx.send(LifecycleMsg::Error(format!(
                        "lifecycle topic metadata: {e}"
                    )));
                }
            }
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let msg = LifecycleMsg::Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| k.to_vec()),
                    bytes: m.payload().unwrap_or(&[]).to_vec(),
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
            Some(Err(e)) => {
                let _ = tx.send(LifecycleMsg::Error(format!("reading {topic}: {e}")));
            }
            None => {}
        }
        if !caught_up && reached(&consumer, &topic, &targets) {
            caught_up = true;
            if tx.send(LifecycleMsg::CaughtUp).is_err() {
                return;
            }
        }
    }
}

/// Whether every partition's position is at or past its target offset.
fn reached(consumer: &BaseConsumer, topic: &str, targets: &[i64]) -> bool {
    if targets.iter().all(|t| *t <= 0) {
        return true;
    }
    let Ok(pos) = consumer.position() else {
        return false;
    };
    targets.iter().enumerate().all(|(p, target)| {
        *target <= 0
            || pos
                .find_partition(topic, p as i32)
                .is_some_and(|el| matches!(el.offset(), Offset::Offset(o) if o >= *target))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_metadata_round_trips_and_ignores_foreign_text() {
        let m = CommitMeta {
            rebuild_from: Some(42),
            alerts: [(0, 10), (3, 7)].into_iter().collect(),
        };
        assert_eq!(m.encode(), "rg1 from=42 alerts=0:10,3:7");
        assert_eq!(CommitMeta::decode(&m.encode()), Some(m));
        assert_eq!(CommitMeta::decode("rg1"), Some(CommitMeta::default()));
        assert_eq!(CommitMeta::decode(""), None);
        assert_eq!(CommitMeta::decode("something else"), None);
    }
}
