//! The usage topic (`kafka.usage_topic`): a compacted changelog of per-key
//! usage, keyed by key_id, as Kafka Streams keeps its state stores' changelogs.
//!
//! - Every instance publishes the usage records of each usage checkpoint
//!   (see `state.usage_checkpoint_interval`), with the partition whose
//!   requests they count and the offset they count up to; before a partition
//!   is handed over it checkpoints and waits for the broker's acknowledgement.
//! - Every instance reads the whole topic into a global table (as it does the
//!   lifecycle topic). From it, a partition taken over gets its keys' usage
//!   back (the records read again to rebuild the replay window do not count
//!   twice), and rotation reports are built for every key of the group,
//!   wherever it was processed: the same report on every instance.
//!
//! Record value (`replayguard.usage.v1`, see `schemas/usage-record.v1.md`):
//! a version byte (1), then postcard of [`UsageHead`] (input partition and
//! the offset counted up to), then postcard of the key's usage, then (the
//! sequence rule on) postcard of its sequence state. Internal, like a Kafka
//! Streams changelog: subscribers read reports from the reports topic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::client::{ClientFactory, Role};
use crate::detect::{KeySeed, KeyUsage, SeqState};
use crate::pipeline::{CheckpointedUsage, PipelineError};
use crate::schema::Millis;
use crate::sink::kafka::{self as ksink, Producer_};

/// First byte of a usage record's value.
pub const USAGE_RECORD_VERSION: u8 = 1;

/// The key of a partition mark (NUL first: no key_id a log carries).
pub const MARK_KEY_PREFIX: &str = "\u{0}replayguard/partition/";

/// The record key of the mark of `partition`.
pub fn mark_key(partition: &str) -> String {
    format!("{MARK_KEY_PREFIX}{partition}")
}

/// What a usage record says besides the usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageHead {
    /// The input partition whose requests it counts ("topic/N").
    pub partition: String,
    /// The next offset of that partition it counts up to.
    pub offset: u64,
}

/// One key's usage from the usage topic.
#[cfg(test)]
#[derive(Debug, Clone)]
pub struct UsageRecord {
    pub head: UsageHead,
    pub usage: KeyUsage,
    /// The sequence rule's state of the key, when the writer had the rule on.
    pub seq: Option<SeqState>,
}

/// The value of a usage record: the sequence state, when there is one, is
/// a trailing part (readers that predate it ignore it, as postcard ignores
/// bytes after a value: no version change for a rolling upgrade).
pub fn encode(head: &UsageHead, usage_postcard: &[u8], seq_postcard: Option<&[u8]>) -> Vec<u8> {
    let mut v = vec![USAGE_RECORD_VERSION];
    v.extend_from_slice(&postcard::to_stdvec(head).expect("head serializes"));
    v.extend_from_slice(usage_postcard);
    v.extend_from_slice(seq_postcard.unwrap_or_default());
    v
}

/// A usage record's value; `None` when it is not one this build reads.
#[cfg(test)]
pub fn decode(value: &[u8]) -> Option<UsageRecord> {
    let (parts, _) = split(value)?;
    let usage: KeyUsage = postcard::from_bytes(parts.usage).ok()?;
    let seq = match parts.seq {
        [] => None,
        s => Some(postcard::from_bytes(s).ok()?),
    };
    Some(UsageRecord {
        head: parts.head,
        usage,
        seq,
    })
}

/// The head of a value of this version, and the bytes after it (none in a
/// partition mark).
fn head(value: &[u8]) -> Option<(UsageHead, &[u8])> {
    let (&version, rest) = value.split_first()?;
    if version != USAGE_RECORD_VERSION {
        return None;
    }
    postcard::take_from_bytes(rest).ok()
}

/// A value cut into its parts, still encoded.
struct Parts<'a> {
    head: UsageHead,
    usage: &'a [u8],
    seq: &'a [u8],
}

/// Cuts a value; the usage is decoded once to find its end (the second
/// value is the whole usage when it cannot be cut).
fn split(value: &[u8]) -> Option<(Parts<'_>, KeyUsage)> {
    let (head, rest) = head(value)?;
    let (usage, seq): (KeyUsage, &[u8]) = postcard::take_from_bytes(rest).ok()?;
    let usage_bytes = &rest[..rest.len() - seq.len()];
    Some((
        Parts {
            head,
            usage: usage_bytes,
            seq,
        },
        usage,
    ))
}

