package main

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/heraldhq/herald/internal/node"
	"github.com/heraldhq/herald/internal/platform/sim"
	"github.com/heraldhq/herald/internal/tenant"
)

// TestLoadReportsCampaignsAndFailsWhenNothingGoes: against a real node,
// herald load prints the campaign ids and the rejection codes it got; a run
// in which every request fails, or nothing is accepted, exits 1.
func TestLoadReportsCampaignsAndFailsWhenNothingGoes(t *testing.T) {
	n, err := node.New(node.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", NoDemoBusiness: true, Out: io.Discard,
		AdminToken: "admin-token-for-tests", Sim: sim.Options{Users: 10_000, Prefix: "1555", DevicesMin: 1, DevicesMax: 1}})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	b, tok, err := n.Tenants.NewBusiness("Load", []string{"15550001001"}, "250", 1000, false)
	if err != nil {
		t.Fatal(err)
	}
	token, _ := tenant.SplitToken(tok)
	var pn string
	for id := range b.PhoneNumbers {
		pn = id
	}
	load := func(args ...string) (int, string, string) {
		var code int
		var stdout string
		stderr := captureStderr(t, func() {
			stdout = captureStdout(t, func() {
				root := &cobra.Command{Use: "herald", SilenceUsage: true, SilenceErrors: true}
				code = run(context.Background(), root, append([]string{"load", "--url", n.URL(), "--phone-number-id", pn,
					"--users", "10000", "--wait", "0"}, args...))
			})
		})
		return code, stdout, stderr
	}
	// 300 recipients against the 250 tier: 250 accepted, the rest rejected
	// with the tier's code, named.
	code, out, errOut := load("--token", token, "--recipients", "300")
	if code != 0 || !strings.Contains(out, "campaign cmp_") || !strings.Contains(out, "rejected with 139001 (Messaging tier limit reached)") {
		t.Fatalf("exit %d\n%s\n%s", code, out, errOut)
	}
	// The tier is spent: new recipients are not accepted, and that is a
	// failure.
	if code, out, errOut = load("--token", token, "--recipients", "50", "--prefix", "1666"); code != 1 || !strings.Contains(errOut, "nothing was accepted") {
		t.Fatalf("nothing accepted: exit %d\n%s\n%s", code, out, errOut)
	}
	// A wrong token: every request fails.
	if code, out, errOut = load("--token", "hrld_wrong_token", "--recipients", "10"); code != 1 || !strings.Contains(errOut, "every request failed") {
		t.Fatalf("every request failed: exit %d\n%s\n%s", code, out, errOut)
	}
}
