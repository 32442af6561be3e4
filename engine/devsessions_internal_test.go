package engine

import (
	"testing"

	"go.mau.fi/libsignal/state/record"
	"pgregory.net/rapid"
)

// TestDevSessionsIsAMap: devSessions (four devices inline, a slice beyond)
// answers as a map of device to session does, through any sequence of sets
// and deletes, across the inline/slice boundary both ways.
func TestDevSessionsIsAMap(t *testing.T) {
	recs := make([]*record.Session, 8)
	for i := range recs {
		recs[i] = &record.Session{}
	}
	rapid.Check(t, func(t *rapid.T) {
		var s devSessions
		model := map[uint32]*record.Session{}
		for range rapid.IntRange(0, 40).Draw(t, "ops") {
			d := rapid.Uint32Range(1, 9).Draw(t, "device")
			if rapid.Bool().Draw(t, "delete") {
				s.del(d)
				delete(model, d)
			} else {
				r := recs[rapid.IntRange(0, len(recs)-1).Draw(t, "rec")]
				s.set(d, r)
				model[d] = r
			}
			for d := uint32(0); d <= 10; d++ {
				if got, want := s.get(d), model[d]; got != want {
					t.Fatalf("get(%d) = %p, want %p", d, got, want)
				}
			}
			if len(s.list()) != len(model) {
				t.Fatalf("%d sessions listed, want %d", len(s.list()), len(model))
			}
		}
	})
}
