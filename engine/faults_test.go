package engine_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/heraldtype"

	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/platform/sim"
	"github.com/heraldhq/herald/internal/testutil"
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
			testutil.Eventually(h.t, 30*time.Second, h.eng.BreakerOpen, "the breaker did not open while the platform was down")
			h.sim.SetDown(false)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h *harness
			m := metrics.New()
			tc.opts.EventsURL = eventsReceiver(t, &h)
			tc.opts.EventInterval = 10 * time.Millisecond
			tc.opts.DevicesMin, tc.opts.DevicesMax = 1, 3
			if tc.during != nil {
				// Start down so the outage covers the campaign's first sends.
				h = newHarness(t, harnessOpts{sim: tc.opts, noStart: true, engine: roomForResets})
				h.sim.SetDown(true)
				h.eng.Start(context.Background())
			} else {
				h = newHarness(t, harnessOpts{sim: tc.opts, engine: func(o *engine.Options) {
					roomForResets(o)
					o.Metrics = m
				}})
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
				testutil.Until(t, time.Minute, func() bool {
					h.drain(time.Minute)
					want, _ := h.expectedDeliveries(users, 2)
					return h.sim.Stats().Decrypted == want && h.sim.PendingEvents() == 0
				}, func() string {
					c, _ := h.eng.Statuses().Counters("camp-f")
					return fmt.Sprintf("decrypt_failed retransmissions incomplete: %+v; counters %+v", h.sim.Stats(), c)
				})
				if h.sim.Stats().Injected["decrypt_failed"] == 0 {
					t.Fatal("no decrypt_failed was injected")
				}
			}
			h.checkDelivered(users, 2, "camp-f")
			if tc.opts.ReinstallRate > 0 && promtest.ToFloat64(m.IdentityChange) == 0 {
				t.Fatal("devices reinstalled with new identity keys, but no identity_changed was recorded")
			}
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
	c, _ := h.eng.Statuses().Counters("camp-x")
	if c.Failed != 5 || c.Failures[fmt.Sprint(heraldtype.CodeResetsExhausted)] != 5 {
		t.Fatalf("want 5 failed with 139012: %+v", c)
	}
	if st := h.sim.Stats(); st.Injected["reinstall"] != 15 {
		t.Fatalf("want exactly 1+MaxResets attempts per message, got %d reinstalls", st.Injected["reinstall"])
	}
}

// garbageProxy forwards to the simulator, except while on: then every
// /v1/messages and /v1/keys/query gets one of several kinds of garbage
// (HTML, truncated JSON, results for other ids, missing results, a 5 MB
// body, random bytes with a 500).
func garbageProxy(t *testing.T, on *atomic.Bool, served *atomic.Int64) func(string) string {
	return func(simURL string) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		up := &fasthttp.Client{}
		var n atomic.Int64
		srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
			if on.Load() {
				served.Add(1)
				switch n.Add(1) % 6 {
				case 0:
					ctx.SetContentType("text/html")
					ctx.SetBodyString("<html><body>502 Bad Gateway</body></html>")
				case 1:
					ctx.SetBodyString(`{"results":[{"id":"`)
				case 2:
					var req platform.MessagesRequest
					json.Unmarshal(ctx.PostBody(), &req)
					var res platform.MessagesResponse
					for _, e := range req.Envelopes { // accepted — for ids nobody sent
						res.Results = append(res.Results, platform.Result{ID: e.ID + "x", DeviceID: e.DeviceID, Status: platform.StatusAccepted})
					}
					b, _ := json.Marshal(res)
					ctx.SetBody(b)
				case 3:
					ctx.SetBodyString(`{"results":[],"users":[],"unknown":[]}`)
				case 4:
					ctx.SetBody(bytes.Repeat([]byte("\x00garbage"), 5<<20/8))
				case 5:
					ctx.SetStatusCode(500)
					ctx.SetBody([]byte{0xff, 0xfe, 0x00, 0x13, 0x37})
				}
				return
			}
			req := &ctx.Request
			req.SetRequestURI(simURL + string(ctx.Path()))
			req.Header.SetHost(strings.TrimPrefix(simURL, "http://"))
			if err := up.Do(req, &ctx.Response); err != nil {
				ctx.SetStatusCode(502)
			}
		}}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Shutdown(); up.CloseIdleConnections() })
		return "http://" + ln.Addr().String()
	}
}

