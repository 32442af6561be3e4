package main

import (
	"context"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func TestByteSizes(t *testing.T) {
	for in, want := range map[string]int64{"8GiB": 8 << 30, "512MiB": 512 << 20, "64KiB": 64 << 10, "65536": 65536,
		"1.5GB": 1_500_000_000, "8 GiB": 8 << 30, "8gib": 8 << 30, "-1": -1} {
		var v int64
		f := pflag.NewFlagSet("t", pflag.ContinueOnError)
		byteSizeVar(f, &v, "size", 0, true, "")
		if err := f.Parse([]string{"--size", in}); err != nil || v != want {
			t.Errorf("%q: %d, %v; want %d", in, v, err, want)
		}
	}
	for _, in := range []string{"8 gigs", "-5", "", "1e30", "-1MiB"} {
		var v int64
		f := pflag.NewFlagSet("t", pflag.ContinueOnError)
		byteSizeVar(f, &v, "size", 7, true, "")
		if err := f.Parse([]string{"--size", in}); err == nil {
			t.Errorf("%q accepted as %d", in, v)
		}
	}
	var v int64
	f := pflag.NewFlagSet("t", pflag.ContinueOnError)
	byteSizeVar(f, &v, "size", 0, false, "")
	if err := f.Parse([]string{"--size", "-1"}); err == nil {
		t.Errorf("-1 accepted where it means nothing")
	}
	for n, want := range map[int64]string{8 << 30: "8GiB", 256 << 20: "256MiB", 1000: "1000", 0: "0", -1: "-1", 3 << 40: "3TiB"} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestByteSizeFlagsOnTheCommandLine: serve takes sizes with units from
// flags and HERALD_*; a size it cannot read is a usage error (exit 2) that
// names the setting.
func TestByteSizeFlagsOnTheCommandLine(t *testing.T) {
	t.Setenv("HERALD_MIN_FREE_DISK", "12 parsecs")
	stderr := captureStderr(t, func() {
		root := &cobra.Command{Use: "herald", SilenceUsage: true, SilenceErrors: true}
		if code := run(context.Background(), root, []string{"serve", "--data", t.TempDir(), "--listen", "127.0.0.1:0", "--max-queued-bytes", "1GiB"}); code != 2 {
			t.Errorf("exit %d, want 2", code)
		}
	})
	if !strings.Contains(stderr, "min-free-disk") || !strings.Contains(stderr, "HERALD_MIN_FREE_DISK") {
		t.Fatalf("stderr: %q", stderr)
	}
	stderr = captureStderr(t, func() {
		root := &cobra.Command{Use: "herald", SilenceUsage: true, SilenceErrors: true}
		if code := run(context.Background(), root, []string{"serve", "--max-queued-bytes", "lots"}); code != 2 {
			t.Errorf("exit %d, want 2", code)
		}
	})
	if !strings.Contains(stderr, "max-queued-bytes") {
		t.Fatalf("stderr: %q", stderr)
	}
}
