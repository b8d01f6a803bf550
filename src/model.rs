//! The reference model of the rules: slow, plain and obviously right.
//!
//! It sorts the whole input by event time (keeping arrival order for equal
//! times), forgets nothing, and applies the rules as the specification states
//! them. Property tests check the streaming detector against it, and the
//! traffic generator uses it to write the ground truth next to the events.

use std::collections::{HashMap, HashSet};

use crate::detect::{DetectConfig, Toggle};
use crate::schema::{AlertKind, KeyState, LifecycleEvent, Millis};

/// The fields of an access event the rules read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEvent {
    pub event_id: String,
    pub received_at: Millis,
    /// `None`: an unsigned request (no per-key rule judges it).
    pub key_id: Option<String>,
    pub nonce: Option<String>,
    /// `None`: no client time (the skew rules do not apply).
    pub client_ts: Option<Millis>,
    pub client_ip: String,
    /// Judged only when there is no nonce (and `signature_replay` is on).
    pub signature: Option<String>,
}

impl From<&crate::schema::AccessEvent<'_>> for ModelEvent {
    fn from(e: &crate::schema::AccessEvent<'_>) -> Self {
        ModelEvent {
            event_id: e.event_id.to_string(),
            received_at: e.received_at,
            key_id: e.key_id.as_ref().map(|k| k.to_string()),
            nonce: e.nonce.as_ref().map(|n| n.to_string()),
            client_ts: e.client_ts,
            client_ip: e.client_ip.to_string(),
            signature: e.signature.as_ref().map(|s| s.to_string()),
        }
    }
}

impl ModelEvent {
    /// A generated event for property tests: event `e{i}{pad}` of key `k{key}`
    /// (none: unsigned) at `t0 + t`, signed `skew` ms off (none: no client
    /// time), nonce `n{nonce}` and signature `s{sig}` if any, from
    /// `10.0.0.{ip}`.
    #[cfg(test)]
    pub(crate) fn generated(
        i: usize,
        pad: &str,
        t0: Millis,
        (t, key, nonce, skew, ip, sig): Generated,
    ) -> Self {
        ModelEvent {
            event_id: format!("e{i}{pad}"),
            received_at: t0 + t,
            key_id: key.map(|k| format!("k{k}")),
            nonce: nonce.map(|n| format!("n{n}")),
            client_ts: skew.map(|s| t0 + t + s),
            client_ip: format!("10.0.0.{ip}"),
            signature: sig.map(|s| format!("s{s}")),
        }
    }
}

/// Generated events for property tests: (time offset, key, nonce, skew, client)
/// for [`ModelEvent::generated`]; small ranges, so that windows, skews and
/// lateness all come into play.
#[cfg(test)]
pub(crate) fn arb_event() -> impl proptest::strategy::Strategy<Value = Generated> {
    use proptest::prelude::*;
    (
        0i64..1500,
        prop::option::weighted(0.95, 0usize..3),
        prop::option::weighted(0.85, 0usize..4),
        prop::option::weighted(0.95, -160i64..80),
        0usize..2,
        prop::option::weighted(0.5, 0usize..3),
    )
}

/// Rewrites the generated nonces `n{k}` into sequence numbers for the
/// `detect.sequence` rule: the time in quarter milliseconds plus 25·k, so
/// keys count up with time and interleave by up to 75 (k = 2 is written
/// with a leading zero: another nonce, the same number); `n3` stays a
/// nonce that is not a number.
#[cfg(test)]
pub(crate) fn numbered(mut events: Vec<ModelEvent>, t0: Millis) -> Vec<ModelEvent> {
    for e in &mut events {
        let Some(k) = e.nonce.as_deref().and_then(|n| n.strip_prefix('n')) else {
            continue;
        };
        let k: i64 = k.parse().expect("generated nonce");
        let n = (e.received_at - t0) / 4 + 25 * k;
        e.nonce = match k {
            2 => Some(format!("0{n}")),
            3 => continue,
            _ => Some(n.to_string()),
        };
    }
    events
}

/// What [`arb_event`] draws: (time offset, key, nonce, skew, client).
#[cfg(test)]
pub(crate) type Generated = (
    Millis,
    Option<usize>,
    Option<usize>,
    Option<Millis>,
    usize,
    Option<usize>,
);

/// An alert as the model expects it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Expected {
    pub kind: AlertKind,
    pub key_id: String,
    pub event_id: String,
    /// For replays: the event id of the window's first sighting.
    pub first_event_id: Option<String>,
}

