package kv

import (
	"fmt"
	"testing"
)

// TestReadsOfAbsentKeysUseTheFilters: after a flush, a point read of a key
// no table holds is answered by the tables' bloom filters, without reading
// their data blocks (the cold path reads many such keys).
func TestReadsOfAbsentKeysUseTheFilters(t *testing.T) {
	db, err := Open(Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for round := 0; round < 3; round++ { // three L0 tables
		b := db.NewBatch()
		for i := 0; i < 1000; i++ {
			b.Set(fmt.Appendf(nil, "k%d-%04d", round, i), []byte("v"), nil)
		}
		if err := db.Commit(b, true); err != nil {
			t.Fatal(err)
		}
		if err := db.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	before := db.Metrics().Filter.Hits
	for i := 0; i < 100; i++ {
		// Inside every table's key range, in none of them.
		if _, ok, err := db.GetCopy(fmt.Appendf(nil, "k1-%04dx", i)); err != nil || ok {
			t.Fatalf("absent key: found %v, err %v", ok, err)
		}
	}
	if hits := db.Metrics().Filter.Hits - before; hits < 50 {
		t.Fatalf("%d filter hits for 100 reads of absent keys: the tables have no filters", hits)
	}
	if _, ok, _ := db.GetCopy([]byte("k2-0007")); !ok {
		t.Fatal("a present key was not found")
	}
}
