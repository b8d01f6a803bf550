#!/usr/bin/env bash
# Side by side: `replayguard scan` of two binaries over the same input, in
# alternating runs (A B A B ...), pinned to one core, each with fresh durable
# state. Prints events/s and peak RSS per run, the medians, and the median of
# the per-pair ratios B/A. The machines drift by 2x from day to day: only the
# ratio of one run of this script is a claim.
#
# Besides wall-clock events/s, each run's CPU time (user + system) is
# printed, and the median of the per-pair CPU ratios A/B: on a shared
# virtual machine the time the hypervisor gives to others (steal) is in the
# wall clock but not in the CPU time, so the CPU ratio is the steadier of
# the two when the machine is busy (cache and memory bandwidth taken by
# others still show in both).
#
#   scripts/bench-ab.sh OLD_BIN NEW_BIN INPUT [PAIRS] [EXTRA SCAN ARGS...]
#   e.g. scripts/bench-ab.sh /tmp/rg-base target/release/replayguard bench-out/scan-1000000.jsonl 5
#
# CPU: CORE (default 1) is the one core the scans run on. A_ARGS / B_ARGS:
# scan arguments for one side only (e.g. B_ARGS="--config seq.toml" when
# the old binary does not know a setting).
set -euo pipefail
a="$1" b="$2" input="$3" pairs="${4:-5}"
shift $(( $# >= 4 ? 4 : 3 ))
core="${CORE:-1}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
one() {
  local bin="$1" out
  shift
  rm -rf "$dir/state"
  out=$( { /usr/bin/time -f 'rss_kib=%M cpu_s=%U %S' taskset -c "$core" "$bin" scan --quiet --state-dir "$dir/state" \
      --alerts /dev/null "$@" "$input" 2>&1 >/dev/null; } 2>&1 )
  local rate rss cpu
  rate=$(sed -n 's/.*(\([0-9]*\) events\/s).*/\1/p' <<<"$out")
  rss=$(sed -n 's/rss_kib=\([0-9]*\).*/\1/p' <<<"$out")
  cpu=$(sed -n 's/.*cpu_s=\([0-9.]*\) \([0-9.]*\)/\1 \2/p' <<<"$out" | awk '{ printf "%.2f", $1 + $2 }')
  echo "$rate $rss $cpu"
}
printf '| pair | A events/s | B events/s | B/A | A CPU s | B CPU s | CPU A/B | A peak RSS MiB | B peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|\n'
ra=() rb=() ratios=() ma=() mb=() ca=() cb=() cratios=()
for i in $(seq 1 "$pairs"); do
  # shellcheck disable=SC2086 # A_ARGS / B_ARGS are word lists
  read -r x xm xc < <(one "$a" ${A_ARGS:-} "$@")
  # shellcheck disable=SC2086
  read -r y ym yc < <(one "$b" ${B_ARGS:-} "$@")
  r=$(awk -v x="$x" -v y="$y" 'BEGIN { printf "%.3f", y / x }')
  cr=$(awk -v x="$xc" -v y="$yc" 'BEGIN { printf "%.3f", x / y }')
  ra+=("$x") rb+=("$y") ratios+=("$r") ma+=("$xm") mb+=("$ym") ca+=("$xc") cb+=("$yc") cratios+=("$cr")
  printf '| %d | %s | %s | %s | %s | %s | %s | %d | %d |\n' "$i" "$x" "$y" "$r" "$xc" "$yc" "$cr" $((xm / 1024)) $((ym / 1024))
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf '| **median** | %s | %s | **%s** | %s | %s | **%s** | %d | %d |\n' "$(median "${ra[@]}")" "$(median "${rb[@]}")" \
  "$(median "${ratios[@]}")" "$(median "${ca[@]}")" "$(median "${cb[@]}")" "$(median "${cratios[@]}")" \
  $(( $(median "${ma[@]}") / 1024 )) $(( $(median "${mb[@]}") / 1024 ))
