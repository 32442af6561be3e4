package queue

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// noteExpiry records, after an Enqueue committed an expiry entry in epoch,
// that the epoch has an entry expiring at exp.
func (q *Queue) noteExpiry(epoch uint32, exp uint64) {
	q.expMu.Lock()
	q.expGen++
	b, ok := q.expBounds[epoch]
	if !ok || exp < b.min {
		b.min = exp
	}
	b.gen = q.expGen
	q.expBounds[epoch] = b
	q.expMu.Unlock()
}

// Enqueue durably stores msgs. It returns only when they are fsync'd (sharing
// the fsync with concurrent callers). Messages of one recipient within msgs keep
// their order. Nothing is stored when an error is returned.
func (q *Queue) Enqueue(ctx context.Context, msgs []Message) error {
	return q.EnqueueWith(ctx, msgs, nil)
}

// EnqueueWith is Enqueue with the caller's extra mutations (status records,
// campaign records) committed in the same durable batch.
func (q *Queue) EnqueueWith(ctx context.Context, msgs []Message, extra *pebble.Batch) error {
	if extra != nil {
		defer extra.Close()
	}
	if q.closed.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	now := q.opts.Now()
	for i := range msgs {
		m := &msgs[i]
		if m.Recipient == "" || m.ExpiresAt.IsZero() || len(m.ID) == 0 || len(m.ID) > 255 || len(m.Owner) > 255 {
			return fmt.Errorf("%w: message %d needs a recipient, an id (1-255 bytes), an expiry and an owner of at most 255 bytes", ErrInvalid, i)
		}
	}
	if q.depthBytes.Load() > q.opts.MaxQueuedBytes {
		return ErrFull
	}
	// Sized up front (sealing only shrinks a payload or adds a fixed
	// overhead): no doubling and copying while the records go in.
	size := 0
	for i := range msgs {
		size += len(msgs[i].ID) + len(msgs[i].Payload) + recordOverhead
	}
	if extra != nil {
		size += len(extra.Repr())
	}
	b := q.batches.Get(size)
	q.seqMu.Lock()
	if err := q.reserveSeqs(uint64(len(msgs))); err != nil {
		q.seqMu.Unlock()
		q.batches.PutUnused(b)
		return err
	}
	last := q.seq.Add(uint64(len(msgs)))
	first := last - uint64(len(msgs)) + 1
	q.committing[first] = struct{}{}
	q.seqMu.Unlock()
	defer func() {
		q.seqMu.Lock()
		delete(q.committing, first)
		q.seqMu.Unlock()
	}()
	var added int64
	perShard := make([]int64, len(q.shards))
	buf := make([]byte, 0, 512)
	var kbuf [freshKeyLen]byte
	type expGroup struct {
		first uint64
		refs  []byte
	}
	byExp := map[int64]*expGroup{}
	rcpts := make([]Recipient, len(msgs))
	shardOf := make([]int, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		m.Seq = first + uint64(i)
		if m.Due.IsZero() || m.Due.Before(now) {
			m.Due = now
		}
		r := q.sealer.Lookup(m.Recipient)
		sh := q.ShardOf(r)
		rcpts[i], shardOf[i] = r, sh
		g := byExp[m.ExpiresAt.UnixNano()]
		if g == nil {
			g = &expGroup{first: m.Seq}
			if len(byExp) == 0 { // usually the only group: one TTL per batch
				g.refs = make([]byte, 0, len(msgs)*refLen)
			}
			byExp[m.ExpiresAt.UnixNano()] = g
		}
		g.refs = appendRef(g.refs, sh, r, m.Seq)
		perShard[sh]++
	}
	// Records go into the batch shard by shard (sequence order within each):
	// consecutive memtable inserts then land next to each other, where the
	// skiplist's cached splice makes each one cheap.
	next := make([]int, len(q.shards))
	for sh, n := 1, 0; sh < len(next); sh++ {
		n += int(perShard[sh-1])
		next[sh] = n
	}
	order := make([]int, len(msgs))
	for i, sh := range shardOf {
		order[next[sh]] = i
		next[sh]++
	}
	for _, i := range order {
		m := &msgs[i]
		fk := appendFreshKey(kbuf[:0], shardOf[i], m.Seq) // Set copies key and value
		buf = append(append(buf[:0], freshVer), rcpts[i][:]...)
		buf = q.encodeRecord(buf, m, nil)
		b.Set(fk, buf, nil)
		m.size = len(fk) + len(buf)
		m.recLen = len(buf) - 1 - len(Recipient{})
		added += int64(m.size)
	}
	for exp, g := range byExp {
		b.Set(expiryKey(time.Unix(0, exp), g.first), g.refs, nil)
	}
	newOwners := q.writeOwners(b, msgs)
	if extra != nil {
		b.Apply(extra, nil)
	}
	if err := q.batches.Commit(b, true); err != nil {
		return err
	}
	for _, c := range newOwners {
		c.durable.Store(true)
	}
	for exp, g := range byExp {
		q.noteExpiry(uint32(g.first>>epochBits), uint64(exp))
	}
	q.depthMsgs.Add(int64(len(msgs)))
	q.depthBytes.Add(added)
	q.addOwned(msgs, 1, false)
	for i, n := range perShard {
		if n != 0 {
			q.shards[i].msgs.Add(n)
			if q.opts.Notify != nil {
				q.opts.Notify(i)
			}
		}
	}
	return nil
}

// recordOverhead bounds what a fresh record and its expiry reference add to
// a message's id and payload in a batch: batch entry header and key, the
// recipient, the record header, the seal's nonce, tag and key id, S2's frame.
const recordOverhead = 160

// seqBlock is how many sequence numbers one durable reservation covers.
const seqBlock = 1 << 20

// reserveSeqs makes sure n more sequence numbers lie under the durable
// ceiling, so a restart never issues one again (batches commit out of order,
// so no batch may record "the highest issued" itself). Called with seqMu held.
func (q *Queue) reserveSeqs(n uint64) error {
	if q.seq.Load()+n <= q.ceiling {
		return nil
	}
	c := q.seq.Load() + n + seqBlock
	b := q.db.NewBatch()
	b.Set([]byte{pfx, kSeq}, binary.BigEndian.AppendUint64(nil, c), nil)
	if err := q.db.Commit(b, true); err != nil {
		return err
	}
	q.ceiling = c
	return nil
}

// settled returns the highest sequence number at or below which every
// Enqueue has finished (committed or failed): records up to it that a view
// opened afterwards does not show will never appear.
func (q *Queue) settled() uint64 {
	q.seqMu.Lock()
	defer q.seqMu.Unlock()
	w := q.seq.Load()
	for first := range q.committing {
		w = min(w, first-1)
	}
	return w
}
