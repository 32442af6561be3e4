package signal

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"go.mau.fi/libsignal/keys/prekey"
	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/ratchet"
	"go.mau.fi/libsignal/session"
	"go.mau.fi/libsignal/state/record"
)

// libraryX3DH is what session.Builder.ProcessBundle computes, through the
// library's own exported key agreement (ratchet.CalculateSenderSession,
// RootKey.CreateChain), for given ephemeral keys.
func libraryX3DH(t *testing.T, id *Identity, b *prekey.Bundle, base, ratchetKey ephemeral) *record.Session {
	t.Helper()
	p := ratchet.NewEmptySenderParameters()
	p.SetOurBaseKey(base.pair)
	p.SetOurIdentityKey(id.KeyPair)
	p.SetTheirIdentityKey(b.IdentityKey())
	p.SetTheirSignedPreKey(b.SignedPreKey())
	p.SetTheirRatchetKey(b.SignedPreKey())
	p.SetTheirOneTimePreKey(b.PreKey())
	derived, err := ratchet.CalculateSenderSession(p)
	if err != nil {
		t.Fatal(err)
	}
	sending, err := derived.RootKey.CreateChain(b.SignedPreKey(), ratchetKey.pair)
	if err != nil {
		t.Fatal(err)
	}
	rec := NewSessionRecord()
	st := rec.SessionState()
	st.SetVersion(protocol.CurrentVersion)
	st.SetRemoteIdentityKey(b.IdentityKey())
	st.SetLocalIdentityKey(id.KeyPair.PublicKey())
	st.AddReceiverChain(b.SignedPreKey(), derived.ChainKey.Current())
	st.SetSenderChain(ratchetKey.pair, sending.ChainKey)
	st.SetRootKey(sending.RootKey)
	st.SetUnacknowledgedPreKeyMessage(b.PreKeyID(), b.SignedPreKeyID(), base.pair.PublicKey())
	st.SetLocalRegistrationID(id.RegistrationID)
	st.SetRemoteRegistrationID(b.RegistrationID())
	st.SetSenderBaseKey(base.pair.PublicKey().Serialize())
	return rec
}

// libraryBuild is the library's whole ProcessBundle (its own random keys).
func libraryBuild(t *testing.T, id *Identity, user string, b *prekey.Bundle) *record.Session {
	t.Helper()
	st := &oneSession{id: id, rec: NewSessionRecord()}
	if err := session.NewBuilder(st, st, st, st, protocol.NewSignalAddress(user, b.DeviceID()), Serializer).ProcessBundle(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	return st.rec
}

// TestX3DHMatchesLibrary: for the same bundle and ephemeral keys, the session
// Herald builds with its own X25519 is byte-identical to the one the library's
// key agreement yields (with and without a one-time prekey); and sessions from
// Herald's path and from the library's ProcessBundle are received identically
// by the recipient: every message of each decrypts, in order.
func TestX3DHMatchesLibrary(t *testing.T) {
	id, _ := NewIdentity("15550001111")
	for _, prekeys := range []int{10, 0} {
		t.Run(fmt.Sprintf("prekeys=%d", prekeys), func(t *testing.T) {
			dev, _ := NewDevice(3, prekeys)
			b, err := DecodeBundle("15551230000", dev.Bundle())
			if err != nil {
				t.Fatal(err)
			}
			if (b.PreKey() != nil) != (prekeys > 0) {
				t.Fatalf("bundle one-time prekey present=%v with %d prekeys", b.PreKey() != nil, prekeys)
			}
			base, _ := newEphemeral()
			rk, _ := newEphemeral()
			ours, err := x3dhSession(id, b, base, rk)
			if err != nil {
				t.Fatal(err)
			}
			if want := libraryX3DH(t, id, b, base, rk); !bytes.Equal(ours.Serialize(), want.Serialize()) {
				t.Fatal("the session built with our X25519 differs from the library's for the same keys")
			}
		})
	}
	// Behaviour at the recipient: BuildSession vs ProcessBundle, two devices.
	for i, build := range []func(*prekey.Bundle) *record.Session{
		func(b *prekey.Bundle) *record.Session {
			built, err := BuildSession(id, b, nil, false)
			if err != nil {
				t.Fatal(err)
			}
			return built.Record
		},
		func(b *prekey.Bundle) *record.Session { return libraryBuild(t, id, "15551230000", b) },
	} {
		dev, _ := NewDevice(uint32(4+i), 10)
		b, _ := DecodeBundle("15551230000", dev.Bundle())
		rec := build(b)
		var pts [][]byte
		for j := 0; j < 6; j++ {
			pts = append(pts, []byte(fmt.Sprintf("path %d message %d", i, j)))
		}
		cts, err := EncryptBatch(rec, pts)
		if err != nil {
			t.Fatal(err)
		}
		for j, c := range cts {
			got, err := dev.Decrypt(id.Phone, c.Type, c.Body)
			if err != nil || !bytes.Equal(got, pts[j]) {
				t.Fatalf("path %d message %d at the recipient: %v", i, j, err)
			}
		}
	}
}
