package signal

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"fmt"

	"go.mau.fi/libsignal/ecc"
	"go.mau.fi/libsignal/kdf"
	"go.mau.fi/libsignal/keys/chain"
	"go.mau.fi/libsignal/keys/prekey"
	"go.mau.fi/libsignal/keys/root"
	"go.mau.fi/libsignal/keys/session"
	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/state/record"
)

// The sender half of X3DH and the first ratchet step, computed with
// crypto/ecdh and written into the library's exported record types.
//
// What the library's session.Builder.ProcessBundle does, with three costs
// removed: it verifies the signed prekey's signature again (DecodeBundle
// already did), and its kdf.CalculateSharedSecret derives a public key it
// then discards (two scalar multiplications per DH where one does). So a cold
// send costs exactly 2 key generations + 5 DH + 1 XEdDSA verification.
// TestX3DHMatchesLibrary proves the resulting session byte-identical to the
// library's for the same ephemeral keys; the interop tests prove recipients
// (Go and JavaScript libsignal) accept it.

var x25519 = ecdh.X25519()

// dhKey returns the identity's private key parsed for crypto/ecdh (once).
func (id *Identity) dhKey() (*ecdh.PrivateKey, error) {
	id.dhOnce.Do(func() {
		priv := id.KeyPair.PrivateKey().Serialize()
		id.dh, id.dhErr = x25519.NewPrivateKey(priv[:])
	})
	return id.dh, id.dhErr
}

// ephemeral is a fresh X25519 key pair in both forms.
type ephemeral struct {
	dh   *ecdh.PrivateKey
	pair *ecc.ECKeyPair
}

func newEphemeral() (ephemeral, error) {
	k, err := x25519.GenerateKey(rand.Reader)
	if err != nil {
		return ephemeral{}, err
	}
	return ephemeralFrom(k), nil
}

func ephemeralFrom(k *ecdh.PrivateKey) ephemeral {
	var priv, pub [32]byte
	copy(priv[:], k.Bytes())
	copy(pub[:], k.PublicKey().Bytes())
	return ephemeral{dh: k, pair: ecc.NewECKeyPair(ecc.NewDjbECPublicKey(pub), ecc.NewDjbECPrivateKey(priv))}
}

func dh(priv *ecdh.PrivateKey, pub ecc.ECPublicKeyable) ([]byte, error) {
	raw := pub.PublicKey()
	p, err := x25519.NewPublicKey(raw[:])
	if err != nil {
		return nil, err
	}
	s, err := priv.ECDH(p)
	if err != nil {
		return nil, fmt.Errorf("signal: X25519 agreement: %w", err)
	}
	return s, nil
}

// x3dhSession builds the sender's session from a bundle whose signature was
// verified (DecodeBundle), with the given ephemeral base and ratchet keys.
func x3dhSession(id *Identity, b *prekey.Bundle, base, ratchetKey ephemeral) (*record.Session, error) {
	ik, err := id.dhKey()
	if err != nil {
		return nil, err
	}
	master := bytes.Repeat([]byte{0xFF}, 32) // the discontinuity bytes
	for _, step := range []struct {
		priv *ecdh.PrivateKey
		pub  ecc.ECPublicKeyable
	}{
		{ik, b.SignedPreKey()},
		{base.dh, b.IdentityKey().PublicKey()},
		{base.dh, b.SignedPreKey()},
	} {
		s, err := dh(step.priv, step.pub)
		if err != nil {
			return nil, err
		}
		master = append(master, s...)
	}
	if b.PreKey() != nil {
		s, err := dh(base.dh, b.PreKey())
		if err != nil {
			return nil, err
		}
		master = append(master, s...)
	}
	derived, err := kdf.DeriveSecrets(master, nil, []byte("WhisperText"), root.DerivedSecretsSize)
	if err != nil {
		return nil, err
	}
	secrets := session.NewDerivedSecrets(derived)
	rootKey := secrets.RootKey()
	receiverChain := chain.NewKey(kdf.DeriveSecrets, secrets.ChainKey(), 0)

	// First ratchet step: our sending chain from their signed prekey.
	shared, err := dh(ratchetKey.dh, b.SignedPreKey())
	if err != nil {
		return nil, err
	}
	step, err := kdf.DeriveSecrets(shared, rootKey, []byte(root.KdfInfo), root.DerivedSecretsSize)
	if err != nil {
		return nil, err
	}
	next := session.NewDerivedSecrets(step)

	rec := NewSessionRecord()
	st := rec.SessionState()
	st.SetVersion(protocol.CurrentVersion)
	st.SetRemoteIdentityKey(b.IdentityKey())
	st.SetLocalIdentityKey(id.KeyPair.PublicKey())
	st.AddReceiverChain(b.SignedPreKey(), receiverChain.Current())
	st.SetSenderChain(ratchetKey.pair, chain.NewKey(kdf.DeriveSecrets, next.ChainKey(), 0))
	st.SetRootKey(root.NewKey(kdf.DeriveSecrets, next.RootKey()))
	st.SetUnacknowledgedPreKeyMessage(b.PreKeyID(), b.SignedPreKeyID(), base.pair.PublicKey())
	st.SetLocalRegistrationID(id.RegistrationID)
	st.SetRemoteRegistrationID(b.RegistrationID())
	st.SetSenderBaseKey(base.pair.PublicKey().Serialize())
	return rec, nil
}
