package queue

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldhq/herald/internal/kv"
)

// Owners. A record names its owner (the business it counts against) by a
// small id, a byte or two: q O <id(4)> → the owner's name, written in the
// batch of the first Enqueue that names it and never deleted (one per
// business). Each owner's byte count lives in memory, rebuilt at Open.

// ownerCount is one owner: its name, its id in records, its byte count.
type ownerCount struct {
	name    string
	id      uint32
	durable atomic.Bool // q O <id> is committed
	n       atomic.Int64
}

func ownerKey(id uint32) []byte { return binary.BigEndian.AppendUint32([]byte{pfx, kOwner}, id) }

// loadOwners reads the owner table (before recount).
func (q *Queue) loadOwners() error {
	byID := []*ownerCount{nil} // 0: no owner
	defer func() { q.owners.byID.Store(&byID) }()
	lo := []byte{pfx, kOwner}
	it, err := q.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: kv.PrefixEnd(lo)})
	if err != nil {
		return fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != 6 {
			continue
		}
		id := binary.BigEndian.Uint32(k[2:])
		c := &ownerCount{name: string(it.Value()), id: id}
		c.durable.Store(true)
		for uint32(len(byID)) <= id {
			byID = append(byID, nil)
		}
		byID[id] = c
		q.owners.m[c.name] = c
	}
	return it.Error()
}

// ownerEntry returns owner's entry, made (with the next id, not yet
// durable) when it is new.
func (q *Queue) ownerEntry(owner string) *ownerCount {
	q.owners.RLock()
	c := q.owners.m[owner]
	q.owners.RUnlock()
	if c != nil {
		return c
	}
	q.owners.Lock()
	defer q.owners.Unlock()
	if c = q.owners.m[owner]; c == nil {
		if q.owners.m == nil { // a Queue made by hand (tests)
			q.owners.m = map[string]*ownerCount{}
		}
		old := []*ownerCount{nil}
		if p := q.owners.byID.Load(); p != nil {
			old = *p
		}
		c = &ownerCount{name: owner, id: uint32(len(old))}
		byID := append(old[:len(old):len(old)], c) // a new array: readers of the old one keep it
		q.owners.byID.Store(&byID)
		q.owners.m[owner] = c
	}
	return c
}

// ownerByID returns the owner a record's id names, or nil (no lock: one
// per message leased).
func (q *Queue) ownerByID(id uint64) *ownerCount {
	p := q.owners.byID.Load()
	if p == nil || id >= uint64(len(*p)) {
		return nil
	}
	return (*p)[id]
}

// writeOwners adds to b the table entries of msgs' owners not yet durable
// (again, when an earlier batch that wrote them failed). It returns them, to
// be marked durable once b is committed.
func (q *Queue) writeOwners(b *pebble.Batch, msgs []Message) []*ownerCount {
	var fresh []*ownerCount
	last := ""
	for i := range msgs {
		if o := msgs[i].Owner; o != "" && o != last {
			last = o
			if c := q.ownerEntry(o); !c.durable.Load() {
				b.Set(ownerKey(c.id), []byte(o), nil)
				fresh = append(fresh, c)
			}
		}
	}
	return fresh
}

// countOwner adds (sign 1) or takes away (sign -1) a stored record's bytes
// from its owner's count. k is its F or R key, v its value; a record that
// does not decode counts for no one (it was not counted at Open either).
func (q *Queue) countOwner(k, v []byte, sign int64) {
	rec := v
	if len(k) == freshKeyLen && k[1] == kFresh {
		var err error
		if _, rec, err = splitFresh(v); err != nil {
			return
		}
	} else if len(k) != 28 && (len(k) < 2 || k[1] != kPark) {
		return
	}
	if m, _, err := q.decodeRecord(rec, false); err == nil {
		q.ownerAdd(m.Owner, sign*int64(m.recLen))
	}
}

// OwnerBytes returns the stored record bytes of owner's queued messages.
func (q *Queue) OwnerBytes(owner string) int64 {
	q.owners.RLock()
	c := q.owners.m[owner]
	q.owners.RUnlock()
	if c == nil {
		return 0
	}
	return c.n.Load()
}

// ownerAdd moves owner's count by delta.
func (q *Queue) ownerAdd(owner string, delta int64) {
	if delta != 0 {
		q.ownerEntry(owner).n.Add(delta)
	}
}

// addOwned adds (sign 1) or takes away (sign -1) msgs' record bytes from
// their owners' counts, one update per run of one owner; with onlyAcked,
// only the messages a completion deletes.
func (q *Queue) addOwned(msgs []Message, sign int64, onlyAcked bool) {
	owner, n := "", int64(0)
	for i := range msgs {
		m := &msgs[i]
		if onlyAcked && !m.acked {
			continue
		}
		if m.Owner != owner {
			q.ownerAdd(owner, sign*n)
			owner, n = m.Owner, 0
		}
		n += int64(m.recLen)
	}
	q.ownerAdd(owner, sign*n)
}
