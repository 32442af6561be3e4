package queue

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/seal"
)

// Errors. ErrFull is backpressure (the API answers 429); ErrStorage (from kv)
// is a storage fault (503).
var (
	ErrClosed       = errors.New("queue: closed")
	ErrFull         = errors.New("queue: full (queued bytes above the high-water mark)")
	ErrUnknownLease = errors.New("queue: unknown or expired lease")
	ErrInvalid      = errors.New("queue: invalid message")
)

// Recipient is the keyed HMAC of a recipient's phone number.
type Recipient = [seal.LookupLen]byte

// Message is one queued message.
type Message struct {
	// ID is the message id (opaque to the queue, stored in the clear: not identifying).
	ID string
	// Recipient is the raw recipient; the queue keeps only its HMAC. Needed on Enqueue.
	Recipient string
	// Payload is sealed at rest.
	Payload []byte
	// Due is when the message may first be handed out; zero means now.
	Due time.Time
	// ExpiresAt is when the message must be gone. Required.
	ExpiresAt time.Time
	// Owner is who the message counts against (a business id, at most 255
	// bytes, stored in the clear: not identifying). OwnerBytes sums the
	// stored bytes of each owner's queued messages.
	Owner string

	// Set by the queue.
	Seq     uint64
	Attempt int
	// FirstLease: this is the first time the message is handed out, in this
	// process or any before it (a fresh record enqueued after Open, never
	// leased): nothing a consumer stores under its Seq can exist yet.
	FirstLease bool
	// Sealed is Payload as stored (sealed), set on leased messages so callers
	// can keep or rewrite it without sealing the same bytes again.
	Sealed []byte
	size   int
	recLen int  // the record's encoded length, the same in F and R (what OwnerBytes counts)
	fresh  bool // stored in F (see doc.go), not in R
	acked  bool // its completion deletes it (set while the completion is written)
}

// Options configure a Queue. Zero values take the documented defaults.
type Options struct {
	// DB is the shared database. Required.
	DB *kv.DB
	// Sealer seals payloads. Required.
	Sealer *seal.Sealer
	// Shards is the number of shards, a power of two; default 16. It must not
	// change for an existing data directory (the queue records it).
	Shards int
	// MaxQueuedBytes is the backpressure high-water mark on stored record
	// bytes; default 8 GiB.
	MaxQueuedBytes int64
	// LeaseTimeout is how long a lease hides its messages; default 60s.
	LeaseTimeout time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger; default slog.Default().
	Logger *slog.Logger
	// OnDeadLetter is called for each record moved to the dead-letter range.
	OnDeadLetter func(shard int, seq uint64, err error)
	// Notify is called after a successful Enqueue for each shard it touched
	// (the engine wakes that shard's dispatcher). It must not block.
	Notify func(shard int)
}

