package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/records"
	"github.com/heraldhq/herald/internal/tenant"
	"github.com/heraldhq/herald/queue"
)

type textBody struct {
	Body string `json:"body"`
	// PreviewURL is the Cloud API's link-preview switch: known, accepted,
	// without effect (Herald renders no previews).
	PreviewURL *bool `json:"preview_url"`
}

type sendRequest struct {
	MessagingProduct string    `json:"messaging_product"`
	RecipientType    string    `json:"recipient_type"` // Cloud API: "individual" (the only kind)
	To               string    `json:"to"`
	Type             string    `json:"type"`
	Text             *textBody `json:"text"`
	TTLSeconds       *int64    `json:"ttl_seconds"`
	// Status "read" with MessageID marks a user's message read (the Cloud
	// API's mark-as-read): no message is sent.
	Status    string `json:"status"`
	MessageID string `json:"message_id"`
}

// reqError is a validation failure with its code.
type reqError struct {
	code int
	msg  string
}

func (e *reqError) Error() string { return e.msg }

func rerr(code int, format string, args ...any) *reqError {
	return &reqError{code: code, msg: fmt.Sprintf(format, args...)}
}

func validTTL(ttl *int64) (time.Duration, *reqError) {
	if ttl == nil {
		return heraldtype.DefaultTTL, nil
	}
	// Range-checked in seconds before the multiplication: 36028797018964028
	// seconds wrapped into range as nanoseconds.
	if *ttl < int64(heraldtype.MinTTL/time.Second) || *ttl > int64(heraldtype.MaxTTL/time.Second) {
		return 0, rerr(CodeBadTTL, "ttl_seconds must be between 30 and 2592000 (30 days)")
	}
	return time.Duration(*ttl) * time.Second, nil
}

func validBody(body string) *reqError {
	n := utf8.RuneCountInString(body)
	if n < 1 || n > 4096 {
		return rerr(CodeBadBody, "text body must be 1-4096 characters, got %d", n)
	}
	if !utf8.ValidString(body) || strings.ContainsRune(body, utf8.RuneError) {
		return rerr(CodeBadBody, "text body must be valid UTF-8")
	}
	return nil
}

// decodeStrict decodes one JSON object into v. It refuses, with a message
// that says what the client sent wrong (never a Go type): a field v does not
// have (named), a value of the wrong kind, data after the object, bytes that
// are not UTF-8.
func decodeStrict(b []byte, v any) *reqError {
	if !utf8.Valid(b) {
		return rerr(CodeBadBody, "request is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			if te.Field == "" {
				return rerr(CodeInvalidParam, "the body must be %s, got %s", kindName(te.Type), te.Value)
			}
			// A campaign's header fields sit in an embedded struct: name them
			// as the client wrote them.
			return rerr(CodeInvalidParam, "field %q must be %s, got %s", strings.TrimPrefix(te.Field, "campaignHeader."), kindName(te.Type), te.Value)
		}
		if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
			return rerr(CodeInvalidParam, "unknown field %s", name)
		}
		if errors.Is(err, io.EOF) {
			return rerr(CodeInvalidParam, "the body is empty: a JSON object is required")
		}
		return rerr(CodeInvalidParam, "body is not valid JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	if rest := bytes.TrimSpace(b[dec.InputOffset():]); len(rest) > 0 {
		return rerr(CodeInvalidParam, "body is not valid JSON: data after the object")
	}
	return nil
}

// kindName names a JSON kind the way a client thinks of it.
func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Pointer:
		return kindName(t.Elem())
	default:
		return "an object"
	}
}

