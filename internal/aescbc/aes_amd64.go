//go:build !purego

package aescbc

import (
	"encoding/binary"

	"golang.org/x/sys/cpu"
)

// useAESNI is crypto/internal/fips140/aes's condition for its assembly.
var useAESNI = cpu.X86.HasAES && cpu.X86.HasSSE41 && cpu.X86.HasSSSE3

//go:noescape
func encryptBlockAsm(nr int, xk *uint32, dst, src *byte)

//go:noescape
func expandKeyAsm(nr int, key *byte, enc *uint32, dec *uint32)

// encrypt is Encrypt with AES-NI; without it, the standard library.
func encrypt(key *[32]byte, iv *[16]byte, buf []byte) {
	if !useAESNI {
		encryptStdlib(key, iv, buf)
		return
	}
	// AES-256: 14 rounds, 15 round keys. The assembly always writes the
	// decryption schedule too.
	var enc, dec [60]uint32
	expandKeyAsm(14, &key[0], &enc[0], &dec[0])
	p0, p1 := binary.LittleEndian.Uint64(iv[:8]), binary.LittleEndian.Uint64(iv[8:])
	for i := 0; i+16 <= len(buf); i += 16 {
		b := buf[i : i+16 : i+16]
		binary.LittleEndian.PutUint64(b[:8], binary.LittleEndian.Uint64(b[:8])^p0)
		binary.LittleEndian.PutUint64(b[8:], binary.LittleEndian.Uint64(b[8:])^p1)
		encryptBlockAsm(14, &enc[0], &b[0], &b[0])
		p0, p1 = binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])
	}
}
