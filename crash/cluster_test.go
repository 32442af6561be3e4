package crash

import (
	"encoding/json"
	"fmt"
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

// clusterNode is one `herald serve` process of a three-node cluster.
type clusterNode struct {
	id, api, nats, route, data string
	cmd                        *exec.Cmd
}

type clusterHarness struct {
	t      *testing.T
	bin    string
	simURL string
	nodes  []*clusterNode
	log    *os.File
}

const clusterMasterKey = "1:f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f"

func (h *clusterHarness) start(i int) {
	h.t.Helper()
	n := h.nodes[i]
	var routes []string
	for j, o := range h.nodes {
		if j != i {
			routes = append(routes, "nats://"+o.route)
		}
	}
	cmd := exec.Command(h.bin, "serve", "--data", n.data, "--listen", n.api, "--node-id", n.id,
		"--nats-embed", "--nats-listen", n.nats, "--nats-cluster", n.route, "--nats-routes", strings.Join(routes, ","),
		"--nats-replicas", "3", "--nats-lease-ttl", "3s",
		"--platform", h.simURL, "--platform-secret", secret, "--admin-token", adminToken,
		"--no-demo-business", "--log-level", "warn")
	cmd.Env = append(os.Environ(), "HERALD_MASTER_KEY="+clusterMasterKey)
	cmd.Stdout, cmd.Stderr = h.log, h.log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	n.cmd = cmd
}

func (h *clusterHarness) ready(i int) {
	h.t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		resp, err := http.Get("http://" + h.nodes[i].api + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("node %d did not become ready", i)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (h *clusterHarness) signal(i int, sig syscall.Signal) {
	n := h.nodes[i]
	if n.cmd == nil {
		return
	}
	syscall.Kill(-n.cmd.Process.Pid, sig)
	n.cmd.Wait()
	n.cmd = nil
}

// metric reads one un-labelled metric of node i (-1 if unreadable).
func (h *clusterHarness) metric(i int, name string) float64 {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + h.nodes[i].api + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 64<<10)
	for {
		n, err := resp.Body.Read(buf)
		b.WriteString(string(buf[:n]))
		if err != nil {
			break
		}
	}
	for _, line := range strings.Split(b.String(), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

// TestClusterCrashRealProcesses: three `herald serve` processes on embedded
// NATS (replicas 3) and one `herald platform`. Campaigns are uploaded to
// node 0 the whole time; node 2 is SIGKILLed mid-campaign (its partitions
// move within the lease TTL) and started again; then all three are
// restarted one after another (SIGTERM) while campaigns go on. At the end
// every accepted message was decrypted by every device exactly once (a
// resend of what a killed node had handed over is absorbed by the
// platform's dedupe, and counted), nothing failed, nothing out of order.
func TestClusterCrashRealProcesses(t *testing.T) {
	if os.Getenv("HERALD_CRASH_KILLS") == "" {
		t.Skip("set HERALD_CRASH_KILLS (make crash)")
	}
	root := testutil.RepoRoot(t)
	dir := t.TempDir()
	h := &clusterHarness{t: t, bin: filepath.Join(dir, "herald")}
	build := exec.Command("go", "build", "-o", h.bin, "./cmd/herald")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	var err error
	logPath := filepath.Join(os.TempDir(), "herald-cluster-crash.log") // kept after a failure
	if h.log, err = os.Create(logPath); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		h.nodes = append(h.nodes, &clusterNode{id: fmt.Sprint("c", i), api: freeAddr(t), nats: freeAddr(t), route: freeAddr(t),
			data: filepath.Join(dir, fmt.Sprint("data", i))})
	}
	h.simURL, _ = testutil.StartListening(t, 30*time.Second, h.bin, "platform", "--listen", "127.0.0.1:0",
		"--events-url", "http://"+h.nodes[0].api+"/v1/platform/events", "--secret", secret, "--prefix", prefix,
		"--users", "1000000", "--devices", fmt.Sprintf("%d-%d", devices, devices), "--unknown-share=-1")
	for i := range h.nodes {
		h.start(i)
	}
	defer func() {
		for i := range h.nodes {
			h.signal(i, syscall.SIGKILL)
		}
	}()
	for i := range h.nodes {
		h.ready(i)
	}
	base := "http://" + h.nodes[0].api
	code, b, err := api("POST", base+"/admin/v1/businesses", adminToken, "application/json",
		[]byte(`{"name":"Cluster Crash Co","phone_numbers":["15550008888"],"tier":"unlimited","mps":1000}`), nil)
	if err != nil || code != 200 {
		t.Fatalf("create business: %d %s %v", code, b, err)
	}
	var biz struct {
		Token string   `json:"token"`
		PNs   []string `json:"phone_number_ids"`
	}
	json.Unmarshal(b, &biz)

	// Uploads to node 0 until the kills and restarts are done; each retried
	// with its key until it answers 200 (node 0 restarts too: gracefully,
	// so an upload in progress finishes first).
	const per = 600
	var (
		mu        sync.Mutex
		accepted  int
		stop      atomic.Bool
		uploadErr = make(chan error, 1)
	)
	go func() {
		defer close(uploadErr)
		for n := 0; !stop.Load() || n < 2; n++ {
			var body strings.Builder
			fmt.Fprintf(&body, `{"name":"cluster-crash-%d","template":{"body":"Cluster crash %d for {{name}}"},"ttl_seconds":86400}`+"\n", n, n)
			for i := 0; i < per; i++ {
				u := (n*per + i) * 7919 % 900_000
				fmt.Fprintf(&body, `{"to":"%s%07d","vars":{"name":"u%d"}}`+"\n", prefix, u, u)
			}
			key := fmt.Sprintf("cluster-crash-upload-%d", n)
			for attempt := 0; ; attempt++ {
				code, b, err := api("POST", base+"/v1/"+biz.PNs[0]+"/campaigns", biz.Token, "application/x-ndjson",
					[]byte(body.String()), map[string]string{"Idempotency-Key": key})
				if err == nil && code == 200 {
					var res struct {
						Accepted int `json:"accepted"`
						Rejected int `json:"rejected_count"`
					}
					json.Unmarshal(b, &res)
					if res.Rejected != 0 {
						uploadErr <- fmt.Errorf("campaign %d: %d lines rejected: %s", n, res.Rejected, b)
						return
					}
					mu.Lock()
					accepted += res.Accepted
					mu.Unlock()
					break
				}
				if err == nil && code != 503 && code != 409 && code != 408 && code != 500 {
					uploadErr <- fmt.Errorf("campaign %d attempt %d: %d %s", n, attempt, code, b)
					return
				}
				if attempt > 600 {
					uploadErr <- fmt.Errorf("campaign %d never completed: last %d %v", n, code, err)
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	waitSent := func(more int64) {
		base := h.stats().Decrypted
		deadline := time.Now().Add(60 * time.Second)
		for h.stats().Decrypted < base+more && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	// 1. SIGKILL node 2 mid-campaign, once the partitions are shared; the
	// others take its partitions.
	waitSent(500)
	for deadline := time.Now().Add(60 * time.Second); ; {
		a, b, c := h.metric(0, "herald_cluster_partitions_held"), h.metric(1, "herald_cluster_partitions_held"), h.metric(2, "herald_cluster_partitions_held")
		if a > 0 && b > 0 && c > 0 && a+b+c == 16 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("partitions not shared by the three nodes: %v %v %v", a, b, c)
		}
		time.Sleep(50 * time.Millisecond)
	}
	held := h.metric(2, "herald_cluster_partitions_held")
	killed := time.Now()
	h.signal(2, syscall.SIGKILL)
	for h.metric(0, "herald_cluster_partitions_held")+h.metric(1, "herald_cluster_partitions_held") < 16 {
		if time.Since(killed) > 60*time.Second {
			t.Fatal("the killed node's partitions did not move within 60 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	moved := time.Since(killed)
	waitSent(500)
	h.start(2)
	h.ready(2)
	// 2. Rolling restart of all three during the campaigns.
	for i := range h.nodes {
		waitSent(300)
		h.signal(i, syscall.SIGTERM)
		h.start(i)
		h.ready(i)
	}
	stop.Store(true)
	if err := <-uploadErr; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	total := accepted
	mu.Unlock()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		st := h.stats()
		if st.Decrypted >= int64(total*devices) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d device deliveries (stats %+v)", st.Decrypted, total*devices, st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // anything sent twice would show now
	st := h.stats()
	if st.Decrypted != int64(total*devices) || len(st.Failures) != 0 || st.Mismatches != 0 || st.OrderingViolations != 0 {
		t.Fatalf("simulator: %+v, want exactly %d decrypted, no failures, no ordering violations", st, total*devices)
	}
	fmt.Printf("cluster crash (3 real processes, replicas 3): node 2 SIGKILLed holding %.0f partitions, all held by the others %v later (lease TTL 3 s); rolling restart of all three; %d messages, %d device deliveries, %d duplicates absorbed by the platform's dedupe\n",
		held, moved.Round(100*time.Millisecond), total, st.Decrypted, st.Duplicates)
}

func (h *clusterHarness) stats() simStats {
	return (&harness{t: h.t, simURL: h.simURL}).stats()
}
