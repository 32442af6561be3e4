package api_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/node"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/internal/webhook"
)

// inboxSink is a business's webhook endpoint: it checks signatures and
// counts every user message it gets, by platform id.
type inboxSink struct {
	mu     sync.Mutex
	got    map[string][]webhook.Message
	badSig int
}

func (s *inboxSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.Header.Get("X-Hub-Signature-256") != webhook.Sign("inbound-secret", body) {
		s.badSig++
		w.WriteHeader(401)
		return
	}
	msgs, _ := webhook.ParseMessages(body)
	for _, m := range msgs {
		s.got[m.ID] = append(s.got[m.ID], m)
	}
}

func (s *inboxSink) count() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.got) }

// confEnvelope is one envelope as GET /conformance/inbound lists it.
type confEnvelope struct {
	ID       string `json:"id"`
	From     string `json:"from"`
	DeviceID int    `json:"device_id"`
	Text     string `json:"text"`
	Status   string `json:"status"`
}

// startWithConformance starts the conformance platform (users played by
// JavaScript libsignal, writing to Herald's inbound URL) and a node using
// it as its platform.
func startWithConformance(t *testing.T, extra ...string) (*env, string) {
	t.Helper()
	script := testutil.ConformanceScript(t)
	// The node's address must be known to the platform before the node
	// starts: take a free port and give it to both.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	args := append([]string{"--listen", "127.0.0.1:0", "--secret", "sekret", "--users", "1000",
		"--inbound-url", "http://" + addr + "/v1/platform/inbound", "--events-url", "http://" + addr + "/v1/platform/events"}, extra...)
	base, _ := testutil.StartListening(t, 3*time.Minute, script, args...)
	cfg := testConfig(t.TempDir())
	cfg.Listen, cfg.PlatformURL, cfg.PlatformSecret = addr, base, "sekret"
	e := startNode(t, cfg)
	t.Cleanup(func() { e.n.Close() })
	return e, base
}

func confJSON(t *testing.T, method, url string, in, out any) {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = strings.NewReader(string(b))
	}
	req, _ := http.NewRequest(method, url, body)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("%s %s: %d %s", method, url, resp.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, url, err, raw)
		}
	}
}

