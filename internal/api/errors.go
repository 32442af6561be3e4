package api

import (
	"encoding/json"

	"github.com/valyala/fasthttp"
)

// Error codes Herald's API returns (Cloud API numbers where one exists). The
// README lists them all.
const (
	CodeAuth         = 190    // missing, unknown or revoked token
	CodeInvalidParam = 100    // malformed request, wrong type, bad value
	CodeNotFound     = 100    // (404) object does not exist or is not yours
	CodeBadPhone     = 131009 // phone number not 8-15 digits
	CodeMissingVar   = 131008 // a template variable has no value
	CodeBadBody      = 131005 // text body empty, too long, or not valid UTF-8
	CodeBadTTL       = 131006 // ttl_seconds outside 30..2592000
	CodeUnsupported  = 131051 // message type other than text
	CodeThroughput   = 130429 // queue full (backpressure); retry after Retry-After
	CodeTier         = 131064 // messaging tier limit: new unique recipients exhausted for 24 h
	CodeRestricted   = 131048 // business paused or quality too low
	CodePairRate     = 131056 // (dispatch only) pair rate limit
	CodeInternal     = 131000 // storage failure; nothing was accepted
	CodeTooLarge     = 100    // (413) request body or line too large
	CodeConflict     = 100    // (409) same Idempotency-Key in flight
	CodeBadSignature = 190    // platform event signature missing or wrong
	CodeTooManyRcpts = 131062 // too many recipients in one request
)

type errBody struct {
	Error errObj `json:"error"`
}

type errObj struct {
	Message string `json:"message"`
	Type    string `json:"type"`
	Code    int    `json:"code"`
	Details string `json:"details,omitempty"`
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, _ := json.Marshal(v)
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

func fail(ctx *fasthttp.RequestCtx, status, code int, typ, msg, details string) {
	writeJSON(ctx, status, errBody{errObj{Message: msg, Type: typ, Code: code, Details: details}})
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
