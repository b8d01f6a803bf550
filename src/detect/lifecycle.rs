//! Key lifecycle by event time: a key's state at time t is its record with the
//! greatest `at` <= t, except that revoked is final.

use hashbrown::HashMap;

use crate::schema::alert::LifecycleEvidence;
use crate::schema::{AlertKind, KeyState, LifecycleEvent, Millis, Severity};

/// All lifecycle records of one key, sorted by `at`.
#[derive(Debug, Default, Clone)]
pub struct KeyHistory {
    records: Vec<LifecycleEvent>,
    /// `at` of the earliest revoked record.
    revoked_at: Option<Millis>,
}

impl KeyHistory {
    /// Adds a record. A record with the same `at` as an existing one replaces
    /// it (the later word wins), except that nothing replaces a revocation.
    /// Returns whether anything changed.
    pub fn upsert(&mut self, ev: LifecycleEvent) -> bool {
        let i = self.records.partition_point(|r| r.at < ev.at);
        match self.records.get_mut(i) {
            Some(r) if r.at == ev.at => {
                if *r == ev || r.state == KeyState::Revoked {
                    return false;
                }
                *r = ev;
            }
            _ => self.records.insert(i, ev),
        }
        self.revoked_at = self
            .records
            .iter()
            .find(|r| r.state == KeyState::Revoked)
            .map(|r| r.at);
        true
    }

    /// The record in force at `t`, if any.
    pub fn state_at(&self, t: Millis) -> Option<&LifecycleEvent> {
        if let Some(rev) = self.revoked_at.filter(|&rev| rev <= t) {
            return self
                .records
                .iter()
                .find(|r| r.at == rev && r.state == KeyState::Revoked);
        }
        let n = self.records.partition_point(|r| r.at <= t);
        n.checked_sub(1).map(|i| &self.records[i])
    }

    pub fn records(&self) -> &[LifecycleEvent] {
        &self.records
    }
}

/// Every key's lifecycle: a global table, the same on every instance.
#[derive(Debug, Default, Clone)]
pub struct LifecycleTable {
    keys: HashMap<Box<str>, KeyHistory>,
}

impl LifecycleTable {
    pub fn upsert(&mut self, ev: LifecycleEvent) -> bool {
        match self.keys.get_mut(ev.key_id.as_str()) {
            Some(h) => h.upsert(ev),
            None => {
                let mut h = KeyHistory::default();
                let key = ev.key_id.clone().into_boxed_str();
                h.upsert(ev);
                self.keys.insert(key, h);
                true
            }
        }
    }

    #[inline]
    pub fn state_at(&self, key_id: &str, t: Millis) -> Option<&LifecycleEvent> {
        if self.keys.is_empty() {
            return None;
        }
        self.keys.get(key_id)?.state_at(t)
    }

    pub fn history(&self, key_id: &str) -> Option<&KeyHistory> {
        self.keys.get(key_id)
    }

    pub fn keys(&self) -> impl Iterator<Item = (&str, &KeyHistory)> {
        self.keys.iter().map(|(k, v)| (&**k, v))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The lifecycle rule: which alert, if any, a use at `t` of a key in state
/// `rec` raises.
pub fn check(rec: &LifecycleEvent, t: Millis) -> Option<(AlertKind, Severity, LifecycleEvidence)> {
    let (kind, severity) = match rec.state {
        KeyState::Active => return None,
        KeyState::Rotating => match rec.grace_until {
            Some(g) if t > g => (AlertKind::RetiredKey, Severity::Medium),
            _ => return None,
        },
        KeyState::Retired => (AlertKind::RetiredKey, Severity::High),
        KeyState::Revoked => (AlertKind::RevokedKey, Severity::Critical),
    };
    Some((
        kind,
        severity,
        LifecycleEvidence {
            state: rec.state,
            at: rec.at,
            successor: rec.successor.clone(),
            grace_until: rec.grace_until,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(state: KeyState, at: Millis, grace: Option<Millis>) -> LifecycleEvent {
        LifecycleEvent {
            key_id: "k".into(),
            state,
            at,
            successor: Some("k2".into()),
            grace_until: grace,
        }
    }

    #[test]
    fn state_is_greatest_at_not_after_t() {
        let mut h = KeyHistory::default();
        h.upsert(rec(KeyState::Rotating, 100, Some(500)));
        h.upsert(rec(KeyState::Active, 0, None));
        h.upsert(rec(KeyState::Retired, 1000, None));
        assert_eq!(h.state_at(-1), None);
        assert_eq!(h.state_at(0).unwrap().state, KeyState::Active);
        assert_eq!(h.state_at(99).unwrap().state, KeyState::Active);
        assert_eq!(h.state_at(100).unwrap().state, KeyState::Rotating);
        assert_eq!(h.state_at(999).unwrap().state, KeyState::Rotating);
        assert_eq!(h.state_at(1000).unwrap().state, KeyState::Retired);
    }

    #[test]
    fn revoked_is_final() {
        let mut h = KeyHistory::default();
        h.upsert(rec(KeyState::Revoked, 100, None));
        h.upsert(rec(KeyState::Active, 200, None));
        assert!(
            !h.upsert(rec(KeyState::Active, 100, None)),
            "a revocation is never replaced"
        );
        assert_eq!(h.state_at(99), None);
        assert_eq!(h.state_at(100).unwrap().state, KeyState::Revoked);
        assert_eq!(h.state_at(5000).unwrap().state, KeyState::Revoked);
    }

    #[test]
    fn same_at_later_word_wins() {
        let mut h = KeyHistory::default();
        assert!(h.upsert(rec(KeyState::Rotating, 100, Some(200))));
        assert!(!h.upsert(rec(KeyState::Rotating, 100, Some(200))));
        assert!(h.upsert(rec(KeyState::Rotating, 100, Some(300))));
        assert_eq!(h.state_at(150).unwrap().grace_until, Some(300));
        assert_eq!(h.records().len(), 1);
    }

    #[test]
    fn grace_is_strict() {
        let r = rec(KeyState::Rotating, 0, Some(1000));
        assert!(check(&r, 999).is_none());
        assert!(check(&r, 1000).is_none());
        let (kind, sev, ev) = check(&r, 1001).unwrap();
        assert_eq!((kind, sev), (AlertKind::RetiredKey, Severity::Medium));
        assert_eq!(ev.grace_until, Some(1000));
        assert!(check(&rec(KeyState::Rotating, 0, None), i64::MAX / 2).is_none());
        assert_eq!(
            check(&rec(KeyState::Retired, 0, None), 0).unwrap().0,
            AlertKind::RetiredKey
        );
        assert_eq!(
            check(&rec(KeyState::Revoked, 0, None), 0).unwrap().1,
            Severity::Critical
        );
        assert!(check(&rec(KeyState::Active, 0, None), 0).is_none());
    }
}
