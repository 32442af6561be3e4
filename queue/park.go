package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/cockroachdb/pebble/v2"
	"github.com/heraldhq/herald/internal/kv"
)

// Parking: a held group (a paused campaign) costs nothing while it waits.
//
// A leased message whose group is held is completed with Outcome.Park: its
// record leaves the recipient's FIFO (F or R) for the group's park range,
// where no Lease looks. Unpark moves a group's records back into R with a
// hint per recipient, behind nothing and in front of their recipients' later
// messages (R is ordered by sequence number). Expire finds a parked record
// through the park index, so a parked message still expires at its TTL.
//
//	q P <group> 0 <shard(2)> <rcpt(16)> <seq(8)> → the record, as in R
//	q p <shard(2)> <rcpt(16)> <seq(8)>          → the group (park index, for Expire)
//
// A group name is at most 200 bytes and has no zero byte (campaign ids).

const (
	kPark      = 'P'
	kParkIndex = 'p'
	maxGroup   = 200
	inPBuckets = 1 << 16
)

// ErrBadGroup: a group name that cannot be parked under.
var ErrBadGroup = errors.New("queue: a park group is 1-200 bytes without a zero byte")

func validGroup(g string) bool {
	return g != "" && len(g) <= maxGroup && strings.IndexByte(g, 0) < 0
}

func parkPrefix(group string) []byte {
	k := make([]byte, 0, 3+len(group)+26)
	k = append(k, pfx, kPark)
	k = append(k, group...)
	return append(k, 0)
}

func parkKey(group string, shard int, r Recipient, seq uint64) []byte {
	k := parkPrefix(group)
	k = binary.BigEndian.AppendUint16(k, uint16(shard))
	k = append(k, r[:]...)
	return binary.BigEndian.AppendUint64(k, seq)
}

func parkIndexKey(shard int, r Recipient, seq uint64) []byte {
	k := make([]byte, 0, 28)
	k = append(k, pfx, kParkIndex)
	k = binary.BigEndian.AppendUint16(k, uint16(shard))
	k = append(k, r[:]...)
	return binary.BigEndian.AppendUint64(k, seq)
}

func inPBucket(r Recipient) int { return int(binary.BigEndian.Uint16(r[8:10])) & (inPBuckets - 1) }

// parkTail splits the end of a park key: shard, recipient, sequence.
func parkTail(k []byte) (shard int, r Recipient, seq uint64, ok bool) {
	if len(k) < 2+1+26 {
		return 0, r, 0, false
	}
	t := k[len(k)-26:]
	copy(r[:], t[2:18])
	return int(binary.BigEndian.Uint16(t[:2])), r, binary.BigEndian.Uint64(t[18:]), true
}

// Parked returns how many messages are parked (all groups).
func (q *Queue) Parked() int64 { return q.parked.Load() }

// ParkedGroups lists the groups that have parked records (one seek per group).
func (q *Queue) ParkedGroups() ([]string, error) {
	lo := []byte{pfx, kPark}
	it, err := q.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: kv.PrefixEnd(lo)})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	defer it.Close()
	var out []string
	for ok := it.First(); ok; {
		k := it.Key()
		i := bytes.IndexByte(k[2:], 0)
		if i < 0 {
			ok = it.Next()
			continue
		}
		g := string(k[2 : 2+i])
		out = append(out, g)
		ok = it.SeekGE(kv.PrefixEnd(parkPrefix(g)))
	}
	if err := it.Error(); err != nil {
		return nil, fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	return out, nil
}

// Unpark moves every parked record of group back into the per-recipient range
// R, with a hint per recipient, and wakes their shards. It returns how many
// records it moved. Safe to call at any time and more than once; a record
// parked while it runs is found by the next call (the engine calls it again
// after a park commit that finds its group no longer held).
func (q *Queue) Unpark(ctx context.Context, group string) (int, error) {
	return q.eachParked(ctx, group, nil)
}

// TakeParked removes every parked record of group from the queue, batch by
// batch: take gets each batch's messages (payloads opened; one that does
// not open has a nil Payload) and the batch that deletes them, to add its
// own writes and to report the messages' outcome before that batch commits
// (statuses before acks: a crash between the two leaves the records parked,
// to be taken again). A take error stops it with nothing of that batch
// deleted. It returns how many records it removed.
func (q *Queue) TakeParked(ctx context.Context, group string, take func(msgs []Message, b *pebble.Batch) error) (int, error) {
	if take == nil {
		return 0, errors.New("queue: TakeParked needs take")
	}
	return q.eachParked(ctx, group, take)
}

func (q *Queue) eachParked(ctx context.Context, group string, take func([]Message, *pebble.Batch) error) (int, error) {
	if q.closed.Load() {
		return 0, ErrClosed
	}
	if !validGroup(group) {
		return 0, ErrBadGroup
	}
	total := 0
	from := parkPrefix(group)
	for {
		n, next, err := q.parkedBatch(group, from, 1024, take)
		total += n
		if err != nil || next == nil {
			return total, err
		}
		if err := ctx.Err(); err != nil {
			return total, err
		}
		from = next
	}
}

