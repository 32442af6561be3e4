package engine_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/campaigns"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/testutil"
)

// holdingTransport passes everything through, except that once armed it
// holds the first call (SendEach, or QueryKeys when keys is set) that
// carries a message of the watched campaign until release is closed. It
// records every envelope of that campaign sent after stop() was called.
type holdingTransport struct {
	engine.Transport
	ids     func(id string) bool // the watched campaign's message ids
	keys    bool                 // hold at the key query (preparation) instead of the send
	armed   atomic.Bool
	held    chan struct{} // closed when a call is being held
	release chan struct{}
	once    sync.Once
	freed   sync.Once
	stopped atomic.Bool
	after   atomic.Int64 // envelopes of the campaign handed over after stop
	sent    atomic.Int64 // envelopes of the campaign handed over in all
}

func newHolding(ids func(string) bool, keys bool) *holdingTransport {
	h := &holdingTransport{ids: ids, keys: keys, held: make(chan struct{}), release: make(chan struct{})}
	h.armed.Store(true)
	return h
}

// free lets the held call go (once; a test that fails early frees it in
// its cleanup, or the engine's Close would wait for it forever).
func (h *holdingTransport) free() { h.freed.Do(func() { close(h.release) }) }

func (h *holdingTransport) QueryKeys(ctx context.Context, users []string) (*platform.KeysResponse, error) {
	if h.keys && h.armed.CompareAndSwap(true, false) {
		h.once.Do(func() { close(h.held) })
		<-h.release
	}
	return h.Transport.QueryKeys(ctx, users)
}

func (h *holdingTransport) SendEach(ctx context.Context, envs []platform.Envelope) ([]platform.Result, []error) {
	ours := 0
	for _, e := range envs {
		if h.ids(e.ID) {
			ours++
		}
	}
	h.sent.Add(int64(ours))
	if h.stopped.Load() {
		h.after.Add(int64(ours))
	}
	if ours > 0 && !h.keys && h.armed.CompareAndSwap(true, false) {
		h.once.Do(func() { close(h.held) })
		<-h.release
	}
	return h.Transport.SendEach(ctx, envs)
}

type controlCase struct {
	name   string
	keys   bool   // hold during preparation (bundles), not transmission
	action string // paused or canceled
}

// TestPauseAndCancelRaceTheHandOff: a pause or a cancel arrives while a
// batch of the campaign is being prepared (the key query held) or
// transmitted (the send held). Set waits for the hand-off in progress, and
// after it returns nothing of the campaign reaches the platform. Paused:
// the rest waits, parked once each (no re-leasing loop), and a resume
// delivers all of it, in order, once each — including messages whose
// ciphertexts were stored before the pause. Canceled: the rest ends
// canceled (counted, reported), and a later message to the same users
// still decrypts (the session advance of the canceled ciphertexts stays).
// The real limiter, queue and simulator run; 3 messages per recipient.
func TestPauseAndCancelRaceTheHandOff(t *testing.T) {
	for _, tc := range []controlCase{
		{"pause during transmit", false, heraldtype.CampaignPaused},
		{"pause during prepare", true, heraldtype.CampaignPaused},
		{"cancel during transmit", false, heraldtype.CampaignCanceled},
		{"cancel during prepare", true, heraldtype.CampaignCanceled},
	} {
		t.Run(tc.name, func(t *testing.T) { testControlRace(t, tc) })
	}
}

