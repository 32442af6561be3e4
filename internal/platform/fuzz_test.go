package platform

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"

	"pgregory.net/rapid"
)

func TestMatchResultsNeverTakesMissingAsAccepted(t *testing.T) {
	envs := []Envelope{{ID: "a", DeviceID: 1}, {ID: "a", DeviceID: 2}, {ID: "b", DeviceID: 1}}
	got := MatchResults(envs, []Result{{ID: "a", DeviceID: 2, Status: "accepted"}, {ID: "b", DeviceID: 1, Status: "weird"}, {ID: "zz", DeviceID: 9, Status: "accepted"}})
	if got[0].Code != CodeUnavailable || got[1].Status != StatusAccepted || got[2].Code != CodeUnavailable {
		t.Fatalf("%+v", got)
	}
}

// FuzzResults: whatever the platform answers, every envelope gets exactly one
// result, and only an explicit "accepted" for that (id, device) counts as one.
func FuzzResults(f *testing.F) {
	f.Add([]byte(`{"results":[{"id":"a","device_id":1,"status":"accepted"}]}`))
	f.Add([]byte(`{"results":[{"id":"a","device_id":1,"status":"error","code":"throttled","retry_after_ms":-5}]}`))
	f.Add([]byte(`{"results":null}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var r MessagesResponse
		if json.Unmarshal(body, &r) != nil {
			return
		}
		envs := []Envelope{{ID: "a", DeviceID: 1}, {ID: "b", DeviceID: 2}}
		out := MatchResults(envs, r.Results)
		if len(out) != len(envs) {
			t.Fatal("result count")
		}
		for i, res := range out {
			if res.Status == StatusAccepted {
				found := false
				for _, x := range r.Results {
					if x.ID == envs[i].ID && x.DeviceID == envs[i].DeviceID && x.Status == StatusAccepted {
						found = true
					}
				}
				if !found {
					t.Fatal("accepted without the platform saying so")
				}
			}
		}
	})
}

// FuzzEvents: any body signed with the secret verifies; signed with another
// secret, or with the body changed, it does not; decoding never panics.
func FuzzEvents(f *testing.F) {
	f.Add([]byte(`{"events":[{"type":"delivered","id":"x","user":"1555","device_id":1,"ts":1}]}`), byte(1))
	f.Fuzz(func(t *testing.T, body []byte, flip byte) {
		var evs Events
		_ = json.Unmarshal(body, &evs)
		sig := Sign([]byte("s"), body)
		if !Verify([]byte("s"), body, sig) {
			t.Fatal("a body signed with the secret does not verify")
		}
		if Verify([]byte("t"), body, sig) {
			t.Fatal("a signature under another secret verifies")
		}
		if len(body) > 0 {
			changed := append([]byte(nil), body...)
			changed[int(flip)%len(changed)] ^= 0x01
			if Verify([]byte("s"), changed, sig) {
				t.Fatal("a changed body verifies")
			}
		}
	})
}

// TestMatchResultsInOrderAgreesWithByKey: the in-order fast path gives what
// matching by (id, device) gives, for answers in order, shuffled, short,
// padded or with unknown statuses.
func TestMatchResultsInOrderAgreesWithByKey(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(0, 6).Draw(t, "n")
		envs := make([]Envelope, n)
		for i := range envs {
			envs[i] = Envelope{ID: fmt.Sprintf("m%d", i/2), DeviceID: uint32(i%2 + 1)} // unique (id, device)
		}
		statuses := []string{StatusAccepted, StatusError, "weird"}
		results := make([]Result, n)
		for i, e := range envs {
			results[i] = Result{ID: e.ID, DeviceID: e.DeviceID, Status: rapid.SampledFrom(statuses).Draw(t, "status"), Code: "c"}
		}
		switch rapid.IntRange(0, 3).Draw(t, "shape") {
		case 1:
			results = rapid.Permutation(results).Draw(t, "shuffled")
		case 2:
			results = results[:rapid.IntRange(0, n).Draw(t, "short")]
		case 3:
			results = append(results, Result{ID: "zz", DeviceID: 9, Status: StatusAccepted})
		}
		got := MatchResults(envs, results)
		want := matchByKey(envs, results, make([]Result, len(envs)))
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("in order %+v, by key %+v", got, want)
		}
	})
}
