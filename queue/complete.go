package queue

import (
	"context"
	"math"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/heraldhq/herald/internal/kv"
)

// Outcome is what happened to one leased message.
type Outcome struct {
	// Seq names the message.
	Seq uint64
	// Ack removes the message for good.
	Ack bool
	// RetryAt reschedules it (when not Ack). Zero means now.
	RetryAt time.Time
	// CountAttempt increments the message's attempt count.
	CountAttempt bool
	// Park (when not Ack) moves the message out of its recipient's FIFO into
	// the park range of this group (see park.go), where nothing leases it
	// until Unpark.
	Park string
}

// Complete applies outcomes to a lease's messages, plus the caller's extra
// mutations, in one atomic batch, then ends the lease. Messages without an
// outcome stay queued unchanged. sync asks for an fsync (acks alone don't need
// one: a lost ack means a retransmission, which the platform dedupes).
func (q *Queue) Complete(ctx context.Context, l *Lease, outcomes []Outcome, extra *pebble.Batch, sync bool) error {
	return q.CompleteMany(ctx, []Completion{{Lease: l, Outcomes: outcomes, Extra: extra}}, sync)[0]
}

// Completion is one lease's part of CompleteMany.
type Completion struct {
	Lease    *Lease
	Outcomes []Outcome
	Extra    *pebble.Batch // the caller's mutations for this lease (may be nil)
}

// CompleteMany is Complete for several leases with one atomic batch and one
// commit: each lease's outcomes and extra mutations as Complete would write
// them. The answer has one error per completion: ErrClosed, or
// ErrUnknownLease for a lease that is not held (that one is left out, the
// others go ahead), or the commit's error for every lease in it.
func (q *Queue) CompleteMany(ctx context.Context, cs []Completion, sync bool) []error {
	errs := make([]error, len(cs))
	if q.closed.Load() {
		for i := range errs {
			errs[i] = ErrClosed
		}
		return errs
	}
	now := q.opts.Now()
	size := 0
	for _, c := range cs {
		if c.Extra != nil {
			size += len(c.Extra.Repr())
		}
	}
	b := q.batches.Get(size + 64*len(cs))
	pending := make([]completing, 0, len(cs))
	// The queue's own writes go into one batch, after the completions'
	// extras, and all into b with writes of a kind together (kv.ApplyGrouped:
	// cheaper memtable inserts than the kinds alternating completion by
	// completion). The extras hold no queue keys, so nothing of one key is
	// reordered.
	srcs := make([]*pebble.Batch, 0, len(cs)+1)
	own := q.batches.Get(64 * len(cs))
	for i, c := range cs {
		if !q.holdForCommit(c.Lease) {
			errs[i] = ErrUnknownLease
			continue
		}
		if c.Extra != nil {
			srcs = append(srcs, c.Extra)
		}
		pending = append(pending, q.writeOutcomes(own, c.Lease, c.Outcomes, now))
	}
	if len(pending) == 0 {
		q.batches.PutUnused(own)
		q.batches.PutUnused(b)
		return errs
	}
	err := kv.ApplyGrouped(b, append(srcs, own))
	q.batches.Put(own)
	if err == nil {
		err = q.batches.Commit(b, sync)
	} else {
		q.batches.Put(b)
	}
	for _, p := range pending {
		q.endCompletion(p, err == nil)
	}
	if err != nil {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
	}
	return errs
}

// holdForCommit marks l's recipient as committing, so no one leases a stale
// view and Expire cannot delete under the commit, even if the lease timed
// out. It reports false when l is not held.
func (q *Queue) holdForCommit(l *Lease) bool {
	s := q.shards[l.Shard]
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.mu.leased[l.Recipient]
	if !ok || e.token != l.token {
		return false
	}
	e.committing = true
	s.mu.leased[l.Recipient] = e
	return true
}

// completing is what a lease's completion changes in memory once its batch
// is committed (or must undo when it is not).
type completing struct {
	l                                     *Lease
	acked, ackedR, ackedBytes, movedDelta int64
	movedBuckets                          []int
	parkBuckets                           []int // inP buckets raised ahead of the commit
	newHint                               int64 // -1: none
}

