#!/usr/bin/env bash
# Kong preset against v1 on the same requests (issue 13's target: Kong at
# >= 0.7x v1's events/s): `replayguard scan` of the v1 file, then of the Kong
# file, pinned to one core, fresh durable state each run, for each binary
# given, ROUNDS times in turn. Prints each run and, per binary, the median of
# the per-round Kong / v1 ratios (wall clock and CPU time) and the ratio of
# the best run of each format.
#
# The shared machines move a single pair by +-0.1 on a busy day: give several
# binaries to compare them in the same rounds, and only claim what the
# medians of one run of this script say.
#
#   scripts/bench-kong-v1.sh ROUNDS V1_INPUT KONG_INPUT LIFECYCLE BIN...
#   e.g. rg=target/release/replayguard
#        $rg generate --events 1000000 --rate 5000 --seed 7 --out v1.jsonl --lifecycle keys.jsonl
#        $rg generate --events 1000000 --rate 5000 --seed 7 --format kong --out kong.jsonl
#        scripts/bench-kong-v1.sh 11 v1.jsonl kong.jsonl keys.jsonl /tmp/rg-old $rg
#
# CORE (default 1): the core the scans run on.
set -euo pipefail
rounds="$1" v1="$2" kong="$3" keys="$4"
shift 4
[ $# -ge 1 ] || { echo "usage: $0 ROUNDS V1_INPUT KONG_INPUT LIFECYCLE BIN..." >&2; exit 2; }
command -v /usr/bin/time >/dev/null || EXTRA_APT_PACKAGES="time ${EXTRA_APT_PACKAGES:-}" "$(dirname "$0")/setup.sh"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
core="${CORE:-1}"
events=$(wc -l < "$v1")
run() { # BIN ARGS... -> "wall_seconds cpu_seconds"
  local s e
  rm -rf "$dir/state"
  s=$(date +%s.%N)
  /usr/bin/time -o "$dir/time" -f "%U %S" taskset -c "$core" "$@" --quiet \
    --state-dir "$dir/state" --alerts /dev/null > "$dir/log" 2>&1 || {
    cat "$dir/log" >&2
    exit 1
  }
  e=$(date +%s.%N)
  echo "$(echo "$e - $s" | bc -l) $(awk '{print $1 + $2}' "$dir/time")"
}
echo "| round | binary | v1 events/s | Kong events/s | Kong / v1 | CPU v1 / Kong |"
echo "|---|---|---|---|---|---|"
for ((r = 1; r <= rounds; r++)); do
  for b in "$@"; do
    read -r vw vc < <(run "$b" scan --lifecycle "$keys" "$v1")
    read -r kw kc < <(run "$b" scan --lifecycle "$keys" --input-format kong "$kong")
    echo "$b $vw $vc $kw $kc" >> "$dir/runs"
    awk -v r="$r" -v b="$b" -v n="$events" -v vw="$vw" -v vc="$vc" -v kw="$kw" -v kc="$kc" \
      'BEGIN { printf "| %d | %s | %.0f | %.0f | %.3f | %.3f |\n", r, b, n / vw, n / kw, vw / kw, vc / kc }'
  done
done
for b in "$@"; do
  awk -v b="$b" '$1 == b { print $2, $3, $4, $5 }' "$dir/runs" | python3 -c '
import statistics, sys
rows = [list(map(float, l.split())) for l in sys.stdin]
wall = statistics.median(v / k for v, _, k, _ in rows)
cpu = statistics.median(v / k for _, v, _, k in rows)
best = min(r[0] for r in rows) / min(r[2] for r in rows)
print(f"{sys.argv[1]}: Kong / v1 median {wall:.3f} (CPU {cpu:.3f}), best run against best run {best:.3f}, {len(rows)} rounds")
' "$b"
done
