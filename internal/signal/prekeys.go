package signal

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.mau.fi/libsignal/ecc"
	"go.mau.fi/libsignal/state/record"

	"github.com/heraldhq/herald/internal/platform"
)

// A business phone number's prekeys, so users can start sessions with it
// (DESIGN "Inbound"). Private halves are sealed at rest:
//
//	s G <biz>          the signed prekeys: next one-time id (4) | current | previous (optional),
//	                   each id (4) | created unix (8) | private (32) | public (33) | signature (64)
//	s P <biz> <id(4)>  a one-time prekey: private (32) | public (33); deleted when a session consumed it
//
// One-time prekey ids only grow (never reused); signed prekey ids too.

const (
	// SignedPreKeyRotation is how long a signed prekey is current; the
	// previous one is still accepted for as long again (a user may have
	// fetched the bundle just before the rotation).
	SignedPreKeyRotation = 7 * 24 * time.Hour
	signedLen            = 4 + 8 + 32 + 33 + 64
)

type signedPreKey struct {
	id      uint32
	created int64
	priv    [32]byte
	pub     [33]byte
	sig     [64]byte
}

func (k *signedPreKey) record() *record.SignedPreKey {
	pub, _ := ecc.DecodePoint(k.pub[:], 0)
	return record.NewSignedPreKey(k.id, k.created, ecc.NewECKeyPair(pub, ecc.NewDjbECPrivateKey(k.priv)), k.sig, Serializer.SignedPreKeyRecord)
}

type preKeyState struct {
	next              uint32 // next one-time prekey id
	current, previous *signedPreKey
}

func (st *preKeyState) encode() []byte {
	out := binary.BigEndian.AppendUint32(nil, st.next)
	for _, k := range []*signedPreKey{st.current, st.previous} {
		if k == nil {
			continue
		}
		out = binary.BigEndian.AppendUint32(out, k.id)
		out = binary.BigEndian.AppendUint64(out, uint64(k.created))
		out = append(out, k.priv[:]...)
		out = append(out, k.pub[:]...)
		out = append(out, k.sig[:]...)
	}
	return out
}

func decodePreKeyState(b []byte) (*preKeyState, error) {
	if len(b) < 4 || (len(b)-4)%signedLen != 0 || (len(b)-4)/signedLen > 2 {
		return nil, errors.New("signal: prekey state corrupt")
	}
	st := &preKeyState{next: binary.BigEndian.Uint32(b)}
	for i := 4; i < len(b); i += signedLen {
		k := &signedPreKey{id: binary.BigEndian.Uint32(b[i:]), created: int64(binary.BigEndian.Uint64(b[i+4:]))}
		copy(k.priv[:], b[i+12:])
		copy(k.pub[:], b[i+44:])
		copy(k.sig[:], b[i+77:])
		if st.current == nil {
			st.current = k
		} else {
			st.previous = k
		}
	}
	return st, nil
}

// loadPreKeyState reads biz's prekey state (nil when it has none yet).
func (s *Store) loadPreKeyState(biz string) (*preKeyState, error) {
	v, ok, err := s.db.GetCopy(key('G', biz, nil, 0))
	if err != nil || !ok {
		return nil, err
	}
	plain, err := s.sealer.Open(v)
	if err != nil {
		return nil, fmt.Errorf("signal: prekey state unreadable: %w", err)
	}
	return decodePreKeyState(plain)
}

// KeysUpload is the body of the platform's POST /v1/keys/upload.
type KeysUpload struct {
	User           string                   `json:"user"`
	DeviceID       uint32                   `json:"device_id"`
	RegistrationID uint32                   `json:"registration_id"`
	IdentityKey    string                   `json:"identity_key"`
	SignedPreKey   platform.SignedPreKey    `json:"signed_prekey"`
	PreKeys        []platform.OneTimePreKey `json:"prekeys"`
}

