//! Out-of-sequence counters (`detect.sequence = "on"`): for APIs whose nonce
//! is an increasing number per key, a request whose nonce `n` is smaller
//! than the largest nonce of the same key among requests received more than
//! `sequence_tolerance` earlier.
//!
//! By event time, whatever the arrival order within the allowed lateness: a
//! request is judged once the watermark has passed its received_at, so every
//! request it is judged against, and whether it is itself a replay (then it
//! is not also out of sequence), is final. The state per key is the requests
//! not yet folded into the running maximum (those of the last lateness plus
//! tolerance) and that maximum; it lives in the key's usage record and is
//! committed with it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::schema::alert::{RequestContext, SequenceEvidence};
use crate::schema::{AccessEvent, Millis};

/// The nonce as a sequence number: a decimal unsigned 64-bit integer.
pub fn number(nonce: &str) -> Option<u64> {
    if nonce.is_empty() || !nonce.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    nonce.parse().ok()
}

/// A request remembered for the sequence rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqEntry {
    pub n: u64,
    pub received_at: Millis,
    pub event_id: String,
    /// A replay of an earlier request: never also out of sequence.
    pub replay: bool,
    /// For the alert; dropped once judged (the entry stays, for its nonce,
    /// while it is within the tolerance of a request not judged yet).
    pub request: Option<StoredRequest>,
}

/// [`RequestContext`] as the state stores it (postcard has no "absent
/// field": every field is written).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRequest {
    pub client_ip: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub user_agent: Option<String>,
    pub client_id: Option<String>,
}

impl From<RequestContext> for StoredRequest {
    fn from(r: RequestContext) -> Self {
        StoredRequest {
            client_ip: r.client_ip,
            method: r.method,
            path: r.path,
            status: r.status,
            user_agent: r.user_agent,
            client_id: r.client_id,
        }
    }
}

impl From<StoredRequest> for RequestContext {
    fn from(r: StoredRequest) -> Self {
        RequestContext {
            client_ip: r.client_ip,
            method: r.method,
            path: r.path,
            status: r.status,
            user_agent: r.user_agent,
            client_id: r.client_id,
        }
    }
}

/// The sequence state of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqState {
    /// The largest nonce among the requests folded in.
    pub max: Option<(u64, String, Millis)>,
    /// Requests not yet folded in, by (received_at, event_id).
    pub buf: VecDeque<SeqEntry>,
    /// Every request received at or before this has been judged.
    pub judged_until: Option<Millis>,
}

impl SeqState {
    pub fn is_empty(&self) -> bool {
        self.max.is_none() && self.buf.is_empty()
    }

    /// The received_at of the first request not judged yet.
    pub fn next_undecided(&self) -> Option<Millis> {
        let from = match self.judged_until {
            Some(j) => self.buf.partition_point(|e| e.received_at <= j),
            None => 0,
        };
        self.buf.get(from).map(|e| e.received_at)
    }

    /// Remembers a request (not a duplicate, inside the lateness). Returns
    /// false when its time was already judged (after an end-of-input flush).
    pub fn insert(&mut self, ev: &AccessEvent<'_>, n: u64, request: RequestContext) -> bool {
        let r = ev.received_at;
        if self.judged_until.is_some_and(|j| r <= j) {
            return false;
        }
        let at = self
            .buf
            .partition_point(|e| (e.received_at, e.event_id.as_str()) <= (r, &*ev.event_id));
        self.buf.insert(
            at,
            SeqEntry {
                n,
                received_at: r,
                event_id: ev.event_id.to_string(),
                replay: false,
                request: Some(request.into()),
            },
        );
        true
    }

    /// Marks a remembered request as a replay.
    pub fn mark_replay(&mut self, event_id: &str) {
        if let Some(e) = self.buf.iter_mut().find(|e| e.event_id == event_id) {
            e.replay = true;
        }
    }

    /// Judges every request received at or before `until`, in event-time
    /// order; calls `alert` for each out-of-sequence one.
    pub fn judge(
        &mut self,
        until: Millis,
        tolerance: Millis,
        mut alert: impl FnMut(&SeqEntry, SequenceEvidence),
    ) {
        let mut i = match self.judged_until {
            Some(j) => self.buf.partition_point(|e| e.received_at <= j),
            None => 0,
        };
        while i < self.buf.len() {
            let r = self.buf[i].received_at;
            if r > until {
                break;
            }
            if self.judged_until.is_some_and(|j| r <= j) {
                i += 1;
                continue;
            }
            // fold the requests more than `tolerance` earlier (all judged)
            let bound = r.saturating_sub(tolerance);
            let fold = self.buf.partition_point(|e| e.received_at < bound);
            for e in self.buf.drain(..fold) {
                if self.max.as_ref().is_none_or(|m| e.n > m.0) {
                    self.max = Some((e.n, e.event_id, e.received_at));
                }
            }
            i -= fold.min(i);
            // every request at this time is judged against the same maximum
            let mut j = i;
            while j < self.buf.len() && self.buf[j].received_at == r {
                let e = &self.buf[j];
                if let Some((m, id, at)) = &self.max {
                    if e.n < *m && !e.replay {
                        alert(
                            e,
                            SequenceEvidence {
                                larger_nonce: m.to_string(),
                                larger_event_id: id.clone(),
                                larger_received_at: *at,
                                gap: m - e.n,
                                tolerance_ms: tolerance,
                            },
                        );
                    }
                }
                self.buf[j].request = None;
                j += 1;
            }
            self.judged_until = Some(r);
            i = j;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_decimal_u64_nonces_count() {
        assert_eq!(number("42"), Some(42));
        assert_eq!(number("007"), Some(7));
        assert_eq!(number("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            "-1",
            "+1",
            "1.0",
            "18446744073709551616",
            "a1",
            " 1",
            "١",
        ] {
            assert_eq!(number(bad), None, "{bad}");
        }
    }
}
