//! In-memory twins of the sinks, for tests and benches.

use super::{AlertSink, DeadLetter, DeadLetterSink, OutboxEntry, SinkError};
use crate::schema::Alert;

/// Keeps every delivered alert; can be told to fail.
#[derive(Default, Debug)]
pub struct MemAlertSink {
    pub delivered: Vec<OutboxEntry>,
    pub fail: bool,
}

impl MemAlertSink {
    pub fn alerts(&self) -> Vec<Alert> {
        self.delivered
            .iter()
            .map(|e| serde_json::from_slice(&e.json).expect("alert v1 JSON"))
            .collect()
    }
}

impl AlertSink for MemAlertSink {
    fn deliver(&mut self, batch: &[OutboxEntry]) -> Result<(), SinkError> {
        if self.fail {
            return Err(SinkError::Delivery("injected failure".into()));
        }
        self.delivered.extend_from_slice(batch);
        Ok(())
    }
}

/// Keeps (source, offset, error kind) of every dead letter.
#[derive(Default, Debug)]
pub struct MemDeadLetterSink {
    pub letters: Vec<(String, u64, &'static str)>,
    pub flushes: usize,
}

impl DeadLetterSink for MemDeadLetterSink {
    fn send(&mut self, dl: &DeadLetter<'_>) -> Result<(), SinkError> {
        self.letters
            .push((dl.source.to_string(), dl.pos.offset, dl.error.kind()));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.flushes += 1;
        Ok(())
    }
}
