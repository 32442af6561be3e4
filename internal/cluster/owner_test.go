package cluster

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

type recorder struct {
	mu         sync.Mutex
	gain, lose [][]int
}

func (r *recorder) Gain(ps []int) { r.mu.Lock(); r.gain = append(r.gain, ps); r.mu.Unlock() }
func (r *recorder) Lose(ps []int) { r.mu.Lock(); r.lose = append(r.lose, ps); r.mu.Unlock() }
func (r *recorder) Work(p int, msgs []jetstream.Msg) {
	for _, m := range msgs {
		_ = m.Ack()
	}
}
func (r *recorder) Events(p int, msgs []jetstream.Msg) {
	for _, m := range msgs {
		_ = m.Ack()
	}
}
func (r *recorder) Holding(int) int { return 0 }

func (r *recorder) counts() (int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.gain), len(r.lose)
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// openOne is a one-server cluster with two partitions, its owner holding
// both (the balancing loop is not run: the test drives renew itself).
func openOne(t *testing.T) (*Cluster, *Owner, *recorder) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Open(ctx, Config{Embed: true, Listen: freePort(t), StoreDir: t.TempDir(), Replicas: 1, NodeID: "a",
		Partitions: 2, LeaseTTL: 3 * time.Second, NoSyncAlways: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	r := &recorder{}
	o := c.NewOwner(r)
	o.base = o.base.Add(-c.cfg.LeaseTTL) // past balance's start-up grace
	o.balance(ctx)
	if g, _ := r.counts(); g != 1 || !o.Owns(0) || !o.Owns(1) {
		t.Fatalf("the owner did not take both partitions: gains %d, owns %v %v", g, o.Owns(0), o.Owns(1))
	}
	t.Cleanup(func() { o.release(context.Background(), o.Held(), true) })
	return c, o, r
}

// heldRev is the lease revision o holds for p (0: none).
func heldRev(o *Owner, p int) uint64 {
	o.mu.Lock()
	defer o.mu.Unlock()
	if l := o.held[p]; l != nil {
		return l.rev
	}
	return 0
}

// A renewal whose answer was lost may have landed: the lease then holds a
// newer revision with this process's value, and the owner goes on from it
// instead of dropping the partition (which made it take the partition
// again and rebuild every session in it).
func TestLateRenewalIsAdopted(t *testing.T) {
	c, o, r := openOne(t)
	ctx := context.Background()
	rev := heldRev(o, 0)
	// The renewal that "timed out" but landed.
	nrev, err := c.leases.Update(ctx, leaseKey(0), c.leaseValue(), rev)
	if err != nil {
		t.Fatal(err)
	}
	o.renew(ctx) // refused on partition 0 (held revision is old): adopts nrev
	if got := heldRev(o, 0); got != nrev {
		t.Fatalf("lease not adopted: revision %d, want %d", got, nrev)
	}
	o.renew(ctx) // and renews from it
	if _, l := r.counts(); l != 0 || !o.Owns(0) {
		t.Fatalf("partition dropped: loses %d, owns %v", l, o.Owns(0))
	}
	after := heldRev(o, 0)
	if after <= nrev {
		t.Fatalf("not renewed after the adoption: revision %d", after)
	}
}

// A lease another process wrote (same node id, another run: the value
// differs) or one that is gone is lost: the partition is dropped.
func TestRefusedRenewalOfAnotherValueLoses(t *testing.T) {
	c, o, r := openOne(t)
	ctx := context.Background()
	rev := heldRev(o, 0)
	if _, err := c.leases.Update(ctx, leaseKey(0), []byte("a#another-run"), rev); err != nil {
		t.Fatal(err)
	}
	if err := c.leases.Delete(ctx, leaseKey(1)); err != nil {
		t.Fatal(err)
	}
	o.renew(ctx)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, l := r.counts(); l > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if o.Owns(0) || o.Owns(1) || len(o.Held()) != 0 {
		t.Fatalf("still owns: %v %v, held %v", o.Owns(0), o.Owns(1), o.Held())
	}
	owners, err := c.Owners(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if owners[0] != "a" || owners[1] != "" {
		t.Fatalf("owners %q", owners)
	}
}

// A partition whose lease ran out (a saturated node) and that no other
// node claimed meanwhile is taken back without Gain: the node's sessions
// and local copies are still current. One another node claimed is a Gain
// (sessions dropped, local copies stale).
func TestTakenBackWithoutAnotherWorker(t *testing.T) {
	c, o, r := openOne(t)
	ctx := context.Background()
	expire := func(p int) {
		o.release(ctx, []int{p}, false)
		if err := c.leases.Delete(ctx, leaseKey(p)); err != nil {
			t.Fatal(err)
		}
	}
	expire(0)
	o.balance(ctx)
	if g, _ := r.counts(); g != 1 || !o.Owns(0) {
		t.Fatalf("taken back as a gain (%d gains) or not at all (%v)", g, o.Owns(0))
	}
	// Another node worked it meanwhile.
	expire(0)
	if _, err := c.workers.Put(ctx, leaseKey(0), []byte("b#other#1")); err != nil {
		t.Fatal(err)
	}
	o.balance(ctx)
	if g, _ := r.counts(); g != 2 || !o.Owns(0) {
		t.Fatalf("another node's partition taken without a gain: %d gains, owns %v", g, o.Owns(0))
	}
	r.mu.Lock()
	last := r.gain[len(r.gain)-1]
	r.mu.Unlock()
	if len(last) != 1 || last[0] != 0 {
		t.Fatalf("gained %v", last)
	}
	// A claim this process wrote but never saw answered (another value of
	// its own) is not taken for its last one.
	expire(0)
	if _, err := c.workers.Put(ctx, leaseKey(0), append(c.leaseValue(), "#999"...)); err != nil {
		t.Fatal(err)
	}
	o.balance(ctx)
	if g, _ := r.counts(); g != 3 {
		t.Fatalf("an unknown claim taken for this process's: %d gains", g)
	}
}
