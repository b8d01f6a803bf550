//! Rotation reports of a running detector: computed in the runtime at commit
//! time (at most once a second) and published as a snapshot, so that an
//! HTTP request never waits for the poll loop, and produced to the reports
//! topic every `report.interval`. Per-key usage is read from the usage
//! topic's global table (every key of the group) when there is one,
//! otherwise from the committed state in the store, of the partitions this
//! instance owns. A snapshot is recomputed after a commit, a lifecycle
//! change, or a change of the usage table (another instance's checkpoint
//! changes the reports of an idle one).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

use super::usage::UsageTable;
use crate::detect::KeyUsage;
use crate::report::{ReportConfig, ReportSource, RotationReport, UsageView};
use crate::state::{RocksStore, StateStore};

/// How often the snapshot is recomputed.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);

/// The published reports, read by the HTTP server.
pub struct Published {
    rotations: RwLock<Arc<Vec<RotationReport>>>,
    /// Shards (partitions) this instance owns, by store id.
    shards: RwLock<Arc<Vec<u32>>>,
    /// Event time of the newest request seen (`i64::MIN`: none yet).
    now: AtomicI64,
    store: Arc<RocksStore>,
    /// The usage topic's global table: usage of every key of the group.
    table: Option<Arc<UsageTable>>,
}

impl Published {
    pub fn new(store: Arc<RocksStore>, table: Option<Arc<UsageTable>>) -> Self {
        Published {
            rotations: RwLock::new(Arc::new(Vec::new())),
            shards: RwLock::new(Arc::new(Vec::new())),
            now: AtomicI64::new(i64::MIN),
            store,
            table,
        }
    }

    fn set(&self, rotations: Vec<RotationReport>, shards: Vec<u32>, now: Option<i64>) {
        *self.rotations.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rotations);
        *self.shards.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(shards);
        self.now.store(now.unwrap_or(i64::MIN), Ordering::Relaxed);
    }
}

impl ReportSource for Published {
    fn rotations(&self) -> Vec<RotationReport> {
        self.rotations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .clone()
    }

    fn usage(&self, key_id: &str) -> Option<UsageView> {
        if let Some(t) = &self.table {
            // every key of the group, as its instance last published it
            let u = t.usage_of(&[key_id.to_string()]).remove(key_id)?;
            let now = t.now().unwrap_or(u.last_seen);
            return Some(UsageView::new(key_id, &u, now));
        }
        let shards = self
            .shards
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let freshest = shards
            .iter()
            .filter_map(|s| self.store.usage_record(*s, key_id).ok().flatten())
            .filter_map(|b| postcard::from_bytes::<KeyUsage>(&b).ok())
            .max_by_key(|u| u.last_seen)?;
        let now = match self.now.load(Ordering::Relaxed) {
            i64::MIN => freshest.last_seen,
            n => n,
        };
        Some(UsageView::new(key_id, &freshest, now))
    }
}

/// Recomputes and publishes the reports (runtime side).
pub struct Reporter {
    pub published: Arc<Published>,
    cfg: ReportConfig,
    last_snapshot: Option<Instant>,
    /// A commit or a lifecycle change changed the state since the last
    /// snapshot.
    stale: bool,
    /// The usage table's version the last snapshot was computed from: the
    /// other instances' checkpoints change the reports too, also while this
    /// one is idle.
    table_version: Option<u64>,
    topic: Option<(ThreadedProducer<DefaultProducerContext>, String, Duration)>,
    last_topic: Instant,
}

impl Reporter {
    pub fn new(
        published: Arc<Published>,
        cfg: ReportConfig,
        topic: Option<(ThreadedProducer<DefaultProducerContext>, String, Duration)>,
    ) -> Self {
        Reporter {
            published,
            cfg,
            last_snapshot: None,
            stale: true,
            table_version: None,
            topic,
            last_topic: Instant::now(),
        }
    }

    /// After a commit: a new snapshot when the last is a second old, and the
    /// reports to the topic when its interval has passed.
    pub fn after_commit<S: StateStore>(&mut self, engine: &mut crate::pipeline::Engine<S>) {
        self.stale = true;
        let snapshot_due = self
            .last_snapshot
            .is_none_or(|t| t.elapsed() >= SNAPSHOT_INTERVAL);
        self.refresh(engine, snapshot_due);
    }

    /// The reports depend on something a commit does not change (the
    /// lifecycle table).
    pub fn invalidate(&mut self) {
        self.stale = true;
    }

    /// When the input is drained: the committed state, or the usage table
    /// that other instances' checkpoints changed, gets its snapshot at most
    /// once a second (it asks every detect worker: the poll loop would
    /// spend its time on it between every two requests of a slow input).
    pub fn on_idle<S: StateStore>(&mut self, engine: &mut crate::pipeline::Engine<S>) {
        let due = self.changed()
            && self
                .last_snapshot
                .is_none_or(|t| t.elapsed() >= SNAPSHOT_INTERVAL);
        self.refresh(engine, due);
    }

    /// Whether the last snapshot may be out of date.
    fn changed(&self) -> bool {
        self.stale || self.table_version != self.published.table.as_ref().map(|t| t.version())
    }