// Queue is safe for concurrent use.
type Queue struct {
	opts   Options
	db     *kv.DB
	sealer *seal.Sealer
	seq    atomic.Uint64
	closed atomic.Bool
	shards []*shard
	// batches holds Enqueue's and CompleteMany's batches, reset after their
	// commit for the next call (a fresh one of the call's size each time was
	// the ingest path's largest allocation).
	batches *kv.BatchPool

	// seqMu guards the sequence numbers of Enqueue calls still committing.
	// Batches commit in any order, so a scan of fresh records may only pass
	// sequence numbers below every batch still in flight (settled).
	seqMu      sync.Mutex
	committing map[uint64]struct{} // first seq of each batch in flight
	openSeq    uint64              // the ceiling at Open: every seq above it was issued by this process
	ceiling    uint64              // durably reserved: no seq above it was issued
	depthMsgs  atomic.Int64
	depthBytes atomic.Int64
	deadCount  atomic.Int64
	leaseToken atomic.Uint64

	// owners counts each owner's queued record bytes (see Message.Owner).
	// Exact at rest: rebuilt at Open, moved with every enqueue, ack, expiry
	// and dead letter. One entry per owner ever seen (businesses: few).
	owners struct {
		sync.RWMutex
		m map[string]*atomic.Int64
	}

	// inR counts, per bucket of recipients, the records in the per-recipient
	// range R (never fewer than there are: incremented before a record is
	// written there, decremented after it is deleted). A zero bucket proves a
	// recipient has nothing in R, so a fresh record can be leased straight from
	// F without a read. Fixed size: memory does not grow with the queue.
	inR []atomic.Int32

	// expMu guards expBounds: for every epoch whose F range holds expiry-index
	// entries, a lower bound on their expiry times, so Expire reads only the
	// epochs with something due. One entry per 65,536 sequence numbers issued
	// within the TTL, not per message. Enqueue lowers a bound after its commit
	// and bumps the epoch's gen (from expGen, never reused); Expire raises or
	// drops a bound only if the gen it read before opening its view is
	// unchanged, so an entry it could not see is never hidden behind a bound
	// it computed without it.
	expMu     sync.Mutex
	expBounds map[uint32]expBound
	expGen    uint64
	// afterExpireView, when set (tests only), runs in Expire right after it
	// opened its view: what an Enqueue committed then is not in it.
	afterExpireView func()
	// openSteps: keys Open's scans stepped over (tests: O(records + epochs)).
	openSteps int
}

type expBound struct {
	min uint64 // unix nanos as stored in keys: no entry of the epoch expires earlier
	gen uint64
}

const inRBuckets = 1 << 18

func inRBucket(r Recipient) int { return int(binary.BigEndian.Uint32(r[4:8]) & (inRBuckets - 1)) }

type shard struct {
	id int
	mu struct {
		sync.Mutex
		leased map[Recipient]leaseEntry
		// reclaimAt (unix nanos) is no later than the earliest time a lease of
		// fresh records may need reclaiming (timed out or released).
		reclaimAt int64
	}
	// scanMu serialises whoever moves or deletes fresh records (Lease's scan
	// of F, reclaim, Expire). cursor: every F record below it has been
	// dispatched — leased (and listed in its lease entry), moved to R, or
	// deleted. A restart starts again at 0, which is safe: what is still in F
	// is handed out again, as after any lease timeout.
	scanMu sync.Mutex
	cursor uint64
	// queued messages and bytes in this shard (approximate under concurrency, exact at rest).
	msgs atomic.Int64

	// low is a watermark under which the shard has no live hint, so Lease need
	// not wade through the tombstones of consumed hints. Every hint writer
	// lowers it *after* its commit (lowerTo); Lease resets it before taking its
	// snapshot and raises it afterwards only to the first hint it saw. A hint
	// committed after the snapshot therefore lowers the watermark again, and a
	// hint committed before is in the snapshot: none is ever skipped.
	lowMu    sync.Mutex
	low      int64 // unix nanos
	scanning int   // Leases between reset and raise; while >0 others scan from 0
}

func (s *shard) lowerTo(due int64) {
	s.lowMu.Lock()
	if due < s.low {
		s.low = due
	}
	s.lowMu.Unlock()
}

type leaseEntry struct {
	token   uint64
	expires time.Time
	// committing: Complete passed its token check and is writing; the lease
	// can no longer be taken over or revoked, expired or not.
	committing bool
	// fresh lists the F records a lease of fresh records holds. They sit
	// behind the shard's cursor with no hint, so such a lease is never simply
	// taken over: reclaim moves its records to R (with a hint) first.
	fresh []uint64
}

// held reports whether the entry still keeps others away at now.
func (e leaseEntry) held(now time.Time) bool {
	return e.committing || len(e.fresh) > 0 || now.Before(e.expires)
}

// Lease is a recipient's run of due messages, hidden from other consumers
// until Complete or Release, or until the lease times out.
type Lease struct {
	Shard     int
	Recipient Recipient
	// Messages are in FIFO order, payloads opened.
	Messages []Message

	token uint64
	hint  []byte // the D key this lease was found through (nil for fresh leases)
	// exhausted: at lease time the recipient had no messages beyond Messages.
	exhausted bool
}

