//! Rule tests: every boundary of every rule, and property tests against the
//! reference model ([`crate::model`]).

use std::borrow::Cow;

use proptest::prelude::*;

use super::*;
use crate::model::{self, ModelEvent};
use crate::schema::{AccessEvent, Alert, AlertKind, Evidence, KeyState, LifecycleEvent, Millis};

const T0: Millis = 1_795_824_000_000; // 2026-11-28T00:00:00Z
const S: Millis = 1000;

fn ev(id: &str, t: Millis, key: &str, nonce: Option<&str>) -> AccessEvent<'static> {
    AccessEvent {
        event_id: Cow::Owned(id.into()),
        received_at: t,
        key_id: Some(Cow::Owned(key.into())),
        nonce: nonce.map(|n| Cow::Owned(n.into())),
        client_ts: Some(t),
        client_ip: Cow::Borrowed("10.0.0.1"),
        method: Cow::Borrowed("GET"),
        path: Cow::Borrowed("/v1/x"),
        status: 200,
        user_agent: None,
        client_id: None,
        signature: None,
    }
}

struct Harness {
    det: ShardDetector,
    log: VecLog,
    lc: LifecycleTable,
    next_pos: u64,
}

impl Harness {
    fn new(cfg: DetectConfig) -> Self {
        Harness {
            det: ShardDetector::new(cfg, 42),
            log: VecLog::default(),
            lc: LifecycleTable::default(),
            next_pos: 0,
        }
    }

    fn feed(&mut self, e: &AccessEvent<'_>) -> (Verdict, Vec<Alert>) {
        self.next_pos += 1;
        let pos = Position::new(0, self.next_pos);
        self.feed_at(e, pos)
    }

    fn feed_at(&mut self, e: &AccessEvent<'_>, pos: Position) -> (Verdict, Vec<Alert>) {
        let mut out = vec![];
        let v = self
            .det
            .process(e, pos, &self.lc, &mut self.log, &mut out)
            .unwrap();
        (v, out)
    }

    fn kinds(&mut self, e: &AccessEvent<'_>) -> Vec<AlertKind> {
        self.feed(e).1.iter().map(|a| a.kind).collect()
    }
}

fn replay_first(a: &Alert) -> &str {
    match &a.evidence {
        Evidence::Replay(r) => &r.first_sighting.event_id,
        e => panic!("not replay evidence: {e:?}"),
    }
}

fn replay_evidence(a: &Alert) -> &crate::schema::alert::ReplayEvidence {
    match &a.evidence {
        Evidence::Replay(r) => r,
        e => panic!("not replay evidence: {e:?}"),
    }
}

#[test]
fn replay_severity_says_whether_the_api_accepted_it_and_from_whom() {
    use crate::schema::alert::ReplayBasis;
    use crate::schema::Severity;
    // (status of the replay, its client_ip, its client_id) -> (accepted, severity)
    for (status, ip, client, accepted, severity) in [
        (200, "10.0.0.9", None, true, Severity::Critical),
        (200, "10.0.0.1", None, true, Severity::High),
        (399, "10.0.0.1", Some("c-1"), true, Severity::High),
        // client ids decide when both have one, whatever the addresses
        (200, "10.0.0.9", Some("c-1"), true, Severity::High),
        (200, "10.0.0.1", Some("c-2"), true, Severity::Critical),
        (400, "10.0.0.9", None, false, Severity::Medium),
        (401, "10.0.0.1", None, false, Severity::Medium),
    ] {
        let mut h = Harness::new(DetectConfig::default());
        let mut first = ev("a", T0, "k", Some("n"));
        first.client_id = Some(Cow::Borrowed("c-1"));
        h.feed(&first);
        let mut again = ev("b", T0 + S, "k", Some("n"));
        again.status = status;
        again.client_ip = Cow::Borrowed(ip);
        again.client_id = client.map(Cow::Borrowed);
        again.method = Cow::Borrowed("DELETE");
        again.user_agent = Some(Cow::Borrowed("curl/8"));
        let (_, alerts) = h.feed(&again);
        assert_eq!(alerts.len(), 1, "{status} {ip} {client:?}");
        let a = &alerts[0];
        let r = replay_evidence(a);
        assert_eq!(
            (r.accepted, a.severity),
            (accepted, severity),
            "{status} {ip} {client:?}"
        );
        assert_eq!(r.basis, ReplayBasis::Nonce);
        assert_eq!(r.first_sighting.status, 200);
        assert_eq!(r.first_sighting.client_id.as_deref(), Some("c-1"));
        let req = a.request.as_ref().expect("request context");
        assert_eq!(
            (
                req.client_ip.as_str(),
                req.method.as_str(),
                req.path.as_str(),
                req.status
            ),
            (ip, "DELETE", "/v1/x", status)
        );
        assert_eq!(req.user_agent.as_deref(), Some("curl/8"));
        assert_eq!(req.client_id.as_deref(), client);
    }
}

#[test]
fn a_late_request_that_opens_the_window_is_evidence_with_its_context() {
    // the former first sighting becomes the replay: its context comes from the log
    let mut h = Harness::new(DetectConfig::default());
    let mut w = ev("w", T0 + 10 * S, "k", Some("n"));
    w.status = 403;
    w.client_id = Some(Cow::Borrowed("c-w"));
    w.path = Cow::Borrowed("/v1/w");
    h.feed(&w);
    let (_, alerts) = h.feed(&ev("e", T0, "k", Some("n")));
    assert_eq!(alerts.len(), 1);
    let a = &alerts[0];
    assert_eq!((a.event_id.as_str(), replay_first(a)), ("w", "e"));
    let req = a.request.as_ref().unwrap();
    assert_eq!((req.path.as_str(), req.status), ("/v1/w", 403));
    assert_eq!(req.client_id.as_deref(), Some("c-w"));
    assert_eq!(a.severity, crate::schema::Severity::Medium);
}

