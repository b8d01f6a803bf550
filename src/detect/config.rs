//! The detection rules' parameters, in integer milliseconds of event time.

/// Longest supported retention. Live state keeps times as 32-bit offsets,
/// which stay exact for spans under 24 days; a week leaves room for lateness.
pub const MAX_RETENTION_MS: i64 = 7 * 24 * 3_600_000;

/// Rule parameters. The serde config tree (`config.rs`) builds this and
/// calls [`DetectConfig::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectConfig {
    /// `stale_timestamp` when received_at − client_ts exceeds this.
    pub max_past_skew_ms: i64,
    /// `future_timestamp` when client_ts − received_at exceeds this.
    pub max_future_skew_ms: i64,
    /// How late (behind the largest received_at seen) an event may arrive and
    /// still get exactly the alerts it would get in order.
    pub allowed_lateness_ms: i64,
    /// How long a first sighting stays a replay target.
    pub retention_ms: i64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            max_past_skew_ms: 300_000,
            max_future_skew_ms: 30_000,
            allowed_lateness_ms: 60_000,
            retention_ms: 390_000,
        }
    }
}

impl DetectConfig {
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
        ] {
            if v < 0 {
                return Err(format!("detect.{name} must not be negative"));
            }
        }
        let min = self.min_retention_ms();
        if self.retention_ms < min {
            return Err(format!(
                "detect.retention ({} ms) is shorter than max_past_skew + max_future_skew + \
                 allowed_lateness ({} ms): a request signed within the allowed skew could be \
                 replayed after its first sighting was forgotten, and the replay would slip \
                 through undetected",
                self.retention_ms, min
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
