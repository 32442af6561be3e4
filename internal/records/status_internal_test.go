package records

import (
	"bytes"
	"errors"
	"log/slog"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	json "github.com/goccy/go-json"
	lru "github.com/hashicorp/golang-lru/v2"
	"pgregory.net/rapid"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/metrics"
)

// TestQueuedRecordsSameBytesAsEncode: Put's spliced record is byte for byte
// what appendStatus gives for the same record, for awkward ids and times too.
func TestQueuedRecordsSameBytesAsEncode(t *testing.T) {
	for _, c := range []struct{ biz, pn, cid string }{
		{"biz1", "15550001", "cmp_00ff"}, {"b", "p", ""}, {`q"uo\te`, "ünï", "<&>"}, {strings.Repeat("x", 300), "p", "c"},
	} {
		q := NewQueuedRecords(c.biz, c.pn, c.cid)
		for _, ts := range []int64{0, 1, 1764115200, -5, 1 << 40, -1 << 62} {
			rec := MessageStatus{BusinessID: c.biz, PhoneNumberID: c.pn, CampaignID: c.cid,
				Status: heraldtype.StatusQueued, History: []StatusHistory{{TS: ts, Status: heraldtype.StatusQueued}}, Expires: ts/2 + 86400}
			want := appendStatus(nil, &rec)
			b := new(pebble.Batch)
			q.Put(b, "wamid.X", time.Unix(ts, 0), time.Unix(ts/2+86400, 0))
			r := b.Reader()
			_, k, v, ok, err := r.Next()
			if !ok || err != nil {
				t.Fatalf("batch: %v %v", ok, err)
			}
			if string(k) != "eMwamid.X" || !bytes.Equal(v, want) {
				t.Fatalf("%+v ts %d:\n got %s %x\nwant %x", c, ts, k, v, want)
			}
			var back MessageStatus
			if err := decodeStatus(v, &back); err != nil || !reflect.DeepEqual(back, rec) {
				t.Fatalf("%+v ts %d: decoded %+v %v, want %+v", c, ts, back, err, rec)
			}
		}
	}
}

// TestStatusRecordRoundTripAndLegacyJSON: any record decodes to itself; the
// JSON records written before session 8 still decode; truncated, padded and
// unknown forms are errors, never a partial record.
func TestStatusRecordRoundTripAndLegacyJSON(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		rec := MessageStatus{
			BusinessID: rapid.String().Draw(t, "b"), PhoneNumberID: rapid.String().Draw(t, "p"),
			CampaignID: rapid.String().Draw(t, "c"), Status: rapid.String().Draw(t, "s"),
			Code: rapid.Int().Draw(t, "code"),
		}
		for i, n := 0, rapid.IntRange(0, maxHistory+2).Draw(t, "n"); i < n; i++ {
			rec.History = append(rec.History, StatusHistory{TS: rapid.Int64().Draw(t, "ts"),
				Status: rapid.String().Draw(t, "hs"), Code: rapid.Int().Draw(t, "hc")})
		}
		v := appendStatus(nil, &rec)
		var back MessageStatus
		if err := decodeStatus(v, &back); err != nil || !reflect.DeepEqual(back, rec) {
			t.Fatalf("binary: %+v %v, want %+v", back, err, rec)
		}
		// The same record as JSON (the pre-s8 form). JSON drops an empty
		// history's nil-ness and invalid UTF-8, so compare what JSON keeps.
		j, _ := json.Marshal(rec)
		var fromJSON, want MessageStatus
		json.Unmarshal(j, &want)
		if err := decodeStatus(j, &fromJSON); err != nil || !reflect.DeepEqual(fromJSON, want) {
			t.Fatalf("JSON: %+v %v, want %+v", fromJSON, err, want)
		}
		// Every proper prefix, and any trailing byte, is an error.
		for cut := 0; cut < len(v); cut++ {
			if err := decodeStatus(v[:cut], &back); err == nil {
				t.Fatalf("prefix of %d of %d bytes decoded: %+v", cut, len(v), back)
			} else if !errors.Is(err, errStatusRec) || back.BusinessID != "" || back.History != nil {
				t.Fatalf("prefix %d: %v, record %+v", cut, err, back)
			}
		}
		if err := decodeStatus(append(v, 0), &back); err == nil {
			t.Fatal("a trailing byte decoded")
		}
	})
	for _, bad := range [][]byte{nil, {0x02}, []byte("[1]"), []byte("{bad json")} {
		var rec MessageStatus
		if err := decodeStatus(bad, &rec); !errors.Is(err, errStatusRec) {
			t.Fatalf("%q: %v, want errStatusRec", bad, err)
		}
	}
}

