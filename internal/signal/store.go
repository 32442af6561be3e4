package signal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
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

	pkMu sync.Mutex // prekey generation (prekeys.go)
	// cluster mode: prekeys shared with every node (SetPreKeyReplicator)
	pkRepMu sync.Mutex
	pkPut   func(key string, sealed []byte) error
	pkDel   func(key string)

	// derive, when set, makes a business number's identity from the master
	// key instead of at random (cluster mode: every node holds the same).
	derive func(phone string) [32]byte
}

// DeriveIdentities makes identities that do not exist yet from mac (a keyed
// MAC of the master key): every node of a cluster derives the same key pair
// for a number, so a user sees one business identity whichever node works
// its partition.
func (s *Store) DeriveIdentities(mac func([]byte) [32]byte) {
	s.derive = func(phone string) [32]byte { return mac([]byte("herald identity v1\x00" + phone)) }
}

// ForgetShards deletes every recipient's sessions, device lists and trusted
// keys whose recipient key match selects (a node taking partitions over:
// what it kept of them may be stale), and empties the cache. It returns how
// many records it deleted.
func (s *Store) ForgetShards(match func(r Recipient) bool) (int, error) {
	n := 0
	for _, kind := range []byte{'S', 'H', 'K', 'V'} {
		lo := []byte{'s', kind}
		it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: kv.PrefixEnd(lo)})
		if err != nil {
			return n, err
		}
		b := s.db.NewBatch()
		for it.First(); it.Valid(); it.Next() {
			k := it.Key()
			if len(k) < 3 || len(k) < 3+int(k[2])+len(Recipient{}) {
				continue
			}
			var r Recipient
			copy(r[:], k[3+int(k[2]):])
			if match(r) {
				b.Delete(k, nil)
				n++
			}
		}
		err = it.Close()
		if err == nil {
			err = s.db.Commit(b, true)
		}
		if err != nil {
			return n, err
		}
	}
	s.peers.purge()
	return n, nil
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
	return appendKey(make([]byte, 0, keyLen(biz, r, device)), kind, biz, r, device)
}

// keyLen is len(key(kind, biz, r, device)).
func keyLen(biz string, r *Recipient, device uint32) int {
	n := 3 + len(biz)
	if r != nil {
		n += len(r)
	}
	if device != 0 {
		n += 4
	}
	return n
}

