#!/usr/bin/env bash
# The control for `scan` on two cores: what two cores give to work that
# shares nothing. Each round runs, on the same input, (a) one `scan` pinned
# to the second core alone, then (b) two independent `scan`s at once, one
# pinned to each core (each with its own state), and the same for the
# serde_json floor (benches/baselines.rs `plain`). The ratio of (b)'s rates
# summed to (a)'s is what two cores can give when nothing crosses between
# them: the bound for the pipelined scan's 2-core/1-core ratio
# (scripts/bench-scan-cores.sh) on this machine.
#
#   scripts/bench-cores-control.sh [INPUT [ROUNDS]]
#   (default INPUT: bench-scan-cores.sh's 1 M events and lifecycle file)
#
# RG_BIN: the replayguard binary (default: this checkout's release build).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/scan-bench-input.sh
. scripts/scan-bench-input.sh
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

scan() { # CORE -> events/s
  rm -rf "$tmp/state-$1"
  taskset -c "$1" "$rg" scan --quiet --state-dir "$tmp/state-$1" "${lifecycle[@]}" \
    --alerts /dev/null "$input" 2>&1 | sed -n 's/.*(\([0-9]*\) events\/s).*/\1/p'
}
both() { # FN -> "rate_core0 rate_core1", run at once
  "$1" 0 >"$tmp/c0" &
  local b
  b=$("$1" 1)
  wait
  echo "$(cat "$tmp/c0") $b"
}

echo "| round | floor alone | floor, two at once | floor: both / alone | scan alone | scan, two at once | scan: both / alone |"
echo "|---|---|---|---|---|---|---|"
rf=() rs=()
for i in $(seq 1 "$rounds"); do
  fa=$(floor 1)
  read -r f0 f1 < <(both floor)
  sa=$(scan 1)
  read -r s0 s1 < <(both scan)
  a=$(awk -v x="$f0" -v y="$f1" -v z="$fa" 'BEGIN { printf "%.3f", (x + y) / z }')
  b=$(awk -v x="$s0" -v y="$s1" -v z="$sa" 'BEGIN { printf "%.3f", (x + y) / z }')
  rf+=("$a") rs+=("$b")
  printf '| %d | %s | %s + %s | %s | %s | %s + %s | %s |\n' "$i" "$fa" "$f0" "$f1" "$a" "$sa" "$s0" "$s1" "$b"
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf '| **median** | | | **%s** | | | **%s** |\n' "$(median "${rf[@]}")" "$(median "${rs[@]}")"
