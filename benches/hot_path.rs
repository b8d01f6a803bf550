//! The hot path, per event: decode, detect, and decode + detect + state
//! commit (in-memory twin and RocksDB). Throughput is in events.
//!
//! `cargo bench --bench hot_path`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use replayguard::config::Config;
use replayguard::decode::Decoder;
use replayguard::detect::{LifecycleTable, Position, ShardDetector, SightingLog, Toggle, VecLog};
use replayguard::generate::{self, GenConfig};
use replayguard::pipeline::Engine;
use replayguard::sink::{MemAlertSink, MemDeadLetterSink};
use replayguard::source::{Payload, Record};
use replayguard::state::{MemStore, RocksStore, SegmentLog, StateStore};

const N: usize = 100_000;

/// What a plain serde_json decoder of access events would borrow: the
/// baseline the fast path is measured against.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct PlainEvent<'a> {
    event_id: &'a str,
    #[serde(borrow)]
    received_at: Ts<'a>,
    key_id: &'a str,
    nonce: Option<&'a str>,
    #[serde(borrow)]
    client_ts: Ts<'a>,
    client_ip: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    user_agent: Option<&'a str>,
    client_id: Option<&'a str>,
    signature: Option<&'a str>,
}

/// A timestamp as it is on the line: a borrowed string or an integer.
#[allow(dead_code)]
enum Ts<'a> {
    Text(&'a str),
    Millis(u64),
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Ts<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Ts<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a timestamp")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Ts<'de>, E> {
                Ok(Ts::Text(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Ts<'de>, E> {
                Ok(Ts::Millis(v))
            }
        }
        d.deserialize_any(V)
    }
}

fn traffic() -> Vec<Vec<u8>> {
    traffic_with(generate::NonceStyle::Random)
}

