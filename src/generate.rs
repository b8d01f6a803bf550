//! Realistic gateway traffic with planted replays, duplicates, skewed clocks,
//! key rotations and malformed lines; deterministic for a seed. Used by the
//! demo, the tests, the benches and the fault harness. With `truth`, the
//! expected alerts (from [`crate::model`]) are written next to the events.

use std::collections::{BinaryHeap, VecDeque};
use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::detect::DetectConfig;
use crate::model::{self, ModelEvent};
use crate::schema::timestamp::{parse_rfc3339, write_rfc3339};
use crate::schema::{KeyState, LifecycleEvent, Millis};

/// SplitMix64: small, fast, good enough for traffic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x853c_49e6_748f_ea9b)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            ((self.next_u64() as u128 * n as u128) >> 64) as u64
        }
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1).max(1) as u64) as i64
    }
    pub fn hex(&mut self, out: &mut String, n: usize) {
        const H: &[u8; 16] = b"0123456789abcdef";
        let mut v = 0;
        for i in 0..n {
            if i % 16 == 0 {
                v = self.next_u64();
            }
            out.push(H[(v & 15) as usize] as char);
            v >>= 4;
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenConfig {
    pub events: u64,
    /// Distinct API keys in use (before rotations add successors).
    pub keys: usize,
    pub seed: u64,
    /// Event time of the first request.
    pub start: Millis,
    /// Requests per second of event time.
    pub rate: f64,
    /// Fraction of requests that replay a recent request's (key, nonce).
    pub replay_rate: f64,
    /// Fraction of lines that are transport duplicates (same event id).
    pub duplicate_rate: f64,
    /// Fraction signed too long ago / too far ahead.
    pub stale_rate: f64,
    pub future_rate: f64,
    /// Fraction of requests without a nonce.
    pub no_nonce_rate: f64,
    /// Fraction of lines that are malformed.
    pub malformed_rate: f64,
    /// Arrival disorder: each request may arrive up to this much behind.
    pub disorder_ms: i64,
    /// Keys that go through a rotation (rotating -> retired) during the run.
    pub rotations: usize,
    /// Fraction of timestamps written as epoch milliseconds instead of RFC 3339.
    pub epoch_ms_rate: f64,
    /// Fraction of responses that are 401/403 (bursts of them raise
    /// `auth_failure_burst`, which the ground truth does not cover).
    pub auth_fail_rate: f64,
    /// The log format of the lines: `v1`, or `kong` (the same requests as
    /// Kong's log serializer writes them).
    pub format: crate::decode::Format,
    /// How clients choose nonces.
    pub nonces: NonceStyle,
    /// With counter nonces: fraction of requests sent with a counter from
    /// 6 to 60 s earlier (what `detect.sequence` flags).
    pub out_of_sequence_rate: f64,
}

/// How the generated clients choose nonces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NonceStyle {
    /// 16 random hex digits.
    #[default]
    Random,
    /// An increasing counter per key, as exchange APIs ask: the request's
    /// time in microseconds (milliseconds × 1000 plus a per-key count).
    Counter,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            events: 100_000,
            keys: 200,
            seed: 1,
            start: parse_rfc3339("2026-11-01T00:00:00Z").expect("valid"),
            rate: 2_000.0,
            replay_rate: 0.002,
            duplicate_rate: 0.001,
            stale_rate: 0.0005,
            future_rate: 0.0002,
            no_nonce_rate: 0.05,
            malformed_rate: 0.0,
            disorder_ms: 0,
            rotations: 2,
            epoch_ms_rate: 0.1,
            auth_fail_rate: 0.02,
            format: crate::decode::Format::V1,
            nonces: NonceStyle::Random,
            out_of_sequence_rate: 0.0,
        }
    }
}

