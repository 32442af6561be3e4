package engine

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/panjf2000/ants/v2"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/records"
	"github.com/heraldhq/herald/internal/seal"
	"github.com/heraldhq/herald/internal/signal"
	"github.com/heraldhq/herald/queue"
)

// Transport is the platform as the engine uses it (the platform client, or a
// fault-injecting wrapper in tests).
type Transport interface {
	QueryKeys(ctx context.Context, users []string) (*platform.KeysResponse, error)
	// SendEach returns a result or an error (of the request it went in) for
	// each envelope, in order. It may not keep envs after it returns: the
	// engine reuses the slice (the ciphertexts the envelopes point to stay
	// valid until the results are in).
	SendEach(ctx context.Context, envs []platform.Envelope) ([]platform.Result, []error)
}

// Shaper paces dispatch (throughput per phone number, pair rate, a paused
// business). Shape returns the earliest time the next message from
// phoneNumberID to recipient may go, reserving it when that is now or
// earlier. Release gives back a reservation Shape made for a message that
// then did not go (retried, held behind an earlier one, failed).
type Shaper interface {
	Shape(phoneNumberID, recipient string, now time.Time) time.Time
	Release(phoneNumberID, recipient string, now time.Time)
}

// NoLimit is the Shaper that never delays.
type NoLimit struct{}

// Shape implements Shaper.
func (NoLimit) Shape(string, string, time.Time) time.Time { return time.Time{} }

// Release implements Shaper.
func (NoLimit) Release(string, string, time.Time) {}

// Partitions says which queue shards this node works (cluster mode: a
// shard is a partition, worked by the node holding its lease).
type Partitions interface {
	// Owns: this node may hand shard's messages to the platform now.
	Owns(shard int) bool
	// Stale: the record seq of shard was taken in before this node's current
	// ownership began; the partition's messages came again from JetStream
	// since, so this copy goes without a status.
	Stale(shard int, seq uint64) bool
}

// Campaigns answers whether a campaign's messages may go (internal/campaigns).
type Campaigns interface {
	// State is paused, canceled or running (heraldtype.Campaign*).
	State(id string) string
	// Enter holds the states of ids until exit: a pause or cancel of one of
	// them waits for exit, so nothing is handed to the platform after it
	// returned. states are in ids' order.
	Enter(ids []string) (states []string, exit func())
}

// Directory answers per-business settings the engine needs.
type Directory interface {
	IdentityCheck(businessID string) bool
}

// Options configure an Engine. Zero values take the documented defaults.
type Options struct {
	DB        *kv.DB        // required
	Queue     *queue.Queue  // required
	Sessions  *signal.Store // required
	Sealer    *seal.Sealer  // required
	Transport Transport     // required
	Shaper    Shaper        // default NoLimit
	Directory Directory     // default: identity_check off for everyone
	Campaigns Campaigns     // default: no campaign is ever paused or canceled
	// Partitions, in cluster mode: the shards this node works (nil: all).
	Partitions Partitions
	Metrics    *metrics.Metrics
	// Workers is the ants pool size (concurrent tasks); default 32. Each
	// task works on up to GroupsPerTask recipient groups, so up to
	// Workers × GroupsPerTask recipients are in flight (4,096 by default).
	Workers int
	// LeaseRecipients caps recipients per dispatch round per shard; default 256.
	LeaseRecipients int
	// LeasePerRecipient caps messages per recipient per lease; default 16.
	LeasePerRecipient int
	// GroupsPerTask is how many recipient groups one pool task works on
	// together: their ciphertexts in one fsync'd commit, their transmissions
	// concurrently, their statuses in one round trip; default 128. (512 × 8
	// against 512 × 1: −30 % engine CPU per warm message; 32 × 128 against
	// 512 × 8, as many recipients in flight: −15–20 % more, BENCHMARKS.md.)
	GroupsPerTask int
	// MaxResets before a message to a device that keeps failing ends failed; default 3.
	MaxResets int
	// BackoffBase and BackoffCap shape retries; defaults 250ms and 5m.
	BackoffBase, BackoffCap time.Duration
	// BreakerThreshold consecutive failed requests open the breaker; default 5.
	BreakerThreshold int
	// BreakerCooldown between probes while open; default 1s.
	BreakerCooldown time.Duration
	// SentGrace keeps a sent message's content for decrypt_failed receipts; default 1h, never past TTL.
	SentGrace time.Duration
	// RetentionInterval between sweeper runs; default 1s.
	RetentionInterval time.Duration
	// PurgeInterval between physical purges (kv.DB.Purge: flush + full
	// compaction), after which deleted and expired records are gone from the
	// data directory even in sealed form; default 1h, negative: never. The
	// guarantee "nothing readable past TTL" is then TTL + this interval for the
	// sealed bytes (TTL + RetentionInterval for anything reachable).
	PurgeInterval time.Duration
	// KeyLinger is how long a bundle lookup waits to share a key query; default 5ms.
	KeyLinger time.Duration
	// IdlePoll: how often an idle dispatcher looks for due retries; default 50ms.
	IdlePoll time.Duration
	Now      func() time.Time
	Logger   *slog.Logger
	// PeerLocks, when set, is shared with inbound decryption: a task holds
	// the locks of the pairs it works on (see peerKeys).
	PeerLocks *signal.PeerLocks
	// OnStatus receives status transitions after they are committed.
	OnStatus func([]heraldtype.StatusChange)
	// StatusHook adds the caller's writes (webhook outbox) to the batch that
	// commits status transitions, so they are durable together.
	StatusHook func(b *pebble.Batch, changes []heraldtype.StatusChange)
	// OnSignal receives quality signals (rate limiter).
	OnSignal func(heraldtype.Signal)
}