// TestInboundFromJavaScriptLibsignalUsers: users played by JavaScript
// libsignal write to a business: in new sessions (X3DH with the prekeys
// Herald uploaded), in sessions Herald started by writing first, again
// after Herald lost a session (bad_message, the device resets), with some
// envelopes sent twice. Every message reaches the business's webhook once,
// with its body; GET /v1/messages/{id} answers it for its business only;
// and Herald's later messages to those users decrypt in the same sessions.
func TestInboundFromJavaScriptLibsignalUsers(t *testing.T) {
	e, conf := startWithConformance(t, "--inbound-dup-rate", "0.3")
	a := e.business("A", "15550001001", "10k")
	other := e.business("B", "15550001002", "10k")
	sink := &inboxSink{got: map[string][]webhook.Message{}}
	hook := httptest.NewServer(sink)
	defer hook.Close()
	if code, out := e.do("PUT", "/v1/"+a.PNs[0]+"/webhook", a.Token, fmt.Sprintf(`{"url":%q,"secret":"inbound-secret"}`, hook.URL), ""); code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	// Herald uploads the number's prekeys when the number is created.
	testutil.Until(t, 30*time.Second, func() bool {
		var keys map[string]struct {
			Prekeys int `json:"prekeys"`
		}
		confJSON(t, "GET", conf+"/conformance/keys", nil, &keys)
		return keys["15550001001"].Prekeys >= 50
	}, func() string { return "no prekeys of 15550001001 reached the platform" })

	// Herald writes first to user 7 (device 1 of 2): it starts the session.
	user := func(i int) string { return fmt.Sprintf("1777%07d", i) }
	if code, out := e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody(user(7), "hello from A"), ""); code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	e.waitDrained()
	var expect []string
	write := func(from string, device int, texts ...string) {
		var ids struct {
			IDs []string `json:"ids"`
		}
		confJSON(t, "POST", conf+"/conformance/inbound", map[string]any{"from": from, "device_id": device, "to": "15550001001", "texts": texts}, &ids)
		expect = append(expect, texts...)
	}
	// New sessions: users 1..5 (users of index%3==2 have 3 devices).
	for i := 1; i <= 5; i++ {
		write(user(i), 1, fmt.Sprintf("u%d first", i), fmt.Sprintf("u%d second", i), fmt.Sprintf("u%d third é✓", i))
	}
	write(user(5), 2, "u5 from device 2")
	// A reply inside the session Herald started.
	write(user(7), 1, "u7 replies", "u7 again")
	waitInbound(t, conf, sink, len(expect))

	// Herald loses its session with user 1 (as after a restore): the
	// user's next message is answered bad_message, the device starts a new
	// session and sends it again.
	forgetSessions(t, e, "15550001001", a.ID, user(1))
	write(user(1), 1, "u1 after the reset")
	waitInbound(t, conf, sink, len(expect))

	// Herald writes to users who wrote first: the messages go in their
	// sessions (no new X3DH: the session keeps the base key the user's
	// device chose) and decrypt there.
	base := func(i int) []byte {
		rec, err := e.n.Sessions().Session("15550001001", e.n.Sealer.Lookup(a.ID+"\x00"+user(i)), 1)
		if err != nil || rec == nil {
			t.Fatalf("no session with user %d: %v", i, err)
		}
		return append([]byte(nil), rec.SessionState().SenderBaseKey()...)
	}
	before2, before3 := base(2), base(3)
	for _, i := range []int{2, 3, 7} {
		if code, out := e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody(user(i), fmt.Sprintf("reply to u%d", i)), ""); code != 200 {
			t.Fatalf("%d %v", code, out)
		}
	}
	e.waitDrained()
	if !bytes.Equal(base(2), before2) || !bytes.Equal(base(3), before3) {
		t.Fatal("Herald started new sessions with users who had written first")
	}

	var stats struct {
		Decrypted          int            `json:"decrypted"`
		Failures           map[string]int `json:"failures"`
		Mismatches         int            `json:"mismatches"`
		InboundBadMessage  int            `json:"inbound_bad_message"`
		InboundFailed      int            `json:"inbound_failed"`
		InboundDupResent   int            `json:"inbound_dup_resent"`
		InboundDupRejected int            `json:"inbound_dup_rejected"`
		PrekeyIDReused     int            `json:"prekey_id_reused"`
	}
	confJSON(t, "GET", conf+"/v1/stats", nil, &stats)
	t.Logf("conformance stats %+v", stats)
	if len(stats.Failures) != 0 || stats.Mismatches != 0 || stats.InboundFailed != 0 || stats.InboundDupRejected != 0 || stats.PrekeyIDReused != 0 {
		t.Fatalf("conformance: %+v", stats)
	}
	if stats.InboundBadMessage == 0 {
		t.Fatal("no bad_message: the reset path went untested")
	}
	// Herald's messages to users 2, 3, 7 (their devices) and the first one to user 7 decrypted.
	if stats.Decrypted < 1+3 {
		t.Fatalf("JavaScript users decrypted %d of Herald's messages", stats.Decrypted)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if sink.badSig != 0 {
		t.Fatalf("%d webhook posts with a bad signature", sink.badSig)
	}
	bodies := map[string]bool{}
	for id, ms := range sink.got {
		if len(ms) != 1 {
			t.Errorf("message %s reached the webhook %d times", id, len(ms))
		}
		bodies[ms[0].Text.Body] = true
		if ms[0].Timestamp == "" || ms[0].From == "" {
			t.Errorf("message %s: %+v", id, ms[0])
		}
	}
	for _, want := range expect {
		if !bodies[want] {
			t.Errorf("%q never reached the webhook", want)
		}
	}
	// GET /v1/messages/{id}: the body for its business, 404 for another.
	var anyID string
	for id := range sink.got {
		anyID = id
		break
	}
	code, msg := e.do("GET", "/v1/messages/"+anyID, a.Token, "", "")
	if code != 200 || msg["direction"] != "inbound" || msg["text"].(map[string]any)["body"] != sink.got[anyID][0].Text.Body {
		t.Fatalf("GET inbound message: %d %v", code, msg)
	}
	if code, _ := e.do("GET", "/v1/messages/"+anyID, other.Token, "", ""); code != 404 {
		t.Fatalf("another business reads an inbound message: %d", code)
	}
}

