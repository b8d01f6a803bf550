//! Per-key usage analytics and the anomaly rules built on them, by event time:
//!
//! - `rate_anomaly`: a key's per-minute request count far from its own
//!   baseline (EWMA mean and variance of its per-minute counts; z-score
//!   threshold, minimum volume, warm-up). A spike is reported as soon as the
//!   count of the running minute crosses the threshold; a drop when a minute
//!   closes below it.
//! - `auth_failure_burst`: at least `auth_fail_threshold` 401/403 responses
//!   for a key within `auth_fail_window` (one alert per burst).
//! - `new_client` (info): a key whose set of clients has settled (no new
//!   client for `new_client_settle`, at least `new_client_min_requests`
//!   requests) is used by a client never seen before.
//!
//! The per-key state (request counts per minute, hour and day, first and last
//! use, counts per status class, distinct clients as HyperLogLog sketches, the
//! heaviest clients) also feeds the rotation-readiness reports.

use std::collections::VecDeque;

use cardinality_estimator::CardinalityEstimator;
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};
use xxhash_rust::xxh3::xxh3_64;

use crate::schema::alert::{
    self, AuthBurstEvidence, NewClientEvidence, RateEvidence, RequestContext,
};
use crate::schema::{AccessEvent, Alert, AlertKind, Evidence, Millis, Severity};

/// Usage checkpoints write a shard's keys in this many slices, one slice a
/// commit, each with its own input position (see [`usage_slice`]): a
/// checkpoint of 100 000 keys is then ~16 small writes, not one of ~40 MB
/// held three times over (staged, in the write batch, in a memtable).
pub const USAGE_SLICES: usize = 16;

/// The checkpoint slice of a key: stable across versions and restarts
/// (stored positions refer to it).
pub fn usage_slice(key: &str) -> usize {
    (xxh3_64(key.as_bytes()) % USAGE_SLICES as u64) as usize
}

/// Keys whose usage changed since it was last taken, by checkpoint slice.
#[derive(Default, Debug)]
pub struct DirtyKeys {
    slices: [Vec<Box<str>>; USAGE_SLICES],
}

impl DirtyKeys {
    pub fn push(&mut self, key: &str) {
        self.slices[usage_slice(key)].push(key.into());
    }

    pub fn is_empty(&self) -> bool {
        self.slices.iter().all(Vec::is_empty)
    }

    /// Whether a key of `slice` changed.
    pub fn slice_dirty(&self, slice: usize) -> bool {
        !self.slices[slice].is_empty()
    }

    /// The keys of the slices in `range`, which are left empty.
    pub fn take(&mut self, range: std::ops::Range<usize>) -> Vec<Box<str>> {
        let mut out = Vec::new();
        for s in &mut self.slices[range] {
            if out.is_empty() {
                out = std::mem::take(s);
            } else {
                out.append(s);
            }
        }
        out
    }
}

pub const MINUTE: Millis = 60_000;
pub const HOUR: Millis = 3_600_000;
pub const DAY: Millis = 86_400_000;

/// Parameters of the usage rules (`[usage]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageConfig {
    /// `rate_anomaly` when a key's per-minute count is this many standard
    /// deviations from its EWMA baseline. Default 4.0.
    pub rate_z: f64,
    /// ...and only when the count (spike) or the baseline (drop) is at least this. Default 30.
    pub rate_min_volume: u32,
    /// Minutes of a key's history before its baseline is trusted. Default 30.
    pub rate_warmup_minutes: u32,
    /// Weight of the newest minute in the EWMA (0 < a <= 1). Default 0.1.
    pub ewma_alpha: f64,
    /// `auth_failure_burst` at this many 401/403 for a key... Default 20.
    pub auth_fail_threshold: u32,
    /// ...within this window. Default 60s.
    #[serde(rename = "auth_fail_window", with = "crate::units::ms")]
    pub auth_fail_window_ms: Millis,
    /// `new_client` only when a key had no new client for this long... Default 24h.
    #[serde(rename = "new_client_settle", with = "crate::units::ms")]
    pub new_client_settle_ms: Millis,
    /// ...and has served at least this many requests. Default 100.
    pub new_client_min_requests: u64,
    /// Clients remembered per key for `new_client`; a key with more has no
    /// settled set and raises no `new_client`. Default 1024.
    #[serde(rename = "max_clients_per_key")]
    pub max_clients: usize,
    /// Clients kept in each key's heavy-hitter table (stragglers listed per
    /// key in reports). Default 10.
    pub top_clients: usize,
}

