package cluster

import (
	"context"
	"errors"
	"hash/fnv"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

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
}

// Owner takes, renews, balances and gives back partition leases.
type Owner struct {
	c    *Cluster
	h    Handler
	base time.Time
	// until[p]: monotonic nanoseconds (since base) up to which this node may
	// work p: two thirds of the lease after the renewal that began before it.
	until []atomic.Int64

	mu    sync.Mutex
	held  map[int]*lease
	moves atomic.Int64 // partitions gained since start
	stop  context.CancelFunc
	done  chan struct{}
}

type lease struct {
	rev    uint64
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewOwner makes the lease keeper; Run starts it.
func (c *Cluster) NewOwner(h Handler) *Owner {
	return &Owner{c: c, h: h, base: time.Now(), until: make([]atomic.Int64, c.cfg.Partitions), held: map[int]*lease{}}
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
		out[p] = string(e.Value())
	}
	return out, nil
}

func leaseKey(p int) string { return "p." + strconv.Itoa(p) }

// Run keeps the leases until ctx ends or Close.
func (o *Owner) Run(ctx context.Context) {
	ctx, o.stop = context.WithCancel(ctx)
	o.done = make(chan struct{})
	go func() {
		defer close(o.done)
		tick := o.c.cfg.LeaseTTL / 3
		for {
			o.round(ctx)
			select {
			case <-ctx.Done():
				return
			case <-time.After(tick):
			}
		}
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

// round: heartbeat, renew what is held, then move toward an even share.
func (o *Owner) round(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, o.c.cfg.LeaseTTL/3)
	defer cancel()
	c := o.c
	start := time.Since(o.base)
	if _, err := c.nodes.Put(ctx, c.cfg.NodeID, []byte(strconv.FormatInt(time.Now().UnixMilli(), 10))); err != nil && ctx.Err() == nil {
		c.log.Warn("cluster: heartbeat failed", "err", err)
	}
	// Renew.
	o.mu.Lock()
	held := make(map[int]uint64, len(o.held))
	for p, l := range o.held {
		held[p] = l.rev
	}
	o.mu.Unlock()
	var lost []int
	for p, rev := range held {
		nrev, err := c.leases.Update(ctx, leaseKey(p), []byte(c.cfg.NodeID), rev)
		if err != nil {
			if time.Since(o.base)-time.Duration(o.until[p].Load()) >= 0 || !transient(err) {
				lost = append(lost, p)
				c.log.Warn("cluster: partition lease lost", "partition", p, "err", err)
			}
			continue
		}
		o.mu.Lock()
		if l := o.held[p]; l != nil {
			l.rev = nrev
		}
		o.mu.Unlock()
		o.until[p].Store(int64(start + c.cfg.LeaseTTL*2/3))
	}
	if len(lost) > 0 {
		o.release(ctx, lost, false)
	}
	if ctx.Err() != nil {
		return
	}
	// Balance: ceil(partitions / live nodes) each.
	live, err := c.nodes.Keys(ctx)
	if err != nil || len(live) == 0 {
		live = []string{c.cfg.NodeID}
	}
	P := c.cfg.Partitions
	target := (P + len(live) - 1) / len(live)
	if time.Since(o.base) < c.cfg.LeaseTTL/2 {
		// Just started: the nodes starting with this one have not all
		// written their heartbeat yet; taking a whole share now would
		// only move partitions back a round later.
		return
	}
	order := o.preference()
	o.mu.Lock()
	n := len(o.held)
	o.mu.Unlock()
	if n > target {
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
	var gained []int
	for _, p := range order {
		if n+len(gained) >= target {
			break
		}
		o.mu.Lock()
		_, ok := o.held[p]
		o.mu.Unlock()
		if ok {
			continue
		}
		rev, err := c.leases.Create(ctx, leaseKey(p), []byte(c.cfg.NodeID))
		if err != nil {
			continue // held by another node (or the bucket is unreachable)
		}
		o.mu.Lock()
		o.held[p] = &lease{rev: rev}
		o.mu.Unlock()
		o.until[p].Store(int64(start + c.cfg.LeaseTTL*2/3))
		gained = append(gained, p)
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
	l.wg.Add(2)
	o.mu.Unlock()
	go o.feed(ctx, l, p, o.c.Work, "work-", WorkSubject(p), o.h.Work)
	go o.feed(ctx, l, p, o.c.Events, "events-", EventsSubject(p), o.h.Events)
}

func (o *Owner) feed(ctx context.Context, l *lease, p int, st jetstream.Stream, prefix, subject string, h func(int, []jetstream.Msg)) {
	defer l.wg.Done()
	name := prefix + strconv.Itoa(p)
	var cons jetstream.Consumer
	for ctx.Err() == nil {
		_ = st.DeleteConsumer(ctx, name)
		var err error
		cons, err = st.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: name, FilterSubject: subject,
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: 24 * time.Hour, MaxAckPending: o.c.cfg.MaxPending,
			DeliverPolicy: jetstream.DeliverAllPolicy, MaxRequestBatch: 1024})
		if err == nil {
			break
		}
		o.c.log.Warn("cluster: cannot create consumer", "consumer", name, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
	for ctx.Err() == nil {
		fctx, cancel := context.WithTimeout(ctx, time.Second)
		batch, err := cons.Fetch(1024, jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			if ctx.Err() == nil {
				time.Sleep(200 * time.Millisecond)
			}
			continue
		}
		var msgs []jetstream.Msg
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		cancel()
		// Handed over even when the lease is late to renew: a fetched
		// message dropped here would stay pending on this consumer until
		// its ack wait. (The engine works them only while Owns; after a
		// stop, the next owner's new consumer delivers them all again.)
		if len(msgs) > 0 && ctx.Err() == nil {
			h(p, msgs)
		}
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
