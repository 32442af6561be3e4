package api_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/heraldhq/herald/internal/node"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/platform/sim"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/internal/webhook"
)

type env struct {
	t     *testing.T
	n     *node.Node
	base  string
	clock *testutil.Clock // the node's, when the test injected one
}

type business struct {
	ID    string   `json:"business_id"`
	Token string   `json:"token"`
	TokID string   `json:"token_id"`
	PNs   []string `json:"phone_number_ids"`
}

func start(t *testing.T, tweak ...func(*node.Config)) *env {
	t.Helper()
	cfg := testConfig(t.TempDir())
	for _, f := range tweak {
		f(&cfg)
	}
	e := startNode(t, cfg)
	t.Cleanup(func() { e.n.Close() })
	return e
}

// startNode starts a node of cfg (the caller closes it).
func startNode(t *testing.T, cfg node.Config) *env {
	t.Helper()
	n, err := node.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, n: n, base: n.URL()}
}

// testConfig is a node on loopback with the built-in simulator (100,000
// users of prefix 1555, 1-2 devices, all registered).
func testConfig(dir string) node.Config {
	return node.Config{DataDir: dir, Listen: "127.0.0.1:0", NoDemoBusiness: true, Out: io.Discard,
		WebhookAllow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}, // the tests' webhook endpoints listen on loopback
		AdminToken:   "admin-token-for-tests", Sim: sim.Options{Users: 100_000, Prefix: "1555", DevicesMin: 1, DevicesMax: 2, UnknownShare: -1, ReadShare: -1,
			RecordBodies: true}}
}

func (e *env) do(method, path, token, body, ct string) (int, map[string]any) {
	e.t.Helper()
	code, out, _ := e.doH(method, path, token, body, ct, nil)
	return code, out
}

// doH is do with extra request headers; it returns the answer's headers too.
func (e *env) doH(method, path, token, body, ct string, headers map[string]string) (int, map[string]any, http.Header) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.base+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if ct == "" {
		ct = "application/json"
	}
	req.Header.Set("Content-Type", ct)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	status, hdr, raw := e.exchange(req, []byte(body))
	var out map[string]any
	json.Unmarshal(raw, &out)
	return status, out, hdr
}

// exchange sends req (its body is body) and checks the exchange against
// the OpenAPI description.
func (e *env) exchange(req *http.Request, body []byte) (int, http.Header, []byte) {
	e.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	checkSpec(e.t, req, body, resp.StatusCode, resp.Header, raw)
	return resp.StatusCode, resp.Header, raw
}

func (e *env) business(name, phone, tier string) business {
	e.t.Helper()
	code, out := e.do("POST", "/admin/v1/businesses", "admin-token-for-tests",
		fmt.Sprintf(`{"name":%q,"phone_numbers":[%q],"tier":%q,"mps":1000}`, name, phone, tier), "")
	if code != 200 {
		e.t.Fatalf("create business: %d %v", code, out)
	}
	var b business
	raw, _ := json.Marshal(out)
	json.Unmarshal(raw, &b)
	return b
}

func errCode(out map[string]any) int {
	e, _ := out["error"].(map[string]any)
	c, _ := e["code"].(float64)
	return int(c)
}

func errMsg(out map[string]any) string {
	e, _ := out["error"].(map[string]any)
	m, _ := e["message"].(string)
	return m
}

func msgBody(to, text string) string {
	return fmt.Sprintf(`{"messaging_product":"whatsapp","to":%q,"type":"text","text":{"body":%q}}`, to, text)
}

func (e *env) depth() int64 { n, _ := e.n.Queue.Depth(); return n }

func (e *env) waitDrained() { e.waitDrainedWithin(2 * time.Minute) }

// waitDrainedWithin waits (minutes: loaded CI machines, race detector).
func (e *env) waitDrainedWithin(d time.Duration) {
	testutil.Until(e.t, d, func() bool { return e.depth() == 0 && e.n.Engine.InFlight() == 0 },
		func() string { return fmt.Sprintf("queue not drained: %d left", e.depth()) })
	e.n.Engine.Flush()
}