#[test]
fn signatures_replay_requests_without_a_nonce() {
    use crate::schema::alert::ReplayBasis;
    let signed = |id: &str, t: Millis, nonce: Option<&str>, sig: &str| {
        let mut e = ev(id, t, "k", nonce);
        e.signature = Some(Cow::Owned(sig.to_string()));
        e
    };
    let cfg = DetectConfig::default();
    let mut h = Harness::new(cfg);
    h.feed(&signed("a", T0, None, "sig-1"));
    let (_, alerts) = h.feed(&signed("b", T0 + cfg.retention_ms, None, "sig-1"));
    assert_eq!(alerts.len(), 1, "inclusive at the retention");
    assert_eq!(replay_evidence(&alerts[0]).basis, ReplayBasis::Signature);
    assert_eq!(replay_first(&alerts[0]), "a");
    // beyond the retention: a new first sighting
    assert!(h
        .kinds(&signed("c", T0 + 2 * cfg.retention_ms + 1, None, "sig-1"))
        .is_empty());
    // another key's equal signature is no replay
    let mut other = signed("d", T0 + 2 * cfg.retention_ms + 2, None, "sig-1");
    other.key_id = Some(Cow::Borrowed("k2"));
    assert!(h.kinds(&other).is_empty());
    // the state holds the signature's hash only
    assert!(!h.log.windows.is_empty());
    assert!(h
        .log
        .windows
        .iter()
        .all(|w| !format!("{w:?}").contains("sig-1")));
    // a request with a nonce is judged by its nonce only
    let mut h = Harness::new(cfg);
    h.feed(&signed("a", T0, Some("n1"), "sig-1"));
    assert!(h
        .kinds(&signed("b", T0 + S, Some("n2"), "sig-1"))
        .is_empty());
    assert!(h.kinds(&signed("c", T0 + 2 * S, None, "sig-1")).is_empty());
    assert_eq!(
        h.kinds(&signed("d", T0 + 3 * S, None, "sig-1")),
        vec![AlertKind::Replay]
    );
    // off: never
    let mut h = Harness::new(DetectConfig {
        signature_replay: false,
        ..cfg
    });
    h.feed(&signed("a", T0, None, "sig-1"));
    assert!(h.kinds(&signed("b", T0 + S, None, "sig-1")).is_empty());
}

fn seq_rules() -> DetectConfig {
    DetectConfig {
        sequence: Toggle::On,
        ..DetectConfig::default()
    }
}

fn sequence_evidence(a: &Alert) -> &crate::schema::alert::SequenceEvidence {
    match &a.evidence {
        Evidence::Sequence(q) => q,
        e => panic!("not sequence evidence: {e:?}"),
    }
}

/// The traffic of the sequence boundary tests: "p" carries 50 and "a" 100;
/// each later request tests one boundary, and only "c" is out of sequence.
fn sequence_boundaries(tol: Millis) -> Vec<AccessEvent<'static>> {
    vec![
        ev("p", T0 - 1, "k", Some("50")),
        ev("a", T0, "k", Some("100")),
        // exactly the tolerance after: not checked against "a"
        ev("b", T0 + tol, "k", Some("98")),
        // 1 ms beyond: checked, and smaller
        ev("c", T0 + tol + 1, "k", Some("99")),
        // the same nonce again: a replay, not also out of sequence
        ev("d", T0 + tol + 2, "k", Some("100")),
        // another nonce, the same number: not smaller
        ev("e", T0 + tol + 3, "k", Some("0100")),
        // not sequence numbers: never checked
        ev("f", T0 + tol + 4, "k", Some("12ab")),
        ev("g", T0 + tol + 5, "k", Some("-1")),
        ev("h", T0 + tol + 6, "k", Some("18446744073709551616")),
        ev("i", T0 + tol + 7, "k", Some("")),
        // another key: its own sequence
        ev("j", T0 + tol + 8, "k2", Some("1")),
        // a replay of "p", smaller than "a": a replay only
        ev("q", T0 + tol + 9, "k", Some("50")),
    ]
}

/// A request below the maximum already folded in is certain to be out of
/// sequence: its context is kept from the request itself, and goes with
/// the alert when the watermark passes it, unless a late request of the
/// same nonce turns it into a replay first.
#[test]
fn a_request_below_the_folded_maximum_keeps_its_context_until_judged() {
    let cfg = seq_rules();
    let (tol, late) = (cfg.sequence_tolerance_ms, cfg.allowed_lateness_ms);
    let mut h = Harness::new(cfg);
    let with_path = |id: &str, t: Millis, nonce: &str, path: &'static str| {
        let mut e = ev(id, t, "k", Some(nonce));
        e.path = Cow::Borrowed(path);
        e
    };
    let t1 = T0 + tol + 1_000;
    let mut alerts = vec![];
    alerts.extend(h.feed(&ev("a", T0, "k", Some("100"))).1);
    alerts.extend(h.feed(&ev("b", t1, "k", Some("150"))).1);
    // the watermark passes "b": judging it folds "a" in (maximum 100)
    let t2 = t1 + late + 1_000;
    alerts.extend(h.feed(&ev("z", t2, "k2", Some("1"))).1);
    assert_eq!(h.det.seq_states()["k"].max_n(), Some(100));
    assert_eq!(h.det.seq_contexts_waiting(), 0);
    // below 100: kept with its context; above 100: not known yet, not kept
    alerts.extend(h.feed(&with_path("c", t2 - late + 10, "99", "/ctx/c")).1);
    alerts.extend(h.feed(&with_path("e", t2 - late + 11, "120", "/ctx/e")).1);
    assert_eq!(h.det.seq_contexts_waiting(), 1);
    // kept, then a late request of the same nonce takes its place: "d" is a
    // replay, not out of sequence, and its kept context goes
    alerts.extend(h.feed(&with_path("d", t2 - late + 30, "98", "/ctx/d")).1);
    assert_eq!(h.det.seq_contexts_waiting(), 2);
    let (_, r) = h.feed(&with_path("x", t2 - late + 20, "98", "/ctx/x"));
    assert_eq!(
        r.iter()
            .map(|a| (a.kind, a.event_id.as_str()))
            .collect::<Vec<_>>(),
        [(AlertKind::Replay, "d")]
    );
    alerts.extend(r);
    // "x" is below 100 too: kept in "d"'s place
    assert_eq!(h.det.seq_contexts_waiting(), 2);
    assert!(
        alerts.iter().all(|a| a.kind == AlertKind::Replay),
        "{alerts:?}"
    );
    // the watermark passes them all: "c" and "x" out of sequence, each with
    // its own request; "e" is not ("b" is within the tolerance of it)
    let (_, judged) = h.feed(&ev("y", t2 + late, "k2", Some("2")));
    let got: Vec<_> = judged
        .iter()
        .map(|a| {
            let q = sequence_evidence(a);
            (
                a.event_id.as_str(),
                a.request.as_ref().map(|r| r.path.as_str()),
                q.larger_nonce.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("c", Some("/ctx/c"), "100"), ("x", Some("/ctx/x"), "100"),]
    );
    assert_eq!(h.det.seq_contexts_waiting(), 0);
}

