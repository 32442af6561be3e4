package queue

import (
	"bytes"
	"testing"
)

// FuzzDecodeRecord: a record read back from disk (possibly corrupt), in its R
// form or its F form (recipient first), decodes or errors, never panics; a
// record that decodes encodes back to the same bytes (with its sealed
// payload as it was), and its payload opens to what was sealed. Records with
// and without an owner.
func FuzzDecodeRecord(f *testing.F) {
	q := &Queue{sealer: testSealer(nil)}
	m := Message{ID: "01H", Payload: []byte("p")}
	rec := q.encodeRecord(nil, &m, nil)
	f.Add(rec)
	var r Recipient
	f.Add(append(append([]byte{freshVer}, r[:]...), rec...))
	m.Owner = "biz_0123456789abcdef" // version 2: with an owner
	f.Add(q.encodeRecord(nil, &m, nil))
	f.Fuzz(func(t *testing.T, v []byte) {
		roundTrip := func(v []byte) {
			m, sealed, err := q.decodeRecord(v, false)
			if err != nil {
				return
			}
			if back := q.encodeRecord(nil, &m, sealed); !bytes.Equal(back, v) {
				t.Fatalf("decode then encode changed the record:\n%x\n%x", v, back)
			}
			if m2, sealed2, err := q.decodeRecord(v, true); err == nil {
				again := q.encodeRecord(nil, &m2, nil)
				hdr := len(v) - len(sealed2)
				if !bytes.Equal(again[:hdr], v[:hdr]) {
					t.Fatal("the header of a re-sealed record differs")
				}
				if p, err := q.sealer.Open(again[hdr:]); err != nil || !bytes.Equal(p, m2.Payload) {
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
