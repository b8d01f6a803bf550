#!/usr/bin/env bash
# `scan` on one core against the plain serde_json floor (a borrowed-struct
# decode of every line and one hash-set insert: benches/baselines.rs
# `plain`), and `scan` on two cores against itself on one, side by side in
# one run: each round runs scan pinned to one core, the floor pinned to the
# same core, and scan on two cores, in turn, on the same input, with fresh
# durable state. Checks that one and two cores write the same alerts (ids,
# and the same order).
#
#   scripts/bench-scan-cores.sh [INPUT [ROUNDS]]
#   (default INPUT: 1 M generated events, seed 7, with their lifecycle file)
#
# RG_BIN: the replayguard binary (default: this checkout's release build).
# CORES: the two cores (default "0,1"); the one-core runs use the second.
# The machines drift by 2x from day to day: only ratios of one run are claims.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA_APT_PACKAGES="time ${EXTRA_APT_PACKAGES:-}" ./scripts/setup.sh
# shellcheck source=scripts/scan-bench-input.sh
. scripts/scan-bench-input.sh
cores="${CORES:-0,1}"
one_core="${cores##*,}"

scan() { # CPUS TAG -> "events/s peak_rss_kib"
  local cpus="$1" tag="$2" err
  rm -rf "$out/state" "$out/alerts-$tag.jsonl"
  err=$( { /usr/bin/time -f 'rss_kib=%M' taskset -c "$cpus" "$rg" scan --quiet --state-dir "$out/state" \
      "${lifecycle[@]}" --alerts "$out/alerts-$tag.jsonl" "$input" 2>&1 >/dev/null; } 2>&1 )
  echo "$(sed -n 's/.*(\([0-9]*\) events\/s).*/\1/p' <<<"$err") $(sed -n 's/rss_kib=\([0-9]*\)/\1/p' <<<"$err")"
}

echo "| round | scan, 1 core | serde_json floor, 1 core | scan / floor | scan, 2 cores | 2 cores / 1 core | peak RSS 1 / 2 cores MiB |"
echo "|---|---|---|---|---|---|---|"
r1=() r2=() rf=()
for i in $(seq 1 "$rounds"); do
  read -r s1 m1 < <(scan "$one_core" one)
  f=$(floor "$one_core")
  read -r s2 m2 < <(scan "$cores" two)
  # the same alerts, in the same order, whatever the cores
  if ! cmp -s "$out/alerts-one.jsonl" "$out/alerts-two.jsonl"; then
    echo "ALERTS DIFFER between 1 and 2 cores (round $i): $out/alerts-one.jsonl $out/alerts-two.jsonl" >&2
    exit 1
  fi
  a=$(awk -v x="$s1" -v y="$f" 'BEGIN { printf "%.3f", x / y }')
  b=$(awk -v x="$s2" -v y="$s1" 'BEGIN { printf "%.3f", x / y }')
  r1+=("$a") r2+=("$b") rf+=("$f")
  printf '| %d | %s | %s | %s | %s | %s | %d / %d |\n' "$i" "$s1" "$f" "$a" "$s2" "$b" $((m1 / 1024)) $((m2 / 1024))
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf '| **median** | | %s | **%s** | | **%s** | |\n' "$(median "${rf[@]}")" "$(median "${r1[@]}")" "$(median "${r2[@]}")"
echo "alerts: $(wc -l <"$out/alerts-one.jsonl") on one core, identical on two" >&2
