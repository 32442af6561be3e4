#!/usr/bin/env bash
# govulncheck with everything from the Go module proxy, no other network:
#   - the vulnerability database is built from the golang.org/x/vulndb module
#     (its data/osv files) with that module's own indexdb command, since
#     vuln.go.dev may be unreachable where Herald is built;
#   - the scan runs under the patched toolchain Herald ships with
#     (go1.26.8 has known net/http and crypto/x509 vulnerabilities fixed in
#     go1.26.9/10; the module proxy serves go1.27.3).
# Exit status is govulncheck's: non-zero when code calls a known vulnerability.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=${HERALD_TOOLCHAIN:-go1.27.3}
VULN=${VULN:-v1.9.0}
VULNDB=${VULNDB:-v0.0.0-20261105234957-e22db6528018}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && go mod init vulndb-build >/dev/null 2>&1 &&
	GOFLAGS=-mod=mod go mod download golang.org/x/vulndb@"$VULNDB")
src=$(cd "$work" && GOFLAGS=-mod=mod go mod download -json golang.org/x/vulndb@"$VULNDB" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
(cd "$work" && GOFLAGS=-mod=mod go run golang.org/x/vulndb/cmd/indexdb@"$VULNDB" -vulns "$src/data/osv" -out "$work/db")
echo "vulnerability database: golang.org/x/vulndb@$VULNDB ($(ls "$src/data/osv" | wc -l) entries), toolchain $(go env GOVERSION)"
go run golang.org/x/vuln/cmd/govulncheck@"$VULN" -db "file://$work/db" ./...