#[test]
fn sequence_numbers_are_checked_strictly_beyond_the_tolerance() {
    let cfg = seq_rules();
    let tol = cfg.sequence_tolerance_ms;
    let mut h = Harness::new(cfg);
    let mut alerts = vec![];
    for e in sequence_boundaries(tol) {
        alerts.extend(h.feed(&e).1);
    }
    // judged once the watermark has passed them, not before
    assert!(
        alerts.iter().all(|a| a.kind == AlertKind::Replay),
        "{alerts:?}"
    );
    let replays: Vec<_> = alerts.iter().map(|a| a.event_id.as_str()).collect();
    assert_eq!(replays, ["d", "q"]);
    let later = ev("z", T0 + tol + 1 + cfg.allowed_lateness_ms + 1, "k3", None);
    let (_, judged) = h.feed(&later);
    assert_eq!(judged.len(), 1, "{judged:?}");
    let a = &judged[0];
    assert_eq!(
        (a.kind, a.event_id.as_str()),
        (AlertKind::OutOfSequence, "c")
    );
    assert_eq!(a.severity, crate::schema::Severity::High);
    a.check().unwrap();
    let q = sequence_evidence(a);
    assert_eq!(
        (
            q.larger_nonce.as_str(),
            q.larger_event_id.as_str(),
            q.larger_received_at
        ),
        ("100", "a", T0)
    );
    assert_eq!((q.gap, q.tolerance_ms), (1, tol));
    assert_eq!(a.request.as_ref().map(|r| r.path.as_str()), Some("/v1/x"));
    let mut rest = vec![];
    h.det.end_of_input(&mut h.log, &mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    // off (the default): never
    let mut h = Harness::new(DetectConfig::default());
    let mut off = vec![];
    for e in sequence_boundaries(tol) {
        off.extend(h.feed(&e).1);
    }
    h.det.end_of_input(&mut h.log, &mut off).unwrap();
    assert!(off.iter().all(|a| a.kind == AlertKind::Replay), "{off:?}");
}

#[test]
fn the_end_of_the_input_judges_what_waits_for_the_watermark() {
    let cfg = seq_rules();
    let mut h = Harness::new(cfg);
    let mut alerts = vec![];
    for e in sequence_boundaries(cfg.sequence_tolerance_ms) {
        alerts.extend(h.feed(&e).1);
    }
    h.det.end_of_input(&mut h.log, &mut alerts).unwrap();
    let kinds: Vec<_> = alerts
        .iter()
        .map(|a| (a.kind, a.event_id.as_str()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (AlertKind::Replay, "d"),
            (AlertKind::Replay, "q"),
            (AlertKind::OutOfSequence, "c")
        ]
    );
    assert_eq!(h.det.stats().alerts[AlertKind::OutOfSequence.index()], 1);
    // a request at a time already judged is not checked (only after an end of input)
    let (_, late) = h.feed(&ev("y", T0 + 1, "k", Some("1")));
    let mut rest = vec![];
    h.det.end_of_input(&mut h.log, &mut rest).unwrap();
    assert!(late.is_empty() && rest.is_empty(), "{late:?} {rest:?}");
}

/// Event time jumps on by more than the retention: the maximum folded by
/// that move keeps its event id, read back before the sweep forgets its
/// window, and out-of-sequence alerts long after still name it.
#[test]
fn the_maximum_keeps_its_event_id_when_event_time_jumps_past_the_retention() {
    let cfg = seq_rules();
    let mut h = Harness::new(cfg);
    h.feed(&ev("a", T0, "k", Some("100")));
    h.feed(&ev("b", T0 + 1, "k", Some("101")));
    let jump = T0 + cfg.retention_ms + cfg.allowed_lateness_ms + 10 * cfg.sweep_interval_ms();
    h.feed(&ev("other", jump, "k2", None));
    h.det.resolve_sequence(&mut h.log).unwrap();
    let saved = h.det.take_dirty_seq();
    let k = saved
        .iter()
        .find(|(key, _)| *key == "k")
        .expect("k changed")
        .1;
    assert_eq!(
        k.max.as_ref().map(|m| (m.0, m.1.to_string(), m.2)),
        Some((101, "b".to_string(), T0 + 1))
    );
    h.feed(&ev("c", jump + 1, "k", Some("50")));
    let (_, judged) = h.feed(&ev(
        "z",
        jump + 2 + cfg.allowed_lateness_ms + cfg.sequence_tolerance_ms,
        "k3",
        None,
    ));
    let oos: Vec<_> = judged
        .iter()
        .filter(|a| a.kind == AlertKind::OutOfSequence)
        .collect();
    assert_eq!(oos.len(), 1, "{judged:?}");
    assert_eq!(oos[0].event_id, "c");
    assert_eq!(sequence_evidence(oos[0]).larger_event_id, "b");
}

#[test]
fn sequence_state_survives_a_restart_from_its_record_and_the_sighting_log() {
    let cfg = seq_rules();
    let tol = cfg.sequence_tolerance_ms;
    let mut h = Harness::new(cfg);
    h.feed(&ev("a", T0, "k", Some("100")));
    h.feed(&ev("c", T0 + tol + 1, "k", Some("99")));
    // what a commit writes: the keys' sequence state (postcard) and the clock
    let saved: Vec<(String, Vec<u8>)> = h
        .det
        .take_dirty_seq()
        .into_iter()
        .map(|(k, u)| (k.to_string(), postcard::to_stdvec(u).unwrap()))
        .collect();
    let clock = h.det.clock();
    // the record keeps the maximum and bounds only
    assert!(
        !saved.is_empty() && saved.iter().all(|(_, b)| b.len() < 100),
        "{saved:?}"
    );
    let mut det = ShardDetector::new(cfg, 7);
    for (k, b) in &saved {
        det.restore_seq_state(k, postcard::from_bytes(b).unwrap());
    }
    det.restore_clock(clock);
    // the requests not folded in come back from the sighting log, with
    // the index of its windows (alerts read their requests back)
    for (seg, w) in h.log.windows.iter().enumerate() {
        assert!(w.first.seq.is_some(), "{w:?}");
        det.restore_window(w.fp, w.first.received_at, seg as u32);
        det.restore_sequence(w.fp, &w.first, false);
    }
    det.finish_restore();
    let mut h2 = Harness::new(cfg);
    h2.det = det;
    h2.log = std::mem::take(&mut h.log);
    let (_, judged) = h2.feed(&ev("z", T0 + tol + 2 + cfg.allowed_lateness_ms, "k3", None));
    assert_eq!(judged.len(), 1, "{judged:?}");
    assert_eq!(judged[0].event_id, "c");
    assert_eq!(sequence_evidence(&judged[0]).larger_event_id, "a");
    // the state is bounded: once judged and beyond the tolerance, only the
    // running maximum stays
    let k = &h2.det.seq_states()["k"];
    assert!(k.buf.len() <= 1, "{k:?}");
}

#[test]
fn replay_window_is_inclusive_at_the_retention() {
    let cfg = DetectConfig::default();
    let r = cfg.retention_ms;
    for (age, replay) in [
        (0, true),
        (1, true),
        (r - 1, true),
        (r, true),
        (r + 1, false),
    ] {
        let mut h = Harness::new(cfg);
        assert!(h.kinds(&ev("a", T0, "k", Some("n"))).is_empty());
        let (v, alerts) = h.feed(&ev("b", T0 + age, "k", Some("n")));
        assert_eq!(v, Verdict::Evaluated);
        assert_eq!(!alerts.is_empty(), replay, "age {age}");
        if replay {
            let a = &alerts[0];
            assert_eq!(a.kind, AlertKind::Replay);
            assert_eq!(a.event_id, "b");
            assert_eq!(replay_first(a), "a");
            let Evidence::Replay(e) = &a.evidence else {
                unreachable!()
            };
            assert_eq!(e.age_ms, age);
            assert_eq!(e.first_sighting.received_at, T0);
            assert!(e.same_ip);
            assert_eq!(
                a.alert_id,
                crate::schema::alert::alert_id(AlertKind::Replay, "k", "b")
            );
        }
    }
}

#[test]
fn every_reuse_alerts_and_none_extends_the_window() {
    let cfg = DetectConfig::default();
    let r = cfg.retention_ms;
    let mut h = Harness::new(cfg);
    h.feed(&ev("a", T0, "k", Some("n")));
    assert_eq!(
        h.kinds(&ev("b", T0 + 100 * S, "k", Some("n"))),
        vec![AlertKind::Replay]
    );
    assert_eq!(
        h.kinds(&ev("c", T0 + 200 * S, "k", Some("n"))),
        vec![AlertKind::Replay]
    );
    // b and c did not extend a's window: one past it opens a new one
    assert!(h.kinds(&ev("d", T0 + r + 1, "k", Some("n"))).is_empty());
    let (_, alerts) = h.feed(&ev("e", T0 + r + 2, "k", Some("n")));
    assert_eq!(replay_first(&alerts[0]), "d", "the new window starts at d");
}

#[test]
fn other_key_or_no_nonce_is_not_a_replay() {
    let mut h = Harness::new(DetectConfig::default());
    h.feed(&ev("a", T0, "k1", Some("n")));
    assert!(h.kinds(&ev("b", T0 + 1, "k2", Some("n"))).is_empty());
    assert!(h.kinds(&ev("c", T0 + 2, "k1", None)).is_empty());
    assert!(h.kinds(&ev("d", T0 + 3, "k1", None)).is_empty());
    // the empty string is a nonce like any other
    h.feed(&ev("e", T0 + 4, "k1", Some("")));
    assert_eq!(
        h.kinds(&ev("f", T0 + 5, "k1", Some(""))),
        vec![AlertKind::Replay]
    );
    // key and nonce are kept apart: ("k1","n") is not ("k","1n")
    assert!(h.kinds(&ev("g", T0 + 6, "k", Some("1n"))).is_empty());
}

#[test]
fn transport_duplicates_raise_nothing_and_are_counted() {
    let mut h = Harness::new(DetectConfig::default());
    let mut stale = ev("a", T0, "k", Some("n"));
    stale.client_ts = Some(T0 - 400 * S);
    assert_eq!(h.kinds(&stale), vec![AlertKind::StaleTimestamp]);
    let (v, alerts) = h.feed(&stale);
    assert_eq!((v, alerts.len()), (Verdict::Duplicate, 0));
    // a duplicate of a replay, and of an event without nonce
    h.feed(&ev("b", T0 + 1, "k", Some("n")));
    assert_eq!(
        h.feed(&ev("b", T0 + 1, "k", Some("n"))).0,
        Verdict::Duplicate
    );
    h.feed(&ev("c", T0 + 2, "k", None));
    assert_eq!(h.feed(&ev("c", T0 + 2, "k", None)).0, Verdict::Duplicate);
    assert_eq!(h.det.stats().duplicates, 3);
    assert_eq!(h.det.stats().alerts[AlertKind::Replay.index()], 1);
}

/// An event id reused by another request of the same key (outside the
/// input contract: a copy keeps every field), as the README says: a
/// duplicate when the first was a replay or had no nonce, otherwise a
/// request of its own.
#[test]
fn a_reused_event_id_with_another_nonce() {
    let mut h = Harness::new(DetectConfig::default());
    // the first had no nonce: the second is a duplicate
    h.feed(&ev("x", T0, "k", None));
    assert_eq!(
        h.feed(&ev("x", T0 + 1, "k", Some("n1"))).0,
        Verdict::Duplicate
    );
    // the first was a replay: the same
    h.feed(&ev("a", T0 + 2, "k", Some("m")));
    let (v, alerts) = h.feed(&ev("y", T0 + 3, "k", Some("m")));
    assert_eq!((v, alerts.len()), (Verdict::Evaluated, 1));
    assert_eq!(
        h.feed(&ev("y", T0 + 4, "k", Some("z"))).0,
        Verdict::Duplicate
    );
    assert_eq!(h.det.stats().duplicates, 2);
    // the first was a first sighting: the second is judged on its own, the
    // first sighting of its nonce, which a third request then replays
    assert_eq!(
        h.feed(&ev("a", T0 + 5, "k", Some("q"))).0,
        Verdict::Evaluated
    );
    let (_, alerts) = h.feed(&ev("b", T0 + 6, "k", Some("q")));
    assert_eq!(alerts.len(), 1);
    assert_eq!(replay_first(&alerts[0]), "a");
    assert_eq!(h.det.stats().duplicates, 2);
}

/// A request is (key_id, event_id): a redelivered copy carries both. The
/// same event id under another key is another request, judged by every
/// rule; an unsigned request is its own identity space.
#[test]
fn a_request_is_its_key_and_event_id() {
    let mut h = Harness::new(DetectConfig::default());
    assert_eq!(h.feed(&ev("x", T0, "k1", Some("n"))).0, Verdict::Evaluated);
    // same event id, another key: evaluated (and its own first sighting)
    let (v, alerts) = h.feed(&ev("x", T0 + 1, "k2", Some("n")));
    assert_eq!((v, alerts.len()), (Verdict::Evaluated, 0));
    // a reuse of k2's nonce under yet another event id is a replay of "x" of k2
    let (_, alerts) = h.feed(&ev("y", T0 + 2, "k2", Some("n")));
    assert_eq!(alerts.len(), 1);
    assert_eq!(replay_first(&alerts[0]), "x");
    let mut unsigned = ev("x", T0 + 3, "k1", None);
    unsigned.key_id = None;
    assert_eq!(h.feed(&unsigned).0, Verdict::Evaluated);
    assert_eq!(h.feed(&unsigned).0, Verdict::Duplicate);
    // and the copies of the keyed ones are duplicates
    assert_eq!(h.feed(&ev("x", T0, "k1", Some("n"))).0, Verdict::Duplicate);
    assert_eq!(
        h.feed(&ev("x", T0 + 1, "k2", Some("n"))).0,
        Verdict::Duplicate
    );
    assert_eq!(h.det.stats().duplicates, 3);
}

/// Driven by its stream's clock (`catch_up` before each request), a shard
/// that gets only some keys takes the decisions one shard of every key
/// takes: lateness and the live window are the stream's.
#[test]
fn a_shard_on_the_stream_clock_judges_lateness_like_the_whole_stream() {
    let cfg = DetectConfig::default();
    let mut h = Harness::new(cfg);
    h.feed(&ev("a", T0, "k1", Some("n1")));
    // another shard saw the stream move far ahead meanwhile
    let ahead = T0 + cfg.retention_ms + cfg.allowed_lateness_ms + 2;
    let mut out = vec![];
    h.det.catch_up(ahead, &mut h.log, &mut out).unwrap();
    // a reuse of n1 at T0 + 1 is now beyond the live window: not judged
    let (_, alerts) = h.feed(&ev("b", T0 + 1, "k1", Some("n1")));
    assert!(alerts.is_empty(), "{alerts:?}");
    assert_eq!((h.det.stats().late, h.det.stats().too_late), (1, 1));
    // catching up backwards is a no-op
    h.det.catch_up(T0, &mut h.log, &mut out).unwrap();
    assert_eq!(h.det.clock().max_seen, Some(ahead));
}

#[test]
fn the_same_record_at_the_same_position_is_itself() {
    let mut h = Harness::new(DetectConfig::default());
    let p = Position::new(3, 17);
    h.feed_at(&ev("a", T0, "k", Some("n")), p);
    assert_eq!(
        h.feed_at(&ev("a", T0, "k", Some("n")), p).0,
        Verdict::Reprocessed
    );
    let q = Position::new(3, 18);
    h.feed_at(&ev("b", T0, "k", None), q);
    assert_eq!(
        h.feed_at(&ev("b", T0, "k", None), q).0,
        Verdict::Reprocessed
    );
    assert_eq!(h.det.stats().duplicates, 0);
    assert_eq!(h.det.stats().reprocessed, 2);
}

#[test]
fn one_event_can_raise_several_kinds() {
    let mut h = Harness::new(DetectConfig::default());
    h.lc.upsert(LifecycleEvent {
        key_id: "k".into(),
        state: KeyState::Revoked,
        at: T0 - 1,
        successor: None,
        grace_until: None,
    });
    let mut a = ev("a", T0, "k", Some("n"));
    a.client_ts = Some(T0 - 10 * S);
    h.feed(&a);
    let mut b = ev("b", T0 + 295 * S, "k", Some("n"));
    b.client_ts = a.client_ts; // a replayed signed request keeps its signed time
    b.client_ip = Cow::Borrowed("192.0.2.66");
    let (_, alerts) = h.feed(&b);
    let kinds: Vec<_> = alerts.iter().map(|a| a.kind).collect();
    assert_eq!(
        kinds,
        vec![
            AlertKind::Replay,
            AlertKind::StaleTimestamp,
            AlertKind::RevokedKey
        ]
    );
    let Evidence::Replay(r) = &alerts[0].evidence else {
        unreachable!()
    };
    assert!(!r.same_ip);
    assert_eq!(alerts[2].severity, crate::schema::Severity::Critical);
    let ids: std::collections::HashSet<_> = alerts.iter().map(|a| &a.alert_id).collect();
    assert_eq!(ids.len(), 3, "one id per kind");
}

#[test]
fn skew_limits_are_exclusive() {
    let cfg = DetectConfig::default();
    let mut h = Harness::new(cfg);
    let mut n = 0;
    let mut check = |h: &mut Harness, cts_offset: Millis| {
        n += 1;
        let mut e = ev(&format!("e{n}"), T0 + n * S, "k", None);
        e.client_ts = Some(e.received_at + cts_offset);
        h.kinds(&e)
    };
    assert!(check(&mut h, -300_000).is_empty());
    assert!(check(&mut h, -299_999).is_empty());
    assert_eq!(check(&mut h, -300_001), vec![AlertKind::StaleTimestamp]);
    assert!(check(&mut h, 30_000).is_empty());
    assert!(check(&mut h, 29_999).is_empty());
    assert_eq!(check(&mut h, 30_001), vec![AlertKind::FutureTimestamp]);
}

#[test]
fn lifecycle_by_event_time() {
    let mut h = Harness::new(DetectConfig::default());
    h.lc.upsert(LifecycleEvent {
        key_id: "old".into(),
        state: KeyState::Rotating,
        at: T0,
        successor: Some("new".into()),
        grace_until: Some(T0 + 100 * S),
    });
    h.lc.upsert(LifecycleEvent {
        key_id: "old".into(),
        state: KeyState::Retired,
        at: T0 + 200 * S,
        successor: Some("new".into()),
        grace_until: None,
    });
    let k = |h: &mut Harness, id: &str, t: Millis| h.kinds(&ev(id, t, "old", None));
    assert!(
        k(&mut h, "a", T0 - 1).is_empty(),
        "before any record: unknown keys are fine"
    );
    assert!(
        k(&mut h, "b", T0 + 100 * S).is_empty(),
        "grace is inclusive"
    );
    assert_eq!(
        k(&mut h, "c", T0 + 100 * S + 1),
        vec![AlertKind::RetiredKey]
    );
    assert_eq!(k(&mut h, "d", T0 + 200 * S), vec![AlertKind::RetiredKey]);
    let (_, alerts) = h.feed(&ev("e", T0 + 200 * S + 5, "old", None));
    let Evidence::Lifecycle(e) = &alerts[0].evidence else {
        unreachable!()
    };
    assert_eq!((e.state, e.at), (KeyState::Retired, T0 + 200 * S));
    assert_eq!(alerts[0].severity, crate::schema::Severity::High);
}

#[test]
fn late_event_takes_over_the_window() {
    let mut h = Harness::new(DetectConfig::default());
    h.feed(&ev("later", T0 + 10 * S, "k", Some("n")));
    // 'early' arrives late (within the lateness) but was sent first
    let (_, alerts) = h.feed(&ev("early", T0, "k", Some("n")));
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[0].event_id, "later",
        "the later request is the replay"
    );
    assert_eq!(replay_first(&alerts[0]), "early");
    assert_eq!(alerts[0].received_at, T0 + 10 * S);
    // a third sighting is judged against the new window start
    let (_, alerts) = h.feed(&ev("third", T0 + 20 * S, "k", Some("n")));
    assert_eq!(replay_first(&alerts[0]), "early");
    // and a copy of the demoted sighting is still a duplicate
    assert_eq!(
        h.feed(&ev("later", T0 + 10 * S, "k", Some("n"))).0,
        Verdict::Duplicate
    );
}

