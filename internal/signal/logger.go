package signal

import "go.mau.fi/libsignal/logger"

// quiet is the logger installed into go.mau.fi/libsignal. The library sets its
// global logger lazily, without synchronization, on first use; installing one
// here, at package init and before any goroutine encrypts, removes that data
// race (found by go test -race) and keeps its debug output out of our logs.
// Note: the library still formats every debug call's arguments and looks up
// its caller before consulting the logger (see BENCHMARKS.md).
type quiet struct{}

func (quiet) Debug(string, string)   {}
func (quiet) Info(string, string)    {}
func (quiet) Warning(string, string) {}
func (quiet) Error(string, string)   {}
func (quiet) Configure(string)       {}

func init() {
	var l logger.Loggable = quiet{}
	logger.Setup(&l)
}
