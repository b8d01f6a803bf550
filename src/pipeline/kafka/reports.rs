//! Rotation reports of a running detector: computed in the runtime at commit
//! time (at most once a second) and published as a snapshot, so that an
//! HTTP request never waits for the poll loop, and produced to the reports
//! topic every `report.interval`. Per-key usage is read from the committed
//! state in the store, of the partitions this instance owns.

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
    /// A commit changed the state since the last snapshot.
    stale: bool,
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

    /// When the input is drained: the committed state gets its snapshot,
    /// at most once a second (it asks every detect worker: the poll loop
    /// would spend its time on it between every two requests of a slow
    /// input).
    pub fn on_idle<S: StateStore>(&mut self, engine: &mut crate::pipeline::Engine<S>) {
        let due = self.stale
            && self
                .last_snapshot
                .is_none_or(|t| t.elapsed() >= SNAPSHOT_INTERVAL);
        self.refresh(engine, due);
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
