package records

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/seal"
)

type fakeShared struct {
	mu   sync.Mutex
	m    map[string][]byte
	down bool
}

func (f *fakeShared) Get(k string) ([]byte, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, false, errors.New("NATS down")
	}
	v, ok := f.m[k]
	return v, ok, nil
}

func (f *fakeShared) Put(k string, v []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errors.New("NATS down")
	}
	f.m[k] = v
	return nil
}

// TestIdempotencyRecordsShared: what one node's Uploads remembers, another
// node's finds through the shared store — only once the batch is durable
// (Committed; a discarded batch shares nothing), not past its time, and an
// unreachable store is an error (the request must not be taken as new).
func TestIdempotencyRecordsShared(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	sl, _ := seal.New(seal.TestKey(1))
	sh := &fakeShared{m: map[string][]byte{}}
	a := NewUploads(openStatusDB(t), sl, clock)
	b := NewUploads(openStatusDB(t), sl, clock)
	a.SetShared(sh)
	b.SetShared(sh)
	// A single send's answer, in a batch: shared once Committed.
	batch := a.db.NewBatch()
	var hash [32]byte
	a.RememberSent(batch, "biz_1", "k1", hash, []byte(`{"id":"m1"}`), now, now.Add(time.Hour))
	if _, found, _, err := b.SentAnswer("biz_1", "k1", hash); found || err != nil {
		t.Fatalf("shared before the batch was durable: %v %v", found, err)
	}
	if err := a.db.Commit(batch, true); err != nil {
		t.Fatal(err)
	}
	if err := a.Committed(batch); err != nil {
		t.Fatal(err)
	}
	if ans, found, same, err := b.SentAnswer("biz_1", "k1", hash); !found || !same || err != nil || string(ans) != `{"id":"m1"}` {
		t.Fatalf("the other node: %q %v %v %v", ans, found, same, err)
	}
	// Another business's key of the same name is not it.
	if _, found, _, _ := b.SentAnswer("biz_2", "k1", hash); found {
		t.Fatal("a key shared across businesses")
	}
	// Progress of a discarded batch is never shared.
	batch = a.db.NewBatch()
	a.PutProgress(batch, "biz_1", "up", []byte(`{"lines":10}`), now.Add(time.Hour))
	a.Discard(batch)
	batch.Close()
	if v, err := b.Progress("biz_1", "up"); v != nil || err != nil {
		t.Fatalf("progress of a discarded batch: %q %v", v, err)
	}
	// A campaign's answer, then past its time.
	if err := a.RememberAnswer("biz_1", "camp", []byte(`{"campaign_id":"c1"}`), now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if ans, ok, err := b.Answer("biz_1", "camp"); !ok || err != nil || string(ans) != `{"campaign_id":"c1"}` {
		t.Fatalf("the other node's answer: %q %v %v", ans, ok, err)
	}
	now = now.Add(2 * time.Hour)
	if _, ok, err := b.Answer("biz_1", "camp"); ok || err != nil {
		t.Fatalf("an answer past its time: %v %v", ok, err)
	}
	// Intents are shared at once (no batch), for their time; a single
	// node's Uploads stores none.
	if err := a.Intend("i", "biz_1", "k2", []byte("hash+id"), now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if v, ok, err := b.SendIntent("biz_1", "k2"); !ok || err != nil || string(v) != "hash+id" {
		t.Fatalf("the other node's intent: %q %v %v", v, ok, err)
	}
	if err := a.Intend("p", "biz_1", "up2", []byte(`{"lines":0}`), now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Progress("biz_1", "up2"); string(v) != `{"lines":0}` || err != nil {
		t.Fatalf("the other node's upload intent: %q %v", v, err)
	}
	single := NewUploads(openStatusDB(t), sl, clock)
	if err := single.Intend("i", "biz_1", "k3", []byte("x"), now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := single.SendIntent("biz_1", "k3"); ok || err != nil {
		t.Fatalf("a single node's intent: %v %v", ok, err)
	}
	// The store unreachable: an error, not "no answer"; a write fails.
	sh.down = true
	if err := a.Intend("i", "biz_1", "k4", []byte("x"), now.Add(time.Hour)); err == nil {
		t.Fatal("an intent not shared reported as stored")
	}
	if _, _, err := b.SendIntent("biz_1", "k2"); err == nil {
		t.Fatal("an unreachable store read as no intent")
	}
	if _, _, err := b.Answer("biz_1", "other"); err == nil {
		t.Fatal("an unreachable store read as no answer")
	}
	if _, _, _, err := b.SentAnswer("biz_1", "other", hash); err == nil {
		t.Fatal("an unreachable store read as no answer (single send)")
	}
	if _, err := b.Progress("biz_1", "other"); err == nil {
		t.Fatal("an unreachable store read as no progress")
	}
	if err := a.RememberAnswer("biz_1", "camp2", []byte(`{}`), now.Add(time.Hour)); err == nil {
		t.Fatal("an answer not shared reported as remembered")
	}
}
