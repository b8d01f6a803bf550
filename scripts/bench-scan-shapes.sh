#!/usr/bin/env bash
# `scan` on one core against the plain serde_json floor on other shapes of
# the same requests: traffic from other loggers differs from `generate`'s in
# ways the decoder's fast path has to meet (spacing, field order, fields of
# their own, nested objects and arrays, escaped slashes, \u escapes, times
# as epoch milliseconds, CRLF line ends). Each variant is made from the
# first LINES lines of bench-scan-cores.sh's input; each round runs the
# floor and every binary, in turn, pinned to one core, with fresh state. Prints, per variant and
# binary, the median events/s and the median of the per-round ratios to the
# floor, and checks that every binary writes the same alerts.
#
#   scripts/bench-scan-shapes.sh [ROUNDS [LINES]] [-- BIN ...]
#   (default: 3 rounds, 200 000 lines, this checkout's release build)
#
# CORE: the core (default 1). The machines drift by 2x from day to day:
# only the ratios of one run are claims.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}" lines="${2:-200000}"
bins=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; bins=("$@"); break; fi
  shift
done
# shellcheck source=scripts/scan-bench-input.sh
. scripts/scan-bench-input.sh "" 1
if [ ${#bins[@]} -eq 0 ]; then bins=("$rg"); fi
core="${CORE:-1}"
dir="${BENCH_DIR:-bench-out}/shapes"
mkdir -p "$dir"
head -n "$lines" "$input" >"$dir/generated.jsonl"
python3 - "$dir" <<'EOF'
import datetime, json, sys
d = sys.argv[1]
lines = open(f"{d}/generated.jsonl").read().splitlines()
names = ["spaced", "reordered", "extra-scalars", "nested", "escaped-slashes", "u-escapes", "epoch-ms", "crlf"]
out = {n: open(f"{d}/{n}.jsonl", "w") for n in names}
compact = dict(separators=(",", ":"))
def ms(v):
    t = datetime.datetime.strptime(v, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    return round(t.timestamp() * 1000)
for line in lines:
    try:
        e = json.loads(line)
    except ValueError:  # the generator's malformed lines stay as they are
        for n, f in out.items():
            f.write(line + ("\r\n" if n == "crlf" else "\n"))
        continue
    out["spaced"].write(json.dumps(e) + "\n")
    out["reordered"].write(json.dumps(dict(reversed(list(e.items()))), **compact) + "\n")
    x = dict(e, request_id="req-" + str(e.get("event_id", ""))[:8], latency_ms=12.5, bytes_sent=1234, cached=False, referer=None)
    out["extra-scalars"].write(json.dumps(x, **compact) + "\n")
    n = dict(e, upstream={"host": "10.1.2.3", "port": 8080, "latency_ms": [1.5, 2]}, tags=["api", "v3"], headers={"accept": "*/*", "x-forwarded-for": "10.0.0.1"})
    out["nested"].write(json.dumps(n, **compact) + "\n")
    out["escaped-slashes"].write(json.dumps(e, **compact).replace("/", "\\/") + "\n")
    u = dict(e, user_agent=(e.get("user_agent") or "") + " (caf\u00e9)")
    out["u-escapes"].write(json.dumps(u, **compact) + "\n")
    m = dict(e)
    for k in ("received_at", "client_ts"):
        if isinstance(m.get(k), str):
            try:
                m[k] = ms(m[k])
            except ValueError:
                pass
    out["epoch-ms"].write(json.dumps(m, **compact) + "\n")
    out["crlf"].write(line + "\r\n")
EOF
for variant in generated spaced reordered extra-scalars nested escaped-slashes u-escapes epoch-ms crlf; do
  f="$dir/$variant.jsonl"
  for i in $(seq 1 "$rounds"); do
    fl=$(taskset -c "$core" "$base" plain "$f" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["events_per_s"]))')
    echo "$variant floor $fl"
    for b in "${bins[@]}"; do
      rm -rf "$dir/state" "$dir/alerts.jsonl"
      err=$(taskset -c "$core" "$b" scan --quiet --state-dir "$dir/state" --alerts "$dir/alerts.jsonl" "$f" 2>&1 >/dev/null)
      echo "$variant $b $(sed -n 's/.*(\([0-9]*\) events\/s).*/\1/p' <<<"$err") $(sha256sum <"$dir/alerts.jsonl" | cut -c1-16)"
    done
  done
done | python3 -c '
import statistics as st, sys
rows = [l.split() for l in sys.stdin]
floor, runs, sums, order = {}, {}, {}, []
for r in rows:
    v, b, rate = r[0], r[1], int(r[2])
    if b == "floor":
        floor.setdefault(v, []).append(rate)
        continue
    if b not in order:
        order.append(b)
    runs.setdefault((v, b), []).append((rate, floor[v][-1]))
    sums.setdefault(v, set()).add(r[3])
print("| shape | serde_json floor events/s | " + " | ".join(f"{b}: events/s, ratio to the floor" for b in order) + " |")
print("|---|---|" + "---|" * len(order))
for v in floor:
    cells = []
    for b in order:
        x = runs[(v, b)]
        cells.append(f"{st.median(a for a, _ in x):.0f}, **{st.median(a / f for a, f in x):.3f}**")
    print(f"| {v} | {st.median(floor[v]):.0f} | " + " | ".join(cells) + " |")
bad = [v for v, s in sums.items() if len(s) > 1]
if bad:
    sys.exit(f"ALERTS DIFFER between binaries for {bad}")
'