/// Publishes checkpointed usage (idempotent, acks=all).
pub(super) struct UsagePublisher {
    producer: Arc<Producer_>,
    topic: String,
    /// A usage record was not delivered (after librdkafka's retries): some
    /// key's newest record on the topic may be older than its usage, so no
    /// partition mark may say otherwise again (see
    /// [`UsagePublisher::publish_marks`]).
    lost: AtomicBool,
}

impl UsagePublisher {
    pub(super) fn new(producer: Arc<Producer_>, topic: &str) -> Self {
        UsagePublisher {
            producer,
            topic: topic.to_string(),
            lost: AtomicBool::new(false),
        }
    }

    /// Produces the records (their acknowledgement is waited for by
    /// [`UsagePublisher::flush`]).
    pub(super) fn publish(&self, records: &[CheckpointedUsage]) -> Result<(), PipelineError> {
        for r in records {
            let head = UsageHead {
                partition: r.stream.clone(),
                offset: r.offset,
            };
            let value = encode(&head, &r.bytes, r.seq.as_deref());
            ksink::send(
                &self.producer,
                BaseRecord::to(&self.topic)
                    .key(r.key.as_bytes())
                    .payload(&value[..]),
            )?;
        }
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Publishes partition marks, (partition, offset): every key's newest
    /// record of the partition counts up to the offset (see
    /// [`super::super::Engine::usage_counted_to`]). Only after the records
    /// of that checkpoint are acknowledged ([`UsagePublisher::flush`]): a
    /// mark must never be seen without them; and never once a usage record
    /// of this instance was not delivered.
    pub(super) fn publish_marks(&self, marks: &[(String, u64)]) -> Result<(), PipelineError> {
        if let Some((n, e)) = self.producer.context().take_failures() {
            tracing::warn!(records = n, error = %e, "usage records were not delivered: no more partition marks from this instance (a new owner may count redelivered copies twice)");
            self.lost.store(true, Ordering::Relaxed);
        }
        if self.lost.load(Ordering::Relaxed) {
            return Ok(());
        }
        for (partition, offset) in marks {
            let head = UsageHead {
                partition: partition.clone(),
                offset: *offset,
            };
            // a head and no usage
            let value = encode(&head, &[], None);
            let key = mark_key(partition);
            ksink::send(
                &self.producer,
                BaseRecord::to(&self.topic)
                    .key(key.as_bytes())
                    .payload(&value[..]),
            )?;
        }
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    /// Waits until everything published is acknowledged (before a
    /// partition is handed over: its next owner reads it).
    pub(super) fn flush(&self) -> Result<(), PipelineError> {
        ksink::wait_acked(&self.producer, Duration::from_secs(30))
            .map_err(PipelineError::kafka("publishing usage"))
    }
}

/// One key's newest record in the table, its usage kept encoded (~300
/// bytes against the ~2 KB of a decoded `KeyUsage`: every instance holds
/// every key of the group) and decoded when a report or a hand-over asks.
struct Stored {
    /// The input partition it counts (shared between the keys of one).
    partition: Arc<str>,
    offset: u64,
    last_seen: Millis,
    /// postcard of the key's `KeyUsage`.
    usage: Box<[u8]>,
    /// postcard of its `SeqState` (the sequence rule on).
    seq: Option<Box<[u8]>>,
}

impl Stored {
    fn usage(&self) -> KeyUsage {
        postcard::from_bytes(&self.usage).expect("checked when it was read")
    }

    fn seq(&self) -> Option<SeqState> {
        self.seq
            .as_deref()
            .map(|s| postcard::from_bytes(s).expect("checked when it was read"))
    }
}

/// The global table of the usage topic: the newest record of every key.
#[derive(Default)]
pub struct UsageTable {
    records: RwLock<HashMap<String, Stored>>,
    /// The input partitions named by records, shared by their keys.
    partitions: Mutex<Vec<Arc<str>>>,
    /// Next offset read, per partition of the usage topic.
    read: Mutex<HashMap<i32, i64>>,
    /// Records that could not be read (another version).
    pub unreadable: std::sync::atomic::AtomicU64,
    /// Per input partition, the offset every key's newest record counts up
    /// to (the newest mark).
    marks: RwLock<HashMap<String, u64>>,
    /// Bumped by every record applied: what was computed from the table
    /// (the rotation reports) is recomputed when it moved.
    version: std::sync::atomic::AtomicU64,
}

impl UsageTable {
    pub(super) fn apply(&self, key: &[u8], value: Option<&[u8]>) {
        self.change(key, value);
        // after the change: whoever reads the new version reads the table
        // after it
        self.version.fetch_add(1, Ordering::Release);
    }

    fn change(&self, key: &[u8], value: Option<&[u8]>) {
        let Ok(key) = std::str::from_utf8(key) else {
            return;
        };
        if let Some(partition) = key.strip_prefix(MARK_KEY_PREFIX) {
            let mut marks = self.marks.write().unwrap_or_else(|e| e.into_inner());
            match value.map(head) {
                Some(Some((h, _))) => {
                    marks.insert(partition.to_string(), h.offset);
                }
                Some(None) => {
                    self.unreadable.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    marks.remove(partition);
                }
            }
            return;
        }
        // decoded once to be checked; kept encoded
        let checked = value.map(|v| {
            split(v).filter(|(p, _)| {
                p.seq.is_empty() || postcard::from_bytes::<SeqState>(p.seq).is_ok()
            })
        });
        let stored = match checked {
            Some(Some((p, usage))) => Some(Stored {
                partition: self.partition(&p.head.partition),
                offset: p.head.offset,
                last_seen: usage.last_seen,
                usage: p.usage.into(),
                seq: (!p.seq.is_empty()).then(|| p.seq.into()),
            }),
            Some(None) => {
                self.unreadable.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // a tombstone
            None => None,
        };
        let mut t = self.records.write().unwrap_or_else(|e| e.into_inner());
        match stored {
            Some(s) => {
                t.insert(key.to_string(), s);
            }
            None => {
                t.remove(key);
            }
        }
    }

    fn partition(&self, name: &str) -> Arc<str> {
        let mut known = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = known.iter().find(|p| &***p == name) {
            return p.clone();
        }
        let p: Arc<str> = name.into();
        known.push(p.clone());
        p
    }

    /// Changes when a record is applied (compare two readings).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The usage of the keys whose requests were counted in `partition`.
    pub fn of_partition(&self, partition: &str) -> Vec<KeySeed> {
        let mark = self
            .marks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(partition)
            .copied()
            .unwrap_or(0);
        let t = self.records.read().unwrap_or_else(|e| e.into_inner());
        t.iter()
            .filter(|(_, r)| &*r.partition == partition)
            .map(|(k, r)| KeySeed {
                key: k.clone(),
                usage: r.usage(),
                seq: r.seq(),
                // a record older than the partition's mark counts up to it
                offset: r.offset.max(mark),
            })
            .collect()
    }

    /// The usage of the given keys that the table has.
    pub fn usage_of(&self, keys: &[String]) -> HashMap<String, KeyUsage> {
        let t = self.records.read().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .filter_map(|k| t.get(k).map(|r| (k.clone(), r.usage())))
            .collect()
    }

    /// The newest request of any key (the time reports are computed at).
    pub fn now(&self) -> Option<Millis> {
        let t = self.records.read().unwrap_or_else(|e| e.into_inner());
        t.values().map(|r| r.last_seen).max()
    }

    /// Keys in the table.
    pub fn len(&self) -> usize {
        self.records.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every partition was read up to `ends` (next offsets).
    fn reached(&self, ends: &HashMap<i32, i64>) -> bool {
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        ends.iter()
            .all(|(p, end)| *end <= 0 || read.get(p).is_some_and(|r| r >= end))
    }
}

/// Reads the usage topic into a [`UsageTable`], from the beginning, then
/// follows it.
pub(super) struct UsageReader {
    pub(super) table: Arc<UsageTable>,
    topic: String,
    clients: ClientFactory,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UsageReader {
    pub(super) fn start(
        clients: &ClientFactory,
        topic: &str,
        group: &str,
    ) -> Result<Self, PipelineError> {
        let table = Arc::new(UsageTable::default());
        let stop = Arc::new(AtomicBool::new(false));
        let c: BaseConsumer = clients.create(
            "usage-topic consumer",
            &clients.config(Role::Reader, Some(&format!("{group}-usage"))),
        )?;
        let (t, s, name) = (table.clone(), stop.clone(), topic.to_string());
        let thread = std::thread::Builder::new()
            .name("usage-table".into())
            .spawn(move || read(c, &name, &t, &s))
            .map_err(PipelineError::io("starting the usage-topic reader"))?;
        Ok(UsageReader {
            table,
            topic: topic.to_string(),
            clients: clients.clone(),
            stop,
            thread: Some(thread),
        })
    }

    /// Waits until the table holds everything on the topic now (up to
    /// `timeout`); false when it did not get there.
    pub(super) fn catch_up(&self, timeout: Duration) -> bool {
        let ends = match high_watermarks(&self.clients, &self.topic) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, topic = %self.topic, "the usage topic's end");
                return false;
            }
        };
        let deadline = Instant::now() + timeout;
        while !self.table.reached(&ends) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    pub(super) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for UsageReader {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The next offset of every partition of `topic`.
fn high_watermarks(clients: &ClientFactory, topic: &str) -> Result<HashMap<i32, i64>, String> {
    let c: BaseConsumer = clients
        .create(
            "usage-topic watermarks",
            &clients.config(Role::Reader, Some("replayguard-usage-ends")),
        )
        .map_err(|e| e.to_string())?;
    ends(&c, topic)
}

fn ends(c: &BaseConsumer, topic: &str) -> Result<HashMap<i32, i64>, String> {
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    let mut out = HashMap::new();
    for p in 0..n as i32 {
        let (_, hi) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        out.insert(p, hi);
    }
    Ok(out)
}

/// The reader thread: every partition from the beginning, into `table`;
/// partitions that appear later are added.
fn read(c: BaseConsumer, topic: &str, table: &UsageTable, stop: &AtomicBool) {
    let mut assigned = 0usize;
    let mut last_metadata: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        if last_metadata.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
            last_metadata = Some(Instant::now());
            if let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) {
                let n = md
                    .topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .map_or(0, |t| t.partitions().len());
                if n > assigned {
                    let mut tpl = TopicPartitionList::new();
                    for p in 0..n as i32 {
                        let _ = tpl.add_partition_offset(topic, p, Offset::Beginning);
                    }
                    if c.assign(&tpl).is_ok() {
                        assigned = n;
                    }
                }
            }
        }
        match c.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                if let Some(k) = m.key() {
                    table.apply(k, m.payload());
                }
                table
                    .read
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(m.partition(), m.offset() + 1);
            }
            Some(Err(e)) => tracing::warn!(error = %e, topic, "reading the usage topic"),
            None => {
                // positions past compacted or marker offsets count as read
                if let Ok(pos) = c.position() {
                    let mut read = table.read.lock().unwrap_or_else(|e| e.into_inner());
                    for el in pos.elements() {
                        if let Offset::Offset(o) = el.offset() {
                            let e = read.entry(el.partition()).or_insert(o);
                            *e = (*e).max(o);
                        }
                    }
                }
            }
        }
    }
}

