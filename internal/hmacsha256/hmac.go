package hmacsha256

import "encoding/binary"

const (
	blockSize = 64
	// Size is the length of a MAC.
	Size = 32
)

var iv = [8]uint32{0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19}

// Key is an HMAC-SHA256 key, ready to MAC: the states after its pad blocks.
// The zero Key is not usable; make one with Init. A Key is a value (64
// bytes), safe to copy and to use concurrently.
type Key struct {
	inner, outer [8]uint32
}

// Init makes k the key key. A key longer than a block is hashed first, as
// RFC 2104 says.
func (k *Key) Init(key []byte) {
	var kb [blockSize]byte
	if len(key) > blockSize {
		var d [Size]byte
		sum(&d, iv, 0, key)
		copy(kb[:], d[:])
	} else {
		copy(kb[:], key)
	}
	const ipad, opad = 0x3636363636363636, 0x5c5c5c5c5c5c5c5c
	var in, out [blockSize]byte
	for i := 0; i < blockSize; i += 8 {
		w := binary.LittleEndian.Uint64(kb[i:])
		binary.LittleEndian.PutUint64(in[i:], w^ipad)
		binary.LittleEndian.PutUint64(out[i:], w^opad)
	}
	k.inner, k.outer = iv, iv
	block(&k.inner, in[:])
	block(&k.outer, out[:])
}

// New returns the key key (Init on a new Key).
func New(key []byte) Key {
	var k Key
	k.Init(key)
	return k
}

// Sum writes the MAC of the concatenation of parts to out.
func (k *Key) Sum(out *[Size]byte, parts ...[]byte) {
	var inner [Size]byte
	sum(&inner, k.inner, blockSize, parts...)
	// The outer hash: the pad block is in k.outer; what is left is the inner
	// digest, padded, in one block.
	var b [blockSize]byte
	copy(b[:], inner[:])
	b[Size] = 0x80
	binary.BigEndian.PutUint64(b[blockSize-8:], (blockSize+Size)*8)
	h := k.outer
	block(&h, b[:])
	putState(out, &h)
}

// Sum is New(key).Sum(out, parts...), for a key used once.
func Sum(out *[Size]byte, key []byte, parts ...[]byte) {
	k := New(key)
	k.Sum(out, parts...)
}

// sum finishes a SHA-256 whose state is h after done bytes (a multiple of
// the block size), over parts, into out.
func sum(out *[Size]byte, h [8]uint32, done uint64, parts ...[]byte) {
	var buf [blockSize]byte
	n := 0 // bytes in buf
	total := done
	for _, p := range parts {
		total += uint64(len(p))
		if n > 0 {
			c := copy(buf[n:], p)
			n += c
			p = p[c:]
			if n < blockSize {
				continue
			}
			block(&h, buf[:])
			n = 0
		}
		if whole := len(p) &^ (blockSize - 1); whole > 0 {
			block(&h, p[:whole])
			p = p[whole:]
		}
		n = copy(buf[:], p)
	}
	// Padding: 0x80, zeros, the length in bits in the last 8 bytes; a second
	// block when the length does not fit after the data.
	buf[n] = 0x80
	clear(buf[n+1:])
	if n+1 > blockSize-8 {
		block(&h, buf[:])
		clear(buf[:])
	}
	binary.BigEndian.PutUint64(buf[blockSize-8:], total*8)
	block(&h, buf[:])
	putState(out, &h)
}

func putState(out *[Size]byte, h *[8]uint32) {
	for i, v := range h {
		binary.BigEndian.PutUint32(out[4*i:], v)
	}
}
