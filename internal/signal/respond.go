package signal

import (
	"bytes"
	"context"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.mau.fi/libsignal/keys/identity"
	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/session"
	"go.mau.fi/libsignal/state/record"

	"github.com/heraldhq/herald/internal/platform"
)

// Receive decrypts one envelope that a user's device sent to the business
// number biz (digits): a PreKeySignalMessage through X3DH as the responder
// (with biz's signed and one-time prekeys), or a SignalMessage in the
// session the pair already has — whoever started it. The sessions are the
// ones the sender's side uses (one session per pair, both directions).
//
// Everything the decryption changes goes into b: the session (whole
// record; also cached at once), the consumed one-time prekey's deletion and
// the device's identity key. The caller holds the pair's lock (PeerLocks)
// until b is committed, and calls Forget if the commit fails.
//
// go.mau.fi/libsignal panics on some malformed input (see Device.Decrypt); a
// panic becomes ErrMalformed.
func (s *Store) Receive(b *pebble.Batch, biz string, r Recipient, user string, device uint32, typ string, body []byte, now time.Time) (pt []byte, err error) {
	defer func() {
		if x := recover(); x != nil {
			pt, err = nil, fmt.Errorf("%w: %v", ErrMalformed, x)
		}
	}()
	// The common case first: a message in the current state's receiving
	// chain (a msg, or a pkmsg of a session this side already has), on the
	// cached record, without the library's store round trips (chainStep
	// changes nothing unless it succeeds; TestChainStepMatchesLibrary).
	if rec, err := s.current(biz, r, device); err == nil && rec != nil {
		if pt, ok := fastReceive(rec, typ, body); ok {
			s.PutSession(b, biz, r, device, rec)
			return pt, nil
		}
	}
	id, err := s.Identity(biz)
	if err != nil {
		return nil, err
	}
	s.pkMu.Lock()
	pks, err := s.loadPreKeyState(biz)
	s.pkMu.Unlock()
	if err != nil {
		return nil, err
	}
	rs := &responderStore{s: s, b: b, biz: biz, r: r, device: device, id: id, pks: pks, now: now}
	addr := protocol.NewSignalAddress(user, device)
	c := session.NewCipher(session.NewBuilder(rs, rs, rs, rs, addr, Serializer), addr)
	ctx := context.Background()
	switch typ {
	case platform.TypePreKey:
		m, err := protocol.NewPreKeySignalMessageFromBytes(body, Serializer.PreKeySignalMessage, Serializer.SignalMessage)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		return c.DecryptMessage(ctx, m)
	case platform.TypeMsg:
		m, err := protocol.NewSignalMessageFromBytes(body, Serializer.SignalMessage)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		return c.Decrypt(ctx, m)
	}
	return nil, fmt.Errorf("%w: unknown envelope type %q", ErrMalformed, typ)
}

// current is the pair's session as it is now: the cached record, which
// holds what encryptions advanced since it was last written whole (the
// chain record), never the stored record alone.
func (s *Store) current(biz string, r Recipient, device uint32) (*record.Session, error) {
	return s.Session(biz, r, device)
}

// fastReceive decrypts body in rec's current state when it is a message on
// a receiving chain that state has — a msg, or a pkmsg whose base key and
// identity key are the state's (the sender keeps wrapping until it hears
// back) — advancing rec in place; anything else is !ok with rec unchanged.
func fastReceive(rec *record.Session, typ string, body []byte) ([]byte, bool) {
	st := rec.SessionState()
	if st == nil || st.RemoteIdentityKey() == nil {
		return nil, false
	}
	inner := body
	if typ == platform.TypePreKey {
		version, base, ik, in, ok := parsePreKeyMessage(body)
		if !ok || st.Version() != version || !bytes.Equal(st.SenderBaseKey(), base) ||
			!bytes.Equal(st.RemoteIdentityKey().Serialize(), ik) {
			return nil, false
		}
		inner = in
	} else if typ != platform.TypeMsg {
		return nil, false
	}
	m, err := protocol.NewSignalMessageFromBytes(inner, Serializer.SignalMessage)
	if err != nil {
		return nil, false
	}
	return chainStep(st, m)
}

// responderStore adapts the Store to libsignal's store interfaces for one
// Receive: reads come from Pebble (and the session cache), writes go into
// the caller's batch.
type responderStore struct {
	s      *Store
	b      *pebble.Batch
	biz    string
	r      Recipient
	device uint32
	id     *Identity
	pks    *preKeyState
	now    time.Time
}

func (rs *responderStore) GetIdentityKeyPair() *identity.KeyPair { return rs.id.KeyPair }
func (rs *responderStore) GetLocalRegistrationID() uint32        { return rs.id.RegistrationID }
func (rs *responderStore) SaveIdentity(_ context.Context, _ *protocol.SignalAddress, k *identity.Key) error {
	rs.s.PutTrustedIdentity(rs.b, rs.biz, rs.r, rs.device, k.Serialize())
	return nil
}

// IsTrustedIdentity: a user who writes is trusted on first use and after a
// reinstall alike (identity_check governs what Herald sends, not what it
// receives).
func (rs *responderStore) IsTrustedIdentity(context.Context, *protocol.SignalAddress, *identity.Key) (bool, error) {
	return true, nil
}