func (s *Server) postMessage(ctx *fasthttp.RequestCtx, b *tenant.Business, pn string) {
	idem := string(ctx.Request.Header.Peek("Idempotency-Key"))
	if len(idem) > 200 {
		badRequest(ctx, CodeInvalidParam, "Idempotency-Key must be at most 200 characters", "")
		return
	}
	raw, ok := s.readBody(ctx)
	if !ok {
		return
	}
	var req sendRequest
	if e := decodeStrict(raw, &req); e != nil {
		badRequest(ctx, e.code, e.msg, "")
		return
	}
	if req.Status != "" || req.MessageID != "" {
		s.markRead(ctx, b, pn, &req)
		return
	}
	reqHash := sha256.Sum256(raw)
	var intentID string // the id an earlier attempt published this send under
	if idem != "" {
		// Held first, then looked up: a retry that raced the first attempt
		// either waits out its answer (409) or finds it remembered.
		release, ok := s.holdIdem(ctx, b.ID+"\x00msg\x00"+idem, "a message with this Idempotency-Key is being accepted")
		if !ok {
			return
		}
		defer release()
		prev, found, same, err := s.opts.Uploads.SentAnswer(b.ID, idem, reqHash)
		if err != nil {
			s.storageError(ctx, err)
			return
		}
		if found && !same {
			fail(ctx, 409, CodeConflict, "OAuthException", "this Idempotency-Key was used for a different message", "send the same body again, or use a new key")
			return
		}
		if found {
			ctx.Response.Header.Set("Idempotent-Replayed", "true")
			ctx.SetStatusCode(200)
			ctx.SetContentType("application/json")
			ctx.SetBody(prev)
			return
		}
		// No answer, but in a cluster an attempt may have been cut off
		// after JetStream stored its message: it left the id.
		v, found, err := s.opts.Uploads.SendIntent(b.ID, idem)
		if err != nil {
			s.storageError(ctx, err)
			return
		}
		if found {
			if len(v) <= 32 || [32]byte(v[:32]) != reqHash {
				fail(ctx, 409, CodeConflict, "OAuthException", "this Idempotency-Key was used for a different message", "send the same body again, or use a new key")
				return
			}
			intentID = string(v[32:])
		}
	}
	if req.MessagingProduct != "whatsapp" {
		badRequest(ctx, CodeInvalidParam, `messaging_product must be "whatsapp"`, "")
		return
	}
	if req.RecipientType != "" && req.RecipientType != "individual" {
		badRequest(ctx, CodeInvalidParam, `recipient_type must be "individual"`, "")
		return
	}
	if req.Type != "" && req.Type != "text" {
		badRequest(ctx, CodeUnsupported, "only type \"text\" is supported", "")
		return
	}
	if req.Text == nil {
		badRequest(ctx, CodeBadBody, "text.body is required", "")
		return
	}
	to, err := tenant.NormalizePhone(req.To)
	if err != nil {
		badRequest(ctx, CodeBadPhone, "invalid recipient phone number", err.Error())
		return
	}
	if e := validBody(req.Text.Body); e != nil {
		badRequest(ctx, e.code, e.msg, "")
		return
	}
	ttl, e := validTTL(req.TTLSeconds)
	if e != nil {
		badRequest(ctx, e.code, e.msg, "")
		return
	}
	if b.Paused {
		fail(ctx, 403, CodeRestricted, "OAuthException", "business is paused", "")
		return
	}
	if err := s.spaceOK(); err != nil {
		s.storageError(ctx, err)
		return
	}
	if err := s.shareOK(b, int64(len(to)+len(req.Text.Body))+recordEstimate); err != nil {
		s.storageError(ctx, err)
		return
	}
	now := s.opts.Now()
	if s.opts.Admitter != nil {
		codes, reason, err := s.opts.Admitter.Admit(b, pn, []string{to}, now)
		if err != nil {
			s.storageError(ctx, err)
			return
		}
		if codes[0] != 0 {
			s.opts.Metrics.Rejected.WithLabelValues(fmt.Sprint(codes[0])).Inc()
			fail(ctx, admissionStatus(codes[0]), codes[0], "OAuthException", admissionText(codes[0], reason), "")
			return
		}
	}
	id := intentID
	if id == "" {
		id = s.nextID(pn, now)
		if idem != "" {
			if err := s.opts.Uploads.Intend("i", b.ID, idem, append(reqHash[:], id...), records.IdemExpiry(now, ttl)); err != nil {
				s.storageError(ctx, err)
				return
			}
		}
	}
	p := heraldtype.Payload{BusinessID: b.ID, PhoneNumberID: pn, From: b.PhoneNumbers[pn], To: to, Body: req.Text.Body, TS: now.Unix()}
	batch := s.opts.DB.NewBatch()
	records.NewStatusRecord(batch, id, b.ID, pn, "", now, now.Add(ttl))
	msg := queue.Message{ID: id, Recipient: heraldtype.QueueRecipient(b.ID, to), Payload: p.Encode(nil), ExpiresAt: now.Add(ttl), Owner: b.ID}
	answer, _ := json.Marshal(map[string]any{
		"messaging_product": "whatsapp",
		"contacts":          []map[string]string{{"input": req.To, "wa_id": to}},
		"messages":          []map[string]string{{"id": id}},
	})
	if idem != "" {
		// The answer is remembered in the enqueue's own batch: a retry after
		// a timeout finds it exactly when the message was accepted.
		s.opts.Uploads.RememberSent(batch, b.ID, idem, reqHash, answer, now, records.IdemExpiry(now, ttl))
	}
	if err := s.enqueue(context.Background(), []queue.Message{msg}, batch); err != nil {
		s.storageError(ctx, err)
		return
	}
	s.opts.Metrics.Accepted.Inc()
	ctx.SetStatusCode(200)
	ctx.SetContentType("application/json")
	ctx.SetBody(answer)
}