// TestPlatformAnsweringGarbage: while the platform answers garbage, nothing
// is marked sent, nothing is lost, memory stays bounded; afterwards every
// message is delivered exactly once per device, in order. (The outage longer
// than the backoff cap is "platform down then back" above: 1.5 s down, cap
// 300 ms.)
func TestPlatformAnsweringGarbage(t *testing.T) {
	var on atomic.Bool
	var served atomic.Int64
	on.Store(true)
	h := newHarness(t, harnessOpts{engine: roomForResets, via: garbageProxy(t, &on, &served)})
	users := h.users(2000, 300)
	if raceEnabled {
		users = users[:80]
	}
	h.enqueue(users, 2, "camp-g", time.Hour)
	testutil.Until(t, 30*time.Second, func() bool { return served.Load() >= 60 },
		func() string { return fmt.Sprintf("only %d garbage answers served", served.Load()) })
	if c, _ := h.eng.Statuses().Counters("camp-g"); c.Sent != 0 {
		t.Fatalf("garbage answers marked %d messages sent", c.Sent)
	}
	if d := h.sim.Stats().Decrypted; d != 0 {
		t.Fatalf("the simulator got %d envelopes through a proxy that forwards nothing", d)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	if ms.HeapInuse > 1<<30 {
		t.Fatalf("heap in use %d MB while the platform answers garbage", ms.HeapInuse>>20)
	}
	on.Store(false)
	h.drain(2 * time.Minute)
	h.checkDelivered(users, 2, "camp-g")
}

// TestFailedPreparationDoesNotHoldBackItsTask: a task works on several
// recipient groups with one commit; a group whose preparation fails (here a
// corrupt stored device list) retries alone until it expires, and the groups
// it shared tasks with are delivered. 8 workers × 8 groups per task, 40
// recipients over 8 shards: the bad one shares its task with others.
func TestFailedPreparationDoesNotHoldBackItsTask(t *testing.T) {
	// Backoff far past the TTL: a message whose preparation failed is retried
	// at most once more, at its expiry, so a good group that had to retry
	// with the bad one would (almost surely) expire too.
	h := newHarness(t, harnessOpts{engine: func(o *engine.Options) {
		o.Workers, o.GroupsPerTask = 8, 8
		o.BackoffBase, o.BackoffCap = 20*time.Second, 20*time.Second
	}})
	var users []string
	for _, u := range h.users(0, 60) {
		if h.sim.Registered(u) && len(users) < 40 {
			users = append(users, u)
		}
	}
	bad := users[17]
	// The store's device-list key: 's' 'V' len(business) business HMAC(recipient).
	k := append([]byte{'s', 'V', byte(len("15550001111"))}, "15550001111"...)
	r := h.q.RecipientKey(heraldtype.QueueRecipient(h.bizID, bad))
	k = append(k, r[:]...)
	b := h.db.NewBatch()
	b.Set(k, []byte{1, 2, 3}, nil) // not a whole number of 4-byte ids
	if err := h.db.Commit(b, true); err != nil {
		t.Fatal(err)
	}
	h.enqueue(users, 1, "c-prep", 1500*time.Millisecond)
	h.drain(20 * time.Second)
	var good []string
	for _, u := range users {
		if u != bad {
			good = append(good, u)
		}
	}
	want, _ := h.expectedDeliveries(good, 1)
	st := h.sim.Stats()
	if st.Decrypted != want || len(st.Failures) != 0 || st.OrderingViolations != 0 {
		t.Fatalf("want %d decrypted for the 39 good recipients; got %+v", want, st)
	}
	c, err := h.eng.Statuses().Counters("c-prep")
	if err != nil {
		t.Fatal(err)
	}
	if c.Sent != 39 || c.Failed != 1 || c.Failures[fmt.Sprint(heraldtype.CodeExpired)] != 1 {
		t.Fatalf("want 39 sent and the bad recipient's message expired: %+v", c)
	}
}

// madeUpCodes answers every envelope with an error code the contract does not
// have, a different one each time.
type madeUpCodes struct {
	engine.Transport
	n atomic.Int64
}

func (m *madeUpCodes) SendEach(ctx context.Context, envs []platform.Envelope) ([]platform.Result, []error) {
	res := make([]platform.Result, len(envs))
	for i, e := range envs {
		res[i] = platform.Result{ID: e.ID, DeviceID: e.DeviceID, Status: "error", Code: fmt.Sprintf("made_up_%d", m.n.Add(1))}
	}
	return res, make([]error, len(envs))
}

// TestPlatformErrorLabelsAreBounded: codes outside the contract count as
// "other" in herald_platform_errors_total (a label per string a platform
// invents would grow the metric without a bound); such a message fails as
// rejected by the platform.
func TestPlatformErrorLabelsAreBounded(t *testing.T) {
	m := metrics.New()
	h := newHarness(t, harnessOpts{sim: sim.Options{UnknownShare: -1},
		wrap:   func(tr engine.Transport) engine.Transport { return &madeUpCodes{Transport: tr} },
		engine: func(o *engine.Options) { o.Metrics = m }})
	users := h.users(10, 30)
	h.enqueue(users, 1, "camp-made-up", time.Hour)
	h.drain(time.Minute)
	if n := promtest.CollectAndCount(m.PlatformErrors); n != 1 {
		t.Fatalf("%d label values for platform errors, want 1 (other)", n)
	}
	if v := promtest.ToFloat64(m.PlatformErrors.WithLabelValues("other")); v < 30 {
		t.Fatalf("other = %v, want at least one per message", v)
	}
	if c, _ := h.eng.Statuses().Counters("camp-made-up"); c.Failed != 30 || c.Failures[fmt.Sprint(heraldtype.CodePlatformRejected)] != 30 {
		t.Fatalf("made-up codes must fail as rejected: %+v", c)
	}
}

// TestIdentityCheckRefusesChangedIdentities: with identity_check on, a
// device that reinstalls (a new identity key) is not trusted: messages that
// would need a session with the new key fail with the identity-changed code,
// nothing reaches the new identity, and the rest is delivered.
func TestIdentityCheckRefusesChangedIdentities(t *testing.T) {
	var h *harness
	m := metrics.New()
	opts := sim.Options{ReinstallRate: 0.05, DevicesMin: 1, DevicesMax: 2, UnknownShare: -1}
	opts.EventsURL = eventsReceiver(t, &h)
	opts.EventInterval = 10 * time.Millisecond
	h = newHarness(t, harnessOpts{sim: opts, identityCheck: true, engine: func(o *engine.Options) {
		roomForResets(o)
		o.Metrics = m
	}})
	users := h.users(3000, 200)
	h.enqueue(users, 2, "camp-id", time.Hour)
	h.drain(2 * time.Minute)
	c, _ := h.eng.Statuses().Counters("camp-id")
	if c.Sent+c.Failed != 400 || c.Failed == 0 || c.Failures[fmt.Sprint(heraldtype.CodeIdentityChanged)] != c.Failed {
		t.Fatalf("want every message sent or failed with %d, some failed: %+v (sim %+v)", heraldtype.CodeIdentityChanged, c, h.sim.Stats())
	}
	if promtest.ToFloat64(m.IdentityChange) == 0 {
		t.Fatal("no identity change counted")
	}
	if st := h.sim.Stats(); st.OrderingViolations != 0 || st.Mismatches != 0 {
		t.Fatalf("simulator: %+v", st)
	}
}

// TestReplayedEventsAreIgnored: the same signed decrypt_failed replayed many
// times resets the session and resends once (it used to do so every time);
// distinct receipts for one message and device stop at MaxResets; events
// with a ts far in the future are ignored.
func TestReplayedEventsAreIgnored(t *testing.T) {
	h := newHarness(t, harnessOpts{sim: sim.Options{DevicesMin: 1, DevicesMax: 1, UnknownShare: -1}})
	u := h.users(77, 1)[0]
	id := h.enqueue([]string{u}, 1, "camp-replay", time.Hour)[u][0]
	h.drain(time.Minute)
	resets := func() float64 { return promtest.ToFloat64(h.eng.Metrics().SessionResets) }
	before := resets()
	ev := platform.Event{Type: platform.EventDecryptFailed, ID: id, User: u, DeviceID: 1, TS: time.Now().Unix()}
	for i := 0; i < 20; i++ {
		if err := h.eng.HandleEvents(context.Background(), []platform.Event{ev}); err != nil {
			t.Fatal(err)
		}
	}
	h.drain(time.Minute)
	if got := resets() - before; got != 1 {
		t.Fatalf("20 replays of one receipt reset the session %v times, want 1", got)
	}
	// Distinct receipts (another ts) for the same message and device: capped.
	for i := 1; i <= 10; i++ {
		ev.TS = time.Now().Unix() - int64(i)
		h.eng.HandleEvents(context.Background(), []platform.Event{ev})
		h.drain(time.Minute)
	}
	if got := resets() - before; got > 3 {
		t.Fatalf("%v resets for one message and device, want at most MaxResets (3)", got)
	}
	// A read in the far future is ignored.
	h.eng.HandleEvents(context.Background(), []platform.Event{{Type: platform.EventRead, ID: id, User: u, DeviceID: 1, TS: time.Now().Add(24 * time.Hour).Unix()}})
	h.eng.Flush()
	if st, _ := h.eng.Statuses().Message(id); st.Status == heraldtype.StatusRead {
		t.Fatal("an event dated tomorrow changed the status")
	}
}
