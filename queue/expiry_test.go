package queue

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldhq/herald/internal/kv"
)

// fataler is what the helpers need of a *testing.T or a *rapid.T.
type fataler interface {
	Helper()
	Fatal(args ...any)
}

// skipEpoch moves the sequence to the start of the next epoch: the next
// Enqueue files its records and its expiry entry there.
func skipEpoch(t fataler, q *Queue) {
	t.Helper()
	q.seqMu.Lock()
	defer q.seqMu.Unlock()
	next := (q.seq.Load()>>epochBits + 1) << epochBits
	if err := q.reserveSeqs(next - q.seq.Load()); err != nil {
		t.Fatal(err)
	}
	q.seq.Store(next - 1)
}

// toLegacyIndex rewrites every expiry entry into the layout of data
// directories written before the index moved into F (q X expires firstseq),
// as an upgrade finds them. The queue must be reopened afterwards.
func toLegacyIndex(t fataler, db *kv.DB) int {
	t.Helper()
	lo := []byte{pfx, kFresh}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: kv.PrefixEnd(lo)})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	b := db.NewBatch()
	n := 0
	for it.First(); it.Valid(); it.Next() {
		if k := it.Key(); isExpiryKey(k) {
			lk := append([]byte{pfx, kExpiry}, k[len(k)-16:]...) // expires(8) firstseq(8)
			b.Delete(k, nil)
			b.Set(lk, it.Value(), nil)
			n++
		}
	}
	if err := db.Commit(b, true); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestExpireMergesEpochsAndLegacyEntries: entries in three epochs and in the
// old X range come out in expiry order, one limit at a time, and the bounds
// of emptied epochs are dropped.
func TestExpireMergesEpochsAndLegacyEntries(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	e := openEnv(t, dir, nil, clock, nil)
	ctx := context.Background()
	now := clock.Now()
	at := func(min int) time.Time { return now.Add(time.Duration(min) * time.Minute) }
	// The legacy entries: written in this layout, then moved to q X.
	if err := e.q.Enqueue(ctx, []Message{msg("L3", "1", at(3)), msg("L6", "2", at(6))}); err != nil {
		t.Fatal(err)
	}
	if n := toLegacyIndex(t, e.db); n != 2 {
		t.Fatalf("%d legacy entries", n)
	}
	e.close()
	e = openEnv(t, dir, nil, clock, nil)
	defer func() { e.close() }()
	for _, batch := range [][]Message{
		{msg("A5", "3", at(5)), msg("A1", "4", at(1)), msg("A9", "5", at(90))},
		{msg("B2", "6", at(2)), msg("B7", "7", at(7)), msg("B4", "8", at(4))},
		{msg("C8", "9", at(8)), msg("C0", "10", at(0))},
	} {
		skipEpoch(t, e.q)
		if err := e.q.Enqueue(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	if len(e.q.expBounds) != 3 {
		t.Fatalf("bounds for %d epochs, want 3", len(e.q.expBounds))
	}
	var got []string
	for {
		ms, err := e.q.Expire(ctx, at(10), 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) == 0 {
			break
		}
		got = append(got, ms[0].ID)
	}
	if want := "[C0 A1 B2 L3 B4 A5 L6 B7 C8]"; fmt.Sprint(got) != want {
		t.Fatalf("expired %v, want %v", got, want)
	}
	// B's and C's epochs are empty now; A's keeps A9 (bound raised to it).
	if len(e.q.expBounds) != 1 {
		t.Fatalf("bounds left: %v", e.q.expBounds)
	}
	for _, b := range e.q.expBounds {
		if b.min != uint64(at(90).UnixNano()) {
			t.Fatalf("bound %d, want A9's expiry", b.min)
		}
	}
	if n := countKeys(t, e, []byte{pfx, kExpiry}); n != 0 {
		t.Fatalf("%d legacy entries left", n)
	}
	if n, _ := e.q.Depth(); n != 1 {
		t.Fatalf("depth %d, want 1 (A9)", n)
	}
}

// TestExpireStopsMidEntryAndResumes: a limit that ends inside an entry keeps
// the rest of it, and the epoch's bound stays at or below it.
func TestExpireStopsMidEntryAndResumes(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), nil)
	defer e.close()
	ctx := context.Background()
	exp := e.clock.Now().Add(time.Minute)
	var batch []Message
	for i := 0; i < 10; i++ {
		batch = append(batch, msg(fmt.Sprintf("m%d", i), fmt.Sprint(i), exp))
	}
	if err := e.q.Enqueue(ctx, batch); err != nil {
		t.Fatal(err)
	}
	total := 0
	for i := 0; i < 4; i++ {
		ms, err := e.q.Expire(ctx, exp, 3)
		if err != nil {
			t.Fatal(err)
		}
		total += len(ms)
		if b := e.q.expBounds[0]; i < 3 && b.min != uint64(exp.UnixNano()) {
			t.Fatalf("after sweep %d the bound is %d, want the kept entry's expiry %d", i, b.min, exp.UnixNano())
		}
	}
	if total != 10 || len(e.q.expBounds) != 0 {
		t.Fatalf("expired %d of 10, bounds left %v", total, e.q.expBounds)
	}
}

