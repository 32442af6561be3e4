// Package signal is Herald's Signal layer on go.mau.fi/libsignal: business
// identities, the Pebble-backed session store, bundle verification, X3DH
// session building and batch encryption, plus the recipient side that the
// platform simulator plays.
//
// Invariants:
//   - Encryption does no I/O. EncryptBatch advances an in-memory session record;
//     the caller persists that record in the same Pebble batch as the
//     ciphertexts it produced (design invariant 2). If the batch fails, the caller
//     calls Store.Forget so the cache drops the advanced, unpersisted state.
//   - A bundle is used only after its signed-prekey signature verifies and its
//     keys have the contract's 33-byte 0x05 form.
//   - Private keys (identity, ratchet state) reach Pebble only sealed.
//   - Only one goroutine works on one (business, recipient) at a time — the
//     engine's lease guarantees it — so cached records need no lock of their own.
//   - An encryption is persisted as its sending chain key (Store.Advance), in
//     one chain record per recipient that carries over the devices a write does
//     not advance; a session is written whole only when built (Store.PutSession).
//
// The hot paths on both sides are written from the library's exported types
// rather than through its session.Cipher and Builder (which format every
// debug log call and pay two X25519 ladders per DH): the sender's X3DH and
// encrypt step, the recipient's X3DH, first ratchet step and chain step. Each
// is held to the library by a differential test (x3dh_test.go,
// encrypt_test.go, recipient_test.go); a recipient takes the library's own
// path for anything else. X25519 is our own (x25519.go): key pairs by a
// fixed-base multiplication, DH by the RFC 7748 ladder, both checked against
// crypto/ecdh (x25519_test.go). The independent check is the JavaScript libsignal
// conformance suite (conformance_test.go, engine/conformance_test.go).
package signal
