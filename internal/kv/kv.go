package kv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// ErrStorage wraps every failure of the storage engine itself.
var ErrStorage = errors.New("kv: storage failed")

// Options configure Open.
type Options struct {
	// Dir is the data directory. Required.
	Dir string
	// FS is the filesystem; default vfs.Default. Tests pass an errorfs wrapper.
	FS vfs.FS
	// CacheBytes is the block cache size; default 64 MiB.
	CacheBytes int64
	// MemTableBytes is the memtable size (and so the WAL preallocation); default
	// 16 MiB: with 64 MiB, one producer enqueued 15–20 % slower at steady
	// state (a deeper skiplist that fits no cache, and more fresh arena pages
	// before Pebble starts recycling them; BENCHMARKS.md, s5). Tests that open
	// many databases use a small one.
	MemTableBytes uint64
	// Logger receives Pebble's informational logs; default slog.Default().
	Logger *slog.Logger
}

// DB is the shared Pebble handle.
type DB struct {
	*pebble.DB
	failed atomic.Pointer[error]
	wal    *walFS
	dir    string
}

type fatalPanic struct {
	msg   string
	cause error // the first error among Fatalf's arguments, if any
}

func (f fatalPanic) err(what string) error {
	if f.cause != nil {
		return fmt.Errorf("%w: %s%s: %w", ErrStorage, what, f.msg, f.cause)
	}
	return fmt.Errorf("%w: %s%s", ErrStorage, what, f.msg)
}

// ErrLowSpace: free disk space is below the configured watermark; writes that
// admit new work are refused before the disk really fills.
var ErrLowSpace = errors.New("kv: free disk space below the watermark")

// NoSpace reports whether err comes from a full disk (ENOSPC) or the low-space
// watermark, so callers can answer "insufficient storage" rather than a
// generic storage failure.
func NoSpace(err error) bool { return errors.Is(err, syscall.ENOSPC) || errors.Is(err, ErrLowSpace) }

type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Fatalf(format string, args ...any) {
	fp := fatalPanic{msg: fmt.Sprintf(format, args...)}
	for _, a := range args {
		if e, ok := a.(error); ok {
			fp.cause = e
			break
		}
	}
	panic(fp)
}

