package schedule

import (
	"testing"
	"time"

	"github.com/nyaruka/phonenumbers"

	"github.com/heraldhq/herald/heraldtype"
)

func TestZoneFromCountryCode(t *testing.T) {
	for _, c := range []struct{ digits, want string }{
		{"4915123456789", "Europe/Berlin"},
		{"447700900123", "Europe/London"},  // several zones (Jersey, Guernsey…), all at +0: the first by name is fine, they agree
		{"34612345678", "Atlantic/Canary"}, // Spain: the Canaries are west of Madrid
		{"5511912345678", "America/Rio_Branco"},
		{"99912345678", "UTC"}, // no such country code
	} {
		got := Zone(c.digits).String()
		if c.digits == "447700900123" {
			if _, off := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).In(Zone(c.digits)).Zone(); off != 0 {
				t.Fatalf("%s: zone %s has offset %d", c.digits, got, off)
			}
			continue
		}
		if got != c.want {
			t.Errorf("Zone(%s) = %s, want %s", c.digits, got, c.want)
		}
	}
	// The country code as libphonenumber's parser reads it.
	for _, d := range []string{"4915123456789", "15550000001", "447700900123", "8613800138000", "35312345678", "99912345678", "0123", ""} {
		want := int32(0)
		if n, err := phonenumbers.Parse("+"+d, ""); err == nil {
			want = n.GetCountryCode()
		}
		if got := countryCode(d); got != want {
			t.Errorf("countryCode(%q) = %d, phonenumbers.Parse says %d", d, got, want)
		}
	}
	// Several zones: the one with the smallest offset.
	_, off := time.Date(2026, 1, 15, 12, 0, 0, 0, time.UTC).In(Zone("15550000001")).Zone()
	if off > -10*3600 {
		t.Errorf("NANP's westernmost zone has offset %d h, want Hawaii's or further west", off/3600)
	}
}

func TestParseAndQuiet(t *testing.T) {
	for _, bad := range []string{"", "9:00", "24:00", "12:60", "ab:cd", "12-00", "-1:00", "+1:00", "12:5x", "12:000"} {
		if _, err := ParseClock(bad); err == nil {
			t.Errorf("ParseClock(%q) accepted", bad)
		}
	}
	if m, err := ParseClock("21:30"); err != nil || m != 21*60+30 || FormatClock(m) != "21:30" {
		t.Fatalf("21:30 → %d %v", m, err)
	}
	if _, err := Quiet("08:00", "08:00"); err == nil {
		t.Fatal("a window of 24 hours was accepted")
	}
	if _, err := Quiet("25:00", "08:00"); err == nil {
		t.Fatal("a bad start was accepted")
	}
}

func TestNext(t *testing.T) {
	berlin, _ := time.LoadLocation("Europe/Berlin")
	q, _ := Quiet("21:00", "08:00")
	at := func(d, h, m int) time.Time { return time.Date(2026, 3, d, h, m, 0, 0, berlin) }
	for _, c := range []struct{ now, want time.Time }{
		{at(10, 12, 0), at(10, 12, 0)},   // day: now
		{at(10, 20, 59), at(10, 20, 59)}, // a minute before
		{at(10, 21, 0), at(11, 8, 0)},    // evening: tomorrow 08:00
		{at(10, 23, 30), at(11, 8, 0)},
		{at(11, 3, 0), at(11, 8, 0)}, // after midnight: this morning
		{at(11, 8, 0), at(11, 8, 0)},
	} {
		if got := Next(q, berlin, c.now); !got.Equal(c.want) {
			t.Errorf("Next(%s) = %s, want %s", c.now, got, c.want)
		}
	}
	day, _ := Quiet("12:00", "14:00") // not wrapping
	if got := Next(day, berlin, at(10, 13, 0)); !got.Equal(at(10, 14, 0)) {
		t.Errorf("midday window: %s", got)
	}
	if got := Next(heraldtype.QuietHours{}, berlin, at(10, 22, 0)); !got.Equal(at(10, 22, 0)) {
		t.Errorf("unset quiet hours delayed: %s", got)
	}
	// The end of the window on a daylight-saving day is a real instant after now.
	dst := time.Date(2026, 3, 29, 1, 30, 0, 0, berlin) // the night clocks jump 02:00→03:00
	q2, _ := Quiet("01:00", "02:30")
	if got := Next(q2, berlin, dst); !got.After(dst) {
		t.Errorf("DST: %s not after %s", got, dst)
	}
}