#[test]
fn equal_times_keep_arrival_order() {
    let mut h = Harness::new(DetectConfig::default());
    h.feed(&ev("z", T0, "k", Some("n")));
    let (_, alerts) = h.feed(&ev("a", T0, "k", Some("n")));
    assert_eq!(alerts[0].event_id, "a");
    assert_eq!(replay_first(&alerts[0]), "z");
}

#[test]
fn state_is_dropped_only_past_the_watermark() {
    let cfg = DetectConfig::default();
    let (r, l) = (cfg.retention_ms, cfg.allowed_lateness_ms);
    let mut h = Harness::new(cfg);
    h.feed(&ev("a", T0, "k", Some("n")));
    // watermark = T0 + r exactly: a's window (T0 + r) is not yet past
    h.feed(&ev("x", T0 + r + l, "k2", None));
    assert_eq!(h.det.watermark(), Some(T0 + r));
    // a reuse arriving late at exactly the retention is still judged against a
    let (_, alerts) = h.feed(&ev("b", T0 + r, "k", Some("n")));
    assert_eq!(alerts.len(), 1);
    assert_eq!(replay_first(&alerts[0]), "a");
    // far later: everything older than the window is swept from memory
    h.feed(&ev("y", T0 + 10 * r, "k2", None));
    assert_eq!(h.det.index().len(), 1, "only y is live");
}

