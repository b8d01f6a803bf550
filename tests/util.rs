//! Helpers shared by the integration tests: a temp dir per test, the binary,
//! generated traffic and JSON-lines readers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use replayguard::decode::Decoder;
use replayguard::detect::DetectConfig;
use replayguard::generate::{self, GenConfig, TruthLine};
use replayguard::model::{self, ModelEvent};
use replayguard::schema::{Alert, AlertKind, LifecycleEvent};
use replayguard_testkit::kafka::{Broker, Detector};

pub use replayguard_testkit::Dir;

/// The `replayguard` binary under test (the testkit finds the same one).
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_replayguard"));
    c.env_remove("RUST_LOG");
    c
}

/// Runs the binary with `args`, optionally feeding `stdin`.
pub fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut c = bin();
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn replayguard");
    if let Some(input) = stdin {
        use std::io::Write;
        let mut s = child.stdin.take().unwrap();
        s.write_all(input).unwrap();
    }
    child.wait_with_output().expect("wait")
}

/// Runs the binary with `args` and insists it succeeded.
pub fn run_ok(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let o = run(args, stdin);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    o
}

/// `replayguard scan --quiet` with the given (flag, path) options over
/// `inputs`; it must succeed.
pub fn scan_ok(opts: &[(&str, &Path)], inputs: &[&Path]) -> Output {
    let mut args = vec!["scan", "--quiet"];
    for (flag, p) in opts {
        args.push(flag);
        args.push(p.to_str().unwrap());
    }
    args.extend(inputs.iter().map(|p| p.to_str().unwrap()));
    run_ok(&args, None)
}

/// The lines of a file.
pub fn read_lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .lines()
        .map(String::from)
        .collect()
}

/// `replayguard report rotation --format FORMAT` of a state dir; it must succeed.
pub fn report_rotation(state: &Path, format: &str) -> Output {
    run_ok(
        &[
            "report",
            "rotation",
            "--state-dir",
            state.to_str().unwrap(),
            "--format",
            format,
        ],
        None,
    )
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn alerts_in(text: &str) -> Vec<Alert> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("alert line {l}: {e}")))
        .collect()
}

pub fn read_alerts(p: &Path) -> Vec<Alert> {
    alerts_in(&std::fs::read_to_string(p).unwrap_or_default())
}

pub fn read_json_lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Generated traffic with its ground truth.
pub struct Traffic {
    pub events: PathBuf,
    pub lifecycle: PathBuf,
    pub truth: Vec<TruthLine>,
    pub lines: Vec<String>,
}

pub fn traffic(dir: &Dir, cfg: &GenConfig) -> Traffic {
    let mut ev = Vec::new();
    let mut lc = Vec::new();
    let mut truth = Vec::new();
    generate::generate(
        cfg,
        &DetectConfig::default(),
        &mut ev,
        Some(&mut lc),
        Some(&mut truth),
    )
    .unwrap();
    let events = dir.path("events.jsonl");
    let lifecycle = dir.path("lifecycle.jsonl");
    std::fs::write(&events, &ev).unwrap();
    std::fs::write(&lifecycle, &lc).unwrap();
    let truth = String::from_utf8(truth)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lines = String::from_utf8(ev)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    Traffic {
        events,
        lifecycle,
        truth,
        lines,
    }
}

/// (kind, key, event) triples, sorted.
fn sorted_triples<'a>(
    it: impl Iterator<Item = (AlertKind, &'a str, &'a str)>,
) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = it
        .map(|(k, key, ev)| (k.as_str().to_string(), key.to_string(), ev.to_string()))
        .collect();
    v.sort();
    v
}

/// (kind, key, event) of the core-rule alerts (what the model predicts), sorted.
pub fn keyset(alerts: &[Alert]) -> Vec<(String, String, String)> {
    sorted_triples(
        alerts
            .iter()
            .filter(|a| a.kind.is_core())
            .map(|a| (a.kind, a.key_id.as_str(), a.event_id.as_str())),
    )
}

pub fn truth_keyset(t: &[TruthLine]) -> Vec<(String, String, String)> {
    sorted_triples(
        t.iter()
            .map(|a| (a.kind, a.key_id.as_str(), a.event_id.as_str())),
    )
}

/// 2026-11-28T00:00:00Z
pub const T0: i64 = 1_795_824_000_000;

/// (kind, key, event) of the alerts the model expects for `lines` (arrival
/// order) under `lifecycle`.
pub fn model_expected(
    lines: &[String],
    lifecycle: &[LifecycleEvent],
) -> Vec<(AlertKind, String, String)> {
    model_expected_with(&DetectConfig::default(), lines, lifecycle)
}

/// [`model_expected`] under the given rules.
pub fn model_expected_with(
    rules: &DetectConfig,
    lines: &[String],
    lifecycle: &[LifecycleEvent],
) -> Vec<(AlertKind, String, String)> {
    let d = Decoder::default();
    let events: Vec<ModelEvent> = lines
        .iter()
        .filter_map(|l| d.access(l.as_bytes()).ok().map(|e| ModelEvent::from(&e)))
        .collect();
    model::expected_alerts(rules, &events, lifecycle)
        .into_iter()
        .map(|e| (e.kind, e.key_id, e.event_id))
        .collect()
}

