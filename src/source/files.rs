//! JSON-lines input: files, or standard input.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use memmap2::Mmap;

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
    /// A line seen to be plain while its end was looked for (as
    /// [`crate::decode::plain`] says: ASCII, no control character, no
    /// backslash), which the decoder then need not look at again.
    Plain(&'a [u8]),
    Oversize {
        len: usize,
        prefix: &'a [u8],
    },
}

/// The length of the line at the start of `rest` (up to its first `\n`, or
/// all of `rest`) and whether that line is plain ([`Line::Plain`]). One pass
/// for both, which a line end search and the decoder's look at every byte
/// had been: the first byte that is not plain ends a plain line when it is
/// the `\n`; any other makes the line not plain, and its end is then
/// looked for as before.
#[inline]
pub fn line_end(rest: &[u8]) -> (usize, bool) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above
        return unsafe { line_end_avx2(rest) };
    }
    line_end_any(rest)
}

/// Whether a byte keeps a line plain (the compare of [`crate::decode::plain`]:
/// as i8, 0x80..=0xff are negative, below 0x20 like the control characters).
#[inline(always)]
fn not_plain(c: u8) -> bool {
    ((c as i8) < 0x20) | (c == b'\\')
}

/// [`line_end`] from `at`, the first byte of `rest` that is not plain.
#[inline(always)]
fn line_end_at(rest: &[u8], at: usize) -> (usize, bool) {
    if rest[at] == b'\n' {
        (at, true)
    } else {
        let tail = &rest[at..];
        (
            at + memchr::memchr(b'\n', tail).unwrap_or(tail.len()),
            false,
        )
    }
}

/// [`line_end`], a byte at a time.
fn line_end_any(rest: &[u8]) -> (usize, bool) {
    match rest.iter().position(|&c| not_plain(c)) {
        Some(at) => line_end_at(rest, at),
        None => (rest.len(), true),
    }
}

/// [`line_end`], 64 bytes a step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn line_end_avx2(rest: &[u8]) -> (usize, bool) {
    use std::arch::x86_64::*;
    let n = rest.len();
    let p = rest.as_ptr();
    let below = _mm256_set1_epi8(0x20);
    let backslash = _mm256_set1_epi8(b'\\' as i8);
    // the bytes of a 32-byte block that are not plain, as a vector mask
    let odd =
        |v: __m256i| _mm256_or_si256(_mm256_cmpgt_epi8(below, v), _mm256_cmpeq_epi8(v, backslash));
    let mut i = 0;
    while i + 64 <= n {
        // SAFETY: i + 64 <= n: both 32-byte loads are inside `rest`
        let (a, b) = unsafe {
            (
                odd(_mm256_loadu_si256(p.add(i).cast())),
                odd(_mm256_loadu_si256(p.add(i + 32).cast())),
            )
        };
        if _mm256_movemask_epi8(_mm256_or_si256(a, b)) != 0 {
            let lo = _mm256_movemask_epi8(a) as u32 as u64;
            let hi = _mm256_movemask_epi8(b) as u32 as u64;
            return line_end_at(rest, i + (lo | hi << 32).trailing_zeros() as usize);
        }
        i += 64;
    }
    if i + 32 <= n {
        // SAFETY: i + 32 <= n: the load is inside `rest`
        let m = _mm256_movemask_epi8(odd(unsafe { _mm256_loadu_si256(p.add(i).cast()) }));
        if m != 0 {
            return line_end_at(rest, i + m.trailing_zeros() as usize);
        }
        i += 32;
    }
    let (len, plain) = line_end_any(&rest[i..]);
    (i + len, plain)
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

/// The lines of a plain file read through a memory map: each line is a slice
/// of the map, so a chunk can keep the map instead of copying its records
/// (without the copy from the page cache into a buffer, and from there into
/// a chunk, a one-core scan is 2-4 % faster: BENCHMARKS.md). Lines are split exactly as [`LineReader`]
/// splits them: on `\n`, a byte-order mark at the start skipped, a last line
/// without `\n` kept, a line longer than `max_line` reported by its length
/// and first bytes.
///
/// The map covers the file as it was when it was opened: lines appended
/// later are not read (a `scan` reads a snapshot). A file truncated while it
/// is mapped ends the process with SIGBUS, as it does ripgrep's; `scan.mmap
/// = false` reads such files with `read` instead.
pub struct MappedLines {
    map: Arc<Mmap>,
    pos: usize,
    max_line: usize,
    /// Pages below this offset were given back to the OS.
    released: usize,
    /// Pages are given back this far behind the line read, in steps of
    /// `release_step` bytes.
    release_lag: usize,
    release_step: usize,
    /// Pages below this offset were mapped ahead of the reader
    /// ([`POPULATE_STEP`]).
    populated: usize,
    /// Pages below this offset were asked to be read into the page cache
    /// ([`READ_AHEAD`]).
    requested: usize,
}

