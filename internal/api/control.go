package api

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/campaigns"
	"github.com/heraldhq/herald/internal/records"
	"github.com/heraldhq/herald/internal/tenant"
)

// ownCampaign reads campaign id for business b: 404 (answered) when there is
// none or it is another business's.
func (s *Server) ownCampaign(ctx *fasthttp.RequestCtx, b *tenant.Business, id string) (*records.Campaign, bool) {
	c, err := s.opts.Uploads.Campaign(id)
	if errors.Is(err, records.ErrNotFound) || (err == nil && c.BusinessID != b.ID) {
		notFound(ctx)
		return nil, false
	}
	if err != nil {
		s.storageError(ctx, err)
		return nil, false
	}
	return c, true
}

func (s *Server) getCampaign(ctx *fasthttp.RequestCtx, b *tenant.Business, id string) {
	c, ok := s.ownCampaign(ctx, b, id)
	if !ok {
		return
	}
	v, err := s.campaignView(c)
	if err != nil {
		s.storageError(ctx, err)
		return
	}
	writeJSON(ctx, 200, v)
}

// campaignState reads a campaign's state from its control state, its
// schedule and its counts: canceled and done are final.
func campaignState(c *records.Campaign, control string, queued int64, now time.Time) string {
	switch {
	case control == heraldtype.CampaignCanceled:
		return heraldtype.CampaignCanceled
	case c.UploadedMS > 0 && queued == 0:
		return heraldtype.CampaignDone
	case control == heraldtype.CampaignPaused:
		return heraldtype.CampaignPaused
	case c.SendAtMS > now.UnixMilli():
		return heraldtype.CampaignScheduled
	}
	return heraldtype.CampaignRunning
}

// campaignView is GET /v1/campaigns/{id}'s answer.
func (s *Server) campaignView(c *records.Campaign) (map[string]any, error) {
	cnt, err := s.counters(c.ID)
	if err != nil {
		return nil, err
	}
	queued := max(0, int64(c.Accepted)-cnt.Sent-cnt.Failed-cnt.Canceled)
	failures := map[string]int64{} // {} , not null
	for code, n := range cnt.Failures {
		if c, err := strconv.Atoi(code); err == nil {
			code = strconv.Itoa(heraldtype.StoredCode(c)) // counted by an older Herald
		}
		failures[code] += n
	}
	control := heraldtype.CampaignRunning
	if s.opts.Campaigns != nil {
		control = s.opts.Campaigns.State(c.ID)
	}
	canceled := cnt.Canceled
	if control == heraldtype.CampaignCanceled {
		// Nothing still queued will be sent (the engine's hand-off obeys the
		// cancel): it counts as canceled now, while each message's own status
		// turns canceled as the engine meets it (at once for messages due,
		// at their due time for scheduled ones).
		canceled += queued
		queued = 0
	}
	now := s.opts.Now()
	out := map[string]any{
		"campaign_id": c.ID, "name": c.Name, "phone_number_id": c.PhoneNumberID,
		"state":    campaignState(c, control, queued, now),
		"accepted": c.Accepted, "rejected": c.Rejected,
		// counts: where each accepted message is now (they add up to accepted).
		"counts": map[string]int64{
			heraldtype.StatusQueued: queued, heraldtype.StatusSent: cnt.Sent - cnt.Delivered,
			heraldtype.StatusDelivered: cnt.Delivered - cnt.Read, heraldtype.StatusRead: cnt.Read,
			heraldtype.StatusFailed: cnt.Failed, heraldtype.StatusCanceled: canceled,
		},
		// totals: how many ever reached each status (they only grow).
		"totals": map[string]int64{
			heraldtype.StatusSent: cnt.Sent, heraldtype.StatusDelivered: cnt.Delivered, heraldtype.StatusRead: cnt.Read,
			heraldtype.StatusFailed: cnt.Failed, heraldtype.StatusCanceled: canceled,
		},
		"failures":   failures,
		"created_at": heraldtype.FormatTime(time.UnixMilli(c.CreatedMS)),
	}
	if c.SendAtMS > 0 {
		out["send_at"] = heraldtype.FormatTime(time.UnixMilli(c.SendAtMS))
	}
	if c.QuietStart != "" {
		out["quiet_hours"] = map[string]string{"start": c.QuietStart, "end": c.QuietEnd}
	}
	if c.TTLSeconds > 0 {
		out["ttl_seconds"] = c.TTLSeconds
	}
	if c.ExpiresMS > 0 {
		out["expires_at"] = heraldtype.FormatTime(time.UnixMilli(c.ExpiresMS))
	}
	started := cnt.FirstSent
	if cnt.FirstSent > 0 {
		if span := cnt.LastDone - cnt.FirstSent; span > 0 {
			out["rate_per_second"] = float64(cnt.Sent+cnt.Failed) / (float64(span) / 1000)
		}
	}
	if queued == 0 && c.UploadedMS > 0 {
		done := cnt.LastDone
		if done == 0 {
			done = c.UploadedMS
		}
		if started == 0 || started > done {
			started = min(done, max(started, c.CreatedMS)) // nothing was sent (all failed, or none): it started when the last ended, at the latest
		}
		out["finished_at"] = heraldtype.FormatTime(time.UnixMilli(done))
	}
	if started > 0 {
		out["started_at"] = heraldtype.FormatTime(time.UnixMilli(started))
	}
	return out, nil
}

