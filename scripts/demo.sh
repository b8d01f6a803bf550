#!/usr/bin/env bash
# The demo, on a fresh machine.
#
#   scripts/demo.sh          # files, no broker: generate a log with planted replays, scan it
#   scripts/demo.sh kafka    # the main job: Apache Kafka from Maven Central (no Docker),
#                            # produce the sample, `replayguard run`, alerts read back
#                            # from the alert topic, the live report
#
# Both set up the machine (apt packages, Rust build), build replayguard and
# print what they did. DEMO_DIR (default demo-out) holds the files.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-scan}"
if [ "$mode" = kafka ]; then
  EXTRA_APT_PACKAGES="kcat curl ${EXTRA_APT_PACKAGES:-}" SETUP_KAFKA=1 ./scripts/setup.sh
else
  ./scripts/setup.sh
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/replayguard/target}"
mkdir -p "$CARGO_TARGET_DIR" 2>/dev/null || export CARGO_TARGET_DIR="$HOME/.cache/replayguard/target"
cargo build --locked --quiet
rg="$CARGO_TARGET_DIR/debug/replayguard"
out="${DEMO_DIR:-demo-out}"
mkdir -p "$out"

"$rg" generate --events "${DEMO_EVENTS:-200000}" --rate 500 --seed 42 --malformed-rate 0.0005 \
  --disorder-ms 30000 --out "$out/access.jsonl" --lifecycle "$out/lifecycle.jsonl" --truth "$out/expected.jsonl"

# The generator's ground truth lists the per-request alerts it planted
# (replays, timestamps, key lifecycle); usage anomalies (rate spikes, new
# clients, auth-failure bursts) come from the traffic's shape and are not in it.
compare_with_truth() {
  local alerts="$1" kinds same total
  kinds=$(grep -o '"kind":"[a-z_]*"' "$out/expected.jsonl" | sort -u)
  same=$(grep -cF -f <(printf '%s\n' "$kinds") "$alerts" || true)
  total=$(wc -l < "$alerts")
  echo "Expected (ground truth from the generator): $(wc -l < "$out/expected.jsonl") per-request alerts; found: $same of those kinds, plus $((total - same)) usage anomalies (not in the truth)"
}

if [ "$mode" != kafka ]; then
  # a fresh scan: the alert and dead-letter files are appended to (a resumed scan adds to them)
  rm -rf "$out/state" "$out/alerts.jsonl" "$out/dead-letter.jsonl"
  "$rg" scan --state-dir "$out/state" --lifecycle "$out/lifecycle.jsonl" \
    --alerts "$out/alerts.jsonl" --dead-letter "$out/dead-letter.jsonl" "$out/access.jsonl"
  echo
  echo "First alerts ($out/alerts.jsonl):"
  head -n 3 "$out/alerts.jsonl"
  echo
  echo "Alerts by kind:"
  grep -o '"kind":"[a-z_]*"' "$out/alerts.jsonl" | sort | uniq -c
  compare_with_truth "$out/alerts.jsonl"
  echo "Dead letters: $(wc -l < "$out/dead-letter.jsonl") in $out/dead-letter.jsonl"
  exit 0
fi

# --- the Kafka demo -------------------------------------------------------
export KAFKA_PORT="${KAFKA_PORT:-19092}"
export KAFKA_DIR="$PWD/$out/kafka"
brokers="127.0.0.1:$KAFKA_PORT"
http="127.0.0.1:${DEMO_HTTP_PORT:-19898}"
rm -rf "$KAFKA_DIR" "$out/run-state"
./scripts/kafka.sh start
detector=""
cleanup() {
  [ -n "$detector" ] && kill -TERM "$detector" 2>/dev/null && wait "$detector" 2>/dev/null || true
  ./scripts/kafka.sh stop || true
}
trap cleanup EXIT

./scripts/kafka.sh create-topic access-events 4
./scripts/kafka.sh create-topic key-lifecycle 1 cleanup.policy=compact
./scripts/kafka.sh create-topic replayguard-alerts 4
./scripts/kafka.sh create-topic replayguard-dead-letters 4
./scripts/kafka.sh create-topic replayguard-reports 4 cleanup.policy=compact

# keyed by key_id (per-key state needs every event of a key on one partition);
# malformed lines with no key_id to key them by are not produced, so the
# dead-letter topic gets fewer than the file scan's dead-letter file
key_tsv() { sed -n 's/.*"key_id":"\([^"]*\)".*/\1\t&/p' "$1"; }
key_tsv "$out/lifecycle.jsonl" | kcat -b "$brokers" -t key-lifecycle -P -K$'\t'
key_tsv "$out/access.jsonl" | kcat -b "$brokers" -t access-events -P -K$'\t'
echo "produced $(wc -l < "$out/access.jsonl") access events and $(wc -l < "$out/lifecycle.jsonl") lifecycle records to $brokers" >&2

# the sample is history: read it whole (kafka.start = earliest); a real
# first deployment keeps the default (latest) and reports from the log end
"$rg" run --brokers "$brokers" --group replayguard-demo --start earliest \
  --state-dir "$out/run-state" --http "$http" 2>"$out/run.log" &
detector=$!

want=$(wc -l < "$out/expected.jsonl")
echo "waiting for replayguard run to work through the topic ($want alerts expected)..." >&2
for _ in $(seq 1 240); do
  got=$(curl -s "http://$http/v1/status" | sed -n 's/.*"alerts":\([0-9]*\).*/\1/p')
  [ "${got:-0}" -ge "$want" ] && break
  kill -0 "$detector" 2>/dev/null || { cat "$out/run.log" >&2; exit 1; }
  sleep 0.5
done
kcat -b "$brokers" -t replayguard-alerts -C -e -q -f '%s\n' >"$out/alerts-from-topic.jsonl"
echo
echo "First alerts read back from the alert topic replayguard-alerts:"
head -n 3 "$out/alerts-from-topic.jsonl"
echo
echo "Alerts by kind (topic):"
grep -o '"kind":"[a-z_]*"' "$out/alerts-from-topic.jsonl" | sort | uniq -c
compare_with_truth "$out/alerts-from-topic.jsonl"
echo "Dead letters on replayguard-dead-letters: $(kcat -b "$brokers" -t replayguard-dead-letters -C -e -q -f 'x\n' | wc -l)"
echo
echo "Live report: http://$http/reports/rotations (saved to $out/rotations.html)"
curl -s "http://$http/reports/rotations" >"$out/rotations.html"
curl -s "http://$http/v1/rotations" | head -c 600
echo
