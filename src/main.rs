//! The `replayguard` binary: parse the CLI, resolve the configuration
//! once, start tracing, run, map errors to exit codes (0 ok, 1 runtime
//! failure, 2 usage or configuration error). Errors are boxed only here, at
//! the edge; the exit code comes from the error chain.

/// mimalloc, not glibc's malloc: at 100 000 keys and 10 M live requests
/// (issue 16's point) peak RSS 929-935 -> 889-883 MiB and 1.10-1.13x the
/// events/s on two cores; on one core with 1 M events 0.97x and +37 MiB
/// (BENCHMARKS.md, "the allocator (mimalloc)"). jemalloc was tried before and raised RSS.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::process::ExitCode;

use clap::Parser;
use replayguard::cli::{
    self, Cli, Command, ConvertCmd, GenerateCmd, LogFormat, ReportArgs, ReportCmd, ReportFormat,
    RunCmd, ScanCmd,
};
use replayguard::config::{Config, ConfigError, Env};
use replayguard::pipeline::{self, PipelineError, ScanArgs};

/// Transparent huge pages off for the process, unless the environment
/// sets `MIMALLOC_ALLOW_THP` (then mimalloc does as it says). mimalloc asks
/// for huge pages on its arenas, and each first touch of one then zeroes 2
/// MiB: with the sequence rule's buffers growing, the kernel's page zeroing
/// was 17 % of a one-core scan's samples (1 % without). Measured against
/// the same binary with them (BENCHMARKS.md, "huge pages"): 1 M events with
/// the sequence rule 1.057x less CPU; default config 0.984x the events/s
/// on one core and 1.048x on two, peak RSS 20-40 MiB lower; 100 000 keys
/// and 10 M live requests on two cores 1.04x (median of 5 pairs), peak RSS
/// 494-507 -> 455-466 MiB.
/// Called before tracing starts: a refusal is returned, for `main` to log.
fn huge_pages_off() -> Option<std::io::Error> {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes integers only and changes only
        // how later page faults of this process are served.
        let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if r != 0 {
            return Some(std::io::Error::last_os_error());
        }
    }
    None
}

/// Any failure of a command (boxed at the binary's edge only).
type Failure = Box<dyn std::error::Error + Send + Sync>;

/// A usage error of the binary itself (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Usage(String);

fn usage(msg: impl Into<String>) -> Failure {
    Box::new(Usage(msg.into()))
}

/// A runtime failure described in words (exit code 1).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Runtime(String);

fn runtime(msg: impl Into<String>) -> Failure {
    Box::new(Runtime(msg.into()))
}

/// 2 when a usage or configuration error is anywhere in the chain, else 1.
fn exit_code(e: &(dyn std::error::Error + 'static)) -> u8 {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<Usage>() || e.is::<ConfigError>() {
            return 2;
        }
        if let Some(p) = e.downcast_ref::<PipelineError>() {
            if p.exit_code() == 2 {
                return 2;
            }
        }
        cur = e.source();
    }
    1
}