// FuzzDecodeStatus: decoding any bytes never panics, and what decodes
// re-encodes to a record that decodes the same (an empty history is an
// empty history: JSON's [] and the binary form's nil are the same record;
// the first crasher the fuzzer found, kept in testdata).
func FuzzDecodeStatus(f *testing.F) {
	rec := MessageStatus{BusinessID: "biz", PhoneNumberID: "pn", CampaignID: "cmp", Status: "sent",
		History: []StatusHistory{{TS: 1764115200, Status: "queued"}, {TS: 1764115201, Status: "sent"}}}
	f.Add(appendStatus(nil, &rec))
	j, _ := json.Marshal(rec)
	f.Add(j)
	f.Fuzz(func(t *testing.T, v []byte) {
		var a, b MessageStatus
		if decodeStatus(v, &a) != nil {
			return
		}
		if len(a.History) == 0 {
			a.History = nil
		}
		if err := decodeStatus(appendStatus(nil, &a), &b); err != nil || !reflect.DeepEqual(a, b) {
			t.Fatalf("%+v re-encoded decodes to %+v (%v)", a, b, err)
		}
	})
}

// statusesOn is a status writer on db whose apply the test calls itself (no loop).
func statusesOn(db *kv.DB) *Statuses {
	s := &Statuses{db: db, log: slog.New(slog.DiscardHandler), m: metrics.New(), batches: kv.NewBatchPool(db, 4<<20), now: time.Now}
	s.counters, _ = lru.New[string, *Counters](16)
	return s
}

// TestStatusesSurviveAFailedCommit: rounds through apply's kept batches write
// only their own records (the statuses and counters add up), and after a
// commit that fails (the handle poisoned by an fsync error) apply drops the
// counters it touched and the next round fails the same way, without panic.
func TestStatusesSurviveAFailedCommit(t *testing.T) {
	toggle := &errorfs.Toggle{Injector: errorfs.InjectorFunc(func(op errorfs.Op) error {
		if op.Kind == errorfs.OpFileSync || op.Kind == errorfs.OpFileSyncData || op.Kind == errorfs.OpFileSyncTo {
			return errorfs.ErrInjected
		}
		return nil
	})}
	db, err := kv.Open(kv.Options{Dir: t.TempDir(), FS: errorfs.Wrap(vfs.Default, toggle)})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	s := statusesOn(db)
	now := time.Unix(1764115200, 0)
	enqueue := func(ids ...string) {
		b := db.NewBatch()
		for _, id := range ids {
			NewStatusRecord(b, id, "biz", "pn", "cmp", now, now.Add(time.Hour))
		}
		if err := db.Commit(b, true); err != nil {
			t.Fatal(err)
		}
	}
	status := func(id string) string {
		v, ok, err := db.GetCopy(statusKey(id))
		if err != nil || !ok {
			return "missing"
		}
		var rec MessageStatus
		decodeStatus(v, &rec)
		return rec.Status
	}

	ids := []string{"m1", "m2", "m3", "m4", "m5", "m6"}
	enqueue(ids...)
	for i, id := range ids { // one round each, through the kept batches
		to := heraldtype.StatusSent
		if i%2 == 1 {
			to = heraldtype.StatusDelivered
		}
		s.apply([]Update{{ID: id, Status: to, At: now}})
	}
	for i, id := range ids {
		want := "sent"
		if i%2 == 1 {
			want = "delivered"
		}
		if got := status(id); got != want {
			t.Fatalf("%s: %s, want %s", id, got, want)
		}
	}
	if c, _ := s.loadCounters("cmp"); c.Sent != 6 || c.Delivered != 3 {
		t.Fatalf("counters say %d sent, %d delivered; want 6, 3", c.Sent, c.Delivered)
	}

	enqueue("m7")
	// Statuses commit without fsync, so the fault is met by a synced write
	// first, which poisons the handle; apply's commit then fails.
	toggle.On()
	b := db.NewBatch()
	b.Set([]byte("x"), []byte("y"), nil)
	if err := db.Commit(b, true); err == nil {
		t.Fatal("the injected fsync error did not fail the commit")
	}
	s.apply([]Update{{ID: "m7", Status: heraldtype.StatusSent, At: now}})
	if _, cached := s.counters.Get("cmp"); cached {
		t.Fatal("counters touched by the failed round are still cached")
	}
	s.apply([]Update{{ID: "m1", Status: heraldtype.StatusDelivered, At: now}}) // fails again, no panic
	toggle.Off()
}

