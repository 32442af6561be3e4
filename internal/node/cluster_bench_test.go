package node_test

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/heraldhq/herald/internal/cluster"
)

// TestMain doubles as a NATS server process for the benchmarks that keep
// NATS out of the measured process (HERALD_TEST_NATS_CHILD=listen|dir):
// it serves until its standard input closes.
func TestMain(m *testing.M) {
	spec := os.Getenv("HERALD_TEST_NATS_CHILD")
	if spec == "" {
		os.Exit(m.Run())
	}
	listen, dir, _ := strings.Cut(spec, "|")
	host, port, _ := strings.Cut(listen, ":")
	p, _ := strconv.Atoi(port)
	s, err := server.NewServer(&server.Options{Host: host, Port: p, JetStream: true, StoreDir: dir, NoSigs: true, NoLog: true,
		JetStreamMaxMemory: 256 << 20})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		os.Exit(1)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	s.Shutdown()
	s.WaitForShutdown()
	os.Exit(0)
}

// natsProcess starts a NATS server (JetStream, no per-write fsync: the
// same as --nats-sync-always=false) in a child process and returns its
// URL and its CPU time so far.
func natsProcess(b *testing.B) (string, func() time.Duration) {
	addr := freeAddr(b)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "HERALD_TEST_NATS_CHILD="+addr+"|"+b.TempDir())
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(out, buf); err != nil || string(buf) != "ready\n" {
		b.Fatalf("NATS child: %q %v", buf, err)
	}
	b.Cleanup(func() { in.Close(); _ = cmd.Wait() })
	cpu := func() time.Duration {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", cmd.Process.Pid))
		if err != nil {
			return 0
		}
		f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+2:]))
		u, _ := strconv.ParseInt(f[11], 10, 64)
		k, _ := strconv.ParseInt(f[12], 10, 64)
		return time.Duration(u+k) * 10 * time.Millisecond // USER_HZ 100
	}
	return "nats://" + addr, cpu
}

// BenchmarkClusterIngest: one campaign upload to a three-node cluster
// (HERALD_BENCH_REPLICAS, default 1) with the platform down, so only
// ingest is measured: accepted means stored in JetStream on the replicas.
func BenchmarkClusterIngest(b *testing.B) {
	replicas, n := benchEnv("HERALD_BENCH_REPLICAS", 1), benchEnv("HERALD_BENCH_N", 20_000)
	tc := startCluster(b, 3, replicas, 7*n+10)
	tc.balanced()
	tc.sim.SetDown(true)
	tok, pn := tc.business(0, "15550200009", "unlimited")
	time.Sleep(time.Second)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		body := campaignBody(tc.sim, n, 1)
		start := time.Now()
		code, out := tc.do(1, "POST", "/v1/"+pn+"/campaigns", tok, body, "application/x-ndjson")
		if code != 200 {
			b.Fatalf("%d %v", code, out)
		}
		el := time.Since(start)
		b.ReportMetric(float64(n)/el.Seconds(), "msgs/s")
		fmt.Printf("replicas %d: %d accepted in %v = %.0f/s\n", replicas, n, el, float64(n)/el.Seconds())
	}
}

// benchEnv is the integer setting name, or def when unset (or 0).
func benchEnv(name string, def int) int {
	if v, _ := strconv.Atoi(os.Getenv(name)); v != 0 {
		return v
	}
	return def
}

