package seal

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/s2"
)

func TestSealOpenRoundTrip(t *testing.T) {
	s, err := New(TestKey(1))
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte(strings.Repeat("hello +15550001111 ", 20))
	rec := s.Seal(nil, msg)
	if bytes.Contains(rec, []byte("15550001111")) {
		t.Fatal("sealed record contains plaintext")
	}
	got, err := s.Open(rec)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("open: %v %q", err, got)
	}
}

// SealRandom's literal-only S2 block opens like Seal's, at every length
// where the literal's length encoding changes (1 to 4 extra bytes), and a
// record it seals is as private and as tamper-evident.
func TestSealRandomRoundTrip(t *testing.T) {
	s, _ := New(TestKey(1))
	// tag: the literal's tag bytes (the shortest form of its length).
	for _, c := range []struct{ n, tag int }{{0, 0}, {1, 1}, {60, 1}, {61, 2}, {256, 2}, {257, 3},
		{1 << 16, 3}, {1<<16 + 1, 4}, {1 << 24, 4}, {1<<24 + 1, 5}} {
		n := c.n
		msg := make([]byte, n)
		rand.Read(msg)
		rec := s.SealRandom(make([]byte, 3, 8), msg)[3:] // appends after what dst holds
		want := headerLen + len(binary.AppendUvarint(nil, uint64(n))) + c.tag + n + 16
		if got := SealedRandomLen(n); got != want {
			t.Fatalf("%d bytes: SealedRandomLen %d, want %d", n, got, want)
		}
		if len(rec) != want {
			t.Fatalf("%d bytes: record of %d, want %d", n, len(rec), want)
		}
		if n >= 16 && bytes.Contains(rec, msg[:16]) {
			t.Fatalf("%d bytes: sealed record contains plaintext", n)
		}
		got, err := s.Open(rec)
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("%d bytes: open: %v", n, err)
		}
		// The block is one S2 itself decodes as the plaintext.
		if blk, err := s2.Decode(nil, appendLiteralBlock(nil, msg)); err != nil || !bytes.Equal(blk, msg) {
			t.Fatalf("%d bytes: S2 reads the literal block as %d bytes: %v", n, len(blk), err)
		}
		rec[len(rec)-1] ^= 1
		if _, err := s.Open(rec); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%d bytes: tampered record opened: %v", n, err)
		}
	}
}

func TestRotationOpensOldRecords(t *testing.T) {
	old, _ := New(TestKey(1))
	rec := old.Seal(nil, []byte("body"))
	rotated, _ := New(TestKey(1), TestKey(2))
	if got, err := rotated.Open(rec); err != nil || string(got) != "body" {
		t.Fatalf("rotated open: %v", err)
	}
	newRec := rotated.Seal(nil, []byte("x"))
	if newRec[4] != 2 {
		t.Fatalf("new records must use the newest key, got id byte %d", newRec[4])
	}
	if _, err := old.Open(newRec); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("want ErrUnknownKey, got %v", err)
	}
	if old.Lookup("1555") != rotated.Lookup("1555") {
		t.Fatal("lookup HMAC must survive rotation")
	}
}

func TestOpenRejectsTampering(t *testing.T) {
	s, _ := New(TestKey(1))
	rec := s.Seal(nil, []byte("body"))
	for i := range rec {
		bad := append([]byte(nil), rec...)
		bad[i] ^= 1
		if _, err := s.Open(bad); err == nil {
			t.Fatalf("flipping byte %d went unnoticed", i)
		}
	}
	if _, err := s.Open(rec[:10]); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("short record: %v", err)
	}
}

func TestLoadKeysCreatesFile0600(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "master.key")
	keys, created, err := LoadKeys(path, "")
	if err != nil || !created || len(keys) != 1 {
		t.Fatalf("LoadKeys: %v %v %d", err, created, len(keys))
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", err, st.Mode())
	}
	again, created, err := LoadKeys(path, "")
	if err != nil || created || again[0] != keys[0] {
		t.Fatalf("reload: %v %v", err, created)
	}
}

func TestParseKeysErrors(t *testing.T) {
	for _, text := range []string{"", "nothex", "0:" + strings.Repeat("ab", 32), "1:abcd", "x:" + strings.Repeat("ab", 32)} {
		if _, err := ParseKeys(text); err == nil {
			t.Errorf("ParseKeys(%q) accepted bad input", text)
		}
	}
	keys, err := ParseKeys("# comment\n2:" + strings.Repeat("ab", 32) + "\n")
	if err != nil || len(keys) != 1 || keys[0].ID != 2 {
		t.Fatalf("good input: %v", err)
	}
}

// FuzzSealRoundTrip: whatever is sealed opens to the same bytes (with and
// without a prefix kept in front), and flipping any one bit of the record
// makes Open fail: no tampering goes unseen.
func FuzzSealRoundTrip(f *testing.F) {
	s, _ := New(TestKey(1), TestKey(2))
	f.Add([]byte("15550001111 hello"), []byte{}, uint16(3))
	f.Add(bytes.Repeat([]byte("a"), 5000), []byte("prefix"), uint16(900))
	f.Fuzz(func(t *testing.T, plain, prefix []byte, flip uint16) {
		rec := s.Seal(append([]byte(nil), prefix...), plain)
		if !bytes.Equal(rec[:len(prefix)], prefix) {
			t.Fatal("Seal changed the prefix it appends to")
		}
		rec = rec[len(prefix):]
		got, err := s.Open(rec)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("round trip: %v (%d bytes back of %d)", err, len(got), len(plain))
		}
		bad := append([]byte(nil), rec...)
		bit := int(flip) % (len(bad) * 8)
		bad[bit/8] ^= 1 << (bit % 8)
		if _, err := s.Open(bad); err == nil {
			t.Fatalf("a record with bit %d flipped opened", bit)
		}
	})
}

// FuzzOpen: any bytes open or fail, never panic.
func FuzzOpen(f *testing.F) {
	s, _ := New(TestKey(1))
	f.Add(s.Seal(nil, []byte("seed")))
	f.Add([]byte{1, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, rec []byte) {
		_, _ = s.Open(rec) // must never panic
	})
}

// Lookup is HMAC-SHA256 under the derived lookup key, truncated, and MAC
// the same in full; a lookup allocates nothing (one per message enqueued).
func TestLookupIsTheKeyedHMAC(t *testing.T) {
	s, _ := New(TestKey(1))
	k := TestKey(1)
	m := hmac.New(sha256.New, k.Raw[:])
	m.Write([]byte("herald lookup v1"))
	want := hmac.New(sha256.New, m.Sum(nil))
	want.Write([]byte("15550001111"))
	sum := want.Sum(nil)
	if got := s.Lookup("15550001111"); !bytes.Equal(got[:], sum[:LookupLen]) {
		t.Fatalf("Lookup %x, want %x", got, sum[:LookupLen])
	}
	if got := s.MAC([]byte("15550001111")); !bytes.Equal(got[:], sum) {
		t.Fatalf("MAC %x, want %x", got, sum)
	}
	if n := testing.AllocsPerRun(100, func() { s.Lookup("15550001111") }); n != 0 {
		t.Fatalf("Lookup allocates %v times", n)
	}
}

func BenchmarkLookup(b *testing.B) {
	s, _ := New(TestKey(1))
	for b.Loop() {
		s.Lookup("15550001111")
	}
}