#[test]
fn too_late_events_skip_the_replay_rule_but_not_the_others() {
    let cfg = DetectConfig::default();
    let mut h = Harness::new(cfg);
    h.feed(&ev("a", T0 + 10 * cfg.retention_ms, "k", None));
    let mut old = ev("b", T0, "k", Some("n"));
    old.client_ts = Some(T0 - 301 * S);
    assert_eq!(h.kinds(&old), vec![AlertKind::StaleTimestamp]);
    assert_eq!(h.det.stats().too_late, 1);
    assert_eq!(h.det.stats().late, 1);
}

#[test]
fn late_event_between_windows_is_judged_against_the_previous_window() {
    let cfg = DetectConfig {
        max_past_skew_ms: 100,
        max_future_skew_ms: 50,
        allowed_lateness_ms: 60,
        retention_ms: 210,
        ..DetectConfig::default()
    };
    let mut h = Harness::new(cfg);
    h.feed(&ev("p", T0, "k", Some("n")));
    h.feed(&ev("w", T0 + 250, "k", Some("n"))); // a new window (250 > 210)
                                                // late, before w, inside p's window
    let (_, alerts) = h.feed(&ev("e", T0 + 200, "k", Some("n")));
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].event_id.as_str(), replay_first(&alerts[0])),
        ("e", "p")
    );
    let mut h = Harness::new(cfg);
    h.feed(&ev("p", T0, "k", Some("n")));
    h.feed(&ev("w", T0 + 260, "k", Some("n")));
    // late, before w, outside p's window: it opens the window and w replays it
    let (_, alerts) = h.feed(&ev("e", T0 + 215, "k", Some("n")));
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        (alerts[0].event_id.as_str(), replay_first(&alerts[0])),
        ("w", "e")
    );
}

