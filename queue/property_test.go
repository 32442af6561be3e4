package queue

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/heraldhq/herald/internal/kv"
	"pgregory.net/rapid"
)

// modelMsg is the model's view of one queued message.
type modelMsg struct {
	id      string
	due     time.Time
	exp     time.Time
	attempt int
	owner   string
}

// TestQueueMatchesModel runs random enqueue/lease/complete/expire/reopen/clock
// sequences and checks, after every step, that the queue hands out exactly what
// a plain in-memory FIFO-per-recipient model says is due — no more (a leased or
// not-yet-due head hides its recipient), no less (no recipient is ever lost by
// the hint index), in order. Each owner's byte count equals what its stored
// records hold, and is zero when the model holds none of its messages.
func TestQueueMatchesModel(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		dir, err := os.MkdirTemp("", "herald-queue-model-")
		if err != nil {
			rt.Fatal(err)
		}
		defer os.RemoveAll(dir) // per check: hundreds of checks must not pile up databases
		clock := newClock()
		e := openEnv(t, dir, nil, clock, func(o *Options) { o.LeaseTimeout = time.Hour })
		defer func() { e.close() }() // runs before RemoveAll
		ctx := context.Background()
		model := map[string][]modelMsg{}
		leases := map[string]*Lease{} // recipient → outstanding lease
		var ended []*Lease            // leases completed before (no longer held)
		nextID := 0
		rcpts := []string{"15550000001", "15550000002", "15550000003", "15550000004", "15550000005"}

		eligible := func() map[string]int {
			now := clock.Now()
			out := map[string]int{}
			for r, list := range model {
				if _, leased := leases[r]; leased || len(list) == 0 || list[0].due.After(now) {
					continue
				}
				n := 0
				for n < len(list) && !list[n].due.After(now) {
					n++
				}
				out[r] = n
			}
			return out
		}

		rt.Repeat(map[string]func(*rapid.T){
			"enqueue": func(rt *rapid.T) {
				n := rapid.IntRange(1, 4).Draw(rt, "n")
				var batch []Message
				for i := 0; i < n; i++ {
					r := rapid.SampledFrom(rcpts).Draw(rt, "rcpt")
					delay := time.Duration(rapid.IntRange(0, 3).Draw(rt, "delay")) * time.Second
					ttl := time.Duration(rapid.IntRange(5, 60).Draw(rt, "ttl")) * time.Second
					nextID++
					m := Message{ID: fmt.Sprintf("m%05d", nextID), Recipient: r, Payload: []byte("p"),
						Due: clock.Now().Add(delay), ExpiresAt: clock.Now().Add(ttl),
						Owner: rapid.SampledFrom([]string{"", "biz_a", "biz_b"}).Draw(rt, "owner")}
					batch = append(batch, m)
				}
				if err := e.q.Enqueue(ctx, batch); err != nil {
					rt.Fatal(err)
				}
				for _, m := range batch {
					model[m.Recipient] = append(model[m.Recipient], modelMsg{id: m.ID, due: m.Due, exp: m.ExpiresAt, owner: m.Owner})
				}
			},
			"lease": func(rt *rapid.T) {
				per := rapid.IntRange(1, 3).Draw(rt, "per")
				want := eligible()
				got := map[string]*Lease{}
				for _, l := range leaseAll(t, e.q, per) {
					r := recipientName(e.q, rcpts, l.Recipient)
					got[r] = l
				}
				if len(got) != len(want) {
					rt.Fatalf("leased %d recipients, model says %d are due", len(got), len(want))
				}
				for r, l := range got {
					n, ok := want[r]
					if !ok {
						rt.Fatalf("recipient %s leased but not due in the model", r)
					}
					if n > per {
						n = per
					}
					if len(l.Messages) != n {
						rt.Fatalf("recipient %s: %d messages leased, model %d", r, len(l.Messages), n)
					}
					for i, m := range l.Messages {
						mm := model[r][i]
						if m.ID != mm.id || m.Attempt != mm.attempt {
							rt.Fatalf("recipient %s position %d: got %s/%d want %s/%d", r, i, m.ID, m.Attempt, mm.id, mm.attempt)
						}
					}
					leases[r] = l
				}
			},
			"complete": func(rt *rapid.T) {
				if len(leases) == 0 {
					rt.Skip("no lease")
				}
				// One lease through Complete, or several (and sometimes one
				// already ended) in one CompleteMany.
				keys := sortedKeys(leases)
				which := []string{rapid.SampledFrom(keys).Draw(rt, "which")}
				many := rapid.Bool().Draw(rt, "many")
				if many {
					which = rapid.SliceOfNDistinct(rapid.SampledFrom(keys), 1, len(keys), rapid.ID[string]).Draw(rt, "which several")
				}
				var cs []Completion
				keeps := map[string][]modelMsg{}
				for _, r := range which {
					l := leases[r]
					var outs []Outcome
					list := model[r]
					keep := list[:0:0]
					for i, m := range l.Messages {
						switch rapid.IntRange(0, 2).Draw(rt, "fate") {
						case 0:
							outs = append(outs, Outcome{Seq: m.Seq, Ack: true})
						case 1:
							at := clock.Now().Add(time.Duration(rapid.IntRange(0, 4).Draw(rt, "backoff")) * time.Second)
							outs = append(outs, Outcome{Seq: m.Seq, RetryAt: at, CountAttempt: true})
							list[i].due, list[i].attempt = at, list[i].attempt+1
							keep = append(keep, list[i])
						default:
							keep = append(keep, list[i])
						}
					}
					keeps[r] = append(keep, list[len(l.Messages):]...)
					outs = rapid.Permutation(outs).Draw(rt, "outcome order")
					cs = append(cs, Completion{Lease: l, Outcomes: outs})
				}
				if !many {
					if err := e.q.Complete(ctx, cs[0].Lease, cs[0].Outcomes, nil, false); err != nil {
						rt.Fatal(err)
					}
				} else {
					stale := len(ended) > 0 && rapid.Bool().Draw(rt, "with an ended lease")
					if stale { // a lease that is no longer held: refused alone
						cs = append(cs, Completion{Lease: ended[rapid.IntRange(0, len(ended)-1).Draw(rt, "ended")]})
					}
					errs := e.q.CompleteMany(ctx, cs, false)
					for i, err := range errs {
						if want := error(nil); stale && i == len(cs)-1 {
							if !errors.Is(err, ErrUnknownLease) {
								rt.Fatalf("ended lease: %v", err)
							}
						} else if err != want {
							rt.Fatal(err)
						}
					}
				}
				for _, r := range which {
					model[r] = keeps[r]
					ended = append(ended, leases[r])
					delete(leases, r)
				}
			},
			"release": func(rt *rapid.T) {
				if len(leases) == 0 {
					rt.Skip("no lease")
				}
				r := rapid.SampledFrom(sortedKeys(leases)).Draw(rt, "which")
				e.q.Release(leases[r])
				delete(leases, r)
			},
			"tick": func(rt *rapid.T) {
				clock.Advance(time.Duration(rapid.IntRange(1, 5).Draw(rt, "secs")) * time.Second)
			},
			"expire": func(rt *rapid.T) {
				now := clock.Now()
				limit := rapid.SampledFrom([]int{1, 2, 5, 1000}).Draw(rt, "limit")
				got, err := e.q.Expire(ctx, now, limit)
				if err != nil {
					rt.Fatal(err)
				}
				// Due: past expiry, recipient not leased. Expire takes the
				// limit oldest of them.
				due := map[string]time.Time{}
				for r, list := range model {
					if _, leased := leases[r]; leased {
						continue
					}
					for _, m := range list {
						if !m.exp.After(now) {
							due[m.id] = m.exp
						}
					}
				}
				if len(got) != min(limit, len(due)) {
					rt.Fatalf("expired %d with limit %d, model has %d due", len(got), limit, len(due))
				}
				taken := map[string]bool{}
				var newest time.Time
				for _, m := range got {
					exp, ok := due[m.ID]
					if !ok || taken[m.ID] {
						rt.Fatalf("expired %s: not due in the model, or twice", m.ID)
					}
					taken[m.ID] = true
					if exp.After(newest) {
						newest = exp
					}
				}
				for id, exp := range due {
					if !taken[id] && exp.Before(newest) {
						rt.Fatalf("left %s (expires %v) but took one expiring %v: not oldest first", id, exp, newest)
					}
				}
				for r, list := range model {
					keep := list[:0:0]
					for _, m := range list {
						if !taken[m.id] {
							keep = append(keep, m)
						}
					}
					model[r] = keep
				}
			},
			"epoch": func(rt *rapid.T) {
				skipEpoch(rt, e.q) // later enqueues file their records and index in the next epoch
			},
			"legacy": func(rt *rapid.T) {
				// What an upgrade finds: index entries in the old X range.
				toLegacyIndex(rt, e.db)
				e.close()
				e = openEnv(t, dir, nil, clock, func(o *Options) { o.LeaseTimeout = time.Hour })
				leases = map[string]*Lease{}
				ended = nil
			},
			"reopen": func(rt *rapid.T) {
				e.close()
				e = openEnv(t, dir, nil, clock, func(o *Options) { o.LeaseTimeout = time.Hour })
				leases = map[string]*Lease{}
				ended = nil // leases of the closed instance (tokens restart with the new one)
			},
			"": func(rt *rapid.T) {
				var total int64
				for _, list := range model {
					total += int64(len(list))
				}
				if n, _ := e.q.Depth(); n != total {
					rt.Fatalf("depth %d, model %d", n, total)
				}
				stored := storedOwnerBytes(rt, e.q)
				held := map[string]bool{}
				for _, list := range model {
					for _, m := range list {
						held[m.owner] = true
					}
				}
				for _, o := range []string{"", "biz_a", "biz_b"} {
					if got := e.q.OwnerBytes(o); got != stored[o] || (got != 0) != held[o] {
						rt.Fatalf("owner %q: counted %d bytes, its records hold %d, the model has its messages: %v", o, got, stored[o], held[o])
					}
				}
			},
		})
	})
}

func recipientName(q *Queue, names []string, r Recipient) string {
	for _, n := range names {
		if sameRecipient(q.RecipientKey(n), r) {
			return n
		}
	}
	return "?"
}

func sortedKeys(m map[string]*Lease) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// storedOwnerBytes sums, per owner, the encoded records in F and R, read
// straight from the store.
func storedOwnerBytes(t interface{ Fatal(...any) }, q *Queue) map[string]int64 {
	out := map[string]int64{}
	for _, kind := range []byte{kRecord, kFresh} {
		lo := []byte{pfx, kind}
		it, err := q.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: kv.PrefixEnd(lo)})
		if err != nil {
			t.Fatal(err)
		}
		for it.First(); it.Valid(); it.Next() {
			rec := it.Value()
			switch {
			case kind == kFresh && len(it.Key()) == freshKeyLen:
				_, rec, err = splitFresh(rec)
			case kind == kRecord && len(it.Key()) == 28:
			default:
				continue
			}
			if err != nil {
				continue
			}
			if m, _, err := q.decodeRecord(rec, false); err == nil {
				out[m.Owner] += int64(len(rec))
			}
		}
		it.Close()
	}
	return out
}
