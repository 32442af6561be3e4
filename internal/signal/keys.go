package signal

import (
	"encoding/base64"
	"errors"
	"fmt"

	"go.mau.fi/libsignal/ecc"
	"go.mau.fi/libsignal/keys/identity"
	"go.mau.fi/libsignal/keys/prekey"
	"go.mau.fi/libsignal/util/optional"

	"github.com/heraldhq/herald/internal/platform"
)

// ErrBadBundle means a bundle from the platform is malformed or its signature
// does not verify; it is never used.
var ErrBadBundle = errors.New("signal: bad prekey bundle")

// EncodeKey returns the contract form of a public key: base64 of 0x05 || key.
func EncodeKey(k ecc.ECPublicKeyable) string {
	return base64.StdEncoding.EncodeToString(k.Serialize())
}

// DecodeKey parses a contract public key, checking the length the library doesn't.
func DecodeKey(s string) (ecc.ECPublicKeyable, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("public key is not standard base64: %v", err)
	}
	if len(b) != 33 || b[0] != ecc.DjbType {
		return nil, fmt.Errorf("public key must be 33 bytes starting with 0x05, got %d bytes", len(b))
	}
	return ecc.DecodePoint(b, 0)
}

// DecodeBundle turns a wire bundle into a libsignal bundle and verifies the
// signed-prekey signature.
func DecodeBundle(user string, d platform.DeviceBundle) (*prekey.Bundle, error) {
	bad := func(what string, err error) error {
		return fmt.Errorf("%w: user device %d: %s: %v", ErrBadBundle, d.DeviceID, what, err)
	}
	if d.DeviceID == 0 || d.DeviceID > 127 {
		return nil, bad("device_id", fmt.Errorf("must be 1-127, got %d", d.DeviceID))
	}
	ik, err := DecodeKey(d.IdentityKey)
	if err != nil {
		return nil, bad("identity_key", err)
	}
	spk, err := DecodeKey(d.SignedPreKey.PublicKey)
	if err != nil {
		return nil, bad("signed_prekey", err)
	}
	sig, err := base64.StdEncoding.DecodeString(d.SignedPreKey.Signature)
	if err != nil || len(sig) != 64 {
		return nil, bad("signature", fmt.Errorf("must be 64 bytes of base64"))
	}
	var sig64 [64]byte
	copy(sig64[:], sig)
	if !verifyXEdDSA(ik.PublicKey(), spk.Serialize(), sig64) {
		return nil, bad("signature", errors.New("does not verify against the identity key"))
	}
	preKeyID := optional.NewEmptyUint32()
	var pk ecc.ECPublicKeyable
	if d.PreKey != nil {
		if d.PreKey.ID == 0 {
			return nil, bad("prekey", errors.New("id 0 means no prekey"))
		}
		pk, err = DecodeKey(d.PreKey.PublicKey)
		if err != nil {
			return nil, bad("prekey", err)
		}
		preKeyID = optional.NewOptionalUint32(d.PreKey.ID)
	}
	return prekey.NewBundle(d.RegistrationID, d.DeviceID, preKeyID, d.SignedPreKey.ID, pk, spk, sig64, identity.NewKey(ik)), nil
}
