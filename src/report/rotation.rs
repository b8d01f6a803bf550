//! Rotation readiness: for every key in `rotating` state, and every retired
//! key still seeing traffic, is it safe to turn the old key off, and who is
//! still on it. Computed from per-key usage and the lifecycle table, at an
//! event-time "now" (the newest request seen), so a report over an old log
//! reads as it would have then.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::detect::usage::{KeyUsage, DAY, HOUR, MINUTE};
use crate::detect::LifecycleTable;
use crate::schema::timestamp::{self, Millis};
use crate::schema::KeyState;

/// Version tag of the report format.
pub const REPORT_SCHEMA: &str = "replayguard.rotation-report.v1";

/// `[report]`: how reports judge readiness, and where `run` publishes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// READY once the old key has not been used for this long. Default 1h.
    #[serde(rename = "quiet_period", with = "crate::units::ms")]
    pub quiet_period_ms: Millis,
    /// `run` produces every rotation report to `topic` this often. Default 60s.
    pub interval: crate::units::DurationMs,
    /// Reports topic (key = key_id); "" disables it. Default "replayguard-reports".
    pub topic: String,
    /// Straggling clients listed (`usage.top_clients`, resolved by the config).
    #[serde(skip)]
    pub top_clients: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            quiet_period_ms: HOUR,
            interval: crate::units::DurationMs::secs(60),
            topic: "replayguard-reports".into(),
            top_clients: 10,
        }
    }
}

impl ReportConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.interval.0 < 1000 {
            return Err("report.interval must be at least 1s".into());
        }
        Ok(())
    }
}

/// Requests over the report's windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Counts {
    /// The current minute and the 4 before it.
    pub last_5m: u64,
    /// The current minute and the 59 before it.
    pub last_1h: u64,
    pub since_rotation: u64,
}

/// Old-key share of old + successor requests per window (None: no traffic).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Shares {
    pub last_5m: Option<f64>,
    pub last_1h: Option<f64>,
    pub since_rotation: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Straggler {
    /// client_id if the client sends one, else its address.
    pub client: String,
    /// Requests counted (Space-Saving: may overcount by `count_error`).
    pub count: u64,
    pub count_error: u64,
    #[serde(with = "timestamp::rfc3339")]
    pub last_seen: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Ready,
    NotReady,
}

/// When the old key is expected to be ready, from a least-squares fit of
/// its share of traffic over time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    #[serde(with = "timestamp::rfc3339")]
    pub ready_at: Millis,
    /// Half-width of the 95 % interval.
    pub plus_minus_ms: i64,
    /// Fitted change of the old-key share per hour (negative: falling).
    pub share_slope_per_hour: f64,
    pub points: usize,
}

/// Old and successor requests in one bucket of the chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    #[serde(with = "timestamp::rfc3339")]
    pub t: Millis,
    pub old: u32,
    pub successor: u32,
}

/// Rotation report v1 (schemas/report.v1.schema.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotationReport {
    pub schema: String,
    pub key_id: String,
    pub state: KeyState,
    /// Event time the report describes (the newest request seen).
    #[serde(with = "timestamp::rfc3339")]
    pub as_of: Millis,
    #[serde(with = "timestamp::rfc3339")]
    pub rotation_started_at: Millis,
    pub successor: Option<String>,
    #[serde(with = "timestamp::rfc3339_opt")]
    pub grace_until: Option<Millis>,
    pub old_key: Counts,
    pub successor_key: Counts,
    pub old_key_share: Shares,
    /// Distinct client addresses and client ids seen on the old key (all time, HyperLogLog).
    pub old_key_distinct_ips: u64,
    pub old_key_distinct_client_ids: u64,
    /// Tracked clients that used the old key in the last hour (a lower bound).
    pub clients_last_hour: u64,
    pub stragglers: Vec<Straggler>,
    #[serde(with = "timestamp::rfc3339_opt")]
    pub last_old_key_use: Option<Millis>,
    pub verdict: Verdict,
    pub reason: String,
    pub estimate: Option<Estimate>,
    /// Bucket width of `series`.
    pub series_bucket_ms: i64,
    pub series: Vec<Point>,
    /// The quiet period the verdict uses (`report.quiet_period`): ready
    /// once the old key has not been used for this long. (Absent in
    /// reports written before it was added.)
    #[serde(default)]
    pub quiet_period_ms: i64,
}

