package signal

import (
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"

	"go.mau.fi/libsignal/cipher"
	"go.mau.fi/libsignal/ecc"
	"go.mau.fi/libsignal/keys/identity"
	"go.mau.fi/libsignal/keys/message"
	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/session"
	"go.mau.fi/libsignal/state/record"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/hmacsha256"
	"github.com/heraldhq/herald/internal/platform"
)

// ErrNoPreKeys is returned by Device.Bundle when the one-time pool is used up
// (the bundle then has no prekey, as the contract allows).
var ErrNoPreKeys = errors.New("signal: one-time prekeys exhausted")

// Device is a recipient device: what the platform simulator plays. It is safe
// for concurrent use.
type Device struct {
	ID uint32

	mu           sync.Mutex
	identity     *identity.KeyPair
	regID        uint32
	signed       *record.SignedPreKey
	preKeys      map[uint32]*record.PreKey
	nextPreKey   uint32
	preKeyBudget int
	sessions     map[string]*record.Session
	identities   map[string]*identity.Key
	// The private keys above as DH scalars (receive.go).
	identityDH, signedDH *privKey
	preKeyDH             map[uint32]*privKey
	slow                 bool // tests: always the library's full decrypt path
	fastSteps            int  // decrypts chainStep did (tests)
	fastPreKeys          int  // of which PreKeySignalMessages (preKeyStep; tests)
	fastSessions         int  // sessions acceptSession built (tests)
}

// NewDevice makes a device with a fresh identity and signed prekey, and a
// budget of one-time prekeys it will hand out (generated lazily).
func NewDevice(id uint32, preKeyBudget int) (*Device, error) {
	d := &Device{ID: id, preKeyBudget: preKeyBudget}
	if err := d.Reinstall(); err != nil {
		return nil, err
	}
	return d, nil
}

// Reinstall gives the device a new identity and forgets every session, as a
// reinstalled app would.
func (d *Device) Reinstall() error {
	// Keys as keyhelper.GenerateIdentityKeyPair and GenerateSignedPreKey make
	// them, each with one fixed-base multiplication (x25519.go) instead of the
	// library's two ladders, the private keys kept for DH (receive.go).
	ik, err := newEphemeral()
	if err != nil {
		return err
	}
	kp := identity.NewKeyPair(identity.NewKey(ik.pair.PublicKey()), ik.pair.PrivateKey())
	sk, err := newEphemeral()
	if err != nil {
		return err
	}
	sig := ecc.CalculateSignature(kp.PrivateKey(), sk.pair.PublicKey().Serialize())
	spk := record.NewSignedPreKey(1, clock.Wall().Unix(), sk.pair, sig, Serializer.SignedPreKeyRecord)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.identity, d.regID, d.signed = kp, newRegistrationID(), spk
	d.identityDH, d.signedDH = ik.dh, sk.dh
	d.preKeys = map[uint32]*record.PreKey{}
	d.preKeyDH = map[uint32]*privKey{}
	d.nextPreKey = 1 // id 0 means "no prekey" in every libsignal
	d.sessions = map[string]*record.Session{}
	d.identities = map[string]*identity.Key{}
	return nil
}

// ForgetSession drops the session with one sender, as a device that lost its state.
func (d *Device) ForgetSession(from string) {
	d.mu.Lock()
	delete(d.sessions, protocol.NewSignalAddress(from, 1).String())
	d.mu.Unlock()
}

// Bundle returns the device's bundle, consuming one one-time prekey.
func (d *Device) Bundle() platform.DeviceBundle {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := platform.DeviceBundle{
		DeviceID:       d.ID,
		RegistrationID: d.regID,
		IdentityKey:    EncodeKey(d.identity.PublicKey().PublicKey()),
		SignedPreKey: platform.SignedPreKey{
			ID:        d.signed.ID(),
			PublicKey: EncodeKey(d.signed.KeyPair().PublicKey()),
			Signature: base64.StdEncoding.EncodeToString(sigBytes(d.signed.Signature())),
		},
	}
	if int(d.nextPreKey) <= d.preKeyBudget {
		k, err := newEphemeral()
		if err == nil {
			id := d.nextPreKey
			d.nextPreKey++
			d.preKeys[id] = record.NewPreKey(id, k.pair, Serializer.PreKeyRecord)
			d.preKeyDH[id] = k.dh
			b.PreKey = &platform.OneTimePreKey{ID: id, PublicKey: EncodeKey(k.pair.PublicKey())}
		}
	}
	return b
}

