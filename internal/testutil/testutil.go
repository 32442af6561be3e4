// Package testutil starts the servers tests need (as real processes, on
// loopback) and waits for them.
package testutil

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// RepoRoot returns the directory holding go.mod.
func RepoRoot(t testing.TB) string {
	dir, _ := os.Getwd()
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test directory")
		}
		dir = parent
	}
}

// ConformanceScript returns ../shared/conformance/run.sh beside the repo. When
// it or node is missing, the test is skipped locally and fails in CI (CI=true),
// where both must exist.
func ConformanceScript(t testing.TB) string {
	script := filepath.Join(RepoRoot(t), "..", "shared", "conformance", "run.sh")
	_, errScript := os.Stat(script)
	_, errNode := exec.LookPath("node")
	if errScript != nil || errNode != nil {
		msg := fmt.Sprintf("conformance platform unavailable (script: %v, node: %v)", errScript, errNode)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return script
}

// StartListening runs a server process and waits (up to timeout) for its
// "listening on http://ADDR" line. The process is killed when the test ends.
func StartListening(t testing.TB, timeout time.Duration, name string, args ...string) (baseURL string, cmd *exec.Cmd) {
	t.Helper()
	cmd = exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if i := strings.Index(line, "listening on http://"); i >= 0 {
				select {
				case found <- strings.TrimSpace(line[i+len("listening on "):]):
				default:
				}
			}
		}
	}()
	select {
	case u := <-found:
		return u, cmd
	case <-time.After(timeout):
		t.Fatalf("%s did not print 'listening on' within %v", name, timeout)
	}
	return "", nil
}

// AssertNoPlaintext fails the test if any file under dir contains a needle.
// It also fails when it read nothing (a wrong or empty directory would make
// the scan prove nothing).
func AssertNoPlaintext(t testing.TB, dir string, needles ...string) {
	t.Helper()
	files, size := 0, 0
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(p)
		files++
		size += len(b)
		for _, n := range needles {
			if strings.Contains(string(b), n) {
				t.Errorf("%s holds %q in the clear", p, n)
			}
		}
		return nil
	})
	if files == 0 || size == 0 {
		t.Fatalf("the plaintext scan of %s read %d files, %d bytes: it proves nothing", dir, files, size)
	}
}

// FlushedTombstones flushes db's memtable and returns how many tables it
// holds and how many point tombstones they carry (the tables' properties).
func FlushedTombstones(t testing.TB, db *pebble.DB) (tables int, tombstones uint64) {
	t.Helper()
	if err := db.Flush(); err != nil {
		t.Fatal(err)
	}
	levels, err := db.SSTables(pebble.WithProperties())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range levels {
		for _, tb := range l {
			tables++
			tombstones += tb.Properties.NumDeletions
		}
	}
	return tables, tombstones
}
