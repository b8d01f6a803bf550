//! replayguard: a streaming replay and anomaly detector for signed API access logs.
//!
//! ```text
//! source (kafka | files) -> decode -> detect (pure) -> state (rocksdb) -> sink (alerts | DLQ) -> report/http
//! ```
//!
//! Data flows one way; a module uses only what is upstream of it, and only
//! [`pipeline`] knows every stage.
//!
//! | module | owns |
//! |---|---|
//! | [`schema`] | wire types (access event, lifecycle event, alert, report) and timestamps; no logic |
//! | [`units`] | durations and sizes as the configuration writes them |
//! | [`decode`] | bytes to [`schema::AccessEvent`]: the fast path, the typed conversions, [`decode::DecodeError`] for dead letters; `[decode]` |
//! | [`detect`] | the rules, synchronous and deterministic, on event time (no I/O, no clock); `[detect]`, `[usage]` |
//! | [`model`] | the reference model of the rules (tests, generator ground truth) |
//! | [`state`] | the [`state::StateStore`] trait, RocksDB and in-memory stores, sighting segments; one atomic commit per batch; `[state]` |
//! | [`source`] | records with positions: files/stdin, Kafka messages, an in-memory twin |
//! | [`sink`] | alerts and dead letters: JSON lines, Kafka producers, in-memory twins |
//! | [`pipeline`] | the engine (batching, commit order), `scan` (`[scan]`), and the Kafka runtime of `run` (`pipeline/kafka/`: runtime loop, commit cycle, rebalance, start positions, client factory; `[kafka]`) |
//! | [`report`] | rotation readiness and usage views; table, JSON and HTML renderers; `[report]` |
//! | [`http`] | the axum router of `run` (health, readiness, metrics, status, reports); `[http]` |
//! | [`config`] | the configuration tree put together from every section, resolved in one step |
//! | [`cli`] | the command line; [`generate`]: sample traffic with planted replays |
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
pub(crate) mod telemetry;

/// The Prometheus exporter as `run` installs it, and the HELP text of
/// every metric (call after installing).
pub use telemetry::{describe as describe_metrics, prometheus as prometheus_exporter};
pub mod units;
