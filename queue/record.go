package queue

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/heraldhq/herald/internal/kv"
)

func recordKey(shard int, r Recipient, seq uint64) []byte {
	k := make([]byte, 0, 28)
	k = append(k, pfx, kRecord)
	k = binary.BigEndian.AppendUint16(k, uint16(shard))
	k = append(k, r[:]...)
	return binary.BigEndian.AppendUint64(k, seq)
}

// freshKey names a fresh record: enqueued and not yet dispatched. Keys grow
// with the sequence number inside a shard, so enqueue appends (cheap memtable
// inserts, and flushed tables that barely overlap) instead of scattering
// records over the recipient key space.
//
// The epoch (seq >> epochBits) leads the key so that keys grow across shards
// too: a flushed table covers the last epoch or two, not every shard's whole
// range, and compactions barely need to rewrite anything.
func freshKey(shard int, seq uint64) []byte {
	return appendFreshKey(make([]byte, 0, freshKeyLen), shard, seq)
}

func appendFreshKey(k []byte, shard int, seq uint64) []byte {
	k = append(k, pfx, kFresh)
	k = binary.BigEndian.AppendUint32(k, uint32(seq>>epochBits))
	k = binary.BigEndian.AppendUint16(k, uint16(shard))
	return binary.BigEndian.AppendUint64(k, seq)
}

const (
	epochBits   = 16
	freshKeyLen = 16
)

// deleteRecord deletes a record's key (F or R) in b. An F key is written
// exactly once — by Enqueue, under a sequence number never issued again — so
// it is removed with a single delete: when the record dies in the memtable it
// was written to (the common case: leased and acked within seconds), the
// flush drops both and no tombstone goes down the LSM. R keys are rewritten
// (reschedules) and get a plain delete.
func deleteRecord(b *pebble.Batch, key []byte) {
	if len(key) == freshKeyLen && key[0] == pfx && key[1] == kFresh {
		b.SingleDelete(key, nil)
		return
	}
	b.Delete(key, nil)
}

// freshShard returns the shard of an F key.
func freshShard(k []byte) int { return int(binary.BigEndian.Uint16(k[6:8])) }

// keySeq returns the sequence number of an F or R key.
func keySeq(k []byte) uint64 { return binary.BigEndian.Uint64(k[len(k)-8:]) }

// splitFresh splits an F value — version(1) rcpt(16) record — into the
// recipient and the R record it becomes when moved.
func splitFresh(v []byte) (r Recipient, rec []byte, err error) {
	if len(v) < 1+len(r)+22 || v[0] != freshVer {
		return r, nil, errCorruptRecord
	}
	copy(r[:], v[1:1+len(r)])
	return r, v[1+len(r):], nil
}

// dueKey names a wake-up hint. The trailing sequence number (of the message
// the hint was written for) makes it unique: without it, a new enqueue for a
// leased recipient at the same due instant would share the key of the hint
// the lease consumed, and the lease's completion would delete it.
func dueKey(shard int, due time.Time, r Recipient, seq uint64) []byte {
	k := make([]byte, 0, 36)
	k = append(k, pfx, kDue)
	k = binary.BigEndian.AppendUint16(k, uint16(shard))
	k = binary.BigEndian.AppendUint64(k, uint64(due.UnixNano()))
	k = append(k, r[:]...)
	return binary.BigEndian.AppendUint64(k, seq)
}

// expiryKey names one expiry-index entry: all messages of one enqueue call
// that share an expiry time, listed in its value as refs (shard, rcpt, seq).
// One entry per batch instead of one per message halves the index writes, and
// acks need not touch it: at expiry, refs whose record is gone are skipped.
//
// The entry lives at the end of its first message's epoch in F (after every
// shard's records of that epoch: shards stop at 4096), not in a range of its
// own: a flushed table that holds the newest records then ends inside the
// epoch they grow in, instead of spanning every record written later up to a
// separate index range, so tables of enqueue data rarely overlap and move down
// the LSM without a rewrite. Expire merges the epochs' entries, which are
// sorted by expiry within each epoch.
func expiryKey(exp time.Time, firstSeq uint64) []byte {
	k := appendExpiryPrefix(make([]byte, 0, expiryKeyLen), uint32(firstSeq>>epochBits))
	k = binary.BigEndian.AppendUint64(k, uint64(exp.UnixNano()))
	return binary.BigEndian.AppendUint64(k, firstSeq)
}

