// Package seal protects values at rest: every record that holds a message body, a
// phone number or a private key is compressed (S2) and then sealed with AES-256-GCM
// before it reaches Pebble (design invariant 6).
//
// A sealed record is: version byte (1), key id (4, big endian), nonce (12),
// GCM ciphertext of the S2-compressed plaintext. The key id lets keys rotate:
// Seal always uses the newest key, Open uses whichever key the record names.
//
// Lookup keys that would contain a phone number use Sealer.Lookup, a keyed
// HMAC-SHA256 truncated to 16 bytes, so the data directory never holds a number
// in the clear even inside an index key.
package seal
