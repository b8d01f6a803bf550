//! Records travel between the pipeline's threads in chunks: a
//! [`RawChunk`] owns the bytes of up to `pipeline.chunk_events` records (or
//! holds the memory map of the file they are lines of) and where each came
//! from; a [`DecodedChunk`] adds the decoded events, which
//! borrow their strings from those bytes (no copy per field, and the bytes
//! are freed once, with the chunk).
//!
//! [`DecodePool`] decodes chunks on `pipeline.threads` threads and hands
//! them back in the order they were submitted, with at most
//! `pipeline.queue_chunks` in flight (backpressure: the reader waits).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::decode::{DecodeError, Decoder};
use crate::detect::Position;
use crate::schema::AccessEvent;
use crate::source::{MessageKey, Payload, Record};

/// Where one record of a [`RawChunk`] came from and where its bytes are.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord {
    /// The engine stream the record belongs to (a file scan, a partition).
    pub stream: u32,
    pub pos: Position,
    /// The payload in the chunk's buffer (only the first bytes of an
    /// oversize record).
    start: u32,
    len: u32,
    /// Its whole length when it was over the decoder's limit.
    oversize: Option<usize>,
    /// Whether the payload is in the chunk's map (at `start` from its
    /// base), not in its buffer.
    mapped: bool,
    /// The message key in the buffer: `None` for keyless sources,
    /// `Some(None)` for a Kafka message without a key.
    key: Option<Option<(u32, u32)>>,
    /// [`Record::plain`].
    plain: bool,
}

impl RawRecord {
    /// Where the message key is (`Some(None)`: a message without a key;
    /// `None`: the source has no keys).
    #[inline]
    pub fn message_key(&self) -> Option<Option<(u32, u32)>> {
        self.key
    }
}

/// The bytes of up to `pipeline.chunk_events` records, with their positions.
#[derive(Debug, Default)]
pub struct RawChunk {
    buf: Vec<u8>,
    recs: Vec<RawRecord>,
    /// Where its buffers go when it is dropped ([`ChunkBuffers`]).
    home: Option<Sender<Buffers>>,
    /// The mapped input its uncopied records lie in ([`RawChunk::keep_map`]).
    map: Option<ChunkMap>,
    /// Bytes of its records in the map.
    mapped_bytes: usize,
}

/// A mapped input a chunk holds, and the offset its records' starts count
/// from (the first one's, so that a start fits 32 bits in any file).
#[derive(Debug)]
struct ChunkMap {
    map: Arc<memmap2::Mmap>,
    base: Option<usize>,
}

/// A chunk's two buffers, empty, with their capacity.
type Buffers = (Vec<u8>, Vec<RawRecord>);

/// A buffer larger than this is not kept for another chunk (a chunk cut by
/// records, not bytes, of very long records).
const KEEP_BYTES: usize = 4 << 20;

impl Drop for RawChunk {
    fn drop(&mut self) {
        if let Some(home) = self.home.take() {
            if self.buf.capacity() <= KEEP_BYTES {
                let (mut buf, mut recs) = (
                    std::mem::take(&mut self.buf),
                    std::mem::take(&mut self.recs),
                );
                buf.clear();
                recs.clear();
                // full (the reader holds enough): this one is freed
                let _ = home.try_send((buf, recs));
            }
        }
    }
}

/// The buffers of dropped chunks, for the reader's next ones. A chunk is
/// filled on the reading thread and dropped on a detect worker's; with a
/// fresh buffer each time, its megabyte came from the OS again and again
/// (page faults, zeroed pages) and the copy of each record into it wrote
/// to memory no cache held.
#[derive(Debug)]
pub struct ChunkBuffers {
    tx: Sender<Buffers>,
    rx: Receiver<Buffers>,
}

impl ChunkBuffers {
    /// Keeps at most `keep` buffers (beyond those of chunks in flight).
    pub fn new(keep: usize) -> Self {
        let (tx, rx) = bounded(keep.max(1));
        ChunkBuffers { tx, rx }
    }

    /// An empty chunk with room for `records` records and `bytes` bytes, in
    /// a dropped chunk's buffers when there is one.
    pub fn chunk(&self, records: usize, bytes: usize) -> RawChunk {
        let (mut buf, mut recs) = self.rx.try_recv().unwrap_or_default();
        buf.reserve(bytes);
        recs.reserve(records);
        RawChunk {
            buf,
            recs,
            home: Some(self.tx.clone()),
            map: None,
            mapped_bytes: 0,
        }
    }
}

