//! `replayguard scan`: the detector over JSON-lines files, no broker.

use std::io::IsTerminal;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::chunk::{ChunkBuffers, DecodePool};
use super::engine::{Engine, Totals};
use super::PipelineError;
use crate::config::Config;
use crate::schema::AlertKind;
use crate::sink::{AlertSink, DeadLetterSink, JsonlAlertSink, JsonlDeadLetterSink};
use crate::source::{FileSource, Input, LineReader, Poll, Source};
use crate::state::{RocksStore, StateStore};

/// `[scan]`: the file scanner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    /// Events per commit. Default 65536.
    pub batch_events: usize,
    /// Read plain (not gzip) input files through a memory map instead of
    /// `read`: their lines reach the decoders without being copied. A file
    /// truncated while it is mapped ends the scan with SIGBUS (as it does
    /// ripgrep): turn this off to scan logs that may be truncated or
    /// rewritten in place meanwhile (`copytruncate` rotation). Lines
    /// appended during the scan are past the map: not read. Default true.
    pub mmap: bool,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            batch_events: 65_536,
            mmap: true,
        }
    }
}

impl ScanConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_events == 0 {
            return Err("scan.batch_events must be at least 1".into());
        }
        Ok(())
    }
}

/// Name of the stream `scan` keeps its state under (in key-hash shards, one
/// per detect thread when the state is created).
pub const SCAN_SHARD: &str = "scan";

/// What `scan` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct ScanArgs {
    pub config: Config,
    /// State directory; `None` uses `config.state.dir`, else a temporary one.
    pub state_dir: Option<PathBuf>,
    /// Key lifecycle events (JSON lines), added to the state before scanning.
    pub lifecycle: Vec<PathBuf>,
    /// Alerts go here (appended); `None` is stdout.
    pub alerts: Option<PathBuf>,
    /// Malformed lines go here (appended); `None` only counts and logs them.
    pub dead_letter: Option<PathBuf>,
    /// Files to read; empty or `-` is stdin.
    pub inputs: Vec<PathBuf>,
    /// Print a progress line on stderr (when it is a terminal).
    pub progress: bool,
}

/// The outcome of a scan.
#[derive(Debug, Clone)]
pub struct ScanSummary {
    pub totals: Totals,
    pub lifecycle_records: usize,
    pub elapsed: Duration,
    /// Alerts delivered (including ones an earlier, interrupted run committed).
    pub delivered: usize,
    pub state_dir: Option<PathBuf>,
    /// The input format read.
    pub format: crate::decode::Format,
    /// Inputs of which more than half of the first records were dead
    /// letters (`scan` exits 1 unless `--allow-dead-letters`).
    pub mostly_dead: Vec<String>,
    /// Where the time went, per pipeline stage.
    pub stages: StageTimes,
    /// Decode threads and detect workers (`pipeline.threads`).
    pub threads: usize,
}

