//! Reports computed from state: rotation readiness (and per-key usage), as
//! JSON (report v1), a text table, or an HTML page.

pub mod render;
mod rotation;

use std::collections::HashMap;

pub use rotation::{report, reports, ReportConfig, RotationReport, UsageLookup, Verdict};

use crate::detect::{KeyUsage, LifecycleTable};
use crate::schema::Millis;
use crate::state::{StateError, StateStore};

/// Where the report endpoints get their data (the live detector's state).
pub trait ReportSource: Send + Sync {
    fn rotations(&self) -> Vec<RotationReport>;
    fn usage(&self, key_id: &str) -> Option<UsageView>;
}

/// Everything a report needs, read from a state store.
pub struct Snapshot {
    pub lifecycle: LifecycleTable,
    /// Per key, the freshest usage of any shard.
    pub usage: HashMap<String, KeyUsage>,
    /// Event time of the newest request seen.
    pub now: Option<Millis>,
}

impl Snapshot {
    pub fn load(store: &dyn StateStore) -> Result<Snapshot, StateError> {
        let mut lifecycle = LifecycleTable::default();
        for ev in store.lifecycle()? {
            lifecycle.upsert(ev);
        }
        let mut usage: HashMap<String, KeyUsage> = HashMap::new();
        store.for_each_usage(None, &mut |_, key, bytes| {
            let u: KeyUsage = postcard::from_bytes(bytes)
                .map_err(|e| StateError::Corrupt(format!("usage of {key}: {e}")))?;
            match usage.get(key) {
                Some(old) if old.last_seen >= u.last_seen => {}
                _ => {
                    usage.insert(key.to_string(), u);
                }
            }
            Ok(())
        })?;
        let now = usage.values().map(|u| u.last_seen).max();
        Ok(Snapshot {
            lifecycle,
            usage,
            now,
        })
    }

    pub fn rotations(&self, cfg: &ReportConfig) -> Vec<RotationReport> {
        match self.now {
            Some(now) => reports(cfg, &self.lifecycle, &self.usage, now),
            None => Vec::new(),
        }
    }
}

/// Per-key usage as the API shows it (`GET /v1/keys/{key_id}/usage`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct UsageView {
    pub key_id: String,
    #[serde(serialize_with = "crate::schema::timestamp::ser")]
    pub first_seen: Millis,
    #[serde(serialize_with = "crate::schema::timestamp::ser")]
    pub last_seen: Millis,
    pub requests_total: u64,
    pub requests_last_5m: u64,
    pub requests_last_1h: u64,
    pub requests_last_24h: u64,
    /// Requests per status class.
    pub status: std::collections::BTreeMap<&'static str, u64>,
    pub distinct_ips: u64,
    pub distinct_client_ids: u64,
    /// EWMA baseline of requests per minute.
    pub baseline_per_minute: f64,
    pub baseline_std: f64,
    pub top_clients: Vec<rotation::Straggler>,
    /// Requests per minute over the last hour: (minute start, count).
    pub per_minute: Vec<(String, u32)>,
}

impl UsageView {
    pub fn new(key_id: &str, u: &KeyUsage, now: Millis) -> Self {
        use crate::detect::usage::{HOUR, MINUTE};
        let names = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];
        let mut top: Vec<rotation::Straggler> = u
            .top
            .iter()
            .map(|c| rotation::Straggler {
                client: c.client.clone(),
                count: c.count,
                count_error: c.error,
                last_seen: c.last_seen,
            })
            .collect();
        top.sort_by_key(|c| std::cmp::Reverse(c.count));
        UsageView {
            key_id: key_id.to_string(),
            first_seen: u.first_seen,
            last_seen: u.last_seen,
            requests_total: u.total,
            requests_last_5m: u.minutes.sum(now - 4 * MINUTE, now),
            requests_last_1h: u.minutes.sum(now - 59 * MINUTE, now),
            requests_last_24h: u.hours.sum(now - 23 * HOUR, now),
            status: names
                .iter()
                .copied()
                .zip(u.status)
                .filter(|(_, n)| *n > 0)
                .collect(),
            distinct_ips: u.distinct_ips() as u64,
            distinct_client_ids: u.distinct_client_ids() as u64,
            baseline_per_minute: (u.ewma_mean * 100.0).round() / 100.0,
            baseline_std: (u.ewma_var.sqrt() * 100.0).round() / 100.0,
            top_clients: top,
            per_minute: u
                .minutes
                .series()
                .into_iter()
                .map(|(t, n)| (crate::schema::timestamp::format_rfc3339(t), n))
                .collect(),
        }
    }
}
