#!/usr/bin/env bash
# Kafka end to end, in one run against one broker and topic: consume-only
# rdkafka client vs `replayguard run` (records/s), then replay -> alert latency
# (p50/p99) at half of run's rate, at 100 000/s when below it, and at
# 20 000 requests/s. Starts its own Apache Kafka broker (scripts/kafka.sh,
# on this machine: it shares the cores) unless --brokers HOST:PORT is given.
#
#   scripts/bench-kafka.sh [--events N] [--brokers HOST:PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA_APT_PACKAGES="kcat" SETUP_KAFKA=1 ./scripts/setup.sh
./scripts/kafka.sh install
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/replayguard/target}"
cargo build --release --locked --quiet --bin replayguard
export REPLAYGUARD_BIN="$CARGO_TARGET_DIR/release/replayguard"
RG_BENCH_KAFKA=1 cargo bench --locked --quiet --bench kafka_e2e -- "$@"
