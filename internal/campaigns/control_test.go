package campaigns

import (
	"testing"
	"time"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/kv"
)

func open(t *testing.T, dir string) (*kv.DB, *Control) {
	t.Helper()
	db, err := kv.Open(kv.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(db)
	if err != nil {
		t.Fatal(err)
	}
	return db, c
}

// TestStatesAreDurableAndFinal: states survive a reopen; running clears
// them; a canceled campaign stays canceled; Sweep forgets expired ones.
func TestStatesAreDurableAndFinal(t *testing.T) {
	dir := t.TempDir()
	db, c := open(t, dir)
	now := time.Unix(1_800_000_000, 0)
	if c.State("a") != heraldtype.CampaignRunning || c.State("") != heraldtype.CampaignRunning {
		t.Fatal("unknown campaigns run")
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.Set("a", heraldtype.CampaignPaused, now, now.Add(time.Hour)))
	must(c.Set("b", heraldtype.CampaignCanceled, now, now.Add(time.Hour)))
	must(c.Set("c", heraldtype.CampaignPaused, now, now.Add(time.Hour)))
	must(c.Set("c", heraldtype.CampaignRunning, now, now.Add(time.Hour)))
	if err := c.Set("b", heraldtype.CampaignRunning, now, now.Add(time.Hour)); err != ErrState {
		t.Fatalf("resume of a canceled campaign: %v", err)
	}
	db.Close()
	db, c = open(t, dir)
	defer db.Close()
	if c.State("a") != heraldtype.CampaignPaused || c.State("b") != heraldtype.CampaignCanceled || c.State("c") != heraldtype.CampaignRunning {
		t.Fatalf("after reopen: a %s b %s c %s", c.State("a"), c.State("b"), c.State("c"))
	}
	if n, err := c.Sweep(now.Add(2 * time.Hour)); err != nil || n != 2 {
		t.Fatalf("sweep: %d %v", n, err)
	}
	if c.State("a") != heraldtype.CampaignRunning || c.stopped.Load() != 0 || len(c.m) != 0 {
		t.Fatalf("after the sweep: %s, %d stopped, %d entries", c.State("a"), c.stopped.Load(), len(c.m))
	}
}

// TestSetWaitsForTheHandOff: Set returns only after every Enter of its
// campaign that began before it has exited, and later Enters see the new
// state; other campaigns' Enters do not wait.
func TestSetWaitsForTheHandOff(t *testing.T) {
	db, c := open(t, t.TempDir())
	defer db.Close()
	now := time.Unix(1_800_000_000, 0)
	states, exit := c.Enter([]string{"x", "", "x", "y"})
	if len(states) != 4 || states[0] != heraldtype.CampaignRunning || states[1] != heraldtype.CampaignRunning {
		t.Fatalf("states %v", states)
	}
	done := make(chan error, 1)
	go func() { done <- c.Set("x", heraldtype.CampaignCanceled, now, now.Add(time.Hour)) }()
	select {
	case err := <-done:
		t.Fatalf("Set returned (%v) during a hand-off", err)
	case <-time.After(100 * time.Millisecond):
	}
	// Another campaign's hand-off is not held up.
	ys, yexit := c.Enter([]string{"y"})
	if ys[0] != heraldtype.CampaignRunning {
		t.Fatalf("y: %v", ys)
	}
	yexit()
	exit()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	states, exit = c.Enter([]string{"x", "y"})
	exit()
	if states[0] != heraldtype.CampaignCanceled || states[1] != heraldtype.CampaignRunning {
		t.Fatalf("after Set: %v", states)
	}
	c.mu.Lock()
	n := len(c.m)
	c.mu.Unlock()
	if n != 1 { // x (canceled) stays; y's entry went with its last user
		t.Fatalf("%d entries after the hand-offs, want 1", n)
	}
}