func testControlRace(t *testing.T, tc controlCase) {
	const campaign = "cmp_race"
	var mu sync.Mutex
	ours := map[string]bool{}
	isOurs := func(id string) bool { mu.Lock(); defer mu.Unlock(); return ours[id] }
	hold := newHolding(isOurs, tc.keys)
	var ctl *campaigns.Control
	m := metrics.New()
	h := newHarness(t, harnessOpts{noStart: true,
		wrap: func(tr engine.Transport) engine.Transport { hold.Transport = tr; return hold },
		engine: func(o *engine.Options) {
			var err error
			if ctl, err = campaigns.Open(o.DB); err != nil {
				t.Fatal(err)
			}
			o.Campaigns, o.Metrics = ctl, m
		}})
	t.Cleanup(hold.free) // before the harness's own cleanup (LIFO)
	n := 120
	if raceEnabled {
		n = 40
	}
	users := h.users(2000, n)
	total := 0
	mark := func(ids map[string][]string) { // the campaign's messages, as the transport tells them
		mu.Lock()
		defer mu.Unlock()
		for _, l := range ids {
			for _, id := range l {
				ours[id] = true
				total++
			}
		}
	}
	mark(h.enqueue(users, 3, campaign, time.Hour))
	h.eng.Start(context.Background())
	select {
	case <-hold.held:
	case <-time.After(time.Minute):
		t.Fatal("the transport never saw the campaign")
	}
	// The hand-off is held: Set must wait for it.
	done := make(chan error, 1)
	go func() { done <- ctl.Set(campaign, tc.action, time.Now(), time.Now().Add(time.Hour)) }()
	if !tc.keys {
		// A send of the campaign is in progress: Set cannot have returned
		// (it needs that hand-off's hold). Not a timing assertion: it is
		// blocked until release.
		// (The wait only gives a broken Set the time to show itself; a
		// correct one never returns here, however long the wait.)
		select {
		case err := <-done:
			t.Fatalf("Set returned (%v) while a hand-off of the campaign was in progress", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	hold.free()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	hold.stopped.Store(true)
	sentBefore := hold.sent.Load()
	// More of the campaign arrives after the answer (an upload still
	// running): the engine sets it aside before preparing it.
	more := h.enqueue(users[:n/2], 1, campaign, time.Hour)
	mark(more)
	if tc.action == heraldtype.CampaignCanceled {
		if _, err := h.q.Unpark(context.Background(), campaign); err != nil { // as the API does
			t.Fatal(err)
		}
		h.drain(2 * time.Minute)
		c, _ := h.eng.Statuses().Counters(campaign)
		if hold.after.Load() != 0 {
			t.Fatalf("%d envelopes of the campaign were handed to the platform after the cancel returned", hold.after.Load())
		}
		if c.Sent+c.Canceled+c.Failed != int64(total) || c.Canceled == 0 {
			t.Fatalf("after a cancel: sent %d + canceled %d + failed %d, want %d with some canceled (sent before: %d envelopes)", c.Sent, c.Canceled, c.Failed, total, sentBefore)
		}
		if got := promtest.ToFloat64(m.Canceled); int64(got) != c.Canceled {
			t.Fatalf("canceled metric %v, counters %d", got, c.Canceled)
		}
		h.mu.Lock()
		reported := 0
		for _, ch := range h.changes {
			if ch.Status == heraldtype.StatusCanceled && ch.CampaignID == campaign && ch.Recipient != "" {
				reported++
			}
		}
		h.mu.Unlock()
		if int64(reported) != c.Canceled {
			t.Fatalf("%d canceled statuses reported, %d counted", reported, c.Canceled)
		}
		// Later messages to the same users go in the sessions the canceled
		// ciphertexts advanced: the users decrypt them (the counter gap is
		// skipped), once each, in order.
		before := h.sim.Stats()
		after := h.enqueue(users, 1, "after", time.Hour)
		h.drain(2 * time.Minute)
		st := h.sim.Stats()
		if len(st.Failures) != 0 || st.Decrypted <= before.Decrypted {
			t.Fatalf("after the cancel, new messages did not decrypt cleanly: %+v", st)
		}
		for u, l := range after {
			for dev, got := range h.sim.Received(u) {
				if len(got) == 0 || got[len(got)-1].ID != l[0] {
					t.Fatalf("%s device %d did not get the message after the cancel last: %v", u, dev, got)
				}
			}
		}
		return
	}
	// Paused: the engine sets the rest aside and goes idle.
	testutil.Until(t, time.Minute, func() bool {
		c, _ := h.eng.Statuses().Counters(campaign)
		return h.q.Parked()+c.Sent+c.Failed == int64(total) && h.eng.InFlight() == 0
	}, func() string {
		c, _ := h.eng.Statuses().Counters(campaign)
		return fmt.Sprintf("parked %d sent %d failed %d of %d", h.q.Parked(), c.Sent, c.Failed, total)
	})
	if h.q.Parked() == 0 {
		t.Fatal("nothing was parked: the pause came too late to test anything")
	}
	// Several idle dispatch rounds (IdlePoll is 10 ms) later: each parked
	// message was parked once; nothing re-leases them.
	parked := promtest.ToFloat64(m.Parked)
	time.Sleep(300 * time.Millisecond)
	if got := promtest.ToFloat64(m.Parked); got != parked || int64(got) != h.q.Parked() {
		t.Fatalf("parked metric %v then %v for %d parked messages: held messages are being re-leased", parked, got, h.q.Parked())
	}
	if hold.after.Load() != 0 {
		t.Fatalf("%d envelopes of the paused campaign were handed over after the pause returned", hold.after.Load())
	}
	// Resume: everything goes, in order, once each.
	if err := ctl.Set(campaign, heraldtype.CampaignRunning, time.Now(), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	hold.stopped.Store(false)
	if _, err := h.q.Unpark(context.Background(), campaign); err != nil {
		t.Fatal(err)
	}
	h.drain(2 * time.Minute)
	var want int64 // every message enqueued, in order, once each per device
	for _, u := range users {
		if h.sim.Registered(u) {
			want += int64(h.sim.DeviceCount(u) * (3 + len(more[u])))
		}
	}
	if st := h.sim.Stats(); st.Decrypted != want || len(st.Failures) != 0 || st.OrderingViolations != 0 || st.Mismatches != 0 {
		t.Fatalf("after the resume want %d decrypted in order, exactly once per device; got %+v", want, st)
	}
	h.checkBodies(users)
	c, _ := h.eng.Statuses().Counters(campaign)
	if c.Sent+c.Failed != int64(total) {
		t.Fatalf("after the resume: sent %d failed %d of %d", c.Sent, c.Failed, total)
	}
}