func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkClusterCPU: process CPU per message, end to end (accepted →
// sent to every device of the simulator's users, which run in this process
// too), for a single node and for clusters on this machine:
// HERALD_BENCH_NODES (0: single node, no NATS), HERALD_BENCH_REPLICAS.
func BenchmarkClusterCPU(b *testing.B) {
	nodes, replicas, n := benchEnv("HERALD_BENCH_NODES", 0), benchEnv("HERALD_BENCH_REPLICAS", 1), benchEnv("HERALD_BENCH_N", 20_000)
	var tc *testCluster
	natsCPU := func() time.Duration { return 0 }
	switch {
	case nodes == 0:
		tc = startSingle(b, 7*n+10)
	case os.Getenv("HERALD_BENCH_NATS") == "process":
		// NATS in a process of its own (an existing NATS, --nats): the
		// measured process is Herald's (and the simulator's) alone.
		if nodes != 1 || replicas != 1 {
			b.Fatal("HERALD_BENCH_NATS=process: one node, replicas 1")
		}
		var url string
		url, natsCPU = natsProcess(b)
		tc = startCluster(b, 1, 1, 7*n+10, func(c *cluster.Config) {
			c.Embed, c.URLs, c.Listen, c.ClusterListen, c.Routes = false, []string{url}, "", "", nil
		})
		tc.balanced()
	default:
		tc = startCluster(b, nodes, replicas, 7*n+10, func(c *cluster.Config) { c.NoSyncAlways = os.Getenv("HERALD_BENCH_NOSYNC") != "" })
		tc.balanced()
	}
	tok, pn := tc.businessMPS(0, "15550200010", "unlimited", 1_000_000)
	time.Sleep(time.Second)
	// A warm-up campaign (sessions made), then the measured one to the same users.
	for round := 0; round < 2; round++ {
		body := campaignBody(tc.sim, n, 1)
		base := tc.sim.Stats().Decrypted
		if round == 1 && os.Getenv("HERALD_BENCH_CPUPROFILE") != "" {
			// the measured round only (the warm-up makes every session)
			f, err := os.Create(os.Getenv("HERALD_BENCH_CPUPROFILE"))
			if err != nil {
				b.Fatal(err)
			}
			_ = pprof.StartCPUProfile(f)
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
		start, cpu0, ncpu0 := time.Now(), cpuNow(), natsCPU()
		code, out := tc.do(0, "POST", "/v1/"+pn+"/campaigns", tok, body, "application/x-ndjson")
		if code != 200 {
			b.Fatalf("%d %v", code, out)
		}
		want := base + int64(n) // at least one device per user
		for tc.sim.Stats().Decrypted < want || tc.pending() > 0 {
			time.Sleep(20 * time.Millisecond)
		}
		el, cpu, ncpu := time.Since(start), cpuNow()-cpu0, natsCPU()-ncpu0
		if round == 1 && ncpu > 0 {
			b.ReportMetric(float64(ncpu.Microseconds())/float64(n), "nats-cpu-µs/msg")
			fmt.Printf("NATS process: %.1f µs CPU per message\n", float64(ncpu.Microseconds())/float64(n))
		}
		if round == 1 {
			b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/msg")
			b.ReportMetric(float64(n)/el.Seconds(), "msgs/s")
			fmt.Printf("nodes %d replicas %d: %d messages in %v, %.1f µs CPU per message (process: nodes, NATS, simulator)\n",
				nodes, replicas, n, el.Round(time.Millisecond), float64(cpu.Microseconds())/float64(n))
		}
	}
}

// BenchmarkClusterInbound: users write to one business through the load
// balancer (posts spread over the nodes): HERALD_BENCH_N users send one
// message each (new sessions), then one more each (on those sessions).
// HERALD_BENCH_NODES 0 is a single node (no NATS) behind the same balancer.
// Reported: envelopes accepted (durable at the partition's owner) per second.
func BenchmarkClusterInbound(b *testing.B) {
	nodes, n := benchEnv("HERALD_BENCH_NODES", 0), benchEnv("HERALD_BENCH_N", 2000)
	var tc *testCluster
	if nodes == 0 {
		tc = startSingle(b, 7*n+10)
	} else {
		tc = startCluster(b, nodes, 1, 7*n+10, func(c *cluster.Config) { c.NoSyncAlways = true })
		tc.balanced()
	}
	const biz = "15550200011"
	tok, pn := tc.businessMPS(0, biz, "unlimited", 1_000_000)
	tc.knows(tok, pn)
	for tc.sim.InboundStats().KeyUploads == 0 {
		time.Sleep(20 * time.Millisecond)
	}
	b.ResetTimer()
	for round, what := range []string{"new sessions", "on sessions"} {
		base := tc.sim.InboundStats().Accepted
		start, cpu0 := time.Now(), cpuNow()
		for u := 0; u < n; u++ {
			if _, err := tc.sim.Write(user(tc.sim, u), 1, biz, fmt.Sprintf("m%d-%d", round, u)); err != nil {
				b.Fatal(err)
			}
		}
		for tc.sim.InboundStats().Accepted < base+int64(n) {
			time.Sleep(10 * time.Millisecond)
		}
		el, cpu := time.Since(start), cpuNow()-cpu0
		st := tc.sim.InboundStats()
		fmt.Printf("nodes %d, %s: %d envelopes accepted in %v = %.0f/s, %.0f µs CPU each (process: nodes, NATS, users' encryption); bad_message %d, retries %d\n",
			nodes, what, n, el.Round(time.Millisecond), float64(n)/el.Seconds(), float64(cpu.Microseconds())/float64(n), st.BadMessage, st.Retries)
		if st.BadMessage != 0 || st.Failed != 0 {
			b.Fatalf("envelopes refused: %+v", st)
		}
	}
}
