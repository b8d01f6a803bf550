#!/usr/bin/env bash
# Several binaries side by side: `replayguard scan` of each in turn over the
# same input, ROUNDS rounds, pinned to one core, fresh durable state each
# time. Prints, for each binary, its median events/s and the median of its
# per-round ratios to the first binary (events/s, and CPU time first/it).
# The machines drift by 2x from day to day: only the ratios of one run are
# claims.
#
#   scripts/bench-rotate.sh INPUT ROUNDS BIN_A BIN_B [BIN_C ...]
#
# SCAN_ARGS: extra scan arguments for every binary (e.g. "--lifecycle keys.jsonl").
# CORE: the core (default 1).
set -euo pipefail
input="$1" rounds="$2"
shift 2
core="${CORE:-1}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
for _ in $(seq 1 "$rounds"); do
  for bin in "$@"; do
    rm -rf "$dir/state"
    # shellcheck disable=SC2086 # SCAN_ARGS is a word list
    out=$( { /usr/bin/time -f 'cpu_s=%U %S' taskset -c "$core" "$bin" scan --quiet --state-dir "$dir/state" \
        --alerts /dev/null ${SCAN_ARGS:-} "$input" 2>&1 >/dev/null; } 2>&1 )
    rate=$(sed -n 's/.*(\([0-9]*\) events\/s).*/\1/p' <<<"$out")
    cpu=$(sed -n 's/.*cpu_s=\([0-9.]*\) \([0-9.]*\)/\1 \2/p' <<<"$out" | awk '{ printf "%.2f", $1 + $2 }')
    echo "$bin $rate $cpu"
  done
done | python3 -c '
import statistics as st, sys
runs = {}
order = []
for line in sys.stdin:
    b, rate, cpu = line.split()
    if b not in runs:
        order.append(b)
    runs.setdefault(b, []).append((int(rate), float(cpu)))
print("| binary | median events/s | events/s ratio to the first (median, range) | CPU ratio first/it |")
print("|---|---|---|---|")
base = runs[order[0]]
for b in order:
    v = runs[b]
    r = [x[0] / y[0] for x, y in zip(v, base)]
    c = [y[1] / x[1] for x, y in zip(v, base)]
    print(f"| {b} | {st.median(x[0] for x in v):.0f} | {st.median(r):.3f} ({min(r):.3f}-{max(r):.3f}) | {st.median(c):.3f} |")
'