func sigBytes(s [64]byte) []byte { return s[:] }

// ErrMalformed is returned for a message the library could not even parse.
var ErrMalformed = errors.New("signal: malformed message")

// Decrypt decrypts one envelope body from sender `from` (device 1).
//
// go.mau.fi/libsignal panics on some malformed input (an empty or one-byte
// PreKeySignalMessage indexes out of range in its deserializer; found by
// FuzzDecrypt, crasher kept in testdata/fuzz). Bytes from the network must
// never crash us, so a panic inside the library becomes ErrMalformed.
func (d *Device) Decrypt(from, typ string, body []byte) (pt []byte, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	defer func() {
		if r := recover(); r != nil {
			pt, err = nil, fmt.Errorf("%w: %v", ErrMalformed, r)
		}
	}()
	ctx := context.Background()
	addr := protocol.NewSignalAddress(from, 1)
	st := &deviceStore{d: d}
	builder := session.NewBuilder(st, st, st, st, addr, Serializer)
	c := session.NewCipher(builder, addr)
	switch typ {
	case platform.TypePreKey:
		if rec := d.sessions[addr.String()]; rec != nil && !d.slow {
			if pt, ok := d.preKeyStep(addr.String(), rec.SessionState(), body); ok {
				return pt, nil
			}
		}
		m, err := protocol.NewPreKeySignalMessageFromBytes(body, Serializer.PreKeySignalMessage, Serializer.SignalMessage)
		if err != nil {
			return nil, fmt.Errorf("parse pkmsg: %w", err)
		}
		if pt, ok := d.acceptSession(addr.String(), m); ok {
			return pt, nil
		}
		return c.DecryptMessage(ctx, m)
	case platform.TypeMsg:
		m, err := protocol.NewSignalMessageFromBytes(body, Serializer.SignalMessage)
		if err != nil {
			return nil, fmt.Errorf("parse msg: %w", err)
		}
		if rec := d.sessions[addr.String()]; rec != nil && !d.slow {
			if pt, ok := chainStep(rec.SessionState(), m); ok {
				d.fastSteps++
				d.identities[addr.String()] = rec.SessionState().RemoteIdentityKey()
				return pt, nil
			}
		}
		return c.Decrypt(ctx, m)
	}
	return nil, fmt.Errorf("unknown envelope type %q", typ)
}

// preKeyStep is the common case of a PreKeySignalMessage without the
// library's reflective protobuf parse of the wrapper: a message on the session
// the device already has (same version and base key — the library's
// Builder.Process would only save the identity), parsed by
// parsePreKeyMessage, the inner message decrypted by chainStep. Anything else
// reports !ok with nothing changed, and the caller parses with the library.
func (d *Device) preKeyStep(addr string, cur *record.State, body []byte) ([]byte, bool) {
	version, base, ik, inner, ok := parsePreKeyMessage(body)
	if !ok || cur.Version() != version || !bytes.Equal(cur.SenderBaseKey(), base) {
		return nil, false
	}
	if len(ik) != 33 { // ecc.DecodePoint indexes its type byte unchecked
		return nil, false
	}
	idKey, err := ecc.DecodePoint(ik, 0)
	if err != nil {
		return nil, false
	}
	m, err := protocol.NewSignalMessageFromBytes(inner, Serializer.SignalMessage)
	if err != nil {
		return nil, false
	}
	pt, ok := chainStep(cur, m)
	if !ok {
		return nil, false
	}
	d.fastSteps++
	d.fastPreKeys++
	d.identities[addr] = identity.NewKey(idKey)
	return pt, true
}

