package tenant

import (
	"errors"
	"testing"

	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/seal"
)

func open(t *testing.T, dir string) (*Store, *kv.DB) {
	db, err := kv.Open(kv.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	s, _ := seal.New(seal.TestKey(1))
	st, err := Open(db, s)
	if err != nil {
		t.Fatal(err)
	}
	return st, db
}

func TestBusinessLifecycleAndTokens(t *testing.T) {
	dir := t.TempDir()
	st, db := open(t, dir)
	b, tt, err := st.NewBusiness("Acme", []string{"+1 555 000 1111"}, "250", 0, false)
	if err != nil {
		t.Fatal(err)
	}
	tok, tokID := SplitToken(tt)
	if got, err := st.Authenticate(tok); err != nil || got.ID != b.ID {
		t.Fatalf("auth: %v", err)
	}
	if _, err := st.Authenticate(tok + "x"); !errors.Is(err, ErrUnauthorized) {
		t.Fatal("wrong token accepted")
	}
	if _, _, err := st.NewBusiness("Other", []string{"15550001111"}, "", 0, false); !errors.Is(err, ErrNumberInUse) {
		t.Fatalf("number reuse: %v", err)
	}
	tok2, tok2ID, _ := st.NewToken(b.ID)
	if err := st.RevokeToken(b.ID, tokID); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Authenticate(tok); !errors.Is(err, ErrUnauthorized) {
		t.Fatal("revoked token still works")
	}
	db.Close()
	st, db = open(t, dir)
	defer db.Close()
	if got, err := st.Authenticate(tok2); err != nil || got.ID != b.ID || got.MPS != 80 {
		t.Fatalf("after reopen: %v", err)
	}
	if err := st.RevokeToken(b.ID, tok2ID+"nope"); !errors.Is(err, ErrNotFound) {
		t.Fatal("revoking an unknown token")
	}
	tier := "bogus"
	if _, err := st.Update(b.ID, Patch{Tier: &tier}); !errors.Is(err, ErrInvalid) {
		t.Fatal("bad tier accepted")
	}
	mps := 5000
	if _, err := st.Update(b.ID, Patch{MPS: &mps}); !errors.Is(err, ErrInvalid) {
		t.Fatal("mps 5000 accepted on tier 250")
	}
}

func TestNormalizePhone(t *testing.T) {
	good := map[string]string{"+1 555 000 0001": "15550000001", "1555-000-0001": "15550000001", "(44) 20.7946.0000": "442079460000"}
	for in, want := range good {
		if got, err := NormalizePhone(in); err != nil || got != want {
			t.Errorf("%q: %q %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "1234567", "1234567890123456", "+1 555 abc 0001", "1+5550000001", "05550000001"} {
		if _, err := NormalizePhone(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