/// The request of an access event v1 line as Kong's log serializer writes
/// it (about twice as long); a line that does not decode is kept as it is.
pub fn kong_line(v1_line: &str) -> String {
    let Ok(ev) = crate::decode::Decoder::default().access(v1_line.as_bytes()) else {
        return v1_line.to_string();
    };
    let mut headers = serde_json::Map::new();
    headers.insert("host".into(), "api.example.com".into());
    if let Some(ua) = &ev.user_agent {
        headers.insert("user-agent".into(), ua.as_ref().into());
    }
    headers.insert("accept".into(), "application/json".into());
    if let Some(k) = &ev.key_id {
        headers.insert("x-api-key".into(), k.as_ref().into());
    }
    if let Some(n) = &ev.nonce {
        headers.insert("x-nonce".into(), n.as_ref().into());
    }
    if let Some(t) = ev.client_ts {
        headers.insert("x-timestamp".into(), t.to_string().into());
    }
    if let Some(s) = &ev.signature {
        headers.insert("x-signature".into(), s.as_ref().into());
    }
    let mut v = serde_json::json!({
        "request": {
            "id": ev.event_id,
            "method": ev.method,
            "uri": ev.path,
            "url": format!("https://api.example.com:8443{}", ev.path),
            "size": 412,
            "querystring": {},
            "headers": headers,
        },
        "upstream_uri": ev.path,
        "response": {"status": ev.status, "size": 934, "headers": {"content-type": "application/json"}},
        "latencies": {"request": 12, "kong": 2, "proxy": 10},
        "tries": [{"balancer_latency": 0, "port": 8080, "ip": "10.20.0.5"}],
        "client_ip": ev.client_ip,
        "service": {"name": "trading", "host": "trading.internal", "port": 8080, "protocol": "http"},
        "route": {"name": "api", "paths": ["/api", "/sapi"]},
        "started_at": ev.received_at,
        "workspace_name": "default",
    });
    if let Some(c) = &ev.client_id {
        v["consumer"] = serde_json::json!({"username": c});
    }
    v.to_string()
}

const PATHS: &[(&str, &str)] = &[
    ("GET", "/api/v3/account"),
    ("GET", "/api/v3/openOrders"),
    ("POST", "/api/v3/order"),
    ("DELETE", "/api/v3/order"),
    ("GET", "/api/v3/myTrades"),
    ("GET", "/api/v3/ticker/price"),
    ("POST", "/sapi/v1/capital/withdraw/apply"),
    ("GET", "/sapi/v1/asset/balance"),
];
const AGENTS: &[&str] = &[
    "python-requests/2.32.3",
    "ccxt/4.4.12 (+https://github.com/ccxt/ccxt)",
    "okhttp/4.12.0",
    "Go-http-client/2.0",
    "trading-bot/1.8 (linux; x86_64)",
];

#[derive(Debug, Clone)]
struct Key {
    id: String,
    ips: Vec<String>,
    clients: Vec<String>,
    weight: f64,
    /// For a key being rotated: (rotation start, grace end, successor index).
    rotation: Option<(Millis, Millis, usize)>,
}

/// A request held until its arrival time.
#[derive(Debug, Clone)]
struct Pending {
    arrival: Millis,
    seq: u64,
    line: String,
    model: Option<ModelEvent>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.arrival, self.seq) == (o.arrival, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // min-heap by arrival
        (o.arrival, o.seq).cmp(&(self.arrival, self.seq))
    }
}

/// An expected alert, as written to the truth file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
pub struct TruthLine {
    pub kind: crate::schema::AlertKind,
    pub key_id: String,
    pub event_id: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub first_event_id: Option<String>,
}

/// Counts of what was generated.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GenReport {
    pub lines: u64,
    pub replays_planted: u64,
    /// Counter nonces sent from 6 to 60 s behind (`out_of_sequence_rate`).
    pub stale_counters_planted: u64,
    pub duplicates: u64,
    pub malformed: u64,
    pub lifecycle_records: usize,
    pub expected_alerts: Option<usize>,
}

fn key_name(rng: &mut Rng) -> String {
    const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut s = String::from("AK");
    for _ in 0..18 {
        s.push(B32[rng.below(32) as usize] as char);
    }
    s
}

fn ip(rng: &mut Rng) -> String {
    if rng.chance(0.1) {
        format!(
            "2001:db8:{:x}:{:x}::{:x}",
            rng.below(65536),
            rng.below(65536),
            rng.below(65536)
        )
    } else {
        format!(
            "{}.{}.{}.{}",
            [10, 172, 192, 100, 34, 52][rng.below(6) as usize],
            rng.below(256),
            rng.below(256),
            1 + rng.below(254)
        )
    }
}

fn push_ts(out: &mut String, t: Millis, epoch: bool) {
    if epoch {
        out.push_str(&t.to_string());
    } else {
        out.push('"');
        write_rfc3339(out, t);
        out.push('"');
    }
}

