//! Where records come from: the [`Source`] trait, JSON-lines files (and stdin),
//! and an in-memory twin. The Kafka source lives with the `run` pipeline.

pub(crate) mod files;
pub(crate) mod kafka;
mod memory;

use crate::detect::Position;

pub use files::{decompressed, deferred, FileSource, Input, LineReader};
pub use memory::VecSource;

/// The bytes of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    Data(&'a [u8]),
    /// Longer than the decoder's limit; only the first bytes were kept.
    Oversize {
        len: usize,
        prefix: &'a [u8],
    },
}

/// The message key a record arrived with (Kafka), to check that producers
/// key by key_id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKey<'a> {
    /// The source has no keys (files).
    None,
    Absent,
    Present(&'a [u8]),
}

/// One record and where it came from.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub pos: Position,
    pub payload: Payload<'a>,
    pub key: MessageKey<'a>,
    /// The source saw that the payload is plain ([`crate::decode::plain`])
    /// while it looked for its end ([`files::line_end`]): the decoder does
    /// not look again. `false`: not known.
    ///
    /// Safety: true only for a payload that is plain (the decoder then
    /// takes its bytes as ASCII text unchecked). Crate-private, so that no
    /// source from outside can say so.
    pub(crate) plain: bool,
}

impl<'a> Record<'a> {
    /// A record of a keyless source.
    pub fn new(pos: Position, payload: Payload<'a>) -> Self {
        Record {
            pos,
            payload,
            key: MessageKey::None,
            plain: false,
        }
    }
}

/// Whether a source has more to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    More,
    End,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading {name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

/// A source of records, read in batches.
pub trait Source {
    /// Hands at most `max` records to `f`; says whether more may follow.
    fn poll(&mut self, max: usize, f: &mut dyn FnMut(Record<'_>)) -> Result<Poll, SourceError>;

    /// The memory map the records of the next poll are slices of, when the
    /// source reads one (a mapped file): a chunk can keep the map instead of
    /// copying those records. Records outside it are still only borrowed.
    fn mapping(&self) -> Option<&std::sync::Arc<memmap2::Mmap>> {
        None
    }
}
