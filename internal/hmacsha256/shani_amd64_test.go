//go:build !purego

package hmacsha256

func init() {
	if useSHANI {
		blockImpls["sha-ni"] = blockSHANI
	}
}
