//! Alert v1: what replayguard tells subscribers.

use serde::{Deserialize, Serialize};

use super::lifecycle::KeyState;
use super::timestamp::{self, Millis};

/// Version of the detection rules, carried by every alert.
pub const DETECTOR_VERSION: &str = concat!("replayguard/", env!("CARGO_PKG_VERSION"));

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// The same (key_id, nonce) used again inside the acceptance window.
    Replay,
    /// The client signed longer ago than `max_past_skew`.
    StaleTimestamp,
    /// The client signed further ahead than `max_future_skew`.
    FutureTimestamp,
    /// A retired key, or a rotating key after its grace period, was used.
    RetiredKey,
    /// A revoked key was used.
    RevokedKey,
    /// A key's per-minute rate far from its own baseline.
    RateAnomaly,
    /// Many 401/403 responses for a key in a short window (credential stuffing).
    AuthFailureBurst,
    /// A key with a settled set of clients used by a client never seen before.
    NewClient,
    /// A sequence-number nonce smaller than the key's largest one received
    /// more than `sequence_tolerance` earlier (`detect.sequence = "on"`).
    OutOfSequence,
}

impl AlertKind {
    pub const ALL: [AlertKind; 9] = [
        AlertKind::Replay,
        AlertKind::StaleTimestamp,
        AlertKind::FutureTimestamp,
        AlertKind::RetiredKey,
        AlertKind::RevokedKey,
        AlertKind::RateAnomaly,
        AlertKind::AuthFailureBurst,
        AlertKind::NewClient,
        AlertKind::OutOfSequence,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Replay => "replay",
            AlertKind::StaleTimestamp => "stale_timestamp",
            AlertKind::FutureTimestamp => "future_timestamp",
            AlertKind::RetiredKey => "retired_key",
            AlertKind::RevokedKey => "revoked_key",
            AlertKind::RateAnomaly => "rate_anomaly",
            AlertKind::AuthFailureBurst => "auth_failure_burst",
            AlertKind::NewClient => "new_client",
            AlertKind::OutOfSequence => "out_of_sequence",
        }
    }

    /// The event-time rules over single requests and nonces (replay, skew,
    /// key lifecycle): exact and order-independent within the lateness, the
    /// ones the reference model and the generator's ground truth cover. The
    /// others are statistical usage anomalies.
    pub fn is_core(self) -> bool {
        matches!(
            self,
            AlertKind::Replay
                | AlertKind::StaleTimestamp
                | AlertKind::FutureTimestamp
                | AlertKind::RetiredKey
                | AlertKind::RevokedKey
                | AlertKind::OutOfSequence
        )
    }

    /// Dense index, for per-kind counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

/// The earlier request that a replay repeats.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Sighting {
    pub event_id: String,
    #[serde(with = "timestamp::rfc3339")]
    pub received_at: Millis,
    pub client_ip: String,
    /// The status the API answered the earlier request with.
    #[serde(default)]
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// The request an alert is about, as the gateway logged it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestContext {
    pub client_ip: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// What made a request a replay: its nonce, or (a request without a nonce)
/// its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayBasis {
    Nonce,
    Signature,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayEvidence {
    pub first_sighting: Sighting,
    /// received_at of this request minus received_at of the first sighting.
    pub age_ms: i64,
    /// Both sightings came from the same client_ip (a retry) or not (another client).
    pub same_ip: bool,
    /// The acceptance window in force.
    pub retention_ms: i64,
    /// The API served the replayed request (status below 400): its replay
    /// protection failed.
    pub accepted: bool,
    pub basis: ReplayBasis,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SkewEvidence {
    /// How far the signed time lies outside, in the direction of the alert:
    /// received_at − client_ts for `stale_timestamp`, client_ts − received_at
    /// for `future_timestamp`. Always greater than `limit_ms`.
    pub skew_ms: i64,
    pub limit_ms: i64,
    #[serde(with = "timestamp::rfc3339")]
    pub client_ts: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleEvidence {
    /// The key's state at received_at.
    pub state: KeyState,
    /// Since when that state holds.
    #[serde(with = "timestamp::rfc3339")]
    pub at: Millis,
    pub successor: Option<String>,
    #[serde(with = "timestamp::rfc3339_opt")]
    pub grace_until: Option<Millis>,
}

/// A per-minute rate far from the key's baseline.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateEvidence {
    /// "spike" (reported while the minute runs) or "drop" (when it closes).
    pub direction: String,
    /// Requests in the window.
    pub observed: u64,
    /// EWMA of the key's per-minute counts before this window.
    pub baseline_mean: f64,
    pub baseline_std: f64,
    pub z_score: f64,
    /// Two-sided normal tail probability of the z-score.
    pub p_value: f64,
    #[serde(with = "timestamp::rfc3339")]
    pub window_start: Millis,
    pub window_ms: i64,
}

/// 401/403 responses for a key over the threshold within the window.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthBurstEvidence {
    /// Failures in the window when the threshold was reached.
    pub observed: u64,
    pub threshold: u64,
    /// Time of the first failure in the window.
    #[serde(with = "timestamp::rfc3339")]
    pub window_start: Millis,
    pub window_ms: i64,
}

