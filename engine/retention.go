package engine

import (
	"context"
	"encoding/binary"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldhq/herald/heraldtype"
)

// Kept content of sent messages (for decrypt_failed): e K <id> → expires(8) ||
// sealed payload (keptPrefix starts the key); index e T <until(8)> <id>.
const keptPrefix = "eK"

func keptKey(id string) []byte { return append([]byte(keptPrefix), id...) }

// appendKeptIndexKey appends the kept index key of id, kept until until, to
// dst (a stack buffer on the hot path: Pebble's batch copies the key).
func appendKeptIndexKey(dst []byte, until time.Time, id string) []byte {
	return append(binary.BigEndian.AppendUint64(append(dst, keptIndexPrefix...), uint64(until.UnixNano())), id...)
}

const retentionBatch = 1000

// RetentionOnce runs one bounded sweep: queued messages past their TTL end
// failed/expired with their content and ciphertexts deleted, and kept copies
// of sent messages past their grace (or TTL) are deleted. It returns how many
// records it removed.
func (e *Engine) RetentionOnce(ctx context.Context) (int, error) {
	now := e.opts.Now()
	expired, err := e.q.Expire(ctx, now, retentionBatch)
	if err != nil {
		return 0, err
	}
	removed := len(expired)
	if len(expired) > 0 {
		b := e.db.NewBatch()
		ups := make([]update, 0, len(expired))
		for _, m := range expired {
			b.Delete(outboxKey(m.Seq), nil)
			b.Delete(keptKey(m.ID), nil)
			ups = append(ups, update{id: m.ID, status: heraldtype.StatusFailed, code: heraldtype.CodeExpired, at: now})
		}
		if err := e.db.Commit(b, true); err != nil {
			return removed, err
		}
		e.statuses.submit(ups)
	}
	// Kept copies of sent messages past their grace (index e T).
	n, err := e.sweepIndex(keptIndexPrefix, binary.BigEndian.AppendUint64([]byte(keptIndexPrefix), uint64(now.UnixNano())+1),
		func(b *pebble.Batch, id string) { b.Delete(keptKey(id), nil) }, true)
	if err != nil {
		return removed, err
	}
	removed += n
	m, err := e.sweepStatuses(now)
	return removed + m, err
}

const keptIndexPrefix = "eT"

// sweepIndex deletes, for each entry of a time index (prefix, then 8 bytes
// of time, then a message id) below hi, the entry and what del deletes for
// its id; at most retentionBatch per call.
func (e *Engine) sweepIndex(prefix string, hi []byte, del func(b *pebble.Batch, id string), sync bool) (int, error) {
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefix), UpperBound: hi})
	if err != nil {
		return 0, err
	}
	b := e.db.NewBatch()
	n := 0
	for it.First(); it.Valid() && n < retentionBatch; it.Next() {
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
	return n, e.db.Commit(b, sync)
}

// sweepStatuses deletes status records whose message expired more than
// StatusGrace ago (index e X), at most retentionBatch per call.
func (e *Engine) sweepStatuses(now time.Time) (int, error) {
	return e.sweepIndex("eX", appendStatusExpiryKey(nil, now.Unix()+1, ""),
		func(b *pebble.Batch, id string) { b.Delete(statusKey(id), nil) }, false)
}
