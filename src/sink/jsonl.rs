//! JSON-lines writers for alerts and dead letters (files or stdout).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Serialize;

use super::{AlertSink, DeadLetter, DeadLetterSink, OutboxEntry, SinkError};
use crate::source::Payload;

/// Where a JSON-lines writer writes.
enum Target {
    Stdout(BufWriter<std::io::Stdout>),
    /// A file; `true` when it is a regular file (which fsync applies to).
    File(BufWriter<File>, bool),
}

impl Target {
    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Target::Stdout(w) => w,
            Target::File(w, _) => w,
        }
    }

    /// Flush, and for files also fsync: delivered means durable.
    fn sync(&mut self) -> std::io::Result<()> {
        match self {
            Target::Stdout(w) => w.flush(),
            Target::File(w, regular) => {
                w.flush()?;
                if *regular {
                    w.get_ref().sync_data()?;
                }
                Ok(())
            }
        }
    }
}

fn open(path: &Path) -> Result<Target, SinkError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| SinkError::Io {
            what: path.display().to_string(),
            source,
        })?;
    let regular = f.metadata().map(|m| m.is_file()).unwrap_or(false);
    Ok(Target::File(BufWriter::with_capacity(1 << 16, f), regular))
}

/// Alerts as JSON lines, appended to a file or written to stdout.
pub struct JsonlAlertSink {
    target: Target,
    name: String,
}

impl JsonlAlertSink {
    pub fn stdout() -> Self {
        JsonlAlertSink {
            target: Target::Stdout(BufWriter::with_capacity(1 << 16, std::io::stdout())),
            name: "stdout".into(),
        }
    }

    pub fn file(path: &Path) -> Result<Self, SinkError> {
        Ok(JsonlAlertSink {
            target: open(path)?,
            name: path.display().to_string(),
        })
    }
}

impl AlertSink for JsonlAlertSink {
    fn deliver(&mut self, batch: &[OutboxEntry]) -> Result<(), SinkError> {
        let io = |source| SinkError::Io {
            what: self.name.clone(),
            source,
        };
        let w = self.target.writer();
        for e in batch {
            w.write_all(&e.json).map_err(io)?;
            w.write_all(b"\n").map_err(io)?;
        }
        self.target.sync().map_err(io)
    }
}

/// Standard base64 (RFC 4648, with padding), for bytes that are not UTF-8.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        s.push(A[(n >> 18) as usize & 63] as char);
        s.push(A[(n >> 12) as usize & 63] as char);
        s.push(if c.len() > 1 {
            A[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if c.len() > 2 {
            A[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}

/// One dead letter as written to a file.
#[derive(Serialize)]
struct DeadLetterLine<'a> {
    source: &'a str,
    /// Line number (files) or offset (Kafka).
    offset: u64,
    error_kind: &'static str,
    error: String,
    /// Length of the original record in bytes.
    len: usize,
    /// Whether `raw`/`raw_base64` hold only the first bytes of an oversize record.
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_base64: Option<String>,
}

/// Dead letters as JSON lines in a file, or only counted and logged.
pub struct JsonlDeadLetterSink {
    target: Option<(Target, String)>,
}

impl JsonlDeadLetterSink {
    pub fn file(path: &Path) -> Result<Self, SinkError> {
        Ok(JsonlDeadLetterSink {
            target: Some((open(path)?, path.display().to_string())),
        })
    }

    /// Keeps nothing (the pipeline still counts and logs each one).
    pub fn discard() -> Self {
        JsonlDeadLetterSink { target: None }
    }
}

impl DeadLetterSink for JsonlDeadLetterSink {
    fn send(&mut self, dl: &DeadLetter<'_>) -> Result<(), SinkError> {
        let Some((t, name)) = &mut self.target else {
            return Ok(());
        };
        let (bytes, len, truncated) = match dl.payload {
            Payload::Data(b) => (b, b.len(), false),
            Payload::Oversize { len, prefix } => (prefix, len, true),
        };
        let text = std::str::from_utf8(bytes).ok();
        let line = DeadLetterLine {
            source: dl.source,
            offset: dl.pos.offset,
            error_kind: dl.error.kind(),
            error: dl.error.to_string(),
            len,
            truncated,
            raw: text,
            raw_base64: text.is_none().then(|| base64(bytes)),
        };
        let w = t.writer();
        serde_json::to_writer(&mut *w, &line)
            .map_err(std::io::Error::from)
            .and_then(|_| w.write_all(b"\n"))
            .map_err(|source| SinkError::Io {
                what: name.clone(),
                source,
            })
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        match &mut self.target {
            Some((t, name)) => t.sync().map_err(|source| SinkError::Io {
                what: name.clone(),
                source,
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
