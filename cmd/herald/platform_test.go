package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// A profile path that cannot be created is a configuration error naming the
// setting, found before the simulator listens.
func TestPlatformBadCPUProfilePathNamesTheSetting(t *testing.T) {
	cmd := platformCmd()
	cmd.SetArgs([]string{"--listen", "127.0.0.1:0", "--users", "10",
		"--cpuprofile", filepath.Join(t.TempDir(), "no-such-dir", "cpu.prof")})
	err := cmd.ExecuteContext(context.Background())
	if err == nil || !strings.Contains(err.Error(), "invalid setting cpuprofile") {
		t.Fatalf("want an error naming cpuprofile, got %v", err)
	}
}
