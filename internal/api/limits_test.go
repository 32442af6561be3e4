package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/heraldhq/herald/internal/node"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/tenant"
	"github.com/heraldhq/herald/internal/testutil"
)

// rawConn dials the API for hand-written (slow) HTTP.
func rawConn(t *testing.T, e *env) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(e.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByServer waits (bounded) until the server closes c; it fails the test
// if the server keeps the connection longer than limit.
func closedByServer(t *testing.T, c net.Conn, limit time.Duration) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(limit))
	got, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("server still holds the connection after %s", limit)
	}
	return string(got)
}

// TestSlowlorisHeadersAreCutOff: a client that drips its request line and
// headers one byte at a time is disconnected at ReadTimeout, and the server
// keeps serving everyone else meanwhile.
func TestSlowlorisHeadersAreCutOff(t *testing.T) {
	e := start(t, func(c *node.Config) { c.HeaderTimeout = time.Second })
	a := e.business("A", "15550001001", "10k")
	c := rawConn(t, e)
	done := make(chan struct{})
	go func() {
		defer close(done)
		req := "POST /v1/" + a.PNs[0] + "/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + a.Token + "\r\nX-Padding: " + strings.Repeat("a", 400)
		for i := 0; i < len(req); i++ {
			if _, err := c.Write([]byte{req[i]}); err != nil {
				return // cut off: what we want
			}
			time.Sleep(50 * time.Millisecond) // the attack's pace, not a wait
		}
	}()
	// Others are served while the drip goes on.
	if code, out := e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody("15550000001", "hi"), ""); code != 200 {
		t.Fatalf("a normal request during the slowloris: %d %v", code, out)
	}
	if got := closedByServer(t, c, 15*time.Second); strings.Contains(got, " 200 ") {
		t.Fatalf("the dripped request was served: %q", got)
	}
	<-done
}

// TestStalledUploadIsCutOff: an NDJSON upload that stops sending mid-way is
// answered 408 after StallTimeout; whole batches admitted before the stall are
// reported (and durable), the unfinished batch is not enqueued.
func TestStalledUploadIsCutOff(t *testing.T) {
	e := start(t, func(c *node.Config) { c.StallTimeout = 300 * time.Millisecond })
	a := e.business("A", "15550001001", "unlimited")
	for _, tc := range []struct {
		name      string
		sent      int
		wantDepth int64
	}{{"inside the first batch", 10, 0}, {"after one whole batch", 2048 + 7, 2048}} {
		t.Run(tc.name, func(t *testing.T) {
			before := promtest.ToFloat64(e.n.Metrics.Accepted)
			c := rawConn(t, e)
			var body strings.Builder
			body.WriteString(`{"name":"stall","template":{"body":"hi"}}` + "\n")
			for i := 0; i < tc.sent; i++ {
				// Scattered numbers: a consecutive run would (rightly) trip the
				// enumeration detector and pause the number.
				fmt.Fprintf(&body, `{"to":"1555%07d"}`+"\n", (i*7919+len(tc.name)*104729)%10_000_000)
			}
			chunk := body.String()
			fmt.Fprintf(c, "POST /v1/%s/campaigns HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n",
				a.PNs[0], a.Token, len(chunk), chunk)
			// ... and then nothing more: no further chunk, no terminating chunk.
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no answer to a stalled upload: %v", err)
			}
			raw, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 408 || !strings.Contains(string(raw), "upload stalled") {
				t.Fatalf("stalled upload: %d %s", resp.StatusCode, raw)
			}
			if tc.wantDepth > 0 && !strings.Contains(string(raw), fmt.Sprintf("first %d recipients were accepted", tc.wantDepth)) {
				t.Fatalf("the answer must say how much was accepted: %s", raw)
			}
			if tc.wantDepth == 0 {
				if got := promtest.ToFloat64(e.n.Metrics.Accepted) - before; got != 0 {
					t.Fatalf("enqueued %v from an unfinished batch", got)
				}
			} else {
				// The engine is already delivering them: ask the campaign.
				m := regexp.MustCompile(`campaign (cmp_[0-9a-f]+)`).FindStringSubmatch(string(raw))
				if m == nil {
					t.Fatalf("no campaign id in %s", raw)
				}
				code, out := e.do("GET", "/v1/campaigns/"+m[1], a.Token, "", "")
				if code != 200 || out["accepted"] != float64(tc.wantDepth) {
					t.Fatalf("campaign after the stall: %d %v", code, out)
				}
			}
			closedByServer(t, c, 10*time.Second)
		})
	}
	// The server is fine afterwards.
	code, out := e.do("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token, `{"name":"ok","template":{"body":"hi"}}`+"\n"+`{"to":"15550000009"}`+"\n", "application/x-ndjson")
	if code != 200 || out["accepted"].(float64) != 1 {
		t.Fatalf("after stalls: %d %v", code, out)
	}
}

