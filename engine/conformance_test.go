package engine_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/campaigns"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/testutil"
)

// TestEngineInteropWithJavaScriptLibsignal runs the whole engine against the
// conformance platform, whose recipients are the JavaScript libsignal: every
// envelope decrypts there (multi-device users, unknown users, injected
// bad_message session resets), in order per device.
func TestEngineInteropWithJavaScriptLibsignal(t *testing.T) {
	script := testutil.ConformanceScript(t)
	base, _ := testutil.StartListening(t, 3*time.Minute, script,
		"--listen", "127.0.0.1:0", "--secret", "sekret", "--users", "1000", "--reset-rate", "0.05")
	m := metrics.New()
	// The JavaScript recipients decrypt on one thread; on a loaded 2-core CI
	// machine a request can wait seconds behind others, so the client gets
	// room (a timeout makes Herald retransmit, see below).
	h := newHarness(t, harnessOpts{noSim: true, simURL: base, clientTO: 60 * time.Second, engine: func(o *engine.Options) {
		roomForResets(o)
		o.Metrics = m
	}})
	var users []string
	n := 300
	if raceEnabled {
		n = 100
	}
	for i := 0; i < n; i++ {
		users = append(users, fmt.Sprintf("1777%07d", i))
	}
	h.enqueue(users, 3, "camp-js", time.Hour)
	h.drain(3 * time.Minute)
	var want int
	registered := 0
	for i := range users {
		if i%50 != 49 {
			registered++
			want += 3 * (1 + i%3)
		}
	}
	var stats struct {
		Decrypted      int            `json:"decrypted"`
		Failures       map[string]int `json:"failures"`
		Mismatches     int            `json:"mismatches"`
		AuthMissing    int            `json:"auth_missing"`
		InjectedResets int            `json:"injected_resets"`
	}
	getJSON(t, base+"/v1/stats", &stats)
	reasons := retryReasons(t, m)
	t.Logf("conformance stats %+v; retries by reason %v", stats, reasons)
	// One failure is legitimate: a request whose answer Herald never saw (a
	// timeout) held a bad_message reset, so the device dropped its session;
	// Herald retransmits the stored PreKeySignalMessage, whose one-time prekey
	// the device already consumed, gets bad_message and heals with a fresh
	// session. Each lost answer can cause at most one such failure per device in
	// it, so they are allowed only when requests were retried, and never more
	// than the envelopes those retries could carry back.
	failures := 0
	for why, n := range stats.Failures {
		if why != "decrypt:PreKeyError:Invalid PreKey ID" {
			t.Fatalf("JavaScript libsignal failed to decrypt: %q ×%d (stats %+v)", why, n, stats)
		}
		failures += n
	}
	if failures > 0 && (reasons["request"] == 0 || failures > stats.InjectedResets) {
		t.Fatalf("%d prekey failures without lost answers to explain them (retries %v)", failures, reasons)
	}
	if stats.Decrypted != want || stats.Mismatches != 0 || stats.AuthMissing != 0 {
		t.Fatalf("want %d decrypted by JavaScript libsignal; got %+v", want, stats)
	}
	if stats.InjectedResets == 0 {
		t.Fatal("no bad_message was injected: the reset path went untested")
	}
	checkReceived(t, h, base)
	c, _ := h.eng.Statuses().Counters("camp-js")
	if c.Sent != int64(3*registered) || c.Failed != int64(3*(len(users)-registered)) {
		t.Fatalf("counters %+v", c)
	}
	// The engine stops and its data directory opens again: sessions come
	// from disk, and JavaScript libsignal must decrypt the next messages in
	// them (a reused counter fails there) — invariant 2 across a restart.
	dir := h.dir
	bodies, sentTo := h.bodies, h.sentTo
	h.close()
	h2 := newHarness(t, harnessOpts{dir: dir, noSim: true, simURL: base, clientTO: 60 * time.Second, engine: roomForResets})
	h2.bodies, h2.sentTo = bodies, sentTo
	again := users[:60]
	h2.enqueue(again, 1, "camp-js-2", time.Hour)
	h2.drain(3 * time.Minute)
	for i := range again {
		if i%50 != 49 {
			want += 1 + i%3
		}
	}
	getJSON(t, base+"/v1/stats", &stats)
	if stats.Decrypted != want || stats.Mismatches != 0 {
		t.Fatalf("after a restart: want %d decrypted by JavaScript libsignal; got %+v", want, stats)
	}
	for why := range stats.Failures {
		if why != "decrypt:PreKeyError:Invalid PreKey ID" {
			t.Fatalf("after a restart JavaScript libsignal failed to decrypt: %q (stats %+v)", why, stats)
		}
	}
	checkReceived(t, h2, base)
}

