//! The configuration tree (TOML). Every field has a documented default, unknown
//! fields are refused, and [`Config::validate`] rejects contradictions with a
//! message that says why.
//!
//! Durations are strings like `"300s"`, `"5m"`, `"250ms"` or integers of
//! milliseconds; sizes are strings like `"64MiB"` or integers of bytes.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::decode::Decoder;
use crate::detect::DetectConfig;
use crate::state::RocksOptions;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A span of time in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurationMs(pub i64);

impl DurationMs {
    pub const fn secs(s: i64) -> Self {
        DurationMs(s * 1000)
    }
    pub fn as_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.max(0) as u64)
    }
}

impl fmt::Display for DurationMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 % 1000 == 0 {
            write!(f, "{}s", self.0 / 1000)
        } else {
            write!(f, "{}ms", self.0)
        }
    }
}

impl Serialize for DurationMs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = DurationMs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a duration like \"300s\", \"5m\", \"250ms\" or an integer of milliseconds",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationMs, E> {
                if v < 0 {
                    return Err(E::custom("a duration must not be negative"));
                }
                Ok(DurationMs(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationMs, E> {
                i64::try_from(v)
                    .map(DurationMs)
                    .map_err(|_| E::custom("duration too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationMs, E> {
                let d = humantime::parse_duration(v.trim())
                    .map_err(|e| E::custom(format!("bad duration {v:?}: {e}")))?;
                if d.as_nanos() % 1_000_000 != 0 {
                    return Err(E::custom(format!(
                        "bad duration {v:?}: the resolution is one millisecond"
                    )));
                }
                i64::try_from(d.as_millis())
                    .map(DurationMs)
                    .map_err(|_| E::custom("duration too large"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", b >> 30)
        } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses `"64MiB"`, `"1GiB"`, `"512KiB"`, `"10MB"`, `"4096"`.
pub fn parse_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {v:?}"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(format!(
                "bad size {v:?}: unknown unit {u:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {v:?} too large"))
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like \"64MiB\" or an integer of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size must not be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// `[detect]`: the rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectSection {
    /// `stale_timestamp` when received_at − client_ts exceeds this. Default 300s.
    pub max_past_skew: DurationMs,
    /// `future_timestamp` when client_ts − received_at exceeds this. Default 30s.
    pub max_future_skew: DurationMs,
    /// How far behind the largest received_at seen an event may arrive and
    /// still be judged exactly as in order. Default 60s.
    pub allowed_lateness: DurationMs,
    /// How long a first sighting stays a replay target. Default (and minimum):
    /// max_past_skew + max_future_skew + allowed_lateness.
    pub retention: Option<DurationMs>,
}

impl Default for DetectSection {
    fn default() -> Self {
        DetectSection {
            max_past_skew: DurationMs::secs(300),
            max_future_skew: DurationMs::secs(30),
            allowed_lateness: DurationMs::secs(60),
            retention: None,
        }
    }
}

impl DetectSection {
    pub fn rules(&self) -> DetectConfig {
        let mut c = DetectConfig {
            max_past_skew_ms: self.max_past_skew.0,
            max_future_skew_ms: self.max_future_skew.0,
            allowed_lateness_ms: self.allowed_lateness.0,
            retention_ms: 0,
        };
        c.retention_ms = self.retention.map_or(c.min_retention_ms(), |r| r.0);
        c
    }
}

/// `[usage]`: the per-key usage rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageSection {
    /// `rate_anomaly` when a key's per-minute count is this many standard
    /// deviations from its EWMA baseline. Default 4.0.
    pub rate_z: f64,
    /// ...and the count (spike) or the baseline (drop) is at least this. Default 30.
    pub rate_min_volume: u32,
    /// Minutes of a key's history before its baseline is trusted. Default 30.
    pub rate_warmup_minutes: u32,
    /// Weight of the newest minute in the baseline (0 < a <= 1). Default 0.1.
    pub ewma_alpha: f64,
    /// `auth_failure_burst` at this many 401/403 for a key... Default 20.
    pub auth_fail_threshold: u32,
    /// ...within this window. Default 60s.
    pub auth_fail_window: DurationMs,
    /// `new_client` only when a key had no new client for this long... Default 24h.
    pub new_client_settle: DurationMs,
    /// ...and has served at least this many requests. Default 100.
    pub new_client_min_requests: u64,
    /// Clients remembered per key (more: no `new_client` for that key). Default 1024.
    pub max_clients_per_key: usize,
    /// Straggling clients listed per key in reports. Default 10.
    pub top_clients: usize,
}

impl Default for UsageSection {
    fn default() -> Self {
        let d = crate::detect::UsageConfig::default();
        UsageSection {
            rate_z: d.rate_z,
            rate_min_volume: d.rate_min_volume,
            rate_warmup_minutes: d.rate_warmup_minutes,
            ewma_alpha: d.ewma_alpha,
            auth_fail_threshold: d.auth_fail_threshold,
            auth_fail_window: DurationMs(d.auth_fail_window_ms),
            new_client_settle: DurationMs(d.new_client_settle_ms),
            new_client_min_requests: d.new_client_min_requests,
            max_clients_per_key: d.max_clients,
            top_clients: d.top_clients,
        }
    }
}

impl UsageSection {
    pub fn rules(&self) -> crate::detect::UsageConfig {
        crate::detect::UsageConfig {
            rate_z: self.rate_z,
            rate_min_volume: self.rate_min_volume,
            rate_warmup_minutes: self.rate_warmup_minutes,
            ewma_alpha: self.ewma_alpha,
            auth_fail_threshold: self.auth_fail_threshold,
            auth_fail_window_ms: self.auth_fail_window.0,
            new_client_settle_ms: self.new_client_settle.0,
            new_client_min_requests: self.new_client_min_requests,
            max_clients: self.max_clients_per_key,
            top_clients: self.top_clients,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !(self.rate_z.is_finite() && self.rate_z > 0.0) {
            return bad("usage.rate_z must be a positive number");
        }
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0) {
            return bad("usage.ewma_alpha must be in (0, 1]");
        }
        if self.auth_fail_threshold == 0 || self.auth_fail_window.0 == 0 {
            return bad("usage.auth_fail_threshold and usage.auth_fail_window must be positive");
        }
        if self.top_clients == 0 || self.top_clients > 1000 {
            return bad("usage.top_clients must be between 1 and 1000");
        }
        Ok(())
    }
}

/// `[report]`: rotation-readiness reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportSection {
    /// A key is READY once its old key has not been used for this long. Default 1h.
    pub quiet_period: DurationMs,
    /// `run` produces every rotation report to `topic` this often. Default 60s.
    pub interval: DurationMs,
    /// Reports topic (key = key_id); "" disables it. Default "replayguard-reports".
    pub topic: String,
}

impl Default for ReportSection {
    fn default() -> Self {
        ReportSection {
            quiet_period: DurationMs::secs(3600),
            interval: DurationMs::secs(60),
            topic: "replayguard-reports".into(),
        }
    }
}

impl ReportSection {
    pub fn rules(&self, top_clients: usize) -> crate::report::ReportConfig {
        crate::report::ReportConfig {
            quiet_period_ms: self.quiet_period.0,
            top_clients,
        }
    }
}

/// `[decode]`: input limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeSection {
    /// Records longer than this are dead-lettered unread. Default 64KiB.
    pub max_event_bytes: ByteSize,
}

impl Default for DecodeSection {
    fn default() -> Self {
        DecodeSection {
            max_event_bytes: ByteSize(64 << 10),
        }
    }
}

/// `[state]`: where and how state is kept, and its memory bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateSection {
    /// State directory. Default: none (`scan` then uses a temporary one).
    pub dir: Option<PathBuf>,
    /// RocksDB block cache. Default 64MiB.
    pub block_cache: ByteSize,
    /// All RocksDB memtables together. Default 64MiB.
    pub write_buffer: ByteSize,
    /// Recent sighting segments kept in memory for replay evidence. Default 64MiB.
    pub segment_cache: ByteSize,
    /// Upper bound of the live index in memory (about 17 bytes per slot,
    /// one slot per live request). Past it the detector stops with an error
    /// rather than grow without bound. Default 1GiB (about 30 M live requests).
    pub max_index: ByteSize,
    /// fsync the write-ahead log at every commit. Default false: a commit
    /// survives a crash of the process either way (the OS holds the write);
    /// after a power loss RocksDB recovers a consistent prefix, and `run`
    /// then finds its state behind the group's committed offset and rebuilds
    /// the partition (`scan` can be run again). Set true to fsync anyway.
    pub sync: bool,
}

