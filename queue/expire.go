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
	sw := &expireSweep{q: q, b: q.db.NewBatch(), now: now, limit: limit, perShard: map[int]int64{},
		woken: map[Recipient]bool{}, taken: map[takenKey]uint64{}}
	defer sw.unleaseAll()
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
	for srcs.Len() > 0 && len(sw.out) < limit && ctx.Err() == nil {
		if src := srcs[0]; src.started {
			if err := sw.entry(src); err != nil {
				sw.b.Close()
				return nil, err
			}
		}
		if err := advance(); err != nil {
			sw.b.Close()
			return nil, err
		}
	}
	for _, src := range srcs { // stopped early: their current entries stay
		if src.started {
			src.leave(src.at)
		}
	}
	if !sw.b.Empty() {
		if err := q.db.Commit(sw.b, true); err != nil {
			return nil, err
		}
	} else {
		sw.b.Close()
	}
	q.raiseExpiryBounds(all)
	sw.counted()
	return sw.out, nil
}

// expireSweep is one Expire call's work: what it deletes (in b), takes and
// returns.
type expireSweep struct {
	q            *Queue
	b            *pebble.Batch
	now          time.Time
	limit        int
	out          []Message
	removedBytes int64
	rBuckets     []int
	pBuckets     []int // inP buckets of parked records removed
	perShard     map[int]int64
	// A removed message may have been its recipient's head, waiting on a
	// retry time that its successor must not inherit: each touched recipient
	// is woken now (Lease moves the hint to the new head's due time if that
	// is later).
	woken map[Recipient]bool
	taken map[takenKey]uint64 // recipients held for the rest of the sweep
}

type takenKey struct {
	sh int
	r  Recipient
}

func (sw *expireSweep) unleaseAll() {
	for k, token := range sw.taken {
		sw.q.unlease(sw.q.shards[k.sh], k.r, token)
	}
}

// entry removes the records an expiry entry refers to (up to the limit):
// the entry goes, or keeps the references left (leased recipients, past the
// limit).
func (sw *expireSweep) entry(src *expSource) error {
	refs := src.val
	var keep []byte
	for off := 0; off+refLen <= len(refs); off += refLen {
		ref := refs[off : off+refLen]
		sh := int(binary.BigEndian.Uint16(ref[:2]))
		var r Recipient
		copy(r[:], ref[2:18])
		seq := binary.BigEndian.Uint64(ref[18:26])
		if sh >= len(sw.q.shards) {
			continue
		}
		if len(sw.out) >= sw.limit || !sw.take(sh, r) {
			keep = append(keep, ref...)
			continue
		}
		if err := sw.remove(sh, r, seq); err != nil {
			return err
		}
	}
	if len(keep) == 0 {
		sw.b.Delete(src.key, nil)
	} else {
		src.leave(src.at)
		if len(keep) != len(refs) {
			sw.b.Set(src.key, keep, nil)
		}
	}
	return nil
}

// take holds recipient r of shard sh for the rest of the sweep (no Lease can
// read a record being deleted); false when a live lease holds it. A
// timed-out lease whose holder may still be working is revoked by this: its
// late Complete fails (ErrUnknownLease) instead of writing back a record
// deleted here or counting it twice.
func (sw *expireSweep) take(sh int, r Recipient) bool {
	tk := takenKey{sh, r}
	if _, mine := sw.taken[tk]; mine {
		return true
	}
	s := sw.q.shards[sh]
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, leased := s.mu.leased[r]; leased && e.held(sw.q.opts.Now()) { // leases run on the queue's clock
		return false
	}
	token := sw.q.leaseToken.Add(1)
	s.mu.leased[r] = leaseEntry{token: token, committing: true}
	sw.taken[tk] = token
	return true
}

// remove deletes message seq of recipient r, in R or still in F (gone
// already: acked long ago), and adds it to what the sweep returns.
func (sw *expireSweep) remove(sh int, r Recipient, seq uint64) error {
	q := sw.q
	rk := recordKey(sh, r, seq)
	v, ok, err := q.db.GetCopy(rk)
	if err != nil {
		return err
	}
	rec := v
	var pk []byte // a parked record's index key
	if ok {
		sw.rBuckets = append(sw.rBuckets, inRBucket(r))
	} else if g, parked, err := q.parkedGroupOf(sh, r, seq); err != nil {
		return err
	} else if parked {
		rk = parkKey(g, sh, r, seq)
		if v, ok, err = q.db.GetCopy(rk); err != nil {
			return err
		}
		pk = parkIndexKey(sh, r, seq)
		if !ok { // an index entry without its record: drop it
			sw.b.Delete(pk, nil)
			return nil
		}
		rec = v
		sw.pBuckets = append(sw.pBuckets, inPBucket(r))
	} else {
		rk = freshKey(sh, seq)
		if v, ok, err = q.db.GetCopy(rk); err != nil || !ok {
			return err
		}
		var fr Recipient
		if fr, rec, err = splitFresh(v); err == nil && fr != r {
			return nil // not this reference's record (cannot happen: seqs are unique)
		}
	}
	m, _, derr := q.decodeRecord(rec, true)
	m.Seq, m.Shard = seq, sh
	if derr != nil {
		q.opts.Logger.Warn("queue: expired record did not open; deleting it", "shard", sh, "seq", seq)
	}
	deleteRecord(sw.b, rk)
	if pk != nil {
		sw.b.Delete(pk, nil)
	}
	if !sw.woken[r] {
		sw.woken[r] = true
		sw.b.Set(dueKey(sh, sw.now, r, seq), nil, nil)
	}
	sw.removedBytes += int64(len(rk) + len(v))
	sw.perShard[sh]++
	sw.out = append(sw.out, m)
	return nil
}

// counted moves the queue's counters by what the committed sweep removed.
func (sw *expireSweep) counted() {
	q := sw.q
	for _, bk := range sw.rBuckets {
		q.inR[bk].Add(-1)
	}
	for _, bk := range sw.pBuckets {
		q.inP[bk].Add(-1)
	}
	q.parked.Add(-int64(len(sw.pBuckets)))
	for sh, n := range sw.perShard {
		q.shards[sh].lowerTo(sw.now.UnixNano())
		q.shards[sh].msgs.Add(-n)
	}
	q.depthMsgs.Add(-int64(len(sw.out)))
	q.depthBytes.Add(-sw.removedBytes)
	q.addOwned(sw.out, -1, false) // a record that did not open has recLen 0: it was not counted at Open either
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
