#!/usr/bin/env bash
# Sets up a fresh machine, builds replayguard, generates a realistic access log
# (with planted replays, duplicates, skewed clocks, key rotations and a few
# malformed lines) and scans it: alerts on stdout, the summary on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/replayguard/target}"
mkdir -p "$CARGO_TARGET_DIR" 2>/dev/null || export CARGO_TARGET_DIR="$HOME/.cache/replayguard/target"
cargo build --locked --quiet
rg="$CARGO_TARGET_DIR/debug/replayguard"
out="${DEMO_DIR:-demo-out}"
mkdir -p "$out"

"$rg" generate --events "${DEMO_EVENTS:-200000}" --rate 500 --seed 42 --malformed-rate 0.0005 \
  --disorder-ms 30000 --out "$out/access.jsonl" --lifecycle "$out/lifecycle.jsonl" --truth "$out/expected.jsonl"
rm -rf "$out/state"
"$rg" scan --state-dir "$out/state" --lifecycle "$out/lifecycle.jsonl" \
  --alerts "$out/alerts.jsonl" --dead-letter "$out/dead-letter.jsonl" "$out/access.jsonl"

echo
echo "First alerts ($out/alerts.jsonl):"
head -n 3 "$out/alerts.jsonl"
echo
echo "Alerts by kind:"
grep -o '"kind":"[a-z_]*"' "$out/alerts.jsonl" | sort | uniq -c
echo "Expected (ground truth from the generator): $(wc -l < "$out/expected.jsonl") alerts; found: $(wc -l < "$out/alerts.jsonl")"
echo "Dead letters: $(wc -l < "$out/dead-letter.jsonl") in $out/dead-letter.jsonl"
