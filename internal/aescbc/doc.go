// Package aescbc encrypts with AES-256 in CBC mode without allocating: the
// Signal layer encrypts every message under a key of its own, and
// crypto/aes.NewCipher allocates a key schedule (1.1 KB with its
// decryption half) each time — 12 % of the warm engine's allocated bytes
// before this package. On amd64 with AES-NI the key schedule lives on the
// stack and the standard library's own assembly (copied from Go 1.26, see
// aes_amd64.s) expands it and encrypts; elsewhere the standard library
// does the work. TestMatchesStdlib compares both with crypto/cipher.
package aescbc
