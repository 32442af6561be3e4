package node_test

import (
	"fmt"
	"os"
	"strconv"
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
	t := &testing.T{}
	_ = t
	tc := startCluster(b, 3, replicas, 2*n+10)
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
