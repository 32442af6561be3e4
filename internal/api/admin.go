package api

import (
	"errors"
	"strings"

	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/tenant"
	"github.com/heraldhq/herald/internal/webhook"
)

func (s *Server) putWebhook(ctx *fasthttp.RequestCtx, b *tenant.Business, pn string) {
	var c webhook.Config
	if !s.readJSON(ctx, &c) {
		return
	}
	if err := s.opts.Webhooks.Set(pn, c); err != nil {
		if errors.Is(err, webhook.ErrInvalid) || errors.Is(err, webhook.ErrForbiddenAddress) || errors.Is(err, webhook.ErrVerification) {
			badRequest(ctx, CodeInvalidParam, strings.TrimPrefix(err.Error(), "webhook: "), "nothing was changed")
			return
		}
		s.storageError(ctx, err)
		return
	}
	writeJSON(ctx, 200, map[string]any{"success": true, "phone_number_id": pn, "url": c.URL, "verified": c.VerifyToken != ""})
}

// deleteWebhook removes a phone number's webhook; statuses waiting for it
// are dropped.
func (s *Server) deleteWebhook(ctx *fasthttp.RequestCtx, b *tenant.Business, pn string) {
	ok, err := s.opts.Webhooks.Delete(pn)
	if err != nil {
		s.storageError(ctx, err)
		return
	}
	if !ok {
		fail(ctx, 404, CodeInvalidParam, "OAuthException", "no webhook is set for this phone number", "")
		return
	}
	writeJSON(ctx, 200, map[string]any{"success": true, "phone_number_id": pn})
}

// getWebhook shows a phone number's webhook (never its secret), its backlog
// and its last failed delivery.
func (s *Server) getWebhook(ctx *fasthttp.RequestCtx, b *tenant.Business, pn string) {
	st, ok := s.opts.Webhooks.State(pn)
	if !ok {
		fail(ctx, 404, CodeInvalidParam, "OAuthException", "no webhook is set for this phone number", "")
		return
	}
	writeJSON(ctx, 200, st)
}

func (s *Server) getIntegrity(ctx *fasthttp.RequestCtx, b *tenant.Business, pn string) {
	if s.opts.Admitter != nil {
		writeJSON(ctx, 200, s.opts.Admitter.Integrity(b, pn, s.opts.Now()))
		return
	}
	writeJSON(ctx, 200, map[string]any{"tier": b.Tier, "quality": "high", "paused": b.Paused, "mps": b.MPS,
		"unique_recipients_24h": 0, "flags": []any{}})
}

type newBusiness struct {
	Name          string   `json:"name"`
	PhoneNumbers  []string `json:"phone_numbers"`
	Tier          string   `json:"tier"`
	MPS           int      `json:"mps"`
	IdentityCheck bool     `json:"identity_check"`
}

type patchBusiness struct {
	Tier   *string `json:"tier"`
	MPS    *int    `json:"mps"`
	Paused *bool   `json:"paused"`
	// MaxQueuedBytes: this business's share of the queue; 0 = the default.
	MaxQueuedBytes *int64 `json:"max_queued_bytes"`
	// StopKeywords: whole-message keywords that opt a user out ([]: the defaults).
	StopKeywords *[]string `json:"stop_keywords"`
}

func (s *Server) tenantError(ctx *fasthttp.RequestCtx, err error) {
	switch {
	case errors.Is(err, tenant.ErrNotFound):
		notFound(ctx)
	case errors.Is(err, tenant.ErrInvalid), errors.Is(err, tenant.ErrNumberInUse), errors.Is(err, tenant.ErrBadPhone):
		// What the client sent wrong, without the package's prefix.
		msg := strings.TrimPrefix(err.Error(), tenant.ErrInvalid.Error()+": ")
		badRequest(ctx, CodeInvalidParam, strings.TrimPrefix(msg, "tenant: "), "")
	default:
		s.storageError(ctx, err)
	}
}

// businessView is what the admin API shows of b: never its token hashes.
// max_queued_bytes is the share in force (the default when none was set),
// queued_bytes what its queued messages hold now.
func (s *Server) businessView(b *tenant.Business) map[string]any {
	pns := make([]map[string]string, 0, len(b.PhoneNumbers))
	for id, digits := range b.PhoneNumbers {
		pns = append(pns, map[string]string{"phone_number_id": id, "display_phone_number": digits})
	}
	tokens := make([]string, 0, len(b.Tokens))
	for id := range b.Tokens {
		tokens = append(tokens, id)
	}
	share := b.MaxQueuedBytes
	if share == 0 {
		share = max(s.opts.QueueShare, 0)
	}
	return map[string]any{"business_id": b.ID, "name": b.Name, "tier": b.Tier, "mps": b.MPS, "paused": b.Paused,
		"identity_check": b.IdentityCheck, "phone_numbers": pns, "token_ids": tokens,
		"max_queued_bytes": share, "max_queued_bytes_default": b.MaxQueuedBytes == 0, "queued_bytes": s.opts.Queue.OwnerBytes(b.ID),
		"stop_keywords": stopKeywords(b)}
}

