package kv

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// fsyncFaultDB opens a DB whose fsyncs fail while the toggle is on.
func fsyncFaultDB(t *testing.T) (*DB, *errorfs.Toggle) {
	t.Helper()
	toggle := &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData || op.Kind == errorfs.OpFileSyncTo {
			return errorfs.ErrInjected
		}
		return nil
	})}
	opts := quiet()
	opts.Dir, opts.FS = t.TempDir(), errorfs.Wrap(vfs.Default, toggle)
	db, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, toggle
}

// TestCommitReuse: a reused batch commits again with only its new writes; a
// commit that fails on fsync says so (ErrStorage, not reused), and the
// poisoned handle fails a reused batch fast.
func TestCommitReuse(t *testing.T) {
	db, toggle := fsyncFaultDB(t)

	b := db.NewBatch()
	b.Set([]byte("a"), []byte("1"), nil)
	if reused, err := db.CommitReuse(b, true); err != nil || !reused {
		t.Fatalf("first commit: reused %v, %v", reused, err)
	}
	if !b.Empty() {
		t.Fatal("the batch was not reset")
	}
	b.Set([]byte("b"), []byte("2"), nil)
	if reused, err := db.CommitReuse(b, true); err != nil || !reused {
		t.Fatalf("second commit: reused %v, %v", reused, err)
	}
	for k, want := range map[string]string{"a": "1", "b": "2"} {
		if v, ok, err := db.GetCopy([]byte(k)); err != nil || !ok || string(v) != want {
			t.Fatalf("%s = %q %v %v, want %q", k, v, ok, err, want)
		}
	}

	toggle.On()
	b.Set([]byte("c"), []byte("3"), nil)
	reused, err := db.CommitReuse(b, true)
	if !errors.Is(err, ErrStorage) || reused {
		t.Fatalf("failed fsync: reused %v, %v; want ErrStorage, not reused", reused, err)
	}
	// Poisoned: a reused batch fails fast too.
	b2 := db.NewBatch()
	b2.Set([]byte("d"), []byte("4"), nil)
	if reused, err := db.CommitReuse(b2, true); !errors.Is(err, ErrStorage) || reused {
		t.Fatalf("poisoned handle: reused %v, %v", reused, err)
	}
	toggle.Off()
}

// TestBatchPool: every batch Get hands out is empty, whether kept from an
// earlier commit, given back written but uncommitted (Put), too large to
// keep, or new, so each commit writes exactly its own keys; a commit on a poisoned handle fails without panic and the
// pool goes on handing out empty batches.
func TestBatchPool(t *testing.T) {
	db, toggle := fsyncFaultDB(t)
	p := NewBatchPool(db, 1<<10)
	big := bytes.Repeat([]byte{'v'}, 2<<10) // past what the pool keeps
	dropped := 0
	for i := 0; i < 200; i++ {
		b := p.Get(64)
		if !b.Empty() {
			t.Fatalf("round %d: Get handed out a batch holding %d bytes", i, len(b.Repr()))
		}
		if i%7 == 3 {
			p.PutUnused(b)
			continue
		}
		v := []byte(fmt.Sprint(i))
		if i%5 == 0 {
			v = big
		}
		b.Set([]byte(fmt.Sprintf("k%03d", i)), v, nil)
		if i%11 == 6 { // written, then given back uncommitted (small or large)
			p.Put(b)
			dropped++
			continue
		}
		if err := p.Commit(b, i%2 == 0); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	it, _ := db.NewIter(nil)
	for it.First(); it.Valid(); it.Next() {
		n++
	}
	it.Close()
	if want := 200 - 200/7 - 1 - dropped; n != want { // rounds 3, 10, ... wrote nothing
		t.Fatalf("%d keys written, want %d", n, want)
	}

	toggle.On()
	b := p.Get(0)
	b.Set([]byte("lost"), []byte("x"), nil)
	if err := p.Commit(b, true); !errors.Is(err, ErrStorage) {
		t.Fatalf("failed fsync: %v, want ErrStorage", err)
	}
	for i := 0; i < 3; i++ {
		b := p.Get(0)
		if !b.Empty() {
			t.Fatal("after a failed commit Get handed out a non-empty batch")
		}
		b.Set([]byte("after"), []byte("x"), nil)
		if err := p.Commit(b, false); !errors.Is(err, ErrStorage) {
			t.Fatalf("poisoned handle: %v, want ErrStorage", err)
		}
	}
	toggle.Off()
}
