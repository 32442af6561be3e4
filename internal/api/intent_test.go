package api_test

import (
	"crypto/sha256"
	"errors"
	"sync"
	"testing"
	"time"

	promtest "github.com/prometheus/client_golang/prometheus/testutil"
)

// sharedStore stands in for the cluster's KV bucket of idempotency records
// (the node's own Uploads is real; only the store behind it is this map).
type sharedStore struct {
	mu      sync.Mutex
	m       map[string][]byte
	failPut bool // reads work, writes fail
}

func (s *sharedStore) Get(k string) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[k]
	return v, ok, nil
}

func (s *sharedStore) Put(k string, v []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failPut {
		return errors.New("store refuses writes")
	}
	s.m[k] = v
	return nil
}

// TestIdempotencyIntents: with a cluster's shared records, a request with an
// Idempotency-Key stores its intent (a single send's id, an upload's id
// seed) before anything is published. When that store cannot take it the
// request fails whole (503, nothing queued); a send's intent left by a cut
// attempt gives the retry the same id, and binds the key to its body.
func TestIdempotencyIntents(t *testing.T) {
	e := start(t)
	a := e.business("A", "15550001001", "10k")
	store := &sharedStore{m: map[string][]byte{}}
	e.n.Uploads.SetShared(store)
	send := "/v1/" + a.PNs[0] + "/messages"
	body := msgBody("15550000001", "your code is 1234")

	store.failPut = true
	if code, out, _ := e.doIdem(send, a.Token, "k-down", body); code != 503 {
		t.Fatalf("send when the shared store refuses the intent: %d %v", code, out)
	}
	camp := `{"name":"c","template":{"body":"hi"}}` + "\n" + `{"to":"15550000010"}` + "\n" + `{"to":"15550000017"}` + "\n"
	if code, out, _ := e.doIdemCT("/v1/"+a.PNs[0]+"/campaigns", a.Token, "u-down", camp, "application/x-ndjson"); code != 503 {
		t.Fatalf("upload when the shared store refuses the intent: %d %v", code, out)
	}
	if d := e.depth(); d != 0 {
		t.Fatalf("%d messages queued by requests that failed", d)
	}
	store.failPut = false

	// An intent a cut attempt left: the retry sends under its id.
	hash := sha256.Sum256([]byte(body))
	const cutID = "01KBX0000000000000000000AB"
	if err := e.n.Uploads.Intend("i", a.ID, "k-cut", append(hash[:], cutID...), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	code, out, _ := e.doIdem(send, a.Token, "k-cut", body)
	if code != 200 || out["messages"].([]any)[0].(map[string]any)["id"] != cutID {
		t.Fatalf("retry after a cut: %d %v (want id %s)", code, out, cutID)
	}
	// Another body under a key whose attempt was cut: it may have been
	// accepted, so the key is taken.
	if err := e.n.Uploads.Intend("i", a.ID, "k-cut2", append(hash[:], cutID...), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := e.doIdem(send, a.Token, "k-cut2", msgBody("15550000001", "other")); code != 409 || errCode(out) != 100 {
		t.Fatalf("another body under a cut key: %d %v", code, out)
	}
	// The refused upload left nothing: its retry is a new upload.
	code, first, h := e.doH("POST", "/v1/"+a.PNs[0]+"/campaigns", a.Token, camp, "application/x-ndjson", map[string]string{"Idempotency-Key": "u-down"})
	if code != 200 || first["accepted"] != float64(2) || h.Get("Idempotent-Resumed-After-Line") != "" {
		t.Fatalf("upload retried: %d %v %v", code, first, h)
	}
	e.waitDrained()
	if got := promtest.ToFloat64(e.n.Metrics.Accepted); got != 3 {
		t.Fatalf("accepted %v messages, want 3 (the cut send's retry and the upload)", got)
	}
}
