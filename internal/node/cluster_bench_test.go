package node_test

import (
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"syscall"

	"github.com/heraldhq/herald/internal/cluster"
	"testing"
	"time"
)

// BenchmarkClusterIngest: one campaign upload to a three-node cluster
// (HERALD_BENCH_REPLICAS, default 1) with the platform down, so only
// ingest is measured: accepted means stored in JetStream on the replicas.
func BenchmarkClusterIngest(b *testing.B) {
	replicas, _ := strconv.Atoi(os.Getenv("HERALD_BENCH_REPLICAS"))
	if replicas == 0 {
		replicas = 1
	}
	n, _ := strconv.Atoi(os.Getenv("HERALD_BENCH_N"))
	if n == 0 {
		n = 20_000
	}
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
	nodes, _ := strconv.Atoi(os.Getenv("HERALD_BENCH_NODES"))
	replicas, _ := strconv.Atoi(os.Getenv("HERALD_BENCH_REPLICAS"))
	if replicas == 0 {
		replicas = 1
	}
	n, _ := strconv.Atoi(os.Getenv("HERALD_BENCH_N"))
	if n == 0 {
		n = 20_000
	}
	var tc *testCluster
	if nodes == 0 {
		tc = startSingle(b, 7*n+10)
	} else {
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
		start, cpu0 := time.Now(), cpuNow()
		code, out := tc.do(0, "POST", "/v1/"+pn+"/campaigns", tok, body, "application/x-ndjson")
		if code != 200 {
			b.Fatalf("%d %v", code, out)
		}
		want := base + int64(n) // at least one device per user
		for tc.sim.Stats().Decrypted < want || tc.pending() > 0 {
			time.Sleep(20 * time.Millisecond)
		}
		el, cpu := time.Since(start), cpuNow()-cpu0
		if round == 1 {
			b.ReportMetric(float64(cpu.Microseconds())/float64(n), "cpu-µs/msg")
			b.ReportMetric(float64(n)/el.Seconds(), "msgs/s")
			fmt.Printf("nodes %d replicas %d: %d messages in %v, %.1f µs CPU per message (process: nodes, NATS, simulator)\n",
				nodes, replicas, n, el.Round(time.Millisecond), float64(cpu.Microseconds())/float64(n))
		}
	}
}