impl ScanSummary {
    pub fn events_per_second(&self) -> f64 {
        self.totals.stats.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The summary as one JSON object (for `--log-format json`).
    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.totals.stats;
        let by_kind: serde_json::Map<String, serde_json::Value> = AlertKind::ALL
            .iter()
            .filter(|k| s.alerts[k.index()] > 0)
            .map(|k| (k.as_str().to_string(), s.alerts[k.index()].into()))
            .collect();
        serde_json::json!({
            "message": "replayguard scan summary",
            "events": s.events,
            "elapsed_s": (self.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            "events_per_s": self.events_per_second().round(),
            "alerts": s.alerts_total(),
            "alerts_by_kind": by_kind,
            "duplicates": s.duplicates,
            "reprocessed": s.reprocessed,
            "malformed": self.totals.malformed,
            "late": s.late,
            "too_late": s.too_late,
            "lifecycle_records": self.lifecycle_records,
            "delivered": self.delivered,
            "state_dir": self.state_dir.as_ref().map(|d| d.display().to_string()),
            "input_format": self.format.as_str(),
            "mostly_dead_letters": self.mostly_dead,
            "threads": self.threads,
            "stage_seconds": {
                "read": self.stages.read.as_secs_f64(),
                "decode": self.stages.decode.as_secs_f64(),
                "route": self.stages.route.as_secs_f64(),
                "detect": self.stages.detect.as_secs_f64(),
                "commit": self.stages.commit.as_secs_f64(),
                "waiting_for_decode": self.stages.wait.as_secs_f64(),
            },
        })
    }
}

impl std::fmt::Display for ScanSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.totals.stats;
        writeln!(
            f,
            "replayguard scan: {} events in {:.2}s ({:.0} events/s)",
            s.events,
            self.elapsed.as_secs_f64(),
            self.events_per_second()
        )?;
        writeln!(f, "  alerts:        {}", s.alerts_total())?;
        // one column for the counts, a space after the longest kind
        let width = AlertKind::ALL
            .iter()
            .map(|k| k.as_str().len() + 1)
            .max()
            .unwrap_or(0);
        for k in AlertKind::ALL {
            let n = s.alerts[k.index()];
            if n > 0 {
                writeln!(f, "    {:<width$}{}", k.as_str(), n)?;
            }
        }
        writeln!(
            f,
            "  duplicates:    {} (transport redeliveries, no alert)",
            s.duplicates
        )?;
        if s.reprocessed > 0 {
            writeln!(
                f,
                "  reprocessed:   {} (already in the state: same event, same position)",
                s.reprocessed
            )?;
        }
        writeln!(f, "  malformed:     {}", self.totals.malformed)?;
        for input in &self.mostly_dead {
            writeln!(
                f,
                "    most of the first records of {input} are not in format {}: \
                 try --input-format",
                self.format
            )?;
        }
        writeln!(
            f,
            "  late:          {} ({} beyond the live window)",
            s.late, s.too_late
        )?;
        if self.lifecycle_records > 0 {
            writeln!(f, "  lifecycle:     {} records", self.lifecycle_records)?;
        }
        if let Some(d) = &self.state_dir {
            writeln!(f, "  state:         {}", d.display())?;
        }
        let t = &self.stages;
        writeln!(
            f,
            "  stages:        read {:.2}s, decode {:.2}s, route {:.2}s, detect {:.2}s, commit {:.2}s \
             ({} threads; busy seconds, decode and detect summed over threads)",
            t.read.as_secs_f64(),
            t.decode.as_secs_f64(),
            t.route.as_secs_f64(),
            t.detect.as_secs_f64(),
            t.commit.as_secs_f64(),
            self.threads,
        )?;
        Ok(())
    }
}

/// Progress line on a terminal, once a second.
struct Progress {
    started: Instant,
    last: Instant,
    on: bool,
}

impl Progress {
    fn new(on: bool) -> Self {
        let now = Instant::now();
        Progress {
            started: now,
            last: now,
            on: on && std::io::stderr().is_terminal(),
        }
    }

    fn tick(&mut self, t: &Totals) {
        if !self.on || self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64();
        eprint!(
            "\r\x1b[K{} events, {:.0}/s, {} alerts, {} malformed",
            t.stats.events,
            t.stats.events as f64 / secs,
            t.stats.alerts_total(),
            t.malformed
        );
    }

    fn done(&self) {
        if self.on && self.last != self.started {
            eprint!("\r\x1b[K");
        }
    }
}

