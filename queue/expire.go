package queue

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/heraldhq/herald/internal/kv"
)

// Expire removes up to limit messages whose ExpiresAt is at or before now,
// oldest first, and returns them (payloads opened when they still open). Leased
// recipients are skipped: their holder sees the expiry, or the next scan does.
//
// It merges the expiry entries of every epoch whose bound is due (and the
// legacy X range) in expiry order: each epoch's entries are sorted, so only
// the epochs with something due are read, and each only up to now.
func (q *Queue) Expire(ctx context.Context, now time.Time, limit int) ([]Message, error) {
	if q.closed.Load() {
		return nil, ErrClosed
	}
	// Fresh records are moved by Lease scans and reclaims: keep those out
	// while this sweep decides and commits (a record moved under it would
	// outlive its expiry entry). This also serialises sweeps.
	for _, s := range q.shards {
		s.scanMu.Lock()
	}
	defer func() {
		for _, s := range q.shards {
			s.scanMu.Unlock()
		}
	}()
	for _, s := range q.shards {
		if err := q.reclaimLocked(s, q.opts.Now()); err != nil {
			return nil, err
		}
	}
	now64 := uint64(now.UnixNano())
	// The bounds are read before the view is opened (see expBounds).
	q.expMu.Lock()
	srcs := make(expHeap, 0, 8)
	for e, bd := range q.expBounds {
		if bd.min <= now64 {
			srcs = append(srcs, &expSource{epoch: e, gen: bd.gen, at: bd.min})
		}
	}
	q.expMu.Unlock()
	srcs = append(srcs, &expSource{legacy: true})
	all := slices.Clone(srcs)
	heap.Init(&srcs)
	lo := []byte{pfx, kFresh}
	it, err := q.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: kv.PrefixEnd(lo)})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	defer it.Close()
	llo := []byte{pfx, kExpiry}
	lhi := binary.BigEndian.AppendUint64(append([]byte(nil), llo...), now64+1)
	lit, err := q.db.NewIter(&pebble.IterOptions{LowerBound: llo, UpperBound: lhi})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	defer lit.Close()
	if q.afterExpireView != nil {
		q.afterExpireView()
	}

	b := q.db.NewBatch()
	var out []Message
	var removedBytes int64
	var rBuckets []int
	perShard := make(map[int]int64)
	// A removed message may have been its recipient's head, waiting on a retry
	// time that its successor must not inherit: wake each touched recipient now
	// (Lease moves the hint to the new head's due time if that is later).
	woken := map[Recipient]bool{}
	type takenKey struct {
		sh int
		r  Recipient
	}
	taken := map[takenKey]uint64{}
	defer func() {
		for k, token := range taken {
			q.unlease(q.shards[k.sh], k.r, token)
		}
	}()
	// advance moves the first source to its next due entry (its first, when
	// it has not started), or drops it when it has none.
	advance := func() error {
		ok, err := srcs[0].next(it, lit, now64)
		if err != nil {
			return err
		}
		if ok {
			heap.Fix(&srcs, 0)
		} else {
			heap.Pop(&srcs)
		}
		return nil
	}
	for srcs.Len() > 0 && len(out) < limit {
		if err := ctx.Err(); err != nil {
			break
		}
		src := srcs[0]
		if !src.started {
			if err := advance(); err != nil {
				b.Close()
				return nil, err
			}
			continue
		}
		refs := src.val
		var keep []byte // refs not handled now: leased, or past the limit
		for off := 0; off+refLen <= len(refs); off += refLen {
			ref := refs[off : off+refLen]
			sh := int(binary.BigEndian.Uint16(ref[:2]))
			var r Recipient
			copy(r[:], ref[2:18])
			seq := binary.BigEndian.Uint64(ref[18:26])
			if sh >= len(q.shards) {
				continue
			}
			if len(out) >= limit {
				keep = append(keep, ref...)
				continue
			}
			s := q.shards[sh]
			tk := takenKey{sh, r}
			if _, mine := taken[tk]; !mine {
				s.mu.Lock()
				e, leased := s.mu.leased[r]
				if leased && e.held(q.opts.Now()) { // leases run on the queue's clock
					s.mu.Unlock()
					keep = append(keep, ref...)
					continue
				}
				// Take the recipient for the rest of this sweep (no Lease can
				// read a record we are deleting). A timed-out lease whose holder
				// may still be working is revoked by this: its late Complete
				// fails (ErrUnknownLease) instead of writing back a record
				// deleted here or counting it twice.
				token := q.leaseToken.Add(1)
				s.mu.leased[r] = leaseEntry{token: token, committing: true}
				s.mu.Unlock()
				taken[tk] = token
			}
			rk := recordKey(sh, r, seq)
			v, ok, err := q.db.GetCopy(rk)
			if err != nil {
				b.Close()
				return nil, err
			}
			rec := v
			if ok {
				rBuckets = append(rBuckets, inRBucket(r))
			} else {
				// Not in R: still fresh, or acked long ago.
				rk = freshKey(sh, seq)
				if v, ok, err = q.db.GetCopy(rk); err != nil {
					b.Close()
					return nil, err
				}
				if !ok {
					continue
				}
				var fr Recipient
				if fr, rec, err = splitFresh(v); err == nil && fr != r {
					continue // not this reference's record (cannot happen: seqs are unique)
				}
			}
			m, _, derr := q.decodeRecord(rec, true)
			m.Seq = seq
			if derr != nil {
				q.opts.Logger.Warn("queue: expired record did not open; deleting it", "shard", sh, "seq", seq)
			}
			deleteRecord(b, rk)
			if !woken[r] {
				woken[r] = true
				b.Set(dueKey(sh, now, r, seq), nil, nil)
			}
			removedBytes += int64(len(rk) + len(v))
			perShard[sh]++
			out = append(out, m)
		}
		if len(keep) == 0 {
			b.Delete(src.key, nil)
		} else {
			src.leave(src.at)
			if len(keep) != len(refs) {
				b.Set(src.key, keep, nil)
			}
		}
		if err := advance(); err != nil {
			b.Close()
			return nil, err
		}
	}
	for _, src := range srcs { // stopped early: their current entries stay
		if src.started {
			src.leave(src.at)
		}
	}
	if !b.Empty() {
		if err := q.db.Commit(b, true); err != nil {
			return nil, err
		}
	} else {
		b.Close()
	}
	q.raiseExpiryBounds(all)
	for _, bk := range rBuckets {
		q.inR[bk].Add(-1)
	}
	for sh := range perShard {
		q.shards[sh].lowerTo(now.UnixNano())
	}
	q.depthMsgs.Add(-int64(len(out)))
	q.depthBytes.Add(-removedBytes)
	q.addOwned(out, -1) // a record that did not open has recLen 0: it was not counted at Open either
	for sh, n := range perShard {
		q.shards[sh].msgs.Add(-n)
	}
	return out, nil
}

