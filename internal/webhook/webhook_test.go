package webhook

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/heraldtype"
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
	o := Options{DB: db, Sealer: sealer, Metrics: m, Now: clock.Now, BackoffBase: time.Second, BackoffCap: time.Minute,
		Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}} // the test endpoints listen on loopback
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
func queue(t *testing.T, s *Sender, db *kv.DB, changes ...heraldtype.StatusChange) {
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
		heraldtype.StatusChange{MessageID: "m1", PhoneNumberID: "pn1", BusinessID: "b", Status: "sent", TS: t0.Unix(), Recipient: "15550000001", Expires: exp},
		heraldtype.StatusChange{MessageID: "m2", PhoneNumberID: "pn1", BusinessID: "b", Status: "sent", TS: t0.Unix(), Recipient: "15550000002", Expires: exp})
	for i := 0; i < 50; i++ { // 50 rounds within one second: one attempt
		s.RunOnce(context.Background())
	}
	if posts.Load() != 1 {
		t.Fatalf("%d posts in one second to a refusing endpoint, want 1 (backoff)", posts.Load())
	}
	st, _ := s.State("pn1")
	if st.Backlog != 2 || st.LastError != "endpoint answered HTTP 400" || st.NextAttemptAt == "" {
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
	queue(t, s, db, heraldtype.StatusChange{MessageID: "m1", PhoneNumberID: "pn1", Status: "sent", TS: t0.Unix(), Recipient: "15550000001", Expires: t0.Add(time.Minute).Unix()},
		heraldtype.StatusChange{MessageID: "m2", PhoneNumberID: "pn1", Status: "delivered", TS: t0.Unix()}) // expiry unknown: EntryTTL
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
	var cs []heraldtype.StatusChange
	for i := 0; i < 8; i++ {
		cs = append(cs, heraldtype.StatusChange{MessageID: "m" + string(rune('a'+i)), PhoneNumberID: "pn1", Status: "sent", TS: clock.Now().Unix()})
	}
	cs = append(cs, heraldtype.StatusChange{MessageID: "other", PhoneNumberID: "pn2", Status: "sent", TS: clock.Now().Unix()})
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

// TestWebhookDestinationsAreGuarded: without an allow-list, loopback,
// private, link-local, unspecified and metadata destinations are refused
// when the webhook is set, and URLs with credentials always; at dial time a
// name resolving to loopback is refused too (DNS rebinding).
func TestWebhookDestinationsAreGuarded(t *testing.T) {
	clock := testutil.NewClock(time.Unix(1_800_000_000, 0))
	s, _, _ := newSender(t, clock, func(o *Options) { o.Allow = nil })
	for _, u := range []string{"http://127.0.0.1:8080/admin", "http://localhost/x", "http://169.254.169.254/latest/meta-data",
		"http://metadata.google.internal/computeMetadata/v1/", "http://[::1]/x", "http://0.0.0.0/x", "http://10.1.2.3/x",
		"http://192.168.0.1/x", "http://[fe80::1]/x", "http://100.64.0.1/x"} {
		if err := s.Set("pn1", Config{URL: u, Secret: "secret-123"}); err == nil {
			t.Errorf("%s was accepted as a webhook", u)
		}
	}
	err := s.Set("pn1", Config{URL: "https://user:hunter2@example.com/hook", Secret: "secret-123"})
	if err == nil || !strings.Contains(err.Error(), "credentials") || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("credentials in the URL: %v", err)
	}
	if err := s.Set("pn1", Config{URL: "https://example.com/hook", Secret: "secret-123"}); err != nil {
		t.Fatalf("a public name: %v", err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	if c, err := s.guard.dial(net.JoinHostPort("localhost", port), time.Second); err == nil {
		c.Close()
		t.Fatal("the dialer connected to a name resolving to loopback")
	} else if !errors.Is(err, ErrForbiddenAddress) {
		t.Fatalf("dial error: %v", err)
	}
	// With the operator's allow-list, loopback is reachable.
	allowed := guard{allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}
	c, err := allowed.dial(net.JoinHostPort("localhost", port), time.Second)
	if err != nil {
		t.Fatalf("allowed loopback: %v", err)
	}
	c.Close()
}

// TestHostileWebhookRepliesCannotHurtHerald: a 2xx with a Content-Length of
// a petabyte (it panicked the process in fasthttp's body read, again after
// every restart) or a 300 MB body is read no further than MaxReplyBytes: the
// statuses count as delivered, nothing panics, the heap does not grow.
func TestHostileWebhookRepliesCannotHurtHerald(t *testing.T) {
	for name, ep := range map[string]struct {
		head   string
		stream int
	}{
		"petabyte content-length": {"HTTP/1.1 200 OK\r\nContent-Length: 1125899906842624\r\n\r\n", 0},
		"300 MB body":             {"HTTP/1.1 200 OK\r\nContent-Length: 314572800\r\n\r\n", 300 << 20},
		"chunked forever":         {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000\r\n", 300 << 20},
	} {
		t.Run(name, func(t *testing.T) {
			t0 := time.Unix(1_800_000_000, 0)
			clock := testutil.NewClock(t0)
			s, db, _ := newSender(t, clock, nil)
			if err := s.Set("pn1", Config{URL: testutil.HostileEndpoint(t, ep.head, ep.stream), Secret: "secret-123"}); err != nil {
				t.Fatal(err)
			}
			queue(t, s, db, heraldtype.StatusChange{MessageID: "m1", PhoneNumberID: "pn1", Status: "sent", TS: t0.Unix()})
			var before runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			n := s.RunOnce(context.Background())
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			if n != 1 {
				st, _ := s.State("pn1")
				t.Fatalf("a 2xx answer did not count as delivered (%d): %+v", n, st)
			}
			if grew := int64(after.HeapAlloc) - int64(before.HeapAlloc); grew > 16<<20 {
				t.Fatalf("the heap grew by %d MB reading a hostile answer", grew>>20)
			}
		})
	}
}

// TestWebhookVerificationHandshake: with a verify_token, Set first makes the
// Cloud API verification request and accepts the URL only when the answer is
// the challenge; a wrong answer, an error status or a wrong token leaves the
// configuration as it was. Without a token no request is made.
func TestWebhookVerificationHandshake(t *testing.T) {
	clock := testutil.NewClock(time.Unix(1_800_000_000, 0))
	s, _, _ := newSender(t, clock, nil)
	var gets atomic.Int64
	mode := atomic.Value{}
	mode.Store("echo")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gets.Add(1)
		q := r.URL.Query()
		switch {
		case q.Get("hub.mode") != "subscribe" || q.Get("hub.verify_token") != "tok-123" || q.Get("keep") != "1":
			http.Error(w, "no", 403)
		case mode.Load() == "echo":
			w.Write([]byte(q.Get("hub.challenge")))
		case mode.Load() == "other":
			w.Write([]byte("not-the-challenge"))
		default:
			http.Error(w, "down", 500)
		}
	}))
	defer srv.Close()
	u := srv.URL + "/hook?keep=1"
	if err := s.Set("pn1", Config{URL: u, Secret: "secret-123", VerifyToken: "tok-123"}); err != nil {
		t.Fatalf("an endpoint answering the challenge: %v", err)
	}
	for _, tc := range []struct{ mode, token string }{{"other", "tok-123"}, {"down", "tok-123"}, {"echo", "wrong"}} {
		mode.Store(tc.mode)
		err := s.Set("pn1", Config{URL: srv.URL + "/other?keep=1", Secret: "secret-456", VerifyToken: tc.token})
		if !errors.Is(err, ErrVerification) {
			t.Fatalf("%s/%s: %v, want ErrVerification", tc.mode, tc.token, err)
		}
		if st, _ := s.State("pn1"); st.URL != u {
			t.Fatalf("a failed verification changed the URL to %s", st.URL)
		}
	}
	n := gets.Load()
	if err := s.Set("pn1", Config{URL: u, Secret: "secret-123"}); err != nil || gets.Load() != n {
		t.Fatalf("without a verify_token: %v, %d requests", err, gets.Load()-n)
	}
}

