package kv

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"pgregory.net/rapid"
)

type entry struct {
	kind       pebble.InternalKeyKind
	key, value string
}

func entries(t interface{ Fatal(...any) }, b *pebble.Batch) []entry {
	var out []entry
	r := b.Reader()
	for {
		kind, k, v, ok, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return out
		}
		out = append(out, entry{kind, string(k), string(v)})
	}
}

// ApplyGrouped writes exactly the sources' writes, each kind (two-byte key
// prefix) together in order of first appearance, each kind's writes in
// source order — so two writes of one key keep their order and the batch
// means what the sources applied one after another mean — and a batch with
// a range deletion is applied as it is.
func TestApplyGroupedKeepsMeaning(t *testing.T) {
	db, err := Open(Options{Dir: t.TempDir(), MemTableBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rapid.Check(t, func(rt *rapid.T) {
		prefixes := []string{"eK", "eO", "sH", "qF", "x"}
		var srcs []*pebble.Batch
		for i := rapid.IntRange(1, 5).Draw(rt, "sources"); i > 0; i-- {
			b := db.NewBatch()
			for j := rapid.IntRange(0, 6).Draw(rt, "writes"); j > 0; j-- {
				k := []byte(rapid.SampledFrom(prefixes).Draw(rt, "prefix") + rapid.StringMatching(`[ab]{0,2}`).Draw(rt, "key"))
				switch rapid.IntRange(0, 9).Draw(rt, "op") {
				case 0:
					b.Delete(k, nil)
				case 1:
					b.SingleDelete(k, nil)
				case 2:
					if rapid.Bool().Draw(rt, "range") {
						b.DeleteRange(k, append(k, 0xff), nil)
						break
					}
					fallthrough
				default:
					b.Set(k, []byte(rapid.StringMatching(`[0-9]{1,3}`).Draw(rt, "value")), nil)
				}
			}
			srcs = append(srcs, b)
		}
		got, want := db.NewBatch(), db.NewBatch()
		if err := ApplyGrouped(got, srcs); err != nil {
			rt.Fatal(err)
		}
		for _, b := range srcs {
			want.Apply(b, nil)
		}
		g, w := entries(rt, got), entries(rt, want)
		if len(g) != len(w) {
			rt.Fatalf("%d writes, want %d", len(g), len(w))
		}
		ranged := false
		for _, e := range w {
			ranged = ranged || e.kind == pebble.InternalKeyKindRangeDelete
		}
		if ranged {
			if fmt.Sprint(g) != fmt.Sprint(w) {
				rt.Fatalf("with a range deletion: %v, want %v", g, w)
			}
			return
		}
		// The expected order: groups by first appearance, source order within.
		var order []string
		for _, e := range w {
			p := e.key[:min(2, len(e.key))]
			if !contains(order, p) {
				order = append(order, p)
			}
		}
		var grouped []entry
		for _, p := range order {
			for _, e := range w {
				if e.key[:min(2, len(e.key))] == p {
					grouped = append(grouped, e)
				}
			}
		}
		if fmt.Sprint(g) != fmt.Sprint(grouped) {
			rt.Fatalf("%v, want %v", g, grouped)
		}
		got.Close()
		want.Close()
	})
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// A committed grouped batch reads back as the sources applied in order.
func TestApplyGroupedCommits(t *testing.T) {
	db, err := Open(Options{Dir: t.TempDir(), MemTableBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var srcs []*pebble.Batch
	for i := 0; i < 50; i++ {
		b := db.NewBatch()
		b.Set([]byte(fmt.Sprintf("eK%03d", i)), []byte("kept"), nil)
		b.Set([]byte(fmt.Sprintf("eO%03d", i)), []byte("out"), nil)
		b.Set([]byte("sH-shared"), []byte(fmt.Sprint(i)), nil) // one key, many writes: the last wins
		b.SingleDelete([]byte(fmt.Sprintf("eO%03d", i-1)), nil)
		srcs = append(srcs, b)
	}
	all := db.NewBatch()
	if err := ApplyGrouped(all, srcs); err != nil {
		t.Fatal(err)
	}
	if err := db.Commit(all, true); err != nil {
		t.Fatal(err)
	}
	if v, ok, _ := db.GetCopy([]byte("sH-shared")); !ok || string(v) != "49" {
		t.Fatalf("shared key %q %v, want the last write", v, ok)
	}
	if _, ok, _ := db.GetCopy([]byte("eO010")); ok {
		t.Fatal("a deleted key survived")
	}
	if v, ok, _ := db.GetCopy([]byte("eO049")); !ok || !bytes.Equal(v, []byte("out")) {
		t.Fatal("the last outbox record is missing")
	}
}
