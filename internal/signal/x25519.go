package signal

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"

	"filippo.io/edwards25519"
	"filippo.io/edwards25519/field"
)

// X25519 for the Signal layer, on filippo.io/edwards25519 (the public copy of
// the field and group code crypto/ecdh uses internally).
//
// crypto/ecdh computes a private key's public key as soon as the key is
// parsed (NewPrivateKey), with the same variable-base Montgomery ladder a DH
// takes. A cold session makes two fresh key pairs on the sender (base key,
// ratchet key) and one more at the recipient, and a device makes three when
// it is created; each is used once or a few times, so the parse cost a full
// ladder every time. Here:
//   - a public key is a fixed-base multiplication on the Edwards form (a
//     precomputed table of the base point, constant time), mapped to its
//     Montgomery u-coordinate: 14.5-15.6 µs here against 36.7-38.5 µs for
//     crypto/ecdh's ladder (BenchmarkKeyGen), the method libsodium and
//     BoringSSL use;
//   - a DH is the RFC 7748 ladder on a private scalar kept as bytes, nothing
//     computed in advance (the same ladder and field code as crypto/ecdh,
//     equally fast: BenchmarkAgree).
//
// TestX25519MatchesCryptoECDH checks both against crypto/ecdh for random keys
// and the low-order points.

// privKey is an X25519 private scalar (clamped on use, as RFC 7748 says).
type privKey [32]byte

// errLowOrder is a DH whose result is all zeros: their key is a point of
// small order (crypto/ecdh rejects it the same way).
var errLowOrder = errors.New("signal: X25519 agreement: low-order public key")

// agree is X25519(k, pub).
func (k *privKey) agree(pub *[32]byte) ([]byte, error) {
	out := make([]byte, 32)
	x25519Ladder((*[32]byte)(out), (*[32]byte)(k), pub)
	var acc byte
	for _, b := range out {
		acc |= b
	}
	if acc == 0 {
		return nil, errLowOrder
	}
	return out, nil
}

// publicKey is X25519(k, 9): k times the base point, computed on the
// birationally equivalent Edwards curve with the precomputed base table.
// The clamped scalar reduced mod the group order gives the same point (the
// base point has that order).
func (k *privKey) publicKey() [32]byte {
	s, err := edwards25519.NewScalar().SetBytesWithClamping(k[:])
	if err != nil { // only for a length other than 32
		panic(err)
	}
	var out [32]byte
	copy(out[:], new(edwards25519.Point).ScalarBaseMult(s).BytesMontgomery())
	return out
}

// newPrivKey is a random private key, clamped as ecc.GenerateKeyPair makes
// them (an identity key also signs with XEdDSA, which needs the clamped form).
func newPrivKey() (*privKey, error) {
	k := new(privKey)
	if _, err := rand.Read(k[:]); err != nil {
		return nil, err
	}
	k[0] &= 248
	k[31] &= 127
	k[31] |= 64
	return k, nil
}

// x25519Ladder is RFC 7748's Montgomery ladder: dst = scalar (clamped) times
// the point whose u-coordinate is point (its top bit ignored). Constant time.
func x25519Ladder(dst, scalar, point *[32]byte) {
	e := *scalar
	e[0] &= 248
	e[31] &= 127
	e[31] |= 64

	var x1, x2, z2, x3, z3, tmp0, tmp1 field.Element
	if _, err := x1.SetBytes(point[:]); err != nil { // only for a length other than 32
		panic(err)
	}
	x2.One()
	x3.Set(&x1)
	z3.One()

	swap := 0
	for pos := 254; pos >= 0; pos-- {
		b := int(e[pos/8]>>uint(pos&7)) & 1
		swap ^= b
		x2.Swap(&x3, swap)
		z2.Swap(&z3, swap)
		swap = b

		tmp0.Subtract(&x3, &z3)
		tmp1.Subtract(&x2, &z2)
		x2.Add(&x2, &z2)
		z2.Add(&x3, &z3)
		z3.Multiply(&tmp0, &x2)
		z2.Multiply(&z2, &tmp1)
		tmp0.Square(&tmp1)
		tmp1.Square(&x2)
		x3.Add(&z3, &z2)
		z2.Subtract(&z3, &z2)
		x2.Multiply(&tmp1, &tmp0)
		tmp1.Subtract(&tmp1, &tmp0)
		z2.Square(&z2)

		z3.Mult32(&tmp1, 121666)
		x3.Square(&x3)
		tmp0.Add(&tmp0, &z3)
		z3.Multiply(&x1, &z2)
		z2.Multiply(&tmp1, &tmp0)
	}
	x2.Swap(&x3, swap)
	z2.Swap(&z3, swap)

	z2.Invert(&z2)
	x2.Multiply(&x2, &z2)
	copy(dst[:], x2.Bytes())
}

// verifyXEdDSA checks an XEdDSA signature (Signal's signatures by an X25519
// identity key) as ecc.VerifySignature does, without its two debug-log calls
// (each takes runtime.Caller and formats the message before any logger can
// drop it: ~10 % of a verification). The Montgomery u-coordinate becomes the
// Edwards y = (u - 1) / (u + 1); the sign of x travels in the signature's top
// bit; the rest is Ed25519 verification. TestVerifyXEdDSAMatchesLibrary
// compares the two on valid, altered and random inputs.
func verifyXEdDSA(pub [32]byte, message []byte, sig [64]byte) bool {
	pub[31] &= 0x7F // not part of u (SetBytes ignores it too)
	var u, one, num, den, y field.Element
	if _, err := u.SetBytes(pub[:]); err != nil {
		return false
	}
	one.One()
	num.Subtract(&u, &one)
	den.Add(&u, &one)
	den.Invert(&den) // u = -1 gives y = 0, as the library's
	y.Multiply(&num, &den)
	var edPub [32]byte
	copy(edPub[:], y.Bytes())
	edPub[31] |= sig[63] & 0x80
	sig[63] &= 0x7F
	return ed25519.Verify(edPub[:], message, sig[:])
}
