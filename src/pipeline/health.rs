//! Whether an input is mostly dead letters: more than half of its first
//! [`FIRST_RECORDS`] records, which almost always means the input is in
//! another format than the one configured.

use std::collections::HashMap;

/// How many of an input's first records are judged for being mostly dead
/// letters (a wrong `--input-format`, most likely).
pub const FIRST_RECORDS: u32 = 1000;

/// Dead letters among each input's first [`FIRST_RECORDS`] records.
#[derive(Debug, Default)]
pub(super) struct InputHealth {
    /// Per source: (records seen, dead letters, judged).
    first: HashMap<u32, (u32, u32, bool)>,
    /// The source of the last record counted, once it is judged: its next
    /// records (nearly every one, past the first thousand) are not looked
    /// up (the lookup, with std's SipHash, was ~35 instructions a record).
    judged: Option<u32>,
    flagged: Vec<String>,
}

impl InputHealth {
    /// Counts one record; true when that makes `source` judged and found
    /// mostly dead letters.
    pub(super) fn record(&mut self, source: u32, dead: bool) -> bool {
        if self.judged == Some(source) {
            return false;
        }
        let e = self.first.entry(source).or_default();
        if e.2 {
            self.judged = Some(source);
            return false;
        }
        e.0 += 1;
        e.1 += dead as u32;
        if e.0 < FIRST_RECORDS {
            return false;
        }
        e.2 = true;
        e.1 * 2 > e.0
    }

    fn counts(&self, source: u32) -> (u32, u32) {
        self.first.get(&source).map_or((0, 0), |e| (e.0, e.1))
    }

    /// Judges every input not judged yet; returns those mostly dead.
    pub(super) fn unjudged(&mut self) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        for (&source, e) in self.first.iter_mut() {
            if !e.2 {
                e.2 = true;
                if e.1 * 2 > e.0 {
                    out.push(source);
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Says that `source` (named `input`, read as `format`) is mostly dead
    /// letters: a warning and a metric, once per input.
    pub(super) fn flag(&mut self, source: u32, input: &str, format: crate::decode::Format) {
        let (seen, dead) = self.counts(source);
        crate::telemetry::MostlyDeadLetters {
            input,
            seen,
            dead,
            format: format.as_str(),
        }
        .emit();
        self.flagged.push(input.to_string());
    }

    pub(super) fn flagged(&self) -> &[String] {
        &self.flagged
    }
}