func admissionStatus(code int) int {
	switch code {
	case CodeRestricted:
		return 403
	case heraldtype.CodeOptedOut:
		return 400
	}
	return 429
}

func admissionText(code int, reason string) string {
	if reason != "" {
		return reason
	}
	switch code {
	case CodeTier:
		return "messaging tier limit reached: no more new unique recipients in the moving 24 h window"
	case CodeRestricted:
		return "business is paused or restricted for low quality"
	case heraldtype.CodeOptedOut:
		return "the user has opted out of this business's messages (a stop keyword or a block)"
	}
	return "rejected by integrity limits"
}

func (s *Server) getMessage(ctx *fasthttp.RequestCtx, b *tenant.Business, id string) {
	var st *records.MessageStatus
	err := records.ErrNotFound
	if s.opts.ClusterStatus != nil {
		st, err = s.opts.ClusterStatus.Message(id)
	}
	if errors.Is(err, records.ErrNotFound) {
		st, err = s.opts.Statuses.Message(id)
	}
	if errors.Is(err, records.ErrNotFound) && s.opts.Inbound != nil {
		s.getInbound(ctx, b, id)
		return
	}
	if errors.Is(err, records.ErrNotFound) || (err == nil && st.BusinessID != b.ID) {
		notFound(ctx)
		return
	}
	if err != nil {
		s.storageError(ctx, err)
		return
	}
	// Each entry has the shape of a webhook's status: timestamp in unix
	// seconds as a string, a failure's errors[] as the Cloud API writes them.
	type hist struct {
		Status    string                   `json:"status"`
		Timestamp string                   `json:"timestamp"`
		Errors    []heraldtype.StatusError `json:"errors,omitempty"`
	}
	h := make([]hist, 0, len(st.History))
	for _, x := range st.History {
		h = append(h, hist{Status: x.Status, Timestamp: heraldtype.Timestamp(x.TS), Errors: heraldtype.StatusErrors(x.Code)})
	}
	status := st.Status
	if status == heraldtype.StatusQueued && st.CampaignID != "" && s.opts.Campaigns != nil &&
		s.opts.Campaigns.State(st.CampaignID) == heraldtype.CampaignCanceled {
		// Its campaign is canceled: it will never be sent. The history gains
		// its "canceled" entry when the engine meets the message.
		status = heraldtype.StatusCanceled
	}
	writeJSON(ctx, 200, map[string]any{"id": id, "direction": "outbound", "status": status, "phone_number_id": st.PhoneNumberID,
		"campaign_id": st.CampaignID, "history": h})
}