// Engine is the delivery engine.
type Engine struct {
	opts     Options
	db       *kv.DB
	q        *queue.Queue
	store    *signal.Store
	m        *metrics.Metrics
	log      *slog.Logger
	pool     *ants.Pool
	prep     *ants.Pool    // the goroutines of a task's runs that may wait for bundles (prepareMany: work.go)
	merged   *kv.BatchPool // prepareMany's commit batches, reset for reuse
	runBufs  *kv.BatchPool // prepareMany's per-run batches, applied to a merged one then reset
	slots    chan struct{}
	wake     []chan struct{}
	breaker  *breaker
	statuses *records.Statuses
	keys     *keyBatcher

	startStop sync.Mutex
	ctx       context.Context // Start's, canceled by Close
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	workers   sync.WaitGroup // groups submitted to the pool and not finished
	running   bool
	closed    bool

	seenEvents *lru.Cache[[32]byte, time.Time] // events handled recently (replays ignored)
	resends    *lru.Cache[string, int]         // decrypt_failed resends per message and device

	inflight atomic.Int64
	purging  atomic.Bool // a purge is running (see Purging)
	purges   atomic.Int64
}

// EnsureDefaults fills the zero fields of o with their defaults (the one
// place they are written; herald serve's flags take theirs from here).
func (o *Options) EnsureDefaults() {
	if o.Shaper == nil {
		o.Shaper = NoLimit{}
	}
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&o.Workers, 32)
	def(&o.GroupsPerTask, 128)
	def(&o.LeaseRecipients, 256)
	def(&o.LeasePerRecipient, 16)
	def(&o.MaxResets, 3)
	def(&o.BreakerThreshold, 5)
	defD(&o.BackoffBase, 250*time.Millisecond)
	defD(&o.BackoffCap, 5*time.Minute)
	defD(&o.BreakerCooldown, time.Second)
	defD(&o.SentGrace, time.Hour)
	defD(&o.RetentionInterval, time.Second)
	if o.PurgeInterval == 0 {
		o.PurgeInterval = time.Hour
	}
	defD(&o.IdlePoll, 50*time.Millisecond)
	defD(&o.KeyLinger, 5*time.Millisecond)
	if o.Now == nil {
		o.Now = clock.Wall
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports what o lacks.
func (o *Options) Validate() error {
	if o.DB == nil || o.Queue == nil || o.Sessions == nil || o.Sealer == nil || o.Transport == nil {
		return errors.New("engine: Options.DB, Queue, Sessions, Sealer and Transport are required")
	}
	return nil
}

// New validates opts and builds an engine; Start runs it.
func New(opts Options) (*Engine, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.EnsureDefaults()
	pool, err := ants.NewPool(opts.Workers, ants.WithLogger(antsLogger{opts.Logger}))
	if err != nil {
		return nil, err
	}
	// Long-lived goroutines keep the stacks Pebble's reads, the encrypt step
	// and the platform client grew; a fresh goroutine per run grew its stack
	// again every time.
	prep, err := ants.NewPool(opts.Workers*opts.GroupsPerTask, ants.WithNonblocking(true),
		ants.WithExpiryDuration(time.Minute), ants.WithLogger(antsLogger{opts.Logger}))
	if err != nil {
		pool.Release()
		return nil, err
	}
	e := &Engine{opts: opts, db: opts.DB, q: opts.Queue, store: opts.Sessions, m: opts.Metrics, log: opts.Logger,
		pool: pool, prep: prep, merged: kv.NewBatchPool(opts.DB, 1<<20), runBufs: kv.NewBatchPool(opts.DB, 64<<10), slots: make(chan struct{}, opts.Workers*opts.GroupsPerTask),
		breaker: &breaker{threshold: opts.BreakerThreshold, cooldown: opts.BreakerCooldown}}
	for i := 0; i < opts.Queue.Shards(); i++ {
		e.wake = append(e.wake, make(chan struct{}, 1))
	}
	e.keys = newKeyBatcher(opts.Transport, opts.KeyLinger)
	e.seenEvents, _ = lru.New[[32]byte, time.Time](eventMemory)
	e.resends, _ = lru.New[string, int](eventMemory)
	e.statuses = records.New(records.Options{DB: opts.DB, Logger: opts.Logger, Metrics: opts.Metrics, Now: opts.Now,
		OnChange: opts.OnStatus, Hook: opts.StatusHook})
	return e, nil
}

type antsLogger struct{ l *slog.Logger }

func (a antsLogger) Printf(format string, args ...any) { a.l.Debug("ants", "msg", format) }

// Notify wakes a shard's dispatcher (the queue calls it after an enqueue).
func (e *Engine) Notify(shard int) {
	if shard >= 0 && shard < len(e.wake) {
		select {
		case e.wake[shard] <- struct{}{}:
		default:
		}
	}
}

// Start runs the dispatchers and the retention sweeper. Idempotent.
func (e *Engine) Start(ctx context.Context) error {
	e.startStop.Lock()
	defer e.startStop.Unlock()
	if e.closed {
		return errors.New("engine: closed")
	}
	if e.running {
		return nil
	}
	ctx, e.cancel = context.WithCancel(ctx)
	e.ctx = ctx
	e.running = true
	for s := range e.wake {
		e.wg.Add(1)
		go func(s int) {
			defer e.wg.Done()
			e.dispatchLoop(ctx, s)
		}(s)
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		t := time.NewTicker(e.opts.RetentionInterval)
		defer t.Stop()
		lastPurge := e.opts.Now()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if _, err := e.RetentionOnce(ctx); err != nil && ctx.Err() == nil {
					e.log.Error("engine: retention sweep failed", "err", err)
				}
				if now := e.opts.Now(); e.opts.PurgeInterval > 0 && now.Sub(lastPurge) >= e.opts.PurgeInterval {
					lastPurge = now
					e.purging.Store(true)
					if err := e.db.Purge(ctx); err != nil && ctx.Err() == nil {
						e.log.Error("engine: purge failed", "err", err)
					}
					e.purging.Store(false)
					e.purges.Add(1)
				}
			}
		}
	}()
	return nil
}

