package queue

import "testing"

// FuzzDecodeRecord: a record read back from disk (possibly corrupt), in its R
// form or its F form (recipient first), decodes or errors, never panics.
func FuzzDecodeRecord(f *testing.F) {
	q := &Queue{sealer: testSealer(nil)}
	m := Message{ID: "01H", Payload: []byte("p")}
	rec := q.encodeRecord(nil, &m, nil)
	f.Add(rec)
	var r Recipient
	f.Add(append(append([]byte{freshVer}, r[:]...), rec...))
	f.Fuzz(func(t *testing.T, v []byte) {
		_, _, _ = q.decodeRecord(v, true)
		if _, inner, err := splitFresh(v); err == nil {
			_, _, _ = q.decodeRecord(inner, true)
		}
	})
}
