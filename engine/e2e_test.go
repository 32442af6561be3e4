package engine_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/platform/sim"
	"github.com/heraldhq/herald/internal/records"
	"github.com/heraldhq/herald/internal/seal"
	"github.com/heraldhq/herald/internal/signal"
	"github.com/heraldhq/herald/internal/tenant"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/queue"
	"github.com/heraldhq/herald/ratelimit"
)

func TestMain(m *testing.M) {
	if os.Getenv("HERALD_ENGINE_CRASH_CHILD") != "" {
		crashChild()
		return
	}
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/cockroachdb/pebble/v2.(*tableCacheShard).releaseLoop"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*Client).mCleaner"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*HostClient).connsCleaner"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).purgeStaleWorkers"),
		goleak.IgnoreAnyFunction("github.com/panjf2000/ants/v2.(*poolCommon).ticktock"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.init.func1"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*TCPDialer).tcpAddrsClean"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.updateServerDate.func1"),
		goleak.IgnoreAnyFunction("github.com/valyala/fasthttp.(*workerPool).Start.func2"),
		goleak.IgnoreAnyFunction("github.com/cockroachdb/pebble/v2/internal/cache.(*Cache).Unref"),
	)
}

type harness struct {
	t      testing.TB
	dir    string
	db     *kv.DB
	q      *queue.Queue
	sealer *seal.Sealer
	eng    *engine.Engine
	sim    *sim.Server
	client *platform.Client
	ids    heraldtype.IDGen
	trans  engine.Transport
	now    func() time.Time
	// The business every enqueued message is from (a real tenant when the
	// harness runs the real limiter).
	tenants *tenant.Store
	lim     *ratelimit.Limiter
	bizID   string
	owners  map[string]bool // businesses that enqueued (guarded by mu)
	pnID    string

	mu        sync.Mutex
	changes   []heraldtype.StatusChange
	closeOnce sync.Once
	bodies    map[string]string   // message id → body, as enqueued
	sentTo    map[string][]string // recipient → message ids, in enqueue order
}

type harnessOpts struct {
	sim      sim.Options
	engine   func(*engine.Options)
	dir      string
	noSim    bool
	simURL   string
	wrap     func(engine.Transport) engine.Transport
	noStart  bool
	clientTO time.Duration
	// via, when set, puts something between the client and the simulator:
	// it gets the simulator's URL and returns the one the client uses.
	via func(simURL string) string
	// The harness runs the real ratelimit.Limiter (throughput and pair rate,
	// a paused business holds) unless noLimiter says why it may not; policy
	// tunes it (zero values: the production defaults) and mps is the
	// business's throughput (default 100,000: the unlimited tier's).
	noLimiter string
	policy    ratelimit.Policy
	mps       int
	// clock, when set, is the queue's, the engine's and the limiter's clock.
	clock *testutil.Clock
	// identityCheck: the business refuses recipients whose identity key
	// changed (the tenant store is the engine's Directory).
	identityCheck bool
}