/// Mapped pages are given back this far behind the line being read (more
/// than the chunks in flight hold; a page given back too early is read
/// again from the page cache, not lost).
const RELEASE_LAG: usize = 8 << 20;
/// ... in steps of this many bytes.
const RELEASE_STEP: usize = 2 << 20;
/// Pages are mapped this far ahead of the line being read, in one call
/// ([`MappedLines::populate`]): 38 k page faults instead of 46 k in a
/// one-core scan of 1 M events (420 MB), 1.019x less CPU side by side.
const POPULATE_STEP: usize = 2 << 20;
/// The pages this far ahead of those mapped are asked for
/// (`MADV_WILLNEED`): the kernel reads them into the page cache in the
/// background, and the reader does not wait for the disk when it maps
/// them.
const READ_AHEAD: usize = 16 << 20;

impl MappedLines {
    /// Maps `file` when it is a non-empty regular file that is not gzip
    /// (`None`: read it with a [`LineReader`]).
    pub fn open(file: &std::fs::File, max_line: usize) -> std::io::Result<Option<Self>> {
        let meta = file.metadata()?;
        if !meta.is_file() || meta.len() == 0 || usize::try_from(meta.len()).is_err() {
            return Ok(None);
        }
        // SAFETY: the map is only read. Another process truncating the
        // file while it is mapped makes reading past the new end a SIGBUS;
        // rewriting bytes in place while they are read is outside what a
        // map may see (a line the reader found plain is taken as text
        // later): both documented (`scan.mmap`), as ripgrep documents its
        // maps. Log files are appended to, which a map never shows.
        let map = match unsafe { Mmap::map(file) } {
            Ok(m) => m,
            // a file system that cannot map files: read it
            Err(_) => return Ok(None),
        };
        if map.starts_with(&GZIP_MAGIC) {
            return Ok(None);
        }
        // read ahead, and let the kernel drop what was read
        let _ = map.advise(memmap2::Advice::Sequential);
        let pos = if map.starts_with(BOM) { BOM.len() } else { 0 };
        Ok(Some(MappedLines {
            map: Arc::new(map),
            pos,
            max_line,
            released: 0,
            release_lag: RELEASE_LAG,
            release_step: RELEASE_STEP,
            populated: 0,
            requested: 0,
        }))
    }

    /// Gives pages back `lag` bytes behind, every `step` bytes.
    #[cfg(test)]
    fn releasing(mut self, lag: usize, step: usize) -> Self {
        (self.release_lag, self.release_step) = (lag, step);
        self
    }

    /// The map the lines are slices of.
    pub fn map(&self) -> &Arc<Mmap> {
        &self.map
    }

    /// The next line, without its `\n`; `None` at the end.
    pub fn next_line(&mut self) -> Option<Line<'_>> {
        let rest = &self.map[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let (len, plain) = line_end(rest);
        let start = self.pos;
        self.pos += (len + 1).min(rest.len());
        if self.pos >= self.released + self.release_lag + self.release_step {
            self.release();
        }
        if self.pos + POPULATE_STEP > self.populated {
            self.populate();
        }
        let line = &self.map[start..start + len];
        Some(if len > self.max_line {
            Line::Oversize {
                len,
                prefix: &line[..OVERSIZE_PREFIX.min(len)],
            }
        } else if plain {
            Line::Plain(line)
        } else {
            Line::Data(line)
        })
    }

