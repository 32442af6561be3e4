// Package schedule answers when a campaign's message may go: quiet hours in
// the recipient's local time, with the time zone derived from the number's
// country code (github.com/nyaruka/phonenumbers, Google's libphonenumber
// data; the tz database is embedded, so a machine without one works the same).
//
// For a country code with several zones the westernmost is used (the one
// with the smallest UTC offset), so quiet hours hold everywhere in the
// country: evening in the east starts earlier, morning in the west ends
// later, and the westernmost zone's window is the one that ends last. A
// number whose country code has no known zone uses UTC.
package schedule

import (
	"fmt"
	"strconv"
	"sync"
	"time"
	_ "time/tzdata" // zones without /usr/share/zoneinfo

	"github.com/nyaruka/phonenumbers"

	"github.com/heraldhq/herald/heraldtype"
)

// ParseClock parses "HH:MM" (24-hour) into minutes after midnight.
func ParseClock(s string) (uint16, error) {
	if len(s) != 5 || s[2] != ':' {
		return 0, fmt.Errorf("%q is not a time of day as HH:MM (24-hour, e.g. \"21:00\")", s)
	}
	h, err1 := strconv.Atoi(s[:2])
	m, err2 := strconv.Atoi(s[3:])
	if err1 != nil || err2 != nil || h < 0 || h > 23 || m < 0 || m > 59 || s[0] == '-' || s[3] == '-' || s[0] == '+' || s[3] == '+' {
		return 0, fmt.Errorf("%q is not a time of day as HH:MM (00:00 to 23:59)", s)
	}
	return uint16(h*60 + m), nil
}

// FormatClock is ParseClock's inverse.
func FormatClock(m uint16) string { return fmt.Sprintf("%02d:%02d", m/60, m%60) }

// Quiet parses a quiet-hours window; start equal to end is refused: it would
// leave no time to send in.
func Quiet(start, end string) (heraldtype.QuietHours, error) {
	s, err := ParseClock(start)
	if err != nil {
		return heraldtype.QuietHours{}, fmt.Errorf("quiet_hours.start: %w", err)
	}
	e, err := ParseClock(end)
	if err != nil {
		return heraldtype.QuietHours{}, fmt.Errorf("quiet_hours.end: %w", err)
	}
	if s == e {
		return heraldtype.QuietHours{}, fmt.Errorf("quiet_hours from %s to %s leave no time to send in; start and end must differ", start, end)
	}
	return heraldtype.QuietHours{Set: true, Start: s, End: e}, nil
}

var zones sync.Map // country calling code (int32) → *time.Location

// Zone returns the time zone quiet hours use for a number (digits, E.164
// without '+'): the westernmost zone of its country code, UTC when none is
// known.
func Zone(digits string) *time.Location {
	cc := countryCode(digits)
	if cc == 0 {
		return time.UTC
	}
	if v, ok := zones.Load(cc); ok {
		return v.(*time.Location)
	}
	loc := westernmost(cc)
	zones.Store(cc, loc)
	return loc
}

// countryCode is the number's country calling code (1 to 3 leading digits
// libphonenumber knows), 0 when none: what phonenumbers.Parse extracts from
// "+digits", without parsing the rest (a campaign asks once per recipient).
func countryCode(digits string) int32 {
	for i := 1; i <= 3 && i <= len(digits); i++ {
		if digits[0] == '0' {
			return 0
		}
		cc, err := strconv.Atoi(digits[:i])
		if err != nil {
			return 0
		}
		if len(phonenumbers.GetRegionCodesForCountryCode(cc)) > 0 {
			return int32(cc)
		}
	}
	return 0
}

// westernmost picks the zone with the smallest UTC offset (in January, so
// that daylight-saving time does not change the choice over the year) among
// the country code's zones.
func westernmost(cc int32) *time.Location {
	names, err := phonenumbers.GetTimezonesForPrefix(strconv.Itoa(int(cc)))
	if err != nil {
		return time.UTC
	}
	ref := time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC)
	var best *time.Location
	bestOff := 0
	for _, name := range names {
		loc, err := time.LoadLocation(name)
		if err != nil {
			continue // Etc/Unknown, or a name the embedded database lacks
		}
		_, off := ref.In(loc).Zone()
		if best == nil || off < bestOff || (off == bestOff && name < best.String()) {
			best, bestOff = loc, off
		}
	}
	if best == nil {
		return time.UTC
	}
	return best
}

// Next returns the earliest time at or after t that lies outside quiet
// hours q in loc: t itself when t is outside them (or q is not set).
func Next(q heraldtype.QuietHours, loc *time.Location, t time.Time) time.Time {
	if !q.Set || q.Start == q.End {
		return t
	}
	lt := t.In(loc)
	m := uint16(lt.Hour()*60 + lt.Minute())
	in := false
	if q.Start < q.End {
		in = m >= q.Start && m < q.End
	} else {
		in = m >= q.Start || m < q.End
	}
	if !in {
		return t
	}
	day := lt
	if q.Start > q.End && m >= q.Start {
		day = lt.AddDate(0, 0, 1) // the window ends tomorrow morning
	}
	end := time.Date(day.Year(), day.Month(), day.Day(), int(q.End/60), int(q.End%60), 0, 0, loc)
	if !end.After(t) { // a daylight-saving jump: never go backwards
		end = t.Add(time.Minute)
	}
	return end
}

// NextFor is Next in the zone of the recipient's number.
func NextFor(q heraldtype.QuietHours, digits string, t time.Time) time.Time {
	if !q.Set {
		return t
	}
	return Next(q, Zone(digits), t)
}
