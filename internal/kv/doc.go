// Package kv opens the one Pebble database every Herald component shares and
// owns the commit seam.
//
// Pebble treats a failed WAL write or fsync as fatal (Logger.Fatalf). Herald
// installs a logger whose Fatalf panics with a sentinel; Commit recovers it and
// returns ErrStorage, and the handle is poisoned: every later Commit fails fast
// until the database is reopened. So a storage fault surfaces as an error to the
// caller (HTTP 503 at the API) and never as an acknowledged write.
//
// Key space: each owner uses its own first byte so prefixes never collide:
// 'q' queue, 's' signal store, 'e' engine (outbox, kept copies) and records
// (statuses, counters, campaigns), 't' tenants and records (idempotent
// answers, upload progress), 'r' ratelimit, 'w' webhooks.
//
// Every prefix written, with its owner, what it holds and in what form, is
// listed in prefixes.go; a record under a prefix the list does not name
// fails TestEveryStoredPrefixIsListed.
//
// # Files
//
//	kv.go         Open, the commit seam, batch pools, Purge
//	prefixes.go   the list of every key prefix in the store
//	sweep.go      SweepIndex: the bounded retention sweep of a time index
//	walfs.go      the WAL filesystem wrapper (recycled WALs shredded at purge)
//	grouped.go    grouped writes
//	tablefile.go  table-file helpers
package kv