    /// Maps the next [`POPULATE_STEP`] bytes' pages ahead of the reader
    /// (`MADV_POPULATE_READ`, Linux 5.14 on): one call for them all instead
    /// of a page fault every 16 pages. Where the kernel cannot, the pages
    /// are faulted in as they are read, as before, and it is not asked again.
    fn populate(&mut self) {
        if self.populated >= self.map.len() {
            return;
        }
        let len = POPULATE_STEP.min(self.map.len() - self.populated);
        // what the reader comes to next, read from disk meanwhile if it is
        // not in the page cache (asynchronously: populating a page that is
        // not in memory waits for the disk)
        let ahead = (self.populated + READ_AHEAD).min(self.map.len());
        if ahead > self.requested {
            let _ = self.map.advise_range(
                memmap2::Advice::WillNeed,
                self.requested,
                ahead - self.requested,
            );
            self.requested = ahead;
        }
        #[cfg(target_os = "linux")]
        let done = self
            .map
            .advise_range(memmap2::Advice::PopulateRead, self.populated, len)
            .is_ok();
        #[cfg(not(target_os = "linux"))]
        let done = false;
        self.populated = if done {
            self.populated + len
        } else {
            self.map.len()
        };
    }

    /// Gives back the pages read long enough ago: a mapped file's pages
    /// count in the process's resident memory while they are mapped.
    fn release(&mut self) {
        let page = page_size();
        let upto = (self.pos - self.release_lag) / page * page;
        if upto > self.released {
            // SAFETY: MADV_DONTNEED on a shared read-only file mapping only
            // unmaps the pages: a later read maps them again from the page
            // cache, with the same bytes (the chunks still in flight that
            // hold lines there read them again, unchanged).
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    self.released,
                    upto - self.released,
                )
            };
            self.released = upto;
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
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
    /// The regular file `reader` reads, if it is one: mapped instead of
    /// read when the source maps files ([`FileSource::map_files`]) and it
    /// is not gzip.
    pub file: Option<PathBuf>,
}

/// How an input's lines are read.
enum Lines {
    /// Not read yet (mapped or opened at its first read: a scan of
    /// thousands of files holds one open at a time).
    Pending {
        reader: Box<dyn Read + Send>,
        file: Option<PathBuf>,
    },
    Read(LineReader<Box<dyn Read + Send>>),
    Mapped(MappedLines),
}

/// An input being read: name, source id, lines.
type OpenInput = (String, u32, Lines);

/// JSON-lines files read one after another; positions are 1-based line numbers.
pub struct FileSource {
    inputs: std::collections::VecDeque<OpenInput>,
    line: u64,
    max_line: usize,
    map_files: bool,
}

impl FileSource {
    pub fn new(inputs: Vec<Input>, max_line: usize) -> Self {
        FileSource {
            inputs: inputs
                .into_iter()
                .map(|i| {
                    let lines = Lines::Pending {
                        reader: i.reader,
                        file: i.file,
                    };
                    (i.name, i.source_id, lines)
                })
                .collect(),
            line: 0,
            max_line,
            map_files: false,
        }
    }

    /// Reads plain regular files through a memory map ([`MappedLines`]).
    pub fn map_files(mut self, on: bool) -> Self {
        self.map_files = on;
        self
    }

