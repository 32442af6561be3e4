// Package platform holds the platform contract of DESIGN.md ("Platform API"):
// its wire types, Herald's fasthttp client of it, and the signature check on the
// events it pushes. The simulator that serves it lives in platform/sim.
//
// # Files
//
//	wire.go    the wire types (envelopes, results, events, bundles)
//	encode.go  request bodies and the plaintext format, written without reflection
//	decode.go  answers and events, bounded
//	client.go  the fasthttp client: key queries, sends, the probe behind /readyz
package platform
