package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/cluster"
	"github.com/heraldhq/herald/internal/node"
	"github.com/heraldhq/herald/internal/platform/sim"
)

// runClusterDemo is `herald demo --nodes N`: N nodes in this process, each
// with its embedded NATS server routed to the others on loopback
// (replicas 3 when N ≥ 3), one simulator for all. The campaign is uploaded
// to the second node and followed on the last; when about 40% is sent the
// last node is cut off (as if killed) and its partitions move.
func runClusterDemo(ctx context.Context, nodes, recipients int, so sim.Options, keep bool) error {
	dir, err := os.MkdirTemp("", "herald-demo-cluster-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	}
	if so.Prefix == "" {
		so.Prefix = "1555"
	}
	free := func() (string, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		defer ln.Close()
		return ln.Addr().String(), nil
	}
	apis, routes, clients := make([]string, nodes), make([]string, nodes), make([]string, nodes)
	for i := 0; i < nodes; i++ {
		for _, p := range []*string{&apis[i], &routes[i], &clients[i]} {
			if *p, err = free(); err != nil {
				return err
			}
		}
	}
	secret := "demo-cluster-platform-secret"
	so.Secret, so.EventsURL = secret, "http://"+apis[0]+"/v1/platform/events"
	// Users' answers go to node 1 (node 0 takes the platform's events, the
	// last node is killed); each is decrypted by its partition's owner.
	so.InboundURL = "http://" + apis[1%nodes] + "/v1/platform/inbound"
	s, err := sim.New(so)
	if err != nil {
		return err
	}
	s.Start()
	defer s.Close()
	replicas := 1
	if nodes >= 3 {
		replicas = 3
	}
	var mk [32]byte
	rand.Read(mk[:])
	master := "1:" + hex.EncodeToString(mk[:])
	sent := make([]atomic.Int64, nodes)
	ns := make([]*node.Node, nodes)
	var wg sync.WaitGroup
	errs := make([]error, nodes)
	fmt.Printf("starting %d nodes (embedded NATS JetStream, replicas %d) and the platform simulator %s: %d users, %d-%d devices each\n",
		nodes, replicas, s.URL(), so.Users, so.DevicesMin, so.DevicesMax)
	for i := 0; i < nodes; i++ {
		var rs []string
		for j := range routes {
			if j != i {
				rs = append(rs, "nats://"+routes[j])
			}
		}
		i := i
		cfg := node.Config{DataDir: filepath.Join(dir, fmt.Sprint("node", i)), Listen: apis[i], NoDemoBusiness: true, Out: io.Discard,
			MasterKeys: master, PlatformURL: s.URL(), PlatformSecret: secret, AdminToken: "demo-cluster-admin-token",
			WebhookAllow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			OnStatus: func(cs []heraldtype.StatusChange) {
				for _, c := range cs {
					if c.Status == heraldtype.StatusSent {
						sent[i].Add(1)
					}
				}
			},
			Cluster: &cluster.Config{Embed: true, Listen: clients[i], ClusterListen: routes[i], Routes: rs, Replicas: replicas,
				NodeID: fmt.Sprint("node", i), LeaseTTL: 6 * time.Second}}
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := node.New(cfg)
			if err == nil {
				if err = n.Start(ctx); err != nil {
					n.Close()
				}
			}
			ns[i], errs[i] = n, err
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			for _, n := range ns {
				if n != nil {
					n.Close()
				}
			}
			return fmt.Errorf("node %d: %w", i, err)
		}
	}
	closed := make([]bool, nodes)
	defer func() {
		// All at once: closed one after another, the last ones lose their
		// JetStream quorum and spend their close on warnings and timeouts.
		var cw sync.WaitGroup
		for i, n := range ns {
			if !closed[i] {
				cw.Add(1)
				go func() { defer cw.Done(); n.Close() }()
			}
		}
		cw.Wait()
	}()
	held := func() []string {
		out := make([]string, nodes)
		for i, n := range ns {
			if closed[i] {
				out[i] = "down"
				continue
			}
			out[i] = fmt.Sprint(len(n.HeldPartitions()))
		}
		return out
	}
	for deadline := clock.Wall().Add(30 * time.Second); clock.Wall().Before(deadline); time.Sleep(100 * time.Millisecond) {
		total, all := 0, true
		for i, n := range ns {
			h := len(n.HeldPartitions())
			total += h
			all = all && (h > 0 || closed[i])
		}
		if total == ns[0].Queue.Shards() && all {
			break
		}
	}
	fmt.Printf("partitions per node: %s\n", strings.Join(held(), " / "))
	c, pn, sink, stop, err := demoBusiness(ns[0])
	if err != nil {
		return err
	}
	defer stop()
	// Any node takes any request: upload to node 1, watch on node 0. The
	// last node is killed when 40% of the campaign is sent (the upload
	// may still be going on: sending starts with the first batch).
	up := newAPIClient(ns[1%nodes].URL(), c.token)
	start := clock.Wall()
	type upload struct {
		res *demoResult
		err error
	}
	upc := make(chan upload, 1)
	go func() {
		res, err := demoCampaign(up, pn, so, recipients)
		upc <- upload{res, err}
	}()
	last := nodes - 1
	var (
		res       *demoResult
		st        campaignStatus
		killed    bool
		killedAt  time.Time
		accepted  time.Time
		moved     = make(chan struct{})
		prev      = make([]int64, nodes)
		tick      = clock.Wall()
		watch     = newAPIClient(ns[0].URL(), c.token) // node 0 stays up
		totalSent = func() (n int64) {
			for i := range sent {
				n += sent[i].Load()
			}
			return n
		}
	)
	var lastPending time.Time
	for {
		if res == nil {
			select {
			case u := <-upc:
				if u.err != nil {
					return u.err
				}
				res, accepted = u.res, clock.Wall()
				fmt.Printf("campaign %s uploaded to node1: %d accepted in %v (%.0f recipients/s while sending, durable in JetStream on %d replicas)\n",
					res.CampaignID, res.Accepted, accepted.Sub(start).Round(time.Millisecond), float64(res.Accepted)/accepted.Sub(start).Seconds(), replicas)
			default:
			}
		}
		done := totalSent()
		if res != nil {
			if err := watch.jsonCall("GET", "/v1/campaigns/"+res.CampaignID, nil, &st); err != nil {
				return err
			}
			done = st.done()
		}
		now := clock.Wall()
		if now.Sub(tick) >= time.Second {
			var rates []string
			for i := range ns {
				cur := sent[i].Load()
				rates = append(rates, fmt.Sprintf("node%d %6.0f/s", i, float64(cur-prev[i])/now.Sub(tick).Seconds()))
				prev[i] = cur
			}
			fmt.Printf("  %5.1fs  sent %d of %d   %s   partitions %s\n", now.Sub(start).Seconds(), done, recipients,
				strings.Join(rates, "  "), strings.Join(held(), "/"))
			tick = now
		}
		if !killed && nodes > 1 && done >= int64(recipients)*4/10 {
			had := ns[last].HeldPartitions()
			ns[last].Cluster().Sever() // as if the process died: nothing handed back, its leases run out
			killedAt, killed = clock.Wall(), true
			fmt.Printf("  killed node%d (it held partitions %v): its leases run out within %v, then the others take them\n", last, had, 6*time.Second)
			go func() {
				defer close(moved)
				for {
					total := 0
					for i := 0; i < last; i++ {
						total += len(ns[i].HeldPartitions())
					}
					if total == ns[0].Queue.Shards() {
						fmt.Printf("  node%d's partitions moved %v after it died; partitions now %s\n", last,
							clock.Wall().Sub(killedAt).Round(100*time.Millisecond), strings.Join(held()[:last], "/"))
						return
					}
					time.Sleep(50 * time.Millisecond)
				}
			}()
		}
		if res != nil && (st.done() >= int64(res.Accepted) || clock.Wall().Sub(lastPending) >= time.Second) {
			// Done is when JetStream holds nothing unsettled (the counts
			// may run ahead: a resend counts twice; they are not what
			// ends the wait).
			lastPending = clock.Wall()
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			left, err := ns[0].Cluster().Pending(pctx)
			cancel()
			if err == nil && left == 0 {
				break
			}
			if clock.Wall().Sub(accepted) > 5*time.Minute {
				return fmt.Errorf("%d messages still unsettled in JetStream 5 minutes after the upload (%v); counts %v", left, err, st.Totals)
			}
			if os.Getenv("HERALD_DEMO_DEBUG") != "" {
				for i, n := range ns {
					d, _ := n.Queue.Depth()
					fmt.Printf("node%d depth=%d inflight=%d %s\n", i, d, n.Engine.InFlight(), n.ClusterDebug())
				}
				c := ns[0].Cluster()
				for in := range c.Work.ListConsumers(ctx).Info() {
					if in.NumPending+uint64(in.NumAckPending) > 0 {
						fmt.Printf("%s pend=%d ackpend=%d redel=%d waiting=%d\n", in.Name, in.NumPending, in.NumAckPending, in.NumRedelivered, in.NumWaiting)
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			fmt.Println("interrupted: stopping cleanly")
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
	if killed {
		<-moved
	}
	finished := clock.Wall()
	if killed {
		ns[last].Close()
		closed[last] = true
	}
	for deadline := clock.Wall().Add(10 * time.Second); clock.Wall().Before(deadline) && s.PendingEvents() > 0; time.Sleep(100 * time.Millisecond) {
	}
	stats := s.Stats()
	fmt.Printf("\n== Summary ==\n")
	fmt.Printf("throughput: %d messages in %v = %.0f messages/s end to end over %d nodes on one machine\n",
		res.Accepted, finished.Sub(accepted).Round(time.Millisecond), float64(res.Accepted)/finished.Sub(accepted).Seconds(), nodes)
	for i := range ns {
		fmt.Printf("  node%d sent %d\n", i, sent[i].Load())
	}
	sink.mu.Lock()
	hooks := len(sink.at["sent"])
	sink.mu.Unlock()
	if err := watch.jsonCall("GET", "/v1/campaigns/"+res.CampaignID, nil, &st); err == nil {
		fmt.Printf("campaign totals (GET /v1/campaigns/{id}): sent %d, failed %d of %d accepted (a resend of what the killed node had handed over counts again)\n",
			st.Totals["sent"], st.Totals["failed"], res.Accepted)
	}
	fmt.Printf("webhooks: %d \"sent\" statuses reached the business's endpoint\n", hooks)
	awaitReplies(sink, s)
	replies(sink, s)
	fmt.Printf("simulator proof: %d envelopes, %d decrypted by the simulator's libsignal recipients, %d duplicates deduped (resends of what the killed node had handed over), %d decrypt failures, %d ordering violations, %d plaintext mismatches\n",
		stats.Envelopes, stats.Decrypted, stats.Duplicates, len(stats.Failures), stats.OrderingViolations, stats.Mismatches)
	if len(stats.Failures) != 0 || stats.OrderingViolations != 0 || stats.Mismatches != 0 {
		return fmt.Errorf("the simulator saw failures: %+v", stats.Failures)
	}
	return nil
}
