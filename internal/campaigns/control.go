// Package campaigns holds what a business decided about a campaign after
// uploading it — paused, canceled — and makes the engine obey it at the one
// moment that matters: the hand-off to the platform.
//
// State is durable (e S <campaign id>, fsync'd before the API answers) and
// in memory (an entry per paused or canceled campaign, and per campaign the
// engine is handing to the platform right now). The engine asks State before
// it encrypts a campaign's message (to set paused or canceled ones aside
// without work) and Enter around every hand-off: Enter takes a read hold of
// each campaign of the round and reports its state; Set takes the write hold
// to change it, so it waits for the hand-offs that saw the old state. After
// Set returns, nothing of a paused or canceled campaign reaches the platform
// — the guarantee behind "none is sent after the answer".
//
// One campaign's Set waits only for that campaign's hand-offs: others go on.
package campaigns

import (
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	json "github.com/goccy/go-json"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/kv"
)

// Control is safe for concurrent use.
type Control struct {
	db *kv.DB
	mu sync.Mutex
	m  map[string]*entry
	// stopped counts the entries whose state is paused or canceled (written
	// under mu): while it is zero, State answers running without the lock.
	stopped atomic.Int64
}

type entry struct {
	hold    sync.RWMutex // read: a hand-off in progress; write: a state change
	state   string       // under hold (written) or mu (read by State)
	expires int64        // unix ms: the record goes then (the campaign's last message's expiry)
	users   int          // under mu: Enter calls holding it
}

type stored struct {
	State     string `json:"state"`
	AtMS      int64  `json:"at_ms"`
	ExpiresMS int64  `json:"expires_ms"`
}

func stateKey(id string) []byte { return append([]byte("eS"), id...) }

// Open loads the stored states.
func Open(db *kv.DB) (*Control, error) {
	c := &Control{db: db, m: map[string]*entry{}}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte("eS"), UpperBound: []byte("eT")})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		var s stored
		if json.Unmarshal(it.Value(), &s) != nil {
			continue
		}
		c.m[string(it.Key()[2:])] = &entry{state: s.State, expires: s.ExpiresMS}
		c.stopped.Add(1)
	}
	return c, it.Error()
}

// State is the campaign's state as far as sending goes: paused, canceled,
// or running (anything else: scheduled and done are the API's reading of
// times and counters).
func (c *Control) State(id string) string {
	if id == "" || c.stopped.Load() == 0 {
		return heraldtype.CampaignRunning
	}
	c.mu.Lock()
	e := c.m[id]
	st := heraldtype.CampaignRunning
	if e != nil && e.state != "" {
		st = e.state
	}
	c.mu.Unlock()
	return st
}

// Enter holds the states of ids (any order, repeats allowed, "" ignored)
// until exit is called, and returns each one's state (in ids' order). A Set
// of one of them waits for exit.
func (c *Control) Enter(ids []string) (states []string, exit func()) {
	var uniq []string
	for _, id := range ids {
		if id != "" && !slices.Contains(uniq, id) {
			uniq = append(uniq, id)
		}
	}
	slices.Sort(uniq) // one order for everyone: no deadlock between hand-offs and a Set waiting
	es := make([]*entry, len(uniq))
	c.mu.Lock()
	for i, id := range uniq {
		e := c.m[id]
		if e == nil {
			e = &entry{}
			c.m[id] = e
		}
		e.users++
		es[i] = e
	}
	c.mu.Unlock()
	by := make(map[string]string, len(uniq))
	for i, e := range es {
		e.hold.RLock()
		st := e.state
		if st == "" {
			st = heraldtype.CampaignRunning
		}
		by[uniq[i]] = st
	}
	states = make([]string, len(ids))
	for i, id := range ids {
		if id == "" {
			states[i] = heraldtype.CampaignRunning
		} else {
			states[i] = by[id]
		}
	}
	return states, func() {
		for _, e := range es {
			e.hold.RUnlock()
		}
		c.mu.Lock()
		for i, e := range es {
			if e.users--; e.users == 0 && e.state == "" {
				delete(c.m, uniq[i])
			}
		}
		c.mu.Unlock()
	}
}

// ErrState: the campaign is canceled; nothing changes it any more.
var ErrState = errors.New("campaigns: the campaign is canceled")

// Set makes state (running, paused or canceled) the campaign's, durably
// (fsync'd), then waits for every hand-off of the campaign in progress: when
// it returns, no later hand-off sees the old state. expires (the campaign's
// last message's expiry) is when the stored state may go. A canceled
// campaign stays canceled (ErrState).
func (c *Control) Set(id, state string, now, expires time.Time) error {
	c.mu.Lock()
	e := c.m[id]
	if e == nil {
		e = &entry{}
		c.m[id] = e
	}
	e.users++ // kept in the map while this runs
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if e.users--; e.users == 0 && e.state == "" {
			delete(c.m, id)
		}
		c.mu.Unlock()
	}()
	e.hold.Lock()
	defer e.hold.Unlock()
	if e.state == heraldtype.CampaignCanceled {
		return ErrState
	}
	b := c.db.NewBatch()
	if state == heraldtype.CampaignRunning {
		b.Delete(stateKey(id), nil)
	} else {
		v, _ := json.Marshal(stored{State: state, AtMS: now.UnixMilli(), ExpiresMS: expires.UnixMilli()})
		b.Set(stateKey(id), v, nil)
	}
	if err := c.db.Commit(b, true); err != nil {
		return err
	}
	c.mu.Lock()
	switch {
	case state == heraldtype.CampaignRunning && e.state != "":
		c.stopped.Add(-1)
	case state != heraldtype.CampaignRunning && e.state == "":
		c.stopped.Add(1)
	}
	if state == heraldtype.CampaignRunning {
		e.state = ""
	} else {
		e.state = state
	}
	e.expires = expires.UnixMilli()
	c.mu.Unlock()
	return nil
}

// Sweep forgets the states of campaigns whose last message expired before
// now (their records go too); at most limit per call.
func (c *Control) Sweep(now time.Time) (int, error) {
	c.mu.Lock()
	var gone []string
	for id, e := range c.m {
		if e.state != "" && e.expires > 0 && e.expires < now.UnixMilli() && e.users == 0 {
			gone = append(gone, id)
		}
	}
	c.mu.Unlock()
	if len(gone) == 0 {
		return 0, nil
	}
	b := c.db.NewBatch()
	for _, id := range gone {
		b.Delete(stateKey(id), nil)
	}
	if err := c.db.Commit(b, false); err != nil {
		return 0, err
	}
	c.mu.Lock()
	for _, id := range gone {
		if e := c.m[id]; e != nil && e.users == 0 {
			delete(c.m, id)
			c.stopped.Add(-1)
		}
	}
	c.mu.Unlock()
	return len(gone), nil
}
