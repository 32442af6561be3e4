package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/platform/sim"
	"github.com/spf13/cobra"
)

type loadOpts struct {
	url, token, pn, mode, prefix string
	platformURL, platformSecret  string
	to                           string
	users, recipients, campaigns int
	clients, count               int
	duration                     time.Duration
	wait                         time.Duration
	jsonOut, allowRemote         bool
}

type loadReport struct {
	Mode           string           `json:"mode"`
	Requests       int64            `json:"requests"`
	Accepted       int64            `json:"accepted"`
	Rejected       int64            `json:"rejected"`
	CampaignIDs    []string         `json:"campaign_ids,omitempty"`
	RejectedCodes  map[string]int64 `json:"rejected_by_code,omitempty"` // of the rejections the answers list
	Errors         map[string]int64 `json:"errors_by_code"`
	IngestSeconds  float64          `json:"ingest_seconds"`
	IngestPerSec   float64          `json:"ingest_per_second"`
	LatencyMS      map[string]int64 `json:"request_latency_ms,omitempty"`
	DeliverSeconds float64          `json:"accept_to_done_seconds,omitempty"`
	DeliverPerSec  float64          `json:"end_to_end_per_second,omitempty"`
	Sent           int64            `json:"sent"`
	Failed         int64            `json:"failed"`
	Failures       map[string]int64 `json:"failures_by_code,omitempty"`
	// Inbound mode: users' first messages (mostly new sessions) and their
	// replies, accepted per second, each phase timed on its own.
	InboundFirstPerSec   float64 `json:"inbound_first_per_second,omitempty"`
	InboundRepliesPerSec float64 `json:"inbound_replies_per_second,omitempty"`
}

func loadCmd() *cobra.Command {
	var o loadOpts
	cmd := &cobra.Command{
		Use: "load",
		Example: "  herald load --token $TOKEN --phone-number-id $PN --recipients 5000\n  herald load --token $TOKEN --phone-number-id $PN --mode single --count 2000 --clients 16\n" +
			"  herald load --mode inbound --platform-url http://127.0.0.1:9100 --platform-secret S --to 15550100000 --count 20000",
		Short: "Load-test a running herald serve: campaigns (NDJSON) or single messages; reports campaign ids, rejections, throughput and latency; exits 1 when nothing was accepted",
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := loopbackOnly(o.url, o.allowRemote); err != nil {
				return err
			}
			var rep *loadReport
			var err error
			if o.mode == "inbound" {
				if o.platformURL == "" || o.to == "" {
					return usageError{errors.New("invalid setting platform-url/to: inbound mode needs both")}
				}
				if err := loopbackOnly(o.platformURL, o.allowRemote); err != nil {
					return err
				}
			} else if o.token == "" || o.pn == "" {
				return errors.New("invalid setting token/phone-number-id: both are required")
			}
			switch o.mode {
			case "inbound":
				rep, err = loadInbound(o)
			case "campaign":
				rep, err = loadCampaigns(o)
			case "single":
				rep, err = loadSingle(o)
			default:
				return fmt.Errorf("invalid setting mode: %q (campaign, single or inbound)", o.mode)
			}
			if err != nil {
				return err
			}
			if o.jsonOut {
				if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
					return err
				}
			} else {
				printReport(rep)
			}
			return rep.verdict()
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.url, "url", "http://"+defaults().Listen, "Herald base URL (loopback unless --allow-remote)")
	f.StringVar(&o.token, "token", "", "business token")
	f.StringVar(&o.pn, "phone-number-id", "", "phone_number_id to send from")
	f.StringVar(&o.mode, "mode", "campaign", "campaign (NDJSON uploads), single (POST /messages) or inbound (the platform's users write to --to)")
	f.StringVar(&o.platformURL, "platform-url", "", "inbound mode: the herald platform simulator whose users write (its /sim/write)")
	f.StringVar(&o.platformSecret, "platform-secret", "platform-secret", "inbound mode: the simulator's --secret")
	f.StringVar(&o.to, "to", "", "inbound mode: the business number (digits) users write to")
	f.StringVar(&o.prefix, "prefix", "1555", "recipient number prefix (match the platform's users)")
	f.IntVar(&o.users, "users", 1_000_000, "recipients are drawn from prefix+[0, users)")
	f.IntVar(&o.recipients, "recipients", 100_000, "campaign mode: recipients per campaign")
	f.IntVar(&o.campaigns, "campaigns", 1, "campaign mode: campaigns uploaded in parallel")
	f.IntVar(&o.clients, "clients", 32, "single mode: concurrent clients")
	f.IntVar(&o.count, "count", 10_000, "single mode: messages in all (0: until --duration)")
	f.DurationVar(&o.duration, "duration", time.Minute, "upper bound on the sending phase")
	f.DurationVar(&o.wait, "wait", 5*time.Minute, "campaign mode: how long to wait for every status (0: don't)")
	f.BoolVar(&o.jsonOut, "json", false, "print the report as JSON")
	f.BoolVar(&o.allowRemote, "allow-remote", false, "allow a non-loopback URL")
	return cmd
}

