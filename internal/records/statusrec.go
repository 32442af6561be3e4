package records

import (
	"encoding/binary"
	"errors"
	"fmt"

	json "github.com/goccy/go-json"
	"github.com/heraldhq/herald/heraldtype"
)

// Status records on disk ('eM' + message id). Written twice per message (queued
// at enqueue, sent after the platform's answer) and read once in between, so
// their size and codec are on the hot path. Since session 8 they are binary:
//
//	0x01 | str BusinessID | str PhoneNumberID | str CampaignID | str Status |
//	varint Code | uvarint len(History) | { varint TS | str Status | varint Code }…
//
// where str is a uvarint length and the bytes. Form 0x02 (session 12) is the
// same followed by varint Expires (the message's expiry, unix seconds: the
// webhook outbox keeps the number a status reports no longer than that).
// Records written before are the JSON of MessageStatus (always starting with
// '{') or form 0x01; decodeStatus reads all three, so existing data
// directories need no migration.

const (
	statusRecV1 = 0x01
	statusRecV2 = 0x02
)

// errStatusRec is a status record that is neither form.
var errStatusRec = errors.New("records: status record corrupt")

// appendStatus appends rec's binary record to dst.
func appendStatus(dst []byte, rec *MessageStatus) []byte {
	dst = append(dst, statusRecV2)
	dst = appendStr(dst, rec.BusinessID)
	dst = appendStr(dst, rec.PhoneNumberID)
	dst = appendStr(dst, rec.CampaignID)
	dst = appendStr(dst, rec.Status)
	dst = binary.AppendVarint(dst, int64(rec.Code))
	dst = binary.AppendUvarint(dst, uint64(len(rec.History)))
	for _, h := range rec.History {
		dst = binary.AppendVarint(dst, h.TS)
		dst = appendStr(dst, h.Status)
		dst = binary.AppendVarint(dst, int64(h.Code))
	}
	return binary.AppendVarint(dst, rec.Expires)
}

func appendStr(dst []byte, s string) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(s))), s...)
}

// upgradeCodes reads the failure codes of an old record as today's.
func (rec *MessageStatus) upgradeCodes() {
	rec.Code = heraldtype.StoredCode(rec.Code)
	for i := range rec.History {
		rec.History[i].Code = heraldtype.StoredCode(rec.History[i].Code)
	}
}

// decodeStatus reads a status record of either form into rec.
// On an error rec is left empty.
func decodeStatus(v []byte, rec *MessageStatus) error {
	*rec = MessageStatus{}
	if len(v) > 0 && v[0] == '{' {
		if err := json.Unmarshal(v, rec); err != nil {
			*rec = MessageStatus{}
			return fmt.Errorf("%w: %w", errStatusRec, err)
		}
		rec.upgradeCodes()
		return nil
	}
	if len(v) == 0 || (v[0] != statusRecV1 && v[0] != statusRecV2) {
		return fmt.Errorf("%w: unknown form", errStatusRec)
	}
	r := statusReader{b: v[1:]}
	*rec = MessageStatus{BusinessID: r.str(), PhoneNumberID: r.str(), CampaignID: r.str(), Status: r.str(), Code: heraldtype.StoredCode(r.int())}
	n := r.uint()
	if r.err == nil && n > uint64(len(r.b))/3 { // an entry takes at least 3 bytes: a larger count is corrupt (and must not size an allocation)
		r.err = errStatusRec
	}
	if r.err == nil && n > 0 {
		rec.History = make([]StatusHistory, 0, n)
		for i := uint64(0); i < n && r.err == nil; i++ {
			rec.History = append(rec.History, StatusHistory{TS: r.varint(), Status: r.str(), Code: heraldtype.StoredCode(r.int())})
		}
	}
	if r.err == nil && v[0] == statusRecV2 {
		rec.Expires = r.varint()
	}
	if r.err == nil && len(r.b) != 0 {
		r.err = fmt.Errorf("%w: %d trailing bytes", errStatusRec, len(r.b))
	}
	if r.err != nil {
		*rec = MessageStatus{}
		if errors.Is(r.err, errStatusRec) {
			return r.err
		}
		return fmt.Errorf("%w: %w", errStatusRec, r.err)
	}
	return nil
}

// statusReader reads the binary form; the first error sticks.
type statusReader struct {
	b   []byte
	err error
}

var errShort = errors.New("truncated")

func (r *statusReader) uint() uint64 {
	if r.err != nil {
		return 0
	}
	x, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errShort
		return 0
	}
	r.b = r.b[n:]
	return x
}

// varint is binary.Varint's zig-zag decoding of a uvarint.
func (r *statusReader) varint() int64 {
	ux := r.uint()
	x := int64(ux >> 1)
	if ux&1 != 0 {
		x = ^x
	}
	return x
}

func (r *statusReader) int() int {
	x := r.varint()
	if int64(int(x)) != x {
		r.err = errStatusRec
		return 0
	}
	return int(x)
}

func (r *statusReader) str() string {
	n := r.uint()
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.b)) {
		r.err = errShort
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}
