package kv

import (
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// ApplyGrouped appends the writes of srcs to dst grouped by the first two
// bytes of their keys (their kind of record), the groups in the order they
// first appear and each group's writes in their order in srcs.
//
// A memtable insert searches the skiplist from where the batch's previous
// insert landed: writes of one kind (outbox records by sequence, kept copies
// by time-ordered id) follow each other closely when they come together, but
// a batch that alternates kinds, one message after another, makes every
// insert a search from the top (~1 µs each in a 16 MiB memtable; ~14 % of the
// warm engine's CPU).
//
// Grouping never reorders two writes of one key (they share a group). A
// batch holding anything but sets and point deletions (a range deletion
// spans kinds) is applied as it is.
func ApplyGrouped(dst *pebble.Batch, srcs []*pebble.Batch) error {
	wp := writesPool.Get().(*[]write)
	defer func() {
		clear(*wp) // no references into the sources stay pooled
		*wp = (*wp)[:0]
		writesPool.Put(wp)
	}()
	ws := (*wp)[:0]
	prefixes := make([][2]byte, 0, 8)
	for _, b := range srcs {
		r := b.Reader()
		for {
			kind, k, v, ok, err := r.Next()
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			switch kind {
			case pebble.InternalKeyKindSet, pebble.InternalKeyKindDelete, pebble.InternalKeyKindSingleDelete:
			default:
				for _, b := range srcs {
					if err := dst.Apply(b, nil); err != nil {
						return err
					}
				}
				return nil
			}
			var p [2]byte
			copy(p[:], k)
			g := -1
			for i, q := range prefixes {
				if q == p {
					g = i
					break
				}
			}
			if g < 0 {
				g = len(prefixes)
				prefixes = append(prefixes, p)
			}
			ws = append(ws, write{kind, k, v, g})
		}
	}
	*wp = ws
	for g := range prefixes {
		for _, w := range ws {
			if w.group != g {
				continue
			}
			var err error
			switch w.kind {
			case pebble.InternalKeyKindSet:
				err = dst.Set(w.key, w.value, nil)
			case pebble.InternalKeyKindDelete:
				err = dst.Delete(w.key, nil)
			case pebble.InternalKeyKindSingleDelete:
				err = dst.SingleDelete(w.key, nil)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

type write struct {
	kind       pebble.InternalKeyKind
	key, value []byte
	group      int
}

var writesPool = sync.Pool{New: func() any { return new([]write) }}
