package api

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/inbound"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/tenant"
	"github.com/heraldhq/herald/ratelimit"
)

// maxInboundBody bounds one POST of envelopes (10,000 envelopes of an
// ordinary text take ~4 MB).
const maxInboundBody = 8 << 20

// platformInbound: POST /v1/platform/inbound, signed like events. Each
// envelope gets its answer; "accepted" means its plaintext is durable.
func (s *Server) platformInbound(ctx *fasthttp.RequestCtx) {
	body, ok := s.signedBody(ctx, maxInboundBody, "inbound")
	if !ok {
		return
	}
	if s.opts.Inbound == nil {
		notFound(ctx)
		return
	}
	var req struct {
		Envelopes []inbound.Envelope `json:"envelopes"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		badRequest(ctx, CodeInvalidParam, "inbound body is not {\"envelopes\":[...]}", err.Error())
		return
	}
	if len(req.Envelopes) > inbound.MaxEnvelopes {
		fail(ctx, 413, CodeTooLarge, "OAuthException", fmt.Sprintf("%d envelopes in one post; at most %d", len(req.Envelopes), inbound.MaxEnvelopes), "")
		return
	}
	if err := s.spaceOK(); err != nil {
		s.storageError(ctx, err)
		return
	}
	receive := s.opts.Inbound.Receive
	if s.opts.InboundRoute != nil {
		receive = s.opts.InboundRoute
	}
	writeJSON(ctx, 200, map[string]any{"results": receive(req.Envelopes)})
}

// keyEvents takes the prekeys_low events out of evs (they are for the
// key uploader, not the engine) and hands them on.
func (s *Server) keyEvents(evs []platform.Event) []platform.Event {
	out := evs[:0]
	for _, e := range evs {
		if e.Type == "prekeys_low" {
			if s.opts.KeysNeeded != nil && e.Business != "" {
				s.opts.KeysNeeded(e.Business)
			}
			continue
		}
		out = append(out, e)
	}
	return out
}

// InboundRemote reaches the inbound messages other nodes hold (cluster).
type InboundRemote interface {
	Get(businessID, id string) (*inbound.Message, error)
	MarkRead(businessID, pn, id string) error
}

// getInbound answers GET /v1/messages/{id} for a message a user sent to
// one of b's numbers (its body included, until its TTL); 404 for anything
// else.
func (s *Server) getInbound(ctx *fasthttp.RequestCtx, b *tenant.Business, id string) {
	m, err := s.opts.Inbound.Get(id)
	if errors.Is(err, inbound.ErrNotFound) && s.opts.InboundElsewhere != nil {
		m, err = s.opts.InboundElsewhere.Get(b.ID, id)
	}
	if errors.Is(err, inbound.ErrNotFound) || (err == nil && m.BusinessID != b.ID) {
		notFound(ctx)
		return
	}
	if err != nil {
		s.storageError(ctx, err)
		return
	}
	ts := heraldtype.Timestamp(m.TS)
	status := "received"
	if m.Read {
		status = "read"
	}
	writeJSON(ctx, 200, map[string]any{"id": m.ID, "direction": "inbound", "status": status, "phone_number_id": m.PhoneNumberID,
		"from": m.From, "timestamp": ts, "type": "text", "text": map[string]string{"body": m.Body},
		"history": []map[string]string{{"status": "received", "timestamp": ts}}})
}

// markRead: POST /v1/{pn}/messages {"messaging_product":"whatsapp",
// "status":"read","message_id":…} marks a user's message to pn read: a read
// receipt goes to the platform (persisted, retried). Marking it again
// answers the same and sends nothing more.
func (s *Server) markRead(ctx *fasthttp.RequestCtx, b *tenant.Business, pn string, req *sendRequest) {
	switch {
	case req.MessagingProduct != "whatsapp":
		badRequest(ctx, CodeInvalidParam, "messaging_product must be \"whatsapp\"", "")
		return
	case req.Status != "read":
		badRequest(ctx, CodeInvalidParam, "status must be \"read\"", "the only status a business sets is read")
		return
	case req.MessageID == "":
		badRequest(ctx, CodeInvalidParam, "message_id is required with status", "")
		return
	case req.To != "" || req.Text != nil || req.Type != "" || req.TTLSeconds != nil || req.RecipientType != "":
		badRequest(ctx, CodeInvalidParam, "a mark-as-read request takes only messaging_product, status and message_id", "")
		return
	}
	if s.opts.Inbound == nil {
		notFound(ctx)
		return
	}
	err := s.opts.Inbound.MarkRead(b.ID, pn, req.MessageID)
	if errors.Is(err, inbound.ErrNotFound) && s.opts.InboundElsewhere != nil {
		err = s.opts.InboundElsewhere.MarkRead(b.ID, pn, req.MessageID)
	}
	switch {
	case errors.Is(err, inbound.ErrNotFound):
		notFound(ctx)
	case err != nil:
		s.storageError(ctx, err)
	default:
		writeJSON(ctx, 200, map[string]bool{"success": true})
	}
}

// stopKeywords is the business's stop keyword list in force.
func stopKeywords(b *tenant.Business) []string {
	if len(b.StopKeywords) > 0 {
		return b.StopKeywords
	}
	return ratelimit.DefaultStopKeywords
}

// OptOuts is what the API needs of the limiter for opt-outs.
type OptOuts interface {
	OptOuts(biz string, limit int) (int64, []ratelimit.OptOutView, error)
	OptIn(biz, user string) (bool, error)
}

// getOptOuts: GET /v1/{pn}/optouts → the business's opt-out count and keyed
// ids (at most 1,000; never a number).
func (s *Server) getOptOuts(ctx *fasthttp.RequestCtx, b *tenant.Business, _ string) {
	oo, ok := s.opts.Admitter.(OptOuts)
	if !ok {
		writeJSON(ctx, 200, map[string]any{"count": 0, "optouts": []any{}})
		return
	}
	n, list, err := oo.OptOuts(b.ID, 1000)
	if err != nil {
		s.storageError(ctx, err)
		return
	}
	writeJSON(ctx, 200, map[string]any{"count": n, "optouts": list})
}

// deleteOptOut: DELETE /v1/{pn}/optouts/{wa_id}: the user opted back in
// through another channel. 404 when the user had not opted out.
func (s *Server) deleteOptOut(ctx *fasthttp.RequestCtx, b *tenant.Business, _ string) {
	user, err := tenant.NormalizePhone(param(ctx, "wa_id"))
	if err != nil {
		badRequest(ctx, CodeBadPhone, "wa_id: "+err.Error(), "")
		return
	}
	oo, ok := s.opts.Admitter.(OptOuts)
	if !ok {
		notFound(ctx)
		return
	}
	had, err := oo.OptIn(b.ID, user)
	switch {
	case err != nil:
		s.storageError(ctx, err)
	case !had:
		notFound(ctx)
	default:
		writeJSON(ctx, 200, map[string]bool{"success": true})
	}
}
