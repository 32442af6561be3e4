package signal

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"testing"

	"go.mau.fi/libsignal/ecc"
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

// TestVerifyXEdDSAMatchesLibrary: verifyXEdDSA answers as ecc.VerifySignature
// for valid signatures, altered messages and signatures (every bit of the
// signature's last byte, the sign bit included), the wrong key, keys with the
// top bit set, u = -1 and random bytes.
func TestVerifyXEdDSAMatchesLibrary(t *testing.T) {
	check := func(what string, pub [32]byte, msg []byte, sig [64]byte) bool {
		t.Helper()
		lib := ecc.VerifySignature(ecc.NewDjbECPublicKey(pub), msg, sig)
		if got := verifyXEdDSA(pub, msg, sig); got != lib {
			t.Fatalf("%s: verifyXEdDSA %v, library %v", what, got, lib)
		}
		return lib
	}
	valid := 0
	for i := 0; i < 100; i++ {
		kp, err := ecc.GenerateKeyPair()
		if err != nil {
			t.Fatal(err)
		}
		msg := make([]byte, 1+i%64)
		rand.Read(msg)
		sig := ecc.CalculateSignature(kp.PrivateKey(), msg)
		pub := kp.PublicKey().PublicKey()
		if check("valid", pub, msg, sig) {
			valid++
		}
		bad := bytes.Clone(msg)
		bad[0] ^= 1
		check("altered message", pub, bad, sig)
		for bit := 0; bit < 8; bit++ {
			s := sig
			s[63] ^= 1 << bit
			check("altered signature", pub, msg, s)
		}
		s := sig
		s[0] ^= 0x40
		check("altered R", pub, msg, s)
		top := pub
		top[31] |= 0x80
		check("top bit set", top, msg, sig)
		other, _ := ecc.GenerateKeyPair()
		check("other key", other.PublicKey().PublicKey(), msg, sig)
		var rp [32]byte
		var rs [64]byte
		rand.Read(rp[:])
		rand.Read(rs[:])
		check("random", rp, msg, rs)
	}
	if valid != 100 {
		t.Fatalf("%d of 100 valid signatures verified", valid)
	}
	// u = p - 1 (= -1): y = 0 by the inversion of zero.
	minusOne := [32]byte{0xec}
	for i := 1; i < 31; i++ {
		minusOne[i] = 0xff
	}
	minusOne[31] = 0x7f
	var sig [64]byte
	rand.Read(sig[:])
	check("u = -1", minusOne, []byte("m"), sig)
}

// BenchmarkVerify: verifyXEdDSA against the library's ecc.VerifySignature.
func BenchmarkVerify(b *testing.B) {
	kp, _ := ecc.GenerateKeyPair()
	msg := make([]byte, 33)
	sig := ecc.CalculateSignature(kp.PrivateKey(), msg)
	pub := kp.PublicKey().PublicKey()
	b.Run("impl=ours", func(b *testing.B) {
		for b.Loop() {
			verifyXEdDSA(pub, msg, sig)
		}
	})
	b.Run("impl=library", func(b *testing.B) {
		for b.Loop() {
			ecc.VerifySignature(kp.PublicKey(), msg, sig)
		}
	})
}

// FuzzVerifyXEdDSA: on any key, message and signature, verifyXEdDSA answers
// as the library's ecc.VerifySignature (seeded with a valid signature, so
// mutations around one are explored).
func FuzzVerifyXEdDSA(f *testing.F) {
	kp, _ := ecc.GenerateKeyPair()
	msg := []byte("signed prekey")
	sig := ecc.CalculateSignature(kp.PrivateKey(), msg)
	pub := kp.PublicKey().PublicKey()
	f.Add(pub[:], msg, sig[:])
	f.Fuzz(func(t *testing.T, p, m, s []byte) {
		if len(p) != 32 || len(s) != 64 {
			return
		}
		var pk [32]byte
		var sg [64]byte
		copy(pk[:], p)
		copy(sg[:], s)
		if got, lib := verifyXEdDSA(pk, m, sg), ecc.VerifySignature(ecc.NewDjbECPublicKey(pk), m, sg); got != lib {
			t.Fatalf("verifyXEdDSA %v, library %v (key %x, sig %x)", got, lib, pk, sg)
		}
	})
}

// FuzzX25519: on any scalar and point, the ladder and the fixed-base public
// key give what crypto/ecdh gives, errors included (an all-zero result).
func FuzzX25519(f *testing.F) {
	f.Add(bytes.Repeat([]byte{7}, 32), append([]byte{9}, make([]byte, 31)...))
	f.Add(bytes.Repeat([]byte{0xff}, 32), bytes.Repeat([]byte{0xff}, 32))
	f.Fuzz(func(t *testing.T, scalar, point []byte) {
		if len(scalar) != 32 || len(point) != 32 {
			return
		}
		curve := ecdh.X25519()
		ref, err := curve.NewPrivateKey(scalar)
		if err != nil {
			t.Fatal(err)
		}
		k := privKey(scalar)
		if pub := k.publicKey(); !bytes.Equal(pub[:], ref.PublicKey().Bytes()) {
			t.Fatalf("public key of %x: %x, crypto/ecdh %x", scalar, pub, ref.PublicKey().Bytes())
		}
		peer, err := curve.NewPublicKey(point)
		if err != nil {
			t.Fatal(err)
		}
		want, werr := ref.ECDH(peer)
		p := [32]byte(point)
		got, gerr := k.agree(&p)
		if (werr != nil) != (gerr != nil) || !bytes.Equal(got, want) {
			t.Fatalf("X25519(%x, %x): %x %v, crypto/ecdh %x %v", scalar, point, got, gerr, want, werr)
		}
	})
}