// parsePreKeyMessage reads a PreKeySignalMessage only in the canonical form
// libsignal's serializer (and Herald's sender) writes: the version byte, then
// fields 1 (one-time prekey id, optional), 2 (base key), 3 (identity key),
// 4 (message), 5 (registration id), 6 (signed prekey id), each once, in that
// order, with their wire types. Anything else is !ok — so whatever it accepts,
// the library's parser accepts with the same values
// (TestParsePreKeyMessageAgreesWithLibrary).
func parsePreKeyMessage(b []byte) (version int, base, ik, inner []byte, ok bool) {
	if len(b) < 1 {
		return 0, nil, nil, nil, false
	}
	version = int(b[0] >> 4)
	if version <= protocol.UnsupportedVersion || version > protocol.CurrentVersion {
		return 0, nil, nil, nil, false // the library refuses these
	}
	b = b[1:]
	want := protowire.Number(1)
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num < want || num > 6 {
			return 0, nil, nil, nil, false
		}
		b = b[n:]
		switch num {
		case 1, 5, 6:
			if typ != protowire.VarintType {
				return 0, nil, nil, nil, false
			}
			_, n = protowire.ConsumeVarint(b)
		default:
			if typ != protowire.BytesType {
				return 0, nil, nil, nil, false
			}
			var v []byte
			v, n = protowire.ConsumeBytes(b)
			switch num {
			case 2:
				base = v
			case 3:
				ik = v
			case 4:
				inner = v
			}
		}
		if n < 0 {
			return 0, nil, nil, nil, false
		}
		b = b[n:]
		want = num + 1
	}
	if base == nil || ik == nil || inner == nil {
		return 0, nil, nil, nil, false
	}
	return version, base, ik, inner, true
}

// chainStep decrypts m with the current session state when that is a plain
// step along an existing receiving chain (no DH ratchet, no skipped-key
// lookup), and changes the state only on success. Anything else — a new
// ratchet key, an old counter, a bad MAC — reports !ok with the state
// untouched, and the caller takes the library's full path, which then
// produces the library's own result and error.
//
// What it does is what session.Cipher.DecryptWithState does in that case,
// built from the library's own types (chain key → message keys, skipped keys
// stored, MAC check, AES-CBC): the library's version formats the whole session
// state, the record and the key with fmt and looks up its caller for each of
// four debug calls before any logger can drop them — 60 % of a warm decrypt
// (BenchmarkWarmDecrypt). TestChainStepMatchesLibrary proves the plaintexts,
// errors and serialized sessions identical to the library's path.
func chainStep(st *record.State, m *protocol.SignalMessage) ([]byte, bool) {
	if st == nil || !st.HasSenderChain() || m.MessageVersion() != st.Version() {
		return nil, false
	}
	their := m.SenderRatchetKey()
	if !st.HasReceiverChain(their) {
		return nil, false
	}
	ck := st.ReceiverChainKey(their)
	counter := m.Counter()
	if ck.Index() > counter || counter-ck.Index() > maxFutureMessages {
		return nil, false
	}
	var skipped []*message.Keys
	for ck.Index() < counter {
		skipped = append(skipped, ck.MessageKeys())
		ck = ck.NextKey()
	}
	var okm [96]byte
	ckKey := hmacsha256.New(ck.Key())
	messageKeys(&okm, &ckKey)
	if !macOK(m, st.RemoteIdentityKey(), st.LocalIdentityKey(), okm[32:64]) {
		return nil, false
	}
	pt, err := cipher.DecryptCbc(okm[64:80], okm[:32], bytes.Clone(m.Body()))
	if err != nil {
		return nil, false
	}
	for _, k := range skipped {
		st.SetMessageKeys(their, k)
	}
	st.SetReceiverChainKey(their, ck.NextKey())
	st.ClearUnackPreKeyMessage()
	return pt, true
}

// macOK is SignalMessage.VerifyMac without its debug logging: the MAC is
// computed, as the library does, over the message re-serialized from its
// parsed fields (version digit, then the protobuf of ratchet key, counter,
// previous counter and ciphertext, each bytes field only when present), not
// over the bytes received.
func macOK(m *protocol.SignalMessage, sender, receiver *identity.Key, macKey []byte) bool {
	st := m.Structure()
	var buf [512]byte
	ser := appendSignalMessage(buf[:0], m.MessageVersion(), st.RatchetKey, st.Counter, st.PreviousCounter, st.CipherText)
	var mac [32]byte
	if m.MessageVersion() >= 3 {
		hmacsha256.Sum(&mac, macKey, sender.PublicKey().Serialize(), receiver.PublicKey().Serialize(), ser)
	} else {
		hmacsha256.Sum(&mac, macKey, ser)
	}
	return hmac.Equal(mac[:8], st.Mac)
}

// maxFutureMessages is the library's limit on skipped keys (session.maxFutureMessages).
const maxFutureMessages = 2000

// deviceStore adapts Device to libsignal's store interfaces; d.mu is held.
type deviceStore struct{ d *Device }

