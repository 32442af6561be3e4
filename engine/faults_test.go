package engine_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/heraldtype"

	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/platform/sim"
)

// eventsReceiver serves /v1/platform/events for a harness: it checks the
// platform's signature and hands the events to the engine.
func eventsReceiver(t *testing.T, h **harness) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		if !platform.Verify([]byte("sekret"), ctx.PostBody(), string(ctx.Request.Header.Peek("X-Platform-Signature"))) {
			ctx.SetStatusCode(401)
			return
		}
		var evs platform.Events
		if json.Unmarshal(ctx.PostBody(), &evs) != nil || *h == nil || (*h).eng == nil {
			ctx.SetStatusCode(503)
			return
		}
		if err := (*h).eng.HandleEvents(context.Background(), evs.Events); err != nil {
			ctx.SetStatusCode(503)
		}
	}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	return "http://" + ln.Addr().String() + "/v1/platform/events"
}

func TestFaultsStillDeliverExactlyOnceInOrder(t *testing.T) {
	cases := []struct {
		name   string
		opts   sim.Options
		during func(h *harness)
	}{
		{"latency", sim.Options{LatencyMS: 20}, nil},
		{"5xx bursts", sim.Options{Status503Rate: 0.3}, nil},
		{"429 bursts", sim.Options{Status429Rate: 0.2}, nil},
		{"throttled and unavailable", sim.Options{ThrottleRate: 0.2, UnavailableRate: 0.1}, nil},
		{"device reinstalls", sim.Options{ReinstallRate: 0.05}, nil},
		{"decrypt_failed receipts", sim.Options{DecryptFailedRate: 0.1}, nil},
		{"platform down then back", sim.Options{}, func(h *harness) {
			h.sim.SetDown(true)
			time.Sleep(1500 * time.Millisecond)
			if !h.eng.BreakerOpen() {
				h.t.Errorf("breaker did not open while the platform was down")
			}
			h.sim.SetDown(false)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h *harness
			tc.opts.EventsURL = eventsReceiver(t, &h)
			tc.opts.EventInterval = 10 * time.Millisecond
			tc.opts.DevicesMin, tc.opts.DevicesMax = 1, 3
			if tc.during != nil {
				// Start down so the outage covers the campaign's first sends.
				h = newHarness(t, harnessOpts{sim: tc.opts, noStart: true, engine: roomForResets})
				h.sim.SetDown(true)
				h.eng.Start(context.Background())
			} else {
				h = newHarness(t, harnessOpts{sim: tc.opts, engine: roomForResets})
			}
			users := h.users(1000, 400)
			if raceEnabled {
				users = users[:150]
			}
			h.enqueue(users, 2, "camp-f", time.Hour)
			if tc.during != nil {
				tc.during(h)
			}
			h.drain(2 * time.Minute)
			if tc.opts.DecryptFailedRate > 0 {
				// Receipts arrive after "sent": wait for their retransmissions too.
				deadline := time.Now().Add(time.Minute)
				for {
					want, _ := h.expectedDeliveries(users, 2)
					if h.sim.Stats().Decrypted == want && h.sim.PendingEvents() == 0 {
						break
					}
					if time.Now().After(deadline) {
						c, _ := h.eng.CampaignCounters("camp-f")
						t.Fatalf("decrypt_failed retransmissions incomplete: %+v; counters %+v", h.sim.Stats(), c)
					}
					time.Sleep(20 * time.Millisecond)
					h.drain(time.Minute)
				}
				if h.sim.Stats().Injected["decrypt_failed"] == 0 {
					t.Fatal("no decrypt_failed was injected")
				}
			}
			h.checkDelivered(users, 2, "camp-f")
		})
	}
}

// roomForResets: with faults injected per envelope, a device can lose its
// session several times in a row by chance; exhaustion has its own test.
func roomForResets(o *engine.Options) { o.MaxResets = 20 }

func TestResetsExhaustedFailsWithClearCode(t *testing.T) {
	h := newHarness(t, harnessOpts{sim: sim.Options{ReinstallRate: 1, DevicesMin: 1, DevicesMax: 1, UnknownShare: -1},
		engine: func(o *engine.Options) { o.MaxResets = 2 }})
	users := h.users(10, 5)
	h.enqueue(users, 1, "camp-x", time.Hour)
	h.drain(time.Minute)
	c, _ := h.eng.CampaignCounters("camp-x")
	if c.Failed != 5 || c.Failures[fmt.Sprint(heraldtype.CodeResetsExhausted)] != 5 {
		t.Fatalf("want 5 failed with 131054: %+v", c)
	}
	if st := h.sim.Stats(); st.Injected["reinstall"] != 15 {
		t.Fatalf("want exactly 1+MaxResets attempts per message, got %d reinstalls", st.Injected["reinstall"])
	}
}
