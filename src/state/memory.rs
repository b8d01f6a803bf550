//! In-memory twin of the RocksDB store, for tests and benches. Same contract:
//! a commit is applied whole under one lock.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{
    segment::{Bytes, SegmentSource},
    Commit, ShardMeta, StateError, StateStore, StoreMeta,
};
use crate::schema::LifecycleEvent;

#[derive(Default)]
struct Inner {
    registry: BTreeMap<String, u32>,
    shards: BTreeMap<u32, ShardMeta>,
    segments: BTreeMap<(u32, u64), Vec<u8>>,
    lifecycle: BTreeMap<Vec<u8>, LifecycleEvent>,
    usage: BTreeMap<(u32, String), Vec<u8>>,
    sequence: BTreeMap<(u32, String), Vec<u8>>,
    outbox: BTreeMap<u64, Vec<u8>>,
    values: BTreeMap<String, Vec<u8>>,
    commits: u64,
}

/// A [`StateStore`] held in memory.
pub struct MemStore {
    meta: StoreMeta,
    inner: Mutex<Inner>,
    /// When set, every commit fails (to test error paths).
    fail_commits: std::sync::atomic::AtomicBool,
}

impl MemStore {
    pub fn new(seed: u64) -> Self {
        MemStore {
            meta: StoreMeta {
                format: super::FORMAT_VERSION,
                seed,
            },
            inner: Mutex::new(Inner::default()),
            fail_commits: Default::default(),
        }
    }

    /// Number of commits applied.
    pub fn commits(&self) -> u64 {
        self.inner.lock().unwrap().commits
    }

    /// Number of segments held.
    pub fn segment_count(&self) -> usize {
        self.inner.lock().unwrap().segments.len()
    }

    pub fn set_fail_commits(&self, fail: bool) {
        self.fail_commits
            .store(fail, std::sync::atomic::Ordering::SeqCst);
    }
}

impl SegmentSource for MemStore {
    fn with_segment(&self, shard: u32, seq: u64, f: &mut Bytes<'_>) -> Result<bool, StateError> {
        let g = self.inner.lock().unwrap();
        match g.segments.get(&(shard, seq)) {
            Some(b) => {
                f(b);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl StateStore for MemStore {
    fn meta(&self) -> Result<StoreMeta, StateError> {
        Ok(self.meta.clone())
    }

    fn registry(&self) -> Result<BTreeMap<String, u32>, StateError> {
        Ok(self.inner.lock().unwrap().registry.clone())
    }

    fn value(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.inner.lock().unwrap().values.get(name).cloned())
    }

    fn shard(&self, shard: u32) -> Result<Option<ShardMeta>, StateError> {
        Ok(self.inner.lock().unwrap().shards.get(&shard).cloned())
    }

    fn for_each_segment(
        &self,
        shard: u32,
        f: &mut super::SegmentVisitor<'_>,
    ) -> Result<(), StateError> {
        let g = self.inner.lock().unwrap();
        for ((_, seq), b) in g.segments.range((shard, 0)..=(shard, u64::MAX)) {
            f(*seq, b)?;
        }
        Ok(())
    }

    fn lifecycle(&self) -> Result<Vec<LifecycleEvent>, StateError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .lifecycle
            .values()
            .cloned()
            .collect())
    }

    fn usage_record(&self, shard: u32, key_id: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .usage
            .get(&(shard, key_id.to_string()))
            .cloned())
    }

    fn for_each_usage(
        &self,
        shard: Option<u32>,
        f: &mut super::UsageVisitor<'_>,
    ) -> Result<(), StateError> {
        let g = self.inner.lock().unwrap();
        for ((s, k), v) in &g.usage {
            if shard.is_none_or(|want| want == *s) {
                f(*s, k, v)?;
            }
        }
        Ok(())
    }

    fn for_each_sequence(
        &self,
        shard: u32,
        f: &mut super::UsageVisitor<'_>,
    ) -> Result<(), StateError> {
        let g = self.inner.lock().unwrap();
        for ((s, k), v) in &g.sequence {
            if *s == shard {
                f(*s, k, v)?;
            }
        }
        Ok(())
    }

    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>, StateError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .outbox
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect())
    }

    fn commit(&self, c: &Commit) -> Result<(), StateError> {
        if self.fail_commits.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StateError::Refused("injected commit failure".into()));
        }
        let mut g = self.inner.lock().unwrap();
        for (name, id) in &c.registry {
            g.registry.insert(name.clone(), *id);
        }
        for (id, m) in &c.shards {
            g.shards.insert(*id, m.clone());
        }
        for (shard, seq, b) in &c.segments {
            g.segments.insert((*shard, *seq), b.to_vec());
        }
        for (shard, seq) in &c.segment_deletes {
            g.segments.remove(&(*shard, *seq));
        }
        for ev in &c.lifecycle {
            g.lifecycle.insert(super::lifecycle_key(ev), ev.clone());
        }
        for shard in &c.usage_reset {
            g.usage.retain(|(s, _), _| s != shard);
            g.sequence.retain(|(s, _), _| s != shard);
        }
        for (shard, key, v) in &c.usage {
            g.usage.insert((*shard, key.clone()), v.clone());
        }
        for (shard, key, v) in &c.sequence {
            g.sequence.insert((*shard, key.clone()), v.clone());
        }
        for (k, v) in &c.outbox_put {
            g.outbox.insert(*k, v.clone());
        }
        if let Some(r) = &c.outbox_delete {
            g.outbox.retain(|k, _| !r.contains(k));
        }
        for (k, v) in &c.values {
            g.values.insert(k.clone(), v.clone());
        }
        g.commits += 1;
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        let g = self.inner.lock().unwrap();
        g.segments.values().map(|v| v.len() as u64).sum::<u64>()
            + g.outbox.values().map(|v| v.len() as u64).sum::<u64>()
    }
}