/// A client never seen on a key whose client set had settled.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewClientEvidence {
    /// The client as identified: client_id, else client_ip.
    pub client: String,
    pub client_ip: String,
    pub client_id: Option<String>,
    /// Clients known on the key before this one (the baseline).
    pub known_clients: u64,
    /// No new client had appeared since then.
    #[serde(with = "timestamp::rfc3339")]
    pub settled_since: Millis,
}

/// Why a sequence-number nonce is out of sequence.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceEvidence {
    /// The key's largest nonce received more than the tolerance earlier.
    pub larger_nonce: String,
    pub larger_event_id: String,
    #[serde(with = "timestamp::rfc3339")]
    pub larger_received_at: Millis,
    /// larger_nonce minus this request's nonce (at least 1).
    pub gap: u64,
    pub tolerance_ms: i64,
}

/// Evidence, one shape per kind.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Evidence {
    Replay(ReplayEvidence),
    Skew(SkewEvidence),
    Lifecycle(LifecycleEvidence),
    Rate(RateEvidence),
    AuthBurst(AuthBurstEvidence),
    NewClient(NewClientEvidence),
    Sequence(SequenceEvidence),
}

impl Evidence {
    /// Whether this evidence shape belongs to `kind`.
    pub fn fits(&self, kind: AlertKind) -> bool {
        matches!(
            (self, kind),
            (Evidence::Replay(_), AlertKind::Replay)
                | (
                    Evidence::Skew(_),
                    AlertKind::StaleTimestamp | AlertKind::FutureTimestamp
                )
                | (
                    Evidence::Lifecycle(_),
                    AlertKind::RetiredKey | AlertKind::RevokedKey
                )
                | (Evidence::Rate(_), AlertKind::RateAnomaly)
                | (Evidence::AuthBurst(_), AlertKind::AuthFailureBurst)
                | (Evidence::NewClient(_), AlertKind::NewClient)
                | (Evidence::Sequence(_), AlertKind::OutOfSequence)
        )
    }
}

/// Alert v1.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// Deterministic: the same input always yields the same id, so subscribers
    /// can drop repeats of an at-least-once delivery.
    pub alert_id: String,
    pub kind: AlertKind,
    pub severity: Severity,
    pub key_id: String,
    /// The request the alert is about.
    pub event_id: String,
    #[serde(with = "timestamp::rfc3339")]
    pub received_at: Millis,
    /// The request the alert is about (per-request kinds: replay, skew,
    /// lifecycle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RequestContext>,
    pub evidence: Evidence,
    pub detector_version: String,
}

impl Alert {
    /// Checks what the type system cannot: the evidence fits the kind, a
    /// revoked key is always critical, a replay's severity follows whether
    /// it was accepted, an out-of-sequence alert is high with a gap.
    pub fn check(&self) -> Result<(), String> {
        if !self.evidence.fits(self.kind) {
            return Err(format!("evidence does not fit kind {}", self.kind.as_str()));
        }
        if self.kind == AlertKind::RevokedKey && self.severity != Severity::Critical {
            return Err("a revoked_key alert is always critical".into());
        }
        if let Evidence::Replay(r) = &self.evidence {
            let fits = match self.severity {
                Severity::Medium => !r.accepted,
                Severity::High | Severity::Critical => r.accepted,
                _ => false,
            };
            if !fits {
                return Err(
                    "a replay is medium when blocked, high or critical when accepted".into(),
                );
            }
        }
        if let Evidence::Sequence(q) = &self.evidence {
            if self.severity != Severity::High {
                return Err("an out_of_sequence alert is always high".into());
            }
            if q.gap == 0
                || q.larger_nonce.is_empty()
                || !q.larger_nonce.bytes().all(|b| b.is_ascii_digit())
            {
                return Err("out_of_sequence: larger_nonce is decimal, gap at least 1".into());
            }
        }
        if self.alert_id.len() != 32
            || !self
                .alert_id
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err("alert_id is 32 lowercase hex digits".into());
        }
        Ok(())
    }
}

/// The deterministic id of the alert of `kind` about request `event_id` of `key_id`:
/// the first 128 bits of SHA-256 over a length-prefixed encoding, in hex.
/// It depends on nothing else (not on arrival order, instance, time or version).
pub fn alert_id(kind: AlertKind, key_id: &str, event_id: &str) -> String {
    alert_id_parts(kind.as_str(), &[key_id.as_bytes(), event_id.as_bytes()])
}

/// Deterministic id over a kind and any parts (for alerts about windows, not requests).
pub fn alert_id_parts(kind: &str, parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"replayguard.alert.v1");
    for p in std::iter::once(kind.as_bytes()).chain(parts.iter().copied()) {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let d = h.finalize();
    let mut s = String::with_capacity(32);
    super::push_hex(&mut s, &d[..16]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = alert_id(AlertKind::Replay, "k1", "e1");
        assert_eq!(a, alert_id(AlertKind::Replay, "k1", "e1"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, alert_id(AlertKind::StaleTimestamp, "k1", "e1"));
        assert_ne!(a, alert_id(AlertKind::Replay, "k2", "e1"));
        // length prefixes keep ("k1e", "1") apart from ("k1", "e1")
        assert_ne!(a, alert_id(AlertKind::Replay, "k1e", "1"));
    }
}
