package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"

	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/seal"
	"github.com/heraldhq/herald/internal/testutil"
)

type fakeClock struct{ ns atomic.Int64 }

func newClock() *fakeClock {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

type env struct {
	dir   string
	db    *kv.DB
	q     *Queue
	clock *fakeClock
}

func testSealer(t testing.TB) *seal.Sealer {
	if t == nil {
		s, _ := seal.New(seal.TestKey(1))
		return s
	}
	s, err := seal.New(seal.TestKey(1))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func openEnv(t testing.TB, dir string, fs vfs.FS, clock *fakeClock, mut func(*Options)) *env {
	t.Helper()
	db, err := kv.Open(kv.Options{Dir: dir, FS: fs, MemTableBytes: 2 << 20})
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{DB: db, Sealer: testSealer(t), Shards: 4, Now: clock.Now}
	if mut != nil {
		mut(&opts)
	}
	q, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	return &env{dir: dir, db: db, q: q, clock: clock}
}

func (e *env) close() { e.q.Close(); e.db.Close() }

func msg(id, to string, exp time.Time) Message {
	return Message{ID: id, Recipient: to, Payload: []byte("body of " + id + " to " + to), ExpiresAt: exp}
}

func leaseAll(t testing.TB, q *Queue, perRcpt int) []*Lease {
	t.Helper()
	var out []*Lease
	for s := 0; s < q.Shards(); s++ {
		ls, err := q.Lease(context.Background(), s, 1000, perRcpt)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ls...)
	}
	return out
}

func ackAll(t testing.TB, q *Queue, l *Lease) {
	t.Helper()
	var os []Outcome
	for _, m := range l.Messages {
		os = append(os, Outcome{Seq: m.Seq, Ack: true})
	}
	if err := q.Complete(context.Background(), l, os, nil, false); err != nil {
		t.Fatal(err)
	}
}

func TestEnqueueLeaseAckFIFO(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), nil)
	defer e.close()
	ctx := context.Background()
	exp := e.clock.Now().Add(time.Hour)
	var msgs []Message
	for i := 0; i < 5; i++ {
		msgs = append(msgs, msg(fmt.Sprintf("a%d", i), "15550000001", exp), msg(fmt.Sprintf("b%d", i), "15550000002", exp))
	}
	if err := e.q.Enqueue(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.q.Depth(); n != 10 {
		t.Fatalf("depth %d", n)
	}
	ls := leaseAll(t, e.q, 2)
	if len(ls) != 2 {
		t.Fatalf("want 2 recipients leased, got %d", len(ls))
	}
	for _, l := range ls {
		if len(l.Messages) != 2 || !strings.HasSuffix(l.Messages[0].ID, "0") || !strings.HasSuffix(l.Messages[1].ID, "1") {
			t.Fatalf("lease not FIFO head: %+v", l.Messages)
		}
		if !strings.HasPrefix(string(l.Messages[0].Payload), "body of") {
			t.Fatalf("payload not opened: %q", l.Messages[0].Payload)
		}
	}
	// While leased, nothing else of those recipients is handed out.
	if more := leaseAll(t, e.q, 10); len(more) != 0 {
		t.Fatalf("leased recipient handed out again: %d", len(more))
	}
	for _, l := range ls {
		ackAll(t, e.q, l)
	}
	ls = leaseAll(t, e.q, 10)
	if len(ls) != 2 || len(ls[0].Messages) != 3 || !strings.HasSuffix(ls[0].Messages[0].ID, "2") {
		t.Fatalf("after ack want the rest in order, got %+v", ls)
	}
	for _, l := range ls {
		ackAll(t, e.q, l)
	}
	if n, b := e.q.Depth(); n != 0 || b != 0 {
		t.Fatalf("depth after ack-all: %d msgs %d bytes", n, b)
	}
}