impl Default for StateSection {
    fn default() -> Self {
        StateSection {
            dir: None,
            block_cache: ByteSize::mib(64),
            write_buffer: ByteSize::mib(64),
            segment_cache: ByteSize::mib(64),
            max_index: ByteSize::mib(1024),
            sync: false,
        }
    }
}

impl StateSection {
    pub fn rocks(&self) -> RocksOptions {
        RocksOptions {
            block_cache_bytes: self.block_cache.0 as usize,
            write_buffer_bytes: self.write_buffer.0 as usize,
            sync: self.sync,
            read_only: false,
        }
    }
}

/// `[scan]`: the file scanner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanSection {
    /// Events per commit. Default 65536.
    pub batch_events: usize,
}

impl Default for ScanSection {
    fn default() -> Self {
        ScanSection {
            batch_events: 65_536,
        }
    }
}

/// `[kafka]`: `replayguard run`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSection {
    /// bootstrap.servers. Default "127.0.0.1:9092".
    pub brokers: String,
    /// Consumer group of the detectors (group.id). Default "replayguard".
    pub group: String,
    /// Access-event topics. Default ["access-events"].
    pub input_topics: Vec<String>,
    /// Key lifecycle topic (compacted, keyed by key_id), read whole by every
    /// instance. Default "key-lifecycle"; "" disables it.
    pub lifecycle_topic: String,
    /// Where alerts go (key = key_id, headers kind and alert_id). Default "replayguard-alerts".
    pub alert_topic: String,
    /// Where undecodable records go, with headers naming their origin.
    /// Default "replayguard-dead-letters".
    pub dead_letter_topic: String,
    /// Route events through an internal topic keyed by key_id before
    /// detection, for producers that do not key by key_id. Default false.
    pub repartition: bool,
    /// The internal topic of `repartition`. Default "<group>-repartition".
    pub repartition_topic: Option<String>,
    /// Create the alert, dead-letter and repartition topics when missing. Default true.
    pub create_topics: bool,
    /// Partitions of topics replayguard creates. Default 4.
    pub topic_partitions: i32,
    /// Commit (state, offsets, alerts) at least this often. Default 20ms.
    pub commit_interval: DurationMs,
    /// ...or after this many records, whichever comes first. Default 20000.
    pub batch_records: usize,
    /// Interval of the per-partition lag and rate log lines. Default 30s.
    pub log_interval: DurationMs,
    /// At startup, read the lifecycle topic until it has been quiet this long
    /// before consuming events (bounded by 30 s). Default 1s.
    pub lifecycle_quiet: DurationMs,
    /// librdkafka properties for every client (SASL, TLS, timeouts…).
    pub properties: std::collections::BTreeMap<String, String>,
    /// librdkafka properties for the consumers only.
    pub consumer_properties: std::collections::BTreeMap<String, String>,
    /// librdkafka properties for the producers only.
    pub producer_properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            brokers: "127.0.0.1:9092".into(),
            group: "replayguard".into(),
            input_topics: vec!["access-events".into()],
            lifecycle_topic: "key-lifecycle".into(),
            alert_topic: "replayguard-alerts".into(),
            dead_letter_topic: "replayguard-dead-letters".into(),
            repartition: false,
            repartition_topic: None,
            create_topics: true,
            topic_partitions: 4,
            commit_interval: DurationMs(20),
            batch_records: 20_000,
            log_interval: DurationMs::secs(30),
            lifecycle_quiet: DurationMs::secs(1),
            properties: Default::default(),
            consumer_properties: Default::default(),
            producer_properties: Default::default(),
        }
    }
}