// parkedBatch handles up to limit parked records of group, from key from
// on, all of one shard (the first one found): moved back into R with a hint
// per recipient (take nil), or deleted after take. next is where the
// following call starts (past this call's deletions: a scan from the
// group's start would wade through the tombstones of every record handled
// before it), nil when nothing is left.
func (q *Queue) parkedBatch(group string, from []byte, limit int, take func([]Message, *pebble.Batch) error) (int, []byte, error) {
	pre := parkPrefix(group)
	sh, found, err := q.firstParkShard(from, kv.PrefixEnd(pre))
	if err != nil || !found {
		return 0, nil, err
	}
	s := q.shards[sh]
	// Expire deletes parked records under every shard's scanMu: moving one
	// under it would let the record outlive its expiry entry. The view is
	// opened under the lock, so every record it shows is still there.
	s.scanMu.Lock()
	defer s.scanMu.Unlock()
	it, err := q.db.NewIter(&pebble.IterOptions{LowerBound: from, UpperBound: kv.PrefixEnd(pre)})
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	defer it.Close()
	it.First()
	shardEnd := kv.PrefixEnd(binary.BigEndian.AppendUint16(bytes.Clone(pre), uint16(sh)))
	b := q.db.NewBatch()
	now := q.opts.Now()
	hinted := map[Recipient]bool{}
	var buckets, pbuckets []int
	var delta int64
	var next []byte
	var taken []Message
	n := 0
	undo := func() {
		for _, bk := range buckets {
			q.inR[bk].Add(-1)
		}
	}
	for ; it.Valid() && bytes.Compare(it.Key(), shardEnd) < 0; it.Next() {
		if n == limit {
			next = bytes.Clone(it.Key())
			break
		}
		k := it.Key()
		_, r, seq, ok := parkTail(k)
		if !ok {
			continue
		}
		v := it.Value()
		b.Delete(k, nil)
		b.Delete(parkIndexKey(sh, r, seq), nil)
		pbuckets = append(pbuckets, inPBucket(r))
		n++
		if take != nil {
			m, _, err := q.decodeRecord(v, true)
			if err != nil {
				q.opts.Logger.Warn("queue: a parked record did not open; deleting it", "shard", sh, "seq", seq)
				m.Payload = nil
			}
			m.Seq = seq
			m.size = len(k) + len(v)
			taken = append(taken, m)
			delta -= int64(m.size)
			continue
		}
		rk := recordKey(sh, r, seq)
		b.Set(rk, v, nil)
		if !hinted[r] {
			hinted[r] = true
			b.Set(dueKey(sh, now, r, seq), nil, nil)
		}
		bk := inRBucket(r)
		q.inR[bk].Add(1) // before the record exists: never short
		buckets = append(buckets, bk)
		delta += int64(len(rk)) - int64(len(k))
	}
	if err := it.Error(); err != nil {
		b.Close()
		undo()
		return 0, nil, fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	if next == nil {
		next = shardEnd // the next shard's records, if any
	}
	if take != nil && len(taken) > 0 {
		if err := take(taken, b); err != nil {
			b.Close()
			return 0, nil, err
		}
	}
	// No fsync: a batch is atomic, so a crash leaves each record either
	// moved (or taken) or still parked, and the node unparks every group
	// not held at start.
	if err := q.db.Commit(b, false); err != nil {
		undo()
		return 0, nil, err
	}
	for _, bk := range pbuckets {
		q.inP[bk].Add(-1)
	}
	q.parked.Add(-int64(n))
	q.depthBytes.Add(delta)
	if take != nil {
		q.depthMsgs.Add(-int64(len(taken)))
		s.msgs.Add(-int64(len(taken)))
		q.addOwned(taken, -1, false) // a record that did not open has recLen 0: not counted at Open either
	} else if n > 0 {
		s.lowerTo(now.UnixNano())
		if q.opts.Notify != nil {
			q.opts.Notify(sh)
		}
	}
	return n, next, nil
}

// firstParkShard returns the shard of the first parked record in [lo, hi).
func (q *Queue) firstParkShard(lo, hi []byte) (int, bool, error) {
	it, err := q.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return 0, false, fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	defer it.Close()
	if !it.First() {
		if err := it.Error(); err != nil {
			return 0, false, fmt.Errorf("%w: %w", kv.ErrStorage, err)
		}
		return 0, false, nil
	}
	sh, _, _, ok := parkTail(it.Key())
	if !ok || sh >= len(q.shards) {
		return 0, false, fmt.Errorf("%w: malformed park key", kv.ErrStorage)
	}
	return sh, true, nil
}

// parkedGroupOf returns the group a parked record of (shard, r, seq) is
// under, when there is one.
func (q *Queue) parkedGroupOf(sh int, r Recipient, seq uint64) (string, bool, error) {
	if q.inP[inPBucket(r)].Load() == 0 {
		return "", false, nil
	}
	v, ok, err := q.db.GetCopy(parkIndexKey(sh, r, seq))
	if err != nil || !ok {
		return "", false, err
	}
	return string(v), true, nil
}