// TestTenancyEveryEndpoint walks every business endpoint with no token, a bad
// token, and another business's token: 401, 401 and 404, never data.
func TestTenancyEveryEndpoint(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	b := e.business("B", "15550001002", "10k")
	code, out := e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody("+1 555 000 0001", "hello"), "")
	if code != 200 {
		t.Fatalf("send: %d %v", code, out)
	}
	msgID := out["messages"].([]any)[0].(map[string]any)["id"].(string)
	code, out = e.do("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token, `{"name":"c","template":{"body":"hi"},"recipients":[{"to":"15550000002"}]}`, "")
	if code != 200 {
		t.Fatalf("campaign: %d %v", code, out)
	}
	campID := out["campaign_id"].(string)
	endpoints := []struct{ method, path, body string }{
		{"POST", "/v1/" + a.PNs[0] + "/messages", msgBody("15550000003", "x")},
		{"POST", "/v1/" + a.PNs[0] + "/campaigns", `{"name":"c","template":{"body":"hi"},"recipients":[{"to":"15550000004"}]}`},
		{"GET", "/v1/campaigns/" + campID, ""},
		{"GET", "/v1/messages/" + msgID, ""},
		{"PUT", "/v1/" + a.PNs[0] + "/webhook", `{"url":"http://127.0.0.1:1/x","secret":"secret123"}`},
		{"GET", "/v1/" + a.PNs[0] + "/webhook", ""},
		{"DELETE", "/v1/" + a.PNs[0] + "/webhook", ""},
		{"GET", "/v1/" + a.PNs[0] + "/integrity", ""},
	}
	// Compare what Herald ever accepted, not the queue depth: delivery of the
	// two accepted messages runs meanwhile and lowers the depth.
	before := promtest.ToFloat64(e.n.Metrics.Accepted)
	for _, ep := range endpoints {
		for _, tc := range []struct {
			token string
			want  int
		}{{"", 401}, {"hrld_not-a-real-token", 401}, {"garbage", 401}, {b.Token, 404}} {
			code, out := e.do(ep.method, ep.path, tc.token, ep.body, "")
			if code != tc.want {
				t.Errorf("%s %s with token %q: got %d %v, want %d", ep.method, ep.path, tc.token, code, out, tc.want)
			}
			raw, _ := json.Marshal(out)
			if strings.Contains(string(raw), a.PNs[0]) || strings.Contains(string(raw), "15550001001") || strings.Contains(string(raw), msgID) {
				t.Errorf("%s %s leaked A's data to %q: %s", ep.method, ep.path, tc.token, raw)
			}
		}
	}
	if after := promtest.ToFloat64(e.n.Metrics.Accepted); after != before {
		t.Fatalf("refused requests enqueued %v messages", after-before)
	}
	// The owner sees its own.
	if code, out := e.do("GET", "/v1/messages/"+msgID, a.Token, "", ""); code != 200 || out["id"] != msgID {
		t.Fatalf("owner: %d %v", code, out)
	}
	// Revocation takes effect at once.
	if code, _ := e.do("DELETE", "/admin/v1/businesses/"+a.ID+"/tokens/"+a.TokID, "admin-token-for-tests", "", ""); code != 200 {
		t.Fatal("revoke failed")
	}
	if code, _ := e.do("GET", "/v1/messages/"+msgID, a.Token, "", ""); code != 401 {
		t.Fatalf("revoked token still works: %d", code)
	}
	// Admin API needs the admin token.
	for _, tok := range []string{"", "admin-token-for-testsX", a.Token} {
		if code, _ := e.do("POST", "/admin/v1/businesses", tok, `{"name":"x","phone_numbers":["15550009999"]}`, ""); code != 401 {
			t.Fatalf("admin with %q: %d", tok, code)
		}
	}
}

