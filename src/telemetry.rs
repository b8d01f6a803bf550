//! Internal events: one type per thing worth telling an operator. Each
//! `emit()` writes the log line and updates the metric, so metric names live
//! here and nowhere else (the pattern of Vector's `internal_events`).
//!
//! Logs never carry raw record contents: dead-letter messages are redacted
//! ([`redact`]) because parser errors can quote field values, and field
//! values can be nonces or signatures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};

use crate::schema::AlertKind;

/// What a metric is, for its `# TYPE` and `# HELP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric replayguard exports: name, kind, unit and help text. Label
/// names: `partition` (an input partition, "topic/N"; in `scan` a key-hash
/// shard of the file scan, "scan#N"), `kind` (alert kind), `reason`
/// (dead-letter reason), `version` (build info), `stage` and `queue`
/// (pipeline stages and queues).
pub const METRICS: &[(&str, MetricKind, Option<Unit>, &str)] = {
    use MetricKind::*;
    &[
        ("replayguard_build_info", Gauge, None, "Always 1; the label `version` is the replayguard version."),
        ("replayguard_events_total", Counter, None, "Access events through the detector, per input partition."),
        ("replayguard_duplicates_total", Counter, None, "Transport duplicates (an event_id already seen in the live window), per input partition."),
        ("replayguard_late_events_total", Counter, None, "Events that arrived behind the watermark, per input partition."),
        ("replayguard_alerts_total", Counter, None, "Alerts raised, per alert kind."),
        ("replayguard_dead_letters_total", Counter, None, "Records sent to the dead-letter place, per reason."),
        ("replayguard_inputs_mostly_dead_letters_total", Counter, None, "Inputs whose first records were mostly dead letters (wrong input format?)."),
        ("replayguard_commits_total", Counter, None, "Commits of state, input positions and outbox to the state store."),
        ("replayguard_commit_seconds", Histogram, Some(Unit::Seconds), "Time of one commit to the state store."),
        ("replayguard_commit_batch_events", Histogram, None, "Records in one commit batch of run (pipeline.batch_events bounds it)."),
        ("replayguard_commit_delay_seconds", Histogram, Some(Unit::Seconds), "In run, from the first record of a batch being polled to its commit written (pipeline.max_commit_delay bounds the wait before the commit begins)."),
        ("replayguard_alert_delivery_seconds", Histogram, Some(Unit::Seconds), "In run, producing a batch of alerts until the broker acknowledged them all (the poll loop goes on meanwhile)."),
        ("replayguard_stage_busy_seconds", Histogram, Some(Unit::Seconds), "Time a pipeline stage spent working between two commits, per `stage` (read: reading files or polling Kafka and cutting chunks; decode: the decode threads together; detect: the detect workers together; commit: staging, writing and delivering). rate() of the _sum is the stage's load in cores: the stage near its thread count bounds throughput."),
        ("replayguard_queue_depth", Gauge, None, "Chunks waiting in a pipeline queue, per `queue` (decode: submitted and not yet routed; detect-N: queued for detect worker N), sampled at each commit."),
        ("replayguard_usage_published_records_total", Counter, None, "Per-key usage records published to the usage topic (at usage checkpoints)."),
        ("replayguard_usage_published_bytes_total", Counter, Some(Unit::Bytes), "Bytes of usage records published to the usage topic."),
        ("replayguard_usage_handover_seconds", Histogram, Some(Unit::Seconds), "Time to take a partition's keys' usage from the usage topic when it is taken over."),
        ("replayguard_usage_table_keys", Gauge, None, "Keys in the usage topic's global table (every key of the group), sampled at each commit."),
        ("replayguard_usage_unreadable_total", Counter, None, "Usage-topic records this build cannot read (another record version): their keys have no usage in the table until republished."),
        ("replayguard_live_entries", Gauge, None, "Requests in the live replay window."),
        ("replayguard_index_bytes", Gauge, Some(Unit::Bytes), "Memory of the live index."),
        ("replayguard_state_segments", Gauge, None, "Sighting segments in the state store."),
        ("replayguard_key_absent_total", Counter, None, "Kafka records without a message key."),
        ("replayguard_key_mismatch_total", Counter, None, "Kafka records whose message key is not their key_id."),
        ("replayguard_rebuilt_records_total", Counter, None, "Records replayed to rebuild a partition's state (no alerts)."),
        ("replayguard_outbox_redelivered_total", Counter, None, "Alerts left in the outbox by a crash and delivered again at start."),
        ("replayguard_restore_seconds", Histogram, Some(Unit::Seconds), "Time to restore a partition's state from the store."),
        ("replayguard_alerts_resent_total", Counter, None, "Alerts produced again because the broker acknowledged them without an offset and they were not on the topic."),
        ("replayguard_reports_total", Counter, None, "Rotation reports published to the reports topic."),
        ("replayguard_lifecycle_updates_total", Counter, None, "Key lifecycle records that changed the lifecycle table."),
        ("replayguard_consumer_lag", Gauge, None, "Consumer lag in records, per input partition (librdkafka statistics)."),
    ]
};

