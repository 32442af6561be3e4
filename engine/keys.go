package engine

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/heraldhq/herald/internal/platform"
)

// keyBatcher coalesces the bundle lookups of all workers into /v1/keys/query
// requests of up to 1000 users, waiting at most linger for company. A user is
// never asked for twice in one request (each answer consumes a one-time prekey
// and the contract does not say how duplicates are answered).
type keyBatcher struct {
	t      Transport
	linger time.Duration

	mu struct {
		sync.Mutex
		pending []keyReq
		users   map[string]bool
		timer   *time.Timer
	}
}

type keyReq struct {
	user string
	done chan keyAnswer
}

type keyAnswer struct {
	bundles *platform.UserBundles // nil: unknown user
	err     error
}

var errKeysIncomplete = errors.New("engine: the key query answer names the user neither with bundles nor as unknown")

func newKeyBatcher(t Transport, linger time.Duration) *keyBatcher {
	k := &keyBatcher{t: t, linger: linger}
	k.mu.users = map[string]bool{}
	return k
}

// get returns the user's bundles (nil when the platform does not know the user).
func (k *keyBatcher) get(ctx context.Context, user string) (*platform.UserBundles, error) {
	done := make(chan keyAnswer, 1)
	k.mu.Lock()
	if k.mu.users[user] {
		// Already in the open batch: flush it and join the next.
		k.flushLocked()
	}
	k.mu.pending = append(k.mu.pending, keyReq{user: user, done: done})
	k.mu.users[user] = true
	if len(k.mu.pending) >= 1000 {
		k.flushLocked()
	} else if k.mu.timer == nil {
		k.mu.timer = time.AfterFunc(k.linger, func() {
			k.mu.Lock()
			k.flushLocked()
			k.mu.Unlock()
		})
	}
	k.mu.Unlock()
	select {
	case a := <-done:
		return a.bundles, a.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (k *keyBatcher) flushLocked() {
	if k.mu.timer != nil {
		k.mu.timer.Stop()
		k.mu.timer = nil
	}
	if len(k.mu.pending) == 0 {
		return
	}
	batch := k.mu.pending
	k.mu.pending = nil
	k.mu.users = map[string]bool{}
	go func() {
		users := make([]string, len(batch))
		for i, r := range batch {
			users[i] = r.user
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		resp, err := k.t.QueryKeys(ctx, users)
		cancel()
		byUser := map[string]*platform.UserBundles{}
		unknown := map[string]bool{}
		if err == nil {
			for i := range resp.Users {
				byUser[resp.Users[i].User] = &resp.Users[i]
			}
			for _, u := range resp.Unknown {
				unknown[u] = true
			}
		}
		for _, r := range batch {
			a := keyAnswer{bundles: byUser[r.user], err: err}
			if err == nil && a.bundles == nil && !unknown[r.user] {
				// Neither bundles nor "unknown": a broken answer, not a verdict
				// (failing the message as undeliverable would be wrong).
				a.err = errKeysIncomplete
			}
			r.done <- a
		}
	}()
}
