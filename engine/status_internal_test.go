package engine

import (
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	json "github.com/goccy/go-json"

	"github.com/heraldhq/herald/heraldtype"
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