impl KafkaSection {
    pub fn repartition_topic(&self) -> String {
        self.repartition_topic
            .clone()
            .unwrap_or_else(|| format!("{}-repartition", self.group))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.brokers.trim().is_empty() {
            return bad("kafka.brokers is empty".into());
        }
        if self.group.trim().is_empty() {
            return bad("kafka.group is empty".into());
        }
        if self.input_topics.is_empty() || self.input_topics.iter().any(|t| t.trim().is_empty()) {
            return bad("kafka.input_topics needs at least one topic name".into());
        }
        if self.alert_topic.is_empty() || self.dead_letter_topic.is_empty() {
            return bad("kafka.alert_topic and kafka.dead_letter_topic must be named".into());
        }
        let outputs = [
            &self.alert_topic,
            &self.dead_letter_topic,
            &self.lifecycle_topic,
        ];
        for t in &self.input_topics {
            if outputs.contains(&t) {
                return bad(format!(
                    "topic {t:?} is both an input topic and an output or lifecycle topic"
                ));
            }
        }
        if self.repartition && self.input_topics.contains(&self.repartition_topic()) {
            return bad("kafka.repartition_topic must not be an input topic".into());
        }
        if self.topic_partitions < 1 {
            return bad("kafka.topic_partitions must be at least 1".into());
        }
        if self.batch_records == 0 || self.commit_interval.0 == 0 {
            return bad("kafka.batch_records and kafka.commit_interval must be positive".into());
        }
        for (k, v) in self
            .properties
            .iter()
            .chain(&self.consumer_properties)
            .chain(&self.producer_properties)
        {
            // the guarantees rest on these; refuse overrides instead of breaking them quietly
            let fixed = [
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.idempotence", "true"),
                ("acks", "all"),
            ];
            if let Some((_, want)) = fixed.iter().find(|(f, _)| f == k) {
                if v != want {
                    return bad(format!(
                        "librdkafka property {k}={v} would break replayguard's delivery guarantees \
                         (it is always {want})"
                    ));
                }
            }
            if k == "group.id" || k == "bootstrap.servers" {
                return bad(format!(
                    "set {k} with kafka.group / kafka.brokers, not as a property"
                ));
            }
        }
        Ok(())
    }
}

