// Package ratelimit enforces Herald's integrity limits, modeled on the
// WhatsApp Business Platform, before anything leaves:
//
//   - Messaging tier (admission): unique recipients a business may start
//     messaging per moving 24 h (for the unlimited tier nothing is tracked per
//     recipient: there is no cap, and the lookups dominated ingest).
//     For capped tiers:
//     Exact at the boundary: admission for one
//     business is serialized, and every decision is in Pebble (keyed HMACs of
//     numbers, never the numbers) before the enqueue that follows it commits,
//     so concurrent uploads cannot overshoot and restarts forget nothing.
//   - Throughput per phone number and pair rate per (business, recipient)
//     (dispatch): token buckets; a message that must wait is rescheduled on
//     disk, never failed.
//   - Quality: signals per phone number in hourly buckets over 7 days (first
//     contacts, unknown users, sequential enumeration in uploads, spam reports
//     and blocks per sent message) give a high/medium/low rating; low pauses
//     new campaigns and moves the tier down. Every decision is explainable: the
//     integrity view lists each flag with its value and threshold.
//
// Memory is bounded: per business a counter and a mutex, per phone number 168
// hourly buckets, and an LRU of pair-rate buckets.
package ratelimit
