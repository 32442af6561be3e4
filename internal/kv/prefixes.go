package kv

// Prefixes lists every key prefix Herald writes in Pebble: its owner, what
// it holds and in what form. A record under a prefix not listed here fails
// the API package's TestEveryStoredPrefixIsListed; a new record kind is
// added here with the form of what it holds (sealed, keyed HMAC, counter or
// clear) — never a phone number or a body in clear (invariant 6).
var Prefixes = []Prefix{
	{"qF", "queue", "fresh records (recipient HMAC + header with the owner's id + sealed payload) and the expiry index inside each epoch", "sealed, HMAC"},
	{"qR", "queue", "records in the per-recipient range (header with the owner's id + sealed payload)", "sealed, HMAC"},
	{"qD", "queue", "wake-up hints: due time, recipient HMAC, sequence", "HMAC"},
	{"qX", "queue", "expiry index written before s7 (read only)", "HMAC"},
	{"qZ", "queue", "dead letters: records that failed to open", "sealed"},
	{"qS", "queue", "the sequence ceiling", "counter"},
	{"qN", "queue", "the shard count of the data directory", "clear setting"},
	{"qP", "queue", "parked records of a paused campaign: campaign id, shard, recipient HMAC, sequence → the record (header + sealed payload)", "sealed, HMAC"},
	{"qp", "queue", "the park index: shard, recipient HMAC, sequence → campaign id", "HMAC"},
	{"qO", "queue", "the owner table: the id records carry → the business id", "clear, no personal data"},
	{"eM", "records", "a message's status record and history: business, phone number id, campaign, times, expiry — no number, no body", "clear, no personal data"},
	{"eX", "records", "the status records' retention index: until, message id", "clear, no personal data"},
	{"ec", "records", "a campaign's counters", "counter"},
	{"eO", "engine", "the outbox: ciphertexts per device of a message not yet sent to all", "ciphertext (end-to-end encrypted)"},
	{"eK", "engine", "the kept copy of a sent message for decrypt_failed (expiry + sealed payload)", "sealed"},
	{"eT", "engine", "the kept copies' retention index: until, message id", "clear, no personal data"},
	{"eC", "records (uploads)", "a campaign record (business, phone number id, name, counts, times, schedule)", "sealed"},
	{"eL", "records (uploads)", "a phone number's campaigns, newest first: phone number id, creation time, campaign id", "clear, no personal data"},
	{"eS", "campaigns", "a paused or canceled campaign's state: state, since, expiry", "clear, no personal data"},
	{"tB", "tenant", "a business (name, tier, mps, phone numbers, token hashes)", "sealed"},
	{"tK", "records (uploads)", "an idempotent answer (campaign or single send; lists numbers)", "sealed"},
	{"tP", "records (uploads)", "an idempotent upload's progress (lists rejected numbers)", "sealed"},
	{"tX", "records (uploads)", "the idempotent answers' and progress records' retention index: until, key", "clear, no personal data (the key is the business's Idempotency-Key)"},
	{"rL", "ratelimit", "a recipient's last contact in the tier window", "HMAC"},
	{"rE", "ratelimit", "the tier window's expiry index", "HMAC"},
	{"rC", "ratelimit", "a business's unique-recipient count and daily peaks", "counter"},
	{"rW", "ratelimit", "a phone number's hourly quality counters and flags", "counter"},
	{"rO", "ratelimit", "an opt-out: business id, keyed HMAC of the user's number → since", "HMAC"},
	{"iR", "inbound", "read receipts waiting for the platform: expiry in clear, then sealed (names the user)", "sealed"},
	{"sI", "signal", "a business phone number's identity key pair", "sealed"},
	{"sS", "signal", "a device's Signal session", "sealed"},
	{"sH", "signal", "a recipient's sending-chain record (what encryptions change)", "sealed"},
	{"sK", "signal", "a recipient device's trusted identity key", "public key, HMAC"},
	{"sV", "signal", "a recipient's device list", "HMAC"},
	{"sG", "signal", "a business number's signed prekeys (current, previous) and next prekey id", "sealed"},
	{"sP", "signal", "a business number's unconsumed one-time prekey", "sealed"},
	{"iM", "inbound", "a message a user sent a business: expiry in clear, then sealed (number, body)", "sealed"},
	{"iX", "inbound", "the inbound messages' retention index: until, platform id", "clear, no personal data"},
	{"wH", "webhook", "a phone number's webhook configuration (URL, secret)", "sealed"},
	{"wQ", "webhook", "the webhook outbox: expiry in clear, then the sealed status (it holds the recipient's number)", "sealed"},
}

// Prefix is one entry of Prefixes.
type Prefix struct {
	Prefix, Owner, Holds, Form string
}

// KnownPrefix reports whether key starts with a listed prefix.
func KnownPrefix(key []byte) bool {
	for _, p := range Prefixes {
		if len(key) >= len(p.Prefix) && string(key[:len(p.Prefix)]) == p.Prefix {
			return true
		}
	}
	return false
}