impl RotationReport {
    /// When the quiet period after the last old-key use ends (the earliest
    /// the key can be ready), if the old key was used since the rotation.
    pub fn quiet_until(&self) -> Option<Millis> {
        self.last_old_key_use.map(|t| t + self.quiet_period_ms)
    }

    /// Whether the last bucket of `series` is still open at `as_of` (its
    /// count is not final).
    pub fn last_bucket_open(&self) -> bool {
        self.series
            .last()
            .is_some_and(|p| p.t + self.series_bucket_ms > self.as_of)
    }
}

/// Where per-key usage comes from.
pub trait UsageLookup {
    fn usage(&self, key_id: &str) -> Option<&KeyUsage>;
}

impl UsageLookup for std::collections::HashMap<String, KeyUsage> {
    fn usage(&self, key_id: &str) -> Option<&KeyUsage> {
        self.get(key_id)
    }
}

fn counts(u: Option<&KeyUsage>, now: Millis, since: Millis) -> Counts {
    let Some(u) = u else {
        return Counts::default();
    };
    // whole minute buckets: the current one and the 4 (59) before it
    let from5 = now - 4 * MINUTE;
    let from1h = now - 59 * MINUTE;
    Counts {
        last_5m: u.minutes.sum(from5, now),
        last_1h: u.minutes.sum(from1h, now),
        since_rotation: since_start(u, since, now),
    }
}

/// Requests from `since` to `now`, from the finest ring that covers the span.
fn since_start(u: &KeyUsage, since: Millis, now: Millis) -> u64 {
    if since > now {
        return 0;
    }
    u.requests_between(since, now)
}

fn share(old: u64, new: u64) -> Option<f64> {
    (old + new > 0).then(|| old as f64 / (old + new) as f64)
}

/// Least-squares line through (t, share); the time the share reaches zero,
/// with a 95 % interval from the fit's residuals (Student's t). `None` unless
/// the share falls significantly (the slope's 95 % interval excludes zero)
/// and the crossing lies ahead of the last point.
pub fn fit_zero_crossing(points: &[(f64, f64)]) -> Option<(f64, f64, f64)> {
    let n = points.len();
    if n < 3 {
        return None;
    }
    let nf = n as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / nf;
    let ms = points.iter().map(|p| p.1).sum::<f64>() / nf;
    let sxx: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - ms)).sum();
    let b = sxy / sxx;
    if b >= 0.0 {
        return None; // not falling: no crossing ahead
    }
    let a = ms - b * mt;
    let t0 = -a / b;
    let rss: f64 = points.iter().map(|p| (p.1 - (a + b * p.0)).powi(2)).sum();
    let sigma2 = rss / (nf - 2.0);
    let q = StudentsT::new(0.0, 1.0, nf - 2.0).ok()?.inverse_cdf(0.975);
    if b + q * (sigma2 / sxx).sqrt() >= 0.0 {
        return None; // the fall is not significant: the trend does not allow an estimate
    }
    let last = points.iter().map(|p| p.0).fold(f64::MIN, f64::max);
    if t0 < last {
        return None; // the line says zero already, the data says otherwise: stragglers remain
    }
    // delta method on t0 = -a/b: var = sigma2 / b^2 * (1/n + (t0 - mean t)^2 / sxx)
    let var = sigma2 / (b * b) * (1.0 / nf + (t0 - mt).powi(2) / sxx);
    Some((t0, q * var.sqrt(), b))
}

