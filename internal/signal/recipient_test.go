package signal

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	mathrand "math/rand/v2"
	"testing"

	"go.mau.fi/libsignal/ecc"
	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/session"
	"go.mau.fi/libsignal/state/record"

	"google.golang.org/protobuf/encoding/protowire"

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

// TestAcceptSessionMatchesLibrary: a device opening a session on its own path
// (acceptSession: X3DH and the first ratchet step with our X25519) ends where
// the library's path ends. The X3DH state is compared byte for byte with the
// library's Builder.Process on a twin; the ratchet step's random new key
// cannot match, so its receiving chain and counters are compared and its
// sending chain is proven by a reply the sender decrypts with the library.
// Run with and without a one-time prekey, and for a second session that
// replaces the first.
func TestAcceptSessionMatchesLibrary(t *testing.T) {
	for _, oneTime := range []bool{true, false} {
		t.Run(fmt.Sprintf("one-time-prekey=%v", oneTime), func(t *testing.T) {
			budget := 10
			if !oneTime {
				budget = 0
			}
			id, _ := NewIdentity("15550001111")
			fast, _ := NewDevice(1, budget)
			for round := 0; round < 2; round++ {
				wire := fast.Bundle()
				slow := twin(t, fast)
				bd, _ := DecodeBundle("1555", wire)
				built, _ := BuildSession(id, bd, nil, false)
				cts, _ := EncryptBatch(built.Record, [][]byte{[]byte("hello"), []byte("again")})
				m, err := protocol.NewPreKeySignalMessageFromBytes(cts[0].Body, Serializer.PreKeySignalMessage, Serializer.SignalMessage)
				if err != nil {
					t.Fatal(err)
				}
				addr := protocol.NewSignalAddress(id.Phone, 1)

				// X3DH: the library's Builder.Process on the twin's record vs x3dhReceive.
				libRec, ourRec := NewSessionRecord(), NewSessionRecord()
				if old := slow.sessions[addr.String()]; old != nil {
					libRec, ourRec = cloneSession(t, old), cloneSession(t, old)
					ourRec.ArchiveCurrentState()
				}
				ds := &deviceStore{d: twin(t, slow)}
				if _, err := session.NewBuilder(ds, ds, ds, ds, addr, Serializer).Process(context.Background(), libRec, m); err != nil {
					t.Fatal(err)
				}
				var otk *privKey
				if oneTime {
					otk = fast.preKeyDH[m.PreKeyID().Value]
				}
				if _, err := fast.x3dhReceive(ourRec.SessionState(), m, otk); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(libRec.Serialize(), ourRec.Serialize()) {
					t.Fatalf("round %d: X3DH states differ:\nlibrary %s\nours    %s", round, libRec.Serialize(), ourRec.Serialize())
				}

				// The whole first decrypt, both paths.
				before := fast.fastSessions
				pf, ef := fast.Decrypt(id.Phone, cts[0].Type, cts[0].Body)
				ps, es := slow.Decrypt(id.Phone, cts[0].Type, cts[0].Body)
				if ef != nil || es != nil || string(pf) != "hello" || string(ps) != "hello" {
					t.Fatalf("round %d: fast %q %v, library %q %v", round, pf, ef, ps, es)
				}
				if fast.fastSessions != before+1 {
					t.Fatal("the session was not opened by acceptSession")
				}
				a, b := fast.sessions[addr.String()].SessionState(), slow.sessions[addr.String()].SessionState()
				their := m.WhisperMessage().SenderRatchetKey()
				ra, rb := a.ReceiverChainKey(their), b.ReceiverChainKey(their)
				if ra == nil || rb == nil || !bytes.Equal(ra.Key(), rb.Key()) || ra.Index() != rb.Index() ||
					a.PreviousCounter() != b.PreviousCounter() || !bytes.Equal(a.SenderBaseKey(), b.SenderBaseKey()) ||
					len(fast.sessions[addr.String()].PreviousSessionStates()) != len(slow.sessions[addr.String()].PreviousSessionStates()) {
					t.Fatalf("round %d: ratchet step differs from the library's", round)
				}
				if len(fast.preKeys) != len(slow.preKeys) || len(fast.preKeyDH) != len(fast.preKeys) {
					t.Fatalf("round %d: one-time prekeys left: %d, library %d", round, len(fast.preKeys), len(slow.preKeys))
				}
				if got, err := fast.Decrypt(id.Phone, cts[1].Type, cts[1].Body); err != nil || string(got) != "again" {
					t.Fatalf("round %d: second message: %v", round, err)
				}

				// The new sending chain: a reply decrypts at the sender (library).
				reply, err := EncryptBatch(fast.sessions[addr.String()], [][]byte{[]byte("reply")})
				if err != nil || reply[0].Type != platform.TypeMsg {
					t.Fatalf("reply: %v %v", err, reply)
				}
				sm, err := protocol.NewSignalMessageFromBytes(reply[0].Body, Serializer.SignalMessage)
				if err != nil {
					t.Fatal(err)
				}
				st := &oneSession{id: id, rec: built.Record}
				c := session.NewCipher(session.NewBuilder(st, st, st, st, protocol.NewSignalAddress("1555", 1), Serializer), protocol.NewSignalAddress("1555", 1))
				if got, err := c.Decrypt(context.Background(), sm); err != nil || string(got) != "reply" {
					t.Fatalf("round %d: the sender cannot decrypt the device's reply: %v", round, err)
				}
			}
		})
	}
}