func (s *deviceStore) GetIdentityKeyPair() *identity.KeyPair { return s.d.identity }
func (s *deviceStore) GetLocalRegistrationID() uint32        { return s.d.regID }
func (s *deviceStore) SaveIdentity(_ context.Context, a *protocol.SignalAddress, k *identity.Key) error {
	s.d.identities[a.String()] = k
	return nil
}
func (s *deviceStore) IsTrustedIdentity(context.Context, *protocol.SignalAddress, *identity.Key) (bool, error) {
	return true, nil
}

// LoadSession hands the library a copy: it advances the state it was given
// before checking the MAC and stores it back only on success, so with the
// stored record itself one tampered envelope would poison the session for the
// genuine ones after it (TestChainStepMatchesLibrary's "tampered MAC" step).
func (s *deviceStore) LoadSession(_ context.Context, a *protocol.SignalAddress) (*record.Session, error) {
	if r, ok := s.d.sessions[a.String()]; ok {
		return record.NewSessionFromBytes(r.Serialize(), Serializer.Session, Serializer.State)
	}
	return NewSessionRecord(), nil
}
func (s *deviceStore) GetSubDeviceSessions(context.Context, string) ([]uint32, error) {
	return nil, nil
}
func (s *deviceStore) StoreSession(_ context.Context, a *protocol.SignalAddress, r *record.Session) error {
	s.d.sessions[a.String()] = r
	return nil
}
func (s *deviceStore) ContainsSession(_ context.Context, a *protocol.SignalAddress) (bool, error) {
	_, ok := s.d.sessions[a.String()]
	return ok, nil
}
func (s *deviceStore) DeleteSession(_ context.Context, a *protocol.SignalAddress) error {
	delete(s.d.sessions, a.String())
	return nil
}
func (s *deviceStore) DeleteAllSessions(context.Context) error {
	s.d.sessions = map[string]*record.Session{}
	return nil
}
func (s *deviceStore) LoadPreKey(_ context.Context, id uint32) (*record.PreKey, error) {
	return s.d.preKeys[id], nil
}
func (s *deviceStore) StorePreKey(_ context.Context, id uint32, r *record.PreKey) error {
	s.d.preKeys[id] = r
	return nil
}
func (s *deviceStore) ContainsPreKey(_ context.Context, id uint32) (bool, error) {
	_, ok := s.d.preKeys[id]
	return ok, nil
}
func (s *deviceStore) RemovePreKey(_ context.Context, id uint32) error {
	delete(s.d.preKeys, id)
	return nil
}
func (s *deviceStore) LoadSignedPreKey(_ context.Context, id uint32) (*record.SignedPreKey, error) {
	if id == s.d.signed.ID() {
		return s.d.signed, nil
	}
	return nil, nil
}
func (s *deviceStore) LoadSignedPreKeys(context.Context) ([]*record.SignedPreKey, error) {
	return []*record.SignedPreKey{s.d.signed}, nil
}
func (s *deviceStore) StoreSignedPreKey(context.Context, uint32, *record.SignedPreKey) error {
	return nil
}
func (s *deviceStore) ContainsSignedPreKey(_ context.Context, id uint32) (bool, error) {
	return id == s.d.signed.ID(), nil
}
func (s *deviceStore) RemoveSignedPreKey(context.Context, uint32) error { return nil }

// ErrNeedBundle: the device has no session with that business yet; call
// Write again with the business's bundle.
var ErrNeedBundle = errors.New("signal: no session with the business; a bundle is needed")

// Write encrypts pt from this device to the business number biz (device
// 1): in the session the device has with it — whoever started it — or, with
// bundle (the business's, from the platform), in a new one the device
// starts. It is what a user's device does when it writes to a business.
func (d *Device) Write(biz string, bundle *platform.DeviceBundle, pt []byte) (Ciphertext, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	addr := protocol.NewSignalAddress(biz, 1).String()
	rec := d.sessions[addr]
	if rec == nil || rec.SessionState() == nil || !rec.SessionState().HasSenderChain() {
		if bundle == nil {
			return Ciphertext{}, ErrNeedBundle
		}
		pb, err := DecodeBundle(biz, *bundle)
		if err != nil {
			return Ciphertext{}, err
		}
		built, err := BuildSession(&Identity{KeyPair: d.identity, RegistrationID: d.regID}, pb, nil, false)
		if err != nil {
			return Ciphertext{}, err
		}
		rec = built.Record
		d.sessions[addr] = rec
	}
	cts, err := EncryptBatch(rec, [][]byte{pt})
	if err != nil {
		return Ciphertext{}, err
	}
	return cts[0], nil
}
