#!/usr/bin/env bash
# The usage topic at a partition hand-over: instance A consumes every event
# (KEYS keys over 4 partitions), instance B joins the group and takes about
# half of the partitions. Reports what A published to the usage topic
# (records, bytes, bytes per record, the size of the topic's log segments)
# and, for each partition B took, the keys whose usage it got from the topic and how long that took (UsageHandedOver log lines), and the
# time from B's start until both instances' rotation reports are identical.
# Starts its own Apache Kafka broker (scripts/kafka.sh): it shares the two
# cores with both instances. Release build.
#
#   scripts/bench-handover.sh [KEYS] [EVENTS]     # default 10000 keys, 200000 events
set -euo pipefail
cd "$(dirname "$0")/.."
keys="${1:-10000}"
events="${2:-200000}"
EXTRA_APT_PACKAGES="kcat" SETUP_KAFKA=1 ./scripts/setup.sh >/dev/null
./scripts/kafka.sh install
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/replayguard/target}"
cargo build --release --locked --quiet --bin replayguard
rg="$CARGO_TARGET_DIR/release/replayguard"
out="$(realpath -m "${BENCH_DIR:-bench-out}")/handover"
rm -rf "$out"
mkdir -p "$out"
export KAFKA_PORT="${KAFKA_PORT:-19292}" KAFKA_DIR="$out/kafka"
brokers="127.0.0.1:$KAFKA_PORT"
./scripts/kafka.sh start >/dev/null
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ./scripts/kafka.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
./scripts/kafka.sh create-topic access-events 4 >/dev/null
./scripts/kafka.sh create-topic key-lifecycle 1 cleanup.policy=compact >/dev/null

# events keyed by key_id; one key per ~events/keys requests
"$rg" generate --events "$events" --keys "$keys" --rate 2000 --seed 9 \
  --lifecycle "$out/lifecycle.jsonl" 2>/dev/null >"$out/events.jsonl"
python3 - "$out" <<'EOF'
import json, sys
d = sys.argv[1]
for name in ("events", "lifecycle"):
    with open(f"{d}/{name}.jsonl") as f, open(f"{d}/{name}.keyed", "w") as o:
        for line in f:
            try:
                k = json.loads(line).get("key_id") or ""
            except Exception:
                k = ""
            o.write(f"{k}\t{line}")
EOF
kcat -b "$brokers" -P -K $'\t' -t key-lifecycle -l "$out/lifecycle.keyed"
kcat -b "$brokers" -P -K $'\t' -t access-events -l "$out/events.keyed"

status() { curl -fsS "http://127.0.0.1:$1/v1/status" 2>/dev/null || echo '{}'; }
field() { python3 -c "import json,sys; v=json.loads(sys.argv[1]); print(v.get('$2', 0) if not isinstance(v.get('$2'), list) else len(v['$2']))" "$3"; }
start() { # name port
  "$rg" --log info run --brokers "$brokers" --group bench-handover --input-topic access-events \
    --state-dir "$out/$1" --http "127.0.0.1:$2" --start earliest 2>"$out/$1.log" &
  pids+=($!)
}
start a 19301
for _ in $(seq 600); do
  [ "$(field "$(status 19301)" events "$(status 19301)")" = "$events" ] && break
  sleep 0.5
done
t0=$(date +%s.%N)
start b 19302
for _ in $(seq 600); do
  b=$(status 19302)
  if [ "$(field "$b" assigned "$b")" -gt 0 ]; then
    ra=$(curl -fsS http://127.0.0.1:19301/v1/rotations || true)
    rb=$(curl -fsS http://127.0.0.1:19302/v1/rotations || true)
    if [ -n "$ra" ] && [ "$ra" = "$rb" ] && grep -q "taken from the usage topic" "$out/b.log"; then break; fi
  fi
  sleep 0.1
done
t1=$(date +%s.%N)
metrics=$(curl -fsS http://127.0.0.1:19301/metrics)
recs=$(echo "$metrics" | awk '/^replayguard_usage_published_records_total/ {s+=$2} END {print s+0}')
bytes=$(echo "$metrics" | awk '/^replayguard_usage_published_bytes_total/ {s+=$2} END {print s+0}')
# the segments' records (Kafka preallocates 10 MiB index files per segment)
disk=$(cat "$KAFKA_DIR"/data/replayguard-usage-*/*.log 2>/dev/null | wc -c)
echo "keys $keys, events $events (broker and both instances on this machine's cores)"
echo "A published $recs usage records, $bytes bytes ($(python3 -c "print(round($bytes/max($recs,1)))") bytes/record); usage topic's log segments $((disk / 1024)) KiB"
sed 's/\x1b\[[0-9;]*m//g' "$out/b.log" | grep "taken from the usage topic" |
  sed -E 's/.*partition=([^ ]+).*keys=([0-9]+).*elapsed_ms=([0-9]+).*/B took \1: usage of \2 keys in \3 ms/'
echo "B started -> both rotation reports identical: $(python3 -c "print(f'{$t1 - $t0:.2f}')") s"
