package platform

import (
	"encoding/json"
	"reflect"
	"testing"
	"unsafe"
)

// decodeWithJSON is what DecodeMessagesResponse must always equal.
func decodeWithJSON(body []byte) ([]Result, error) {
	var r MessagesResponse
	err := json.Unmarshal(body, &r)
	return r.Results, err
}

// sameAsJSON fails t unless DecodeMessagesResponse gives encoding/json's
// results, or an error exactly when encoding/json does.
func sameAsJSON(t *testing.T, body []byte, envs []Envelope) (scanned bool) {
	t.Helper()
	want, wantErr := decodeWithJSON(body)
	// A slice with room and stale contents, as a reused buffer would have.
	buf := make([]Result, 0, 4)
	for range 4 {
		buf = append(buf, Result{ID: "stale", DeviceID: 99, Status: "stale", Code: "stale", RetryAfterMS: 7})
	}
	got, err := DecodeMessagesResponse(body, envs, buf[:0])
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("%q: error %v, encoding/json says %v", body, err, wantErr)
	}
	if err == nil && !(len(got) == 0 && len(want) == 0) && !reflect.DeepEqual(got, want) {
		t.Fatalf("%q:\n got %+v\nwant %+v", body, got, want)
	}
	_, scanned = scanMessagesResponse(body, envs, nil)
	return scanned
}

var decodeSeeds = []string{
	`{"results":[{"id":"a","device_id":1,"status":"accepted"}]}`,
	`{"results":[{"id":"a","device_id":1,"status":"accepted"},{"id":"b","device_id":2,"status":"error","code":"throttled","retry_after_ms":250}]}`,
	` { "results" : [ { "id" : "a" , "device_id" : 1 , "status" : "accepted" } ] } ` + "\n",
	`{"results":[]}`,
	`{"results":[{}]}`,
	`{"results":[{"id":"x","device_id":4294967295,"status":"weird","code":"new_code"}]}`,
	`{"results":null}`,
	`{"results":[{"id":"a\u0041","device_id":1,"status":"accepted"}]}`,
	`{"results":[{"ID":"a","device_id":1,"status":"accepted"}]}`,
	`{"results":[{"id":"a","device_id":4294967296,"status":"accepted"}]}`,
	`{"results":[{"id":"a","device_id":-1,"status":"accepted"}]}`,
	`{"results":[{"id":"a","device_id":1.0,"status":"accepted"}]}`,
	`{"results":[{"id":"a","device_id":01,"status":"accepted"}]}`,
	`{"results":[{"id":"a","device_id":"1","status":"accepted"}]}`,
	`{"results":[{"id":"a","device_id":1,"status":"error","retry_after_ms":-5}]}`,
	`{"results":[{"id":"a","device_id":1,"status":"accepted","extra":true}]}`,
	`{"results":[{"id":"a","id":"b","device_id":1,"status":"accepted"}]}`,
	`{"results":[{"id":"a","device_id":1,"status":"accepted"}],"results":[]}`,
	`{"results":[{"id":"a","device_id":1,"status":"accepted"}]}x`,
	`{"results":[{"id":"a","device_id":1,"status":"accepted"},]}`,
	`{"results":[{"id":"a","device_id":1,"status":"accepted"}`,
	`{"results":[{"id":"é","device_id":1,"status":"accepted"}]}`,
	`{"results":[{"id":"a","device_id":1,"status":null}]}`,
	``,
	`[]`,
}

func TestDecodeMessagesResponseIsEncodingJSON(t *testing.T) {
	envs := []Envelope{{ID: "a", DeviceID: 1}, {ID: "b", DeviceID: 2}}
	for _, s := range decodeSeeds {
		sameAsJSON(t, []byte(s), envs)
	}
	// The contract's answers take the scanner, not the fallback.
	for _, s := range decodeSeeds[:6] {
		if _, ok := scanMessagesResponse([]byte(s), envs, nil); !ok {
			t.Errorf("%q went to encoding/json", s)
		}
	}
}

// An id equal to its envelope's shares the envelope's string.
func TestDecodeMessagesResponseSharesEnvelopeIDs(t *testing.T) {
	envs := []Envelope{{ID: "wamid.1", DeviceID: 1}}
	got, err := DecodeMessagesResponse([]byte(`{"results":[{"id":"wamid.1","device_id":1,"status":"accepted"}]}`), envs, nil)
	if err != nil || len(got) != 1 {
		t.Fatal(got, err)
	}
	if unsafeStringData(got[0].ID) != unsafeStringData(envs[0].ID) {
		t.Fatal("the id was copied")
	}
}

// FuzzDecodeMessagesResponse: on any input, the decoder's answer is
// encoding/json's.
func FuzzDecodeMessagesResponse(f *testing.F) {
	for _, s := range decodeSeeds {
		f.Add([]byte(s))
	}
	envs := []Envelope{{ID: "a", DeviceID: 1}, {ID: "b", DeviceID: 2}}
	f.Fuzz(func(t *testing.T, body []byte) {
		sameAsJSON(t, body, envs)
	})
}

func unsafeStringData(s string) *byte { return unsafe.StringData(s) }
