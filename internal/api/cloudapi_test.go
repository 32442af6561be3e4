package api_test

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/node"
	"github.com/heraldhq/herald/internal/testutil"
)

// TestErrorObjectsAreTheCloudAPIs: every error carries error_data
// {messaging_product, details} and an fbtrace_id, the same id the answer's
// X-FB-Trace-ID header carries and the request's log lines name; each
// request gets its own.
func TestErrorObjectsAreTheCloudAPIs(t *testing.T) {
	logs := &lockedBuffer{}
	e := start(t, func(c *node.Config) {
		c.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	a := e.business("A", "15550001001", "10k")
	seen := map[string]bool{}
	for _, tc := range []struct {
		name, method, path, token, body string
		status, code                    int
	}{
		{"bad body", "POST", "/v1/" + a.PNs[0] + "/messages", a.Token, msgBody("15550000001", ""), 400, heraldtype.CodeBadParam},
		{"bad token", "GET", "/v1/" + a.PNs[0] + "/integrity", "nope", "", 401, heraldtype.CodeAuth},
		{"no such path", "GET", "/v2/nothing", a.Token, "", 404, heraldtype.CodeInvalidParam},
		{"wrong method", "DELETE", "/v1/" + a.PNs[0] + "/messages", a.Token, "", 405, heraldtype.CodeInvalidParam},
	} {
		code, out, hdr := e.doH(tc.method, tc.path, tc.token, tc.body, "", nil)
		eo, _ := out["error"].(map[string]any)
		ed, _ := eo["error_data"].(map[string]any)
		trace, _ := eo["fbtrace_id"].(string)
		if code != tc.status || errCode(out) != tc.code || ed["messaging_product"] != "whatsapp" || ed["details"] == "" || ed["details"] == nil {
			t.Errorf("%s: %d %v", tc.name, code, out)
		}
		if trace == "" || hdr.Get("X-FB-Trace-ID") != trace || seen[trace] {
			t.Errorf("%s: fbtrace_id %q, header %q (seen before: %v)", tc.name, trace, hdr.Get("X-FB-Trace-ID"), seen[trace])
		}
		seen[trace] = true
		if tc.name == "bad body" && !strings.Contains(logs.String(), `"trace_id":"`+trace+`"`) {
			t.Errorf("%s: no log line names trace %s:\n%s", tc.name, trace, logs.String())
		}
	}
	// Answers that succeed carry a trace id too.
	code, _, hdr := e.doH("GET", "/v1/"+a.PNs[0]+"/integrity", a.Token, "", "", nil)
	if code != 200 || hdr.Get("X-FB-Trace-ID") == "" {
		t.Fatalf("integrity: %d, trace %q", code, hdr.Get("X-FB-Trace-ID"))
	}
}

// TestFailedStatusesReadAsTheCloudAPIWritesThem: a message that fails
// (131026, the number is not on the platform) shows errors[] with code,
// title, message and error_data.details in its history and in its webhook;
// the webhook names the business's display number; every "timestamp" is
// unix seconds as a string and every "*_at" RFC 3339.
func TestFailedStatusesReadAsTheCloudAPIWritesThem(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	var mu sync.Mutex
	var bodies [][]byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, b)
		mu.Unlock()
	}))
	defer srv.Close()
	if code, out := e.do("PUT", "/v1/"+a.PNs[0]+"/webhook", a.Token, fmt.Sprintf(`{"url":%q,"secret":"whsecret123"}`, srv.URL), ""); code != 200 {
		t.Fatalf("%d %v", code, out)
	}
	_, out := e.do("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token,
		`{"name":"nobody","template":{"body":"hi"},"recipients":[{"to":"15559000001"},{"to":"15559000002"}]}`, "")
	cid, _ := out["campaign_id"].(string)
	e.waitDrained()
	var failed map[string]any
	testutil.Until(t, 20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, b := range bodies {
			var p struct {
				Entry []struct {
					Changes []struct {
						Value struct {
							Metadata map[string]string `json:"metadata"`
							Statuses []map[string]any  `json:"statuses"`
						} `json:"value"`
					} `json:"changes"`
				} `json:"entry"`
			}
			json.Unmarshal(b, &p)
			for _, en := range p.Entry {
				for _, c := range en.Changes {
					if c.Value.Metadata["display_phone_number"] != "15550001001" || c.Value.Metadata["phone_number_id"] != a.PNs[0] {
						t.Fatalf("webhook metadata: %v", c.Value.Metadata)
					}
					for _, st := range c.Value.Statuses {
						if st["status"] == "failed" {
							failed = st
						}
					}
				}
			}
		}
		return failed != nil
	}, func() string { return "no failed status reached the webhook" })
	checkStatusError(t, "webhook", failed)
	unix := regexp.MustCompile(`^[0-9]{10}$`)
	if ts, _ := failed["timestamp"].(string); !unix.MatchString(ts) {
		t.Fatalf("webhook timestamp %v", failed["timestamp"])
	}
	_, msg := e.do("GET", "/v1/messages/"+failed["id"].(string), a.Token, "", "")
	hist, _ := msg["history"].([]any)
	if len(hist) < 2 {
		t.Fatalf("history: %v", msg)
	}
	for _, h := range hist {
		h := h.(map[string]any)
		if ts, _ := h["timestamp"].(string); !unix.MatchString(ts) {
			t.Fatalf("history timestamp %v", h)
		}
		if h["status"] == "failed" {
			checkStatusError(t, "history", h)
		}
	}
	_, camp := e.do("GET", "/v1/campaigns/"+cid, a.Token, "", "")
	rfc := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)
	for _, f := range []string{"created_at", "started_at", "finished_at"} {
		if s, _ := camp[f].(string); !rfc.MatchString(s) {
			t.Fatalf("%s = %v", f, camp[f])
		}
	}
}

