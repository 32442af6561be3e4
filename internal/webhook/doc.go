// Package webhook delivers status updates to each business phone number's
// webhook: batched, Cloud-API-shaped, signed X-Hub-Signature-256, retried
// with backoff, persisted (sealed: entries carry recipient numbers) in the
// same batch as the status transitions they report, so a restart drops none,
// and never in the delivery path: a slow or dead endpoint only grows its own
// outbox.
//
// # Files
//
//	webhook.go  configuration, the outbox (written in the status batch),
//	            delivery per endpoint (bounded concurrency, backoff), the
//	            payload and its signature, expiry and the backlog cap
//	dial.go     the dialer's guard: loopback, private, link-local, multicast
//	            and metadata addresses are refused unless allowed, checked on
//	            the resolved address at connect time
//
// Invariants: an entry lives no longer than its message's TTL; a phone
// number's backlog is capped; an endpoint's reply is read no further than
// MaxReplyBytes; one endpoint's slowness holds only its own slot.
package webhook
