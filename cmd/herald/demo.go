package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/node"
	"github.com/heraldhq/herald/internal/platform/sim"
	"github.com/heraldhq/herald/internal/webhook"
)

// webhookSink receives status webhooks, checks their signature, and records
// when each message reached each status.
type webhookSink struct {
	secret string
	mu     sync.Mutex
	at     map[string]map[string]time.Time // status → id → first arrival
	bad    int
	// replies: users' messages (id → arrivals; more than one would be a
	// duplicate forward).
	replies map[string][]time.Time
}

func (w *webhookSink) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if r.Header.Get("X-Hub-Signature-256") != webhook.Sign(w.secret, body) {
		w.mu.Lock()
		w.bad++
		w.mu.Unlock()
		rw.WriteHeader(401)
		return
	}
	sts, _ := webhook.ParsePayload(body)
	msgs, _ := webhook.ParseMessages(body)
	now := clock.Wall()
	w.mu.Lock()
	for _, m := range msgs {
		w.replies[m.ID] = append(w.replies[m.ID], now)
	}
	for _, s := range sts {
		firstAt(w.at, s.Status, s.ID, now)
	}
	w.mu.Unlock()
}

// firstAt records now as when id first reached status, unless it did before.
func firstAt(at map[string]map[string]time.Time, status, id string, now time.Time) {
	m := at[status]
	if m == nil {
		m = map[string]time.Time{}
		at[status] = m
	}
	if _, ok := m[id]; !ok {
		m[id] = now
	}
}

// statusTimes records when Herald committed each message's first sent and
// delivered: the demo's latencies, apart for each status (a webhook POST
// often carries both of a message's statuses at once).
type statusTimes struct {
	mu sync.Mutex
	at map[string]map[string]time.Time // status → id → first commit
}

func (s *statusTimes) record(changes []heraldtype.StatusChange) {
	now := clock.Wall()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range changes {
		if c.Status != heraldtype.StatusSent && c.Status != heraldtype.StatusDelivered {
			continue
		}
		firstAt(s.at, c.Status, c.MessageID, now)
	}
}

// awaitReplies lets the users' answers reach the webhook too (10 s at most).
func awaitReplies(sink *webhookSink, sm *sim.Server) {
	for deadline := clock.Wall().Add(10 * time.Second); clock.Wall().Before(deadline); time.Sleep(100 * time.Millisecond) {
		sink.mu.Lock()
		got := int64(len(sink.replies))
		sink.mu.Unlock()
		if sm.InboundPending() == 0 && got >= sm.InboundStats().Accepted {
			return
		}
	}
}

// replies prints the users' answers that reached the demo's webhook: how
// many, duplicates, and the time from the user's send to the webhook.
func replies(sink *webhookSink, sm *sim.Server) {
	h := hdrhistogram.New(1, 10*60*1000, 3)
	dups := 0
	sink.mu.Lock()
	for id, at := range sink.replies {
		if len(at) > 1 {
			dups++
		}
		if sent := sm.SentAt(id); !sent.IsZero() {
			h.RecordValue(max(1, at[0].Sub(sent).Milliseconds()))
		}
	}
	got := len(sink.replies)
	sink.mu.Unlock()
	st := sm.InboundStats()
	fmt.Printf("replies: users sent %d, %d reached the business's webhook once each (%d twice), p50 %dms p99 %dms from the user's send to the webhook\n",
		st.Queued, got, dups, h.ValueAtQuantile(50), h.ValueAtQuantile(99))
}

// histogram of the times in at[status], from since, in milliseconds.
func histogram(mu *sync.Mutex, at map[string]map[string]time.Time, status string, since time.Time) *hdrhistogram.Histogram {
	h := hdrhistogram.New(1, 10*60*1000, 3)
	mu.Lock()
	defer mu.Unlock()
	for _, t := range at[status] {
		h.RecordValue(max(1, t.Sub(since).Milliseconds()))
	}
	return h
}