// Open opens (creating if needed) the database in opts.Dir.
func Open(opts Options) (db *DB, err error) {
	if opts.Dir == "" {
		return nil, errors.New("kv: Options.Dir is required")
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if opts.CacheBytes == 0 {
		opts.CacheBytes = 64 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MemTableBytes == 0 {
		opts.MemTableBytes = 16 << 20
	}
	cache := pebble.NewCache(opts.CacheBytes)
	defer cache.Unref()
	wal := newWALFS(opts.FS)
	popts := &pebble.Options{
		// WAL files are recycled (a full-size file syncs without a metadata
		// update) and each generation is encrypted under a key of its own, so a
		// recycled file's stale tail is unreadable (walfs.go).
		FS:                          wal,
		Cache:                       cache,
		Logger:                      pebbleLogger{opts.Logger},
		MemTableSize:                opts.MemTableBytes,
		MemTableStopWritesThreshold: 4,
		// Bursts (a 1M-recipient upload is ~0.5 GB of writes) are absorbed in
		// L0 and compacted after: with 4, L0→Lbase compactions took ~20 % of
		// the CPU during an upload (bench/ingest.sh: median 136k → 173k
		// recipients/s with 12). Reads pay a little more while L0 is deep.
		L0CompactionThreshold:      12,
		L0StopWritesThreshold:      1000,
		CompactionConcurrencyRange: func() (int, int) { return 1, 2 },
	}
	// Bloom filters (10 bits per key, ~1 % false positives) on every level,
	// L0 included: a point read skips the tables that cannot hold its key.
	// Reads of absent keys are the cold path's (a recipient's device list,
	// sessions and chain record before the first message) and each probed
	// every overlapping table of a deep L0; reads of present keys (a status
	// record under a receipt) probed every table above the one holding it.
	// Cold engine CPU −3 to −8 % in three pairs (BENCHMARKS.md, s11).
	for i := range popts.Levels {
		popts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	defer func() {
		if r := recover(); r != nil {
			fp, ok := r.(fatalPanic)
			if !ok {
				panic(r)
			}
			db, err = nil, fp.err("open: ")
		}
	}()
	pdb, err := pebble.Open(opts.Dir, popts)
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %w", ErrStorage, opts.Dir, err)
	}
	return &DB{DB: pdb, wal: wal, dir: opts.Dir}, nil
}

// Commit applies b (sync: wait for fsync, shared by concurrent committers) and
// closes it. A storage fault returns ErrStorage and poisons the handle.
func (d *DB) Commit(b *pebble.Batch, sync bool) (err error) {
	defer b.Close()
	return d.commit(b, sync)
}

// CommitReuse is Commit for a batch the caller recycles: after a commit that
// succeeded b is reset (empty, its buffer kept) and still the caller's, and
// reused is true; after a failure b is closed (Pebble does not reuse a batch
// that met an error) and reused is false.
func (d *DB) CommitReuse(b *pebble.Batch, sync bool) (reused bool, err error) {
	if err := d.commit(b, sync); err != nil {
		b.Close()
		return false, err
	}
	b.Reset()
	return true, nil
}

// BatchPool keeps committed batches, reset, for the next writer: a hot path
// that made a batch of its size every time allocated its whole buffer again
// (Pebble's own pool drops what grew past 1 MiB and hands small ones out).
// Safe for concurrent use.
type BatchPool struct {
	db   *DB
	max  int // a batch whose contents were larger is not kept
	pool sync.Pool
}

// NewBatchPool keeps batches of d whose contents were at most maxBytes.
func NewBatchPool(d *DB, maxBytes int) *BatchPool {
	return &BatchPool{db: d, max: maxBytes}
}

// Get returns a kept batch, or a new one with room for size bytes.
func (p *BatchPool) Get(size int) *pebble.Batch {
	if b, _ := p.pool.Get().(*pebble.Batch); b != nil {
		return b
	}
	return p.db.NewBatchWithSize(size)
}

// PutUnused gives back a batch from Get that nothing was written to.
func (p *BatchPool) PutUnused(b *pebble.Batch) {
	p.pool.Put(b)
}

// Put gives back a batch from Get that was written to but will not be
// committed (its contents were applied to another batch, or dropped): reset
// and kept, or closed when it was larger than the pool keeps.
func (p *BatchPool) Put(b *pebble.Batch) {
	if len(b.Repr()) > p.max {
		b.Close()
		return
	}
	b.Reset()
	p.pool.Put(b)
}

// Commit commits b as DB.Commit does, then keeps it (reset) unless the
// commit failed (closed) or it was larger than the pool keeps (closed).
func (p *BatchPool) Commit(b *pebble.Batch, sync bool) error {
	large := len(b.Repr()) > p.max
	reused, err := p.db.CommitReuse(b, sync)
	switch {
	case reused && large:
		b.Close()
	case reused:
		p.pool.Put(b)
	}
	return err
}

func (d *DB) commit(b *pebble.Batch, sync bool) (err error) {
	if e := d.failed.Load(); e != nil {
		return *e
	}
	defer d.recoverFatal("", &err)
	wo := pebble.NoSync
	if sync {
		wo = pebble.Sync
	}
	if err := b.Commit(wo); err != nil {
		return fmt.Errorf("%w: %w", ErrStorage, err)
	}
	return nil
}

// recoverFatal, deferred, turns Pebble's Fatalf panic into *err (ErrStorage
// with its cause) and poisons the handle: Pebble's state after a failed WAL
// write or fsync is undefined, so nothing may be written through it again.
func (d *DB) recoverFatal(what string, err *error) {
	r := recover()
	if r == nil {
		return
	}
	fp, ok := r.(fatalPanic)
	if !ok {
		panic(r)
	}
	*err = fp.err(what)
	d.failed.Store(err)
}

// Purge makes deletions physical: it flushes the memtable (so every WAL that
// held deleted records becomes obsolete) and shreds those WALs' keys (a
// recycled WAL's file stays on disk for reuse; without its key it is noise),
// then compacts the whole key space (so SSTables holding deleted values are
// rewritten without them and removed). After it returns and Pebble's cleaner
// has run, a deleted value is gone from the directory, sealed or not. It costs
// a rewrite of the live data, so the engine runs it on a long interval.
func (d *DB) Purge(ctx context.Context) (err error) {
	if e := d.failed.Load(); e != nil {
		return *e
	}
	defer d.recoverFatal("purge: ", &err)
	// Every WAL numbered up to the newest one now is obsolete once the flush
	// (which always rotates to a new WAL) returns.
	newest, err := d.wal.newestWAL(d.dir)
	if err != nil {
		return fmt.Errorf("%w: purge: %w", ErrStorage, err)
	}
	if err := d.DB.Flush(); err != nil {
		return fmt.Errorf("%w: purge flush: %w", ErrStorage, err)
	}
	if err := d.wal.shred(d.dir, newest); err != nil {
		return fmt.Errorf("%w: purge: %w", ErrStorage, err)
	}
	if err := d.DB.Compact(ctx, []byte{0}, []byte{0xff, 0xff, 0xff, 0xff}, true); err != nil {
		return fmt.Errorf("%w: purge compaction: %w", ErrStorage, err)
	}
	return nil
}

// Failed reports the storage fault that poisoned the handle, if any.
func (d *DB) Failed() error {
	if e := d.failed.Load(); e != nil {
		return *e
	}
	return nil
}

// Get returns a copy of the value at key, or nil, false when absent.
func (d *DB) GetCopy(key []byte) ([]byte, bool, error) {
	v, closer, err := d.DB.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("%w: %v", ErrStorage, err)
	}
	out := append([]byte(nil), v...)
	closer.Close()
	return out, true, nil
}

// Close closes the database; safe to call twice. A poisoned handle may refuse to
// close cleanly; the error is returned, never a panic.
func (d *DB) Close() (err error) {
	if d == nil || d.DB == nil {
		return nil
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: close: %v", ErrStorage, r)
		}
	}()
	pdb := d.DB
	d.DB = nil
	return pdb.Close()
}

// PrefixEnd returns the smallest key greater than every key with the prefix.
func PrefixEnd(prefix []byte) []byte {
	end := append([]byte(nil), prefix...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil
}
