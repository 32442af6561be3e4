package signal

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"

	lcipher "go.mau.fi/libsignal/cipher"
	"go.mau.fi/libsignal/ecc"
	"go.mau.fi/libsignal/kdf"
	"go.mau.fi/libsignal/keys/chain"
	"go.mau.fi/libsignal/keys/identity"
	"go.mau.fi/libsignal/keys/message"
	"go.mau.fi/libsignal/keys/prekey"
	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/state/record"
	"go.mau.fi/libsignal/util/keyhelper"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/heraldhq/herald/internal/aescbc"
	"github.com/heraldhq/herald/internal/hmacsha256"
	"github.com/heraldhq/herald/internal/platform"
)

// ErrIdentityChanged is returned when a device's identity key changed and the
// business asked for identity checks.
var ErrIdentityChanged = errors.New("signal: recipient identity key changed")

// Identity is a business phone number's Signal identity (sender = phone, device 1).
type Identity struct {
	Phone          string
	KeyPair        *identity.KeyPair
	RegistrationID uint32
}

// NewIdentity generates a fresh identity.
func NewIdentity(phone string) (*Identity, error) {
	kp, err := keyhelper.GenerateIdentityKeyPair()
	if err != nil {
		return nil, err
	}
	return &Identity{Phone: phone, KeyPair: kp, RegistrationID: newRegistrationID()}, nil
}

// newRegistrationID returns a 14-bit, non-zero registration id (what Signal clients accept).
func newRegistrationID() uint32 {
	for {
		if id := keyhelper.GenerateRegistrationID() & 0x3fff; id != 0 {
			return id
		}
	}
}

// NewSessionRecord returns an empty session record.
func NewSessionRecord() *record.Session {
	return record.NewSession(Serializer.Session, Serializer.State)
}

// Built is a session fresh from a bundle.
type Built struct {
	Record *record.Session
	// IdentityKey is the device's identity key (33 bytes), to remember.
	IdentityKey []byte
	// IdentityChanged: a different key than the one known before was trusted.
	IdentityChanged bool
}

// BuildSession runs X3DH from a bundle verified by DecodeBundle (see
// x3dh.go). known is the identity key the business trusted for this device
// before (nil if none); with strict set, a different key fails with
// ErrIdentityChanged.
func BuildSession(id *Identity, b *prekey.Bundle, known []byte, strict bool) (*Built, error) {
	if b.SignedPreKey() == nil || b.IdentityKey() == nil {
		return nil, fmt.Errorf("%w: no signed prekey or identity key", ErrBadBundle)
	}
	ik := b.IdentityKey().Serialize()
	changed := known != nil && !bytes.Equal(known, ik)
	if changed && strict {
		return nil, ErrIdentityChanged
	}
	base, err := newEphemeral()
	if err != nil {
		return nil, err
	}
	ratchetKey, err := newEphemeral()
	if err != nil {
		return nil, err
	}
	rec, err := x3dhSession(id, b, base, ratchetKey)
	if err != nil {
		return nil, fmt.Errorf("signal: build session: %w", err)
	}
	return &Built{Record: rec, IdentityKey: ik, IdentityChanged: changed}, nil
}

// Ciphertext is one encrypted message for one device.
type Ciphertext struct {
	Type string // platform.TypePreKey or platform.TypeMsg
	Body []byte
}

// EncryptBatch encrypts plaintexts in order with rec, advancing rec in memory
// only. Nothing is persisted: the caller writes rec with the ciphertexts.
//
// Each step is the sending half of the double ratchet built from the
// library's exported types (chain key → message keys → AES-CBC → SignalMessage
// with its MAC, wrapped in a PreKeySignalMessage while the session is
// unacknowledged, then the chain key advances) — what session.Cipher.Encrypt
// does, minus its store round trips and its debug logging, which formats the
// whole ciphertext with fmt before any logger can drop it (~10 % of the warm
// path). TestEncryptMatchesLibraryCipher proves the output byte-identical.
func EncryptBatch(rec *record.Session, plaintexts [][]byte) ([]Ciphertext, error) {
	return AppendEncrypted(make([]Ciphertext, 0, len(plaintexts)), rec, plaintexts)
}

// AppendEncrypted is EncryptBatch appending to dst (a caller encrypting for
// several devices reuses one list). On an error it returns dst as it was.
func AppendEncrypted(dst []Ciphertext, rec *record.Session, plaintexts [][]byte) ([]Ciphertext, error) {
	n := len(dst)
	for _, pt := range plaintexts {
		c, err := encryptStep(rec, pt)
		if err != nil {
			return dst[:n], fmt.Errorf("signal: encrypt: %w", err)
		}
		dst = append(dst, c)
	}
	return dst, nil
}

