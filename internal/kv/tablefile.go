package kv

import (
	"strings"
	"sync"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// tableFile gathers the writes of a new sstable into large ones.
//
// Pebble writes a table a block at a time (4 KiB uncompressed, less after
// compression) through a 4 KiB bufio.Writer, so a flush or compaction made
// one write(2) per block. A system call costs ~4 µs on the reference VM
// (64 MB in 4 KiB writes: 67 ms of CPU, in 64 KiB writes: 16 ms), and the
// write calls of flushes and compactions were ~8 % of the warm engine's CPU.
// Gathered into 256 KiB writes, the same bytes take a few system calls.
//
// Nothing is lost by holding them: a table is not part of the database until
// Pebble has synced and closed it and recorded it in the MANIFEST, and every
// call that reads, sizes or syncs the file writes out what is held first.
type tableFile struct {
	vfs.File
	buf []byte
	err error // a failed write-out: every later call returns it
}

const tableBufSize = 256 << 10

var tableBufs = sync.Pool{New: func() any { b := make([]byte, 0, tableBufSize); return &b }}

func isTable(name string) bool { return strings.HasSuffix(name, ".sst") }

func newTableFile(f vfs.File) *tableFile {
	return &tableFile{File: f, buf: (*tableBufs.Get().(*[]byte))[:0]}
}

func (f *tableFile) Write(p []byte) (int, error) {
	if f.err != nil {
		return 0, f.err
	}
	if f.buf == nil { // closed
		return f.File.Write(p)
	}
	if len(f.buf)+len(p) > cap(f.buf) {
		if err := f.writeOut(); err != nil {
			return 0, err
		}
		if len(p) >= cap(f.buf) {
			return f.File.Write(p)
		}
	}
	f.buf = append(f.buf, p...)
	return len(p), nil
}

// writeOut writes what is held to the file.
func (f *tableFile) writeOut() error {
	if f.err != nil {
		return f.err
	}
	if len(f.buf) == 0 {
		return nil
	}
	_, err := f.File.Write(f.buf)
	f.buf = f.buf[:0]
	if err != nil {
		f.err = err
	}
	return err
}

func (f *tableFile) Sync() error {
	if err := f.writeOut(); err != nil {
		return err
	}
	return f.File.Sync()
}

func (f *tableFile) SyncData() error {
	if err := f.writeOut(); err != nil {
		return err
	}
	return f.File.SyncData()
}

func (f *tableFile) SyncTo(length int64) (bool, error) {
	if err := f.writeOut(); err != nil {
		return false, err
	}
	return f.File.SyncTo(length)
}

func (f *tableFile) Stat() (vfs.FileInfo, error) {
	if err := f.writeOut(); err != nil {
		return nil, err
	}
	return f.File.Stat()
}

func (f *tableFile) Read(p []byte) (int, error) {
	if err := f.writeOut(); err != nil {
		return 0, err
	}
	return f.File.Read(p)
}

func (f *tableFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.writeOut(); err != nil {
		return 0, err
	}
	return f.File.ReadAt(p, off)
}

func (f *tableFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.writeOut(); err != nil {
		return 0, err
	}
	return f.File.WriteAt(p, off)
}

func (f *tableFile) Close() error {
	err := f.writeOut()
	if f.buf != nil {
		b := f.buf[:0]
		tableBufs.Put(&b)
		f.buf = nil
	}
	if cerr := f.File.Close(); err == nil {
		err = cerr
	}
	return err
}
