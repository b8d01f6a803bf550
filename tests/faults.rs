//! The fault harness: `replayguard run` under kill -9, partition moves,
//! a broker restart, a group reset, hostile records and a full disk, checked
//! by a verifier against the generator's ground truth. Pass = 0 missed,
//! 0 unexpected, 0 repeated alert_id, committed offsets = log end.
//! RELIABILITY.md records the figures.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use replayguard::decode::Decoder;
use replayguard::generate::{GenConfig, Rng};
use replayguard::schema::LifecycleEvent;
use replayguard_testkit::kafka::*;
use replayguard_testkit::verify::{verify, Expected, Verdict};

use crate::util::*;

const GROUP: &str = "rg-faults";

fn expected(lines: &[String], lifecycle: &[LifecycleEvent]) -> Vec<Expected> {
    model_expected(lines, lifecycle)
}

/// Traffic without usage anomalies (no bursts of 401/403): every alert is in the ground truth.
fn harness_gen(events: u64, seed: u64) -> GenConfig {
    GenConfig {
        events,
        seed,
        rate: 2_000.0,
        replay_rate: 0.03,
        duplicate_rate: 0.005,
        malformed_rate: 0.001,
        disorder_ms: 20_000,
        auth_fail_rate: 0.0,
        ..Default::default()
    }
}

/// A broker, harness traffic with its lifecycle on the topic, the truth and
/// (unless `produce_events` is false) the events on the access topic with
/// the log end of every partition.
fn harness(
    events: u64,
    seed: u64,
    produce_events: bool,
) -> (Dir, Broker, Traffic, Vec<Expected>, BTreeMap<i32, i64>) {
    let (d, b, t, lc) = broker_with_traffic(&harness_gen(events, seed));
    let truth = expected(&t.lines, &lc);
    let ends = if produce_events {
        produce(&b.addr(), "access-events", &keyed(&t.lines))
    } else {
        BTreeMap::new()
    };
    (d, b, t, truth, ends)
}

fn merge(a: &mut BTreeMap<i32, i64>, b: BTreeMap<i32, i64>) {
    for (p, o) in b {
        let e = a.entry(p).or_insert(0);
        *e = (*e).max(o);
    }
}

/// Waits until the group has committed the end of every partition.
fn wait_caught_up(b: &Broker, ends: &BTreeMap<i32, i64>, dets: &[&Detector]) {
    wait_group_at(b, GROUP, ends, dets);
}

/// Produces `lines` to the access topic in chunks of `chunk`, `pause` apart,
/// on a thread of its own (the stream arrives while the test acts); the
/// thread gives the log end of every partition.
fn produce_in_chunks(
    b: &Broker,
    lines: Vec<String>,
    chunk: usize,
    pause: Duration,
) -> std::thread::JoinHandle<BTreeMap<i32, i64>> {
    let addr = b.addr();
    std::thread::spawn(move || {
        let mut ends = BTreeMap::new();
        for c in lines.chunks(chunk) {
            merge(&mut ends, produce(&addr, "access-events", &keyed(c)));
            std::thread::sleep(pause);
        }
        ends
    })
}

/// The verifier over this harness's topics and group.
fn verdict(b: &Broker, ends: &BTreeMap<i32, i64>, truth: &[Expected]) -> Verdict {
    verify(
        &b.addr(),
        "replayguard-alerts",
        "replayguard-dead-letters",
        GROUP,
        "access-events",
        ends,
        truth,
    )
}

fn check(name: &str, v: &Verdict) {
    eprintln!("fault scenario {name}: {v}");
    assert!(v.passed(), "{name}: {v}");
}

#[test]
fn kill_9_at_ten_random_points_over_200k_events() {
    let (d, b, t, truth, _) = harness(200_000, 41, false);
    // the stream arrives while the detector is killed and restarted
    let producer = produce_in_chunks(&b, t.lines.clone(), 10_000, Duration::from_millis(300));
    let cfg = detector_config(&d, "a", &b, GROUP, "");
    let mut rng = Rng::new(7);
    let mut det = Detector::start(&d, "a", &cfg);
    let started = Instant::now();
    let mut kills_while_alerting = 0;
    for _ in 0..10 {
        // kill while it works: once this incarnation has delivered alerts,
        // at a random point of its commit cycles
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let alerts = det
                .get("/v1/status")
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .and_then(|v| v["alerts"].as_u64())
                .unwrap_or(0);
            if alerts > 0 {
                kills_while_alerting += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng.range(0, 300) as u64));
        det.kill();
        det = Detector::start(&d, "a", &cfg);
    }
    eprintln!("{kills_while_alerting} of 10 kills came after the incarnation had delivered alerts");
    let ends = producer.join().unwrap();
    wait_caught_up(&b, &ends, &[&det]);
    assert!(det.stop().success());
    let v = verdict(&b, &ends, &truth);
    eprintln!(
        "kill -9 x10 over {} events in {:.0}s",
        t.lines.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        v.dead_letters
            >= t.lines
                .iter()
                .filter(|l| Decoder::default().access(l.as_bytes()).is_err())
                .count()
    );
    check("kill -9 x10", &v);
}

