package platform

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"testing"

	"pgregory.net/rapid"
)

// TestAppendMessagesRequestIsTheContractJSON: for any envelopes (any strings,
// Raw or Ciphertext), the hand-written body decodes to the same request as
// json.Marshal's, and is byte-identical to it when no string needs escaping
// beyond what both do the same way.
func TestAppendMessagesRequestIsTheContractJSON(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		envs := rapid.SliceOfN(rapid.Custom(func(t *rapid.T) Envelope {
			str := rapid.OneOf(rapid.StringMatching(`[0-9A-Za-z+/=_-]{0,30}`), rapid.String())
			e := Envelope{ID: str.Draw(t, "id"), From: str.Draw(t, "from"), To: str.Draw(t, "to"),
				DeviceID: rapid.Uint32().Draw(t, "dev"), Type: str.Draw(t, "type")}
			if rapid.Bool().Draw(t, "raw") {
				e.Raw = rapid.SliceOfN(rapid.Byte(), 0, 300).Draw(t, "bytes")
			} else {
				e.Ciphertext = str.Draw(t, "ct")
			}
			return e
		}), 0, 5).Draw(t, "envs")
		want := make([]Envelope, len(envs))
		for i, e := range envs {
			want[i] = e
			if e.Raw != nil {
				want[i].Raw, want[i].Ciphertext = nil, base64.StdEncoding.EncodeToString(e.Raw)
			}
		}
		got := AppendMessagesRequest(nil, envs)
		var dec MessagesRequest
		if err := json.Unmarshal(got, &dec); err != nil {
			t.Fatalf("not JSON: %v: %s", err, got)
		}
		if len(dec.Envelopes) != len(want) || (len(want) > 0 && !reflect.DeepEqual(dec.Envelopes, want)) {
			t.Fatalf("decoded %+v, want %+v", dec.Envelopes, want)
		}
		ref, _ := json.Marshal(MessagesRequest{Envelopes: want})
		if !bytes.ContainsAny(ref, `\`) && !bytes.Equal(got, ref) && len(want) > 0 {
			t.Fatalf("body %s, json.Marshal %s", got, ref)
		}
		// Appending to a buffer keeps what was there.
		if again := AppendMessagesRequest([]byte("x"), envs); !bytes.Equal(again[1:], got) {
			t.Fatal("append to a non-empty buffer differs")
		}
	})
}
