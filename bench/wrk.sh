#!/usr/bin/env bash
# Single-message requests with wrk (Debian's package: apt-get install wrk)
# against `herald serve` on loopback, delivery idle (the platform address is
# unreachable, so only the API and the durable enqueue are measured).
# Usage: bench/wrk.sh [CONNECTIONS] [DURATION]. Unlimited-tier business.
set -euo pipefail
cd "$(dirname "$0")/.."
C=${1:-64}
D=${2:-20s}
command -v wrk >/dev/null || { echo "wrk not installed (apt-get install wrk)" >&2; exit 1; }
bin=$(mktemp -d)/herald
go build -o "$bin" ./cmd/herald
data=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
"$bin" serve --data "$data" --listen 127.0.0.1:$port --no-demo-business --platform http://127.0.0.1:9 --platform-secret x >"$data/serve.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$data/serve.log" && break; sleep 0.1; done
url=http://127.0.0.1:$port
biz=$(curl -s -H "Authorization: Bearer $(cat "$data/admin-token")" -d '{"name":"Wrk","phone_numbers":["15550177777"],"tier":"unlimited","mps":100000}' $url/admin/v1/businesses)
export HERALD_TOKEN=$(echo "$biz" | sed -E 's/.*"token":"([^"]+)".*/\1/')
export HERALD_PN=$(echo "$biz" | sed -E 's/.*"phone_number_ids":\["([^"]+)".*/\1/')
wrk -t 2 -c "$C" -d "$D" --latency -s bench/wrk-send.lua "$url"
