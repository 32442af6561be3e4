//go:build !purego

package hmacsha256

import "golang.org/x/sys/cpu"

// useSHANI is crypto/internal/fips140/sha256's condition for its SHA-NI
// block function (the instructions it uses are VEX-encoded, so the OS must
// save the AVX state too: cpu.X86.HasAVX says both). x/sys/cpu does not
// report the SHA extensions; CPUID leaf 7 does (EBX bit 29).
var useSHANI = cpu.X86.HasAVX && cpu.X86.HasSSE41 && cpu.X86.HasSSSE3 && hasSHA()

func hasSHA() bool {
	if max, _, _, _ := cpuid(0, 0); max < 7 {
		return false
	}
	_, ebx, _, _ := cpuid(7, 0)
	return ebx&(1<<29) != 0
}

//go:noescape
func blockSHANI(h *[8]uint32, p []byte)

func cpuid(eaxArg, ecxArg uint32) (eax, ebx, ecx, edx uint32)

// block runs the compression function over p's whole 64-byte blocks.
func block(h *[8]uint32, p []byte) {
	if useSHANI {
		blockSHANI(h, p)
		return
	}
	blockGeneric(h, p)
}
