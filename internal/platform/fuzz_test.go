package platform

import (
	"encoding/json"
	"testing"
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

func FuzzEvents(f *testing.F) {
	f.Add([]byte(`{"events":[{"type":"delivered","id":"x","user":"1555","device_id":1,"ts":1}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var evs Events
		_ = json.Unmarshal(body, &evs)
		_ = Verify([]byte("s"), body, Sign([]byte("s"), body))
	})
}
