package platform

import "encoding/json"

// DecodeMessagesResponse decodes the answer to POST /v1/messages into out
// (appended to out[:0]): what json.Unmarshal into a MessagesResponse gives.
//
// The answer the platform sends — {"results":[{"id":…,"device_id":…,
// "status":…}, …]}, plain strings, no escapes — is read by a scanner of
// exactly that shape: encoding/json spent ~2.5 % of the engine's warm CPU on
// it, and allocated a string per id and status. Anything the scanner does not
// expect (an escape, an unknown or differently cased key, null, a number out
// of range, other spacing than JSON's whitespace) goes to encoding/json
// instead, so the result and the errors are always encoding/json's
// (FuzzDecodeMessagesResponse). envs, in request order, lets a result's id
// share the envelope's string instead of allocating its own.
func DecodeMessagesResponse(body []byte, envs []Envelope, out []Result) ([]Result, error) {
	if res, ok := scanMessagesResponse(body, envs, out[:0]); ok {
		return res, nil
	}
	clear(out[:cap(out)]) // what the scanner wrote before it gave up
	r := MessagesResponse{Results: out[:0]}
	err := json.Unmarshal(body, &r)
	return r.Results, err
}

type respScanner struct {
	b []byte
	i int
}

func (s *respScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// lit consumes c after whitespace.
func (s *respScanner) lit(c byte) bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// str reads a string of printable ASCII without escapes (anything else: not
// ours to decide) and returns its bytes.
func (s *respScanner) str() ([]byte, bool) {
	if !s.lit('"') {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			s.i++
			return s.b[start : s.i-1], true
		case c < 0x20 || c >= 0x80 || c == '\\':
			return nil, false
		}
		s.i++
	}
	return nil, false
}

// uint reads a non-negative integer of at most max (no sign, no leading zero,
// no fraction or exponent).
func (s *respScanner) uint(max uint64) (uint64, bool) {
	s.ws()
	start := s.i
	var v uint64
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		if s.i-start >= 18 { // larger than anything the contract sends
			return 0, false
		}
		v = v*10 + uint64(s.b[s.i]-'0')
		s.i++
	}
	n := s.i - start
	if n == 0 || (n > 1 && s.b[start] == '0') || v > max {
		return 0, false
	}
	if s.i < len(s.b) {
		switch s.b[s.i] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	return v, true
}

// intern returns one of the contract's strings for b, or a copy.
func intern(b []byte, known ...string) string {
	for _, k := range known {
		if string(b) == k {
			return k
		}
	}
	return string(b)
}

func scanMessagesResponse(body []byte, envs []Envelope, out []Result) ([]Result, bool) {
	s := &respScanner{b: body}
	if !s.lit('{') {
		return nil, false
	}
	if k, ok := s.str(); !ok || string(k) != "results" || !s.lit(':') || !s.lit('[') {
		return nil, false
	}
	if !s.lit(']') {
		for {
			r, ok := s.result(envs, len(out))
			if !ok {
				return nil, false
			}
			out = append(out, r)
			if s.lit(',') {
				continue
			}
			if s.lit(']') {
				break
			}
			return nil, false
		}
	}
	if !s.lit('}') {
		return nil, false
	}
	s.ws()
	return out, s.i == len(s.b)
}

func (s *respScanner) result(envs []Envelope, n int) (Result, bool) {
	var r Result
	if !s.lit('{') {
		return r, false
	}
	if s.lit('}') {
		return r, true
	}
	for {
		k, ok := s.str()
		if !ok || !s.lit(':') {
			return r, false
		}
		switch string(k) {
		case "id":
			v, ok := s.str()
			if !ok {
				return r, false
			}
			if n < len(envs) && string(v) == envs[n].ID {
				r.ID = envs[n].ID
			} else {
				r.ID = string(v)
			}
		case "device_id":
			v, ok := s.uint(1<<32 - 1)
			if !ok {
				return r, false
			}
			r.DeviceID = uint32(v)
		case "status":
			v, ok := s.str()
			if !ok {
				return r, false
			}
			r.Status = intern(v, StatusAccepted, StatusError)
		case "code":
			v, ok := s.str()
			if !ok {
				return r, false
			}
			r.Code = intern(v, CodeUnknownUser, CodeStaleDevices, CodeBadMessage, CodeThrottled, CodeUnavailable)
		case "retry_after_ms":
			v, ok := s.uint(1<<63 - 1)
			if !ok {
				return r, false
			}
			r.RetryAfterMS = int64(v)
		default:
			return r, false
		}
		if s.lit(',') {
			continue
		}
		if s.lit('}') {
			return r, true
		}
		return r, false
	}
}