// hasFresh reports whether any of the lease's messages is an F record.
func (l *Lease) hasFresh() bool {
	for i := range l.Messages {
		if l.Messages[i].fresh {
			return true
		}
	}
	return false
}

const (
	pfx        = 'q'
	kRecord    = 'R'
	kFresh     = 'F'
	freshVer   = 2
	kDue       = 'D'
	kExpiry    = 'X'
	kDead      = 'Z'
	kSeq       = 'S'
	kShards    = 'N'
	recVersion = 1 // a record without an owner
	recOwned   = 2 // a record with an owner
)

// Open opens the queue on opts.DB, recovering the sequence and depth counters.
func Open(opts Options) (*Queue, error) {
	if opts.DB == nil || opts.Sealer == nil {
		return nil, errors.New("queue: Options.DB and Options.Sealer are required")
	}
	if opts.Shards == 0 {
		opts.Shards = 16
	}
	if opts.Shards < 1 || opts.Shards > 4096 || opts.Shards&(opts.Shards-1) != 0 {
		return nil, fmt.Errorf("queue: Shards must be a power of two between 1 and 4096, got %d", opts.Shards)
	}
	if opts.MaxQueuedBytes == 0 {
		opts.MaxQueuedBytes = 8 << 30
	}
	if opts.LeaseTimeout == 0 {
		opts.LeaseTimeout = 60 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	q := &Queue{opts: opts, db: opts.DB, sealer: opts.Sealer, inR: make([]atomic.Int32, inRBuckets),
		committing: map[uint64]struct{}{}, expBounds: map[uint32]expBound{},
		batches: kv.NewBatchPool(opts.DB, 4<<20)} // an upload's batch of 1,000 records is ~300 KB
	q.owners.m = map[string]*atomic.Int64{}
	for i := 0; i < opts.Shards; i++ {
		s := &shard{id: i}
		s.mu.leased = make(map[Recipient]leaseEntry)
		q.shards = append(q.shards, s)
	}
	// The shard count is part of the on-disk layout.
	nkey := []byte{pfx, kShards}
	if v, ok, err := q.db.GetCopy(nkey); err != nil {
		return nil, err
	} else if ok {
		if got := int(binary.BigEndian.Uint32(v)); got != opts.Shards {
			return nil, fmt.Errorf("queue: data directory was created with %d shards, Options.Shards is %d", got, opts.Shards)
		}
	} else {
		b := q.db.NewBatch()
		b.Set(nkey, binary.BigEndian.AppendUint32(nil, uint32(opts.Shards)), nil)
		if err := q.db.Commit(b, true); err != nil {
			return nil, err
		}
	}
	if v, ok, err := q.db.GetCopy([]byte{pfx, kSeq}); err != nil {
		return nil, err
	} else if ok && len(v) == 8 {
		// The stored value is a reservation ceiling: start above it.
		q.seq.Store(binary.BigEndian.Uint64(v))
		q.ceiling = q.seq.Load()
	}
	q.openSeq = q.seq.Load()
	if err := q.recount(); err != nil {
		return nil, err
	}
	if err := q.settle(); err != nil {
		return nil, err
	}
	return q, nil
}

// settle restores, after a restart, what the cursor guaranteed before it: a
// recipient's records in R are older than its records in F. A fresh record
// of a recipient that also has records in R (moved there while an older F
// record of it was leased when the process stopped) joins them in R now.
func (q *Queue) settle() error {
	lo := []byte{pfx, kFresh}
	it, err := q.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: kv.PrefixEnd(lo)})
	if err != nil {
		return fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	defer it.Close()
	movers := map[int]*mover{}
	n := 0
	flush := func() error {
		for _, mv := range movers {
			if err := mv.commit(); err != nil {
				return err
			}
		}
		clear(movers)
		n = 0
		return nil
	}
	defer func() { q.openSteps += it.Stats().ForwardStepCount[pebble.InterfaceCall] }()
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key(), it.Value()
		if isExpiryKey(k) {
			skipExpiryEntries(it, k)
			continue
		}
		r, rec, err := splitFresh(v)
		if err != nil || len(k) != freshKeyLen || q.inR[inRBucket(r)].Load() == 0 {
			continue // corrupt records are dead-lettered when leased
		}
		sh := freshShard(k) % len(q.shards)
		mv := movers[sh]
		if mv == nil || !mv.hinted[r] {
			has, err := q.hasRecords(sh, r)
			if err != nil || !has {
				if err != nil {
					return err
				}
				continue
			}
		}
		if mv == nil {
			mv = q.newMover(q.shards[sh])
			movers[sh] = mv
		}
		m, _, err := q.decodeRecord(rec, false)
		if err != nil {
			continue
		}
		mv.move(bytes.Clone(k), len(k)+len(v), r, keySeq(k), bytes.Clone(rec), m.Due)
		if n++; n == 1024 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := it.Error(); err != nil {
		return fmt.Errorf("%w: %w", kv.ErrStorage, err)
	}
	return flush()
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
	} else if len(k) != 28 {
		return
	}
	if m, _, err := q.decodeRecord(rec, false); err == nil {
		q.ownerAdd(m.Owner, sign*int64(m.recLen))
	}
}

