package kv

import (
	"errors"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
)

// TestCommitReuse: a reused batch commits again with only its new writes; a
// commit that fails on fsync says so (ErrStorage, not reused), and the
// poisoned handle fails a reused batch fast.
func TestCommitReuse(t *testing.T) {
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
	defer db.Close()

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