func TestRescheduleKeepsOrderAndCountsAttempts(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), nil)
	defer e.close()
	ctx := context.Background()
	exp := e.clock.Now().Add(time.Hour)
	e.q.Enqueue(ctx, []Message{msg("m1", "1555", exp), msg("m2", "1555", exp)})
	ls := leaseAll(t, e.q, 10)
	l := ls[0]
	err := e.q.Complete(ctx, l, []Outcome{{Seq: l.Messages[0].Seq, RetryAt: e.clock.Now().Add(10 * time.Second), CountAttempt: true}}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	// m2 must not overtake m1 while m1 waits for its retry.
	if ls := leaseAll(t, e.q, 10); len(ls) != 0 {
		t.Fatalf("message handed out before its head's retry time: %+v", ls[0].Messages)
	}
	e.clock.Advance(11 * time.Second)
	ls = leaseAll(t, e.q, 10)
	if len(ls) != 1 || ls[0].Messages[0].ID != "m1" || ls[0].Messages[0].Attempt != 1 || ls[0].Messages[1].ID != "m2" {
		t.Fatalf("after retry time: %+v", ls)
	}
}

func TestScheduledMessageWaits(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), nil)
	defer e.close()
	m := msg("later", "1555", e.clock.Now().Add(time.Hour))
	m.Due = e.clock.Now().Add(time.Minute)
	e.q.Enqueue(context.Background(), []Message{m})
	if ls := leaseAll(t, e.q, 1); len(ls) != 0 {
		t.Fatal("scheduled message handed out early")
	}
	e.clock.Advance(time.Minute)
	if ls := leaseAll(t, e.q, 1); len(ls) != 1 {
		t.Fatal("scheduled message not handed out when due")
	}
}

func TestLeaseExpiryBringsMessagesBack(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), func(o *Options) { o.LeaseTimeout = time.Second })
	defer e.close()
	e.q.Enqueue(context.Background(), []Message{msg("m1", "1555", e.clock.Now().Add(time.Hour))})
	old := leaseAll(t, e.q, 1)
	e.clock.Advance(2 * time.Second)
	fresh := leaseAll(t, e.q, 1)
	if len(fresh) != 1 {
		t.Fatal("expired lease did not give its messages back")
	}
	err := e.q.Complete(context.Background(), old[0], []Outcome{{Seq: old[0].Messages[0].Seq, Ack: true}}, nil, false)
	if !errors.Is(err, ErrUnknownLease) {
		t.Fatalf("completing an expired lease: want ErrUnknownLease, got %v", err)
	}
	ackAll(t, e.q, fresh[0])
}

func TestExpireOldestFirstBounded(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), nil)
	defer e.close()
	ctx := context.Background()
	now := e.clock.Now()
	e.q.Enqueue(ctx, []Message{
		msg("late", "1", now.Add(3*time.Minute)), msg("early", "2", now.Add(time.Minute)),
		msg("mid", "3", now.Add(2*time.Minute)), msg("keep", "4", now.Add(time.Hour)),
	})
	got, err := e.q.Expire(ctx, now.Add(5*time.Minute), 2)
	if err != nil || len(got) != 2 || got[0].ID != "early" || got[1].ID != "mid" {
		t.Fatalf("first expire batch: %v %+v", err, got)
	}
	got, _ = e.q.Expire(ctx, now.Add(5*time.Minute), 10)
	if len(got) != 1 || got[0].ID != "late" || string(got[0].Payload) != "body of late to 1" {
		t.Fatalf("second batch: %+v", got)
	}
	if n, _ := e.q.Depth(); n != 1 {
		t.Fatalf("depth %d", n)
	}
	if ls := leaseAll(t, e.q, 10); len(ls) != 1 || ls[0].Messages[0].ID != "keep" {
		t.Fatalf("only keep must remain: %+v", ls)
	}
}

func TestBackpressureClosedAndInvalid(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), func(o *Options) { o.MaxQueuedBytes = 1 })
	ctx := context.Background()
	exp := e.clock.Now().Add(time.Hour)
	if err := e.q.Enqueue(ctx, []Message{{ID: "x", Payload: []byte("p"), ExpiresAt: exp}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("missing recipient: %v", err)
	}
	if err := e.q.Enqueue(ctx, []Message{msg("a", "1", exp)}); err != nil {
		t.Fatal(err)
	}
	if err := e.q.Enqueue(ctx, []Message{msg("b", "1", exp)}); !errors.Is(err, ErrFull) {
		t.Fatalf("want ErrFull, got %v", err)
	}
	if n, _ := e.q.Depth(); n != 1 {
		t.Fatalf("a refused enqueue must store nothing; depth %d", n)
	}
	e.q.Close()
	if err := e.q.Enqueue(ctx, []Message{msg("c", "1", exp)}); !errors.Is(err, ErrClosed) {
		t.Fatalf("want ErrClosed, got %v", err)
	}
	if _, err := e.q.Lease(ctx, 0, 1, 1); !errors.Is(err, ErrClosed) {
		t.Fatalf("lease on closed: %v", err)
	}
	e.db.Close()
}