// TestStatusesUpgradeLegacyJSONRecords: a status record in the JSON form of
// earlier versions moves forward like any other and is written back binary,
// its history kept; the counters count it.
func TestStatusesUpgradeLegacyJSONRecords(t *testing.T) {
	db := openStatusDB(t)
	s := statusesOn(db)
	legacy, _ := json.Marshal(MessageStatus{BusinessID: "biz", PhoneNumberID: "pn", CampaignID: "cmp",
		Status: heraldtype.StatusQueued, History: []StatusHistory{{TS: 1764115200, Status: heraldtype.StatusQueued}}})
	b := db.NewBatch()
	b.Set(statusKey("old"), legacy, nil)
	if err := db.Commit(b, true); err != nil {
		t.Fatal(err)
	}
	s.apply([]Update{{ID: "old", Status: heraldtype.StatusSent, At: time.Unix(1764115260, 0)}})
	v, ok, err := db.GetCopy(statusKey("old"))
	if err != nil || !ok || v[0] != statusRecV2 {
		t.Fatalf("record not rewritten in the binary form: %q %v %v", v, ok, err)
	}
	var rec MessageStatus
	if err := decodeStatus(v, &rec); err != nil {
		t.Fatal(err)
	}
	want := MessageStatus{BusinessID: "biz", PhoneNumberID: "pn", CampaignID: "cmp", Status: heraldtype.StatusSent,
		History: []StatusHistory{{TS: 1764115200, Status: heraldtype.StatusQueued}, {TS: 1764115260, Status: heraldtype.StatusSent}}}
	if !reflect.DeepEqual(rec, want) {
		t.Fatalf("upgraded record %+v, want %+v", rec, want)
	}
	if c, _ := s.loadCounters("cmp"); c.Sent != 1 {
		t.Fatalf("counters say %d sent, want 1", c.Sent)
	}
}

