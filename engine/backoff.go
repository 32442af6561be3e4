package engine

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Backoff returns when attempt (0-based) of a message may be retried: full
// jitter over an exponential window (base·2^attempt, capped), never earlier
// than the platform's retry_after, and never past the message's expiry (the
// retention sweeper fails it there). It is a pure function of its inputs and r.
func Backoff(now time.Time, attempt int, base, maxDelay, retryAfter time.Duration, expires time.Time, r float64) time.Time {
	window := maxDelay
	if attempt < 30 {
		if w := base << attempt; w > 0 && w < maxDelay {
			window = w
		}
	}
	d := time.Duration(r * float64(window))
	if d < retryAfter {
		d = retryAfter
	}
	at := now.Add(d)
	if !expires.IsZero() && at.After(expires) {
		at = expires
	}
	return at
}

func jitter() float64 { return rand.Float64() }

// breaker trips after threshold consecutive whole-request failures. While it
// is open, one dispatch round per cooldown goes ahead as a probe (one
// recipient); every other round is skipped and messages wait on disk. A probe
// that finds nothing to send simply lets the next cooldown pass: no state
// waits on a result that may never come.
type breaker struct {
	threshold int
	cooldown  time.Duration

	mu struct {
		sync.Mutex
		fails     int
		nextProbe time.Time
	}
}

// allow reports whether a dispatch round may go ahead, and whether it is a probe.
func (b *breaker) allow(now time.Time) (ok, probe bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mu.fails < b.threshold {
		return true, false
	}
	if now.Before(b.mu.nextProbe) {
		return false, false
	}
	b.mu.nextProbe = now.Add(b.cooldown)
	return true, true
}

func (b *breaker) success() {
	b.mu.Lock()
	b.mu.fails = 0
	b.mu.Unlock()
}

func (b *breaker) failure(now time.Time) {
	b.mu.Lock()
	b.mu.fails++
	if b.mu.fails == b.threshold {
		b.mu.nextProbe = now.Add(b.cooldown)
	}
	b.mu.Unlock()
}

// open reports whether the breaker is open (for /readyz and metrics).
func (b *breaker) open() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mu.fails >= b.threshold
}
