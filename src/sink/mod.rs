//! Where results go: alerts ([`AlertSink`]) and dead letters
//! ([`DeadLetterSink`]), with JSON-lines writers and in-memory twins. The
//! Kafka producers live with the `run` pipeline.

mod jsonl;
pub(crate) mod kafka;
mod memory;

use crate::decode::DecodeError;
use crate::detect::Position;
use crate::source::{MessageKey, Payload};

pub use jsonl::{is_stdout, JsonlAlertSink, JsonlDeadLetterSink};
pub use memory::{MemAlertSink, MemDeadLetterSink};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("delivering alerts: {0}")]
    Delivery(String),
}

/// An alert committed to the outbox, ready to be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub seq: u64,
    /// Alert v1 JSON.
    pub json: Vec<u8>,
}

/// Receives alerts. `deliver` returns only once every alert of the batch is
/// durably handed over (written and flushed, or acknowledged by the broker);
/// the pipeline then removes them from the outbox.
///
/// A sink whose acknowledgements take a round trip (the Kafka producer) can
/// also take a batch without waiting ([`AlertSink::send`]) and say later
/// whether it is acknowledged ([`AlertSink::delivered`]); the default does
/// both at once.
pub trait AlertSink {
    fn deliver(&mut self, batch: &[OutboxEntry]) -> Result<(), SinkError>;

    /// Starts delivering a batch (one at a time: the next after
    /// [`AlertSink::delivered`] said yes).
    fn send(&mut self, batch: &[OutboxEntry]) -> Result<(), SinkError> {
        self.deliver(batch)
    }

    /// Whether the batch sent is durably handed over, waiting for it when
    /// `wait`. An error means it was not (nothing is removed from the outbox).
    fn delivered(&mut self, wait: bool) -> Result<bool, SinkError> {
        let _ = wait;
        Ok(true)
    }
}

/// A record that could not be decoded, with where it came from.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    /// Name of the source (file path, `-`, or topic).
    pub source: &'a str,
    pub pos: Position,
    pub error: &'a DecodeError,
    pub payload: Payload<'a>,
    /// The original message key (Kafka), kept on the dead letter.
    pub key: MessageKey<'a>,
}

/// Receives dead letters; `flush` makes them durable before the commit that
/// moves the input position past them.
pub trait DeadLetterSink {
    fn send(&mut self, dl: &DeadLetter<'_>) -> Result<(), SinkError>;
    fn flush(&mut self) -> Result<(), SinkError>;
}