// TestDiskWatermarkRefusesWith507: below the free-space watermark every
// admitting endpoint answers 507 and enqueues nothing; delivery of what is
// queued goes on; when space returns, admission resumes by itself.
func TestDiskWatermarkRefusesWith507(t *testing.T) {
	var free atomic.Uint64
	free.Store(100 << 30)
	e := start(t, func(c *node.Config) {
		c.MinFreeBytes = 1 << 30
		c.FreeSpace = func() (uint64, error) { return free.Load(), nil }
	})
	a := e.business("A", "15550001001", "10k")
	msg := "/v1/" + a.PNs[0] + "/messages"
	code, out := e.do("POST", msg, a.Token, msgBody("15550000001", "before"), "")
	if code != 200 {
		t.Fatalf("with space: %d %v", code, out)
	}
	firstID := out["messages"].([]any)[0].(map[string]any)["id"].(string)
	free.Store(10 << 20)
	waitCode(t, e, msg, a.Token, 507)
	accepted := promtest.ToFloat64(e.n.Metrics.Accepted)
	for _, r := range []struct{ path, body, ct string }{
		{msg, msgBody("15550000002", "x"), ""},
		{"/v1/" + a.PNs[0] + "/campaigns", `{"name":"c","template":{"body":"hi"},"recipients":[{"to":"15550000004"}]}`, ""},
		{"/v1/" + a.PNs[0] + "/campaigns", `{"name":"c","template":{"body":"hi"}}` + "\n" + `{"to":"15550000005"}` + "\n", "application/x-ndjson"},
	} {
		code, out := e.do("POST", r.path, a.Token, r.body, r.ct)
		if code != 507 || !strings.Contains(fmt.Sprint(out), "disk is full") {
			t.Fatalf("%s below the watermark: %d %v", r.path, code, out)
		}
	}
	if n := promtest.ToFloat64(e.n.Metrics.Accepted); n != accepted {
		t.Fatalf("%v messages accepted below the watermark", n-accepted)
	}
	e.waitDrained() // what was accepted before is still delivered:
	if code, st := e.do("GET", "/v1/messages/"+firstID, a.Token, "", ""); code != 200 || st["status"] == "queued" || st["status"] == "failed" {
		t.Fatalf("the message accepted before the watermark: %d %v", code, st)
	}
	free.Store(100 << 30)
	waitCode(t, e, msg, a.Token, 200)
}

// waitCode posts a message until the answer is want (the watermark is re-read
// at most once a second).
func waitCode(t *testing.T, e *env, path, token string, want int) {
	t.Helper()
	i, code, out := 0, 0, map[string]any(nil)
	testutil.Until(t, 10*time.Second, func() bool {
		i++
		code, out = e.do("POST", path, token, msgBody(fmt.Sprintf("1555000%04d", 5000+i), "probe"), "")
		return code == want
	}, func() string { return fmt.Sprintf("still %d %v, want %d", code, out, want) })
}

// TestENOSPCIsRefusedAndNothingAcceptedIsLost: the disk really fills under
// Pebble (ENOSPC injected on every write while the fault is on). The request
// that hits it gets 507 (or 503 once the storage handle refuses all writes) and
// is not acknowledged; after a restart with space back, every message accepted
// before the fault ends sent or delivered, and admission works again.
func TestENOSPCIsRefusedAndNothingAcceptedIsLost(t *testing.T) {
	for _, tc := range []struct {
		name  string
		errno syscall.Errno
		want  int
	}{{"disk full", syscall.ENOSPC, 507}, {"I/O error", syscall.EIO, 503}} {
		t.Run(tc.name, func(t *testing.T) { storageFault(t, tc.errno, tc.want) })
	}
}

