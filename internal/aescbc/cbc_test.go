package aescbc

import (
	"crypto/aes"
	"crypto/cipher"
	"testing"

	"pgregory.net/rapid"
)

// TestMatchesStdlib: any key, IV and whole-block message encrypt as
// crypto/cipher's CBC encrypter does, through Encrypt (AES-NI where the CPU
// has it) and through the fallback; a trailing partial block is left alone.
func TestMatchesStdlib(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var key [32]byte
		var iv [16]byte
		copy(key[:], rapid.SliceOfN(rapid.Byte(), 32, 32).Draw(t, "key"))
		copy(iv[:], rapid.SliceOfN(rapid.Byte(), 16, 16).Draw(t, "iv"))
		msg := rapid.SliceOfN(rapid.Byte(), 0, 200).Draw(t, "msg")
		whole := len(msg) &^ (BlockSize - 1)

		want := append([]byte(nil), msg...)
		blk, _ := aes.NewCipher(key[:])
		cipher.NewCBCEncrypter(blk, iv[:]).CryptBlocks(want[:whole], want[:whole])

		got := append([]byte(nil), msg...)
		Encrypt(&key, &iv, got)
		if string(got) != string(want) {
			t.Fatalf("Encrypt: %x, want %x", got, want)
		}
		got = append(got[:0], msg...)
		encryptStdlib(&key, &iv, got)
		if string(got) != string(want) {
			t.Fatalf("fallback: %x, want %x", got, want)
		}
	})
}

func TestNoAllocations(t *testing.T) {
	if !useAESNI {
		t.Skip("the fallback allocates (crypto/aes)")
	}
	var key [32]byte
	var iv [16]byte
	buf := make([]byte, 160)
	if n := testing.AllocsPerRun(100, func() { Encrypt(&key, &iv, buf) }); n != 0 {
		t.Fatalf("Encrypt allocates %v times", n)
	}
}

func BenchmarkEncrypt(b *testing.B) {
	var key [32]byte
	var iv [16]byte
	buf := make([]byte, 160)
	b.Run("impl=aescbc", func(b *testing.B) {
		for b.Loop() {
			Encrypt(&key, &iv, buf)
		}
	})
	b.Run("impl=stdlib", func(b *testing.B) {
		for b.Loop() {
			encryptStdlib(&key, &iv, buf)
		}
	})
}
