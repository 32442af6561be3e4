//go:build !purego

package hmacsha256

import (
	"crypto/sha256"
	"testing"

	"pgregory.net/rapid"
)

// TestSHANIBlockMatchesStdlib: where the CPU has SHA-NI, the assembly gives
// sha256.Sum256's digests over any number of blocks.
func TestSHANIBlockMatchesStdlib(t *testing.T) {
	if !useSHANI {
		t.Skip("no SHA-NI on this CPU")
	}
	rapid.Check(t, func(t *rapid.T) {
		data := rapid.SliceOfN(rapid.Byte(), 0, 300).Draw(t, "data")
		var got [Size]byte
		sumWith(blockSHANI, &got, data)
		if want := sha256.Sum256(data); got != want {
			t.Fatalf("SHA-NI: %x, want %x", got, want)
		}
	})
}