func TestShardCountIsPinned(t *testing.T) {
	dir := t.TempDir()
	e := openEnv(t, dir, nil, newClock(), nil)
	e.close()
	db, _ := kv.Open(kv.Options{Dir: dir})
	defer db.Close()
	_, err := Open(Options{DB: db, Sealer: testSealer(t), Shards: 8})
	if err == nil || !strings.Contains(err.Error(), "created with 4 shards") {
		t.Fatalf("want a clear shard-count error, got %v", err)
	}
	if _, err := Open(Options{DB: db, Sealer: testSealer(t), Shards: 3}); err == nil {
		t.Fatal("non power of two accepted")
	}
}

func TestCorruptRecordIsDeadLettered(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), nil)
	defer e.close()
	ctx := context.Background()
	exp := e.clock.Now().Add(time.Hour)
	m1, m2 := msg("m1", "1555", exp), msg("m2", "1555", exp)
	m1.Owner, m2.Owner = "biz_a", "biz_a"
	e.q.Enqueue(ctx, []Message{m1, m2})
	// Corrupt m1's sealed payload in place (still a fresh record).
	r := e.q.RecipientKey("1555")
	k := freshKey(e.q.ShardOf(r), 1)
	v, ok, _ := e.db.GetCopy(k)
	if !ok {
		t.Fatal("record not found")
	}
	v[len(v)-1] ^= 0xff
	b := e.db.NewBatch()
	b.Set(k, v, nil)
	e.db.Commit(b, true)
	var dead int
	e.q.opts.OnDeadLetter = func(int, uint64, error) { dead++ }
	ls := leaseAll(t, e.q, 10)
	if dead != 1 || e.q.DeadLetters() != 1 {
		t.Fatalf("corrupt record not dead-lettered: %d", dead)
	}
	if len(ls) != 1 || len(ls[0].Messages) != 1 || ls[0].Messages[0].ID != "m2" {
		t.Fatalf("the good record must still flow: %+v", ls)
	}
	// The dead letter no longer counts against its owner.
	if got, want := e.q.OwnerBytes("biz_a"), storedOwnerBytes(t, e.q)["biz_a"]; got != want || want == 0 {
		t.Fatalf("owner bytes %d after the dead letter, its stored records hold %d", got, want)
	}
}

func TestReopenKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	e := openEnv(t, dir, nil, clock, nil)
	exp := clock.Now().Add(time.Hour)
	e.q.Enqueue(context.Background(), []Message{msg("m1", "1", exp), msg("m2", "1", exp), msg("m3", "2", exp)})
	leaseAll(t, e.q, 10) // leases are forgotten by a restart
	e.close()
	e = openEnv(t, dir, nil, clock, nil)
	defer e.close()
	if n, _ := e.q.Depth(); n != 3 {
		t.Fatalf("depth after reopen %d", n)
	}
	ls := leaseAll(t, e.q, 10)
	if len(ls) != 2 {
		t.Fatalf("after reopen want both recipients due, got %d", len(ls))
	}
	e.q.Enqueue(context.Background(), []Message{msg("m4", "1", exp)})
	if ls[0].Messages[len(ls[0].Messages)-1].Seq >= 4 {
		t.Fatal("sequence went backwards across reopen")
	}
}

