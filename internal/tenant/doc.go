// Package tenant keeps businesses, their phone numbers and API tokens in
// Pebble (prefix 't'). Tokens are random, shown once, and stored only as a
// keyed HMAC; lookups compare in constant time. Business records (which hold
// the business's phone numbers) are sealed.
//
// A business's share of the queue (max_queued_bytes) lives here; the API
// checks it against the queue's per-owner byte count.
package tenant