impl UsageConfig {
    /// Refuses values the rules cannot work with.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.rate_z.is_finite() && self.rate_z > 0.0) {
            return Err("usage.rate_z must be a positive number".into());
        }
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0) {
            return Err("usage.ewma_alpha must be in (0, 1]".into());
        }
        if self.auth_fail_threshold == 0 || self.auth_fail_window_ms == 0 {
            return Err(
                "usage.auth_fail_threshold and usage.auth_fail_window must be positive".into(),
            );
        }
        if self.top_clients == 0 || self.top_clients > 1000 {
            return Err("usage.top_clients must be between 1 and 1000".into());
        }
        Ok(())
    }
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            rate_z: 4.0,
            rate_min_volume: 30,
            rate_warmup_minutes: 30,
            ewma_alpha: 0.1,
            auth_fail_threshold: 20,
            auth_fail_window_ms: 60_000,
            new_client_settle_ms: 24 * HOUR,
            new_client_min_requests: 100,
            max_clients: 1024,
            top_clients: 10,
        }
    }
}

/// Counts in fixed time buckets over a window of `len` buckets ending with
/// the newest one.
///
/// Only the buckets from the oldest non-zero one in the window to the newest
/// are held (no leading zeros, so equal rings are equal values): a key used
/// for ten minutes holds ten minute buckets, not sixty, and one hour and one
/// day bucket. With 100 000 keys that is most of their usage memory
/// (BENCHMARKS.md, "lazily grown rings"). The stored and published form is
/// unchanged: the full window in slots `index mod len` ([`DenseRing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    /// Bucket width.
    pub width: Millis,
    /// Index (time / width) of the newest bucket; `i64::MIN` before the first.
    pub newest: i64,
    /// Buckets in the window.
    len: u32,
    /// Buckets `newest - held.len() + 1 ..= newest`, oldest first; the first
    /// is never 0. Older buckets of the window are 0.
    held: Vec<u32>,
}

/// The serialized form of a [`Ring`]: every bucket of the window, bucket
/// `i` in slot `i mod len`.
#[derive(Serialize, Deserialize)]
struct DenseRing {
    width: Millis,
    newest: i64,
    counts: Vec<u32>,
}

impl Serialize for Ring {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = self.len as i64;
        let mut counts = vec![0u32; self.len as usize];
        if self.newest != i64::MIN {
            let first = self.newest - self.held.len() as i64 + 1;
            for (k, &c) in self.held.iter().enumerate() {
                counts[(first + k as i64).rem_euclid(len) as usize] = c;
            }
        }
        DenseRing {
            width: self.width,
            newest: self.newest,
            counts,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Ring {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let DenseRing {
            width,
            newest,
            counts,
        } = DenseRing::deserialize(d)?;
        if counts.is_empty() || counts.len() > u32::MAX as usize {
            return Err(serde::de::Error::custom("a ring without buckets"));
        }
        let len = counts.len() as i64;
        let mut held = Vec::new();
        if newest != i64::MIN {
            // oldest first, leading zeros dropped
            let window = (newest - len + 1..=newest).map(|i| counts[i.rem_euclid(len) as usize]);
            held.extend(window.skip_while(|&c| c == 0));
            held.shrink_to_fit();
        }
        Ok(Ring {
            width,
            newest,
            len: len as u32,
            held,
        })
    }
}

impl Ring {
    pub fn new(width: Millis, len: usize) -> Self {
        assert!(len > 0 && len <= u32::MAX as usize, "a ring holds buckets");
        Ring {
            width,
            newest: i64::MIN,
            len: len as u32,
            held: Vec::new(),
        }
    }