// A failed fsync must reach the caller as an error and never as an ack.
func TestFailedFsyncIsNeverAcknowledged(t *testing.T) {
	dir := t.TempDir()
	toggle := &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData || op.Kind == errorfs.OpFileSyncTo {
			return errorfs.ErrInjected
		}
		return nil
	})}
	fs := errorfs.Wrap(vfs.Default, toggle)
	clock := newClock()
	e := openEnv(t, dir, fs, clock, nil)
	ctx := context.Background()
	exp := clock.Now().Add(time.Hour)
	if err := e.q.Enqueue(ctx, []Message{msg("ok", "1", exp)}); err != nil {
		t.Fatal(err)
	}
	toggle.On()
	err := e.q.Enqueue(ctx, []Message{msg("lost", "1", exp)})
	if !errors.Is(err, kv.ErrStorage) {
		t.Fatalf("want ErrStorage from a failed fsync, got %v", err)
	}
	// The handle stays failed: later writes fail fast instead of pretending.
	if err := e.q.Enqueue(ctx, []Message{msg("after", "1", exp)}); !errors.Is(err, kv.ErrStorage) {
		t.Fatalf("poisoned handle accepted a write: %v", err)
	}
	toggle.Off()
	e.q.Close()
	e.db.Close()
	// Recovery: reopen once the fault clears. "ok" is there; neither refused write was acknowledged.
	e = openEnv(t, dir, nil, clock, nil)
	defer e.close()
	ls := leaseAll(t, e.q, 10)
	if len(ls) != 1 || ls[0].Messages[0].ID != "ok" {
		t.Fatalf("after recovery: %+v", ls)
	}
	if err := e.q.Enqueue(ctx, []Message{msg("again", "1", exp)}); err != nil {
		t.Fatalf("queue did not recover: %v", err)
	}
}

func TestNoPlaintextInDataDir(t *testing.T) {
	dir := t.TempDir()
	e := openEnv(t, dir, nil, newClock(), nil)
	exp := e.clock.Now().Add(time.Hour)
	var msgs []Message
	for i := 0; i < 200; i++ {
		msgs = append(msgs, Message{ID: fmt.Sprintf("id%d", i), Recipient: fmt.Sprintf("1555777%04d", i),
			Payload: []byte(fmt.Sprintf(`{"to":"1555777%04d","body":"SECRETBODY-%d"}`, i, i)), ExpiresAt: exp})
	}
	if err := e.q.Enqueue(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	e.db.Flush()
	e.close()
	testutil.AssertNoPlaintext(t, dir, "SECRETBODY", "15557770042", "5557770")
}

func TestConcurrentEnqueueAllDurableAndOrdered(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), nil)
	defer e.close()
	exp := e.clock.Now().Add(time.Hour)
	var wg sync.WaitGroup
	for p := 0; p < 8; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				// Each producer owns its recipient, so its order is well defined.
				m := msg(fmt.Sprintf("p%d-%03d", p, i), fmt.Sprintf("1555%d", p), exp)
				if err := e.q.Enqueue(context.Background(), []Message{m}); err != nil {
					t.Error(err)
				}
			}
		}(p)
	}
	wg.Wait()
	ls := leaseAll(t, e.q, 1000)
	if len(ls) != 8 {
		t.Fatalf("recipients %d", len(ls))
	}
	for _, l := range ls {
		if len(l.Messages) != 50 {
			t.Fatalf("messages %d", len(l.Messages))
		}
		for i := 1; i < len(l.Messages); i++ {
			if l.Messages[i-1].ID >= l.Messages[i].ID {
				t.Fatalf("order broken: %s then %s", l.Messages[i-1].ID, l.Messages[i].ID)
			}
		}
	}
}

// TestConcurrentConsumersNeverSeeAckedMessages: consumers on the same shards
// at once, each message acked when seen. Every message must be handed out
// exactly once and in order per recipient; a lease built from a view older
// than a concurrent Complete would hand out acked messages again.
func TestConcurrentConsumersNeverSeeAckedMessages(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), nil)
	defer e.close()
	exp := e.clock.Now().Add(time.Hour)
	var msgs []Message
	for i := 0; i < 4000; i++ {
		msgs = append(msgs, msg(fmt.Sprintf("m%05d", i), fmt.Sprintf("1555%04d", i%200), exp))
	}
	if err := e.q.Enqueue(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	last := map[Recipient]string{}
	consume(t, e.q, 8, 8, 3, func() bool { return true }, func(l *Lease, m Message) {
		seen[m.ID]++
		if m.ID <= last[l.Recipient] {
			t.Errorf("order: %s after %s", m.ID, last[l.Recipient])
		}
		last[l.Recipient] = m.ID
	})
	for _, m := range msgs {
		if seen[m.ID] != 1 {
			t.Fatalf("%s handed out %d times", m.ID, seen[m.ID])
		}
	}
}

