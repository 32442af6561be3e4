package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/heraldhq/herald/internal/node"
	"github.com/heraldhq/herald/internal/platform/sim"
	"github.com/heraldhq/herald/internal/tenant"
)

// TestCampaignCLI drives herald campaign against a real node: list, show,
// pause, resume, watch to the end, cancel of a done campaign (exit 1, the
// API's message), and the usage errors (exit 2). The token comes from
// HERALD_TOKEN, as a user would set it.
func TestCampaignCLI(t *testing.T) {
	n, token, pn := startNode(t, "10k", -1)
	var sb strings.Builder
	sb.WriteString(`{"name":"cli","template":{"body":"hi"}}` + "\n")
	for i := 0; i < 200; i++ {
		fmt.Fprintf(&sb, `{"to":"1555%07d"}`+"\n", i*37)
	}
	req, _ := http.NewRequest("POST", n.URL()+"/v1/"+pn+"/campaigns", strings.NewReader(sb.String()))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/x-ndjson")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	cid := strings.Split(strings.Split(string(raw), `"campaign_id":"`)[1], `"`)[0]
	t.Setenv("HERALD_TOKEN", token)
	t.Setenv("HERALD_URL", n.URL())
	cli := func(args ...string) (int, string, string) {
		var code int
		var out string
		errOut := captureStderr(t, func() {
			out = captureStdout(t, func() {
				root := &cobra.Command{Use: "herald", SilenceUsage: true, SilenceErrors: true}
				code = run(context.Background(), root, append([]string{"campaign"}, args...))
			})
		})
		return code, out, errOut
	}
	if code, out, e := cli("pause", cid); code != 0 || !strings.Contains(out, "paused") {
		t.Fatalf("pause: %d %s %s", code, out, e)
	}
	if code, out, e := cli("list", "--phone-number-id", pn); code != 0 || !strings.Contains(out, cid) || !strings.Contains(out, "paused") {
		t.Fatalf("list: %d %s %s", code, out, e)
	}
	if code, out, e := cli("show", cid); code != 0 || !strings.Contains(out, `"state": "paused"`) {
		t.Fatalf("show: %d %s %s", code, out, e)
	}
	if code, out, e := cli("resume", cid); code != 0 || !strings.Contains(out, "running") {
		t.Fatalf("resume: %d %s %s", code, out, e)
	}
	code, out, e := cli("watch", cid, "--interval", "200ms")
	if code != 0 || !strings.Contains(out, "campaign "+cid+": done") || !strings.Contains(e, "/s") {
		t.Fatalf("watch: %d\n%s\n%s", code, out, e)
	}
	if code, _, e := cli("cancel", cid); code != 1 || !strings.Contains(e, "409") || !strings.Contains(e, "is done") {
		t.Fatalf("cancel of a done campaign: %d %s", code, e)
	}
	if code, _, e := cli("show", "cmp_nope"); code != 1 || !strings.Contains(e, "404") {
		t.Fatalf("unknown campaign: %d %s", code, e)
	}
	for _, args := range [][]string{{"watch"}, {"pause", "a", "b"}, {"list"}, {"list", "--phone-number-id", pn, "--limit", "0"}, {"watch", cid, "--interval", "1ms"}} {
		if code, _, e := cli(args...); code != 2 {
			t.Errorf("%v: exit %d (%s), want 2", args, code, e)
		}
	}
	t.Setenv("HERALD_TOKEN", "")
	if code, _, e := cli("show", cid); code != 2 || !strings.Contains(e, "HERALD_TOKEN") {
		t.Fatalf("no token: %d %s", code, e)
	}
}

// startNode starts a real node (built-in simulator: 10,000 users of prefix
// 1555, one device each; unknownShare as sim.Options) with a business of
// tier, closed when the test ends; it returns the business's token and
// phone number id.
func startNode(t *testing.T, tier string, unknownShare float64) (n *node.Node, token, pn string) {
	t.Helper()
	n, err := node.New(node.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", NoDemoBusiness: true, Out: io.Discard,
		AdminToken: "admin-token-for-tests", Sim: sim.Options{Users: 10_000, Prefix: "1555", DevicesMin: 1, DevicesMax: 1, UnknownShare: unknownShare}})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	b, tok, err := n.Tenants.NewBusiness("Test", []string{"15550001001"}, tier, 1000, false)
	if err != nil {
		t.Fatal(err)
	}
	token, _ = tenant.SplitToken(tok)
	for id := range b.PhoneNumbers {
		pn = id
	}
	return n, token, pn
}
