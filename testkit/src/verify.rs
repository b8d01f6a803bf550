//! The verifier of the fault harness: reads the alert topic from the
//! beginning and compares it with the ground truth; counts dead letters;
//! compares the group's committed offsets with the end of the log.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use super::kafka::{committed, consume};
use replayguard::schema::alert::alert_id;
use replayguard::schema::{Alert, AlertKind};

/// An expected alert: (kind, key_id, event_id).
pub type Expected = (AlertKind, String, String);

/// What the verifier found.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub expected: usize,
    pub delivered: usize,
    pub missed: Vec<Expected>,
    /// Alerts not in the ground truth, by alert_id.
    pub unexpected: Vec<String>,
    /// alert_ids seen more than once.
    pub repeated_ids: usize,
    /// (event_id, kind) pairs seen more than once.
    pub repeated_pairs: usize,
    /// Alerts whose id is not the deterministic id of their (kind, key, event).
    pub wrong_ids: usize,
    pub dead_letters: usize,
    /// Partitions whose committed offset is not the end of the log: (partition, committed, end).
    pub offsets_behind: Vec<(i32, Option<i64>, i64)>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.missed.is_empty()
            && self.unexpected.is_empty()
            && self.repeated_ids == 0
            && self.repeated_pairs == 0
            && self.wrong_ids == 0
            && self.offsets_behind.is_empty()
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "expected {} | delivered {} | missed {} | unexpected {} | repeated alert_id {} | repeated (event_id, kind) {} | wrong ids {} | dead letters {} | partitions behind the log end {}",
            self.expected,
            self.delivered,
            self.missed.len(),
            self.unexpected.len(),
            self.repeated_ids,
            self.repeated_pairs,
            self.wrong_ids,
            self.dead_letters,
            self.offsets_behind.len()
        )?;
        if !self.missed.is_empty() {
            write!(
                f,
                "\n  missed e.g. {:?}",
                &self.missed[..self.missed.len().min(5)]
            )?;
        }
        if !self.unexpected.is_empty() {
            write!(
                f,
                "\n  unexpected e.g. {:?}",
                &self.unexpected[..self.unexpected.len().min(5)]
            )?;
        }
        if !self.offsets_behind.is_empty() {
            write!(f, "\n  offsets behind: {:?}", self.offsets_behind)?;
        }
        Ok(())
    }
}

/// Reads the alert and dead-letter topics and the group's offsets, and
/// compares them with `truth` and the log `ends` (next offset per partition).
pub fn verify(
    brokers: &str,
    alert_topic: &str,
    dead_letter_topic: &str,
    group: &str,
    input_topic: &str,
    ends: &BTreeMap<i32, i64>,
    truth: &[Expected],
) -> Verdict {
    let msgs = consume(brokers, alert_topic, truth.len(), Duration::from_secs(30));
    let alerts: Vec<Alert> = msgs
        .iter()
        .filter_map(|m| serde_json::from_slice(&m.value).ok())
        .collect();
    let mut v = Verdict {
        expected: truth.len(),
        delivered: alerts.len(),
        ..Default::default()
    };
    let want: HashMap<String, &Expected> = truth
        .iter()
        .map(|e| (alert_id(e.0, &e.1, &e.2), e))
        .collect();
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut pairs: HashMap<(&str, AlertKind), usize> = HashMap::new();
    for a in &alerts {
        *ids.entry(&a.alert_id).or_default() += 1;
        *pairs.entry((&a.event_id, a.kind)).or_default() += 1;
        if a.kind.is_core() && a.alert_id != alert_id(a.kind, &a.key_id, &a.event_id) {
            v.wrong_ids += 1;
        }
        if !want.contains_key(&a.alert_id) {
            v.unexpected.push(a.alert_id.clone());
        }
    }
    v.unexpected.sort();
    v.unexpected.dedup();
    v.repeated_ids = ids.values().filter(|n| **n > 1).count();
    v.repeated_pairs = pairs.values().filter(|n| **n > 1).count();
    let got: HashSet<&str> = ids.keys().copied().collect();
    v.missed = want
        .iter()
        .filter(|(id, _)| !got.contains(id.as_str()))
        .map(|(_, e)| (*e).clone())
        .collect();
    v.missed.sort();
    v.dead_letters = consume(brokers, dead_letter_topic, 0, Duration::from_secs(5)).len();
    let c = committed(
        brokers,
        group,
        input_topic,
        ends.keys().copied().max().map_or(0, |m| m + 1),
    );
    for (p, end) in ends {
        if *end > 0 && c.get(p) != Some(end) {
            v.offsets_behind.push((*p, c.get(p).copied(), *end));
        }
    }
    v
}