func TestSingleMessageValidationChangesNothing(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	path := "/v1/" + a.PNs[0] + "/messages"
	cases := []struct {
		name, body string
		code, api  int
	}{
		{"bad phone", msgBody("12345", "x"), 400, 131009},
		{"letters in phone", msgBody("+1 555 abc 0001", "x"), 400, 131009},
		{"empty body", msgBody("15550000001", ""), 400, 131009},
		{"body too long", msgBody("15550000001", strings.Repeat("é", 4097)), 400, 131009},
		{"invalid utf-8", "{\"messaging_product\":\"whatsapp\",\"to\":\"15550000001\",\"text\":{\"body\":\"\xff\xfe\"}}", 400, 131009},
		{"wrong type", `{"messaging_product":"whatsapp","to":15550000001,"text":{"body":"x"}}`, 400, 100},
		{"ttl too short", `{"messaging_product":"whatsapp","to":"15550000001","text":{"body":"x"},"ttl_seconds":5}`, 400, 131009},
		{"ttl too long", `{"messaging_product":"whatsapp","to":"15550000001","text":{"body":"x"},"ttl_seconds":2592001}`, 400, 131009},
		{"ttl not a number", `{"messaging_product":"whatsapp","to":"15550000001","text":{"body":"x"},"ttl_seconds":"soon"}`, 400, 100},
		{"image", `{"messaging_product":"whatsapp","to":"15550000001","type":"image","text":{"body":"x"}}`, 400, 131051},
		{"no product", `{"to":"15550000001","text":{"body":"x"}}`, 400, 100},
		{"not json", `hello`, 400, 100},
		{"trailing data", msgBody("15550000001", "x") + `{}`, 400, 100},
		{"ttl that overflows", `{"messaging_product":"whatsapp","to":"15550000001","text":{"body":"x"},"ttl_seconds":36028797018964028}`, 400, 131009},
		{"recipient_type group", `{"messaging_product":"whatsapp","recipient_type":"group","to":"15550000001","text":{"body":"x"}}`, 400, 100},
	}
	for _, tc := range cases {
		code, out := e.do("POST", path, a.Token, tc.body, "")
		if code != tc.code || errCode(out) != tc.api {
			t.Errorf("%s: got %d/%d %v, want %d/%d", tc.name, code, errCode(out), out, tc.code, tc.api)
		}
		if msg, _ := out["error"].(map[string]any)["message"].(string); msg == "" {
			t.Errorf("%s: no clear message", tc.name)
		}
	}
	if e.depth() != 0 {
		t.Fatalf("rejected requests enqueued %d messages", e.depth())
	}
	// The Cloud API's own optional fields are known and accepted.
	if code, out := e.do("POST", path, a.Token, `{"messaging_product":"whatsapp","recipient_type":"individual","to":"15550000001","text":{"body":"x","preview_url":true}}`, ""); code != 200 {
		t.Fatalf("Cloud API fields: %d %v", code, out)
	}
	// Oversized body: refused after at most the 4 MiB prefetch, never buffered whole.
	conn, err := net.Dial("tcp", e.n.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", path, a.Token, 33<<20)
	go func() { // the server answers and hangs up before all of it is sent
		chunk := make([]byte, 1<<20)
		for i := 0; i < 33; i++ {
			if _, err := conn.Write(chunk); err != nil {
				return
			}
		}
	}()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	status := make([]byte, 12)
	io.ReadFull(conn, status)
	if string(status[9:12]) != "413" {
		t.Fatalf("oversized body: %q", status)
	}
}

func TestNDJSONCampaignLinesIdempotencyAndDelivery(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	var sb strings.Builder
	sb.WriteString(`{"name":"spring","template":{"body":"Hi {{name}}, code {{code}}"},"ttl_seconds":3600}` + "\n")
	sb.WriteString(`{"to":"15550000010","vars":{"name":"Ana","code":"1"}}` + "\n")                          // 2 ok
	sb.WriteString(`{"to":"12","vars":{"name":"Bad","code":"1"}}` + "\n")                                   // 3 bad phone
	sb.WriteString(`{"to":"15550000011","vars":{"name":"NoCode"}}` + "\n")                                  // 4 missing var
	sb.WriteString(`not json at all` + "\n")                                                                // 5 malformed
	sb.WriteString("\n")                                                                                    // 6 blank: skipped
	sb.WriteString(`{"to":"15550000012","vars":{"name":"{{code}}","code":"7"}}` + "\n")                     // 7 ok, no re-expansion
	sb.WriteString(`{"to":"15550000013","vars":{"name":` + `"` + strings.Repeat("x", 70000) + `"}}` + "\n") // 8 too long
	sb.WriteString(`{"to":["15550000014"]}` + "\n")                                                         // 9 wrong type
	sb.WriteString(`{"to":"15550000015","vars":{"name":"Zed","code":"9"}}`)                                 // 10 ok, no final newline
	code, out := e.do("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token, sb.String(), "application/x-ndjson")
	if code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	if out["accepted"].(float64) != 3 || out["rejected_count"].(float64) != 5 {
		t.Fatalf("accepted/rejected: %v", out)
	}
	wantLines := map[float64]float64{3: 131009, 4: 131008, 5: 100, 8: 100, 9: 100}
	for _, r := range out["rejected"].([]any) {
		rj := r.(map[string]any)
		if want, ok := wantLines[rj["line"].(float64)]; !ok || rj["code"].(float64) != want || rj["message"] == "" {
			t.Errorf("unexpected rejection %v", rj)
		}
	}
	cid := out["campaign_id"].(string)
	e.waitDrained()
	if st := e.n.Sim.Stats(); st.Decrypted == 0 || len(st.Failures) != 0 {
		t.Fatalf("sim: %+v", st)
	}
	code, camp := e.do("GET", "/v1/campaigns/"+cid, a.Token, "", "")
	counts := camp["counts"].(map[string]any)
	if code != 200 || counts["queued"].(float64) != 0 || counts["failed"].(float64) != 0 {
		t.Fatalf("campaign view: %v", camp)
	}
	checkCampaignView(t, camp)
	// Idempotency: the retry answers the first result and enqueues nothing.
	body := `{"name":"i","template":{"body":"hi"},"recipients":[{"to":"15550000020"},{"to":"15550000021"}]}`
	do := func() (int, string) {
		req, _ := http.NewRequest("POST", e.base+"/v1/"+a.PNs[0]+"/campaigns", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+a.Token)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Idempotency-Key", "upload-42")
		code, _, b := e.exchange(req, []byte(body))
		return code, string(b)
	}
	before := promtest.ToFloat64(e.n.Metrics.Accepted)
	c1, b1 := do()
	c2, b2 := do()
	if c1 != 200 || c2 != 200 || b1 != b2 {
		t.Fatalf("idempotent replay differs: %d %s / %d %s", c1, b1, c2, b2)
	}
	// A replay that enqueued again would make new message ids, which the
	// simulator would not count as duplicates: count what was accepted, and
	// what each device decrypted.
	if got := promtest.ToFloat64(e.n.Metrics.Accepted) - before; got != 2 {
		t.Fatalf("the upload and its replay accepted %v messages, want 2", got)
	}
	e.waitDrained()
	for _, u := range []string{"15550000020", "15550000021"} {
		for d, rs := range e.n.Sim.Received(u) {
			if len(rs) != 1 {
				t.Fatalf("device %d of a recipient decrypted %d messages, want 1", d, len(rs))
			}
		}
	}
}

func TestPlatformEventsMustBeSigned(t *testing.T) {
	e := start(t, func(c *node.Config) { c.PlatformSecret = "events-secret-for-tests" })
	a := e.business("A", "15550001001", "10k")
	_, out := e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody("15550000001", "x"), "")
	id := out["messages"].([]any)[0].(map[string]any)["id"].(string)
	e.waitDrained()
	body := fmt.Sprintf(`{"events":[{"type":"read","id":%q,"user":"15550000001","device_id":1}]}`, id)
	for _, sig := range []string{"", "sha256=00", platform.Sign([]byte("wrong"), []byte(body))} {
		req, _ := http.NewRequest("POST", e.base+"/v1/platform/events", strings.NewReader(body))
		if sig != "" {
			req.Header.Set("X-Platform-Signature", sig)
		}
		resp, _ := http.DefaultClient.Do(req)
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Fatalf("signature %q: %d", sig, resp.StatusCode)
		}
	}
	e.n.Engine.Flush()
	_, st := e.do("GET", "/v1/messages/"+id, a.Token, "", "")
	if st["status"] == "read" {
		t.Fatal("an unsigned event changed a status")
	}
	// The positive control: the same body signed with the real secret does.
	req, _ := http.NewRequest("POST", e.base+"/v1/platform/events", strings.NewReader(body))
	req.Header.Set("X-Platform-Signature", platform.Sign([]byte("events-secret-for-tests"), []byte(body)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("a signed event: %d", resp.StatusCode)
	}
	e.n.Engine.Flush()
	if _, st := e.do("GET", "/v1/messages/"+id, a.Token, "", ""); st["status"] != "read" {
		t.Fatalf("a signed read event did not change the status: %v", st)
	}
}

func TestWebhooksAreSignedAndDelivered(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	var mu sync.Mutex
	got := map[string]string{}
	bad := 0
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		if r.Header.Get("X-Hub-Signature-256") != webhook.Sign("whsecret123", body) {
			bad++
			w.WriteHeader(401)
			return
		}
		sts, _ := webhook.ParsePayload(body)
		for _, s := range sts {
			got[s.ID+"/"+s.Status] = s.RecipientID
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()
	if code, out := e.do("PUT", "/v1/"+a.PNs[0]+"/webhook", a.Token, fmt.Sprintf(`{"url":"http://%s/hook","secret":"whsecret123"}`, ln.Addr()), ""); code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	if code, _ := e.do("PUT", "/v1/"+a.PNs[0]+"/webhook", a.Token, `{"url":"ftp://x","secret":"short"}`, ""); code != 400 {
		t.Fatal("bad webhook accepted")
	}
	_, out := e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody("15550000001", "x"), "")
	id := out["messages"].([]any)[0].(map[string]any)["id"].(string)
	testutil.Until(t, 20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		_, sent := got[id+"/sent"]
		_, delivered := got[id+"/delivered"]
		return sent && delivered // no read events: the simulator's read share is off here
	}, func() string { mu.Lock(); defer mu.Unlock(); return fmt.Sprintf("webhooks: %v (bad %d)", got, bad) })
	mu.Lock()
	if got[id+"/sent"] != "15550000001" || bad != 0 {
		mu.Unlock()
		t.Fatalf("sent webhook: %v bad %d", got, bad)
	}
	mu.Unlock()
	// GET shows the webhook without its secret, and its backlog.
	code, st := e.do("GET", "/v1/"+a.PNs[0]+"/webhook", a.Token, "", "")
	if code != 200 || st["url"] != fmt.Sprintf("http://%s/hook", ln.Addr()) || st["secret"] != nil || st["backlog"] == nil {
		t.Fatalf("GET webhook: %d %v", code, st)
	}
	b := e.business("B", "15550001002", "10k")
	if code, _ := e.do("GET", "/v1/"+b.PNs[0]+"/webhook", b.Token, "", ""); code != 404 {
		t.Fatalf("GET of a webhook never set: %d", code)
	}
	if code, _ := e.do("GET", "/v1/"+a.PNs[0]+"/webhook", b.Token, "", ""); code != 404 {
		t.Fatalf("GET of another business's webhook: %d", code)
	}
}

