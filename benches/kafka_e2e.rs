//! End to end against Apache Kafka (started by scripts/kafka.sh on this
//! machine, sharing its cores), in one run on the same broker and topic:
//! 1. throughput of consume-only clients (rdkafka, and kcat when installed):
//!    the ceiling;
//! 2. throughput of `replayguard run` (records until the group's committed
//!    offsets reach the end of the topic), with the CPU the detector and
//!    the broker used meanwhile;
//! 3. latency from producing a replayed request to its alert appearing on
//!    the alert topic, at half of `run`'s measured rate and at 20 000
//!    requests/s: p50 and p99.
//!
//! `scripts/bench-kafka.sh` builds release binaries and runs this; options:
//! `--events N` (default 1000000), `--brokers HOST:PORT` (default: start
//! Apache Kafka), `--latency-rates R,R` (records/s of the latency phases;
//! default half of run's rate, 100000 when that is below it, and 20000: a
//! phase with headroom between the two targets shows stalls that are not
//! the machine being full), `--skip-latency`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use replayguard::generate::{self, GenConfig};
use replayguard_testkit::kafka::{produce, Broker, Detector};
use replayguard_testkit::Dir;

const PARTITIONS: i32 = 4;
/// fetch.wait.max.ms of the latency reader (Kafka answers a fetch as soon
/// as data is there; this bounds the wait when there is none).
const FETCH_WAIT_MS: u64 = 50;

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1).cloned())
}

fn lines(n: u64, seed: u64) -> Vec<String> {
    generate::sample_lines(&GenConfig {
        events: n,
        seed,
        rate: 5_000.0,
        ..Default::default()
    })
}

fn keyed(lines: &[String]) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    lines
        .iter()
        .map(|l| {
            let k = serde_json::from_str::<serde_json::Value>(l).unwrap()["key_id"]
                .as_str()
                .unwrap()
                .as_bytes()
                .to_vec();
            (Some(k), l.as_bytes().to_vec())
        })
        .collect()
}

/// Consume-only: a fresh group reads the topic; seconds from the first to
/// the last record, and what the machine and the broker did in them.
fn consume_only(addr: &str, topic: &str, n: usize, broker: Option<&Broker>) -> (f64, String) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", "bench-consume-only")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "2000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut got = 0usize;
    let mut first = None;
    let mut at_first = None;
    let mut bytes = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    while got < n && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            if first.is_none() {
                first = Some(Instant::now());
                at_first = Some((MachineCpu::now(), broker.map_or(0, |b| b.disk_read_bytes())));
            }
            bytes += m.payload().map_or(0, |p| p.len());
            got += 1;
        }
    }
    std::hint::black_box(bytes);
    assert_eq!(got, n, "consume-only read everything");
    let secs = first.unwrap().elapsed().as_secs_f64();
    let (machine, disk) = at_first.unwrap();
    let seen = format!(
        "{}; broker read {:.1} MB from disk",
        machine.since(secs),
        broker
            .map_or(0, |b| b.disk_read_bytes())
            .saturating_sub(disk) as f64
            / 1e6
    );
    (secs, seen)
}

