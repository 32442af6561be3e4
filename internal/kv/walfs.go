package kv

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// walFS lets Pebble recycle its WAL files without leaving old records
// readable on disk.
//
// Recycling matters: fdatasync of a file that was already written to its full
// size skips the metadata update a growing file needs (on this machine's disk
// ~300 µs instead of ~500 µs per commit, BENCHMARKS.md). But a recycled WAL is
// overwritten from its start, so the previous generation's records stay past
// the new write offset — and expired data must leave the directory (invariant
// 5). So every WAL generation is encrypted (AES-256-CTR) under a key of its
// own, kept in the file's 4 KiB header: reusing a file writes a fresh key over
// the old one in place, and Purge overwrites the key of every obsolete WAL
// (shred). Once its key is gone, a stale tail is noise.
//
// The key sits next to the data on purpose: this layer is for erasure, not
// confidentiality (values are sealed above it, index keys are HMACs). WAL
// files written before this layer existed (no header magic) are read as they
// are.
type walFS struct {
	vfs.FS
	mu      sync.Mutex
	writing map[string]int // WAL paths with an open writable handle
}

const (
	walHeaderSize = 4096
	walLive       = 1
	walShredded   = 2
)

var walMagic = []byte("HRLDWAL1")

// ErrWALHeader: a WAL file carries Herald's header magic but the header is
// unreadable.
var ErrWALHeader = errors.New("kv: corrupt WAL header")

func newWALFS(inner vfs.FS) *walFS { return &walFS{FS: inner, writing: map[string]int{}} }

func isWAL(name string) bool { return strings.HasSuffix(name, ".log") }

func (fs *walFS) Unwrap() vfs.FS { return fs.FS }