func TestMetricsHaveNoNumbers(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody("15557770001", "secret body 123"), "") // not a user: fails
	e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody("15550000001", "hello"), "")
	e.waitDrained()
	testutil.Eventually(t, 30*time.Second, func() bool { return promtest.ToFloat64(e.n.Metrics.Delivered) >= 1 }, "the message to a user was not delivered")
	resp, err := http.Get(e.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	s := string(b)
	if !strings.Contains(s, "herald_messages_accepted_total 2") || !strings.Contains(s, "herald_queue_depth") {
		t.Fatalf("metrics missing: %.400s", s)
	}
	// The families an operator graphs: build info, request durations by
	// route pattern (never by value: no phone number id), acceptance to
	// sent/delivered; counters end in _total.
	for _, want := range []string{`herald_build_info{go_version="go`, `herald_http_request_duration_seconds_count{method="POST",route="/v1/{pn}/messages"} 2`,
		"herald_accepted_to_sent_seconds_count 1", "herald_accepted_to_delivered_seconds_count 1", "herald_purges_total", "herald_queue_dead_letters_total"} {
		if !strings.Contains(s, want) {
			t.Errorf("metrics lack %s: %s", want, grepLines(s, "accepted_to|messages_sent|messages_delivered"))
		}
	}
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, "# TYPE herald_") && strings.HasSuffix(line, " counter") && !strings.HasSuffix(strings.Fields(line)[2], "_total") {
			t.Errorf("a counter not named _total: %s", line)
		}
		if strings.Contains(line, a.PNs[0]) {
			t.Errorf("metrics name a phone number id: %s", line)
		}
	}
	for _, needle := range []string{"15557770001", "5557770001", "secret body", "15550001001"} {
		if strings.Contains(s, needle) {
			t.Fatalf("metrics expose %q", needle)
		}
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		r, err := http.Get(e.base + p)
		if err != nil || r.StatusCode != 200 {
			t.Fatalf("%s: %v", p, err)
		}
		r.Body.Close()
	}
}

