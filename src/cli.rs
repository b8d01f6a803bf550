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
    /// Consume access events from Kafka as a consumer group; alerts to a topic.
    Run(RunCmd),
    /// Reports from a state directory (of `scan`, or of a running detector).
    #[command(subcommand)]
    Report(ReportCmd),
    /// Validate a config file and print the effective configuration.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Write realistic traffic with planted replays (for demos, tests, benchmarks).
    Generate(GenerateCmd),
    /// Write the access events v1 a gateway's log yields (to check a
    /// mapping, or to feed v1 to another pipeline).
    Convert(ConvertCmd),
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
    /// Append alerts here instead of writing them to stdout ("-": stdout).
    #[arg(long, value_name = "FILE")]
    pub alerts: Option<PathBuf>,
    /// Append malformed lines here (with source, line number and error;
    /// "-": stdout, when the alerts go to a file).
    #[arg(long, value_name = "FILE")]
    pub dead_letter: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// The input's log format (input.format): v1, kong, envoy, nginx,
    /// aws-apigw, traefik or mapped.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub input_format: Option<crate::decode::Format>,
    /// Exit 0 even when more than half of an input's first 1000 records
    /// are dead letters.
    #[arg(long)]
    pub allow_dead_letters: bool,
    /// JSON-lines input files; none or "-" reads stdin.
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
}

/// An output path as given: "-" is standard output, as no path is.
pub fn stdout_if_dash(p: Option<PathBuf>) -> Option<PathBuf> {
    p.filter(|p| !crate::sink::is_stdout(p))
}

/// Whether an output path is "-" (standard output).
pub fn is_dash(p: Option<&std::path::Path>) -> bool {
    p.is_some_and(crate::sink::is_stdout)
}

fn parse_format(s: &str) -> Result<crate::decode::Format, String> {
    crate::decode::Format::parse(s)
}

#[derive(Debug, Args)]
pub struct ConvertCmd {
    /// TOML config file (its [input] and [decode] sections).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The input's log format (input.format).
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub input_format: Option<crate::decode::Format>,
    /// Write the v1 events here instead of stdout ("-": stdout).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Append records that do not decode here (with source, line number and
    /// error; "-": stdout, when the events go to a file).
    #[arg(long, value_name = "FILE")]
    pub dead_letter: Option<PathBuf>,
    /// Exit 0 even when more than half of an input's first 1000 records
    /// are dead letters.
    #[arg(long)]
    pub allow_dead_letters: bool,
    /// JSON-lines input files; none or "-" reads stdin.
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ReportCmd {
    /// Rotation readiness of every key in rotation (or one).
    Rotation(ReportArgs),
    /// Usage of one key.
    Usage(ReportArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
    Html,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// State directory to read (opened read-only: a running detector is not disturbed).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "brokers",
        conflicts_with = "brokers"
    )]
    pub state_dir: Option<PathBuf>,
    /// Read the report of the whole group from Kafka instead of a state
    /// directory: the usage topic and the lifecycle topic, to their ends.
    #[arg(long, value_name = "HOST:PORT,...")]
    pub brokers: Option<String>,
    /// The usage topic (kafka.usage_topic), with --brokers.
    #[arg(long, value_name = "TOPIC", requires = "brokers")]
    pub usage_topic: Option<String>,
    /// The key lifecycle topic (kafka.lifecycle_topic), with --brokers.
    #[arg(long, value_name = "TOPIC", requires = "brokers")]
    pub lifecycle_topic: Option<String>,
    /// Only this key.
    #[arg(long, value_name = "KEY_ID")]
    pub key: Option<String>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
    /// Config file (for its `[report]` and `[usage]` settings).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunCmd {
    /// TOML config file; the flags below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers (kafka.brokers).
    #[arg(long, value_name = "HOST:PORT,...")]
    pub brokers: Option<String>,
    /// Consumer group (kafka.group).
    #[arg(long)]
    pub group: Option<String>,
    /// Access-event topic; may be given more than once (kafka.input_topics).
    #[arg(long = "input-topic", value_name = "TOPIC")]
    pub input_topics: Vec<String>,
    /// Key lifecycle topic; "" disables it (kafka.lifecycle_topic).
    #[arg(long, value_name = "TOPIC")]
    pub lifecycle_topic: Option<String>,
    /// Alert topic (kafka.alert_topic).
    #[arg(long, value_name = "TOPIC")]
    pub alert_topic: Option<String>,
    /// Dead-letter topic (kafka.dead_letter_topic).
    #[arg(long, value_name = "TOPIC")]
    pub dead_letter_topic: Option<String>,
    /// State directory (state.dir; default ./replayguard-state).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// HTTP listen address for metrics, health and reports; "" disables it (http.listen).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Where a partition new to the group starts: latest, earliest or an
    /// RFC 3339 time (kafka.start).
    #[arg(long, value_name = "latest|earliest|TIME")]
    pub start: Option<crate::pipeline::kafka::StartPolicy>,
    /// The input topics' log format (input.format).
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub input_format: Option<crate::decode::Format>,
}

impl RunCmd {
    /// Applies the flags over the config.
    pub fn apply(&self, c: &mut crate::config::Config) {
        let k = &mut c.kafka;
        if let Some(v) = &self.brokers {
            k.brokers = v.clone();
        }
        if let Some(v) = &self.group {
            k.group = v.clone();
        }
        if !self.input_topics.is_empty() {
            k.input_topics = self.input_topics.clone();
        }
        if let Some(v) = &self.lifecycle_topic {
            k.lifecycle_topic = v.clone();
        }
        if let Some(v) = &self.alert_topic {
            k.alert_topic = v.clone();
        }
        if let Some(v) = &self.dead_letter_topic {
            k.dead_letter_topic = v.clone();
        }
        if let Some(v) = &self.state_dir {
            c.state.dir = Some(v.clone());
        }
        if let Some(v) = &self.http {
            c.http.listen = v.clone();
        }
        if let Some(v) = self.start {
            c.kafka.start = v;
        }
        if let Some(f) = self.input_format {
            c.input.format = f;
        }
    }
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
    /// Events file (default, and "-": stdout).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the key lifecycle records here ("-": stdout, with --out FILE).
    #[arg(long, value_name = "FILE")]
    pub lifecycle: Option<PathBuf>,
    /// Write the expected alerts (ground truth) here ("-": stdout, with
    /// --out FILE).
    #[arg(long, value_name = "FILE")]
    pub truth: Option<PathBuf>,
    /// Config whose `[detect]` rules the ground truth follows.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format of the lines: v1, or kong (the same requests as Kong's
    /// log serializer writes them).
    #[arg(long, value_name = "FORMAT", value_parser = parse_format, default_value = "v1")]
    pub format: crate::decode::Format,
    /// How clients choose nonces: random (16 hex digits) or counter (an
    /// increasing number per key, as exchange APIs ask).
    #[arg(long, value_name = "STYLE", value_parser = parse_nonces, default_value = "random")]
    pub nonces: crate::generate::NonceStyle,
    /// With --nonces counter: fraction of requests sent with a counter
    /// from 6 to 60 s earlier (out of sequence).
    #[arg(long, default_value_t = 0.0)]
    pub out_of_sequence_rate: f64,
}

fn parse_nonces(s: &str) -> Result<crate::generate::NonceStyle, String> {
    match s {
        "random" => Ok(crate::generate::NonceStyle::Random),
        "counter" => Ok(crate::generate::NonceStyle::Counter),
        _ => Err(format!("`{s}`: expected random or counter")),
    }
}
