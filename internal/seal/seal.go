package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/klauspost/compress/s2"

	"github.com/heraldhq/herald/internal/hmacsha256"
)

// Errors returned by Open. ErrCorrupt means the record cannot be trusted (tampered,
// truncated, or sealed with a key we no longer hold): callers dead-letter it.
var (
	ErrCorrupt    = errors.New("seal: corrupt or tampered record")
	ErrUnknownKey = errors.New("seal: record sealed with an unknown key id")
)

const (
	version   = 1
	headerLen = 1 + 4 + 12
	// LookupLen is the length of a lookup HMAC.
	LookupLen = 16
)

// Key is one AES-256 master key with its id.
type Key struct {
	ID  uint32
	Raw [32]byte
}

// Sealer seals and opens records. It is safe for concurrent use.
type Sealer struct {
	current uint32
	aeads   map[uint32]cipher.AEAD
	mac     hmacsha256.Key // the lookup key, its pads hashed once
}

// New builds a Sealer from keys; the key with the highest id seals new records.
// The lookup HMAC key is derived from the lowest key id so lookups stay stable
// across rotations.
func New(keys ...Key) (*Sealer, error) {
	if len(keys) == 0 {
		return nil, errors.New("seal: no key")
	}
	s := &Sealer{aeads: make(map[uint32]cipher.AEAD, len(keys))}
	first := keys[0]
	for _, k := range keys {
		block, err := aes.NewCipher(k.Raw[:])
		if err != nil {
			return nil, fmt.Errorf("seal: key %d: %w", k.ID, err)
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, fmt.Errorf("seal: key %d: %w", k.ID, err)
		}
		s.aeads[k.ID] = aead
		if k.ID >= s.current {
			s.current = k.ID
		}
		if k.ID < first.ID {
			first = k
		}
	}
	var lookupKey [32]byte
	hmacsha256.Sum(&lookupKey, first.Raw[:], []byte("herald lookup v1"))
	s.mac.Init(lookupKey[:])
	return s, nil
}

// Overhead is how many bytes sealing adds beyond the compressed plaintext.
func (s *Sealer) Overhead() int { return headerLen + 16 }

// Seal compresses and encrypts plaintext, appending the record to dst.
func (s *Sealer) Seal(dst, plaintext []byte) []byte {
	aead, hdr, dst := s.header(dst)
	// Compress into a pooled scratch buffer, then encrypt after the header.
	bp := compPool.Get().(*[]byte)
	comp := s2.Encode((*bp)[:cap(*bp)], plaintext) // used when long enough
	dst = aead.Seal(dst, hdr[5:], comp, hdr[:5])
	if cap(comp) <= 64<<10 {
		*bp = comp[:0]
	}
	compPool.Put(bp)
	return dst
}

// SealRandom seals plaintext that does not compress (keys, ciphertexts) as
// Seal does, in the same format, without trying to: the S2 block it encrypts
// holds plaintext as one literal (S2's encoder searched every session chain
// record, random keys, for matches it never found). Open reads both alike.
func (s *Sealer) SealRandom(dst, plaintext []byte) []byte {
	aead, hdr, dst := s.header(dst)
	// The block is sealed in place at the end of dst.
	start := len(dst)
	dst = appendLiteralBlock(dst, plaintext)
	return aead.Seal(dst[:start], hdr[5:], dst[start:], hdr[:5])
}

// SealedRandomLen is the length of SealRandom's record of n bytes.
func SealedRandomLen(n int) int {
	varint := 1
	for v := uint64(n); v >= 0x80; v >>= 7 {
		varint++
	}
	tag := 0
	if n > 0 {
		tag = 1 + literalLenBytes(n)
	}
	return headerLen + varint + tag + n + 16
}

// header appends a new record's header (version, the sealing key's id, a
// fresh nonce) to dst, and returns the key's AEAD and the header.
func (s *Sealer) header(dst []byte) (cipher.AEAD, [headerLen]byte, []byte) {
	var hdr [headerLen]byte
	hdr[0] = version
	binary.BigEndian.PutUint32(hdr[1:5], s.current)
	if _, err := rand.Read(hdr[5:]); err != nil {
		panic("seal: no randomness: " + err.Error())
	}
	return s.aeads[s.current], hdr, append(dst, hdr[:]...)
}

