package signal

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"go.mau.fi/libsignal/protocol"
	"go.mau.fi/libsignal/serialize"
	"go.mau.fi/libsignal/session"
	"go.mau.fi/libsignal/state/record"

	"github.com/heraldhq/herald/internal/platform"
)

// libraryEncrypt is the reference: the library's own session.Cipher.
func libraryEncrypt(t *testing.T, id *Identity, user string, device uint32, rec *record.Session, pts [][]byte) []Ciphertext {
	t.Helper()
	st := &oneSession{id: id, rec: rec}
	lib := serialize.NewProtoBufSerializer() // the library's own encoders
	c := session.NewCipherFromSession(protocol.NewSignalAddress(user, device), st, st, st, lib.PreKeySignalMessage, lib.SignalMessage)
	var out []Ciphertext
	for _, pt := range pts {
		m, err := c.Encrypt(context.Background(), pt)
		if err != nil {
			t.Fatal(err)
		}
		typ := platform.TypeMsg
		if m.Type() == protocol.PREKEY_TYPE {
			typ = platform.TypePreKey
		}
		out = append(out, Ciphertext{Type: typ, Body: m.Serialize()})
	}
	return out
}

func cloneSession(t *testing.T, rec *record.Session) *record.Session {
	t.Helper()
	c, err := record.NewSessionFromBytes(rec.Serialize(), Serializer.Session, Serializer.State)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestEncryptMatchesLibraryCipher: Herald's encrypt step and the library's
// session.Cipher.Encrypt, given equal sessions, produce byte-identical
// envelopes (pkmsg while unacknowledged, msg after) and leave byte-identical
// sessions; and the recipient decrypts Herald's.
func TestEncryptMatchesLibraryCipher(t *testing.T) {
	id, _ := NewIdentity("15550001111")
	for _, c := range []struct{ acked, oneTime bool }{{false, true}, {true, true}, {false, false}} {
		acked := c.acked
		t.Run(fmt.Sprintf("acknowledged=%v/one-time-prekey=%v", acked, c.oneTime), func(t *testing.T) {
			budget := 10
			if !c.oneTime {
				budget = 0 // the bundle has no one-time prekey: no prekey id in the pkmsg
			}
			dev, _ := NewDevice(2, budget)
			built := mkSession(t, id, "15551230000", dev, nil, false)
			if acked {
				built.Record.SessionState().ClearUnackPreKeyMessage()
			}
			ref := cloneSession(t, built.Record)
			var pts [][]byte
			for i := 0; i < 9; i++ {
				pts = append(pts, bytes.Repeat([]byte{byte('a' + i)}, 1+i*37)) // 1 … 297 bytes, 112 a whole number of blocks
			}
			pts = append(pts, nil) // empty: one block of padding
			ours, err := EncryptBatch(built.Record, pts)
			if err != nil {
				t.Fatal(err)
			}
			theirs := libraryEncrypt(t, id, "15551230000", 2, ref, pts)
			for i := range pts {
				if ours[i].Type != theirs[i].Type || !bytes.Equal(ours[i].Body, theirs[i].Body) {
					t.Fatalf("message %d differs: %s %x / library %s %x", i, ours[i].Type, ours[i].Body, theirs[i].Type, theirs[i].Body)
				}
				want := platform.TypePreKey
				if acked {
					want = platform.TypeMsg
				}
				if ours[i].Type != want {
					t.Fatalf("message %d: type %s, want %s", i, ours[i].Type, want)
				}
			}
			if !bytes.Equal(built.Record.Serialize(), ref.Serialize()) {
				t.Fatal("the advanced sessions differ")
			}
			if !acked {
				for i, c := range ours {
					got, err := dev.Decrypt(id.Phone, c.Type, c.Body)
					if err != nil || !bytes.Equal(got, pts[i]) {
						t.Fatalf("recipient, message %d: %v", i, err)
					}
				}
			}
		})
	}
}

func TestEncryptWithoutSendingChainIsAnError(t *testing.T) {
	rec := record.NewSession(Serializer.Session, Serializer.State)
	if _, err := EncryptBatch(rec, [][]byte{[]byte("x")}); err == nil {
		t.Fatal("a fresh record has no sending chain: want an error")
	}
	// AppendEncrypted leaves what dst held, and only that.
	dst := []Ciphertext{{Type: "msg", Body: []byte("earlier")}}
	got, err := AppendEncrypted(dst, rec, [][]byte{[]byte("x")})
	if err == nil || len(got) != 1 || string(got[0].Body) != "earlier" {
		t.Fatalf("AppendEncrypted on error = %d ciphertexts, %v; want the one it was given and an error", len(got), err)
	}
}

// TestSessionSerializerMatchesLibrary: session records encode to the same
// bytes as with the library's JSON serializer, and each side reads the
// other's (records written before the switch still load).
func TestSessionSerializerMatchesLibrary(t *testing.T) {
	id, _ := NewIdentity("15550001111")
	dev, _ := NewDevice(2, 10)
	built := mkSession(t, id, "15551230000", dev, nil, false)
	if _, err := EncryptBatch(built.Record, [][]byte{[]byte("a"), []byte("b")}); err != nil {
		t.Fatal(err)
	}
	lib := serialize.NewProtoBufSerializer()
	ours := built.Record.Serialize()
	theirs, err := record.NewSessionFromBytes(ours, Serializer.Session, Serializer.State)
	if err != nil {
		t.Fatal(err)
	}
	libRec, err := record.NewSessionFromBytes(ours, lib.Session, lib.State)
	if err != nil {
		t.Fatalf("the library cannot read Herald's encoding: %v", err)
	}
	if !bytes.Equal(libRec.Serialize(), ours) {
		t.Fatalf("encodings differ:\n%s\n%s", libRec.Serialize(), ours)
	}
	back, err := record.NewSessionFromBytes(libRec.Serialize(), Serializer.Session, Serializer.State)
	if err != nil || !bytes.Equal(back.Serialize(), theirs.Serialize()) {
		t.Fatalf("Herald cannot read the library's encoding: %v", err)
	}
	if _, err := (sessionSerializer{}).Deserialize([]byte("{not json")); err == nil {
		t.Fatal("garbage decoded")
	}
}