#[test]
fn partitions_move_both_ways_with_replays_straddling_every_move() {
    let (d, b, cfg_a, cfg_b) = two_detectors(GROUP);
    let (all, keys) = (ALL_PARTITIONS, 64);
    let mut lines = Vec::new();
    let mut ends = BTreeMap::new();
    let send = |batch: Vec<String>, lines: &mut Vec<String>, ends: &mut BTreeMap<i32, i64>| {
        merge(ends, produce(&b.addr(), "access-events", &keyed(&batch)));
        lines.extend(batch);
    };
    send(phase("p1", T0, keys, None), &mut lines, &mut ends);
    let a = Detector::start(&d, "a", &cfg_a);
    wait_for(
        "A to own every partition",
        Duration::from_secs(60),
        &[&a],
        || a.assigned() == all,
    );
    wait_caught_up(&b, &ends, &[&a]);
    // start B: partitions move A -> B; replays of what A saw
    let bb = Detector::start(&d, "b", &cfg_b);
    wait_split(&a, &bb);
    send(
        phase("p2r", T0 + 60_000, keys, Some("p1")),
        &mut lines,
        &mut ends,
    );
    send(phase("p2", T0 + 61_000, keys, None), &mut lines, &mut ends);
    wait_caught_up(&b, &ends, &[&a, &bb]);
    // stop B: partitions move back B -> A; replays of what B saw
    assert!(bb.stop().success());
    wait_owns_all(&a, "A to own every partition again");
    send(
        phase("p3r", T0 + 120_000, keys, Some("p2")),
        &mut lines,
        &mut ends,
    );
    send(phase("p3", T0 + 121_000, keys, None), &mut lines, &mut ends);
    wait_caught_up(&b, &ends, &[&a]);
    // kill -9 A, traffic meanwhile, restart A: replays of what A saw before dying
    a.kill();
    send(
        phase("p4r", T0 + 180_000, keys, Some("p3")),
        &mut lines,
        &mut ends,
    );
    let a = Detector::start(&d, "a", &cfg_a);
    wait_caught_up(&b, &ends, &[&a]);
    assert!(a.stop().success());
    let truth = expected(&lines, &[]);
    assert_eq!(truth.len(), 3 * keys, "every straddling replay is expected");
    let v = verdict(&b, &ends, &truth);
    check("partition moves", &v);
}

/// Counter nonces with the sequence rule on, while partitions move both
/// ways, a new owner dies by kill -9 in the middle of the stream and comes
/// back: exactly the model's alerts, out_of_sequence included (the sequence
/// state handed over with each move, usage published while a partition is
/// being rebuilt, and restarts all in one run).
#[test]
fn counters_stay_judged_through_moves_and_a_kill_9() {
    use replayguard::detect::{DetectConfig, Toggle};
    let gen = GenConfig {
        nonces: replayguard::generate::NonceStyle::Counter,
        out_of_sequence_rate: 0.003,
        keys: 40,
        ..harness_gen(60_000, 43)
    };
    let (d, b, t, lc) = broker_with_traffic(&gen);
    let rules = DetectConfig {
        sequence: Toggle::On,
        ..DetectConfig::default()
    };
    // then one request of each of 40 more keys past the allowed lateness:
    // every partition's watermark passes the traffic
    let lines = [t.lines.clone(), ticks_past_lateness(&t.lines)].concat();
    let truth: Vec<Expected> = model_expected_with(&rules, &lines, &lc);
    let seq = truth
        .iter()
        .filter(|e| e.0 == replayguard::schema::AlertKind::OutOfSequence)
        .count();
    assert!(seq >= 50, "{seq} out_of_sequence alerts expected");
    let on = "[detect]\nsequence = \"on\"\n";
    let (cfg_a, cfg_b) = (
        detector_config(&d, "a", &b, GROUP, on),
        detector_config(&d, "b", &b, GROUP, on),
    );
    // the stream arrives while partitions move
    let producer = produce_in_chunks(&b, lines, 4_000, Duration::from_millis(400));
    let a = Detector::start(&d, "a", &cfg_a);
    std::thread::sleep(Duration::from_millis(1_500));
    // B joins (partitions move A -> B and are rebuilt there) ...
    let bb = Detector::start(&d, "b", &cfg_b);
    wait_split(&a, &bb);
    std::thread::sleep(Duration::from_millis(1_500));
    // ... dies (they move back to A, whose state for them is behind) ...
    bb.kill();
    wait_owns_all(&a, "A to own every partition after B's kill -9");
    // ... and comes back with its state directory (they move again)
    let bb = Detector::start(&d, "b", &cfg_b);
    wait_split(&a, &bb);
    let ends = producer.join().unwrap();
    wait_caught_up(&b, &ends, &[&a, &bb]);
    assert!(bb.stop().success());
    assert!(a.stop().success());
    let v = verdict(&b, &ends, &truth);
    check("counters through moves and kill -9", &v);
}

