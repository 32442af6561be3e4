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

// breaker trips after Threshold consecutive whole-request failures; while open
// only one probe per Cooldown goes to the platform, and messages wait on disk.
type breaker struct {
	threshold int
	cooldown  time.Duration

	mu struct {
		sync.Mutex
		fails     int
		openUntil time.Time
		probing   bool
	}
}

// allow reports whether a dispatch round may go ahead, and whether it is a probe.
func (b *breaker) allow(now time.Time) (ok, probe bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mu.fails < b.threshold {
		return true, false
	}
	if now.Before(b.mu.openUntil) || b.mu.probing {
		return false, false
	}
	b.mu.probing = true
	return true, true
}

func (b *breaker) success() {
	b.mu.Lock()
	b.mu.fails, b.mu.probing = 0, false
	b.mu.Unlock()
}

func (b *breaker) failure(now time.Time) {
	b.mu.Lock()
	b.mu.fails++
	b.mu.probing = false
	if b.mu.fails >= b.threshold {
		b.mu.openUntil = now.Add(b.cooldown)
	}
	b.mu.Unlock()
}

// Open reports whether the breaker is open (for /readyz and metrics).
func (b *breaker) open() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mu.fails >= b.threshold
}