/// Whether the failure is a closed stdout (`| head`): not worth a complaint.
fn broken_pipe(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match cli.command {
        Command::Scan(_)
        | Command::Generate(_)
        | Command::CheckConfig { .. }
        | Command::Convert(_)
        | Command::Report(_) => "warn",
        Command::Run(_) => "info,librdkafka=warn,rdkafka=warn",
    };
    let filter = match &cli.log {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    // colour only for a person at a terminal (https://no-color.org)
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

/// The config file (or none: every default), with `${NAME}` references and
/// the REPLAYGUARD_* variables of the environment applied.
fn load_config(path: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    Config::resolve(path, &Env::process(), |_| {})
}

/// The failure of a command that read mostly dead letters (exit code 1).
fn mostly_dead(inputs: &[String]) -> Failure {
    format!(
        "more than half of the first {} records of {} are dead letters \
         (pass --allow-dead-letters to accept)",
        pipeline::FIRST_RECORDS,
        inputs.join(", ")
    )
    .into()
}

fn scan(cmd: ScanCmd, log_format: LogFormat) -> Result<(), Failure> {
    let config = Config::resolve(cmd.config.as_deref(), &Env::process(), |c| {
        if let Some(f) = cmd.input_format {
            c.input.format = f;
        }
    })?;
    let alerts = cli::stdout_if_dash(cmd.alerts);
    if alerts.is_none() && cli::is_dash(cmd.dead_letter.as_deref()) {
        return Err(usage(
            "--dead-letter - writes dead letters to stdout, where the alerts go: \
             give --alerts FILE too",
        ));
    }
    let summary = pipeline::scan(ScanArgs {
        config,
        state_dir: cmd.state_dir,
        lifecycle: cmd.lifecycle,
        alerts,
        dead_letter: cmd.dead_letter,
        inputs: cmd.inputs,
        progress: !cmd.quiet,
    })?;
    match log_format {
        LogFormat::Text => eprint!("{summary}"),
        LogFormat::Json => eprintln!("{}", summary.to_json()),
    }
    if !summary.mostly_dead.is_empty() && !cmd.allow_dead_letters {
        return Err(mostly_dead(&summary.mostly_dead));
    }
    Ok(())
}

fn convert(cmd: ConvertCmd) -> Result<(), Failure> {
    let config = Config::resolve(cmd.config.as_deref(), &Env::process(), |c| {
        if let Some(f) = cmd.input_format {
            c.input.format = f;
        }
    })?;
    let output = cli::stdout_if_dash(cmd.output);
    if output.is_none() && cli::is_dash(cmd.dead_letter.as_deref()) {
        return Err(usage(
            "--dead-letter - writes dead letters to stdout, where the events go: \
             give --output FILE too",
        ));
    }
    let summary = pipeline::convert(pipeline::ConvertArgs {
        config,
        output,
        dead_letter: cmd.dead_letter,
        inputs: cmd.inputs,
    })?;
    eprint!("{summary}");
    if !summary.mostly_dead.is_empty() && !cmd.allow_dead_letters {
        return Err(mostly_dead(&summary.mostly_dead));
    }
    Ok(())
}

fn run(cmd: RunCmd) -> Result<(), Failure> {
    use std::sync::Arc;
    let config = Config::resolve(cmd.config.as_deref(), &Env::process(), |c| cmd.apply(c))?;
    let metrics = replayguard::prometheus_exporter().install_recorder()?;
    replayguard::describe_metrics();
    let status = Arc::new(pipeline::Status::default());
    // a small runtime for the HTTP server and the signal handlers
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("http")
        .build()?;
    // histograms keep their samples until upkeep folds them: on an
    // interval, not only when a scrape comes
    let upkeep = metrics.clone();
    rt.spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    if !config.http.listen.is_empty() {
        let addr: std::net::SocketAddr = config
            .http
            .listen
            .parse()
            .map_err(|_| usage(format!("bad --http address {:?}", config.http.listen)))?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|e| usage(format!("cannot listen on {addr}: {e}")))?;
        let state = replayguard::http::AppState {
            status: status.clone(),
            metrics: Some(metrics),
            token: config.http.token.as_deref().map(Arc::from),
            reports: None,
        };
        tracing::info!(%addr, "HTTP server listening");
        rt.spawn(async move {
            if let Err(e) = axum::serve(listener, replayguard::http::app(state)).await {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        });
    }
    let st = status.clone();
    rt.spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {},
        }
        tracing::info!("signal received: finishing the batch, committing and leaving the group");
        st.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let result = pipeline::run(pipeline::RunArgs { config }, status);
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(result?)
}

fn report(cmd: ReportCmd) -> Result<(), Failure> {
    use replayguard::report::{render, Snapshot, UsageView};
    let (args, rotation): (&ReportArgs, bool) = match &cmd {
        ReportCmd::Rotation(a) => (a, true),
        ReportCmd::Usage(a) => (a, false),
    };
    let mut config = load_config(args.config.as_deref())?;
    let snap = match (&args.brokers, &args.state_dir) {
        // the whole group's, from Kafka: no state directory
        (Some(brokers), _) => {
            config.kafka.brokers = brokers.clone();
            if let Some(t) = &args.usage_topic {
                config.kafka.usage_topic = t.clone();
            }
            if let Some(t) = &args.lifecycle_topic {
                config.kafka.lifecycle_topic = t.clone();
            }
            if config.kafka.usage_topic.is_empty() {
                return Err(usage(
                    "--brokers needs a usage topic (kafka.usage_topic is empty)",
                ));
            }
            let decoder =
                replayguard::decode::Decoder::new(&config.decode, &config.input).map_err(usage)?;
            replayguard::pipeline::fleet_snapshot(&config.kafka, &decoder)
                .map_err(|e| runtime(format!("reading the report from Kafka: {e}")))?
        }
        (None, Some(state_dir)) => {
            // a missing or empty directory, or one RocksDB does not recognise
            let no_state = || usage(format!("no replayguard state in {}", state_dir.display()));
            if !state_dir.join("CURRENT").is_file() {
                return Err(no_state());
            }
            let opts = replayguard::state::RocksOptions {
                read_only: true,
                ..config.state.rocks()
            };
            let store = match replayguard::state::RocksStore::open(state_dir, &opts) {
                Err(replayguard::state::StateError::NoState(_)) => return Err(no_state()),
                r => r?,
            };
            Snapshot::load(&store)?
        }
        (None, None) => return Err(usage("report needs --state-dir or --brokers")),
    };
    let out = std::io::stdout();
    let mut out = out.lock();
    let io = |e: std::io::Error| -> Failure { Box::new(e) };
    if rotation {
        let cfg = &config.report;
        let mut reports = snap.rotations(cfg);
        if let Some(k) = &args.key {
            reports.retain(|r| &r.key_id == k);
            if reports.is_empty() {
                return Err(usage(format!("key {k} is not in rotation")));
            }
        }
        match args.format {
            ReportFormat::Table => write!(out, "{}", render::table(&reports)),
            ReportFormat::Json => writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&reports).expect("serializes")
            ),
            ReportFormat::Html => write!(out, "{}", render::html(&reports)),
        }
        .map_err(io)
    } else {
        let Some(k) = &args.key else {
            return Err(usage("report usage needs --key"));
        };
        let Some(u) = snap.usage.get(k) else {
            return Err(usage(format!("no usage recorded for key {k}")));
        };
        let view = UsageView::new(k, u, snap.now.unwrap_or(u.last_seen));
        match args.format {
            ReportFormat::Html => write!(out, "{}", render::usage_html(&view)),
            // the table format of a single key's usage is its JSON
            ReportFormat::Json | ReportFormat::Table => writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&view).expect("serializes")
            ),
        }
        .map_err(io)
    }
}

