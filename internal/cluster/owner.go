package cluster

import (
	"context"
	"errors"
	"hash/fnv"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Handler is what a node does with the partitions it owns.
type Handler interface {
	// Gain: this node owns ps now (nothing of them is consumed yet).
	Gain(ps []int)
	// Lose: ps are no longer this node's (their consumption has stopped).
	Lose(ps []int)
	// Work: sealed message records of partition p, in stream order. The
	// handler acks each one once the message is settled.
	Work(p int, msgs []jetstream.Msg)
	// Events: platform events routed to partition p; acked by the handler.
	Events(p int, msgs []jetstream.Msg)
	// Holding: how many of partition p's messages the handler holds
	// unacked (delivered, taken in, not settled).
	Holding(p int) int
}

// Owner takes, renews, balances and gives back partition leases.
type Owner struct {
	c    *Cluster
	h    Handler
	base time.Time
	// until[p]: monotonic nanoseconds (since base) up to which this node may
	// work p: two thirds of the lease after the renewal that began before it.
	until []atomic.Int64

	mu   sync.Mutex
	held map[int]*lease
	free map[int]bool // partitions nobody held at the last round
	// claimed[p]: this process's last successful claim of p (claim).
	claimed map[int]string
	claims  uint64
	moves   atomic.Int64 // partitions gained since start
	stop    context.CancelFunc
	done    chan struct{}
}

type lease struct {
	rev    uint64
	rev0   uint64 // the revision the lease was created with: names its consumers
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// gen counts the consumers of this ownership (audit recreates one).
	gen uint64
	// suspect: the last audit found deliveries this node does not hold.
	suspect bool
}

// NewOwner makes the lease keeper; Run starts it.
func (c *Cluster) NewOwner(h Handler) *Owner {
	return &Owner{c: c, h: h, base: clock.Wall(), until: make([]atomic.Int64, c.cfg.Partitions), held: map[int]*lease{}, claimed: map[int]string{}}
}

// Owns reports whether this node may work partition p now.
func (o *Owner) Owns(p int) bool {
	return p >= 0 && p < len(o.until) && time.Since(o.base).Nanoseconds() < o.until[p].Load()
}

// Held lists the partitions this node holds.
func (o *Owner) Held() []int {
	o.mu.Lock()
	defer o.mu.Unlock()
	ps := make([]int, 0, len(o.held))
	for p := range o.held {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// Gained counts the partitions this node took since it started.
func (o *Owner) Gained() int64 { return o.moves.Load() }

// Owners maps each partition to the node holding its lease ("" for none).
func (c *Cluster) Owners(ctx context.Context) ([]string, error) {
	out := make([]string, c.cfg.Partitions)
	for p := range out {
		e, err := c.leases.Get(ctx, leaseKey(p))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[p], _, _ = strings.Cut(string(e.Value()), "#")
	}
	return out, nil
}

// Owner is the node holding partition p's lease ("" for none).
func (c *Cluster) Owner(ctx context.Context, p int) (string, error) {
	e, err := c.leases.Get(ctx, leaseKey(p))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	node, _, _ := strings.Cut(string(e.Value()), "#")
	return node, nil
}

// leaseValue names this node and process: a revision holding it was
// written by this process (a renewal whose answer was lost, say).
func (c *Cluster) leaseValue() []byte { return []byte(c.cfg.NodeID + "#" + c.instance) }

func leaseKey(p int) string { return "p." + strconv.Itoa(p) }

// Run keeps the leases until ctx ends or Close.
func (o *Owner) Run(ctx context.Context) {
	ctx, o.stop = context.WithCancel(ctx)
	o.done = make(chan struct{})
	var wg sync.WaitGroup
	// Two loops at a fixed period: renewals (and the heartbeat) never wait
	// for the balancing, whose hand-offs may wait for work in progress.
	loop := func(f func(context.Context)) {
		defer wg.Done()
		t := time.NewTicker(o.c.cfg.LeaseTTL / 4)
		defer t.Stop()
		for {
			f(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}
	wg.Add(3)
	go loop(o.renew)
	go loop(o.balance)
	go func() {
		defer wg.Done()
		t := time.NewTicker(auditEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				o.audit(ctx)
			}
		}
	}()
	go func() {
		wg.Wait()
		close(o.done)
	}()
}

// Close stops working every partition, runs drain (the node finishes what
// is in flight: its statuses ack their messages), then gives the leases
// back, so other nodes take them at their next round instead of after the
// lease's TTL.
func (o *Owner) Close(drain func()) {
	if o.stop == nil {
		if drain != nil {
			drain()
		}
		return
	}
	o.stop()
	<-o.done
	o.mu.Lock()
	held := make(map[int]*lease, len(o.held))
	ps := make([]int, 0, len(o.held))
	for p, l := range o.held {
		held[p] = l
		ps = append(ps, p)
	}
	o.mu.Unlock()
	o.release(context.Background(), ps, false)
	if drain != nil {
		drain()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for p, l := range held {
		_ = o.c.leases.Delete(ctx, leaseKey(p), jetstream.LastRevision(l.rev))
	}
	_ = o.c.nodes.Delete(ctx, o.c.cfg.NodeID)
}

// renew renews what is held (in parallel) and writes the heartbeat.
func (o *Owner) renew(ctx context.Context) {
	c := o.c
	ttl := c.cfg.LeaseTTL
	start := time.Since(o.base)
	o.mu.Lock()
	held := make(map[int]uint64, len(o.held))
	for p, l := range o.held {
		held[p] = l.rev
	}
	o.mu.Unlock()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		lost []int
	)
	for p, rev := range held {
		wg.Add(1)
		go func(p int, rev uint64) {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, ttl/3)
			defer cancel()
			nrev, err := c.leases.Update(rctx, leaseKey(p), c.leaseValue(), rev)
			if err != nil && transient(err) {
				// No answer in time (a saturated node or server): the lease
				// is not lost for that — nobody else can write it before it
				// expires — but past its 2/3 TTL this node stops handing
				// the partition's messages over (Owns) until a renewal
				// succeeds. Dropping it here would make the node take it
				// again a round later and rebuild every session in it.
				if time.Since(o.base) >= time.Duration(o.until[p].Load()) {
					c.log.Warn("cluster: lease renewal late; partition paused until it renews", "partition", p, "err", err)
				}
				return
			}
			if err != nil && ctx.Err() != nil {
				return // stopping
			}
			if err != nil {
				// Refused (another revision): an earlier renewal of this
				// process whose answer timed out may have landed after all.
				// If the lease still holds this process's value, nobody
				// else held it in between (every write is a CAS on the one
				// before, and an expired lease is gone): go on from that
				// revision. Owns is not extended (the write's time is not
				// known); the next renewal extends it.
				e, gerr := c.leases.Get(rctx, leaseKey(p))
				switch {
				case gerr == nil && string(e.Value()) == string(c.leaseValue()):
					o.mu.Lock()
					if l := o.held[p]; l != nil {
						l.rev = e.Revision()
					}
					o.mu.Unlock()
					c.log.Info("cluster: a late lease renewal had landed; going on from its revision", "partition", p)
				case gerr != nil && transient(gerr):
					// not known yet: the next round asks again
				default:
					mu.Lock()
					lost = append(lost, p)
					mu.Unlock()
					c.log.Warn("cluster: partition lease lost", "partition", p, "err", err)
				}
				return
			}
			o.mu.Lock()
			if l := o.held[p]; l != nil {
				l.rev = nrev
			}
			o.mu.Unlock()
			o.until[p].Store(int64(start + ttl*2/3))
		}(p, rev)
	}
	wg.Wait()
	if len(lost) > 0 {
		for _, p := range lost {
			o.until[p].Store(0) // stop handing its messages over now
		}
		go o.release(ctx, lost, false)
	}
	if ctx.Err() != nil {
		return
	}
	hctx, cancel := context.WithTimeout(ctx, ttl/3)
	defer cancel()
	if _, err := c.nodes.Put(hctx, c.cfg.NodeID, []byte(strconv.FormatInt(clock.Wall().UnixMilli(), 10))); err != nil && ctx.Err() == nil &&
		!errors.Is(err, nats.ErrConnectionClosed) { // closed: this node is leaving (or cut off); nothing to retell each round
		c.log.Warn("cluster: heartbeat failed", "err", err)
	}
}

// balance moves toward an even share of the partitions.
func (o *Owner) balance(ctx context.Context) {
	c := o.c
	ttl := c.cfg.LeaseTTL
	bctx, cancel := context.WithTimeout(ctx, ttl/3)
	defer cancel()
	if time.Since(o.base) < ttl/2 {
		// Just started: the nodes starting with this one have not all
		// written their heartbeat yet; taking a whole share now would
		// only move partitions back a round later.
		return
	}
	// Balance: ceil(partitions / live nodes) each; and a partition nobody
	// held at the previous round too is taken whatever the share (its
	// owner is gone; the share evens out once its heartbeat is gone too).
	live, err := c.nodes.Keys(bctx)
	if err != nil || len(live) == 0 {
		live = []string{c.cfg.NodeID}
	}
	taken := map[int]bool{}
	keys, err := c.leases.Keys(bctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return
	}
	for _, k := range keys {
		if p, err := strconv.Atoi(strings.TrimPrefix(k, "p.")); err == nil {
			taken[p] = true
		}
	}
	P := c.cfg.Partitions
	target := (P + len(live) - 1) / len(live)
	order := o.preference()
	o.mu.Lock()
	n := len(o.held)
	o.mu.Unlock()
	freeBefore := o.free
	o.free = map[int]bool{}
	for p := 0; p < P; p++ {
		if !taken[p] {
			o.free[p] = true
		}
	}
	if n > target && len(o.free) == 0 {
		// Give back the partitions this node prefers least.
		var give []int
		for i := len(order) - 1; i >= 0 && n-len(give) > target; i-- {
			o.mu.Lock()
			_, ok := o.held[order[i]]
			o.mu.Unlock()
			if ok {
				give = append(give, order[i])
			}
		}
		o.release(ctx, give, true)
		return
	}
	var gained, resumed []int
	for _, p := range order {
		if taken[p] || (n+len(gained) >= target && !freeBefore[p]) {
			continue
		}
		o.mu.Lock()
		_, ok := o.held[p]
		o.mu.Unlock()
		if ok {
			continue
		}
		at := time.Since(o.base)
		rev, err := c.leases.Create(bctx, leaseKey(p), c.leaseValue())
		if err != nil && transient(err) {
			// The create may have landed with its answer lost: then the
			// lease is this process's (its value says so).
			if e, gerr := c.leases.Get(bctx, leaseKey(p)); gerr == nil && string(e.Value()) == string(c.leaseValue()) {
				rev, err = e.Revision(), nil
			}
		}
		if err != nil {
			continue // taken by another node just now (or the bucket is unreachable)
		}
		again, err := o.claim(bctx, p)
		if err != nil {
			// Not recorded as its worker: not worked (another node that
			// takes it later must know this one may have).
			c.log.Warn("cluster: partition taken but not claimed; given back", "partition", p, "err", err)
			_ = c.leases.Delete(bctx, leaseKey(p), jetstream.LastRevision(rev))
			continue
		}
		o.mu.Lock()
		o.held[p] = &lease{rev: rev, rev0: rev}
		o.mu.Unlock()
		o.until[p].Store(int64(at + ttl*2/3))
		if again {
			resumed = append(resumed, p)
		} else {
			gained = append(gained, p)
		}
		delete(o.free, p)
	}
	if len(resumed) > 0 {
		// Its lease ran out (a saturated node) and nobody worked it since:
		// this node's sessions and local copies are still the current ones.
		c.log.Warn("cluster: partitions taken back that no other node worked meanwhile", "partitions", resumed)
		for _, p := range resumed {
			o.consume(p)
		}
	}
	if len(gained) > 0 {
		o.moves.Add(int64(len(gained)))
		c.log.Info("cluster: partitions gained", "partitions", gained)
		o.h.Gain(gained)
		for _, p := range gained {
			o.consume(p)
		}
	}
}

// claim records this node as the worker of partition p (KV HERALD_WORKERS,
// by compare-and-set, a value of its own for each claim) and reports
// whether the record still held this process's last successful claim: then
// no other node worked p since this one last did. A claim whose answer was
// lost is never taken for this node's: a later one finds a value it does
// not know and starts over.
func (o *Owner) claim(ctx context.Context, p int) (again bool, err error) {
	kv := o.c.workers
	o.mu.Lock()
	last := o.claimed[p]
	o.claims++
	me := string(o.c.leaseValue()) + "#" + strconv.FormatUint(o.claims, 10)
	o.mu.Unlock()
	e, err := kv.Get(ctx, leaseKey(p))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		_, err = kv.Create(ctx, leaseKey(p), []byte(me))
	case err != nil:
		return false, err
	case last != "" && string(e.Value()) == last:
		return true, nil
	default:
		_, err = kv.Update(ctx, leaseKey(p), []byte(me), e.Revision())
	}
	if err != nil {
		return false, err
	}
	o.mu.Lock()
	o.claimed[p] = me
	o.mu.Unlock()
	return false, nil
}

func transient(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders)
}

// preference orders the partitions by rendezvous hash for this node: every
// node ranks them differently, so shares spread without coordination.
func (o *Owner) preference() []int {
	type ps struct {
		p int
		h uint64
	}
	all := make([]ps, o.c.cfg.Partitions)
	for p := range all {
		h := fnv.New64a()
		h.Write([]byte(o.c.cfg.NodeID))
		h.Write([]byte{0, byte(p >> 8), byte(p)})
		all[p] = ps{p, h.Sum64()}
	}
	slices.SortFunc(all, func(a, b ps) int {
		if a.h > b.h {
			return -1
		}
		if a.h < b.h {
			return 1
		}
		return 0
	})
	out := make([]int, len(all))
	for i, x := range all {
		out[i] = x.p
	}
	return out
}

// release stops working ps (waiting for their consumers) and, when give,
// deletes their leases (only the revision this node holds).
func (o *Owner) release(ctx context.Context, ps []int, give bool) {
	if len(ps) == 0 {
		return
	}
	var ls []*lease
	var lp []int
	o.mu.Lock()
	for _, p := range ps {
		o.until[p].Store(0)
		if l := o.held[p]; l != nil {
			ls, lp = append(ls, l), append(lp, p)
			delete(o.held, p)
		}
	}
	o.mu.Unlock()
	for _, l := range ls {
		if l.cancel != nil {
			l.cancel()
		}
		l.wg.Wait()
	}
	o.h.Lose(ps)
	if give {
		// Messages handed to the platform just before the stop finish
		// and are acked before another node can take them again.
		time.Sleep(min(o.c.cfg.LeaseTTL/3, time.Second))
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		for i, p := range lp {
			_ = o.c.leases.Delete(dctx, leaseKey(p), jetstream.LastRevision(ls[i].rev))
		}
	}
	o.c.log.Info("cluster: partitions released", "partitions", ps, "given", give)
}

// consume (re)creates p's consumers — so that every message of p not yet
// acked comes to this node from the start — and feeds the handler.
func (o *Owner) consume(p int) {
	o.mu.Lock()
	l := o.held[p]
	if l == nil {
		o.mu.Unlock()
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	l.gen++
	gen := l.gen
	l.wg.Add(2)
	o.mu.Unlock()
	go o.feed(ctx, l, gen, p, o.c.Work, "work-", WorkSubject(p), o.h.Work)
	go o.feed(ctx, l, gen, p, o.c.Events, "events-", EventsSubject(p), o.h.Events)
}

// audit compares, for every partition held, what its consumer says it
// delivered and awaits an ack for with what this node holds; twice in a row
// more (deliveries lost on the way: a pull cut by a leader change or a stop)
// and the partition's consumers are made again, so that everything unacked
// comes again (what is held already is recognized and skipped). The
// consumer's ack wait is the last resort behind this.
func (o *Owner) audit(ctx context.Context) {
	o.mu.Lock()
	type held struct {
		p int
		l *lease
	}
	var hs []held
	for p, l := range o.held {
		hs = append(hs, held{p, l})
	}
	o.mu.Unlock()
	for _, h := range hs {
		o.mu.Lock()
		name := "work-" + strconv.Itoa(h.p) + "-" + strconv.FormatUint(h.l.rev0, 10) + "_" + strconv.FormatUint(h.l.gen, 10)
		o.mu.Unlock()
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		cons, err := o.c.Work.Consumer(actx, name)
		var info *jetstream.ConsumerInfo
		if err == nil {
			info, err = cons.Info(actx)
		}
		cancel()
		if err != nil {
			continue
		}
		lost := info.NumAckPending > o.h.Holding(h.p)
		o.mu.Lock()
		again := lost && h.l.suspect && o.held[h.p] == h.l
		h.l.suspect = lost
		o.mu.Unlock()
		if !again {
			continue
		}
		o.c.log.Warn("cluster: deliveries lost on the way; making the partition's consumers again", "partition", h.p,
			"consumer_ack_pending", info.NumAckPending, "held", o.h.Holding(h.p))
		h.l.cancel()
		h.l.wg.Wait()
		o.mu.Lock()
		h.l.suspect = false
		still := o.held[h.p] == h.l
		o.mu.Unlock()
		if still {
			o.consume(h.p)
		}
	}
}

func (o *Owner) feed(ctx context.Context, l *lease, gen uint64, p int, st jetstream.Stream, prefix, subject string, h func(int, []jetstream.Msg)) {
	defer l.wg.Done()
	// A consumer of this ownership's own (named by the lease revision):
	// every consumer an earlier owner left of the partition is deleted
	// first (a work-queue stream refuses two on one subject), so what it
	// delivered and nobody acked comes again, from the start, to this one.
	// Reusing an old consumer would keep its deliveries pending until the
	// ack wait; deleting it also ends the old owner's pulls, should it live.
	base := prefix + strconv.Itoa(p) + "-"
	name := base + strconv.FormatUint(l.rev0, 10) + "_" + strconv.FormatUint(gen, 10)
	var cons jetstream.Consumer
	for ctx.Err() == nil {
		err := o.dropOthers(ctx, st, base, name)
		if err == nil {
			cons, err = st.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: name, FilterSubject: subject,
				AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait(), MaxAckPending: o.c.cfg.MaxPending,
				DeliverPolicy: jetstream.DeliverAllPolicy, MaxRequestBatch: 1024})
		}
		if err == nil {
			break
		}
		o.c.log.Warn("cluster: cannot take over the partition's consumer yet", "consumer", name, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
	if ctx.Err() != nil {
		return
	}
	// Consume keeps pull requests outstanding and renews them itself; its
	// callback only queues, and one loop hands batches to the handler.
	in := make(chan jetstream.Msg, 4096)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case in <- m:
		case <-ctx.Done():
		}
	}, jetstream.PullMaxMessages(1024))
	if err != nil {
		o.c.log.Warn("cluster: cannot consume", "consumer", name, "err", err)
		return
	}
	defer cc.Stop()
	for {
		var msgs []jetstream.Msg
		select {
		case <-ctx.Done():
			return
		case m := <-in:
			msgs = append(msgs, m)
		}
	fill:
		for len(msgs) < 1024 {
			select {
			case m := <-in:
				msgs = append(msgs, m)
			default:
				break fill
			}
		}
		if ctx.Err() != nil {
			return // the next owner's new consumer delivers them again
		}
		h(p, msgs)
	}
}

// LiveNodes lists the nodes whose heartbeat is current.
func (c *Cluster) LiveNodes(ctx context.Context) ([]string, error) {
	ks, err := c.nodes.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	return ks, err
}

// dropOthers deletes the stream's consumers named base* other than keep.
func (o *Owner) dropOthers(ctx context.Context, st jetstream.Stream, base, keep string) error {
	names := st.ConsumerNames(ctx)
	var old []string
	for n := range names.Name() {
		if (strings.HasPrefix(n, base) || n == strings.TrimSuffix(base, "-")) && n != keep {
			old = append(old, n)
		}
	}
	if err := names.Err(); err != nil {
		return err
	}
	for _, n := range old {
		if err := st.DeleteConsumer(ctx, n); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return err
		}
	}
	return nil
}

// auditEvery: how often Owner.audit runs.
var auditEvery = 15 * time.Second

func ackWait() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("HERALD_ACK_WAIT")); err == nil {
		return d
	}
	// A settled message's ack can be lost (a consumer leader changing):
	// after this long it comes again, and is sent again or found queued.
	return 30 * time.Minute
}
