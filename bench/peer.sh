#!/usr/bin/env bash
# Herald's queue vs River on a real PostgreSQL server (Debian's package),
# same workload, same machine, same run. Starts a throwaway PostgreSQL cluster
# on 127.0.0.1 (fsync and synchronous_commit on, the defaults), runs
# bench/peer (its own Go module: River and pgx stay out of Herald's go.mod),
# then stops and deletes the cluster. Not part of any test suite.
# Usage: bench/peer.sh [N]. Result: bench/results/peer.json.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$pgbin" ]; then
  echo "installing Debian's postgresql package" >&2
  apt-get install -y postgresql >/dev/null
  pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
fi
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
data=$(mktemp -d /tmp/herald-peer-pg.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres "$data"
port=$((30000 + RANDOM % 20000))
run_pg "$pgbin/initdb" -D "$data/db" -U bench --auth=trust >/dev/null
run_pg "$pgbin/pg_ctl" -D "$data/db" -l "$data/pg.log" -w \
  -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
trap 'run_pg "$pgbin/pg_ctl" -D "$data/db" -m fast stop >/dev/null 2>&1 || true; rm -rf "$data"' EXIT
run_pg "$pgbin/createdb" -h 127.0.0.1 -p $port -U bench river
mkdir -p bench/results
(cd bench/peer && GOFLAGS=-mod=mod go run . -n "$N" -pg "postgres://bench@127.0.0.1:$port/river?sslmode=disable") | tee bench/results/peer.json
