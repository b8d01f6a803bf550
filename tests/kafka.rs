//! `replayguard run` against Apache Kafka (scripts/kafka.sh), one broker per test.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use replayguard::decode::Decoder;
use replayguard::generate::GenConfig;
use replayguard::schema::{Alert, LifecycleEvent};

use crate::util::*;
use replayguard_testkit::kafka::*;

const GROUP: &str = "rg-test";

/// The alerts the model expects for `lines` (arrival order) and `lifecycle`.
fn expected(lines: &[String], lifecycle: &[LifecycleEvent]) -> BTreeSet<(String, String, String)> {
    expected_with(
        &replayguard::detect::DetectConfig::default(),
        lines,
        lifecycle,
    )
}

/// [`expected`] under the given rules.
fn expected_with(
    rules: &replayguard::detect::DetectConfig,
    lines: &[String],
    lifecycle: &[LifecycleEvent],
) -> BTreeSet<(String, String, String)> {
    model_expected_with(rules, lines, lifecycle)
        .into_iter()
        .map(|(k, key, ev)| (k.as_str().to_string(), key, ev))
        .collect()
}

/// The core-rule alerts (what the model predicts).
fn set(alerts: &[Alert]) -> BTreeSet<(String, String, String)> {
    keyset(alerts).into_iter().collect()
}

fn alerts_of(msgs: &[Msg]) -> Vec<Alert> {
    msgs.iter()
        .map(|m| serde_json::from_slice(&m.value).expect("alert v1"))
        .collect()
}

fn assert_no_repeats(alerts: &[Alert]) {
    let mut seen = HashMap::new();
    for a in alerts {
        *seen.entry(&a.alert_id).or_insert(0) += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "repeated alert ids: {repeated:?}");
}

/// Waits for `want.len()` alerts; they must be exactly `want`, none repeated.
fn expect_alerts(
    b: &Broker,
    what: &str,
    want: &BTreeSet<(String, String, String)>,
    dets: &[&Detector],
) -> (Vec<Msg>, Vec<Alert>) {
    let got = wait_for_alerts(&b.addr(), what, want.len(), Duration::from_secs(90), dets);
    let alerts = alerts_of(&got);
    assert_no_repeats(&alerts);
    assert_eq!(&set(&alerts), want);
    (got, alerts)
}

/// A detector of the test group with the usual test config.
fn detector(d: &Dir, name: &str, b: &Broker) -> Detector {
    Detector::start(d, name, &detector_config(d, name, b, GROUP, ""))
}

#[test]
fn events_in_alerts_out_with_dead_letters_and_committed_offsets() {
    let (d, b, t, lc) = broker_with_traffic(&GenConfig {
        events: 20_000,
        seed: 31,
        disorder_ms: 10_000,
        malformed_rate: 0.002,
        ..Default::default()
    });
    let ends = produce(&b.addr(), "access-events", &keyed(&t.lines));
    let want = expected(&t.lines, &lc);
    let det = detector(&d, "a", &b);
    let (got, alerts) = expect_alerts(
        &b,
        "every expected alert on the alert topic",
        &want,
        &[&det],
    );
    for (m, a) in got.iter().zip(&alerts) {
        assert_eq!(
            m.key.as_deref(),
            Some(a.key_id.as_bytes()),
            "message key = key_id"
        );
        assert_eq!(m.headers["kind"], a.kind.as_str());
        assert_eq!(m.headers["alert_id"], a.alert_id);
    }
    // dead letters: original bytes, and where they came from
    let bad: Vec<&String> = t
        .lines
        .iter()
        .filter(|l| Decoder::default().access(l.as_bytes()).is_err())
        .collect();
    assert!(!bad.is_empty());
    let dl = consume(
        &b.addr(),
        "replayguard-dead-letters",
        bad.len(),
        Duration::from_secs(20),
    );
    assert_eq!(dl.len(), bad.len());
    for m in &dl {
        assert_eq!(m.headers["source_topic"], "access-events");
        let p: i32 = m.headers["source_partition"].parse().unwrap();
        let o: i64 = m.headers["source_offset"].parse().unwrap();
        assert!(p >= 0 && o >= 0);
        assert!(
            bad.iter().any(|l| l.as_bytes() == m.value.as_slice()),
            "original bytes kept"
        );
        assert!(!m.headers["error"].is_empty());
    }
    let status = det.stop();
    assert!(status.success(), "graceful stop");
    // the group offsets reached the end of every partition
    let c = committed(&b.addr(), GROUP, "access-events", 4);
    for (p, end) in &ends {
        assert_eq!(c.get(p), Some(end), "partition {p} committed up to its end");
    }
}