/// `[http]`: the HTTP server of `run` (metrics, health, reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Listen address; "" disables the server. Default "127.0.0.1:9898".
    pub listen: String,
    /// Bearer token required by every endpoint except /healthz, /readyz and
    /// /metrics. Default: none (or the REPLAYGUARD_HTTP_TOKEN environment variable).
    pub token: Option<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: "127.0.0.1:9898".into(),
            token: None,
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub detect: DetectSection,
    pub usage: UsageSection,
    pub decode: DecodeSection,
    pub state: StateSection,
    pub scan: ScanSection,
    pub kafka: KafkaSection,
    pub report: ReportSection,
    pub http: HttpSection,
}

impl Config {
    /// Reads, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let c = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            e => e,
        })?;
        Ok(c)
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<text>".into(),
            message: e.to_string(),
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Rejects contradictions.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.detect
            .rules()
            .validate()
            .map_err(ConfigError::Invalid)?;
        self.usage.validate()?;
        if self.decode.max_event_bytes.0 < 64 {
            return Err(ConfigError::Invalid(
                "decode.max_event_bytes must be at least 64 bytes".into(),
            ));
        }
        if self.decode.max_event_bytes.0 > 64 << 20 {
            return Err(ConfigError::Invalid(
                "decode.max_event_bytes must be at most 64MiB".into(),
            ));
        }
        if self.scan.batch_events == 0 {
            return Err(ConfigError::Invalid(
                "scan.batch_events must be at least 1".into(),
            ));
        }
        self.kafka.validate()?;
        if self.report.interval.0 < 1000 {
            return Err(ConfigError::Invalid(
                "report.interval must be at least 1s".into(),
            ));
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::Invalid(format!(
                "http.listen {:?} is not an address like 127.0.0.1:9898",
                self.http.listen
            )));
        }
        if self.state.block_cache.0 < 1 << 20 || self.state.write_buffer.0 < 4 << 20 {
            return Err(ConfigError::Invalid(
                "state.block_cache must be at least 1MiB and state.write_buffer at least 4MiB"
                    .into(),
            ));
        }
        Ok(())
    }

    pub fn decoder(&self) -> Decoder {
        Decoder {
            max_event_bytes: self.decode.max_event_bytes.0 as usize,
        }
    }

    /// The effective configuration as TOML (defaults filled in).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }

    /// [`Config::to_toml`] with secrets replaced by `"<redacted>"`: the HTTP
    /// token and every librdkafka property that holds a password, secret,
    /// token or private key (what `check-config` prints).
    pub fn to_toml_redacted(&self) -> String {
        let mut c = self.clone();
        if c.http.token.is_some() {
            c.http.token = Some(REDACTED.into());
        }
        for props in [
            &mut c.kafka.properties,
            &mut c.kafka.consumer_properties,
            &mut c.kafka.producer_properties,
        ] {
            for (k, v) in props.iter_mut() {
                if is_secret_property(k) {
                    *v = REDACTED.into();
                }
            }
        }
        c.to_toml()
    }
}

const REDACTED: &str = "<redacted>";