// LoadSession hands the library a copy: it advances the state before it
// checks the MAC, so a tampered envelope must not touch the cached record.
func (rs *responderStore) LoadSession(context.Context, *protocol.SignalAddress) (*record.Session, error) {
	rec, err := rs.s.current(rs.biz, rs.r, rs.device)
	if err != nil {
		return nil, err
	}
	if rec == nil {
		return NewSessionRecord(), nil
	}
	return record.NewSessionFromBytes(rec.Serialize(), Serializer.Session, Serializer.State)
}
func (rs *responderStore) GetSubDeviceSessions(context.Context, string) ([]uint32, error) {
	return nil, nil
}
func (rs *responderStore) StoreSession(_ context.Context, _ *protocol.SignalAddress, rec *record.Session) error {
	rs.s.PutSession(rs.b, rs.biz, rs.r, rs.device, rec)
	return nil
}
func (rs *responderStore) ContainsSession(context.Context, *protocol.SignalAddress) (bool, error) {
	rec, err := rs.s.Session(rs.biz, rs.r, rs.device)
	return rec != nil, err
}
func (rs *responderStore) DeleteSession(context.Context, *protocol.SignalAddress) error {
	rs.s.DeleteSession(rs.b, rs.biz, rs.r, rs.device)
	return nil
}
func (rs *responderStore) DeleteAllSessions(context.Context) error { return nil }

func (rs *responderStore) LoadPreKey(_ context.Context, id uint32) (*record.PreKey, error) {
	return rs.s.preKey(rs.biz, id)
}
func (rs *responderStore) StorePreKey(context.Context, uint32, *record.PreKey) error { return nil }
func (rs *responderStore) ContainsPreKey(_ context.Context, id uint32) (bool, error) {
	k, err := rs.s.preKey(rs.biz, id)
	return k != nil, err
}
func (rs *responderStore) RemovePreKey(_ context.Context, id uint32) error {
	rs.s.deletePreKey(rs.b, rs.biz, id)
	return nil
}

// signed is the signed prekey of that id: the current one, or the previous
// one for a rotation period after it was replaced.
func (rs *responderStore) signed(id uint32) *signedPreKey {
	if rs.pks == nil {
		return nil
	}
	if k := rs.pks.current; k != nil && k.id == id {
		return k
	}
	if k := rs.pks.previous; k != nil && k.id == id && rs.pks.current != nil &&
		rs.now.Sub(time.Unix(rs.pks.current.created, 0)) < SignedPreKeyRotation {
		return k
	}
	return nil
}

func (rs *responderStore) LoadSignedPreKey(_ context.Context, id uint32) (*record.SignedPreKey, error) {
	if k := rs.signed(id); k != nil {
		return k.record(), nil
	}
	return nil, nil
}
func (rs *responderStore) LoadSignedPreKeys(context.Context) ([]*record.SignedPreKey, error) {
	if rs.pks == nil || rs.pks.current == nil {
		return nil, nil
	}
	return []*record.SignedPreKey{rs.pks.current.record()}, nil
}
func (rs *responderStore) StoreSignedPreKey(context.Context, uint32, *record.SignedPreKey) error {
	return nil
}
func (rs *responderStore) ContainsSignedPreKey(_ context.Context, id uint32) (bool, error) {
	return rs.signed(id) != nil, nil
}
func (rs *responderStore) RemoveSignedPreKey(context.Context, uint32) error { return nil }

// PeerLocks makes the two sides of a pair's sessions take turns: the
// engine's work on a recipient (Lock, from reading its sessions to the
// commit of what it wrote) and an inbound envelope from that recipient
// (TryLock: a busy pair answers "retry" and the platform sends it again).
type PeerLocks struct {
	seed   maphash.Seed
	shards [64]struct {
		mu   sync.Mutex
		held map[string]chan struct{}
	}
}

// NewPeerLocks makes an empty set of locks.
func NewPeerLocks() *PeerLocks {
	l := &PeerLocks{seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].held = map[string]chan struct{}{}
	}
	return l
}

// PeerKey names a pair: the business number's digits and the recipient.
func PeerKey(biz string, r Recipient) string { return biz + "\x00" + string(r[:]) }

func (l *PeerLocks) shard(k string) int {
	return int(maphash.String(l.seed, k) % uint64(len(l.shards)))
}

// TryLock takes k if nobody holds it.
func (l *PeerLocks) TryLock(k string) bool {
	sh := &l.shards[l.shard(k)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.held[k]; ok {
		return false
	}
	sh.held[k] = make(chan struct{})
	return true
}

// Lock takes k, waiting while someone holds it.
func (l *PeerLocks) Lock(k string) {
	sh := &l.shards[l.shard(k)]
	for {
		sh.mu.Lock()
		ch, ok := sh.held[k]
		if !ok {
			sh.held[k] = make(chan struct{})
			sh.mu.Unlock()
			return
		}
		sh.mu.Unlock()
		<-ch
	}
}

// Unlock releases k.
func (l *PeerLocks) Unlock(k string) {
	sh := &l.shards[l.shard(k)]
	sh.mu.Lock()
	ch := sh.held[k]
	delete(sh.held, k)
	sh.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}