/// The Prometheus exporter as `run` installs it: every `_seconds` metric is
/// a histogram with buckets from 0.5 ms to 10 s (the exporter's default
/// would be a summary, which cannot be aggregated across instances).
pub fn prometheus() -> metrics_exporter_prometheus::PrometheusBuilder {
    use metrics_exporter_prometheus::Matcher;
    const BUCKETS: &[f64] = &[
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    const EVENT_BUCKETS: &[f64] = &[
        1.0, 10.0, 100.0, 1000.0, 5000.0, 10000.0, 20000.0, 50000.0, 100000.0,
    ];
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .expect("the buckets are not empty")
        .set_buckets_for_metric(Matcher::Suffix("_events".into()), EVENT_BUCKETS)
        .expect("the buckets are not empty")
}

/// Registers the help text and unit of every metric and sets
/// `replayguard_build_info`; call once after installing the recorder.
pub fn describe() {
    for &(name, kind, unit, help) in METRICS {
        match (kind, unit) {
            (MetricKind::Counter, Some(u)) => describe_counter!(name, u, help),
            (MetricKind::Counter, None) => describe_counter!(name, help),
            (MetricKind::Gauge, Some(u)) => describe_gauge!(name, u, help),
            (MetricKind::Gauge, None) => describe_gauge!(name, help),
            (MetricKind::Histogram, Some(u)) => describe_histogram!(name, u, help),
            (MetricKind::Histogram, None) => describe_histogram!(name, help),
        }
    }
    gauge!("replayguard_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Alerts produced again (see [`crate::sink::kafka`]).
pub struct AlertsResent {
    pub count: u64,
}

impl AlertsResent {
    pub fn emit(&self) {
        counter!("replayguard_alerts_resent_total").increment(self.count);
    }
}

/// Rotation reports published.
pub struct ReportsPublished {
    pub count: u64,
}

impl ReportsPublished {
    pub fn emit(&self) {
        count("replayguard_reports_total", self.count);
    }
}

/// A lifecycle record changed the lifecycle table.
pub struct LifecycleUpdated;

impl LifecycleUpdated {
    pub fn emit(&self) {
        counter!("replayguard_lifecycle_updates_total").increment(1);
    }
}

/// The consumer lag of one input partition (librdkafka statistics).
pub struct ConsumerLag<'a> {
    pub partition: &'a str,
    pub lag: i64,
}

impl ConsumerLag<'_> {
    pub fn emit(&self) {
        gauge!("replayguard_consumer_lag", "partition" => self.partition.to_string())
            .set(self.lag as f64);
    }
}

/// Removes quoted values from an error message (`` `x` `` and `"x"`), but
/// keeps quoted field names (`` field `x` ``).
pub fn redact(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    // (closing quote, whether to keep the quoted text)
    let mut quote: Option<(char, bool)> = None;
    for c in msg.chars() {
        match quote {
            Some((q, keep)) if c == q => {
                if !keep {
                    out.push('…');
                }
                out.push(c);
                quote = None;
            }
            Some((_, true)) => out.push(c),
            Some((_, false)) => {}
            None if c == '`' || c == '"' => {
                let keep = out.ends_with("field ");
                out.push(c);
                quote = Some((c, keep));
            }
            None => out.push(c),
        }
    }
    if quote.is_some() {
        out.push('…');
    }
    out
}

/// Lets the first few log lines of a kind through, then one per interval
/// with the number held back, so a flood of bad input cannot flood the log.
pub struct RateLimit {
    burst: u64,
    interval: Duration,
    seen: AtomicU64,
    held: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl RateLimit {
    pub const fn new(burst: u64, interval: Duration) -> Self {
        RateLimit {
            burst,
            interval,
            seen: AtomicU64::new(0),
            held: AtomicU64::new(0),
            last: Mutex::new(None),
        }
    }

    /// `Some(held back since the last line)` when this one may be logged.
    pub fn allow(&self) -> Option<u64> {
        if self.seen.fetch_add(1, Ordering::Relaxed) < self.burst {
            return Some(0);
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|l| l.elapsed() >= self.interval) {
            *last = Some(Instant::now());
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

static DEAD_LETTER_LOG: RateLimit = RateLimit::new(10, Duration::from_secs(10));

/// A batch of events of one shard went through the detector (what changed
/// in its counters since the last commit).
pub struct BatchProcessed<'a> {
    pub shard: &'a str,
    pub stats: &'a crate::detect::ShardStats,
}

impl BatchProcessed<'_> {
    pub fn emit(&self) {
        let s = self.stats;
        // the one label name for an input partition (see METRICS)
        counter!("replayguard_events_total", "partition" => self.shard.to_string())
            .increment(s.events);
        counter!("replayguard_duplicates_total", "partition" => self.shard.to_string())
            .increment(s.duplicates);
        counter!("replayguard_late_events_total", "partition" => self.shard.to_string())
            .increment(s.late);
        for k in AlertKind::ALL {
            let n = s.alerts[k.index()];
            if n > 0 {
                counter!("replayguard_alerts_total", "kind" => k.as_str()).increment(n);
            }
        }
    }
}

/// A record could not be decoded and went to the dead-letter place.
pub struct DeadLettered<'a> {
    pub source: &'a str,
    pub offset: u64,
    pub error_kind: &'static str,
    pub error: &'a str,
}

impl DeadLettered<'_> {
    pub fn emit(&self) {
        if let Some(held) = DEAD_LETTER_LOG.allow() {
            tracing::warn!(
                source = self.source,
                offset = self.offset,
                kind = self.error_kind,
                error = %redact(self.error),
                not_logged_since_last = held,
                "malformed record sent to the dead-letter place"
            );
        }
        counter!("replayguard_dead_letters_total", "reason" => self.error_kind).increment(1);
    }
}

/// More than half of an input's first records were dead letters: most
/// likely the input is in another format than the one configured.
pub struct MostlyDeadLetters<'a> {
    pub input: &'a str,
    pub seen: u32,
    pub dead: u32,
    pub format: &'a str,
}

