package signal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	"go.mau.fi/libsignal/ecc"
	"go.mau.fi/libsignal/kdf"
	"go.mau.fi/libsignal/keys/chain"
	"go.mau.fi/libsignal/keys/identity"
	"go.mau.fi/libsignal/state/record"

	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/seal"
)

// Recipient is a keyed HMAC of a recipient's number (never the number itself).
type Recipient = [seal.LookupLen]byte

// Store keeps identities, sessions, trusted remote identity keys and device
// lists in Pebble (prefix 's'), sealed where they hold secrets, with a bounded
// cache of hot session records in front.
type Store struct {
	db     *kv.DB
	sealer *seal.Sealer
	// peers caches recipients' device lists and sessions, written through
	// when they are written into a batch (the worker's own view), dropped by
	// Forget when that batch fails to commit. One worker per recipient at a
	// time (the queue lease) owns a recipient's entry.
	peers peerCache

	idMu sync.Mutex
	ids  map[string]*Identity
}

// NewStore makes a store; cacheRecipients bounds the hot-state cache, in
// recipients (each with its device list and its devices' sessions; default
// 50,000: ~100,000 sessions at 1–3 devices per recipient).
func NewStore(db *kv.DB, sealer *seal.Sealer, cacheRecipients int) (*Store, error) {
	if cacheRecipients <= 0 {
		cacheRecipients = 50_000
	}
	pc, err := newPeerCache(cacheRecipients)
	if err != nil {
		return nil, err
	}
	return &Store{db: db, sealer: sealer, peers: pc, ids: map[string]*Identity{}}, nil
}

func key(kind byte, biz string, r *Recipient, device uint32) []byte {
	k := make([]byte, 0, 3+len(biz)+16+4)
	k = append(k, 's', kind, byte(len(biz)))
	k = append(k, biz...)
	if r != nil {
		k = append(k, r[:]...)
	}
	if device != 0 {
		k = binary.BigEndian.AppendUint32(k, device)
	}
	return k
}

// Identity loads the business phone's identity, creating and persisting it on first use.
func (s *Store) Identity(phone string) (*Identity, error) {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	if id, ok := s.ids[phone]; ok {
		return id, nil
	}
	k := key('I', phone, nil, 0)
	v, ok, err := s.db.GetCopy(k)
	if err != nil {
		return nil, err
	}
	var id *Identity
	if ok {
		plain, err := s.sealer.Open(v)
		if err != nil || len(plain) != 32+33+4 {
			return nil, fmt.Errorf("signal: identity of business number is unreadable: %v", err)
		}
		var priv [32]byte
		copy(priv[:], plain[:32])
		pub, err := ecc.DecodePoint(plain[32:65], 0)
		if err != nil {
			return nil, err
		}
		id = &Identity{Phone: phone, KeyPair: identity.NewKeyPair(identity.NewKey(pub), ecc.NewDjbECPrivateKey(priv)),
			RegistrationID: binary.BigEndian.Uint32(plain[65:])}
	} else {
		id, err = NewIdentity(phone)
		if err != nil {
			return nil, err
		}
		priv := id.KeyPair.PrivateKey().Serialize()
		plain := append(priv[:], id.KeyPair.PublicKey().Serialize()...)
		plain = binary.BigEndian.AppendUint32(plain, id.RegistrationID)
		b := s.db.NewBatch()
		b.Set(k, s.sealer.Seal(nil, plain), nil)
		if err := s.db.Commit(b, true); err != nil {
			return nil, err
		}
	}
	s.ids[phone] = id
	return id, nil
}

// Session returns the session record for (business, recipient, device), or
// nil when there is none. The record is shared with the cache: only the worker
// holding the recipient's lease may touch it.
func (s *Store) Session(biz string, r Recipient, device uint32) (*record.Session, error) {
	p := s.peers.get(biz, r)
	p.mu.Lock()
	defer p.mu.Unlock()
	return s.sessionLocked(p, biz, r, device)
}

// sessionsLocked appends the sessions of devs to out, in order; errs (nil
// when every one could be read) has the reason of each nil for an unreadable one.
func (s *Store) sessionsLocked(p *peer, biz string, r Recipient, devs []uint32, out []*record.Session) (sessions []*record.Session, errs []error) {
	for i, d := range devs {
		rec, err := s.sessionLocked(p, biz, r, d)
		if err != nil {
			if errs == nil {
				errs = make([]error, len(devs))
			}
			errs[i] = err
		}
		out = append(out, rec)
	}
	return out, errs
}

