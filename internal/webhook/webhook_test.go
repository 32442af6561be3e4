package webhook

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/seal"
	"github.com/heraldhq/herald/internal/testutil"
)

// endpoint serves a webhook receiver on loopback answering status; it counts posts.
func endpoint(t *testing.T, status int) (string, *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var posts atomic.Int64
	srv := &fasthttp.Server{Handler: func(ctx *fasthttp.RequestCtx) {
		posts.Add(1)
		ctx.SetStatusCode(status)
	}}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown() })
	return "http://" + ln.Addr().String() + "/hook", &posts
}

func newSender(t *testing.T, clock *testutil.Clock, tweak func(*Options)) (*Sender, *kv.DB, *metrics.Metrics) {
	db, err := kv.Open(kv.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	sealer, _ := seal.New(seal.TestKey(1))
	m := metrics.New()
	o := Options{DB: db, Sealer: sealer, Metrics: m, Now: clock.Now, BackoffBase: time.Second, BackoffCap: time.Minute}
	if tweak != nil {
		tweak(&o)
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); db.Close() })
	return s, db, m
}

// queue commits status changes for pn as the status writer does.
func queue(t *testing.T, s *Sender, db *kv.DB, changes ...engine.StatusChange) {
	b := db.NewBatch()
	s.Hook(b, changes)
	if err := db.Commit(b, true); err != nil {
		t.Fatal(err)
	}
}

// TestWebhookRefusedIsRetriedUntilTheTTLThenDropped: an endpoint that
// answers 4xx is retried with capped backoff (not on every round) while its
// statuses live; at their message's expiry they are dropped, counted, and
// the backlog empties. The state says why.
func TestWebhookRefusedIsRetriedUntilTheTTLThenDropped(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	clock := testutil.NewClock(t0)
	s, db, m := newSender(t, clock, nil)
	url, posts := endpoint(t, 400)
	if err := s.Set("pn1", Config{URL: url, Secret: "secret-123"}); err != nil {
		t.Fatal(err)
	}
	exp := t0.Add(10 * time.Minute).Unix()
	queue(t, s, db,
		engine.StatusChange{MessageID: "m1", PhoneNumberID: "pn1", BusinessID: "b", Status: "sent", TS: t0.Unix(), Recipient: "15550000001", Expires: exp},
		engine.StatusChange{MessageID: "m2", PhoneNumberID: "pn1", BusinessID: "b", Status: "sent", TS: t0.Unix(), Recipient: "15550000002", Expires: exp})
	for i := 0; i < 50; i++ { // 50 rounds within one second: one attempt
		s.RunOnce(context.Background())
	}
	if posts.Load() != 1 {
		t.Fatalf("%d posts in one second to a refusing endpoint, want 1 (backoff)", posts.Load())
	}
	st, _ := s.State("pn1")
	if st.Backlog != 2 || st.LastError != "endpoint answered HTTP 400" || st.NextAttemptAt == nil {
		t.Fatalf("state after a refusal: %+v", st)
	}
	// Attempts go on, spaced, while the statuses live.
	for i := 0; i < 9; i++ {
		clock.Advance(time.Minute)
		s.RunOnce(context.Background())
	}
	if p := posts.Load(); p < 4 || p > 10 {
		t.Fatalf("%d posts over 9 minutes, want a few (capped backoff)", p)
	}
	// Past the message's TTL they are dropped, delivered or not.
	clock.Advance(2 * time.Minute)
	if n, err := s.Sweep(); err != nil || n != 2 {
		t.Fatalf("sweep dropped %d (%v), want 2", n, err)
	}
	if st, _ := s.State("pn1"); st.Backlog != 0 {
		t.Fatalf("backlog %d after the TTL", st.Backlog)
	}
	if v := promtest.ToFloat64(m.WebhookDropped.WithLabelValues("expired")); v != 2 {
		t.Fatalf("herald_webhook_dropped_total{reason=expired} = %v", v)
	}
	before := posts.Load()
	clock.Advance(time.Hour)
	s.RunOnce(context.Background())
	if posts.Load() != before {
		t.Fatal("posted again with nothing left to send")
	}
}

// TestWebhookExpiredEntriesAreNotSent: an endpoint that comes back after an
// entry's expiry never receives it (it holds a number past its TTL).
func TestWebhookExpiredEntriesAreNotSent(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	clock := testutil.NewClock(t0)
	s, db, m := newSender(t, clock, nil)
	url, posts := endpoint(t, 200)
	s.Set("pn1", Config{URL: url, Secret: "secret-123"})
	queue(t, s, db, engine.StatusChange{MessageID: "m1", PhoneNumberID: "pn1", Status: "sent", TS: t0.Unix(), Recipient: "15550000001", Expires: t0.Add(time.Minute).Unix()},
		engine.StatusChange{MessageID: "m2", PhoneNumberID: "pn1", Status: "delivered", TS: t0.Unix()}) // expiry unknown: EntryTTL
	clock.Advance(2 * time.Minute)
	if n := s.RunOnce(context.Background()); n != 1 || posts.Load() != 1 {
		t.Fatalf("delivered %d in %d posts, want only the live one", n, posts.Load())
	}
	if v := promtest.ToFloat64(m.WebhookDropped.WithLabelValues("expired")); v != 1 {
		t.Fatalf("dropped expired = %v", v)
	}
	if st, _ := s.State("pn1"); st.Backlog != 0 {
		t.Fatalf("backlog %d", st.Backlog)
	}
}

// TestWebhookBacklogIsBounded: a phone number's outbox holds at most
// MaxBacklog statuses; the rest are dropped and counted, and other phone
// numbers are not affected.
func TestWebhookBacklogIsBounded(t *testing.T) {
	clock := testutil.NewClock(time.Unix(1_800_000_000, 0))
	s, db, m := newSender(t, clock, func(o *Options) { o.MaxBacklog = 5 })
	url, _ := endpoint(t, 503)
	s.Set("pn1", Config{URL: url, Secret: "secret-123"})
	s.Set("pn2", Config{URL: url, Secret: "secret-123"})
	var cs []engine.StatusChange
	for i := 0; i < 8; i++ {
		cs = append(cs, engine.StatusChange{MessageID: "m" + string(rune('a'+i)), PhoneNumberID: "pn1", Status: "sent", TS: clock.Now().Unix()})
	}
	cs = append(cs, engine.StatusChange{MessageID: "other", PhoneNumberID: "pn2", Status: "sent", TS: clock.Now().Unix()})
	queue(t, s, db, cs...)
	if st, _ := s.State("pn1"); st.Backlog != 5 {
		t.Fatalf("backlog %d, want the cap 5", st.Backlog)
	}
	if st, _ := s.State("pn2"); st.Backlog != 1 {
		t.Fatalf("another number's backlog %d", st.Backlog)
	}
	if v := promtest.ToFloat64(m.WebhookDropped.WithLabelValues("backlog_full")); v != 3 {
		t.Fatalf("dropped backlog_full = %v", v)
	}
	// The count survives a restart (it is read back from the outbox).
	o := s.opts
	o.Metrics = nil // registered once
	s2, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := s2.State("pn1"); st.Backlog != 5 {
		t.Fatalf("backlog after reopening: %d", st.Backlog)
	}
}
