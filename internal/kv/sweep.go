package kv

import "github.com/cockroachdb/pebble/v2"

// SweepIndex deletes, for each entry of a time index (prefix, then 8 bytes
// of time, then an id) below hi, the entry and what del deletes for its id;
// at most limit entries per call, committed in one batch (fsync'd when sync).
// It returns how many entries it deleted. The retention sweeps of every
// record kind with a TTL (statuses, kept copies, idempotent answers) use it.
func (d *DB) SweepIndex(prefix string, hi []byte, limit int, del func(b *pebble.Batch, id string), sync bool) (int, error) {
	it, err := d.NewIter(&pebble.IterOptions{LowerBound: []byte(prefix), UpperBound: hi})
	if err != nil {
		return 0, err
	}
	b := d.NewBatch()
	n := 0
	for it.First(); it.Valid() && n < limit; it.Next() {
		k := it.Key()
		if len(k) > len(prefix)+8 {
			del(b, string(k[len(prefix)+8:]))
		}
		b.Delete(append([]byte(nil), k...), nil)
		n++
	}
	it.Close()
	if n == 0 {
		b.Close()
		return 0, nil
	}
	return n, d.Commit(b, sync)
}