// appendLiteralBlock appends an S2 (Snappy) block holding src as literals:
// the uncompressed length (varint), then one literal element — a tag byte
// whose low bits are 0 and upper six bits are the length-1 when it is below
// 60, or 59 + the count of bytes that follow holding the length-1, little
// endian (literalLenBytes).
func appendLiteralBlock(dst, src []byte) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(src)))
	if len(src) == 0 {
		return dst
	}
	m := uint32(len(src) - 1)
	e := literalLenBytes(len(src))
	if e == 0 {
		dst = append(dst, byte(m)<<2)
	} else {
		dst = append(dst, byte(59+e)<<2)
		for i := 0; i < e; i++ {
			dst = append(dst, byte(m>>(8*i)))
		}
	}
	return append(dst, src...)
}

// literalLenBytes is how many bytes after the tag hold a literal of n bytes'
// length-1: none below 61 bytes, then the fewest that fit it.
func literalLenBytes(n int) int {
	switch m := uint32(n - 1); {
	case m < 60:
		return 0
	case m < 1<<8:
		return 1
	case m < 1<<16:
		return 2
	case m < 1<<24:
		return 3
	default:
		return 4
	}
}

var compPool = sync.Pool{New: func() any { b := make([]byte, 0, 2048); return &b }}

// Open authenticates, decrypts and decompresses a sealed record.
func (s *Sealer) Open(record []byte) ([]byte, error) {
	if len(record) < headerLen+16 || record[0] != version {
		return nil, ErrCorrupt
	}
	id := binary.BigEndian.Uint32(record[1:5])
	aead, ok := s.aeads[id]
	if !ok {
		return nil, fmt.Errorf("%w %d", ErrUnknownKey, id)
	}
	comp, err := aead.Open(nil, record[5:headerLen], record[headerLen:], record[:5])
	if err != nil {
		return nil, ErrCorrupt
	}
	out, err := s2.Decode(nil, comp)
	if err != nil {
		return nil, ErrCorrupt
	}
	return out, nil
}

// Lookup returns the keyed HMAC used in place of a phone number inside index keys.
// It allocates nothing for values up to 32 bytes (numbers; one per message enqueued).
func (s *Sealer) Lookup(value string) [LookupLen]byte {
	var sum [32]byte
	s.mac.Sum(&sum, []byte(value))
	var out [LookupLen]byte
	copy(out[:], sum[:LookupLen])
	return out
}

// MAC returns a full keyed HMAC-SHA256 of value (for hashed tokens and the like).
func (s *Sealer) MAC(value []byte) [32]byte {
	var sum [32]byte
	s.mac.Sum(&sum, value)
	return sum
}

// LoadKeys reads master keys from the environment variable envName (when set) or
// else from path, creating path with one fresh key (mode 0600) when it does not
// exist. The format, in both places, is one key per line: "<id>:<64 hex chars>".
// created reports whether a new key file was written.
func LoadKeys(path, envValue string) (keys []Key, created bool, err error) {
	text := envValue
	if text == "" {
		b, err := os.ReadFile(path)
		switch {
		case errors.Is(err, os.ErrNotExist):
			var k Key
			k.ID = 1
			if _, err := rand.Read(k.Raw[:]); err != nil {
				return nil, false, err
			}
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return nil, false, fmt.Errorf("seal: key file %s: %w", path, err)
			}
			line := fmt.Sprintf("%d:%s\n", k.ID, hex.EncodeToString(k.Raw[:]))
			if err := os.WriteFile(path, []byte(line), 0o600); err != nil {
				return nil, false, fmt.Errorf("seal: key file %s: %w", path, err)
			}
			return []Key{k}, true, nil
		case err != nil:
			return nil, false, fmt.Errorf("seal: key file %s: %w", path, err)
		}
		text = string(b)
	}
	keys, err = ParseKeys(text)
	return keys, false, err
}

// ParseKeys parses "<id>:<64 hex>" lines (blank lines and # comments ignored).
func ParseKeys(text string) ([]Key, error) {
	var keys []Key
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		idText, hexText, ok := strings.Cut(line, ":")
		var k Key
		var id uint64
		if _, err := fmt.Sscanf(idText, "%d", &id); !ok || err != nil || id == 0 || id > 1<<32-1 {
			return nil, fmt.Errorf("seal: key line %d: want <id>:<64 hex chars> with id > 0", n+1)
		}
		raw, err := hex.DecodeString(hexText)
		if err != nil || len(raw) != 32 {
			return nil, fmt.Errorf("seal: key line %d: key must be 64 hex characters (32 bytes)", n+1)
		}
		k.ID = uint32(id)
		copy(k.Raw[:], raw)
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("seal: no key found")
	}
	return keys, nil
}

// TestKey returns a fixed key for tests and benchmarks.
func TestKey(id uint32) Key {
	var k Key
	k.ID = id
	for i := range k.Raw {
		k.Raw[i] = byte(i) + byte(id)
	}
	return k
}