// NewPreKeys makes n new one-time prekeys for the business number biz
// (digits), rotating its signed prekey when it is older than
// SignedPreKeyRotation (or there is none), and persists them (sealed,
// fsync'd) before it returns what to upload: nothing it hands out is lost
// by a crash, and no id is handed out twice.
func (s *Store) NewPreKeys(biz string, n int, now time.Time) (*KeysUpload, error) {
	id, err := s.Identity(biz)
	if err != nil {
		return nil, err
	}
	s.pkMu.Lock()
	defer s.pkMu.Unlock()
	st, err := s.loadPreKeyState(biz)
	if err != nil {
		return nil, err
	}
	if st == nil {
		st = &preKeyState{next: 1} // id 0 means "no prekey" in every libsignal
	}
	b := s.db.NewBatch()
	type kv struct {
		key    string
		sealed []byte
	}
	var shared []kv // in cluster mode, what every node must hold too
	committed := false
	defer func() {
		if !committed {
			b.Close() // Commit closes it otherwise
		}
	}()
	if st.current == nil || now.Sub(time.Unix(st.current.created, 0)) >= SignedPreKeyRotation {
		k, err := newEphemeral()
		if err != nil {
			return nil, err
		}
		nk := &signedPreKey{id: 1, created: now.Unix(), priv: *k.dh}
		if st.current != nil {
			nk.id = st.current.id + 1
		}
		nk.pub = serialize33(k.pair.PublicKey())
		nk.sig = ecc.CalculateSignature(id.KeyPair.PrivateKey(), nk.pub[:])
		st.previous, st.current = st.current, nk
	}
	up := &KeysUpload{User: biz, DeviceID: 1, RegistrationID: id.RegistrationID,
		IdentityKey: EncodeKey(id.KeyPair.PublicKey().PublicKey()),
		SignedPreKey: platform.SignedPreKey{ID: st.current.id, PublicKey: base64.StdEncoding.EncodeToString(st.current.pub[:]),
			Signature: base64.StdEncoding.EncodeToString(st.current.sig[:])},
		PreKeys: make([]platform.OneTimePreKey, 0, n)}
	for i := 0; i < n; i++ {
		k, err := newEphemeral()
		if err != nil {
			return nil, err
		}
		pid := st.next
		st.next++
		pub := serialize33(k.pair.PublicKey())
		sealed := s.sealer.Seal(nil, append(k.dh[:], pub[:]...))
		b.Set(binary.BigEndian.AppendUint32(key('P', biz, nil, 0), pid), sealed, nil)
		shared = append(shared, kv{fmt.Sprintf("p.%s.%d", biz, pid), sealed})
		up.PreKeys = append(up.PreKeys, platform.OneTimePreKey{ID: pid, PublicKey: base64.StdEncoding.EncodeToString(pub[:])})
	}
	sealedG := s.sealer.Seal(nil, st.encode())
	b.Set(key('G', biz, nil, 0), sealedG, nil)
	committed = true
	if err := s.db.Commit(b, true); err != nil {
		return nil, err
	}
	if put, _ := s.preKeyReplicator(); put != nil {
		// Every node must hold the private halves before the platform
		// hands the public ones out: the user's partition may be another
		// node's. The state (next id) last, once its prekeys are there.
		for _, x := range append(shared, kv{"g." + biz, sealedG}) {
			if err := put(x.key, x.sealed); err != nil {
				return nil, fmt.Errorf("signal: prekeys not stored in the cluster: %w", err)
			}
		}
	}
	return up, nil
}

// SetPreKeyReplicator makes the prekeys this node makes go to every node
// (put, before they are uploaded) and the one-time prekeys a session
// consumed leave every node (del).
func (s *Store) SetPreKeyReplicator(put func(key string, sealed []byte) error, del func(key string)) {
	s.pkRepMu.Lock()
	s.pkPut, s.pkDel = put, del
	s.pkRepMu.Unlock()
}

