use std::sync::Arc;

use super::*;
use crate::state::StateStore;

fn store(dir: &Path) -> RocksStore {
    RocksStore::open(dir, &RocksOptions::default()).unwrap()
}

fn segments(s: &RocksStore, shard: u32) -> Vec<u64> {
    let mut v = Vec::new();
    s.for_each_segment(shard, &mut |q, _| {
        v.push(q);
        Ok(())
    })
    .unwrap();
    v
}

/// A storage file that ends exactly at the oldest live segment keeps it:
/// reclaiming drops only files wholly below the floor.
#[test]
fn reclaim_never_drops_the_file_holding_the_floor_segment() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let put = |range: std::ops::Range<u64>| Commit {
        segments: range
            .map(|q| (0u32, q, Arc::new(vec![q as u8; 100])))
            .collect(),
        ..Default::default()
    };
    // one file holding segments 0..=5 of shard 0 (it ends at key (0, 5)),
    // compacted out of level 0 (DeleteFilesInRange leaves L0 files alone)
    s.commit(&put(0..6)).unwrap();
    s.with_db(|db| {
        db.flush_cf(cf(db, CF_SIGHTINGS)).map_err(io)?;
        db.compact_range_cf(
            cf(db, CF_SIGHTINGS),
            Some(segment_key(0, 0)),
            Some(segment_key(0, 5)),
        );
        Ok(())
    })
    .unwrap();
    let file_of_0_to_5 = |s: &RocksStore| {
        s.with_db(|db| db.live_files().map_err(io))
            .unwrap()
            .into_iter()
            .any(|f| {
                f.column_family_name == CF_SIGHTINGS
                    && f.level > 0
                    && f.start_key.as_deref() == Some(&segment_key(0, 0)[..])
                    && f.end_key.as_deref() == Some(&segment_key(0, 5)[..])
            })
    };
    assert!(file_of_0_to_5(&s), "the test needs a file ending at (0, 5)");
    // and another holding segments 6..=8 and one of shard 1
    let mut c = put(6..9);
    c.segments.push((1, 0, Arc::new(vec![1; 100])));
    s.commit(&c).unwrap();
    s.with_db(|db| db.flush_cf(cf(db, CF_SIGHTINGS)).map_err(io))
        .unwrap();
    // the segments below `floor` are deleted, then files are reclaimed
    let expire_below = |floor: u64, from: u64| {
        s.commit(&Commit {
            segment_deletes: (from..floor).map(|q| (0, q)).collect(),
            segment_floors: vec![(0, floor)],
            ..Default::default()
        })
        .unwrap();
        s.with_db(|db| {
            reclaim(db, 0, floor);
            Ok(())
        })
        .unwrap();
    };
    // segments 0..5 expire: the floor is 5, which is still live
    expire_below(5, 0);
    assert!(
        file_of_0_to_5(&s),
        "the file holding the live segment 5 is kept"
    );
    assert_eq!(segments(&s, 0), vec![5, 6, 7, 8]);
    let mut got = Vec::new();
    assert!(s.with_segment(0, 5, &mut |b| got = b.to_vec()).unwrap());
    assert_eq!(got, vec![5u8; 100]);
    assert_eq!(segments(&s, 1), vec![0]);
    // with every segment of the first file dead, the file goes
    expire_below(6, 5);
    assert_eq!(segments(&s, 0), vec![6, 7, 8]);
    assert!(
        !file_of_0_to_5(&s),
        "the file of segments 0..=5 was dropped"
    );
}

#[test]
fn block_cache_shards_hold_several_segments() {
    // every shard at least 4 MiB (four whole segments), at most 64 shards
    let mib = 1usize << 20;
    for (capacity, bits) in [
        (1, 0),
        (mib, 0),
        (4 * mib - 1, 0),
        (4 * mib, 0),
        (8 * mib, 1),
        (16 * mib, 2),
        (24 * mib, 2),
        (32 * mib, 3),
        (256 * mib, 6),
        (64 * 1024 * mib, 6),
    ] {
        assert_eq!(shard_bits(capacity), bits, "{capacity}");
        assert!(
            capacity >> bits >= (4 * mib).min(capacity) >> 1,
            "{capacity}"
        );
    }
    assert!(crate::state::segment::SEGMENT_BYTES * 4 <= 4 * mib);
}

/// Delivered alerts leave the outbox one key at a time when they are few
/// (what `run` delivers after each commit) and by one range delete when
/// they are many; what was not delivered stays, across a reopen.
#[test]
fn delivered_outbox_entries_leave_by_key_or_by_range() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.commit(&Commit {
        outbox_put: (0..300u64).map(|k| (k, vec![k as u8])).collect(),
        ..Default::default()
    })
    .unwrap();
    for r in [0..1, 1..3, 3..3 + OUTBOX_POINT_DELETES, 67..200, 200..201] {
        s.commit(&Commit {
            outbox_delete: Some(r),
            ..Default::default()
        })
        .unwrap();
    }
    let keys = |s: &RocksStore| {
        s.outbox()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&s), (201..300).collect::<Vec<_>>());
    drop(s);
    let s = store(dir.path());
    assert_eq!(keys(&s), (201..300).collect::<Vec<_>>());
    // and in the in-memory twin
    let m = crate::state::MemStore::new(1);
    m.commit(&Commit {
        outbox_put: (0..10u64).map(|k| (k, vec![1])).collect(),
        ..Default::default()
    })
    .unwrap();
    m.commit(&Commit {
        outbox_delete: Some(2..5),
        ..Default::default()
    })
    .unwrap();
    let got: Vec<u64> = m.outbox().unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(got, vec![0, 1, 5, 6, 7, 8, 9]);
}
