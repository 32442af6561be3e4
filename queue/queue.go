package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldhq/herald/internal/clock"
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
	Seq uint64
	// Shard: the shard of a message Expire returns.
	Shard   int
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
		m    map[string]*ownerCount
		byID atomic.Pointer[[]*ownerCount] // by the id records carry ([0]: no owner); replaced, never changed, under the lock: read without it
	}

	// inR counts, per bucket of recipients, the records in the per-recipient
	// range R (never fewer than there are: incremented before a record is
	// written there, decremented after it is deleted). A zero bucket proves a
	// recipient has nothing in R, so a fresh record can be leased straight from
	// F without a read. Fixed size: memory does not grow with the queue.
	inR []atomic.Int32
	// inP counts parked records per bucket of recipients the same way (never
	// short): Expire looks a record up in the park index only when its
	// bucket is non-zero. parked is the number of parked records.
	inP    []atomic.Int32
	parked atomic.Int64

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
	kOwner     = 'O'
	recVersion = 1 // a record without an owner
	recOwned   = 2 // a record with an owner
)

// EnsureDefaults fills the zero fields of o with their defaults (the one
// place they are written; herald serve's flags take theirs from here).
func (o *Options) EnsureDefaults() {
	if o.Shards == 0 {
		o.Shards = 16
	}
	if o.MaxQueuedBytes == 0 {
		o.MaxQueuedBytes = 8 << 30
	}
	if o.LeaseTimeout == 0 {
		o.LeaseTimeout = 60 * time.Second
	}
	if o.Now == nil {
		o.Now = clock.Wall
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports what o lacks or gets wrong.
func (o *Options) Validate() error {
	if o.DB == nil || o.Sealer == nil {
		return errors.New("queue: Options.DB and Options.Sealer are required")
	}
	if o.Shards < 1 || o.Shards > 4096 || o.Shards&(o.Shards-1) != 0 {
		return fmt.Errorf("queue: Shards must be a power of two between 1 and 4096, got %d", o.Shards)
	}
	return nil
}

// Open opens the queue on opts.DB, recovering the sequence and depth counters.
func Open(opts Options) (*Queue, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	q := &Queue{opts: opts, db: opts.DB, sealer: opts.Sealer, inR: make([]atomic.Int32, inRBuckets), inP: make([]atomic.Int32, inPBuckets),
		committing: map[uint64]struct{}{}, expBounds: map[uint32]expBound{},
		batches: kv.NewBatchPool(opts.DB, 4<<20)} // an upload's batch of 1,000 records is ~300 KB
	q.owners.m = map[string]*ownerCount{}
	if err := q.loadOwners(); err != nil {
		return nil, err
	}
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

// recount scans the record ranges (F and R) once at open: O(depth) keys, O(1)
// memory. It also rebuilds the R bucket counts and the expiry bounds.
func (q *Queue) recount() error {
	var n, bytesTotal int64
	for _, kind := range []byte{kRecord, kFresh, kPark} {
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
			case kind == kPark:
				if sh, r, _, ok := parkTail(k); ok {
					q.shards[sh%len(q.shards)].msgs.Add(1)
					q.inP[inPBucket(r)].Add(1)
					q.parked.Add(1)
				}
			}
			if kind == kRecord && len(k) == 28 {
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

// LastSeq is the highest sequence number issued so far: every record
// enqueued after this call has a higher one.
func (q *Queue) LastSeq() uint64 {
	q.seqMu.Lock()
	defer q.seqMu.Unlock()
	return q.seq.Load()
}

// Shards returns the number of shards.
func (q *Queue) Shards() int { return len(q.shards) }

// Depth returns the number of queued messages and their stored bytes.
func (q *Queue) Depth() (msgs, bytes int64) { return q.depthMsgs.Load(), q.depthBytes.Load() }

// ShardDepth returns the number of queued messages in one shard.
func (q *Queue) ShardDepth(shard int) int64 { return q.shards[shard].msgs.Load() }

// DeadLetters returns how many records were moved to the dead-letter range since open.
func (q *Queue) DeadLetters() int64 { return q.deadCount.Load() }

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

// Close stops the queue; safe to call twice. It does not close the shared DB.
func (q *Queue) Close() error {
	q.closed.Store(true)
	return nil
}

// sameRecipient reports whether two HMACs are equal (helper for tests).
func sameRecipient(a, b Recipient) bool { return bytes.Equal(a[:], b[:]) }
