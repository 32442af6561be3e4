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
. bench/lib.sh
build_herald
# shellcheck disable=SC2086
start_serve ${SERVE_FLAGS:-} --sim-users $((N * 2)) --sim-prefix 1555
trap stop_serve EXIT
create_business Load unlimited 1000000
echo "ingest: $N recipients, one NDJSON campaign" >&2
"$bin" load --url "$url" --token "$token" --phone-number-id "$pn" --mode campaign --recipients "$N" --users $((N * 2)) --wait 0 --json >"$out/ingest.json"
rss=$(grep VmHWM /proc/$pid/status | awk '{print $2}')
echo "{\"peak_rss_kib\": $rss}" >"$out/ingest_rss.json"
echo "single: $C clients" >&2
"$bin" load --url "$url" --token "$token" --phone-number-id "$pn" --mode single --clients "$C" --count 20000 --users $((N * 2)) --json >"$out/single.json"
cat "$out/ingest.json" "$out/ingest_rss.json" "$out/single.json"
