//! The engine under crashes: state and positions commit together, alerts are
//! at-least-once with stable ids, and a restart anywhere changes nothing.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;

use super::engine::Engine;
use crate::config::Config;
use crate::generate::{self, GenConfig};
use crate::schema::Alert;
use crate::sink::{MemAlertSink, MemDeadLetterSink};
use crate::source::{Payload, Record};
use crate::state::{MemStore, RocksStore, StateStore};

fn lines(cfg: &GenConfig) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    generate::generate(cfg, &Config::default().detect.rules(), &mut out, None, None).unwrap();
    out.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.to_vec())
        .collect()
}

fn config() -> Config {
    let mut c = Config::default();
    // tiny cache: evidence lookups go to the store
    c.state.segment_cache = crate::config::ByteSize(0);
    c
}

/// One uninterrupted pass, committing every `batch` records.
fn single_run<S: StateStore>(store: Arc<S>, input: &[Vec<u8>], batch: usize) -> Vec<Alert> {
    let mut e = Engine::open(store, &config()).unwrap();
    let shard = e.open_shard("p0").unwrap();
    let src = e.source_id("in");
    let mut sink = MemAlertSink::default();
    let mut dlq = MemDeadLetterSink::default();
    for (i, l) in input.iter().enumerate() {
        let rec = Record::new(
            crate::detect::Position::new(src, i as u64),
            Payload::Data(l),
        );
        e.process(shard, rec, &mut dlq).unwrap();
        if (i + 1) % batch == 0 {
            e.commit(&mut dlq).unwrap();
            e.deliver(&mut sink).unwrap();
        }
    }
    e.commit(&mut dlq).unwrap();
    e.deliver(&mut sink).unwrap();
    sink.alerts()
}

/// Where a crash happens: after `at` records of a run, before or after the
/// commit that follows, or between commit and delivery.
#[derive(Debug, Clone, Copy)]
enum Crash {
    BeforeCommit,
    AfterCommit,
}

/// Runs with crashes; each restart resumes from the positions in the store.
fn crashing_run(
    input: &[Vec<u8>],
    batch: usize,
    crashes: &[(usize, Crash)],
) -> (Vec<Alert>, usize) {
    let store = Arc::new(MemStore::new(9));
    let mut sink = MemAlertSink::default();
    let mut dlq = MemDeadLetterSink::default();
    let mut crashes = crashes.to_vec();
    crashes.sort_by_key(|c| c.0);
    let mut restarts = 0;
    'restart: loop {
        let mut e = Engine::open(store.clone(), &config()).unwrap();
        // left in the outbox by a crash between commit and delivery
        e.deliver(&mut sink).unwrap();
        let shard = e.open_shard("p0").unwrap();
        let src = e.source_id("in");
        let start = e.positions(shard).get(&src).copied().unwrap_or(0) as usize;
        let mut since_commit = 0;
        for (i, line) in input.iter().enumerate().skip(start) {
            let rec = Record::new(
                crate::detect::Position::new(src, i as u64),
                Payload::Data(line),
            );
            e.process(shard, rec, &mut dlq).unwrap();
            since_commit += 1;
            if let Some(&(at, how)) = crashes.first() {
                if i + 1 >= at {
                    crashes.remove(0);
                    restarts += 1;
                    if let Crash::AfterCommit = how {
                        e.commit(&mut dlq).unwrap();
                    }
                    drop(e); // kill -9: nothing else happens
                    continue 'restart;
                }
            }
            if since_commit == batch {
                since_commit = 0;
                e.commit(&mut dlq).unwrap();
                e.deliver(&mut sink).unwrap();
            }
        }
        e.commit(&mut dlq).unwrap();
        e.deliver(&mut sink).unwrap();
        e.commit(&mut dlq).unwrap();
        assert!(
            store.outbox().unwrap().is_empty(),
            "everything delivered is acknowledged"
        );
        return (sink.alerts(), restarts);
    }
}

fn ids(alerts: &[Alert]) -> BTreeSet<String> {
    alerts.iter().map(|a| a.alert_id.clone()).collect()
}

fn traffic(seed: u64) -> Vec<Vec<u8>> {
    lines(&GenConfig {
        events: 3_000,
        seed,
        rate: 20.0, // 150 s: windows open and close during the run
        replay_rate: 0.05,
        duplicate_rate: 0.03,
        stale_rate: 0.01,
        future_rate: 0.01,
        malformed_rate: 0.01,
        disorder_ms: 45_000,
        keys: 20,
        ..Default::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Crashes anywhere (before or after a commit, before delivery) lose no
    /// alert, invent none, and change no id or content; only repeats appear.
    #[test]
    fn crashes_lose_and_invent_nothing(
        seed in 0u64..1000,
        batch in 1usize..400,
        crashes in prop::collection::vec((1usize..3000, any::<bool>()), 0..6),
    ) {
        let input = traffic(seed);
        let reference = single_run(Arc::new(MemStore::new(1)), &input, 500);
        prop_assert!(!reference.is_empty());
        let crashes: Vec<_> = crashes.into_iter()
            .map(|(at, after)| (at, if after { Crash::AfterCommit } else { Crash::BeforeCommit }))
            .collect();
        let (got, _) = crashing_run(&input, batch, &crashes);
        prop_assert_eq!(ids(&got), ids(&reference));
        // every delivered copy is identical to the reference alert of that id
        let by_id: std::collections::HashMap<_, _> = reference.iter().map(|a| (a.alert_id.clone(), a)).collect();
        for a in &got {
            prop_assert_eq!(&a, &by_id[&a.alert_id]);
        }
    }

    /// Commit frequency does not change what is detected.
    #[test]
    fn batch_size_does_not_matter(seed in 0u64..1000, batch in 1usize..700) {
        let input = traffic(seed);
        let a = single_run(Arc::new(MemStore::new(1)), &input, 700);
        let b = single_run(Arc::new(MemStore::new(2)), &input, batch);
        prop_assert_eq!(a, b);
    }
}

#[test]
fn rocksdb_and_the_in_memory_twin_agree() {
    // 3000 requests over 1000 s of event time: more than two windows
    let input = lines(&GenConfig {
        events: 3_000,
        seed: 77,
        rate: 3.0,
        replay_rate: 0.05,
        duplicate_rate: 0.03,
        disorder_ms: 45_000,
        keys: 20,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let rocks = Arc::new(RocksStore::open(dir.path(), &Default::default()).unwrap());
    let mem = Arc::new(MemStore::new(5));
    let a = single_run(rocks.clone(), &input, 100);
    let b = single_run(mem.clone(), &input, 100);
    assert_eq!(a, b);
    assert!(a.len() > 100);
    // expired segments were deleted: both stores hold the live window only
    // (450 s of 1000 s: about half of the 30 segments written)
    let mut segs = 0;
    rocks
        .for_each_segment(0, &mut |_, _| {
            segs += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(segs, mem.segment_count());
    assert!((10..=18).contains(&segs), "{segs} segments left of 30");
}

#[test]
fn crash_between_commit_and_delivery_redelivers_the_same_alerts() {
    let input = traffic(5);
    let reference = single_run(Arc::new(MemStore::new(1)), &input, 3000);
    let (got, restarts) = crashing_run(&input, 3000, &[(3000, Crash::AfterCommit)]);
    assert_eq!(restarts, 1);
    assert_eq!(got, reference, "delivered once, after the restart");
}