// TestWebhookDeleteDropsItsBacklog: deleting a phone number's webhook drops
// the statuses waiting for it, on disk too.
func TestWebhookDeleteDropsItsBacklog(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	clock := testutil.NewClock(t0)
	s, db, _ := newSender(t, clock, nil)
	if err := s.Set("pn1", Config{URL: "http://127.0.0.1:1/hook", Secret: "secret-123"}); err != nil {
		t.Fatal(err)
	}
	queue(t, s, db, heraldtype.StatusChange{MessageID: "m1", PhoneNumberID: "pn1", Status: "sent", TS: t0.Unix()},
		heraldtype.StatusChange{MessageID: "m2", PhoneNumberID: "pn1", Status: "sent", TS: t0.Unix()})
	if ok, err := s.Delete("pn1"); !ok || err != nil {
		t.Fatalf("delete: %v %v", ok, err)
	}
	if _, ok := s.State("pn1"); ok {
		t.Fatal("the webhook is still there")
	}
	it, _ := db.NewIter(&pebble.IterOptions{LowerBound: []byte("wQ"), UpperBound: []byte("wR")})
	defer it.Close()
	if it.First() {
		t.Fatalf("an outbox entry outlived its webhook: %q", it.Key())
	}
	if ok, _ := s.Delete("pn1"); ok {
		t.Fatal("deleted twice")
	}
}
