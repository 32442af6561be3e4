// Package engine moves messages from the queue to the platform: one dispatcher
// per shard leases due recipients and hands them, in tasks of many recipients'
// runs of messages, to workers on an ants pool; a task fetches missing bundles
// (runs that must wait for them on a pool of their own), batch-encrypts for
// every device, persists all its runs' ciphertexts and advanced sessions in
// one fsync'd Pebble batch, and only then transmits, the k-th message of
// every run in one round. Statuses and campaign counters are kept by
// internal/records; the engine reports transitions to its writer.
//
// Invariants (design invariants 1-5):
//   - Ciphertext before wire: a session advances only in the batch that stores
//     the ciphertexts it produced; a retransmission resends the stored
//     ciphertext. Only bad_message / decrypt_failed resets a session, and the
//     reset drops that device's unsent ciphertexts in the same batch.
//   - Per-recipient order: the queue lease makes a worker the only one touching a
//     recipient; within a lease, messages go in waves — message n+1 is sent to
//     any device only after message n was accepted by every device — so a retry
//     of n holds back n+1 (it stays queued behind its head).
//   - At-least-once to the platform: a message is acked in the queue only after
//     every current device accepted it; envelopes carry the message id so the
//     platform dedupes a retransmission.
//   - Nothing outlives its TTL: retries are never scheduled past expiry, and the
//     retention sweeper fails and deletes what is left.
//   - Campaign control: a campaign paused or canceled (Options.Campaigns) is
//     set aside before its messages are prepared, and again at the hand-off:
//     every transmit round holds its campaigns' states (Campaigns.Enter) while
//     it hands envelopes to the platform, and a pause or cancel waits for that
//     hold, so nothing goes after its answer. Paused messages are parked in the
//     queue (once each, ciphertexts kept); canceled ones end "canceled" with
//     their ciphertexts dropped (the session advance stays).
//   - Backpressure: a dispatcher leases no more recipients than there are free
//     worker slots; when the platform is down the breaker turns rounds into
//     single probes and messages wait on disk.
package engine
