#!/usr/bin/env bash
# Standard scenarios against a real `herald serve` (built-in simulator), on loopback:
#   ingest: one NDJSON campaign of N recipients (default 1,000,000), durable accept rate and peak RSS
#   single: POST /messages from C concurrent clients (default 64) for a count, request latency
# Usage: bench/ingest.sh [N] [C]. Results: bench/results/*.json (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
C=${2:-64}
out=bench/results
mkdir -p "$out"
bin=$(mktemp -d)/herald
go build -o "$bin" ./cmd/herald
data=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
"$bin" serve ${SERVE_FLAGS:-} --data "$data" --listen 127.0.0.1:$port --no-demo-business --sim-users $((N * 2)) --sim-prefix 1555 >"$data/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$data/serve.log" && break; sleep 0.1; done
url=http://127.0.0.1:$port
admin=$(cat "$data/admin-token")
biz=$(curl -s -H "Authorization: Bearer $admin" -d '{"name":"Load","phone_numbers":["15550177777"],"tier":"unlimited","mps":1000000}' $url/admin/v1/businesses)
token=$(echo "$biz" | sed -E 's/.*"token":"([^"]+)".*/\1/')
pn=$(echo "$biz" | sed -E 's/.*"phone_number_ids":\["([^"]+)".*/\1/')
echo "ingest: $N recipients, one NDJSON campaign" >&2
"$bin" load --url $url --token "$token" --phone-number-id "$pn" --mode campaign --recipients "$N" --users $((N * 2)) --wait 0 --json >"$out/ingest.json"
rss=$(grep VmHWM /proc/$pid/status | awk '{print $2}')
echo "{\"peak_rss_kib\": $rss}" >"$out/ingest_rss.json"
echo "single: $C clients" >&2
"$bin" load --url $url --token "$token" --phone-number-id "$pn" --mode single --clients "$C" --count 20000 --users $((N * 2)) --json >"$out/single.json"
cat "$out/ingest.json" "$out/ingest_rss.json" "$out/single.json"
