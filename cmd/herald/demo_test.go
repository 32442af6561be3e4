package main

import (
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestDemoSummary runs the demo small, as a user would, and checks its
// summary: totals, the simulator's proof without a failure, and separate
// latencies for sent and delivered (each timed when Herald recorded it).
func TestDemoSummary(t *testing.T) {
	var code int
	out := captureStdout(t, func() {
		root := &cobra.Command{Use: "herald", SilenceUsage: true, SilenceErrors: true}
		code = run(context.Background(), root, []string{"demo", "--recipients", "300"})
	})
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, out)
	}
	for _, want := range []string{`campaign accepted → sent +p50 +\d+ms .*when Herald recorded it`,
		`campaign accepted → delivered +p50 +\d+ms .*when Herald recorded it`,
		`campaign accepted → delivered, webhook +p50`,
		`totals \(how many reached each status\): sent \d+, delivered \d+, read \d+, failed \d+`,
		` 0 decrypt failures, 0 ordering violations, 0 plaintext mismatches`} {
		if !regexp.MustCompile(want).MatchString(out) {
			t.Errorf("the summary has no line like %q:\n%s", want, out[max(0, strings.LastIndex(out, "== Summary")):])
		}
	}
}
