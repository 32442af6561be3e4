package engine_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/platform/sim"
	"github.com/heraldhq/herald/internal/testutil"
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
		st, err := h.eng.Statuses().Message(list[0])
		if err != nil || st.Status != heraldtype.StatusFailed || st.Code != heraldtype.CodeExpired {
			t.Fatalf("expired message status: %+v %v", st, err)
		}
	}
	if n, _ := h.q.Depth(); n != 0 {
		t.Fatalf("queue depth %d after expiry", n)
	}
	cs, _ := h.eng.Statuses().Counters("camp-ttl")
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

// TestExpiredDataLeavesTheDiskEvenSealed: after TTL (+ grace) and a purge, no
// byte of any sealed record that held a body or a number — queue records of
// sent and of expired messages, ciphertexts in the outbox, kept copies — is
// left in any file of the data directory (SSTables, WAL, anything).
func TestExpiredDataLeavesTheDiskEvenSealed(t *testing.T) {
	c := &clock{}
	c.ns.Store(time.Now().UnixNano())
	h := newHarness(t, harnessOpts{sim: sim.Options{DevicesMin: 1, DevicesMax: 2, UnknownShare: -1}, noStart: true,
		engine: func(o *engine.Options) { o.Now = c.now; o.SentGrace = 10 * time.Minute; o.PurgeInterval = -1 }})
	ctx := context.Background()
	// Sent ones (the engine will deliver them) and ones that expire unsent
	// (their platform never answers: unknown to the simulator's prefix).
	h.enqueue(h.users(0, 20), 2, "camp-sent", time.Hour)
	var needles [][]byte
	capture := func(prefix string) {
		it, err := h.db.NewIter(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer it.Close()
		for it.SeekGE([]byte(prefix)); it.Valid() && strings.HasPrefix(string(it.Key()), prefix); it.Next() {
			if v := it.Value(); len(v) >= 64 {
				needles = append(needles, append([]byte(nil), v[len(v)/2-12:len(v)/2+12]...))
			}
		}
	}
	capture("qF") // queued records (fresh; retried ones live under qR)
	capture("qR")
	h.eng.Start(ctx)
	h.drain(30 * time.Second)
	capture("eK")
	// Expire-unsent ones: the platform is down from now on.
	h.sim.SetDown(true)
	h.enqueue(h.users(100, 20), 1, "camp-exp", time.Minute)
	capture("qF") // queued records (fresh; retried ones live under qR)
	capture("qR")
	if len(needles) < 60 {
		t.Fatalf("captured only %d sealed records", len(needles))
	}
	if err := h.db.Flush(); err != nil {
		t.Fatal(err)
	}
	if found := filesHolding(t, h.dir, needles); found == 0 {
		t.Fatal("the scan finds nothing even before expiry: it cannot prove anything")
	}
	c.advance(2 * time.Hour)
	// Workers may hold some of them (the platform is down): sweep until the
	// queue is empty and nothing is left to remove.
	removed := 0
	testutil.Until(t, 20*time.Second, func() bool {
		n, err := h.eng.RetentionOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		removed = n
		d, _ := h.q.Depth()
		return d == 0 && n == 0 && h.eng.InFlight() == 0
	}, func() string {
		d, _ := h.q.Depth()
		return fmt.Sprintf("expired messages never left the queue: depth %d, removed %d, in flight %d", d, removed, h.eng.InFlight())
	})
	if err := h.db.Purge(ctx); err != nil {
		t.Fatal(err)
	}
	// Pebble's cleaner removes obsolete files in the background.
	found := 0
	testutil.Until(t, 20*time.Second, func() bool {
		found = filesHolding(t, h.dir, needles)
		return found == 0
	}, func() string {
		d, _ := h.q.Depth()
		filepath.Walk(h.dir, func(p string, info os.FileInfo, err error) error {
			if err == nil && !info.IsDir() {
				b, _ := os.ReadFile(p)
				for i, n := range needles {
					if bytes.Contains(b, n) {
						t.Logf("needle %d in %s", i, p)
					}
				}
			}
			return nil
		})
		return fmt.Sprintf("%d sealed records of expired messages still on disk after the purge (depth %d)", found, d)
	})
}

// filesHolding counts needles present in any file under dir.
func filesHolding(t *testing.T, dir string, needles [][]byte) int {
	t.Helper()
	seen := map[int]bool{}
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil // removed meanwhile
		}
		for i, n := range needles {
			if !seen[i] && bytes.Contains(b, n) {
				seen[i] = true
			}
		}
		return nil
	})
	return len(seen)
}
