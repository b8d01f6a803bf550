//! The RocksDB state store.
//!
//! Column families, one per concern:
//! - `meta`: store metadata, the name registry, per-shard progress;
//! - `sightings`: sighting segments keyed (shard, seq), written once, deleted
//!   by range once every record in them is out of the live window;
//! - `lifecycle`: key lifecycle records keyed (key_id, at);
//! - `outbox`: alerts committed but not yet acknowledged by the sink;
//! - `usage`: per-key usage (counts, sketches, baselines) keyed (shard, key_id),
//!   written at usage checkpoints;
//! - `sequence`: per-key state of the sequence rule keyed (shard, key_id).
//!
//! A commit is one `WriteBatch` across all of them, with the WAL synced when
//! `sync` is set, so state, input positions and alerts move together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction,
    IteratorMode, Options, WriteBatch, WriteOptions, DB,
};

use super::{
    lifecycle_key,
    segment::{Bytes, SegmentSource},
    segment_key, Commit, ShardMeta, StateError, StateStore, StoreMeta, FORMAT_VERSION,
};
use crate::schema::LifecycleEvent;

const CF_META: &str = "meta";
const CF_SIGHTINGS: &str = "sightings";
const CF_LIFECYCLE: &str = "lifecycle";
const CF_OUTBOX: &str = "outbox";
const CF_USAGE: &str = "usage";
const CF_SEQUENCE: &str = "sequence";
const ALL_CFS: [&str; 6] = [
    CF_META,
    CF_SIGHTINGS,
    CF_LIFECYCLE,
    CF_OUTBOX,
    CF_USAGE,
    CF_SEQUENCE,
];

const KEY_STORE: &[u8] = b"store";
const PREFIX_REGISTRY: &[u8] = b"registry/";
const PREFIX_SHARD: &[u8] = b"shard/";
const PREFIX_VALUE: &[u8] = b"value/";

/// How to open the store. Memory use is bounded by `block_cache_bytes` plus
/// `write_buffer_bytes` (plus RocksDB's small fixed overheads).
#[derive(Debug, Clone)]
pub struct RocksOptions {
    /// Shared block cache for reads of older segments.
    pub block_cache_bytes: usize,
    /// Budget for all memtables together.
    pub write_buffer_bytes: usize,
    /// fsync the WAL at every commit (survives power loss, not only a crash).
    pub sync: bool,
    /// Open without writing (for reports next to a running detector).
    pub read_only: bool,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions {
            block_cache_bytes: 16 << 20,
            write_buffer_bytes: 32 << 20,
            sync: true,
            read_only: false,
        }
    }
}

/// [`StateStore`] on RocksDB.
pub struct RocksStore {
    /// `None` only while being reopened.
    db: RwLock<Option<DB>>,
    dir: PathBuf,
    meta: StoreMeta,
    sync: bool,
    options: RocksOptions,
    cache: Cache,
    deleted_since_reclaim: AtomicU64,
    /// A write failed: RocksDB may refuse writes until reopened.
    needs_reopen: AtomicBool,
}

/// Whether a RocksDB error is a full disk. RocksDB's C API gives only the
/// status text (`IO error: No space left on device`, the strerror of
/// ENOSPC): this is the one place that reads it.
fn is_no_space(e: &rocksdb::Error) -> bool {
    let s = e.as_ref();
    s.contains("No space left") || s.contains("ENOSPC")
}

fn io(source: rocksdb::Error) -> StateError {
    if is_no_space(&source) {
        StateError::NoSpace { source }
    } else {
        StateError::Io { source }
    }
}

fn shard_key(shard: u32) -> Vec<u8> {
    let mut k = PREFIX_SHARD.to_vec();
    k.extend_from_slice(&shard.to_be_bytes());
    k
}

/// The block cache, in shards of at least 4 MiB. RocksDB's default cuts it
/// into shards of 512 KiB (32 of 16 MiB), and a sighting segment is one
/// value of up to [`crate::state::segment::SEGMENT_BYTES`], a block of its
/// own: a shard held one at most, so a segment read twice in a row (the
/// alerts of one step of event time point into the same few segments) was
/// read from the file and its checksum computed each time. Reads are a few
/// per thousand requests: a few shards do not contend.
fn block_cache(capacity: usize) -> Cache {
    let mut o = rocksdb::LruCacheOptions::default();
    o.set_capacity(capacity);
    o.set_num_shard_bits(shard_bits(capacity));
    Cache::new_lru_cache_opts(&o)
}