/// Reads lifecycle files into the engine; malformed lines are dead-lettered.
pub fn load_lifecycle<S: StateStore>(
    engine: &mut Engine<S>,
    paths: &[PathBuf],
    dlq: &mut dyn DeadLetterSink,
) -> Result<usize, PipelineError> {
    use crate::source::files::Line;
    let decoder = engine.decoder().clone();
    let mut n = 0;
    for p in paths {
        let name = p.display().to_string();
        let f = std::fs::File::open(p).map_err(PipelineError::io(format!("reading {name}")))?;
        let src = engine.source_id(&name);
        let mut r = LineReader::new(f, decoder.max_event_bytes);
        let mut line = 0u64;
        while let Some(l) = r
            .next_line()
            .map_err(PipelineError::io(format!("reading {name}")))?
        {
            line += 1;
            let payload = match l {
                Line::Data(b) | Line::Plain(b) if crate::source::files::is_blank(b) => continue,
                Line::Data(b) | Line::Plain(b) => crate::source::Payload::Data(b),
                Line::Oversize { len, prefix } => crate::source::Payload::Oversize { len, prefix },
            };
            let rec = crate::source::Record::new(crate::detect::Position::new(src, line), payload);
            let res = match payload {
                crate::source::Payload::Data(b) => decoder.lifecycle(b),
                crate::source::Payload::Oversize { len, .. } => Err(decoder.too_large(len)),
            };
            match res {
                Ok(ev) => {
                    engine.add_lifecycle(ev);
                    n += 1;
                }
                Err(e) => engine.dead_letter(&name, &rec, &e, dlq)?,
            }
        }
    }
    Ok(n)
}

/// How the scan loop cuts and queues its work (from `[scan]` and `[pipeline]`).
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    /// Records per commit.
    pub batch_events: usize,
    /// Records per chunk.
    pub chunk_events: usize,
    /// Decode threads (0: decode on the reading thread).
    pub decode_threads: usize,
    /// Chunks in flight in the decode pool.
    pub queue_chunks: usize,
    /// Threads (`pipeline.threads` resolved).
    pub threads: usize,
}

impl ScanOptions {
    pub fn from_config(c: &Config) -> Self {
        let threads = c.pipeline.effective_threads();
        ScanOptions {
            batch_events: c.scan.batch_events,
            chunk_events: c.pipeline.effective_chunk_events(),
            decode_threads: if threads > 1 { threads } else { 0 },
            queue_chunks: c.pipeline.effective_queue_chunks(),
            threads,
        }
    }
}

/// Bytes after which a chunk is cut even if it has room for more records
/// (long records would otherwise make chunks, and queues, large).
const CHUNK_BYTES: usize = 1 << 20;

/// Records read per call to the source while filling a chunk.
const READ_STEP: usize = 64;

/// The scan loop over any store, source and sinks: records are read into
/// chunks on this thread, decoded by the pool, routed in order to the
/// detect workers, and committed (then delivered) every
/// `opts.batch_events` records and at the end; a batch's commit is written
/// while the next batch is read and routed.
pub fn scan_source<S: StateStore>(
    engine: &mut Engine<S>,
    stream: u32,
    source: &mut dyn Source,
    opts: ScanOptions,
    alerts: &mut dyn AlertSink,
    dlq: &mut dyn DeadLetterSink,
    mut on_batch: impl FnMut(&Totals),
) -> Result<StageTimes, PipelineError> {
    let mut pool = DecodePool::new(
        engine.decoder().clone(),
        opts.decode_threads,
        opts.queue_chunks,
    );
    // the chunks in flight in the pool and the workers' queues hold their
    // own buffers; these are the ones between
    let buffers = ChunkBuffers::new(opts.queue_chunks + 2);
    let mut ended = false;
    let mut since_commit = 0usize;
    let mut times = StageTimes::default();
    let mut reported = StageTimes::default();
    loop {
        // read ahead while the decoders have room
        while !ended && pool.has_room() {
            let t = Instant::now();
            let mut raw = buffers.chunk(opts.chunk_events, CHUNK_BYTES);
            while raw.len() < opts.chunk_events && raw.bytes() < CHUNK_BYTES {
                // records of a mapped file stay where they are
                if let Some(map) = source.mapping() {
                    raw.keep_map(map);
                }
                let step = READ_STEP.min(opts.chunk_events - raw.len());
                if source.poll(step, &mut |rec| raw.push(stream, &rec))? == Poll::End {
                    ended = true;
                    break;
                }
            }
            times.read += t.elapsed();
            if !raw.is_empty() {
                pool.submit(raw);
            }
        }
        crate::telemetry::QueueDepth {
            queue: "decode",
            depth: pool.in_flight(),
        }
        .emit();
        let t = Instant::now();
        let next = pool.next(true);
        times.wait += t.elapsed();
        let t = Instant::now();
        match next {
            Some(chunk) => {
                since_commit += chunk.len();
                engine.process_chunk(Arc::new(chunk), dlq)?;
                times.route += t.elapsed();
                // the commit in flight goes to the writer as soon as the
                // workers have staged it, and is delivered once written:
                // routing and detection go on meanwhile
                if engine.commit_in_flight() {
                    let t = Instant::now();
                    if engine.finish_commit(false)?.is_some() {
                        engine.deliver(alerts)?;
                        on_batch(&engine.totals());
                    }
                    times.commit += t.elapsed();
                }
                if since_commit >= opts.batch_events {
                    since_commit = 0;
                    let t = Instant::now();
                    // the batch before is written while the workers stage this one
                    if engine.commit_in_flight() {
                        engine.finish_commit(true)?;
                        engine.deliver(alerts)?;
                        on_batch(&engine.totals());
                    }
                    engine.begin_commit(dlq)?;
                    times.commit += t.elapsed();
                    times.sample(engine, &pool);
                    reported = times.emit_since(&reported);
                }
            }
            None => {
                // everything read is routed
                engine.end_of_input()?;
                if engine.commit_in_flight() {
                    engine.finish_commit(true)?;
                    engine.deliver(alerts)?;
                }
                // usage covers everything read: a later scan reads nothing again
                engine.checkpoint_usage();
                engine.commit(dlq)?;
                engine.deliver(alerts)?;
                on_batch(&engine.totals());
                // the last delivery's outbox entries go with a final commit
                engine.commit(dlq)?;
                times.commit += t.elapsed();
                times.sample(engine, &pool);
                times.emit_since(&reported);
                return Ok(times);
            }
        }
    }
}

