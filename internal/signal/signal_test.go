package signal

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/seal"
)

func newStore(t testing.TB, dir string) (*Store, *kv.DB) {
	t.Helper()
	db, err := kv.Open(kv.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	s, _ := seal.New(seal.TestKey(1))
	st, err := NewStore(db, s, 16)
	if err != nil {
		t.Fatal(err)
	}
	return st, db
}

func mkSession(t testing.TB, id *Identity, user string, dev *Device, known []byte, strict bool) *Built {
	t.Helper()
	b, err := DecodeBundle(user, dev.Bundle())
	if err != nil {
		t.Fatal(err)
	}
	built, err := BuildSession(id, b, known, strict)
	if err != nil {
		t.Fatal(err)
	}
	return built
}

func TestRoundTripMultiDeviceInOrder(t *testing.T) {
	id, _ := NewIdentity("15550001111")
	for devID := uint32(1); devID <= 3; devID++ {
		dev, _ := NewDevice(devID, 10)
		built := mkSession(t, id, "15551230000", dev, nil, false)
		var pts [][]byte
		for i := 0; i < 5; i++ {
			pts = append(pts, []byte(fmt.Sprintf("msg %d to device %d", i, devID)))
		}
		cts, err := EncryptBatch(built.Record, pts)
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range cts {
			if c.Type != platform.TypePreKey {
				t.Fatalf("until the recipient replies every message is a pkmsg, got %s", c.Type)
			}
			got, err := dev.Decrypt(id.Phone, c.Type, c.Body)
			if err != nil || string(got) != string(pts[i]) {
				t.Fatalf("device %d message %d: %v %q", devID, i, err, got)
			}
		}
	}
}

func TestPreKeyExhaustionStillWorks(t *testing.T) {
	id, _ := NewIdentity("15550001111")
	dev, _ := NewDevice(1, 0) // no one-time prekeys at all
	wire := dev.Bundle()
	if wire.PreKey != nil {
		t.Fatal("exhausted device handed out a prekey")
	}
	built := mkSession(t, id, "1555", dev, nil, false)
	cts, err := EncryptBatch(built.Record, [][]byte{[]byte("hi")})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := dev.Decrypt(id.Phone, cts[0].Type, cts[0].Body); err != nil || string(got) != "hi" {
		t.Fatalf("signed-prekey-only session: %v", err)
	}
}

func TestSessionResetAfterLostSession(t *testing.T) {
	id, _ := NewIdentity("15550001111")
	dev, _ := NewDevice(1, 10)
	built := mkSession(t, id, "1555", dev, nil, false)
	cts, _ := EncryptBatch(built.Record, [][]byte{[]byte("a")})
	if _, err := dev.Decrypt(id.Phone, cts[0].Type, cts[0].Body); err != nil {
		t.Fatal(err)
	}
	dev.Reinstall() // lost every session and identity
	cts, _ = EncryptBatch(built.Record, [][]byte{[]byte("b")})
	if _, err := dev.Decrypt(id.Phone, cts[0].Type, cts[0].Body); err == nil {
		t.Fatal("a reinstalled device decrypted with the old session")
	}
	// Reset: fresh bundle, new session; the changed identity is reported.
	rebuilt := mkSession(t, id, "1555", dev, built.IdentityKey, false)
	if !rebuilt.IdentityChanged {
		t.Fatal("identity change not reported")
	}
	cts, _ = EncryptBatch(rebuilt.Record, [][]byte{[]byte("b")})
	if got, err := dev.Decrypt(id.Phone, cts[0].Type, cts[0].Body); err != nil || string(got) != "b" {
		t.Fatalf("after reset: %v", err)
	}
}

func TestIdentityCheckRefusesChangedKey(t *testing.T) {
	id, _ := NewIdentity("15550001111")
	dev, _ := NewDevice(1, 10)
	first := mkSession(t, id, "1555", dev, nil, true)
	dev.Reinstall()
	b, _ := DecodeBundle("1555", dev.Bundle())
	if _, err := BuildSession(id, b, first.IdentityKey, true); !errors.Is(err, ErrIdentityChanged) {
		t.Fatalf("want ErrIdentityChanged, got %v", err)
	}
	// Same key, strict: fine.
	dev2, _ := NewDevice(2, 10)
	again := mkSession(t, id, "1555", dev2, nil, true)
	b2, _ := DecodeBundle("1555", dev2.Bundle())
	if _, err := BuildSession(id, b2, again.IdentityKey, true); err != nil {
		t.Fatalf("unchanged key refused: %v", err)
	}
}

func TestBadBundlesAreRejected(t *testing.T) {
	dev, _ := NewDevice(1, 10)
	other, _ := NewDevice(1, 10)
	good := dev.Bundle()
	cases := map[string]func(b *platform.DeviceBundle){
		"signature from another key": func(b *platform.DeviceBundle) { b.SignedPreKey.Signature = other.Bundle().SignedPreKey.Signature },
		"identity key 32 bytes": func(b *platform.DeviceBundle) {
			raw, _ := base64.StdEncoding.DecodeString(b.IdentityKey)
			b.IdentityKey = base64.StdEncoding.EncodeToString(raw[1:])
		},
		"not base64":      func(b *platform.DeviceBundle) { b.SignedPreKey.PublicKey = "!!" },
		"short signature": func(b *platform.DeviceBundle) { b.SignedPreKey.Signature = "AAAA" },
		"prekey id 0":     func(b *platform.DeviceBundle) { b.PreKey.ID = 0 },
		"device id 0":     func(b *platform.DeviceBundle) { b.DeviceID = 0 },
		"device id 128":   func(b *platform.DeviceBundle) { b.DeviceID = 128 },
		"wrong key type": func(b *platform.DeviceBundle) {
			raw, _ := base64.StdEncoding.DecodeString(b.IdentityKey)
			raw[0] = 6
			b.IdentityKey = base64.StdEncoding.EncodeToString(raw)
		},
	}
	for name, mut := range cases {
		b := good
		pk := *good.PreKey
		b.PreKey = &pk
		mut(&b)
		if _, err := DecodeBundle("1555", b); !errors.Is(err, ErrBadBundle) {
			t.Errorf("%s: want ErrBadBundle, got %v", name, err)
		}
	}
	if _, err := DecodeBundle("1555", good); err != nil {
		t.Fatalf("good bundle: %v", err)
	}
}

func TestStorePersistsSealedSessionsAndIdentity(t *testing.T) {
	dir := t.TempDir()
	st, db := newStore(t, dir)
	id, err := st.Identity("15550001111")
	if err != nil {
		t.Fatal(err)
	}
	dev, _ := NewDevice(1, 10)
	r := Recipient{1, 2, 3}
	built := mkSession(t, id, "1555", dev, nil, false)
	cts, _ := EncryptBatch(built.Record, [][]byte{[]byte("one")})
	b := db.NewBatch()
	st.PutSession(b, id.Phone, r, 1, built.Record)
	st.PutDevices(b, id.Phone, r, []uint32{1})
	st.PutTrustedIdentity(b, id.Phone, r, 1, built.IdentityKey)
	if err := db.Commit(b, true); err != nil {
		t.Fatal(err)
	}
	dev.Decrypt(id.Phone, cts[0].Type, cts[0].Body)
	db.Close()

	st, db = newStore(t, dir) // cold cache: everything comes from Pebble
	defer db.Close()
	id2, _ := st.Identity("15550001111")
	if string(id2.KeyPair.PublicKey().Serialize()) != string(id.KeyPair.PublicKey().Serialize()) || id2.RegistrationID != id.RegistrationID {
		t.Fatal("identity changed across restart")
	}
	rec, err := st.Session(id.Phone, r, 1)
	if err != nil || rec == nil {
		t.Fatalf("session not reloaded: %v", err)
	}
	devs, ok, _ := st.Devices(id.Phone, r)
	if !ok || len(devs) != 1 {
		t.Fatal("devices not reloaded")
	}
	cts, _ = EncryptBatch(rec, [][]byte{[]byte("two")})
	if got, err := dev.Decrypt(id.Phone, cts[0].Type, cts[0].Body); err != nil || string(got) != "two" {
		t.Fatalf("reloaded session does not continue the ratchet: %v", err)
	}
}

// TestDeviceListCache: device lists are cached like sessions — the worker
// sees what it wrote; Forget (after a failed commit) falls back to Pebble;
// callers cannot scribble on the cache.
func TestDeviceListCache(t *testing.T) {
	st, db := newStore(t, t.TempDir())
	defer db.Close()
	r := Recipient{7}
	get := func() ([]uint32, bool) {
		t.Helper()
		d, ok, err := st.Devices("biz", r)
		if err != nil {
			t.Fatal(err)
		}
		return d, ok
	}
	if _, ok := get(); ok {
		t.Fatal("a list before any was written")
	}
	b := db.NewBatch()
	st.PutDevices(b, "biz", r, []uint32{1, 2})
	db.Commit(b, false)
	st.Forget("biz", r) // next read from Pebble
	if d, ok := get(); !ok || fmt.Sprint(d) != "[1 2]" {
		t.Fatalf("after commit: %v %v", d, ok)
	}
	d, _ := get() // from the cache now; the caller may scribble on it
	d[0] = 99
	if d, _ := get(); fmt.Sprint(d) != "[1 2]" {
		t.Fatalf("the cache shares its slice: %v", d)
	}
	// A write whose batch fails: the worker's view until Forget, then Pebble's.
	b = db.NewBatch()
	st.PutDevices(b, "biz", r, []uint32{3})
	if d, _ := get(); fmt.Sprint(d) != "[3]" {
		t.Fatalf("the writer does not see its own list: %v", d)
	}
	b.Close()
	st.Forget("biz", r)
	if d, _ := get(); fmt.Sprint(d) != "[1 2]" {
		t.Fatalf("after a failed batch and Forget: %v", d)
	}
	b = db.NewBatch()
	st.ForgetDevices(b, "biz", r)
	db.Commit(b, false)
	if d, ok := get(); ok {
		t.Fatalf("forgotten list still served: %v", d)
	}
}

// TestAdvanceStoresOnlyTheChain: after PutSession, encryptions are persisted
// with Advance (the sending chain key only). A store with a cold cache must
// rebuild exactly the session the warm one had: the next message decrypts in
// order, and a corrupt chain record is an error, never a silently reused key.
func TestAdvanceStoresOnlyTheChain(t *testing.T) {
	dir := t.TempDir()
	st, db := newStore(t, dir)
	id, _ := st.Identity("15550001111")
	dev, _ := NewDevice(1, 10)
	r := Recipient{7}
	built := mkSession(t, id, "1555", dev, nil, false)
	b := db.NewBatch()
	st.PutSession(b, id.Phone, r, 1, built.Record)
	db.Commit(b, true)
	for round := 0; round < 3; round++ {
		cts, _ := EncryptBatch(built.Record, [][]byte{[]byte("a"), []byte("b")})
		b := db.NewBatch()
		st.Advance(b, id.Phone, r, Advanced{1, built.Record})
		db.Commit(b, true)
		for _, c := range cts {
			if _, err := dev.Decrypt(id.Phone, c.Type, c.Body); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := built.Record.SessionState().SenderChainKey()
	// Invariant 6: the chain key is a secret; the record holding it is sealed.
	raw, ok, err := db.GetCopy(key('H', id.Phone, &r, 0))
	if err != nil || !ok || bytes.Contains(raw, want.Key()) {
		t.Fatalf("chain record missing or not sealed (%v, found %v)", err, ok)
	}
	db.Close()

	st, db = newStore(t, dir)
	rec, err := st.Session(id.Phone, r, 1)
	if err != nil || rec == nil {
		t.Fatalf("session not reloaded: %v", err)
	}
	got := rec.SessionState().SenderChainKey()
	if got.Index() != want.Index() || !bytes.Equal(got.Key(), want.Key()) || want.Index() != 6 {
		t.Fatalf("reloaded chain at %d, want %d (the key must match too)", got.Index(), want.Index())
	}
	cts, _ := EncryptBatch(rec, [][]byte{[]byte("after restart")})
	if pt, err := dev.Decrypt(id.Phone, cts[0].Type, cts[0].Body); err != nil || string(pt) != "after restart" {
		t.Fatalf("reloaded session: %v", err)
	}

	// A rebuilt session drops the old chain record with it.
	rebuilt := mkSession(t, id, "1555", dev, nil, false)
	b = db.NewBatch()
	st.PutSession(b, id.Phone, r, 1, rebuilt.Record)
	db.Commit(b, true)
	st.Forget(id.Phone, r)
	rec, err = st.Session(id.Phone, r, 1)
	if err != nil || rec.SessionState().SenderChainKey().Index() != 0 {
		t.Fatalf("rebuilt session reloaded at chain index %d (%v), want 0", rec.SessionState().SenderChainKey().Index(), err)
	}

	// A corrupt chain record is an error (the engine then resets the session).
	b = db.NewBatch()
	b.Set(key('H', id.Phone, &r, 0), []byte("garbage"), nil)
	db.Commit(b, true)
	st.Forget(id.Phone, r)
	if _, err := st.Session(id.Phone, r, 1); err == nil || !strings.Contains(err.Error(), "chain record unreadable") {
		t.Fatalf("corrupt chain record: got %v", err)
	}
	db.Close()
}

// TestAdvanceAfterEvictionReloadsTheSameState: Advance does not depend on
// the cache; a session the cache dropped between Session and Advance is read
// back from the committed records at the state the encryption left it in.
// With a one-recipient cache and two recipients taking turns, every turn
// reloads from Pebble; the devices must decrypt every message, in order.
func TestAdvanceAfterEvictionReloadsTheSameState(t *testing.T) {
	db, err := kv.Open(kv.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sl, _ := seal.New(seal.TestKey(1))
	st, err := NewStore(db, sl, 1) // one recipient cached
	if err != nil {
		t.Fatal(err)
	}
	id, _ := st.Identity("15550001111")
	// Two recipients with two devices each, taking turns: every turn finds
	// its recipient evicted by the other's.
	type target struct {
		r   Recipient
		dev uint32
	}
	var targets []target
	devs := map[target]*Device{}
	for _, r := range []Recipient{{9}, {10}} {
		for d := uint32(1); d <= 2; d++ {
			tg := target{r, d}
			targets = append(targets, tg)
			devs[tg], _ = NewDevice(d, 10)
			built := mkSession(t, id, "1555", devs[tg], nil, false)
			b := db.NewBatch()
			st.PutSession(b, id.Phone, r, d, built.Record)
			if err := db.Commit(b, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	for round := 0; round < 6; round++ {
		for _, tg := range targets {
			rec, err := st.Session(id.Phone, tg.r, tg.dev)
			if err != nil || rec == nil {
				t.Fatalf("round %d %v: %v", round, tg, err)
			}
			if want := uint32(2 * round); rec.SessionState().SenderChainKey().Index() != want {
				t.Fatalf("round %d %v: chain index %d, want %d", round, tg, rec.SessionState().SenderChainKey().Index(), want)
			}
			msgs := [][]byte{[]byte(fmt.Sprintf("r%d-a", round)), []byte(fmt.Sprintf("r%d-b", round))}
			cts, err := EncryptBatch(rec, msgs)
			if err != nil {
				t.Fatal(err)
			}
			// The other recipient's Session (next turn) evicts this one before
			// its advance is committed here: Advance must not depend on the cache.
			st.Session(id.Phone, Recipient{byte(19 - tg.r[0])}, 1)
			b := db.NewBatch()
			st.Advance(b, id.Phone, tg.r, Advanced{tg.dev, rec})
			if err := db.Commit(b, true); err != nil {
				t.Fatal(err)
			}
			for i, c := range cts {
				if pt, err := devs[tg].Decrypt(id.Phone, c.Type, c.Body); err != nil || !bytes.Equal(pt, msgs[i]) {
					t.Fatalf("round %d %v message %d: %q %v", round, tg, i, pt, err)
				}
			}
		}
	}
}

// Peer answers for every listed device, in order, from one cache entry: a
// stored session, nil for a device without one, and an error (with nil) for
// one whose stored record cannot be read — also once the entry was dropped.
func TestPeerOfARecipient(t *testing.T) {
	st, db := newStore(t, t.TempDir())
	defer db.Close()
	id, _ := st.Identity("15550001111")
	r := Recipient{7}
	for _, d := range []uint32{1, 3} {
		dev, _ := NewDevice(d, 10)
		b := db.NewBatch()
		st.PutSession(b, id.Phone, r, d, mkSession(t, id, "1555", dev, nil, false).Record)
		db.Commit(b, true)
	}
	if p, err := st.Peer(id.Phone, r); err != nil || p.Known || len(p.Devices) != 0 || len(p.Sessions) != 0 {
		t.Fatalf("devices never queried: %+v %v", p, err)
	}
	b := db.NewBatch()
	b.Set(key('S', id.Phone, &r, 4), []byte("garbage"), nil)
	st.PutDevices(b, id.Phone, r, []uint32{1, 2, 3, 4})
	db.Commit(b, true)
	for _, cached := range []bool{true, false} {
		if !cached {
			st.Forget(id.Phone, r)
		}
		p, err := st.Peer(id.Phone, r)
		if err != nil || !p.Known || fmt.Sprint(p.Devices) != "[1 2 3 4]" {
			t.Fatalf("cached=%v: %+v %v", cached, p, err)
		}
		recs, errs := p.Sessions, p.Errs
		if len(recs) != 4 || recs[0] == nil || recs[1] != nil || recs[2] == nil || recs[3] != nil {
			t.Fatalf("cached=%v: %v", cached, recs)
		}
		if errs == nil || errs[0] != nil || errs[1] != nil || errs[2] != nil || errs[3] == nil {
			t.Fatalf("cached=%v: errors %v", cached, errs)
		}
		one, _ := st.Session(id.Phone, r, 3)
		if one != recs[2] {
			t.Fatalf("cached=%v: Session and Sessions disagree", cached)
		}
	}
	b = db.NewBatch()
	st.PutDevices(b, id.Phone, r, []uint32{1, 3})
	db.Commit(b, true)
	if p, err := st.Peer(id.Phone, r); err != nil || p.Errs != nil || p.Sessions[0] == nil || p.Sessions[1] == nil {
		t.Fatalf("no error, no Errs: %+v %v", p, err)
	}
	// A corrupt device list is the caller's error.
	b = db.NewBatch()
	b.Set(key('V', id.Phone, &r, 0), []byte{1, 2, 3}, nil)
	db.Commit(b, true)
	st.Forget(id.Phone, r)
	if _, err := st.Peer(id.Phone, r); err == nil {
		t.Fatal("a corrupt device list read as one")
	}
}

// A recipient without a stored device list is remembered as such (a read of
// an absent key is the most expensive point read): the next lookups answer
// from the cache until the list is written through the store or the entry is
// forgotten. A list written behind the store's back shows how it answers.
func TestDevicesRemembersAbsence(t *testing.T) {
	st, db := newStore(t, t.TempDir())
	defer db.Close()
	r := Recipient{5}
	behindTheBack := func(devs ...byte) {
		b := db.NewBatch()
		b.Set(key('V', "biz", &r, 0), []byte{0, 0, 0, devs[0]}, nil)
		db.Commit(b, true)
	}
	if _, ok, err := st.Devices("biz", r); ok || err != nil {
		t.Fatalf("a list before any was written: %v %v", ok, err)
	}
	behindTheBack(4)
	if _, ok, _ := st.Devices("biz", r); ok {
		t.Fatal("the absence was read again")
	}
	if p, _ := st.Peer("biz", r); p.Known {
		t.Fatal("Peer read the absence again")
	}
	st.Forget("biz", r)
	if d, ok, _ := st.Devices("biz", r); !ok || fmt.Sprint(d) != "[4]" {
		t.Fatalf("after Forget: %v %v", d, ok)
	}
	// Written through the store: known at once.
	b := db.NewBatch()
	st.ForgetDevices(b, "biz", r) // deleted: absent without a read
	db.Commit(b, true)
	behindTheBack(6)
	if _, ok, _ := st.Devices("biz", r); ok {
		t.Fatal("ForgetDevices did not leave the list absent")
	}
	b = db.NewBatch()
	st.PutDevices(b, "biz", r, []uint32{1, 2})
	db.Commit(b, true)
	if d, ok, _ := st.Devices("biz", r); !ok || fmt.Sprint(d) != "[1 2]" {
		t.Fatalf("after PutDevices: %v %v", d, ok)
	}
}

// One chain record holds every device's chain, and a write carries over the
// devices it does not advance: a device that left the device list (its
// session kept) and comes back after its recipient's other devices were
// written many times continues its own chain — the next message decrypts,
// in order, which it would not if its entry had been dropped (the session
// record alone is behind: a reused chain index). Devices are advanced one
// at a time through cold caches, so the carried entries come from Pebble.
func TestChainRecordCarriesOverDevicesNotAdvanced(t *testing.T) {
	dir := t.TempDir()
	st, db := newStore(t, dir)
	id, _ := st.Identity("15550001111")
	r := Recipient{8}
	devs := map[uint32]*Device{}
	b := db.NewBatch()
	for _, d := range []uint32{1, 2} {
		devs[d], _ = NewDevice(d, 10)
		st.PutSession(b, id.Phone, r, d, mkSession(t, id, "1555", devs[d], nil, false).Record)
	}
	st.PutDevices(b, id.Phone, r, []uint32{1, 2})
	db.Commit(b, true)
	send := func(d uint32, text string) {
		t.Helper()
		rec, err := st.Session(id.Phone, r, d)
		if err != nil || rec == nil {
			t.Fatalf("device %d: %v", d, err)
		}
		cts, _ := EncryptBatch(rec, [][]byte{[]byte(text)})
		b := db.NewBatch()
		if err := st.Advance(b, id.Phone, r, Advanced{d, rec}); err != nil {
			t.Fatal(err)
		}
		if err := db.Commit(b, true); err != nil {
			t.Fatal(err)
		}
		if pt, err := devs[d].Decrypt(id.Phone, cts[0].Type, cts[0].Body); err != nil || string(pt) != text {
			t.Fatalf("device %d %q: %q %v", d, text, pt, err)
		}
		st.Forget(id.Phone, r) // the next turn reads everything back
	}
	for i := 0; i < 3; i++ {
		send(1, fmt.Sprint("both listed ", i))
		send(2, fmt.Sprint("both listed ", i))
	}
	b = db.NewBatch()
	st.PutDevices(b, id.Phone, r, []uint32{1}) // device 2 leaves
	db.Commit(b, true)
	for i := 0; i < 4; i++ {
		send(1, fmt.Sprint("device 2 away ", i))
	}
	b = db.NewBatch()
	st.PutDevices(b, id.Phone, r, []uint32{1, 2}) // and comes back
	db.Commit(b, true)
	st.Forget(id.Phone, r)
	if rec, _ := st.Session(id.Phone, r, 2); rec.SessionState().SenderChainKey().Index() != 3 {
		t.Fatalf("device 2 back at chain index %d, want 3", rec.SessionState().SenderChainKey().Index())
	}
	send(2, "back")
	send(1, "after")
	db.Close()
}

// An unreadable chain record cannot be carried over: Advance deletes the
// stored sessions of the devices it does not advance (their chain position
// is lost; a session behind its chain would reuse message keys), keeps the
// ones it advances, and writes a record that reads again.
func TestUnreadableChainRecordDropsTheOtherSessions(t *testing.T) {
	st, db := newStore(t, t.TempDir())
	defer db.Close()
	id, _ := st.Identity("15550001111")
	r := Recipient{9}
	b := db.NewBatch()
	for _, d := range []uint32{1, 2, 3} {
		dev, _ := NewDevice(d, 10)
		st.PutSession(b, id.Phone, r, d, mkSession(t, id, "1555", dev, nil, false).Record)
	}
	b.Set(key('H', id.Phone, &r, 0), []byte("garbage"), nil)
	db.Commit(b, true)
	st.Forget(id.Phone, r)
	if _, err := st.Session(id.Phone, r, 2); err == nil || !strings.Contains(err.Error(), "chain record unreadable") {
		t.Fatalf("a session read under an unreadable chain record: %v", err)
	}
	// The engine resets device 2 (a new session), encrypts and advances it.
	dev2, _ := NewDevice(2, 10)
	rebuilt := mkSession(t, id, "1555", dev2, nil, false)
	b = db.NewBatch()
	st.PutSession(b, id.Phone, r, 2, rebuilt.Record)
	cts, _ := EncryptBatch(rebuilt.Record, [][]byte{[]byte("fresh")})
	if err := st.Advance(b, id.Phone, r, Advanced{2, rebuilt.Record}); err != nil {
		t.Fatal(err)
	}
	if err := db.Commit(b, true); err != nil {
		t.Fatal(err)
	}
	st.Forget(id.Phone, r)
	for _, d := range []uint32{1, 3} {
		if rec, err := st.Session(id.Phone, r, d); rec != nil || err != nil {
			t.Fatalf("device %d: session kept (%v) under a lost chain", d, err)
		}
	}
	rec, err := st.Session(id.Phone, r, 2)
	if err != nil || rec == nil || rec.SessionState().SenderChainKey().Index() != 1 {
		t.Fatalf("the advanced device: %v %v", rec, err)
	}
	if pt, err := dev2.Decrypt(id.Phone, cts[0].Type, cts[0].Body); err != nil || string(pt) != "fresh" {
		t.Fatalf("%q %v", pt, err)
	}
}

// Cached is true only when Peer needs neither Pebble nor the platform: the
// device list and a session for every listed device are in the cache.
func TestCachedMeansNothingToFetch(t *testing.T) {
	st, db := newStore(t, t.TempDir())
	defer db.Close()
	id, _ := st.Identity("15550001111")
	r := Recipient{4}
	if st.Cached(id.Phone, r) {
		t.Fatal("an unknown recipient is cached")
	}
	b := db.NewBatch()
	st.PutDevices(b, id.Phone, r, []uint32{1, 2})
	dev, _ := NewDevice(1, 10)
	st.PutSession(b, id.Phone, r, 1, mkSession(t, id, "1555", dev, nil, false).Record)
	db.Commit(b, true)
	if st.Cached(id.Phone, r) {
		t.Fatal("cached with device 2 lacking a session")
	}
	b = db.NewBatch()
	dev2, _ := NewDevice(2, 10)
	st.PutSession(b, id.Phone, r, 2, mkSession(t, id, "1555", dev2, nil, false).Record)
	db.Commit(b, true)
	if !st.Cached(id.Phone, r) {
		t.Fatal("not cached with every device's session")
	}
	b = db.NewBatch()
	st.DeleteSession(b, id.Phone, r, 2)
	db.Commit(b, true)
	if st.Cached(id.Phone, r) {
		t.Fatal("cached after a session reset")
	}
	st.Forget(id.Phone, r)
	if st.Cached(id.Phone, r) {
		t.Fatal("cached after Forget")
	}
	if _, err := st.Peer(id.Phone, r); err != nil || st.Cached(id.Phone, r) {
		t.Fatalf("a reloaded recipient missing device 2's session: %v", err)
	}
}
