#!/usr/bin/env bash
# End-to-end throughput of `replayguard scan` with durable RocksDB state:
# 1 M generated events in three sizes (the generator's full lines with a
# 64-hex-char signature; without the signature; lean lines with the required
# fields and the nonce only, ~275 bytes), three runs each, median events/s.
# Builds in release mode.
#
#   scripts/bench-scan.sh [EVENTS]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/replayguard/target}"
cargo build --release --locked --quiet --bin replayguard
rg="$CARGO_TARGET_DIR/release/replayguard"
n="${1:-1000000}"
out="${BENCH_DIR:-bench-out}"
mkdir -p "$out"
if [ ! -s "$out/scan-$n.jsonl" ]; then
  "$rg" generate --events "$n" --rate 5000 --seed 7 --out "$out/scan-$n.jsonl" --lifecycle "$out/scan-keys.jsonl"
  sed -E 's/,"signature":"[0-9a-f]+"//' "$out/scan-$n.jsonl" > "$out/scan-$n-nosig.jsonl"
  sed -E 's/,"user_agent":"[^"]*"//; s/,"client_id":"[^"]*"//' "$out/scan-$n-nosig.jsonl" > "$out/scan-$n-lean.jsonl"
fi
printf '| input | bytes/event | run 1 | run 2 | run 3 | median events/s |\n|---|---|---|---|---|---|\n'
for f in "scan-$n.jsonl" "scan-$n-nosig.jsonl" "scan-$n-lean.jsonl"; do
  bytes=$(stat -c %s "$out/$f")
  rates=()
  for _ in 1 2 3; do
    rm -rf "$out/state"
    r=$("$rg" scan --quiet --state-dir "$out/state" --lifecycle "$out/scan-keys.jsonl" \
        --alerts /dev/null "$out/$f" 2>&1 | sed -n 's/.*(\([0-9]*\) events\/s).*/\1/p')
    rates+=("$r")
  done
  median=$(printf '%s\n' "${rates[@]}" | sort -n | sed -n 2p)
  printf '| %s | %d | %s | %s | %s | **%s** |\n' "$f" $((bytes / n)) "${rates[0]}" "${rates[1]}" "${rates[2]}" "$median"
done
rm -rf "$out/state"