fn main() {
    if std::env::args().any(|a| a == "--bench")
        && arg("--events").is_none()
        && std::env::var("RG_BENCH_KAFKA").is_err()
    {
        // `cargo bench` runs every bench target: this one needs a broker and minutes; opt in
        eprintln!("kafka_e2e: skipped under `cargo bench`; run scripts/bench-kafka.sh (or set RG_BENCH_KAFKA=1)");
        return;
    }
    let n: usize = arg("--events").map_or(1_000_000, |v| v.parse().unwrap());
    let dir = Dir::new();
    let broker = if arg("--brokers").is_none() {
        Some(Broker::start(&dir))
    } else {
        None
    };
    let addr = arg("--brokers").unwrap_or_else(|| broker.as_ref().unwrap().addr());
    if let Some(b) = &broker {
        b.create_topic("bench-in", PARTITIONS);
        // the latency phase runs on a topic of its own: a broker's fetch
        // latency can grow with the log behind it (Tansu's in-memory log does)
        b.create_topic("bench-lat", PARTITIONS);
        b.create_topic("key-lifecycle", 1);
    }
    eprintln!("generating and producing {n} events to {addr}");
    let data = lines(n as u64, 3);
    let bytes: usize = data.iter().map(|l| l.len()).sum();
    let t = Instant::now();
    let ends = produce(&addr, "bench-in", &keyed(&data));
    eprintln!("produced in {:.1}s", t.elapsed().as_secs_f64());
    drop(data);

    let cpu = (cpu_self(), broker.as_ref().map_or(0.0, |b| b.cpu_secs()));
    let (secs, seen) = consume_only(&addr, "bench-in", n, broker.as_ref());
    eprintln!("consume-only: {seen}");
    let ceiling = n as f64 / secs;
    let consume_cores = (cpu_self() - cpu.0) / secs;
    let consume_broker = broker.as_ref().map_or(0.0, |b| b.cpu_secs() - cpu.1) / secs;
    eprintln!("consume-only (rdkafka): {ceiling:.0} records/s ({consume_cores:.2} cores, broker {consume_broker:.2} cores)");
    let kcat = kcat_consume_only(&addr, "bench-in", n);
    if let Some(k) = kcat {
        eprintln!("consume-only (kcat): {k:.0} records/s");
    }

    let cfg = dir.write(
        "run.toml",
        &format!(
            r#"
[kafka]
brokers = "{addr}"
group = "bench-run"
input_topics = ["bench-in", "bench-lat"]
lifecycle_topic = "key-lifecycle"
start = "earliest"
[kafka.consumer_properties]
"session.timeout.ms" = "2000"
"heartbeat.interval.ms" = "500"
{extra}
[state]
dir = "{state}"
"#,
            state = dir.path("state").display(),
            extra = std::env::var("RG_BENCH_CONSUMER").unwrap_or_default(),
        ),
    );
    let det = Detector::start(&dir, "run", &cfg);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !det.get("/readyz").is_some_and(|r| r.starts_with("ready")) {
        assert!(
            Instant::now() < deadline,
            "detector not ready:\n{}",
            det.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    let cpu0 = (
        det.cpu_secs(),
        broker.as_ref().map_or(0.0, |b| b.cpu_secs()),
    );
    let machine = MachineCpu::now();
    let disk = broker.as_ref().map_or(0, |b| b.disk_read_bytes());
    let sums = pipeline_sums(&det);
    // processed: every record committed to the state store with its alerts
    // (the detector's own count, read over HTTP every 10 ms: a cheap probe
    // that takes no CPU from what it measures)
    loop {
        let events = det
            .get("/v1/status")
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["events"].as_u64())
            .unwrap_or(0);
        if events >= n as u64 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "run did not catch up:\n{}",
            det.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let run_secs = t0.elapsed().as_secs_f64();
    let det_cores = (det.cpu_secs() - cpu0.0) / run_secs;
    let broker_cores = broker.as_ref().map_or(0.0, |b| b.cpu_secs() - cpu0.1) / run_secs;
    eprintln!(
        "run: {}",
        pipeline_delta(&sums, &pipeline_sums(&det), run_secs)
    );
    eprintln!(
        "run: {}; broker read {:.1} MB from disk",
        machine.since(run_secs),
        broker
            .as_ref()
            .map_or(0, |b| b.disk_read_bytes())
            .saturating_sub(disk) as f64
            / 1e6
    );
    // then the group's committed offsets at the end of the topic (one
    // client, asked every 50 ms)
    let total: i64 = ends.values().sum();
    let offsets = CommittedOffsets::new(&addr, "bench-run", "bench-in", PARTITIONS);
    while offsets.sum() < total {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "the group offsets did not reach the end:\n{}",
            det.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let group_secs = t0.elapsed().as_secs_f64();
    let run_rate = n as f64 / run_secs;
    eprintln!(
        "replayguard run: {run_rate:.0} records/s (detector {det_cores:.2} cores, broker {broker_cores:.2} cores); group offsets at the end after {group_secs:.2} s"
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| events | {n} ({} bytes each on average), {PARTITIONS} partitions |",
        bytes / n
    );
    println!("| consume-only rdkafka client | {ceiling:.0} records/s (client {consume_cores:.2} cores, broker {consume_broker:.2} cores) |");
    if let Some(k) = kcat {
        println!("| consume-only kcat | {k:.0} records/s |");
    }
    println!(
        "| replayguard run (detect + commit state + produce alerts) | {run_rate:.0} records/s |"
    );
    println!(
        "| group offsets at the end of the topic | {group_secs:.2} s after the start ({:.0} records/s) |",
        n as f64 / group_secs
    );
    println!(
        "| ratio run / consume-only rdkafka | {:.0} % |",
        100.0 * run_rate / ceiling
    );
    println!(
        "| CPU during the run phase (2 cores) | detector {det_cores:.2} cores, broker {broker_cores:.2} cores |"
    );
    if std::env::args().any(|a| a == "--skip-latency") {
        drop(det);
        return;
    }
    let rates: Vec<f64> = match arg("--latency-rates") {
        Some(v) => v.split(',').map(|r| r.parse().unwrap()).collect(),
        None => {
            let half = (run_rate / 2.0).round();
            let mut v = vec![half];
            if half > 100_000.0 {
                v.push(100_000.0);
            }
            v.push(20_000.0);
            v
        }
    };
    for (phase, rate) in rates.into_iter().enumerate() {
        let cpu = (
            det.cpu_secs(),
            broker.as_ref().map_or(0.0, |b| b.cpu_secs()),
            cpu_self(),
            Instant::now(),
        );
        let (lat, replays) = latency(&addr, rate, phase, &det);
        let secs = cpu.3.elapsed().as_secs_f64();
        let pct =
            |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
        println!(
            "| replay → alert latency at {rate:.0} requests/s ({replays} replays) | p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; CPU: detector {:.2}, broker {:.2}, load generator and subscriber {:.2} cores |",
            pct(0.50),
            pct(0.99),
            lat.last().unwrap().as_secs_f64() * 1e3,
            (det.cpu_secs() - cpu.0) / secs,
            broker.as_ref().map_or(0.0, |b| b.cpu_secs() - cpu.1) / secs,
            (cpu_self() - cpu.2) / secs,
        );
    }
    // what the detector says about its pipeline (stages, commits, delivery)
    if let Some(m) = det.get("/metrics") {
        for l in m.lines().filter(|l| {
            !l.starts_with('#')
                && (l.contains("_sum") || l.contains("_count") || l.contains("queue_depth"))
                && (l.contains("stage_busy")
                    || l.contains("commit_")
                    || l.contains("alert_delivery")
                    || l.contains("queue_depth"))
        }) {
            eprintln!("detector metric: {l}");
        }
    }
    let status = det.stop();
    assert!(status.success());
}

/// CPU seconds this process has used (the consume-only client runs in it).
fn cpu_self() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // utime and stime are fields 14 and 15 (11 and 12 after the name)
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

/// The whole machine's CPU time by kind, from the first line of /proc/stat
/// (USER_HZ ticks): what the processes measured leave to others, to the
/// disk and to the host.
#[derive(Clone, Copy)]
struct MachineCpu {
    busy: f64,
    idle: f64,
    iowait: f64,
    steal: f64,
}

impl MachineCpu {
    fn now() -> MachineCpu {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        let at = |i: usize| f.get(i).copied().unwrap_or(0.0) / 100.0;
        // user nice system idle iowait irq softirq steal
        MachineCpu {
            busy: at(0) + at(1) + at(2) + at(5) + at(6),
            idle: at(3),
            iowait: at(4),
            steal: at(7),
        }
    }

    /// Cores busy, idle, waiting on the disk and taken by the host since `self`.
    fn since(self, secs: f64) -> String {
        let n = MachineCpu::now();
        format!(
            "machine: busy {:.2}, idle {:.2}, iowait {:.2}, steal {:.2} cores",
            (n.busy - self.busy) / secs,
            (n.idle - self.idle) / secs,
            (n.iowait - self.iowait) / secs,
            (n.steal - self.steal) / secs,
        )
    }
}

/// The detector's per-stage busy seconds, commit seconds and commit batch
/// sizes so far, from /metrics (sums and counts of its histograms).
fn pipeline_sums(det: &Detector) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let Some(m) = det.get("/metrics") else {
        return out;
    };
    for l in m.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, v)) = l.rsplit_once(' ') else {
            continue;
        };
        let keep = name.starts_with("replayguard_stage_busy_seconds_sum")
            || name.starts_with("replayguard_commit_seconds_")
            || name.starts_with("replayguard_commit_batch_events_");
        if let (true, Ok(v)) = (keep, v.parse::<f64>()) {
            out.insert(name.to_string(), v);
        }
    }
    out
}