// appendExpiryPrefix appends the prefix of an epoch's expiry entries.
func appendExpiryPrefix(k []byte, epoch uint32) []byte {
	k = append(k, pfx, kFresh)
	k = binary.BigEndian.AppendUint32(k, epoch)
	return binary.BigEndian.AppendUint16(k, expiryMark)
}

const (
	expiryMark   = 0xFFFF
	expiryKeyLen = 2 + 4 + 2 + 8 + 8
)

// isExpiryKey reports whether an F key is an expiry entry, not a record.
func isExpiryKey(k []byte) bool {
	return len(k) == expiryKeyLen && binary.BigEndian.Uint16(k[6:8]) == expiryMark
}

// entryExpiry returns the expiry time in an expiry entry's key (either layout).
func entryExpiry(k []byte) uint64 { return binary.BigEndian.Uint64(k[len(k)-16 : len(k)-8]) }

// skipExpiryEntries moves it, positioned on an epoch's first expiry entry,
// to the epoch's last one, so that the caller's Next reaches the next epoch's
// records: a scan of F pays one seek per epoch for the index instead of a
// step per entry (entries stay until their TTL, acked or not, so there are
// far more of them than fresh records).
func skipExpiryEntries(it *pebble.Iterator, k []byte) {
	it.SeekLT(kv.PrefixEnd(k[:6])) // q F epoch
}

const refLen = 2 + 16 + 8

func appendRef(dst []byte, shard int, r Recipient, seq uint64) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(shard))
	dst = append(dst, r[:]...)
	return binary.BigEndian.AppendUint64(dst, seq)
}

// encodeRecord: version(1) due(8) expires(8) attempt(4) [owner id (uvarint)]
// idLen(1) id sealed; the owner id only in version 2 (recOwned), written
// when the message has an owner (q O <id> names it; see owners.go).
func (q *Queue) encodeRecord(dst []byte, m *Message, sealed []byte) []byte {
	ver := byte(recVersion)
	if m.Owner != "" {
		ver = recOwned
	}
	dst = append(dst, ver)
	dst = binary.BigEndian.AppendUint64(dst, uint64(m.Due.UnixNano()))
	dst = binary.BigEndian.AppendUint64(dst, uint64(m.ExpiresAt.UnixNano()))
	dst = binary.BigEndian.AppendUint32(dst, uint32(m.Attempt))
	if ver == recOwned {
		dst = binary.AppendUvarint(dst, uint64(q.ownerEntry(m.Owner).id))
	}
	dst = append(dst, byte(len(m.ID)))
	dst = append(dst, m.ID...)
	if sealed == nil {
		return q.sealer.Seal(dst, m.Payload)
	}
	return append(dst, sealed...)
}

var errCorruptRecord = errors.New("queue: corrupt record")

// decodeRecord parses a record; open controls whether the payload is unsealed.
// It returns the sealed payload bytes for cheap rewrites.
func (q *Queue) decodeRecord(v []byte, open bool) (m Message, sealed []byte, err error) {
	if len(v) < 22 || (v[0] != recVersion && v[0] != recOwned) {
		return m, nil, errCorruptRecord
	}
	m.Due = time.Unix(0, int64(binary.BigEndian.Uint64(v[1:9])))
	m.ExpiresAt = time.Unix(0, int64(binary.BigEndian.Uint64(v[9:17])))
	m.Attempt = int(binary.BigEndian.Uint32(v[17:21]))
	at := 21
	if v[0] == recOwned {
		id, n := binary.Uvarint(v[at:])
		if n <= 0 || id == 0 || len(v) < at+n+1 {
			return m, nil, errCorruptRecord
		}
		c := q.ownerByID(id)
		if c == nil {
			return m, nil, errCorruptRecord
		}
		m.Owner = c.name
		at += n
	}
	idLen := int(v[at])
	if len(v) < at+1+idLen {
		return m, nil, errCorruptRecord
	}
	m.ID = string(v[at+1 : at+1+idLen])
	sealed = v[at+1+idLen:]
	m.recLen = len(v)
	if open {
		m.Payload, err = q.sealer.Open(sealed)
		if err != nil {
			return m, nil, fmt.Errorf("%w: %v", errCorruptRecord, err)
		}
	}
	return m, sealed, nil
}
