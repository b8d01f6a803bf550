//! JSON-lines input: files, or standard input.

use std::io::Read;

use super::{Payload, Poll, Record, Source, SourceError};
use crate::detect::Position;

/// Bytes of an oversize line kept for the dead-letter record.
const OVERSIZE_PREFIX: usize = 1024;

/// Whether a line holds nothing but white space (checked from the front, so
/// a normal line costs one byte of looking).
#[inline]
pub fn is_blank(b: &[u8]) -> bool {
    match b.first() {
        None => true,
        Some(c) if !c.is_ascii_whitespace() => false,
        Some(_) => b.iter().all(|c| c.is_ascii_whitespace()),
    }
}

/// One line of input, borrowed from the reader's buffer.
#[derive(Debug)]
pub enum Line<'a> {
    Data(&'a [u8]),
    Oversize { len: usize, prefix: &'a [u8] },
}

/// Splits a byte stream into lines without ever holding more than
/// `max_line + buffer` bytes: a longer line is skipped (its length and first
/// bytes are reported) instead of being buffered.
pub struct LineReader<R: Read> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    max_line: usize,
    /// Bytes of the current oversize line skipped so far, if skipping.
    skipping: Option<usize>,
    prefix: Vec<u8>,
    /// Whether the start of the input was checked for a byte-order mark.
    bom_checked: bool,
}

/// The UTF-8 byte-order mark some editors and Windows tools put first.
const BOM: &[u8] = b"\xEF\xBB\xBF";

impl<R: Read> LineReader<R> {
    pub fn new(inner: R, max_line: usize) -> Self {
        LineReader {
            inner,
            // allocated at the first read: a scan of many files holds the
            // buffer of the one it reads
            buf: Vec::new(),
            start: 0,
            end: 0,
            eof: false,
            max_line,
            skipping: None,
            prefix: Vec::new(),
            bom_checked: false,
        }
    }

    /// The next line, without its `\n`; `None` at end of input. A UTF-8
    /// byte-order mark at the very start of the input is skipped.
    pub fn next_line(&mut self) -> std::io::Result<Option<Line<'_>>> {
        loop {
            if !self.bom_checked && (self.end - self.start >= BOM.len() || self.eof) {
                self.bom_checked = true;
                if self.buf[self.start..self.end].starts_with(BOM) {
                    self.start += BOM.len();
                }
            }
            // with fewer than three bytes so far, read more before looking
            let newline = match self.bom_checked {
                true => memchr::memchr(b'\n', &self.buf[self.start..self.end]),
                false => None,
            };
            if let Some(i) = newline {
                let (s, e) = (self.start, self.start + i);
                self.start = e + 1;
                return Ok(Some(self.finish(s, e)));
            }
            if self.eof {
                if self.start < self.end || self.skipping.is_some() {
                    let (s, e) = (self.start, self.end);
                    self.start = self.end;
                    return Ok(Some(self.finish(s, e)));
                }
                return Ok(None);
            }
            let pending = self.end - self.start;
            if self.skipping.is_some() || pending > self.max_line {
                // an oversize line: remember its start, then drop what is buffered
                let skipped = self.skipping.get_or_insert(0);
                if *skipped == 0 {
                    self.prefix.clear();
                    let n = pending.min(OVERSIZE_PREFIX);
                    self.prefix
                        .extend_from_slice(&self.buf[self.start..self.start + n]);
                }
                *skipped += pending;
                self.start = 0;
                self.end = 0;
            } else if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buf.is_empty() {
                // small enough to stay in the L2 cache while it is parsed
                self.buf = vec![0; (self.max_line + 1).max(256 << 10).next_power_of_two()];
            }
            let n = loop {
                match self.inner.read(&mut self.buf[self.end..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                self.eof = true;
            }
            self.end += n;
        }
    }

    fn finish(&mut self, s: usize, e: usize) -> Line<'_> {
        match self.skipping.take() {
            Some(skipped) => {
                if self.prefix.is_empty() {
                    let n = (e - s).min(OVERSIZE_PREFIX);
                    self.prefix.extend_from_slice(&self.buf[s..s + n]);
                }
                Line::Oversize {
                    len: skipped + (e - s),
                    prefix: &self.prefix,
                }
            }
            None if e - s > self.max_line => {
                let n = (e - s).min(OVERSIZE_PREFIX);
                Line::Oversize {
                    len: e - s,
                    prefix: &self.buf[s..s + n],
                }
            }
            None => Line::Data(&self.buf[s..e]),
        }
    }
}

