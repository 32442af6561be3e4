# Herald. `make test` is what CI runs (through .ci/run).
GO ?= go
PKGS := ./...
# Packages with concurrency run under the race detector.
RACE_PKGS := ./queue/... ./engine/... ./ratelimit/... ./internal/...

.PHONY: test vet fmtcheck build bench bench-queue fuzz crash check conformance

test: vet fmtcheck
	$(GO) test -race -count=1 $(RACE_PKGS)
	$(GO) test -count=1 $(filter-out $(RACE_PKGS),$(shell $(GO) list ./... | grep -v -e /queue -e /engine -e /ratelimit -e /internal))

vet:
	$(GO) vet $(PKGS)

fmtcheck:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

build:
	$(GO) build -o bin/herald ./cmd/herald

bench:
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./bench/... ./queue/... ./internal/signal/... ./ratelimit/...

bench-queue:
	$(GO) test -run '^$$' -bench . -benchmem ./queue/

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzOpen -fuzztime $${FUZZTIME:-20s} ./internal/seal/

crash:
	HERALD_CRASH_KILLS=$${KILLS:-50} $(GO) test -count=1 -run Crash -v ./queue/

check: test
	$(GO) run golang.org/x/vuln/cmd/govulncheck@latest ./...