// TestExpireRevokesATimedOutLease: a worker whose lease timed out while its
// messages expired must not write them back (resurrecting deleted content) or
// count them twice; a lease being completed is never expired under it.
func TestExpireRevokesATimedOutLease(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), func(o *Options) { o.LeaseTimeout = time.Minute })
	defer e.close()
	ctx := context.Background()
	now := e.clock.Now()
	if err := e.q.Enqueue(ctx, []Message{msg("a", "1", now.Add(2*time.Minute)), msg("b", "2", now.Add(2*time.Minute))}); err != nil {
		t.Fatal(err)
	}
	ls := leaseAll(t, e.q, 10)
	if len(ls) != 2 {
		t.Fatalf("leases: %d", len(ls))
	}
	// Still held: Expire leaves both alone even though they are past TTL.
	if got, _ := e.q.Expire(ctx, now.Add(30*time.Second).Add(2*time.Minute), 10); len(got) != 0 {
		t.Fatalf("expired under a live lease: %+v", got)
	}
	e.clock.Advance(5 * time.Minute) // both leases time out, both messages expire
	got, err := e.q.Expire(ctx, e.clock.Now(), 10)
	if err != nil || len(got) != 2 {
		t.Fatalf("expire after the lease timed out: %v %+v", err, got)
	}
	for _, l := range ls {
		err := e.q.Complete(ctx, l, []Outcome{{Seq: l.Messages[0].Seq, RetryAt: e.clock.Now()}}, nil, true)
		if !errors.Is(err, ErrUnknownLease) {
			t.Fatalf("late Complete of a revoked lease: %v", err)
		}
	}
	if n, _ := e.q.Depth(); n != 0 {
		t.Fatalf("depth %d after expiring everything", n)
	}
	if ls := leaseAll(t, e.q, 10); len(ls) != 0 {
		t.Fatalf("an expired message came back: %+v", ls[0].Messages)
	}
}

// TestProducersAndConsumersAtOnce: enqueues commit in an order other than
// their sequence numbers; a consumer scanning fresh records meanwhile must
// never step past a sequence number whose batch is still committing (that
// record would be stranded until a restart). Every message is handed out
// exactly once, in order per recipient, while producers are still running.
func TestProducersAndConsumersAtOnce(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), nil)
	defer e.close()
	exp := e.clock.Now().Add(time.Hour)
	const producers, batches, per = 8, 40, 25
	var wg sync.WaitGroup
	var producing atomic.Bool
	producing.Store(true)
	seen := map[string]int{}
	last := map[string]string{} // recipient + producer → last id (one producer's order is defined)
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for b := 0; b < batches; b++ {
				var msgs []Message
				for i := 0; i < per; i++ {
					// IDs sort in enqueue order per producer; recipients are shared.
					msgs = append(msgs, msg(fmt.Sprintf("p%d-%03d-%02d", p, b, i), fmt.Sprintf("1555%03d", (p*7+b*13+i*31)%97), exp))
				}
				if err := e.q.Enqueue(context.Background(), msgs); err != nil {
					t.Error(err)
					return
				}
			}
		}(p)
	}
	go func() { wg.Wait(); producing.Store(false) }()
	consume(t, e.q, 4, 16, 4, func() bool { return !producing.Load() }, func(l *Lease, m Message) {
		seen[m.ID]++
		k := string(l.Recipient[:]) + m.ID[:2]
		if m.ID <= last[k] {
			t.Errorf("order: %s after %s", m.ID, last[k])
		}
		last[k] = m.ID
	})
	if len(seen) != producers*batches*per {
		t.Fatalf("handed out %d distinct messages of %d", len(seen), producers*batches*per)
	}
	for id, n := range seen {
		if n != 1 {
			t.Fatalf("%s handed out %d times", id, n)
		}
	}
}

// TestRestartKeepsOrderAcrossRanges: a restart forgets a lease of fresh
// records while a later record of the same recipient already sits in R (moved
// there because the recipient was leased). After reopen the older record must
// still come first (Open's settle moves it behind nothing, ahead of the rest).
func TestRestartKeepsOrderAcrossRanges(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	e := openEnv(t, dir, nil, clock, nil)
	exp := clock.Now().Add(time.Hour)
	e.q.Enqueue(context.Background(), []Message{msg("m1", "1555", exp), msg("m2", "1555", exp), msg("m3", "1555", exp)})
	ls := leaseAll(t, e.q, 1) // m1 leased from F; m2, m3 moved to R behind it
	if len(ls) != 1 || ls[0].Messages[0].ID != "m1" {
		t.Fatalf("first lease: %+v", ls)
	}
	if n := countKeys(t, e, []byte{pfx, kRecord}); n != 2 {
		t.Fatalf("records in R: %d, want 2", n)
	}
	e.close() // the lease of m1 is forgotten
	e = openEnv(t, dir, nil, clock, nil)
	defer e.close()
	var got []string
	for round := 0; round < 5 && len(got) < 3; round++ {
		for _, l := range leaseAll(t, e.q, 10) {
			for _, m := range l.Messages {
				got = append(got, m.ID)
			}
			ackAll(t, e.q, l)
		}
	}
	if strings.Join(got, ",") != "m1,m2,m3" {
		t.Fatalf("after restart: %v, want m1,m2,m3", got)
	}
}

