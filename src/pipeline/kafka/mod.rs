//! `replayguard run`: a consumer group over the access-event topics, the
//! detector, and alerts to a topic.
//!
//! Records are polled in micro-batches (librdkafka prefetches in the
//! background) and go through the [`crate::pipeline::Engine`]. Where to find what:
//!
//! | file | what |
//! |---|---|
//! | `runtime.rs` | the runtime the poll loop and rebalance callbacks share, and the poll loop |
//! | `commit.rs` | the commit cycle: state + offsets + outbox, alerts, group offsets |
//! | `rebalance.rs` | assignment (where each partition starts) and revocation |
//! | `start.rs` | the start-position decision (local state, group offset, `kafka.start`) |
//! | `config.rs` | `[kafka]` |
//! | `client.rs` | the one factory of every Kafka client, and secret-free errors |
//! | `lifecycle.rs` | the key-lifecycle topic as a global table |
//! | `usage.rs` | the usage topic: a changelog of per-key usage, and its global table |
//! | `forward.rs` | repartitioning by key_id |
//! | `reports.rs` | report snapshots for HTTP and the reports topic |
//! | `admin.rs` | creating the topics `run` writes to |
//! | `status.rs` | what `run` shares with the HTTP server and the signal handler |

mod admin;
mod client;
mod commit;
mod config;
mod forward;
mod lifecycle;
mod rebalance;
mod reports;
mod runtime;
mod start;
mod status;
pub mod usage;

pub use client::ClientFactory;
pub use config::KafkaConfig;
pub use runtime::{run, RunArgs};
pub use start::StartPolicy;
pub use status::Status;
