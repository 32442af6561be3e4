// Package queue is Herald's durable sharded message queue on Pebble.
//
// # Layout
//
// A message's shard is chosen from a keyed HMAC of its recipient, so all of one
// recipient's messages live in one shard, in one FIFO. Keys (prefix 'q'):
//
//	q R shard(2) rcpt(16) seq(8)         → record: header + sealed payload
//	q D shard(2) due(8) rcpt(16) seq(8)  → wake-up hint for a recipient (unique per message)
//	q X expires(8) shard(2) rcpt(16) seq → expiry index, oldest first
//	q Z seq(8)                           → dead letters (records that failed to open)
//	q S                                  → highest sequence number issued
//
// # Invariants
//
//   - Accepted means durable: Enqueue returns only after its batch is fsync'd.
//     Concurrent callers share fsyncs through Pebble's commit pipeline.
//   - Per-recipient FIFO: only the head of a recipient's FIFO decides when the
//     recipient is due, and while any message of a recipient is leased no other
//     message of that recipient is handed out (design invariant 3).
//   - D entries are hints, never the source of truth. Every Enqueue batch writes
//     its own hint, so no record is ever without one; Lease repairs stale hints
//     (recipient empty, or head not yet due) as it meets them, each once.
//   - Leases live in memory only. A crash forgets them, which is the same as
//     every lease expiring: the records are still on disk and come back.
//   - Memory does not grow with queue depth: the depth counters are two integers
//     and the lease table is bounded by what consumers hold.
//   - Payloads (bodies, phone numbers) are sealed; recipients appear only as
//     HMACs in keys (design invariant 6).
package queue
