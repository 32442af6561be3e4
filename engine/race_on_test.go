//go:build race

package engine_test

// raceEnabled scales the heaviest end-to-end tests down under -race; `make
// e2e` runs them at full size without it.
const raceEnabled = true
