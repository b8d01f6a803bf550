//! What users would pick instead of replayguard, detecting the same replays
//! on the same events, for `scripts/bench-compare.sh`:
//!
//! - `naive`: a hand-written in-memory detector, the way it is usually
//!   written first: every line parsed into a `serde_json::Value`, first
//!   sightings in a `HashMap<String, _>` keyed by "key_id\0nonce", event ids
//!   in another, evicted by event time every 10 000 events.
//! - `redis`: first sightings in Redis, one Lua script per event (`SET NX PX`
//!   on the event id for transport duplicates, then the event-time window on
//!   the (key, nonce) entry: Redis expiry runs on the wall clock, so the age
//!   check has to be done on `received_at` in the script). Lines are decoded
//!   with replayguard's own decoder, so the difference is the state.
//!   Unpipelined (one round trip per event) or pipelined (`--pipeline N`).
//!
//! Both apply the rule of replayguard's default config to in-order input:
//! a (key, nonce) sighting with another event id no more than 390 s after
//! the first sighting is a replay; a reuse never extends the window; a
//! repeated event id is a transport duplicate, not a replay.
//!
//! - `plain`: not a detector but the floor of one: each line decoded by
//!   serde_json into a borrowed struct of the access event's fields (no
//!   timestamp conversion, nothing kept) and one hash-set insert per line
//!   (the 64-bit hash of its key and nonce). `scan` on one core is measured
//!   against it (`scripts/bench-scan-cores.sh`).
//!
//! ```text
//! baselines plain EVENTS
//! baselines naive EVENTS IDS_OUT
//! baselines redis EVENTS IDS_OUT --port P [--pipeline N] [--server-pid PID]
//! baselines replays ALERTS_JSONL IDS_OUT     # replay event ids of a scan
//! ```
//!
//! Each mode writes the sorted event ids it flagged as replays to IDS_OUT
//! and one JSON line of measurements to stdout. Not a criterion benchmark:
//! `cargo bench` alone runs nothing here.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::time::Instant;

use replayguard::decode::Decoder;

const RETENTION_MS: i64 = 390_000;
const LATENESS_MS: i64 = 60_000;
const EVICT_EVERY: u64 = 10_000;

fn arg(name: &str) -> Option<String> {
    let a: Vec<String> = std::env::args().collect();
    a.iter()
        .position(|x| x == name)
        .and_then(|i| a.get(i + 1).cloned())
}

/// Peak resident set of a process, in KiB (VmHWM).
fn peak_rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn write_ids(path: &str, mut ids: Vec<String>) {
    ids.sort();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("ids file"));
    for id in ids {
        writeln!(f, "{id}").unwrap();
    }
}

fn open(path: &str) -> BufReader<std::fs::File> {
    BufReader::with_capacity(1 << 20, std::fs::File::open(path).expect("events file"))
}

/// Milliseconds of a timestamp field: epoch ms or RFC 3339.
fn millis(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => replayguard::schema::timestamp::parse_rfc3339(s).ok(),
        _ => None,
    }
}