// storageFault: errno on every write under Pebble → the API answers want, then
// after a restart without the fault nothing accepted before it is lost.
func storageFault(t *testing.T, errno syscall.Errno, want int) {
	dir := t.TempDir()
	var full atomic.Bool
	fs := faultyFS(&full, errno)
	cfg := func(fs vfs.FS) node.Config {
		c := testConfig(dir)
		c.FS, c.Logger = fs, slog.New(slog.NewTextHandler(io.Discard, nil))
		return c
	}
	e := startNode(t, cfg(fs))
	n := e.n
	a := e.business("A", "15550001001", "10k")
	msg := "/v1/" + a.PNs[0] + "/messages"
	var ids []string
	for i := 0; i < 20; i++ {
		code, out := e.do("POST", msg, a.Token, msgBody(fmt.Sprintf("155500%05d", i), "kept"), "")
		if code != 200 {
			t.Fatalf("before the fault: %d %v", code, out)
		}
		ids = append(ids, out["messages"].([]any)[0].(map[string]any)["id"].(string))
	}
	full.Store(true)
	code, out := e.do("POST", msg, a.Token, msgBody("15550099999", "refused"), "")
	if code != want {
		t.Fatalf("write under %v: %d %v, want %d", errno, code, out, want)
	}
	code, out = e.do("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token, `{"name":"c","template":{"body":"hi"},"recipients":[{"to":"15550000004"}]}`, "")
	if code != want && code != 503 {
		t.Fatalf("campaign under %v: %d %v", errno, code, out)
	}
	if code, _ := e.do("GET", "/readyz", "", "", ""); code != 503 {
		t.Fatalf("readyz after a failed write: %d, want 503 (so a supervisor restarts Herald)", code)
	}
	n.Close()
	full.Store(false)

	// Space is back: restart on the same directory.
	n2, err := node.New(cfg(nil))
	if err != nil {
		t.Fatalf("reopen after the disk filled: %v", err)
	}
	t.Cleanup(func() { n2.Close() })
	if err := n2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e2 := &env{t: t, n: n2, base: n2.URL()}
	e2.waitDrained()
	for _, id := range ids {
		code, out := e2.do("GET", "/v1/messages/"+id, a.Token, "", "")
		if code != 200 || (out["status"] != "sent" && out["status"] != "delivered" && out["status"] != "read") {
			t.Fatalf("message %s accepted before the disk filled: %d %v", id, code, out)
		}
	}
	if code, out := e2.do("POST", msg, a.Token, msgBody("15550000100", "again"), ""); code != 200 {
		t.Fatalf("after space returned: %d %v", code, out)
	}
}

// TestIdempotentUploadResumesAfterABreak: an NDJSON upload with an
// Idempotency-Key breaks off after its first batch; the retry with the same
// key continues after the last durable line — same campaign, nothing enqueued
// twice, counts exact — and a third try replays the answer. The stored
// answers (which list rejected inputs) are sealed.
func TestIdempotentUploadResumesAfterABreak(t *testing.T) {
	var dataDir string
	e := start(t, func(c *node.Config) { c.StallTimeout = 300 * time.Millisecond; dataDir = c.DataDir })
	a := e.business("A", "15550001001", "unlimited")
	header := `{"name":"resume","template":{"body":"Hi {{name}}"}}`
	var lines []string
	lines = append(lines, header, `{"to":"15557770001","vars":{}}`, `{"to":"12","vars":{"name":"x"}}`) // 2 rejected
	for i := 0; i < 3000; i++ {
		lines = append(lines, fmt.Sprintf(`{"to":"1555%07d","vars":{"name":"n%d"}}`, (i*7919+4242)%100_000, i))
	}
	lines = append(lines, `{"to":"1555","vars":{"name":"y"}}`) // rejected in the second attempt only
	full := strings.Join(lines, "\n") + "\n"
	post := func(body string) (int, http.Header, map[string]any) {
		req, _ := http.NewRequest("POST", e.base+"/v1/"+a.PNs[0]+"/campaigns", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+a.Token)
		req.Header.Set("Content-Type", "application/x-ndjson")
		req.Header.Set("Idempotency-Key", "resume-1")
		status, hdr, raw := e.exchange(req, []byte(body))
		var out map[string]any
		json.Unmarshal(raw, &out)
		return status, hdr, out
	}

	// First attempt: 2,500 lines, then the client stalls.
	c := rawConn(t, e)
	part := strings.Join(lines[:2500], "\n") + "\n"
	fmt.Fprintf(c, "POST /v1/%s/campaigns HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/x-ndjson\r\nIdempotency-Key: resume-1\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n",
		a.PNs[0], a.Token, len(part), part)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 408 {
		t.Fatalf("first attempt: %v %v", err, resp)
	}
	first, _ := io.ReadAll(resp.Body)
	firstCID := regexp.MustCompile(`cmp_[0-9a-f]+`).FindString(string(first))
	c.Close()

	// Same key, another header: refused while the first upload is unfinished.
	if code, _, out := post(`{"name":"other","template":{"body":"Hi {{name}}"}}` + "\n" + lines[10] + "\n"); code != 400 {
		t.Fatalf("same key, other header: %d %v", code, out)
	}

	code, hdr, out := post(full)
	if code != 200 {
		t.Fatalf("resumed upload: %d %v", code, out)
	}
	if hdr.Get("Idempotent-Resumed-After-Line") == "" {
		t.Fatalf("the retry did not resume: %v", hdr)
	}
	if out["accepted"] != float64(3000) || out["rejected_count"] != float64(3) {
		t.Fatalf("counts after resuming: %v", out)
	}
	cid := out["campaign_id"].(string)
	if cid != firstCID || firstCID == "" {
		t.Fatalf("the resumed upload is campaign %s, the broken one was %q", cid, firstCID)
	}
	if n := promtest.ToFloat64(e.n.Metrics.Accepted); n != 3000 {
		t.Fatalf("Herald accepted %v messages in all for 3,000 recipients", n)
	}
	// The queue holds each recipient once: a re-admitted line would show as
	// more than 3,000 queued + sent (no waiting for delivery: under the race
	// detector on 2 cores that takes minutes; delivery has its own tests).
	code, camp := e.do("GET", "/v1/campaigns/"+cid, a.Token, "", "")
	counts, _ := camp["counts"].(map[string]any)
	total := 0.0
	for _, k := range []string{"queued", "sent", "delivered", "read", "failed"} {
		total += counts[k].(float64)
	}
	if code != 200 || camp["accepted"] != float64(3000) || total != 3000 {
		t.Fatalf("campaign after the resumed upload (a re-admitted line would count twice): %d %v", code, camp)
	}
	checkCampaignView(t, camp)
	code2, hdr2, out2 := post(full)
	if code2 != 200 || hdr2.Get("Idempotent-Replayed") != "true" || out2["campaign_id"] != cid {
		t.Fatalf("replay: %d %v %v", code2, hdr2, out2)
	}
	e.n.Close()
	testutil.AssertNoPlaintext(t, dataDir, "15557770001")
}

// TestStorageFaultRecoversInProcess: under node.Supervise (what `herald
// serve` runs), a failed write poisons the storage handle; once the fault
// clears the node is reopened in process on the same data directory, nothing
// acknowledged is lost, and admission works again — no outside restart.
func TestStorageFaultRecoversInProcess(t *testing.T) {
	dir := t.TempDir()
	var broken atomic.Bool
	cfg := testConfig(dir)
	cfg.FS, cfg.Logger = faultyFS(&broken, syscall.EIO), slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithCancel(context.Background())
	var cur atomic.Pointer[node.Node]
	var starts atomic.Int32
	done := make(chan error, 1)
	go func() {
		done <- node.Supervise(ctx, cfg, 50*time.Millisecond, func(n *node.Node) { cur.Store(n); starts.Add(1) })
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Supervise: %v", err)
		}
	}()
	env := func() *env {
		testutil.Eventually(t, 20*time.Second, func() bool { return cur.Load() != nil }, "node did not start")
		n := cur.Load()
		return &env{t: t, n: n, base: n.URL()}
	}
	e := env()
	a := e.business("A", "15550001001", "10k")
	msg := "/v1/" + a.PNs[0] + "/messages"
	var ids []string
	for i := 0; i < 10; i++ {
		code, out := e.do("POST", msg, a.Token, msgBody(fmt.Sprintf("155500%05d", i), "kept"), "")
		if code != 200 {
			t.Fatalf("before the fault: %d %v", code, out)
		}
		ids = append(ids, out["messages"].([]any)[0].(map[string]any)["id"].(string))
	}
	broken.Store(true)
	if code, out := e.do("POST", msg, a.Token, msgBody("15550099999", "refused"), ""); code != 503 {
		t.Fatalf("write under EIO: %d %v, want 503", code, out)
	}
	broken.Store(false) // the fault clears
	testutil.Until(t, 30*time.Second, func() bool {
		if starts.Load() < 2 {
			return false
		}
		e2 := env()
		if code, _ := e2.do("GET", "/readyz", "", "", ""); code != 200 {
			return false
		}
		e = e2
		return true
	}, func() string { return fmt.Sprintf("not back after the fault cleared (starts %d)", starts.Load()) })
	if code, out := e.do("POST", msg, a.Token, msgBody("15550000100", "again"), ""); code != 200 {
		t.Fatalf("after recovery: %d %v", code, out)
	}
	e.waitDrained()
	for _, id := range ids {
		code, out := e.do("GET", "/v1/messages/"+id, a.Token, "", "")
		if code != 200 || (out["status"] != "sent" && out["status"] != "delivered" && out["status"] != "read") {
			t.Fatalf("message %s accepted before the fault: %d %v", id, code, out)
		}
	}
}

