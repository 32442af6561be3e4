package queue

import (
	"sync/atomic"
)

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
	} else if len(k) != 28 {
		return
	}
	if m, _, err := q.decodeRecord(rec, false); err == nil {
		q.ownerAdd(m.Owner, sign*int64(m.recLen))
	}
}

// ownerCount is one owner's byte count; name is the owner, shared by every
// record decoded for it (internOwner).
type ownerCount struct {
	name string
	n    atomic.Int64
}

// internOwner returns the owner named b, without allocating when it is
// known (a lease decodes one record per message).
func (q *Queue) internOwner(b []byte) string {
	q.owners.RLock()
	c := q.owners.m[string(b)] // no allocation for the lookup
	q.owners.RUnlock()
	if c != nil {
		return c.name
	}
	return string(b)
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
	if delta == 0 {
		return
	}
	q.owners.RLock()
	c := q.owners.m[owner]
	q.owners.RUnlock()
	if c == nil {
		q.owners.Lock()
		if c = q.owners.m[owner]; c == nil {
			c = &ownerCount{name: owner}
			q.owners.m[owner] = c
		}
		q.owners.Unlock()
	}
	c.n.Add(delta)
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
