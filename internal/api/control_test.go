package api_test

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/node"
	"github.com/heraldhq/herald/internal/schedule"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/internal/webhook"
)

// campaignBody is a JSON campaign to n simulator users from from*100 on,
// 37 apart (no runs of consecutive numbers: the sequential-enumeration check
// would refuse those), with extra header fields (e.g. `"send_at":"…",`).
func campaignBody(name, extra string, from, n int) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, `{"name":%q,%s"template":{"body":"Hi {{n}}"},"recipients":[`, name, extra)
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteString(",")
		}
		fmt.Fprintf(&sb, `{"to":"1555%07d","vars":{"n":"%d"}}`, from*100+i*37, i)
	}
	sb.WriteString("]}")
	return sb.String()
}

func (e *env) campaign(token, id string) map[string]any {
	e.t.Helper()
	code, out := e.do("GET", "/v1/campaigns/"+id, token, "", "")
	if code != 200 {
		e.t.Fatalf("GET campaign %s: %d %v", id, code, out)
	}
	checkCampaignView(e.t, out)
	return out
}

func count(v map[string]any, kind, status string) int {
	m, _ := v[kind].(map[string]any)
	f, _ := m[status].(float64)
	return int(f)
}

// upload posts a campaign and returns its id. With an injected clock, move
// it a millisecond on first: campaigns created in the same millisecond list
// in no particular order.
func (e *env) upload(token, pn, body string) string {
	e.t.Helper()
	if e.clock != nil {
		e.clock.Advance(time.Millisecond)
	}
	code, out := e.do("POST", "/v1/"+pn+"/campaigns", token, body, "")
	if code != 200 || out["campaign_id"] == "" {
		e.t.Fatalf("upload: %d %v", code, out)
	}
	return out["campaign_id"].(string)
}

// idle waits until the engine works on nothing (held messages wait on disk).
func (e *env) idle() {
	testutil.Until(e.t, time.Minute, func() bool { return e.n.Engine.InFlight() == 0 }, func() string { return "engine busy" })
	e.n.Engine.Flush()
}

