package signal

import (
	"bytes"
	"context"

	"go.mau.fi/libsignal/keys/identity"
	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/state/record"
)

// The library's own sender path (session.Builder, session.Cipher) as the
// reference Herald's x3dh.go and encrypt step are checked against.

// oneSession is a libsignal store holding exactly one session in memory: the
// cipher and builder load and store it without I/O.
type oneSession struct {
	id          *Identity
	rec         *record.Session
	known       []byte // the identity key we trusted before, if any
	strict      bool   // identity check on: refuse a changed key
	changed     bool
	newIdentity *identity.Key
}

func (o *oneSession) GetIdentityKeyPair() *identity.KeyPair { return o.id.KeyPair }
func (o *oneSession) GetLocalRegistrationID() uint32        { return o.id.RegistrationID }
func (o *oneSession) SaveIdentity(_ context.Context, _ *protocol.SignalAddress, k *identity.Key) error {
	o.newIdentity = k
	return nil
}
func (o *oneSession) IsTrustedIdentity(_ context.Context, _ *protocol.SignalAddress, k *identity.Key) (bool, error) {
	if o.known == nil || bytes.Equal(o.known, k.Serialize()) {
		return true, nil
	}
	if o.strict {
		return false, nil
	}
	o.changed = true
	return true, nil
}
func (o *oneSession) LoadSession(context.Context, *protocol.SignalAddress) (*record.Session, error) {
	return o.rec, nil
}
func (o *oneSession) GetSubDeviceSessions(context.Context, string) ([]uint32, error) { return nil, nil }
func (o *oneSession) StoreSession(_ context.Context, _ *protocol.SignalAddress, r *record.Session) error {
	o.rec = r
	return nil
}
func (o *oneSession) ContainsSession(context.Context, *protocol.SignalAddress) (bool, error) {
	return o.rec != nil, nil
}
func (o *oneSession) DeleteSession(context.Context, *protocol.SignalAddress) error { return nil }
func (o *oneSession) DeleteAllSessions(context.Context) error                      { return nil }
func (o *oneSession) LoadPreKey(context.Context, uint32) (*record.PreKey, error)   { return nil, nil }
func (o *oneSession) StorePreKey(context.Context, uint32, *record.PreKey) error    { return nil }
func (o *oneSession) ContainsPreKey(context.Context, uint32) (bool, error)         { return false, nil }
func (o *oneSession) RemovePreKey(context.Context, uint32) error                   { return nil }
func (o *oneSession) LoadSignedPreKey(context.Context, uint32) (*record.SignedPreKey, error) {
	return nil, nil
}
func (o *oneSession) LoadSignedPreKeys(context.Context) ([]*record.SignedPreKey, error) {
	return nil, nil
}
func (o *oneSession) StoreSignedPreKey(context.Context, uint32, *record.SignedPreKey) error {
	return nil
}
func (o *oneSession) ContainsSignedPreKey(context.Context, uint32) (bool, error) { return false, nil }
func (o *oneSession) RemoveSignedPreKey(context.Context, uint32) error           { return nil }
