package engine_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

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
	h := newHarness(t, harnessOpts{noSim: true, simURL: base, engine: roomForResets})
	var users []string
	n := 300
	if raceEnabled {
		n = 100
	}
	for i := 0; i < n; i++ {
		users = append(users, fmt.Sprintf("1777%07d", i))
	}
	h.enqueue(users, 3, "camp-js", time.Hour)
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if n, _ := h.q.Depth(); n == 0 && h.eng.InFlight() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not drained")
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.eng.Flush()
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
	t.Logf("conformance stats %+v", stats)
	if stats.Decrypted != want || len(stats.Failures) != 0 || stats.Mismatches != 0 || stats.AuthMissing != 0 {
		t.Fatalf("want %d decrypted by JavaScript libsignal with no failures; got %+v", want, stats)
	}
	if stats.InjectedResets == 0 {
		t.Fatal("no bad_message was injected: the reset path went untested")
	}
	var received map[string][]struct {
		ID string `json:"id"`
	}
	getJSON(t, base+"/conformance/received", &received)
	for dev, msgs := range received {
		for i := 1; i < len(msgs); i++ {
			if msgs[i].ID <= msgs[i-1].ID {
				t.Fatalf("device %s received %s after %s", dev, msgs[i].ID, msgs[i-1].ID)
			}
		}
	}
	c, _ := h.eng.CampaignCounters("camp-js")
	if c.Sent != int64(3*registered) || c.Failed != int64(3*(len(users)-registered)) {
		t.Fatalf("counters %+v", c)
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