/// The state of `key` at `t` by the lifecycle rule (records in input order).
pub fn key_state<'a>(
    lifecycle: &'a [LifecycleEvent],
    key: &str,
    t: Millis,
) -> Option<&'a LifecycleEvent> {
    let mine: Vec<&LifecycleEvent> = lifecycle
        .iter()
        .filter(|r| r.key_id == key && r.at <= t)
        .collect();
    if let Some(rev) = mine
        .iter()
        .filter(|r| r.state == KeyState::Revoked)
        .min_by_key(|r| r.at)
    {
        return Some(rev);
    }
    // greatest `at`; among equal `at`, the later record (but see revoked above)
    let mut best: Option<&LifecycleEvent> = None;
    for r in mine {
        if best.is_none_or(|b| r.at >= b.at) {
            best = Some(r);
        }
    }
    best
}

/// Every alert the rules raise for `events` (given in arrival order).
pub fn expected_alerts(
    cfg: &DetectConfig,
    events: &[ModelEvent],
    lifecycle: &[LifecycleEvent],
) -> Vec<Expected> {
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| events[i].received_at); // stable: equal times keep arrival order
                                                   // a request is (key_id, event_id): a redelivered copy carries both
    let mut seen: HashSet<(Option<&str>, &str)> = HashSet::new();
    let mut windows: HashMap<(&str, char, &str), &ModelEvent> = HashMap::new();
    let mut sequenced: Vec<(&str, Millis, u64)> = Vec::new();
    let mut out = Vec::new();
    for i in order {
        let e = &events[i];
        if !seen.insert((e.key_id.as_deref(), &e.event_id)) {
            // a transport duplicate (the model's traffic keeps the input
            // contract: a copy keeps every field; an id reused with another
            // nonce is README "Reused event ids", tested on its own)
            continue;
        }
        // every rule is per key: an unsigned request raises nothing
        let Some(key_id) = e.key_id.as_deref() else {
            continue;
        };
        let expect = |kind, first: Option<&ModelEvent>| Expected {
            kind,
            key_id: key_id.to_string(),
            event_id: e.event_id.clone(),
            first_event_id: first.map(|f| f.event_id.clone()),
        };
        // the nonce judges a request; without one, its signature
        let basis = match (&e.nonce, &e.signature) {
            (Some(n), _) => Some(('N', n.as_str())),
            (None, Some(s)) if cfg.signature_replay => Some(('S', s.as_str())),
            _ => None,
        };
        let mut replay = false;
        if let Some((domain, value)) = basis {
            let k = (key_id, domain, value);
            match windows.get(&k) {
                Some(first) if e.received_at - first.received_at <= cfg.retention_ms => {
                    out.push(expect(AlertKind::Replay, Some(first)));
                    replay = true;
                }
                _ => {
                    windows.insert(k, e);
                }
            }
        }
        // sequence numbers: smaller than the key's largest received more
        // than the tolerance earlier, and not a replay
        if cfg.sequence == Toggle::On {
            if let Some(n) = e.nonce.as_deref().and_then(crate::detect::sequence_number) {
                let larger = sequenced
                    .iter()
                    .filter(|(k, r, m)| {
                        *k == key_id && e.received_at - r > cfg.sequence_tolerance_ms && *m > n
                    })
                    .count();
                if larger > 0 && !replay {
                    out.push(expect(AlertKind::OutOfSequence, None));
                }
                sequenced.push((key_id, e.received_at, n));
            }
        }
        let past = e.client_ts.map(|c| e.received_at - c);
        let kind = if past.is_some_and(|p| p > cfg.max_past_skew_ms) {
            Some(AlertKind::StaleTimestamp)
        } else if past.is_some_and(|p| -p > cfg.max_future_skew_ms) {
            Some(AlertKind::FutureTimestamp)
        } else {
            None
        };
        if let Some(kind) = kind {
            out.push(expect(kind, None));
        }
        if let Some(r) = key_state(lifecycle, key_id, e.received_at) {
            let kind = match r.state {
                KeyState::Active => None,
                KeyState::Rotating => r
                    .grace_until
                    .filter(|g| e.received_at > *g)
                    .map(|_| AlertKind::RetiredKey),
                KeyState::Retired => Some(AlertKind::RetiredKey),
                KeyState::Revoked => Some(AlertKind::RevokedKey),
            };
            if let Some(kind) = kind {
                out.push(expect(kind, None));
            }
        }
    }
    out
}
