#!/usr/bin/env bash
# Runs every fuzz target for FUZZTIME each (default 20s) and prints executions
# per target. Crashers land in the package's testdata/fuzz and fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${FUZZTIME:-20s}
targets=(
  "./internal/seal FuzzOpen"
  "./heraldtype FuzzDecodePayload"
  "./queue FuzzDecodeRecord"
  "./engine FuzzDecodeOutbox"
  "./internal/platform FuzzResults"
  "./internal/platform FuzzEvents"
  "./internal/signal FuzzDecrypt"
  "./internal/signal FuzzDecodeBundle"
  "./internal/api FuzzSendMessage"
  "./internal/api FuzzCampaignJSON"
  "./internal/api FuzzCampaignNDJSON"
  "./internal/api FuzzPlatformEvents"
)
for tg in "${targets[@]}"; do
  set -- $tg
  out=$(go test -run '^$' -fuzz "^$2\$" -fuzztime "$t" "$1" 2>&1) || { echo "$out" | tail -30; echo "FUZZ FAILED: $2"; exit 1; }
  execs=$(echo "$out" | grep -oE 'execs: [0-9]+' | tail -1 | grep -oE '[0-9]+' || echo "?")
  echo "$2 ($1): ok, $execs executions in $t"
done
