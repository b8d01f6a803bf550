//! `replayguard convert`: the access events v1 an input format yields, one
//! JSON line per record that decodes; the others go to the dead-letter
//! place as in `scan`. No state, no rules.
//!
//! A signature is written as its digest ([`signature_digest`]), never as
//! itself: the signature replay rule compares signatures for equality only,
//! so the converted events scan to the same alerts as the original records,
//! and what a converted file holds cannot be sent again.

use std::borrow::Cow;
use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;
use sha2::Digest;

use super::health::InputHealth;
use super::PipelineError;
use crate::config::Config;
use crate::decode::{Decoder, Format};
use crate::sink::{DeadLetter, DeadLetterSink, JsonlDeadLetterSink};
use crate::source::{FileSource, Input, Source};

/// The prefix of a signature written by `convert`.
pub const SIGNATURE_DIGEST_PREFIX: &str = "sha256:";

/// What `convert` writes for a signature: `sha256:` and the hex SHA-256 of
/// it. Equal signatures give equal digests (what the signature replay rule
/// compares), and a signature is a value no one can recover from its
/// digest. A digest already (64 lower-case hex digits after the prefix) is
/// kept as it is, so converting converted events changes nothing.
pub fn signature_digest(signature: &str) -> Cow<'_, str> {
    if let Some(hex) = signature.strip_prefix(SIGNATURE_DIGEST_PREFIX) {
        if hex.len() == 64 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Cow::Borrowed(signature);
        }
    }
    let h = sha2::Sha256::digest(signature.as_bytes());
    let mut s = String::with_capacity(SIGNATURE_DIGEST_PREFIX.len() + 64);
    s.push_str(SIGNATURE_DIGEST_PREFIX);
    crate::schema::push_hex(&mut s, &h);
    Cow::Owned(s)
}

/// A converted event: the access event v1, with its signature's digest.
#[derive(Serialize)]
struct Converted<'e, 'a> {
    #[serde(flatten)]
    event: &'e crate::schema::AccessEvent<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<Cow<'e, str>>,
}

/// What `convert` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ConvertArgs {
    /// Its `[input]` and `[decode]` sections are used.
    pub config: Config,
    /// The v1 events go here; `None` is stdout.
    pub output: Option<PathBuf>,
    /// Records that do not decode go here (appended); `None` only counts.
    pub dead_letter: Option<PathBuf>,
    /// Files to read; empty or `-` is stdin.
    pub inputs: Vec<PathBuf>,
}

/// The outcome of a conversion.
#[derive(Debug, Clone)]
pub struct ConvertSummary {
    pub events: u64,
    pub dead_letters: u64,
    pub format: Format,
    /// Inputs of which more than half of the first records were dead letters.
    pub mostly_dead: Vec<String>,
}

impl std::fmt::Display for ConvertSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "replayguard convert: {} events from format {}, {} dead letters",
            self.events, self.format, self.dead_letters
        )?;
        for input in &self.mostly_dead {
            writeln!(
                f,
                "  most of the first records of {input} are not in format {}: \
                 try --input-format",
                self.format
            )?;
        }
        Ok(())
    }
}

/// An input by name, open, and the regular file it reads (`None`: stdin).
pub(super) type NamedInput = (String, Box<dyn std::io::Read + Send>, Option<PathBuf>);

/// Standard input, decompressed when it is gzip (at its first read).
fn stdin() -> Box<dyn std::io::Read + Send> {
    crate::source::deferred(|| crate::source::decompressed(std::io::stdin()))
}

/// The named inputs (none: stdin), each opened at its first read and
/// decompressed when it is gzip ([`crate::source::deferred`]). Whether each
/// file can be opened is checked here: a missing one, or a directory, is a
/// usage error, before any work.
pub(super) fn open_inputs(paths: &[PathBuf]) -> Result<Vec<NamedInput>, PipelineError> {
    let mut named: Vec<NamedInput> = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            named.push(("-".into(), stdin(), None));
            continue;
        }
        let usage = |e: &dyn std::fmt::Display| {
            PipelineError::Usage(format!("cannot read input {}: {e}", p.display()))
        };
        let f = std::fs::File::open(p).map_err(|e| usage(&e))?;
        if f.metadata().map_err(|e| usage(&e))?.is_dir() {
            return Err(usage(&"it is a directory"));
        }
        drop(f);
        let path = p.clone();
        let reader = crate::source::deferred(move || {
            crate::source::decompressed(std::fs::File::open(path)?)
        });
        named.push((p.display().to_string(), reader, Some(p.clone())));
    }
    if paths.is_empty() {
        named.push(("-".into(), stdin(), None));
    }
    Ok(named)
}

