#!/usr/bin/env bash
# Sets up a fresh machine and runs every check CI runs: formatting, clippy,
# and the whole test suite (Kafka tests against Apache Kafka, the HTML
# report in headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
# chromium: the browser test of the HTML report; kcat: Kafka readiness checks
# and the consume-only baseline; Java 17 and Maven: Apache Kafka
EXTRA_APT_PACKAGES="chromium kcat ${EXTRA_APT_PACKAGES:-}" SETUP_KAFKA=1 ./scripts/setup.sh
# Apache Kafka from Maven Central into a cache outside the clone; each Kafka
# test starts its own broker from it
./scripts/kafka.sh install
# one build directory outside the clone, reused between runs
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/replayguard/target}"
mkdir -p "$CARGO_TARGET_DIR" 2>/dev/null || export CARGO_TARGET_DIR="$HOME/.cache/replayguard/target"

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== fuzz targets compile (running them needs nightly: see fuzz/Cargo.toml)" >&2
(cd fuzz && cargo check --locked --bins)
echo "== cargo test" >&2
cargo test --locked
