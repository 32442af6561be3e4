package queue

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// parkAll completes every message of l: those whose id is in park go to the
// group's park range, the others are acked.
func parkLease(t *testing.T, q *Queue, l *Lease, group string, park func(id string) bool) {
	t.Helper()
	var os []Outcome
	for _, m := range l.Messages {
		if park(m.ID) {
			os = append(os, Outcome{Seq: m.Seq, Park: group})
		} else {
			os = append(os, Outcome{Seq: m.Seq, Ack: true})
		}
	}
	if err := q.Complete(context.Background(), l, os, nil, false); err != nil {
		t.Fatal(err)
	}
}

// A parked message is never leased again until Unpark; then it comes back in
// its recipient's order, ahead of that recipient's later messages; the
// counters (depth, owner bytes, parked) hold through a reopen; Expire deletes
// a parked message at its TTL.
func TestParkHoldsUntilUnparkAndExpires(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	e := openEnv(t, dir, nil, clock, nil)
	ctx := context.Background()
	exp := clock.Now().Add(time.Hour)
	var msgs []Message
	for i := 0; i < 20; i++ {
		m := msg(fmt.Sprintf("c%02d", i), fmt.Sprintf("1555000%04d", i%5), exp)
		m.Owner = "biz"
		msgs = append(msgs, m)
	}
	if err := e.q.Enqueue(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	ownerBytes := e.q.OwnerBytes("biz")
	// Every message of the campaign gets parked (some from F, the rest from
	// R after a first lease of one message per recipient).
	for round := 0; round < 10; round++ {
		ls := leaseAll(t, e.q, 1+round%3)
		if len(ls) == 0 {
			break
		}
		for _, l := range ls {
			parkLease(t, e.q, l, "cmp_1", func(string) bool { return true })
		}
	}
	if got := e.q.Parked(); got != 20 {
		t.Fatalf("parked %d, want 20", got)
	}
	if n, _ := e.q.Depth(); n != 20 {
		t.Fatalf("depth %d with 20 parked, want 20 (parked messages are still queued)", n)
	}
	if got := e.q.OwnerBytes("biz"); got != ownerBytes {
		t.Fatalf("owner bytes %d after parking, want %d", got, ownerBytes)
	}
	if ls := leaseAll(t, e.q, 16); len(ls) != 0 {
		t.Fatalf("a parked message was leased: %d leases", len(ls))
	}
	// A later message of one of those recipients goes at once.
	late := msg("d00", "15550000000", exp)
	if err := e.q.Enqueue(ctx, []Message{late}); err != nil {
		t.Fatal(err)
	}
	ls := leaseAll(t, e.q, 16)
	if len(ls) != 1 || ls[0].Messages[0].ID != "d00" {
		t.Fatalf("the later message was not leased alone: %+v", ls)
	}
	e.q.Release(ls[0])
	groups, err := e.q.ParkedGroups()
	if err != nil || len(groups) != 1 || groups[0] != "cmp_1" {
		t.Fatalf("parked groups %v %v", groups, err)
	}
	// Reopen: the counters come back from disk.
	e.close()
	e = openEnv(t, dir, nil, clock, nil)
	defer e.close()
	if got, n := e.q.Parked(), e.q.OwnerBytes("biz"); got != 20 || n != ownerBytes {
		t.Fatalf("after reopen: parked %d owner bytes %d, want 20 and %d", got, n, ownerBytes)
	}
	if ls := leaseAll(t, e.q, 16); len(ls) != 1 || len(ls[0].Messages) != 1 || ls[0].Messages[0].ID != "d00" {
		t.Fatalf("after reopen want only d00, got %+v", ls)
	} else {
		e.q.Release(ls[0])
	}
	// Unpark: everything comes back, per recipient in sequence order (the
	// parked ones first: they are older than d00).
	n, err := e.q.Unpark(ctx, "cmp_1")
	if err != nil || n != 20 {
		t.Fatalf("unpark moved %d (%v), want 20", n, err)
	}
	if e.q.Parked() != 0 {
		t.Fatalf("parked %d after unpark", e.q.Parked())
	}
	seen := map[string][]string{}
	for round := 0; round < 10; round++ {
		ls := leaseAll(t, e.q, 16)
		if len(ls) == 0 {
			break
		}
		for _, l := range ls {
			for _, m := range l.Messages {
				seen[string(l.Recipient[:])] = append(seen[string(l.Recipient[:])], m.ID)
			}
			ackAll(t, e.q, l)
		}
	}
	total := 0
	for _, ids := range seen {
		for i := 1; i < len(ids); i++ {
			if ids[i] < ids[i-1] && ids[i-1] != "d00" {
				t.Fatalf("out of order after unpark: %v", ids)
			}
		}
		total += len(ids)
	}
	if total != 21 {
		t.Fatalf("leased %d after unpark, want 21: %v", total, seen)
	}
	if n, b := e.q.Depth(); n != 0 || b != 0 || e.q.OwnerBytes("biz") != 0 {
		t.Fatalf("after acking everything: depth %d/%d owner %d", n, b, e.q.OwnerBytes("biz"))
	}

	// Expiry: a parked message goes at its TTL.
	m := msg("x1", "15559999999", clock.Now().Add(time.Minute))
	if err := e.q.Enqueue(ctx, []Message{m}); err != nil {
		t.Fatal(err)
	}
	for _, l := range leaseAll(t, e.q, 1) {
		parkLease(t, e.q, l, "cmp_2", func(string) bool { return true })
	}
	if e.q.Parked() != 1 {
		t.Fatalf("parked %d", e.q.Parked())
	}
	clock.Advance(2 * time.Minute)
	out, err := e.q.Expire(ctx, clock.Now(), 100)
	if err != nil || len(out) != 1 || out[0].ID != "x1" {
		t.Fatalf("expire: %v %v", out, err)
	}
	if n, b := e.q.Depth(); n != 0 || b != 0 || e.q.Parked() != 0 {
		t.Fatalf("after expiring the parked message: depth %d/%d parked %d", n, b, e.q.Parked())
	}
	if countKeys(t, e, []byte{pfx, kPark})+countKeys(t, e, []byte{pfx, kParkIndex}) != 0 {
		t.Fatal("park keys left after expiry")
	}
	if _, err := e.q.Unpark(ctx, ""); err != ErrBadGroup {
		t.Fatalf("empty group: %v", err)
	}
}

// TakeParked hands each batch to take before deleting it; an error from
// take deletes nothing; afterwards the counters are back to zero.
func TestTakeParked(t *testing.T) {
	clock := newClock()
	e := openEnv(t, t.TempDir(), nil, clock, nil)
	defer e.close()
	ctx := context.Background()
	var msgs []Message
	for i := 0; i < 3000; i++ {
		m := msg(fmt.Sprintf("t%04d", i), fmt.Sprintf("1555%07d", i*37), clock.Now().Add(time.Hour))
		m.Owner = "biz"
		msgs = append(msgs, m)
	}
	if err := e.q.Enqueue(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 20 && e.q.Parked() < 3000; round++ {
		for _, l := range leaseAll(t, e.q, 16) {
			parkLease(t, e.q, l, "cmp_t", func(string) bool { return true })
		}
	}
	if e.q.Parked() != 3000 {
		t.Fatalf("parked %d", e.q.Parked())
	}
	boom := fmt.Errorf("boom")
	if _, err := e.q.TakeParked(ctx, "cmp_t", func([]Message, *pebble.Batch) error { return boom }); err != boom {
		t.Fatalf("take error: %v", err)
	}
	if e.q.Parked() != 3000 {
		t.Fatalf("a failed take deleted: parked %d", e.q.Parked())
	}
	seen := map[string]bool{}
	n, err := e.q.TakeParked(ctx, "cmp_t", func(ms []Message, b *pebble.Batch) error {
		for _, m := range ms {
			if !strings.HasPrefix(string(m.Payload), "body of ") || seen[m.ID] {
				return fmt.Errorf("bad or repeated message %+v", m)
			}
			seen[m.ID] = true
		}
		return nil
	})
	if err != nil || n != 3000 || len(seen) != 3000 {
		t.Fatalf("took %d (%d seen): %v", n, len(seen), err)
	}
	if d, bytes := e.q.Depth(); d != 0 || bytes != 0 || e.q.Parked() != 0 || e.q.OwnerBytes("biz") != 0 {
		t.Fatalf("after: depth %d/%d parked %d owner %d", d, bytes, e.q.Parked(), e.q.OwnerBytes("biz"))
	}
	if countKeys(t, e, []byte{pfx, kPark})+countKeys(t, e, []byte{pfx, kParkIndex}) != 0 {
		t.Fatal("park keys left")
	}
}
