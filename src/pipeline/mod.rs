//! The only module that knows every stage: batching, commit order, delivery
//! and shutdown. `scan` and `run` share the [`Engine`]; the Kafka runtime of
//! `run` lives in [`kafka`].

pub mod engine;
pub mod kafka;
pub mod scan;

pub use engine::{CommitInfo, Engine, Totals};
pub use kafka::{run, RunArgs, Status};
pub use scan::{scan, ScanArgs, ScanSummary};

use crate::config::ConfigError;
use crate::detect::LookupError;
use crate::sink::SinkError;
use crate::source::SourceError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("input: {0}")]
    Input(String),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Lookup(#[from] LookupError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
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
}

#[cfg(test)]
mod tests;