// TestExpiryIndexStaysInItsEpoch: the tables flushed from two epochs' enqueues
// do not overlap, so Pebble can move them down the LSM without rewriting them.
// (With the index in a range of its own, each table spanned from its records
// to the index, over every record written later.)
func TestExpiryIndexStaysInItsEpoch(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), nil)
	defer e.close()
	ctx := context.Background()
	exp := e.clock.Now().Add(time.Hour)
	for round := 0; round < 2; round++ {
		skipEpoch(t, e.q)
		if err := e.db.Flush(); err != nil { // the sequence ceiling skipEpoch wrote (q S)
			t.Fatal(err)
		}
		var batch []Message
		for i := 0; i < 200; i++ {
			batch = append(batch, msg(fmt.Sprintf("r%dm%d", round, i), fmt.Sprint(i), exp.Add(time.Duration(i)*time.Second)))
		}
		if err := e.q.Enqueue(ctx, batch); err != nil {
			t.Fatal(err)
		}
		if err := e.db.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	levels, err := e.db.SSTables()
	if err != nil {
		t.Fatal(err)
	}
	type span struct{ lo, hi []byte }
	var spans []span
	for _, l := range levels {
		for _, tb := range l {
			if bytes.HasPrefix(tb.Smallest.UserKey, []byte{pfx, kFresh}) {
				spans = append(spans, span{tb.Smallest.UserKey, tb.Largest.UserKey})
			}
		}
	}
	if len(spans) != 2 {
		t.Fatalf("%d tables of enqueue data, want 2", len(spans))
	}
	if bytes.Compare(spans[0].lo, spans[1].lo) > 0 {
		spans[0], spans[1] = spans[1], spans[0]
	}
	if bytes.Compare(spans[0].hi, spans[1].lo) >= 0 {
		t.Fatalf("tables overlap: [%x, %x] and [%x, %x]", spans[0].lo, spans[0].hi, spans[1].lo, spans[1].hi)
	}
}

// TestExpireKeepsTheBoundOfAnEntryItCouldNotSee: an Enqueue that commits
// after a sweep opened its view (and notes its epoch) must not lose its entry
// when that sweep drops the epoch's bound (it emptied the epoch as it saw it)
// or raises it (to an entry that expires later).
func TestExpireKeepsTheBoundOfAnEntryItCouldNotSee(t *testing.T) {
	for _, raise := range []bool{false, true} {
		t.Run(fmt.Sprintf("raise=%v", raise), func(t *testing.T) {
			e := openEnv(t, t.TempDir(), nil, newClock(), nil)
			defer e.close()
			ctx := context.Background()
			past := e.clock.Now().Add(-time.Minute)
			batch := []Message{msg("seen", "1", past)}
			if raise {
				batch = append(batch, msg("later", "3", e.clock.Now().Add(time.Hour)))
			}
			if err := e.q.Enqueue(ctx, batch); err != nil {
				t.Fatal(err)
			}
			e.q.afterExpireView = func() {
				e.q.afterExpireView = nil
				if err := e.q.Enqueue(ctx, []Message{msg("unseen", "2", past)}); err != nil {
					t.Error(err)
				}
			}
			got, err := e.q.Expire(ctx, e.clock.Now(), 100)
			if err != nil || len(got) != 1 || got[0].ID != "seen" {
				t.Fatalf("first sweep: %v %+v", err, got)
			}
			got, err = e.q.Expire(ctx, e.clock.Now(), 100)
			if err != nil || len(got) != 1 || got[0].ID != "unseen" {
				t.Fatalf("the entry committed under the first sweep was lost: %v %+v", err, got)
			}
		})
	}
}

