#!/usr/bin/env bash
# Kafka end to end, in one run against one broker and topic: consume-only
# rdkafka client vs `replayguard run` (records/s), then replay -> alert latency
# (p50/p99) at half of run's rate. Starts its own Tansu broker unless
# --brokers HOST:PORT is given.
#
#   scripts/bench-kafka.sh [--events N] [--brokers HOST:PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/broker.sh install
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/replayguard/target}"
cargo build --release --locked --quiet --bin replayguard
export REPLAYGUARD_BIN="$CARGO_TARGET_DIR/release/replayguard"
RG_BENCH_KAFKA=1 cargo bench --locked --quiet --bench kafka_e2e -- "$@"
