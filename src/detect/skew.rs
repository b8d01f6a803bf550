//! Signed-time skew: `stale_timestamp` and `future_timestamp`.

use super::config::DetectConfig;
use crate::schema::alert::SkewEvidence;
use crate::schema::{AlertKind, Millis};

/// The skew rule. Exactly at a limit raises nothing.
#[inline]
pub fn check(
    cfg: &DetectConfig,
    received_at: Millis,
    client_ts: Millis,
) -> Option<(AlertKind, SkewEvidence)> {
    // both are within years 0000-9999, so the differences cannot overflow
    let past = received_at - client_ts;
    let (kind, skew_ms, limit_ms) = if past > cfg.max_past_skew_ms {
        (AlertKind::StaleTimestamp, past, cfg.max_past_skew_ms)
    } else if -past > cfg.max_future_skew_ms {
        (AlertKind::FutureTimestamp, -past, cfg.max_future_skew_ms)
    } else {
        return None;
    };
    Some((
        kind,
        SkewEvidence {
            skew_ms,
            limit_ms,
            client_ts,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries() {
        let c = DetectConfig::default();
        let t = 1_764_288_000_000;
        assert!(check(&c, t, t).is_none());
        assert!(check(&c, t, t - 300_000).is_none());
        assert!(check(&c, t, t - 299_999).is_none());
        let (k, e) = check(&c, t, t - 300_001).unwrap();
        assert_eq!(
            (k, e.skew_ms, e.limit_ms),
            (AlertKind::StaleTimestamp, 300_001, 300_000)
        );
        assert!(check(&c, t, t + 30_000).is_none());
        assert!(check(&c, t, t + 29_999).is_none());
        let (k, e) = check(&c, t, t + 30_001).unwrap();
        assert_eq!(
            (k, e.skew_ms, e.limit_ms),
            (AlertKind::FutureTimestamp, 30_001, 30_000)
        );
    }
}