func openStatusDB(t *testing.T) *kv.DB {
	t.Helper()
	db, err := kv.Open(kv.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestFreshSentWritesWhatTheReadWould: the engine's "sent" or "failed" for a
// message on its first lease carries the queued record, and the writer's
// result — the stored record, the counters, the reported changes — is what
// reading the stored queued record gives. The fresh side has no stored
// record at all, so it cannot have read one.
func TestFreshSentWritesWhatTheReadWould(t *testing.T) {
	t0, t1 := time.Unix(1764115200, 0), time.Unix(1764115263, 0)
	type result struct {
		rec     []byte
		c       Counters
		changes []heraldtype.StatusChange
	}
	run := func(fresh bool, campaign, status string, code int) result {
		db := openStatusDB(t)
		s := statusesOn(db)
		var changes []heraldtype.StatusChange
		s.onChange = func(c []heraldtype.StatusChange) { changes = append(changes, c...) }
		u := Update{ID: "m1", Status: status, Code: code, At: t1, Recipient: "1555"}
		if fresh {
			u.Fresh, u.Queued = true, Queued{"biz", "pn", campaign, t0.Unix(), t0.Unix() + 3600}
		} else {
			b := db.NewBatch()
			NewStatusRecord(b, "m1", "biz", "pn", campaign, t0, t0.Add(time.Hour))
			db.Commit(b, true)
		}
		s.apply([]Update{u})
		v, _, _ := db.GetCopy(statusKey("m1"))
		var c Counters
		if campaign != "" {
			cc, _ := s.loadCounters(campaign)
			c = *cc
		}
		return result{v, c, changes}
	}
	for _, campaign := range []string{"cmp", ""} {
		for _, st := range []struct {
			status string
			code   int
		}{{heraldtype.StatusSent, 0}, {heraldtype.StatusFailed, heraldtype.CodeUndeliverable}} {
			read, fresh := run(false, campaign, st.status, st.code), run(true, campaign, st.status, st.code)
			if len(read.rec) == 0 || !reflect.DeepEqual(read, fresh) {
				t.Fatalf("campaign %q, %s:\nread  %+v\nfresh %+v", campaign, st.status, read, fresh)
			}
		}
	}
}

// TestFreshSentAfterAnOvertakingEvent: a delivered receipt applied before the
// engine's fresh "sent" (in an earlier round or earlier in the same one)
// makes that "sent" read the stored record: the status stays delivered and
// nothing is counted twice. The other order is the ordinary one.
func TestFreshSentAfterAnOvertakingEvent(t *testing.T) {
	t0 := time.Unix(1764115200, 0)
	for _, tc := range []struct {
		name   string
		rounds [][]string // "d": the receipt, "s": the engine's fresh sent
	}{
		{"receipt first, separate rounds", [][]string{{"d"}, {"s"}}},
		{"receipt first, one round", [][]string{{"d", "s"}}},
		{"sent first, one round", [][]string{{"s", "d"}}},
		{"sent first, separate rounds", [][]string{{"s"}, {"d"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := openStatusDB(t)
			s := statusesOn(db)
			b := db.NewBatch()
			NewStatusRecord(b, "m1", "biz", "pn", "cmp", t0, t0.Add(time.Hour))
			db.Commit(b, true)
			for i, round := range tc.rounds {
				var ups []Update
				for _, what := range round {
					at := t0.Add(time.Duration(i+1) * time.Second)
					if what == "d" {
						ups = append(ups, Update{ID: "m1", Status: heraldtype.StatusDelivered, At: at})
					} else {
						ups = append(ups, Update{ID: "m1", Status: heraldtype.StatusSent, At: at,
							Fresh: true, Queued: Queued{"biz", "pn", "cmp", t0.Unix(), t0.Unix() + 3600}})
					}
				}
				s.apply(ups)
			}
			v, _, _ := db.GetCopy(statusKey("m1"))
			var rec MessageStatus
			if err := decodeStatus(v, &rec); err != nil || rec.Status != heraldtype.StatusDelivered {
				t.Fatalf("status %q (%v), want delivered", rec.Status, err)
			}
			if c, _ := s.loadCounters("cmp"); c.Sent != 1 || c.Delivered != 1 {
				t.Fatalf("counters %d sent, %d delivered; want 1, 1", c.Sent, c.Delivered)
			}
			if len(s.over.at) != 0 {
				t.Fatalf("overtaken ids left: %v", s.over.at)
			}
		})
	}
}

// TestOvertakenForgetsAfterItsHorizon: an id whose fresh "sent" never comes
// is forgotten after overtakenFor, and a re-added id keeps its newer time.
func TestOvertakenForgetsAfterItsHorizon(t *testing.T) {
	var o overtaken
	t0 := time.Unix(1764115200, 0)
	o.add("a", t0)
	o.add("b", t0.Add(time.Minute))
	o.add("a", t0.Add(5*time.Minute)) // again, later
	o.expire(t0.Add(overtakenFor + 30*time.Second))
	if _, ok := o.at["a"]; !ok {
		t.Fatal("a, re-added within the horizon, was forgotten")
	}
	if _, ok := o.at["b"]; !ok {
		t.Fatal("b forgotten before its horizon")
	}
	o.expire(t0.Add(overtakenFor + 2*time.Minute))
	if _, ok := o.at["b"]; ok {
		t.Fatal("b outlived its horizon")
	}
	if !o.take("a") || o.take("a") {
		t.Fatal("take: once, then gone")
	}
	o.expire(t0.Add(time.Hour))
	if len(o.fifo) != 0 || len(o.at) != 0 {
		t.Fatalf("left: %v %v", o.fifo, o.at)
	}
	// Bounded: past overtakenMax the oldest tenth goes, the newest stay.
	for i := range overtakenMax + 10 {
		o.add(strconv.Itoa(i), t0)
	}
	if len(o.fifo) > overtakenMax || len(o.fifo) < overtakenMax*9/10 || len(o.at) != len(o.fifo) {
		t.Fatalf("%d in the fifo, %d remembered; want at most %d", len(o.fifo), len(o.at), overtakenMax)
	}
	if o.take("9") || !o.take(strconv.Itoa(overtakenMax+9)) {
		t.Fatal("the oldest should have gone, the newest stayed")
	}
}

// TestTerminalStatusesAreNotOvertakingEvents: a cancel or a failure of a
// queued message (no "sent" to come) is not remembered as an event that
// overtook "sent" — a million canceled messages filled that list and made
// each update copy it (quadratic); canceled is counted once and is final.
func TestTerminalStatusesAreNotOvertakingEvents(t *testing.T) {
	t0 := time.Unix(1764115200, 0)
	db := openStatusDB(t)
	s := statusesOn(db)
	b := db.NewBatch()
	for _, id := range []string{"m1", "m2"} {
		NewStatusRecord(b, id, "biz", "pn", "cmp", t0, t0.Add(time.Hour))
	}
	db.Commit(b, true)
	s.apply([]Update{{ID: "m1", Status: heraldtype.StatusCanceled, At: t0}, {ID: "m2", Status: heraldtype.StatusFailed, Code: heraldtype.CodeExpired, At: t0}})
	s.apply([]Update{{ID: "m1", Status: heraldtype.StatusCanceled, At: t0}, {ID: "m1", Status: heraldtype.StatusSent, At: t0}})
	if len(s.over.at) != 0 {
		t.Fatalf("terminal statuses remembered as overtaking events: %v", s.over.at)
	}
	c, _ := s.loadCounters("cmp")
	if c.Canceled != 1 || c.Failed != 1 || c.Sent != 0 {
		t.Fatalf("counters %+v", c)
	}
}