// Close stops dispatching, waits for workers in flight, and stops the status
// writer. Safe to call twice.
func (e *Engine) Close() error {
	e.startStop.Lock()
	defer e.startStop.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	if e.cancel != nil {
		e.cancel()
	}
	e.wg.Wait()
	e.workers.Wait()
	e.pool.Release()
	e.prep.Release()
	e.statuses.Close()
	return nil
}

// Flush waits until every status transition made so far is written.
func (e *Engine) Flush() { e.statuses.Flush() }

// Statuses is the engine's status writer: where messages' statuses and
// campaigns' counters are read.
func (e *Engine) Statuses() *records.Statuses { return e.statuses }

// Metrics is the engine's metrics.
func (e *Engine) Metrics() *metrics.Metrics { return e.m }

// BreakerOpen reports whether the platform circuit breaker is open.
func (e *Engine) BreakerOpen() bool { return e.breaker.open() }

// Ready reports why the engine cannot deliver now (for /readyz): the
// platform's breaker is open after consecutive failed requests. nil when
// it can.
func (e *Engine) Ready() error {
	if e.breaker.open() {
		return errors.New("the platform is unreachable: its circuit breaker is open after repeated failed requests; messages wait on disk")
	}
	return nil
}

// InFlight is the number of recipient groups being worked on.
func (e *Engine) InFlight() int64 { return e.inflight.Load() }