    /// Index of the oldest bucket held (meaningful when `held` is not empty).
    fn first_held(&self) -> i64 {
        self.newest - self.held.len() as i64 + 1
    }

    pub fn add(&mut self, t: Millis, n: u32) {
        let idx = t.div_euclid(self.width);
        let len = self.len as i64;
        if self.newest == i64::MIN {
            self.newest = idx;
        }
        if idx > self.newest {
            let gap = idx - self.newest;
            self.newest = idx;
            if self.held.is_empty() {
                // nothing held: the new bucket starts it (below)
            } else if gap >= len {
                self.held.clear();
            } else {
                let keep = (len - gap).min(self.held.len() as i64) as usize;
                let drop = self.held.len() - keep;
                if drop > 0 {
                    self.held.drain(..drop);
                }
                let want = keep + gap as usize;
                if want > self.held.capacity() {
                    // grow towards the window, never past it
                    let target = (self.held.capacity() * 2).max(want).min(self.len as usize);
                    self.held.reserve_exact(target - self.held.len());
                }
                self.held.resize(want, 0);
                let lead = self.held.iter().take_while(|&&c| c == 0).count();
                if lead > 0 {
                    self.held.drain(..lead);
                }
            }
        } else if idx <= self.newest - len {
            return; // older than the window
        }
        if n == 0 {
            return;
        }
        if self.held.is_empty() {
            // buckets idx ..= newest
            let want = (self.newest - idx + 1) as usize;
            self.held.reserve_exact(want.max(4).min(self.len as usize));
            self.held.resize(want, 0);
            self.held[0] = n;
            return;
        }
        let first = self.first_held();
        if idx < first {
            // a late request older than every bucket held: grow at the front
            let pad = (first - idx) as usize;
            self.held.splice(0..0, std::iter::repeat_n(0, pad));
            self.held[0] = n;
        } else {
            let c = &mut self.held[(idx - first) as usize];
            *c = c.saturating_add(n);
        }
    }

    /// Count of the bucket holding `t` (0 when outside the window).
    pub fn get(&self, t: Millis) -> u32 {
        self.bucket(t.div_euclid(self.width))
    }

    /// Count of bucket `idx`.
    fn bucket(&self, idx: i64) -> u32 {
        if self.newest == i64::MIN || idx > self.newest || self.held.is_empty() {
            return 0;
        }
        let first = self.first_held();
        if idx < first {
            0
        } else {
            self.held[(idx - first) as usize]
        }
    }

    /// Sum over buckets whose start lies in [from, to].
    pub fn sum(&self, from: Millis, to: Millis) -> u64 {
        if self.newest == i64::MIN || self.held.is_empty() {
            return 0;
        }
        let (a, b) = (from.div_euclid(self.width), to.div_euclid(self.width));
        (a.max(self.first_held())..=b.min(self.newest))
            .map(|i| self.bucket(i) as u64)
            .sum()
    }

    /// (bucket start, count) for every bucket in the window, oldest first.
    pub fn series(&self) -> Vec<(Millis, u32)> {
        if self.newest == i64::MIN {
            return Vec::new();
        }
        let len = self.len as i64;
        (self.newest - len + 1..=self.newest)
            .map(|i| (i * self.width, self.bucket(i)))
            .collect()
    }
}

/// A heavy hitter: a client and how often it used the key (Space-Saving:
/// `count` overestimates by at most `error`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopClient {
    pub fp: u64,
    pub client: String,
    pub count: u64,
    pub error: u64,
    pub last_seen: Millis,
}

pub type Sketch = CardinalityEstimator<u64, wyhash::WyHash, 10, 6>;

