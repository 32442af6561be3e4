package heraldtype

import (
	"testing"
	"time"
)

func TestPayloadRoundTrip(t *testing.T) {
	p := Payload{BusinessID: "b", PhoneNumberID: "p", From: "1555", To: "1666", CampaignID: "c", Body: "héllo", TS: 42, ResetDevice: 3}
	got, err := DecodePayload(p.Encode(nil))
	if err != nil || got != p {
		t.Fatalf("%v %+v", err, got)
	}
	enc := p.Encode(nil)
	for i := 0; i < len(enc); i++ {
		DecodePayload(enc[:i]) // never panics
	}
	if _, err := DecodePayload(enc[:len(enc)-3]); err == nil {
		t.Fatal("truncated payload decoded")
	}
}

func TestIDsIncreaseAndAreURLSafe(t *testing.T) {
	var g IDGen
	now := time.Now()
	prev := ""
	for i := 0; i < 10000; i++ {
		ts := now
		if i%100 == 0 {
			ts = now.Add(time.Duration(i) * time.Millisecond)
		}
		id := g.New(ts)
		if len(id) != 26 || id <= prev {
			t.Fatalf("id %d: %q after %q", i, id, prev)
		}
		for _, c := range id {
			if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z') {
				t.Fatalf("not URL-safe: %q", id)
			}
		}
		prev = id
	}
	// A clock step backwards must not make ids go backwards.
	if id := g.New(now.Add(-time.Hour)); id <= prev {
		t.Fatalf("id went backwards with the clock: %s <= %s", id, prev)
	}
}

func TestIDForIsStableAndIncreases(t *testing.T) {
	ms := time.Now().UnixMilli()
	seed := NewIDSeed()
	prev := ""
	for n := uint64(1); n <= 5000; n++ {
		id := IDFor(ms, seed, n)
		if len(id) != 26 || id <= prev {
			t.Fatalf("line %d: %q after %q", n, id, prev)
		}
		if again := IDFor(ms, seed, n); again != id {
			t.Fatalf("line %d: %q, then %q", n, id, again)
		}
		prev = id
	}
	// A carry out of the low 64 bits moves into the high 16.
	s := IDSeed{0x00, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	if a, b := IDFor(ms, s, 0), IDFor(ms, s, 1); b <= a {
		t.Fatalf("carry: %s then %s", a, b)
	}
	if IDFor(ms, NewIDSeed(), 1) == IDFor(ms, seed, 1) {
		t.Fatal("two seeds made the same id")
	}
	var g IDGen
	if g.New(time.UnixMilli(ms))[:9] != IDFor(ms, seed, 1)[:9] { // 45 of the 48 bits of ms
		t.Fatal("the time part differs from IDGen's")
	}
}

func FuzzDecodePayload(f *testing.F) {
	p := Payload{From: "1", To: "2", Body: "x"}
	f.Add(p.Encode(nil))
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := DecodePayload(b); err == nil {
			if q, err := DecodePayload(p.Encode(nil)); err != nil || q != p {
				t.Fatalf("re-encode mismatch")
			}
		}
	})
}