// TestCampaignControlLifecycle walks every transition with the injected
// clock: scheduled → running → done; scheduled → paused (held on disk, past
// send_at) → resumed → done; canceled before and while sending; quiet hours
// in the recipients' zone; 409 for final states; 404 for another business;
// the list, newest first, in pages.
func TestCampaignControlLifecycle(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	clock := testutil.NewClock(t0)
	e := start(t, func(c *node.Config) { c.Now = clock.Now })
	e.clock = clock
	a := e.business("A", "15550001001", "10k")
	b := e.business("B", "15550001002", "10k")
	pn := a.PNs[0]
	at := func(d time.Duration) string { return fmt.Sprintf(`"send_at":%q,`, t0.Add(d).Format(time.RFC3339)) }

	// Scheduled: nothing before send_at; then it runs and is done.
	c1 := e.upload(a.Token, pn, campaignBody("later", at(time.Hour), 100, 20))
	if v := e.campaign(a.Token, c1); v["state"] != "scheduled" || count(v, "counts", "queued") != 20 || v["send_at"] != heraldtype.FormatTime(t0.Add(time.Hour)) {
		t.Fatalf("scheduled: %v", v)
	}
	// Paused before it starts; canceled before it starts.
	c2 := e.upload(a.Token, pn, campaignBody("paused", at(time.Hour), 200, 20))
	c3 := e.upload(a.Token, pn, campaignBody("canceled", at(time.Hour), 300, 20))
	c6 := e.upload(a.Token, pn, campaignBody("paused, then canceled", at(time.Hour), 600, 20))
	for _, c := range []struct{ id, verb, want string }{{c2, "pause", "paused"}, {c3, "cancel", "canceled"}, {c6, "pause", "paused"}} {
		code, v := e.do("POST", "/v1/campaigns/"+c.id+"/"+c.verb, a.Token, "", "")
		if code != 200 || v["state"] != c.want {
			t.Fatalf("%s: %d %v", c.verb, code, v)
		}
	}
	if v := e.campaign(a.Token, c3); count(v, "counts", "canceled") != 20 || count(v, "counts", "queued") != 0 {
		t.Fatalf("a canceled campaign counts its unsent messages canceled at once: %v", v)
	}
	// And each of its messages answers canceled, before the engine met it.
	m3 := e.messageOf(c3)
	if code, v := e.do("GET", "/v1/messages/"+m3, a.Token, "", ""); code != 200 || v["status"] != "canceled" {
		t.Fatalf("a message of the canceled campaign: %d %v", code, v)
	}
	e.idle()
	if st := e.n.Sim.Stats(); st.Decrypted != 0 {
		t.Fatalf("sent before send_at: %+v", st)
	}
	clock.Advance(time.Hour + time.Second)
	testutil.Until(t, time.Minute, func() bool {
		return e.campaign(a.Token, c1)["state"] == "done" && e.n.Queue.Parked() == 40 && count(e.campaign(a.Token, c3), "totals", "canceled") == 20
	}, func() string {
		return fmt.Sprintf("c1 %v parked %d c3 %v", e.campaign(a.Token, c1), e.n.Queue.Parked(), e.campaign(a.Token, c3))
	})
	if v := e.campaign(a.Token, c1); count(v, "totals", "sent") != 20 {
		t.Fatalf("done: %v", v)
	}
	e.idle()
	if v := e.campaign(a.Token, c2); v["state"] != "paused" || count(v, "counts", "queued") != 20 {
		t.Fatalf("paused past send_at: %v", v)
	}
	// A canceled message's own status and history say so.
	n3 := e.n.Engine.Statuses()
	cnt, _ := n3.Counters(c3)
	if cnt.Canceled != 20 {
		t.Fatalf("canceled counter %+v", cnt)
	}
	// 409s: a done or canceled campaign cannot be paused, resumed or canceled.
	for _, id := range []string{c1, c3} {
		for _, verb := range []string{"pause", "resume", "cancel"} {
			if code, out := e.do("POST", "/v1/campaigns/"+id+"/"+verb, a.Token, "", ""); code != 409 || errMsg(out) == "" {
				t.Errorf("%s of %s: %d %v", verb, id, code, out)
			}
		}
	}
	// Another business: 404 for every control, never a change.
	for _, verb := range []string{"pause", "resume", "cancel"} {
		if code, _ := e.do("POST", "/v1/campaigns/"+c2+"/"+verb, b.Token, "", ""); code != 404 {
			t.Errorf("B %s of A's campaign: %d", verb, code)
		}
	}
	if code, out := e.do("POST", "/v1/campaigns/"+c2+"/pause", a.Token, `{"why":"x"}`, ""); code != 400 {
		t.Errorf("a body on pause: %d %v", code, out)
	}
	if code, _ := e.do("POST", "/v1/campaigns/cmp_nope/pause", a.Token, "", ""); code != 404 {
		t.Errorf("unknown campaign: %d", code)
	}
	// Cancel of a paused campaign: its parked messages end canceled, with
	// their statuses, and leave the queue.
	if code, v := e.do("POST", "/v1/campaigns/"+c6+"/cancel", a.Token, "", ""); code != 200 || v["state"] != "canceled" || count(v, "counts", "canceled") != 20 {
		t.Fatalf("cancel of a paused campaign: %d %v", code, v)
	}
	testutil.Until(t, time.Minute, func() bool {
		c, _ := e.n.Engine.Statuses().Counters(c6)
		return c.Canceled == 20 && e.n.Queue.Parked() == 20
	}, func() string {
		c, _ := e.n.Engine.Statuses().Counters(c6)
		return fmt.Sprintf("counters %+v parked %d", c, e.n.Queue.Parked())
	})
	if code, v := e.do("GET", "/v1/messages/"+e.messageOf(c6), a.Token, "", ""); code != 200 || v["status"] != "canceled" || len(v["history"].([]any)) != 2 {
		t.Fatalf("a canceled parked message: %d %v", code, v)
	}
	// Resume: the parked messages go.
	if code, v := e.do("POST", "/v1/campaigns/"+c2+"/resume", a.Token, "", ""); code != 200 || v["state"] != "running" {
		t.Fatalf("resume: %d %v", code, v)
	}
	testutil.Until(t, time.Minute, func() bool { return e.campaign(a.Token, c2)["state"] == "done" },
		func() string { return fmt.Sprint(e.campaign(a.Token, c2)) })
	if v := e.campaign(a.Token, c2); count(v, "totals", "sent") != 20 || e.n.Queue.Parked() != 0 {
		t.Fatalf("after resume: %v parked %d", v, e.n.Queue.Parked())
	}

	// Quiet hours in the recipients' zone: 1555… is NANP, whose westernmost
	// zone decides. At 23:00 there nothing goes; at 08:00 it does.
	loc := schedule.Zone("15550000001")
	local := clock.Now().In(loc)
	night := time.Date(local.Year(), local.Month(), local.Day()+1, 23, 0, 0, 0, loc)
	clock.Advance(night.Sub(clock.Now()))
	e.idle()
	before := e.n.Sim.Stats().Decrypted
	c4 := e.upload(a.Token, pn, campaignBody("quiet", `"quiet_hours":{"start":"21:00","end":"08:00"},`, 400, 10))
	e.idle()
	if v := e.campaign(a.Token, c4); v["state"] != "running" || count(v, "counts", "queued") != 10 || e.n.Sim.Stats().Decrypted != before {
		t.Fatalf("sent inside quiet hours: %v %+v", v, e.n.Sim.Stats())
	}
	if v := e.campaign(a.Token, c4); v["quiet_hours"].(map[string]any)["start"] != "21:00" {
		t.Fatalf("quiet hours not shown: %v", v)
	}
	clock.Advance(9*time.Hour + time.Minute) // 08:01 local
	testutil.Until(t, time.Minute, func() bool { return e.campaign(a.Token, c4)["state"] == "done" },
		func() string { return fmt.Sprint(e.campaign(a.Token, c4)) })

	// Cancel while it sends: what was sent stays sent, the rest is canceled,
	// and the counts add up.
	c5 := e.upload(a.Token, pn, campaignBody("busy", "", 500, 300))
	code, v := e.do("POST", "/v1/campaigns/"+c5+"/cancel", a.Token, "", "")
	if code != 200 && code != 409 { // 409: it was done before the cancel came
		t.Fatalf("cancel while sending: %d %v", code, v)
	}
	// The business's throughput (mps) spaces the sends on the injected
	// clock: move it along while the queue drains.
	testutil.Until(t, time.Minute, func() bool {
		clock.Advance(time.Second)
		return e.depth() == 0 && e.n.Engine.InFlight() == 0
	}, func() string { return fmt.Sprintf("%d left", e.depth()) })
	e.n.Engine.Flush()
	if v := e.campaign(a.Token, c5); count(v, "totals", "sent")+count(v, "totals", "canceled")+count(v, "totals", "failed") != 300 {
		t.Fatalf("after a cancel while sending: %v", v)
	}

	// The list: newest first, in pages, every campaign once.
	want := []string{c5, c4, c6, c3, c2, c1}
	var got []string
	path := "/v1/" + pn + "/campaigns?limit=2"
	for pages := 0; path != "" && pages < 10; pages++ {
		code, out := e.do("GET", path, a.Token, "", "")
		if code != 200 {
			t.Fatalf("list %s: %d %v", path, code, out)
		}
		for _, c := range out["data"].([]any) {
			got = append(got, c.(map[string]any)["campaign_id"].(string))
		}
		path, _ = out["paging"].(map[string]any)["next"].(string)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("list: got %v, want %v", got, want)
	}
	for _, bad := range []string{"?limit=0", "?limit=101", "?limit=x", "?after=cmp_nope", "?order=asc", "?limit=1&limit=2"} {
		if code, out := e.do("GET", "/v1/"+pn+"/campaigns"+bad, a.Token, "", ""); code != 400 || errMsg(out) == "" {
			t.Errorf("list%s: %d %v", bad, code, out)
		}
	}
	if code, out := e.do("GET", "/v1/"+b.PNs[0]+"/campaigns", b.Token, "", ""); code != 200 || len(out["data"].([]any)) != 0 {
		t.Fatalf("B's list: %d %v", code, out)
	}
	if code, _ := e.do("GET", "/v1/"+pn+"/campaigns", b.Token, "", ""); code != 404 {
		t.Fatalf("B lists A's number: %d", code)
	}
}