// ---------------------------------------------------------------------------
// Property tests against the reference model.

/// Small rules so that windows, skews and lateness all come into play.
const RULES: DetectConfig = DetectConfig {
    max_past_skew_ms: 100,
    max_future_skew_ms: 40,
    allowed_lateness_ms: 60,
    retention_ms: 200,
    signature_replay: true,
    sequence: crate::detect::Toggle::Off,
    sequence_tolerance_ms: 20,
};

#[derive(Debug, Clone)]
struct Gen {
    events: Vec<ModelEvent>,
    lifecycle: Vec<LifecycleEvent>,
}

fn arb_traffic() -> impl Strategy<Value = Gen> {
    let event = model::arb_event();
    let lc = (
        0usize..3,
        0usize..4,
        0i64..1500,
        prop::option::of(0i64..1500),
    );
    (
        prop::collection::vec(event, 1..120),
        prop::collection::vec(lc, 0..5),
        prop::collection::vec(any::<prop::sample::Index>(), 0..10),
    )
        .prop_map(|(evs, lcs, dups)| {
            let mut events: Vec<ModelEvent> = evs
                .into_iter()
                .enumerate()
                .map(|(i, e)| ModelEvent::generated(i, "", T0, e))
                .collect();
            events.sort_by_key(|e| e.received_at);
            // transport duplicates: copies of earlier events, a little later in the stream
            // (no further than the allowed lateness behind what came before)
            for d in dups {
                let i = d.index(events.len());
                let copy = events[i].clone();
                let mut at = i + 1;
                let limit = (i + 1 + d.index(5)).min(events.len());
                while at < limit
                    && events[at].received_at <= copy.received_at + RULES.allowed_lateness_ms
                {
                    at += 1;
                }
                events.insert(at, copy);
            }
            let lifecycle = lcs
                .into_iter()
                .map(|(k, s, at, g)| LifecycleEvent {
                    key_id: format!("k{k}"),
                    state: [
                        KeyState::Active,
                        KeyState::Rotating,
                        KeyState::Retired,
                        KeyState::Revoked,
                    ][s],
                    at: T0 + at,
                    successor: None,
                    grace_until: g.map(|g| T0 + g),
                })
                .collect();
            Gen { events, lifecycle }
        })
}

/// Reorders `events` so each arrives at most `lateness` behind the largest
/// time seen before it: sort by time plus a bounded delay. Events with equal
/// times get equal delays: among equal times, arrival order is the order the
/// rules use (the first to arrive is the first sighting), so the property is
/// about reordering different times.
fn shuffle_within_lateness(events: &[ModelEvent], delays: &[i64]) -> Vec<ModelEvent> {
    let mut v: Vec<(i64, usize)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (
                e.received_at
                    + delays[(e.received_at as usize).wrapping_mul(2_654_435_761) % delays.len()],
                i,
            )
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, i)| events[i].clone()).collect()
}

fn access(e: &ModelEvent) -> AccessEvent<'_> {
    AccessEvent {
        event_id: Cow::Borrowed(&e.event_id),
        received_at: e.received_at,
        key_id: e.key_id.as_deref().map(Cow::Borrowed),
        nonce: e.nonce.as_deref().map(Cow::Borrowed),
        client_ts: e.client_ts,
        client_ip: Cow::Borrowed(&e.client_ip),
        method: Cow::Borrowed("GET"),
        path: Cow::Borrowed("/"),
        status: 200,
        user_agent: None,
        client_id: None,
        signature: e.signature.as_deref().map(Cow::Borrowed),
    }
}

fn run_detector(events: &[ModelEvent], lifecycle: &[LifecycleEvent]) -> Vec<Alert> {
    run_with(RULES, events, lifecycle)
}

