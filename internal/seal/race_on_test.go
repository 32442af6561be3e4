//go:build race

package seal

// raceEnabled: sync.Pool drops items at random under -race, so allocation
// counts are checked only without it.
const raceEnabled = true
