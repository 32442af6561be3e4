package engine

import (
	"context"
	"encoding/binary"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/records"
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
		ups := make([]records.Update, 0, len(expired))
		for _, m := range expired {
			b.Delete(outboxKey(m.Seq), nil)
			b.Delete(keptKey(m.ID), nil)
			if pt := e.opts.Partitions; pt != nil && (!pt.Owns(m.Shard) || pt.Stale(m.Shard, m.Seq)) {
				continue // its partition's owner reports it (a copy from JetStream)
			}
			ups = append(ups, records.Update{ID: m.ID, Status: heraldtype.StatusFailed, Code: heraldtype.CodeExpired, At: now})
		}
		if err := e.db.Commit(b, true); err != nil {
			return removed, err
		}
		e.statuses.Submit(ups)
	}
	// Kept copies of sent messages past their grace (index e T).
	n, err := e.db.SweepIndex(keptIndexPrefix, binary.BigEndian.AppendUint64([]byte(keptIndexPrefix), uint64(now.UnixNano())+1), retentionBatch,
		func(b *pebble.Batch, id string) { b.Delete(keptKey(id), nil) }, true)
	if err != nil {
		return removed, err
	}
	removed += n
	m, err := e.statuses.Sweep(now, retentionBatch)
	return removed + m, err
}

const keptIndexPrefix = "eT"
