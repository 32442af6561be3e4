package engine

import (
	"log/slog"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/cockroachdb/pebble/v2/vfs/errorfs"
	json "github.com/goccy/go-json"
	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/metrics"
)

// TestQueuedRecordsSameBytesAsMarshal: Put's spliced record is byte for byte
// what marshalling the struct gives, for awkward ids and times too.
func TestQueuedRecordsSameBytesAsMarshal(t *testing.T) {
	for _, c := range []struct{ biz, pn, cid string }{
		{"biz1", "15550001", "cmp_00ff"}, {"b", "p", ""}, {`q"uo\te`, "ünï", "<&>"},
	} {
		q := NewQueuedRecords(c.biz, c.pn, c.cid)
		for _, ts := range []int64{0, 1, 1764115200, -5, 1 << 40} {
			want, _ := json.Marshal(MessageStatus{BusinessID: c.biz, PhoneNumberID: c.pn, CampaignID: c.cid,
				Status: heraldtype.StatusQueued, History: []StatusHistory{{TS: ts, Status: heraldtype.StatusQueued}}})
			b := new(pebble.Batch)
			q.Put(b, "wamid.X", time.Unix(ts, 0))
			r := b.Reader()
			_, k, v, ok, err := r.Next()
			if !ok || err != nil {
				t.Fatalf("batch: %v %v", ok, err)
			}
			if string(k) != "eMwamid.X" || string(v) != string(want) {
				t.Fatalf("%+v ts %d:\n got %s %s\nwant %s", c, ts, k, v, want)
			}
		}
	}
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
	s := &Statuses{db: db, log: slog.New(slog.DiscardHandler), m: metrics.New(), batches: kv.NewBatchPool(db, 4<<20)}
	s.counters, _ = lru.New[string, *Counters](16)
	now := time.Unix(1764115200, 0)
	enqueue := func(ids ...string) {
		b := db.NewBatch()
		for _, id := range ids {
			NewStatusRecord(b, id, "biz", "pn", "cmp", now)
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
		json.Unmarshal(v, &rec)
		return rec.Status
	}

	ids := []string{"m1", "m2", "m3", "m4", "m5", "m6"}
	enqueue(ids...)
	for i, id := range ids { // one round each, through the kept batches
		to := heraldtype.StatusSent
		if i%2 == 1 {
			to = heraldtype.StatusDelivered
		}
		s.apply([]update{{id: id, status: to, at: now}})
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
	s.apply([]update{{id: "m7", status: heraldtype.StatusSent, at: now}})
	if _, cached := s.counters.Get("cmp"); cached {
		t.Fatal("counters touched by the failed round are still cached")
	}
	s.apply([]update{{id: "m1", status: heraldtype.StatusDelivered, at: now}}) // fails again, no panic
	toggle.Off()
}