    fn refresh<S: StateStore>(
        &mut self,
        engine: &mut crate::pipeline::Engine<S>,
        snapshot_due: bool,
    ) {
        let topic_due = self
            .topic
            .as_ref()
            .is_some_and(|(_, _, every)| self.last_topic.elapsed() >= *every);
        if !topic_due && !snapshot_due {
            return;
        }
        self.stale = false;
        self.last_snapshot = Some(Instant::now());
        // read before the table: a change made while computing is seen by
        // the next check
        self.table_version = self.published.table.as_ref().map(|t| t.version());
        let reports = match &self.published.table {
            // fleet-wide: every key of the group, from the usage topic
            Some(t) => fleet_reports(&self.cfg, engine.lifecycle(), t),
            None => engine.rotation_reports(&self.cfg),
        };
        if topic_due {
            self.last_topic = Instant::now();
            if let Some((p, topic, _)) = &self.topic {
                publish(p, topic, &reports);
            }
        }
        self.published
            .set(reports, engine.open_shards(), engine.now());
    }
}

/// Rotation reports of every key in rotation, from the usage topic's table
/// (the same on every instance, wherever a key was processed).
pub fn fleet_reports(
    cfg: &ReportConfig,
    lifecycle: &crate::detect::LifecycleTable,
    table: &UsageTable,
) -> Vec<RotationReport> {
    let Some(now) = table.now() else {
        return Vec::new();
    };
    let mut keys: Vec<String> = Vec::new();
    for (k, recs) in lifecycle.keys() {
        keys.push(k.to_string());
        keys.extend(recs.records().iter().filter_map(|r| r.successor.clone()));
    }
    let usage = table.usage_of(&keys);
    crate::report::reports(cfg, lifecycle, &usage, now)
}

/// Produces the rotation reports to the reports topic (fire and forget:
/// they are snapshots, the next one supersedes them).
fn publish(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, reports: &[RotationReport]) {
    for r in reports {
        let json = serde_json::to_vec(r).expect("report serializes");
        let rec = BaseRecord::<str, [u8], ()>::to(topic)
            .key(&r.key_id)
            .payload(&json);
        if let Err((e, _)) = p.send(rec) {
            tracing::warn!(error = %e, topic, "producing a rotation report");
        }
    }
    crate::telemetry::ReportsPublished {
        count: reports.len() as u64,
    }
    .emit();
}

#[cfg(test)]
mod tests {
    use super::super::usage::{encode, UsageHead};
    use super::*;
    use crate::pipeline::Engine;
    use crate::schema::{KeyState, LifecycleEvent};

    const T0: i64 = 1_795_824_000_000;

    /// A usage record as another instance's checkpoint writes it: `n`
    /// requests, a minute apart from a minute after the rotation.
    fn checkpoint_of(n: i64) -> Vec<u8> {
        let mut u = KeyUsage::new(T0);
        for m in 1..=n {
            let e = crate::schema::AccessEvent {
                event_id: "e".into(),
                received_at: T0 + m * 60_000,
                key_id: Some("old".into()),
                nonce: None,
                client_ts: None,
                client_ip: "10.0.0.1".into(),
                method: "GET".into(),
                path: "/".into(),
                status: 200,
                user_agent: None,
                client_id: None,
                signature: None,
            };
            crate::detect::usage::observe(&Default::default(), &mut u, &e, &mut vec![]);
        }
        let head = UsageHead {
            partition: "access-events/1".into(),
            offset: n as u64,
        };
        encode(&head, &postcard::to_stdvec(&u).unwrap(), None)
    }

    #[test]
    fn an_idle_instance_follows_the_other_instances_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RocksStore::open(dir.path(), &Default::default()).unwrap());
        let table = Arc::new(UsageTable::default());
        let published = Arc::new(Published::new(store.clone(), Some(table.clone())));
        let mut engine = Engine::open(store, &crate::config::Config::default()).unwrap();
        engine.add_lifecycle(LifecycleEvent {
            key_id: "old".into(),
            state: KeyState::Rotating,
            at: T0,
            successor: Some("new".into()),
            grace_until: None,
        });
        let mut r = Reporter::new(published.clone(), ReportConfig::default(), None);
        // a second after the last snapshot, with nothing new: the same one
        let a_second_ago = || Some(Instant::now() - SNAPSHOT_INTERVAL);
        r.on_idle(&mut engine);
        assert!(published.rotations().is_empty(), "no usage yet");
        r.last_snapshot = a_second_ago();
        // another instance checkpoints the old key: this one, idle (no
        // commit of its own), reports it
        table.apply(b"old", Some(&checkpoint_of(7)));
        r.on_idle(&mut engine);
        let got = published.rotations();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].old_key.since_rotation, 7);
        // a newer checkpoint less than a second later waits for the second
        table.apply(b"old", Some(&checkpoint_of(9)));
        r.on_idle(&mut engine);
        assert_eq!(published.rotations()[0].old_key.since_rotation, 7);
        r.last_snapshot = a_second_ago();
        r.on_idle(&mut engine);
        assert_eq!(published.rotations()[0].old_key.since_rotation, 9);
        assert_eq!(published.rotations()[0].as_of, T0 + 9 * 60_000);
        // and a lifecycle change (a commit changes nothing here)
        engine.add_lifecycle(LifecycleEvent {
            key_id: "old".into(),
            state: KeyState::Retired,
            at: T0 + 8 * 60_000,
            successor: None,
            grace_until: None,
        });
        r.last_snapshot = a_second_ago();
        r.on_idle(&mut engine);
        assert_eq!(published.rotations()[0].state, KeyState::Rotating);
        r.invalidate();
        r.on_idle(&mut engine);
        assert_eq!(published.rotations()[0].state, KeyState::Retired);
    }
}