func newHarness(t testing.TB, o harnessOpts) *harness {
	t.Helper()
	h := &harness{t: t, dir: o.dir}
	if h.dir == "" {
		h.dir = t.TempDir()
	}
	var err error
	h.db, err = kv.Open(kv.Options{Dir: h.dir})
	if err != nil {
		t.Fatal(err)
	}
	h.sealer, _ = seal.New(seal.TestKey(1))
	h.now = time.Now
	if o.clock != nil {
		h.now = o.clock.Now
	}
	h.bizID, h.pnID = "biz1", "pn1"
	var shaper engine.Shaper
	var directory engine.Directory
	if o.noLimiter == "" {
		if h.tenants, err = tenant.Open(h.db, h.sealer); err != nil {
			t.Fatal(err)
		}
		mps := o.mps
		if mps == 0 {
			mps = 100_000
		}
		var b *tenant.Business
		if all := h.tenants.All(); len(all) > 0 { // a data directory reopened
			b = all[0]
		} else if b, _, err = h.tenants.NewBusiness("Acme", []string{"15550001111"}, "unlimited", mps, o.identityCheck); err != nil {
			t.Fatal(err)
		}
		h.bizID = b.ID
		for pn := range b.PhoneNumbers {
			h.pnID = pn
		}
		h.lim, err = ratelimit.New(ratelimit.Options{DB: h.db, Sealer: h.sealer, Tenants: h.tenants, Policy: o.policy, Now: h.now})
		if err != nil {
			t.Fatal(err)
		}
		shaper = h.lim
		directory = h.tenants
	}
	var eng *engine.Engine
	h.q, err = queue.Open(queue.Options{DB: h.db, Sealer: h.sealer, Shards: 8, Now: h.now, Notify: func(s int) {
		if eng != nil {
			eng.Notify(s)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	url := o.simURL
	if !o.noSim {
		if o.sim.Users == 0 {
			o.sim.Users = 100_000
		}
		if o.sim.Prefix == "" {
			o.sim.Prefix = "1666"
		}
		o.sim.Secret = "sekret"
		o.sim.RecordBodies = true // checkDelivered compares every body
		h.sim, err = sim.New(o.sim)
		if err != nil {
			t.Fatal(err)
		}
		h.sim.Start()
		url = h.sim.URL()
	}
	if o.via != nil {
		url = o.via(url)
	}
	to := o.clientTO
	if to == 0 {
		to = 5 * time.Second
	}
	h.client, _ = platform.NewClient(platform.ClientOptions{BaseURL: url, Secret: "sekret", Timeout: to})
	h.trans = h.client
	if o.wrap != nil {
		h.trans = o.wrap(h.client)
	}
	store, _ := signal.NewStore(h.db, h.sealer, 0)
	eo := engine.Options{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})), DB: h.db, Queue: h.q, Sessions: store, Sealer: h.sealer, Transport: h.trans,
		BackoffBase: 20 * time.Millisecond, BackoffCap: 300 * time.Millisecond, IdlePoll: 10 * time.Millisecond,
		BreakerCooldown: 100 * time.Millisecond, Shaper: shaper, Now: h.now, Directory: directory,
		OnStatus: func(cs []heraldtype.StatusChange) {
			h.mu.Lock()
			h.changes = append(h.changes, cs...)
			h.mu.Unlock()
		}}
	if o.engine != nil {
		o.engine(&eo)
	}
	eng, err = engine.New(eo)
	if err != nil {
		t.Fatal(err)
	}
	h.eng = eng
	if !o.noStart {
		eng.Start(context.Background())
	}
	t.Cleanup(h.close)
	return h
}

func (h *harness) close() { h.closeOnce.Do(h.closeNow) }

func (h *harness) closeNow() {
	if h.eng != nil {
		h.eng.Close() // idempotent; the events handler may still call into it
	}
	if h.client != nil {
		h.client.Close()
	}
	if h.sim != nil {
		h.sim.Close()
	}
	if h.lim != nil {
		h.lim.Close()
	}
	h.q.Close()
	h.db.Close()
}

// enqueue submits, for each recipient index, n messages (as the API would: a
// status record in the same durable batch). It returns the message ids by recipient.
func (h *harness) enqueue(users []string, n int, campaign string, ttl time.Duration) map[string][]string {
	return h.enqueueAs(h.bizID, h.pnID, "15550001111", users, n, campaign, ttl)
}

// business creates another business (unlimited tier) with one phone
// number and returns its id and phone number id.
func (h *harness) business(name, phone string) (id, pn string) {
	h.t.Helper()
	b, _, err := h.tenants.NewBusiness(name, []string{phone}, "unlimited", 1000, false)
	if err != nil {
		h.t.Fatal(err)
	}
	for p := range b.PhoneNumbers {
		pn = p
	}
	return b.ID, pn
}

// enqueueAs is enqueue for another business of the harness's tenant store.
func (h *harness) enqueueAs(bizID, pnID, from string, users []string, n int, campaign string, ttl time.Duration) map[string][]string {
	now := h.now()
	out := map[string][]string{}
	b := h.db.NewBatch()
	var msgs []queue.Message
	for round := 0; round < n; round++ {
		for _, u := range users {
			id := h.ids.New(now)
			p := heraldtype.Payload{BusinessID: bizID, PhoneNumberID: pnID, From: from, To: u, CampaignID: campaign,
				Body: fmt.Sprintf("Hello %s, message %d of %s ✓", u, round, id), TS: now.Unix()}
			h.mu.Lock()
			if h.bodies == nil {
				h.bodies, h.sentTo = map[string]string{}, map[string][]string{}
			}
			h.bodies[id] = p.Body
			if h.owners == nil {
				h.owners = map[string]bool{}
			}
			h.owners[bizID] = true
			h.sentTo[u] = append(h.sentTo[u], id)
			h.mu.Unlock()
			// Owner as the API sets it: the scenarios run the per-business byte counts too.
			msgs = append(msgs, queue.Message{ID: id, Recipient: heraldtype.QueueRecipient(bizID, u), Payload: p.Encode(nil), ExpiresAt: now.Add(ttl), Owner: bizID})
			records.NewStatusRecord(b, id, bizID, pnID, campaign, now, now.Add(ttl))
			out[u] = append(out[u], id)
		}
	}
	if err := h.q.EnqueueWith(context.Background(), msgs, b); err != nil {
		h.t.Fatal(err)
	}
	return out
}

func (h *harness) users(from, n int) []string {
	var out []string
	for i := from; i < from+n; i++ {
		out = append(out, h.sim.UserNumber(i))
	}
	return out
}

// drain waits until the queue is empty and every status is written.
func (h *harness) drain(timeout time.Duration) {
	h.t.Helper()
	testutil.Until(h.t, timeout, func() bool { n, _ := h.q.Depth(); return n == 0 && h.eng.InFlight() == 0 }, func() string {
		n, _ := h.q.Depth()
		return fmt.Sprintf("queue not drained: %d left; sim %+v", n, h.sim.Stats())
	})
	h.eng.Flush()
	// Nothing queued: every business's share of the queue is free again
	// (acks, retries rewritten in R, resends, expiry all moved the counts).
	h.mu.Lock()
	defer h.mu.Unlock()
	for o := range h.owners {
		if n := h.q.OwnerBytes(o); n != 0 {
			h.t.Fatalf("the queue is empty but business %s still counts %d queued bytes", o, n)
		}
	}
}

// expectedDeliveries is Σ devices over registered users × messages each.
func (h *harness) expectedDeliveries(users []string, n int) (deliveries int64, registered int) {
	for _, u := range users {
		if h.sim.Registered(u) {
			registered++
			deliveries += int64(h.sim.DeviceCount(u) * n)
		}
	}
	return
}

func (h *harness) checkDelivered(users []string, n int, campaign string) {
	h.t.Helper()
	h.checkDeliveredIn(users, n)
	_, registered := h.expectedDeliveries(users, n)
	c, err := h.eng.Statuses().Counters(campaign)
	if err != nil {
		h.t.Fatal(err)
	}
	unknown := len(users) - registered
	if c.Sent != int64(registered*n) || c.Failed != int64(unknown*n) {
		h.t.Fatalf("campaign counters: sent %d (want %d) failed %d (want %d): %+v", c.Sent, registered*n, c.Failed, unknown*n, c)
	}
	if unknown > 0 && c.Failures[fmt.Sprint(heraldtype.CodeUndeliverable)] != int64(unknown*n) {
		h.t.Fatalf("unknown users must fail with 131026: %+v", c.Failures)
	}
}

func TestEndToEndManyRecipientsMultiDevice(t *testing.T) {
	n := 10_000
	if testing.Short() || raceEnabled {
		n = 1_500
	}
	h := newHarness(t, harnessOpts{sim: sim.Options{DevicesMin: 1, DevicesMax: 3}})
	users := h.users(0, n)
	h.enqueue(users, 1, "camp-a", time.Hour)
	h.drain(3 * time.Minute)
	h.checkDelivered(users, 1, "camp-a")
	// A second campaign to the same recipients runs on warm sessions (msg after pkmsg).
	h.enqueue(users[:500], 2, "camp-b", time.Hour)
	h.drain(time.Minute)
	st := h.sim.Stats()
	want1, _ := h.expectedDeliveries(users, 1)
	want2, _ := h.expectedDeliveries(users[:500], 2)
	if st.Decrypted != want1+want2 || len(st.Failures) != 0 || st.OrderingViolations != 0 {
		t.Fatalf("second campaign: %+v (want %d)", st, want1+want2)
	}
	limit := int64(n / 10) // unbatched would be one query per recipient
	if raceEnabled {
		limit = int64(n / 3) // the race detector slows workers: fewer meet within a linger
	}
	if st.KeyQueries > limit {
		t.Fatalf("bundles must be fetched in batches: %d key queries for %d recipients", st.KeyQueries, n)
	}
}

func TestPerRecipientOrderWithManyMessages(t *testing.T) {
	// The real limiter with a fast pair rate (40 messages per recipient at
	// the default one per 6 s would take 4 minutes): shaping, retries after
	// throttling and order all at once.
	h := newHarness(t, harnessOpts{sim: sim.Options{DevicesMin: 2, DevicesMax: 3, UnknownShare: -1, ThrottleRate: 0.2},
		policy: ratelimit.Policy{PairInterval: 5 * time.Millisecond, PairBurst: 4}})
	users := h.users(100, 20)
	h.enqueue(users, 40, "camp-o", time.Hour)
	h.drain(2 * time.Minute)
	h.checkDelivered(users, 40, "camp-o")
}

func TestStatusHistoryAndWebhookFeed(t *testing.T) {
	h := newHarness(t, harnessOpts{sim: sim.Options{DevicesMin: 1, DevicesMax: 1, UnknownShare: -1}})
	ids := h.enqueue(h.users(5, 1), 1, "camp-s", time.Hour)
	h.drain(30 * time.Second)
	id := ids[h.sim.UserNumber(5)][0]
	st, err := h.eng.Statuses().Message(id)
	if err != nil || st.Status != heraldtype.StatusSent || len(st.History) != 2 {
		t.Fatalf("status %+v %v", st, err)
	}
	if _, err := h.eng.Statuses().Message("nope"); err != records.ErrNotFound {
		t.Fatalf("unknown id: %v", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.changes) != 1 || h.changes[0].Status != heraldtype.StatusSent || h.changes[0].Recipient != h.sim.UserNumber(5) {
		t.Fatalf("status feed: %+v", h.changes)
	}
}

func TestDataDirHoldsNoPlaintext(t *testing.T) {
	h := newHarness(t, harnessOpts{sim: sim.Options{DevicesMin: 1, DevicesMax: 2}})
	users := h.users(300, 50)
	h.enqueue(users, 1, "camp-p", time.Hour)
	h.drain(time.Minute)
	h.db.Flush()
	testutil.AssertNoPlaintext(t, h.dir, "Hello ", users[7], users[20][1:])
}

// TestDeliveredCampaignLeavesNoTombstones: a campaign delivered while its
// records are still in the memtable leaves no tombstone in the flushed table:
// the queue's fresh records and the outbox records of first-lease messages are
// written once and removed with single deletes, which cancel their sets.
func TestDeliveredCampaignLeavesNoTombstones(t *testing.T) {
	h := newHarness(t, harnessOpts{sim: sim.Options{DevicesMin: 1, DevicesMax: 3, UnknownShare: -1}})
	users := h.users(700, 300)
	h.enqueue(users, 1, "camp-t", time.Hour)
	h.drain(time.Minute)
	h.checkDelivered(users, 1, "camp-t")
	tables, dels := testutil.FlushedTombstones(t, h.db.DB)
	if tables == 0 || dels != 0 {
		t.Fatalf("%d flushed tables hold %d tombstones after a campaign of %d messages was delivered", tables, dels, len(users))
	}
}

// TestStaleDevicesDeliverOnceToEachCurrentDevice: a recipient gains a device,
// then loses one. The platform answers stale_devices; the engine queries the
// devices again and each message reaches every device the user has when it
// goes, exactly once: not the removed one after its removal, the new one
// from its arrival on.
func TestStaleDevicesDeliverOnceToEachCurrentDevice(t *testing.T) {
	h := newHarness(t, harnessOpts{sim: sim.Options{DevicesMin: 2, DevicesMax: 2, UnknownShare: -1}})
	u := h.users(321, 1)[0]
	send := func() string {
		id := h.enqueue([]string{u}, 1, "camp-dev", time.Hour)[u][0]
		h.drain(time.Minute)
		return id
	}
	m1 := send()
	added := h.sim.AddDevice(u)
	m2 := send()
	h.sim.RemoveDevice(u, 1)
	m3 := send()
	got := h.sim.Delivered(u)
	want := map[uint32][]string{1: {m1, m2}, 2: {m1, m2, m3}, added: {m2, m3}}
	for d, ids := range want {
		have := append([]string(nil), got[d]...)
		sort.Strings(have)
		if fmt.Sprint(have) != fmt.Sprint(ids) {
			t.Errorf("device %d received %v, want %v", d, have, ids)
		}
	}
	st := h.sim.Stats()
	if st.Stale < 2 || st.Duplicates != 0 || len(st.Failures) != 0 || st.OrderingViolations != 0 {
		t.Fatalf("simulator: %+v (want stale_devices answered, nothing twice, no failure)", st)
	}
	if c, _ := h.eng.Statuses().Counters("camp-dev"); c.Sent != 3 {
		t.Fatalf("counters %+v", c)
	}
}

// TestSessionsReloadedFromDiskEncryptAgain (invariant 2): after the engine is
// closed and its data directory opened again (sessions come from disk, not
// from the cache that encrypted before), a second round of messages to the
// same recipients decrypts at every device: no counter is reused, nothing
// fails, nothing is delivered twice. Fails when a session's advance is not
// committed with its ciphertexts (the in-memory cache hides that until a
// restart).
func TestSessionsReloadedFromDiskEncryptAgain(t *testing.T) {
	s, err := sim.New(sim.Options{Users: 100_000, Prefix: "1666", Secret: "sekret", DevicesMin: 1, DevicesMax: 3, UnknownShare: -1})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	defer s.Close()
	dir := t.TempDir()
	var users []string
	for i := 0; i < 40; i++ {
		users = append(users, s.UserNumber(900+i))
	}
	want := int64(0)
	for round := 0; round < 3; round++ {
		h := newHarness(t, harnessOpts{dir: dir, noSim: true, simURL: s.URL()})
		h.enqueue(users, 2, fmt.Sprintf("camp-reload-%d", round), time.Hour)
		h.drain(time.Minute)
		h.close()
		for _, u := range users {
			want += int64(2 * s.DeviceCount(u))
		}
		st := s.Stats()
		if st.Decrypted != want || len(st.Failures) != 0 || st.Duplicates != 0 || st.OrderingViolations != 0 || st.Mismatches != 0 {
			t.Fatalf("round %d (sessions from disk): want %d decrypted, once each, no failure; got %+v", round, want, st)
		}
	}
}

// checkBodies: every current device of each registered user decrypted each
// message enqueued to it exactly once, with the exact body enqueued (the
// simulator's SHA-256 of what it decrypted); order is the simulator's
// ordering-violation counter's to check.
func (h *harness) checkBodies(users []string) {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, u := range users {
		if !h.sim.Registered(u) {
			continue
		}
		got := h.sim.Received(u)
		for _, d := range h.sim.Devices(u) {
			byID := map[string]int{}
			for _, r := range got[d] {
				if want, ok := h.bodies[r.ID]; ok && r.BodySHA != sha256.Sum256([]byte(want)) {
					h.t.Fatalf("device %d of a recipient decrypted message %s with a body other than the one enqueued", d, r.ID)
				}
				byID[r.ID]++
			}
			for _, id := range h.sentTo[u] {
				if byID[id] != 1 {
					h.t.Fatalf("device %d of a recipient decrypted message %s %d times, want once", d, id, byID[id])
				}
			}
		}
	}
}