/// Runs `events` through one detector, then ends the input (what `scan`
/// does at the end of its files).
fn run_with(
    rules: DetectConfig,
    events: &[ModelEvent],
    lifecycle: &[LifecycleEvent],
) -> Vec<Alert> {
    let mut h = Harness::new(rules);
    for r in lifecycle {
        h.lc.upsert(r.clone());
    }
    let mut out = vec![];
    for e in events {
        out.extend(h.feed(&access(e)).1);
    }
    h.det.end_of_input(&mut h.log, &mut out).unwrap();
    out
}

/// [`run_with`] as the engine's workers drive a detector: each request
/// [`ShardDetector::prepare`]d `ahead` requests before it is processed.
fn run_prepared(
    rules: DetectConfig,
    events: &[ModelEvent],
    lifecycle: &[LifecycleEvent],
    ahead: usize,
) -> Vec<Alert> {
    let mut h = Harness::new(rules);
    for r in lifecycle {
        h.lc.upsert(r.clone());
    }
    let events: Vec<AccessEvent<'_>> = events.iter().map(access).collect();
    let mut ring: std::collections::VecDeque<Prepared> = events
        .iter()
        .take(ahead)
        .map(|e| h.det.prepare(e))
        .collect();
    let mut out = vec![];
    for (i, e) in events.iter().enumerate() {
        if let Some(a) = events.get(i + ahead) {
            ring.push_back(h.det.prepare(a));
        }
        let p = ring.pop_front();
        h.next_pos += 1;
        let pos = Position::new(0, h.next_pos);
        h.det
            .process_prepared(e, p, pos, &h.lc, &mut h.log, &mut out, UsageMode::Normal)
            .unwrap();
    }
    h.det.end_of_input(&mut h.log, &mut out).unwrap();
    out
}

/// [`RULES`] with sequence numbers checked.
const SEQ_RULES: DetectConfig = DetectConfig {
    sequence: crate::detect::Toggle::On,
    ..RULES
};

/// Traffic whose nonces are mostly sequence numbers ([`model::numbered`]).
fn arb_numbered() -> impl Strategy<Value = Gen> {
    arb_traffic().prop_map(|g| Gen {
        events: model::numbered(g.events, T0),
        lifecycle: g.lifecycle,
    })
}

/// What an out_of_sequence alert claims holds in the input.
fn check_sequence_evidence(
    alerts: &[Alert],
    events: &[ModelEvent],
) -> Result<(), proptest::test_runner::TestCaseError> {
    let by_id: std::collections::HashMap<&str, &ModelEvent> =
        events.iter().map(|e| (e.event_id.as_str(), e)).collect();
    for a in alerts.iter().filter(|a| a.kind == AlertKind::OutOfSequence) {
        let Evidence::Sequence(q) = &a.evidence else {
            panic!("not sequence evidence: {a:?}");
        };
        a.check()
            .map_err(proptest::test_runner::TestCaseError::fail)?;
        let me = by_id[a.event_id.as_str()];
        let larger = by_id[q.larger_event_id.as_str()];
        let n = crate::detect::sequence_number(me.nonce.as_deref().unwrap()).unwrap();
        let m = crate::detect::sequence_number(larger.nonce.as_deref().unwrap()).unwrap();
        prop_assert_eq!(&me.key_id, &larger.key_id);
        prop_assert_eq!(q.larger_nonce.parse::<u64>().unwrap(), m);
        prop_assert_eq!(q.gap, m - n);
        prop_assert_eq!(q.larger_received_at, larger.received_at);
        prop_assert!(me.received_at - larger.received_at > SEQ_RULES.sequence_tolerance_ms);
        prop_assert_eq!(a.received_at, me.received_at);
        prop_assert!(a.request.is_some());
    }
    Ok(())
}

fn keyset(alerts: &[Alert]) -> Vec<(AlertKind, String, String)> {
    let mut v: Vec<_> = alerts
        .iter()
        .filter(|a| a.kind.is_core())
        .map(|a| (a.kind, a.key_id.clone(), a.event_id.clone()))
        .collect();
    v.sort();
    v
}

