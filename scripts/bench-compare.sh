#!/usr/bin/env bash
# replayguard against what users would pick instead, in one run on the same
# machine and the same generated events:
#   - replayguard scan (durable RocksDB state)
#   - replayguard run vs a consume-only rdkafka client (Tansu broker)
#   - a Redis nonce store (Lua script per event), unpipelined and pipelined
#   - a naive in-memory detector (serde_json::Value + HashMap)
# Each baseline's replays are checked equal to replayguard's before its speed
# counts. Prints a Markdown table (BENCHMARKS.md holds the latest).
#
#   scripts/bench-compare.sh [EVENTS]      # default 1000000
#   SKIP_KAFKA=1 scripts/bench-compare.sh  # without the broker rows
set -euo pipefail
cd "$(dirname "$0")/.."
# redis-server: the Redis baseline; time: peak RSS of scan
EXTRA_APT_PACKAGES="redis-server time ${EXTRA_APT_PACKAGES:-}" ./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/replayguard/target}"
n="${1:-1000000}"
out="${BENCH_DIR:-bench-out}/compare"
mkdir -p "$out"
cargo build --release --locked --quiet --bin replayguard
cargo bench --locked --quiet --bench baselines --no-run 2>/dev/null
base=$(ls -t "$CARGO_TARGET_DIR"/release/deps/baselines-* | grep -v '\.d$' | head -1)
rg="$CARGO_TARGET_DIR/release/replayguard"

events="$out/events-$n.jsonl"
if [ ! -s "$events" ]; then
  echo "generating $n events" >&2
  "$rg" generate --events "$n" --rate 5000 --seed 11 --out "$events" --lifecycle "$out/keys.jsonl"
fi
bytes=$(stat -c %s "$events")

rows=()
row() { rows+=("$(printf '| %s | %s | %s | %s | %s | %s |' "$@")"); }
fmt() { python3 -c "import sys; print(f'{float(sys.argv[1]):,.0f}')" "$1"; }

# --- replayguard scan: median of three, peak RSS of the median run
echo "replayguard scan" >&2
scan_rates=()
for i in 1 2 3; do
  rm -rf "$out/state" "$out/scan-alerts.jsonl"
  /usr/bin/time -f '%M' -o "$out/scan-rss-$i" "$rg" scan --quiet --state-dir "$out/state" \
    --lifecycle "$out/keys.jsonl" --alerts "$out/scan-alerts.jsonl" "$events" 2>"$out/scan-$i.err"
  r=$(sed -n 's/.*(\([0-9]*\) events\/s).*/\1/p' "$out/scan-$i.err")
  scan_rates+=("$r $i")
done
median=$(printf '%s\n' "${scan_rates[@]}" | sort -n | sed -n 2p)
scan_rate=${median% *}
scan_rss=$(cat "$out/scan-rss-${median#* }")
state_bytes=$(du -sb "$out/state" | cut -f1)
"$base" replays "$out/scan-alerts.jsonl" "$out/scan.ids" >/dev/null
replays=$(wc -l <"$out/scan.ids")

# --- naive in-memory detector
echo "naive detector" >&2
naive=$("$base" naive "$events" "$out/naive.ids")
jget() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
live=$(jget "$naive" live_nonces)
naive_rate=$(jget "$naive" events_per_s)
naive_rss=$(jget "$naive" peak_rss_kib)

# --- Redis, in memory (no persistence: the most favourable setting for it)
port=16379
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --logfile "$out/redis.log" &
rpid=$!
trap 'kill $rpid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
echo "redis unpipelined" >&2
redis1=$("$base" redis "$events" "$out/redis.ids" --port "$port" --server-pid "$rpid")
echo "redis pipelined" >&2
cpu0=$(awk '{print $14 + $15}' "/proc/$rpid/stat")
redis500=$("$base" redis "$events" "$out/redis500.ids" --port "$port" --pipeline 500 --server-pid "$rpid")
cpu1=$(awk '{print $14 + $15}' "/proc/$rpid/stat")
redis_cpu=$(python3 -c "print(f'{($cpu1 - $cpu0) / $(getconf CLK_TCK):.2f}')")
kill "$rpid" 2>/dev/null || true

check() { if cmp -s "$out/scan.ids" "$1"; then echo "equal ($replays)"; else echo "**DIFFERENT**: $(wc -l <"$1") vs $replays"; fi; }

row "replayguard scan (RocksDB, durable)" "$(fmt "$scan_rate")" "1.00" "$((scan_rss / 1024))" \
  "$((state_bytes / live)) on disk" "reference ($replays replays)"
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1])/float(sys.argv[2]):.2f}')" "$1" "$2"; }
r1=$(jget "$redis1" events_per_s); r500=$(jget "$redis500" events_per_s)
row "Redis, Lua per event, unpipelined" "$(fmt "$r1")" "$(ratio "$scan_rate" "$r1")" \
  "$(( $(jget "$redis1" peak_rss_kib) / 1024 ))" "$(( $(jget "$redis1" used_memory) / live )) in RAM" "$(check "$out/redis.ids")"
row "Redis, Lua per event, pipelined x500" "$(fmt "$r500")" "$(ratio "$scan_rate" "$r500")" \
  "$(( $(jget "$redis500" peak_rss_kib) / 1024 ))" "$(( $(jget "$redis500" used_memory) / live )) in RAM" "$(check "$out/redis500.ids")"
row "naive (serde_json::Value + HashMap)" "$(fmt "$naive_rate")" "$(ratio "$scan_rate" "$naive_rate")" \
  "$((naive_rss / 1024))" "-" "$(check "$out/naive.ids")"

if [ "${SKIP_KAFKA:-0}" != 1 ]; then
  echo "replayguard run vs consume-only (Tansu)" >&2
  ./scripts/bench-kafka.sh --events "$n" --skip-latency >"$out/kafka.out" 2>"$out/kafka.err"
  ceiling=$(sed -n 's/^consume-only: \([0-9]*\) records\/s/\1/p' "$out/kafka.err")
  run=$(sed -n 's/^replayguard run: \([0-9]*\) records\/s/\1/p' "$out/kafka.err")
  row "consume-only rdkafka client (ceiling)" "$(fmt "$ceiling")" "-" "-" "-" "-"
  row "replayguard run (Kafka in and out)" "$(fmt "$run")" "$(ratio "$run" "$ceiling") of ceiling" "-" "-" "-"
fi

echo
echo "$n events, $((bytes / n)) bytes/event, $live live nonces at the end; $(nproc) cores, $(date -u +%F)"
echo
echo "| detector | events/s | scan ÷ this | peak RSS MiB | state bytes / live nonce | replays vs scan |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "redis-server CPU during the pipelined run: ${redis_cpu} s of $(python3 -c "print(f'{$(jget "$redis500" seconds):.2f}')") s"
