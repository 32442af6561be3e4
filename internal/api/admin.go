package api

import (
	"errors"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/internal/tenant"
	"github.com/heraldhq/herald/internal/webhook"
)

func (s *Server) putWebhook(ctx *fasthttp.RequestCtx, b *tenant.Business, pn string) {
	var c webhook.Config
	if !s.readJSON(ctx, &c) {
		return
	}
	if err := s.opts.Webhooks.Set(pn, c); err != nil {
		if errors.Is(err, webhook.ErrInvalid) || errors.Is(err, webhook.ErrForbiddenAddress) {
			badRequest(ctx, CodeInvalidParam, err.Error(), "")
			return
		}
		s.storageError(ctx, err)
		return
	}
	writeJSON(ctx, 200, map[string]any{"success": true, "phone_number_id": pn, "url": c.URL})
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
	for id := range b.PhoneNumbers {
		pns = append(pns, map[string]string{"phone_number_id": id})
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
		"max_queued_bytes": share, "max_queued_bytes_default": b.MaxQueuedBytes == 0, "queued_bytes": s.opts.Queue.OwnerBytes(b.ID)}
}

// admin serves /admin/v1/... (parts after "admin/v1").
func (s *Server) admin(ctx *fasthttp.RequestCtx, method string, parts []string) {
	if !s.checkAdmin(ctx) {
		return
	}
	if len(parts) < 1 || parts[0] != "businesses" {
		notFound(ctx)
		return
	}
	switch {
	case len(parts) == 1 && method == "POST":
		s.createBusiness(ctx)
	case len(parts) == 2 && method == "GET":
		b, err := s.opts.Tenants.Get(parts[1])
		if err != nil {
			s.tenantError(ctx, err)
			return
		}
		writeJSON(ctx, 200, s.businessView(b))
	case len(parts) == 2 && method == "PATCH":
		s.patchBusiness(ctx, parts[1])
	case len(parts) == 3 && parts[2] == "tokens" && method == "POST":
		tok, id, err := s.opts.Tenants.NewToken(parts[1])
		if err != nil {
			s.tenantError(ctx, err)
			return
		}
		writeJSON(ctx, 200, map[string]string{"token": tok, "token_id": id})
	case len(parts) == 4 && parts[2] == "tokens" && method == "DELETE":
		if err := s.opts.Tenants.RevokeToken(parts[1], parts[3]); err != nil {
			s.tenantError(ctx, err)
			return
		}
		writeJSON(ctx, 200, map[string]any{"revoked": parts[3], "at": s.opts.Now().UTC().Format(time.RFC3339)})
	case len(parts) == 3 && parts[2] == "phone_numbers" && method == "POST":
		s.addPhoneNumber(ctx, parts[1])
	default:
		notFound(ctx)
	}
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
	writeJSON(ctx, 200, map[string]any{"business_id": b.ID, "token": tok, "token_id": tokID, "phone_number_ids": pns})
}

// patchBusiness: PATCH /admin/v1/businesses/{id} (tier, mps, paused, max_queued_bytes).
func (s *Server) patchBusiness(ctx *fasthttp.RequestCtx, id string) {
	var req patchBusiness
	if !s.readJSON(ctx, &req) {
		return
	}
	b, err := s.opts.Tenants.Update(id, tenant.Patch{Tier: req.Tier, MPS: req.MPS, Paused: req.Paused, MaxQueuedBytes: req.MaxQueuedBytes})
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
	writeJSON(ctx, 200, map[string]string{"phone_number_id": pn})
}
