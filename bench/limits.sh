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
bin=$(mktemp -d)/herald
go build -o "$bin" ./cmd/herald
run() { # $1: on|off
  local data port pid url admin biz token pn flags=""
  [ "$1" = off ] && flags="--no-limits"
  data=$(mktemp -d)
  port=$((20000 + RANDOM % 20000))
  "$bin" serve $flags --data "$data" --listen 127.0.0.1:$port --no-demo-business --sim-users $((N * 4)) --sim-prefix 1555 >"$data/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$data/serve.log" && break; sleep 0.1; done
  url=http://127.0.0.1:$port
  admin=$(cat "$data/admin-token")
  biz=$(curl -s -H "Authorization: Bearer $admin" -d '{"name":"Limits","phone_numbers":["15550177777"],"tier":"100k","mps":1000}' $url/admin/v1/businesses)
  token=$(echo "$biz" | sed -E 's/.*"token":"([^"]+)".*/\1/')
  pn=$(echo "$biz" | sed -E 's/.*"phone_number_ids":\["([^"]+)".*/\1/')
  "$bin" load --url $url --token "$token" --phone-number-id "$pn" --mode campaign --recipients "$N" --users $((N * 4)) --wait 10m --json
  kill $pid; wait $pid 2>/dev/null || true
  rm -rf "$data"
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
