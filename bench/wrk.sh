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
. bench/lib.sh
build_herald
start_serve --platform http://127.0.0.1:9 --platform-secret x
trap stop_serve EXIT
create_business Wrk unlimited 100000
export HERALD_TOKEN=$token HERALD_PN=$pn
wrk -t 2 -c "$C" -d "$D" --latency -s bench/wrk-send.lua "$url"