impl RawChunk {
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        RawChunk {
            buf: Vec::with_capacity(bytes),
            recs: Vec::with_capacity(records),
            home: None,
            map: None,
            mapped_bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.recs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// Bytes of its records (copied or mapped).
    pub fn bytes(&self) -> usize {
        self.buf.len() + self.mapped_bytes
    }

    /// Records pushed from now on that are slices of `map` are kept as
    /// places in it, not copied (a chunk keeps one map: records of another
    /// input are copied).
    pub fn keep_map(&mut self, map: &Arc<memmap2::Mmap>) {
        if self.map.is_none() {
            self.map = Some(ChunkMap {
                map: map.clone(),
                base: None,
            });
        }
    }

    /// Where `bytes` are in the chunk's map, as a start from its base.
    fn in_map(&mut self, bytes: &[u8]) -> Option<u32> {
        let m = self.map.as_mut()?;
        let at = (bytes.as_ptr() as usize).checked_sub(m.map.as_ptr() as usize)?;
        if at + bytes.len() > m.map.len() {
            return None;
        }
        let base = *m.base.get_or_insert(at);
        let start = u32::try_from(at.checked_sub(base)?).ok()?;
        start.checked_add(u32::try_from(bytes.len()).ok()?)?;
        Some(start)
    }

    /// Adds a record: its bytes are copied in, unless they lie in the map
    /// the chunk keeps.
    pub fn push(&mut self, stream: u32, rec: &Record<'_>) {
        let (bytes, oversize) = match rec.payload {
            Payload::Data(b) => (b, None),
            Payload::Oversize { len, prefix } => (prefix, Some(len)),
        };
        let (start, mapped) = match self.in_map(bytes) {
            Some(start) => {
                self.mapped_bytes += bytes.len();
                (start, true)
            }
            None => {
                let start = self.buf.len() as u32;
                self.buf.extend_from_slice(bytes);
                (start, false)
            }
        };
        let key = match rec.key {
            MessageKey::None => None,
            MessageKey::Absent => Some(None),
            MessageKey::Present(k) => {
                let ks = self.buf.len() as u32;
                self.buf.extend_from_slice(k);
                Some(Some((ks, k.len() as u32)))
            }
        };
        self.recs.push(RawRecord {
            stream,
            pos: rec.pos,
            start,
            len: bytes.len() as u32,
            oversize,
            mapped,
            key,
            plain: rec.plain,
        });
    }

    /// Bytes of the buffer at (start, length).
    #[inline]
    pub fn slice(&self, (start, len): (u32, u32)) -> &[u8] {
        &self.buf[start as usize..(start + len) as usize]
    }

    pub fn records(&self) -> &[RawRecord] {
        &self.recs
    }

    /// The payload bytes of `r`: in the chunk's map, or in its buffer.
    #[inline]
    fn payload_of(&self, r: &RawRecord) -> &[u8] {
        if r.mapped {
            if let Some(ChunkMap {
                map,
                base: Some(base),
            }) = &self.map
            {
                let s = base + r.start as usize;
                return &map[s..s + r.len as usize];
            }
        }
        &self.buf[r.start as usize..(r.start + r.len) as usize]
    }

    /// Record `i` as the rest of the pipeline sees it.
    pub fn record(&self, i: usize) -> Record<'_> {
        let r = &self.recs[i];
        let bytes = self.payload_of(r);
        Record {
            pos: r.pos,
            payload: match r.oversize {
                None => Payload::Data(bytes),
                Some(len) => Payload::Oversize { len, prefix: bytes },
            },
            key: match r.key {
                None => MessageKey::None,
                Some(None) => MessageKey::Absent,
                Some(Some((s, l))) => MessageKey::Present(&self.buf[s as usize..(s + l) as usize]),
            },
            plain: r.plain,
        }
    }
}

/// The decoded events of a chunk, borrowing from its bytes.
pub type Decoded<'a> = Vec<Result<AccessEvent<'a>, DecodeError>>;

/// What the router reads of a decoded request, written beside the events by
/// the thread that decoded them (while they are in its cache): the router
/// reads these few bytes per record instead of the events, which another
/// core wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    /// [`route_hash`] of the request.
    pub hash: u64,
    pub received_at: crate::schema::Millis,
}

