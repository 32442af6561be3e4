//go:build !amd64 || purego

package hmacsha256

const useSHANI = false

func block(h *[8]uint32, p []byte) { blockGeneric(h, p) }