/// The first bytes of a gzip member (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// An input as its records are read: a gzip stream (a log rotated and
/// compressed by logrotate, `access.log.2.gz`) decompressed on the fly,
/// recognised by its first bytes, not its name; anything else as it is.
/// Concatenated gzip members (`cat a.gz b.gz`) are read one after another,
/// as `zcat` does. Line numbers, and so positions, count the decompressed
/// lines.
pub fn decompressed<R: Read + Send + 'static>(r: R) -> std::io::Result<Box<dyn Read + Send>> {
    use std::io::BufRead;
    // small: a read at least this large skips the buffer once it is empty
    let mut r = std::io::BufReader::with_capacity(8 << 10, r);
    let head = loop {
        match r.fill_buf() {
            Ok(b) => break b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    };
    if head.starts_with(&GZIP_MAGIC) {
        Ok(Box::new(Gzip(flate2::bufread::MultiGzDecoder::new(r))))
    } else {
        Ok(Box::new(r))
    }
}

/// How an input is opened, when it is first read.
type Opener = Box<dyn FnOnce() -> std::io::Result<Box<dyn Read + Send>> + Send>;

/// An input opened at its first read (then read as [`decompressed`] says):
/// a scan over thousands of rotated files holds one of them open at a time,
/// not a file descriptor (and a decoder) each from the start, which would
/// run into the process's limit of open files; and stdin is not read
/// before the scan starts.
pub fn deferred(
    open: impl FnOnce() -> std::io::Result<Box<dyn Read + Send>> + Send + 'static,
) -> Box<dyn Read + Send> {
    Box::new(Deferred {
        open: Some(Box::new(open)),
        inner: None,
    })
}

struct Deferred {
    open: Option<Opener>,
    inner: Option<Box<dyn Read + Send>>,
}

impl Read for Deferred {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if let Some(open) = self.open.take() {
            self.inner = Some(open()?);
        }
        match &mut self.inner {
            Some(r) => r.read(out),
            None => Err(std::io::Error::other("the input could not be opened")),
        }
    }
}

/// A gzip input; its errors say that the input was read as gzip.
struct Gzip<R: std::io::BufRead>(flate2::bufread::MultiGzDecoder<R>);

impl<R: std::io::BufRead> Read for Gzip<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(out).map_err(|e| {
            let what = match e.kind() {
                std::io::ErrorKind::UnexpectedEof => "the stream ends inside a member \
                     (truncated, or still being written)"
                    .to_string(),
                _ => e.to_string(),
            };
            std::io::Error::new(e.kind(), format!("gzip-compressed input: {what}"))
        })
    }
}

/// One named input.
pub struct Input {
    /// Shown in dead letters and logs: the path, or `-` for stdin.
    pub name: String,
    /// The source id this input's positions carry.
    pub source_id: u32,
    pub reader: Box<dyn Read + Send>,
}

/// An input being read: name, source id, lines.
type OpenInput = (String, u32, LineReader<Box<dyn Read + Send>>);

/// JSON-lines files read one after another; positions are 1-based line numbers.
pub struct FileSource {
    inputs: std::collections::VecDeque<OpenInput>,
    line: u64,
}

impl FileSource {
    pub fn new(inputs: Vec<Input>, max_line: usize) -> Self {
        FileSource {
            inputs: inputs
                .into_iter()
                .map(|i| (i.name, i.source_id, LineReader::new(i.reader, max_line)))
                .collect(),
            line: 0,
        }
    }
}