/// What the pipeline's stages did between two [`pipeline_sums`], over `secs`.
fn pipeline_delta(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    secs: f64,
) -> String {
    let d = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let mut stages: Vec<String> = after
        .keys()
        .filter_map(|k| {
            k.strip_prefix("replayguard_stage_busy_seconds_sum{stage=\"")
                .and_then(|r| r.strip_suffix("\"}"))
                .map(|stage| format!("{stage} {:.2}", d(k) / secs))
        })
        .collect();
    stages.sort();
    let commits = d("replayguard_commit_seconds_count");
    format!(
        "stages busy (cores): {}; commits {:.0}/s, {:.2} ms each, {:.0} events a batch",
        stages.join(", "),
        commits / secs,
        d("replayguard_commit_seconds_sum") / commits.max(1.0) * 1e3,
        d("replayguard_commit_batch_events_sum")
            / d("replayguard_commit_batch_events_count").max(1.0),
    )
}

/// A group's committed offsets, asked with one client.
struct CommittedOffsets {
    consumer: BaseConsumer,
    tpl: TopicPartitionList,
}

impl CommittedOffsets {
    fn new(addr: &str, group: &str, topic: &str, n: i32) -> Self {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", addr)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..n {
            tpl.add_partition(topic, p);
        }
        CommittedOffsets { consumer, tpl }
    }

    fn sum(&self) -> i64 {
        self.consumer
            .committed_offsets(self.tpl.clone(), Duration::from_secs(10))
            .map(|got| {
                got.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// kcat reading the topic to its end: records/s, when kcat is installed.
fn kcat_consume_only(addr: &str, topic: &str, n: usize) -> Option<f64> {
    let t = Instant::now();
    let out = std::process::Command::new("kcat")
        .args([
            "-b",
            addr,
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%o\n",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let secs = t.elapsed().as_secs_f64();
    let got = out.stdout.iter().filter(|b| **b == b'\n').count();
    if got != n {
        eprintln!("kcat read {got} of {n} records");
        return None;
    }
    Some(n as f64 / secs)
}

/// Produces `rate` requests/s for 5 s of warm-up (not measured: a fresh
/// producer, and the broker's JIT on a path it has not run yet) then 15 s,
/// every 100th a replay of a request about 50 ms before it, and measures
/// produce -> alert consumed over the 15 s.
fn latency(addr: &str, rate: f64, phase: usize, det: &Detector) -> (Vec<Duration>, usize) {
    let warm = (rate * 5.0) as usize;
    let count = warm + (rate * 15.0) as usize;
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let seen_ids: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let hops: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
    // RG_BENCH_RAW: the broker alone (produced to bench-lat, read back from
    // it), no detector in between: the floor of one hop
    let raw = std::env::var("RG_BENCH_RAW").is_ok();
    let reader = {
        let (addr, sent, seen, stop) = (addr.to_string(), sent.clone(), seen.clone(), stop.clone());
        let seen_ids = seen_ids.clone();
        let hops = hops.clone();
        std::thread::spawn(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &addr)
                .set("group.id", "bench-latency-reader")
                .set("fetch.wait.max.ms", FETCH_WAIT_MS.to_string())
                .create()
                .unwrap();
            let topic = if raw {
                "bench-lat"
            } else {
                "replayguard-alerts"
            };
            let md = c
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .unwrap();
            let parts = md.topics()[0].partitions().len() as i32;
            let mut tpl = TopicPartitionList::new();
            for p in 0..parts {
                tpl.add_partition_offset(topic, p, Offset::Beginning)
                    .unwrap();
            }
            c.assign(&tpl).unwrap();
            // older alerts have other event ids: the `sent` map filters them out
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(5)) {
                    let now = Instant::now();
                    let v: serde_json::Value =
                        serde_json::from_slice(m.payload().unwrap()).unwrap();
                    if raw || v["kind"] == "replay" {
                        let id = v["event_id"].as_str().unwrap();
                        if let Some(t) = sent.lock().unwrap().get(id) {
                            seen.lock().unwrap().push(now - *t);
                            seen_ids.lock().unwrap().insert(id.to_string());
                            // the two hops: produced -> alert produced by the
                            // detector (the alert's CreateTime), -> read here
                            let wall = |d: Duration| {
                                std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .unwrap()
                                    .as_millis() as i64
                                    - d.as_millis() as i64
                            };
                            if let Some(alert_ts) = m.timestamp().to_millis() {
                                let sent_wall = wall(now - *t);
                                let got_wall = wall(Duration::ZERO);
                                hops.lock()
                                    .unwrap()
                                    .push((alert_ts - sent_wall, got_wall - alert_ts));
                                if std::env::var("RG_BENCH_TRACE").is_ok() {
                                    eprintln!("trace {id} sent {sent_wall} alert {alert_ts} read {got_wall}");
                                }
                            }
                        }
                    }
                }
            }
        })
    };
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        // librdkafka's default (what a gateway's Kafka logger batches with):
        // at 20 000 requests/s, linger.ms = 0 sends ~20 000 produce requests
        // a second, which this machine's broker answers with p99 ~1 s
        // before any detector is involved (RG_BENCH_RAW=1 RG_BENCH_LINGER=0)
        .set(
            "linger.ms",
            std::env::var("RG_BENCH_LINGER").unwrap_or("5".into()),
        )
        .create()
        .unwrap();
    let t_start = Instant::now();
    // after the bulk data, and an hour apart per phase
    let base = 1_795_824_000_000i64 + 3_600_000 * (1 + phase as i64);
    let mut replays = 0;
    for i in 0..count {
        // paced in 1 ms steps: sleeping, not spinning, leaves the cores to the detector and the broker
        let due = t_start + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now {
            p.poll(Duration::ZERO);
            std::thread::sleep((due - now).max(Duration::from_millis(1)));
        }
        let t = base + (i as f64 * 1000.0 / rate) as i64;
        // every 100th request replays the request sent about 50 ms before it
        let (id, key, nonce) = if i % 100 == 99 {
            if i >= warm {
                replays += 1;
            }
            let mut j = i.saturating_sub(((rate * 0.05) as usize).max(1));
            if j % 100 == 99 {
                j -= 1;
            }
            (
                format!("lat{phase}-r{i}"),
                format!("lat-key-{}", j % 64),
                format!("lat{phase}-n{j}"),
            )
        } else {
            (
                format!("lat{phase}-e{i}"),
                format!("lat-key-{}", i % 64),
                format!("lat{phase}-n{i}"),
            )
        };
        let line = format!(
            r#"{{"event_id":"{id}","received_at":{t},"key_id":"{key}","nonce":"{nonce}","client_ts":{t},"client_ip":"10.9.0.1","method":"POST","path":"/api/v3/order","status":200}}"#
        );
        if id.contains("-r") && i >= warm {
            sent.lock().unwrap().insert(id.clone(), Instant::now());
        }
        let mut r = BaseRecord::<str, str, ()>::to(if raw { "bench-lat" } else { "bench-in" })
            .key(&key)
            .payload(&line);
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    p.poll(Duration::from_millis(1));
                }
            }
        }
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < replays && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let mut lat = seen.lock().unwrap().clone();
    lat.sort();
    {
        let h = hops.lock().unwrap();
        let mut a: Vec<i64> = h.iter().map(|x| x.0).collect();
        let mut b: Vec<i64> = h.iter().map(|x| x.1).collect();
        a.sort();
        b.sort();
        if !a.is_empty() {
            let q = |v: &[i64], f: f64| v[((v.len() as f64 * f) as usize).min(v.len() - 1)];
            eprintln!(
                "latency hops at {rate:.0}/s (ms, wall clock): request -> alert produced p50 {} p99 {}; alert produced -> read p50 {} p99 {}",
                q(&a, 0.5), q(&a, 0.99), q(&b, 0.5), q(&b, 0.99)
            );
        }
    }
    if lat.len() != replays {
        let got = seen_ids.lock().unwrap();
        let mut missing: Vec<String> = sent
            .lock()
            .unwrap()
            .keys()
            .filter(|k| !got.contains(*k))
            .cloned()
            .collect();
        missing.sort();
        panic!(
            "{} of {replays} planted replays alerted; missing e.g. {:?}\n{}",
            lat.len(),
            &missing[..missing.len().min(10)],
            det.log_text()
        );
    }
    (lat, replays)
}
