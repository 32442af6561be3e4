package api

import (
	"cmp"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"math/rand/v2"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/valyala/fasthttp"
)

// Error codes Herald's API returns. Where the Cloud API's error table has a
// code, it is used with the same meaning; conditions it has no code for get
// one from Herald's range 139000–139999 (heraldtype.HeraldCodesMin/Max),
// which Meta does not use. The README lists them all.
const (
	CodeAuth         = heraldtype.CodeAuth         // missing, unknown or revoked token
	CodeInvalidParam = heraldtype.CodeInvalidParam // malformed request, wrong type, bad value
	CodeNotFound     = heraldtype.CodeInvalidParam // (404) object does not exist or is not yours
	CodeBadPhone     = heraldtype.CodeBadParam     // phone number not 8-15 digits
	CodeMissingVar   = heraldtype.CodeMissingParam // a template variable has no value
	CodeBadBody      = heraldtype.CodeBadParam     // text body empty, too long, or not valid UTF-8
	CodeBadTTL       = heraldtype.CodeBadParam     // ttl_seconds outside 30..2592000
	CodeUnsupported  = heraldtype.CodeUnsupported  // message type other than text
	CodeThroughput   = heraldtype.CodeThroughput   // queue full (backpressure); retry after Retry-After
	CodeTier         = heraldtype.CodeTier         // messaging tier limit: new unique recipients exhausted for 24 h
	CodeRestricted   = heraldtype.CodeRestricted   // business paused or quality too low
	CodePairRate     = heraldtype.CodePairRate     // (dispatch only) pair rate limit
	CodeInternal     = heraldtype.CodeInternal     // storage failure; nothing was accepted
	CodeTooLarge     = heraldtype.CodeInvalidParam // (413) request body or line too large
	CodeConflict     = heraldtype.CodeInvalidParam // (409) same Idempotency-Key in flight
	CodeBadSignature = heraldtype.CodeAuth         // platform event signature missing or wrong
	CodeTooManyRcpts = heraldtype.CodeTooManyRecipients
	CodeBadParam     = heraldtype.CodeBadParam // a value out of range: send_at, quiet_hours, limit
)

type errBody struct {
	Error errObj `json:"error"`
}

// errObj is the Cloud API's error object. details is also kept at the top
// level, where Herald's first clients read it.
type errObj struct {
	Message   string  `json:"message"`
	Type      string  `json:"type"`
	Code      int     `json:"code"`
	Details   string  `json:"details,omitempty"`
	ErrorData errData `json:"error_data"`
	TraceID   string  `json:"fbtrace_id"`
}

type errData struct {
	MessagingProduct string `json:"messaging_product"`
	Details          string `json:"details"`
}

// traceKey holds a request's trace id among its user values.
const traceKey = "herald.trace"

// TraceHeader carries a request's trace id on every answer (as the Graph
// API's x-fb-trace-id does); error objects carry it as fbtrace_id and the
// logs of that request as trace_id.
const TraceHeader = "X-FB-Trace-ID"

// newTraceID is 16 random bytes, base64url: unique enough to find one
// request in the logs, cheap enough for every request.
func newTraceID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// traceID is the request's trace id, made (and set on the answer) on first use.
func traceID(ctx *fasthttp.RequestCtx) string {
	if t, ok := ctx.UserValue(traceKey).(string); ok {
		return t
	}
	t := newTraceID()
	ctx.SetUserValue(traceKey, t)
	ctx.Response.Header.Set(TraceHeader, t)
	return t
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, _ := json.Marshal(v)
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

func fail(ctx *fasthttp.RequestCtx, status, code int, typ, msg, details string) {
	writeJSON(ctx, status, errBody{errObj{Message: msg, Type: typ, Code: code, Details: details,
		ErrorData: errData{MessagingProduct: "whatsapp", Details: cmp.Or(details, msg)}, TraceID: traceID(ctx)}})
}

func badRequest(ctx *fasthttp.RequestCtx, code int, msg, details string) {
	fail(ctx, 400, code, "OAuthException", msg, details)
}

func notFound(ctx *fasthttp.RequestCtx) {
	fail(ctx, 404, CodeNotFound, "GraphMethodException", "Unsupported request: object does not exist or you may not act on it", "")
}

func unauthorized(ctx *fasthttp.RequestCtx) {
	fail(ctx, 401, CodeAuth, "OAuthException", "Invalid OAuth access token", "send Authorization: Bearer <token>")
}