/// Everything replayguard keeps about one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyUsage {
    pub first_seen: Millis,
    pub last_seen: Millis,
    pub total: u64,
    /// Requests per status class: [other, 1xx, 2xx, 3xx, 4xx, 5xx].
    pub status: [u64; 6],
    pub minutes: Ring,
    pub hours: Ring,
    pub days: Ring,
    pub ips: Sketch,
    pub client_ids: Sketch,
    pub top: Vec<TopClient>,
    // rate baseline
    pub ewma_mean: f64,
    pub ewma_var: f64,
    pub minutes_observed: u32,
    pub open_minute: i64,
    pub open_count: u32,
    pub spike_reported_minute: i64,
    // authentication failures
    pub auth_failures: VecDeque<Millis>,
    pub burst_open: bool,
    // clients
    pub known_clients: Vec<u64>,
    pub clients_overflow: bool,
    pub last_new_client_at: Millis,
    #[serde(skip)]
    pub dirty: bool,
}

impl KeyUsage {
    pub fn new(t: Millis) -> Self {
        KeyUsage {
            first_seen: t,
            last_seen: t,
            total: 0,
            status: [0; 6],
            minutes: Ring::new(MINUTE, 60),
            hours: Ring::new(HOUR, 48),
            days: Ring::new(DAY, 30),
            ips: Sketch::new(),
            client_ids: Sketch::new(),
            top: Vec::new(),
            ewma_mean: 0.0,
            ewma_var: 0.0,
            minutes_observed: 0,
            open_minute: t.div_euclid(MINUTE),
            open_count: 0,
            spike_reported_minute: i64::MIN,
            auth_failures: VecDeque::new(),
            burst_open: false,
            known_clients: Vec::new(),
            clients_overflow: false,
            last_new_client_at: t,
            dirty: true,
        }
    }

    /// Requests in [from, to], from the finest buckets that cover `from`.
    pub fn requests_between(&self, from: Millis, to: Millis) -> u64 {
        let span = to - from;
        if span <= 59 * MINUTE {
            self.minutes.sum(from, to)
        } else if span <= 47 * HOUR {
            self.hours.sum(from, to)
        } else {
            self.days.sum(from, to)
        }
    }

    pub fn distinct_ips(&self) -> usize {
        self.ips.estimate()
    }

    pub fn distinct_client_ids(&self) -> usize {
        self.client_ids.estimate()
    }

    /// Baseline standard deviation, floored by the Poisson spread of the mean.
    fn baseline_std(&self) -> f64 {
        self.ewma_var.sqrt().max(self.ewma_mean.sqrt()).max(1.0)
    }

    fn warm(&self, cfg: &UsageConfig) -> bool {
        self.minutes_observed >= cfg.rate_warmup_minutes
    }

    /// Folds a closed minute into the baseline.
    fn fold(&mut self, x: f64, a: f64) {
        if self.minutes_observed == 0 {
            self.ewma_mean = x;
            self.ewma_var = 0.0;
        } else {
            let d = x - self.ewma_mean;
            self.ewma_mean += a * d;
            self.ewma_var = (1.0 - a) * (self.ewma_var + a * d * d);
        }
        self.minutes_observed = self.minutes_observed.saturating_add(1);
    }
}

fn p_value(z: f64) -> f64 {
    let n = Normal::new(0.0, 1.0).expect("standard normal");
    2.0 * (1.0 - n.cdf(z.abs()))
}

/// The label a client is known by: its client_id, else its address.
pub fn client_label<'a>(ev: &'a AccessEvent<'_>) -> &'a str {
    ev.client_id.as_deref().unwrap_or(&ev.client_ip)
}

/// The context of a request, as alerts carry it.
pub(crate) fn request_context(ev: &AccessEvent<'_>) -> RequestContext {
    RequestContext {
        client_ip: ev.client_ip.to_string(),
        method: ev.method.to_string(),
        path: ev.path.to_string(),
        status: ev.status,
        user_agent: ev.user_agent.as_deref().map(str::to_string),
        client_id: ev.client_id.as_deref().map(str::to_string),
    }
}

