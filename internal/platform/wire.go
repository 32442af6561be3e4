package platform

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
)

// KeysQuery is the body of POST /v1/keys/query.
type KeysQuery struct {
	Users []string `json:"users"`
}

// KeysResponse answers /v1/keys/query.
type KeysResponse struct {
	Users   []UserBundles `json:"users"`
	Unknown []string      `json:"unknown"`
}

// UserBundles is one user's devices.
type UserBundles struct {
	User    string         `json:"user"`
	Devices []DeviceBundle `json:"devices"`
}

// DeviceBundle is one device's prekey bundle; keys are standard base64 of
// libsignal's serialized forms (33-byte 0x05-prefixed public keys).
type DeviceBundle struct {
	DeviceID       uint32         `json:"device_id"`
	RegistrationID uint32         `json:"registration_id"`
	IdentityKey    string         `json:"identity_key"`
	SignedPreKey   SignedPreKey   `json:"signed_prekey"`
	PreKey         *OneTimePreKey `json:"prekey,omitempty"`
}

// SignedPreKey is a device's signed prekey.
type SignedPreKey struct {
	ID        uint32 `json:"id"`
	PublicKey string `json:"public_key"`
	Signature string `json:"signature"`
}

// OneTimePreKey is a device's one-time prekey.
type OneTimePreKey struct {
	ID        uint32 `json:"id"`
	PublicKey string `json:"public_key"`
}

// Envelope types on the wire.
const (
	TypePreKey = "pkmsg"
	TypeMsg    = "msg"
)

// Envelope is one ciphertext for one device.
type Envelope struct {
	ID         string `json:"id"`
	From       string `json:"from"`
	To         string `json:"to"`
	DeviceID   uint32 `json:"device_id"`
	Type       string `json:"type"`
	Ciphertext string `json:"ciphertext"`
	// Raw, when set, is the ciphertext's bytes: the client base64-encodes
	// them straight into the request body (Ciphertext stays empty), which
	// saves a string per envelope on the sending path.
	Raw []byte `json:"-"`
}

// MessagesRequest is the body of POST /v1/messages.
type MessagesRequest struct {
	Envelopes []Envelope `json:"envelopes"`
}

// Result codes.
const (
	StatusAccepted = "accepted"
	StatusError    = "error"

	CodeUnknownUser  = "unknown_user"
	CodeStaleDevices = "stale_devices"
	CodeBadMessage   = "bad_message"
	CodeThrottled    = "throttled"
	CodeUnavailable  = "unavailable"
)

// Result is the platform's answer for one envelope.
type Result struct {
	ID           string `json:"id"`
	DeviceID     uint32 `json:"device_id"`
	Status       string `json:"status"`
	Code         string `json:"code,omitempty"`
	RetryAfterMS int64  `json:"retry_after_ms,omitempty"`
}

// MessagesResponse answers /v1/messages.
type MessagesResponse struct {
	Results []Result `json:"results"`
}

// Plaintext is the JSON a recipient decrypts.
type Plaintext struct {
	ID   string    `json:"id"`
	From string    `json:"from"`
	TS   int64     `json:"ts"`
	Type string    `json:"type"`
	Text *TextBody `json:"text,omitempty"`
}

// TextBody is a text message body.
type TextBody struct {
	Body string `json:"body"`
}

// Event types pushed by the platform.
const (
	EventDelivered     = "delivered"
	EventRead          = "read"
	EventDecryptFailed = "decrypt_failed"
	EventReport        = "report"
)

// Event is one platform event.
type Event struct {
	Type     string `json:"type"`
	ID       string `json:"id,omitempty"`
	User     string `json:"user"`
	DeviceID uint32 `json:"device_id,omitempty"`
	TS       int64  `json:"ts,omitempty"`
	Business string `json:"business,omitempty"`
	Reason   string `json:"reason,omitempty"`
}

// Receipt is a read receipt the business sends a user (POST /v1/receipts).
type Receipt struct {
	Type string `json:"type"` // "read"
	ID   string `json:"id"`   // the platform's id of the user's message
	From string `json:"from"` // business digits
	To   string `json:"to"`   // user digits
}

// Events is the body POSTed to Herald's /v1/platform/events.
type Events struct {
	Events []Event `json:"events"`
}

// Sign returns "sha256=<hex HMAC-SHA256(secret, body)>".
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a "sha256=<hex>" signature in constant time.
func Verify(secret, body []byte, signature string) bool {
	want := Sign(secret, body)
	return len(secret) > 0 && hmac.Equal([]byte(want), []byte(signature))
}
