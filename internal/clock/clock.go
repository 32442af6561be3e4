// Package clock is where Herald reads the wall clock. Everything that decides
// by time (TTLs, rates, retries, retention, leases) takes a Now func from its
// Options, which internal/node fills with one clock for the whole process
// (tests inject a fake one); Wall is that clock's default. Code that needs
// real time whatever the injected clock says — a socket deadline, a
// measurement of how long something took — calls Wall by name. No other
// file reads time.Now (TestNoWallClockOutsideThisPackage).
package clock

import "time"

// Now is a clock.
type Now = func() time.Time

// Wall is the system's wall clock.
func Wall() time.Time { return time.Now() }