/// Whether a librdkafka property holds a secret (sasl.password,
/// ssl.key.password, ssl.key.pem, sasl.oauthbearer.client.secret,
/// sasl.oauthbearer.config, ssl.keystore.password…). Paths to key files
/// (`*.location`) are not secrets.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    if n.ends_with(".location") {
        return false;
    }
    [
        "password",
        "secret",
        "token",
        "sasl.jaas",
        "oauthbearer.config",
        "credential",
    ]
    .iter()
    .any(|w| n.contains(w))
        || (n.contains("key") && n.ends_with(".pem"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_the_printed_config() {
        let c = Config::parse(
            r#"
[kafka.properties]
"security.protocol" = "SASL_SSL"
"sasl.mechanisms" = "SCRAM-SHA-512"
"sasl.username" = "replayguard"
"sasl.password" = "hunter2-sasl"
"ssl.key.location" = "/etc/replayguard/client.key"
"ssl.key.password" = "hunter2-key"
[kafka.producer_properties]
"ssl.key.pem" = "-----BEGIN PRIVATE KEY-----hunter2-pem"
[kafka.consumer_properties]
"sasl.oauthbearer.client.secret" = "hunter2-oauth"
[http]
token = "hunter2-http"
"#,
        )
        .unwrap();
        let out = c.to_toml_redacted();
        assert!(!out.contains("hunter2"), "{out}");
        assert_eq!(out.matches(REDACTED).count(), 5, "{out}");
        for kept in [
            "replayguard",
            "SCRAM-SHA-512",
            "/etc/replayguard/client.key",
        ] {
            assert!(out.contains(kept), "{kept} is not a secret: {out}");
        }
        // the unredacted form is untouched
        assert!(c.to_toml().contains("hunter2-sasl"));
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = Config::parse("").unwrap();
        let r = c.detect.rules();
        assert_eq!(
            (
                r.max_past_skew_ms,
                r.max_future_skew_ms,
                r.allowed_lateness_ms,
                r.retention_ms
            ),
            (300_000, 30_000, 60_000, 390_000)
        );
        assert_eq!(c.decode.max_event_bytes.0, 65_536);
        // the printed form parses back to the same config
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn durations_and_sizes() {
        let c = Config::parse(
            "[detect]\nmax_past_skew = \"2m\"\nmax_future_skew = 1500\nallowed_lateness = \"250ms\"\n\
             [state]\nblock_cache = \"128MiB\"\nwrite_buffer = 8388608\n",
        )
        .unwrap();
        assert_eq!(c.detect.rules().retention_ms, 120_000 + 1_500 + 250);
        assert_eq!(c.state.block_cache.0, 128 << 20);
        assert!(Config::parse("[detect]\nmax_past_skew = \"1.5ns\"").is_err());
        assert!(Config::parse("[detect]\nmax_past_skew = -5").is_err());
        assert!(Config::parse("[state]\nblock_cache = \"12 parsecs\"").is_err());
    }

    #[test]
    fn short_retention_is_refused_with_the_reason() {
        let e = Config::parse("[detect]\nretention = \"389999ms\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("shorter than"), "{e}");
        assert!(e.contains("slip through"), "{e}");
        assert!(Config::parse("[detect]\nretention = \"390s\"").is_ok());
        assert!(Config::parse("[detect]\nretention = \"8d\"").is_err());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = Config::parse("[detect]\nmax_past_skw = \"1s\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_past_skw"), "{e}");
        assert!(Config::parse("[nonsense]\n").is_err());
    }
}

/// Bounded, stable-Rust equivalent of fuzz/fuzz_targets/config_parse.rs:
/// arbitrary and mutated TOML never panics the parser, and whatever it
/// accepts is valid and survives its printed form.
#[cfg(test)]
mod robustness {
    use super::*;
    use proptest::prelude::*;

    const FULL: &str = r#"
[detect]
max_past_skew = "5m"
max_future_skew = "30s"
allowed_lateness = "1m"
retention = "390s"
[decode]
max_event_bytes = "64KiB"
[state]
block_cache = "64MiB"
sync = false
[kafka]
brokers = "127.0.0.1:9092"
group = "g"
input_topics = ["a", "b"]
commit_interval = "20ms"
[kafka.properties]
"security.protocol" = "SASL_SSL"
[report]
interval = "1m"
[http]
listen = "127.0.0.1:9898"
token = "t"
"#;

    fn check(text: &str) {
        if let Ok(c) = Config::parse(text) {
            c.validate().unwrap();
            assert_eq!(Config::parse(&c.to_toml()).unwrap(), c, "{text}");
            Config::parse(&c.to_toml_redacted()).unwrap();
        }
    }

    #[test]
    fn the_seed_config_is_valid() {
        // otherwise every mutation would be refused and the test vacuous
        check(FULL);
        Config::parse(FULL).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            check(&text);
        }

        #[test]
        fn mutated_configs_never_panic(
            at in 0..FULL.len(),
            insert in "[\\[\\]=\"a-z0-9._ \n-]{0,12}",
            cut in 0..20usize,
        ) {
            let mut s = FULL.to_string();
            let at = (0..=at).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
            let end = (at + cut).min(s.len());
            s.replace_range(at..end, &insert);
            check(&s);
        }

        #[test]
        fn any_duration_and_size_text_never_panics(d in "\\PC{0,16}", z in "\\PC{0,16}") {
            check(&format!("[detect]\nmax_past_skew = {d:?}\n[decode]\nmax_event_bytes = {z:?}\n"));
        }
    }
}
