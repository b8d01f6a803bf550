//! replayguard: a streaming replay and anomaly detector for signed API access logs.
//!
//! ```text
//! source (kafka | files) -> decode -> detect (pure) -> state (rocksdb) -> sink (alerts | DLQ)
//! ```
//!
//! - [`source`]: records with positions (file + line, or topic partition + offset);
//! - [`decode`]: bytes to [`schema::AccessEvent`], typed errors for dead letters;
//! - [`detect`]: the rules, synchronous and deterministic, on event time;
//! - [`state`]: durable state with an atomic commit per batch (RocksDB, or in memory);
//! - [`sink`]: alerts and dead letters;
//! - [`pipeline`]: the only module that knows every stage.
//!
//! Guarantees: state is exactly-once (state changes and input positions commit
//! together), alerts are at-least-once with deterministic `alert_id`s, and a
//! record processed again is recognised as itself, never as a replay.

pub mod cli;
pub mod config;
pub mod decode;
pub mod detect;
pub mod generate;
pub mod http;
pub mod model;
pub mod pipeline;
pub mod report;
pub mod schema;
pub mod sink;
pub mod source;
pub mod state;
pub mod telemetry;
pub mod testkit;
pub mod units;
