// Package api is Herald's business and admin HTTP API on fasthttp, exactly
// the contract of DESIGN.md, plus /v1/platform/events, /metrics, /healthz and
// /readyz.
//
// Every business handler checks that the token's business owns the phone
// number, message or campaign it touches; anything else is 404, never another
// tenant's data (design invariant 7). A rejected request changes nothing; in a
// bulk upload, a bad line rejects that line only (invariant 8).
//
// # Files
//
//	api.go        Options, the server, the routes (fasthttp/router: 404 for a path it does
//	              not serve, 405 with Allow for a method a path does not take),
//	              authentication, health, platform events
//	messages.go   single sends (Idempotency-Key), GET of a message's status, strict JSON decoding
//	campaigns.go  campaign uploads (JSON and NDJSON), templates and their bounds, admission batches, GET of a campaign
//	admin.go      the admin API (businesses, tokens, phone numbers, shares) and webhook configuration
//	errors.go     the error object and codes
//
// What an upload or a send leaves behind (campaign records, idempotent
// answers, upload progress) is kept by internal/records; statuses and
// counters are read from there too. The API imports neither the engine nor
// its internals: platform events go to an EventHandler.
//
// Invariants: every request is bounded (body, line, template expansion,
// events per post, connections per address, header and stall timeouts); a
// field or query parameter the server does not know is refused (400, code
// 100, named); a business past its share of the queue gets 429 and no other
// business does.
package api
