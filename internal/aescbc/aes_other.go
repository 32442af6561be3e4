//go:build !amd64 || purego

package aescbc

const useAESNI = false

func encrypt(key *[32]byte, iv *[16]byte, buf []byte) { encryptStdlib(key, iv, buf) }