    /// The next line of the first input, opening it at its first read.
    fn next_line(
        lines: &mut Lines,
        max_line: usize,
        map_files: bool,
    ) -> std::io::Result<Option<Line<'_>>> {
        if let Lines::Pending { reader, file } = lines {
            let mapped = match file.take() {
                Some(path) if map_files => {
                    MappedLines::open(&std::fs::File::open(path)?, max_line)?
                }
                _ => None,
            };
            *lines = match mapped {
                Some(m) => Lines::Mapped(m),
                None => {
                    let reader = std::mem::replace(reader, Box::new(std::io::empty()));
                    Lines::Read(LineReader::new(reader, max_line))
                }
            };
        }
        match lines {
            Lines::Read(r) => r.next_line(),
            Lines::Mapped(m) => Ok(m.next_line()),
            Lines::Pending { .. } => unreachable!("opened above"),
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
            match Self::next_line(reader, self.max_line, self.map_files) {
                Ok(Some(line)) => {
                    self.line += 1;
                    let pos = Position::new(id, self.line);
                    let (payload, plain) = match line {
                        // a blank line (e.g. a trailing one) is no record
                        Line::Data(b) | Line::Plain(b) if is_blank(b) => continue,
                        Line::Data(b) => (Payload::Data(b), false),
                        Line::Plain(b) => (Payload::Data(b), true),
                        Line::Oversize { len, prefix } => {
                            (Payload::Oversize { len, prefix }, false)
                        }
                    };
                    f(Record {
                        plain,
                        ..Record::new(pos, payload)
                    });
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

    fn mapping(&self) -> Option<&Arc<Mmap>> {
        match self.inputs.front() {
            Some((_, _, Lines::Mapped(m))) => Some(m.map()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as the tests compare it: its text, or `<len:prefix length>`.
    fn shown(l: Line<'_>) -> String {
        match l {
            Line::Data(b) | Line::Plain(b) => String::from_utf8_lossy(b).into_owned(),
            Line::Oversize { len, prefix } => format!("<{len}:{}>", prefix.len()),
        }
    }

    /// What [`line_end`] must say: the first `\n`, and
    /// [`crate::decode::plain`] of the line before it.
    fn line_end_reference(rest: &[u8]) -> (usize, bool) {
        let len = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        (len, crate::decode::plain(&rest[..len]))
    }

    fn check_line_end(rest: &[u8]) {
        let want = line_end_reference(rest);
        assert_eq!(line_end(rest), want, "{rest:?}");
        assert_eq!(line_end_any(rest), want, "{rest:?}");
    }

    #[test]
    fn line_end_finds_each_kind_of_byte_at_every_place() {
        // every place of a 64-byte step, its 32-byte half and the tail
        for len in 0..=200 {
            check_line_end(&vec![b'a'; len]);
            for at in 0..len {
                for odd in [b'\n', b'\r', b'\\', 0, 0x1f, 0x7f, 0x80, 0xff, b' ', b'"'] {
                    let mut v = vec![b'a'; len];
                    v[at] = odd;
                    check_line_end(&v);
                    // a line end after it, and the same byte after the line end
                    if at + 1 < len {
                        v[len - 1] = b'\n';
                        check_line_end(&v);
                        v[len - 1] = b'a';
                        v[at] = b'\n';
                        v[len - 1] = odd;
                        check_line_end(&v);
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn line_end_is_the_line_end_and_plain(
            rest in proptest::collection::vec(
                proptest::prop_oneof![
                    8 => 0x20u8..0x7f,
                    1 => proptest::prelude::any::<u8>(),
                    1 => proptest::prelude::Just(b'\n'),
                ],
                0..400,
            )
        ) {
            check_line_end(&rest);
        }
    }

    fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut r = LineReader::new(input, max);
        let mut out = vec![];
        while let Some(l) = r.next_line().unwrap() {
            out.push(shown(l));
        }
        out
    }

    /// "ok", a 3 MiB line, "after", a 3 MiB line without its newline.
    fn two_oversize_lines() -> Vec<u8> {
        let big = vec![b'x'; 3 << 20];
        let mut input = b"ok\n".to_vec();
        input.extend_from_slice(&big);
        input.extend_from_slice(b"\nafter\n");
        input.extend_from_slice(&big);
        input
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
        let out = lines(&two_oversize_lines(), 1000);
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

    /// The lines of `input` read through a map (`None`: not mapped).
    fn mapped_lines(input: &[u8], max: usize, release: Option<usize>) -> Option<Vec<String>> {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, input).unwrap();
        let mut r = MappedLines::open(&f, max).unwrap()?;
        if let Some(step) = release {
            r = r.releasing(step, step);
        }
        let mut out = vec![];
        while let Some(l) = r.next_line() {
            out.push(shown(l));
        }
        Some(out)
    }

    #[test]
    fn a_mapped_file_splits_into_the_lines_the_reader_gives() {
        let long = two_oversize_lines();
        let cases: Vec<(&[u8], usize)> = vec![
            (b"a\nbb\n\nccc", 10),
            (b"a\n", 10),
            (b"\n", 10),
            (b"\n\n", 10),
            (b"a\r\nb\r\n", 10),
            (b"\xEF\xBB\xBFa\nb\n", 10),
            (b"\xEF\xBB\xBF", 10),
            (b"\xEF\xBB\xBF\n", 10),
            (b"\xEF\xBB", 10),
            (b"a\n\xEF\xBB\xBFb", 10),
            (b"12345\n123456\n", 5),
            (b"123456", 5),
            (b"\x1f", 10),
            (b"\x1fx\n", 10),
            (&long, 1000),
        ];
        for (input, max) in cases {
            assert_eq!(
                mapped_lines(input, max, None).unwrap(),
                lines(input, max),
                "{:?}",
                String::from_utf8_lossy(&input[..input.len().min(40)])
            );
        }
        // random lines of random lengths around the limit, blank ones and
        // a missing last newline among them
        let mut seed = 7u64;
        for _ in 0..200 {
            let mut input = vec![];
            for _ in 0..(seed % 40) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let len = (seed >> 33) as usize % 24;
                input.extend((0..len).map(|i| [b'a', b' ', b'\r', b'{'][(i + len) % 4]));
                if seed & 1 == 0 || input.is_empty() {
                    input.push(b'\n');
                }
            }
            if input.is_empty() {
                continue;
            }
            assert_eq!(mapped_lines(&input, 12, None).unwrap(), lines(&input, 12));
        }
        // empty and gzip files are not mapped (read as they are, decompressed)
        assert!(mapped_lines(b"", 10, None).is_none());
        assert!(mapped_lines(&gzip(b"a\n"), 10, None).is_none());
    }

    #[test]
    fn pages_given_back_behind_a_mapped_file_are_read_again_unchanged() {
        let text: Vec<u8> = (0..50_000)
            .flat_map(|i| {
                format!("{{\"line\":{i},\"pad\":\"{}\"}}\n", "p".repeat(i % 90)).into_bytes()
            })
            .collect();
        assert!(text.len() > 40 * page_size());
        let want = lines(&text, 1000);
        // given back a page behind, every page: what was read is read again
        assert_eq!(mapped_lines(&text, 1000, Some(page_size())).unwrap(), want);
        // a line kept from before the release reads the same bytes after it
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &text).unwrap();
        let mut r = MappedLines::open(&f, 1000)
            .unwrap()
            .unwrap()
            .releasing(page_size(), page_size());
        let map = r.map().clone();
        let Some(Line::Plain(first)) = r.next_line() else {
            panic!()
        };
        let (at, len) = (first.as_ptr() as usize - map.as_ptr() as usize, first.len());
        while r.next_line().is_some() {}
        assert!(r.released > 10 * page_size(), "{}", r.released);
        assert_eq!(&map[at..at + len], want[0].as_bytes());
    }

    #[test]
    fn a_mapped_input_reads_as_the_same_records_as_a_read_one() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a.jsonl");
        std::fs::write(&plain, b"\xEF\xBB\xBFx\n\n  \ny\n1234567890123\nz").unwrap();
        let gz = dir.path().join("b.jsonl.gz");
        std::fs::write(&gz, gzip(b"g1\ng2\n")).unwrap();
        let empty = dir.path().join("c.jsonl");
        std::fs::write(&empty, b"").unwrap();
        let read = |map: bool| {
            let inputs = [&plain, &gz, &empty, &plain]
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let path = (*p).clone();
                    Input {
                        name: p.display().to_string(),
                        source_id: i as u32,
                        reader: deferred(move || decompressed(std::fs::File::open(path)?)),
                        file: Some((*p).clone()),
                    }
                })
                .collect();
            let mut s = FileSource::new(inputs, 10).map_files(map);
            let mut got = vec![];
            let mut mapped = 0;
            loop {
                mapped += s.mapping().is_some() as usize;
                let more = s
                    .poll(1, &mut |r| got.push(format!("{:?} {:?}", r.pos, r.payload)))
                    .unwrap();
                if more == Poll::End {
                    break;
                }
            }
            (got, mapped)
        };
        let (mapped, maps) = read(true);
        let (copied, none) = read(false);
        assert_eq!(mapped, copied);
        assert_eq!(none, 0);
        assert!(maps > 0);
        assert_eq!(mapped.len(), 2 * 4 + 2, "{mapped:?}");
    }

    #[test]
    fn file_source_numbers_lines_per_input() {
        let mut s = FileSource::new(
            vec![
                Input {
                    name: "a".into(),
                    source_id: 1,
                    reader: Box::new(&b"x\n\ny\n"[..]),
                    file: None,
                },
                Input {
                    name: "b".into(),
                    source_id: 2,
                    reader: Box::new(&b"z"[..]),
                    file: None,
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
