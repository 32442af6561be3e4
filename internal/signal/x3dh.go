package signal

import (
	"bytes"

	"go.mau.fi/libsignal/ecc"
	"go.mau.fi/libsignal/kdf"
	"go.mau.fi/libsignal/keys/chain"
	"go.mau.fi/libsignal/keys/prekey"
	"go.mau.fi/libsignal/keys/root"
	"go.mau.fi/libsignal/keys/session"
	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/state/record"
)

// The sender half of X3DH and the first ratchet step, computed with our
// X25519 (x25519.go) and written into the library's exported record types.
//
// What the library's session.Builder.ProcessBundle does, with three costs
// removed: it verifies the signed prekey's signature again (DecodeBundle
// already did), and its kdf.CalculateSharedSecret derives a public key it
// then discards (two scalar multiplications per DH where one does). So a cold
// send costs exactly 2 key generations (fixed-base) + 5 DH + 1 XEdDSA
// verification. TestX3DHMatchesLibrary proves the resulting session
// byte-identical to the library's for the same ephemeral keys; the interop
// tests prove recipients (Go and JavaScript libsignal) accept it.

// ephemeral is a fresh X25519 key pair in both forms.
type ephemeral struct {
	dh   *privKey
	pair *ecc.ECKeyPair
}

// newEphemeral makes an X25519 key pair as ecc.GenerateKeyPair does (random,
// clamped private key), its public key by a fixed-base multiplication.
func newEphemeral() (ephemeral, error) {
	k, err := newPrivKey()
	if err != nil {
		return ephemeral{}, err
	}
	return ephemeralFrom(k), nil
}

func ephemeralFrom(k *privKey) ephemeral {
	return ephemeral{dh: k, pair: ecc.NewECKeyPair(ecc.NewDjbECPublicKey(k.publicKey()), ecc.NewDjbECPrivateKey(*k))}
}

func dh(priv *privKey, pub ecc.ECPublicKeyable) ([]byte, error) {
	raw := pub.PublicKey()
	return priv.agree(&raw)
}

// dhStep is one agreement of X3DH: our private key with their public key.
type dhStep struct {
	priv *privKey
	pub  ecc.ECPublicKeyable
}

// agree is X3DH's key derivation (both halves): the discontinuity bytes and
// the agreements, in order, through HKDF "WhisperText" into a root key and a
// chain key.
func agree(steps ...dhStep) (rootKey, chainKey []byte, err error) {
	master := bytes.Repeat([]byte{0xFF}, 32) // the discontinuity bytes
	for _, s := range steps {
		secret, err := dh(s.priv, s.pub)
		if err != nil {
			return nil, nil, err
		}
		master = append(master, secret...)
	}
	derived, err := kdf.DeriveSecrets(master, nil, []byte("WhisperText"), root.DerivedSecretsSize)
	if err != nil {
		return nil, nil, err
	}
	secrets := session.NewDerivedSecrets(derived)
	return secrets.RootKey(), secrets.ChainKey(), nil
}

// createChain is root.Key.CreateChain with one DH: the next root key and a
// chain key from DH(our, their) salted with the current root key.
func createChain(rootKey []byte, our *privKey, their ecc.ECPublicKeyable) (newRoot, chainKey []byte, err error) {
	shared, err := dh(our, their)
	if err != nil {
		return nil, nil, err
	}
	b, err := kdf.DeriveSecrets(shared, rootKey, []byte(root.KdfInfo), root.DerivedSecretsSize)
	if err != nil {
		return nil, nil, err
	}
	s := session.NewDerivedSecrets(b)
	return s.RootKey(), s.ChainKey(), nil
}

// x3dhSession builds the sender's session from a bundle whose signature was
// verified (DecodeBundle), with the given ephemeral base and ratchet keys.
func x3dhSession(id *Identity, b *prekey.Bundle, base, ratchetKey ephemeral) (*record.Session, error) {
	ik := privKey(id.KeyPair.PrivateKey().Serialize())
	steps := []dhStep{{&ik, b.SignedPreKey()}, {base.dh, b.IdentityKey().PublicKey()}, {base.dh, b.SignedPreKey()}}
	if b.PreKey() != nil {
		steps = append(steps, dhStep{base.dh, b.PreKey()})
	}
	rootKey, receiverChain, err := agree(steps...)
	if err != nil {
		return nil, err
	}
	// First ratchet step: our sending chain from their signed prekey.
	nextRoot, senderChain, err := createChain(rootKey, ratchetKey.dh, b.SignedPreKey())
	if err != nil {
		return nil, err
	}

	rec := NewSessionRecord()
	st := rec.SessionState()
	st.SetVersion(protocol.CurrentVersion)
	st.SetRemoteIdentityKey(b.IdentityKey())
	st.SetLocalIdentityKey(id.KeyPair.PublicKey())
	st.AddReceiverChain(b.SignedPreKey(), chain.NewKey(kdf.DeriveSecrets, receiverChain, 0))
	st.SetSenderChain(ratchetKey.pair, chain.NewKey(kdf.DeriveSecrets, senderChain, 0))
	st.SetRootKey(root.NewKey(kdf.DeriveSecrets, nextRoot))
	st.SetUnacknowledgedPreKeyMessage(b.PreKeyID(), b.SignedPreKeyID(), base.pair.PublicKey())
	st.SetLocalRegistrationID(id.RegistrationID)
	st.SetRemoteRegistrationID(b.RegistrationID())
	st.SetSenderBaseKey(base.pair.PublicKey().Serialize())
	return rec, nil
}