fn naive(events: &str, ids_out: &str) {
    struct First {
        at: i64,
        event_id: String,
        client_ip: String,
    }
    let mut firsts: HashMap<String, First> = HashMap::new();
    let mut seen_ids: HashMap<String, i64> = HashMap::new();
    let mut replays = Vec::new();
    let (mut n, mut duplicates, mut max_t) = (0u64, 0u64, i64::MIN);
    let start = Instant::now();
    for line in open(events).lines() {
        let line = line.unwrap();
        n += 1;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let (Some(event_id), Some(key_id), Some(t)) = (
            v["event_id"].as_str(),
            v["key_id"].as_str(),
            millis(&v["received_at"]),
        ) else {
            continue;
        };
        max_t = max_t.max(t);
        if seen_ids.insert(event_id.to_string(), t).is_some() {
            duplicates += 1;
            continue;
        }
        if let Some(nonce) = v["nonce"].as_str() {
            let k = format!("{key_id}\0{nonce}");
            match firsts.get(&k) {
                Some(f) if t - f.at <= RETENTION_MS => {
                    // evidence, as replayguard gives it
                    let _evidence = (&f.event_id, t - f.at, f.client_ip == v["client_ip"]);
                    replays.push(event_id.to_string());
                }
                _ => {
                    firsts.insert(
                        k,
                        First {
                            at: t,
                            event_id: event_id.to_string(),
                            client_ip: v["client_ip"].as_str().unwrap_or("").to_string(),
                        },
                    );
                }
            }
        }
        if n % EVICT_EVERY == 0 {
            let watermark = max_t - LATENESS_MS;
            firsts.retain(|_, f| f.at + RETENTION_MS >= watermark);
            seen_ids.retain(|_, at| *at + RETENTION_MS >= watermark);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let watermark = max_t - LATENESS_MS;
    firsts.retain(|_, f| f.at + RETENTION_MS >= watermark);
    let live = firsts.len();
    let rss = peak_rss_kib("self");
    println!(
        "{}",
        serde_json::json!({
            "mode": "naive", "events": n, "seconds": secs, "events_per_s": n as f64 / secs,
            "replays": replays.len(), "duplicates": duplicates, "live_nonces": live,
            "peak_rss_kib": rss,
        })
    );
    write_ids(ids_out, replays);
}

/// An access event v1 line as serde_json reads it when nothing is converted:
/// strings borrowed from the line (owned only when escaped), timestamps left
/// as their JSON text.
#[derive(serde::Deserialize)]
#[allow(dead_code)] // read, never used: the point is the decode
struct Plain<'a> {
    #[serde(borrow)]
    event_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    received_at: &'a serde_json::value::RawValue,
    #[serde(borrow, default)]
    key_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    nonce: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    client_ts: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow)]
    client_ip: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    method: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    path: std::borrow::Cow<'a, str>,
    status: u16,
    #[serde(borrow, default)]
    user_agent: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    client_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    signature: Option<std::borrow::Cow<'a, str>>,
}

/// The plain serde_json floor: decode every line into [`Plain`], insert one
/// hash per line.
fn plain(events: &str) {
    let mut seen: hashbrown::HashSet<u64> = hashbrown::HashSet::new();
    let (mut n, mut bad) = (0u64, 0u64);
    let start = Instant::now();
    let mut buf = Vec::with_capacity(1024);
    let mut reader = open(events);
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).unwrap() == 0 {
            break;
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        n += 1;
        match serde_json::from_slice::<Plain<'_>>(line) {
            Ok(ev) => {
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                h.update(ev.key_id.as_deref().unwrap_or("").as_bytes());
                h.update(ev.nonce.as_deref().unwrap_or(&ev.event_id).as_bytes());
                seen.insert(h.digest());
            }
            Err(_) => bad += 1,
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "mode": "plain", "events": n, "seconds": secs, "events_per_s": n as f64 / secs,
            "undecoded": bad, "distinct": seen.len(), "peak_rss_kib": peak_rss_kib("self"),
        })
    );
}

/// KEYS[1] = "e:<event_id>", KEYS[2] = "n:<key_id>\0<nonce>" (or "" without
/// a nonce); ARGV = received_at, retention, ttl, "event_id client_ip".
/// Returns 2 for a transport duplicate, 1 for a replay, 0 otherwise.
const SCRIPT: &str = r#"
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[3]) then return 2 end
if KEYS[2] == '' then return 0 end
local t = tonumber(ARGV[1])
local v = redis.call('GET', KEYS[2])
if v then
  local t0 = tonumber(string.match(v, '^%-?%d+'))
  if t - t0 <= tonumber(ARGV[2]) then return 1 end
end
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. ARGV[4], 'PX', ARGV[3])
return 0
"#;