func encryptStep(rec *record.Session, plaintext []byte) (Ciphertext, error) {
	st := rec.SessionState()
	if st == nil || !st.HasSenderChain() {
		return Ciphertext{}, errors.New("session has no sending chain")
	}
	if st.Version() != 3 {
		return libraryStep(st, plaintext)
	}
	chainKey := st.SenderChainKey()
	ck, index := chainKey.Key(), chainKey.Index()
	if len(ck) != 32 {
		return Ciphertext{}, fmt.Errorf("sending chain key is %d bytes", len(ck))
	}
	ckKey := hmacsha256.New(ck)
	var okm [96]byte
	messageKeys(&okm, &ckKey)
	cipherKey, macKey, iv := (*[32]byte)(okm[:32]), okm[32:64], (*[16]byte)(okm[64:80])

	// The whole ciphertext is built in one buffer: the PreKeySignalMessage
	// wrapper's leading fields while the session is unacknowledged, then the
	// SignalMessage (header, AES-256-CBC body encrypted in place, MAC), then
	// the wrapper's trailing fields.
	ratchet := serialize33(st.SenderRatchetKey())
	var hdr [64]byte // version, ratchet key, counter, previous counter
	h := appendSignalMessage(hdr[:0], st.Version(), ratchet[:], index, st.PreviousCounter(), nil)
	pad := aescbc.BlockSize - len(plaintext)%aescbc.BlockSize
	bodyLen := len(plaintext) + pad
	h = protowire.AppendTag(h, 4, protowire.BytesType)
	h = protowire.AppendVarint(h, uint64(bodyLen))
	msgLen := len(h) + bodyLen + 8

	prekey := st.HasUnacknowledgedPreKeyMessage()
	var items *record.UnackPreKeyMessageItems
	var err error
	out := make([]byte, 0, 96+msgLen+24)
	local := serialize33(st.LocalIdentityKey().PublicKey())
	if prekey {
		if items, err = st.UnackPreKeyMessageItems(); err != nil {
			return Ciphertext{}, err
		}
		// PreKeySignalMessage: version digit, protobuf {1 one-time prekey id
		// (if any), 2 base key, 3 identity key, 4 message, 5 registration id,
		// 6 signed prekey id} (preKeyMessageSerializer's field order).
		base := serialize33(items.BaseKey())
		out = strconv.AppendInt(out, int64(st.Version()), 10)
		if id := items.PreKeyID(); id != nil && !id.IsEmpty {
			out = protowire.AppendTag(out, 1, protowire.VarintType)
			out = protowire.AppendVarint(out, uint64(id.Value))
		}
		out = protowire.AppendTag(out, 2, protowire.BytesType)
		out = protowire.AppendBytes(out, base[:])
		out = protowire.AppendTag(out, 3, protowire.BytesType)
		out = protowire.AppendBytes(out, local[:])
		out = protowire.AppendTag(out, 4, protowire.BytesType)
		out = protowire.AppendVarint(out, uint64(msgLen))
	}
	m0 := len(out)
	out = append(out, h...)
	b0 := len(out)
	out = append(out, plaintext...)
	for i := 0; i < pad; i++ {
		out = append(out, byte(pad)) // PKCS#7 (cipher.EncryptCbc)
	}
	aescbc.Encrypt(cipherKey, iv, out[b0:])

	// The first 8 bytes of HMAC(mac key, sender identity | receiver identity | SignalMessage).
	var km [32]byte
	remote := serialize33(st.RemoteIdentityKey().PublicKey())
	hmacsha256.Sum(&km, macKey, local[:], remote[:], out[m0:])
	out = append(out, km[:8]...)

	typ := platform.TypeMsg
	if prekey {
		out = protowire.AppendTag(out, 5, protowire.VarintType)
		out = protowire.AppendVarint(out, uint64(st.LocalRegistrationID()))
		out = protowire.AppendTag(out, 6, protowire.VarintType)
		out = protowire.AppendVarint(out, uint64(items.SignedPreKeyID()))
		typ = platform.TypePreKey
	}
	// Next chain key (chain.Key.NextKey): HMAC(ck, 0x02).
	var next [32]byte
	ckKey.Sum(&next, []byte{0x02})
	st.SetSenderChainKey(chain.NewKey(kdf.DeriveSecrets, next[:], index+1))
	return Ciphertext{Type: typ, Body: out}, nil
}