/// An alert about request `ev` (which has a key: no per-key rule judges an
/// unsigned request); its id hashes the kind, the key and `id_part` (the
/// event id for a per-request alert, a window for the usage rules).
pub(crate) fn make_alert(
    kind: AlertKind,
    severity: Severity,
    ev: &AccessEvent<'_>,
    id_part: &[u8],
    evidence: Evidence,
) -> Alert {
    debug_assert!(
        ev.key_id.is_some(),
        "per-key alert about an unsigned request"
    );
    let key_id = ev.key_id.as_deref().unwrap_or_default();
    // the request itself for the per-request kinds; the usage rules are
    // about a key's traffic over a window
    let request = kind.is_core().then(|| request_context(ev));
    Alert {
        alert_id: alert::alert_id_parts(kind.as_str(), &[key_id.as_bytes(), id_part]),
        kind,
        severity,
        key_id: key_id.to_string(),
        event_id: ev.event_id.to_string(),
        received_at: ev.received_at,
        request,
        evidence,
        detector_version: alert::DETECTOR_VERSION.to_string(),
    }
}

/// Updates `u` with one request and appends any anomaly alerts to `out`.
pub fn observe(cfg: &UsageConfig, u: &mut KeyUsage, ev: &AccessEvent<'_>, out: &mut Vec<Alert>) {
    let t = ev.received_at;
    u.dirty = true;
    u.first_seen = u.first_seen.min(t);
    u.last_seen = u.last_seen.max(t);
    u.total += 1;
    u.status[ev.status_class() as usize] += 1;
    u.minutes.add(t, 1);
    u.hours.add(t, 1);
    u.days.add(t, 1);
    let ip_fp = xxh3_64(ev.client_ip.as_bytes());
    u.ips.insert_hash(ip_fp);
    if let Some(id) = ev.client_id.as_deref() {
        u.client_ids.insert_hash(xxh3_64(id.as_bytes()));
    }
    let label = client_label(ev);
    let fp = if ev.client_id.is_some() {
        xxh3_64(label.as_bytes()) ^ 0x1d
    } else {
        ip_fp
    };
    top_update(u, cfg.top_clients * 2, fp, label, t);
    rate(cfg, u, ev, out);
    if matches!(ev.status, 401 | 403) {
        auth(cfg, u, ev, out);
    }
    new_client(cfg, u, ev, fp, label, out);
}

/// Space-Saving with `cap` counters.
fn top_update(u: &mut KeyUsage, cap: usize, fp: u64, label: &str, t: Millis) {
    if let Some(c) = u.top.iter_mut().find(|c| c.fp == fp) {
        c.count += 1;
        c.last_seen = c.last_seen.max(t);
        return;
    }
    if u.top.len() < cap.max(1) {
        u.top.push(TopClient {
            fp,
            client: label.to_string(),
            count: 1,
            error: 0,
            last_seen: t,
        });
        return;
    }
    let min = u.top.iter_mut().min_by_key(|c| c.count).expect("non-empty");
    let floor = min.count;
    *min = TopClient {
        fp,
        client: label.to_string(),
        count: floor + 1,
        error: floor,
        last_seen: t,
    };
}

fn rate(cfg: &UsageConfig, u: &mut KeyUsage, ev: &AccessEvent<'_>, out: &mut Vec<Alert>) {
    let m = ev.received_at.div_euclid(MINUTE);
    if m > u.open_minute {
        // close the open minute, and the silent minutes after it (bounded)
        let closed = u.open_count as f64;
        let (mean, std) = (u.ewma_mean, u.baseline_std());
        if u.warm(cfg) && mean >= cfg.rate_min_volume as f64 && closed < mean - cfg.rate_z * std {
            out.push(rate_alert(
                ev,
                "drop",
                closed,
                mean,
                std,
                u.open_minute * MINUTE,
            ));
        }
        u.fold(closed, cfg.ewma_alpha);
        for _ in 1..(m - u.open_minute).min(60) {
            u.fold(0.0, cfg.ewma_alpha);
        }
        u.open_minute = m;
        u.open_count = 0;
    }
    if m < u.open_minute {
        return; // late: counted in the rings, too late for the baseline
    }
    u.open_count += 1;
    let (mean, std) = (u.ewma_mean, u.baseline_std());
    let x = u.open_count as f64;
    if u.warm(cfg)
        && u.spike_reported_minute != m
        && u.open_count >= cfg.rate_min_volume
        && x > mean + cfg.rate_z * std
    {
        u.spike_reported_minute = m;
        out.push(rate_alert(ev, "spike", x, mean, std, m * MINUTE));
    }
}

