package heraldtype

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Statuses of a message, in the order they advance. Failed and canceled are
// terminal; canceled is reached only from queued (its campaign was canceled
// before the message went to the platform).
const (
	StatusQueued    = "queued"
	StatusSent      = "sent"
	StatusDelivered = "delivered"
	StatusRead      = "read"
	StatusFailed    = "failed"
	StatusCanceled  = "canceled"
)

// Terminal reports whether a message in status st can change no more
// (failed, canceled; read is final too but is not an ending by refusal).
func Terminal(st string) bool { return st == StatusFailed || st == StatusCanceled }

// Campaign states (GET /v1/campaigns/{id}). Canceled and done are final.
const (
	CampaignScheduled = "scheduled"
	CampaignRunning   = "running"
	CampaignPaused    = "paused"
	CampaignCanceled  = "canceled"
	CampaignDone      = "done"
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
	// User is the user's number, on a report (a block opts the user out of
	// the business's messages; only its keyed HMAC is kept).
	User string
	At   time.Time
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
	case StatusCanceled:
		return 5
	}
	return -1
}

// Failure codes Herald reports in statuses. Where the Cloud API's error table
// has a code, Herald uses it with the same meaning; conditions it has no code
// for get one from Herald's own range, 139000–139999, which Meta does not use.
// The README lists them all.
const (
	CodeUndeliverable    = 131026 // Cloud API: message undeliverable (the number is not on the platform)
	CodeRestricted       = 131048 // Cloud API: spam rate limit hit (restricted for spam/quality)
	CodeOptedOut         = 131050 // Cloud API: the user stopped messages from this business
	CodeExpired          = 139010 // Herald: the message's TTL passed before it was sent
	CodeIdentityChanged  = 139011 // Herald: identity_check on and the recipient's key changed
	CodeResetsExhausted  = 139012 // Herald: the recipient kept failing to decrypt
	CodePlatformRejected = 139013 // Herald: the platform refused the envelope permanently
)

// Codes of the API's error objects and upload rejections (package api names
// them by use; several uses share a Cloud API code, told apart by message).
const (
	CodeInvalidParam      = 100    // Cloud API: invalid parameter
	CodeAuth              = 190    // Cloud API: access token invalid or expired
	CodeThroughput        = 130429 // Cloud API: rate limit hit (throughput)
	CodeInternal          = 131000 // Cloud API: something went wrong
	CodeMissingParam      = 131008 // Cloud API: required parameter is missing
	CodeBadParam          = 131009 // Cloud API: parameter value is not valid
	CodeUnsupported       = 131051 // Cloud API: unsupported message type
	CodePairRate          = 131056 // Cloud API: pair rate limit hit
	CodeTier              = 139001 // Herald: messaging tier limit reached
	CodeTooManyRecipients = 139002 // Herald: too many recipients in one request
)

// HeraldCodes is Herald's own range of error codes: the Cloud API has none
// in it.
const HeraldCodesMin, HeraldCodesMax = 139000, 139999

type codeInfo struct{ title, details string }

var codes = map[int]codeInfo{
	CodeInvalidParam:      {"Invalid parameter", "the request is malformed or names a field, value or object Herald does not know"},
	CodeAuth:              {"Invalid access token", "the token is missing, unknown or revoked"},
	CodeThroughput:        {"Rate limit hit", "Herald or this business's share of its queue is at capacity; retry after Retry-After"},
	CodeInternal:          {"Something went wrong", "storage failed or the disk is full; nothing was accepted"},
	CodeMissingParam:      {"Required parameter is missing", "a template variable has no value for this recipient"},
	CodeBadParam:          {"Parameter value is not valid", "a phone number, text body or ttl_seconds is out of range"},
	CodeUnsupported:       {"Unsupported message type", "only text messages are supported"},
	CodeTier:              {"Messaging tier limit reached", "no more new unique recipients in the moving 24 hours"},
	CodeTooManyRecipients: {"Too many recipients", "more recipients than one request may carry"},
	CodeUndeliverable:     {"Message undeliverable", "the recipient's number is not on the platform"},
	CodeRestricted:        {"Spam rate limit hit", "the business is paused or restricted for spam or low quality"},
	CodeExpired:           {"Message expired", "the message's ttl_seconds passed before it could be sent"},
	CodeIdentityChanged:   {"Recipient identity changed", "the recipient's identity key changed and identity_check is on"},
	CodeResetsExhausted:   {"Recipient cannot decrypt", "the recipient kept failing to decrypt after session resets"},
	CodePlatformRejected:  {"Platform rejected message", "the platform refused the message permanently"},
}