// TestCampaignScheduleErrors: every bad schedule is refused whole with a
// clear message, and nothing is enqueued.
func TestCampaignScheduleErrors(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	clock := testutil.NewClock(t0)
	e := start(t, func(c *node.Config) { c.Now = clock.Now })
	a := e.business("A", "15550001001", "10k")
	path := "/v1/" + a.PNs[0] + "/campaigns"
	for _, c := range []struct{ name, extra, query string }{
		{"send_at in the past", fmt.Sprintf(`"send_at":%q,`, t0.Add(-2*time.Minute).Format(time.RFC3339)), ""},
		{"send_at too far", fmt.Sprintf(`"send_at":%q,`, t0.Add(31*24*time.Hour).Format(time.RFC3339)), ""},
		{"send_at not a time", `"send_at":"tomorrow at nine",`, ""},
		{"send_at a number", `"send_at":1765000000,`, ""},
		{"quiet hours a string", `"quiet_hours":"21-08",`, ""},
		{"quiet hours without a window", `"quiet_hours":{"start":"08:00","end":"08:00"},`, ""},
		{"quiet hours bad time", `"quiet_hours":{"start":"25:00","end":"08:00"},`, ""},
		{"quiet hours unknown field", `"quiet_hours":{"start":"21:00","end":"08:00","zone":"UTC"},`, ""},
		{"quiet hours missing end", `"quiet_hours":{"start":"21:00"},`, ""},
		{"dry_run not a boolean", "", "?dry_run=maybe"},
		{"unknown query", "", "?preview=1"},
	} {
		code, out := e.do("POST", path+c.query, a.Token, campaignBody("x", c.extra, 100, 3), "")
		if code != 400 || errMsg(out) == "" || strings.Contains(errMsg(out), "campaignHeader") {
			t.Errorf("%s: %d %v", c.name, code, out)
		}
	}
	// Within the minute of slack: at once.
	ok := fmt.Sprintf(`"send_at":%q,`, t0.Add(-30*time.Second).Format(time.RFC3339))
	if code, out := e.do("POST", path, a.Token, campaignBody("x", ok, 100, 3), ""); code != 200 {
		t.Fatalf("send_at 30 s ago: %d %v", code, out)
	}
	e.waitDrained()
	if got := e.n.Sim.Stats().Decrypted; got == 0 {
		t.Fatal("the campaign within the slack was not sent")
	}
}

