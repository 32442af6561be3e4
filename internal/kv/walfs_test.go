package kv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// countingFS counts Pebble's WAL reuses (under walFS).
type countingFS struct {
	vfs.FS
	reused atomic.Int64
}

func (c *countingFS) ReuseForWrite(oldname, newname string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	c.reused.Add(1)
	return c.FS.ReuseForWrite(oldname, newname, cat)
}

func quiet() Options { return Options{MemTableBytes: 1 << 20, Logger: nil} }

func needle(gen string, i int) []byte { return []byte(fmt.Sprintf("NEEDLE-%s-%06d", gen, i)) }

func put(t *testing.T, db *DB, gen string, from, n int) {
	t.Helper()
	for i := from; i < from+n; i += 100 {
		b := db.NewBatch()
		for j := i; j < min(i+100, from+n); j++ {
			v := append(needle(gen, j), bytes.Repeat([]byte{'.'}, 200)...)
			b.Set([]byte(fmt.Sprintf("k-%s-%06d", gen, j)), v, nil)
		}
		if err := db.Commit(b, true); err != nil {
			t.Fatal(err)
		}
	}
}

// walText is every WAL file's content as Pebble reads it through walFS (each
// generation decrypted with the key its header holds now), and the raw bytes.
func walText(t *testing.T, dir string) (plain, raw map[string][]byte) {
	t.Helper()
	plain, raw = map[string][]byte{}, map[string][]byte{}
	names, _ := os.ReadDir(dir)
	fs := newWALFS(vfs.Default)
	for _, e := range names {
		if !isWAL(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		raw[e.Name()] = b
		f, err := fs.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		all, _ := io.ReadAll(f)
		f.Close()
		plain[e.Name()] = all
	}
	return plain, raw
}

func countNeedles(files map[string][]byte, gen string) int {
	n := 0
	for _, b := range files {
		n += bytes.Count(b, []byte("NEEDLE-"+gen+"-"))
	}
	return n
}

// TestRecycledWALLeavesNothingReadable: WAL files are recycled, never hold a
// record in the clear, a reused file's stale tail does not decrypt under its
// new key, and Purge shreds the key of every obsolete WAL — while the data
// stays intact across a reopen.
func TestRecycledWALLeavesNothingReadable(t *testing.T) {
	dir := t.TempDir()
	cfs := &countingFS{FS: vfs.Default}
	o := quiet()
	o.Dir, o.FS = dir, cfs
	db, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { db.Close() }()

	// Generation A, then a flush: A's WALs are obsolete (kept for reuse).
	put(t, db, "A", 0, 3000)
	plain, raw := walText(t, dir)
	if countNeedles(raw, "A") != 0 {
		t.Fatal("a WAL holds records in the clear")
	}
	if countNeedles(plain, "A") == 0 {
		t.Fatal("decrypting the WALs finds nothing: the check cannot fail")
	}
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	// More writes and flushes until Pebble has reused A's files.
	for i := 0; cfs.reused.Load() < 3; i++ {
		if i > 50 {
			t.Fatalf("Pebble reused %d WAL files: recycling is off", cfs.reused.Load())
		}
		put(t, db, fmt.Sprintf("B%d", i), 0, 2000)
		if err := db.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	plain, raw = walText(t, dir)
	if countNeedles(raw, "A") != 0 || countNeedles(plain, "A") != 0 {
		t.Fatalf("reused WALs still read back generation A (%d decrypted)", countNeedles(plain, "A"))
	}

	// Generation C is obsolete after a flush, readable until the purge shreds it.
	put(t, db, "C", 0, 3000)
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	if plain, _ = walText(t, dir); countNeedles(plain, "C") == 0 {
		t.Fatal("obsolete WALs hold no generation C before the purge: the check cannot fail")
	}
	if err := db.Purge(context.Background()); err != nil {
		t.Fatal(err)
	}
	plain, raw = walText(t, dir)
	if n := countNeedles(plain, "C"); n != 0 {
		t.Fatalf("%d generation C records readable after the purge", n)
	}
	shredded := 0
	for _, b := range raw {
		if bytes.HasPrefix(b, walMagic) && b[8] == walShredded {
			shredded++
		}
	}
	if shredded == 0 {
		t.Fatal("the purge shredded no WAL")
	}

	// Nothing lost: write after the purge, reopen (replaying the live WAL), read all.
	put(t, db, "D", 0, 500)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if db, err = Open(o); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"k-A-000000", "k-A-002999", "k-C-001234", "k-D-000499"} {
		if _, ok, err := db.GetCopy([]byte(k)); err != nil || !ok {
			t.Fatalf("%s after reopen: ok=%v err=%v", k, ok, err)
		}
	}
}

// TestCrashReplaysReusedWAL: synced writes survive a power cut while the live
// WAL is a reused file (its stale tail under the old key reads as the end of
// the log); unsynced ones may go, synced ones never.
func TestCrashReplaysReusedWAL(t *testing.T) {
	mem := vfs.NewCrashableMem()
	cfs := &countingFS{FS: mem}
	o := quiet()
	o.Dir, o.FS = "/db", cfs
	db, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; cfs.reused.Load() < 2; i++ {
		if i > 50 {
			t.Fatal("no WAL reuse")
		}
		put(t, db, fmt.Sprintf("W%d", i), 0, 2000)
		if err := db.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	put(t, db, "S", 0, 1500) // synced, only in the (reused) live WAL
	crashed := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	db.Close()

	o.FS = crashed
	db2, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	for i := 0; i < 1500; i++ {
		k := fmt.Sprintf("k-S-%06d", i)
		v, ok, err := db2.GetCopy([]byte(k))
		if err != nil || !ok || !bytes.HasPrefix(v, needle("S", i)) {
			t.Fatalf("%s after the crash: ok=%v err=%v", k, ok, err)
		}
	}
}

// TestPlainWALFromBeforeStillReplays: a data directory whose WAL was written
// without the header (an older Herald, plain Pebble) opens with its records.
func TestPlainWALFromBeforeStillReplays(t *testing.T) {
	dir := t.TempDir()
	pdb, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := pdb.Set([]byte("old"), []byte("value"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	pdb.Close() // the memtable is not flushed: "old" lives only in the WAL
	db, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if v, ok, err := db.GetCopy([]byte("old")); err != nil || !ok || string(v) != "value" {
		t.Fatalf("plain WAL not replayed: %q ok=%v err=%v", v, ok, err)
	}
}

func TestCorruptWALHeaderIsAnError(t *testing.T) {
	dir := t.TempDir()
	fs := newWALFS(vfs.Default)
	cases := map[string][]byte{
		"truncated": append(append([]byte(nil), walMagic...), walLive, 1, 2),
		"bad-state": append(append([]byte(nil), walMagic...), make([]byte, 64)...),
	}
	for name, content := range cases {
		p := filepath.Join(dir, "0000"+fmt.Sprint(len(name))+".log")
		if err := os.WriteFile(p, content, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := fs.Open(p); !errors.Is(err, ErrWALHeader) {
			t.Fatalf("%s: got %v, want ErrWALHeader", name, err)
		}
	}
	// A shredded WAL reads as zeros and refuses writes.
	p := filepath.Join(dir, "000042.log")
	hdr := make([]byte, walHeaderSize+64)
	copy(hdr, walMagic)
	hdr[8] = walShredded
	for i := walHeaderSize; i < len(hdr); i++ {
		hdr[i] = 0xAB
	}
	os.WriteFile(p, hdr, 0o600)
	f, err := fs.OpenReadWrite(p, vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, _ := io.ReadAll(f)
	if len(b) != 64 || !bytes.Equal(b, make([]byte, 64)) {
		t.Fatalf("shredded WAL read %d bytes %x", len(b), b[:min(8, len(b))])
	}
	if _, err := f.Write([]byte("x")); err == nil || !strings.Contains(err.Error(), "shredded") {
		t.Fatalf("write to a shredded WAL: %v", err)
	}
}