// TestUnknownFieldsAndParametersAreRefused: a field or query parameter Herald
// does not know is refused (400, code 100, named), never ignored: a campaign
// posted with ?dry_run=true and a send_at it did not understand used to be
// sent at once. Nothing is enqueued.
func TestUnknownFieldsAndParametersAreRefused(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	pn := a.PNs[0]
	cases := []struct {
		name, method, path, token, body, ct, want string
	}{
		{"message field", "POST", "/v1/" + pn + "/messages", a.Token, `{"messaging_product":"whatsapp","to":"15550000001","text":{"body":"x"},"whatever":{"a":1}}`, "", `"whatever"`},
		{"nested field", "POST", "/v1/" + pn + "/messages", a.Token, `{"messaging_product":"whatsapp","to":"15550000001","text":{"body":"x","bdy":"y"}}`, "", `"bdy"`},
		{"campaign header", "POST", "/v1/" + pn + "/campaigns", a.Token, `{"name":"c","template":{"body":"hi"},"sent_at":"2030-01-01T00:00:00Z","recipients":[{"to":"15550000001"}]}`, "", `"sent_at"`},
		{"ndjson header", "POST", "/v1/" + pn + "/campaigns", a.Token, `{"name":"c","template":{"body":"hi"},"quiet":true}` + "\n" + `{"to":"15550000001"}` + "\n", "application/x-ndjson", `"quiet"`},
		{"query on a campaign", "POST", "/v1/" + pn + "/campaigns?dry_runn=true", a.Token, `{"name":"c","template":{"body":"hi"},"recipients":[{"to":"15550000001"}]}`, "", `"dry_runn"`},
		{"query on a message", "POST", "/v1/" + pn + "/messages?x=1", a.Token, msgBody("15550000001", "x"), "", `"x"`},
		{"webhook field", "PUT", "/v1/" + pn + "/webhook", a.Token, `{"url":"https://example.com/h","secret":"s","extra":1}`, "", `"extra"`},
		{"admin field", "POST", "/admin/v1/businesses", "admin-token-for-tests", `{"name":"B","phone_numbers":["15550002002"],"tier":"2k","color":"red"}`, "", `"color"`},
		{"admin query", "GET", "/admin/v1/businesses/" + a.ID + "?page=2", "admin-token-for-tests", "", "", `"page"`},
	}
	for _, tc := range cases {
		code, out := e.do(tc.method, tc.path, tc.token, tc.body, tc.ct)
		msg, _ := out["error"].(map[string]any)["message"].(string)
		if code != 400 || errCode(out) != 100 || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: got %d/%d %q, want 400/100 naming %s", tc.name, code, errCode(out), msg, tc.want)
		}
	}
	// A recipient line with an unknown field is refused alone, by line.
	code, out := e.do("POST", "/v1/"+pn+"/campaigns", a.Token, `{"name":"c","template":{"body":"hi"}}`+"\n"+`{"to":"15550000001","var":{"a":"b"}}`+"\n"+`{"to":"15550000002"}`+"\n", "application/x-ndjson")
	rej, _ := out["rejected"].([]any)
	if code != 200 || out["accepted"] != float64(1) || len(rej) != 1 || !strings.Contains(rej[0].(map[string]any)["message"].(string), `"var"`) {
		t.Fatalf("recipient line with an unknown field: %d %v", code, out)
	}
	if e.depth() > 1 {
		t.Fatalf("refused requests enqueued: depth %d", e.depth())
	}
}

// doIdem is do with an Idempotency-Key; it returns the replay header too.
func (e *env) doIdem(path, token, key, body string) (int, map[string]any, string) {
	e.t.Helper()
	return e.doIdemCT(path, token, key, body, "application/json")
}

func (e *env) doIdemCT(path, token, key, body, ct string) (int, map[string]any, string) {
	e.t.Helper()
	code, out, h := e.doH("POST", path, token, body, ct, map[string]string{"Idempotency-Key": key})
	return code, out, h.Get("Idempotent-Replayed")
}

