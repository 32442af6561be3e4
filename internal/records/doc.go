// Package records keeps the records of a message's life that outlive its
// delivery, and their retention:
//   - Statuses: each message's status and history, each campaign's counters.
//     The engine reports transitions to one writer; the API writes the
//     "queued" record in the same batch that enqueues the message
//     (NewStatusRecord, QueuedRecords) and reads statuses and counters back
//     (Message, Counters).
//   - Uploads: campaign records, the answers remembered for Idempotency-Keys
//     (campaigns and single sends) and the progress of uploads that broke
//     off (uploads.go lists their keys).
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
//     indexed at its message's expiry + StatusGrace and Statuses.Sweep
//     deletes it then; the counters go with their campaign record, StatusGrace
//     after its last message's expiry (Uploads.Sweep). Answers and progress,
//     which list phone numbers, go when their messages expire, at most
//     IdemTTL after they were made. Every record kind with a TTL has a time
//     index beside it, swept in bounded batches (kv.SweepIndex).
//   - Reports carry what the store does not keep: a transition the engine
//     makes names the recipient (for webhooks, whose outbox seals it and
//     expires with the message); the stored record never holds it.
package records