impl MostlyDeadLetters<'_> {
    pub fn emit(&self) {
        tracing::warn!(
            input = self.input,
            dead_letters = self.dead,
            of_first = self.seen,
            input_format = self.format,
            "{} of the first {} records of {} are dead letters: is the input in format {}? \
             (see --input-format: v1, kong, envoy, nginx, aws-apigw, traefik, mapped)",
            self.dead,
            self.seen,
            self.input,
            self.format
        );
        counter!("replayguard_inputs_mostly_dead_letters_total").increment(1);
    }
}

/// A commit of state, positions and outbox reached the store.
pub struct Committed {
    pub events: u64,
    pub segments: usize,
    pub deleted_segments: usize,
    pub alerts: usize,
    pub elapsed: std::time::Duration,
}

impl Committed {
    pub fn emit(&self) {
        tracing::debug!(
            events = self.events,
            segments = self.segments,
            deleted_segments = self.deleted_segments,
            alerts = self.alerts,
            elapsed_ms = self.elapsed.as_secs_f64() * 1e3,
            "state committed"
        );
        counter!("replayguard_commits_total").increment(1);
        histogram!("replayguard_commit_seconds").record(self.elapsed.as_secs_f64());
    }
}

/// A commit batch of `run` is written.
pub struct CommitBatch {
    pub events: usize,
    /// From its first record polled to its commit written.
    pub delay: Duration,
}

impl CommitBatch {
    pub fn emit(&self) {
        histogram!("replayguard_commit_batch_events").record(self.events as f64);
        histogram!("replayguard_commit_delay_seconds").record(self.delay.as_secs_f64());
    }
}

/// A batch of alerts was acknowledged by the broker.
pub struct AlertsAcknowledged {
    /// From producing them to the last acknowledgement.
    pub elapsed: Duration,
}

impl AlertsAcknowledged {
    pub fn emit(&self) {
        histogram!("replayguard_alert_delivery_seconds").record(self.elapsed.as_secs_f64());
    }
}

