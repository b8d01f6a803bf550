//! The alert outbox: alerts raised and not yet acknowledged by the sink.
//! Those before `committed` are in the store's outbox; delivering removes
//! them with the next commit.

use std::ops::Range;

use crate::schema::Alert;
use crate::sink::{AlertSink, OutboxEntry, SinkError};

/// Outbox sequence numbers, consecutive.
type Seqs = Range<u64>;

#[derive(Debug, Default)]
pub(super) struct Outbox {
    entries: Vec<OutboxEntry>,
    /// How many of `entries` are committed to the store.
    committed: usize,
    next_seq: u64,
    /// Delivered: the store's entries in this range go with the next
    /// commit. Each commit's range starts where the one before ended (see
    /// [`crate::state::Commit::outbox_delete`]).
    delete: Option<Seqs>,
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
            delete: None,
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
    pub(super) fn stage(&mut self) -> (Vec<(u64, Vec<u8>)>, Option<Seqs>) {
        let put = self.entries[self.committed..]
            .iter()
            .map(|e| (e.seq, e.json.clone()))
            .collect();
        (put, self.delete.take())
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
        // consecutive sequence numbers: a second delivery before the commit
        // extends the range of the first
        let acked = self.entries[0].seq..self.entries[n - 1].seq + 1;
        self.delete = Some(match self.delete.take() {
            Some(earlier) => earlier.start..acked.end,
            None => acked,
        });
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
        self.delete.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::MemAlertSink;

    fn alert() -> Alert {
        serde_json::from_str(include_str!(
            "../../../schemas/examples/alert/new-client.json"
        ))
        .unwrap()
    }

    /// Stages a commit and makes it durable; returns what it deletes.
    fn commit(o: &mut Outbox) -> Option<Seqs> {
        let (put, del) = o.stage();
        o.committed(put.len());
        del
    }

    /// What each commit removes from the store is what was delivered since
    /// the commit before: ranges that follow one another and never overlap
    /// (range deletes that all started at 0 made RocksDB's flushes take
    /// seconds in a long `run`), two deliveries between commits in one.
    #[test]
    fn each_commit_deletes_what_was_delivered_since_the_last() {
        // an earlier run left 7 and 8
        let mut o = Outbox::restore(vec![(7, b"{}".to_vec()), (8, b"{}".to_vec())]);
        let mut sink = MemAlertSink::default();
        assert_eq!(o.deliver(&mut sink).unwrap(), 2);
        o.push(&alert());
        assert_eq!(commit(&mut o), Some(7..9));
        // 9 is sent; 10 and 11 are committed meanwhile; both acknowledged
        // before the next commit
        o.send(&mut sink).unwrap();
        o.push(&alert());
        o.push(&alert());
        assert_eq!(commit(&mut o), None);
        assert_eq!(o.delivered(&mut sink, true).unwrap(), 1);
        o.send(&mut sink).unwrap();
        assert_eq!(o.delivered(&mut sink, true).unwrap(), 2);
        assert_eq!(commit(&mut o), Some(9..12));
        assert_eq!(commit(&mut o), None);
        // many commits of one alert each: one entry each, in turn
        let mut at = 12;
        for _ in 0..100 {
            o.push(&alert());
            commit(&mut o);
            o.deliver(&mut sink).unwrap();
            assert_eq!(commit(&mut o), Some(at..at + 1));
            at += 1;
        }
        let seqs: Vec<u64> = sink.delivered.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (7..at).collect::<Vec<_>>());
    }
}