// waitInbound waits until the platform has every envelope accepted and the
// webhook has n messages.
func waitInbound(t *testing.T, conf string, sink *inboxSink, n int) {
	t.Helper()
	testutil.Until(t, 60*time.Second, func() bool {
		var envs []confEnvelope
		confJSON(t, "GET", conf+"/conformance/inbound", nil, &envs)
		for _, e := range envs {
			if e.Status != "accepted" {
				return false
			}
		}
		return sink.count() >= n
	}, func() string {
		var envs []confEnvelope
		confJSON(t, "GET", conf+"/conformance/inbound", nil, &envs)
		sink.mu.Lock()
		defer sink.mu.Unlock()
		var missing []string
		for _, e := range envs {
			if len(sink.got[e.ID]) == 0 {
				missing = append(missing, fmt.Sprintf("%+v", e))
			}
		}
		return fmt.Sprintf("webhook has %d of %d; missing %v", len(sink.got), n, missing)
	})
}

// forgetSessions deletes Herald's sessions with a user, as a data directory
// restored from an old backup would have lost them.
func forgetSessions(t *testing.T, e *env, biz, businessID, user string) {
	t.Helper()
	store := e.n.Sessions()
	r := e.n.Sealer.Lookup(businessID + "\x00" + user)
	b := e.n.DB().NewBatch()
	for d := uint32(1); d <= 3; d++ {
		store.DeleteSession(b, biz, r, d)
	}
	if err := e.n.DB().Commit(b, true); err != nil {
		t.Fatal(err)
	}
	store.Forget(biz, r)
}