func checkStatusError(t *testing.T, where string, st map[string]any) {
	t.Helper()
	errs, _ := st["errors"].([]any)
	if len(errs) != 1 {
		t.Fatalf("%s: errors %v", where, st)
	}
	e := errs[0].(map[string]any)
	ed, _ := e["error_data"].(map[string]any)
	if e["code"] != float64(heraldtype.CodeUndeliverable) || e["title"] != "Message undeliverable" || e["message"] == "" || ed["details"] == "" || ed["details"] == nil {
		t.Fatalf("%s: error %v", where, e)
	}
}

// TestAdminTokensAndPhoneNumbers: a new token works beside the old one, a
// revoked one does not; a phone number added shows in the admin view with
// its digits, and a number another business holds is refused.
func TestAdminTokensAndPhoneNumbers(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	e.business("B", "15550001002", "10k")
	const admin = "admin-token-for-tests"
	code, tok := e.do("POST", "/admin/v1/businesses/"+a.ID+"/tokens", admin, "", "")
	if code != 200 || tok["token"] == "" || tok["token_id"] == a.TokID {
		t.Fatalf("new token: %d %v", code, tok)
	}
	if code, _ := e.do("DELETE", "/admin/v1/businesses/"+a.ID+"/tokens/"+a.TokID, admin, "", ""); code != 200 {
		t.Fatalf("revoke: %d", code)
	}
	if code, _ := e.do("GET", "/v1/"+a.PNs[0]+"/integrity", a.Token, "", ""); code != 401 {
		t.Fatalf("revoked token: %d", code)
	}
	if code, _ := e.do("GET", "/v1/"+a.PNs[0]+"/integrity", tok["token"].(string), "", ""); code != 200 {
		t.Fatalf("new token: %d", code)
	}
	code, pn := e.do("POST", "/admin/v1/businesses/"+a.ID+"/phone_numbers", admin, `{"phone_number":"+1 555 000 3003"}`, "")
	if code != 200 || pn["phone_number_id"] == "" {
		t.Fatalf("add number: %d %v", code, pn)
	}
	if code, out := e.do("POST", "/admin/v1/businesses/"+a.ID+"/phone_numbers", admin, `{"phone_number":"15550001002"}`, ""); code != 400 || errCode(out) != heraldtype.CodeInvalidParam {
		t.Fatalf("another business's number: %d %v", code, out)
	}
	_, view := e.do("GET", "/admin/v1/businesses/"+a.ID, admin, "", "")
	found := false
	for _, p := range view["phone_numbers"].([]any) {
		p := p.(map[string]any)
		found = found || (p["phone_number_id"] == pn["phone_number_id"] && p["display_phone_number"] == "15550003003")
	}
	if !found {
		t.Fatalf("admin view: %v", view)
	}
}