func (s *Store) sessionLocked(p *peer, biz string, r Recipient, device uint32) (*record.Session, error) {
	if rec := p.session(device); rec != nil {
		return rec, nil
	}
	v, ok, err := s.db.GetCopy(key('S', biz, &r, device))
	if err != nil || !ok {
		return nil, err
	}
	plain, err := s.sealer.Open(v)
	if err != nil {
		return nil, fmt.Errorf("signal: session record unreadable: %w", err)
	}
	rec, err := record.NewSessionFromBytes(plain, Serializer.Session, Serializer.State)
	if err != nil {
		return nil, fmt.Errorf("signal: session record corrupt: %w", err)
	}
	if err := s.applyChain(biz, r, device, rec); err != nil {
		return nil, err
	}
	p.setSession(device, rec)
	return rec, nil
}

// A chain record ('C', next to the session's 'S') holds what an encryption
// changes in a session: the sending chain's ratchet public key (which chain),
// its index and its key. Sealed: a chain key decrypts messages.
const chainRecordLen = 33 + 4 + 32

// applyChain moves rec's sending chain forward to its stored chain record, if
// that record belongs to rec's sending chain and is ahead of it.
func (s *Store) applyChain(biz string, r Recipient, device uint32, rec *record.Session) error {
	v, ok, err := s.db.GetCopy(key('C', biz, &r, device))
	if err != nil || !ok {
		return err
	}
	plain, err := s.sealer.Open(v)
	if err != nil || len(plain) != chainRecordLen {
		return fmt.Errorf("signal: session chain record unreadable (%d bytes): %v", len(plain), err)
	}
	st := rec.SessionState()
	if st == nil || !st.HasSenderChain() || !bytes.Equal(plain[:33], st.SenderRatchetKey().Serialize()) {
		return nil // a chain of another session (PutSession rewrites it; kept safe anyway)
	}
	idx := binary.BigEndian.Uint32(plain[33:37])
	if idx < st.SenderChainKey().Index() {
		return nil
	}
	st.SetSenderChainKey(chain.NewKey(kdf.DeriveSecrets, bytes.Clone(plain[37:]), idx))
	return nil
}

// PutSession writes the whole of rec into b (sealed) and caches it: for a
// session just built. After an encryption, Advance is enough. The chain
// record is rewritten to match rather than deleted: a point read of a key
// whose newest versions are deletions walks every one of them (a benchmark
// that rebuilt one session per iteration spent 80 % of its time there).
func (s *Store) PutSession(b *pebble.Batch, biz string, r Recipient, device uint32, rec *record.Session) {
	b.Set(key('S', biz, &r, device), s.sealer.Seal(nil, rec.Serialize()), nil)
	s.Advance(b, biz, r, device, rec)
	p := s.peers.get(biz, r)
	p.mu.Lock()
	p.setSession(device, rec)
	p.mu.Unlock()
}

// Advance writes into b what encrypting with rec changed — its sending chain
// key. rec is the record Session returned, which the cache holds (advanced in
// place); if the cache dropped it meanwhile, the next Session reads the
// committed records, which hold the same state. Encryption changes nothing
// else in a session (EncryptBatch), so this replaces rewriting the whole record (~1 KB of JSON
// serialized, compressed and sealed per device per message, and as many
// bytes through the WAL, memtable and compactions) with ~100 sealed bytes.
// Session reads the session record and then applies the chain record.
func (s *Store) Advance(b *pebble.Batch, biz string, r Recipient, device uint32, rec *record.Session) {
	st := rec.SessionState()
	if st == nil || !st.HasSenderChain() {
		b.Delete(key('C', biz, &r, device), nil) // nothing to advance (not a sender's session)
		return
	}
	ck := st.SenderChainKey()
	v := make([]byte, 0, chainRecordLen)
	rk := serialize33(st.SenderRatchetKey())
	v = append(v, rk[:]...)
	v = binary.BigEndian.AppendUint32(v, ck.Index())
	v = append(v, ck.Key()...)
	b.Set(key('C', biz, &r, device), s.sealer.Seal(nil, v), nil)
}

// DeleteSession removes a device's session (a reset) in b and from the cache.
func (s *Store) DeleteSession(b *pebble.Batch, biz string, r Recipient, device uint32) {
	b.Delete(key('S', biz, &r, device), nil)
	b.Delete(key('C', biz, &r, device), nil)
	if p := s.peers.peek(biz, r); p != nil {
		p.mu.Lock()
		p.dropSession(device)
		p.mu.Unlock()
	}
}

