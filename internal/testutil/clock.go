package testutil

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/internal/clock"
)

// Clock is an injected clock for tests: it moves only when told to.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a clock that reads t until advanced.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now is the clock's time (pass it as an Options.Now).
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// Eventually polls cond (every 5 ms) until it holds or timeout passes, then
// fails the test with the message. It (or Until) is the one way tests wait
// for something another goroutine or process does.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	Until(t, timeout, cond, func() string { return fmt.Sprintf(format, args...) })
}

// Until is Eventually with a failure message made when it fails (the state
// that was not reached: depths, counters, what arrived).
func Until(t testing.TB, timeout time.Duration, cond func() bool, explain func() string) {
	t.Helper()
	deadline := clock.Wall().Add(timeout)
	for !cond() {
		if clock.Wall().After(deadline) {
			t.Fatalf("not within %v: %s", timeout, explain())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// HostileEndpoint serves, on loopback, a peer that answers every request
// with head (a status line and headers, perhaps a lying Content-Length) and
// then up to stream bytes of zeros. It returns its URL.
func HostileEndpoint(t testing.TB, head string, stream int) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				c.SetReadDeadline(clock.Wall().Add(2 * time.Second))
				c.Read(buf)
				c.Write([]byte(head))
				zeros := make([]byte, 64<<10)
				for sent := 0; sent < stream; sent += len(zeros) {
					if _, err := c.Write(zeros); err != nil {
						return
					}
				}
				// Half-close and drain what the client still sends: closing
				// with unread request bytes makes the kernel answer with a
				// reset, which can reach the client before it has read the
				// head above (a flaky "connection reset" instead of the
				// hostile answer under test).
				if tc, ok := c.(*net.TCPConn); ok {
					tc.CloseWrite()
				}
				c.SetReadDeadline(clock.Wall().Add(2 * time.Second))
				io.Copy(io.Discard, c)
			}()
		}
	}()
	return "http://" + ln.Addr().String() + "/hook"
}
