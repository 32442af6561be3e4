package queue

import "testing"

// FuzzDecodeRecord: a record read back from disk (possibly corrupt) decodes or
// errors, never panics.
func FuzzDecodeRecord(f *testing.F) {
	q := &Queue{sealer: testSealer(nil)}
	m := Message{ID: "01H", Payload: []byte("p")}
	f.Add(q.encodeRecord(nil, &m, nil))
	f.Fuzz(func(t *testing.T, v []byte) {
		_, _, _ = q.decodeRecord(v, true)
	})
}