// recount scans the record ranges (F and R) once at open: O(depth) keys, O(1)
// memory. It also rebuilds the R bucket counts and the expiry bounds.
func (q *Queue) recount() error {
	var n, bytesTotal int64
	for _, kind := range []byte{kRecord, kFresh} {
		lo := []byte{pfx, kind}
		it, err := q.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: kv.PrefixEnd(lo)})
		if err != nil {
			return fmt.Errorf("%w: %w", kv.ErrStorage, err)
		}
		for it.First(); it.Valid(); it.Next() {
			k := it.Key()
			if kind == kFresh && isExpiryKey(k) {
				// Entries sort by expiry within their epoch: the first is the bound.
				q.expBounds[binary.BigEndian.Uint32(k[2:6])] = expBound{min: entryExpiry(k)}
				skipExpiryEntries(it, k)
				continue
			}
			n++
			bytesTotal += int64(len(k) + len(it.Value()))
			q.countOwner(k, it.Value(), 1)
			switch {
			case kind == kRecord && len(k) == 28:
				q.shards[int(binary.BigEndian.Uint16(k[2:4]))%len(q.shards)].msgs.Add(1)
			case kind == kFresh && len(k) == freshKeyLen:
				q.shards[freshShard(k)%len(q.shards)].msgs.Add(1)
			}
			if len(k) == 28 {
				var r Recipient
				copy(r[:], k[4:20])
				q.inR[inRBucket(r)].Add(1)
			}
		}
		err = it.Error()
		q.openSteps += it.Stats().ForwardStepCount[pebble.InterfaceCall]
		it.Close()
		if err != nil {
			return fmt.Errorf("%w: %w", kv.ErrStorage, err)
		}
	}
	q.depthMsgs.Store(n)
	q.depthBytes.Store(bytesTotal)
	return nil
}

// RecipientKey returns the HMAC the queue files recipient under.
func (q *Queue) RecipientKey(recipient string) Recipient { return q.sealer.Lookup(recipient) }

// ShardOf returns the shard that owns a recipient.
func (q *Queue) ShardOf(r Recipient) int {
	return int(binary.BigEndian.Uint32(r[:4]) & uint32(len(q.shards)-1))
}

// Shards returns the number of shards.
func (q *Queue) Shards() int { return len(q.shards) }

// Depth returns the number of queued messages and their stored bytes.
func (q *Queue) Depth() (msgs, bytes int64) { return q.depthMsgs.Load(), q.depthBytes.Load() }