#[test]
fn a_broker_restart_mid_stream() {
    // the broker keeps its log dir (in the test's dir) across the restart
    let (d, mut b, t, truth, _) = harness(60_000, 43, false);
    // the stream arrives while the detector works and the broker restarts
    // (the producer waits for it): some alerts are always in flight when it
    // goes down, and the stream goes on after it is back
    let producer = produce_in_chunks(&b, t.lines.clone(), 3_000, Duration::from_millis(150));
    let cfg = detector_config(&d, "a", &b, GROUP, "");
    let det = Detector::start(&d, "a", &cfg);
    let total = t.lines.len() as u64;
    let processed = |det: &Detector| -> u64 {
        det.get("/v1/status")
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["events"].as_u64())
            .unwrap_or(0)
    };
    wait_for(
        "the detector to be a tenth of the way through",
        Duration::from_secs(120),
        &[&det],
        || processed(&det) >= total / 10,
    );
    let at_restart = processed(&det);
    b.restart(Duration::from_secs(3));
    assert!(
        at_restart < total * 8 / 10,
        "the broker restart came too late to be mid-stream ({at_restart} of {total} processed)"
    );
    eprintln!("broker restarted with {at_restart} of {total} events processed");
    let ends = producer.join().unwrap();
    wait_caught_up(&b, &ends, &[&det]);
    assert!(det.stop().success());
    let v = verdict(&b, &ends, &truth);
    let log = std::fs::read_to_string(d.path("a.log")).unwrap();
    eprintln!(
        "offset-less acknowledgements checked against the topic: {}",
        log.matches("acknowledged alerts without an offset").count()
    );
    check("broker restart", &v);
}

