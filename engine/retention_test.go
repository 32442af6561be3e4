package engine_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/platform/sim"
)

type clock struct{ ns atomic.Int64 }

func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

func TestRetentionExpiresUnsentAndForgetsSent(t *testing.T) {
	c := &clock{}
	c.ns.Store(time.Now().UnixNano())
	h := newHarness(t, harnessOpts{sim: sim.Options{DevicesMin: 1, DevicesMax: 1, UnknownShare: -1}, noStart: true,
		engine: func(o *engine.Options) { o.Now = c.now; o.SentGrace = 10 * time.Minute }})
	ctx := context.Background()
	// Never started: these cannot be sent before their TTL runs out.
	ids := h.enqueue(h.users(1, 3), 1, "camp-ttl", time.Minute)
	c.advance(2 * time.Minute)
	removed, err := h.eng.RetentionOnce(ctx)
	if err != nil || removed != 3 {
		t.Fatalf("retention removed %d: %v", removed, err)
	}
	h.eng.Flush()
	for _, list := range ids {
		st, err := h.eng.MessageStatus(list[0])
		if err != nil || st.Status != heraldtype.StatusFailed || st.Code != heraldtype.CodeExpired {
			t.Fatalf("expired message status: %+v %v", st, err)
		}
	}
	if n, _ := h.q.Depth(); n != 0 {
		t.Fatalf("queue depth %d after expiry", n)
	}
	cs, _ := h.eng.CampaignCounters("camp-ttl")
	if cs.Failed != 3 || cs.Failures[fmt.Sprint(heraldtype.CodeExpired)] != 3 {
		t.Fatalf("counters: %+v", cs)
	}
	// A sent message's kept copy lives for the grace period only.
	h.eng.Start(ctx)
	h.enqueue(h.users(10, 1), 1, "camp-k", time.Hour)
	h.drain(30 * time.Second)
	if n := countPrefix(t, h, "eK"); n != 1 {
		t.Fatalf("want 1 kept copy after sending, got %d", n)
	}
	c.advance(11 * time.Minute)
	if _, err := h.eng.RetentionOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countPrefix(t, h, "eK"); n != 0 {
		t.Fatalf("kept copy outlived its grace: %d", n)
	}
	if n := countPrefix(t, h, "eO"); n != 0 {
		t.Fatalf("outbox records left behind: %d", n)
	}
}

func countPrefix(t *testing.T, h *harness, prefix string) int {
	it, err := h.db.NewIter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	n := 0
	for it.SeekGE([]byte(prefix)); it.Valid() && string(it.Key()[:len(prefix)]) == prefix; it.Next() {
		n++
	}
	return n
}
