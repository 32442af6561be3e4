// Package baseline is the straightforward implementation a team would write
// first, kept to measure Herald against: one fsync per message, one goroutine
// per message, the Signal session loaded and stored around every encryption
// (as whatsmeow does), net/http, no batching anywhere.
package baseline

import (
	"context"
	"encoding/binary"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldhq/herald/internal/seal"
)

// NaiveQueue stores each message with its own fsync'd commit.
type NaiveQueue struct {
	DB     *pebble.DB
	Sealer *seal.Sealer
	seq    atomic.Uint64
}

// Enqueue writes and syncs every message on its own.
func (q *NaiveQueue) Enqueue(_ context.Context, recipients []string, payloads [][]byte) error {
	for i := range payloads {
		k := binary.BigEndian.AppendUint64([]byte("n"), q.seq.Add(1))
		k = append(k, recipients[i]...) // the naive version keys by the raw number
		if err := q.DB.Set(k, q.Sealer.Seal(nil, payloads[i]), pebble.Sync); err != nil {
			return err
		}
	}
	return nil
}
