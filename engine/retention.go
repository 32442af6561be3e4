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
	return append(binary.BigEndian.AppendUint64(append(dst, "eT"...), uint64(until.UnixNano())), id...)
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
	lo := []byte("eT")
	hi := binary.BigEndian.AppendUint64([]byte("eT"), uint64(now.UnixNano())+1)
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return removed, err
	}
	b := e.db.NewBatch()
	n := 0
	for it.First(); it.Valid() && n < retentionBatch; it.Next() {
		k := it.Key()
		if len(k) > 10 {
			b.Delete(keptKey(string(k[10:])), nil)
		}
		b.Delete(append([]byte(nil), k...), nil)
		n++
	}
	it.Close()
	if n > 0 {
		if err := e.db.Commit(b, true); err != nil {
			return removed, err
		}
		removed += n
	} else {
		b.Close()
	}
	m, err := e.sweepStatuses(now)
	return removed + m, err
}

// sweepStatuses deletes status records whose message expired more than
// StatusGrace ago (index e X), at most retentionBatch per call.
func (e *Engine) sweepStatuses(now time.Time) (int, error) {
	hi := appendStatusExpiryKey(nil, now.Unix()+1, "")
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: []byte("eX"), UpperBound: hi})
	if err != nil {
		return 0, err
	}
	b := e.db.NewBatch()
	n := 0
	for it.First(); it.Valid() && n < retentionBatch; it.Next() {
		k := it.Key()
		if len(k) > 10 {
			b.Delete(statusKey(string(k[10:])), nil)
		}
		b.Delete(append([]byte(nil), k...), nil)
		n++
	}
	it.Close()
	if n == 0 {
		b.Close()
		return 0, nil
	}
	return n, e.db.Commit(b, false)
}
