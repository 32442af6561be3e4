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