// faultyFS fails every write, sync and file creation under Pebble with errno
// while on is set.
func faultyFS(on *atomic.Bool, errno syscall.Errno) vfs.FS {
	return errorfs.Wrap(vfs.Default, errorfs.InjectorFunc(func(op errorfs.Op) error {
		switch op.Kind {
		case errorfs.OpFileWrite, errorfs.OpFileWriteAt, errorfs.OpFileSync, errorfs.OpFileSyncData, errorfs.OpFileSyncTo,
			errorfs.OpCreate, errorfs.OpFilePreallocate, errorfs.OpReuseForWrite:
			if on.Load() {
				return &os.PathError{Op: "write", Path: op.Path, Err: errno}
			}
		}
		return nil
	}))
}

// TestEnumeratingBatchIsRefusedBeforeEnqueue: a campaign upload whose
// admission batch walks consecutive numbers is refused line by line (131048,
// the flag named) before any of it is enqueued; the clean batch uploaded
// before it stays accepted, and the integrity view says why.
func TestEnumeratingBatchIsRefusedBeforeEnqueue(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "unlimited")
	var body strings.Builder
	body.WriteString(`{"name":"enum","template":{"body":"hi"}}` + "\n")
	for i := 0; i < 2048; i++ { // one whole clean batch first
		fmt.Fprintf(&body, `{"to":"1555%07d"}`+"\n", (i*7919+104729)%10_000_000)
	}
	for i := 0; i < 300; i++ { // then 300 consecutive numbers
		fmt.Fprintf(&body, `{"to":"1777%07d"}`+"\n", 1000+i)
	}
	code, out := e.do("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token, body.String(), "application/x-ndjson")
	if code != 200 {
		t.Fatalf("upload: %d %v", code, out)
	}
	if out["accepted"] != float64(2048) || out["rejected_count"] != float64(300) {
		t.Fatalf("want the clean 2048 accepted and the 300 refused: %v", out)
	}
	rej := out["rejected"].([]any)
	first := rej[0].(map[string]any)
	if first["code"] != float64(131048) || !strings.Contains(first["message"].(string), "sequential_enumeration") || first["line"] != float64(2050) {
		t.Fatalf("refusal does not name the flag or the line: %v", first)
	}
	code, out = e.do("GET", "/v1/"+a.PNs[0]+"/integrity", a.Token, "", "")
	flags, _ := out["flags"].([]any)
	if code != 200 || len(flags) == 0 || flags[0].(map[string]any)["name"] != "sequential_enumeration" {
		t.Fatalf("integrity view: %d %v", code, out)
	}
	if d := e.depth(); d > 2048 {
		t.Fatalf("queue holds %d messages: part of the refused batch was enqueued", d)
	}
}