fn redis_mode(events: &str, ids_out: &str) {
    let port = arg("--port").expect("--port");
    let pipeline: usize = arg("--pipeline").map_or(1, |p| p.parse().expect("--pipeline N"));
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("redis url");
    let mut con = client.get_connection().expect("connecting to redis-server");
    redis::cmd("FLUSHALL").exec(&mut con).unwrap();
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(SCRIPT)
        .query(&mut con)
        .expect("SCRIPT LOAD");
    // wall-clock expiry long enough for any run: the window is event time
    let ttl = (RETENTION_MS + LATENESS_MS).to_string();
    let decoder = Decoder::default();
    let mut replays = Vec::new();
    let (mut n, mut duplicates) = (0u64, 0u64);
    let mut pending: Vec<String> = Vec::with_capacity(pipeline);
    let mut pipe = redis::pipe();
    let flush = |pipe: &mut redis::Pipeline,
                 pending: &mut Vec<String>,
                 con: &mut redis::Connection,
                 replays: &mut Vec<String>,
                 duplicates: &mut u64| {
        if pending.is_empty() {
            return;
        }
        let rs: Vec<i64> = pipe.query(con).expect("EVALSHA");
        for (r, id) in rs.into_iter().zip(pending.drain(..)) {
            match r {
                1 => replays.push(id),
                2 => *duplicates += 1,
                _ => {}
            }
        }
        pipe.clear();
    };
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut reader = open(events);
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).unwrap() == 0 {
            break;
        }
        n += 1;
        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let Ok(ev) = decoder.access(line) else {
            continue;
        };
        let nkey = match (&ev.key_id, &ev.nonce) {
            (Some(key), Some(nonce)) => format!("n:{key}\0{nonce}"),
            _ => String::new(),
        };
        pipe.cmd("EVALSHA")
            .arg(&sha)
            .arg(2)
            .arg(format!("e:{}", ev.event_id))
            .arg(nkey)
            .arg(ev.received_at)
            .arg(RETENTION_MS)
            .arg(&ttl)
            .arg(format!("{} {}", ev.event_id, ev.client_ip));
        pending.push(ev.event_id.to_string());
        if pending.len() >= pipeline {
            flush(
                &mut pipe,
                &mut pending,
                &mut con,
                &mut replays,
                &mut duplicates,
            );
        }
    }
    let last = &mut pending;
    flush(&mut pipe, last, &mut con, &mut replays, &mut duplicates);
    let secs = start.elapsed().as_secs_f64();
    let info: String = redis::cmd("INFO").arg("memory").query(&mut con).unwrap();
    let used_memory: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let keys: u64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    let server_rss = arg("--server-pid").map_or(0, |p| peak_rss_kib(&p));
    println!(
        "{}",
        serde_json::json!({
            "mode": if pipeline > 1 { format!("redis-pipelined-{pipeline}") } else { "redis".into() },
            "events": n, "seconds": secs, "events_per_s": n as f64 / secs,
            "replays": replays.len(), "duplicates": duplicates,
            "peak_rss_kib": peak_rss_kib("self") + server_rss,
            "server_peak_rss_kib": server_rss, "used_memory": used_memory, "keys": keys,
        })
    );
    write_ids(ids_out, replays);
}

/// The event ids of the `replay` alerts of a scan.
fn replays_of(alerts: &str, ids_out: &str) {
    let mut ids = Vec::new();
    for line in open(alerts).lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).expect("alert JSON");
        if v["kind"] == "replay" {
            ids.push(v["event_id"].as_str().expect("event_id").to_string());
        }
    }
    println!(
        "{}",
        serde_json::json!({ "mode": "replays", "replays": ids.len() })
    );
    write_ids(ids_out, ids);
}

fn main() {
    let a: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match a.first().map(String::as_str) {
        Some("plain") => plain(&a[1]),
        Some("naive") => naive(&a[1], &a[2]),
        Some("redis") => redis_mode(&a[1], &a[2]),
        Some("replays") => replays_of(&a[1], &a[2]),
        _ => eprintln!(
            "baselines: nothing to do under plain `cargo bench`; scripts/bench-compare.sh runs it"
        ),
    }
}