fn traffic_with(nonces: generate::NonceStyle) -> Vec<Vec<u8>> {
    generate::sample_lines(&GenConfig {
        events: N as u64,
        rate: 5_000.0,
        nonces,
        out_of_sequence_rate: 0.001,
        ..Default::default()
    })
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

/// Every decoded event through one detector and sighting log; alerts raised.
fn detect_all<L: SightingLog>(
    (mut det, mut log, mut out): (ShardDetector, L, Vec<replayguard::schema::Alert>),
    decoded: &[replayguard::schema::AccessEvent<'_>],
    lc: &LifecycleTable,
) -> usize {
    for (i, ev) in decoded.iter().enumerate() {
        det.process(ev, Position::new(0, i as u64), lc, &mut log, &mut out)
            .unwrap();
    }
    out.len()
}

/// [`detect_all`] as the engine's workers drive a detector: each request
/// prepared (fingerprints, index slots into cache) three requests before
/// it is processed.
fn detect_all_prepared<L: SightingLog>(
    (mut det, mut log, mut out): (ShardDetector, L, Vec<replayguard::schema::Alert>),
    decoded: &[replayguard::schema::AccessEvent<'_>],
    lc: &LifecycleTable,
) -> usize {
    const AHEAD: usize = 3;
    let mut ring = [None; AHEAD + 1];
    for (i, ev) in decoded.iter().enumerate().take(AHEAD) {
        ring[i] = Some(det.prepare(ev));
    }
    for (i, ev) in decoded.iter().enumerate() {
        if let Some(ahead) = decoded.get(i + AHEAD) {
            ring[(i + AHEAD) % (AHEAD + 1)] = Some(det.prepare(ahead));
        }
        let p = ring[i % (AHEAD + 1)].take();
        det.process_prepared(
            ev,
            p,
            Position::new(0, i as u64),
            lc,
            &mut log,
            &mut out,
            replayguard::detect::UsageMode::Normal,
        )
        .unwrap();
    }
    out.len()
}

fn run_engine<S: StateStore>(store: Arc<S>, lines: &[Vec<u8>]) -> usize {
    let config = Config::default();
    let mut e = Engine::open(store, &config).unwrap();
    let shard = e.open_shard("bench").unwrap();
    let src = e.source_id("bench");
    let mut sink = MemAlertSink::default();
    let mut dlq = MemDeadLetterSink::default();
    for (i, l) in lines.iter().enumerate() {
        e.process(
            shard,
            Record::new(Position::new(src, i as u64), Payload::Data(l)),
            &mut dlq,
        )
        .unwrap();
        if (i + 1) % 65_536 == 0 {
            e.commit(&mut dlq).unwrap();
            e.deliver(&mut sink).unwrap();
        }
    }
    e.commit(&mut dlq).unwrap();
    e.deliver(&mut sink).unwrap();
    sink.delivered.len()
}

fn benches(c: &mut Criterion) {
    let lines = traffic();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    eprintln!(
        "{} events, {:.0} bytes each on average",
        lines.len(),
        bytes as f64 / lines.len() as f64
    );
    let decoder = Decoder::default();

    let mut g = c.benchmark_group("per_event");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.sample_size(10);

    g.bench_function("decode", |b| {
        b.iter(|| {
            for l in &lines {
                black_box(decoder.access(l).unwrap());
            }
        })
    });

    // the same requests as Kong's log serializer writes them (about twice
    // as long), through the kong preset
    let kong: Vec<Vec<u8>> = lines
        .iter()
        .map(|l| generate::kong_line(std::str::from_utf8(l).unwrap()).into_bytes())
        .collect();
    let kong_bytes: usize = kong.iter().map(|l| l.len()).sum();
    eprintln!(
        "kong: {:.0} bytes each on average",
        kong_bytes as f64 / kong.len() as f64
    );
    let kong_decoder = Decoder::new(
        &replayguard::decode::DecodeConfig::default(),
        &replayguard::decode::InputConfig {
            format: replayguard::decode::Format::Kong,
            ..Default::default()
        },
    )
    .unwrap();
    g.bench_function("decode_kong", |b| {
        b.iter(|| {
            for l in &kong {
                black_box(kong_decoder.access(l).unwrap());
            }
        })
    });

    g.bench_function("decode_serde_json_only", |b| {
        b.iter(|| {
            for l in &lines {
                let t = std::str::from_utf8(l).unwrap();
                black_box(serde_json::from_str::<PlainEvent<'_>>(t).unwrap());
            }
        })
    });

    g.bench_function("decode_slow_path", |b| {
        b.iter(|| {
            for l in &lines {
                let t = std::str::from_utf8(l).unwrap();
                black_box(replayguard::decode::slow_path(t).unwrap());
            }
        })
    });

    let decoded: Vec<_> = lines.iter().map(|l| decoder.access(l).unwrap()).collect();
    // every rule on: signature replays (the default) and sequence numbers
    let mut rules = Config::default().detect;
    rules.sequence = Toggle::On;
    let lc = LifecycleTable::default();
    g.bench_function("detect", |b| {
        b.iter_batched(
            || (ShardDetector::new(rules, 1), VecLog::default(), Vec::new()),
            |s| detect_all(s, &decoded, &lc),
            BatchSize::LargeInput,
        )
    });

    // nonces that are counters, where the sequence rule has work to do:
    // its cost is the ratio of these two
    let counter_lines = traffic_with(generate::NonceStyle::Counter);
    let counters: Vec<_> = counter_lines
        .iter()
        .map(|l| decoder.access(l).unwrap())
        .collect();
    for (name, toggle) in [
        ("detect_counter_nonces_sequence_off", Toggle::Off),
        ("detect_counter_nonces_sequence_on", Toggle::On),
    ] {
        let mut r = rules;
        r.sequence = toggle;
        g.bench_function(name, |b| {
            b.iter_batched(
                || (ShardDetector::new(r, 1), VecLog::default(), Vec::new()),
                |s| detect_all(s, &counters, &lc),
                BatchSize::LargeInput,
            )
        });
    }

    // a fresh detector over the segment log, on an in-memory store
    let segment_detector = || {
        let store = Arc::new(MemStore::new(1));
        (
            ShardDetector::new(rules, 1),
            SegmentLog::new(0, store, 0, Default::default()),
            Vec::new(),
        )
    };
    g.bench_function("detect_segment_log", |b| {
        b.iter_batched(
            segment_detector,
            |s| detect_all(s, &decoded, &lc),
            BatchSize::LargeInput,
        )
    });

    g.bench_function("detect_segment_log_prepared", |b| {
        b.iter_batched(
            segment_detector,
            |s| detect_all_prepared(s, &decoded, &lc),
            BatchSize::LargeInput,
        )
    });

    g.bench_function("decode_detect_commit_memstore", |b| {
        b.iter(|| run_engine(Arc::new(MemStore::new(1)), &lines))
    });

    g.bench_function("decode_detect_commit_rocksdb", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = Arc::new(RocksStore::open(dir.path(), &Default::default()).unwrap());
                (dir, store)
            },
            |(dir, store)| {
                let n = run_engine(store, &lines);
                drop(dir);
                n
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
