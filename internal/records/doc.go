// Package records keeps the records of a message's life that outlive its
// delivery: its status and status history, its campaign's counters, and
// their retention. The engine reports transitions to one writer (Statuses);
// the API writes the "queued" record in the same batch that enqueues the
// message (NewStatusRecord, QueuedRecords) and reads statuses and counters
// back (Message, Counters).
//
// Keys (see internal/kv/prefixes.go):
//
//	e M <message id>                 → status record (statusrec.go): business, phone number id,
//	                                   campaign, status, code, history, expiry — no number, no body
//	e X <until(8), unix s> <id>      → retention index of the status records
//	e c <campaign id>                → campaign counters (JSON)
//
// Invariants:
//   - A status never goes back: queued → sent → delivered → read; failed is
//     terminal and only reachable before delivery. One goroutine applies every
//     transition (read-modify-write without locks), and counters count every
//     rank passed, so a "delivered" that overtakes "sent" counts both.
//   - Statuses before acks: the engine submits a lease's transitions with
//     SubmitWait and completes the lease in the queue only after they are
//     committed (WAL order), so a crash never keeps an ack and loses its
//     status.
//   - Nothing outlives its TTL (design invariant 11): a status record is
//     indexed at its message's expiry + StatusGrace and Sweep deletes it then;
//     the counters go with their campaign record (DeleteCounters).
//   - Reports carry what the store does not keep: a transition the engine
//     makes names the recipient (for webhooks, whose outbox seals it and
//     expires with the message); the stored record never holds it.
package records
