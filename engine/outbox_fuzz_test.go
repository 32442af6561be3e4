package engine

import (
	"bytes"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestSetOutboxEncodesInPlace: the record written straight into the batch is
// the same bytes as encode, under outboxKey.
func TestSetOutboxEncodesInPlace(t *testing.T) {
	db, err := pebble.Open("", &pebble.Options{FS: vfs.NewMem()})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	b := db.NewBatch()
	obs := []*outbox{
		{},
		{devices: []deviceState{{device: 1, accepted: true, typ: "pkmsg", ct: bytes.Repeat([]byte{7}, 300)}, {device: 2, resets: 2}}},
	}
	for i, o := range obs {
		b.Set([]byte("a"), []byte("neighbour"), nil) // the deferred op lands mid-batch
		setOutbox(b, uint64(i+1), o)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		t.Fatal(err)
	}
	for i, o := range obs {
		v, c, err := db.Get(outboxKey(uint64(i + 1)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(v, o.encode()) {
			t.Fatalf("outbox %d: %x, want %x", i, v, o.encode())
		}
		c.Close()
	}
}

func FuzzDecodeOutbox(f *testing.F) {
	o := &outbox{devices: []deviceState{{device: 1, accepted: true, typ: "pkmsg", ct: []byte("abc")}, {device: 2, resets: 2}}}
	f.Add(o.encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := decodeOutbox(b)
		if err != nil {
			return
		}
		if o.size() != len(o.encode()) {
			t.Fatalf("size %d, encoding %d bytes", o.size(), len(o.encode()))
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