func demoCmd() *cobra.Command {
	var recipients int
	var devices string
	var so sim.Options
	var keep bool
	var nodes int
	cmd := &cobra.Command{
		Use:     "demo",
		Example: "  herald demo\n  herald demo --recipients 5000\n  herald demo --nodes 3",
		Short:   "One command, nothing to install: Herald + the platform simulator + a campaign, with a live progress bar and a proof",
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if so.DevicesMin, so.DevicesMax, err = sim.ParseDevices(devices); err != nil {
				return fmt.Errorf("invalid setting devices: %v", err)
			}
			if recipients < 1 || recipients > 5_000_000 {
				return fmt.Errorf("invalid setting recipients: must be 1-5,000,000")
			}
			if so.Users < recipients {
				so.Users = recipients * 2
			}
			if nodes < 1 || nodes > 9 {
				return fmt.Errorf("invalid setting nodes: must be 1-9")
			}
			if !cmd.Flags().Changed("reply-share") {
				so.ReplyShare = 0.05 // some users answer: the demo shows them reach the business
			}
			if nodes > 1 {
				return runClusterDemo(cmd.Context(), nodes, recipients, so, keep)
			}
			return runDemo(cmd.Context(), recipients, so, keep)
		},
	}
	cmd.Flags().IntVar(&recipients, "recipients", 20_000, "recipients in the demo campaign")
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the temporary data directory")
	cmd.Flags().IntVar(&nodes, "nodes", 1, "nodes: more than 1 runs a cluster in this process (embedded NATS JetStream on loopback) and kills one mid-campaign")
	simFlags(cmd, &so, &devices)
	cmd.Flags().Lookup("users").DefValue = "2 × recipients"
	cmd.Flags().Lookup("reply-share").DefValue = "0.05"
	so.Users = 0
	return cmd
}