/// Where the time of a scan went: the reading thread's read (reading and
/// cutting chunks), wait (for the decoders), route and commit (beginning,
/// finishing and delivering commits), and the decode and detect threads'
/// busy time, all together.
#[derive(Debug, Default, Clone, Copy)]
pub struct StageTimes {
    pub read: Duration,
    pub wait: Duration,
    pub route: Duration,
    pub commit: Duration,
    pub decode: Duration,
    pub detect: Duration,
}

impl StageTimes {
    fn sample<S: StateStore>(&mut self, engine: &Engine<S>, pool: &DecodePool) {
        self.decode = pool.busy();
        self.detect = engine.detect_busy();
    }

    /// Emits the busy time since `before` as metrics; returns the totals.
    fn emit_since(&self, before: &StageTimes) -> StageTimes {
        for (stage, now, then) in [
            ("read", self.read, before.read),
            ("decode", self.decode, before.decode),
            ("commit", self.commit, before.commit),
        ] {
            crate::telemetry::StageBusy {
                stage,
                busy: now.saturating_sub(then),
            }
            .emit();
        }
        *self
    }
}

/// Runs `scan` as the CLI does.
pub fn scan(args: ScanArgs) -> Result<ScanSummary, PipelineError> {
    let started = Instant::now();
    let mut config = args.config;
    config.pipeline = config.pipeline.for_scan();
    // open the inputs first: a missing file is a usage error, before any work
    let named = super::convert::open_inputs(&args.inputs)?;
    for p in &args.lifecycle {
        if !p.is_file() {
            return Err(PipelineError::Usage(format!(
                "cannot read lifecycle file {}",
                p.display()
            )));
        }
    }

    let mut temp = None;
    let dir = match args.state_dir.clone().or_else(|| config.state.dir.clone()) {
        Some(d) => d,
        None => {
            let t = tempfile::Builder::new()
                .prefix("replayguard-scan-")
                .tempdir()
                .map_err(PipelineError::io("creating a temporary state dir"))?;
            let p = t.path().to_path_buf();
            temp = Some(t);
            p
        }
    };
    let store = Arc::new(RocksStore::open(&dir, &config.state.rocks())?);
    let mut engine = Engine::open(store, &config)?;

    let mut alerts: Box<dyn AlertSink> = match &args.alerts {
        Some(p) => Box::new(JsonlAlertSink::file(p)?),
        None => Box::new(JsonlAlertSink::stdout()),
    };
    let mut dlq = match &args.dead_letter {
        Some(p) => JsonlDeadLetterSink::file(p)?,
        None => JsonlDeadLetterSink::discard(),
    };

    // alerts an interrupted earlier run committed but did not deliver
    let left = engine.undelivered();
    crate::telemetry::OutboxRedelivery { count: left }.emit();
    let mut delivered = engine.deliver(alerts.as_mut())?;

    let lifecycle_records = load_lifecycle(&mut engine, &args.lifecycle, &mut dlq)?;
    // one key-hash shard per detect thread (a state dir written before
    // keeps its shards: they change speed, never alerts)
    let shards =
        (ScanOptions::from_config(&config).threads as u32).clamp(1, super::MAX_SCAN_SHARDS);
    let stream = engine.open_stream(SCAN_SHARD, shards)?;
    let inputs = named
        .into_iter()
        .map(|(name, reader, file)| Input {
            source_id: engine.source_id(&name),
            name,
            reader,
            file,
        })
        .collect();
    let mut source =
        FileSource::new(inputs, engine.decoder().max_event_bytes).map_files(config.scan.mmap);
    let before = engine.totals();
    let mut progress = Progress::new(args.progress);
    let mut counting = CountingSink {
        inner: alerts.as_mut(),
        n: 0,
    };
    let times = scan_source(
        &mut engine,
        stream,
        &mut source,
        ScanOptions::from_config(&config),
        &mut counting,
        &mut dlq,
        |t| progress.tick(t),
    )?;
    delivered += counting.n;
    progress.done();
    engine.finish_inputs();
    // report this run only: counters persist across runs in the state
    let mut totals = engine.totals();
    totals.stats = totals.stats.since(&before.stats);
    Ok(ScanSummary {
        totals,
        lifecycle_records,
        elapsed: started.elapsed(),
        delivered,
        state_dir: if temp.is_some() { None } else { Some(dir) },
        format: engine.decoder().format(),
        mostly_dead: engine.mostly_dead_inputs().to_vec(),
        stages: times,
        threads: ScanOptions::from_config(&config).threads,
    })
}