// preKeySeeds are PreKeySignalMessages as the sender writes them: with and
// without a one-time prekey, short and long plaintexts.
func preKeySeeds(t testing.TB) [][]byte {
	id, _ := NewIdentity("15550001111")
	var out [][]byte
	for _, budget := range []int{10, 0} {
		dev, _ := NewDevice(1, budget)
		b, _ := DecodeBundle("1555", dev.Bundle())
		built, err := BuildSession(id, b, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		cts, _ := EncryptBatch(built.Record, [][]byte{nil, bytes.Repeat([]byte("x"), 300)})
		for _, c := range cts {
			if c.Type != platform.TypePreKey {
				t.Fatalf("want pkmsg, got %s", c.Type)
			}
			out = append(out, c.Body)
		}
	}
	return out
}

// checkPreKeyAgreement: if parsePreKeyMessage accepts body, the library does,
// with the same values.
func checkPreKeyAgreement(t testing.TB, body []byte) bool {
	t.Helper()
	v, base, ik, inner, ok := parsePreKeyMessage(body)
	if !ok {
		return false
	}
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		st, derr := Serializer.PreKeySignalMessage.Deserialize(body)
		if derr != nil {
			err = derr
			return
		}
		if st.Version != v || !bytes.Equal(st.BaseKey, base) || !bytes.Equal(st.IdentityKey, ik) || !bytes.Equal(st.Message, inner) {
			err = fmt.Errorf("fields differ: library v%d base %x ik %x msg %d bytes", st.Version, st.BaseKey, st.IdentityKey, len(st.Message))
			return
		}
		_, err = protocol.NewPreKeySignalMessageFromStruct(st, Serializer.PreKeySignalMessage, Serializer.SignalMessage)
	}()
	if err != nil && keysDecode(base, ik) && innerParses(inner) {
		t.Fatalf("fast parse accepted what the library refuses: %v (%x)", err, body)
	}
	return true
}

// innerParses: the library parses the inner SignalMessage. preKeyStep parses
// it with the library too (and stops when that fails), so a refusal there is
// the library's on both paths.
func innerParses(inner []byte) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	_, err := protocol.NewSignalMessageFromBytes(inner, Serializer.SignalMessage)
	return err == nil
}

// keysDecode: both keys decode. preKeyStep decodes them itself (and compares
// the base key with the session's) before it uses a message, so a library
// refusal over a bad key is not a disagreement.
func keysDecode(base, ik []byte) bool {
	if len(base) == 0 || len(ik) == 0 {
		return false // ecc.DecodePoint indexes the type byte without a check (fuzz found an empty key)
	}
	_, e1 := ecc.DecodePoint(base, 0)
	_, e2 := ecc.DecodePoint(ik, 0)
	return e1 == nil && e2 == nil
}

// TestParsePreKeyMessageAgreesWithLibrary: real messages parse (and the fast
// path takes them: fastPreKeys counts), non-canonical variants are refused
// (the caller then uses the library), and random corruptions never make the
// fast parser accept what the library refuses.
func TestParsePreKeyMessageAgreesWithLibrary(t *testing.T) {
	seeds := preKeySeeds(t)
	for i, pk := range seeds {
		if !checkPreKeyAgreement(t, pk) {
			t.Fatalf("seed %d: the sender's own message refused", i)
		}
	}
	pk := seeds[0]
	// Non-canonical: an unknown field appended, field 2 repeated, a field out of order.
	tag := func(num protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
	}
	for name, body := range map[string][]byte{
		"unknown field": append(bytes.Clone(pk), tag(9, []byte("x"))...),
		"repeated base": append(bytes.Clone(pk), tag(2, make([]byte, 33))...),
		"reordered":     append(append([]byte{pk[0]}, tag(3, make([]byte, 33))...), pk[1:]...),
		"truncated":     pk[:len(pk)-3],
		"empty":         nil,
	} {
		if _, _, _, _, ok := parsePreKeyMessage(body); ok {
			t.Fatalf("%s: accepted", name)
		}
	}
	// Random corruptions of real messages.
	rng := mathrand.New(mathrand.NewPCG(1, 2))
	accepted := 0
	for i := 0; i < 5000; i++ {
		b := bytes.Clone(seeds[i%len(seeds)])
		for k := 0; k <= i%3; k++ {
			b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255))
		}
		if checkPreKeyAgreement(t, b) {
			accepted++
		}
	}
	t.Logf("%d of 5000 corrupted messages still canonical (all agreed with the library)", accepted)

	// End to end on a device: a second message on the session goes through preKeyStep.
	id, _ := NewIdentity("15550001111")
	dev, _ := NewDevice(1, 10)
	b, _ := DecodeBundle("1555", dev.Bundle())
	built, _ := BuildSession(id, b, nil, false)
	cts, _ := EncryptBatch(built.Record, [][]byte{[]byte("one"), []byte("two"), []byte("three")})
	for i, c := range cts {
		pt, err := dev.Decrypt(id.Phone, c.Type, c.Body)
		if err != nil || string(pt) != []string{"one", "two", "three"}[i] {
			t.Fatalf("message %d: %q %v", i, pt, err)
		}
	}
	if dev.fastPreKeys != 2 {
		t.Fatalf("preKeyStep took %d messages, want 2 (the first opens the session)", dev.fastPreKeys)
	}
}