func runDemo(ctx context.Context, recipients int, so sim.Options, keep bool) error {
	dir, err := os.MkdirTemp("", "herald-demo-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(dir)
	}
	if so.Prefix == "" {
		so.Prefix = "1555"
	}
	times := &statusTimes{at: map[string]map[string]time.Time{}}
	n, err := node.New(node.Config{DataDir: dir, Listen: "127.0.0.1:0", Sim: so, NoDemoBusiness: true, Out: io.Discard,
		WebhookAllow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, // the demo's own webhook sink listens on loopback
		OnStatus:     times.record})
	if err != nil {
		return err
	}
	defer n.Close()
	if err := n.Start(ctx); err != nil {
		return err
	}
	fmt.Printf("Herald %s (data %s), platform simulator %s: %d users, %d-%d devices each\n",
		n.URL(), dir, n.Sim.URL(), so.Users, so.DevicesMin, so.DevicesMax)
	c, pn, sink, stop, err := demoBusiness(n)
	if err != nil {
		return err
	}
	defer stop()
	start := clock.Wall()
	res, err := demoCampaign(c, pn, so, recipients)
	if err != nil {
		return err
	}
	accepted := clock.Wall()
	fmt.Printf("campaign %s: %d accepted, %d rejected in %v (%.0f recipients/s, durable)\n", res.CampaignID, res.Accepted,
		len(res.Rejected), accepted.Sub(start).Round(time.Millisecond), float64(res.Accepted)/accepted.Sub(start).Seconds())
	st, ok, err := followCampaign(ctx, c, res.CampaignID, res.Accepted)
	if err != nil || !ok {
		return err
	}
	finished := clock.Wall()
	// Let delivered events and webhooks settle.
	deadline := clock.Wall().Add(10 * time.Second)
	for clock.Wall().Before(deadline) {
		c.jsonCall("GET", "/v1/campaigns/"+res.CampaignID, nil, &st)
		sink.mu.Lock()
		got := len(sink.at["sent"])
		sink.mu.Unlock()
		if got >= int(st.Totals["sent"]) && n.Sim.PendingEvents() == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("\n== Summary ==\n")
	fmt.Printf("throughput: %d messages in %v = %.0f messages/s end to end (accept → sent to every device)\n",
		res.Accepted, finished.Sub(accepted).Round(time.Millisecond), float64(res.Accepted)/finished.Sub(accepted).Seconds())
	awaitReplies(sink, n.Sim)
	return demoSummary(st, times, sink, accepted, n)
}

// demoBusiness creates the demo's business and its webhook sink (stop
// closes the sink); c is a client with the business's token.
func demoBusiness(n *node.Node) (c *apiClient, pn string, sink *webhookSink, stop func(), err error) {
	admin := newAPIClient(n.URL(), n.AdminToken)
	var biz struct {
		BusinessID     string   `json:"business_id"`
		Token          string   `json:"token"`
		PhoneNumberIDs []string `json:"phone_number_ids"`
	}
	if err := admin.jsonCall("POST", "/admin/v1/businesses", map[string]any{
		"name": "Demo Co", "phone_numbers": []string{"15550199999"}, "tier": "unlimited", "mps": 1_000_000,
	}, &biz); err != nil {
		return nil, "", nil, nil, fmt.Errorf("creating the demo business: %w", err)
	}
	pn = biz.PhoneNumberIDs[0]
	c = newAPIClient(n.URL(), biz.Token)
	sink = &webhookSink{secret: "demo-webhook-secret", at: map[string]map[string]time.Time{}, replies: map[string][]time.Time{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", nil, nil, err
	}
	hs := &http.Server{Handler: sink}
	go hs.Serve(ln)
	if err := c.jsonCall("PUT", "/v1/"+pn+"/webhook", map[string]string{"url": "http://" + ln.Addr().String() + "/hook", "secret": sink.secret}, nil); err != nil {
		hs.Close()
		return nil, "", nil, nil, err
	}
	return c, pn, sink, func() { hs.Close() }, nil
}

// demoResult is the campaign upload's answer.
type demoResult struct {
	CampaignID string `json:"campaign_id"`
	Accepted   int    `json:"accepted"`
	Rejected   []any  `json:"rejected"`
}

// demoCampaign streams an NDJSON campaign to recipients spread over the
// simulator's users.
func demoCampaign(c *apiClient, pn string, so sim.Options, recipients int) (*demoResult, error) {
	pr, pw := io.Pipe()
	go func() {
		enc := json.NewEncoder(pw)
		enc.Encode(map[string]any{"name": "demo", "template": map[string]string{"body": "Hi {{name}}, your order #{{order}} has shipped."}, "ttl_seconds": 3600})
		step := so.Users / recipients
		for i := 0; i < recipients; i++ {
			u := i * step
			enc.Encode(map[string]any{"to": fmt.Sprintf("%s%0*d", so.Prefix, 11-len(so.Prefix), u),
				"vars": map[string]string{"name": fmt.Sprintf("Customer %d", i), "order": fmt.Sprint(100000 + i)}})
		}
		pw.Close()
	}()
	var res demoResult
	if _, err := c.call("POST", "/v1/"+pn+"/campaigns", pr, "application/x-ndjson", &res); err != nil {
		return nil, fmt.Errorf("submitting the campaign: %w", err)
	}
	return &res, nil
}

// followCampaign shows a progress bar until every accepted message is done
// (ok) or ctx ends (not ok, nil error: a clean stop).
func followCampaign(ctx context.Context, c *apiClient, id string, accepted int) (st campaignStatus, ok bool, err error) {
	bar := progressbar.NewOptions(accepted, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionSetWidth(30),
		progressbar.OptionShowCount(), progressbar.OptionThrottle(200*time.Millisecond), progressbar.OptionClearOnFinish())
	defer bar.Finish()
	for {
		if err := c.jsonCall("GET", "/v1/campaigns/"+id, nil, &st); err != nil {
			return st, false, err
		}
		done := st.done()
		bar.Describe(fmt.Sprintf("sent %d delivered %d failed %d", st.Totals["sent"], st.Totals["delivered"], st.Totals["failed"]))
		bar.Set(int(done))
		if done >= int64(accepted) {
			return st, true, nil
		}
		select {
		case <-ctx.Done():
			fmt.Println("\ninterrupted: stopping cleanly")
			return st, false, nil
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// demoSummary prints the latencies, statuses and the simulator's proof, and
// fails when the simulator saw a failure.
func demoSummary(st campaignStatus, times *statusTimes, sink *webhookSink, accepted time.Time, n *node.Node) error {
	stats := n.Sim.Stats()
	line := func(what string, h *hdrhistogram.Histogram, how string) {
		if h.TotalCount() > 0 {
			fmt.Printf("campaign accepted → %-18s p50 %6dms  p90 %6dms  p99 %6dms  max %6dms  (%d messages, %s)\n",
				what, h.ValueAtQuantile(50), h.ValueAtQuantile(90), h.ValueAtQuantile(99), h.Max(), h.TotalCount(), how)
		}
	}
	line("sent", histogram(&times.mu, times.at, "sent", accepted), "when Herald recorded it")
	line("delivered", histogram(&times.mu, times.at, "delivered", accepted), "when Herald recorded it")
	line("delivered, webhook", histogram(&sink.mu, sink.at, "delivered", accepted), "when the signed webhook arrived")
	replies(sink, n.Sim)
	fmt.Printf("totals (how many reached each status): sent %d, delivered %d, read %d, failed %d\n",
		st.Totals["sent"], st.Totals["delivered"], st.Totals["read"], st.Totals["failed"])
	var codes []string
	for c := range st.Failures {
		codes = append(codes, c)
	}
	sort.Strings(codes)
	for _, code := range codes {
		fmt.Printf("  failed with %s: %d\n", code, st.Failures[code])
	}
	fmt.Printf("simulator proof: %d envelopes, %d decrypted by the simulator's libsignal recipients, %d duplicates deduped, %d decrypt failures, %d ordering violations, %d plaintext mismatches\n",
		stats.Envelopes, stats.Decrypted, stats.Duplicates, len(stats.Failures), stats.OrderingViolations, stats.Mismatches)
	if sink.bad > 0 {
		fmt.Printf("WARNING: %d webhook posts had a bad signature\n", sink.bad)
	}
	if len(stats.Failures) != 0 || stats.OrderingViolations != 0 || stats.Mismatches != 0 {
		return fmt.Errorf("the simulator saw failures: %+v", stats.Failures)
	}
	return nil
}