// Purging reports whether a purge (flush + full compaction) is running, and
// how many have completed.
func (e *Engine) Purging() (running bool, done int64) { return e.purging.Load(), e.purges.Load() }

func (e *Engine) dispatchLoop(ctx context.Context, shard int) {
	idle := time.NewTimer(e.opts.IdlePoll)
	defer idle.Stop()
	fails := 0
	for {
		if p := e.opts.Partitions; p != nil && !p.Owns(shard) {
			// Another node works this partition (or none yet): wait for
			// this one to take it (Notify) or the next poll.
			if !e.idleWait(ctx, idle, shard) {
				return
			}
			continue
		}
		n, err := e.DispatchOnce(ctx, shard)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			fails++
			e.log.Warn("engine: dispatch round failed", "shard", shard, "err", err)
			now := e.opts.Now()
			wait := Backoff(now, min(fails, 8), 10*time.Millisecond, 2*time.Second, 0, time.Time{}, jitter())
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait.Sub(now)):
			}
			continue
		}
		fails = 0
		if n > 0 {
			continue
		}
		if !e.idleWait(ctx, idle, shard) {
			return
		}
	}
}

// idleWait waits for the shard's wake-up or the next poll; false once ctx
// ends.
func (e *Engine) idleWait(ctx context.Context, idle *time.Timer, shard int) bool {
	idle.Reset(e.opts.IdlePoll)
	select {
	case <-ctx.Done():
		return false
	case <-e.wake[shard]:
	case <-idle.C:
	}
	return true
}

// acquireSlots takes up to max free worker slots, waiting for at least one.
// With fewer than slotBatch free it waits up to slotLinger for company: a
// Lease call walks past the hints of every recipient in flight, so leasing
// one recipient per freed slot would cost that walk per message.
func (e *Engine) acquireSlots(ctx context.Context, max int) int {
	select {
	case e.slots <- struct{}{}:
	case <-ctx.Done():
		return 0
	}
	n := 1
	var linger *time.Timer
	defer func() {
		if linger != nil {
			linger.Stop()
		}
	}()
	for n < max {
		select {
		case e.slots <- struct{}{}:
			n++
			continue
		default:
		}
		if n >= min(max, slotBatch) || e.inflight.Load() == 0 {
			return n
		}
		if linger == nil {
			linger = time.NewTimer(slotLinger)
		}
		select {
		case e.slots <- struct{}{}:
			n++
		case <-linger.C:
			return n
		case <-ctx.Done():
			return n
		}
	}
	return n
}

const (
	slotBatch  = 16
	slotLinger = 2 * time.Millisecond
)

func (e *Engine) releaseSlots(n int) {
	for i := 0; i < n; i++ {
		<-e.slots
	}
}

// DispatchOnce runs one dispatch round for a shard: lease as many due
// recipients as there are free workers, prefetch missing bundles in one
// batched key query, and hand the groups to the pool. It returns how many
// recipients it leased.
func (e *Engine) DispatchOnce(ctx context.Context, shard int) (int, error) {
	now := e.opts.Now()
	ok, probe := e.breaker.allow(now)
	if !ok {
		return 0, nil
	}
	want := e.opts.LeaseRecipients
	if probe {
		want = 1
	}
	got := e.acquireSlots(ctx, want)
	if got == 0 {
		return 0, ctx.Err()
	}
	leases, err := e.q.Lease(ctx, shard, got, e.opts.LeasePerRecipient)
	if len(leases) < got {
		e.releaseSlots(got - len(leases))
	}
	if err != nil && len(leases) == 0 {
		return 0, err
	}
	if len(leases) == 0 {
		return 0, nil
	}
	groups := make([]*group, 0, len(leases))
	for _, l := range leases {
		groups = append(groups, e.newGroup(l))
	}
	per := e.opts.GroupsPerTask
	for len(groups) > 0 {
		chunk := groups[:min(per, len(groups))]
		groups = groups[len(chunk):]
		n := int64(len(chunk))
		e.inflight.Add(n)
		e.workers.Add(1)
		err := e.pool.Submit(func() {
			defer func() { e.inflight.Add(-n); e.releaseSlots(int(n)); e.workers.Done() }()
			e.workMany(ctx, chunk)
		})
		if err != nil {
			e.inflight.Add(-n)
			e.releaseSlots(int(n))
			e.workers.Done()
			for _, g := range chunk {
				e.q.Release(g.lease)
			}
		}
	}
	return len(leases), nil
}
