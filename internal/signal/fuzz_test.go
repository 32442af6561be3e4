package signal

import (
	"testing"

	"github.com/heraldhq/herald/internal/platform"
)

// FuzzDecrypt: a recipient device fed arbitrary bytes as a Signal message
// (what a hostile platform could send) errors and never panics.
func FuzzDecrypt(f *testing.F) {
	id, _ := NewIdentity("15550001111")
	dev, _ := NewDevice(1, 1000)
	b, _ := DecodeBundle("1555", dev.Bundle())
	built, _ := BuildSession(id, b, nil, false)
	cts, _ := EncryptBatch(built.Record, [][]byte{[]byte("seed")})
	f.Add(cts[0].Body, true)
	f.Add([]byte{0x33, 0x0a}, false)
	f.Fuzz(func(t *testing.T, body []byte, pk bool) {
		d, _ := NewDevice(1, 10)
		typ := platform.TypeMsg
		if pk {
			typ = platform.TypePreKey
		}
		_, _ = d.Decrypt("15550001111", typ, body)
	})
}

// FuzzDecodeBundle: arbitrary bundle fields are rejected cleanly.
func FuzzDecodeBundle(f *testing.F) {
	dev, _ := NewDevice(1, 10)
	w := dev.Bundle()
	f.Add(w.IdentityKey, w.SignedPreKey.PublicKey, w.SignedPreKey.Signature, uint32(1))
	f.Fuzz(func(t *testing.T, ik, spk, sig string, devID uint32) {
		_, _ = DecodeBundle("1555", platform.DeviceBundle{DeviceID: devID, IdentityKey: ik,
			SignedPreKey: platform.SignedPreKey{ID: 1, PublicKey: spk, Signature: sig}})
	})
}

// FuzzParsePreKeyMessage: whatever the fast parser of a PreKeySignalMessage
// accepts, the library's parser accepts with the same version, base key,
// identity key and inner message (the fast path never takes a message the
// library would refuse).
func FuzzParsePreKeyMessage(f *testing.F) {
	for _, pk := range preKeySeeds(f) {
		f.Add(pk)
	}
	f.Add([]byte{0x33})
	f.Fuzz(func(t *testing.T, body []byte) {
		checkPreKeyAgreement(t, body)
	})
}
