package signal

import (
	"go.mau.fi/libsignal/ecc"
	"go.mau.fi/libsignal/kdf"
	"go.mau.fi/libsignal/keys/chain"
	"go.mau.fi/libsignal/keys/root"
	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/state/record"
	"go.mau.fi/libsignal/util/medium"
)

// The recipient half of X3DH and of the first ratchet step, for the
// simulator's devices, computed with our X25519 (x25519.go): what the library's
// Builder.processV3 and the DH ratchet of Cipher.DecryptWithState do when a
// PreKeySignalMessage opens a new session.
//
// The library's kdf.CalculateSharedSecret and ecc.GenerateKeyPair go through
// golang.org/x/crypto/curve25519, which on this Go parses the scalar with
// crypto/ecdh and so derives a public key it throws away: two X25519 ladders
// per DH and per key generation where one does. A cold recipient device made
// ~19 ladders (keys, X3DH, ratchet) where 9 suffice, and the simulator shares
// the cores with the engine in every end-to-end figure. Here a key is
// generated with one fixed-base multiplication (newEphemeral) and a DH is one
// ladder (agree, createChain in x3dh.go, shared with the sender's half).
//
// TestAcceptSessionMatchesLibrary proves the state after X3DH byte-identical
// to the library's, the receiving chain of the ratchet step identical, the
// sending chain right (a reply decrypts at the sender with the library), and
// anything unusual falls back to the library's path.

// x3dhReceive is Builder.processV3 from "initialize our session" on: the
// receiver's X3DH into st (a fresh state), with the one-time prekey otk (nil
// if the message names none).
func (d *Device) x3dhReceive(st *record.State, m *protocol.PreKeySignalMessage, otk *privKey) ([]byte, error) {
	steps := []dhStep{{d.signedDH, m.IdentityKey().PublicKey()}, {d.identityDH, m.BaseKey()}, {d.signedDH, m.BaseKey()}}
	if otk != nil {
		steps = append(steps, dhStep{otk, m.BaseKey()})
	}
	rootKey, chainKey, err := agree(steps...)
	if err != nil {
		return nil, err
	}
	st.SetVersion(protocol.CurrentVersion)
	st.SetRemoteIdentityKey(m.IdentityKey())
	st.SetLocalIdentityKey(d.identity.PublicKey())
	st.SetSenderChain(d.signed.KeyPair(), chain.NewKey(kdf.DeriveSecrets, chainKey, 0))
	st.SetRootKey(root.NewKey(kdf.DeriveSecrets, rootKey))
	st.SetLocalRegistrationID(d.regID)
	st.SetRemoteRegistrationID(m.RegistrationID())
	st.SetSenderBaseKey(m.BaseKey().Serialize())
	return rootKey, nil
}

// ratchetReceive is the DH ratchet step of getOrCreateChainKey for a ratchet
// key st has no receiving chain for, our current sending ratchet key being
// ourRatchet, with ours as the new sending ratchet key.
func ratchetReceive(st *record.State, rootKey []byte, ourRatchet *privKey, their ecc.ECPublicKeyable, ours ephemeral) error {
	r1, recvChain, err := createChain(rootKey, ourRatchet, their)
	if err != nil {
		return err
	}
	r2, sendChain, err := createChain(r1, ours.dh, their)
	if err != nil {
		return err
	}
	st.SetRootKey(root.NewKey(kdf.DeriveSecrets, r2))
	st.AddReceiverChain(their, chain.NewKey(kdf.DeriveSecrets, recvChain, 0))
	// The library's max(index-1, 0) on a uint32: at index 0 it wraps, and so
	// does this (the state must come out the same).
	st.SetPreviousCounter(st.SenderChainKey().Index() - 1)
	st.SetSenderChain(ours.pair, chain.NewKey(kdf.DeriveSecrets, sendChain, 0))
	return nil
}

// acceptSession decrypts a PreKeySignalMessage that opens a new session (its
// base key is in no state of the record) the way the library would, and
// reports !ok, with nothing changed, for anything else or any failure: the
// caller then takes the library's path and gets the library's answer.
func (d *Device) acceptSession(addr string, m *protocol.PreKeySignalMessage) ([]byte, bool) {
	if d.slow || d.signedDH == nil || d.identityDH == nil || m.MessageVersion() != protocol.CurrentVersion ||
		m.SignedPreKeyID() != d.signed.ID() {
		return nil, false
	}
	var otk *privKey
	pkID := m.PreKeyID()
	hasPreKey := pkID != nil && !pkID.IsEmpty
	if hasPreKey {
		if otk = d.preKeyDH[pkID.Value]; otk == nil || d.preKeys[pkID.Value] == nil {
			return nil, false
		}
	}
	rec := NewSessionRecord()
	if old := d.sessions[addr]; old != nil {
		if old.HasSessionState(m.MessageVersion(), m.BaseKey().Serialize()) {
			return nil, false
		}
		cp, err := record.NewSessionFromBytes(old.Serialize(), Serializer.Session, Serializer.State)
		if err != nil {
			return nil, false
		}
		rec = cp
		rec.ArchiveCurrentState()
	}
	st := rec.SessionState()
	rootKey, err := d.x3dhReceive(st, m, otk)
	if err != nil {
		return nil, false
	}
	w := m.WhisperMessage()
	if st.HasReceiverChain(w.SenderRatchetKey()) {
		return nil, false
	}
	ours, err := newEphemeral()
	if err != nil {
		return nil, false
	}
	if ratchetReceive(st, rootKey, d.signedDH, w.SenderRatchetKey(), ours) != nil {
		return nil, false
	}
	pt, ok := chainStep(st, w)
	if !ok {
		return nil, false
	}
	d.sessions[addr] = rec
	d.identities[addr] = m.IdentityKey()
	if hasPreKey && pkID.Value != medium.MaxValue {
		delete(d.preKeys, pkID.Value)
		delete(d.preKeyDH, pkID.Value)
	}
	d.fastSessions++
	return pt, true
}