/// Counts what passes through to the real sink.
struct CountingSink<'a> {
    inner: &'a mut dyn AlertSink,
    n: usize,
}

impl AlertSink for CountingSink<'_> {
    fn deliver(
        &mut self,
        batch: &[crate::sink::OutboxEntry],
    ) -> Result<(), crate::sink::SinkError> {
        self.inner.deliver(batch)?;
        self.n += batch.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_keeps_a_space_between_every_kind_and_its_count() {
        let mut totals = Totals::default();
        for k in AlertKind::ALL {
            totals.stats.alerts[k.index()] = 27;
        }
        let summary = ScanSummary {
            totals,
            lifecycle_records: 0,
            elapsed: Duration::from_secs(1),
            delivered: 0,
            state_dir: None,
            format: crate::decode::Format::default(),
            mostly_dead: Vec::new(),
            stages: StageTimes::default(),
            threads: 1,
        };
        let text = summary.to_string();
        let mut columns = std::collections::BTreeSet::new();
        for k in AlertKind::ALL {
            // the kind's line: indented, the kind, then its count
            let line = text
                .lines()
                .find(|l| {
                    l.strip_prefix("    ")
                        .and_then(|r| r.strip_prefix(k.as_str()))
                        .is_some_and(|r| r.trim_start() == "27")
                })
                .unwrap_or_else(|| panic!("{} listed:\n{text}", k.as_str()));
            let rest = &line[4 + k.as_str().len()..];
            assert!(rest.starts_with(' '), "{line:?}");
            columns.insert(line.find("27").unwrap());
        }
        assert_eq!(columns.len(), 1, "counts in one column:\n{text}");
    }
}
