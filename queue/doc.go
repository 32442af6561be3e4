// Package queue is Herald's durable sharded message queue on Pebble.
//
// # Layout
//
// A message's shard is chosen from a keyed HMAC of its recipient, so all of one
// recipient's messages live in one shard, in one FIFO. Keys (prefix 'q'):
//
//	q F epoch(4) shard(2) seq(8)         → fresh record: rcpt(16) + header + sealed payload
//	q F epoch(4) FFFF expires(8) firstseq(8) → expiry index: one entry per batch, refs (shard, rcpt, seq)
//	q R shard(2) rcpt(16) seq(8)         → record in the per-recipient range: header + sealed payload
//	q D shard(2) due(8) rcpt(16) seq(8)  → wake-up hint for a recipient with records in R
//	q X expires(8) firstseq(8)           → expiry index of data written before it moved into F (read only)
//	q Z seq(8)                           → dead letters (records that failed to open)
//	q S                                  → sequence ceiling (reserved in blocks)
//
//	q O <id(4)>                          → owner table: the id records carry → the owner (a business id)
//	q P <group> 0 shard(2) rcpt(16) seq(8) → a parked record (a paused campaign's), as in R
//	q p shard(2) rcpt(16) seq(8)           → park index: the group a parked record is under (for Expire)
//
// A record's header: version(1) due(8) expires(8) attempt(4), then in version
// 2 the owner's id (uvarint: the business the message counts against), then
// idLen(1) id. Version 1 records (no owner) are still read. Each owner's
// record bytes are counted in memory (OwnerBytes), rebuilt by the scan at
// Open: a business's share of the queue is checked against it.
//
// # Two ranges: F (fresh) and R (per recipient)
//
// Enqueue appends to F: keys grow with the sequence number (epoch first, so
// they grow across shards as well), which makes enqueue a run of cheap
// memtable appends, like a plain log, instead of inserts scattered over the
// recipient key space. Lease scans F from an in-memory cursor per shard, in
// enqueue order, and leases each new recipient's run straight from F — the
// campaign case (one message per recipient) never touches R or D.
//
// A fresh record goes to R instead (a move: F delete + R write + D hint, no
// fsync needed) when per-recipient order needs it: its recipient is leased,
// already has records in R, had a record moved earlier in the scan, or the
// record is not due yet. R is the general FIFO: records of one recipient in
// sequence order, found through D hints; retries and scheduled messages live
// there. Whether a recipient has records in R is answered without a read by a
// fixed-size table of per-bucket counts (never short of the truth); a
// non-zero bucket costs one seek.
//
// # The expiry index
//
// A batch's expiry entry sits at the end of its epoch's F range (epoch of its
// first sequence number), after every shard's records: a flushed table of
// enqueue data then ends in the epoch its records grow in, instead of
// stretching to an index range of its own over every record written later,
// so Pebble moves such tables down the LSM instead of rewriting them. Expire
// merges the epochs' entries (sorted by expiry inside each epoch) with the
// old X range, reading only epochs whose in-memory lower bound is due.
//
// # Invariants
//
//   - Accepted means durable: Enqueue returns only after its batch is fsync'd.
//     Concurrent callers share fsyncs through Pebble's commit pipeline.
//   - Per-recipient FIFO: only the head of a recipient's FIFO decides when the
//     recipient is due, and while any message of a recipient is leased no other
//     message of that recipient is handed out (design invariant 3). A
//     recipient's records in R are always older than its records in F ahead of
//     the cursor; Open restores this after a restart (settle).
//   - The cursor passes only sequence numbers whose Enqueue has finished
//     (batches commit out of order), so no fresh record is ever stepped over.
//     Every F record behind the cursor is held by a lease that lists it; a
//     lease of fresh records that times out or is released is reclaimed (its
//     records moved to R with a hint) before anyone else may take the recipient.
//   - D entries are hints, never the source of truth; every record moved into
//     R gets one, and Lease repairs stale hints (recipient empty, or head not
//     yet due) as it meets them, each once.
//   - Sequence numbers are never reused: the stored value is a ceiling
//     reserved before any number under it is issued.
//   - Leases live in memory only. A crash forgets them, which is the same as
//     every lease expiring: the records are still on disk and come back.
//   - Memory does not grow with queue depth: the depth counters are two integers,
//     the R bucket counts a fixed 1 MiB table, the cursor one integer per shard,
//     and the lease table is bounded by what consumers hold. The expiry bounds
//     take one map entry per epoch with live index entries (one per 65,536
//     messages enqueued within the TTL, a few bytes each).
//   - An expiry bound never stays above an entry of its epoch: Enqueue lowers
//     it right after its commit (a sweep in between may pass the new entry
//     over once; the next one finds it), and Expire raises it only from a view
//     opened after it read the bound, and only if no Enqueue noted the epoch
//     since.
//   - Payloads (bodies, phone numbers) are sealed; recipients appear only as
//     HMACs (in keys, and in F values) (design invariant 6).
//   - Each owner's byte count equals the sum of its stored records (rebuilt at
//     Open; every path that writes or deletes a record moves it).
//
// # Files
//
//	queue.go     types, Open (settle, recount), counters, Close
//	record.go    keys and the record format
//	enqueue.go   Enqueue: one fsync'd batch, sequence reservation, expiry bounds
//	lease.go     Lease: hinted recipients (R), fresh records (F), the mover, reclaim, dead letters
//	complete.go  Complete/CompleteMany, Release, Extend
//	expire.go    Expire: the merge of the epochs' expiry entries
//	owners.go    the per-owner byte counts
//	park.go      Outcome.Park, Unpark, ParkedGroups: a paused campaign's messages out of every FIFO
//
// # Parking
//
// A leased message completed with Outcome.Park leaves its recipient's FIFO
// for its group's park range, where no Lease looks: a paused campaign costs
// nothing per dispatch round. Unpark moves a group's records back into R
// (in sequence order per recipient, with a hint each). Parked records still
// count in the depth and their owner's bytes, and Expire still deletes them
// at their TTL (through the park index, consulted only when the recipient's
// bucket in a fixed-size count table is non-zero).
package queue