// TestReadyzSaysWhyWhileThePlatformIsUnreachable: /readyz answers 503 with
// the reason while the platform does not answer (/healthz stays 200), and
// 200 with the simulator.
func TestReadyzSaysWhyWhileThePlatformIsUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	e := start(t, func(c *node.Config) { c.PlatformURL, c.PlatformSecret = dead, "sekret" })
	get := func(path string) (int, string) {
		resp, err := http.Get(e.base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "platform is unreachable") {
		t.Fatalf("readyz with the platform down: %d %s", code, body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("healthz must stay 200: %d", code)
	}
	ok := start(t)
	resp, err := http.Get(ok.base + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("readyz with the simulator: %v %v", resp, err)
	}
	resp.Body.Close()
}

// TestTemplateExpansionIsBounded: a template of 819 placeholders and a
// recipient whose variable is 4 MiB (8 GB expanded, before) is refused for
// that line with the limit named, quickly and without the memory; too many
// or too large variables are refused as well; other lines go on.
func TestTemplateExpansionIsBounded(t *testing.T) {
	e := start(t, func(c *node.Config) {})
	a := e.business("A", "15550001001", "unlimited")
	huge := strings.Repeat("x", 4<<20)
	var sb strings.Builder
	sb.WriteString(`{"name":"t","template":{"body":"` + strings.Repeat("{{a}}", 819) + `"}}` + "\n")
	fmt.Fprintf(&sb, `{"to":"15550000001","vars":{"a":%q}}`+"\n", huge[:4000]) // 819 × 4,000 characters
	sb.WriteString(`{"to":"15550000002","vars":{"a":"ok"}}` + "\n")
	var many strings.Builder
	many.WriteString(`{"to":"15550000003","vars":{`)
	for i := 0; i < 150; i++ {
		if i > 0 {
			many.WriteString(",")
		}
		fmt.Fprintf(&many, `"v%d":"x"`, i)
	}
	many.WriteString("}}\n")
	sb.WriteString(many.String())
	code, out := e.do("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token, sb.String(), "application/x-ndjson")
	if code != 200 || out["accepted"] != float64(1) {
		t.Fatalf("upload: %d %v", code, out)
	}
	msgs := map[float64]string{}
	for _, r := range out["rejected"].([]any) {
		rj := r.(map[string]any)
		msgs[rj["line"].(float64)] = rj["message"].(string)
	}
	if !strings.Contains(msgs[2], "expands to more than 4096") || !strings.Contains(msgs[4], "at most 100") {
		t.Fatalf("refusals do not name the limit: %v", msgs)
	}
	// JSON uploads take whole bodies: the 4 MiB value goes there.
	body := fmt.Sprintf(`{"name":"t","template":{"body":"{{a}}{{a}}"},"recipients":[{"to":"15550000004","vars":{"a":%q}}]}`, huge)
	code, out = e.do("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token, body, "")
	if code != 200 || out["accepted"] != float64(0) || !strings.Contains(fmt.Sprint(out["rejected"]), "at most 4096") {
		t.Fatalf("a 4 MiB variable: %d %v", code, out)
	}
}

// TestUnsignedOrHugeEventsAreRefusedUnread: an events post without a
// signature is refused before its body is read (the connection is closed;
// the server does not wait for the 32 MiB it announced), one announcing more
// than 4 MiB too, and more than 10,000 events in one signed post is 413.
func TestUnsignedOrHugeEventsAreRefusedUnread(t *testing.T) {
	e := start(t, func(c *node.Config) { c.PlatformSecret = "events-secret-for-tests" })
	for _, hdr := range []string{"", "X-Platform-Signature: sha256=00\r\n"} {
		c := rawConn(t, e)
		fmt.Fprintf(c, "POST /v1/platform/events HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", hdr, 32<<20)
		c.Write(make([]byte, 16<<10)) // then nothing more (the server pre-reads at most 8 KiB before the handler)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		status := make([]byte, 12)
		if _, err := io.ReadFull(c, status); err != nil {
			t.Fatalf("no answer before the body (header %q): %v", hdr, err)
		}
		want := "413"
		if hdr == "" {
			want = "401"
		}
		if string(status[9:12]) != want {
			t.Fatalf("header %q: %q, want %s", hdr, status, want)
		}
	}
	var sb strings.Builder
	sb.WriteString(`{"events":[`)
	for i := 0; i < 10_001; i++ {
		if i > 0 {
			sb.WriteString(",")
		}
		sb.WriteString(`{"type":"delivered","id":"x","user":"1","device_id":1}`)
	}
	sb.WriteString("]}")
	req, _ := http.NewRequest("POST", e.base+"/v1/platform/events", strings.NewReader(sb.String()))
	req.Header.Set("X-Platform-Signature", platform.Sign([]byte("events-secret-for-tests"), []byte(sb.String())))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Fatalf("10,001 events: %d", resp.StatusCode)
	}
}

// TestSlowBodyIsCutOff: a request that sends 7 of the 100 bytes it announced
// and then nothing is cut off after the stall timeout (it held a connection
// for 5 minutes before), and a client address cannot hold more than
// MaxConnsPerIP connections.
func TestSlowBodyIsCutOff(t *testing.T) {
	e := start(t, func(c *node.Config) { c.StallTimeout = 500 * time.Millisecond; c.MaxConnsPerIP = 4 })
	a := e.business("A", "15550001001", "10k")
	c := rawConn(t, e)
	fmt.Fprintf(c, "POST /v1/%s/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"to\":", a.PNs[0], a.Token)
	start := time.Now()
	closedByServer(t, c, 10*time.Second)
	if d := time.Since(start); d > 8*time.Second {
		t.Fatalf("a stalled body held the connection for %v", d)
	}
	var conns []net.Conn
	for i := 0; i < 6; i++ {
		conns = append(conns, rawConn(t, e))
	}
	refused := 0
	for _, c := range conns {
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		b := make([]byte, 12)
		if _, err := io.ReadFull(c, b); err != nil || string(b[9:12]) != "200" {
			refused++
		}
	}
	if refused < 2 {
		t.Fatalf("6 connections from one address with a cap of 4: %d refused", refused)
	}
}

// TestTokenRevokedMidUploadStopsIt: the token is checked again at every
// admission batch: revoked while an upload streams, the rest is refused (401,
// saying how much was accepted before), and nothing after the revocation is
// enqueued.
func TestTokenRevokedMidUploadStopsIt(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "unlimited")
	if a.TokID == "" {
		_, tid := tenant.SplitToken(a.Token)
		a.TokID = tid
	}
	c := rawConn(t, e)
	fmt.Fprintf(c, "POST /v1/%s/campaigns HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n", a.PNs[0], a.Token)
	chunk := func(s string) { fmt.Fprintf(c, "%x\r\n%s\r\n", len(s), s) }
	var sb strings.Builder
	sb.WriteString(`{"name":"r","template":{"body":"hi"}}` + "\n")
	for i := 0; i < 2048+10; i++ { // one whole batch, and a bit
		fmt.Fprintf(&sb, `{"to":"1555%07d"}`+"\n", (i*7919+104729)%10_000_000)
	}
	chunk(sb.String())
	// The first batch commits while the next is read (its count comes later).
	testutil.Eventually(t, 10*time.Second, func() bool { return e.depth() > 0 || e.n.Sim.Stats().Envelopes > 0 }, "the first batch enqueued")
	if code, out := e.do("DELETE", "/admin/v1/businesses/"+a.ID+"/tokens/"+a.TokID, "admin-token-for-tests", "", ""); code != 200 {
		t.Fatalf("revoke: %d %v", code, out)
	}
	sb.Reset()
	for i := 0; i < 3000; i++ {
		fmt.Fprintf(&sb, `{"to":"1556%07d"}`+"\n", (i*7919+104729)%10_000_000)
	}
	chunk(sb.String())
	c.Write([]byte("0\r\n\r\n"))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 401 || !strings.Contains(string(raw), "revoked") || !strings.Contains(string(raw), "first 2048 recipients") {
		t.Fatalf("after the revocation: %d %s", resp.StatusCode, raw)
	}
	if got := promtest.ToFloat64(e.n.Metrics.Accepted); got != 2048 {
		t.Fatalf("%v accepted, want the 2048 before the revocation", got)
	}
}

// TestMetricsOnTheirOwnAddress: with --metrics-listen, /metrics is served
// there and not on the API (where any client could read it).
func TestMetricsOnTheirOwnAddress(t *testing.T) {
	e := start(t, func(c *node.Config) { c.MetricsListen = "127.0.0.1:0" })
	resp, err := http.Get(e.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("/metrics on the API: %d", resp.StatusCode)
	}
	resp, err = http.Get("http://" + e.n.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), "herald_messages_accepted_total") {
		t.Fatalf("/metrics on its address: %d", resp.StatusCode)
	}
}

