package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/heraldhq/herald/internal/node"
	"github.com/heraldhq/herald/internal/platform/sim"
	"github.com/heraldhq/herald/internal/testutil"
)

// TestLoadReportsCampaignsAndFailsWhenNothingGoes: against a real node,
// herald load prints the campaign ids and the rejection codes it got; a run
// in which every request fails, or nothing is accepted, exits 1.
func TestLoadReportsCampaignsAndFailsWhenNothingGoes(t *testing.T) {
	n, token, pn := startNode(t, "250", 0)
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

// TestLoadInbound: herald load --mode inbound makes the simulator's users
// write to a business of a real node and reports what Herald accepted.
func TestLoadInbound(t *testing.T) {
	n, err := node.New(node.Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Out: io.Discard, PlatformSecret: "load-secret",
		AdminToken: "admin-token-for-tests", Sim: sim.Options{Users: 10_000, Prefix: "1555", DevicesMin: 1, DevicesMax: 1, UnknownShare: -1}})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// The demo business's number: its prekeys went to the platform at start.
	var biz string
	for _, b := range n.Tenants.All() {
		for _, d := range b.PhoneNumbers {
			biz = d
		}
	}
	run1 := func(args ...string) (int, string) {
		var code int
		out := captureStdout(t, func() {
			root := &cobra.Command{Use: "herald", SilenceUsage: true, SilenceErrors: true}
			code = run(context.Background(), root, append([]string{"load", "--mode", "inbound"}, args...))
		})
		return code, out
	}
	testutil.Until(t, 20*time.Second, func() bool {
		code, _ := run1("--platform-url", n.Sim.URL(), "--platform-secret", "load-secret", "--to", biz, "--count", "300", "--users", "100", "--duration", "30s")
		return code == 0
	}, func() string { return "load --mode inbound never succeeded" })
	code, out := run1("--platform-url", n.Sim.URL(), "--platform-secret", "load-secret", "--to", biz, "--count", "300", "--users", "100", "--duration", "30s")
	if code != 0 || !strings.Contains(out, "users' messages accepted by Herald") || !strings.Contains(out, ": 300,") {
		t.Fatalf("exit %d\n%s", code, out)
	}
	if code, _ := run1("--to", biz); code != 2 {
		t.Fatalf("no --platform-url: exit %d, want 2", code)
	}
}
