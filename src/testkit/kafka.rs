//! A real Kafka-protocol broker (Tansu) per test, and helpers to produce,
//! consume and run the detector against it. A missing broker binary fails
//! with instructions; it never skips.

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

/// Where the Tansu binary is: $TANSU_BIN, or where scripts/broker.sh installs it.
pub fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TANSU_BIN") {
        return PathBuf::from(p);
    }
    let candidates = [
        PathBuf::from("/var/cache/replayguard/tools/tansu"),
        PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/replayguard/tools/tansu"),
    ];
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "the Kafka-protocol broker (Tansu) is not installed: run `scripts/broker.sh install` \
         (scripts/test.sh does) or set TANSU_BIN"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An S3 emulator (moto) for broker storage that survives a broker restart.
pub struct S3 {
    child: Child,
    pub port: u16,
}

impl S3 {
    pub fn start(dir: &Dir) -> S3 {
        let bin = std::env::var("MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::fs::File::create(dir.path("moto.log")).unwrap())
            .stderr(std::fs::File::create(dir.path("moto.err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "starting the S3 emulator ({bin}): {e}; install it with \
                     `pip install 'moto[server]'` (scripts/test.sh does)"
                )
            });
        let s3 = S3 { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let _ = write!(
                    s,
                    "PUT /tansu HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200") {
                    return s3;
                }
            }
            assert!(Instant::now() < deadline, "the S3 emulator did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Tansu broker, killed when dropped: in-memory storage, or S3 storage
/// (on the emulator) that survives [`Broker::restart`].
pub struct Broker {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
    s3_port: Option<u16>,
}

impl Broker {
    pub fn start(dir: &Dir) -> Broker {
        Self::start_with(dir, None)
    }

    /// A broker keeping its data in S3 (the emulator), so it survives a restart.
    pub fn start_s3(dir: &Dir, s3: &S3) -> Broker {
        Self::start_with(dir, Some(s3.port))
    }

    fn spawn(port: u16, log: &Path, s3_port: Option<u16>) -> Child {
        let bin = tansu_bin();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut c = Command::new(&bin);
        c.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ]);
        match s3_port {
            None => {
                c.args(["--storage-engine", "memory://tansu/"]);
            }
            Some(p) => {
                c.args(["--storage-engine", "s3://tansu/"])
                    .env("AWS_ACCESS_KEY_ID", "test")
                    .env("AWS_SECRET_ACCESS_KEY", "test")
                    .env("AWS_DEFAULT_REGION", "us-east-1")
                    .env("AWS_ENDPOINT", format!("http://127.0.0.1:{p}"))
                    .env("AWS_ALLOW_HTTP", "true");
            }
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        c.stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
    }

    fn wait_up(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return false; // exits 0 when the port is taken
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn start_with(dir: &Dir, s3_port: Option<u16>) -> Broker {
        for _ in 0..5 {
            let port = free_port();
            let log = dir.path(&format!("tansu-{port}.log"));
            let child = Self::spawn(port, &log, s3_port);
            let mut b = Broker {
                child,
                port,
                log,
                s3_port,
            };
            if b.wait_up() {
                return b;
            }
            let _ = b.child.kill();
        }
        panic!("Tansu did not start");
    }

    /// Kills the broker and starts it again on the same port after `down_for`.
    pub fn restart(&mut self, down_for: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down_for);
        self.child = Self::spawn(self.port, &self.log, self.s3_port);
        assert!(
            self.wait_up(),
            "the broker did not come back on port {}",
            self.port
        );
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let out = Command::new(tansu_bin())
            .args([
                "topic",
                "create",
                "--broker",
                &format!("tcp://{}", self.addr()),
            ])
            .args(["--partitions", &partitions.to_string(), name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "creating {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Reads `topic` from the beginning until `want` messages arrived and
/// nothing more came for `quiet`, or until `timeout`.
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
    let quiet = Duration::from_millis(700);
    let mut last = Instant::now();
    while Instant::now() < deadline {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
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
                if out.len() >= want && last.elapsed() >= quiet {
                    break;
                }
            }
        }
    }
    out
}

/// The group's committed offsets for `topic` partitions 0..n.
pub fn committed(addr: &str, group: &str, topic: &str, n: i32) -> BTreeMap<i32, i64> {
    let c = group_consumer(addr, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..n {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
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

/// The config of a detector in tests: fast group membership, fast commits.
pub fn detector_config(
    dir: &Dir,
    name: &str,
    broker: &Broker,
    group: &str,
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
commit_interval = "20ms"
lifecycle_quiet = "300ms"
log_interval = "2s"
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

    /// SIGTERM, then waits for a graceful exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
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
