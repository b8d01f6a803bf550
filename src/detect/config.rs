//! The detection rules' parameters (`[detect]`), in integer milliseconds of
//! event time. Deserialized directly from the config file; [`DetectConfig::sanitize`]
//! resolves the derived retention once, [`DetectConfig::validate`] refuses
//! contradictions.

use serde::{Deserialize, Serialize};

/// Longest supported retention. Live state keeps times as 32-bit offsets,
/// which stay exact for spans under 24 days; a week leaves room for lateness.
pub const MAX_RETENTION_MS: i64 = 7 * 24 * 3_600_000;

/// `retention` not given: derived by [`DetectConfig::sanitize`].
const RETENTION_UNSET: i64 = i64::MIN;

fn retention_unset() -> i64 {
    RETENTION_UNSET
}

/// Rule parameters (`[detect]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// `stale_timestamp` when received_at − client_ts exceeds this. Default 300s.
    #[serde(rename = "max_past_skew", with = "crate::units::ms")]
    pub max_past_skew_ms: i64,
    /// `future_timestamp` when client_ts − received_at exceeds this. Default 30s.
    #[serde(rename = "max_future_skew", with = "crate::units::ms")]
    pub max_future_skew_ms: i64,
    /// How late (behind the largest received_at seen) an event may arrive and
    /// still get exactly the alerts it would get in order. Default 60s.
    #[serde(rename = "allowed_lateness", with = "crate::units::ms")]
    pub allowed_lateness_ms: i64,
    /// How long a first sighting stays a replay target. Default (and
    /// minimum): max_past_skew + max_future_skew + allowed_lateness.
    #[serde(
        rename = "retention",
        with = "crate::units::ms",
        default = "retention_unset"
    )]
    pub retention_ms: i64,
    /// A request without a nonce but with a signature is a replay when the
    /// same (key_id, signature) was first seen, with another event id, no
    /// more than `retention` earlier (the nonce rule's semantics). Default
    /// on: for timestamp-signed APIs it is the only replay signal.
    pub signature_replay: bool,
    /// `on`: a nonce that is a decimal unsigned 64-bit integer is a
    /// sequence number, and one smaller than the key's largest received
    /// more than `sequence_tolerance` earlier raises `out_of_sequence`.
    pub sequence: Toggle,
    /// Requests closer together than this may interleave (concurrent
    /// senders). Default 5s.
    #[serde(rename = "sequence_tolerance", with = "crate::units::ms")]
    pub sequence_tolerance_ms: i64,
}

/// A rule switched `"on"` or `"off"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Toggle {
    #[default]
    Off,
    On,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            max_past_skew_ms: 300_000,
            max_future_skew_ms: 30_000,
            allowed_lateness_ms: 60_000,
            retention_ms: 390_000,
            signature_replay: true,
            sequence: Toggle::Off,
            sequence_tolerance_ms: 5_000,
        }
    }
}

impl DetectConfig {
    /// Resolves derived values: a retention not given is the shortest one
    /// that cannot let a replay slip through.
    pub fn sanitize(&mut self) {
        if self.retention_ms == RETENTION_UNSET {
            self.retention_ms = self.min_retention_ms();
        }
    }

    /// The shortest retention that cannot let a replay slip through.
    pub fn min_retention_ms(&self) -> i64 {
        self.max_past_skew_ms
            .saturating_add(self.max_future_skew_ms)
            .saturating_add(self.allowed_lateness_ms)
    }

    /// Rejects contradictions with a message that says why.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("max_past_skew", self.max_past_skew_ms),
            ("max_future_skew", self.max_future_skew_ms),
            ("allowed_lateness", self.allowed_lateness_ms),
            ("sequence_tolerance", self.sequence_tolerance_ms),
        ] {
            if v < 0 {
                return Err(format!("detect.{name} must not be negative"));
            }
        }
        let min = self.min_retention_ms();
        if self.retention_ms == RETENTION_UNSET {
            return Err("detect.retention is not resolved (call sanitize first)".into());
        }
        if self.retention_ms < min {
            return Err(format!(
                "detect.retention ({} ms) is shorter than max_past_skew + max_future_skew + \
                 allowed_lateness ({} ms): a request signed within the allowed skew could be \
                 replayed after its first sighting was forgotten, and the replay would slip \
                 through undetected",
                self.retention_ms, min
            ));
        }
        if self.sequence_tolerance_ms > self.retention_ms {
            return Err(format!(
                "detect.sequence_tolerance ({} ms) is longer than detect.retention ({} ms): the \
                 requests it compares would be forgotten before they are compared",
                self.sequence_tolerance_ms, self.retention_ms
            ));
        }
        if self.retention_ms > MAX_RETENTION_MS {
            return Err(format!(
                "detect.retention ({} ms) is longer than the supported maximum of 7 days ({} ms)",
                self.retention_ms, MAX_RETENTION_MS
            ));
        }
        Ok(())
    }

    /// How far the watermark advances between sweeps of expired live state.
    pub fn sweep_interval_ms(&self) -> i64 {
        (self.retention_ms / 8).max(1_000)
    }
}
