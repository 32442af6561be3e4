package api_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldhq/herald/internal/inbound"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/node"
	"github.com/heraldhq/herald/internal/signal"
	"github.com/heraldhq/herald/internal/testutil"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestPrivacyScanAfterCampaign: after a campaign (accepted, rejected and
// unknown recipients, a single message, statuses), neither the data
// directory, nor the logs at debug level, nor /metrics hold a message body or
// a phone number in the clear.
func TestPrivacyScanAfterCampaign(t *testing.T) {
	var logs lockedBuffer
	var dataDir string
	e := start(t, func(c *node.Config) {
		c.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.Sim.UnknownShare = 0.2 // some unknown_user failures, so failure paths log too
		c.PlatformSecret = inboundSecret
		dataDir = c.DataDir
	})
	a := e.business("A", "15550001001", "10k")
	// A user writes to the business: body and number are sealed at rest too.
	d, _ := signal.NewDevice(1, 0)
	if _, out := postInbound(t, e, envelopes(envelope(t, d, "15553141592", "15550001001", "in-private", "PRIVATE-INBOUND-555", bundleOf(t, e, "15550001001"))), ""); results(out)["in-private"] != "accepted" {
		t.Fatalf("inbound: %v", out)
	}
	var sb strings.Builder
	sb.WriteString(`{"name":"privacy","template":{"body":"PRIVATE-BODY-4242 for {{name}}"}}` + "\n")
	var numbers []string
	for i := 0; i < 60; i++ {
		n := fmt.Sprintf("1555%07d", 31337+i*977)
		numbers = append(numbers, n)
		fmt.Fprintf(&sb, `{"to":%q,"vars":{"name":"Zed%d"}}`+"\n", n, i)
	}
	sb.WriteString(`{"to":"15550123","vars":{"name":"short"}}` + "\n") // rejected: too short
	sb.WriteString(`{"to":"15559876543","vars":{}}` + "\n")            // rejected: missing variable
	if code, out := e.do("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token, sb.String(), "application/x-ndjson"); code != 200 {
		t.Fatalf("campaign: %d %v", code, out)
	}
	if code, out := e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody("15557654321", "PRIVATE-SINGLE-777"), ""); code != 200 {
		t.Fatalf("single: %d %v", code, out)
	}
	e.waitDrained()
	resp, err := http.Get(e.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	e.n.Close()

	needles := append([]string{"PRIVATE-BODY", "PRIVATE-SINGLE", "PRIVATE-INBOUND", "15553141592", "5553141592", "Zed1", "15550123", "15559876543", "15557654321", "5557654321"}, numbers...)
	if len(logs.String()) == 0 {
		t.Fatal("no logs captured: the scan would prove nothing")
	}
	for _, n := range needles {
		if strings.Contains(logs.String(), n) {
			t.Errorf("logs hold %q", n)
		}
		if bytes.Contains(metrics, []byte(n)) {
			t.Errorf("/metrics holds %q", n)
		}
	}
	testutil.AssertNoPlaintext(t, dataDir, needles...)
}

// prefixCounts counts the records under each two-byte key prefix.
func prefixCounts(t *testing.T, db *kv.DB) map[string]int {
	t.Helper()
	it, err := db.NewIter(&pebble.IterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	out := map[string]int{}
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		out[string(k[:min(2, len(k))])]++
	}
	return out
}

// TestPhoneNumbersLeaveWithTheirMessages (invariant 11): a campaign and a
// single send with Idempotency-Keys, rejected lines, and a webhook endpoint
// that keeps failing leave numbers in idempotent answers, upload progress,
// the webhook outbox and status records. Past the messages' TTL (an injected
// clock) and the retention sweeps, no record under any prefix holds or opens
// to a phone number, and every prefix is back to its count before the
// campaign except those named below (counters and keyed HMACs).
func TestPhoneNumbersLeaveWithTheirMessages(t *testing.T) {
	clock := testutil.NewClock(time.Now())
	e := start(t, func(c *node.Config) {
		c.Now = clock.Now
		c.RetentionInterval = time.Hour
		c.PlatformSecret = inboundSecret
	})
	a := e.business("A", "15550001001", "unlimited")
	pn := a.PNs[0]
	hook, _ := failingEndpoint(t)
	if code, out := e.do("PUT", "/v1/"+pn+"/webhook", a.Token, fmt.Sprintf(`{"url":%q,"secret":"whsecret123"}`, hook), ""); code != 200 {
		t.Fatalf("webhook: %d %v", code, out)
	}
	db := e.n.DB()
	before := prefixCounts(t, db)
	var numbers []string
	var sb strings.Builder
	sb.WriteString(`{"name":"ttl","template":{"body":"hi {{name}}"},"ttl_seconds":60}` + "\n")
	for i := 0; i < 20; i++ {
		n := fmt.Sprintf("1555%07d", 42424+i*7919)
		numbers = append(numbers, n)
		fmt.Fprintf(&sb, `{"to":%q,"vars":{"name":"N%d"}}`+"\n", n, i)
	}
	numbers = append(numbers, "15559876543")
	sb.WriteString(`{"to":"15559876543","vars":{}}` + "\n") // rejected: its number is in the answer
	if code, out, _ := e.doIdemCT("/v1/"+pn+"/campaigns", a.Token, "camp-key", sb.String(), "application/x-ndjson"); code != 200 || out["accepted"] != float64(20) {
		t.Fatalf("campaign: %d %v", code, out)
	}
	numbers = append(numbers, "15557654321")
	if code, out, _ := e.doIdem("/v1/"+pn+"/messages", a.Token, "msg-key",
		`{"messaging_product":"whatsapp","to":"15557654321","text":{"body":"x"},"ttl_seconds":60}`); code != 200 {
		t.Fatalf("single: %d %v", code, out)
	}
	// A user writes to the business: the message and its webhook entry
	// hold the user's number until the inbound TTL.
	numbers = append(numbers, "15553141592")
	d, _ := signal.NewDevice(1, 0)
	if _, out := postInbound(t, e, envelopes(envelope(t, d, "15553141592", "15550001001", "in-ttl", "hello", bundleOf(t, e, "15550001001"))), ""); results(out)["in-ttl"] != "accepted" {
		t.Fatalf("inbound: %v", out)
	}
	e.waitDrained()
	scan := func() (found []string) {
		it, err := db.NewIter(&pebble.IterOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer it.Close()
		opened := 0
		for it.First(); it.Valid(); it.Next() {
			v := it.Value()
			texts := [][]byte{it.Key(), v}
			for _, off := range []int{0, 8, 9} { // sealed at the start, or after an 8-byte time or a mark and a time
				if len(v) > off {
					if p, err := e.n.Sealer.Open(v[off:]); err == nil {
						texts = append(texts, p)
						opened++
					}
				}
			}
			for _, n := range numbers {
				for _, x := range texts {
					if bytes.Contains(x, []byte(n)) {
						found = append(found, fmt.Sprintf("%q holds %s", it.Key()[:min(2, len(it.Key()))], n))
					}
				}
			}
		}
		if opened == 0 {
			t.Fatal("the scan opened no sealed record: it would prove nothing")
		}
		return found
	}
	if found := scan(); len(found) == 0 {
		t.Fatal("before the TTL no record holds a number: the scan cannot see them")
	}
	clock.Advance(inbound.TTL + time.Minute) // past every TTL: the messages' (60 s + grace) and the inbound one's
	for {
		n, err := e.n.Engine.RetentionOnce(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
	}
	e.n.Engine.Flush()
	if _, err := e.n.Uploads.Sweep(clock.Now(), 1000); err != nil {
		t.Fatal(err)
	}
	if _, err := e.n.Webhooks.Sweep(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.n.Inbound.Sweep(1000); err != nil {
		t.Fatal(err)
	}
	for _, f := range scan() {
		t.Errorf("past the TTL: %s", f)
	}
	// What may stay: keyed HMACs and counters, each named with its reason.
	mayGrow := map[string]string{
		"rL": "last contact per recipient: keyed HMAC, for the tier's moving 24 h",
		"rE": "its expiry index: keyed HMAC",
		"rC": "the business's unique-recipient count",
		"rW": "hourly quality counters",
		"qS": "the queue's sequence ceiling",
		"qO": "the queue's owner table: one business id per business that queued a message",
	}
	after := prefixCounts(t, db)
	for p, n := range after {
		if n > before[p] && mayGrow[p] == "" && !strings.HasPrefix(p, "s") {
			t.Errorf("prefix %q: %d records before the campaign, %d after its TTL", p, before[p], n)
		}
	}
}

// failingEndpoint is a webhook receiver that always answers 500.
func failingEndpoint(t *testing.T) (string, *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var posts atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		posts.Add(1)
		w.WriteHeader(500)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/hook", &posts
}

// TestCampaignNamesAndModesArePrivate: a campaign's name is sealed on disk
// (it was in clear in db/*.sst), the data directory is 0700 and its files
// 0600, and a directory with looser modes is tightened at start.
func TestCampaignNamesAndModesArePrivate(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	var dataDir string
	e := start(t, func(c *node.Config) { c.DataDir = dir; dataDir = dir })
	a := e.business("A", "15550001001", "10k")
	if code, out := e.do("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token, `{"name":"SECRET-LAUNCH-PLAN","template":{"body":"hi"},"recipients":[{"to":"15550000001"}]}`, ""); code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	e.waitDrained()
	e.n.DB().Flush()
	testutil.AssertNoPlaintext(t, dataDir, "SECRET-LAUNCH-PLAN")
	filepath.WalkDir(dataDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		info, _ := d.Info()
		if perm := info.Mode().Perm(); d.IsDir() && perm&0o077 != 0 || !d.IsDir() && perm&0o077 != 0 {
			t.Errorf("%s is %v: readable by others", p, perm)
		}
		return nil
	})
}

// TestEveryStoredPrefixIsListed: after a node has done what each record kind
// is written for (tenants, an idempotent campaign and single send, a
// webhook that fails, deliveries, the limiter's state), every key in Pebble
// starts with a prefix of kv.Prefixes, which says who owns it and what it
// holds in what form.
func TestEveryStoredPrefixIsListed(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	hook, _ := failingEndpoint(t)
	e.do("PUT", "/v1/"+a.PNs[0]+"/webhook", a.Token, fmt.Sprintf(`{"url":%q,"secret":"whsecret123"}`, hook), "")
	e.doIdemCT("/v1/"+a.PNs[0]+"/campaigns", a.Token, "k", `{"name":"c","template":{"body":"hi"}}`+"\n"+`{"to":"15550000001"}`+"\n"+`{"to":"1"}`+"\n", "application/x-ndjson")
	e.doIdem("/v1/"+a.PNs[0]+"/messages", a.Token, "m", msgBody("15550000002", "x"))
	e.waitDrained()
	e.n.Limits.Close() // persists the quality windows
	counts := prefixCounts(t, e.n.DB())
	if len(counts) < 15 {
		t.Fatalf("only %d prefixes written: the scenario does not reach the record kinds", len(counts))
	}
	it, err := e.n.DB().NewIter(&pebble.IterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if !kv.KnownPrefix(it.Key()) {
			t.Errorf("a record under %q, a prefix kv.Prefixes does not list", it.Key()[:min(2, len(it.Key()))])
		}
	}
}