fn model_keyset(exp: &[model::Expected]) -> Vec<(AlertKind, String, String)> {
    let mut v: Vec<_> = exp
        .iter()
        .map(|a| (a.kind, a.key_id.clone(), a.event_id.clone()))
        .collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// In order, the detector raises exactly the model's alerts, evidence included.
    #[test]
    fn in_order_matches_the_model(g in arb_traffic()) {
        let alerts = run_detector(&g.events, &g.lifecycle);
        let expected = model::expected_alerts(&RULES, &g.events, &g.lifecycle);
        prop_assert_eq!(keyset(&alerts), model_keyset(&expected));
        let mut firsts: Vec<_> = alerts.iter().filter(|a| a.kind == AlertKind::Replay)
            .map(|a| (a.event_id.clone(), replay_first(a).to_string())).collect();
        let mut want: Vec<_> = expected.iter().filter(|a| a.kind == AlertKind::Replay)
            .map(|a| (a.event_id.clone(), a.first_event_id.clone().unwrap())).collect();
        firsts.sort();
        want.sort();
        prop_assert_eq!(firsts, want);
        for a in &alerts {
            prop_assert_eq!(&a.alert_id, &crate::schema::alert::alert_id(a.kind, &a.key_id, &a.event_id));
        }
    }

    /// Preparing requests ahead (fingerprints, index slots into cache), as
    /// the workers do, changes no alert and no evidence, whatever the
    /// distance, with every rule on.
    #[test]
    fn requests_prepared_ahead_raise_the_same_alerts(
        g in arb_numbered(),
        ahead in 0usize..6,
    ) {
        let plain = run_with(SEQ_RULES, &g.events, &g.lifecycle);
        let prepared = run_prepared(SEQ_RULES, &g.events, &g.lifecycle, ahead);
        prop_assert_eq!(
            serde_json::to_string(&prepared).unwrap(),
            serde_json::to_string(&plain).unwrap()
        );
    }

    /// Arrival shuffled within the allowed lateness gives the same alerts
    /// (same ids); a replay's evidence names an earlier sighting of the same
    /// nonce inside the window.
    #[test]
    fn shuffled_within_lateness_matches_in_order(
        g in arb_traffic(),
        delays in prop::collection::vec(0i64..=RULES.allowed_lateness_ms, 1..50),
    ) {
        let in_order = run_detector(&g.events, &g.lifecycle);
        let shuffled = shuffle_within_lateness(&g.events, &delays);
        let alerts = run_detector(&shuffled, &g.lifecycle);
        prop_assert_eq!(keyset(&alerts), keyset(&in_order));
        let expected = model::expected_alerts(&RULES, &shuffled, &g.lifecycle);
        prop_assert_eq!(keyset(&alerts), model_keyset(&expected));
        let by_id: std::collections::HashMap<&str, &ModelEvent> =
            g.events.iter().map(|e| (e.event_id.as_str(), e)).collect();
        for a in alerts.iter().filter(|a| a.kind == AlertKind::Replay) {
            let me = by_id[a.event_id.as_str()];
            let first = by_id[replay_first(a)];
            prop_assert_eq!(&me.nonce, &first.nonce);
            prop_assert_eq!(&me.key_id, &first.key_id);
            prop_assert!(first.received_at <= me.received_at);
            prop_assert!(me.received_at - first.received_at <= RULES.retention_ms);
        }
    }

    /// Sequence numbers: in order, exactly the model's alerts (replays are
    /// not also out of sequence), with evidence that holds in the input.
    #[test]
    fn sequence_numbers_in_order_match_the_model(g in arb_numbered()) {
        let alerts = run_with(SEQ_RULES, &g.events, &g.lifecycle);
        let expected = model::expected_alerts(&SEQ_RULES, &g.events, &g.lifecycle);
        prop_assert_eq!(keyset(&alerts), model_keyset(&expected));
        check_sequence_evidence(&alerts, &g.events)?;
        // the rule adds alerts and takes none away
        let off: Vec<_> = keyset(&run_with(RULES, &g.events, &g.lifecycle));
        let on: Vec<_> = keyset(&alerts).into_iter().filter(|a| a.0 != AlertKind::OutOfSequence).collect();
        prop_assert_eq!(on, off);
    }

    /// Sequence numbers: arrival shuffled within the allowed lateness gives
    /// the same alerts, evidence included.
    #[test]
    fn sequence_numbers_shuffled_within_lateness_match_in_order(
        g in arb_numbered(),
        delays in prop::collection::vec(0i64..=RULES.allowed_lateness_ms, 1..50),
    ) {
        let shuffled = shuffle_within_lateness(&g.events, &delays);
        let alerts = run_with(SEQ_RULES, &shuffled, &g.lifecycle);
        let expected = model::expected_alerts(&SEQ_RULES, &shuffled, &g.lifecycle);
        prop_assert_eq!(keyset(&alerts), model_keyset(&expected));
        let seq = |v: &[Alert]| {
            let mut s: Vec<_> = v.iter().filter(|a| a.kind == AlertKind::OutOfSequence).cloned()
                .map(|a| (a.alert_id.clone(), a)).collect();
            s.sort_by(|a, b| a.0.cmp(&b.0));
            s
        };
        prop_assert_eq!(seq(&alerts), seq(&run_with(SEQ_RULES, &g.events, &g.lifecycle)));
        check_sequence_evidence(&alerts, &g.events)?;
    }

    /// Every decision depends on event time only: the same input gives the
    /// same alerts whatever the fingerprint seed.
    #[test]
    fn seed_does_not_change_decisions(g in arb_traffic(), seed in any::<u64>()) {
        let a = run_detector(&g.events, &g.lifecycle);
        let mut det = ShardDetector::new(RULES, seed);
        let mut log = VecLog::default();
        let mut lc = LifecycleTable::default();
        for r in &g.lifecycle { lc.upsert(r.clone()); }
        let mut b = vec![];
        for (i, e) in g.events.iter().enumerate() {
            det.process(&access(e), Position::new(0, i as u64 + 1), &lc, &mut log, &mut b).unwrap();
        }
        prop_assert_eq!(a, b);
    }
}

/// A sighting log whose segments hold several windows, as the durable one's
/// do: a window's segment stays live while any window in it is, so the
/// index has to judge an entry by its record's own time.
struct SharedSegmentLog {
    per_segment: usize,
    windows: Vec<(u32, OwnedWindow)>,
}

impl SightingLog for SharedSegmentLog {
    fn append_window(&mut self, rec: &WindowRecord<&str>, _keep_until: Millis) -> u32 {
        let seg = (self.windows.len() / self.per_segment) as u32;
        let owned = WindowRecord {
            fp: rec.fp,
            first: rec.first.to_owned(),
            prev: rec.prev.as_ref().map(|p| p.to_owned()),
        };
        self.windows.push((seg, owned));
        seg
    }

    fn append_event(&mut self, _fp: u64, _received_at: Millis, _pos_hash: u32) {}

    fn window(&mut self, seg: u32, fp: u128) -> Result<Option<OwnedWindow>, LookupError> {
        Ok(self
            .windows
            .iter()
            .rev()
            .find(|(s, w)| *s == seg && w.fp == fp)
            .map(|(_, w)| w.clone()))
    }
}

#[test]
fn a_window_expires_by_its_own_time_while_its_segment_lives_on() {
    let cfg = DetectConfig::default();
    let (r, l) = (cfg.retention_ms, cfg.allowed_lateness_ms);
    let mut det = ShardDetector::new(cfg, 42);
    let mut log = SharedSegmentLog {
        per_segment: 100,
        windows: Vec::new(),
    };
    let lc = LifecycleTable::default();
    let mut pos = 0;
    let mut feed = |det: &mut ShardDetector, log: &mut SharedSegmentLog, e: AccessEvent<'_>| {
        pos += 1;
        let mut out = vec![];
        det.process(&e, Position::new(0, pos), &lc, log, &mut out)
            .unwrap();
        out
    };
    // a opens n's window at T0; b, in the same segment, keeps it live to T0 + r
    assert!(feed(&mut det, &mut log, ev("a", T0, "k", Some("n"))).is_empty());
    assert!(feed(&mut det, &mut log, ev("b", T0 + r, "k", Some("m"))).is_empty());
    // exactly at the retention, arriving late: still a replay of a
    let out = feed(&mut det, &mut log, ev("c", T0 + r, "k", Some("n")));
    assert_eq!(out.len(), 1);
    assert_eq!(replay_first(&out[0]), "a");
    // the watermark passes a's window (not its segment): n starts afresh
    let wm_past = T0 + r + l + 1;
    assert!(feed(&mut det, &mut log, ev("x", wm_past, "k2", None)).is_empty());
    assert_eq!(det.watermark(), Some(T0 + r + 1));
    assert!(feed(&mut det, &mut log, ev("d", wm_past, "k", Some("n"))).is_empty());
    // ...and the next use of n is a replay of d, not of a
    let out = feed(&mut det, &mut log, ev("e", wm_past + 1, "k", Some("n")));
    assert_eq!(out.len(), 1);
    assert_eq!(replay_first(&out[0]), "d");
    // m (b's nonce) is still live in the same segment
    let out = feed(&mut det, &mut log, ev("f", wm_past + 2, "k", Some("m")));
    assert_eq!(out.len(), 1);
    assert_eq!(replay_first(&out[0]), "b");
}