// TestSingleSendIdempotencyKey: a single send retried with the same
// Idempotency-Key (a client that timed out) is accepted once: the retry gets
// the first answer, the same message id, and nothing more is enqueued. The
// same key with another body is a conflict; another business's same key is
// its own.
func TestSingleSendIdempotencyKey(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	b := e.business("B", "15550001002", "10k")
	pathA, pathB := "/v1/"+a.PNs[0]+"/messages", "/v1/"+b.PNs[0]+"/messages"
	body := msgBody("15550000001", "your code is 1234")
	code, first, replayed := e.doIdem(pathA, a.Token, "k-1", body)
	if code != 200 || replayed != "" {
		t.Fatalf("first send: %d %v %q", code, first, replayed)
	}
	id := first["messages"].([]any)[0].(map[string]any)["id"]
	code, again, replayed := e.doIdem(pathA, a.Token, "k-1", body)
	if code != 200 || replayed != "true" || again["messages"].([]any)[0].(map[string]any)["id"] != id {
		t.Fatalf("retry: %d %v %q (want the first answer, id %v)", code, again, replayed, id)
	}
	if code, out, _ := e.doIdem(pathA, a.Token, "k-1", msgBody("15550000001", "another text")); code != 409 || errCode(out) != 100 {
		t.Fatalf("same key, other body: %d %v", code, out)
	}
	// B's same key is B's: a new message, not A's answer.
	code, outB, replayed := e.doIdem(pathB, b.Token, "k-1", body)
	if code != 200 || replayed != "" || outB["messages"].([]any)[0].(map[string]any)["id"] == id {
		t.Fatalf("another business's same key: %d %v %q", code, outB, replayed)
	}
	e.waitDrained()
	code, st := e.do("GET", "/v1/messages/"+id.(string), a.Token, "", "")
	if code != 200 {
		t.Fatalf("status: %d %v", code, st)
	}
	// Exactly two messages were ever accepted (A's once, B's once).
	if got := promtest.ToFloat64(e.n.Metrics.Accepted); got != 2 {
		t.Fatalf("accepted %v messages, want 2", got)
	}
}

// TestCampaignBodiesReachEveryDeviceFilledIn: every device of every recipient
// decrypts exactly the body its template and variables make, once, in
// order (the simulator's record of what it decrypted).
func TestCampaignBodiesReachEveryDeviceFilledIn(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	var sb strings.Builder
	sb.WriteString(`{"name":"bodies","template":{"body":"Hi {{name}}, your code is {{code}}."}}` + "\n")
	want := map[string]string{}
	for i := 0; i < 30; i++ {
		n := fmt.Sprintf("1555%07d", 7000+i*31)
		name, code := fmt.Sprintf("Ana-%d", i), fmt.Sprintf("%04d", i*37)
		fmt.Fprintf(&sb, `{"to":%q,"vars":{"name":%q,"code":%q}}`+"\n", n, name, code)
		want[n] = "Hi " + name + ", your code is " + code + "."
	}
	if code, out := e.do("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token, sb.String(), "application/x-ndjson"); code != 200 || out["accepted"] != float64(30) {
		t.Fatalf("campaign: %d %v", code, out)
	}
	e.waitDrained()
	for n, body := range want {
		got := e.n.Sim.Received(n)
		for _, d := range e.n.Sim.Devices(n) {
			if len(got[d]) != 1 || got[d][0].BodySHA != sha256.Sum256([]byte(body)) {
				t.Fatalf("device %d of a recipient: %d messages decrypted, want one with the body %q", d, len(got[d]), body)
			}
		}
	}
	if st := e.n.Sim.Stats(); st.OrderingViolations != 0 || st.Mismatches != 0 || len(st.Failures) != 0 {
		t.Fatalf("simulator: %+v", st)
	}
}

// TestCampaignIdempotencyKeysAreTheBusinesss: two businesses uploading with
// the same Idempotency-Key each get their own campaign; neither is answered
// with the other's (which would also say whom the other wrote to).
func TestCampaignIdempotencyKeysAreTheBusinesss(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	b := e.business("B", "15550001002", "10k")
	up := func(pn, token, to string) (int, map[string]any, string) {
		return e.doIdemCT("/v1/"+pn+"/campaigns", token, "same-key", `{"name":"c","template":{"body":"hi"}}`+"\n"+`{"to":"`+to+`"}`+"\n"+`{"to":"123"}`+"\n", "application/x-ndjson")
	}
	code, outA, _ := up(a.PNs[0], a.Token, "15550000011")
	if code != 200 {
		t.Fatalf("A: %d %v", code, outA)
	}
	code, outB, replayed := up(b.PNs[0], b.Token, "15550000022")
	if code != 200 || replayed != "" || outB["campaign_id"] == outA["campaign_id"] {
		t.Fatalf("B got A's answer: %d %v (replayed %q)", code, outB, replayed)
	}
	// Each business's retry replays its own.
	if _, again, replayed := up(a.PNs[0], a.Token, "15550000011"); replayed != "true" || again["campaign_id"] != outA["campaign_id"] {
		t.Fatalf("A's retry: %v %q", again, replayed)
	}
	if code, _ := e.do("GET", "/v1/campaigns/"+outA["campaign_id"].(string), b.Token, "", ""); code != 404 {
		t.Fatalf("B reads A's campaign: %d", code)
	}
}