// StoredCode reads a failure code from a record: records written before the
// codes followed the Cloud API's table (session 13 and earlier) hold numbers
// that mean something else there; they are read as today's codes, so no
// answer or webhook carries an old one. Such records are gone within 30 days.
func StoredCode(code int) int {
	switch code {
	case 131052:
		return CodeExpired
	case 131053:
		return CodeIdentityChanged
	case 131054:
		return CodeResetsExhausted
	case 131055:
		return CodePlatformRejected
	}
	return code
}

// Codes lists every code Herald answers or reports, in increasing order.
func Codes() []int {
	out := make([]int, 0, len(codes))
	for c := range codes {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

// CodeTitle is a failure code's short title ("" for a code Herald does not report).
func CodeTitle(code int) string { return codes[code].title }

// CodeText explains a failure code.
func CodeText(code int) string {
	if c, ok := codes[code]; ok {
		return c.details
	}
	return "unknown"
}

// StatusError is one entry of a status's errors[], as the Cloud API writes it.
type StatusError struct {
	Code      int    `json:"code"`
	Title     string `json:"title"`
	Message   string `json:"message"`
	ErrorData struct {
		Details string `json:"details"`
	} `json:"error_data"`
}

// StatusErrors is the errors[] of a status that failed with code (nil for 0).
func StatusErrors(code int) []StatusError {
	if code == 0 {
		return nil
	}
	e := StatusError{Code: code, Title: CodeTitle(code)}
	if e.Title == "" {
		e.Title = "Failed"
	}
	e.Message = e.Title
	e.ErrorData.Details = CodeText(code)
	return []StatusError{e}
}

// Timestamp writes a status time as the Cloud API does: unix seconds, as a
// string. Every field named "timestamp" in the API and webhooks uses it.
func Timestamp(unix int64) string { return strconv.FormatInt(unix, 10) }

// FormatTime writes every other time of the API ("created_at", "since", …):
// RFC 3339 in UTC with milliseconds.
func FormatTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z07:00") }

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
	// Quiet is the campaign's quiet hours in the recipient's local time
	// (minutes after midnight, start and end); Quiet.Set false: none.
	Quiet QuietHours
}

// QuietHours is a daily window, in a recipient's local time, in which
// nothing is sent: [Start, End) in minutes after midnight; Start > End wraps
// past midnight. Start == End is never valid (no window would be left).
type QuietHours struct {
	Set        bool
	Start, End uint16
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
	dst = binary.AppendUvarint(dst, uint64(p.ResetDevice))
	if p.Quiet.Set { // a trailing field: payloads without it decode as before
		dst = binary.AppendUvarint(dst, 1+uint64(p.Quiet.Start)*1440+uint64(p.Quiet.End))
	}
	return dst
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
	if b = b[k:]; len(b) > 0 {
		q, k := binary.Uvarint(b)
		if k <= 0 || q == 0 || q > 1440*1440 {
			return p, ErrBadPayload
		}
		q--
		p.Quiet = QuietHours{Set: true, Start: uint16(q / 1440), End: uint16(q % 1440)}
		if p.Quiet.Start == p.Quiet.End {
			return p, ErrBadPayload
		}
	}
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
	hi, lo := g.hi, g.lo
	g.mu.Unlock()
	return encodeID(ms, hi, lo)
}

// encodeID: 128 bits → 26 base32 characters; sortable because the alphabet
// is ordered.
func encodeID(ms uint64, hi uint16, lo uint64) string {
	var raw [16]byte
	raw[0], raw[1], raw[2], raw[3], raw[4], raw[5] = byte(ms>>40), byte(ms>>32), byte(ms>>24), byte(ms>>16), byte(ms>>8), byte(ms)
	binary.BigEndian.PutUint16(raw[6:8], hi)
	binary.BigEndian.PutUint64(raw[8:16], lo)
	return crockford.EncodeToString(raw[:])[:26]
}

// IDSeed is the random part of an idempotent upload's message ids.
type IDSeed [10]byte

// NewIDSeed draws a seed with room to count up (its top bit clear).
func NewIDSeed() IDSeed {
	var s IDSeed
	rand.Read(s[:])
	s[0] &= 0x7f
	return s
}

// IDFor is the id of line n of an idempotent upload that began at ms with
// seed: the same for every attempt of the upload (a retry that publishes a
// line again publishes it under the same id, which the stream's dedupe and
// the platform's (id, device) dedupe absorb), increasing with n, in IDGen's
// format. Distinct from IDGen's ids but with chance 2^-80 per pair.
func IDFor(ms int64, seed IDSeed, n uint64) string {
	hi := binary.BigEndian.Uint16(seed[:2])
	lo := binary.BigEndian.Uint64(seed[2:])
	lo2 := lo + n
	if lo2 < lo {
		hi++
	}
	return encodeID(uint64(ms), hi, lo2)
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
