package platform

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
)

// AppendMessagesRequest appends the JSON body of POST /v1/messages for envs —
// what json.Marshal(MessagesRequest{envs}) gives, with an envelope's Raw
// bytes base64-encoded in place (TestAppendMessagesRequestIsTheContractJSON).
// One buffer per request instead of a reflective encoder and a base64 string
// per envelope.
func AppendMessagesRequest(dst []byte, envs []Envelope) []byte {
	if dst == nil {
		n := 16
		for i := range envs {
			e := &envs[i]
			n += 80 + len(e.ID) + len(e.From) + len(e.To) + len(e.Type) + len(e.Ciphertext) + base64.StdEncoding.EncodedLen(len(e.Raw))
		}
		dst = make([]byte, 0, n)
	}
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

// appendJSONString appends s as a JSON string: printable ASCII other than
// quote and backslash as it is (ids, numbers, types, base64), anything else
// through encoding/json.
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' {
			b, _ := json.Marshal(s)
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