// expSource is one sorted run of expiry entries that Expire merges: an
// epoch's entries in F, or the legacy X range.
type expSource struct {
	epoch   uint32
	legacy  bool
	gen     uint64 // the epoch's bound gen when the sweep read it
	started bool   // positioned at least once: key, val and at are an entry's
	at      uint64 // the current entry's expiry; before started, the epoch's bound
	key     []byte
	val     []byte
	// left: the smallest expiry among the entries the sweep leaves in place.
	left    uint64
	hasLeft bool
}

func (s *expSource) leave(at uint64) {
	if !s.hasLeft || at < s.left {
		s.left, s.hasLeft = at, true
	}
}

// next moves s to its next entry due at now (the first, when not started).
// It returns false when there is none: the source is done.
func (s *expSource) next(it, lit *pebble.Iterator, now uint64) (bool, error) {
	var ok bool
	if s.legacy {
		if s.started {
			ok = lit.Next()
		} else {
			ok = lit.First()
		}
		for ok && len(lit.Key()) != 18 { // not an entry: leave it alone
			ok = lit.Next()
		}
	} else {
		prefix := appendExpiryPrefix(make([]byte, 0, expiryKeyLen), s.epoch)
		if s.started {
			ok = it.SeekGE(append(s.key, 0))
		} else {
			ok = it.SeekGE(prefix)
		}
		ok = ok && bytes.HasPrefix(it.Key(), prefix) && len(it.Key()) == expiryKeyLen
	}
	s.started = true
	if !ok {
		if err := it.Error(); err != nil {
			return false, fmt.Errorf("%w: %w", kv.ErrStorage, err)
		}
		if err := lit.Error(); err != nil {
			return false, fmt.Errorf("%w: %w", kv.ErrStorage, err)
		}
		s.key, s.val = nil, nil
		return false, nil
	}
	cur := it
	if s.legacy {
		cur = lit
	}
	at := entryExpiry(cur.Key())
	if at > now {
		s.leave(at)
		s.key, s.val = nil, nil
		return false, nil
	}
	s.key = append(s.key[:0], cur.Key()...)
	s.val = append(s.val[:0], cur.Value()...)
	s.at = at
	return true, nil
}

// expHeap orders sources by their current entry's expiry (or bound).
type expHeap []*expSource

// raiseExpiryBounds records what a sweep learned about the epochs it read:
// the earliest entry each still holds, or that it holds none. An epoch that
// an Enqueue noted since the sweep read its bound keeps the bound it has (a
// lower bound still: entries were only removed or added with their own note).
func (q *Queue) raiseExpiryBounds(srcs []*expSource) {
	q.expMu.Lock()
	defer q.expMu.Unlock()
	for _, s := range srcs {
		if s.legacy || !s.started {
			continue
		}
		cur, ok := q.expBounds[s.epoch]
		if !ok || cur.gen != s.gen {
			continue
		}
		if s.hasLeft {
			cur.min = s.left
			q.expBounds[s.epoch] = cur
		} else {
			delete(q.expBounds, s.epoch)
		}
	}
}
