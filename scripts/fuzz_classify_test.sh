#!/usr/bin/env bash
# Checks scripts/fuzz.sh's deadline_race classifier: Go's bare fuzztime
# deadline race is retried; a written failing input, a panic or a test
# failure line is a real finding. Run by `make fuzz` before fuzzing.
set -euo pipefail
source <(sed -n '/^deadline_race()/,/^}/p; /^ran()/,/^}/p' "$(dirname "$0")/fuzz.sh")
fail=0
expect() { # name want(race|finding) output
  if deadline_race "$3"; then got=race; else got=finding; fi
  if [ "$got" != "$2" ]; then echo "fuzz classifier: $1 classified $got, want $2"; fail=1; fi
}
expect "bare deadline" race $'fuzz: elapsed: 3s, execs: 5047 (0/sec)\n--- FAIL: FuzzDecodeBundle (3.14s)\n    context deadline exceeded\nFAIL'
expect "written input" finding $'--- FAIL: FuzzX (0.1s)\n    fuzz_test.go:12: boom\n    Failing input written to testdata/fuzz/FuzzX/abc\n    context deadline exceeded'
expect "panic" finding $'panic: runtime error: index out of range\ncontext deadline exceeded'
expect "other failure" finding $'--- FAIL: FuzzX (0.2s)\n    some other error'
expect_ran() { # name want(ran|missing) output
  if ran "$3" >/dev/null; then got=ran; else got=missing; fi
  if [ "$got" != "$2" ]; then echo "fuzz classifier: $1 classified $got, want $2"; fail=1; fi
}
expect_ran "execs" ran $'fuzz: elapsed: 3s, execs: 117 (39/sec), new interesting: 0\nPASS'
# CI, 2026-12-07: FuzzCampaignJSON spent its 3 s replaying 101 of 105 corpus entries.
expect_ran "baseline only" ran $'fuzz: elapsed: 0s, gathering baseline coverage: 0/105 completed\nfuzz: elapsed: 3s, gathering baseline coverage: 101/105 completed\nPASS\nok  \tgithub.com/heraldhq/herald/internal/api\t3.579s'
expect_ran "renamed" missing $'testing: warning: no fuzz tests to fuzz\nPASS'
expect_ran "nothing printed" missing $'PASS\nok  \tgithub.com/heraldhq/herald/internal/api\t0.1s'
exit $fail
