// Package node wires one Herald server: storage, sealing, queue, Signal
// store, platform client (or the embedded simulator), engine, webhooks,
// integrity limits and the API. cmd/herald only parses configuration and
// calls New, Start and Close.
//
// # Files
//
//	node.go       Config (EnsureDefaults, Validate: the one place of the
//	              server's defaults), New (storage, queue, platform, engine,
//	              API), Start, Close, the periodic loops, readiness
//	supervise.go  Supervise: reopen in process after a storage failure
//
// The node makes the process's one clock (Config.Now) and passes it to every
// component; nothing else reads the wall clock (internal/clock).
package node