/// The hash a request is routed to its shard by: of its key_id, or of its
/// event_id when it has none (each such request is a key of its own).
#[inline]
pub fn route_hash(key_id: Option<&str>, event_id: &str) -> u64 {
    match key_id {
        Some(k) => xxhash_rust::xxh3::xxh3_64_with_seed(k.as_bytes(), 0x6b6579),
        None => xxhash_rust::xxh3::xxh3_64_with_seed(event_id.as_bytes(), 0x657674),
    }
}

impl RouteInfo {
    fn of(ev: &AccessEvent<'_>) -> Self {
        RouteInfo {
            hash: route_hash(ev.key_id.as_deref(), &ev.event_id),
            received_at: ev.received_at,
        }
    }
}

/// A chunk's decoded records, and their [`RouteInfo`] (one per record,
/// `None` for a record that did not decode).
pub struct DecodedRecords<'a> {
    events: Decoded<'a>,
    routes: Vec<Option<RouteInfo>>,
}

self_cell::self_cell!(
    /// A [`RawChunk`] and its records decoded (one result per record).
    pub struct DecodedChunk {
        owner: RawChunk,
        #[covariant]
        dependent: DecodedRecords,
    }
);

impl DecodedChunk {
    /// Decodes every record of `raw`.
    pub fn decode(raw: RawChunk, decoder: &Decoder) -> DecodedChunk {
        DecodedChunk::new(raw, |raw| {
            let n = raw.len();
            let mut events: Decoded<'_> = Vec::with_capacity(n);
            // each event written in its slot (a `collect` had it written on
            // the stack, then copied its 248 bytes right after)
            for (i, slot) in events.spare_capacity_mut()[..n].iter_mut().enumerate() {
                decoder.decode_record_into(&raw.record(i), slot);
            }
            // SAFETY: the first `n` slots were written just above (a panic
            // there leaves the length at 0: the slots written leak, no more)
            unsafe { events.set_len(n) };
            let routes = events
                .iter()
                .map(|e| e.as_ref().ok().map(RouteInfo::of))
                .collect();
            DecodedRecords { events, routes }
        })
    }

    /// The [`RouteInfo`] of every record (`None`: it did not decode).
    pub fn routes(&self) -> &[Option<RouteInfo>] {
        &self.borrow_dependent().routes
    }

    pub fn raw(&self) -> &RawChunk {
        self.borrow_owner()
    }

    pub fn events(&self) -> &Decoded<'_> {
        &self.borrow_dependent().events
    }

    pub fn len(&self) -> usize {
        self.raw().len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw().is_empty()
    }
}

impl std::fmt::Debug for DecodedChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedChunk")
            .field("records", &self.len())
            .finish()
    }
}

/// A chunk on its way through the pool, and where its result goes.
type Job = (RawChunk, Sender<DecodedChunk>);

/// Decodes chunks on worker threads, handing them back in submission order.
/// With no threads it decodes on the caller's.
pub struct DecodePool {
    decoder: Decoder,
    jobs: Option<Sender<Job>>,
    /// Results in submission order (a slot per chunk in flight).
    pending: VecDeque<Receiver<DecodedChunk>>,
    /// Decoded on the caller's thread (no workers).
    ready: VecDeque<DecodedChunk>,
    max_in_flight: usize,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Time the workers spent decoding (for the busy-time metric).
    busy: Arc<std::sync::atomic::AtomicU64>,
}