// TestReleasedFreshLeaseComesBackFirst: releasing (or timing out) a lease of
// fresh records hands its records out again, before the recipient's later
// ones, and a late Complete of the old lease is refused.
func TestReleasedFreshLeaseComesBackFirst(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), nil)
	defer e.close()
	exp := e.clock.Now().Add(time.Hour)
	e.q.Enqueue(context.Background(), []Message{msg("m1", "1555", exp)})
	ls := leaseAll(t, e.q, 1)
	if len(ls) != 1 {
		t.Fatalf("leases %d", len(ls))
	}
	e.q.Enqueue(context.Background(), []Message{msg("m2", "1555", exp)})
	if again := leaseAll(t, e.q, 10); len(again) != 0 {
		t.Fatalf("recipient handed out twice: %+v", again)
	}
	e.q.Release(ls[0])
	again := leaseAll(t, e.q, 10)
	if len(again) != 1 || len(again[0].Messages) != 2 || again[0].Messages[0].ID != "m1" || again[0].Messages[1].ID != "m2" {
		t.Fatalf("after release: %+v", again)
	}
	if err := e.q.Complete(context.Background(), ls[0], []Outcome{{Seq: ls[0].Messages[0].Seq, Ack: true}}, nil, false); !errors.Is(err, ErrUnknownLease) {
		t.Fatalf("late complete of a released lease: %v", err)
	}
	ackAll(t, e.q, again[0])
	if d, _ := e.q.Depth(); d != 0 {
		t.Fatalf("depth %d", d)
	}
}

func countKeys(t *testing.T, e *env, prefix []byte) int {
	t.Helper()
	it, err := e.db.NewIter(&pebble.IterOptions{LowerBound: prefix, UpperBound: kv.PrefixEnd(prefix)})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	n := 0
	for it.First(); it.Valid(); it.Next() {
		n++
	}
	return n
}

// TestFirstLease: only a message handed out for the very first time is
// marked FirstLease — not after a release, a reschedule or a restart (the
// engine skips its stored-ciphertext lookup for marked messages).
func TestFirstLease(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	e := openEnv(t, dir, nil, clock, nil)
	ctx := context.Background()
	exp := clock.Now().Add(time.Hour)
	e.q.Enqueue(ctx, []Message{msg("m1", "1555", exp), msg("m2", "1666", exp), msg("m3", "1777", exp)})
	ls := leaseAll(t, e.q, 1)
	if len(ls) != 3 {
		t.Fatalf("leases %d", len(ls))
	}
	for _, l := range ls {
		if !l.Messages[0].FirstLease {
			t.Fatalf("%s: first hand-out not marked", l.Messages[0].ID)
		}
		switch l.Messages[0].ID {
		case "m1":
			e.q.Release(l)
		case "m2":
			if err := e.q.Complete(ctx, l, []Outcome{{Seq: l.Messages[0].Seq, RetryAt: clock.Now()}}, nil, false); err != nil {
				t.Fatal(err)
			}
		}
		// m3 stays leased across the restart below.
	}
	again := leaseAll(t, e.q, 1)
	if len(again) != 2 {
		t.Fatalf("after release and reschedule: %d leases", len(again))
	}
	for _, l := range again {
		if l.Messages[0].FirstLease {
			t.Fatalf("%s marked FirstLease on its second hand-out", l.Messages[0].ID)
		}
	}
	e.close()
	e = openEnv(t, dir, nil, clock, nil)
	defer e.close()
	for _, l := range leaseAll(t, e.q, 1) {
		if l.Messages[0].FirstLease {
			t.Fatalf("%s marked FirstLease after a restart", l.Messages[0].ID)
		}
	}
}