/// Runs `convert` as the CLI does.
pub fn convert(args: ConvertArgs) -> Result<ConvertSummary, PipelineError> {
    let decoder = Decoder::new(&args.config.decode, &args.config.input)
        .map_err(|e| PipelineError::Usage(format!("invalid configuration: {e}")))?;
    let named = open_inputs(&args.inputs)?;
    let names: Vec<String> = named.iter().map(|(n, _, _)| n.clone()).collect();
    let inputs = named
        .into_iter()
        .enumerate()
        .map(|(i, (name, reader, file))| Input {
            source_id: i as u32,
            name,
            reader,
            file,
        })
        .collect();
    let mut source = FileSource::new(inputs, decoder.max_event_bytes);
    let mut out: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(
            |e| PipelineError::Usage(format!("cannot write {}: {e}", p.display())),
        )?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut dlq = match &args.dead_letter {
        Some(p) => JsonlDeadLetterSink::file(p)?,
        None => JsonlDeadLetterSink::discard(),
    };
    let mut health = InputHealth::default();
    let mut events = 0u64;
    let mut dead = 0u64;
    let mut failed: Option<PipelineError> = None;
    let io = |e: std::io::Error| PipelineError::io("writing the converted events")(e);
    loop {
        let poll = source.poll(4096, &mut |rec| {
            if failed.is_some() {
                return;
            }
            let decoded = decoder.decode_record(&rec);
            let source = rec.pos.source;
            if health.record(source, decoded.is_err()) {
                health.flag(source, &names[source as usize], decoder.format());
            }
            let r = match decoded {
                Ok(ev) => {
                    events += 1;
                    let converted = Converted {
                        event: &ev,
                        signature: ev.signature.as_deref().map(signature_digest),
                    };
                    serde_json::to_writer(&mut out, &converted)
                        .map_err(std::io::Error::from)
                        .and_then(|_| out.write_all(b"\n"))
                        .map_err(io)
                }
                Err(e) => {
                    dead += 1;
                    crate::telemetry::DeadLettered {
                        source: &names[source as usize],
                        offset: rec.pos.offset,
                        error_kind: e.kind(),
                        error: &e.to_string(),
                    }
                    .emit();
                    dlq.send(&DeadLetter {
                        source: &names[source as usize],
                        pos: rec.pos,
                        error: &e,
                        payload: rec.payload,
                        key: rec.key,
                    })
                    .map_err(PipelineError::from)
                }
            };
            if let Err(e) = r {
                failed = Some(e);
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if poll == crate::source::Poll::End {
            break;
        }
    }
    out.flush().map_err(io)?;
    dlq.flush()?;
    for s in health.unjudged() {
        health.flag(s, &names[s as usize], decoder.format());
    }
    Ok(ConvertSummary {
        events,
        dead_letters: dead,
        format: decoder.format(),
        mostly_dead: health.flagged().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_written_as_its_digest_once() {
        let d = signature_digest("c0ffee");
        // sha256sum of the six bytes c0ffee
        assert_eq!(
            d,
            "sha256:fb0288872031fc4818c03a7253bd3a78de192d05e6bccd09ceabeda65b4d7c6f"
        );
        assert!(!d.contains("c0ffee"));
        // equal signatures, equal digests; others differ
        assert_eq!(signature_digest("c0ffee"), d);
        assert_ne!(signature_digest("c0ffef"), d);
        // a digest is kept: converting converted events changes nothing
        assert_eq!(signature_digest(&d), d);
        // something that only looks like one is digested
        for odd in ["sha256:", "sha256:abc", &d.to_uppercase(), &format!("{d}0")] {
            let again = signature_digest(odd);
            assert_ne!(again, odd);
            assert_eq!(signature_digest(&again), again);
        }
    }
}