/// The readiness report of one key, if it is in rotation (or retired and still used).
pub fn report(
    cfg: &ReportConfig,
    lifecycle: &LifecycleTable,
    usage: &dyn UsageLookup,
    key_id: &str,
    now: Millis,
) -> Option<RotationReport> {
    let hist = lifecycle.history(key_id)?;
    let rec = hist.state_at(now)?;
    let old = usage.usage(key_id);
    let (start, successor, grace) = match rec.state {
        KeyState::Rotating => (rec.at, rec.successor.clone(), rec.grace_until),
        KeyState::Retired | KeyState::Revoked => {
            // still interesting while it sees traffic after it was retired
            let used_after = old.is_some_and(|u| u.last_seen >= rec.at);
            if !used_after {
                return None;
            }
            // the rotation started at the last `rotating` record before, if any
            let rot = hist
                .records()
                .iter()
                .rev()
                .find(|r| r.state == KeyState::Rotating && r.at <= rec.at);
            (
                rot.map_or(rec.at, |r| r.at),
                rec.successor
                    .clone()
                    .or_else(|| rot.and_then(|r| r.successor.clone())),
                rot.and_then(|r| r.grace_until),
            )
        }
        KeyState::Active => return None,
    };
    let new = successor.as_deref().and_then(|s| usage.usage(s));
    let oc = counts(old, now, start);
    let nc = counts(new, now, start);
    let last_use = old.map(|u| u.last_seen).filter(|&t| t >= start);
    let mut stragglers: Vec<Straggler> = old
        .map(|u| {
            u.top
                .iter()
                .filter(|c| c.last_seen >= start)
                .map(|c| Straggler {
                    client: c.client.clone(),
                    count: c.count,
                    count_error: c.error,
                    last_seen: c.last_seen,
                })
                .collect()
        })
        .unwrap_or_default();
    stragglers.sort_by(|a, b| b.count.cmp(&a.count).then(b.last_seen.cmp(&a.last_seen)));
    stragglers.truncate(cfg.top_clients);
    let clients_last_hour = old.map_or(0, |u| {
        u.top.iter().filter(|c| c.last_seen > now - HOUR).count() as u64
    });

    // chart and fit: hourly buckets since the rotation (minutes for young rotations)
    let (width, series) = {
        let young = now - start < 3 * HOUR;
        let pick = |u: Option<&KeyUsage>| -> Vec<(Millis, u32)> {
            u.map(|u| {
                if young {
                    u.minutes.series()
                } else {
                    u.hours.series()
                }
            })
            .unwrap_or_default()
        };
        let width = if young { MINUTE } else { HOUR };
        let (o, n) = (pick(old), pick(new));
        let mut ts: Vec<Millis> = o
            .iter()
            .chain(&n)
            .map(|p| p.0)
            .filter(|&t| t + width > start && t <= now)
            .collect();
        ts.sort_unstable();
        ts.dedup();
        let get = |v: &[(Millis, u32)], t: Millis| v.iter().find(|p| p.0 == t).map_or(0, |p| p.1);
        (
            width,
            ts.into_iter()
                .map(|t| Point {
                    t,
                    old: get(&o, t),
                    successor: get(&n, t),
                })
                .collect::<Vec<_>>(),
        )
    };
    let quiet = cfg.quiet_period_ms;
    let (verdict, reason) = match last_use {
        None => (Verdict::Ready, "the old key has not been used since the rotation started".to_string()),
        Some(t) if now - t >= quiet => (
            Verdict::Ready,
            format!(
                "no use of the old key for {} (quiet period {})",
                human(now - t),
                human(quiet)
            ),
        ),
        Some(t) => (
            Verdict::NotReady,
            format!(
                "the old key was used {} ago ({} requests in the last hour; clients still on it: {}); \
                 ready after {} without use",
                human(now - t),
                oc.last_1h,
                clients_last_hour.max(1),
                human(quiet)
            ),
        ),
    };
    let estimate = if verdict == Verdict::NotReady {
        let pts: Vec<(f64, f64)> = series
            .iter()
            .filter(|p| p.old + p.successor > 0)
            .map(|p| {
                (
                    (p.t - start) as f64 / HOUR as f64,
                    p.old as f64 / (p.old + p.successor) as f64,
                )
            })
            .collect();
        fit_zero_crossing(&pts).and_then(|(t0h, pm_h, slope)| {
            let t0 = start + (t0h * HOUR as f64) as Millis;
            let ready_at = t0.max(last_use.unwrap_or(now)) + quiet;
            (ready_at - now < 365 * DAY).then_some(Estimate {
                ready_at,
                plus_minus_ms: (pm_h * HOUR as f64) as i64,
                share_slope_per_hour: (slope * 1e4).round() / 1e4,
                points: pts.len(),
            })
        })
    } else {
        None
    };
    Some(RotationReport {
        schema: REPORT_SCHEMA.to_string(),
        key_id: key_id.to_string(),
        state: rec.state,
        as_of: now,
        rotation_started_at: start,
        successor,
        grace_until: grace,
        old_key: oc,
        successor_key: nc,
        old_key_share: Shares {
            last_5m: share(oc.last_5m, nc.last_5m),
            last_1h: share(oc.last_1h, nc.last_1h),
            since_rotation: share(oc.since_rotation, nc.since_rotation),
        },
        old_key_distinct_ips: old.map_or(0, |u| u.distinct_ips() as u64),
        old_key_distinct_client_ids: old.map_or(0, |u| u.distinct_client_ids() as u64),
        clients_last_hour,
        stragglers,
        last_old_key_use: last_use,
        verdict,
        reason,
        estimate,
        series_bucket_ms: width,
        series,
        quiet_period_ms: quiet,
    })
}

