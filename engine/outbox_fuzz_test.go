package engine

import (
	"bytes"
	"testing"
)

func FuzzDecodeOutbox(f *testing.F) {
	o := &outbox{devices: []deviceState{{device: 1, accepted: true, typ: "pkmsg", ct: []byte("abc")}, {device: 2, resets: 2}}}
	f.Add(o.encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := decodeOutbox(b)
		if err != nil {
			return
		}
		again, err := decodeOutbox(o.encode())
		if err != nil || len(again.devices) != len(o.devices) {
			t.Fatal("re-encode mismatch")
		}
		for i := range o.devices {
			if !bytes.Equal(again.devices[i].ct, o.devices[i].ct) || again.devices[i].typ != o.devices[i].typ {
				t.Fatal("re-encode mismatch")
			}
		}
	})
}