// OwnerBytes returns the stored record bytes of owner's queued messages.
func (q *Queue) OwnerBytes(owner string) int64 {
	q.owners.RLock()
	c := q.owners.m[owner]
	q.owners.RUnlock()
	if c == nil {
		return 0
	}
	return c.Load()
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
			c = new(atomic.Int64)
			q.owners.m[owner] = c
		}
		q.owners.Unlock()
	}
	c.Add(delta)
}

// addOwned adds (sign 1) or takes away (sign -1) msgs' record bytes from
// their owners' counts, one update per run of one owner.
func (q *Queue) addOwned(msgs []Message, sign int64) {
	for i := 0; i < len(msgs); {
		owner, n := msgs[i].Owner, int64(0)
		for ; i < len(msgs) && msgs[i].Owner == owner; i++ {
			n += int64(msgs[i].recLen)
		}
		q.ownerAdd(owner, sign*n)
	}
}

// ShardDepth returns the number of queued messages in one shard.
func (q *Queue) ShardDepth(shard int) int64 { return q.shards[shard].msgs.Load() }

// DeadLetters returns how many records were moved to the dead-letter range since open.
func (q *Queue) DeadLetters() int64 { return q.deadCount.Load() }

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

const refLen = 2 + 16 + 8

func appendRef(dst []byte, shard int, r Recipient, seq uint64) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(shard))
	dst = append(dst, r[:]...)
	return binary.BigEndian.AppendUint64(dst, seq)
}

// encodeRecord: version(1) due(8) expires(8) attempt(4) [ownerLen(1) owner]
// idLen(1) id sealed; the owner part only in version 2 (recOwned), written
// when the message has one.
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
		dst = append(dst, byte(len(m.Owner)))
		dst = append(dst, m.Owner...)
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
		n := int(v[at])
		if n == 0 || len(v) < at+1+n+1 {
			return m, nil, errCorruptRecord
		}
		m.Owner = string(v[at+1 : at+1+n])
		at += 1 + n
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
		size += len(msgs[i].ID) + len(msgs[i].Owner) + len(msgs[i].Payload) + recordOverhead
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
	if extra != nil {
		b.Apply(extra, nil)
	}
	if err := q.batches.Commit(b, true); err != nil {
		return err
	}
	for exp, g := range byExp {
		q.noteExpiry(uint32(g.first>>epochBits), uint64(exp))
	}
	q.depthMsgs.Add(int64(len(msgs)))
	q.depthBytes.Add(added)
	q.addOwned(msgs, 1)
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

	var leases []*Lease
	var repair *pebble.Batch
	var repairDues []int64
	seen := make(map[Recipient]struct{})
	// Phase 1: walk the due hints and mark up to maxRecipients recipients
	// leased. Phase 2 reads their records through one iterator opened after
	// every mark: a view taken before a mark could predate a concurrent
	// Complete that released that recipient (Complete unleases only after its
	// commit), and hand out records it already acked or moved.
	type candidate struct {
		r     Recipient
		hint  []byte
		token uint64
	}
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
		l, fix, fixDue, err := q.collect(rit, shardID, r, hint, now, maxPerRecipient)
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
	q.depthMsgs.Add(-c.acked)
	q.depthBytes.Add(c.movedDelta - c.ackedBytes)
	for i := range l.Messages {
		if m := &l.Messages[i]; m.acked {
			q.ownerAdd(m.Owner, -int64(m.recLen))
		}
	}
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

func (h expHeap) Len() int           { return len(h) }
func (h expHeap) Less(i, j int) bool { return h[i].at < h[j].at }
func (h expHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expHeap) Push(x any)        { *h = append(*h, x.(*expSource)) }
func (h *expHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

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

// Close stops the queue; safe to call twice. It does not close the shared DB.
func (q *Queue) Close() error {
	q.closed.Store(true)
	return nil
}

// sameRecipient reports whether two HMACs are equal (helper for tests).
func sameRecipient(a, b Recipient) bool { return bytes.Equal(a[:], b[:]) }