// consume runs n consumers that lease (maxR recipients, maxPer messages) from
// every shard and ack at once, calling see for each message handed out (one
// at a time), until done() holds and 50 rounds in a row found nothing.
func consume(t *testing.T, q *Queue, n, maxR, maxPer int, done func() bool, see func(*Lease, Message)) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for c := 0; c < n; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for idle := 0; idle < 50; {
				got := 0
				for s := 0; s < q.Shards(); s++ {
					ls, err := q.Lease(context.Background(), s, maxR, maxPer)
					if err != nil {
						t.Error(err)
						return
					}
					for _, l := range ls {
						mu.Lock()
						for _, m := range l.Messages {
							see(l, m)
						}
						mu.Unlock()
						got++
						ackAll(t, q, l)
					}
				}
				if got == 0 && done() {
					idle++
				}
			}
		}()
	}
	wg.Wait()
}

// TestLargeBatchKeepsEveryRecord: one batch of 1,000 messages to 40 recipients
// with two expiries keeps every record whole — id, payload (empty to 40 KiB),
// expiry, order per recipient — and expires exactly its short-lived tenth.
func TestLargeBatchKeepsEveryRecord(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), nil)
	defer e.close()
	ctx := context.Background()
	now := e.clock.Now()
	const n, rcpts = 1000, 40
	var msgs []Message
	want := map[string][]string{} // recipient → ids in order
	for i := 0; i < n; i++ {
		to := fmt.Sprintf("1555%07d", i%rcpts)
		id := fmt.Sprintf("m%04d", i)
		p := bytes.Repeat([]byte{byte(i)}, (i*37)%2000)
		if i == 500 {
			p = bytes.Repeat([]byte("x"), 40<<10)
		}
		exp := now.Add(time.Hour)
		if i%10 == 0 {
			exp = now.Add(time.Minute) // a second expiry group in the batch
		}
		msgs = append(msgs, Message{ID: id, Recipient: to, Payload: p, ExpiresAt: exp})
		want[to] = append(want[to], id)
	}
	if err := e.q.Enqueue(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	byID := map[string]Message{}
	for _, m := range msgs {
		byID[m.ID] = m
	}
	got := map[string][]string{}
	for len(got) < rcpts || func() bool {
		for r, ids := range want {
			if len(got[r]) < len(ids) {
				return true
			}
		}
		return false
	}() {
		ls := leaseAll(t, e.q, 7)
		if len(ls) == 0 {
			t.Fatal("messages missing")
		}
		for _, l := range ls {
			for _, m := range l.Messages {
				w := byID[m.ID]
				if !bytes.Equal(m.Payload, w.Payload) || !m.ExpiresAt.Equal(w.ExpiresAt) {
					t.Fatalf("%s: payload %d bytes (want %d), expiry %v (want %v)", m.ID, len(m.Payload), len(w.Payload), m.ExpiresAt, w.ExpiresAt)
				}
				got[w.Recipient] = append(got[w.Recipient], m.ID)
			}
			ackAll(t, e.q, l)
		}
	}
	for r, ids := range want {
		if strings.Join(got[r], ",") != strings.Join(ids, ",") {
			t.Fatalf("%s: order %v, want %v", r, got[r], ids)
		}
	}
	// The same batch again, then expiry: exactly the one-minute tenth goes.
	for i := range msgs {
		msgs[i].Seq, msgs[i].Due = 0, time.Time{}
	}
	if err := e.q.Enqueue(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	expired, err := e.q.Expire(ctx, now.Add(2*time.Minute), 10000)
	if err != nil || len(expired) != n/10 {
		t.Fatalf("expired %d (want %d): %v", len(expired), n/10, err)
	}
	for _, m := range expired {
		if !bytes.Equal(m.Payload, byID[m.ID].Payload) {
			t.Fatalf("expired %s opened to a different payload", m.ID)
		}
	}
}

// TestCompleteLongLeaseOutcomesInAnyOrder: a lease longer than the scan limit
// (its outcomes go through a map) with outcomes in reverse order and a few
// messages without one: acked ones are gone, retried ones come back with one
// more attempt, the rest unchanged, all in order.
func TestCompleteLongLeaseOutcomesInAnyOrder(t *testing.T) {
	for _, n := range []int{5, 40} { // the scan and the map
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			e := openEnv(t, t.TempDir(), nil, newClock(), nil)
			defer e.close()
			ctx := context.Background()
			exp := e.clock.Now().Add(time.Hour)
			var msgs []Message
			for i := 0; i < n; i++ {
				msgs = append(msgs, msg(fmt.Sprintf("m%02d", i), "15550001", exp))
			}
			if err := e.q.Enqueue(ctx, msgs); err != nil {
				t.Fatal(err)
			}
			ls := leaseAll(t, e.q, n)
			if len(ls) != 1 || len(ls[0].Messages) != n {
				t.Fatalf("leased %d", len(ls))
			}
			var outs []Outcome
			var want []string
			for i := n - 1; i >= 0; i-- {
				m := ls[0].Messages[i]
				switch i % 3 {
				case 0:
					outs = append(outs, Outcome{Seq: m.Seq, Ack: true})
				case 1:
					outs = append(outs, Outcome{Seq: m.Seq, RetryAt: e.clock.Now(), CountAttempt: true})
				}
			}
			for i := 0; i < n; i++ {
				if i%3 != 0 {
					want = append(want, fmt.Sprintf("m%02d/%d", i, map[bool]int{true: 1}[i%3 == 1]))
				}
			}
			if err := e.q.Complete(ctx, ls[0], outs, nil, false); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range leaseAll(t, e.q, n) {
				for _, m := range l.Messages {
					got = append(got, fmt.Sprintf("%s/%d", m.ID, m.Attempt))
				}
			}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Fatalf("after complete:\n got %v\nwant %v", got, want)
			}
		})
	}
}

