// Package crash holds the crash loop of real processes: `herald serve` and
// `herald platform` as separate binaries, campaigns uploaded over HTTP, and
// SIGKILLs steered into ingest, encryption/transmit and compaction. Run by
// `make crash` (HERALD_CRASH_KILLS=N); skipped otherwise.
package crash

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/testutil"
)

const (
	secret     = "crash-platform-secret"
	adminToken = "crash-admin-token-0123456789"
	devices    = 2 // every simulated user has exactly two devices
	prefix     = "1666"
)

type harness struct {
	t       *testing.T
	bin     string
	dataDir string
	addr    string // Herald's fixed address (the platform pushes events to it)
	simURL  string
	serve   *exec.Cmd
	log     *os.File
}

func (h *harness) startServe() {
	h.t.Helper()
	cmd := exec.Command(h.bin, "serve", "--data", h.dataDir, "--listen", h.addr,
		"--platform", h.simURL, "--platform-secret", secret, "--admin-token", adminToken,
		"--no-demo-business", "--purge-interval", "1s", "--log-level", "error")
	cmd.Stdout, cmd.Stderr = h.log, h.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	h.serve = cmd
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + h.addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatal("herald serve did not become ready")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (h *harness) kill() {
	syscall.Kill(-h.serve.Process.Pid, syscall.SIGKILL)
	h.serve.Wait()
}

// api calls Herald; a transport error (Herald down) is returned, not fatal.
func api(method, url, token, ct string, body []byte, hdr map[string]string) (int, []byte, error) {
	req, _ := http.NewRequest(method, url, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	c := http.Client{Timeout: 60 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// waitPurge polls /metrics until a purge is running (true) or d passes.
func (h *harness) waitPurge(d time.Duration) bool {
	deadline := time.Now().Add(d)
	c := http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		resp, err := c.Get("http://" + h.addr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if bytes.Contains(b, []byte("\nherald_purge_running 1")) {
				return true
			}
		}
		time.Sleep(500 * time.Microsecond)
	}
	return false
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type simStats struct {
	Envelopes          int64            `json:"envelopes"`
	Decrypted          int64            `json:"decrypted"`
	Duplicates         int64            `json:"duplicates"`
	Mismatches         int64            `json:"mismatches"`
	OrderingViolations int64            `json:"ordering_violations"`
	Failures           map[string]int64 `json:"failures"`
}

func (h *harness) stats() simStats {
	h.t.Helper()
	_, b, err := api("GET", h.simURL+"/v1/stats", "", "", nil, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	var st simStats
	json.Unmarshal(b, &st)
	return st
}

// TestCrashLoopRealProcesses: uploads run the whole time with Idempotency-Keys
// (a broken upload is retried until it answers); Herald is SIGKILLed N times
// at moments steered into ingest, encryption/transmit and compaction, and
// restarted. At the end: every accepted message decrypted by every device,
// nothing failed, nothing out of order, campaign counters equal to what was
// accepted.
func TestCrashLoopRealProcesses(t *testing.T) {
	kills, _ := strconv.Atoi(os.Getenv("HERALD_CRASH_KILLS"))
	if kills <= 0 {
		t.Skip("set HERALD_CRASH_KILLS (make crash)")
	}
	root := testutil.RepoRoot(t)
	dir := t.TempDir()
	h := &harness{t: t, bin: filepath.Join(dir, "herald"), dataDir: filepath.Join(dir, "data"), addr: freeAddr(t)}
	build := exec.Command("go", "build", "-o", h.bin, "./cmd/herald")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	var err error
	if h.log, err = os.Create(filepath.Join(dir, "serve.log")); err != nil {
		t.Fatal(err)
	}
	h.simURL, _ = testutil.StartListening(t, 30*time.Second, h.bin, "platform", "--listen", "127.0.0.1:0",
		"--events-url", "http://"+h.addr+"/v1/platform/events", "--secret", secret, "--prefix", prefix,
		"--users", "1000000", "--devices", fmt.Sprintf("%d-%d", devices, devices), "--unknown-share=-1")
	h.startServe()
	defer func() {
		if h.serve != nil {
			h.kill()
		}
	}()

	code, b, err := api("POST", "http://"+h.addr+"/admin/v1/businesses", adminToken, "application/json",
		[]byte(`{"name":"Crash Co","phone_numbers":["15550007777"],"tier":"unlimited","mps":1000}`), nil)
	if err != nil || code != 200 {
		t.Fatalf("create business: %d %s %v", code, b, err)
	}
	var biz struct {
		Token string   `json:"token"`
		PNs   []string `json:"phone_number_ids"`
	}
	json.Unmarshal(b, &biz)
	held := h.controlled(biz.Token, biz.PNs[0])

	// Uploads: one after another until the killer is done, each retried with
	// its key until it answers 200.
	per := 1500
	var (
		mu        sync.Mutex
		campaigns = map[string]int{} // campaign id → accepted
		uploading atomic.Bool
		stop      atomic.Bool
		uploadErr = make(chan error, 1)
	)
	go func() {
		defer close(uploadErr)
		for n := 0; !stop.Load() || n < 2; n++ {
			var body strings.Builder
			fmt.Fprintf(&body, `{"name":"crash-%d","template":{"body":"Crash test %d for {{name}} ✓"},"ttl_seconds":86400}`+"\n", n, n)
			for i := 0; i < per; i++ {
				// Scattered user indexes: a consecutive run would trip the
				// enumeration detector; each campaign its own users.
				u := (n*per + i) * 7919 % 900_000 // 900,000 and up: the paused and canceled campaigns' users
				fmt.Fprintf(&body, `{"to":"%s%07d","vars":{"name":"u%d"}}`+"\n", prefix, u, u)
			}
			key := fmt.Sprintf("crash-upload-%d", n)
			for attempt := 0; ; attempt++ {
				uploading.Store(true)
				code, b, err := api("POST", "http://"+h.addr+"/v1/"+biz.PNs[0]+"/campaigns", biz.Token, "application/x-ndjson",
					[]byte(body.String()), map[string]string{"Idempotency-Key": key})
				uploading.Store(false)
				if err == nil && code == 200 {
					var res struct {
						ID       string `json:"campaign_id"`
						Accepted int    `json:"accepted"`
						Rejected int    `json:"rejected_count"`
					}
					json.Unmarshal(b, &res)
					if res.Rejected != 0 {
						uploadErr <- fmt.Errorf("campaign %d: %d lines rejected: %s", n, res.Rejected, b)
						return
					}
					mu.Lock()
					campaigns[res.ID] = res.Accepted
					mu.Unlock()
					break
				}
				if err == nil && code != 503 && code != 409 && code != 408 {
					uploadErr <- fmt.Errorf("campaign %d attempt %d: %d %s", n, attempt, code, b)
					return
				}
				if attempt > 200 {
					uploadErr <- fmt.Errorf("campaign %d never completed: last %d %v", n, code, err)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()

	phases := []string{"ingest", "transmit", "compaction"}
	survived := map[string]int{}
	for k := 0; k < kills; k++ {
		phase := phases[k%len(phases)]
		switch phase {
		case "ingest":
			deadline := time.Now().Add(30 * time.Second)
			for !uploading.Load() && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			time.Sleep(time.Duration(rand.IntN(15)) * time.Millisecond) // an upload of 1,500 takes tens of ms
		case "transmit":
			// Wait until the platform sees envelopes from this incarnation.
			base := h.stats().Envelopes
			deadline := time.Now().Add(30 * time.Second)
			for h.stats().Envelopes == base && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(time.Duration(rand.IntN(400)) * time.Millisecond)
		case "compaction":
			// --purge-interval 1s: a purge (flush + full compaction) starts
			// about every second; kill while /metrics shows one running, or
			// at a random moment around the schedule if none is caught.
			if h.waitPurge(5 * time.Second) {
				phase = "compaction (observed mid-purge)"
			} else {
				time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
			}
		}
		if phase == "ingest" && uploading.Load() {
			phase = "ingest (upload in flight)"
		}
		h.kill()
		survived[phase]++
		h.startServe()
	}
	stop.Store(true)
	if err := <-uploadErr; err != nil {
		t.Fatal(err)
	}

	// Everything accepted must arrive; of the paused and the canceled
	// campaign, only what was sent before the answer.
	mu.Lock()
	total := 0
	for _, n := range campaigns {
		total += n
	}
	mu.Unlock()
	total += int(held.paused.sent + held.canceled.sent)
	deadline := time.Now().Add(5 * time.Minute)
	for {
		st := h.stats()
		if st.Decrypted >= int64(total*devices) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d kills: %d of %d device deliveries (stats %+v)", kills, st.Decrypted, total*devices, st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	st := h.stats()
	if st.Decrypted != int64(total*devices) || len(st.Failures) != 0 || st.Mismatches != 0 || st.OrderingViolations != 0 {
		t.Fatalf("simulator: %+v, want exactly %d decrypted, no failures, no ordering violations", st, total*devices)
	}
	// Campaign counters equal what was accepted (sent or beyond, none failed).
	for id, accepted := range campaigns {
		var view struct {
			Accepted int              `json:"accepted"`
			Counts   map[string]int64 `json:"counts"`
		}
		deadline := time.Now().Add(time.Minute)
		for {
			code, b, err := api("GET", "http://"+h.addr+"/v1/campaigns/"+id, biz.Token, "", nil, nil)
			if err != nil || code != 200 {
				t.Fatalf("campaign %s: %d %s %v", id, code, b, err)
			}
			json.Unmarshal(b, &view)
			done := view.Counts["sent"] + view.Counts["delivered"] + view.Counts["read"]
			if done == int64(accepted) && view.Counts["queued"] == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("campaign %s: accepted %d, counters %s", id, accepted, b)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if view.Accepted != accepted || view.Counts["failed"] != 0 {
			t.Fatalf("campaign %s: view %+v, upload answered %d", id, view, accepted)
		}
	}
	// The paused campaign is still paused with its messages held, the
	// canceled one canceled: kills changed neither. Resumed, the paused one
	// completes.
	held.check(h, biz.Token, "paused", held.paused)
	held.check(h, biz.Token, "canceled", held.canceled)
	if code, b, err := api("POST", "http://"+h.addr+"/v1/campaigns/"+held.paused.id+"/resume", biz.Token, "", nil, nil); err != nil || code != 200 {
		t.Fatalf("resume after the kills: %d %s %v", code, b, err)
	}
	want := int64(total-int(held.paused.sent)+held.paused.accepted) * devices
	deadline = time.Now().Add(5 * time.Minute)
	for st := h.stats(); st.Decrypted < want; st = h.stats() {
		if time.Now().After(deadline) {
			t.Fatalf("after the resume: %d of %d device deliveries (%+v)", st.Decrypted, want, st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st = h.stats(); st.Decrypted != want || len(st.Failures) != 0 || st.OrderingViolations != 0 {
		t.Fatalf("after the resume: %+v, want exactly %d decrypted", st, want)
	}
	fmt.Printf("crash loop: a paused campaign (%d of %d sent before the pause) and a canceled one (%d of %d) kept their state through the kills; the paused one completed after a resume\n",
		held.paused.sent, held.paused.accepted, held.canceled.sent, held.canceled.accepted)
	fmt.Printf("crash loop (real processes): %d kills survived (%v); %d campaigns, %d messages, %d device deliveries, %d duplicates absorbed by the platform's dedupe\n",
		kills, survived, len(campaigns), total, st.Decrypted, st.Duplicates)
}

// heldCampaign is a campaign paused or canceled before the kills: how many
// of its messages the upload accepted and how many were sent before the
// answer (statuses settled).
type heldCampaign struct {
	id       string
	accepted int
	sent     int64
}

type heldCampaigns struct{ paused, canceled heldCampaign }

// controlled uploads two campaigns to users of their own (900,000 and up),
// pauses one and cancels the other at once, and records what each had sent.
func (h *harness) controlled(token, pn string) *heldCampaigns {
	h.t.Helper()
	out := &heldCampaigns{}
	for k, c := range []*heldCampaign{&out.paused, &out.canceled} {
		var body strings.Builder
		fmt.Fprintf(&body, `{"name":"held-%d","template":{"body":"Held %d for {{name}}"}}`+"\n", k, k)
		for i := 0; i < 2000; i++ {
			u := 900_000 + k*50_000 + i*17
			fmt.Fprintf(&body, `{"to":"%s%07d","vars":{"name":"u%d"}}`+"\n", prefix, u, u)
		}
		code, b, err := api("POST", "http://"+h.addr+"/v1/"+pn+"/campaigns", token, "application/x-ndjson", []byte(body.String()), nil)
		if err != nil || code != 200 {
			h.t.Fatalf("held campaign upload: %d %s %v", code, b, err)
		}
		var res struct {
			ID       string `json:"campaign_id"`
			Accepted int    `json:"accepted"`
		}
		json.Unmarshal(b, &res)
		c.id, c.accepted = res.ID, res.Accepted
		verb := []string{"pause", "cancel"}[k]
		if code, b, err := api("POST", "http://"+h.addr+"/v1/campaigns/"+c.id+"/"+verb, token, "", nil, nil); err != nil || code != 200 {
			h.t.Fatalf("%s: %d %s %v", verb, code, b, err)
		}
	}
	time.Sleep(2 * time.Second) // the statuses of what was on the wire at the answer are written
	for _, c := range []*heldCampaign{&out.paused, &out.canceled} {
		c.sent = h.view(token, c.id).Totals["sent"]
	}
	return out
}

type campaignView struct {
	State    string           `json:"state"`
	Accepted int              `json:"accepted"`
	Counts   map[string]int64 `json:"counts"`
	Totals   map[string]int64 `json:"totals"`
}

func (h *harness) view(token, id string) campaignView {
	h.t.Helper()
	code, b, err := api("GET", "http://"+h.addr+"/v1/campaigns/"+id, token, "", nil, nil)
	if err != nil || code != 200 {
		h.t.Fatalf("campaign %s: %d %s %v", id, code, b, err)
	}
	var v campaignView
	json.Unmarshal(b, &v)
	return v
}

// check: the campaign is still in state, with nothing more sent than at
// its answer and the rest held (paused) or canceled.
func (hc *heldCampaigns) check(h *harness, token, state string, c heldCampaign) {
	h.t.Helper()
	v := h.view(token, c.id)
	rest := int64(c.accepted) - c.sent
	held := v.Counts["queued"]
	if state == "canceled" {
		held = v.Counts["canceled"]
	}
	if v.State != state || v.Totals["sent"] != c.sent || held != rest-v.Counts["failed"] {
		h.t.Fatalf("the %s campaign after the kills: %+v (sent %d at the answer of %d)", state, v, c.sent, c.accepted)
	}
}