// TestWebhooksCarryOnlyTheirBusinesssStatuses: two businesses with webhooks
// each send; each endpoint receives its own business's statuses and never a
// status of the other's messages.
func TestWebhooksCarryOnlyTheirBusinesssStatuses(t *testing.T) {
	e := start(t)
	type sink struct {
		mu  sync.Mutex
		ids map[string]bool
	}
	serve := func(secret string) (*sink, string) {
		k := &sink{ids: map[string]bool{}}
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			if r.Header.Get("X-Hub-Signature-256") != webhook.Sign(secret, body) {
				w.WriteHeader(401)
				return
			}
			sts, _ := webhook.ParsePayload(body)
			k.mu.Lock()
			for _, s := range sts {
				k.ids[s.ID] = true
			}
			k.mu.Unlock()
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		return k, "http://" + ln.Addr().String() + "/hook"
	}
	a := e.business("A", "15550001001", "10k")
	b := e.business("B", "15550001002", "10k")
	sa, ua := serve("secret-of-a")
	sb, ub := serve("secret-of-b")
	e.do("PUT", "/v1/"+a.PNs[0]+"/webhook", a.Token, fmt.Sprintf(`{"url":%q,"secret":"secret-of-a"}`, ua), "")
	e.do("PUT", "/v1/"+b.PNs[0]+"/webhook", b.Token, fmt.Sprintf(`{"url":%q,"secret":"secret-of-b"}`, ub), "")
	mine := map[string]map[string]bool{"A": {}, "B": {}}
	for i := 0; i < 5; i++ {
		for name, biz := range map[string]business{"A": a, "B": b} {
			_, out := e.do("POST", "/v1/"+biz.PNs[0]+"/messages", biz.Token, msgBody(fmt.Sprintf("1555000%04d", 100+i), "x"), "")
			mine[name][out["messages"].([]any)[0].(map[string]any)["id"].(string)] = true
		}
	}
	e.waitDrained()
	testutil.Eventually(t, 20*time.Second, func() bool {
		sa.mu.Lock()
		defer sa.mu.Unlock()
		sb.mu.Lock()
		defer sb.mu.Unlock()
		return len(sa.ids) >= 5 && len(sb.ids) >= 5
	}, "both endpoints get their statuses")
	for name, k := range map[string]*sink{"A": sa, "B": sb} {
		k.mu.Lock()
		for id := range k.ids {
			if !mine[name][id] {
				t.Errorf("%s's webhook received a status of a message that is not %s's", name, name)
			}
		}
		k.mu.Unlock()
	}
}

// TestWrongMethodIs405WithAllow: a path the API serves, asked with a method
// it does not take, answers 405 with Allow and the error object (404 is for
// paths the API does not serve); no token is needed to learn that.
func TestWrongMethodIs405WithAllow(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	pn := a.PNs[0]
	for _, tc := range []struct {
		method, path, allow string
	}{
		{"PATCH", "/v1/" + pn + "/webhook", "DELETE"},
		{"GET", "/v1/" + pn + "/messages", "POST"},
		{"PUT", "/v1/messages/abc", "GET"},
		{"GET", "/v1/platform/events", "POST"},
		{"POST", "/admin/v1/businesses/" + a.ID, "PATCH"},
	} {
		code, out, h := e.doH(tc.method, tc.path, "", "", "", nil)
		if code != 405 || !strings.Contains(h.Get("Allow"), tc.allow) || errCode(out) != 100 || !strings.Contains(errMsg(out), tc.allow) {
			t.Errorf("%s %s: %d Allow %q %v, want 405 allowing %s", tc.method, tc.path, code, h.Get("Allow"), out, tc.allow)
		}
	}
	for _, path := range []string{"/v1/" + pn + "/nothing", "/v2/x", "/admin/v1/nothing", "/v1/" + pn + "/messages/extra"} {
		if code, out := e.do("GET", path, a.Token, "", ""); code != 404 || errCode(out) == 0 {
			t.Errorf("GET %s: %d %v, want 404 with the error object", path, code, out)
		}
	}
}

