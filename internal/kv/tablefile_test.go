package kv

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// Tables are written in large writes, and what they hold reads back after
// flushes, a compaction and a reopen: the gathering loses nothing.
func TestTableWritesAreGathered(t *testing.T) {
	var writes, written atomic.Int64
	fs := errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Kind == errorfs.OpFileWrite && strings.HasSuffix(op.Path, ".sst") {
			writes.Add(1)
		}
		return nil
	}))
	opts := quiet()
	opts.Dir, opts.FS = t.TempDir(), fs
	db, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	put(t, db, "a", 0, 20000)
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	put(t, db, "b", 0, 20000)
	if err := db.Compact(t.Context(), []byte("k"), []byte("l"), true); err != nil {
		t.Fatal(err)
	}
	m := db.Metrics()
	for _, l := range m.Levels {
		written.Add(int64(l.TableBytesFlushed + l.TableBytesCompacted))
	}
	// Without gathering: one write per ~4 KiB block.
	if n, perBlock := writes.Load(), written.Load()/4096; n*8 > perBlock {
		t.Fatalf("%d writes for %d table bytes (~%d blocks)", n, written.Load(), perBlock)
	}
	db.Close()
	if db, err = Open(opts); err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, gen := range []string{"a", "b"} {
		for _, i := range []int{0, 9999, 19999} {
			v, ok, err := db.GetCopy([]byte(fmt.Sprintf("k-%s-%06d", gen, i)))
			if err != nil || !ok || !bytes.HasPrefix(v, needle(gen, i)) {
				t.Fatalf("%s %d after reopen: %q %v %v", gen, i, v, ok, err)
			}
		}
	}
}

// A write-out that fails fails every later call, and Close reports it: a
// table that is not whole is never taken for one.
func TestTableWriteErrorSticks(t *testing.T) {
	fail := false
	fs := errorfs.Wrap(vfs.NewMem(), errorfs.InjectorFunc(func(op errorfs.Op) error {
		if fail && op.Kind == errorfs.OpFileWrite {
			return errorfs.ErrInjected
		}
		return nil
	}))
	f, err := newWALFS(fs).Create("000001.sst", vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(make([]byte, 1000)); err != nil { // held
		t.Fatal(err)
	}
	if st, err := f.Stat(); err != nil || st.Size() != 1000 {
		t.Fatalf("Stat does not see what is held: %v %v", st, err)
	}
	fail = true
	if _, err := f.Write(make([]byte, 1000)); err != nil { // held again
		t.Fatal(err)
	}
	if err := f.Sync(); !errors.Is(err, errorfs.ErrInjected) {
		t.Fatalf("Sync after a failed write-out: %v", err)
	}
	fail = false
	if _, err := f.Write(make([]byte, 10)); !errors.Is(err, errorfs.ErrInjected) {
		t.Fatalf("a write after a failed write-out: %v", err)
	}
	if err := f.Close(); !errors.Is(err, errorfs.ErrInjected) {
		t.Fatalf("Close after a failed write-out: %v", err)
	}
}
