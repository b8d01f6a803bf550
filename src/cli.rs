//! Command-line interface (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "replayguard",
    version,
    about = "Streaming replay and anomaly detector for signed API access logs",
    long_about = "Streaming replay and anomaly detector for signed API access logs.\n\n\
        Finds replayed (key, nonce) pairs, stale and future client timestamps and use of \
        retired or revoked keys, all by event time (received_at).\n\n\
        Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error."
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "replayguard=debug".
    /// Defaults to RUST_LOG, else "warn" for scan and "info" otherwise.
    #[arg(long, global = true)]
    pub log: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the detector over JSON-lines files (or stdin), no broker needed.
    Scan(ScanCmd),
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Write realistic traffic with planted replays (for demos, tests, benchmarks).
    Generate(GenerateCmd),
}

#[derive(Debug, Args)]
pub struct ScanCmd {
    /// TOML config file (defaults for everything it leaves out).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory, kept across runs (default: config state.dir, else a temporary one).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Key lifecycle events (JSON lines); may be given more than once.
    #[arg(long, value_name = "FILE")]
    pub lifecycle: Vec<PathBuf>,
    /// Append alerts here instead of writing them to stdout.
    #[arg(long, value_name = "FILE")]
    pub alerts: Option<PathBuf>,
    /// Append malformed lines here (with source, line number and error).
    #[arg(long, value_name = "FILE")]
    pub dead_letter: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// JSON-lines input files; none or "-" reads stdin.
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GenerateCmd {
    /// Number of lines.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Distinct API keys.
    #[arg(long, default_value_t = 200)]
    pub keys: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Requests per second of event time.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Fraction of requests that replay an earlier (key, nonce).
    #[arg(long, default_value_t = 0.002)]
    pub replay_rate: f64,
    /// Fraction of lines that are transport duplicates.
    #[arg(long, default_value_t = 0.001)]
    pub duplicate_rate: f64,
    /// Fraction of lines that are malformed.
    #[arg(long, default_value_t = 0.0)]
    pub malformed_rate: f64,
    /// Arrival disorder in milliseconds (keep it within allowed_lateness).
    #[arg(long, default_value_t = 0)]
    pub disorder_ms: i64,
    /// Keys that go through a rotation.
    #[arg(long, default_value_t = 2)]
    pub rotations: usize,
    /// Events file (default stdout).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the key lifecycle records here.
    #[arg(long, value_name = "FILE")]
    pub lifecycle: Option<PathBuf>,
    /// Write the expected alerts (ground truth) here.
    #[arg(long, value_name = "FILE")]
    pub truth: Option<PathBuf>,
    /// Config whose [detect] rules the ground truth follows.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}