impl Source for FileSource {
    fn poll(&mut self, max: usize, f: &mut dyn FnMut(Record<'_>)) -> Result<Poll, SourceError> {
        let mut n = 0;
        while n < max {
            let Some((name, id, reader)) = self.inputs.front_mut() else {
                return Ok(Poll::End);
            };
            let id = *id;
            match reader.next_line() {
                Ok(Some(line)) => {
                    self.line += 1;
                    let pos = Position::new(id, self.line);
                    let payload = match line {
                        Line::Data(b) => {
                            // a blank line (e.g. a trailing one) is no record
                            if is_blank(b) {
                                continue;
                            }
                            Payload::Data(b)
                        }
                        Line::Oversize { len, prefix } => Payload::Oversize { len, prefix },
                    };
                    f(Record::new(pos, payload));
                    n += 1;
                }
                Ok(None) => {
                    self.inputs.pop_front();
                    self.line = 0;
                }
                Err(source) => {
                    return Err(SourceError::Io {
                        name: name.clone(),
                        source,
                    })
                }
            }
        }
        Ok(if self.inputs.is_empty() {
            Poll::End
        } else {
            Poll::More
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut r = LineReader::new(input, max);
        let mut out = vec![];
        while let Some(l) = r.next_line().unwrap() {
            out.push(match l {
                Line::Data(b) => String::from_utf8_lossy(b).into_owned(),
                Line::Oversize { len, prefix } => format!("<{len}:{}>", prefix.len()),
            });
        }
        out
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_skipped() {
        assert_eq!(lines(b"\xEF\xBB\xBFa\nb\n", 10), vec!["a", "b"]);
        assert_eq!(lines(b"\xEF\xBB\xBF", 10), Vec::<String>::new());
        assert_eq!(lines(b"\xEF\xBB\xBF\n", 10), vec![""]);
        // only at the very start
        assert_eq!(
            lines(b"a\n\xEF\xBB\xBFb", 10),
            vec!["a".to_string(), "\u{feff}b".into()]
        );
        // read one byte at a time, it is still found
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                match self.0.split_first() {
                    Some((b, rest)) if !out.is_empty() => {
                        out[0] = *b;
                        self.0 = rest;
                        Ok(1)
                    }
                    _ => Ok(0),
                }
            }
        }
        let mut r = LineReader::new(Trickle(b"\xEF\xBB\xBFx\ny"), 10);
        let mut got = vec![];
        while let Some(Line::Data(b)) = r.next_line().unwrap() {
            got.push(String::from_utf8_lossy(b).into_owned());
        }
        assert_eq!(got, vec!["x", "y"]);
    }

    #[test]
    fn splits_lines_and_keeps_a_last_line_without_newline() {
        assert_eq!(lines(b"a\nbb\n\nccc", 10), vec!["a", "bb", "", "ccc"]);
        assert_eq!(lines(b"a\n", 10), vec!["a"]);
        assert!(lines(b"", 10).is_empty());
    }

    #[test]
    fn oversize_lines_are_skipped_with_bounded_memory() {
        // small buffer: the reader's buffer is at least 1 MiB, so use a bigger line
        let big = vec![b'x'; 3 << 20];
        let mut input = b"ok\n".to_vec();
        input.extend_from_slice(&big);
        input.extend_from_slice(b"\nafter\n");
        input.extend_from_slice(&big);
        let out = lines(&input, 1000);
        assert_eq!(
            out,
            vec![
                "ok".to_string(),
                format!("<{}:1024>", 3 << 20),
                "after".into(),
                format!("<{}:1024>", 3 << 20)
            ]
        );
        // just over the limit, inside one buffer
        assert_eq!(
            lines(b"12345\n123456\n", 5),
            vec!["12345".to_string(), "<6:6>".into()]
        );
    }

    #[test]
    fn file_source_numbers_lines_per_input() {
        let mut s = FileSource::new(
            vec![
                Input {
                    name: "a".into(),
                    source_id: 1,
                    reader: Box::new(&b"x\n\ny\n"[..]),
                },
                Input {
                    name: "b".into(),
                    source_id: 2,
                    reader: Box::new(&b"z"[..]),
                },
            ],
            100,
        );
        let mut got = vec![];
        while s
            .poll(1, &mut |r| got.push((r.pos.source, r.pos.offset)))
            .unwrap()
            == Poll::More
        {}
        assert_eq!(got, vec![(1, 1), (1, 3), (2, 1)]);
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn read_all(r: &mut dyn Read) -> std::io::Result<Vec<u8>> {
        let mut out = vec![];
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn gzip_input_is_read_decompressed_and_other_input_as_it_is() {
        let text = b"{\"a\":1}\n{\"b\":2}\n".repeat(5_000);
        let gz = gzip(&text);
        assert!(gz.len() < text.len() / 10);
        assert_eq!(
            read_all(&mut *decompressed(std::io::Cursor::new(gz.clone())).unwrap()).unwrap(),
            text
        );
        // two members one after another, as `cat a.gz b.gz` makes them
        let mut two = gz.clone();
        two.extend(gzip(b"last\n"));
        let mut want = text.clone();
        want.extend(b"last\n");
        assert_eq!(
            read_all(&mut *decompressed(std::io::Cursor::new(two)).unwrap()).unwrap(),
            want
        );
        // plain input, an empty one and one starting with the first magic byte only
        for plain in [&text[..], b"", b"\x1f", b"\x1fx\n"] {
            let got = read_all(&mut *decompressed(std::io::Cursor::new(plain.to_vec())).unwrap())
                .unwrap();
            assert_eq!(got, plain);
        }
        // through the line reader, the lines of the text
        let mut r = LineReader::new(
            decompressed(std::io::Cursor::new(gzip(b"x\ny\n"))).unwrap(),
            100,
        );
        assert!(matches!(r.next_line().unwrap(), Some(Line::Data(b"x"))));
        assert!(matches!(r.next_line().unwrap(), Some(Line::Data(b"y"))));
        assert!(r.next_line().unwrap().is_none());
    }

    #[test]
    fn a_deferred_input_is_opened_at_its_first_read_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let opened = Arc::new(AtomicUsize::new(0));
        let o = opened.clone();
        let mut r = deferred(move || {
            o.fetch_add(1, Ordering::SeqCst);
            decompressed(std::io::Cursor::new(gzip(b"a\nb\n")))
        });
        assert_eq!(opened.load(Ordering::SeqCst), 0, "not before it is read");
        assert_eq!(read_all(&mut *r).unwrap(), b"a\nb\n");
        assert_eq!(opened.load(Ordering::SeqCst), 1);
        // an input that cannot be opened is an error when it is read
        let mut gone = deferred(|| {
            std::fs::File::open("/nonexistent/replayguard-input")
                .map(|f| Box::new(f) as Box<dyn Read + Send>)
        });
        let e = read_all(&mut *gone).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert!(read_all(&mut *gone).is_err(), "and stays one");
    }

    #[test]
    fn a_truncated_or_corrupt_gzip_input_is_an_error_that_says_gzip() {
        let text = b"{\"a\":1}\n".repeat(10_000);
        let gz = gzip(&text);
        let truncated = gz[..gz.len() / 2].to_vec();
        let e = read_all(&mut *decompressed(std::io::Cursor::new(truncated)).unwrap()).unwrap_err();
        assert!(e.to_string().contains("gzip-compressed input"), "{e}");
        assert!(e.to_string().contains("truncated"), "{e}");
        let mut corrupt = gz.clone();
        let mid = corrupt.len() / 2;
        corrupt[mid..mid + 16].fill(0xff);
        let e = read_all(&mut *decompressed(std::io::Cursor::new(corrupt)).unwrap()).unwrap_err();
        assert!(e.to_string().contains("gzip-compressed input"), "{e}");
    }
}
