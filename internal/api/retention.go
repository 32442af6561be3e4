package api

import (
	"encoding/binary"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/heraldhq/herald/internal/records"
)

// The API's records of a message's life that hold phone numbers (idempotent
// answers list contacts and rejected inputs; upload progress lists rejected
// inputs) are deleted when the messages they answer for expire, and never
// later than idemTTL (invariant 11). Index: t X <until(8), unix seconds>
// <record key> → nothing.
const forgetPrefix = "tX"

func forgetKey(until time.Time, key []byte) []byte {
	k := binary.BigEndian.AppendUint64([]byte(forgetPrefix), uint64(until.Unix()))
	return append(k, key...)
}

// setForgetAt schedules key's deletion at until (in the batch that writes it).
func setForgetAt(b *pebble.Batch, until time.Time, key []byte) {
	b.Set(forgetKey(until, key), nil, nil)
}

// idemExpiry is when an idempotent answer or upload progress made at created
// for messages living ttl is forgotten: the earlier of the two.
func idemExpiry(created time.Time, ttl time.Duration) time.Time {
	if ttl <= 0 || ttl > idemTTL {
		ttl = idemTTL
	}
	return created.Add(ttl)
}

const sweepBatch = 1000

// RetentionOnce deletes, at now, the idempotent answers and upload progress
// whose time has come, and the campaign records (with their counters) whose
// last message expired more than records.StatusGrace ago. It returns how
// many records it deleted. The node runs it periodically.
func (s *Server) RetentionOnce(now time.Time) (int, error) {
	hi := binary.BigEndian.AppendUint64([]byte(forgetPrefix), uint64(now.Unix())+1)
	it, err := s.opts.DB.NewIter(&pebble.IterOptions{LowerBound: []byte(forgetPrefix), UpperBound: hi})
	if err != nil {
		return 0, err
	}
	b := s.opts.DB.NewBatch()
	n := 0
	for it.First(); it.Valid() && n < sweepBatch; it.Next() {
		k := it.Key()
		if len(k) > len(forgetPrefix)+8 {
			b.Delete(append([]byte(nil), k[len(forgetPrefix)+8:]...), nil)
		}
		b.Delete(append([]byte(nil), k...), nil)
		n++
	}
	if err := it.Close(); err != nil {
		b.Close()
		return 0, err
	}
	// Campaign records: one per upload, few; read whole.
	cit, err := s.opts.DB.NewIter(&pebble.IterOptions{LowerBound: []byte("eC"), UpperBound: []byte("eD")})
	if err != nil {
		b.Close()
		return 0, err
	}
	cut := now.Add(-records.StatusGrace).UnixMilli()
	for cit.First(); cit.Valid() && n < 2*sweepBatch; cit.Next() {
		var c Campaign
		if s.decodeCampaign(cit.Value(), &c) != nil || c.ExpiresMS == 0 || c.ExpiresMS > cut {
			continue
		}
		b.Delete(append([]byte(nil), cit.Key()...), nil)
		records.DeleteCounters(b, c.ID)
		n++
	}
	if err := cit.Close(); err != nil {
		b.Close()
		return 0, err
	}
	if n == 0 {
		b.Close()
		return 0, nil
	}
	return n, s.opts.DB.Commit(b, false)
}
