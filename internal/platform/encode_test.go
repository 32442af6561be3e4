package platform

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	gojson "github.com/goccy/go-json"
	"pgregory.net/rapid"
)

// TestAppendMessagesRequestIsTheContractJSON: for any envelopes (any strings,
// Raw or Ciphertext), the hand-written body decodes to the same request as
// json.Marshal's, and is byte-identical to it.
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
		if !bytes.Equal(got, ref) && len(want) > 0 {
			t.Fatalf("body %s, json.Marshal %s", got, ref)
		}
		// Appending to a buffer keeps what was there.
		if again := AppendMessagesRequest([]byte("x"), envs); !bytes.Equal(again[1:], got) {
			t.Fatal("append to a non-empty buffer differs")
		}
	})
}

// jsonText draws strings that exercise every escaping rule: ASCII with the
// characters JSON and HTML escape, control characters, U+2028/U+2029,
// multi-byte runes, invalid UTF-8.
func jsonText() *rapid.Generator[string] {
	special := rapid.SampledFrom([]string{`"`, `\`, "<", ">", "&", "\b", "\f", "\n", "\r", "\t", "\x00", "\x1f", "\x7f",
		"\u2028", "\u2029", "✓", "😀", "é", "\xff", "\xe2\x80", "a", " ", "/"})
	return rapid.OneOf(rapid.String(), rapid.Custom(func(t *rapid.T) string {
		parts := rapid.SliceOfN(rapid.OneOf(special, rapid.StringN(0, 4, -1)), 0, 12).Draw(t, "parts")
		return strings.Join(parts, "")
	}))
}

// TestAppendPlaintextIsJSONMarshal: the plaintext every device decrypts is
// byte for byte what encoding/json (and goccy/go-json, which the contract's
// other encoders use) makes of it.
func TestAppendPlaintextIsJSONMarshal(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		p := Plaintext{ID: jsonText().Draw(t, "id"), From: jsonText().Draw(t, "from"), TS: rapid.Int64().Draw(t, "ts"),
			Type: jsonText().Draw(t, "type")}
		if rapid.Bool().Draw(t, "text") {
			p.Text = &TextBody{Body: jsonText().Draw(t, "body")}
		}
		got := AppendPlaintext([]byte("x"), &p)[1:]
		want, _ := json.Marshal(p)
		if !bytes.Equal(got, want) {
			t.Fatalf("AppendPlaintext %s\n   json.Marshal %s", got, want)
		}
		if g, _ := gojson.Marshal(p); !bytes.Equal(got, g) {
			t.Fatalf("AppendPlaintext %s\n   goccy        %s", got, g)
		}
	})
}