// TestOneBusinessCannotTakeAnothersQueueShare: while the platform is down
// (every request 503, so accepted messages stay queued: the real limiter,
// queue and retries run), business A fills its default share of the queue (a
// quarter of --max-queued-bytes) and gets 429 saying so, for single sends
// and campaigns; business B is not affected. The admin API shows A's share
// and use, refuses a share that is too small, and a larger share lets A
// send again. A restart counts the same bytes again.
func TestOneBusinessCannotTakeAnothersQueueShare(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.MaxQueuedBytes = 1 << 20
	cfg.Sim.Status503Rate = 1
	e := startNode(t, cfg)
	n := e.n
	a := e.business("A", "15550001001", "10k")
	b := e.business("B", "15550001002", "10k")
	rnd := rand.New(rand.NewPCG(1, 2))
	text := func() string { // little for the compressor to take away
		const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
		var sb strings.Builder
		for range 4000 {
			sb.WriteByte(letters[rnd.IntN(len(letters))])
		}
		return sb.String()
	}
	var refused map[string]any
	var hdr http.Header
	sent := 0
	for i := 0; i < 1000 && refused == nil; i++ {
		code, out, h := e.doH("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody(fmt.Sprintf("155500%05d", i), text()), "", nil)
		switch code {
		case 200:
			sent++
		case 429:
			refused, hdr = out, h
		default:
			t.Fatalf("send %d: %d %v", i, code, out)
		}
	}
	if refused == nil || sent < 10 {
		t.Fatalf("A was never refused (sent %d)", sent)
	}
	msg := errMsg(refused)
	if errCode(refused) != 130429 || !strings.Contains(msg, "max_queued_bytes 262144") || hdr.Get("Retry-After") == "" {
		t.Fatalf("the refusal does not say it is the business's share: %v %v", refused, hdr)
	}
	view := func(id string) map[string]any {
		code, out := e.do("GET", "/admin/v1/businesses/"+id, "admin-token-for-tests", "", "")
		if code != 200 {
			t.Fatalf("admin view: %d %v", code, out)
		}
		return out
	}
	va := view(a.ID)
	used := va["queued_bytes"].(float64)
	if va["max_queued_bytes"].(float64) != 262144 || va["max_queued_bytes_default"] != true || used > 262144 || used < 262144-16<<10 {
		t.Fatalf("A's view: %v", va)
	}
	// B, with the same default share, is not affected: a single send and a campaign.
	if code, out := e.do("POST", "/v1/"+b.PNs[0]+"/messages", b.Token, msgBody("15550090001", text()), ""); code != 200 {
		t.Fatalf("B was refused while A is at its share: %d %v", code, out)
	}
	camp := `{"name":"b","template":{"body":"hello"},"recipients":[{"to":"15550090002"},{"to":"15550090003"}]}`
	if code, out := e.do("POST", "/v1/"+b.PNs[0]+"/campaigns", b.Token, camp, ""); code != 200 || out["accepted"].(float64) != 2 {
		t.Fatalf("B's campaign: %d %v", code, out)
	}
	// A's campaign of the same size as the refused send is refused too,
	// nothing accepted (a smaller one could still fit).
	bigCamp := `{"name":"a","template":{"body":"` + text() + `"},"recipients":[{"to":"15550090002"},{"to":"15550090003"}]}`
	code, out := e.do("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token, bigCamp, "")
	if msg := errMsg(out); code != 429 || !strings.Contains(msg, "share of the queue") {
		t.Fatalf("A's campaign at its share: %d %v", code, out)
	}
	if got := view(a.ID)["queued_bytes"].(float64); got != used {
		t.Fatalf("A's refused campaign queued %v bytes", got-used)
	}
	// The admin API: a share too small, or not a number, is refused naming
	// the field; a larger one lets A send again.
	for _, bad := range []string{`{"max_queued_bytes":100}`, `{"max_queued_bytes":-5}`, `{"max_queued_bytes":"big"}`} {
		code, out := e.do("PATCH", "/admin/v1/businesses/"+a.ID, "admin-token-for-tests", bad, "")
		if msg := errMsg(out); code != 400 || !strings.Contains(msg, "max_queued_bytes") || strings.HasPrefix(msg, "tenant") {
			t.Fatalf("PATCH %s: %d %v (the message says what was wrong, not where in Herald)", bad, code, out)
		}
	}
	code, out = e.do("PATCH", "/admin/v1/businesses/"+a.ID, "admin-token-for-tests", `{"max_queued_bytes":2097152}`, "")
	if code != 200 || out["max_queued_bytes"].(float64) != 2097152 || out["max_queued_bytes_default"] != false {
		t.Fatalf("PATCH: %d %v", code, out)
	}
	if code, out := e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody("15550080001", text()), ""); code != 200 {
		t.Fatalf("A with a larger share: %d %v", code, out)
	}
	before := view(a.ID)["queued_bytes"].(float64)
	n.Close()
	e = startNode(t, cfg)
	defer e.n.Close()
	if after := view(a.ID)["queued_bytes"].(float64); after != before {
		t.Fatalf("A's queued bytes: %v before the restart, %v after", before, after)
	}
}