/// log2 of the number of block cache shards: each at least 4 MiB, at most 64.
fn shard_bits(capacity: usize) -> i32 {
    let shards = (capacity >> 22).max(1);
    (usize::BITS - 1 - shards.leading_zeros()).min(6) as i32
}

fn open_db(dir: &Path, o: &RocksOptions, cache: &Cache) -> Result<DB, StateError> {
    let cf_opts = |name: &str| {
        let mut bb = BlockBasedOptions::default();
        bb.set_block_cache(cache);
        bb.set_cache_index_and_filter_blocks(true);
        let mut c = Options::default();
        c.set_block_based_table_factory(&bb);
        if name == CF_SIGHTINGS {
            // A segment is mostly fingerprints and offsets, which LZ4 barely
            // shrinks; most segments expire with the retention window while
            // in the first levels. As TiKV does: no compression in L0 and
            // L1 (flushes and the first compactions, on the commit's path,
            // stop paying for it), LZ4 below, where what outlives the window
            // settles.
            c.set_compression_type(DBCompressionType::Lz4);
            c.set_compression_per_level(&[
                DBCompressionType::None,
                DBCompressionType::None,
                DBCompressionType::Lz4,
                DBCompressionType::Lz4,
                DBCompressionType::Lz4,
                DBCompressionType::Lz4,
                DBCompressionType::Lz4,
            ]);
            // each value is a whole segment; keep memtables few and large
            c.set_write_buffer_size((o.write_buffer_bytes / 2).max(1 << 20));
            c.set_max_write_buffer_number(2);
            c.set_target_file_size_base(64 << 20);
        } else {
            c.set_write_buffer_size((o.write_buffer_bytes / 8).max(1 << 20));
            c.set_max_write_buffer_number(2);
        }
        ColumnFamilyDescriptor::new(name, c)
    };
    let mut opts = Options::default();
    opts.create_if_missing(!o.read_only);
    opts.create_missing_column_families(!o.read_only);
    opts.set_db_write_buffer_size(o.write_buffer_bytes);
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(3);
    opts.set_max_total_wal_size((o.write_buffer_bytes as u64) * 2);
    let cfs: Vec<_> = ALL_CFS.iter().map(|n| cf_opts(n)).collect();
    if o.read_only {
        DB::open_cf_descriptors_read_only(&opts, dir, cfs, false)
    } else {
        DB::open_cf_descriptors(&opts, dir, cfs)
    }
    .map_err(|source| {
        let s = source.as_ref();
        if s.contains("lock") || s.contains("LOCK") {
            StateError::Locked(dir.display().to_string())
        } else if is_no_space(&source) {
            StateError::NoSpace { source }
        } else if o.read_only && (s.contains("CURRENT") || s.contains("does not exist")) {
            StateError::NoState(dir.display().to_string())
        } else {
            StateError::Open {
                dir: dir.display().to_string(),
                source,
            }
        }
    })
}

