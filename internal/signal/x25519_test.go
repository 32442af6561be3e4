package signal

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"testing"
)

// TestX25519MatchesCryptoECDH: the fixed-base public key and the ladder give
// what crypto/ecdh gives, for random keys and for public keys with the top
// bit set (ignored by RFC 7748), and an agreement with a low-order point
// fails as crypto/ecdh's does.
func TestX25519MatchesCryptoECDH(t *testing.T) {
	curve := ecdh.X25519()
	for i := 0; i < 300; i++ {
		a, err := newPrivKey()
		if err != nil {
			t.Fatal(err)
		}
		ref, err := curve.NewPrivateKey(a[:])
		if err != nil {
			t.Fatal(err)
		}
		if pub := a.publicKey(); !bytes.Equal(pub[:], ref.PublicKey().Bytes()) {
			t.Fatalf("key %d: public key %x, crypto/ecdh %x", i, pub, ref.PublicKey().Bytes())
		}
		// An unclamped scalar is clamped on use, by both.
		var raw privKey
		rand.Read(raw[:])
		refRaw, _ := curve.NewPrivateKey(raw[:])
		if pub := raw.publicKey(); !bytes.Equal(pub[:], refRaw.PublicKey().Bytes()) {
			t.Fatalf("unclamped key %d: public key differs", i)
		}

		peer, _ := curve.GenerateKey(rand.Reader)
		var pp [32]byte
		copy(pp[:], peer.PublicKey().Bytes())
		if i%3 == 0 {
			pp[31] |= 0x80 // the top bit is not part of the coordinate
		}
		got, err := a.agree(&pp)
		if err != nil {
			t.Fatal(err)
		}
		want, err := ref.ECDH(peer.PublicKey())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("key %d: agreement %x, crypto/ecdh %x", i, got, want)
		}
	}

	a, _ := newPrivKey()
	ref, _ := curve.NewPrivateKey(a[:])
	for _, low := range [][32]byte{
		{},  // 0
		{1}, // 1
		// 325606250916557431795983626356110631294008115727848805560023387167927233504
		{0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00},
	} {
		if _, err := a.agree(&low); !errors.Is(err, errLowOrder) {
			t.Fatalf("low-order point %x: %v, want errLowOrder", low, err)
		}
		p, err := curve.NewPublicKey(low[:])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ref.ECDH(p); err == nil {
			t.Fatalf("crypto/ecdh accepted low-order point %x (the test's premise)", low)
		}
	}
}

// BenchmarkKeyGen: a key pair's public key by the fixed-base multiplication
// against crypto/ecdh's NewPrivateKey (a ladder).
func BenchmarkKeyGen(b *testing.B) {
	k, _ := newPrivKey()
	b.Run("impl=fixedbase", func(b *testing.B) {
		for b.Loop() {
			k.publicKey()
		}
	})
	b.Run("impl=crypto-ecdh", func(b *testing.B) {
		for b.Loop() {
			ecdh.X25519().NewPrivateKey(k[:])
		}
	})
}

// BenchmarkAgree: one DH, our ladder against crypto/ecdh with a parsed key.
func BenchmarkAgree(b *testing.B) {
	k, _ := newPrivKey()
	peer, _ := ecdh.X25519().GenerateKey(rand.Reader)
	var pp [32]byte
	copy(pp[:], peer.PublicKey().Bytes())
	b.Run("impl=ladder", func(b *testing.B) {
		for b.Loop() {
			k.agree(&pp)
		}
	})
	ref, _ := ecdh.X25519().NewPrivateKey(k[:])
	b.Run("impl=crypto-ecdh", func(b *testing.B) {
		for b.Loop() {
			ref.ECDH(peer.PublicKey())
		}
	})
}