// serialize33 is k.Serialize() (type byte, then the key) in a value: the
// library's method allocates a slice for every call, five per encryption.
func serialize33(k ecc.ECPublicKeyable) (out [33]byte) {
	if k.Type() != ecc.DjbType {
		copy(out[:], k.Serialize())
		return out
	}
	out[0] = ecc.DjbType
	p := k.PublicKey()
	copy(out[1:], p[:])
	return out
}

// zeroSalt is HKDF's extract key without a salt (HashLen zero bytes), its
// pads hashed once.
var zeroSalt = hmacsha256.New(make([]byte, 32))

// appendSignalMessage appends a SignalMessage without its MAC as the library's
// serializer writes it (and MACs it): the version digit, then the protobuf of
// ratchet key (1), counter (2), previous counter (3) and ciphertext (4), a
// bytes field only when it is non-nil. The sender writes its messages with it;
// the recipient's MAC check rebuilds what it verifies with it.
func appendSignalMessage(dst []byte, version int, ratchetKey []byte, counter, previous uint32, ciphertext []byte) []byte {
	dst = strconv.AppendInt(dst, int64(version), 10)
	if ratchetKey != nil {
		dst = protowire.AppendTag(dst, 1, protowire.BytesType)
		dst = protowire.AppendBytes(dst, ratchetKey)
	}
	dst = protowire.AppendTag(dst, 2, protowire.VarintType)
	dst = protowire.AppendVarint(dst, uint64(counter))
	dst = protowire.AppendTag(dst, 3, protowire.VarintType)
	dst = protowire.AppendVarint(dst, uint64(previous))
	if ciphertext != nil {
		dst = protowire.AppendTag(dst, 4, protowire.BytesType)
		dst = protowire.AppendBytes(dst, ciphertext)
	}
	return dst
}

// messageKeys derives a chain key's message keys (chain.Key.MessageKeys) into
// okm: HKDF-SHA256 of HMAC(ck, 0x01), no salt, info "WhisperMessageKeys", 80
// bytes — cipher key okm[:32], MAC key okm[32:64], IV okm[64:80].
func messageKeys(okm *[96]byte, ck *hmacsha256.Key) {
	var seed, km [32]byte
	ck.Sum(&seed, []byte{0x01})
	var prk [32]byte
	zeroSalt.Sum(&prk, seed[:])
	prkKey := hmacsha256.New(prk[:])
	var block []byte
	var in [32 + len(message.KdfSalt) + 1]byte
	for i := 0; i < 3; i++ {
		buf := append(append(append(in[:0], block...), message.KdfSalt...), byte(i+1))
		prkKey.Sum(&km, buf)
		copy(okm[32*i:], km[:])
		block = okm[32*i : 32*i+32]
	}
}

// libraryStep is the same step from the library's types, for a session of a
// protocol version other than 3 (none is built today).
func libraryStep(st *record.State, plaintext []byte) (Ciphertext, error) {
	chainKey := st.SenderChainKey()
	keys := chainKey.MessageKeys()
	body, err := lcipher.EncryptCbc(keys.Iv(), keys.CipherKey(), plaintext)
	if err != nil {
		return Ciphertext{}, err
	}
	msg, err := protocol.NewSignalMessage(st.Version(), chainKey.Index(), st.PreviousCounter(), keys.MacKey(),
		st.SenderRatchetKey(), body, st.LocalIdentityKey(), st.RemoteIdentityKey(), Serializer.SignalMessage)
	if err != nil {
		return Ciphertext{}, err
	}
	out := Ciphertext{Type: platform.TypeMsg}
	if st.HasUnacknowledgedPreKeyMessage() {
		items, err := st.UnackPreKeyMessageItems()
		if err != nil {
			return Ciphertext{}, err
		}
		pk, err := protocol.NewPreKeySignalMessage(st.Version(), st.LocalRegistrationID(), items.PreKeyID(),
			items.SignedPreKeyID(), items.BaseKey(), st.LocalIdentityKey(), msg, Serializer.PreKeySignalMessage, Serializer.SignalMessage)
		if err != nil {
			return Ciphertext{}, err
		}
		out.Type, out.Body = platform.TypePreKey, pk.Serialize()
	} else {
		out.Body = msg.Serialize()
	}
	st.SetSenderChainKey(chainKey.NextKey())
	return out, nil
}