/// What [`read_to_end`] is handed for each record: its key and its value.
type RecordVisitor<'a> = dyn FnMut(Option<&[u8]>, Option<&[u8]>) + 'a;

/// Reads a whole topic once, to its end as of the call, handing each
/// record's key and value to `f`.
fn read_to_end(
    clients: &ClientFactory,
    topic: &str,
    f: &mut RecordVisitor<'_>,
) -> Result<(), String> {
    let c: BaseConsumer = clients
        .create(
            "topic reader",
            &clients.config(Role::Reader, Some("replayguard-report")),
        )
        .map_err(|e| e.to_string())?;
    let ends = ends(&c, topic)?;
    if ends.is_empty() {
        return Err(format!("topic {topic} does not exist"));
    }
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    c.assign(&tpl).map_err(|e| e.to_string())?;
    let mut read: HashMap<i32, i64> = HashMap::new();
    let done = |read: &HashMap<i32, i64>| {
        ends.iter()
            .all(|(p, end)| *end <= 0 || read.get(p).is_some_and(|r| r >= end))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(&read) {
        if Instant::now() >= deadline {
            return Err(format!("reading {topic} to its end took over 60 s"));
        }
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                f(m.key(), m.payload());
                read.insert(m.partition(), m.offset() + 1);
            }
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            None => {
                if let Ok(pos) = c.position() {
                    for el in pos.elements() {
                        if let Offset::Offset(o) = el.offset() {
                            let e = read.entry(el.partition()).or_insert(o);
                            *e = (*e).max(o);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The fleet's report snapshot from Kafka alone (no state directory): the
/// lifecycle topic and the usage topic, each read to its end, for
/// `replayguard report rotation --brokers`.
pub fn fleet_snapshot(
    k: &super::KafkaConfig,
    decoder: &crate::decode::Decoder,
) -> Result<crate::report::Snapshot, String> {
    let clients = ClientFactory::new(k);
    let table = UsageTable::default();
    read_to_end(&clients, &k.usage_topic, &mut |key, value| {
        if let Some(key) = key {
            table.apply(key, value);
        }
    })?;
    let mut lifecycle = crate::detect::LifecycleTable::default();
    if !k.lifecycle_topic.is_empty() {
        read_to_end(&clients, &k.lifecycle_topic, &mut |_, value| {
            if let Some(Ok(ev)) = value.map(|v| decoder.lifecycle(v)) {
                lifecycle.upsert(ev);
            }
        })?;
    }
    let now = table.now();
    let usage = std::mem::take(&mut *table.records.write().unwrap_or_else(|e| e.into_inner()))
        .into_iter()
        .map(|(k, r)| {
            let u = r.usage();
            (k, u)
        })
        .collect();
    Ok(crate::report::Snapshot {
        lifecycle,
        usage,
        now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_other_versions_are_refused() {
        let mut u = KeyUsage::new(1_795_824_000_000);
        u.total = 42;
        let head = UsageHead {
            partition: "access-events/3".into(),
            offset: 1234,
        };
        let v = encode(&head, &postcard::to_stdvec(&u).unwrap(), None);
        let r = decode(&v).unwrap();
        assert_eq!(r.head, head);
        assert_eq!(r.usage.total, 42);
        assert!(r.seq.is_none());
        // with the sequence state: a trailing part
        let mut s = SeqState::default();
        s.max = Some((9, crate::detect::EventId::new("e-9"), 1_795_824_000_000));
        s.judged_until = Some(1_795_824_000_100);
        s.folded_below = Some(1_795_824_000_050);
        let sv = encode(
            &head,
            &postcard::to_stdvec(&u).unwrap(),
            Some(&postcard::to_stdvec(&s).unwrap()),
        );
        let r = decode(&sv).unwrap();
        assert_eq!((r.usage.total, r.seq.as_ref()), (42, Some(&s)));
        // what a reader that predates the trailing part does with it
        let (_, rest): (UsageHead, &[u8]) = postcard::take_from_bytes(&sv[1..]).unwrap();
        assert_eq!(postcard::from_bytes::<KeyUsage>(rest).unwrap().total, 42);
        // a trailing part that is not a sequence state is refused
        let mut bad = v.clone();
        bad.push(0xff);
        assert!(decode(&bad).is_none());
        let mut other = v.clone();
        other[0] = 2;
        assert!(decode(&other).is_none());
        assert!(decode(&[]).is_none());
        assert!(decode(&v[..3]).is_none());
        let t = UsageTable::default();
        t.apply(b"k", Some(&v));
        t.apply(b"s", Some(&sv));
        t.apply(b"x", Some(&other));
        t.apply(b"b", Some(&bad));
        let mut seeds = t.of_partition("access-events/3");
        seeds.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(seeds.len(), 2);
        assert_eq!(
            (seeds[0].seq.as_ref(), seeds[1].seq.as_ref()),
            (None, Some(&s))
        );
        assert_eq!(seeds[1].offset, 1234);
        assert_eq!(t.unreadable.load(Ordering::Relaxed), 2);
        // a partition mark: every key's record counts up to its offset
        let mark = encode(
            &UsageHead {
                partition: "access-events/3".into(),
                offset: 2000,
            },
            &[],
            None,
        );
        t.apply(mark_key("access-events/3").as_bytes(), Some(&mark));
        let seeds = t.of_partition("access-events/3");
        assert!(seeds.iter().all(|s| s.offset == 2000), "{seeds:?}");
        assert_eq!(t.len(), 2, "a mark is no key");
        assert!(t.of_partition("access-events/1").is_empty());
        // a newer record beyond the mark keeps its own offset
        let later = encode(
            &UsageHead {
                partition: "access-events/3".into(),
                offset: 2500,
            },
            &postcard::to_stdvec(&u).unwrap(),
            None,
        );
        t.apply(b"k", Some(&later));
        let mut seeds = t.of_partition("access-events/3");
        seeds.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!((seeds[0].offset, seeds[1].offset), (2500, 2000));
        t.apply(mark_key("access-events/3").as_bytes(), None);
        let mut seeds = t.of_partition("access-events/3");
        seeds.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(
            (seeds[0].offset, seeds[1].offset),
            (2500, 1234),
            "the mark is gone"
        );
        t.apply(b"k", None);
        t.apply(b"s", None);
        assert!(t.is_empty());
    }
}
