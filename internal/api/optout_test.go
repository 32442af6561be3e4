package api_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/node"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/signal"
	"github.com/heraldhq/herald/internal/testutil"
)

// TestOptOuts: a user who writes only a stop keyword (any case), or blocks
// the business, is refused for that business with 131050 (single send:
// 400; campaign: per line) and for no other; the business sees the count
// and keyed ids, never the number, and can delete the opt-out; a business's
// own keywords replace the defaults.
func TestOptOuts(t *testing.T) {
	e := start(t, func(c *node.Config) { c.PlatformSecret = inboundSecret })
	a := e.business("A", "15550001001", "10k")
	b := e.business("B", "15550001002", "10k")
	const user = "15560000077" // not a simulator user: Herald's sends to it fail (131026) and leave the session the test device started alone
	d, _ := signal.NewDevice(1, 0)
	say := func(id, text string, bundle *platform.DeviceBundle) {
		t.Helper()
		env := envelopes(envelope(t, d, user, "15550001001", id, text, bundle))
		var got string
		// "retry" while Herald is sending to this user (the pair is busy):
		// the platform sends the same envelope again, as here.
		testutil.Until(t, 10*time.Second, func() bool {
			_, out := postInbound(t, e, env, "")
			got = results(out)[id]
			return got != "retry"
		}, func() string { return id + " kept getting retry" })
		if got != "accepted" {
			t.Fatalf("%s: %s", id, got)
		}
	}
	say("in-hi", "Stop it, that was funny", bundleOf(t, e, "15550001001")) // not only the keyword: no opt-out
	if code, out := e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody(user, "hello"), ""); code != 200 {
		t.Fatalf("before the stop: %d %v", code, out)
	}
	say("in-stop", "  stop ", nil)
	code, out := e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody(user, "hello again"), "")
	if code != 400 || errCode(out) != heraldtype.CodeOptedOut {
		t.Fatalf("after the stop: %d %v", code, out)
	}
	camp := fmt.Sprintf(`{"name":"c","template":{"body":"hi"},"recipients":[{"to":"15550000078"},{"to":%q}]}`, user)
	_, out = e.do("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token, camp, "")
	if rej, _ := out["rejected"].([]any); out["accepted"] != float64(1) || len(rej) != 1 || rej[0].(map[string]any)["code"] != float64(heraldtype.CodeOptedOut) {
		t.Fatalf("campaign: %v", out)
	}
	if code, _ := e.do("POST", "/v1/"+b.PNs[0]+"/messages", b.Token, msgBody(user, "from B"), ""); code != 200 {
		t.Fatalf("another business is refused too: %d", code)
	}
	_, oo := e.do("GET", "/v1/"+a.PNs[0]+"/optouts", a.Token, "", "")
	if list, _ := oo["optouts"].([]any); oo["count"] != float64(1) || len(list) != 1 || strings.Contains(fmt.Sprint(oo), "560000077") {
		t.Fatalf("optouts: %v", oo)
	}
	if _, oo := e.do("GET", "/v1/"+b.PNs[0]+"/optouts", b.Token, "", ""); oo["count"] != float64(0) {
		t.Fatalf("B's optouts: %v", oo)
	}
	if code, _ := e.do("DELETE", "/v1/"+b.PNs[0]+"/optouts/"+user, b.Token, "", ""); code != 404 {
		t.Fatalf("B deletes an opt-out it does not have: %d", code)
	}
	if code, _ := e.do("DELETE", "/v1/"+a.PNs[0]+"/optouts/12", a.Token, "", ""); code != 400 {
		t.Fatalf("a bad wa_id: %d", code)
	}
	if code, _ := e.do("DELETE", "/v1/"+a.PNs[0]+"/optouts/+"+user, a.Token, "", ""); code != 200 {
		t.Fatalf("delete: %d", code)
	}
	if code, out := e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody(user, "welcome back"), ""); code != 200 {
		t.Fatalf("after the opt-in: %d %v", code, out)
	}
	if code, _ := e.do("DELETE", "/v1/"+a.PNs[0]+"/optouts/"+user, a.Token, "", ""); code != 404 {
		t.Fatalf("delete twice: %d", code)
	}

	// A block report opts the user out as well.
	body := fmt.Sprintf(`{"events":[{"type":"report","business":"15550001001","user":%q,"reason":"block"}]}`, user)
	req, _ := http.NewRequest("POST", e.base+"/v1/platform/events", strings.NewReader(body))
	req.Header.Set("X-Platform-Signature", platform.Sign([]byte(inboundSecret), []byte(body)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("events: %v %v", err, resp)
	}
	resp.Body.Close()
	e.n.Engine.Flush()
	if code, out := e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody(user, "after the block"), ""); code != 400 || errCode(out) != heraldtype.CodeOptedOut {
		t.Fatalf("after a block: %d %v", code, out)
	}
	e.do("DELETE", "/v1/"+a.PNs[0]+"/optouts/"+user, a.Token, "", "")

	// The business's own keywords replace the defaults.
	if code, out := e.do("PATCH", "/admin/v1/businesses/"+a.ID, "admin-token-for-tests", `{"stop_keywords":["BASTA"]}`, ""); code != 200 {
		t.Fatalf("patch: %d %v", code, out)
	}
	if code, _ := e.do("PATCH", "/admin/v1/businesses/"+a.ID, "admin-token-for-tests", `{"stop_keywords":[""]}`, ""); code != 400 {
		t.Fatalf("an empty keyword: %d", code)
	}
	say("in-stop-2", "STOP", nil)
	if code, _ := e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody(user, "x"), ""); code != 200 {
		t.Fatalf("STOP is no longer a keyword of A: %d", code)
	}
	say("in-basta", "basta", nil)
	if code, out := e.do("POST", "/v1/"+a.PNs[0]+"/messages", a.Token, msgBody(user, "x"), ""); code != 400 || errCode(out) != heraldtype.CodeOptedOut {
		t.Fatalf("after BASTA: %d %v", code, out)
	}
}