func (s *Store) preKeyReplicator() (func(string, []byte) error, func(string)) {
	s.pkRepMu.Lock()
	defer s.pkRepMu.Unlock()
	return s.pkPut, s.pkDel
}

// ApplyPreKey stores (or, when sealed is nil, deletes) a prekey record
// another node made or consumed: key "g.<biz>" (the state) or
// "p.<biz>.<id>" (a one-time prekey).
func (s *Store) ApplyPreKey(k string, sealed []byte) error {
	var dbKey []byte
	switch {
	case strings.HasPrefix(k, "g."):
		dbKey = key('G', k[2:], nil, 0)
	case strings.HasPrefix(k, "p."):
		biz, idS, ok := strings.Cut(k[2:], ".")
		id, err := strconv.ParseUint(idS, 10, 32)
		if !ok || err != nil || biz == "" {
			return fmt.Errorf("signal: prekey key %q", k)
		}
		dbKey = binary.BigEndian.AppendUint32(key('P', biz, nil, 0), uint32(id))
	default:
		return fmt.Errorf("signal: prekey key %q", k)
	}
	var plain []byte
	if sealed != nil {
		var err error
		if plain, err = s.sealer.Open(sealed); err != nil {
			return fmt.Errorf("signal: replicated prekey %q does not open: %w", k, err)
		}
	}
	s.pkMu.Lock()
	defer s.pkMu.Unlock()
	if sealed != nil && strings.HasPrefix(k, "g.") {
		// Never back: an older state's echo arriving after a newer one
		// was made here would hand its ids out again.
		in, err := decodePreKeyState(plain)
		if err != nil {
			return err
		}
		if have, err := s.loadPreKeyState(k[2:]); err != nil {
			return err
		} else if have != nil && (have.next > in.next || (have.current != nil && (in.current == nil || have.current.id > in.current.id))) {
			return nil
		}
	}
	b := s.db.NewBatch()
	if sealed == nil {
		b.Delete(dbKey, nil)
	} else {
		b.Set(dbKey, sealed, nil)
	}
	return s.db.Commit(b, true)
}

// preKey reads one of biz's one-time prekeys (nil when it was consumed or
// never existed).
func (s *Store) preKey(biz string, id uint32) (*record.PreKey, error) {
	v, ok, err := s.db.GetCopy(binary.BigEndian.AppendUint32(key('P', biz, nil, 0), id))
	if err != nil || !ok {
		return nil, err
	}
	plain, err := s.sealer.Open(v)
	if err != nil || len(plain) != 65 {
		return nil, fmt.Errorf("signal: prekey unreadable: %v", err)
	}
	pub, err := ecc.DecodePoint(plain[32:], 0)
	if err != nil {
		return nil, err
	}
	var priv [32]byte
	copy(priv[:], plain[:32])
	return record.NewPreKey(id, ecc.NewECKeyPair(pub, ecc.NewDjbECPrivateKey(priv)), Serializer.PreKeyRecord), nil
}

// deletePreKey removes a consumed one-time prekey in b.
func (s *Store) deletePreKey(b *pebble.Batch, biz string, id uint32) {
	b.Delete(binary.BigEndian.AppendUint32(key('P', biz, nil, 0), id), nil)
	if _, del := s.preKeyReplicator(); del != nil {
		del(fmt.Sprintf("p.%s.%d", biz, id))
	}
}

// PreKeyCount is how many one-time prekeys of biz are unconsumed here (the
// platform may hold fewer: it hands them out before sessions consume them).
func (s *Store) PreKeyCount(biz string) (int, error) {
	lo := key('P', biz, nil, 0)
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: append(lo[:len(lo):len(lo)], 0xff, 0xff, 0xff, 0xff, 0xff)})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	n := 0
	for it.First(); it.Valid(); it.Next() {
		n++
	}
	return n, it.Error()
}
