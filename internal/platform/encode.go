package platform

import (
	"encoding/base64"
	"slices"
	"strconv"
	"unicode/utf8"
)

// AppendMessagesRequest appends the JSON body of POST /v1/messages for envs —
// what json.Marshal(MessagesRequest{envs}) gives, with an envelope's Raw
// bytes base64-encoded in place (TestAppendMessagesRequestIsTheContractJSON).
// One buffer per request instead of a reflective encoder and a base64 string
// per envelope.
func AppendMessagesRequest(dst []byte, envs []Envelope) []byte {
	// Room for the whole body up front (escapes aside): growing a pooled
	// buffer envelope by envelope reallocated it ~300 B per message.
	n := 16
	for i := range envs {
		e := &envs[i]
		n += 80 + len(e.ID) + len(e.From) + len(e.To) + len(e.Type) + len(e.Ciphertext) + base64.StdEncoding.EncodedLen(len(e.Raw))
	}
	dst = slices.Grow(dst, n)
	dst = append(dst, `{"envelopes":[`...)
	for i := range envs {
		e := &envs[i]
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"id":`...)
		dst = appendJSONString(dst, e.ID)
		dst = append(dst, `,"from":`...)
		dst = appendJSONString(dst, e.From)
		dst = append(dst, `,"to":`...)
		dst = appendJSONString(dst, e.To)
		dst = append(dst, `,"device_id":`...)
		dst = strconv.AppendUint(dst, uint64(e.DeviceID), 10)
		dst = append(dst, `,"type":`...)
		dst = appendJSONString(dst, e.Type)
		dst = append(dst, `,"ciphertext":`...)
		if e.Raw != nil {
			dst = append(dst, '"')
			dst = base64.StdEncoding.AppendEncode(dst, e.Raw)
			dst = append(dst, '"')
		} else {
			dst = appendJSONString(dst, e.Ciphertext)
		}
		dst = append(dst, '}')
	}
	return append(dst, "]}"...)
}

// AppendPlaintext appends p as the contract's plaintext JSON: exactly what
// json.Marshal(p) gives (TestAppendPlaintextIsJSONMarshal), without the
// reflective encoder (whose deep frames also grew the stack of every
// short-lived goroutine that encoded one).
func AppendPlaintext(dst []byte, p *Plaintext) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendJSONString(dst, p.ID)
	dst = append(dst, `,"from":`...)
	dst = appendJSONString(dst, p.From)
	dst = append(dst, `,"ts":`...)
	dst = strconv.AppendInt(dst, p.TS, 10)
	dst = append(dst, `,"type":`...)
	dst = appendJSONString(dst, p.Type)
	if p.Text != nil {
		dst = append(dst, `,"text":{"body":`...)
		dst = appendJSONString(dst, p.Text.Body)
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

// appendJSONString appends s as a JSON string the way encoding/json writes
// one: quote, backslash and control characters escaped (\b \f \n \r \t
// short, others \u00XX), <, > and & escaped for HTML safety, U+2028 and
// U+2029 escaped, invalid UTF-8 replaced by \ufffd.
// jsonSafe: the ASCII bytes a JSON string carries as they are (encoding/json
// with HTML escaping: not a control byte, quote, backslash, <, > or &). A
// table lookup per byte instead of six comparisons.
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for b := 0x20; b < utf8.RuneSelf; b++ {
		t[b] = b != '"' && b != '\\' && b != '<' && b != '>' && b != '&'
	}
	return t
}()

func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if jsonSafe[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '\\', '"':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