// TestExpireNeverLosesAConcurrentEntry: producers enqueue already-expired
// messages while sweeps run (and raise or drop bounds); when they are done,
// sweeps find every message — no bound was raised past an entry its sweep
// could not see.
func TestExpireNeverLosesAConcurrentEntry(t *testing.T) {
	e := openEnv(t, t.TempDir(), nil, newClock(), nil)
	defer e.close()
	ctx := context.Background()
	const producers, batches, per = 4, 40, 8
	var wg sync.WaitGroup
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for i := 0; i < batches; i++ {
				var batch []Message
				for j := 0; j < per; j++ {
					// Expiry spread so entries land before and after the
					// ones a sweep has already seen.
					exp := e.clock.Now().Add(-time.Duration((i*per+j)%17) * time.Second)
					batch = append(batch, msg(fmt.Sprintf("p%di%dj%d", p, i, j), fmt.Sprintf("%d%d", p, j), exp))
				}
				if err := e.q.Enqueue(ctx, batch); err != nil {
					t.Error(err)
					return
				}
			}
		}(p)
	}
	seen := map[string]bool{}
	stop := make(chan struct{})
	swept := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			// Short sweeps stop inside the epoch (raising its bound); long
			// ones empty it (dropping its bound).
			limit := 3
			if i%2 == 1 {
				limit = 1000
			}
			ms, err := e.q.Expire(ctx, e.clock.Now(), limit)
			if err != nil {
				swept <- err
				return
			}
			for _, m := range ms {
				if seen[m.ID] {
					swept <- fmt.Errorf("%s expired twice", m.ID)
					return
				}
				seen[m.ID] = true
			}
			select {
			case <-stop:
				swept <- nil
				return
			default:
			}
		}
	}()
	wg.Wait()
	close(stop)
	if err := <-swept; err != nil {
		t.Fatal(err)
	}
	for {
		ms, err := e.q.Expire(ctx, e.clock.Now(), 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) == 0 {
			break
		}
		for _, m := range ms {
			seen[m.ID] = true
		}
	}
	if len(seen) != producers*batches*per {
		t.Fatalf("expired %d of %d", len(seen), producers*batches*per)
	}
	if n, _ := e.q.Depth(); n != 0 {
		t.Fatalf("depth %d after every message expired", n)
	}
}

// TestOpenSkipsTheExpiryIndex: entries stay until their TTL, acked or not,
// so an epoch may hold far more of them than records. Open's scans of F
// (recount, settle) seek past each epoch's entries instead of stepping
// through them, and still learn the epoch's bound.
func TestOpenSkipsTheExpiryIndex(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	e := openEnv(t, dir, nil, clock, nil)
	ctx := context.Background()
	exp := clock.Now().Add(time.Hour)
	for i := 0; i < 500; i++ { // one entry each, all acked
		if err := e.q.Enqueue(ctx, []Message{msg(fmt.Sprintf("a%d", i), fmt.Sprint(i), exp)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range leaseAll(t, e.q, 1) {
		ackAll(t, e.q, l)
	}
	skipEpoch(t, e.q)
	if err := e.q.Enqueue(ctx, []Message{msg("k1", "1", exp.Add(time.Minute)), msg("k2", "2", exp)}); err != nil {
		t.Fatal(err)
	}
	e.close()
	e = openEnv(t, dir, nil, clock, nil)
	defer e.close()
	if n, _ := e.q.Depth(); n != 2 {
		t.Fatalf("depth %d, want 2", n)
	}
	// Two records, two epochs' skips, and what the iterators count around them.
	if e.q.openSteps > 20 {
		t.Fatalf("Open stepped over %d keys for 2 records and 501 index entries", e.q.openSteps)
	}
	if len(e.q.expBounds) != 2 {
		t.Fatalf("bounds %v, want one per epoch", e.q.expBounds)
	}
	got, err := e.q.Expire(ctx, exp.Add(time.Hour), 1000)
	if err != nil || len(got) != 2 {
		t.Fatalf("expire after reopen: %v %+v", err, got)
	}
}
