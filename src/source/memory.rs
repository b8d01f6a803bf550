//! In-memory twin of a source: a list of records with given positions.

use super::{Payload, Poll, Record, Source, SourceError};
use crate::detect::Position;

/// Records held in memory, handed out in order.
#[derive(Debug, Default, Clone)]
pub struct VecSource {
    records: Vec<(Position, Vec<u8>)>,
    next: usize,
}

impl VecSource {
    pub fn new(records: Vec<(Position, Vec<u8>)>) -> Self {
        VecSource { records, next: 0 }
    }

    /// Lines of one source id, numbered from 1.
    pub fn lines<I: IntoIterator<Item = Vec<u8>>>(source: u32, lines: I) -> Self {
        Self::new(
            lines
                .into_iter()
                .enumerate()
                .map(|(i, l)| (Position::new(source, i as u64 + 1), l))
                .collect(),
        )
    }
}

impl Source for VecSource {
    fn poll(&mut self, max: usize, f: &mut dyn FnMut(Record<'_>)) -> Result<Poll, SourceError> {
        let end = (self.next + max).min(self.records.len());
        for (pos, b) in &self.records[self.next..end] {
            f(Record::new(*pos, Payload::Data(b)));
        }
        self.next = end;
        Ok(if self.next < self.records.len() {
            Poll::More
        } else {
            Poll::End
        })
    }
}