/// One request of each of 40 more keys, past the allowed lateness after the
/// newest of `lines`: with them, every partition's watermark passes the
/// traffic (a live stream judges sequence numbers once event time has
/// passed them; `scan` does at the end of its input).
pub fn ticks_past_lateness(lines: &[String]) -> Vec<String> {
    let d = Decoder::default();
    let last = lines
        .iter()
        .filter_map(|l| d.access(l.as_bytes()).ok())
        .map(|e| e.received_at)
        .max()
        .expect("decodable traffic");
    (0..40)
        .map(|i| {
            event(
                &format!("tick-{i}"),
                last + 61_000 + i,
                &format!("tick-key-{i}"),
                &format!("t{i}"),
                "10.9.9.9",
            )
        })
        .collect()
}

/// The generated lifecycle file: its lines and its records.
pub fn lifecycle_of(t: &Traffic) -> (Vec<String>, Vec<LifecycleEvent>) {
    let lines: Vec<String> = std::fs::read_to_string(&t.lifecycle)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let recs = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, recs)
}

/// A broker with generated traffic, whose lifecycle records are already on
/// the lifecycle topic; returns the traffic and those records.
pub fn broker_with_traffic(cfg: &GenConfig) -> (Dir, Broker, Traffic, Vec<LifecycleEvent>) {
    let d = Dir::new();
    let b = setup_broker(&d);
    let t = traffic(&d, cfg);
    let (lc_lines, lc) = lifecycle_of(&t);
    replayguard_testkit::kafka::produce(
        &b.addr(),
        "key-lifecycle",
        &replayguard_testkit::kafka::keyed(&lc_lines),
    );
    (d, b, t, lc)
}

/// The partitions of the access topic, as `/v1/status` names them.
pub const ALL_PARTITIONS: [&str; 4] = [
    "access-events/0",
    "access-events/1",
    "access-events/2",
    "access-events/3",
];

/// Waits until two detectors share the four partitions.
pub fn wait_split(a: &Detector, b: &Detector) {
    replayguard_testkit::kafka::wait_for(
        "the partitions to be split",
        std::time::Duration::from_secs(60),
        &[a, b],
        || {
            let (x, y) = (a.assigned(), b.assigned());
            !x.is_empty() && !y.is_empty() && x.len() + y.len() == 4
        },
    );
}

/// Waits until `a` owns all four partitions.
pub fn wait_owns_all(a: &Detector, what: &str) {
    let d = std::time::Duration::from_secs(60);
    replayguard_testkit::kafka::wait_for(what, d, &[a], || a.assigned() == ALL_PARTITIONS);
}

/// Waits until `group` has committed `ends` (next offsets per partition of
/// the access topic).
pub fn wait_group_at(
    b: &Broker,
    group: &str,
    ends: &std::collections::BTreeMap<i32, i64>,
    dets: &[&Detector],
) {
    replayguard_testkit::kafka::wait_for(
        "the group's offsets to reach the log end",
        std::time::Duration::from_secs(120),
        dets,
        || {
            let c = replayguard_testkit::kafka::committed(&b.addr(), group, "access-events", 4);
            ends.iter().all(|(p, e)| c.get(p) == Some(e))
        },
    );
}

/// A broker and the configs of two detectors `a` and `b` of `group`.
pub fn two_detectors(group: &str) -> (Dir, Broker, PathBuf, PathBuf) {
    let d = Dir::new();
    let b = setup_broker(&d);
    let cfg = |name| replayguard_testkit::kafka::detector_config(&d, name, &b, group, "");
    let (a, c) = (cfg("a"), cfg("b"));
    (d, b, a, c)
}

/// A broker with the access topic (4 partitions) and the lifecycle topic.
pub fn setup_broker(d: &Dir) -> Broker {
    let b = Broker::start(d);
    b.create_topic("access-events", 4);
    b.create_topic("key-lifecycle", 1);
    b
}

/// One access event line.
pub fn event(id: &str, t: i64, key: &str, nonce: &str, ip: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","received_at":{t},"key_id":"{key}","nonce":"{nonce}","client_ts":{t},"client_ip":"{ip}","method":"POST","path":"/api/v3/order","status":200}}"#
    )
}

/// First sightings of `tag` for many keys, or replays (from another client)
/// of an earlier phase's nonces.
pub fn phase(tag: &str, t: i64, keys: usize, replays_of: Option<&str>) -> Vec<String> {
    (0..keys)
        .map(|k| {
            let nonce = format!("{}-n{k}", replays_of.unwrap_or(tag));
            let ip = if replays_of.is_some() {
                "192.0.2.9"
            } else {
                "10.0.0.1"
            };
            event(
                &format!("{tag}-e{k}"),
                t + k as i64,
                &format!("key-{k}"),
                &nonce,
                ip,
            )
        })
        .collect()
}
