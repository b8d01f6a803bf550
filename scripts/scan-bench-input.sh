# Sourced by scripts/bench-scan-cores.sh and scripts/bench-cores-control.sh
# (from the checkout's root, with "$@" their arguments): builds replayguard
# and the serde_json floor (benches/baselines.rs `plain`), and resolves the
# input: INPUT, or 1 M generated events (seed 7) with their lifecycle file.
# Sets rg, base, out, input, rounds, lifecycle; defines floor CORE.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/replayguard/target}"
cargo build --release --locked --quiet --bin replayguard
cargo bench --locked --quiet --bench baselines --no-run 2>/dev/null
base=$(ls -t "$CARGO_TARGET_DIR"/release/deps/baselines-* | grep -v '\.d$' | head -1)
rg="${RG_BIN:-$CARGO_TARGET_DIR/release/replayguard}"
out="${BENCH_DIR:-bench-out}/cores"
mkdir -p "$out"
input="${1:-}"
rounds="${2:-5}"
lifecycle=()
if [ -z "$input" ]; then
  input="$out/events-1000000.jsonl"
  if [ ! -s "$input" ]; then
    echo "generating 1 000 000 events" >&2
    "$rg" generate --events 1000000 --rate 5000 --seed 7 --out "$input" --lifecycle "$out/keys.jsonl"
  fi
  lifecycle=(--lifecycle "$out/keys.jsonl")
fi

floor() { # CORE -> events/s of the serde_json floor on that core
  taskset -c "$1" "$base" plain "$input" |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["events_per_s"]))'
}
