//! First sightings: the details a replay alert needs about the earlier request.
//!
//! The live index in memory holds fingerprints and times only; the details of
//! a window's first sighting (event id, client ip, position) are appended to a
//! [`SightingLog`], which the state module persists in batches and reads back
//! only when a nonce is seen again (a replay, a duplicate or a late event).

use super::fingerprint::Position;
use crate::schema::Millis;

/// Reference to where a sighting was appended (a segment number, truncated to
/// 32 bits; the log widens it again).
pub type SegRef = u32;

/// A request as remembered: enough to be evidence (with the request's
/// context, for the alert about it) and to be recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SightingInfo<S> {
    pub received_at: Millis,
    pub pos: Position,
    pub event_id: S,
    pub client_ip: S,
    pub method: S,
    pub path: S,
    pub status: u16,
    pub client_id: Option<S>,
    pub user_agent: Option<S>,
    /// `detect.sequence = "on"` and the nonce is a sequence number: (key_id,
    /// number). The sequence rule's requests not yet folded into a key's
    /// maximum are rebuilt from these at restart.
    pub seq: Option<(S, u64)>,
}

impl<S: AsRef<str>> SightingInfo<S> {
    pub fn as_ref(&self) -> SightingInfo<&str> {
        SightingInfo {
            received_at: self.received_at,
            pos: self.pos,
            event_id: self.event_id.as_ref(),
            client_ip: self.client_ip.as_ref(),
            method: self.method.as_ref(),
            path: self.path.as_ref(),
            status: self.status,
            client_id: self.client_id.as_ref().map(|c| c.as_ref()),
            user_agent: self.user_agent.as_ref().map(|c| c.as_ref()),
            seq: self.seq.as_ref().map(|(k, n)| (k.as_ref(), *n)),
        }
    }

    /// The request as alerts carry it.
    pub fn request_context(&self) -> crate::schema::alert::RequestContext {
        crate::schema::alert::RequestContext {
            client_ip: self.client_ip.as_ref().to_owned(),
            method: self.method.as_ref().to_owned(),
            path: self.path.as_ref().to_owned(),
            status: self.status,
            user_agent: self.user_agent.as_ref().map(|c| c.as_ref().to_owned()),
            client_id: self.client_id.as_ref().map(|c| c.as_ref().to_owned()),
        }
    }

    pub fn to_owned(&self) -> SightingInfo<String> {
        SightingInfo {
            received_at: self.received_at,
            pos: self.pos,
            event_id: self.event_id.as_ref().to_owned(),
            client_ip: self.client_ip.as_ref().to_owned(),
            method: self.method.as_ref().to_owned(),
            path: self.path.as_ref().to_owned(),
            status: self.status,
            client_id: self.client_id.as_ref().map(|c| c.as_ref().to_owned()),
            user_agent: self.user_agent.as_ref().map(|c| c.as_ref().to_owned()),
            seq: self.seq.as_ref().map(|(k, n)| (k.as_ref().to_owned(), *n)),
        }
    }
}

/// The start of a nonce's current window, and of the window before it (a late
/// event that precedes the current start is judged against that one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRecord<S> {
    /// Full 128-bit fingerprint of (key_id, nonce).
    pub fp: u128,
    pub first: SightingInfo<S>,
    pub prev: Option<SightingInfo<S>>,
}

pub type OwnedWindow = WindowRecord<String>;

/// Failure to read a sighting back. Never a silent miss: a live entry whose
/// record cannot be found is lost state, and the detector stops rather than
/// take the miss for a new first sighting.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("reading first sightings from the state store: {0}")]
    Io(String),
    #[error("reading first sightings: {0}")]
    Corrupt(String),
    #[error(
        "first-sighting segment {seq} of shard {shard} is referenced by the live index but is \
         neither pending, cached nor in the state store (lost state)"
    )]
    Missing { shard: u32, seq: u64 },
}

/// Append-only log of window starts and of live event ids, written by the
/// detector and persisted by the state module.
pub trait SightingLog {
    /// Records the start of a window; returns where to find it again.
    /// `keep_until` (at least the record's own time) is the latest time of
    /// any record it supersedes: the record must outlive those, or a restart
    /// would bring them back.
    fn append_window(&mut self, rec: &WindowRecord<&str>, keep_until: Millis) -> SegRef;
    /// Records a live event id that is not a window start (for duplicate detection after a restart).
    fn append_event(&mut self, fp: u64, received_at: Millis, pos_hash: u32);
    /// Reads back the latest window record with fingerprint `fp` appended in segment `seg`.
    fn window(&mut self, seg: SegRef, fp: u128) -> Result<Option<OwnedWindow>, LookupError>;
}

/// An in-memory [`SightingLog`] for tests and benches: every append is kept.
#[derive(Default, Debug)]
pub struct VecLog {
    pub windows: Vec<OwnedWindow>,
    pub events: Vec<(u64, Millis, u32)>,
}

impl SightingLog for VecLog {
    fn append_window(&mut self, rec: &WindowRecord<&str>, _keep_until: Millis) -> SegRef {
        self.windows.push(WindowRecord {
            fp: rec.fp,
            first: rec.first.to_owned(),
            prev: rec.prev.as_ref().map(|p| p.to_owned()),
        });
        (self.windows.len() - 1) as SegRef
    }

    fn append_event(&mut self, fp: u64, received_at: Millis, pos_hash: u32) {
        self.events.push((fp, received_at, pos_hash));
    }

    fn window(&mut self, seg: SegRef, fp: u128) -> Result<Option<OwnedWindow>, LookupError> {
        Ok(self
            .windows
            .get(seg as usize)
            .filter(|w| w.fp == fp)
            .cloned())
    }
}