/// Writes `cfg.events` lines of traffic to `events`, the lifecycle records to
/// `lifecycle` and, when given, the expected alerts to `truth`.
/// The event lines of [`generate`] under the default rules, in memory (for
/// tests and benchmarks).
pub fn sample_lines(cfg: &GenConfig) -> Vec<String> {
    let mut out = Vec::new();
    generate(cfg, &DetectConfig::default(), &mut out, None, None).expect("writes to memory");
    String::from_utf8(out)
        .expect("generated lines are UTF-8")
        .lines()
        .map(String::from)
        .collect()
}

pub fn generate(
    cfg: &GenConfig,
    rules: &DetectConfig,
    events: &mut dyn Write,
    lifecycle: Option<&mut dyn Write>,
    truth: Option<&mut dyn Write>,
) -> std::io::Result<GenReport> {
    let mut rng = Rng::new(cfg.seed);
    let mut report = GenReport::default();
    let span = (cfg.events as f64 / cfg.rate * 1000.0) as Millis;
    let mut keys: Vec<Key> = (0..cfg.keys.max(1))
        .map(|i| Key {
            id: key_name(&mut rng),
            ips: (0..1 + rng.below(4)).map(|_| ip(&mut rng)).collect(),
            clients: (0..1 + rng.below(3))
                .map(|j| format!("client-{i}-{j}"))
                .collect(),
            // a few heavy keys, many light ones
            weight: 1.0 / (1.0 + i as f64).powf(0.8),
            rotation: None,
        })
        .collect();
    let mut records: Vec<LifecycleEvent> = Vec::new();
    for r in 0..cfg.rotations.min(keys.len()) {
        // rotations start in the first third of the run; old-key traffic fades
        // over the grace period, with a straggler left past it on even ones
        let old = r;
        let start =
            cfg.start + span / 6 + (span / 6) * r as Millis / cfg.rotations.max(1) as Millis;
        let grace = start + span / 3;
        let succ = Key {
            id: key_name(&mut rng),
            ips: keys[old].ips.clone(),
            clients: keys[old].clients.clone(),
            weight: 0.0,
            rotation: None,
        };
        keys.push(succ);
        let si = keys.len() - 1;
        keys[old].rotation = Some((start, grace, si));
        records.push(LifecycleEvent {
            key_id: keys[old].id.clone(),
            state: KeyState::Active,
            at: cfg.start - 86_400_000,
            successor: None,
            grace_until: None,
        });
        records.push(LifecycleEvent {
            key_id: keys[old].id.clone(),
            state: KeyState::Rotating,
            at: start,
            successor: Some(keys[si].id.clone()),
            grace_until: Some(grace),
        });
        records.push(LifecycleEvent {
            key_id: keys[si].id.clone(),
            state: KeyState::Active,
            at: start,
            successor: None,
            grace_until: None,
        });
        if r % 2 == 1 {
            records.push(LifecycleEvent {
                key_id: keys[old].id.clone(),
                state: KeyState::Retired,
                at: grace + span / 6,
                successor: Some(keys[si].id.clone()),
                grace_until: None,
            });
        }
    }
    if let Some(w) = lifecycle {
        for r in &records {
            serde_json::to_writer(&mut *w, r)?;
            w.write_all(b"\n")?;
        }
    }
    report.lifecycle_records = records.len();
    let total_weight: f64 = keys.iter().map(|k| k.weight).sum();
    let cumulative: Vec<f64> = keys
        .iter()
        .scan(0.0, |acc, k| {
            *acc += k.weight / total_weight;
            Some(*acc)
        })
        .collect();

    let want_truth = truth.is_some();
    // the last counter of each key (`NonceStyle::Counter`)
    let mut counters = vec![0u64; keys.len()];
    let mut model_events: Vec<ModelEvent> = Vec::new();
    // recent nonce-bearing requests: (t, key, nonce, client_ts, ip)
    let mut recent: VecDeque<(Millis, usize, String, Millis, String)> = VecDeque::new();
    let mut recent_lines: VecDeque<(Millis, String, Option<ModelEvent>)> = VecDeque::new();
    let mut heap: BinaryHeap<Pending> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut emitted = 0u64;
    let mut line = String::with_capacity(512);
    let interval = 1000.0 / cfg.rate;
    let sample =
        (20_000.0 / (cfg.rate * rules.max_past_skew_ms.max(1000) as f64 / 1000.0)).min(1.0);

    let flush_until = |heap: &mut BinaryHeap<Pending>,
                       until: Millis,
                       events: &mut dyn Write,
                       model_events: &mut Vec<ModelEvent>|
     -> std::io::Result<()> {
        while heap.peek().is_some_and(|p| p.arrival <= until) {
            let p = heap.pop().expect("peeked");
            match cfg.format {
                crate::decode::Format::Kong => events.write_all(kong_line(&p.line).as_bytes())?,
                _ => events.write_all(p.line.as_bytes())?,
            }
            events.write_all(b"\n")?;
            if let Some(m) = p.model {
                model_events.push(m);
            }
        }
        Ok(())
    };

    let mut i = 0u64;
    while emitted < cfg.events {
        let t = cfg.start + (i as f64 * interval) as Millis;
        i += 1;
        line.clear();
        let mut model_ev = None;
        if cfg.malformed_rate > 0.0 && rng.chance(cfg.malformed_rate) {
            report.malformed += 1;
            line.push_str(match rng.below(5) {
                0 => "{\"event_id\":\"truncated",
                1 => "this is not json",
                2 => "{\"event_id\":\"m1\",\"received_at\":\"2026-13-45T99:00:00Z\",\"key_id\":\"k\",\"client_ts\":0,\"client_ip\":\"1.2.3.4\",\"method\":\"GET\",\"path\":\"/\",\"status\":200}",
                3 => "{\"event_id\":\"m2\",\"key_id\":\"k\"}",
                _ => "[1,2,3]",
            });
        } else if cfg.duplicate_rate > 0.0
            && !recent_lines.is_empty()
            && rng.chance(cfg.duplicate_rate)
        {
            let j = rng.below(recent_lines.len() as u64) as usize;
            let (_, l, m) = &recent_lines[recent_lines.len() - 1 - j];
            line.push_str(l);
            model_ev = m.clone();
            report.duplicates += 1;
        } else {
            // choose a key by weight; a rotating key hands traffic to its successor
            let u = rng.unit();
            let mut k = cumulative.partition_point(|c| *c < u).min(keys.len() - 1);
            if let Some((start, grace, succ)) = keys[k].rotation {
                if t >= start {
                    let frac = ((t - start) as f64 / (grace - start).max(1) as f64).min(1.0);
                    // old-key share falls from 1 to 5 %; odd rotations stop fully at grace
                    let old_share = if k % 2 == 1 && t > grace {
                        0.0
                    } else {
                        1.0 - 0.95 * frac
                    };
                    if !rng.chance(old_share) {
                        k = succ;
                    }
                }
            }
            let key = &keys[k];
            let mut event_id = String::with_capacity(36);
            rng.hex(&mut event_id, 8);
            event_id.push('-');
            rng.hex(&mut event_id, 4);
            event_id.push_str("-4");
            rng.hex(&mut event_id, 3);
            event_id.push('-');
            rng.hex(&mut event_id, 4);
            event_id.push('-');
            rng.hex(&mut event_id, 12);
            let replay = cfg.replay_rate > 0.0 && !recent.is_empty() && rng.chance(cfg.replay_rate);
            let (key_idx, nonce, client_ts, client_ip) = if replay {
                report.replays_planted += 1;
                let j = rng.below(recent.len() as u64) as usize;
                let (_, kk, n, cts, ip0) = recent[j].clone();
                let ip1 = if rng.chance(0.5) { ip0 } else { ip(&mut rng) };
                (kk, Some(n), cts, ip1)
            } else {
                let nonce = if rng.chance(cfg.no_nonce_rate) {
                    None
                } else if cfg.nonces == NonceStyle::Counter {
                    // microseconds: milliseconds x 1000 plus a count per key
                    let c = &mut counters[k];
                    *c = (*c + 1) % 1000;
                    let mut at = t;
                    if cfg.out_of_sequence_rate > 0.0 && rng.chance(cfg.out_of_sequence_rate) {
                        at -= rng.range(6_000, 60_000);
                        report.stale_counters_planted += 1;
                    }
                    Some((at.max(0) as u64 * 1000 + *c).to_string())
                } else {
                    let mut n = String::with_capacity(16);
                    rng.hex(&mut n, 16);
                    Some(n)
                };
                let mut cts = t - rng.range(0, 1500);
                if rng.chance(cfg.stale_rate) {
                    cts = t - rules.max_past_skew_ms - rng.range(1, 600_000);
                } else if rng.chance(cfg.future_rate) {
                    cts = t + rules.max_future_skew_ms + rng.range(1, 120_000);
                }
                let ip0 = key.ips[rng.below(key.ips.len() as u64) as usize].clone();
                (k, nonce, cts, ip0)
            };
            let key = &keys[key_idx];
            let (method, path) = PATHS[rng.below(PATHS.len() as u64) as usize];
            let status = if rng.chance(cfg.auth_fail_rate) {
                if rng.chance(0.75) {
                    401
                } else {
                    403
                }
            } else {
                match rng.below(1000) {
                    0..=899 => 200,
                    900..=929 => 201,
                    930..=959 => 400,
                    960..=989 => 429,
                    _ => 500,
                }
            };
            line.push_str("{\"event_id\":\"");
            line.push_str(&event_id);
            line.push_str("\",\"received_at\":");
            push_ts(&mut line, t, rng.chance(cfg.epoch_ms_rate));
            line.push_str(",\"key_id\":\"");
            line.push_str(&key.id);
            line.push_str("\",\"nonce\":");
            match &nonce {
                Some(n) => {
                    line.push('"');
                    line.push_str(n);
                    line.push('"');
                }
                None => line.push_str("null"),
            }
            line.push_str(",\"client_ts\":");
            push_ts(&mut line, client_ts, rng.chance(cfg.epoch_ms_rate));
            line.push_str(",\"client_ip\":\"");
            line.push_str(&client_ip);
            line.push_str("\",\"method\":\"");
            line.push_str(method);
            line.push_str("\",\"path\":\"");
            line.push_str(path);
            line.push_str("\",\"status\":");
            line.push_str(&status.to_string());
            line.push_str(",\"user_agent\":\"");
            line.push_str(AGENTS[(key_idx + key.id.len()) % AGENTS.len()]);
            line.push_str("\",\"client_id\":\"");
            line.push_str(&key.clients[rng.below(key.clients.len() as u64) as usize]);
            line.push_str("\",\"signature\":\"");
            let sig_at = line.len();
            rng.hex(&mut line, 64);
            let signature = Some(line[sig_at..].to_string());
            line.push_str("\"}");
            let m = ModelEvent {
                event_id,
                received_at: t,
                key_id: Some(key.id.clone()),
                nonce: nonce.clone(),
                client_ts: Some(client_ts),
                client_ip,
                signature,
            };
            if let Some(n) = nonce {
                // sample so that the replay targets spread over the whole skew window
                if !replay && rng.chance(sample) {
                    recent.push_back((t, key_idx, n, client_ts, m.client_ip.clone()));
                }
            }
            model_ev = Some(m);
        }
        // forget requests older than the skew window for replays, 5 s for duplicates
        while recent
            .front()
            .is_some_and(|r| t - r.0 > rules.max_past_skew_ms)
        {
            recent.pop_front();
        }
        while recent.len() > 50_000 {
            recent.pop_front();
        }
        if model_ev.is_some() {
            recent_lines.push_back((t, line.clone(), model_ev.clone()));
        }
        while recent_lines.front().is_some_and(|r| t - r.0 > 5_000) || recent_lines.len() > 1000 {
            recent_lines.pop_front();
        }
        let delay = if cfg.disorder_ms > 0 {
            rng.range(0, cfg.disorder_ms)
        } else {
            0
        };
        heap.push(Pending {
            arrival: t + delay,
            seq,
            line: line.clone(),
            model: if want_truth { model_ev } else { None },
        });
        seq += 1;
        emitted += 1;
        report.lines += 1;
        flush_until(&mut heap, t, events, &mut model_events)?;
    }
    flush_until(&mut heap, Millis::MAX, events, &mut model_events)?;
    if let Some(w) = truth {
        let expected = model::expected_alerts(rules, &model_events, &records);
        report.expected_alerts = Some(expected.len());
        for e in expected {
            serde_json::to_writer(
                &mut *w,
                &TruthLine {
                    kind: e.kind,
                    key_id: e.key_id,
                    event_id: e.event_id,
                    first_event_id: e.first_event_id,
                },
            )?;
            w.write_all(b"\n")?;
        }
    }
    Ok(report)
}