// checkReceived: every device of the conformance platform received its
// messages in order, each with the exact body enqueued.
func checkReceived(t *testing.T, h *harness, base string) {
	t.Helper()
	var received map[string][]struct {
		ID   string `json:"id"`
		Body string `json:"body"`
	}
	getJSON(t, base+"/conformance/received", &received)
	checked := 0
	h.mu.Lock()
	defer h.mu.Unlock()
	for dev, msgs := range received {
		for i, m := range msgs {
			if i > 0 && m.ID <= msgs[i-1].ID {
				t.Fatalf("device %s received %s after %s", dev, m.ID, msgs[i-1].ID)
			}
			if want, ok := h.bodies[m.ID]; ok {
				if m.Body != want {
					t.Fatalf("device %s decrypted message %s as %q, want %q", dev, m.ID, m.Body, want)
				}
				checked++
			}
		}
	}
	if checked == 0 {
		t.Fatal("no body was compared")
	}
}

func getJSON(t *testing.T, url string, v any) {
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// retryReasons reads herald_retries_total by reason from the engine's registry.
func retryReasons(t *testing.T, m *metrics.Metrics) map[string]float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "herald_retries_total" {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "reason" {
					out[l.GetValue()] += mt.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// TestCanceledCiphertextsLeaveAGapJavaScriptSkips: a campaign is canceled
// while its first messages are on the wire and its later messages'
// ciphertexts are already stored (their sessions advanced). Those
// ciphertexts are dropped with the cancel and never sent; the next message
// to each user goes in the advanced session, one or more counters later, and
// the JavaScript libsignal recipients decrypt it (they skip the gap).
func TestCanceledCiphertextsLeaveAGapJavaScriptSkips(t *testing.T) {
	script := testutil.ConformanceScript(t)
	base, _ := testutil.StartListening(t, 3*time.Minute, script,
		"--listen", "127.0.0.1:0", "--secret", "sekret", "--users", "1000")
	const campaign = "cmp_gap"
	var mu sync.Mutex
	ours := map[string]bool{}
	hold := newHolding(func(id string) bool { mu.Lock(); defer mu.Unlock(); return ours[id] }, false)
	var ctl *campaigns.Control
	h := newHarness(t, harnessOpts{noSim: true, simURL: base, clientTO: 60 * time.Second, noStart: true,
		wrap: func(tr engine.Transport) engine.Transport { hold.Transport = tr; return hold },
		engine: func(o *engine.Options) {
			var err error
			if ctl, err = campaigns.Open(o.DB); err != nil {
				t.Fatal(err)
			}
			o.Campaigns = ctl
		}})
	t.Cleanup(hold.free) // before the harness's own cleanup (LIFO)
	var users []string
	for i := 0; i < 60; i++ {
		users = append(users, fmt.Sprintf("1777%07d", 500+i))
	}
	ids := h.enqueue(users, 3, campaign, time.Hour)
	mu.Lock()
	for _, l := range ids {
		for _, id := range l {
			ours[id] = true
		}
	}
	mu.Unlock()
	h.eng.Start(context.Background())
	select {
	case <-hold.held:
	case <-time.After(2 * time.Minute):
		t.Fatal("the campaign never reached the platform")
	}
	// Ciphertexts stored beyond the round on the wire: the later messages'.
	stored := countPrefix(t, h, "eO")
	done := make(chan error, 1)
	go func() { done <- ctl.Set(campaign, heraldtype.CampaignCanceled, time.Now(), time.Now().Add(time.Hour)) }()
	hold.free()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	hold.stopped.Store(true)
	h.drain(3 * time.Minute)
	c, _ := h.eng.Statuses().Counters(campaign)
	if c.Canceled == 0 || stored <= int(c.Sent) {
		t.Fatalf("nothing canceled with its ciphertext stored (stored %d, counters %+v)", stored, c)
	}
	if n := countPrefix(t, h, "eO"); n != 0 {
		t.Fatalf("%d outbox records left after the cancel", n)
	}
	if hold.after.Load() != 0 {
		t.Fatalf("%d envelopes of the canceled campaign sent after the cancel", hold.after.Load())
	}
	after := h.enqueue(users, 1, "after", time.Hour)
	h.drain(3 * time.Minute)
	var stats struct {
		Decrypted int            `json:"decrypted"`
		Failures  map[string]int `json:"failures"`
	}
	getJSON(t, base+"/v1/stats", &stats)
	if len(stats.Failures) != 0 {
		t.Fatalf("JavaScript libsignal failed after the gap: %v", stats)
	}
	var received map[string][]struct {
		ID string `json:"id"`
	}
	getJSON(t, base+"/conformance/received", &received)
	last := map[string]bool{}
	for _, msgs := range received {
		if len(msgs) > 0 {
			last[msgs[len(msgs)-1].ID] = true
		}
	}
	for i, u := range users {
		if i%50 != 49 && !last[after[u][0]] {
			t.Fatalf("%s: the message after the cancel was not decrypted last on its devices", u)
		}
	}
	checkReceived(t, h, base)
}
