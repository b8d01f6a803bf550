#!/usr/bin/env bash
# The scale curve of `replayguard scan` (durable RocksDB state, default
# config): 1 k -> 100 k keys, 1 M -> 10 M live nonces in the 390 s window.
# For each point: events/s, peak RSS, state on disk, and the time to reopen
# the state (a scan over an empty input: open RocksDB, restore the live index,
# commit, close). Event-time rate = live / 390 s / 0.95 (5 % of requests carry
# no nonce); each point reads 1.25 x live events, so the window is full and
# expiry runs. Lines are the generator's without signature, user agent and
# client id (~280 bytes). Release build.
#
#   scripts/bench-scale.sh                   # the whole curve
#   scripts/bench-scale.sh "1000 1000000"    # chosen points: "KEYS LIVE" ...
#   CONFIG=my.toml scripts/bench-scale.sh    # with a config file
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRA_APT_PACKAGES="time ${EXTRA_APT_PACKAGES:-}" ./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/replayguard/target}"
cargo build --release --locked --quiet --bin replayguard
rg="$CARGO_TARGET_DIR/release/replayguard"
cfg=()
if [ -n "${CONFIG:-}" ]; then cfg=(--config "$CONFIG"); fi
out="${BENCH_DIR:-bench-out}/scale"
mkdir -p "$out"
if [ $# -gt 0 ]; then points=("$@"); else
  points=("1000 1000000" "10000 1000000" "100000 1000000" "1000 10000000" "100000 3000000" "100000 10000000")
fi
: >"$out/empty.jsonl"
echo "| keys | live nonces (target) | live windows restored | events | events/s | peak RSS MiB | state on disk MiB | reopen s |"
echo "|---|---|---|---|---|---|---|---|"
for p in "${points[@]}"; do
  read -r keys live <<<"$p"
  rate=$(python3 -c "print(round($live / 390 / 0.95))")
  events=$(python3 -c "print(round($live * 1.25 / 0.95))")
  f="$out/events.jsonl"
  "$rg" generate --events "$events" --keys "$keys" --rate "$rate" --seed 5 \
    --lifecycle "$out/keys.jsonl" 2>/dev/null |
    sed -E 's/,"signature":"[0-9a-f]+"//; s/,"user_agent":"[^"]*"//; s/,"client_id":"[^"]*"//' >"$f"
  rm -rf "$out/state"
  /usr/bin/time -f '%M' -o "$out/rss" "$rg" scan "${cfg[@]}" --quiet --state-dir "$out/state" \
    --lifecycle "$out/keys.jsonl" --alerts /dev/null "$f" 2>"$out/scan.err"
  eps=$(sed -n 's/.*(\([0-9]*\) events\/s).*/\1/p' "$out/scan.err")
  rss=$(( $(cat "$out/rss") / 1024 ))
  disk=$(( $(du -sb "$out/state" | cut -f1) / 1048576 ))
  rm -f "$f"
  t0=$(date +%s.%N)
  "$rg" --log info scan "${cfg[@]}" --quiet --state-dir "$out/state" --lifecycle "$out/keys.jsonl" \
    --alerts /dev/null "$out/empty.jsonl" 2>"$out/reopen.err"
  t1=$(date +%s.%N)
  windows=$(sed 's/\x1b\[[0-9;]*m//g' "$out/reopen.err" | sed -n 's/.*restored live state.* windows=\([0-9]*\).*/\1/p' |
    awk '{s+=$1} END {print s+0}')
  reopen=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$keys" "$live" "$windows" "$events" "$eps" "$rss" "$disk" "$reopen"
done
rm -rf "$out/state"