func (fs *walFS) Create(name string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	if isTable(name) {
		f, err := fs.FS.Create(name, cat)
		if err != nil {
			return nil, err
		}
		return newTableFile(f), nil
	}
	if !isWAL(name) {
		return fs.FS.Create(name, cat)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f, err := fs.FS.Create(name, cat)
	if err != nil {
		return nil, err
	}
	return fs.startLocked(name, f)
}

// ReuseForWrite is Pebble recycling oldname as newname: the file gets a new
// key, written over the old one before any record is.
func (fs *walFS) ReuseForWrite(oldname, newname string, cat vfs.DiskWriteCategory) (vfs.File, error) {
	if !isWAL(newname) {
		return fs.FS.ReuseForWrite(oldname, newname, cat)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f, err := fs.FS.ReuseForWrite(oldname, newname, cat)
	if err != nil {
		return nil, err
	}
	return fs.startLocked(newname, f)
}

// startLocked writes a fresh key into f's header. The header reaches the disk
// with the first record's fdatasync; until then the file holds nothing Pebble
// relies on (a crash before it leaves either key's noise, which replay reads
// as the end of the log, as it does a recycled file's stale tail).
func (fs *walFS) startLocked(name string, f vfs.File) (vfs.File, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		f.Close()
		return nil, err
	}
	hdr := make([]byte, walHeaderSize)
	copy(hdr, walMagic)
	hdr[8] = walLive
	copy(hdr[16:48], key)
	if _, err := f.WriteAt(hdr, 0); err != nil {
		f.Close()
		return nil, err
	}
	wf, err := newWALFile(f, key)
	if err != nil {
		f.Close()
		return nil, err
	}
	fs.writing[name]++
	wf.release = func() {
		fs.mu.Lock()
		if fs.writing[name]--; fs.writing[name] <= 0 {
			delete(fs.writing, name)
		}
		fs.mu.Unlock()
	}
	return wf, nil
}

func (fs *walFS) Open(name string, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.Open(name, opts...)
	if err != nil || !isWAL(name) {
		return f, err
	}
	return openWAL(f)
}

func (fs *walFS) OpenReadWrite(name string, cat vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	f, err := fs.FS.OpenReadWrite(name, cat, opts...)
	if err != nil || !isWAL(name) {
		return f, err
	}
	return openWAL(f)
}

// openWAL reads f's header: a file without Herald's magic is returned as it is
// (written before this layer); a shredded one reads as zeros (the end of a log).
func openWAL(f vfs.File) (vfs.File, error) {
	hdr := make([]byte, 48)
	n, err := f.ReadAt(hdr, 0)
	if n < len(walMagic) || string(hdr[:len(walMagic)]) != string(walMagic) {
		return f, nil
	}
	if n < len(hdr) {
		f.Close()
		return nil, fmt.Errorf("%w: %d of %d bytes: %v", ErrWALHeader, n, len(hdr), err)
	}
	switch hdr[8] {
	case walLive:
		wf, err := newWALFile(f, hdr[16:48])
		if err != nil {
			f.Close()
			return nil, err
		}
		return wf, nil
	case walShredded:
		return &walFile{inner: f}, nil
	default:
		f.Close()
		return nil, fmt.Errorf("%w: unknown state %d", ErrWALHeader, hdr[8])
	}
}

// shred overwrites the key of every WAL in dir numbered at most upTo that no
// handle is writing, and syncs each. The caller guarantees those WALs are
// obsolete (Purge: numbered no higher than the newest WAL before a flush).
func (fs *walFS) shred(dir string, upTo uint64) error {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	names, err := fs.FS.List(dir)
	if err != nil {
		return err
	}
	for _, name := range names {
		num, ok := walNum(name)
		if !ok || num > upTo {
			continue
		}
		path := fs.FS.PathJoin(dir, name)
		if fs.writing[path] > 0 {
			continue
		}
		if err := fs.shredFile(path); err != nil {
			return fmt.Errorf("shred %s: %w", name, err)
		}
	}
	return nil
}

// shredFile overwrites path's key if it is a live Herald WAL; anything else
// (removed meanwhile, written before this layer, already shredded) is left.
func (fs *walFS) shredFile(path string) error {
	f, err := fs.FS.OpenReadWrite(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		if _, serr := fs.FS.Stat(path); serr != nil {
			return nil // removed by Pebble's cleaner meanwhile
		}
		return err
	}
	defer f.Close()
	hdr := make([]byte, walHeaderSize)
	if n, _ := f.ReadAt(hdr, 0); n < len(walMagic)+1 || string(hdr[:len(walMagic)]) != string(walMagic) || hdr[8] != walLive {
		return nil
	}
	clear(hdr[len(walMagic):])
	hdr[8] = walShredded
	if _, err := f.WriteAt(hdr, 0); err != nil {
		return err
	}
	return f.Sync()
}

// newestWAL is the highest WAL number in dir (0 when there is none).
func (fs *walFS) newestWAL(dir string) (uint64, error) {
	names, err := fs.FS.List(dir)
	if err != nil {
		return 0, err
	}
	var max uint64
	for _, name := range names {
		if n, ok := walNum(name); ok && n > max {
			max = n
		}
	}
	return max, nil
}

// walNum parses Pebble's WAL file name, "000123.log".
func walNum(name string) (uint64, bool) {
	if !isWAL(name) {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSuffix(name, ".log"), 10, 64)
	return n, err == nil
}

// walFile is one WAL generation: logical offset o is physical offset
// walHeaderSize+o, encrypted with AES-CTR (counter = o/16). A nil block means
// shredded: it reads as zeros.
type walFile struct {
	inner      vfs.File
	block      cipher.Block
	rpos, wpos int64
	wbuf       []byte
	release    func()
	closed     bool
}

func newWALFile(f vfs.File, key []byte) (*walFile, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return &walFile{inner: f, block: b}, nil
}

// xor applies the key stream at logical offset off to src, into dst.
func (f *walFile) xor(dst, src []byte, off int64) {
	if f.block == nil {
		clear(dst[:len(src)])
		return
	}
	var iv [16]byte
	binary.BigEndian.PutUint64(iv[8:], uint64(off/16))
	s := cipher.NewCTR(f.block, iv[:])
	if r := off % 16; r != 0 {
		var skip [16]byte
		s.XORKeyStream(skip[:r], skip[:r])
	}
	s.XORKeyStream(dst, src)
}

func (f *walFile) Write(p []byte) (int, error) {
	n, err := f.writeAt(p, f.wpos, &f.wbuf)
	f.wpos += int64(n)
	return n, err
}

func (f *walFile) WriteAt(p []byte, off int64) (int, error) {
	var buf []byte
	return f.writeAt(p, off, &buf)
}

func (f *walFile) writeAt(p []byte, off int64, buf *[]byte) (int, error) {
	if f.block == nil {
		return 0, errors.New("kv: write to a shredded WAL")
	}
	if cap(*buf) < len(p) {
		*buf = make([]byte, len(p))
	}
	b := (*buf)[:len(p)]
	f.xor(b, p, off)
	return f.inner.WriteAt(b, off+walHeaderSize)
}

func (f *walFile) Read(p []byte) (int, error) {
	n, err := f.ReadAt(p, f.rpos)
	f.rpos += int64(n)
	if n > 0 && err == io.EOF {
		err = nil
	}
	return n, err
}

func (f *walFile) ReadAt(p []byte, off int64) (int, error) {
	n, err := f.inner.ReadAt(p, off+walHeaderSize)
	f.xor(p[:n], p[:n], off)
	return n, err
}

func (f *walFile) Preallocate(off, length int64) error {
	return f.inner.Preallocate(off+walHeaderSize, length)
}

func (f *walFile) SyncTo(length int64) (bool, error) { return f.inner.SyncTo(length + walHeaderSize) }
func (f *walFile) Sync() error                       { return f.inner.Sync() }
func (f *walFile) SyncData() error                   { return f.inner.SyncData() }
func (f *walFile) Prefetch(off, length int64) error {
	return f.inner.Prefetch(off+walHeaderSize, length)
}
func (f *walFile) Fd() uintptr { return f.inner.Fd() }

func (f *walFile) Stat() (vfs.FileInfo, error) {
	fi, err := f.inner.Stat()
	if err != nil {
		return nil, err
	}
	return walInfo{fi}, nil
}

func (f *walFile) Close() error {
	if !f.closed {
		f.closed = true
		if f.release != nil {
			f.release()
		}
	}
	return f.inner.Close()
}

// walInfo reports a WAL's logical size (without the header).
type walInfo struct{ vfs.FileInfo }

func (i walInfo) Size() int64 { return max(0, i.FileInfo.Size()-walHeaderSize) }
