#!/usr/bin/env bash
# Side by side, counted instead of timed: `replayguard scan` of two binaries
# over the same input under valgrind's cachegrind, one thread, each with
# fresh durable state. Prints the instructions executed and the simulated
# last-level cache misses of each, their ratios, and whether both wrote the
# same alerts.
#
# The shared machines drift by 2x from day to day and by ±15 % from one run
# to the next on a busy day: a change worth a few per cent cannot be seen in
# events/s there (scripts/bench-ab.sh), while an instruction count is the
# same on every run. It is not a speed: memory stalls, which are much of
# this detector's time, show only as the (simulated) misses. Use it to see
# what a change does to the work per event; claim speed with bench-ab.sh.
#
#   scripts/bench-instr.sh OLD_BIN NEW_BIN INPUT [EVENTS] [EXTRA SCAN ARGS...]
#   e.g. scripts/bench-instr.sh /tmp/rg-old /tmp/rg-new counter.jsonl 200000 --config seq.toml
#
# EVENTS (default 200000): how many lines of INPUT to scan (cachegrind runs
# ~50x slower than the binary). A_ARGS / B_ARGS: scan arguments for one side
# only. A `--config` given here must not set `pipeline.threads`: the script
# adds its own one-thread config (several threads would make the counts
# depend on scheduling). A_ONE_THREAD=0 / B_ONE_THREAD=0: leave it out for
# that side (a binary from before the pipelined engine, which knows no
# `[pipeline]` and runs on one thread anyway). ALLOW_DIFFERENT_ALERTS=1:
# binaries whose alerts are meant to differ (new fields, new rules).
#
# LL: the simulated last-level cache as size,associativity,line (default
# 33554432,16,64, a 32 MiB L3 like this machine's). Left to itself,
# cachegrind takes what the host reports, here 256 MiB direct-mapped: with
# the whole working set inside it, its misses were mostly first touches of
# memory (the figures in BENCHMARKS.md before 2026-12-07, later, are such).
# No prefetcher is simulated: a miss in a stream the hardware prefetches
# costs far less than one in a random probe.
set -euo pipefail
a="$1" b="$2" input="$3" events="${4:-200000}"
shift $(( $# >= 4 ? 4 : 3 ))
command -v valgrind >/dev/null || EXTRA_APT_PACKAGES="valgrind ${EXTRA_APT_PACKAGES:-}" "$(dirname "$0")/setup.sh"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
head -n "$events" "$input" > "$dir/input.jsonl"
one() { # TAG BIN ONE_THREAD ARGS... -> "instructions ll_misses"
  local tag="$1" bin="$2" one_thread="$3" args=() cfg=() a i
  shift 3
  # one thread: merged into the config given, or a config of its own
  for a in "$@"; do args+=("$a"); done
  if [ "$one_thread" = 1 ]; then
    printf '[pipeline]\nthreads = 1\n' > "$dir/threads.toml"
  else
    : > "$dir/threads.toml"
  fi
  for ((i = 0; i < ${#args[@]}; i++)); do
    if [ "${args[$i]}" = --config ]; then
      cat "${args[$((i + 1))]}" >> "$dir/threads.toml"
      args[$i]="" args[$((i + 1))]=""
    fi
  done
  for a in "${args[@]}"; do [ -n "$a" ] && cfg+=("$a"); done
  rm -rf "$dir/state"
  valgrind --tool=cachegrind --cache-sim=yes --LL="${LL:-33554432,16,64}" --cachegrind-out-file="$dir/cg.$tag" \
    "$bin" scan --quiet --state-dir "$dir/state" --alerts "$dir/alerts-$tag.jsonl" \
    --config "$dir/threads.toml" ${cfg[@]+"${cfg[@]}"} "$dir/input.jsonl" > "$dir/log.$tag" 2>&1 || {
    cat "$dir/log.$tag" >&2
    exit 1
  }
  local ir ll
  ir=$(sed -n 's/.*I *refs: *\([0-9,]*\).*/\1/p' "$dir/log.$tag" | tr -d ,)
  ll=$(sed -n 's/.*LL misses: *\([0-9,]*\).*/\1/p' "$dir/log.$tag" | tr -d ,)
  echo "$ir $ll"
}
# shellcheck disable=SC2086 # A_ARGS / B_ARGS are word lists
read -r ia la < <(one a "$a" "${A_ONE_THREAD:-1}" ${A_ARGS:-} "$@") || true
# shellcheck disable=SC2086
read -r ib lb < <(one b "$b" "${B_ONE_THREAD:-1}" ${B_ARGS:-} "$@") || true
# a side that failed printed its log and nothing else
if [ -z "${ia:-}" ] || [ -z "${ib:-}" ]; then
  echo "bench-instr: a run failed (its log is above)" >&2
  exit 1
fi
printf '| side | instructions | per event | LL misses | per event |\n|---|---|---|---|---|\n'
for s in "A $ia $la" "B $ib $lb"; do
  read -r t i l <<<"$s"
  awk -v t="$t" -v i="$i" -v l="$l" -v n="$events" \
    'BEGIN { printf "| %s | %.0f | %.0f | %.0f | %.2f |\n", t, i, i / n, l, l / n }'
done
awk -v ia="$ia" -v ib="$ib" -v la="$la" -v lb="$lb" \
  'BEGIN { printf "| **B/A** | **%.4f** | | **%.4f** | |\n", ib / ia, lb / la }'
if cmp -s "$dir/alerts-a.jsonl" "$dir/alerts-b.jsonl"; then
  echo "same alerts ($(wc -l < "$dir/alerts-a.jsonl") lines)"
elif [ "${ALLOW_DIFFERENT_ALERTS:-0}" = 1 ]; then
  echo "the alerts differ (allowed: ALLOW_DIFFERENT_ALERTS=1)"
else
  echo "the alerts differ (ALLOW_DIFFERENT_ALERTS=1 when the binaries are meant to differ)" >&2
  exit 1
fi
