// Package hmacsha256 is HMAC-SHA256 with the key's pads hashed once: a Key
// holds the SHA-256 states after the inner and the outer pad block, so each
// MAC under it hashes only its data and one outer block. The Signal layer
// makes seven MACs per encryption under five keys, and with crypto/hmac (or
// sha256.Sum256 over pad and data) every one of them hashed both pad blocks
// again: 32 compression-function calls per encryption, 23 with this. The
// compression function is the standard library's own (SHA-NI on amd64, its
// pure Go version elsewhere; files copied from Go 1.26, see their headers).
//
// Nothing allocates and no argument escapes. TestMatchesStdlib compares every
// path with crypto/hmac.
package hmacsha256