/// Reports of every key in rotation, sorted by key.
pub fn reports(
    cfg: &ReportConfig,
    lifecycle: &LifecycleTable,
    usage: &dyn UsageLookup,
    now: Millis,
) -> Vec<RotationReport> {
    let mut keys: Vec<&str> = lifecycle.keys().map(|(k, _)| k).collect();
    keys.sort_unstable();
    keys.into_iter()
        .filter_map(|k| report(cfg, lifecycle, usage, k, now))
        .collect()
}

/// "3h 5m", "42s".
pub fn human(ms: Millis) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::HashMap;

    use super::*;
    use crate::detect::usage::{observe, UsageConfig};
    use crate::schema::{AccessEvent, LifecycleEvent};

    const T0: Millis = 1_795_824_000_000;

    fn feed(u: &mut HashMap<String, KeyUsage>, key: &str, t: Millis, client: &str) {
        let e = AccessEvent {
            event_id: Cow::Borrowed("e"),
            received_at: t,
            key_id: Some(Cow::Owned(key.to_string())),
            nonce: None,
            client_ts: Some(t),
            client_ip: Cow::Borrowed("10.0.0.1"),
            method: Cow::Borrowed("GET"),
            path: Cow::Borrowed("/"),
            status: 200,
            user_agent: None,
            client_id: Some(Cow::Owned(client.to_string())),
            signature: None,
        };
        let entry = u.entry(key.to_string()).or_insert_with(|| KeyUsage::new(t));
        observe(&UsageConfig::default(), entry, &e, &mut vec![]);
    }

    fn lc(rotation_at: Millis) -> LifecycleTable {
        let mut t = LifecycleTable::default();
        t.upsert(LifecycleEvent {
            key_id: "old".into(),
            state: KeyState::Rotating,
            at: rotation_at,
            successor: Some("new".into()),
            grace_until: Some(rotation_at + 24 * HOUR),
        });
        t
    }

    #[test]
    fn counts_shares_verdict_and_stragglers() {
        let mut u = HashMap::new();
        // 10 hours after the rotation: traffic moves from old to new
        for h in 0..10i64 {
            for i in 0..100i64 {
                let t = T0 + h * HOUR + i * 30_000;
                let on_old = i < 100 - h * 10;
                let client = if i % 10 == 0 { "laggard" } else { "bot" };
                feed(&mut u, if on_old { "old" } else { "new" }, t, client);
            }
        }
        let now = T0 + 9 * HOUR + 99 * 30_000;
        let r = report(&ReportConfig::default(), &lc(T0), &u, "old", now).unwrap();
        assert_eq!(r.verdict, Verdict::NotReady);
        assert_eq!(
            r.old_key.since_rotation + r.successor_key.since_rotation,
            1000
        );
        assert_eq!(
            r.old_key.since_rotation,
            (0..10).map(|h| 100 - h * 10).sum::<i64>() as u64
        );
        let s = r.old_key_share.since_rotation.unwrap();
        assert!((s - 0.55).abs() < 1e-9, "{s}");
        assert_eq!(r.stragglers[0].client, "bot");
        assert!(r.stragglers.iter().any(|c| c.client == "laggard"));
        // the share falls 10 points an hour from 1.0: it reaches zero near hour 10
        let e = r.estimate.expect("a falling trend gives an estimate");
        let crossing = e.ready_at - HOUR - T0;
        assert!((crossing - 10 * HOUR).abs() < HOUR, "{}", human(crossing));
        assert!(e.share_slope_per_hour < -0.05);
        assert!(!r.series.is_empty());
    }

    #[test]
    fn ready_after_the_quiet_period_and_not_before() {
        let mut u = HashMap::new();
        feed(&mut u, "old", T0 + 10, "c");
        feed(&mut u, "new", T0 + 20, "c");
        let cfg = ReportConfig::default();
        let r = report(&cfg, &lc(T0), &u, "old", T0 + 10 + HOUR - 1).unwrap();
        assert_eq!(r.verdict, Verdict::NotReady);
        let r = report(&cfg, &lc(T0), &u, "old", T0 + 10 + HOUR).unwrap();
        assert_eq!(r.verdict, Verdict::Ready);
        assert!(r.estimate.is_none());
        // never used since the rotation: ready
        let r = report(&cfg, &lc(T0 + 100), &u, "old", T0 + 200).unwrap();
        assert_eq!(r.verdict, Verdict::Ready);
        assert_eq!(r.last_old_key_use, None);
    }

    #[test]
    fn only_keys_in_rotation_or_retired_and_still_used() {
        let mut u = HashMap::new();
        feed(&mut u, "old", T0, "c");
        let mut t = lc(T0 - HOUR);
        t.upsert(LifecycleEvent {
            key_id: "quiet".into(),
            state: KeyState::Retired,
            at: T0 - HOUR,
            successor: None,
            grace_until: None,
        });
        t.upsert(LifecycleEvent {
            key_id: "fine".into(),
            state: KeyState::Active,
            at: T0 - HOUR,
            successor: None,
            grace_until: None,
        });
        let all = reports(&ReportConfig::default(), &t, &u, T0);
        assert_eq!(
            all.iter().map(|r| r.key_id.as_str()).collect::<Vec<_>>(),
            vec!["old"]
        );
        feed(&mut u, "quiet", T0, "c");
        let all = reports(&ReportConfig::default(), &t, &u, T0);
        assert_eq!(all.len(), 2, "a retired key still in use is reported");
    }

    #[test]
    fn fit_finds_the_crossing_with_an_interval() {
        let pts: Vec<(f64, f64)> = (0..10)
            .map(|h| {
                (
                    h as f64,
                    1.0 - 0.1 * h as f64 + if h % 2 == 0 { 0.02 } else { -0.02 },
                )
            })
            .collect();
        let (t0, pm, b) = fit_zero_crossing(&pts).unwrap();
        assert!((t0 - 10.0).abs() < 0.5, "{t0}");
        assert!(pm > 0.0 && pm < 2.0, "{pm}");
        assert!((b + 0.1).abs() < 0.01);
        assert!(
            fit_zero_crossing(&[(0.0, 0.5), (1.0, 0.6), (2.0, 0.7)]).is_none(),
            "rising: none"
        );
        assert!(
            fit_zero_crossing(&[(0.0, 0.5), (1.0, 0.4)]).is_none(),
            "too few points"
        );
        let noisy = [(0.0, 0.5), (1.0, 0.1), (2.0, 0.6), (3.0, 0.2), (4.0, 0.45)];
        assert!(fit_zero_crossing(&noisy).is_none(), "no significant trend");
        let flat_tail = [
            (0.0, 1.0),
            (1.0, 0.5),
            (2.0, 0.05),
            (3.0, 0.05),
            (4.0, 0.05),
        ];
        assert!(
            fit_zero_crossing(&flat_tail).is_none(),
            "stragglers remain past the crossing"
        );
    }
}
