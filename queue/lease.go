package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/heraldhq/herald/internal/kv"
)

// Lease hands out up to maxRecipients recipients of shard that have due
// messages, each with up to maxPerRecipient of its due messages in FIFO order.
func (q *Queue) Lease(ctx context.Context, shardID int, maxRecipients, maxPerRecipient int) ([]*Lease, error) {
	if q.closed.Load() {
		return nil, ErrClosed
	}
	if shardID < 0 || shardID >= len(q.shards) {
		return nil, fmt.Errorf("queue: no shard %d", shardID)
	}
	if maxRecipients <= 0 || maxPerRecipient <= 0 {
		return nil, nil
	}
	now := q.opts.Now()
	s := q.shards[shardID]
	s.scanMu.Lock()
	defer s.scanMu.Unlock()
	if err := q.reclaimLocked(s, now); err != nil {
		return nil, err
	}
	// Hinted recipients (retries, scheduled messages, backlogs) first, then
	// fresh records in enqueue order.
	leases, err := q.leaseHinted(ctx, s, now, maxRecipients, maxPerRecipient)
	if err != nil || len(leases) >= maxRecipients {
		return leases, err
	}
	return q.leaseFresh(ctx, s, now, leases, maxRecipients, maxPerRecipient)
}

// leaseHinted leases recipients found through their D hints (records in R).
func (q *Queue) leaseHinted(ctx context.Context, s *shard, now time.Time, maxRecipients, maxPerRecipient int) ([]*Lease, error) {
	shardID := s.id
	lo := []byte{pfx, kDue}
	lo = binary.BigEndian.AppendUint16(lo, uint16(shardID))
	// The scan runs past now to the first hint not due yet, so the watermark
	// can rise above now: with no hint due, later calls open no iterator.
	hi := kv.PrefixEnd(lo)
	s.lowMu.Lock()
	startAt := s.low
	if s.scanning > 0 || startAt < 0 {
		startAt = 0
	}
	s.scanning++
	s.low = math.MaxInt64
	s.lowMu.Unlock()
	// firstSeen: the lowest due among the hints this scan saw — every live
	// hint is at or above it (below startAt there are none, and the scan sees
	// the first one at or above startAt); MaxInt64 when there is none at all.
	firstSeen := int64(math.MaxInt64)
	defer func() {
		s.lowMu.Lock()
		s.scanning--
		if firstSeen < s.low {
			s.low = firstSeen
		}
		s.lowMu.Unlock()
	}()
	if startAt > now.UnixNano() {
		firstSeen = startAt // nothing due before it: keep the watermark, open nothing
		return nil, nil
	}
	start := binary.BigEndian.AppendUint64(append([]byte(nil), lo...), uint64(startAt))
	it, err := q.db.NewIter(&pebble.IterOptions{LowerBound: start, UpperBound: hi})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	defer it.Close()

	seen := make(map[Recipient]struct{})
	// Phase 1: walk the due hints and mark up to maxRecipients recipients
	// leased. Phase 2 (collectAll) reads their records through one iterator
	// opened after every mark: a view taken before a mark could predate a
	// concurrent Complete that released that recipient (Complete unleases
	// only after its commit), and hand out records it already acked or moved.
	var cands []candidate
	for it.First(); it.Valid() && len(cands) < maxRecipients; it.Next() {
		if err := ctx.Err(); err != nil {
			break
		}
		hint := append([]byte(nil), it.Key()...)
		d := int64(binary.BigEndian.Uint64(hint[4:12]))
		if d < firstSeen {
			firstSeen = d
		}
		if d > now.UnixNano() {
			break // not due yet, nor is anything after it
		}
		var r Recipient
		copy(r[:], hint[12:28])
		if _, dup := seen[r]; dup {
			continue
		}
		seen[r] = struct{}{}
		s.mu.Lock()
		if e, ok := s.mu.leased[r]; ok && e.held(now) {
			s.mu.Unlock()
			continue
		}
		token := q.leaseToken.Add(1)
		s.mu.leased[r] = leaseEntry{token: token, expires: now.Add(q.opts.LeaseTimeout)}
		s.mu.Unlock()
		cands = append(cands, candidate{r, hint, token})
	}
	if err := it.Error(); err != nil {
		for _, c := range cands {
			q.unlease(s, c.r, c.token)
		}
		return nil, fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	if len(cands) == 0 {
		return nil, nil
	}
	return q.collectAll(s, cands, now, maxPerRecipient)
}

// candidate is a recipient leaseHinted marked leased, with the hint it was
// found through.
type candidate struct {
	r     Recipient
	hint  []byte
	token uint64
}

// collectAll reads the marked recipients' due runs into leases, through one
// iterator opened after every mark, and commits the hint repairs it met.
// A recipient with nothing due is unleased.
func (q *Queue) collectAll(s *shard, cands []candidate, now time.Time, maxPerRecipient int) ([]*Lease, error) {
	var leases []*Lease
	var repair *pebble.Batch
	var repairDues []int64
	rit, err := q.db.NewIter(nil)
	if err != nil {
		for _, c := range cands {
			q.unlease(s, c.r, c.token)
		}
		return nil, fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	defer rit.Close()
	for i, c := range cands {
		r, hint, token := c.r, c.hint, c.token
		l, fix, fixDue, err := q.collect(rit, s.id, r, hint, now, maxPerRecipient)
		if err != nil {
			for _, rest := range cands[i:] {
				q.unlease(s, rest.r, rest.token)
			}
			return leases, err
		}
		if fix != nil {
			if repair == nil {
				repair = q.db.NewBatch()
			}
			repair.Apply(fix, nil)
			fix.Close()
			if fixDue != 0 {
				repairDues = append(repairDues, fixDue)
			}
		}
		if l == nil {
			q.unlease(s, r, token)
			continue
		}
		l.token = token
		leases = append(leases, l)
	}
	if repair != nil {
		// Hint repairs need no fsync: a lost repair is redone next time.
		if err := q.db.Commit(repair, false); err != nil {
			return leases, err
		}
		for _, d := range repairDues {
			s.lowerTo(d)
		}
	}
	return leases, nil
}

// mover gathers moves of fresh records into R. A move deletes the F record,
// writes the R record and, once per recipient and batch, a hint, so the
// record is found again once whatever holds its recipient back is done. Moves
// need no fsync: a lost move leaves the record in F, where a restart finds it.
type mover struct {
	q       *Queue
	s       *shard
	b       *pebble.Batch
	hinted  map[Recipient]bool
	dues    []int64
	delta   int64 // stored bytes added (the R form is smaller)
	buckets []int // inR buckets raised, lowered again if the commit fails
}

func (q *Queue) newMover(s *shard) *mover {
	return &mover{q: q, s: s, b: q.db.NewBatch(), hinted: map[Recipient]bool{}}
}

func (mv *mover) move(fk []byte, oldSize int, r Recipient, seq uint64, rec []byte, due time.Time) {
	rk := recordKey(mv.s.id, r, seq)
	deleteRecord(mv.b, fk)
	mv.b.Set(rk, rec, nil)
	if !mv.hinted[r] {
		mv.hinted[r] = true
		mv.b.Set(dueKey(mv.s.id, due, r, seq), nil, nil)
		mv.dues = append(mv.dues, due.UnixNano())
	}
	bk := inRBucket(r)
	mv.q.inR[bk].Add(1) // before the record exists: the count never falls short
	mv.buckets = append(mv.buckets, bk)
	mv.delta += int64(len(rk)+len(rec)) - int64(oldSize)
}

func (mv *mover) commit() error {
	if mv.b.Empty() {
		mv.b.Close()
		return nil
	}
	if err := mv.q.db.Commit(mv.b, false); err != nil {
		for _, bk := range mv.buckets {
			mv.q.inR[bk].Add(-1)
		}
		return err
	}
	for _, d := range mv.dues {
		mv.s.lowerTo(d)
	}
	mv.q.depthBytes.Add(mv.delta)
	return nil
}

// leaseFresh hands out fresh records from the shard's cursor on, in enqueue
// order: each new recipient's run of due records becomes a lease, read
// straight from F. A record whose recipient is held by another lease, has
// records in R (older ones: retries, backlog) or had a record moved earlier in
// this scan is moved to R behind them instead, which keeps per-recipient FIFO.
// Called with s.scanMu held.
//
// hinted are the leases this call made from R; a fresh record of one of them
// that had nothing more in R joins it (it is that recipient's next message).
func (q *Queue) leaseFresh(ctx context.Context, s *shard, now time.Time, hinted []*Lease, maxRecipients, maxPer int) ([]*Lease, error) {
	settled := q.settled() // before the view: everything up to it is in the view
	if s.cursor > settled {
		return hinted, nil
	}
	it, err := q.db.NewIter(nil) // one view; bounds move from epoch to epoch
	if err != nil {
		return nil, fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	defer it.Close()
	mv := q.newMover(s)
	leases := hinted
	byR := make(map[Recipient]*Lease)
	for _, l := range hinted {
		if l.exhausted {
			byR[l.Recipient] = l
		}
	}
	abort := func(err error) ([]*Lease, error) {
		// Nothing was committed and the cursor stays: the next scan redoes it.
		for _, l := range leases {
			q.unlease(s, l.Recipient, l.token)
		}
		mv.b.Close()
		return nil, err
	}
	next := s.cursor
	budget := maxRecipients*maxPer + 1024 // bounds one call's work
	expires := now.Add(q.opts.LeaseTimeout)
	var failed error
	// step dispatches one fresh record; stop: it must wait for the next call.
	step := func(k, v []byte) (stop bool) {
		seq := keySeq(k)
		r, rec, err := splitFresh(v)
		var m Message
		var sealed []byte
		if err == nil {
			m, sealed, err = q.decodeRecord(rec, false)
		}
		if err != nil {
			q.deadLetter(mv.b, s.id, bytes.Clone(k), bytes.Clone(v), err)
			next = seq + 1
			return false
		}
		size := len(k) + len(v)
		l := byR[r]
		switch {
		case mv.hinted[r], l != nil && len(l.Messages) >= maxPer, m.Due.After(now):
			mv.move(bytes.Clone(k), size, r, seq, bytes.Clone(rec), m.Due)
		case l != nil:
			m.Payload, err = q.sealer.Open(sealed)
			if err != nil {
				q.deadLetter(mv.b, s.id, bytes.Clone(k), bytes.Clone(v), fmt.Errorf("%w: %v", errCorruptRecord, err))
				break
			}
			m.Seq, m.size, m.Sealed, m.fresh, m.FirstLease = seq, size, bytes.Clone(sealed), true, seq > q.openSeq
			l.Messages = append(l.Messages, m)
			s.mu.Lock()
			e := s.mu.leased[r]
			e.fresh = append(e.fresh, seq)
			s.mu.leased[r] = e
			s.mu.reclaimAt = min(s.mu.reclaimAt, e.expires.UnixNano())
			s.mu.Unlock()
		default:
			if len(leases) >= maxRecipients {
				return true
			}
			s.mu.Lock()
			if e, ok := s.mu.leased[r]; ok && e.held(now) {
				s.mu.Unlock()
				mv.move(bytes.Clone(k), size, r, seq, bytes.Clone(rec), now)
				break
			}
			token := q.leaseToken.Add(1)
			s.mu.leased[r] = leaseEntry{token: token, expires: expires, fresh: []uint64{seq}}
			s.mu.reclaimAt = min(s.mu.reclaimAt, expires.UnixNano())
			s.mu.Unlock()
			// Marked: from here nothing else can add records of r to R.
			if q.inR[inRBucket(r)].Load() > 0 {
				has, err := q.hasRecords(s.id, r)
				if err != nil {
					q.unlease(s, r, token)
					failed = err
					return true
				}
				if has {
					q.unlease(s, r, token)
					mv.move(bytes.Clone(k), size, r, seq, bytes.Clone(rec), now)
					break
				}
			}
			m.Payload, err = q.sealer.Open(sealed)
			if err != nil {
				q.unlease(s, r, token)
				q.deadLetter(mv.b, s.id, bytes.Clone(k), bytes.Clone(v), fmt.Errorf("%w: %v", errCorruptRecord, err))
				break
			}
			m.Seq, m.size, m.Sealed, m.fresh, m.FirstLease = seq, size, bytes.Clone(sealed), true, seq > q.openSeq
			l = &Lease{Shard: s.id, Recipient: r, Messages: []Message{m}, token: token, exhausted: true}
			byR[r] = l
			leases = append(leases, l)
		}
		next = seq + 1
		return false
	}
epochs:
	for next <= settled && budget > 0 && ctx.Err() == nil {
		end := min(settled, (next>>epochBits+1)<<epochBits-1) // last seq of next's epoch
		it.SetBounds(freshKey(s.id, next), append(freshKey(s.id, end), 0))
		for it.First(); it.Valid(); it.Next() {
			if budget == 0 || ctx.Err() != nil || step(it.Key(), it.Value()) {
				break epochs
			}
			budget--
		}
		if it.Error() != nil {
			break
		}
		next = end + 1 // nothing more of this shard in the epoch up to end
	}
	if failed != nil {
		return abort(failed)
	}
	if err := it.Error(); err != nil {
		return abort(fmt.Errorf("%w: %w", kv.ErrStorage, err))
	}
	if err := mv.commit(); err != nil {
		return abort(err)
	}
	s.cursor = next
	return leases, nil
}

// hasRecords reports whether r has any record in R, through a fresh view.
func (q *Queue) hasRecords(shardID int, r Recipient) (bool, error) {
	lo := recordKey(shardID, r, 0)
	it, err := q.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: kv.PrefixEnd(lo[:20])})
	if err != nil {
		return false, fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	defer it.Close()
	has := it.First()
	if err := it.Error(); err != nil {
		return false, fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	return has, nil
}

// reclaimLocked moves the records of fresh leases that timed out or were
// released into R, with a hint, and ends those leases. Called with s.scanMu held.
func (q *Queue) reclaimLocked(s *shard, now time.Time) error {
	s.mu.Lock()
	if now.UnixNano() < s.mu.reclaimAt {
		s.mu.Unlock()
		return nil
	}
	type item struct {
		r     Recipient
		token uint64
		seqs  []uint64
	}
	var todo []item
	next := int64(math.MaxInt64)
	for r, e := range s.mu.leased {
		if len(e.fresh) == 0 || e.committing {
			continue // a committing lease either ends or is marked for reclaim again
		}
		if now.Before(e.expires) {
			next = min(next, e.expires.UnixNano())
			continue
		}
		token := q.leaseToken.Add(1) // revokes the lease: a late Complete fails
		s.mu.leased[r] = leaseEntry{token: token, committing: true}
		todo = append(todo, item{r, token, e.fresh})
	}
	s.mu.reclaimAt = next
	s.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}
	restore := func() {
		s.mu.Lock()
		for _, it := range todo {
			if e := s.mu.leased[it.r]; e.token == it.token {
				s.mu.leased[it.r] = leaseEntry{token: it.token, fresh: it.seqs}
			}
		}
		s.mu.reclaimAt = math.MinInt64
		s.mu.Unlock()
	}
	mv := q.newMover(s)
	for _, it := range todo {
		for _, seq := range it.seqs {
			fk := freshKey(s.id, seq)
			v, ok, err := q.db.GetCopy(fk)
			if err != nil {
				mv.b.Close()
				restore()
				return err
			}
			if !ok {
				continue
			}
			r, rec, err := splitFresh(v)
			var m Message
			if err == nil {
				m, _, err = q.decodeRecord(rec, false)
			}
			if err != nil {
				q.deadLetter(mv.b, s.id, fk, v, err)
				continue
			}
			mv.move(fk, len(fk)+len(v), r, seq, rec, m.Due)
		}
	}
	if err := mv.commit(); err != nil {
		restore()
		return err
	}
	for _, it := range todo {
		q.unlease(s, it.r, it.token)
	}
	return nil
}

// collect reads the recipient's FIFO head run through it, an iterator whose
// view was taken after the recipient was marked leased (see Lease). It
// returns nil lease (and a repair batch) when the hint is stale.
func (q *Queue) collect(it *pebble.Iterator, shardID int, r Recipient, hint []byte, now time.Time, max int) (*Lease, *pebble.Batch, int64, error) {
	lo := recordKey(shardID, r, 0)
	var fixDue int64
	it.SetBounds(lo, kv.PrefixEnd(lo[:20]))
	l := &Lease{Shard: shardID, Recipient: r, hint: hint, exhausted: true}
	var fix *pebble.Batch
	for it.First(); it.Valid(); it.Next() {
		if len(l.Messages) == max {
			l.exhausted = false
			break
		}
		k := it.Key()
		m, sealed, err := q.decodeRecord(it.Value(), true)
		if err != nil {
			// Never a crash loop: move the record aside and go on.
			if fix == nil {
				fix = q.db.NewBatch()
			}
			q.deadLetter(fix, shardID, append([]byte(nil), k...), append([]byte(nil), it.Value()...), err)
			continue
		}
		if m.Due.After(now) {
			l.exhausted = false
			if len(l.Messages) == 0 {
				// Head not due yet: move the hint to the head's due time.
				if fix == nil {
					fix = q.db.NewBatch()
				}
				fix.Delete(hint, nil)
				fix.Set(dueKey(shardID, m.Due, r, binary.BigEndian.Uint64(k[20:28])), nil, nil)
				fixDue = m.Due.UnixNano()
			}
			break
		}
		m.Seq = binary.BigEndian.Uint64(k[20:28])
		m.size = len(k) + len(it.Value())
		m.Sealed = append([]byte(nil), sealed...)
		l.Messages = append(l.Messages, m)
	}
	if err := it.Error(); err != nil {
		return nil, nil, 0, fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	if len(l.Messages) == 0 {
		if l.exhausted {
			if fix == nil {
				fix = q.db.NewBatch()
			}
			fix.Delete(hint, nil) // recipient is empty: stale hint
		}
		return nil, fix, fixDue, nil
	}
	return l, fix, fixDue, nil
}

func (q *Queue) deadLetter(b *pebble.Batch, shardID int, key, value []byte, cause error) {
	seq := keySeq(key)
	deleteRecord(b, key)
	q.countOwner(key, value, -1)
	b.Set(binary.BigEndian.AppendUint64([]byte{pfx, kDead}, seq), value, nil)
	q.deadCount.Add(1)
	q.depthMsgs.Add(-1)
	q.depthBytes.Add(-int64(len(key) + len(value)))
	q.shards[shardID].msgs.Add(-1)
	q.opts.Logger.Error("queue: record moved to dead letters", "shard", shardID, "seq", seq, "err", cause)
	if q.opts.OnDeadLetter != nil {
		q.opts.OnDeadLetter(shardID, seq, cause)
	}
}

func (q *Queue) unlease(s *shard, r Recipient, token uint64) {
	s.mu.Lock()
	if e, ok := s.mu.leased[r]; ok && e.token == token {
		delete(s.mu.leased, r)
	}
	s.mu.Unlock()
}
