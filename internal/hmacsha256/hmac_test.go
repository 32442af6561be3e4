package hmacsha256

import (
	"crypto/hmac"
	"crypto/sha256"
	"testing"

	"pgregory.net/rapid"
)

// TestMatchesStdlib: any key (shorter than, as long as, longer than a
// block), any data cut into any parts, gives crypto/hmac's MAC, through Key
// and through Sum; lengths cover every padding case (the length fits after
// the data or needs a second block) and parts that end mid-block.
func TestMatchesStdlib(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		key := rapid.SliceOfN(rapid.Byte(), 0, 200).Draw(t, "key")
		data := rapid.SliceOfN(rapid.Byte(), 0, 400).Draw(t, "data")
		cuts := rapid.SliceOfN(rapid.IntRange(0, len(data)), 0, 4).Draw(t, "cuts")
		var parts [][]byte
		at := 0
		for _, c := range cuts {
			if c < at {
				c = at
			}
			parts = append(parts, data[at:c])
			at = c
		}
		parts = append(parts, data[at:])

		m := hmac.New(sha256.New, key)
		m.Write(data)
		want := m.Sum(nil)

		k := New(key)
		var got [Size]byte
		k.Sum(&got, parts...)
		if string(got[:]) != string(want) {
			t.Fatalf("Key.Sum = %x, want %x", got, want)
		}
		k.Sum(&got, parts...) // a Key is reusable
		if string(got[:]) != string(want) {
			t.Fatalf("second Key.Sum = %x, want %x", got, want)
		}
		var once [Size]byte
		Sum(&once, key, parts...)
		if once != got {
			t.Fatalf("Sum = %x, want %x", once, got)
		}
	})
}

// blockImpls are the compression functions this CPU can run: the pure Go one
// everywhere, SHA-NI where the CPU has it (shani_amd64_test.go adds it).
var blockImpls = map[string]func(*[8]uint32, []byte){"generic": blockGeneric}

// TestBlockFunctionsMatchStdlib: each compression function gives
// sha256.Sum256's digests on its own, over any number of blocks.
func TestBlockFunctionsMatchStdlib(t *testing.T) {
	for name, f := range blockImpls {
		t.Run(name, func(t *testing.T) {
			rapid.Check(t, func(t *rapid.T) {
				data := rapid.SliceOfN(rapid.Byte(), 0, 300).Draw(t, "data")
				var got [Size]byte
				sumWith(f, &got, data)
				if want := sha256.Sum256(data); got != want {
					t.Fatalf("%s: %x, want %x", name, got, want)
				}
			})
		})
	}
}

// sumWith is SHA-256 of data with compression function f (plain padding).
func sumWith(f func(*[8]uint32, []byte), out *[Size]byte, data []byte) {
	h := iv
	whole := len(data) &^ (blockSize - 1)
	f(&h, data[:whole])
	var buf [2 * blockSize]byte
	n := copy(buf[:], data[whole:])
	buf[n] = 0x80
	end := blockSize
	if n+1 > blockSize-8 {
		end = 2 * blockSize
	}
	for i := 0; i < 8; i++ {
		buf[end-1-i] = byte(uint64(len(data)) * 8 >> (8 * i))
	}
	f(&h, buf[:end])
	putState(out, &h)
}

func TestNoAllocations(t *testing.T) {
	k := New([]byte("chain key of thirty-two bytes..."))
	var out [Size]byte
	a, b := make([]byte, 70), []byte{1}
	if n := testing.AllocsPerRun(100, func() { k.Sum(&out, a, b) }); n != 0 {
		t.Fatalf("Key.Sum allocates %v times", n)
	}
	if n := testing.AllocsPerRun(100, func() { Sum(&out, a, b) }); n != 0 {
		t.Fatalf("Sum allocates %v times", n)
	}
}

func BenchmarkSum(b *testing.B) {
	key := make([]byte, 32)
	data := []byte{1}
	b.Run("impl=stdlib", func(b *testing.B) {
		for b.Loop() {
			m := hmac.New(sha256.New, key)
			m.Write(data)
			m.Sum(nil)
		}
	})
	b.Run("impl=key", func(b *testing.B) {
		k := New(key)
		var out [Size]byte
		for b.Loop() {
			k.Sum(&out, data)
		}
	})
	b.Run("impl=sum", func(b *testing.B) {
		var out [Size]byte
		for b.Loop() {
			Sum(&out, key, data)
		}
	})
}
