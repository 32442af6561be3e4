package heraldtype

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"slices"
	"sync"
	"time"
)

// Statuses of a message, in the order they advance. Failed is terminal.
const (
	StatusQueued    = "queued"
	StatusSent      = "sent"
	StatusDelivered = "delivered"
	StatusRead      = "read"
	StatusFailed    = "failed"
)

// StatusChange is one status transition, as webhooks report it.
type StatusChange struct {
	MessageID     string
	BusinessID    string
	PhoneNumberID string
	CampaignID    string
	Status        string
	Code          int
	TS            int64
	// Recipient is the recipient's number, known only for transitions the
	// engine itself makes (not persisted with the status).
	Recipient string
	// Expires is the message's expiry (unix seconds; 0 when unknown): what
	// reports the recipient's number is kept no longer (invariant 11).
	Expires int64
}

// Signal is a quality signal for the rate limiter (reports, unknown users, deliveries).
type Signal struct {
	Kind          string // "report", "unknown_user", "delivered"
	BusinessPhone string
	PhoneNumberID string
	Reason        string
	At            time.Time
}

// Rank orders statuses so they only move forward.
func Rank(status string) int {
	switch status {
	case StatusQueued:
		return 0
	case StatusSent:
		return 1
	case StatusDelivered:
		return 2
	case StatusRead:
		return 3
	case StatusFailed:
		return 4
	}
	return -1
}

// Failure codes Herald reports (Cloud API numbers where one exists; the README
// lists them all).
const (
	CodeUndeliverable    = 131026 // unknown_user: the number is not on the platform
	CodeExpired          = 131052 // the message's TTL passed before it was sent
	CodeIdentityChanged  = 131053 // identity_check on and the recipient's key changed
	CodeResetsExhausted  = 131054 // the recipient kept failing to decrypt
	CodePlatformRejected = 131055 // the platform refused the envelope permanently
	CodeRestricted       = 131048 // restricted for spam/quality
)

// CodeText explains a failure code.
func CodeText(code int) string {
	switch code {
	case CodeUndeliverable:
		return "recipient is not on the platform"
	case CodeExpired:
		return "message expired before it could be sent"
	case CodeIdentityChanged:
		return "recipient's identity key changed and identity_check is on"
	case CodeResetsExhausted:
		return "recipient kept failing to decrypt after session resets"
	case CodePlatformRejected:
		return "platform rejected the message"
	case CodeRestricted:
		return "business restricted for spam or low quality"
	}
	return "unknown"
}

// Payload is what the queue carries for one message (sealed at rest).
type Payload struct {
	BusinessID    string
	PhoneNumberID string
	From          string // business phone digits (sender)
	To            string // recipient digits
	CampaignID    string
	Body          string
	TS            int64 // accepted, unix seconds: also the time of its "queued" status (the engine relies on it)
	// ResetDevice, when non-zero, targets one device whose session must be reset
	// first (a decrypt_failed retry receipt); only that device gets the message.
	ResetDevice uint32
}

// ErrBadPayload is returned for an undecodable payload.
var ErrBadPayload = errors.New("heraldtype: bad payload")

// Encode appends the binary form of p to dst.
func (p *Payload) Encode(dst []byte) []byte {
	// Room for all of it at once (eight varints: at most 80 bytes, a dozen
	// in practice): appending field by field grew a nil dst three or four
	// times.
	dst = slices.Grow(dst, 1+80+len(p.BusinessID)+len(p.PhoneNumberID)+len(p.From)+len(p.To)+len(p.CampaignID)+len(p.Body))
	dst = append(dst, 1)
	for _, s := range []string{p.BusinessID, p.PhoneNumberID, p.From, p.To, p.CampaignID, p.Body} {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
		dst = append(dst, s...)
	}
	dst = binary.AppendVarint(dst, p.TS)
	return binary.AppendUvarint(dst, uint64(p.ResetDevice))
}

// DecodePayload parses Encode's output.
func DecodePayload(b []byte) (Payload, error) {
	var p Payload
	if len(b) == 0 || b[0] != 1 {
		return p, ErrBadPayload
	}
	b = b[1:]
	// Two allocations per decode instead of six: the five short fields are
	// substrings of one string, the body has its own (a short field kept
	// for long, e.g. as a cache key, then holds ~100 bytes, not the body).
	var bounds [6][2]int
	at := 0
	for i := range bounds {
		n, k := binary.Uvarint(b[at:])
		if k <= 0 || uint64(len(b)-at-k) < n {
			return p, ErrBadPayload
		}
		bounds[i] = [2]int{at + k, at + k + int(n)}
		at += k + int(n)
	}
	head := string(b[:bounds[4][1]])
	for i, f := range [...]*string{&p.BusinessID, &p.PhoneNumberID, &p.From, &p.To, &p.CampaignID} {
		*f = head[bounds[i][0]:bounds[i][1]]
	}
	p.Body = string(b[bounds[5][0]:bounds[5][1]])
	b = b[at:]
	ts, k := binary.Varint(b)
	if k <= 0 {
		return p, ErrBadPayload
	}
	p.TS = ts
	b = b[k:]
	d, k := binary.Uvarint(b)
	if k <= 0 || d > 127 {
		return p, ErrBadPayload
	}
	p.ResetDevice = uint32(d)
	return p, nil
}

// IDGen makes message ids: 26 characters of Crockford base32 over 48 bits of
// milliseconds and 80 bits that increase within a millisecond, so ids are
// URL-safe, unique, and increase in generation order (a monotonic ULID).
type IDGen struct {
	mu     sync.Mutex
	lastMS uint64
	lo     uint64 // low 64 bits of the 80-bit counter
	hi     uint16
}

var crockford = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

// New returns the next id at time now.
func (g *IDGen) New(now time.Time) string {
	ms := uint64(now.UnixMilli())
	g.mu.Lock()
	if ms <= g.lastMS {
		ms = g.lastMS
		g.lo++
		if g.lo == 0 {
			g.hi++
		}
	} else {
		var r [10]byte
		rand.Read(r[:])
		g.hi = binary.BigEndian.Uint16(r[:2]) & 0x7fff // room to count up
		g.lo = binary.BigEndian.Uint64(r[2:]) >> 1
		g.lastMS = ms
	}
	var raw [16]byte
	raw[0], raw[1], raw[2], raw[3], raw[4], raw[5] = byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms)
	binary.BigEndian.PutUint16(raw[6:8], g.hi)
	binary.BigEndian.PutUint64(raw[8:16], g.lo)
	g.mu.Unlock()
	// 128 bits → 26 base32 characters; sortable because the alphabet is ordered.
	return crockford.EncodeToString(raw[:])[:26]
}

// QueueRecipient is what the queue orders and leases messages by: one
// business's messages to one user. Order, the pair rate and a held message
// are per (business, recipient): a message one business holds never holds
// another business's message to the same user. The engine keys a business's
// Signal sessions with the user by its HMAC too.
func QueueRecipient(businessID, to string) string { return businessID + "\x00" + to }

// TTL bounds (design: between 30 s and 30 days, default 30 days).
const (
	MinTTL     = 30 * time.Second
	MaxTTL     = 30 * 24 * time.Hour
	DefaultTTL = MaxTTL
)