impl DecodePool {
    /// `threads` 0: decode on the caller's thread, one chunk at a time
    /// (reading ahead would only let the chunks decoded first go cold in the
    /// cache before they are routed: `scan` on one core 1.02-1.16x faster
    /// with one chunk in flight than with eight, BENCHMARKS.md).
    pub fn new(decoder: Decoder, threads: usize, max_in_flight: usize) -> Self {
        let busy = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut pool = DecodePool {
            decoder: decoder.clone(),
            jobs: None,
            pending: VecDeque::new(),
            ready: VecDeque::new(),
            max_in_flight: if threads == 0 {
                1
            } else {
                max_in_flight.max(1)
            },
            threads: Vec::new(),
            busy: busy.clone(),
        };
        if threads > 0 {
            let (tx, rx) = bounded::<Job>(pool.max_in_flight);
            for i in 0..threads {
                let rx = rx.clone();
                let decoder = decoder.clone();
                let busy = busy.clone();
                let h = std::thread::Builder::new()
                    .name(format!("rg-decode-{i}"))
                    .spawn(move || {
                        for (raw, out) in rx {
                            let t = Instant::now();
                            let d = DecodedChunk::decode(raw, &decoder);
                            busy.fetch_add(
                                t.elapsed().as_nanos() as u64,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                            // the receiver is gone only when the pool is dropped
                            let _ = out.send(d);
                        }
                    })
                    .expect("spawning a decode thread");
                pool.threads.push(h);
            }
            pool.jobs = Some(tx);
        }
        pool
    }

    /// Chunks submitted and not yet taken back.
    pub fn in_flight(&self) -> usize {
        self.pending.len() + self.ready.len()
    }

    /// Whether another chunk may be submitted without exceeding the bound.
    pub fn has_room(&self) -> bool {
        self.in_flight() < self.max_in_flight
    }

    /// Hands a chunk to the decoders (decodes it now without workers).
    pub fn submit(&mut self, raw: RawChunk) {
        match &self.jobs {
            Some(jobs) => {
                let (tx, rx) = bounded(1);
                jobs.send((raw, tx))
                    .expect("decode threads run while the pool lives");
                self.pending.push_back(rx);
            }
            None => {
                let t = Instant::now();
                let d = DecodedChunk::decode(raw, &self.decoder);
                self.busy.fetch_add(
                    t.elapsed().as_nanos() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                self.ready.push_back(d);
            }
        }
    }

    /// The oldest chunk submitted, once decoded: waits for it when `wait`,
    /// else only takes it when it is done. `None` when nothing is in flight
    /// (or, not waiting, the oldest is not done).
    pub fn next(&mut self, wait: bool) -> Option<DecodedChunk> {
        if let Some(d) = self.ready.pop_front() {
            return Some(d);
        }
        let rx = self.pending.front()?;
        let d = if wait {
            rx.recv().expect("a decode thread answers every job")
        } else {
            rx.try_recv().ok()?
        };
        self.pending.pop_front();
        Some(d)
    }

    /// Time spent decoding so far, by every decode thread together.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl Drop for DecodePool {
    fn drop(&mut self) {
        self.jobs = None;
        self.pending.clear();
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_a_kept_map_are_not_copied_and_read_back_the_same() {
        let text = b"{\"a\":1}\n{\"b\":2}\nxyz\n";
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, text).unwrap();
        let map = Arc::new(unsafe { memmap2::Mmap::map(&f) }.unwrap());
        let other = Arc::new(unsafe { memmap2::Mmap::map(&f) }.unwrap());
        let mut c = RawChunk::with_capacity(8, 64);
        // before a map is kept, a record is copied
        c.push(
            1,
            &Record::new(Position::new(1, 1), Payload::Data(&map[0..7])),
        );
        c.keep_map(&map);
        // a second map is not taken: its records are copied
        c.keep_map(&other);
        c.push(
            1,
            &Record::new(Position::new(1, 2), Payload::Data(&map[8..15])),
        );
        c.push(
            1,
            &Record::new(
                Position::new(1, 3),
                Payload::Oversize {
                    len: 3000,
                    prefix: &map[16..19],
                },
            ),
        );
        c.push(
            1,
            &Record::new(Position::new(1, 4), Payload::Data(&other[8..15])),
        );
        c.push(
            1,
            &Record::new(Position::new(1, 5), Payload::Data(b"elsewhere")),
        );
        assert_eq!(c.buf.len(), 7 + 7 + 9, "the mapped records are not copied");
        assert_eq!(c.bytes(), 7 + 7 + 3 + 7 + 9);
        let got: Vec<_> = (0..c.len()).map(|i| c.record(i).payload).collect();
        assert_eq!(
            got,
            vec![
                Payload::Data(b"{\"a\":1}"),
                Payload::Data(b"{\"b\":2}"),
                Payload::Oversize {
                    len: 3000,
                    prefix: b"xyz"
                },
                Payload::Data(b"{\"b\":2}"),
                Payload::Data(b"elsewhere"),
            ]
        );
        assert!(!c.recs[0].mapped && c.recs[1].mapped && c.recs[2].mapped);
        assert!(!c.recs[3].mapped && !c.recs[4].mapped);
        // decoded as any chunk is, after the map was dropped elsewhere
        drop(map);
        let d = DecodedChunk::decode(c, &Decoder::default());
        assert!(d.events()[1].is_err() && d.raw().record(1).payload == Payload::Data(b"{\"b\":2}"));
    }

    #[test]
    fn a_dropped_chunk_gives_its_buffers_to_the_next_one() {
        let pool = ChunkBuffers::new(2);
        let line = Record::new(Position::new(1, 1), Payload::Data(b"{}"));
        let mut a = pool.chunk(4, 1 << 10);
        a.push(7, &line);
        let at = a.buf.as_ptr();
        // decoded and dropped on another thread, as a detect worker does
        let d = DecodedChunk::decode(a, &Decoder::default());
        std::thread::spawn(move || drop(d)).join().unwrap();
        let b = pool.chunk(4, 1 << 10);
        assert_eq!(b.buf.as_ptr(), at, "the same buffer");
        assert!(b.is_empty() && b.bytes() == 0 && b.buf.capacity() >= 1 << 10);
        // a chunk whose buffer grew past the limit is freed, not kept
        let mut big = pool.chunk(1, KEEP_BYTES + 1);
        big.push(7, &line);
        drop(big);
        assert!(pool.rx.is_empty());
        // at most `keep` are kept; chunks of no pool keep nothing
        for _ in 0..4 {
            drop(pool.chunk(1, 8));
        }
        let held: Vec<_> = (0..3).map(|_| pool.chunk(1, 8)).collect();
        assert_eq!(pool.rx.len(), 0);
        drop(held);
        assert_eq!(pool.rx.len(), 2);
        drop(RawChunk::with_capacity(1, 8));
        assert_eq!(pool.rx.len(), 2);
    }

    fn raw(lines: &[&str], first: u64) -> RawChunk {
        let mut c = RawChunk::default();
        for (i, l) in lines.iter().enumerate() {
            c.push(
                7,
                &Record::new(
                    Position::new(1, first + i as u64),
                    Payload::Data(l.as_bytes()),
                ),
            );
        }
        c
    }

    const OK: &str = r#"{"event_id":"e1","received_at":"2026-11-28T00:00:00Z","key_id":"k1","nonce":"n1","client_ip":"10.0.0.1","method":"GET","path":"/v1/x","status":200}"#;

    #[test]
    fn records_keep_their_bytes_positions_and_keys() {
        let mut c = RawChunk::default();
        c.push(
            3,
            &Record {
                pos: Position::new(2, 40),
                payload: Payload::Data(b"abc"),
                key: MessageKey::Present(b"k9"),
                plain: false,
            },
        );
        c.push(
            3,
            &Record {
                pos: Position::new(2, 41),
                payload: Payload::Oversize {
                    len: 99_999,
                    prefix: b"{\"x",
                },
                key: MessageKey::Absent,
                plain: false,
            },
        );
        c.push(4, &Record::new(Position::new(5, 1), Payload::Data(b"")));
        let r = c.record(0);
        assert_eq!(
            (r.pos, r.payload, r.key),
            (
                Position::new(2, 40),
                Payload::Data(b"abc"),
                MessageKey::Present(b"k9")
            )
        );
        let r = c.record(1);
        assert_eq!(
            (r.payload, r.key),
            (
                Payload::Oversize {
                    len: 99_999,
                    prefix: b"{\"x"
                },
                MessageKey::Absent
            )
        );
        assert_eq!(c.record(2).key, MessageKey::None);
        assert_eq!(c.records()[2].stream, 4);
    }

    #[test]
    fn the_pool_hands_chunks_back_in_order_whatever_the_threads() {
        for threads in [0, 1, 3] {
            let mut pool = DecodePool::new(Decoder::default(), threads, 2);
            let mut got = Vec::new();
            for i in 0..20u64 {
                if !pool.has_room() {
                    got.push(pool.next(true).unwrap());
                }
                // every other chunk has a dead letter
                let lines: Vec<&str> = if i % 2 == 0 {
                    vec![OK, OK]
                } else {
                    vec![OK, "{"]
                };
                pool.submit(raw(&lines, i * 10));
            }
            while let Some(d) = pool.next(true) {
                got.push(d);
            }
            assert_eq!(got.len(), 20, "threads {threads}");
            for (i, d) in got.iter().enumerate() {
                assert_eq!(d.raw().records()[0].pos.offset, i as u64 * 10);
                assert!(d.events()[0].is_ok());
                assert_eq!(d.events()[1].is_err(), i % 2 == 1);
                assert!(matches!(
                    d.events()[0].as_ref().unwrap().event_id,
                    std::borrow::Cow::Borrowed(_)
                ));
            }
            assert!(pool.next(false).is_none());
        }
    }
}