// writeOutcomes writes l's outcomes into b.
func (q *Queue) writeOutcomes(b *pebble.Batch, l *Lease, outcomes []Outcome, now time.Time) completing {
	c := completing{l: l, newHint: -1}
	// A lease holds a few messages: their outcomes are found by a scan, and
	// through a map only for long leases.
	var bySeq map[uint64]*Outcome
	if len(outcomes) > 16 {
		bySeq = make(map[uint64]*Outcome, len(outcomes))
		for i := range outcomes {
			bySeq[outcomes[i].Seq] = &outcomes[i]
		}
	}
	outcomeOf := func(seq uint64) *Outcome {
		if bySeq != nil {
			return bySeq[seq]
		}
		var o *Outcome
		for i := range outcomes {
			if outcomes[i].Seq == seq {
				o = &outcomes[i] // the last one wins, as with the map
			}
		}
		return o
	}
	var headDue time.Time
	var headSeq uint64
	headSet := false
	var buf []byte // for rewritten records only: an ack needs none
	for i := range l.Messages {
		m := &l.Messages[i]
		m.acked = false
		o := outcomeOf(m.Seq)
		rk := recordKey(l.Shard, l.Recipient, m.Seq)
		key := rk
		if m.fresh {
			key = freshKey(l.Shard, m.Seq)
		}
		switch {
		case o != nil && o.Ack:
			deleteRecord(b, key)
			m.acked = true
			c.acked++
			c.ackedBytes += int64(m.size)
			if !m.fresh {
				c.ackedR++
			}
		case o != nil && validGroup(o.Park):
			sealed := m.Sealed
			if sealed == nil {
				sealed = q.sealer.Seal(nil, m.Payload)
			}
			buf = q.encodeRecord(buf[:0], m, sealed)
			pk := parkKey(o.Park, l.Shard, l.Recipient, m.Seq)
			b.Set(pk, buf, nil)
			b.Set(parkIndexKey(l.Shard, l.Recipient, m.Seq), []byte(o.Park), nil)
			deleteRecord(b, key)
			if !m.fresh {
				c.ackedR++ // gone from R
			}
			bk := inPBucket(l.Recipient)
			q.inP[bk].Add(1) // before the record exists
			c.parkBuckets = append(c.parkBuckets, bk)
			c.movedDelta += int64(len(pk)+len(buf)) - int64(m.size)
		case o == nil && !m.fresh:
			if !headSet {
				headDue, headSeq, headSet = m.Due, m.Seq, true
			}
		default:
			// Rescheduled, or a fresh record left as it was: (re)written in R.
			nm := *m
			if o != nil {
				nm.Due = o.RetryAt
				if nm.Due.IsZero() {
					nm.Due = now
				}
				if o.CountAttempt {
					nm.Attempt++
				}
			}
			sealed := m.Sealed
			if sealed == nil {
				sealed = q.sealer.Seal(nil, m.Payload)
			}
			buf = q.encodeRecord(buf[:0], &nm, sealed)
			b.Set(rk, buf, nil)
			if m.fresh {
				deleteRecord(b, key)
				bk := inRBucket(l.Recipient)
				q.inR[bk].Add(1) // before the record exists
				c.movedBuckets = append(c.movedBuckets, bk)
				c.movedDelta += int64(len(rk)+len(buf)) - int64(m.size)
			}
			if !headSet {
				headDue, headSeq, headSet = nm.Due, m.Seq, true
			}
		}
	}
	if l.hint != nil {
		b.Delete(l.hint, nil)
	}
	switch {
	case headSet:
		b.Set(dueKey(l.Shard, headDue, l.Recipient, headSeq), nil, nil)
		c.newHint = headDue.UnixNano()
	case !l.exhausted:
		// Messages beyond the lease exist (or may): leave a hint so they're found.
		b.Set(dueKey(l.Shard, now, l.Recipient, l.Messages[len(l.Messages)-1].Seq), nil, nil)
		c.newHint = now.UnixNano()
	}
	return c
}

// endCompletion applies c's counts once its batch is committed and ends the
// lease; when the batch was not committed it undoes what was counted ahead
// and leaves fresh records held for reclaim to move to R.
func (q *Queue) endCompletion(c completing, committed bool) {
	l := c.l
	s := q.shards[l.Shard]
	if !committed {
		for _, bk := range c.movedBuckets {
			q.inR[bk].Add(-1)
		}
		for _, bk := range c.parkBuckets {
			q.inP[bk].Add(-1)
		}
		if l.hasFresh() {
			// The fresh records are still in F behind the cursor: keep them
			// held and let reclaim move them to R.
			s.mu.Lock()
			if e, ok := s.mu.leased[l.Recipient]; ok && e.token == l.token {
				e.committing, e.expires = false, time.Time{}
				s.mu.leased[l.Recipient] = e
				s.mu.reclaimAt = math.MinInt64
			}
			s.mu.Unlock()
			return
		}
		q.unlease(s, l.Recipient, l.token)
		return
	}
	if c.newHint >= 0 {
		s.lowerTo(c.newHint)
	}
	if c.ackedR > 0 {
		q.inR[inRBucket(l.Recipient)].Add(-int32(c.ackedR))
	}
	q.parked.Add(int64(len(c.parkBuckets)))
	q.depthMsgs.Add(-c.acked)
	q.depthBytes.Add(c.movedDelta - c.ackedBytes)
	q.addOwned(l.Messages, -1, true)
	s.msgs.Add(-c.acked)
	q.unlease(s, l.Recipient, l.token)
}

// Release ends a lease without changing anything: its messages are due again now.
func (q *Queue) Release(l *Lease) {
	s := q.shards[l.Shard]
	if !l.hasFresh() {
		q.unlease(s, l.Recipient, l.token)
		return
	}
	// Fresh records sit behind the cursor: the next Lease moves them to R
	// (reclaim), from where they are handed out again.
	s.mu.Lock()
	if e, ok := s.mu.leased[l.Recipient]; ok && e.token == l.token && !e.committing {
		e.expires = time.Time{}
		s.mu.leased[l.Recipient] = e
		s.mu.reclaimAt = math.MinInt64
	}
	s.mu.Unlock()
}

// Extend pushes a lease's timeout out by another LeaseTimeout.
func (q *Queue) Extend(l *Lease) error {
	s := q.shards[l.Shard]
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.mu.leased[l.Recipient]
	if !ok || e.token != l.token {
		return ErrUnknownLease
	}
	e.expires = q.opts.Now().Add(q.opts.LeaseTimeout)
	s.mu.leased[l.Recipient] = e
	return nil
}
