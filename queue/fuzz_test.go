package queue

import (
	"bytes"
	"testing"
)

// FuzzDecodeRecord: a record read back from disk (possibly corrupt), in its R
// form or its F form (recipient first), decodes or errors, never panics; a
// record that decodes encodes back to the same bytes (with its sealed
// payload as it was), and its payload opens to what was sealed.
func FuzzDecodeRecord(f *testing.F) {
	q := &Queue{sealer: testSealer(nil)}
	m := Message{ID: "01H", Payload: []byte("p")}
	rec := q.encodeRecord(nil, &m, nil)
	f.Add(rec)
	var r Recipient
	f.Add(append(append([]byte{freshVer}, r[:]...), rec...))
	f.Fuzz(func(t *testing.T, v []byte) {
		roundTrip := func(v []byte) {
			m, sealed, err := q.decodeRecord(v, false)
			if err != nil {
				return
			}
			if back := q.encodeRecord(nil, &m, sealed); !bytes.Equal(back, v) {
				t.Fatalf("decode then encode changed the record:\n%x\n%x", v, back)
			}
			if m2, _, err := q.decodeRecord(v, true); err == nil {
				again := q.encodeRecord(nil, &m2, nil)
				if !bytes.Equal(again[:22+len(m2.ID)], v[:22+len(m2.ID)]) {
					t.Fatal("the header of a re-sealed record differs")
				}
				if p, err := q.sealer.Open(again[22+len(m2.ID):]); err != nil || !bytes.Equal(p, m2.Payload) {
					t.Fatal("a re-sealed payload does not open to the same bytes")
				}
			}
		}
		roundTrip(v)
		if _, inner, err := splitFresh(v); err == nil {
			roundTrip(inner)
		}
	})
}