// user maps i to a recipient spread over [0, users) (a multiplicative
// scramble), so an upload does not look like number enumeration to the
// integrity limits, as a real customer list would not.
func user(o loadOpts, i int) string {
	return fmt.Sprintf("%s%0*d", o.prefix, 11-len(o.prefix), (int64(i)*2654435761+12345)%int64(o.users))
}

func loadCampaigns(o loadOpts) (*loadReport, error) {
	c := newAPIClient(o.url, o.token)
	rep := &loadReport{Mode: "campaign", Errors: map[string]int64{}}
	ids := make([]string, o.campaigns)
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := clock.Wall()
	for k := 0; k < o.campaigns; k++ {
		wg.Add(1)
		go func(k int) {
			defer wg.Done()
			pr, pw := io.Pipe()
			go func() {
				bw := newLineWriter(pw)
				bw.line(fmt.Sprintf(`{"name":"load-%d","template":{"body":"Load test {{n}}"},"ttl_seconds":3600}`, k))
				base := k * o.recipients
				for i := 0; i < o.recipients; i++ {
					bw.line(fmt.Sprintf(`{"to":"%s","vars":{"n":"%d"}}`, user(o, base+i), i))
				}
				bw.close()
			}()
			var res struct {
				CampaignID    string `json:"campaign_id"`
				Accepted      int64  `json:"accepted"`
				RejectedCount int64  `json:"rejected_count"`
				Rejected      []struct {
					Code int `json:"code"`
				} `json:"rejected"`
			}
			_, err := c.call("POST", "/v1/"+o.pn+"/campaigns", pr, "application/x-ndjson", &res)
			pr.Close()
			mu.Lock()
			defer mu.Unlock()
			rep.Requests++
			if err != nil {
				rep.Errors[errCode(err)]++
				return
			}
			ids[k] = res.CampaignID
			rep.CampaignIDs = append(rep.CampaignIDs, res.CampaignID)
			rep.Accepted += res.Accepted
			rep.Rejected += res.RejectedCount
			for _, r := range res.Rejected {
				if rep.RejectedCodes == nil {
					rep.RejectedCodes = map[string]int64{}
				}
				rep.RejectedCodes[fmt.Sprint(r.Code)]++
			}
		}(k)
	}
	wg.Wait()
	rep.IngestSeconds = time.Since(start).Seconds()
	rep.IngestPerSec = float64(rep.Accepted) / rep.IngestSeconds
	fmt.Fprintf(os.Stderr, "ingested %d recipients in %.2fs (%.0f/s)\n", rep.Accepted, rep.IngestSeconds, rep.IngestPerSec)
	if o.wait <= 0 {
		return rep, nil
	}
	acceptedAt := clock.Wall()
	deadline := acceptedAt.Add(o.wait)
	rep.Failures = map[string]int64{}
	for {
		var done, sent, failed int64
		failures := map[string]int64{}
		for _, id := range ids {
			if id == "" {
				continue
			}
			var st campaignStatus
			if err := c.jsonCall("GET", "/v1/campaigns/"+id, nil, &st); err != nil {
				return nil, err
			}
			done += st.done()
			failed += st.Totals["failed"]
			sent += st.Totals["sent"]
			for k, v := range st.Failures {
				failures[k] += v
			}
		}
		fmt.Fprintf(os.Stderr, "\rdone %d/%d (sent %d, failed %d)   ", done, rep.Accepted, sent, failed)
		if done >= rep.Accepted || clock.Wall().After(deadline) {
			rep.Sent, rep.Failed, rep.Failures = sent, failed, failures
			rep.DeliverSeconds = time.Since(start).Seconds()
			rep.DeliverPerSec = float64(done) / rep.DeliverSeconds
			fmt.Fprintln(os.Stderr)
			return rep, nil
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func loadSingle(o loadOpts) (*loadReport, error) {
	c := newAPIClient(o.url, o.token)
	rep := &loadReport{Mode: "single", Errors: map[string]int64{}}
	h := hdrhistogram.New(1, 60_000_000, 3) // microseconds
	var mu sync.Mutex
	var next atomic.Int64
	stop := clock.Wall().Add(o.duration)
	start := clock.Wall()
	var wg sync.WaitGroup
	for w := 0; w < o.clients; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if (o.count > 0 && i >= int64(o.count)) || clock.Wall().After(stop) {
					return
				}
				body := fmt.Sprintf(`{"messaging_product":"whatsapp","to":"%s","type":"text","text":{"body":"load %d"},"ttl_seconds":3600}`,
					user(o, rand.IntN(o.users)), i)
				t0 := clock.Wall()
				_, err := c.call("POST", "/v1/"+o.pn+"/messages", strings.NewReader(body), "application/json", nil)
				d := time.Since(t0)
				mu.Lock()
				rep.Requests++
				h.RecordValue(d.Microseconds())
				if err != nil {
					rep.Errors[errCode(err)]++
				} else {
					rep.Accepted++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	rep.IngestSeconds = time.Since(start).Seconds()
	rep.IngestPerSec = float64(rep.Accepted) / rep.IngestSeconds
	rep.LatencyMS = map[string]int64{}
	for _, q := range []float64{50, 90, 99, 99.9} {
		rep.LatencyMS[fmt.Sprintf("p%g", q)] = h.ValueAtQuantile(q) / 1000
	}
	rep.LatencyMS["max"] = h.Max() / 1000
	return rep, nil
}

func errCode(err error) string {
	var ae *apiError
	if errors.As(err, &ae) {
		return fmt.Sprintf("http_%d_code_%d", ae.Status, ae.Code)
	}
	return "transport"
}

// verdict fails a run in which nothing was accepted or every request failed
// (exit 1): a load test that measured nothing must not look like a pass.
func (r *loadReport) verdict() error {
	var failed int64
	for _, n := range r.Errors {
		failed += n
	}
	switch {
	case r.Requests > 0 && failed == r.Requests:
		return fmt.Errorf("every request failed (%d): see the errors above", failed)
	case r.Accepted == 0:
		return errors.New("nothing was accepted: see the rejections above (a business's tier caps the unique recipients it may start per 24 h)")
	}
	return nil
}

func printReport(r *loadReport) {
	fmt.Printf("mode %s: %d requests, %d accepted, %d rejected in %.2fs → %.0f accepted/s\n", r.Mode, r.Requests, r.Accepted, r.Rejected, r.IngestSeconds, r.IngestPerSec)
	for _, id := range r.CampaignIDs {
		fmt.Printf("  campaign %s\n", id)
	}
	codes := make([]string, 0, len(r.RejectedCodes))
	for k := range r.RejectedCodes {
		codes = append(codes, k)
	}
	sort.Strings(codes)
	for _, k := range codes {
		what := ""
		if t := heraldtype.CodeTitle(mustAtoi(k)); t != "" {
			what = " (" + t + ")"
		}
		fmt.Printf("  rejected with %s%s: %d\n", k, what, r.RejectedCodes[k])
	}
	if len(r.LatencyMS) > 0 {
		fmt.Printf("request latency: p50 %dms p90 %dms p99 %dms p99.9 %dms max %dms\n", r.LatencyMS["p50"], r.LatencyMS["p90"], r.LatencyMS["p99"], r.LatencyMS["p99.9"], r.LatencyMS["max"])
	}
	if r.Mode == "inbound" {
		fmt.Printf("users' messages accepted by Herald (durable, decrypted, queued for the webhook): %d, %d failed, in %.2fs → %.0f messages/s\n",
			r.Accepted, r.Failed, r.DeliverSeconds, r.DeliverPerSec)
		fmt.Printf("  first messages (new sessions) %.0f/s, replies in those sessions %.0f/s\n", r.InboundFirstPerSec, r.InboundRepliesPerSec)
	} else if r.DeliverSeconds > 0 {
		fmt.Printf("end to end: %d sent, %d failed in %.2fs → %.0f messages/s\n", r.Sent, r.Failed, r.DeliverSeconds, r.DeliverPerSec)
	}
	keys := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Printf("  error %s: %d\n", k, r.Errors[k])
	}
	for k, v := range r.Failures {
		fmt.Printf("  failed with %s: %d\n", k, v)
	}
}

type lineWriter struct {
	w   *io.PipeWriter
	buf []byte
}

func newLineWriter(w *io.PipeWriter) *lineWriter { return &lineWriter{w: w} }

func (l *lineWriter) line(s string) {
	l.buf = append(l.buf, s...)
	l.buf = append(l.buf, '\n')
	if len(l.buf) > 256<<10 {
		l.w.Write(l.buf)
		l.buf = l.buf[:0]
	}
}

func (l *lineWriter) close() {
	l.w.Write(l.buf)
	l.w.Close()
}

func mustAtoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

// loadInbound makes --count messages from the simulator's users (each of
// --users writes count/users) to the business number --to, through the
// simulator's POST /sim/write, and waits until the simulator saw every one
// answered; it reports accepted per second end to end (the users' side
// encrypts in the simulator's one pump: its rate bounds the figure).
func loadInbound(o loadOpts) (*loadReport, error) {
	rep := &loadReport{Mode: "inbound", Errors: map[string]int64{}}
	writers := max(1, min(o.users, o.count))
	per := max(1, o.count/writers)
	call := func(method, path string, in, out any) error {
		var body []byte
		if in != nil {
			body, _ = json.Marshal(in)
		}
		req, _ := http.NewRequest(method, strings.TrimSuffix(o.platformURL, "/")+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+o.platformSecret)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s %s: HTTP %d %s", method, path, resp.StatusCode, truncateStr(string(raw), 200))
		}
		return json.Unmarshal(raw, out)
	}
	type simInbound struct {
		Stats   sim.InboundStats `json:"stats"`
		Pending int              `json:"pending"`
	}
	var before simInbound
	if err := call("GET", "/sim/inbound", nil, &before); err != nil {
		return nil, err
	}
	// phase has every writer send n messages and waits until the simulator
	// saw all of them answered; it returns how many were accepted and how
	// long that took.
	phase := func(n int, tag string) (int64, float64, error) {
		var was simInbound
		if err := call("GET", "/sim/inbound", nil, &was); err != nil {
			return 0, 0, err
		}
		start := clock.Wall()
		for lo := 0; lo < writers; lo += 1000 {
			var writes []map[string]any
			for i := lo; i < min(lo+1000, writers); i++ {
				texts := make([]string, n)
				for j := range texts {
					texts[j] = fmt.Sprintf("load %s message %d from writer %d", tag, j, i)
				}
				writes = append(writes, map[string]any{"from": user(o, i), "device_id": 1, "to": o.to, "texts": texts})
			}
			var out struct {
				IDs     []string `json:"ids"`
				Skipped int      `json:"skipped"`
			}
			rep.Requests++
			if err := call("POST", "/sim/write", map[string]any{"writes": writes}, &out); err != nil {
				return 0, 0, err
			}
			rep.Errors["unregistered_writer"] += int64(out.Skipped)
		}
		var now simInbound
		for deadline := clock.Wall().Add(o.duration); clock.Wall().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if err := call("GET", "/sim/inbound", nil, &now); err != nil {
				return 0, 0, err
			}
			if now.Pending == 0 {
				break
			}
		}
		return now.Stats.Accepted - was.Stats.Accepted, clock.Wall().Sub(start).Seconds(), nil
	}
	// First one message per writer (most open a session: a pkmsg, X3DH at
	// Herald), then the rest (replies in those sessions), timed apart.
	start := clock.Wall()
	n1, s1, err := phase(1, "first")
	if err != nil {
		return nil, err
	}
	rep.InboundFirstPerSec = float64(n1) / s1
	if per > 1 {
		n2, s2, err := phase(per-1, "reply")
		if err != nil {
			return nil, err
		}
		rep.InboundRepliesPerSec = float64(n2) / s2
	}
	var now simInbound
	if err := call("GET", "/sim/inbound", nil, &now); err != nil {
		return nil, err
	}
	rep.Accepted = now.Stats.Accepted - before.Stats.Accepted
	rep.Rejected = now.Stats.Queued - before.Stats.Queued - rep.Accepted
	rep.Failed = now.Stats.Failed - before.Stats.Failed
	rep.DeliverSeconds = clock.Wall().Sub(start).Seconds()
	rep.DeliverPerSec = float64(rep.Accepted) / rep.DeliverSeconds
	rep.IngestSeconds, rep.IngestPerSec = rep.DeliverSeconds, rep.DeliverPerSec
	if b := now.Stats.BadMessage - before.Stats.BadMessage; b > 0 {
		rep.Errors["bad_message"] = b
	}
	if r := now.Stats.Retries - before.Stats.Retries; r > 0 {
		rep.Errors["retry"] = r
	}
	return rep, nil
}

func truncateStr(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