// messageOf returns the id of a message of campaign cid (from the status
// records: a campaign's answer does not list its messages).
func (e *env) messageOf(cid string) string {
	e.t.Helper()
	it, err := e.n.DB().NewIter(&pebble.IterOptions{LowerBound: []byte("eM"), UpperBound: []byte("eN")})
	if err != nil {
		e.t.Fatal(err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		id := string(it.Key()[2:])
		if st, err := e.n.Engine.Statuses().Message(id); err == nil && st.CampaignID == cid {
			return id
		}
	}
	e.t.Fatalf("no message of campaign %s", cid)
	return ""
}

// dbDigest hashes every key and value in the node's database.
func dbDigest(t *testing.T, e *env) [32]byte {
	t.Helper()
	it, err := e.n.DB().NewIter(&pebble.IterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	h := sha256.New()
	for it.First(); it.Valid(); it.Next() {
		// The business numbers' prekeys (sG, sP) are the key uploader's: it
		// generates and stores them in the background, retrying on its own
		// schedule, whatever the requests do.
		if k := string(it.Key()[:min(2, len(it.Key()))]); k == "sG" || k == "sP" {
			continue
		}
		fmt.Fprintf(h, "%d:%x=%d:%x;", len(it.Key()), it.Key(), len(it.Value()), it.Value())
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// settledDigest waits until the database stops changing (background work
// after a business is created: prekeys) and returns its digest.
func settledDigest(t *testing.T, e *env) [32]byte {
	t.Helper()
	var last [32]byte
	var d [32]byte
	testutil.Until(t, 30*time.Second, func() bool {
		e.idle()
		d = dbDigest(t, e)
		same := d == last
		last = d
		time.Sleep(50 * time.Millisecond)
		return same
	}, func() string { return "the database kept changing" })
	return d
}

// TestDryRunChangesNothing: a dry run answers what the upload would
// (accepted, every rejected line with its code — validation, opt-out, tier,
// sequential enumeration) plus the integrity it would leave, and writes
// nothing: Pebble's contents are the same before and after, the tier is
// unused, no flag is raised. The real upload then answers the same.
func TestDryRunChangesNothing(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "250")
	pn := a.PNs[0]
	// One user opted out.
	b := e.n.DB().NewBatch()
	if err := e.n.Limits.OptOut(b, a.ID, "15550000105", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := e.n.DB().Commit(b, true); err != nil {
		t.Fatal(err)
	}
	// 300 recipients spread out (no runs of consecutive numbers), one opted
	// out, one bad number, one missing its variable.
	var sb strings.Builder
	sb.WriteString(`{"name":"dry","template":{"body":"Hi {{n}}"},"recipients":[`)
	for i := 0; i < 300; i++ {
		if i > 0 {
			sb.WriteString(",")
		}
		switch i {
		case 7:
			sb.WriteString(`{"to":"12","vars":{"n":"x"}}`)
		case 8:
			sb.WriteString(`{"to":"15550000999"}`)
		default:
			fmt.Fprintf(&sb, `{"to":"1555%07d","vars":{"n":"%d"}}`, 100+i*7919%99991, i)
		}
	}
	sb.WriteString("]}")
	body := strings.Replace(sb.String(), fmt.Sprintf(`"1555%07d"`, 100+5*7919%99991), `"15550000105"`, 1)
	before := settledDigest(t, e)
	code, dry := e.do("POST", "/v1/"+pn+"/campaigns?dry_run=true", a.Token, body, "")
	if code != 200 || dry["dry_run"] != true || dry["campaign_id"] != "" {
		t.Fatalf("dry run: %d %v", code, dry)
	}
	integ := dry["integrity"].(map[string]any)
	if integ["tier_remaining"].(float64) != 0 || dry["accepted"].(float64) != 250 {
		t.Fatalf("dry run of 297 new recipients on the 250 tier: %v", dry)
	}
	codes := map[float64]int{}
	for _, r := range dry["rejected"].([]any) {
		codes[r.(map[string]any)["code"].(float64)]++
	}
	if codes[131009] != 1 || codes[131008] != 1 || codes[131050] != 1 || codes[float64(heraldtype.CodeTier)] != 47 {
		t.Fatalf("dry run rejections by code: %v", codes)
	}
	if after := dbDigest(t, e); after != before {
		t.Fatal("a dry run changed the database")
	}
	if _, v := e.do("GET", "/v1/"+pn+"/integrity", a.Token, "", ""); v["unique_recipients_24h"].(float64) != 0 {
		t.Fatalf("a dry run used the tier: %v", v)
	}
	// The NDJSON form answers the same.
	nd := strings.Replace(strings.Replace(strings.Replace(body, `"recipients":[`, "\n", 1), "},{", "}\n{", -1), "]}", "", 1)
	nd = strings.Replace(nd, `"template":{"body":"Hi {{n}}"},`, `"template":{"body":"Hi {{n}}"}}`, 1)
	code, dryND := e.do("POST", "/v1/"+pn+"/campaigns?dry_run=true", a.Token, nd, "application/x-ndjson")
	if code != 200 || dryND["accepted"] != dry["accepted"] || dryND["rejected_count"] != dry["rejected_count"] {
		t.Fatalf("NDJSON dry run: %d %v", code, dryND)
	}
	if after := dbDigest(t, e); after != before {
		t.Fatal("an NDJSON dry run changed the database")
	}
	// The real upload answers the same lines the same way.
	code, real := e.do("POST", "/v1/"+pn+"/campaigns", a.Token, body, "")
	if code != 200 || real["accepted"] != dry["accepted"] || fmt.Sprint(real["rejected"]) != fmt.Sprint(dry["rejected"]) {
		t.Fatalf("real upload answers differently from its dry run:\n real %v\n dry  %v", real, dry)
	}
	// Sequential enumeration: refused lines and the flag it would raise, in
	// the answer only.
	var seq strings.Builder
	seq.WriteString(`{"name":"seq","template":{"body":"hi"}}` + "\n")
	for i := 0; i < 3000; i++ {
		fmt.Fprintf(&seq, `{"to":"1556%07d"}`+"\n", 5000+i)
	}
	e2 := start(t)
	c := e2.business("C", "15550001003", "100k")
	before = settledDigest(t, e2)
	code, out := e2.do("POST", "/v1/"+c.PNs[0]+"/campaigns?dry_run=1", c.Token, seq.String(), "application/x-ndjson")
	flags, _ := out["integrity"].(map[string]any)["flags"].([]any)
	if code != 200 || out["accepted"].(float64) != 0 || len(flags) != 1 || flags[0].(map[string]any)["name"] != "sequential_enumeration" {
		t.Fatalf("sequential dry run: %d %v", code, out)
	}
	if after := dbDigest(t, e2); after != before {
		t.Fatal("a refused dry run changed the database")
	}
	// Not even the limiter's signal windows, once persisted (as the node
	// does every minute): the dry run left none behind in memory either.
	if err := e2.n.Limits.Close(); err != nil {
		t.Fatal(err)
	}
	if after := dbDigest(t, e2); after != before {
		t.Fatal("a refused dry run left a signal window behind")
	}
	if _, v := e2.do("GET", "/v1/"+c.PNs[0]+"/integrity", c.Token, "", ""); len(v["flags"].([]any)) != 0 {
		t.Fatalf("a dry run raised a flag: %v", v)
	}
}

// TestCancelDuringUpload: a campaign canceled while its NDJSON upload
// streams stops the upload (409, saying how much was accepted); what was
// accepted ends canceled or sent, none after the cancel's answer.
func TestCancelDuringUpload(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "100k")
	pn := a.PNs[0]
	// The webhook gets each canceled message's status, with its recipient.
	var mu sync.Mutex
	canceled := map[string]string{}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		sts, _ := webhook.ParsePayload(body)
		mu.Lock()
		for _, s := range sts {
			if s.Status == "canceled" {
				canceled[s.ID] = s.RecipientID
			}
		}
		mu.Unlock()
	})}
	go srv.Serve(ln)
	defer srv.Close()
	if code, out := e.do("PUT", "/v1/"+pn+"/webhook", a.Token, fmt.Sprintf(`{"url":"http://%s/hook","secret":"whsecret123"}`, ln.Addr()), ""); code != 200 {
		t.Fatalf("webhook: %d %v", code, out)
	}
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", e.base+"/v1/"+pn+"/campaigns", pr)
	req.Header.Set("Authorization", "Bearer "+a.Token)
	req.Header.Set("Content-Type", "application/x-ndjson")
	type answer struct {
		code int
		raw  []byte
	}
	ans := make(chan answer, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			ans <- answer{0, []byte(err.Error())}
			return
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		ans <- answer{resp.StatusCode, raw}
	}()
	fmt.Fprintln(pw, `{"name":"stream","template":{"body":"hi"}}`)
	line := 0
	write := func(n int) {
		for i := 0; i < n; i++ {
			line++
			fmt.Fprintf(pw, `{"to":"1555%07d"}`+"\n", (line*7919)%99991)
		}
	}
	write(5000) // two batches of 2,048 go in
	var cid string
	testutil.Until(t, 30*time.Second, func() bool {
		_, out := e.do("GET", "/v1/"+pn+"/campaigns", a.Token, "", "")
		if d, _ := out["data"].([]any); len(d) == 1 {
			cid = d[0].(map[string]any)["campaign_id"].(string)
			return count(d[0].(map[string]any), "totals", "sent")+count(d[0].(map[string]any), "counts", "queued") > 0
		}
		return false
	}, func() string { return "the upload's campaign never showed up in the list with messages" })
	if code, v := e.do("POST", "/v1/campaigns/"+cid+"/cancel", a.Token, "", ""); code != 200 || v["state"] != "canceled" {
		t.Fatalf("cancel during upload: %d %v", code, v)
	}
	sentAtCancel := e.n.Sim.Stats().Envelopes
	write(100) // the rest: refused at the upload's next batch (here its end)
	pw.Close()
	got := <-ans
	if got.code != 409 || !strings.Contains(string(got.raw), "canceled during its upload") {
		t.Fatalf("upload after its cancel: %d %s", got.code, got.raw)
	}
	// Up to the engine's backoff cap and more: on a loaded machine the
	// simulator's key queries for 4,096 new recipients time out, and those
	// messages wait out their retry backoff (up to 5 minutes) before they
	// come due and are canceled (seen twice in CI with 2 minutes).
	e.waitDrainedWithin(6 * time.Minute)
	v := e.campaign(a.Token, cid)
	if v["state"] != "canceled" || count(v, "counts", "queued") != 0 || count(v, "totals", "canceled") == 0 {
		t.Fatalf("after: %v", v)
	}
	cnt, _ := e.n.Engine.Statuses().Counters(cid)
	if cnt.Sent+cnt.Canceled+cnt.Failed != int64(v["accepted"].(float64)) {
		t.Fatalf("counters %+v for %v accepted", cnt, v["accepted"])
	}
	if st := e.n.Sim.Stats(); st.Envelopes != sentAtCancel {
		t.Fatalf("%d envelopes accepted by the platform after the cancel's answer", st.Envelopes-sentAtCancel)
	}
	testutil.Until(t, 30*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return int64(len(canceled)) == cnt.Canceled },
		func() string {
			mu.Lock()
			defer mu.Unlock()
			return fmt.Sprintf("%d canceled statuses at the webhook, %d counted", len(canceled), cnt.Canceled)
		})
	mu.Lock()
	for id, to := range canceled {
		if !strings.HasPrefix(to, "1555") {
			t.Fatalf("canceled status of %s without its recipient: %q", id, to)
		}
	}
	mu.Unlock()
}
