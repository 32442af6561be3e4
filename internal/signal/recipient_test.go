package signal

import (
	"bytes"
	"fmt"
	"maps"
	"testing"

	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/state/record"

	"github.com/heraldhq/herald/internal/platform"
)

// twin returns a copy of d that always takes the library's full decrypt path.
func twin(t *testing.T, d *Device) *Device {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	c := &Device{ID: d.ID, identity: d.identity, regID: d.regID, signed: d.signed, preKeys: maps.Clone(d.preKeys),
		nextPreKey: d.nextPreKey, preKeyBudget: d.preKeyBudget, sessions: map[string]*record.Session{},
		identities: maps.Clone(d.identities), slow: true}
	for k, r := range d.sessions {
		cp, err := record.NewSessionFromBytes(r.Serialize(), Serializer.Session, Serializer.State)
		if err != nil {
			t.Fatal(err)
		}
		c.sessions[k] = cp
	}
	return c
}

func sessionBytes(d *Device, from string) []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.sessions[protocol.NewSignalAddress(from, 1).String()]
	if r == nil {
		return nil
	}
	return r.Serialize()
}

// TestChainStepMatchesLibrary feeds the same envelopes to a device on the
// fast path and to its twin on the library's full path: in order, with gaps,
// late (skipped keys), duplicated, tampered, as plain SignalMessages, and on a
// second session that replaces the first. Plaintexts, errors and the
// serialized session must come out identical after every envelope.
func TestChainStepMatchesLibrary(t *testing.T) {
	id, _ := NewIdentity("15550001111")
	fast, _ := NewDevice(1, 10)
	first := fast.Bundle()
	var slow *Device
	bd, _ := DecodeBundle("1555", first)
	built, _ := BuildSession(id, bd, nil, false)
	enc := func(rec *record.Session, n int, tag string) []Ciphertext {
		var pts [][]byte
		for i := 0; i < n; i++ {
			pts = append(pts, []byte(fmt.Sprintf("%s message %d", tag, i)))
		}
		cts, err := EncryptBatch(rec, pts)
		if err != nil {
			t.Fatal(err)
		}
		return cts
	}
	feed := func(what string, c Ciphertext, wantOK bool) {
		t.Helper()
		n := fast.fastSteps
		pf, ef := fast.Decrypt(id.Phone, c.Type, c.Body)
		t.Logf("%s: fast path %v", what, fast.fastSteps > n)
		ps, es := slow.Decrypt(id.Phone, c.Type, c.Body)
		if (ef == nil) != wantOK {
			t.Fatalf("%s: fast path error %v, want ok=%v", what, ef, wantOK)
		}
		if !bytes.Equal(pf, ps) || fmt.Sprint(ef) != fmt.Sprint(es) {
			t.Fatalf("%s: fast (%q, %v) != library (%q, %v)", what, pf, ef, ps, es)
		}
		after := sessionBytes(fast, id.Phone)
		if !bytes.Equal(after, sessionBytes(slow, id.Phone)) {
			t.Fatalf("%s: sessions differ after decrypt", what)
		}
	}
	// A message that starts a session runs X3DH and a DH ratchet step with a
	// fresh random key, so the two devices' states would differ: only the fast
	// device takes it (on the library's path: no session yet), then the twin is copied.
	start := func(what string, c Ciphertext) {
		t.Helper()
		if _, err := fast.Decrypt(id.Phone, c.Type, c.Body); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		slow = twin(t, fast)
	}
	a := enc(built.Record, 8, "a")
	start("first pkmsg (X3DH)", a[0])
	feed("second pkmsg", a[1], true)
	feed("skip two", a[4], true)
	feed("late, from the skipped keys", a[2], true)
	feed("duplicate", a[4], false)
	feed("next", a[5], true)

	built.Record.SessionState().ClearUnackPreKeyMessage() // as after a reply: plain SignalMessages
	m := enc(built.Record, 3, "m")
	if m[0].Type != platform.TypeMsg {
		t.Fatalf("want a plain SignalMessage, got %s", m[0].Type)
	}
	bad := Ciphertext{Type: m[0].Type, Body: bytes.Clone(m[0].Body)}
	bad.Body[len(bad.Body)-1] ^= 1 // a SignalMessage ends with its 8-byte MAC
	feed("tampered MAC", bad, false)
	feed("msg", m[0], true)
	feed("msg, gap", m[2], true)
	feed("msg, late", m[1], true)

	bd2, _ := DecodeBundle("1555", fast.Bundle()) // the sender rebuilds (e.g. after a reset)
	rebuilt, _ := BuildSession(id, bd2, nil, false)
	b := enc(rebuilt.Record, 2, "b")
	start("new session (X3DH)", b[0])
	feed("new session, second", b[1], true)
	// A message of the replaced session: the library tries the current state
	// (a DH ratchet step with a random key, undone), then promotes the old one.
	start("old session's message (previous state)", a[6])
	feed("old session's skipped key", a[7], true)
	feed("old session, new message", enc(built.Record, 1, "a2")[0], true)
	if fast.fastSteps != 7 || slow.fastSteps != 0 {
		t.Fatalf("fast path took %d decrypts (want 7), the twin %d (want 0)", fast.fastSteps, slow.fastSteps)
	}
}