// TestSimulatorUsersReply: with the built-in simulator, users answer what
// they receive (in the sessions Herald started), some envelopes are sent
// twice and some arrive corrupted (bad_message, the device starts a new
// session and sends again). Every reply reaches the business's webhook
// exactly once; the business marks one read and the platform gets the
// receipt; wrong mark-read requests are refused.
func TestSimulatorUsersReply(t *testing.T) {
	e := start(t, func(c *node.Config) {
		c.Sim.ReplyShare, c.Sim.InboundDupRate, c.Sim.InboundCorruptRate = 1, 0.2, 0.1
	})
	a := e.business("A", "15550001001", "10k")
	b := e.business("B", "15550001002", "10k")
	sink := &inboxSink{got: map[string][]webhook.Message{}}
	hook := httptest.NewServer(sink)
	defer hook.Close()
	if code, out := e.do("PUT", "/v1/"+a.PNs[0]+"/webhook", a.Token, fmt.Sprintf(`{"url":%q,"secret":"inbound-secret"}`, hook.URL), ""); code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	var sb strings.Builder
	sb.WriteString(`{"name":"ask","template":{"body":"how was it, {{name}}?"}}` + "\n")
	for i := 0; i < 40; i++ {
		fmt.Fprintf(&sb, `{"to":"1555%07d","vars":{"name":"n%d"}}`+"\n", 1000+i*37, i)
	}
	if code, out := e.do("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token, sb.String(), "application/x-ndjson"); code != 200 || out["accepted"] != float64(40) {
		t.Fatalf("%d %v", code, out)
	}
	e.waitDrained()
	testutil.Until(t, 60*time.Second, func() bool {
		return e.n.Sim.InboundPending() == 0 && int64(sink.count()) == e.n.Sim.InboundStats().Accepted && sink.count() > 0
	}, func() string {
		return fmt.Sprintf("sim %+v pending %d; webhook has %d", e.n.Sim.InboundStats(), e.n.Sim.InboundPending(), sink.count())
	})
	st := e.n.Sim.InboundStats()
	t.Logf("simulator inbound %+v", st)
	if st.Failed != 0 || st.Accepted < 40 || st.DupResent == 0 || st.Corrupted == 0 || st.BadMessage < st.Corrupted {
		t.Fatalf("simulator inbound %+v", st)
	}
	sink.mu.Lock()
	var id string
	for k, ms := range sink.got {
		if len(ms) != 1 || !strings.HasPrefix(ms[0].Text.Body, "re: ") {
			t.Errorf("%s: %+v", k, ms)
		}
		id = k
	}
	sink.mu.Unlock()

	mark := func(token, pn, body string) (int, map[string]any) {
		return e.do("POST", "/v1/"+pn+"/messages", token, body, "")
	}
	for name, tc := range map[string]struct {
		token, pn, body string
		code            int
	}{
		"another business":   {b.Token, b.PNs[0], `{"messaging_product":"whatsapp","status":"read","message_id":"` + id + `"}`, 404},
		"no such message":    {a.Token, a.PNs[0], `{"messaging_product":"whatsapp","status":"read","message_id":"in.nope"}`, 404},
		"status not read":    {a.Token, a.PNs[0], `{"messaging_product":"whatsapp","status":"delivered","message_id":"` + id + `"}`, 400},
		"no message_id":      {a.Token, a.PNs[0], `{"messaging_product":"whatsapp","status":"read"}`, 400},
		"with a text":        {a.Token, a.PNs[0], `{"messaging_product":"whatsapp","status":"read","message_id":"` + id + `","text":{"body":"x"}}`, 400},
		"unknown field":      {a.Token, a.PNs[0], `{"messaging_product":"whatsapp","status":"read","message_id":"` + id + `","colour":1}`, 400},
		"messaging_product?": {a.Token, a.PNs[0], `{"status":"read","message_id":"` + id + `"}`, 400},
	} {
		if code, out := mark(tc.token, tc.pn, tc.body); code != tc.code {
			t.Errorf("%s: %d %v", name, code, out)
		}
	}
	if st := e.n.Sim.InboundStats(); st.Receipts != 0 {
		t.Fatalf("a refused mark-read sent a receipt: %+v", st)
	}
	for i := 0; i < 2; i++ { // twice: one receipt
		if code, out := mark(a.Token, a.PNs[0], `{"messaging_product":"whatsapp","status":"read","message_id":"`+id+`"}`); code != 200 || out["success"] != true {
			t.Fatalf("mark read: %d %v", code, out)
		}
	}
	testutil.Until(t, 20*time.Second, func() bool { return e.n.Sim.InboundStats().Receipts == 1 },
		func() string { return fmt.Sprintf("receipts: %+v", e.n.Sim.InboundStats()) })
	if _, msg := e.do("GET", "/v1/messages/"+id, a.Token, "", ""); msg["status"] != "read" {
		t.Fatalf("after mark read: %v", msg)
	}
}

