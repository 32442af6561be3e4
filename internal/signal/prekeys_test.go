package signal

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/platform"
)

func bundleFrom(up *KeysUpload, i int) *platform.DeviceBundle {
	b := &platform.DeviceBundle{DeviceID: 1, RegistrationID: up.RegistrationID, IdentityKey: up.IdentityKey, SignedPreKey: up.SignedPreKey}
	if i >= 0 {
		b.PreKey = &up.PreKeys[i]
	}
	return b
}

// TestPreKeysNeverReusedRotatedAndConsumed: one-time prekey ids only grow
// (across uploads and a reopen), a consumed prekey is deleted, the signed
// prekey rotates after a week and the previous one is accepted for a week
// more, then not.
func TestPreKeysNeverReusedRotatedAndConsumed(t *testing.T) {
	dir := t.TempDir()
	st, db := newStore(t, dir)
	const biz = "15550001001"
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	up1, err := st.NewPreKeys(biz, 3, t0)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	st, db = newStore(t, dir)
	defer db.Close()
	up2, err := st.NewPreKeys(biz, 3, t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint32]bool{}
	for _, pk := range append(up1.PreKeys, up2.PreKeys...) {
		if pk.ID == 0 || seen[pk.ID] {
			t.Fatalf("prekey id %d handed out twice (or 0): %v %v", pk.ID, up1.PreKeys, up2.PreKeys)
		}
		seen[pk.ID] = true
	}
	if up2.SignedPreKey != up1.SignedPreKey {
		t.Fatal("the signed prekey rotated within a week")
	}
	if n, _ := st.PreKeyCount(biz); n != 6 {
		t.Fatalf("%d prekeys stored, want 6", n)
	}
	// A user starts a session with one of them: it is deleted with the commit.
	receive := func(d *Device, user, id string, bundle *platform.DeviceBundle, now time.Time) error {
		pt, _ := json.Marshal(platform.Plaintext{ID: id, From: user, Type: "text", Text: &platform.TextBody{Body: "hi"}})
		ct, err := d.Write(biz, bundle, pt)
		if err != nil {
			t.Fatal(err)
		}
		b := db.NewBatch()
		var r Recipient
		copy(r[:], user)
		if _, err := st.Receive(b, biz, r, user, 1, ct.Type, ct.Body, now); err != nil {
			b.Close()
			st.Forget(biz, r)
			return err
		}
		return db.Commit(b, true)
	}
	d1, _ := NewDevice(1, 0)
	if err := receive(d1, "15550000001", "m1", bundleFrom(up1, 0), t0.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n, _ := st.PreKeyCount(biz); n != 5 {
		t.Fatalf("%d prekeys after one was consumed, want 5", n)
	}
	// The same prekey again (a second device given the same bundle): refused.
	d2, _ := NewDevice(1, 0)
	if err := receive(d2, "15550000002", "m2", bundleFrom(up1, 0), t0.Add(2*time.Hour)); err == nil {
		t.Fatal("a consumed prekey opened a second session")
	}
	// A week later the signed prekey rotates; a bundle with the previous one
	// still works for a week, then not.
	up3, err := st.NewPreKeys(biz, 2, t0.Add(SignedPreKeyRotation))
	if err != nil {
		t.Fatal(err)
	}
	if up3.SignedPreKey.ID != up1.SignedPreKey.ID+1 {
		t.Fatalf("signed prekey %d after a week, want %d", up3.SignedPreKey.ID, up1.SignedPreKey.ID+1)
	}
	d3, _ := NewDevice(1, 0)
	if err := receive(d3, "15550000003", "m3", bundleFrom(up1, 1), t0.Add(SignedPreKeyRotation+time.Hour)); err != nil {
		t.Fatalf("the previous signed prekey within its grace: %v", err)
	}
	d4, _ := NewDevice(1, 0)
	if err := receive(d4, "15550000004", "m4", bundleFrom(up1, 2), t0.Add(2*SignedPreKeyRotation+time.Hour)); err == nil {
		t.Fatal("the previous signed prekey was accepted past its grace")
	}
	d5, _ := NewDevice(1, 0)
	if err := receive(d5, "15550000005", "m5", bundleFrom(up3, 0), t0.Add(2*SignedPreKeyRotation+time.Hour)); err != nil {
		t.Fatalf("the current signed prekey: %v", err)
	}
}

// TestPreKeysReplicated: in cluster mode the prekeys one node makes reach
// another (ApplyPreKey) before NewPreKeys returns, a consumed one is
// deleted everywhere, an older state never replaces a newer one (its ids
// would be handed out again), and a record that is not one is refused.
func TestPreKeysReplicated(t *testing.T) {
	a, dba := newStore(t, t.TempDir())
	defer dba.Close()
	b, dbb := newStore(t, t.TempDir())
	defer dbb.Close()
	const biz = "15550001002"
	var order []string
	var deleted []string
	a.SetPreKeyReplicator(func(k string, sealed []byte) error {
		order = append(order, k)
		return b.ApplyPreKey(k, sealed)
	}, func(k string) { deleted = append(deleted, k); _ = b.ApplyPreKey(k, nil) })
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	up, err := a.NewPreKeys(biz, 3, t0)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := b.PreKeyCount(biz); n != 3 {
		t.Fatalf("the other node holds %d prekeys, want 3", n)
	}
	if order[len(order)-1] != "g."+biz {
		t.Fatalf("the state went before its prekeys: %v", order)
	}
	// b goes on from a's state: no id again.
	up2, err := b.NewPreKeys(biz, 2, t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if up2.PreKeys[0].ID <= up.PreKeys[2].ID || up2.SignedPreKey != up.SignedPreKey {
		t.Fatalf("the other node reuses ids or rotates: %v after %v", up2.PreKeys, up.PreKeys)
	}
	// An echo of a's older state does not take b back.
	old := order[len(order)-1]
	sealedOld, _, _ := dba.GetCopy(key('G', biz, nil, 0))
	if err := b.ApplyPreKey(old, sealedOld); err != nil {
		t.Fatal(err)
	}
	up3, err := b.NewPreKeys(biz, 1, t0.Add(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if up3.PreKeys[0].ID <= up2.PreKeys[1].ID {
		t.Fatalf("an older state replaced a newer one: id %d after %d", up3.PreKeys[0].ID, up2.PreKeys[1].ID)
	}
	// A consumed prekey leaves the other node too.
	wb := dba.NewBatch()
	a.deletePreKey(wb, biz, up.PreKeys[0].ID)
	if err := dba.Commit(wb, true); err != nil {
		t.Fatal(err)
	}
	if k, _ := b.preKey(biz, up.PreKeys[0].ID); k != nil || len(deleted) != 1 {
		t.Fatalf("a consumed prekey is still on the other node (%v)", deleted)
	}
	// Not a prekey record: refused, nothing written.
	for _, bad := range []struct {
		k string
		v []byte
	}{{"x.1", []byte("v")}, {"p." + biz + ".notanumber", nil}, {"p." + biz, nil}, {"g." + biz, []byte("not sealed")}, {"p." + biz + ".7", []byte("not sealed")}} {
		if err := b.ApplyPreKey(bad.k, bad.v); err == nil {
			t.Errorf("ApplyPreKey(%q) accepted", bad.k)
		}
	}
	// A replica that cannot be stored: NewPreKeys fails (nothing uploaded).
	a.SetPreKeyReplicator(func(string, []byte) error { return errors.New("NATS down") }, nil)
	if _, err := a.NewPreKeys(biz, 1, t0.Add(3*time.Minute)); err == nil {
		t.Fatal("prekeys handed out that the other nodes may not hold")
	}
}
