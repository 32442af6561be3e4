#!/usr/bin/env bash
# Integrity limits on vs off, end to end through the real server: `herald serve`
# (built-in simulator) with and without --no-limits, a business on a capped tier
# large enough for the campaign (so every recipient goes through exact tier
# admission: a Pebble read and writes per recipient) and a throughput (1,000 msgs/s, above the cold delivery rate)/pair-rate
# configuration that never binds; one NDJSON campaign of N recipients uploaded
# with `herald load`, timed from upload to the last status. Runs alternate
# (on, off, on, off, ...) to spread the machine's noise; ROUNDS pairs.
# Usage: bench/limits.sh [N] [ROUNDS]. Results: bench/results/limits.json.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
ROUNDS=${2:-2}
out=bench/results
mkdir -p "$out"
. bench/lib.sh
build_herald
run() { # $1: on|off
  local flags=""
  [ "$1" = off ] && flags="--no-limits"
  start_serve $flags --sim-users $((N * 4)) --sim-prefix 1555
  create_business Limits 100k 1000
  "$bin" load --url "$url" --token "$token" --phone-number-id "$pn" --mode campaign --recipients "$N" --users $((N * 4)) --wait 10m --json
  stop_serve
}
echo "[" >"$out/limits.json"
for r in $(seq "$ROUNDS"); do
  for mode in on off; do
    echo "round $r: limits $mode" >&2
    res=$(run $mode)
    echo "$res" >&2
    sep=","; [ "$r" = "$ROUNDS" ] && [ "$mode" = off ] && sep=""
    echo "{\"limits\":\"$mode\",\"result\":$res}$sep" >>"$out/limits.json"
  done
done
echo "]" >>"$out/limits.json"
python3 - "$out/limits.json" <<'PY'
import json, sys
runs = json.load(open(sys.argv[1]))
for mode in ("on", "off"):
    r = [x["result"] for x in runs if x["limits"] == mode]
    e2e = [x["end_to_end_per_second"] for x in r]
    ing = [x["ingest_per_second"] for x in r]
    print(f"limits {mode}: end to end {', '.join(f'{v:,.0f}' for v in e2e)} msgs/s; ingest {', '.join(f'{v:,.0f}' for v in ing)} recipients/s")
on = sum(x["result"]["end_to_end_per_second"] for x in runs if x["limits"] == "on")
off = sum(x["result"]["end_to_end_per_second"] for x in runs if x["limits"] == "off")
print(f"end to end, limits on / off: {on/off:.3f} (cost {100*(1-on/off):.1f} %)")
PY
