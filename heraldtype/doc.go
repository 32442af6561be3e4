// Package heraldtype holds the value types that the API, the engine and the
// rate limiter share, so none of them imports another.
//
// It holds the statuses and their ranks, error codes, the queued payload
// and its encoding, message ids (ULID-like, increasing per phone number),
// the queue's recipient key (business, recipient), and the StatusChange and
// Signal values the engine reports to webhooks and to the limits.
package heraldtype