#[test]
fn a_group_reset_backwards_reports_nothing_again() {
    let (d, b, _t, truth, ends) = harness(20_000, 44, true);
    let cfg = detector_config(&d, "a", &b, GROUP, "");
    let det = Detector::start(&d, "a", &cfg);
    wait_caught_up(&b, &ends, &[&det]);
    let alerts_before = consume(
        &b.addr(),
        "replayguard-alerts",
        truth.len(),
        Duration::from_secs(10),
    )
    .len();
    assert!(det.stop().success());
    // move the group back by 5 000 records (spread over the partitions)
    let back: BTreeMap<i32, i64> = ends.iter().map(|(p, e)| (*p, (*e - 1250).max(0))).collect();
    reset_group(&b.addr(), GROUP, "access-events", &back);
    assert_eq!(committed(&b.addr(), GROUP, "access-events", 4), back);
    let det = Detector::start(&d, "a", &cfg);
    wait_for(
        "the detector to be ready",
        Duration::from_secs(60),
        &[&det],
        || det.get("/readyz").is_some_and(|r| r.starts_with("ready")),
    );
    wait_caught_up(&b, &ends, &[&det]);
    std::thread::sleep(Duration::from_secs(2));
    let status: serde_json::Value = serde_json::from_str(&det.get("/v1/status").unwrap()).unwrap();
    assert_eq!(status["events"], 0, "nothing processed again: {status}");
    assert_eq!(status["alerts"], 0);
    let metrics = det.get("/metrics").unwrap();
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("replayguard_events_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, 0.0, "no event counted again: {metrics}");
    let alerts_after = consume(
        &b.addr(),
        "replayguard-alerts",
        alerts_before,
        Duration::from_secs(10),
    )
    .len();
    assert_eq!(alerts_after, alerts_before, "no new alerts");
    assert!(det.stop().success());
    let v = verdict(&b, &ends, &truth);
    check("group reset by 5000", &v);
}

#[test]
fn hostile_records_become_dead_letters_and_their_neighbours_are_processed() {
    let d = Dir::new();
    // Apache Kafka refuses records over 1 MiB unless the topic allows more:
    // this one allows the 3 MiB records below, as a topic of a gateway that
    // logs request bodies might
    let b = Broker::start(&d);
    b.create_topic_with("access-events", 4, &[("max.message.bytes", "4194304")]);
    b.create_topic("key-lifecycle", 1);
    let good = |i: usize| {
        event(
            &format!("g{i}"),
            T0 + i as i64 * 10,
            "key-h",
            &format!("n{}", i % 50),
            "10.0.0.1",
        )
    };
    let mut nested = String::from(r#"{"event_id":"deep","x":"#);
    nested.push_str(&"[".repeat(100_000));
    nested.push_str(&"]".repeat(100_000));
    nested.push('}');
    let hostile: Vec<(Option<Vec<u8>>, Vec<u8>)> = vec![
        (
            Some(b"key-h".to_vec()),
            b"{\"event_id\":\"\xff\xfe\",\"bad\":\"utf8\"}".to_vec(),
        ),
        (
            Some(b"key-h".to_vec()),
            br#"{"event_id":"trunc","received_at":17958"#.to_vec(),
        ),
        (Some(b"key-h".to_vec()), nested.into_bytes()),
        (
            Some(b"key-h".to_vec()),
            good(9999)
                .replace("\"status\":200", "\"status\":1e999")
                .into_bytes(),
        ),
        (
            Some(b"key-h".to_vec()),
            good(9998)
                .replace(
                    "\"received_at\":",
                    "\"received_at\":99999999999999999999,\"x\":",
                )
                .into_bytes(),
        ),
        (
            Some(b"key-h".to_vec()),
            good(9997)
                .replace(
                    "\"key_id\":\"key-h\"",
                    "\"key_id\":\"key-h\",\"key_id\":\"other\"",
                )
                .into_bytes(),
        ),
        (
            Some(b"key-h".to_vec()),
            good(9996)
                .replace("\"status\":200", "\"status\":\"200\"")
                .into_bytes(),
        ),
        (Some(b"key-h".to_vec()), vec![b'{'; 1 << 20]),
        (Some(Vec::new()), Vec::new()),
        (None, b"null".to_vec()),
        (None, b"[]".to_vec()),
    ];
    let mut recs = Vec::new();
    let mut lines = Vec::new();
    for (i, h) in hostile.iter().enumerate() {
        for j in 0..20 {
            let l = good(i * 20 + j);
            recs.push((Some(b"key-h".to_vec()), l.clone().into_bytes()));
            lines.push(l);
        }
        recs.push(h.clone());
    }
    let ends = produce_large(&b.addr(), "access-events", &recs);
    let cfg = detector_config(&d, "a", &b, GROUP, "");
    let det = Detector::start(&d, "a", &cfg);
    wait_caught_up(&b, &ends, &[&det]);
    let rss_kib = det.rss_kib();
    assert!(det.stop().success(), "no panic");
    let dl = consume(
        &b.addr(),
        "replayguard-dead-letters",
        hostile.len(),
        Duration::from_secs(10),
    );
    assert_eq!(
        dl.len(),
        hostile.len(),
        "every hostile record is a dead letter"
    );
    for m in &dl {
        assert_eq!(m.headers["source_topic"], "access-events");
        assert!(m.headers["source_offset"].parse::<i64>().is_ok());
        assert!(!m.headers["error_kind"].is_empty());
    }
    assert!(
        dl.iter().any(|m| m.headers["truncated"] == "true"),
        "the 1 MB record is cut in the dead letter"
    );
    assert!(dl.iter().any(|m| m.key.is_none()), "a null key stays null");
    let truth = expected(&lines, &[]);
    assert!(!truth.is_empty());
    let v = verdict(&b, &ends, &truth);
    eprintln!("hostile records: detector RSS {} MiB", rss_kib / 1024);
    assert!(rss_kib < 768 * 1024, "bounded memory: {rss_kib} KiB");
    check("hostile records", &v);
}

#[test]
fn a_full_disk_pauses_the_detector_until_space_returns() {
    let (d, b, t, truth, _) = harness(80_000, 45, false);
    let mnt = d.path("small-disk");
    std::fs::create_dir_all(&mnt).unwrap();
    let _mount = Tmpfs::mount(&mnt, 48);
    let (first, second) = t.lines.split_at(10_000);
    let mut ends = produce(&b.addr(), "access-events", &keyed(first));
    let cfg = detector_config(&d, "a", &b, GROUP, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("dir = \"{}\"", d.path("state-a").display()),
        &format!(
            "dir = \"{}\"\nwrite_buffer = \"4MiB\"",
            mnt.join("state").display()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let det = Detector::start(&d, "a", &cfg);
    wait_caught_up(&b, &ends, &[&det]);
    // fill the disk, then send more
    let filler = mnt.join("filler");
    fill(&filler);
    merge(
        &mut ends,
        produce(&b.addr(), "access-events", &keyed(second)),
    );
    wait_for(
        "the detector to report unhealthy",
        Duration::from_secs(60),
        &[&det],
        || det.get("/healthz").is_some_and(|h| h.contains("unhealthy")),
    );
    let c = committed(&b.addr(), GROUP, "access-events", 4);
    assert!(
        ends.iter().any(|(p, e)| c.get(p) != Some(e)),
        "it stopped short of the end"
    );
    // space returns: it resumes and finishes
    std::fs::remove_file(&filler).unwrap();
    wait_caught_up(&b, &ends, &[&det]);
    wait_for(
        "the detector to be healthy again",
        Duration::from_secs(30),
        &[&det],
        || det.get("/healthz").is_some_and(|h| h.starts_with("ok")),
    );
    assert!(det.stop().success());
    let v = verdict(&b, &ends, &truth);
    check("disk full", &v);
}

/// Writes zeros until the file system is full.
fn fill(p: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(p).unwrap();
    let block = vec![0u8; 1 << 16];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

/// A small tmpfs, unmounted when dropped (needs root, as CI has).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, mib: u32) -> Tmpfs {
        let o = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            o.status.success(),
            "mounting a {mib} MiB tmpfs for the disk-full scenario needs root: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn raw_nonces_and_signatures_are_never_stored_or_logged() {
    let d = Dir::new();
    let b = setup_broker(&d);
    let nonce = "n0nce-PLANTED-7f3a9c1e5b";
    let signature = "s1gnature-PLANTED-d4c2b0a8e6";
    let lines: Vec<String> = (0..200)
        .map(|i| {
            event(
                &format!("sec{i}"),
                T0 + i,
                "key-s",
                &format!("{nonce}-{}", i % 20),
                "10.0.0.1",
            )
            .replace(
                "\"status\":200}",
                &format!("\"status\":200,\"signature\":\"{signature}-{i}\"}}"),
            )
        })
        .collect();
    // a record whose nonce has the wrong type: the parser's message would quote it
    let mut recs = keyed(&lines);
    recs.push((Some(b"key-s".to_vec()), format!(r#"{{"event_id":"bad","received_at":{T0},"key_id":"key-s","nonce":{{"v":"{nonce}-typed"}},"client_ts":{T0},"client_ip":"1.1.1.1","method":"GET","path":"/","status":200}}"#).into_bytes()));
    recs.push((
        Some(b"key-s".to_vec()),
        format!(r#"{{"event_id":"bad2","signature":7,"nonce":"{nonce}-x"}}"#).into_bytes(),
    ));
    // a value the parser quotes in its message: logs must not carry it
    recs.push((
        Some(b"key-s".to_vec()),
        format!(
            r#"{{"event_id":"bad3","received_at":{T0},"key_id":"key-s","nonce":"x","client_ts":{T0},"client_ip":"1.1.1.1","method":"GET","path":"/","status":"{signature}-quoted"}}"#
        )
        .into_bytes(),
    ));
    let ends = produce(&b.addr(), "access-events", &recs);
    let cfg = detector_config(&d, "a", &b, GROUP, "");
    let det = Detector::start(&d, "a", &cfg);
    wait_caught_up(&b, &ends, &[&det]);
    let log = det.log.clone();
    assert!(det.stop().success());
    let alerts = consume(
        &b.addr(),
        "replayguard-alerts",
        180,
        Duration::from_secs(10),
    );
    assert!(
        alerts.len() >= 180,
        "the planted nonces were reused: replays found"
    );
    let mut found = Vec::new();
    let mut files = vec![log];
    walk(&d.path("state-a"), &mut files);
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for needle in [nonce, signature, "PLANTED"] {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(format!("{} in {}", needle, f.display()));
            }
        }
    }
    assert!(found.is_empty(), "raw values found: {found:?}");
    // and the alerts themselves carry no nonce or signature
    for m in &alerts {
        let s = String::from_utf8_lossy(&m.value);
        assert!(!s.contains("PLANTED"), "{s}");
    }
}

fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}