// TestBothDirectionsShareOneSession (invariant 2 with both directions):
// Herald writes to a user; with the platform down, Herald encrypts its next
// message (stored, not sent) and the user's reply arrives and advances the
// same session the other way (a DH ratchet step at Herald); when the
// platform is back, the stored message goes out as it was, then a new one
// in the new chain. The user's device decrypts all of them, in order, and
// Herald the user's messages: no counter reused, no session lost.
func TestBothDirectionsShareOneSession(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Sim.DevicesMin, c.Sim.DevicesMax = 1, 1 })
	a := e.business("A", "15550001001", "10k")
	const user = "15550000123"
	send := func(text string) string {
		t.Helper()
		code, out := e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody(user, text), "")
		if code != 200 {
			t.Fatalf("%d %v", code, out)
		}
		return out["messages"].([]any)[0].(map[string]any)["id"].(string)
	}
	reply := func(text string) {
		t.Helper()
		before := e.n.Sim.InboundStats().Accepted
		if _, err := e.n.Sim.Write(user, 1, "15550001001", text); err != nil {
			t.Fatal(err)
		}
		testutil.Until(t, 20*time.Second, func() bool { return e.n.Sim.InboundStats().Accepted == before+1 },
			func() string { return fmt.Sprintf("reply %q not accepted: %+v", text, e.n.Sim.InboundStats()) })
	}
	m0 := send("m0")
	e.waitDrained()
	e.n.Sim.SetDown(true)
	m1 := send("m1")
	testutil.Until(t, 20*time.Second, func() bool { return e.n.Sim.Stats().Injected["down_messages"] > 0 },
		func() string { return "Herald never tried to send m1" })
	reply("r0") // the user's first answer: a new ratchet key, Herald's sending chain changes
	e.n.Sim.SetDown(false)
	e.waitDrained()
	m2 := send("m2")
	e.waitDrained()
	reply("r1") // after m2: a new ratchet key again; Herald's sending chain changes again
	// Herald encrypts m3 in that chain (not delivered: the platform is down)
	// and the user writes again on the same chain (it saw nothing new): no
	// ratchet at Herald this time, so what inbound writes back must carry
	// the sending chain as far as m3 took it, or m4 would reuse m3's counter.
	e.n.Sim.SetDown(true)
	down := e.n.Sim.Stats().Injected["down_messages"]
	m3 := send("m3")
	testutil.Until(t, 30*time.Second, func() bool { return e.n.Sim.Stats().Injected["down_messages"] > down },
		func() string { return "Herald never tried to send m3" })
	reply("r2")
	e.n.Sim.SetDown(false)
	e.waitDrained()
	m4 := send("m4")
	e.waitDrained()
	st := e.n.Sim.Stats()
	if len(st.Failures) != 0 || st.Mismatches != 0 || st.OrderingViolations != 0 {
		t.Fatalf("simulator: %+v", st)
	}
	var got []string
	for _, r := range e.n.Sim.Received(user)[1] {
		got = append(got, r.ID)
	}
	if want := []string{m0, m1, m2, m3, m4}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("the user's device decrypted %v, want %v (simulator %+v)", got, want, st)
	}
	if in := e.n.Sim.InboundStats(); in.BadMessage != 0 || in.Accepted != 3 {
		t.Fatalf("inbound: %+v", in)
	}
}

// TestSimulatorUsersWriteUnprompted: with --write-rate the simulator's users
// write on their own (new sessions with the prekeys Herald uploaded), some
// of them STOP: Herald accepts them and records the opt-outs.
func TestSimulatorUsersWriteUnprompted(t *testing.T) {
	e := start(t, func(c *node.Config) { c.Sim.WriteRate, c.Sim.StopShare = 300, 0.3 })
	a := e.business("A", "15550001001", "10k")
	testutil.Until(t, 30*time.Second, func() bool {
		_, oo := e.do("GET", "/v1/"+a.PNs[0]+"/optouts", a.Token, "", "")
		n, _ := oo["count"].(float64)
		return e.n.Sim.InboundStats().Accepted >= 50 && n > 0
	}, func() string { return fmt.Sprintf("simulator %+v", e.n.Sim.InboundStats()) })
	if st := e.n.Sim.InboundStats(); st.Failed != 0 || st.BadMessage != 0 {
		t.Fatalf("simulator %+v", st)
	}
}
