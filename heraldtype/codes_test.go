package heraldtype_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/heraldhq/herald/heraldtype"
)

// TestReadmeListsEveryCode: the README's error table names every code
// Herald answers or reports, none outside the Cloud API's meaning or
// Herald's range, and none of the numbers Herald used before they followed
// the Cloud API's table (they meant media errors or access denied there).
func TestReadmeListsEveryCode(t *testing.T) {
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	for _, c := range heraldtype.Codes() {
		if c >= 139000 && (c < heraldtype.HeraldCodesMin || c > heraldtype.HeraldCodesMax) {
			t.Errorf("%d is outside both Meta's table and Herald's range", c)
		}
		if !strings.Contains(readme, fmt.Sprintf("| %d |", c)) {
			t.Errorf("README's table does not list %d (%s)", c, heraldtype.CodeTitle(c))
		}
	}
	for _, old := range []string{"131052", "131053", "131054", "131055", "131005", "131006", "131062", "131064"} {
		if strings.Contains(readme, old) {
			t.Errorf("README still names %s", old)
		}
	}
}

// TestStoredCodesReadAsToday: a record an older Herald wrote reads with
// today's code.
func TestStoredCodesReadAsToday(t *testing.T) {
	for old, now := range map[int]int{131052: heraldtype.CodeExpired, 131053: heraldtype.CodeIdentityChanged,
		131054: heraldtype.CodeResetsExhausted, 131055: heraldtype.CodePlatformRejected, 131026: 131026} {
		if got := heraldtype.StoredCode(old); got != now {
			t.Errorf("StoredCode(%d) = %d, want %d", old, got, now)
		}
	}
	for _, c := range heraldtype.Codes() {
		if c >= 131000 && c < 139000 && heraldtype.StoredCode(c) != c {
			t.Errorf("a current code %d is rewritten", c)
		}
	}
}
