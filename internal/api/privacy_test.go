package api_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/heraldhq/herald/internal/node"
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
		dataDir = c.DataDir
	})
	a := e.business("A", "15550001001", "10k")
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

	needles := append([]string{"PRIVATE-BODY", "PRIVATE-SINGLE", "Zed1", "15550123", "15559876543", "15557654321", "5557654321"}, numbers...)
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