func grepLines(s, re string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if regexp.MustCompile(re).MatchString(l) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// checkCampaignView: counts (where each message is now) add up to accepted;
// totals (how many ever reached each status) are at least the counts past
// them, and sent + failed = accepted once nothing is queued; failures is an
// object, never null; started_at ≤ finished_at.
func checkCampaignView(t *testing.T, camp map[string]any) {
	t.Helper()
	counts, _ := camp["counts"].(map[string]any)
	totals, _ := camp["totals"].(map[string]any)
	if counts == nil || totals == nil {
		t.Fatalf("campaign view without counts or totals: %v", camp)
	}
	var sum float64
	for _, k := range []string{"queued", "sent", "delivered", "read", "failed", "canceled"} {
		v, ok := counts[k].(float64)
		if !ok {
			t.Fatalf("counts lack %s: %v", k, counts)
		}
		sum += v
	}
	if sum != camp["accepted"].(float64) {
		t.Fatalf("counts add up to %v, accepted %v: %v", sum, camp["accepted"], counts)
	}
	if counts["queued"].(float64) == 0 && totals["sent"].(float64)+totals["failed"].(float64)+totals["canceled"].(float64) != camp["accepted"].(float64) {
		t.Fatalf("totals sent + failed + canceled != accepted with nothing queued: %v", totals)
	}
	if totals["delivered"].(float64) < counts["delivered"].(float64)+counts["read"].(float64) || totals["read"].(float64) < counts["read"].(float64) {
		t.Fatalf("totals below the counts past them: %v %v", totals, counts)
	}
	if _, ok := camp["failures"].(map[string]any); !ok {
		t.Fatalf("failures is not an object: %v", camp["failures"])
	}
	if f, ok := camp["finished_at"].(string); ok {
		st, _ := camp["started_at"].(string)
		if st == "" || st > f {
			t.Fatalf("started_at %q, finished_at %q", st, f)
		}
	}
}

// TestCampaignViewWhenEveryMessageFails: a campaign whose every recipient is
// unknown to the platform finishes with failed counts and totals, failures by
// code, and a started_at no later than its finished_at (nothing was sent).
func TestCampaignViewWhenEveryMessageFails(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	body := `{"name":"nobody","template":{"body":"hi"},"recipients":[{"to":"15559000001"},{"to":"15559000002"},{"to":"15559000003"}]}`
	code, out := e.do("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token, body, "")
	if code != 200 || out["accepted"] != float64(3) {
		t.Fatalf("%d %v", code, out)
	}
	e.waitDrained()
	_, camp := e.do("GET", "/v1/campaigns/"+out["campaign_id"].(string), a.Token, "", "")
	checkCampaignView(t, camp)
	counts, totals := camp["counts"].(map[string]any), camp["totals"].(map[string]any)
	if counts["failed"] != float64(3) || totals["failed"] != float64(3) || totals["sent"] != float64(0) || camp["started_at"] == nil {
		t.Fatalf("campaign view: %v", camp)
	}
	if f := camp["failures"].(map[string]any); f["131026"] != float64(3) {
		t.Fatalf("failures: %v", f)
	}
}

// TestWebhookVerifyAndDelete: PUT with a verify_token runs the Cloud API
// handshake (400, nothing changed, when the endpoint does not echo the
// challenge); the token is never shown; DELETE removes the webhook.
func TestWebhookVerifyAndDelete(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	pn := a.PNs[0]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("hub.verify_token") == "my-verify-token" {
			w.Write([]byte(r.URL.Query().Get("hub.challenge")))
			return
		}
		http.Error(w, "forbidden", 403)
	}))
	defer srv.Close()
	path := "/v1/" + pn + "/webhook"
	code, out := e.do("PUT", path, a.Token, fmt.Sprintf(`{"url":%q,"secret":"whsecret123","verify_token":"wrong-token"}`, srv.URL+"/h"), "")
	if code != 400 || !strings.Contains(errMsg(out), "verification") {
		t.Fatalf("a failed handshake: %d %v", code, out)
	}
	if code, _ := e.do("GET", path, a.Token, "", ""); code != 404 {
		t.Fatalf("a failed handshake set the webhook: %d", code)
	}
	code, out = e.do("PUT", path, a.Token, fmt.Sprintf(`{"url":%q,"secret":"whsecret123","verify_token":"my-verify-token"}`, srv.URL+"/h"), "")
	if code != 200 || out["verified"] != true {
		t.Fatalf("handshake: %d %v", code, out)
	}
	code, out, _ = e.doH("GET", path, a.Token, "", "", nil)
	if raw, _ := json.Marshal(out); code != 200 || strings.Contains(string(raw), "my-verify-token") || strings.Contains(string(raw), "whsecret123") {
		t.Fatalf("GET shows a secret: %d %s", code, raw)
	}
	if code, _ := e.do("DELETE", path, a.Token, "", ""); code != 200 {
		t.Fatalf("delete: %d", code)
	}
	if code, _ := e.do("GET", path, a.Token, "", ""); code != 404 {
		t.Fatalf("after delete: %d", code)
	}
	if code, _ := e.do("DELETE", path, a.Token, "", ""); code != 404 {
		t.Fatalf("delete twice: %d", code)
	}
}

// TestAdminListsBusinessesWithoutTokens: GET /admin/v1/businesses lists every
// business with its phone numbers and token ids, never a token; only with the
// admin token.
func TestAdminListsBusinessesWithoutTokens(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	b := e.business("B", "15550001002", "2k")
	code, out := e.do("GET", "/admin/v1/businesses", "admin-token-for-tests", "", "")
	list, _ := out["businesses"].([]any)
	if code != 200 || len(list) != 2 {
		t.Fatalf("%d %v", code, out)
	}
	raw, _ := json.Marshal(out)
	for _, tok := range []string{a.Token, b.Token} {
		if strings.Contains(string(raw), tok) {
			t.Fatal("the list shows a token")
		}
	}
	if !strings.Contains(string(raw), a.TokID) || !strings.Contains(string(raw), b.PNs[0]) {
		t.Fatalf("the list lacks token ids or phone numbers: %s", raw)
	}
	if code, _ := e.do("GET", "/admin/v1/businesses", a.Token, "", ""); code != 401 {
		t.Fatalf("a business token lists businesses: %d", code)
	}
}