// campaignControl is POST /v1/campaigns/{id}/pause, /resume and /cancel:
// to is the state asked for. The answer is the campaign's view after the
// change; pause, resume or cancel of a canceled or done campaign is 409.
// After a pause's or cancel's answer nothing more of the campaign is handed
// to the platform (campaigns.Control.Set waits for hand-offs in progress).
func (s *Server) campaignControl(to string) func(*fasthttp.RequestCtx, *tenant.Business, string) {
	verb := map[string]string{heraldtype.CampaignPaused: "pause", heraldtype.CampaignRunning: "resume", heraldtype.CampaignCanceled: "cancel"}[to]
	done := map[string]string{heraldtype.CampaignPaused: "paused", heraldtype.CampaignRunning: "resumed", heraldtype.CampaignCanceled: "canceled"}[to]
	return func(ctx *fasthttp.RequestCtx, b *tenant.Business, id string) {
		if len(ctx.PostBody()) > 0 && string(ctx.PostBody()) != "{}" {
			badRequest(ctx, CodeInvalidParam, verb+" takes no body", "")
			return
		}
		c, ok := s.ownCampaign(ctx, b, id)
		if !ok {
			return
		}
		if s.opts.Campaigns == nil {
			fail(ctx, 503, CodeInternal, "internal", "campaign control is not available on this server", "")
			return
		}
		v, err := s.campaignView(c)
		if err != nil {
			s.storageError(ctx, err)
			return
		}
		if st := v["state"].(string); st == heraldtype.CampaignCanceled || st == heraldtype.CampaignDone {
			fail(ctx, 409, CodeConflict, "OAuthException", fmt.Sprintf("campaign %s is %s: it can no longer be %s", id, st, done),
				"pause, resume and cancel apply to scheduled, running and paused campaigns")
			return
		}
		now := s.opts.Now()
		expires := time.UnixMilli(c.ExpiresMS)
		if c.ExpiresMS == 0 {
			expires = now.Add(heraldtype.MaxTTL)
		}
		err = s.opts.Campaigns.Set(id, to, now, expires)
		if errors.Is(err, campaigns.ErrState) { // canceled meanwhile
			fail(ctx, 409, CodeConflict, "OAuthException", fmt.Sprintf("campaign %s is canceled: it can no longer be %s", id, done), "")
			return
		}
		if err != nil {
			s.storageError(ctx, err)
			return
		}
		if s.opts.ClusterCampaigns != nil {
			if err := s.opts.ClusterCampaigns.Control(id, to, now, expires); err != nil {
				s.storageError(ctx, err)
				return
			}
		}
		switch {
		case to == heraldtype.CampaignCanceled && s.opts.CancelParked != nil:
			// Parked messages end canceled straight from the park range,
			// in the background (the view counts them canceled already).
			s.opts.CancelParked(id)
		case to != heraldtype.CampaignPaused:
			// Parked messages go back into the queue: to be sent (resume) or
			// canceled by the engine as it meets them. A failure here is
			// retried at the next start; the state change stands.
			if _, err := s.opts.Queue.Unpark(ctx, id); err != nil {
				s.log(ctx).Error("api: could not unpark a campaign's messages; the next start does", "campaign", id, "err", err)
			}
		}
		s.log(ctx).Info("api: campaign "+done, "campaign", id) // routine: a business's decision
		if v, err = s.campaignView(c); err != nil {
			s.storageError(ctx, err)
			return
		}
		writeJSON(ctx, 200, v)
	}
}

// listCampaigns is GET /v1/{phone_number_id}/campaigns: the phone number's
// campaigns, newest first, in pages (?limit=1..100, default 25; ?after= the
// cursor of the previous page), in the Graph API's shape: data, and
// paging.cursors.after with paging.next while more may follow.
func (s *Server) listCampaigns(ctx *fasthttp.RequestCtx, b *tenant.Business, pn string) {
	limit := 25
	if v := ctx.QueryArgs().Peek("limit"); v != nil {
		n, err := strconv.Atoi(string(v))
		if err != nil || n < 1 || n > 100 {
			badRequest(ctx, CodeBadParam, fmt.Sprintf("limit must be a whole number from 1 to 100, got %q", truncate(string(v), 32)), "")
			return
		}
		limit = n
	}
	after := string(ctx.QueryArgs().Peek("after"))
	cs, next, err := s.opts.Uploads.ListCampaigns(pn, after, limit)
	if errors.Is(err, records.ErrNotFound) {
		badRequest(ctx, CodeBadParam, fmt.Sprintf("after %q is not a cursor of this phone number's campaigns", truncate(after, 64)), "")
		return
	}
	if err != nil {
		s.storageError(ctx, err)
		return
	}
	data := make([]map[string]any, 0, len(cs))
	for _, c := range cs {
		if c.BusinessID != b.ID {
			continue // a phone number moved between businesses: never another's campaigns
		}
		v, err := s.campaignView(c)
		if err != nil {
			s.storageError(ctx, err)
			return
		}
		data = append(data, v)
	}
	paging := map[string]any{}
	if next != "" {
		paging["cursors"] = map[string]string{"after": next}
		paging["next"] = fmt.Sprintf("/v1/%s/campaigns?limit=%d&after=%s", url.PathEscape(pn), limit, url.QueryEscape(next))
	}
	writeJSON(ctx, 200, map[string]any{"data": data, "paging": paging})
}