#[test]
fn a_restart_mid_stream_misses_nothing_and_repeats_nothing() {
    let (d, b, t, lc) = broker_with_traffic(&GenConfig {
        events: 30_000,
        seed: 32,
        rate: 200.0,
        replay_rate: 0.01,
        ..Default::default()
    });
    let (first, second) = t.lines.split_at(t.lines.len() / 2);
    produce(&b.addr(), "access-events", &keyed(first));
    let cfg = detector_config(&d, "a", &b, GROUP, "");
    let det = Detector::start(&d, "a", &cfg);
    let want_first = expected(first, &lc);
    wait_for_alerts(
        &b.addr(),
        "the first half's alerts",
        want_first.len(),
        Duration::from_secs(90),
        &[&det],
    );
    // stop while the second half is arriving
    let producer = {
        let (addr, second) = (b.addr(), second.to_vec());
        std::thread::spawn(move || produce(&addr, "access-events", &keyed(&second)))
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(det.stop().success());
    producer.join().unwrap();
    let det = Detector::start(&d, "a", &cfg);
    let want = expected(&t.lines, &lc);
    expect_alerts(&b, "all alerts after the restart", &want, &[&det]);
    assert!(det.stop().success());
}

#[test]
fn a_lifecycle_update_takes_effect() {
    let d = Dir::new();
    let b = setup_broker(&d);
    let det = detector(&d, "a", &b);
    wait_for(
        "the detector to be ready",
        Duration::from_secs(60),
        &[&det],
        || det.get("/readyz").is_some_and(|r| r.starts_with("ready")),
    );
    let before: Vec<String> = (0..5)
        .map(|i| {
            event(
                &format!("b{i}"),
                T0 + i,
                "old-key",
                &format!("n{i}"),
                "10.0.0.1",
            )
        })
        .collect();
    produce(&b.addr(), "access-events", &keyed(&before));
    let lc = format!(
        r#"{{"key_id":"old-key","state":"retired","at":{},"successor":"new-key"}}"#,
        T0 + 1000
    );
    produce(
        &b.addr(),
        "key-lifecycle",
        &[(Some(b"old-key".to_vec()), lc.into_bytes())],
    );
    wait_for(
        "the lifecycle update to be applied",
        Duration::from_secs(30),
        &[&det],
        || {
            det.get("/metrics")
                .is_some_and(|m| m.contains("replayguard_lifecycle_updates_total 1"))
        },
    );
    let after: Vec<String> = (0..5)
        .map(|i| {
            event(
                &format!("a{i}"),
                T0 + 2000 + i,
                "old-key",
                &format!("m{i}"),
                "10.0.0.1",
            )
        })
        .collect();
    produce(&b.addr(), "access-events", &keyed(&after));
    let got = wait_for_alerts(
        &b.addr(),
        "retired_key alerts",
        5,
        Duration::from_secs(60),
        &[&det],
    );
    let alerts = alerts_of(&got);
    let ids: BTreeSet<&str> = alerts.iter().map(|a| a.event_id.as_str()).collect();
    assert_eq!(
        ids,
        ["a0", "a1", "a2", "a3", "a4"].into_iter().collect(),
        "only uses after `at`"
    );
    assert!(alerts.iter().all(|a| a.kind.as_str() == "retired_key"));
    assert!(det.stop().success());
}

#[test]
fn two_instances_hand_partitions_over_and_still_catch_straddling_replays() {
    let (d, b, cfg_a, cfg_b) = two_detectors(GROUP);
    let (all, keys) = (ALL_PARTITIONS, 64);
    // phase 0: long before, so that its window has expired by the hand-over
    // and the live state starts after offset 0
    let p0 = phase("p0", T0 - 1_000_000, keys, None);
    let ends0 = produce(&b.addr(), "access-events", &keyed(&p0));
    let a = Detector::start(&d, "a", &cfg_a);
    wait_for(
        "A to own every partition and process phase 0",
        Duration::from_secs(60),
        &[&a],
        || {
            let c = committed(&b.addr(), GROUP, "access-events", 4);
            a.assigned() == all && ends0.iter().all(|(p, e)| c.get(p) == Some(e))
        },
    );
    // phase 1: first sightings, all seen by A
    let p1 = phase("p1", T0, keys, None);
    produce(&b.addr(), "access-events", &keyed(&p1));
    let mut lines = p0.clone();
    lines.extend(p1.clone());
    // a marker replay so we know A is through phase 1
    let mark1 = phase("m1", T0 + 10_000, 1, Some("p1"));
    produce(&b.addr(), "access-events", &keyed(&mark1));
    lines.extend(mark1);
    wait_for(
        "A to process phase 1",
        Duration::from_secs(60),
        &[&a],
        || !consume(&b.addr(), "replayguard-alerts", 1, Duration::from_secs(2)).is_empty(),
    );
    // B joins: partitions move A -> B
    let bb = Detector::start(&d, "b", &cfg_b);
    wait_split(&a, &bb);
    // phase 2: replays of phase 1 (first sightings seen by A, partitions now
    // partly on B) and new nonces (first sightings seen by B)
    let p2r = phase("p2r", T0 + 60_000, keys, Some("p1"));
    let p2 = phase("p2", T0 + 61_000, keys, None);
    produce(&b.addr(), "access-events", &keyed(&p2r));
    produce(&b.addr(), "access-events", &keyed(&p2));
    lines.extend(p2r);
    lines.extend(p2);
    let want2 = expected(&lines, &[]);
    wait_for_alerts(
        &b.addr(),
        "phase 2 alerts",
        want2.len(),
        Duration::from_secs(90),
        &[&a, &bb],
    );
    // B leaves: its partitions move back to A, whose state for them is behind
    assert!(bb.stop().success());
    wait_owns_all(&a, "A to own every partition again");
    let p3 = phase("p3", T0 + 120_000, keys, Some("p2"));
    produce(&b.addr(), "access-events", &keyed(&p3));
    lines.extend(p3);
    let want = expected(&lines, &[]);
    let (_, alerts) = expect_alerts(&b, "phase 3 alerts", &want, &[&a]);
    // every replay straddled a move and was caught
    assert_eq!(
        alerts
            .iter()
            .filter(|x| x.kind.as_str() == "replay")
            .count(),
        2 * keys + 1
    );
    let log = a.log_text();
    let rebuilds: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rebuilding the partition's state"))
        .collect();
    assert!(!rebuilds.is_empty(), "A rebuilt the partitions it got back");
    // Kafka keeps the offset-commit metadata: the rebuild starts where B's
    // live state began, not at the beginning of the partition
    assert!(
        rebuilds.iter().all(|l| l.contains("metadata=true")),
        "{rebuilds:?}"
    );
    let from = |l: &str| -> u64 {
        l.split("rebuild_from=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        rebuilds.iter().any(|l| from(l) > 0),
        "a rebuild from the commit metadata, not from offset 0: {rebuilds:?}"
    );
    assert!(a.stop().success());
}

#[test]
fn repartitioning_fixes_producers_that_do_not_key_by_key_id() {
    let (d, b, t, lc) = broker_with_traffic(&GenConfig {
        events: 8_000,
        seed: 33,
        replay_rate: 0.02,
        ..Default::default()
    });
    // keys that say nothing about key_id: replays land on other partitions than their first sightings
    let unkeyed: Vec<(Option<Vec<u8>>, Vec<u8>)> = t
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            (
                Some(format!("r{}", i % 7).into_bytes()),
                l.as_bytes().to_vec(),
            )
        })
        .collect();
    produce(&b.addr(), "access-events", &unkeyed);
    let want = expected(&t.lines, &lc);
    let cfg = detector_config(&d, "a", &b, GROUP, "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[kafka]\n", "[kafka]\nrepartition = true\n");
    std::fs::write(&cfg, text).unwrap();
    let det = Detector::start(&d, "a", &cfg);
    expect_alerts(&b, "every expected alert", &want, &[&det]);
    // the detection side saw every event under its own key
    let metrics = det.get("/metrics").unwrap_or_default();
    assert!(metrics.contains("replayguard_events_total"), "{metrics}");
    assert!(
        !metrics.contains("replayguard_key_mismatch_total"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("replayguard_key_absent_total"),
        "{metrics}"
    );
    assert!(det.stop().success());
}

#[test]
fn events_keyed_by_something_else_are_counted() {
    let d = Dir::new();
    let b = setup_broker(&d);
    let lines: Vec<String> = (0..20)
        .map(|i| event(&format!("e{i}"), T0 + i, "k", &format!("n{i}"), "10.0.0.1"))
        .collect();
    let mut recs = keyed(&lines);
    for (i, r) in recs.iter_mut().enumerate() {
        r.0 = if i % 2 == 0 {
            None
        } else {
            Some(b"wrong".to_vec())
        };
    }
    produce(&b.addr(), "access-events", &recs);
    let det = detector(&d, "a", &b);
    wait_for(
        "key checks in the metrics",
        Duration::from_secs(60),
        &[&det],
        || {
            det.get("/metrics").is_some_and(|m| {
                m.contains("replayguard_key_absent_total 10")
                    && m.contains("replayguard_key_mismatch_total 10")
            })
        },
    );
    assert!(det.stop().success());
}

#[test]
fn run_serves_the_rotation_report_live_and_publishes_it() {
    let d = Dir::new();
    let b = setup_broker(&d);
    let (events, lc) = crate::report::rotation_log(&d);
    produce(&b.addr(), "key-lifecycle", &keyed(&read_lines(&lc)));
    let all = read_lines(&events);
    produce(&b.addr(), "access-events", &keyed(&all));
    let cfg = detector_config(&d, "a", &b, GROUP, "[report]\ninterval = \"1s\"\n");
    let det = Detector::start(&d, "a", &cfg);
    wait_for(
        "every event processed",
        Duration::from_secs(60),
        &[&det],
        || {
            det.get("/v1/status")
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .is_some_and(|v| v["events"].as_u64() == Some(all.len() as u64))
        },
    );
    // the live snapshot follows the commits within a second (and at once
    // when the input is drained): one taken at a commit before old-b's
    // laggard was processed says READY until the next one
    let verdicts = |body: &str| -> Vec<(String, String)> {
        serde_json::from_str::<Vec<serde_json::Value>>(body)
            .unwrap_or_default()
            .iter()
            .map(|r| {
                (
                    r["key_id"].as_str().unwrap_or("").to_string(),
                    r["verdict"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let expected = vec![
        ("old-a".to_string(), "READY".to_string()),
        ("old-b".to_string(), "NOT_READY".to_string()),
    ];
    let mut body = String::new();
    wait_for(
        "the rotation report of both keys, as of every event",
        Duration::from_secs(10),
        &[&det],
        || {
            body = det.get("/v1/rotations").unwrap_or_default();
            verdicts(&body) == expected
        },
    );
    assert_eq!(verdicts(&body), expected);
    let one = det.get("/v1/rotations/old-b").unwrap();
    assert!(one.contains("laggard"), "{one}");
    let page = det.get("/reports/rotations").unwrap();
    assert!(page.contains("<svg class=\"chart\"") && page.contains("laggard"));
    // usage is read from the store: written at a usage checkpoint, which an
    // idle input gets within tens of milliseconds
    let mut usage = String::new();
    wait_for(
        "the usage of new-a in the store",
        Duration::from_secs(10),
        &[&det],
        || {
            usage = det.get("/v1/keys/new-a/usage").unwrap_or_default();
            usage.contains("\"requests_total\":1650")
        },
    );
    // and the reports topic carries them, keyed by key_id
    let msgs = consume(&b.addr(), "replayguard-reports", 2, Duration::from_secs(20));
    assert!(msgs
        .iter()
        .any(|m| m.key.as_deref() == Some(b"old-b".as_slice())));
    assert!(det.stop().success());
}

/// The wall clock in epoch ms (message timestamps of records produced now).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A first deployment with the default `kafka.start = "latest"` on a topic
/// that holds old logs: none of them raises an alert, but the replay window
/// was warmed from the records of the last retention, so a replay of a
/// request logged just before the deployment is caught.
#[test]
fn a_first_deployment_reports_nothing_old_yet_catches_a_replay_of_a_request_logged_just_before() {
    let d = Dir::new();
    let b = setup_broker(&d);
    let keys = 40;
    let now = now_ms();
    // two hours ago (event time and message time): first sightings and their
    // replays, which a scan from the beginning would report
    let old_t = now - 2 * 3_600_000;
    let mut old = phase("old", old_t, keys, None);
    old.extend(phase("oldr", old_t + 5_000, keys, Some("old")));
    produce_at(&b.addr(), "access-events", &keyed(&old), old_t);
    // a minute ago: first sightings, just before the deployment
    let recent_t = now - 60_000;
    let recent = phase("recent", recent_t, keys, None);
    let ends = produce(&b.addr(), "access-events", &keyed(&recent));
    let cfg = detector_config_start(&d, "a", &b, GROUP, "latest", "");
    let det = Detector::start(&d, "a", &cfg);
    wait_for(
        "the group to be at the log end (the warm-up is over)",
        Duration::from_secs(90),
        &[&det],
        || {
            let c = committed(&b.addr(), GROUP, "access-events", 4);
            ends.iter().all(|(p, e)| c.get(p) == Some(e))
        },
    );
    // after the deployment: replays of the recent requests
    let replays = phase("replay", recent_t + 30_000, keys, Some("recent"));
    produce(&b.addr(), "access-events", &keyed(&replays));
    let got = wait_for_alerts(
        &b.addr(),
        "the replays of the recent requests",
        keys,
        Duration::from_secs(60),
        &[&det],
    );
    let alerts = alerts_of(&got);
    assert_eq!(alerts.len(), keys, "no alert for the old records");
    for a in &alerts {
        assert_eq!(a.kind.as_str(), "replay");
        assert!(a.event_id.starts_with("replay-"), "{}", a.event_id);
    }
    let log = det.log_text();
    assert!(
        log.contains("first deployment: warming the replay window"),
        "{log}"
    );
    assert!(det.stop().success());
}

/// The lifecycle topic is compacted (the latest record per key_id); after
/// the log cleaner has compacted it, the global table read from it is still
/// right, in a running detector and in one started afterwards.
#[test]
fn the_lifecycle_table_is_right_after_the_topic_was_compacted() {
    let d = Dir::new();
    let b = Broker::start(&d);
    b.create_topic("access-events", 4);
    b.create_topic_with(
        "key-lifecycle",
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "100"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("delete.retention.ms", "100"),
        ],
    );
    let keys = 10;
    let mut records = Vec::new();
    for k in 0..keys {
        let key = format!("key-{k}");
        for (state, at) in [
            ("active", T0),
            ("rotating", T0 + 1000),
            ("retired", T0 + 2000),
        ] {
            records.push((
                Some(key.as_bytes().to_vec()),
                format!(
                    r#"{{"key_id":"{key}","state":"{state}","at":{at},"successor":"new-{k}"}}"#
                )
                .into_bytes(),
            ));
        }
    }
    produce(&b.addr(), "key-lifecycle", &records);
    // the active segment is never cleaned: roll it with a later record
    let count = || consume(&b.addr(), "key-lifecycle", 0, Duration::from_secs(5)).len();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        produce(
            &b.addr(),
            "key-lifecycle",
            &[(
                Some(b"roll".to_vec()),
                format!(r#"{{"key_id":"roll","state":"active","at":{T0}}}"#).into_bytes(),
            )],
        );
        if count() < records.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log cleaner did not compact the lifecycle topic"
        );
    }
    let left = count();
    eprintln!(
        "lifecycle topic compacted: {} records produced, {left} left",
        records.len()
    );
    // uses after `retired` are reported, by the latest record of each key
    let uses = |tag: &str, t: i64| -> Vec<String> {
        (0..keys)
            .map(|k| {
                event(
                    &format!("{tag}-{k}"),
                    t,
                    &format!("key-{k}"),
                    &format!("{tag}-n{k}"),
                    "10.0.0.1",
                )
            })
            .collect()
    };
    let cfg = detector_config(&d, "a", &b, GROUP, "");
    let det = Detector::start(&d, "a", &cfg);
    produce(&b.addr(), "access-events", &keyed(&uses("u1", T0 + 3000)));
    let got = wait_for_alerts(
        &b.addr(),
        "retired_key alerts",
        keys,
        Duration::from_secs(60),
        &[&det],
    );
    let alerts = alerts_of(&got);
    assert_eq!(alerts.len(), keys);
    assert!(alerts.iter().all(|a| a.kind.as_str() == "retired_key"));
    assert!(det.stop().success());
    // a detector with no state of its own reads the compacted topic whole
    let cfg_b = detector_config(&d, "b", &b, "rg-test-b", "");
    let det_b = Detector::start(&d, "b", &cfg_b);
    let got = wait_for_alerts(
        &b.addr(),
        "the same alerts from a detector started after the compaction",
        2 * keys,
        Duration::from_secs(60),
        &[&det_b],
    );
    let ids: BTreeSet<String> = alerts_of(&got).iter().map(|a| a.alert_id.clone()).collect();
    assert_eq!(ids.len(), keys, "the same alert ids, on every instance");
    assert!(det_b.stop().success());
}

#[test]
fn a_topic_of_kong_logs_gives_the_alerts_of_the_same_requests_in_v1() {
    let (d, b, t, lc) = broker_with_traffic(&GenConfig {
        events: 5_000,
        seed: 43,
        disorder_ms: 5_000,
        ..Default::default()
    });
    // the same requests as Kong's kafka-log plugin writes them
    let recs: Vec<_> = keyed(&t.lines)
        .into_iter()
        .map(|(k, v)| {
            let line = String::from_utf8(v).unwrap();
            (k, replayguard::generate::kong_line(&line).into_bytes())
        })
        .collect();
    produce(&b.addr(), "access-events", &recs);
    let want = expected(&t.lines, &lc);
    assert!(!want.is_empty());
    let cfg = detector_config(&d, "a", &b, GROUP, "[input]\nformat = \"kong\"\n");
    let det = Detector::start(&d, "a", &cfg);
    expect_alerts(&b, "the alerts of the v1 requests", &want, &[&det]);
    assert!(det.stop().success());
}

/// `detect.sequence = "on"` in `run`: counter nonces with stale counters
/// planted give exactly the model's alerts, out_of_sequence included, once
/// every partition's event time has passed them (a later request on each
/// partition: a quiet partition keeps its last requests waiting).
#[test]
fn run_reports_out_of_sequence_counters_like_the_model() {
    use replayguard::detect::{DetectConfig, Toggle};
    let (d, b, t, lc) = broker_with_traffic(&GenConfig {
        events: 6_000,
        seed: 47,
        keys: 20,
        rate: 200.0, // 30 s: counters from 6 to 60 s back find larger ones
        disorder_ms: 5_000,
        nonces: replayguard::generate::NonceStyle::Counter,
        out_of_sequence_rate: 0.02,
        ..Default::default()
    });
    produce(&b.addr(), "access-events", &keyed(&t.lines));
    // one request per key of 40 more keys, past the allowed lateness: every
    // partition's watermark moves past the traffic
    let ticks = ticks_past_lateness(&t.lines);
    let ends = produce(&b.addr(), "access-events", &keyed(&ticks));
    assert_eq!(ends.len(), 4, "the ticks reach every partition: {ends:?}");
    let rules = DetectConfig {
        sequence: Toggle::On,
        ..DetectConfig::default()
    };
    let want = expected_with(&rules, &[t.lines.clone(), ticks].concat(), &lc);
    let seq = want.iter().filter(|w| w.0 == "out_of_sequence").count();
    assert!(seq >= 20, "{seq} out_of_sequence alerts expected");
    let cfg = detector_config(&d, "a", &b, GROUP, "[detect]\nsequence = \"on\"\n");
    let det = Detector::start(&d, "a", &cfg);
    let (_, alerts) = expect_alerts(
        &b,
        "the model's alerts, out_of_sequence included",
        &want,
        &[&det],
    );
    for a in alerts
        .iter()
        .filter(|a| a.kind.as_str() == "out_of_sequence")
    {
        a.check().unwrap();
        assert!(a.request.is_some(), "{a:?}");
    }
    assert!(det.stop().success());
}

/// The rotation report of the whole group: two instances, an old key and
/// its successor on partitions owned by different instances, and partitions
/// moving mid-stream (B leaves: A takes its partitions; B comes back with a
/// state directory that is behind: they are rebuilt on B). Before and after
/// the moves, both instances, and `report rotation --brokers`, give exactly
/// the report of one `scan` of the same events (counts since rotation, last
/// old-key use, stragglers, series: the whole report), and usage followed
/// every partition that moved.
#[test]
fn two_instances_give_the_rotation_report_of_one_scan() {
    let (d, b, cfg_a, cfg_b) = two_detectors(GROUP);
    let (events, lc) = crate::report::rotation_log(&d);
    let all = read_lines(&events);
    let half = all.len() / 2;
    let three_quarters = all.len() * 3 / 4;
    // what one scan of the same events reports: of the first half, of all
    let scan_report = |name: &str, upto: usize| -> serde_json::Value {
        let input = d.path(&format!("{name}.jsonl"));
        std::fs::write(&input, all[..upto].join("\n") + "\n").unwrap();
        let state = d.path(&format!("{name}-state"));
        scan_ok(
            &[
                ("--state-dir", &state),
                ("--lifecycle", &lc),
                ("--alerts", &d.path(&format!("{name}-alerts.jsonl"))),
            ],
            &[&input],
        );
        let r: serde_json::Value =
            serde_json::from_slice(&report_rotation(&state, "json").stdout).unwrap();
        assert_eq!(r.as_array().map(Vec::len), Some(2), "{r}");
        r
    };
    let want_half = scan_report("scan-half", half);
    let want = scan_report("scan-all", all.len());
    assert_ne!(want_half, want);

    produce(&b.addr(), "key-lifecycle", &keyed(&read_lines(&lc)));
    let mut ends = std::collections::BTreeMap::new();
    let mut produce_events = |from: usize, to: usize| {
        for (p, o) in produce(&b.addr(), "access-events", &keyed(&all[from..to])) {
            let e = ends.entry(p).or_insert(0);
            *e = o.max(*e);
        }
        ends.clone()
    };
    let caught_up =
        |what: &str, ends: &std::collections::BTreeMap<i32, i64>, dets: &[&Detector]| {
            wait_for(what, Duration::from_secs(60), dets, || {
                let c = committed(&b.addr(), GROUP, "access-events", 4);
                ends.iter().all(|(p, e)| c.get(p) == Some(e))
            })
        };
    let report_of = |det: &Detector| -> Option<serde_json::Value> {
        serde_json::from_str(&det.get("/v1/rotations")?).ok()
    };
    let reports_are = |what: &str, want: &serde_json::Value, dets: &[(&str, &Detector)]| {
        let all: Vec<&Detector> = dets.iter().map(|(_, d)| *d).collect();
        for (name, det) in dets {
            let mut got = None;
            let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                wait_for(
                    &format!("{name}'s report {what} to be the scan's"),
                    Duration::from_secs(30),
                    &all,
                    || {
                        got = report_of(det);
                        got.as_ref() == Some(want)
                    },
                )
            }));
            if waited.is_err() {
                panic!(
                    "{name}'s report {what}:\n{}\nthe scan's:\n{}",
                    serde_json::to_string_pretty(&got).unwrap(),
                    serde_json::to_string_pretty(want).unwrap()
                );
            }
        }
    };

    // both instances from the start: the first half
    let a = Detector::start(&d, "a", &cfg_a);
    let bb = Detector::start(&d, "b", &cfg_b);
    wait_split(&a, &bb);
    let e = produce_events(0, half);
    caught_up("both through the first half", &e, &[&a, &bb]);
    // an old key and its successor are processed by different instances
    let partition_of: HashMap<String, String> =
        consume(&b.addr(), "access-events", half, Duration::from_secs(30))
            .into_iter()
            .filter_map(|m| {
                Some((
                    String::from_utf8(m.key?).ok()?,
                    format!("access-events/{}", m.partition),
                ))
            })
            .collect();
    let (pa, pb) = (a.assigned(), bb.assigned());
    let split = [("old-a", "new-a"), ("old-b", "new-b")]
        .iter()
        .any(|(old, new)| {
            let (po, pn) = (&partition_of[*old], &partition_of[*new]);
            (pa.contains(po) && pb.contains(pn)) || (pb.contains(po) && pa.contains(pn))
        });
    assert!(
        split,
        "no rotation spans both instances: {partition_of:?} A {pa:?} B {pb:?}"
    );
    reports_are("before any move", &want_half, &[("A", &a), ("B", &bb)]);

    // B leaves: its partitions move to A mid-stream
    assert!(bb.stop().success());
    wait_owns_all(&a, "A to own every partition");
    let e = produce_events(half, three_quarters);
    caught_up("A through the third quarter", &e, &[&a]);
    // B comes back: partitions move to it, its state is behind them
    let bb = Detector::start(&d, "b", &cfg_b);
    wait_split(&a, &bb);
    let e = produce_events(three_quarters, all.len());
    caught_up("both through the last quarter", &e, &[&a, &bb]);
    reports_are("after the moves", &want, &[("A", &a), ("B", &bb)]);

    // from Kafka alone, no state directory
    let o = run_ok(
        &[
            "report",
            "rotation",
            "--brokers",
            &b.addr(),
            "--usage-topic",
            "replayguard-usage",
            "--lifecycle-topic",
            "key-lifecycle",
            "--format",
            "json",
        ],
        None,
    );
    let from_kafka: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(from_kafka, want);
    // the partitions that moved got their usage from the usage topic, and
    // every instance's table holds the group's four keys
    for (name, det) in [("A", &a), ("B", &bb)] {
        let m = det.get("/metrics").unwrap_or_default();
        assert!(
            m.lines().any(|l| l == "replayguard_usage_table_keys 4"),
            "{name}: {}",
            m.lines()
                .filter(|l| l.contains("usage"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            det.log_text()
                .contains("usage of the partition's keys taken from the usage topic"),
            "{name}: {}",
            det.log_text()
        );
    }
    assert!(bb.stop().success());
    assert!(a.stop().success());
}

/// The sequence rule's running maximum follows a partition to another
/// instance: every key sends a large counter long before the partitions
/// move (its window has expired by then: the new owner never re-reads it),
/// then, after the move, a small one — out of sequence on whichever
/// instance owns the key, exactly the model's alerts.
#[test]
fn a_partition_handed_over_keeps_the_sequence_maximum() {
    use replayguard::detect::{DetectConfig, Toggle};
    let d = Dir::new();
    let b = setup_broker(&d);
    let seq = "[detect]\nsequence = \"on\"\n";
    let (cfg_a, cfg_b) = (
        detector_config(&d, "a", &b, GROUP, seq),
        detector_config(&d, "b", &b, GROUP, seq),
    );
    let keys = 64;
    let counters = |tag: &str, t: i64, n: u64| -> Vec<String> {
        (0..keys)
            .map(|k| {
                event(
                    &format!("{tag}-e{k}"),
                    t + k as i64,
                    &format!("key-{k}"),
                    &(n + k as u64).to_string(),
                    "10.0.0.1",
                )
            })
            .collect()
    };
    // large counters, long before
    let p0 = counters("p0", T0 - 1_000_000, 1_000_000);
    let ends0 = produce(&b.addr(), "access-events", &keyed(&p0));
    let a = Detector::start(&d, "a", &cfg_a);
    wait_owns_all(&a, "A to own every partition");
    wait_group_at(&b, GROUP, &ends0, &[&a]);
    // other nonces, much later: A folds the counters into each key's maximum
    // and the sighting log forgets them
    let p1 = phase("p1", T0, keys, None);
    let ends1 = produce(&b.addr(), "access-events", &keyed(&p1));
    wait_group_at(&b, GROUP, &ends1, &[&a]);
    // B joins: partitions move A -> B
    let bb = Detector::start(&d, "b", &cfg_b);
    wait_split(&a, &bb);
    // small counters, then traffic that moves every watermark past them
    let p2 = counters("p2", T0 + 60_000, 5);
    let p3 = phase("p3", T0 + 200_000, keys, None);
    produce(&b.addr(), "access-events", &keyed(&p2));
    produce(&b.addr(), "access-events", &keyed(&p3));
    let rules = DetectConfig {
        sequence: Toggle::On,
        ..DetectConfig::default()
    };
    let want = expected_with(&rules, &[p0, p1, p2, p3].concat(), &[]);
    assert_eq!(
        want.iter().filter(|w| w.0 == "out_of_sequence").count(),
        keys,
        "every small counter is out of sequence: {want:?}"
    );
    let (_, alerts) = expect_alerts(&b, "out_of_sequence after the move", &want, &[&a, &bb]);
    // B rebuilt the partitions it got, and every verdict names the large
    // counter of phase 0 (which B never read)
    assert!(bb.log_text().contains("rebuilding the partition's state"));
    // A marked the partitions it handed over on the usage topic
    let usage = consume(&b.addr(), "replayguard-usage", 1, Duration::from_secs(10));
    let marks = usage
        .iter()
        .filter(|m| {
            m.key
                .as_deref()
                .is_some_and(|k| k.starts_with(b"\0replayguard/partition/access-events/"))
        })
        .count();
    assert!(marks >= 1, "a partition mark on the usage topic");
    for x in alerts
        .iter()
        .filter(|x| x.kind.as_str() == "out_of_sequence")
    {
        let replayguard::schema::Evidence::Sequence(e) = &x.evidence else {
            panic!("{x:?}");
        };
        assert_eq!(e.larger_event_id, x.event_id.replace("p2-", "p0-"), "{x:?}");
    }
    assert!(bb.stop().success());
    assert!(a.stop().success());
}