/// A `rate_anomaly` for the minute from `start`: `observed` requests against
/// the baseline (`mean`, `std`); its id hashes the key, direction and minute.
fn rate_alert(
    ev: &AccessEvent<'_>,
    direction: &str,
    observed: f64,
    mean: f64,
    std: f64,
    start: Millis,
) -> Alert {
    let z = (observed - mean) / std;
    make_alert(
        AlertKind::RateAnomaly,
        Severity::Medium,
        ev,
        &[direction.as_bytes(), &start.to_le_bytes()].concat(),
        Evidence::Rate(RateEvidence {
            direction: direction.into(),
            observed: observed as u64,
            baseline_mean: round2(mean),
            baseline_std: round2(std),
            z_score: round2(z),
            p_value: p_value(z),
            window_start: start,
            window_ms: MINUTE,
        }),
    )
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn auth(cfg: &UsageConfig, u: &mut KeyUsage, ev: &AccessEvent<'_>, out: &mut Vec<Alert>) {
    let t = ev.received_at;
    let q = &mut u.auth_failures;
    let at = q.partition_point(|&x| x <= t);
    q.insert(at, t);
    let newest = *q.back().expect("just inserted");
    while q
        .front()
        .is_some_and(|&f| f <= newest - cfg.auth_fail_window_ms)
    {
        q.pop_front();
    }
    while q.len() > cfg.auth_fail_threshold as usize {
        q.pop_front();
    }
    let n = q.len() as u32;
    if n >= cfg.auth_fail_threshold {
        if !u.burst_open {
            u.burst_open = true;
            let first = *q.front().expect("non-empty");
            out.push(make_alert(
                AlertKind::AuthFailureBurst,
                Severity::High,
                ev,
                &first.to_le_bytes(),
                Evidence::AuthBurst(AuthBurstEvidence {
                    observed: n as u64,
                    threshold: cfg.auth_fail_threshold as u64,
                    window_start: first,
                    window_ms: cfg.auth_fail_window_ms,
                }),
            ));
        }
    } else {
        u.burst_open = false;
    }
}

fn new_client(
    cfg: &UsageConfig,
    u: &mut KeyUsage,
    ev: &AccessEvent<'_>,
    fp: u64,
    label: &str,
    out: &mut Vec<Alert>,
) {
    let Err(at) = u.known_clients.binary_search(&fp) else {
        return;
    };
    let t = ev.received_at;
    let settled = !u.clients_overflow
        && u.total > cfg.new_client_min_requests
        && t - u.last_new_client_at >= cfg.new_client_settle_ms;
    if settled {
        out.push(make_alert(
            AlertKind::NewClient,
            Severity::Info,
            ev,
            ev.event_id.as_bytes(),
            Evidence::NewClient(NewClientEvidence {
                client: label.to_string(),
                client_ip: ev.client_ip.to_string(),
                client_id: ev.client_id.as_ref().map(|c| c.to_string()),
                known_clients: u.known_clients.len() as u64,
                settled_since: u.last_new_client_at,
            }),
        ));
    }
    if u.known_clients.len() < cfg.max_clients {
        u.known_clients.insert(at, fp);
    } else {
        u.clients_overflow = true;
    }
    u.last_new_client_at = u.last_new_client_at.max(t);
}

#[cfg(test)]
#[path = "usage_tests.rs"]
mod tests;