/// Work time of a pipeline stage since the last sample.
pub struct StageBusy {
    pub stage: &'static str,
    pub busy: Duration,
}

impl StageBusy {
    pub fn emit(&self) {
        histogram!("replayguard_stage_busy_seconds", "stage" => self.stage)
            .record(self.busy.as_secs_f64());
    }
}

/// Chunks waiting in a pipeline queue.
pub struct QueueDepth<'a> {
    pub queue: &'a str,
    pub depth: usize,
}

impl QueueDepth<'_> {
    pub fn emit(&self) {
        gauge!("replayguard_queue_depth", "queue" => self.queue.to_string()).set(self.depth as f64);
    }
}

/// Usage records of a checkpoint were published to the usage topic.
pub struct UsagePublished {
    pub records: u64,
    pub bytes: u64,
}

impl UsagePublished {
    pub fn emit(&self) {
        count("replayguard_usage_published_records_total", self.records);
        count("replayguard_usage_published_bytes_total", self.bytes);
    }
}

/// A partition taken over got its keys' usage from the usage topic.
pub struct UsageHandedOver<'a> {
    pub partition: &'a str,
    pub keys: usize,
    pub elapsed: Duration,
}

impl UsageHandedOver<'_> {
    pub fn emit(&self) {
        histogram!("replayguard_usage_handover_seconds").record(self.elapsed.as_secs_f64());
        tracing::info!(
            partition = self.partition,
            keys = self.keys,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "usage of the partition's keys taken from the usage topic"
        );
    }
}

/// The usage topic's global table, sampled at a commit.
pub struct UsageTableSize {
    pub keys: usize,
    /// Unreadable records since the last sample.
    pub unreadable: u64,
}

impl UsageTableSize {
    pub fn emit(&self) {
        gauge!("replayguard_usage_table_keys").set(self.keys as f64);
        count("replayguard_usage_unreadable_total", self.unreadable);
    }
}

/// A setting that was renamed was used: it still works, under its new name.
pub struct DeprecatedSetting {
    pub old: &'static str,
    pub new: &'static str,
}

impl DeprecatedSetting {
    pub fn emit(&self) {
        tracing::warn!(
            setting = self.old,
            use_instead = self.new,
            "{} is deprecated: it is read as {}",
            self.old,
            self.new
        );
    }
}

/// Size of the live state, after a commit.
pub struct StateSize {
    pub live_entries: usize,
    pub index_bytes: usize,
    pub segments: usize,
}

impl StateSize {
    pub fn emit(&self) {
        gauge!("replayguard_live_entries").set(self.live_entries as f64);
        gauge!("replayguard_index_bytes").set(self.index_bytes as f64);
        gauge!("replayguard_state_segments").set(self.segments as f64);
    }
}

/// Records whose Kafka message key is not their key_id (since the last report).
pub struct KeyChecks {
    pub absent: u64,
    pub mismatch: u64,
}

/// Increments a counter, only when there is something to count (so that a
/// counter appears in /metrics only once it happened).
fn count(name: &'static str, n: u64) {
    if n > 0 {
        counter!(name).increment(n);
    }
}

impl KeyChecks {
    pub fn emit(&self) {
        count("replayguard_key_absent_total", self.absent);
        count("replayguard_key_mismatch_total", self.mismatch);
    }
}

/// Records read again to rebuild a partition's state (since the last report).
pub struct Rebuilt {
    pub records: u64,
}

impl Rebuilt {
    pub fn emit(&self) {
        count("replayguard_rebuilt_records_total", self.records);
    }
}

/// Alerts left in the outbox by an earlier run are being delivered again.
pub struct OutboxRedelivery {
    pub count: usize,
}

impl OutboxRedelivery {
    pub fn emit(&self) {
        if self.count > 0 {
            tracing::info!(
                count = self.count,
                "delivering alerts committed by an earlier run"
            );
        }
        counter!("replayguard_outbox_redelivered_total").increment(self.count as u64);
    }
}

/// Live state was restored from the store.
pub struct StateRestored<'a> {
    pub shard: &'a str,
    pub keys: usize,
    pub windows: usize,
    pub events: usize,
    pub segments: usize,
    pub elapsed: std::time::Duration,
}