/// Validates a config file as `run` would (librdkafka's property checks
/// included, without connecting) and prints it with secrets redacted.
fn check_config(file: &std::path::Path) -> Result<(), Failure> {
    let c = Config::load(file)?;
    pipeline::ClientFactory::new(&c.kafka).check()?;
    print!("{}", c.to_toml_redacted());
    eprintln!("{}: ok", file.display());
    Ok(())
}

fn generate(cmd: GenerateCmd) -> Result<(), Failure> {
    let config = load_config(cmd.config.as_deref())?;
    let gc = replayguard::generate::GenConfig {
        events: cmd.events,
        keys: cmd.keys,
        seed: cmd.seed,
        rate: cmd.rate,
        replay_rate: cmd.replay_rate,
        duplicate_rate: cmd.duplicate_rate,
        malformed_rate: cmd.malformed_rate,
        disorder_ms: cmd.disorder_ms,
        rotations: cmd.rotations,
        format: cmd.format,
        nonces: cmd.nonces,
        out_of_sequence_rate: cmd.out_of_sequence_rate,
        ..Default::default()
    };
    if !matches!(
        gc.format,
        replayguard::decode::Format::V1 | replayguard::decode::Format::Kong
    ) {
        return Err(usage("generate writes --format v1 or kong"));
    }
    if gc.rate <= 0.0 || !gc.rate.is_finite() {
        return Err(usage("--rate must be positive"));
    }
    // "-" is stdout, which one output at most may use (the events by default)
    let to_stdout = [
        cmd.out.is_none() || cli::is_dash(cmd.out.as_deref()),
        cli::is_dash(cmd.lifecycle.as_deref()),
        cli::is_dash(cmd.truth.as_deref()),
    ];
    if to_stdout.iter().filter(|&&b| b).count() > 1 {
        return Err(usage(
            "only one of the events (--out, stdout by default), --lifecycle and --truth \
             can go to stdout (\"-\")",
        ));
    }
    let create = |p: &std::path::Path| -> Result<Box<dyn Write>, Failure> {
        if cli::is_dash(Some(p)) {
            return Ok(Box::new(BufWriter::with_capacity(
                1 << 20,
                std::io::stdout().lock(),
            )));
        }
        File::create(p)
            .map(|f| Box::new(BufWriter::with_capacity(1 << 20, f)) as Box<dyn Write>)
            .map_err(|e| usage(format!("cannot write {}: {e}", p.display())))
    };
    let mut out: Box<dyn Write> = match &cmd.out {
        Some(p) => create(p)?,
        None => create(std::path::Path::new("-"))?,
    };
    let mut lc = cmd.lifecycle.as_deref().map(create).transpose()?;
    let mut truth = cmd.truth.as_deref().map(create).transpose()?;
    let io = |e: std::io::Error| -> Failure { Box::new(e) };
    let report = replayguard::generate::generate(
        &gc,
        &config.detect,
        &mut out,
        lc.as_mut().map(|w| w as &mut dyn Write),
        truth.as_mut().map(|w| w as &mut dyn Write),
    )
    .map_err(io)?;
    out.flush().map_err(io)?;
    if let Some(w) = lc.as_mut() {
        w.flush().map_err(io)?;
    }
    if let Some(w) = truth.as_mut() {
        w.flush().map_err(io)?;
    }
    eprintln!(
        "generated {} lines ({} replays planted, {} stale counters, {} duplicates, {} malformed, {} lifecycle records{})",
        report.lines,
        report.replays_planted,
        report.stale_counters_planted,
        report.duplicates,
        report.malformed,
        report.lifecycle_records,
        report
            .expected_alerts
            .map(|n| format!(", {n} expected alerts"))
            .unwrap_or_default()
    );
    Ok(())
}

fn main() -> ExitCode {
    let huge_pages = huge_pages_off();
    let cli = Cli::parse();
    init_tracing(&cli);
    if let Some(e) = huge_pages {
        tracing::debug!(error = %e, "transparent huge pages stay on");
    }
    let result = match cli.command {
        Command::Scan(cmd) => scan(cmd, cli.log_format),
        Command::Run(cmd) => run(cmd),
        Command::CheckConfig { file } => check_config(&file),
        Command::Generate(cmd) => generate(cmd),
        Command::Report(cmd) => report(cmd),
        Command::Convert(cmd) => convert(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(e.as_ref()))
        }
    }
}
