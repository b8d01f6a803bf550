//! The only module that knows every stage: batching, commit order, delivery
//! and shutdown. `scan` and `run` share the [`Engine`]; the Kafka runtime of
//! `run` lives in `pipeline/kafka/`.

pub mod chunk;
mod config;
mod convert;
mod engine;
mod health;
pub(crate) mod kafka;
pub(crate) mod scan;

pub use config::{available_cores, PipelineConfig};
pub use convert::{convert, signature_digest, ConvertArgs, ConvertSummary};
pub use engine::{CheckpointedUsage, CommitInfo, Engine, EngineOptions, Totals, MAX_SCAN_SHARDS};
pub use health::FIRST_RECORDS;
pub use kafka::usage::fleet_snapshot;
pub use kafka::{run, ClientFactory, KafkaConfig, RunArgs, StartPolicy, Status};
pub use scan::{scan, ScanArgs, ScanConfig, ScanSummary};

use crate::config::ConfigError;
use crate::detect::LookupError;
use crate::sink::SinkError;
use crate::source::SourceError;
use crate::state::StateError;

/// What stops `scan` or `run`. Each variant keeps its cause as `source`, so
/// the binary can walk the chain for the exit code.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A usage error (a missing input file, a bad flag value): exit code 2.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A request to the Kafka cluster failed.
    #[error("{what}: {source}")]
    Kafka {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Where a partition should start could not be found out.
    #[error("the start position of {partition}: {reason}")]
    StartPosition { partition: String, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("shard {0} is not open")]
    ShardNotOpen(u32),
    #[error(
        "the live index uses {bytes} bytes for {entries} live requests, over state.max_index \
         ({limit} bytes): raise state.max_index or shorten detect.retention"
    )]
    IndexFull {
        bytes: usize,
        limit: usize,
        entries: usize,
    },
}

impl PipelineError {
    /// Process exit code: 2 for usage and configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            PipelineError::Config(_) | PipelineError::Usage(_) => 2,
            _ => 1,
        }
    }

    pub(crate) fn kafka(
        what: impl Into<String>,
    ) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let what = what.into();
        move |source| PipelineError::Kafka { what, source }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| PipelineError::Io { what, source }
    }
}

#[cfg(test)]
mod tests;