func appendKey(k []byte, kind byte, biz string, r *Recipient, device uint32) []byte {
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
		if s.derive != nil {
			priv := s.derive(phone)
			kp := ecc.CreateKeyPair(priv[:])
			id = &Identity{Phone: phone, KeyPair: identity.NewKeyPair(identity.NewKey(kp.PublicKey()), kp.PrivateKey()),
				RegistrationID: uint32(priv[31])<<6 | uint32(priv[30]&0x3f) | 1}
		} else if id, err = NewIdentity(phone); err != nil {
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
	if err := s.chainsLocked(p, biz, r); err != nil {
		return nil, err
	}
	if p.chainsBad {
		return nil, errChainsUnreadable
	}
	if c := p.chain(device); c != nil {
		c.apply(rec)
	}
	p.setSession(device, rec)
	return rec, nil
}

// The chain record ('H', one per recipient) holds what encryptions change in
// the recipient's sessions: per device, the sending chain's index and key,
// and which chain that is (the first bytes of its ratchet public key). One
// record for all of a recipient's devices is one write per message instead
// of one per device. Sealed: a chain key decrypts messages.
//
// Every write carries over the entries of devices it did not advance: a
// device that leaves the device list keeps its session, and its session
// record alone is behind its chain; were its entry dropped, its next message
// would reuse a chain index (a message key used twice).
type chainEntry struct {
	device uint32
	fp     [chainFPLen]byte
	index  uint32
	key    [32]byte
}

const (
	chainFPLen    = 8
	chainEntryLen = 4 + chainFPLen + 4 + 32
)

var errChainsUnreadable = errors.New("signal: session chain record unreadable")

// chainFP identifies a sending chain by its ratchet public key.
func chainFP(st *record.State) (fp [chainFPLen]byte) {
	k := st.SenderRatchetKey().PublicKey()
	copy(fp[:], k[:])
	return fp
}

// apply moves rec's sending chain forward to the entry, if the entry belongs
// to rec's sending chain (not to a session the device had before) and is
// ahead of it.
func (c *chainEntry) apply(rec *record.Session) {
	st := rec.SessionState()
	if st == nil || !st.HasSenderChain() || chainFP(st) != c.fp || c.index < st.SenderChainKey().Index() {
		return
	}
	st.SetSenderChainKey(chain.NewKey(kdf.DeriveSecrets, bytes.Clone(c.key[:]), c.index))
}

// chainsLocked reads the recipient's chain record into p, once. An
// unreadable record leaves p.chainsBad set: no stored session of the
// recipient can be trusted to be at its latest chain position.
func (s *Store) chainsLocked(p *peer, biz string, r Recipient) error {
	if p.chainsLoaded {
		return nil
	}
	v, ok, err := s.db.GetCopy(key('H', biz, &r, 0))
	if err != nil {
		return err
	}
	p.chainsLoaded, p.chains, p.chainsBad = true, nil, false
	if !ok {
		return nil
	}
	plain, err := s.sealer.Open(v)
	if err != nil || len(plain)%chainEntryLen != 0 {
		p.chainsBad = true
		return nil
	}
	for i := 0; i < len(plain); i += chainEntryLen {
		var c chainEntry
		c.device = binary.BigEndian.Uint32(plain[i:])
		copy(c.fp[:], plain[i+4:])
		c.index = binary.BigEndian.Uint32(plain[i+4+chainFPLen:])
		copy(c.key[:], plain[i+8+chainFPLen:])
		p.chains = append(p.chains, c)
	}
	return nil
}

// PutSession writes the whole of rec into b (sealed) and caches it: for a
// session just built. After an encryption, Advance is enough. A chain entry
// the device had for an earlier session is left to the next Advance, which
// replaces it (it names another chain, so nothing applies it meanwhile).
func (s *Store) PutSession(b *pebble.Batch, biz string, r Recipient, device uint32, rec *record.Session) {
	b.Set(key('S', biz, &r, device), s.sealer.Seal(nil, rec.Serialize()), nil)
	p := s.peers.get(biz, r)
	p.mu.Lock()
	p.setSession(device, rec)
	p.dropChain(device)
	p.mu.Unlock()
}

// Advanced is a device's session that encryptions moved forward.
type Advanced struct {
	Device  uint32
	Session *record.Session
}

// Advance writes into b what encrypting with the recipient's sessions changed
// — their sending chain keys — as the recipient's one chain record: the
// entries of adv, and those of its other devices carried over as stored. Call
// it once per recipient and batch, with every session the batch advanced.
// The sessions are those Peer or Session returned, which the cache holds
// (advanced in place); if the cache dropped the recipient meanwhile, the
// other devices' entries are read back from Pebble, where they are as the
// last commit left them, and the next Peer reads the committed records, which
// hold the same state. Encryption changes nothing else in a session
// (EncryptBatch), so this replaces rewriting the whole record (~1 KB of JSON
// serialized, compressed and sealed per device per message).
//
// An unreadable chain record cannot be carried over: the stored sessions of
// the recipient's other devices are deleted with it (their chain position is
// lost, and a session behind its chain would reuse message keys).
func (s *Store) Advance(b *pebble.Batch, biz string, r Recipient, adv ...Advanced) error {
	p := s.peers.get(biz, r)
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := s.chainsLocked(p, biz, r); err != nil {
		return err
	}
	if p.chainsBad {
		if err := s.dropOtherSessionsLocked(b, p, biz, r, adv); err != nil {
			return err
		}
		p.chains, p.chainsBad = nil, false
	}
	for _, a := range adv {
		st := a.Session.SessionState()
		if st == nil || !st.HasSenderChain() {
			p.dropChain(a.Device) // nothing to advance (not a sender's session)
			continue
		}
		ck := st.SenderChainKey()
		c := chainEntry{device: a.Device, fp: chainFP(st), index: ck.Index()}
		copy(c.key[:], ck.Key())
		p.setChain(c)
	}
	if len(p.chains) == 0 {
		b.Delete(key('H', biz, &r, 0), nil)
		return nil
	}
	var stack [4 * chainEntryLen]byte // a recipient rarely has more devices
	plain := stack[:0]
	for _, c := range p.chains {
		plain = binary.BigEndian.AppendUint32(plain, c.device)
		plain = append(plain, c.fp[:]...)
		plain = binary.BigEndian.AppendUint32(plain, c.index)
		plain = append(plain, c.key[:]...)
	}
	// Key and sealed record are written straight into the batch.
	op := b.SetDeferred(keyLen(biz, &r, 0), seal.SealedRandomLen(len(plain)))
	k := appendKey(op.Key[:0], 'H', biz, &r, 0)
	v := s.sealer.SealRandom(op.Value[:0], plain)
	if len(k) != len(op.Key) || &k[0] != &op.Key[0] || len(v) != len(op.Value) || &v[0] != &op.Value[0] {
		panic("signal: chain record size mismatch")
	}
	return op.Finish()
}

// dropOtherSessionsLocked deletes in b every stored session of the recipient
// but those of adv, and drops them from the cache.
func (s *Store) dropOtherSessionsLocked(b *pebble.Batch, p *peer, biz string, r Recipient, adv []Advanced) error {
	lo := key('S', biz, &r, 0)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: kv.PrefixEnd(lo)})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != len(lo)+4 {
			continue
		}
		d := binary.BigEndian.Uint32(k[len(lo):])
		if !slices.ContainsFunc(adv, func(a Advanced) bool { return a.Device == d }) {
			b.Delete(bytes.Clone(k), nil)
			p.dropSession(d)
		}
	}
	return it.Error()
}

// DeleteSession removes a device's session (a reset) in b and from the
// cache. Its chain entry, if any, names a chain no later session has: the
// next Advance drops it.
func (s *Store) DeleteSession(b *pebble.Batch, biz string, r Recipient, device uint32) {
	b.Delete(key('S', biz, &r, device), nil)
	if p := s.peers.peek(biz, r); p != nil {
		p.mu.Lock()
		p.dropSession(device)
		p.dropChain(device)
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

// Cached reports whether the recipient's device list and a session for each
// of its devices are in the cache: Peer would answer without reading Pebble,
// and with nothing to fetch from the platform.
func (s *Store) Cached(biz string, r Recipient) bool {
	p := s.peers.peek(biz, r)
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.known || len(p.devs) == 0 {
		return false
	}
	for _, d := range p.devs {
		if p.session(d) == nil {
			return false
		}
	}
	return true
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
	for _, kind := range []byte{'S', 'H', 'K', 'V'} {
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