// TestAckedFreshRecordsLeaveNoTombstones: records enqueued, leased and acked
// while still in the memtable leave no tombstone behind when it is flushed
// (an F key is written once and removed with a single delete, which cancels
// its set in the flush; plain deletes would flush one per message).
func TestAckedFreshRecordsLeaveNoTombstones(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), nil)
	defer e.close()
	ctx := context.Background()
	exp := e.clock.Now().Add(time.Hour)
	const n = 2000
	var msgs []Message
	for i := 0; i < n; i++ {
		msgs = append(msgs, msg(fmt.Sprintf("m%05d", i), fmt.Sprintf("1555%07d", i), exp))
	}
	if err := e.q.Enqueue(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	acked := 0
	for acked < n {
		ls := leaseAll(t, e.q, 1)
		if len(ls) == 0 {
			t.Fatalf("acked %d of %d", acked, n)
		}
		for _, l := range ls {
			ackAll(t, e.q, l)
			acked += len(l.Messages)
		}
	}
	tables, dels := testutil.FlushedTombstones(t, e.db.DB)
	if tables == 0 || dels != 0 {
		t.Fatalf("%d flushed tables hold %d tombstones after every record was acked", tables, dels)
	}
}

// TestOwnerCostsAByteAndSurvivesReopen: a record names its owner by a small
// id (one byte more than a record without one), the owner table is written
// with the first enqueue that names it, and after a reopen the owner's
// records decode to its name and count against it again.
func TestOwnerCostsAByteAndSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	e := openEnv(t, dir, nil, clock, nil)
	m := msg("m1", "1555", clock.Now().Add(time.Hour))
	plain := e.q.encodeRecord(nil, &m, []byte("sealed"))
	m.Owner = "biz_0123456789abcdef"
	owned := e.q.encodeRecord(nil, &m, []byte("sealed"))
	if len(owned) != len(plain)+1 {
		t.Fatalf("an owner costs %d bytes per record, want 1", len(owned)-len(plain))
	}
	m2 := msg("m2", "1556", clock.Now().Add(time.Hour))
	m2.Owner = "biz_other"
	if err := e.q.Enqueue(context.Background(), []Message{m, m2}); err != nil {
		t.Fatal(err)
	}
	want := e.q.OwnerBytes(m.Owner)
	e.close()
	e = openEnv(t, dir, nil, clock, nil)
	defer e.close()
	if got := e.q.OwnerBytes(m.Owner); got != want || got == 0 {
		t.Fatalf("after a reopen the owner counts %d bytes, before %d", got, want)
	}
	ls := leaseAll(t, e.q, 10)
	owners := map[string]bool{}
	for _, l := range ls {
		for _, lm := range l.Messages {
			owners[lm.Owner] = true
		}
	}
	if !owners[m.Owner] || !owners[m2.Owner] || len(owners) != 2 {
		t.Fatalf("owners after a reopen: %v", owners)
	}
}