impl StateRestored<'_> {
    pub fn emit(&self) {
        tracing::info!(
            shard = self.shard,
            keys = self.keys,
            windows = self.windows,
            events = self.events,
            segments = self.segments,
            elapsed_ms = (self.elapsed.as_secs_f64() * 1e3).round(),
            "restored live state"
        );
        histogram!("replayguard_restore_seconds").record(self.elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::{redact, RateLimit};
    use std::time::Duration;

    /// Every metric this module emits is in [`super::METRICS`] (so it has
    /// HELP text), and every one listed is emitted.
    #[test]
    fn every_metric_emitted_is_described() {
        let here = include_str!("telemetry.rs");
        let (code, _) = here.split_once("#[cfg(test)]").unwrap();
        let listed: std::collections::BTreeSet<&str> = super::METRICS.iter().map(|m| m.0).collect();
        let mut emitted = std::collections::BTreeSet::new();
        for part in code.split("!(\"").skip(1) {
            let name = part.split('"').next().unwrap();
            if name.starts_with("replayguard_") {
                emitted.insert(name);
            }
        }
        for part in code.split("count(\"").skip(1) {
            emitted.insert(part.split('"').next().unwrap());
        }
        assert!(emitted.len() > 15, "{emitted:?}");
        let missing: Vec<_> = emitted.difference(&listed).collect();
        assert!(missing.is_empty(), "emitted without HELP: {missing:?}");
        let unused: Vec<_> = listed.difference(&emitted).collect();
        assert!(unused.is_empty(), "described, never emitted: {unused:?}");
    }

    /// The exporter's page: every metric has `# HELP` and `# TYPE`, durations
    /// are histograms in seconds, build info carries the version, and an
    /// input partition is labelled `partition` everywhere.
    #[test]
    fn the_metrics_page_has_help_for_every_metric() {
        let recorder = super::prometheus().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            super::describe();
            let stats = crate::detect::ShardStats {
                events: 3,
                ..Default::default()
            };
            super::BatchProcessed {
                shard: "access-events/0",
                stats: &stats,
            }
            .emit();
            super::ConsumerLag {
                partition: "access-events/0",
                lag: 7,
            }
            .emit();
            super::Committed {
                events: 3,
                segments: 0,
                deleted_segments: 0,
                alerts: 0,
                elapsed: Duration::from_millis(2),
            }
            .emit();
            super::CommitBatch {
                events: 700,
                delay: Duration::from_millis(4),
            }
            .emit();
            super::AlertsAcknowledged {
                elapsed: Duration::from_millis(2),
            }
            .emit();
        });
        handle.run_upkeep();
        let page = handle.render();
        for line in page.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                page.contains(&format!("# HELP {name} ")),
                "no HELP for {name}:\n{page}"
            );
        }
        assert!(
            page.contains("# TYPE replayguard_commit_seconds histogram"),
            "{page}"
        );
        assert!(
            page.contains("replayguard_commit_seconds_bucket{le=\"0.0025\"} 1"),
            "{page}"
        );
        assert!(
            page.contains(&format!(
                "replayguard_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{page}"
        );
        assert!(
            page.contains("replayguard_events_total{partition=\"access-events/0\"} 3"),
            "{page}"
        );
        assert!(
            page.contains("replayguard_consumer_lag{partition=\"access-events/0\"} 7"),
            "{page}"
        );
        assert!(
            page.contains("replayguard_commit_batch_events_bucket{le=\"1000\"} 1")
                && page.contains("replayguard_commit_batch_events_bucket{le=\"100\"} 0"),
            "{page}"
        );
        assert!(
            page.contains("replayguard_commit_delay_seconds_bucket{le=\"0.005\"} 1"),
            "{page}"
        );
        assert!(!page.contains("shard="), "{page}");
    }

    #[test]
    fn rate_limit_lets_a_burst_through_then_one_per_interval() {
        let r = RateLimit::new(2, Duration::from_secs(3600));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0), "first after the burst");
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        let r = RateLimit::new(0, Duration::ZERO);
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), Some(0));
    }

    #[test]
    fn redacts_quoted_values() {
        assert_eq!(
            redact("invalid type: string \"n0nce-secret\", expected u16 at line 1 column 9"),
            "invalid type: string \"…\", expected u16 at line 1 column 9"
        );
        assert_eq!(
            redact("invalid type: integer `42`, expected a string"),
            "invalid type: integer `…`, expected a string"
        );
        assert_eq!(redact("unterminated \"abc"), "unterminated \"…");
        assert_eq!(
            redact("missing field `nonce` at line 1"),
            "missing field `nonce` at line 1"
        );
    }
}