// Forget drops what is cached of a recipient whose batch failed to commit
// (its device list and sessions), so the next attempt reloads what is really
// on disk.
func (s *Store) Forget(biz string, r Recipient) {
	s.peers.remove(biz, r)
}

// Devices returns the recipient's known device ids for this business, or
// ok=false when the devices were never queried.
func (s *Store) Devices(biz string, r Recipient) (devs []uint32, ok bool, err error) {
	p := s.peers.get(biz, r)
	p.mu.Lock()
	defer p.mu.Unlock()
	return s.devicesLocked(p, biz, r)
}

// Peer is what a worker needs of a recipient before it encrypts.
type Peer struct {
	Devices []uint32 // the known device ids (a copy)
	Known   bool     // false: the devices were never queried (Devices is empty)
	// Sessions holds each device's session, in Devices order (nil: none, or
	// unreadable with the reason in Errs, which is nil when all could be read).
	Sessions []*record.Session
	Errs     []error
}

// Peer returns the recipient's devices and their sessions — what Devices and
// a Session per device return — in one cache lookup.
func (s *Store) Peer(biz string, r Recipient) (Peer, error) {
	p := s.peers.get(biz, r)
	p.mu.Lock()
	defer p.mu.Unlock()
	devs, known, err := s.devicesLocked(p, biz, r)
	if err != nil {
		return Peer{}, err
	}
	out := Peer{Devices: devs, Known: known, Sessions: make([]*record.Session, 0, len(devs))}
	out.Sessions, out.Errs = s.sessionsLocked(p, biz, r, devs, out.Sessions)
	return out, nil
}

func (s *Store) devicesLocked(p *peer, biz string, r Recipient) (devs []uint32, ok bool, err error) {
	if p.known {
		return append([]uint32(nil), p.devs...), true, nil
	}
	if p.noDevs {
		return nil, false, nil
	}
	v, ok, err := s.db.GetCopy(key('V', biz, &r, 0))
	if err != nil {
		return nil, false, err
	}
	if !ok {
		p.noDevs = true
		return nil, false, nil
	}
	if len(v)%4 != 0 {
		return nil, false, errors.New("signal: device list corrupt")
	}
	for i := 0; i < len(v); i += 4 {
		devs = append(devs, binary.BigEndian.Uint32(v[i:]))
	}
	p.devs, p.known = append([]uint32(nil), devs...), true
	return devs, true, nil
}

// PutDevices records the recipient's device ids in b.
func (s *Store) PutDevices(b *pebble.Batch, biz string, r Recipient, devs []uint32) {
	p := s.peers.get(biz, r)
	p.mu.Lock()
	p.devs, p.known, p.noDevs = append([]uint32(nil), devs...), true, false
	p.mu.Unlock()
	v := make([]byte, 0, 4*len(devs))
	for _, d := range devs {
		v = binary.BigEndian.AppendUint32(v, d)
	}
	b.Set(key('V', biz, &r, 0), v, nil)
}

// TrustedIdentity returns the identity key the business trusted for a device.
func (s *Store) TrustedIdentity(biz string, r Recipient, device uint32) ([]byte, error) {
	v, ok, err := s.db.GetCopy(key('K', biz, &r, device))
	if err != nil || !ok {
		return nil, err
	}
	return v, nil
}

// PutTrustedIdentity records a device's identity key in b.
func (s *Store) PutTrustedIdentity(b *pebble.Batch, biz string, r Recipient, device uint32, ik []byte) {
	b.Set(key('K', biz, &r, device), ik, nil)
}

// ForgetRecipient deletes everything kept about a recipient for a business
// (sessions, identities, devices): used by retention once nothing is pending.
func (s *Store) ForgetRecipient(b *pebble.Batch, biz string, r Recipient) {
	s.peers.remove(biz, r)
	for _, kind := range []byte{'S', 'C', 'K', 'V'} {
		lo := key(kind, biz, &r, 0)
		b.DeleteRange(lo, kv.PrefixEnd(lo), nil)
	}
}

// ForgetDevices deletes the recipient's device list in b, so the next attempt
// re-queries the platform (stale_devices).
func (s *Store) ForgetDevices(b *pebble.Batch, biz string, r Recipient) {
	if p := s.peers.peek(biz, r); p != nil {
		p.mu.Lock()
		p.devs, p.known, p.noDevs = nil, false, true
		p.mu.Unlock()
	}
	b.Delete(key('V', biz, &r, 0), nil)
}
