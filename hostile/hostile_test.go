// Package hostile runs the request-level attacks a tenant or a peer can make
// against a real `herald serve` process (its own binary, the built-in
// simulator, loopback only) and checks that it survives them and that its
// resident memory stays under a bound. Run by `make hostile`
// (HERALD_HOSTILE=1; HERALD_HOSTILE_SHORT=1 for the short version .ci/run
// uses); skipped otherwise.
package hostile

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/testutil"
)

// rssBound is what the process may hold at any check: the defaults' caches and
// memtables (~150 MB) and the messages in flight, with room for the garbage
// collector; an attack that buffered what it sent would pass it (10 unsigned
// 32 MiB events posts took +490 MB, a 300 MB webhook reply +324 MB, a
// template bomb 8 GB).
const rssBound = 400 << 20

const adminToken = "hostile-admin-token-0123456789"

type server struct {
	t    *testing.T
	base string
	cmd  *exec.Cmd
	peak int64
}

func (s *server) rss() int64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		s.t.Fatalf("herald serve is gone: %v", err)
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// check fails when the process died, is not ready, or holds too much memory.
func (s *server) check(after string) {
	s.t.Helper()
	r := s.rss()
	if r > s.peak {
		s.peak = r
	}
	if r > rssBound {
		s.t.Fatalf("after %s: RSS %d MB, over the %d MB bound", after, r>>20, rssBound>>20)
	}
	resp, err := http.Get(s.base + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		s.t.Fatalf("after %s: herald serve does not answer: %v", after, err)
	}
	resp.Body.Close()
	s.t.Logf("after %s: RSS %d MB", after, r>>20)
}

func (s *server) do(method, path, token, ct string, body []byte) (int, map[string]any) {
	req, _ := http.NewRequest(method, s.base+path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	if ct == "" {
		ct = "application/json"
	}
	req.Header.Set("Content-Type", ct)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var out map[string]any
	json.Unmarshal(raw, &out)
	return resp.StatusCode, out
}

func TestHostileRequestsAgainstAServeProcess(t *testing.T) {
	if os.Getenv("HERALD_HOSTILE") == "" {
		t.Skip("make hostile runs this (HERALD_HOSTILE=1)")
	}
	short := os.Getenv("HERALD_HOSTILE_SHORT") != ""
	dir := t.TempDir()
	bin := filepath.Join(dir, "herald")
	build := exec.Command("go", "build", "-o", bin, "./cmd/herald")
	build.Dir = testutil.RepoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	base, cmd := testutil.StartListening(t, time.Minute, bin, "serve", "--data", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0",
		"--admin-token", adminToken, "--no-demo-business", "--webhook-allow", "127.0.0.0/8", "--header-timeout", "2s",
		"--stall-timeout", "2s", "--sim-users", "10000", "--log-level", "error")
	s := &server{t: t, base: base, cmd: cmd}
	code, out := s.do("POST", "/admin/v1/businesses", adminToken, "", []byte(`{"name":"Mallory","phone_numbers":["15550009999"],"tier":"unlimited","mps":1000}`))
	if code != 200 {
		t.Fatalf("create business: %d %v", code, out)
	}
	tok := out["token"].(string)
	pn := out["phone_number_ids"].([]any)[0].(string)
	s.check("start")

	// 1. Webhook replies that lie about their size, or stream for ever.
	for _, head := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 1125899906842624\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 314572800\r\n\r\n",
	} {
		hook := testutil.HostileEndpoint(t, head, 300<<20)
		if code, out := s.do("PUT", "/v1/"+pn+"/webhook", tok, "", []byte(fmt.Sprintf(`{"url":%q,"secret":"whsecret123"}`, hook))); code != 200 {
			t.Fatalf("webhook: %d %v", code, out)
		}
		var ids []string
		for i := 0; i < 5; i++ {
			_, out := s.do("POST", "/v1/"+pn+"/messages", tok, "", []byte(fmt.Sprintf(`{"messaging_product":"whatsapp","to":"1555%07d","text":{"body":"hi"}}`, i)))
			if msgs, ok := out["messages"].([]any); ok && len(msgs) == 1 {
				ids = append(ids, msgs[0].(map[string]any)["id"].(string))
			}
		}
		// The statuses go out to the hostile endpoint, whose 2xx counts as
		// delivered: the backlog empties.
		testutil.Eventually(t, 30*time.Second, func() bool {
			for _, id := range ids {
				if _, out := s.do("GET", "/v1/messages/"+id, tok, "", nil); out["status"] == "queued" {
					return false
				}
			}
			_, st := s.do("GET", "/v1/"+pn+"/webhook", tok, "", nil)
			return len(ids) == 5 && st["backlog"] == float64(0)
		}, "the statuses of %d messages did not reach the hostile webhook", len(ids))
		s.check("a hostile webhook reply")
	}

	// 2. SSRF: metadata and link-local destinations are refused even with
	// loopback allowed.
	for _, u := range []string{"http://169.254.169.254/latest/meta-data/", "http://metadata.google.internal/", "http://user:pw@example.com/"} {
		if code, _ := s.do("PUT", "/v1/"+pn+"/webhook", tok, "", []byte(fmt.Sprintf(`{"url":%q,"secret":"whsecret123"}`, u))); code != 400 {
			t.Fatalf("webhook %s: %d, want 400", u, code)
		}
	}

	// 3. A template bomb: 819 placeholders and a variable as large as a
	// JSON upload may carry.
	huge := strings.Repeat("x", 4<<20)
	bomb := fmt.Sprintf(`{"name":"bomb","template":{"body":"%s"},"recipients":[{"to":"15550000001","vars":{"a":%q}}]}`, strings.Repeat("{{a}}", 819), huge)
	if code, out := s.do("POST", "/v1/"+pn+"/campaigns", tok, "", []byte(bomb)); code != 200 || out["accepted"] != float64(0) {
		t.Fatalf("template bomb: %d %v", code, out)
	}
	s.check("a template bomb")

	// 4. Unsigned and oversized events posts, ten at once.
	posts := 10
	if short {
		posts = 4
	}
	var wg sync.WaitGroup
	for i := 0; i < posts; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
			if err != nil {
				return
			}
			defer c.Close()
			fmt.Fprintf(c, "POST /v1/platform/events HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 32<<20)
			chunk := make([]byte, 1<<20)
			for j := 0; j < 32; j++ {
				if _, err := c.Write(chunk); err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	s.check("unsigned 32 MiB events posts")

	// 5. Slow clients: headers dripped, a body that stops.
	conns := 50
	if short {
		conns = 10
	}
	for i := 0; i < conns; i++ {
		c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST /v1/%s/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n", pn) // and no more
	}
	time.Sleep(3 * time.Second) // the attack itself: the requests stay unfinished past --header-timeout
	s.check("slow clients")

	// 6. Bodies over the limits.
	big := bytes.Repeat([]byte("a"), 10<<20)
	if code, _ := s.do("POST", "/v1/"+pn+"/messages", tok, "", big); code != 400 && code != 413 {
		t.Fatalf("a 10 MB message body: %d", code)
	}
	s.check("a 10 MB body")
	resp, err := http.Get(base + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("not ready at the end: %v", err)
	}
	resp.Body.Close()
	t.Logf("peak RSS over the attacks: %d MB (bound %d MB)", s.peak>>20, rssBound>>20)
	cmd.Process.Signal(syscall.SIGTERM)
}