// listBusinesses: GET /admin/v1/businesses → every business as the admin
// view shows it (token ids, never tokens).
func (s *Server) listBusinesses(ctx *fasthttp.RequestCtx) {
	list := []map[string]any{}
	for _, b := range s.opts.Tenants.List() {
		list = append(list, s.businessView(b))
	}
	writeJSON(ctx, 200, map[string]any{"businesses": list})
}

// showBusiness: GET /admin/v1/businesses/{id}.
func (s *Server) showBusiness(ctx *fasthttp.RequestCtx, id string) {
	b, err := s.opts.Tenants.Get(id)
	if err != nil {
		s.tenantError(ctx, err)
		return
	}
	writeJSON(ctx, 200, s.businessView(b))
}

// newToken: POST /admin/v1/businesses/{id}/tokens (the token is shown once).
func (s *Server) newToken(ctx *fasthttp.RequestCtx, id string) {
	tok, tokID, err := s.opts.Tenants.NewToken(id)
	if err != nil {
		s.tenantError(ctx, err)
		return
	}
	writeJSON(ctx, 200, map[string]string{"token": tok, "token_id": tokID})
}

// revokeToken: DELETE /admin/v1/businesses/{id}/tokens/{token_id}, at once.
func (s *Server) revokeToken(ctx *fasthttp.RequestCtx, id, tokenID string) {
	if err := s.opts.Tenants.RevokeToken(id, tokenID); err != nil {
		s.tenantError(ctx, err)
		return
	}
	writeJSON(ctx, 200, map[string]any{"revoked": tokenID, "at": heraldtype.FormatTime(s.opts.Now())})
}

// createBusiness: POST /admin/v1/businesses; the token is shown once.
func (s *Server) createBusiness(ctx *fasthttp.RequestCtx) {
	var req newBusiness
	if !s.readJSON(ctx, &req) {
		return
	}
	b, tt, err := s.opts.Tenants.NewBusiness(req.Name, req.PhoneNumbers, req.Tier, req.MPS, req.IdentityCheck)
	if err != nil {
		s.tenantError(ctx, err)
		return
	}
	tok, tokID := tenant.SplitToken(tt)
	var pns []string
	for _, raw := range req.PhoneNumbers {
		num, _ := tenant.NormalizePhone(raw)
		for id, n := range b.PhoneNumbers {
			if n == num {
				pns = append(pns, id)
			}
		}
	}
	if s.opts.KeysNeeded != nil {
		for _, digits := range b.PhoneNumbers {
			s.opts.KeysNeeded(digits) // users can write to it once its prekeys are on the platform
		}
	}
	writeJSON(ctx, 200, map[string]any{"business_id": b.ID, "token": tok, "token_id": tokID, "phone_number_ids": pns})
}

// patchBusiness: PATCH /admin/v1/businesses/{id} (tier, mps, paused, max_queued_bytes).
func (s *Server) patchBusiness(ctx *fasthttp.RequestCtx, id string) {
	var req patchBusiness
	if !s.readJSON(ctx, &req) {
		return
	}
	b, err := s.opts.Tenants.Update(id, tenant.Patch{Tier: req.Tier, MPS: req.MPS, Paused: req.Paused, MaxQueuedBytes: req.MaxQueuedBytes,
		StopKeywords: req.StopKeywords})
	if err != nil {
		s.tenantError(ctx, err)
		return
	}
	writeJSON(ctx, 200, s.businessView(b))
}

// addPhoneNumber: POST /admin/v1/businesses/{id}/phone_numbers.
func (s *Server) addPhoneNumber(ctx *fasthttp.RequestCtx, id string) {
	var req struct {
		PhoneNumber string `json:"phone_number"`
	}
	if !s.readJSON(ctx, &req) {
		return
	}
	pn, err := s.opts.Tenants.AddPhoneNumber(id, req.PhoneNumber)
	if err != nil {
		s.tenantError(ctx, err)
		return
	}
	if s.opts.KeysNeeded != nil {
		if digits, err := tenant.NormalizePhone(req.PhoneNumber); err == nil {
			s.opts.KeysNeeded(digits)
		}
	}
	writeJSON(ctx, 200, map[string]string{"phone_number_id": pn})
}
