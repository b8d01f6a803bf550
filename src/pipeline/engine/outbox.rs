//! The alert outbox: alerts raised and not yet acknowledged by the sink.
//! Those before `committed` are in the store's outbox; delivering removes
//! them with the next commit.

use crate::schema::Alert;
use crate::sink::{AlertSink, OutboxEntry, SinkError};

#[derive(Debug, Default)]
pub(super) struct Outbox {
    entries: Vec<OutboxEntry>,
    /// How many of `entries` are committed to the store.
    committed: usize,
    next_seq: u64,
    /// Delivered: the store's entries below this go with the next commit.
    delete_below: Option<u64>,
    /// Of `entries`, the first this many are sent and not yet acknowledged.
    sending: usize,
}

impl Outbox {
    /// The outbox an earlier run left in the store (all committed).
    pub(super) fn restore(stored: Vec<(u64, Vec<u8>)>) -> Self {
        let entries: Vec<OutboxEntry> = stored
            .into_iter()
            .map(|(seq, json)| OutboxEntry { seq, json })
            .collect();
        Outbox {
            next_seq: entries.last().map_or(0, |e| e.seq + 1),
            committed: entries.len(),
            entries,
            delete_below: None,
            sending: 0,
        }
    }

    pub(super) fn push(&mut self, a: &Alert) {
        self.entries.push(OutboxEntry {
            seq: self.next_seq,
            json: serde_json::to_vec(a).expect("alert serializes"),
        });
        self.next_seq += 1;
    }

    /// What the next commit writes: the uncommitted entries, and the
    /// delivered ones to delete.
    pub(super) fn stage(&mut self) -> (Vec<(u64, Vec<u8>)>, Option<u64>) {
        let put = self.entries[self.committed..]
            .iter()
            .map(|e| (e.seq, e.json.clone()))
            .collect();
        (put, self.delete_below.take())
    }

    /// A commit holding `n` staged entries is durable.
    pub(super) fn committed(&mut self, n: usize) {
        self.committed += n;
    }

    /// Hands every committed entry to the sink; they leave the store's
    /// outbox with the next commit.
    pub(super) fn deliver(&mut self, sink: &mut dyn AlertSink) -> Result<usize, SinkError> {
        let mut n = self.delivered(sink, true)?;
        if self.committed > 0 {
            self.send(sink)?;
            n += self.delivered(sink, true)?;
        }
        Ok(n)
    }

    /// Sends every committed entry to the sink without waiting for it to
    /// acknowledge them (when nothing is being sent already).
    pub(super) fn send(&mut self, sink: &mut dyn AlertSink) -> Result<(), SinkError> {
        if self.sending > 0 || self.committed == 0 {
            return Ok(());
        }
        sink.send(&self.entries[..self.committed])?;
        self.sending = self.committed;
        Ok(())
    }

    /// How many entries the sink acknowledged since the last call (waiting
    /// for them when `wait`); they leave the store's outbox with the next
    /// commit.
    pub(super) fn delivered(
        &mut self,
        sink: &mut dyn AlertSink,
        wait: bool,
    ) -> Result<usize, SinkError> {
        let n = self.sending;
        if n == 0 {
            return Ok(0);
        }
        match sink.delivered(wait) {
            Ok(true) => {}
            Ok(false) => return Ok(0),
            Err(e) => {
                // not delivered: sent again with the next call to `send`
                self.sending = 0;
                return Err(e);
            }
        }
        self.delete_below = Some(self.entries[n - 1].seq + 1);
        self.entries.drain(..n);
        self.committed -= n;
        self.sending = 0;
        Ok(n)
    }

    /// Entries sent and not acknowledged yet.
    pub(super) fn sending(&self) -> usize {
        self.sending
    }

    /// Committed and not sent (or delivered) yet.
    pub(super) fn undelivered(&self) -> usize {
        self.committed - self.sending
    }

    /// Delivered entries wait for a commit to leave the store.
    pub(super) fn delete_pending(&self) -> bool {
        self.delete_below.is_some()
    }
}
