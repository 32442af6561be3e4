package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
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

// TestServeOnABusyPortExitsOneNamingTheSetting: a --listen address in use
// stops the start with exit code 1 and a message naming the setting (it used
// to panic in the cleanup of the failed start).
func TestServeOnABusyPortExitsOneNamingTheSetting(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	stderr := captureStderr(t, func() {
		root := &cobra.Command{Use: "herald", SilenceUsage: true, SilenceErrors: true}
		if code := run(context.Background(), root, []string{"serve", "--data", t.TempDir(), "--listen", ln.Addr().String()}); code != 1 {
			t.Errorf("exit code %d, want 1", code)
		}
	})
	if !strings.Contains(stderr, "invalid setting listen") {
		t.Fatalf("stderr does not name the setting: %q", stderr)
	}
	// A flag the program does not know is a usage error: exit 2.
	stderr = captureStderr(t, func() {
		root := &cobra.Command{Use: "herald", SilenceUsage: true, SilenceErrors: true}
		if code := run(context.Background(), root, []string{"serve", "--lissten", "x"}); code != 2 {
			t.Errorf("unknown flag: exit code %d, want 2", code)
		}
	})
	if !strings.Contains(stderr, "lissten") {
		t.Fatalf("unknown flag not named: %q", stderr)
	}
}

func captureStderr(t *testing.T, f func()) string { return capture(t, &os.Stderr, f) }

func captureStdout(t *testing.T, f func()) string { return capture(t, &os.Stdout, f) }

// capture returns what f writes to *file (os.Stdout or os.Stderr).
func capture(t *testing.T, file **os.File, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := *file
	*file = w
	done := make(chan string)
	go func() { b, _ := io.ReadAll(r); done <- string(b) }()
	f()
	*file = old
	w.Close()
	return <-done
}

// TestSecretFiles: --admin-token-file that cannot be read stops the start
// with exit 1 naming the setting.
func TestSecretFiles(t *testing.T) {
	stderr := captureStderr(t, func() {
		root := &cobra.Command{Use: "herald", SilenceUsage: true, SilenceErrors: true}
		if code := run(context.Background(), root, []string{"serve", "--data", t.TempDir(), "--listen", "127.0.0.1:0", "--admin-token-file", filepath.Join(t.TempDir(), "nope")}); code != 1 {
			t.Errorf("exit code %d, want 1", code)
		}
	})
	if !strings.Contains(stderr, "invalid setting admin-token-file") {
		t.Fatalf("stderr: %q", stderr)
	}
	if v, err := readSecretFile(writeFile(t, "  s3cret-value\n")); err != nil || v != "s3cret-value" {
		t.Fatalf("readSecretFile: %q %v", v, err)
	}
}

func writeFile(t *testing.T, content string) string {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLogFormats: --log-format text writes key=value lines, json one object
// per line; anything else is refused naming the setting.
func TestLogFormats(t *testing.T) {
	var text, js bytes.Buffer
	l, err := logger(&text, "info", "text")
	if err != nil {
		t.Fatal(err)
	}
	l.Info("hello", "k", "v")
	if !strings.Contains(text.String(), "msg=hello k=v") {
		t.Fatalf("text: %q", text.String())
	}
	if l, err = logger(&js, "info", "json"); err != nil {
		t.Fatal(err)
	}
	l.Info("hello", "k", "v")
	var rec map[string]any
	if err := json.Unmarshal(js.Bytes(), &rec); err != nil || rec["msg"] != "hello" || rec["k"] != "v" {
		t.Fatalf("json: %q (%v)", js.String(), err)
	}
	if _, err := logger(&text, "info", "xml"); err == nil || !strings.Contains(err.Error(), "log-format") {
		t.Fatalf("xml accepted: %v", err)
	}
}

// TestCommandLineConventions: --version prints the build; every command that
// runs has an Example in its help and takes --config; a missing required
// flag is a usage error (exit 2) naming it; shell completion is there.
func TestCommandLineConventions(t *testing.T) {
	root := &cobra.Command{Use: "herald", SilenceUsage: true, SilenceErrors: true, Version: version()}
	var out bytes.Buffer
	root.SetOut(&out)
	if code := run(context.Background(), root, []string{"--version"}); code != 0 || !strings.Contains(out.String(), "herald version") || !strings.Contains(out.String(), "go1.") {
		t.Fatalf("--version: %d %q", code, out.String())
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		if c.RunE == nil || c.Name() == "completion" || c.Parent() != nil && c.Parent().Name() == "completion" {
			return
		}
		if c.Example == "" {
			t.Errorf("%q has no Example", c.CommandPath())
		}
		if c.Flags().Lookup("config") == nil {
			t.Errorf("%q takes no --config", c.CommandPath())
		}
	}
	walk(root)
	if c, _, err := root.Find([]string{"completion", "bash"}); err != nil || c.Name() != "bash" {
		t.Fatalf("no completion command: %v", err)
	}
	stderr := captureStderr(t, func() {
		root := &cobra.Command{Use: "herald", SilenceUsage: true, SilenceErrors: true}
		if code := run(context.Background(), root, []string{"admin", "set", "--mps", "5"}); code != 2 {
			t.Errorf("a missing required flag: exit %d, want 2", code)
		}
	})
	if !strings.Contains(stderr, `"business"`) {
		t.Fatalf("the missing flag is not named: %q", stderr)
	}
}
