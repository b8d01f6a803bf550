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
    fn stdout() -> Self {
        Target::Stdout(BufWriter::with_capacity(1 << 16, std::io::stdout()))
    }

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

/// Whether an output path means standard output: "-", as a command line
/// says it.
pub fn is_stdout(path: &Path) -> bool {
    path.as_os_str() == "-"
}

/// The file at `path`, appended to; "-" is standard output.
fn open(path: &Path) -> Result<Target, SinkError> {
    if is_stdout(path) {
        return Ok(Target::stdout());
    }
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

/// What errors call the output at `path`.
fn name(path: &Path) -> String {
    match is_stdout(path) {
        true => "stdout".into(),
        false => path.display().to_string(),
    }
}

/// Alerts as JSON lines, appended to a file or written to stdout.
pub struct JsonlAlertSink {
    target: Target,
    name: String,
}

impl JsonlAlertSink {
    pub fn stdout() -> Self {
        JsonlAlertSink {
            target: Target::stdout(),
            name: "stdout".into(),
        }
    }

    /// Appends to the file at `path` ("-": stdout).
    pub fn file(path: &Path) -> Result<Self, SinkError> {
        Ok(JsonlAlertSink {
            target: open(path)?,
            name: name(path),
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
    /// Appends to the file at `path` ("-": stdout).
    pub fn file(path: &Path) -> Result<Self, SinkError> {
        Ok(JsonlDeadLetterSink {
            target: Some((open(path)?, name(path))),
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
            raw_base64: text.is_none().then(|| {
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(bytes)
            }),
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
