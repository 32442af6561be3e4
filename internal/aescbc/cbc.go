package aescbc

import (
	"crypto/aes"
	"crypto/cipher"
)

// BlockSize is AES's block size.
const BlockSize = aes.BlockSize

// Encrypt encrypts buf in place under AES-256 key in CBC mode from iv. Only
// buf's whole blocks are encrypted (the caller pads).
func Encrypt(key *[32]byte, iv *[16]byte, buf []byte) {
	encrypt(key, iv, buf)
}

func encryptStdlib(key *[32]byte, iv *[16]byte, buf []byte) {
	// Copies: crypto/aes's arguments escape, and the caller's key and IV
	// live on its stack.
	k, v := *key, *iv
	blk, err := aes.NewCipher(k[:])
	if err != nil {
		panic(err) // a 32-byte key is always valid
	}
	n := len(buf) &^ (BlockSize - 1)
	cipher.NewCBCEncrypter(blk, v[:]).CryptBlocks(buf[:n], buf[:n])
}