impl RocksStore {
    pub fn open(dir: &Path, o: &RocksOptions) -> Result<Self, StateError> {
        if !o.read_only {
            std::fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
                dir: dir.display().to_string(),
                source,
            })?;
        }
        let cache = block_cache(o.block_cache_bytes);
        let db = open_db(dir, o, &cache)?;
        let cf = db.cf_handle(CF_META).expect("meta cf");
        let meta = match db.get_cf(cf, KEY_STORE).map_err(io)? {
            Some(b) => serde_json::from_slice::<StoreMeta>(&b)
                .map_err(|e| StateError::Corrupt(format!("store metadata: {e}")))?,
            None if o.read_only => return Err(StateError::NoState(dir.display().to_string())),
            None => {
                let m = StoreMeta {
                    format: FORMAT_VERSION,
                    seed: super::random_seed(),
                };
                let mut w = WriteOptions::default();
                w.set_sync(true);
                db.put_cf_opt(cf, KEY_STORE, serde_json::to_vec(&m).unwrap(), &w)
                    .map_err(io)?;
                m
            }
        };
        if meta.format != FORMAT_VERSION {
            return Err(StateError::Version {
                dir: dir.display().to_string(),
                found: meta.format,
                expected: FORMAT_VERSION,
            });
        }
        Ok(RocksStore {
            db: RwLock::new(Some(db)),
            dir: dir.to_path_buf(),
            meta,
            sync: o.sync,
            options: o.clone(),
            cache,
            deleted_since_reclaim: AtomicU64::new(0),
            needs_reopen: AtomicBool::new(false),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f` with the open database.
    fn with_db<T>(&self, f: impl FnOnce(&DB) -> Result<T, StateError>) -> Result<T, StateError> {
        let g = self.db.read().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            Some(db) => f(db),
            None => Err(StateError::Reopening),
        }
    }

    /// After a failed write RocksDB keeps refusing writes (a background
    /// error); closing and opening it again recovers from its log, once the
    /// cause (e.g. a full disk) is gone.
    fn reopen(&self) -> Result<(), StateError> {
        let mut g = self.db.write().unwrap_or_else(|e| e.into_inner());
        *g = None; // close first: RocksDB holds a lock on the directory
        let db = open_db(&self.dir, &self.options, &self.cache)?;
        *g = Some(db);
        tracing::info!(dir = %self.dir.display(), "state store reopened");
        Ok(())
    }
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column family created at open")
}

/// Most delivered outbox entries removed one by one; beyond this, one
/// range delete. `run` delivers a few alerts at a time, up to hundreds of
/// times a second: point deletes leave nothing for a flush to fragment.
const OUTBOX_POINT_DELETES: u64 = 64;

/// Removes the outbox entries in `r` (consecutive sequence numbers).
fn outbox_delete(b: &mut WriteBatch, outbox: &ColumnFamily, r: std::ops::Range<u64>) {
    if r.end.saturating_sub(r.start) <= OUTBOX_POINT_DELETES {
        for k in r {
            b.delete_cf(outbox, k.to_be_bytes());
        }
    } else {
        b.delete_range_cf(outbox, r.start.to_be_bytes(), r.end.to_be_bytes());
    }
}

/// Drops SST files that lie wholly inside deleted segment ranges, so disk
/// space comes back without waiting for compaction.
///
/// RocksDB's `DeleteFilesInRange` (what the C API calls) includes its end
/// key: a file that ends exactly at `segment_key(shard, below)` would be
/// dropped with the oldest live segment in it. Every key of this column
/// family is a 12-byte segment key, so the last key below the floor is
/// `segment_key(shard, below - 1)`, and that is the end passed here.
fn reclaim(db: &DB, shard: u32, below: u64) {
    let Some(last_dead) = below.checked_sub(1) else {
        return;
    };
    if let Err(e) = db.delete_file_in_range_cf(
        cf(db, CF_SIGHTINGS),
        segment_key(shard, 0),
        segment_key(shard, last_dead),
    ) {
        tracing::warn!(error = %e, "reclaiming deleted sighting segments failed");
    }
}

impl SegmentSource for RocksStore {
    fn with_segment(&self, shard: u32, seq: u64, f: &mut Bytes<'_>) -> Result<bool, StateError> {
        self.with_db(
            |db| match db.get_pinned_cf(cf(db, CF_SIGHTINGS), segment_key(shard, seq)) {
                Ok(Some(v)) => {
                    f(&v);
                    Ok(true)
                }
                Ok(None) => Ok(false),
                Err(e) => Err(io(e)),
            },
        )
    }
}

impl RocksStore {
    /// Visits per-key records of `cf_name` (keys: shard, then key_id).
    fn for_each_keyed(
        &self,
        cf_name: &str,
        shard: Option<u32>,
        f: &mut super::UsageVisitor<'_>,
    ) -> Result<(), StateError> {
        self.with_db(|db| {
            let start = shard.map_or(Vec::new(), |s| s.to_be_bytes().to_vec());
            let it = db.iterator_cf(
                cf(db, cf_name),
                IteratorMode::From(&start, Direction::Forward),
            );
            for kv in it {
                let (k, v) = kv.map_err(io)?;
                if k.len() < 4 {
                    return Err(StateError::Corrupt("usage key".into()));
                }
                let s = u32::from_be_bytes(k[..4].try_into().unwrap());
                if shard.is_some_and(|want| want != s) {
                    break;
                }
                let key = std::str::from_utf8(&k[4..])
                    .map_err(|_| StateError::Corrupt("usage key".into()))?;
                f(s, key, &v)?;
            }
            Ok(())
        })
    }
}

impl StateStore for RocksStore {
    fn meta(&self) -> Result<StoreMeta, StateError> {
        Ok(self.meta.clone())
    }

    fn registry(&self) -> Result<BTreeMap<String, u32>, StateError> {
        self.with_db(|db| {
            let mut out = BTreeMap::new();
            let it = db.iterator_cf(
                cf(db, CF_META),
                IteratorMode::From(PREFIX_REGISTRY, Direction::Forward),
            );
            for kv in it {
                let (k, v) = kv.map_err(io)?;
                let Some(name) = k.strip_prefix(PREFIX_REGISTRY) else {
                    break;
                };
                let id: [u8; 4] = v[..]
                    .try_into()
                    .map_err(|_| StateError::Corrupt("registry entry".into()))?;
                out.insert(
                    String::from_utf8_lossy(name).into_owned(),
                    u32::from_be_bytes(id),
                );
            }
            Ok(out)
        })
    }

    fn value(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.with_db(|db| {
            let mut k = PREFIX_VALUE.to_vec();
            k.extend_from_slice(name.as_bytes());
            db.get_cf(cf(db, CF_META), k).map_err(io)
        })
    }

    fn shard(&self, shard: u32) -> Result<Option<ShardMeta>, StateError> {
        self.with_db(
            |db| match db.get_cf(cf(db, CF_META), shard_key(shard)).map_err(io)? {
                Some(b) => serde_json::from_slice(&b)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt(format!("shard {shard} metadata: {e}"))),
                None => Ok(None),
            },
        )
    }

    fn for_each_segment(
        &self,
        shard: u32,
        f: &mut super::SegmentVisitor<'_>,
    ) -> Result<(), StateError> {
        self.with_db(|db| {
            let start = segment_key(shard, 0);
            let it = db.iterator_cf(
                cf(db, CF_SIGHTINGS),
                IteratorMode::From(&start, Direction::Forward),
            );
            for kv in it {
                let (k, v) = kv.map_err(io)?;
                if k.len() != 12 || k[..4] != shard.to_be_bytes() {
                    break;
                }
                f(u64::from_be_bytes(k[4..].try_into().unwrap()), &v)?;
            }
            Ok(())
        })
    }

    fn lifecycle(&self) -> Result<Vec<LifecycleEvent>, StateError> {
        self.with_db(|db| {
            let mut out = Vec::new();
            for kv in db.iterator_cf(cf(db, CF_LIFECYCLE), IteratorMode::Start) {
                let (_, v) = kv.map_err(io)?;
                out.push(
                    serde_json::from_slice(&v)
                        .map_err(|e| StateError::Corrupt(format!("lifecycle record: {e}")))?,
                );
            }
            Ok(out)
        })
    }

    fn usage_record(&self, shard: u32, key_id: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.with_db(|db| {
            db.get_cf(cf(db, CF_USAGE), super::usage_key(shard, key_id))
                .map_err(io)
        })
    }

    fn for_each_usage(
        &self,
        shard: Option<u32>,
        f: &mut super::UsageVisitor<'_>,
    ) -> Result<(), StateError> {
        self.for_each_keyed(CF_USAGE, shard, f)
    }

    fn for_each_sequence(
        &self,
        shard: u32,
        f: &mut super::UsageVisitor<'_>,
    ) -> Result<(), StateError> {
        self.for_each_keyed(CF_SEQUENCE, Some(shard), f)
    }

    fn outbox(&self) -> Result<Vec<(u64, Vec<u8>)>, StateError> {
        self.with_db(|db| {
            let mut out = Vec::new();
            for kv in db.iterator_cf(cf(db, CF_OUTBOX), IteratorMode::Start) {
                let (k, v) = kv.map_err(io)?;
                let seq: [u8; 8] = k[..]
                    .try_into()
                    .map_err(|_| StateError::Corrupt("outbox key".into()))?;
                out.push((u64::from_be_bytes(seq), v.to_vec()));
            }
            Ok(out)
        })
    }

    fn commit(&self, c: &Commit) -> Result<(), StateError> {
        if self.needs_reopen.load(Ordering::SeqCst) {
            self.reopen()?;
            self.needs_reopen.store(false, Ordering::SeqCst);
        }
        self.with_db(|db| {
            // sized up front: a usage checkpoint makes a batch of tens of MB,
            // which growing by doubling would briefly hold twice
            let mut b = WriteBatch::with_capacity_bytes(c.approx_bytes());
            let meta = cf(db, CF_META);
            for (name, id) in &c.registry {
                let mut k = PREFIX_REGISTRY.to_vec();
                k.extend_from_slice(name.as_bytes());
                b.put_cf(meta, k, id.to_be_bytes());
            }
            for (id, m) in &c.shards {
                b.put_cf(meta, shard_key(*id), serde_json::to_vec(m).unwrap());
            }
            for (name, v) in &c.values {
                let mut k = PREFIX_VALUE.to_vec();
                k.extend_from_slice(name.as_bytes());
                b.put_cf(meta, k, v);
            }
            let sightings = cf(db, CF_SIGHTINGS);
            for (shard, seq, bytes) in &c.segments {
                b.put_cf(sightings, segment_key(*shard, *seq), bytes.as_slice());
            }
            // contiguous runs of deleted segments become one range delete each
            let mut dels = c.segment_deletes.clone();
            dels.sort_unstable();
            let mut i = 0;
            while i < dels.len() {
                let (shard, start) = dels[i];
                let mut end = start;
                while i + 1 < dels.len() && dels[i + 1] == (shard, end + 1) {
                    end += 1;
                    i += 1;
                }
                if end == start {
                    b.delete_cf(sightings, segment_key(shard, start));
                } else {
                    b.delete_range_cf(
                        sightings,
                        segment_key(shard, start),
                        segment_key(shard, end + 1),
                    );
                }
                i += 1;
            }
            let lc = cf(db, CF_LIFECYCLE);
            for ev in &c.lifecycle {
                b.put_cf(lc, lifecycle_key(ev), serde_json::to_vec(ev).unwrap());
            }
            let usage = cf(db, CF_USAGE);
            for shard in &c.usage_reset {
                let end = match shard.checked_add(1) {
                    Some(n) => n.to_be_bytes().to_vec(),
                    None => vec![0xff; 5],
                };
                b.delete_range_cf(usage, shard.to_be_bytes().to_vec(), end);
            }
            for (shard, key, v) in &c.usage {
                b.put_cf(usage, super::usage_key(*shard, key), v);
            }
            let sequence = cf(db, CF_SEQUENCE);
            for shard in &c.usage_reset {
                let end = match shard.checked_add(1) {
                    Some(n) => n.to_be_bytes().to_vec(),
                    None => vec![0xff; 5],
                };
                b.delete_range_cf(sequence, shard.to_be_bytes().to_vec(), end);
            }
            for (shard, key, v) in &c.sequence {
                b.put_cf(sequence, super::usage_key(*shard, key), v);
            }
            let outbox = cf(db, CF_OUTBOX);
            if let Some(r) = &c.outbox_delete {
                outbox_delete(&mut b, outbox, r.clone());
            }
            for (k, v) in &c.outbox_put {
                b.put_cf(outbox, k.to_be_bytes(), v);
            }
            let mut w = WriteOptions::default();
            w.set_sync(self.sync);
            if let Err(e) = db.write_opt(b, &w) {
                self.needs_reopen.store(true, Ordering::SeqCst);
                return Err(io(e));
            }
            let n = self
                .deleted_since_reclaim
                .fetch_add(c.segment_deletes.len() as u64, Ordering::Relaxed);
            if n >= 256 {
                self.deleted_since_reclaim.store(0, Ordering::Relaxed);
                for &(shard, floor) in &c.segment_floors {
                    reclaim(db, shard, floor);
                }
            }
            Ok(())
        })
    }

    fn size_bytes(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| match e.metadata() {
                            Ok(m) if m.is_dir() => walk(&e.path()),
                            Ok(m) => m.len(),
                            Err(_) => 0,
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.dir)
    }
}

#[cfg(test)]
#[path = "rocks_tests.rs"]
mod tests;
