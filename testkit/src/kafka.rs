//! Apache Kafka per test (started by `scripts/kafka.sh`, the same script
//! users and CI run), and helpers to produce, consume and run the detector
//! against it. A broker that cannot start fails the test with the script's
//! output; it never skips.
//!
//! One broker per test, not per suite: a test may restart its broker or fill
//! its disk, topic names and groups need no prefixes, and a failed test leaves
//! nothing behind for the next (BENCHMARKS.md has the suite time).

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::Dir;

/// `scripts/kafka.sh` of this checkout.
pub fn kafka_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh")
}

/// CPU seconds (user + system) of a process, from /proc/PID/stat.
pub fn cpu_secs(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // fields after the command name (which may hold spaces) in parentheses
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0 // USER_HZ
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An Apache Kafka broker (single-node KRaft), stopped when dropped. Its log
/// dir is in the test's directory, so a [`Broker::restart`] keeps the data.
pub struct Broker {
    pub port: u16,
    controller_port: u16,
    pub dir: PathBuf,
    running: bool,
}

impl Broker {
    pub fn start(dir: &Dir) -> Broker {
        let mut errors = Vec::new();
        for attempt in 0..3 {
            // two distinct free ports (a port freed for one may be handed out again)
            let port = free_port();
            let controller_port = std::iter::repeat_with(free_port)
                .find(|p| *p != port)
                .expect("a free port");
            let mut b = Broker {
                port,
                controller_port,
                dir: dir.path(&format!("kafka-{attempt}")),
                running: false,
            };
            match b.script("start") {
                Ok(_) => {
                    b.running = true;
                    return b;
                }
                // another process may have taken a port between the check and the start
                Err(e) => errors.push(e),
            }
        }
        panic!(
            "Apache Kafka did not start (3 attempts):\n{}",
            errors.join("\n---\n")
        );
    }

    fn script(&self, cmd: &str) -> Result<String, String> {
        let out = Command::new(kafka_script())
            .arg(cmd)
            .env("KAFKA_PORT", self.port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("KAFKA_DIR", &self.dir)
            .env("KAFKA_HEAP", "512m")
            .env("KAFKA_WATCH_PID", std::process::id().to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", kafka_script().display()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!(
                "`scripts/kafka.sh {cmd}` failed ({}): {text}\n(install the broker with \
                 `scripts/kafka.sh install`, which scripts/test.sh runs)",
                out.status
            ))
        }
    }

    /// Stops the broker (SIGTERM: a controlled shutdown) and starts it again
    /// on the same ports and log dir after `down_for`.
    pub fn restart(&mut self, down_for: Duration) {
        self.script("stop").unwrap_or_else(|e| panic!("{e}"));
        self.running = false;
        std::thread::sleep(down_for);
        self.script("start").unwrap_or_else(|e| panic!("{e}"));
        self.running = true;
    }

    fn kill(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_file(self.dir.join("broker.pid"));
        }
        self.running = false;
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.create_topic_with(name, partitions, &[]);
    }

    /// Creates a topic with topic configs (e.g. `cleanup.policy=compact`)
    /// and waits until every partition has a leader.
    pub fn create_topic_with(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.addr())
            .create()
            .unwrap();
        let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (k, v) in configs {
            t = t.set(k, v);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let res = rt
            .block_on(admin.create_topics([&t], &AdminOptions::new()))
            .unwrap();
        for r in res {
            if let Err((t, e)) = r {
                assert_eq!(
                    e,
                    rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                    "creating {t}"
                );
            }
        }
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.addr())
            .create()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = c
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .ok()
                .and_then(|md| {
                    md.topics().iter().find(|t| t.name() == name).map(|t| {
                        t.partitions().len() == partitions as usize
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                })
                .unwrap_or(false);
            if ready {
                return;
            }
            assert!(Instant::now() < deadline, "topic {name} has no leader");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// CPU seconds (user + system) the broker's JVM has used so far.
    pub fn cpu_secs(&self) -> f64 {
        self.pid().map_or(0.0, cpu_secs)
    }

    /// The broker JVM's process id, from the pid file `kafka.sh` writes.
    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("broker.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    /// Bytes the broker's JVM has read from storage so far (`read_bytes` of
    /// /proc/PID/io: page-cache misses, not reads the cache served).
    pub fn disk_read_bytes(&self) -> u64 {
        self.pid()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/io")).ok())
            .and_then(|io| {
                io.lines()
                    .find_map(|l| l.strip_prefix("read_bytes:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The broker's server log (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/server.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.running {
            // the data dir goes with the test: no need for a controlled shutdown
            self.kill();
        }
    }
}

/// Produces records (key, value); returns the next offset of every partition written.
pub fn produce(
    addr: &str,
    topic: &str,
    records: &[(Option<Vec<u8>>, Vec<u8>)],
) -> BTreeMap<i32, i64> {
    produce_with(addr, topic, records, &[])
}

/// [`produce`] with every record's timestamp set to `timestamp_ms`.
pub fn produce_at(
    addr: &str,
    topic: &str,
    records: &[(Option<Vec<u8>>, Vec<u8>)],
    timestamp_ms: i64,
) -> BTreeMap<i32, i64> {
    produce_inner(addr, topic, records, &[], Some(timestamp_ms))
}

/// [`produce`] allowing records of up to 4 MiB.
pub fn produce_large(
    addr: &str,
    topic: &str,
    records: &[(Option<Vec<u8>>, Vec<u8>)],
) -> BTreeMap<i32, i64> {
    produce_with(addr, topic, records, &[("message.max.bytes", "4194304")])
}

/// A consumer of `group` that never commits on its own.
fn group_consumer(addr: &str, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Sets a group's committed offsets (the group must have no members).
pub fn reset_group(addr: &str, group: &str, topic: &str, offsets: &BTreeMap<i32, i64>) {
    let c = group_consumer(addr, group);
    let mut tpl = TopicPartitionList::new();
    for (p, o) in offsets {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
            .unwrap();
    }
    c.commit(&tpl, rdkafka::consumer::CommitMode::Sync).unwrap();
}

fn produce_with(
    addr: &str,
    topic: &str,
    records: &[(Option<Vec<u8>>, Vec<u8>)],
    extra: &[(&str, &str)],
) -> BTreeMap<i32, i64> {
    produce_inner(addr, topic, records, extra, None)
}

fn produce_inner(
    addr: &str,
    topic: &str,
    records: &[(Option<Vec<u8>>, Vec<u8>)],
    extra: &[(&str, &str)],
    timestamp: Option<i64>,
) -> BTreeMap<i32, i64> {
    #[derive(Default)]
    struct Ctx(std::sync::Mutex<BTreeMap<i32, i64>>);
    impl rdkafka::ClientContext for Ctx {}
    impl rdkafka::producer::ProducerContext for Ctx {
        type DeliveryOpaque = ();
        fn delivery(&self, r: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
            let m = r.as_ref().expect("delivered");
            let mut g = self.0.lock().unwrap();
            let e = g.entry(m.partition()).or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
    }
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", addr)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    for (k, v) in extra {
        cfg.set(*k, *v);
    }
    let p: BaseProducer<Ctx> = cfg.create_with_context(Ctx::default()).unwrap();
    for (k, v) in records {
        let mut r = BaseRecord::<[u8], [u8], ()>::to(topic).payload(v);
        if let Some(k) = k {
            r = r.key(k);
        }
        if let Some(t) = timestamp {
            r = r.timestamp(t);
        }
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
    let out = p.context().0.lock().unwrap().clone();
    out
}

/// Lines as records keyed by their key_id (no key for undecodable lines).
pub fn keyed(lines: &[String]) -> Vec<(Option<Vec<u8>>, Vec<u8>)> {
    lines
        .iter()
        .map(|l| {
            let key = serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["key_id"].as_str().map(|s| s.as_bytes().to_vec()));
            (key, l.as_bytes().to_vec())
        })
        .collect()
}

/// A consumed message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// Reads `topic` from the beginning until at least `want` messages arrived
/// and every partition was read to its high watermark, or until `timeout`.
pub fn consume(addr: &str, topic: &str, want: usize, timeout: Duration) -> Vec<Msg> {
    let c = group_consumer(addr, "replayguard-test-reader");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let n = md
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    let mut tpl = TopicPartitionList::new();
    for p in 0..n as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut next: HashMap<i32, i64> = HashMap::new();
    let caught_up = |next: &HashMap<i32, i64>| {
        (0..n as i32).all(|p| {
            let (lo, hi) = c
                .fetch_watermarks(topic, p, Duration::from_secs(5))
                .unwrap_or((0, i64::MAX));
            hi <= lo || next.get(&p).is_some_and(|o| *o >= hi)
        })
    };
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                next.insert(m.partition(), m.offset() + 1);
                let mut headers = HashMap::new();
                if let Some(h) = m.headers() {
                    for i in 0..h.count() {
                        let hd = h.get(i);
                        headers.insert(
                            hd.key.to_string(),
                            String::from_utf8_lossy(hd.value.unwrap_or(&[])).into_owned(),
                        );
                    }
                }
                out.push(Msg {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| k.to_vec()),
                    value: m.payload().unwrap_or(&[]).to_vec(),
                    headers,
                });
            }
            Some(Err(e)) => eprintln!("consume {topic}: {e}"),
            None => {
                if out.len() >= want && caught_up(&next) {
                    break;
                }
            }
        }
    }
    out
}

/// The group's committed offsets for `topic` partitions 0..n (none while
/// the coordinator cannot answer, e.g. during a rebalance: callers wait).
pub fn committed(addr: &str, group: &str, topic: &str, n: i32) -> BTreeMap<i32, i64> {
    let c = group_consumer(addr, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition(topic, p);
    }
    let Ok(got) = c.committed_offsets(tpl, Duration::from_secs(10)) else {
        return BTreeMap::new();
    };
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// A `replayguard run` process.
pub struct Detector {
    child: Option<Child>,
    pub log: PathBuf,
    pub http: u16,
}

/// The config of a detector in tests: fast group membership, fast commits,
/// and `kafka.start = "earliest"` (the tests produce before they start it).
pub fn detector_config(
    dir: &Dir,
    name: &str,
    broker: &Broker,
    group: &str,
    extra: &str,
) -> PathBuf {
    detector_config_start(dir, name, broker, group, "earliest", extra)
}

/// [`detector_config`] with a given `kafka.start`.
pub fn detector_config_start(
    dir: &Dir,
    name: &str,
    broker: &Broker,
    group: &str,
    start: &str,
    extra: &str,
) -> PathBuf {
    let state = dir.path(&format!("state-{name}"));
    let text = format!(
        r#"
[kafka]
brokers = "{addr}"
group = "{group}"
input_topics = ["access-events"]
lifecycle_topic = "key-lifecycle"
log_interval = "2s"
start = "{start}"
[kafka.consumer_properties]
"session.timeout.ms" = "2000"
"heartbeat.interval.ms" = "500"
[state]
dir = "{state}"
sync = false
{extra}
"#,
        addr = broker.addr(),
        state = state.display()
    );
    dir.write(&format!("{name}.toml"), &text)
}

impl Detector {
    pub fn start(dir: &Dir, name: &str, config: &Path) -> Detector {
        let http = free_port();
        let log = dir.path(&format!("{name}.log"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(super::replayguard_bin())
            .env_remove("RUST_LOG")
            .args([
                "run",
                "--config",
                config.to_str().unwrap(),
                "--http",
                &format!("127.0.0.1:{http}"),
            ])
            .env(
                "RUST_LOG",
                std::env::var("REPLAYGUARD_TEST_LOG")
                    .unwrap_or_else(|_| "info,librdkafka=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        Detector {
            child: Some(child),
            log,
            http,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET a path of the detector's HTTP server.
    pub fn get(&self, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(
            out.split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default(),
        )
    }

    /// Partitions assigned, from /v1/status.
    pub fn assigned(&self) -> Vec<String> {
        self.get("/v1/status")
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v["assigned"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// Resident memory of the process (KiB), from /proc.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().map_or(0, |c| c.id());
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0)
    }

    /// CPU seconds (user + system) the process has used so far.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(self.child.as_ref().map_or(0, |c| c.id()))
    }

    /// SIGTERM, then waits for a graceful exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "detector did not stop within 60 s; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9.
    pub fn kill(mut self) {
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Detector {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits for `cond`, failing with `what` (and the detector logs) after `timeout`.
/// Reads the alert topic until it holds at least `want` records (or fails
/// after `timeout` with the detectors' logs); returns what it read.
pub fn wait_for_alerts(
    addr: &str,
    what: &str,
    want: usize,
    timeout: Duration,
    detectors: &[&Detector],
) -> Vec<Msg> {
    let mut got = Vec::new();
    wait_for(what, timeout, detectors, || {
        got = consume(addr, "replayguard-alerts", want, Duration::from_secs(3));
        got.len() >= want
    });
    got
}

pub fn wait_for(
    what: &str,
    timeout: Duration,
    detectors: &[&Detector],
    mut cond: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs: Vec<String> = detectors.iter().map(|d| d.log_text()).collect();
    panic!(
        "timed out waiting for {what}; detector logs:\n{}",
        logs.join("\n-----\n")
    );
}
