package engine

import (
	"testing"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/records"
	"github.com/heraldhq/herald/queue"
)

// TestWithQueuedOnlyForFirstLeases: only a decoded message on its first
// lease, not a retransmission, carries its queued record; anything else
// makes the writer read the stored one.
func TestWithQueuedOnlyForFirstLeases(t *testing.T) {
	for _, tc := range []struct {
		name  string
		it    item
		fresh bool
	}{
		{"first lease", item{msg: &queue.Message{FirstLease: true}}, true},
		{"handed out before", item{msg: &queue.Message{}}, false},
		{"retransmission", item{msg: &queue.Message{FirstLease: true}, p: heraldtype.Payload{ResetDevice: 2}}, false},
		{"undecodable payload", item{msg: &queue.Message{FirstLease: true}, bad: true}, false},
	} {
		var u records.Update
		withQueued(&u, &tc.it)
		if u.Fresh != tc.fresh {
			t.Errorf("%s: fresh %v, want %v", tc.name, u.Fresh, tc.fresh)
		}
	}
}
