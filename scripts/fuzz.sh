#!/usr/bin/env bash
# Runs every fuzz target for FUZZTIME each (default 20s) and prints executions
# per target. Crashers land in the package's testdata/fuzz and fail the run.
set -euo pipefail
cd "$(dirname "$0")/.."
t=${FUZZTIME:-20s}
targets=(
  "./internal/seal FuzzOpen"
  "./internal/seal FuzzSealRoundTrip"
  "./heraldtype FuzzDecodePayload"
  "./queue FuzzDecodeRecord"
  "./engine FuzzDecodeOutbox"
  "./internal/records FuzzDecodeStatus"
  "./internal/platform FuzzResults"
  "./internal/platform FuzzEvents"
  "./internal/platform FuzzDecodeMessagesResponse"
  "./internal/signal FuzzDecrypt"
  "./internal/signal FuzzDecodeBundle"
  "./internal/signal FuzzParsePreKeyMessage"
  "./internal/signal FuzzVerifyXEdDSA"
  "./internal/signal FuzzX25519"
  "./internal/api FuzzSendMessage"
  "./internal/api FuzzCampaignJSON"
  "./internal/api FuzzCampaignNDJSON"
  "./internal/api FuzzPlatformEvents"
  "./internal/api FuzzPlatformInbound"
)
# Go's fuzz coordinator can fail a run with a bare "context deadline exceeded"
# when -fuzztime expires while a worker is busy (golang/go#75804, #51484): no
# failing input, nothing to reproduce. Such a run is retried once; a real
# finding always writes "Failing input written to ..." (or panics) and fails.
deadline_race() {
  grep -q 'context deadline exceeded' <<<"$1" && ! grep -qE 'Failing input written|panic:|_test\.go:[0-9]+:' <<<"$1"
}
# ran prints what a run did, or fails when Go did not find the target. A slow
# target on a loaded machine can spend all of a short -fuzztime replaying its
# corpus ("gathering baseline coverage") and print no execs line: it ran, it
# just got no further than its corpus.
ran() {
  local execs baseline
  if grep -q 'no fuzz tests to fuzz\|no packages to fuzz\|matched no packages' <<<"$1"; then return 1; fi
  execs=$(grep -oE 'execs: [0-9]+' <<<"$1" | tail -1 | grep -oE '[0-9]+' || true)
  if [ -n "$execs" ]; then echo "$execs executions"; return 0; fi
  baseline=$(grep -oE 'gathering baseline coverage: [0-9]+/[0-9]+' <<<"$1" | tail -1 | grep -oE '[0-9]+/[0-9]+' || true)
  if [ -n "$baseline" ]; then echo "only its corpus replayed ($baseline)"; return 0; fi
  return 1
}
fuzz() { go test -run '^$' -fuzz "^$2\$" -fuzztime "$t" "$1" 2>&1; }
for tg in "${targets[@]}"; do
  set -- $tg
  note=""
  if ! out=$(fuzz "$1" "$2"); then
    if ! deadline_race "$out"; then
      echo "$out" | tail -30; echo "FUZZ FAILED: $2"; exit 1
    fi
    note=" (retried: the first run hit Go's fuzztime deadline race, no failing input)"
    if ! out=$(fuzz "$1" "$2"); then
      if ! deadline_race "$out"; then
        echo "$out" | tail -30; echo "FUZZ FAILED: $2"; exit 1
      fi
      note=" (both runs hit Go's fuzztime deadline race; no failing input written)"
    fi
  fi
  if ! summary=$(ran "$out"); then
    echo "$out" | tail -5; echo "FUZZ TARGET NOT RUN: $2 in $1 (moved or renamed? update scripts/fuzz.sh)"; exit 1
  fi
  echo "$2 ($1): ok, $summary in $t$note"
done
