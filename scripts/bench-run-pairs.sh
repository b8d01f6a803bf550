#!/usr/bin/env bash
# `run` against Apache Kafka, binaries side by side: one topic filled once,
# then each binary reads all of it with a fresh group and state, in turn,
# ROUNDS times. Prints records/s from the first record processed to the
# last one committed (the detector's own count over HTTP), the detector's
# and the broker's CPU, and each detector thread's load: which stage waits.
#
#   scripts/bench-run-pairs.sh ROUNDS EVENTS BIN[::CONFIG]...
#   scripts/bench-run-pairs.sh 4 2000000 /tmp/rg-old /tmp/rg-new
#   scripts/bench-run-pairs.sh 5 2000000 /tmp/rg /tmp/rg::'[pipeline]\nchunk_events = 2048\nqueue_chunks = 6'
#   scripts/bench-run-pairs.sh 5 2000000 /tmp/rg /tmp/rg::'"max.partition.fetch.bytes" = "4194304"'
#
# CONFIG (printf %b escapes) is appended to that variant's config, whose
# last table is [kafka.consumer_properties]: lines before a table header
# are consumer properties.
#
# Environment:
#   PIPELINE   lines added under [pipeline] of every run (e.g. 'chunk_events = 2048')
#   KAFKA_PORT the broker's port (default 19092; started here, stopped at the end)
#   OUT        work folder (default /tmp/rg-run-pairs)
#
# The broker, the detector and this script share the machine's cores: say
# so next to every figure. Alternate binaries within one run: this machine
# drifts by 2x from day to day.
set -euo pipefail

ROUNDS="${1:?rounds}"
EVENTS="${2:?events}"
shift 2
[ $# -ge 1 ] || { echo "usage: $0 ROUNDS EVENTS BIN..." >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
export KAFKA_PORT="${KAFKA_PORT:-19092}"
export KAFKA_DIR="${KAFKA_DIR:-/tmp/rg-run-pairs-kafka-$KAFKA_PORT}"
OUT="${OUT:-/tmp/rg-run-pairs}"
HTTP=127.0.0.1:18181
BROKER=127.0.0.1:$KAFKA_PORT
mkdir -p "$OUT"
command -v kcat >/dev/null || { echo "kcat is needed (apt install kcat)" >&2; exit 2; }

rm -rf "$KAFKA_DIR"
"$here/kafka.sh" start >/dev/null
trap '"$here/kafka.sh" stop >/dev/null 2>&1 || true' EXIT
"$here/kafka.sh" create-topic bench-in 4 >/dev/null
"$here/kafka.sh" create-topic key-lifecycle 1 >/dev/null
broker_pid="$(cat "$KAFKA_DIR/broker.pid")"

# the requests, keyed by key_id (as gateways' log shippers key them)
"$1" generate --events "$EVENTS" --rate 20000 --seed 3 --out "$OUT/events.jsonl" >/dev/null
python3 - "$OUT/events.jsonl" "$OUT/events.kv" <<'PY'
import json, sys
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as o:
    for l in f:
        o.write((json.loads(l).get("key_id") or "") + "\t" + l)
PY
kcat -P -l -b "$BROKER" -t bench-in -K$'\t' -X linger.ms=20 -X batch.num.messages=10000 "$OUT/events.kv"

# the detector's count of committed records (no interpreter started per
# probe: the probe's CPU is taken from what it measures)
events_done() {
  local n
  n=$(curl -s "http://$HTTP/v1/status" 2>/dev/null | grep -o '"events":[0-9]*' | head -1 | cut -d: -f2)
  echo "${n:-0}"
}
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# name and CPU ticks of each thread (a thread that exits meanwhile is left out)
threads() {
  local t name ticks
  for t in /proc/"$1"/task/*; do
    name=$(cat "$t/comm" 2>/dev/null) || continue
    ticks=$(awk '{print $14+$15}' "$t/stat" 2>/dev/null) || continue
    [ -n "$name" ] && [ -n "$ticks" ] && echo "$name $ticks"
  done
}

one() {
  local bin="${1%%::*}" extra="" n="$2" v="$3"
  [ "$1" != "$bin" ] && extra="${1#*::}"
  local d="$OUT/$n-$v-$(basename "$bin")"
  rm -rf "$d" && mkdir -p "$d"
  {
    [ -n "${PIPELINE:-}" ] && printf '[pipeline]\n%b\n' "$PIPELINE"
    cat <<EOF
[state]
dir = "$d/state"
[kafka]
brokers = "$BROKER"
group = "pairs-$n-$v-$RANDOM$RANDOM"
input_topics = ["bench-in"]
lifecycle_topic = "key-lifecycle"
start = "earliest"
[kafka.consumer_properties]
"session.timeout.ms" = "2000"
"heartbeat.interval.ms" = "500"
EOF
    [ -n "$extra" ] && printf '%b\n' "$extra"
  } >"$d/run.toml"
  "$bin" run --config "$d/run.toml" --http "$HTTP" --log warn >"$d/out.log" 2>&1 &
  local pid=$!
  until [ "$(events_done)" -gt 0 ] 2>/dev/null; do sleep 0.02; done
  local t0 c0 b0 t1 c1 b1
  t0=$(date +%s.%N); c0=$(ticks $pid); b0=$(ticks "$broker_pid"); threads $pid >"$d/threads0"
  until [ "$(events_done)" -ge "$EVENTS" ]; do sleep 0.05; done
  t1=$(date +%s.%N); c1=$(ticks $pid); b1=$(ticks "$broker_pid"); threads $pid >"$d/threads1"
  kill $pid; wait $pid 2>/dev/null || true
  python3 - "$d" "$bin" "$EVENTS" "$t0" "$t1" "$c0" "$c1" "$b0" "$b1" "$extra" <<'PY'
import collections, sys
d, b, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0, t1, c0, c1, b0, b1 = map(float, sys.argv[4:10])
s = t1 - t0
def load(f):
    c = collections.Counter()
    for l in open(f):
        k, v = l.rsplit(" ", 1)
        c[k] += int(v)
    return c
a, z = load(d + "/threads0"), load(d + "/threads1")
busy = sorted(((z[k] - a[k]) / 100 / s, k) for k in z if z[k] > a[k])[::-1]
print(f"{b}{' (' + sys.argv[10] + ')' if sys.argv[10] else ''}: {n / s:,.0f} records/s, detector {(c1 - c0) / 100 / s:.2f} cores, broker {(b1 - b0) / 100 / s:.2f}")
print("  threads: " + ", ".join(f"{k} {v:.2f}" for v, k in busy))
PY
}

for r in $(seq 1 "$ROUNDS"); do
  echo "round $r"
  v=0
  for bin in "$@"; do
    v=$((v + 1))
    one "$bin" "$r" "$v"
  done
done
