# Herald. `make test` is what CI runs (through .ci/run).
GO ?= go
PKGS := ./...
# Packages with concurrency run under the race detector.
RACE_PKGS := ./queue/... ./engine/... ./ratelimit/... ./internal/...

.PHONY: test vet fmtcheck build bench bench-queue bench-e2e fuzz crash e2e check mutants hostile

# internal/node (three-node clusters with their NATS servers) runs after the
# others, not beside them: beside the API's and engine's timing-bound tests on
# two cores it starved them (a drain that takes seconds alone missed its
# two minutes in CI).
test: vet fmtcheck
	$(GO) test -race -count=1 $$($(GO) list $(RACE_PKGS) | grep -v '/internal/node$$')
	$(GO) test -race -count=1 ./internal/node/
	$(GO) test -count=1 $(filter-out $(RACE_PKGS),$(shell $(GO) list ./... | grep -v -e /queue -e /engine -e /ratelimit -e /internal))

vet:
	$(GO) vet $(PKGS)

fmtcheck:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Release binaries use the patched toolchain from the module proxy (go1.26.8,
# this machine's Go, has standard-library vulnerabilities; see scripts/vulncheck.sh).
RELEASE_TOOLCHAIN ?= go1.27.3
build:
	GOTOOLCHAIN=$(RELEASE_TOOLCHAIN) $(GO) build -o bin/herald ./cmd/herald

# Full-size end-to-end tests without the race detector (10,000 recipients x 1-3 devices, every fault).
e2e:
	$(GO) test -count=1 -run 'EndToEnd|Faults|Interop|Crash|Retention' ./engine/

bench:
	$(GO) test -run '^$$' -bench 'Enqueue|LeaseAck|Mixed' -benchtime 20000x ./bench/
	$(GO) test -run '^$$' -bench . -benchmem ./internal/signal/ ./ratelimit/
	HERALD_BENCH_N=$${N:-5000} $(GO) test -run '^$$' -bench EndToEnd -benchtime 1x -timeout 30m ./bench/

# The queue figures of BENCHMARKS.md: 1M messages per row, so memtable flushes and compactions are
# inside the measurement (the 20,000-message rows of `make bench` fit in one memtable), after 1M
# untimed ones per row and implementation (WARMUP=0 for a fresh process: memtables still growing,
# WAL files not yet recycled).
bench-queue:
	HERALD_BENCH_WARMUP=$${WARMUP:-1000000} $(GO) test -run '^$$' -bench 'Enqueue/producers=(1|8|64)/batch=256/impl=(herald|raw)' -benchtime 1000000x -count $${COUNT:-3} ./bench/
	$(GO) test -run '^$$' -bench 'LeaseAck|Mixed' -benchtime 200000x -count $${COUNT:-3} ./bench/

bench-e2e:
	HERALD_BENCH_N=$${N:-5000} $(GO) test -run '^$$' -bench EndToEnd -benchtime 1x -timeout 30m ./bench/

fuzz:
	./scripts/fuzz_classify_test.sh
	./scripts/fuzz.sh

# Deliberate bugs (mutants/*.patch), each applied to a fresh copy of the tree:
# fails unless the tests the patch names fail on it. MUTANTS=regexp picks some.
mutants:
	./scripts/mutants.sh

# Request-level attacks against a real `herald serve` process: it must
# survive them with its RSS under 400 MB (HOSTILE_SHORT=1: fewer of each).
hostile:
	HERALD_HOSTILE=1 HERALD_HOSTILE_SHORT=$${HOSTILE_SHORT:-} $(GO) test -count=1 -v -run Hostile ./hostile/

crash:
	HERALD_CRASH_KILLS=$${KILLS:-50} $(GO) test -count=1 -timeout 30m -run Crash -v ./queue/ ./engine/ ./crash/

# govulncheck against a database built from the golang.org/x/vulndb module.
check: test
	HERALD_TOOLCHAIN=$(RELEASE_TOOLCHAIN) ./scripts/vulncheck.sh
