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

use metrics::{counter, gauge, histogram};

use crate::schema::AlertKind;

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
        counter!("replayguard_events_total", "shard" => self.shard.to_string()).increment(s.events);
        counter!("replayguard_duplicates_total", "shard" => self.shard.to_string())
            .increment(s.duplicates);
        counter!("replayguard_late_events_total", "shard" => self.shard.to_string())
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
