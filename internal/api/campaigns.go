package api

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/records"
	"github.com/heraldhq/herald/internal/schedule"
	"github.com/heraldhq/herald/internal/tenant"
	"github.com/heraldhq/herald/queue"
)

type template struct {
	Body string `json:"body"`
}

type campaignHeader struct {
	Name       string          `json:"name"`
	Template   *template       `json:"template"`
	TTLSeconds *int64          `json:"ttl_seconds"`
	SendAt     *string         `json:"send_at"`
	QuietHours *quietHoursJSON `json:"quiet_hours"`
}

type quietHoursJSON struct {
	Start string `json:"start"`
	End   string `json:"end"`
}

// plan is when a campaign's messages may go: not before sendAt (zero: at
// once), never inside quiet hours; each expires at expires.
type plan struct {
	sendAt  time.Time
	quiet   heraldtype.QuietHours
	ttl     time.Duration
	expires time.Time
}

// maxSchedule is how far ahead send_at may be; send_at may also lie up to
// scheduleSlack in the past (clocks differ), meaning at once.
const (
	maxSchedule   = 30 * 24 * time.Hour
	scheduleSlack = time.Minute
)

type recipient struct {
	To   string            `json:"to"`
	Vars map[string]string `json:"vars"`
}

type campaignJSON struct {
	campaignHeader
	Recipients []json.RawMessage `json:"recipients"`
}

// Rejection is one rejected line of a bulk upload.
type Rejection struct {
	Line    int    `json:"line"`
	To      string `json:"to"`
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// CampaignResult is the answer to a campaign upload.
type CampaignResult struct {
	CampaignID        string      `json:"campaign_id"`
	Accepted          int         `json:"accepted"`
	Rejected          []Rejection `json:"rejected"`
	RejectedCount     int         `json:"rejected_count"`
	RejectedTruncated bool        `json:"rejected_truncated,omitempty"`
}

// Bounds of a recipient's template variables (what a template expands to is
// bounded by the body limit: expansion stops as soon as it passes it).
const (
	maxVars        = 100
	maxVarName     = 64
	maxVarChars    = 4096
	maxBodyChars   = 4096
	maxBodyUTF8Len = 4 * maxBodyChars // a body of 4096 characters is at most this many bytes
)

// checkVars refuses more or larger variables than a message could use.
func checkVars(vars map[string]string) *reqError {
	if len(vars) > maxVars {
		return rerr(CodeInvalidParam, "vars has %d entries; at most %d are allowed", len(vars), maxVars)
	}
	for k, v := range vars {
		if len(k) > maxVarName {
			return rerr(CodeInvalidParam, "a variable name is %d bytes; at most %d are allowed", len(k), maxVarName)
		}
		if n := utf8.RuneCountInString(v); n > maxVarChars {
			return rerr(CodeBadBody, "variable %q is %d characters; at most %d are allowed", k, n, maxVarChars)
		}
	}
	return nil
}

// fillTemplate substitutes {{var}} placeholders in one pass: values are
// inserted literally, so a value containing "{{x}}" is never expanded. It
// stops as soon as the text passes the body limit (a template of 800
// placeholders and a 4 MiB value used to expand to gigabytes).
func fillTemplate(tpl string, vars map[string]string) (string, *reqError) {
	if !strings.Contains(tpl, "{{") {
		return tpl, nil
	}
	var sb strings.Builder
	tooLong := func() *reqError {
		return rerr(CodeBadBody, "the template expands to more than %d characters for this recipient", maxBodyChars)
	}
	for {
		i := strings.Index(tpl, "{{")
		if i < 0 {
			sb.WriteString(tpl)
			break
		}
		j := strings.Index(tpl[i:], "}}")
		if j < 0 {
			sb.WriteString(tpl)
			break
		}
		name := strings.TrimSpace(tpl[i+2 : i+j])
		v, ok := vars[name]
		if !ok {
			return "", rerr(CodeMissingVar, "template variable %q has no value for this recipient", name)
		}
		sb.WriteString(tpl[:i])
		if sb.Len()+len(v) > maxBodyUTF8Len {
			return "", tooLong()
		}
		sb.WriteString(v)
		tpl = tpl[i+j+2:]
	}
	if sb.Len() > maxBodyUTF8Len {
		return "", tooLong()
	}
	return sb.String(), nil
}

func validateHeader(h *campaignHeader, now time.Time) (plan, *reqError) {
	var p plan
	if h.Template == nil || h.Template.Body == "" {
		return p, rerr(CodeInvalidParam, "template.body is required")
	}
	if utf8.RuneCountInString(h.Template.Body) > 4096 || !utf8.ValidString(h.Template.Body) {
		return p, rerr(CodeBadBody, "template.body must be valid UTF-8 of at most 4096 characters")
	}
	if len(h.Name) > 200 {
		return p, rerr(CodeInvalidParam, "name must be at most 200 characters")
	}
	ttl, e := validTTL(h.TTLSeconds)
	if e != nil {
		return p, e
	}
	p.ttl = ttl
	base := now
	if h.SendAt != nil {
		t, err := time.Parse(time.RFC3339Nano, *h.SendAt)
		switch {
		case err != nil:
			return p, rerr(CodeBadParam, "send_at %q is not an RFC 3339 time (e.g. \"2026-12-24T09:00:00+01:00\")", truncate(*h.SendAt, 64))
		case t.Before(now.Add(-scheduleSlack)):
			return p, rerr(CodeBadParam, "send_at %s is in the past (now is %s); leave it out to send at once", heraldtype.FormatTime(t), heraldtype.FormatTime(now))
		case t.After(now.Add(maxSchedule)):
			return p, rerr(CodeBadParam, "send_at %s is more than 30 days ahead (at most %s)", heraldtype.FormatTime(t), heraldtype.FormatTime(now.Add(maxSchedule)))
		case t.After(now):
			p.sendAt, base = t, t
		}
	}
	if q := h.QuietHours; q != nil {
		var err error
		if p.quiet, err = schedule.Quiet(q.Start, q.End); err != nil {
			return p, rerr(CodeBadParam, "%v", err)
		}
	}
	// The TTL counts from send_at, and nothing lives past 30 days from its
	// acceptance (invariant 5): the later of the two is cut.
	p.expires = base.Add(ttl)
	if limit := now.Add(heraldtype.MaxTTL); p.expires.After(limit) {
		p.expires = limit
	}
	return p, nil
}

// truncate cuts s to at most n bytes (for echoing input in errors).
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// admitter streams recipients into the queue in batches (group commit).
type admitter struct {
	s    *Server
	ctx  context.Context
	b    *tenant.Business
	pn   string
	cid  string
	tpl  string
	ttl  time.Duration
	plan plan
	res  *CampaignResult
	camp *records.Campaign // saved once the header is valid (listed, and can be canceled during the upload)
	// dry: a dry run (?dry_run=true): the same checks through preview,
	// nothing written.
	dry     bool
	preview Preview
	lines   []int
	tos     []string
	inputs  []string
	bodies  []string

	// Idempotent uploads: every enqueue batch also records how far the upload
	// got (same Pebble batch), so a retry after a crash or a broken connection
	// resumes after the last durable line instead of enqueueing it twice.
	prog   *uploadProgress   // nil: no Idempotency-Key
	idem   string            // the Idempotency-Key
	line   int               // the last line read (every line up to it is admitted, rejected or pending)
	skipTo int               // lines up to this one were admitted by an earlier attempt
	seed   heraldtype.IDSeed // with prog: the message ids' seed
	// intended: the cluster holds this upload's progress with its seed
	// (stored before the first batch is published).
	intended bool

	statuses *records.QueuedRecords // the "queued" status record of each message
	token    string                 // the upload's token, checked again at each batch

	inflight      chan error // the enqueue batch being committed, if any
	inflightN     int        // its messages
	inflightBytes int64      // their estimated stored bytes (not yet in the queue's count)
	failed        error      // a batch failed: nothing after it may commit
}

// uploadProgress is the sealed record of an idempotent upload in progress
// (t P <business> 0 <key>).
type uploadProgress struct {
	CampaignID string         `json:"campaign_id"`
	CreatedMS  int64          `json:"created_ms"`
	Header     string         `json:"header"` // hex SHA-256 of the campaign header
	Lines      int            `json:"lines"`  // every line up to this one is admitted or rejected
	Result     CampaignResult `json:"result"` // the answer so far
	// IDSeed (hex) makes the upload's message ids (heraldtype.IDFor): a
	// line published again by a retry keeps its id.
	IDSeed string `json:"id_seed,omitempty"`
}

// holdIdem marks an Idempotency-Key as in use by this request; a second
// request with it meanwhile is answered 409 (ok false). release frees it.
func (s *Server) holdIdem(ctx *fasthttp.RequestCtx, k, busy string) (release func(), ok bool) {
	s.idemMu.Lock()
	if s.idemActive[k] {
		s.idemMu.Unlock()
		fail(ctx, 409, CodeConflict, "OAuthException", busy, "")
		return nil, false
	}
	s.idemActive[k] = true
	s.idemMu.Unlock()
	local := func() { s.idemMu.Lock(); delete(s.idemActive, k); s.idemMu.Unlock() }
	if s.opts.SharedHold == nil {
		return local, true
	}
	// In a cluster, the retry may reach another node while this one still
	// works: the hold is the cluster's.
	shared, held, err := s.opts.SharedHold(k)
	if err != nil {
		local()
		s.storageError(ctx, err)
		return nil, false
	}
	if !held {
		local()
		fail(ctx, 409, CodeConflict, "OAuthException", busy+" (on another node)", "")
		return nil, false
	}
	return func() { shared(); local() }, true
}

// resuming reports whether line was handled by an earlier attempt of this
// idempotent upload.
func (a *admitter) resuming(line int) bool { return line <= a.skipTo }

const admitBatch = 2048

func (a *admitter) reject(line int, to string, e *reqError) {
	a.res.RejectedCount++
	if len(a.res.Rejected) < a.s.opts.MaxRejectedReported {
		if len(to) > 64 {
			to = to[:64]
		}
		a.res.Rejected = append(a.res.Rejected, Rejection{Line: line, To: to, Code: e.code, Message: e.msg})
	} else {
		a.res.RejectedTruncated = true
	}
	a.s.opts.Metrics.Rejected.WithLabelValues(fmt.Sprint(e.code)).Inc()
}

// add validates one recipient line; the batch is flushed when full.
func (a *admitter) add(line int, raw []byte) error {
	var r recipient
	if e := decodeStrict(raw, &r); e != nil {
		a.reject(line, "", e)
		return nil
	}
	to, err := tenant.NormalizePhone(r.To)
	if err != nil {
		a.reject(line, r.To, rerr(CodeBadPhone, "%v", err))
		return nil
	}
	if e := checkVars(r.Vars); e != nil {
		a.reject(line, r.To, e)
		return nil
	}
	body, e := fillTemplate(a.tpl, r.Vars)
	if e != nil {
		a.reject(line, r.To, e)
		return nil
	}
	if e := validBody(body); e != nil {
		a.reject(line, r.To, e)
		return nil
	}
	a.lines = append(a.lines, line)
	a.tos = append(a.tos, to)
	a.inputs = append(a.inputs, r.To)
	a.bodies = append(a.bodies, body)
	if len(a.tos) >= admitBatch {
		return a.flush()
	}
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// errCanceledUpload: the campaign was canceled while it was being uploaded.
var errCanceledUpload = errors.New("api: the campaign was canceled during its upload")

// flushDry judges a batch as flush would, through the preview, and counts
// it: nothing is written.
func (a *admitter) flushDry() error {
	if a.token != "" {
		b, err := a.s.opts.Tenants.Authenticate(a.token)
		if err != nil {
			return errRevoked
		}
		a.b = b
	}
	codes := make([]int, len(a.tos))
	reason := ""
	if a.preview != nil {
		var err error
		if codes, reason, err = a.preview.Admit(a.b, a.pn, a.tos, a.s.opts.Now()); err != nil {
			return err
		}
	}
	for i := range a.tos {
		if codes[i] != 0 {
			a.reject(a.lines[i], a.inputs[i], rerr(codes[i], "%s", admissionText(codes[i], reason)))
			continue
		}
		a.res.Accepted++
	}
	a.lines, a.tos, a.inputs, a.bodies = a.lines[:0], a.tos[:0], a.inputs[:0], a.bodies[:0]
	return nil
}

// begin is called once the campaign header is valid: a real upload saves
// its campaign record now (listed, and open to pause and cancel while the
// upload runs); the final counts are saved at its end.
func (a *admitter) begin() error {
	if a.dry || a.camp == nil {
		return nil
	}
	c := a.camp
	c.SendAtMS = 0
	if !a.plan.sendAt.IsZero() {
		c.SendAtMS = a.plan.sendAt.UnixMilli()
	}
	if a.plan.quiet.Set {
		c.QuietStart, c.QuietEnd = schedule.FormatClock(a.plan.quiet.Start), schedule.FormatClock(a.plan.quiet.End)
	}
	c.TTLSeconds = int64(a.plan.ttl / time.Second)
	c.ExpiresMS = a.plan.expires.UnixMilli()
	if a.skipTo > 0 {
		return nil // a resumed upload: saved by its first attempt
	}
	return a.s.opts.Uploads.SaveCampaign(c)
}

func (a *admitter) flush() error {
	if len(a.tos) == 0 {
		return nil
	}
	if a.failed != nil {
		return a.failed
	}
	if a.dry {
		return a.flushDry()
	}
	if a.s.opts.Campaigns != nil && a.s.opts.Campaigns.State(a.cid) == heraldtype.CampaignCanceled {
		return errCanceledUpload
	}
	if err := a.s.spaceOK(); err != nil {
		return err
	}
	// The token and the business as they are now, not as they were when the
	// upload began: a token revoked mid-upload stops it, a business paused
	// mid-upload gets its later batches refused.
	if a.token != "" {
		b, err := a.s.opts.Tenants.Authenticate(a.token)
		if err != nil {
			return errRevoked
		}
		a.b = b
	}
	est := a.inflightBytes
	for i := range a.tos {
		est += int64(len(a.tos[i])+len(a.bodies[i])) + recordEstimate
	}
	if err := a.s.shareOK(a.b, est); err != nil {
		return err
	}
	now := a.s.opts.Now()
	codes := make([]int, len(a.tos))
	reason := ""
	if a.s.opts.Admitter != nil {
		var err error
		if codes, reason, err = a.s.opts.Admitter.Admit(a.b, a.pn, a.tos, now); err != nil {
			return err
		}
	}
	batch := a.s.opts.DB.NewBatch()
	msgs := make([]queue.Message, 0, len(a.tos))
	buf := make([]byte, 0, 256)
	from := a.b.PhoneNumbers[a.pn]
	for i, to := range a.tos {
		if codes[i] != 0 {
			a.reject(a.lines[i], a.inputs[i], rerr(codes[i], "%s", admissionText(codes[i], reason)))
			continue
		}
		var id string
		if a.prog != nil {
			id = heraldtype.IDFor(a.prog.CreatedMS, a.seed, uint64(a.lines[i]))
		} else {
			id = a.s.nextID(a.pn, now)
		}
		p := heraldtype.Payload{BusinessID: a.b.ID, PhoneNumberID: a.pn, From: from, To: to, CampaignID: a.cid, Body: a.bodies[i], TS: now.Unix(), Quiet: a.plan.quiet}
		buf = p.Encode(buf[:0])
		due := a.plan.sendAt
		if a.plan.quiet.Set { // the first moment outside the recipient's quiet hours
			due = schedule.NextFor(a.plan.quiet, to, maxTime(now, due))
		}
		msgs = append(msgs, queue.Message{ID: id, Recipient: heraldtype.QueueRecipient(a.b.ID, to), Payload: append([]byte(nil), buf...),
			Due: due, ExpiresAt: a.plan.expires, Owner: a.b.ID})
		if a.statuses == nil {
			a.statuses = records.NewQueuedRecords(a.b.ID, a.pn, a.cid)
		}
		a.statuses.Put(batch, id, now, a.plan.expires)
	}
	a.lines, a.tos, a.inputs, a.bodies = a.lines[:0], a.tos[:0], a.inputs[:0], a.bodies[:0]
	if len(msgs) == 0 {
		batch.Close()
		return nil
	}
	if a.prog != nil {
		forgetAt := records.IdemExpiry(time.UnixMilli(a.prog.CreatedMS), a.ttl)
		if !a.intended {
			// The progress as it stands before this batch, with the seed:
			// a node killed after JetStream stored the batch but before its
			// progress reached the cluster leaves the retry these ids.
			iv, _ := json.Marshal(a.prog)
			if err := a.s.opts.Uploads.Intend("p", a.b.ID, a.idem, iv, forgetAt); err != nil {
				batch.Close()
				return err
			}
			a.intended = true
		}
		a.prog.Lines = a.line
		a.prog.Result = *a.res
		a.prog.Result.Accepted += a.inflightN + len(msgs)
		v, _ := json.Marshal(a.prog)
		// The progress lists rejected numbers: gone with the answer's TTL.
		a.s.opts.Uploads.PutProgress(batch, a.b.ID, a.idem, v, forgetAt)
	}
	// Batches commit in order, one at a time, each overlapping the parsing of
	// the next (sealing and the group-committed fsync run on the other core).
	if err := a.finish(); err != nil {
		batch.Close()
		return err
	}
	done := make(chan error, 1)
	go func() { done <- a.s.enqueue(a.ctx, msgs, batch) }()
	a.inflight, a.inflightN, a.inflightBytes = done, len(msgs), est-a.inflightBytes
	return nil
}

// finish waits for the batch in flight and counts it; after a failed batch
// every later flush fails the same way (nothing after it is enqueued).
func (a *admitter) finish() error {
	if a.failed != nil {
		return a.failed
	}
	if a.inflight == nil {
		return nil
	}
	err := <-a.inflight
	n := a.inflightN
	a.inflight, a.inflightN, a.inflightBytes = nil, 0, 0
	if err != nil {
		a.failed = err
		return err
	}
	a.res.Accepted += n
	a.s.opts.Metrics.Accepted.Add(float64(n))
	return nil
}

func newCampaignID() string {
	b := make([]byte, 10)
	rand.Read(b)
	return "cmp_" + hex.EncodeToString(b)
}

// DryRunResult is the answer to a dry run: the upload's answer, without a
// campaign, and what it would leave of the phone number's integrity.
type DryRunResult struct {
	CampaignResult
	DryRun    bool         `json:"dry_run"`
	Integrity DryIntegrity `json:"integrity"`
}

// DryIntegrity: the flags the phone number has and the upload would raise,
// and the new unique recipients the tier would still allow after it (-1:
// the unlimited tier).
type DryIntegrity struct {
	Flags         any   `json:"flags"`
	TierRemaining int64 `json:"tier_remaining"`
}

func (s *Server) postCampaign(ctx *fasthttp.RequestCtx, b *tenant.Business, pn string) {
	dry := false
	if v := ctx.QueryArgs().Peek("dry_run"); v != nil {
		switch string(v) {
		case "true", "1":
			dry = true
		case "false", "0":
		default:
			badRequest(ctx, CodeInvalidParam, fmt.Sprintf("dry_run must be true or false, got %q", truncate(string(v), 32)), "")
			return
		}
	}
	if b.Paused {
		fail(ctx, 403, CodeRestricted, "OAuthException", "business is paused", "")
		return
	}
	if !dry {
		if err := s.spaceOK(); err != nil {
			s.storageError(ctx, err)
			return
		}
	}
	idem := string(ctx.Request.Header.Peek("Idempotency-Key"))
	if len(idem) > 200 {
		badRequest(ctx, CodeInvalidParam, "Idempotency-Key must be at most 200 characters", "")
		return
	}
	if dry {
		s.dryRun(ctx, b, pn)
		return
	}
	if idem != "" {
		prev, ok, err := s.opts.Uploads.Answer(b.ID, idem)
		if err != nil {
			s.storageError(ctx, err)
			return
		}
		if ok {
			ctx.Response.Header.Set("Idempotent-Replayed", "true")
			ctx.SetStatusCode(200)
			ctx.SetContentType("application/json")
			ctx.SetBody(prev)
			return
		}
		release, ok := s.holdIdem(ctx, b.ID+"\x00"+idem, "an upload with this Idempotency-Key is in progress")
		if !ok {
			return
		}
		defer release()
	}
	ct := string(ctx.Request.Header.ContentType())
	ndjson := strings.HasPrefix(ct, "application/x-ndjson")
	now := s.opts.Now()
	res := &CampaignResult{CampaignID: newCampaignID(), Rejected: []Rejection{}}
	a := &admitter{s: s, ctx: context.Background(), b: b, pn: pn, cid: res.CampaignID, res: res, token: bearer(ctx)}
	camp := records.Campaign{ID: res.CampaignID, BusinessID: b.ID, PhoneNumberID: pn, CreatedMS: now.UnixMilli()}
	a.camp = &camp
	if idem != "" {
		a.idem = idem
		a.prog = &uploadProgress{CampaignID: res.CampaignID, CreatedMS: camp.CreatedMS}
		prev, err := s.loadProgress(b.ID, idem)
		if err != nil {
			s.storageError(ctx, err)
			return
		}
		if prev != nil {
			// An earlier attempt broke off: continue it.
			a.prog, a.skipTo = prev, prev.Lines
			*res = prev.Result
			if res.Rejected == nil {
				res.Rejected = []Rejection{}
			}
			a.cid, camp.ID, camp.CreatedMS = prev.CampaignID, prev.CampaignID, prev.CreatedMS
			ctx.Response.Header.Set("Idempotent-Resumed-After-Line", strconv.Itoa(prev.Lines))
		}
		if sd, err := hex.DecodeString(a.prog.IDSeed); err == nil && len(sd) == len(a.seed) {
			a.seed, a.intended = heraldtype.IDSeed(sd), true // stored with it before its first batch
		} else { // a new upload (or one that broke off before seeds)
			a.seed = heraldtype.NewIDSeed()
			a.prog.IDSeed = hex.EncodeToString(a.seed[:])
		}
	}
	var err error
	var e *reqError
	if ndjson {
		e, err = s.streamNDJSON(ctx, a, &camp)
	} else {
		e, err = s.campaignJSON(ctx, a, &camp)
	}
	if err == nil && e == nil {
		err = a.flush()
	}
	if ferr := a.finish(); ferr != nil && !errors.Is(err, ferr) {
		err = ferr // a storage failure outranks a broken upload
	}
	if errors.Is(err, errResponded) {
		return
	}
	if e != nil {
		badRequest(ctx, e.code, e.msg, "nothing was accepted")
		return
	}
	camp.Accepted, camp.Rejected, camp.UploadedMS = res.Accepted, res.RejectedCount, s.opts.Now().UnixMilli()
	camp.ExpiresMS = a.plan.expires.UnixMilli()
	if res.Accepted > 0 || err == nil {
		if werr := s.opts.Uploads.SaveCampaign(&camp); werr != nil && err == nil {
			err = werr
		}
	}
	if errors.Is(err, errUploadRead) {
		s.uploadError(ctx, err, res)
		return
	}
	if errors.Is(err, errCanceledUpload) {
		ctx.SetConnectionClose()
		fail(ctx, 409, CodeConflict, "OAuthException", "the campaign was canceled during its upload; nothing after that was accepted",
			fmt.Sprintf("campaign %s: the first %d recipients were accepted before the cancel and end canceled", res.CampaignID, res.Accepted))
		return
	}
	if errors.Is(err, errRevoked) {
		ctx.SetConnectionClose()
		fail(ctx, 401, CodeAuth, "OAuthException", "the token was revoked during the upload; nothing after that was accepted", partialDetails(res))
		return
	}
	if err != nil {
		if res.Accepted > 0 {
			// Part of the upload is durably queued: say exactly how much.
			s.storageErrorPartial(ctx, err, res)
			return
		}
		s.storageError(ctx, err)
		return
	}
	body, _ := json.Marshal(res)
	if idem != "" {
		if err := s.opts.Uploads.RememberAnswer(b.ID, idem, body, records.IdemExpiry(time.UnixMilli(camp.CreatedMS), a.ttl)); err != nil {
			s.log(ctx).Warn("api: could not remember an idempotent answer; a retry will resume instead", "err", err)
		}
	}
	ctx.SetStatusCode(200)
	ctx.SetContentType("application/json")
	ctx.SetBody(body)
}

// dryRun reads an upload as postCampaign does and answers what it would
// have: every line judged (validation, opt-outs, tier, integrity) through
// the Admitter's preview, nothing written — no message, no campaign, no tier
// use, no quality signal, no Idempotency-Key record. NDJSON streams in
// bounded memory as in a real upload.
func (s *Server) dryRun(ctx *fasthttp.RequestCtx, b *tenant.Business, pn string) {
	res := &CampaignResult{Rejected: []Rejection{}}
	a := &admitter{s: s, ctx: context.Background(), b: b, pn: pn, res: res, token: bearer(ctx), dry: true}
	if s.opts.Preview != nil {
		var err error
		if a.preview, err = s.opts.Preview(b, pn, s.opts.Now()); err != nil {
			s.storageError(ctx, err)
			return
		}
	}
	var camp records.Campaign
	var err error
	var e *reqError
	if strings.HasPrefix(string(ctx.Request.Header.ContentType()), "application/x-ndjson") {
		e, err = s.streamNDJSON(ctx, a, &camp)
	} else {
		e, err = s.campaignJSON(ctx, a, &camp)
	}
	if err == nil && e == nil {
		err = a.flush()
	}
	switch {
	case errors.Is(err, errResponded):
		return
	case e != nil:
		badRequest(ctx, e.code, e.msg, "a dry run: nothing was written")
		return
	case errors.Is(err, errUploadRead):
		ctx.SetConnectionClose()
		badRequest(ctx, CodeInvalidParam, "could not read the upload to its end: "+err.Error(), "a dry run: nothing was written")
		return
	case errors.Is(err, errRevoked):
		ctx.SetConnectionClose()
		fail(ctx, 401, CodeAuth, "OAuthException", "the token was revoked during the dry run", "")
		return
	case err != nil:
		s.storageError(ctx, err)
		return
	}
	out := DryRunResult{CampaignResult: *res, DryRun: true, Integrity: DryIntegrity{Flags: []any{}, TierRemaining: -1}}
	if a.preview != nil {
		out.Integrity.Flags, out.Integrity.TierRemaining = a.preview.Integrity()
	}
	writeJSON(ctx, 200, out)
}

// partialDetails says how much of a broken-off upload was accepted.
func partialDetails(res *CampaignResult) string {
	if res.Accepted == 0 {
		return "nothing was accepted"
	}
	return fmt.Sprintf("campaign %s: the first %d recipients were accepted and will be sent; resend the rest", res.CampaignID, res.Accepted)
}

func (s *Server) storageErrorPartial(ctx *fasthttp.RequestCtx, err error, res *CampaignResult) {
	details := partialDetails(res)
	if kv.NoSpace(err) {
		ctx.Response.Header.Set("Retry-After", "30")
		fail(ctx, 507, CodeInternal, "internal", "Herald's disk filled up during the upload", details)
		return
	}
	if errors.As(err, new(*shareFull)) {
		ctx.Response.Header.Set("Retry-After", "5")
		fail(ctx, 429, CodeThroughput, "OAuthException", err.Error()+" during the upload", details+"; "+shareAdvice)
		return
	}
	if errors.Is(err, queue.ErrFull) {
		ctx.Response.Header.Set("Retry-After", "1")
		fail(ctx, 429, CodeThroughput, "OAuthException", "Herald reached capacity during the upload", details)
		return
	}
	fail(ctx, 503, CodeInternal, "internal", "storage failed during the upload", details)
}

// errRevoked: the upload's token was revoked while it was being read.
var errRevoked = errors.New("api: token revoked during the upload")

// errUploadRead: the request body could not be read to its end (the client
// stalled, went away, or sent a broken chunked body).
var errUploadRead = errors.New("api: reading the upload failed")

// uploadError answers an upload that broke off: 408 when it stalled, 400
// otherwise; whole batches admitted before the break stay admitted (they are
// durable and counted), the rest was never enqueued.
func (s *Server) uploadError(ctx *fasthttp.RequestCtx, err error, res *CampaignResult) {
	ctx.SetConnectionClose()
	if errors.Is(err, errStalled) {
		fail(ctx, 408, CodeInvalidParam, "OAuthException", fmt.Sprintf("upload stalled: no data for %s", s.opts.StallTimeout), partialDetails(res))
		return
	}
	badRequest(ctx, CodeInvalidParam, "could not read the upload to its end: "+err.Error(), partialDetails(res))
}

func (s *Server) campaignJSON(ctx *fasthttp.RequestCtx, a *admitter, camp *records.Campaign) (*reqError, error) {
	raw, ok := s.readBody(ctx)
	if !ok {
		return nil, errResponded
	}
	var c campaignJSON
	if e := decodeStrict(raw, &c); e != nil {
		return e, nil
	}
	p, e := validateHeader(&c.campaignHeader, s.opts.Now())
	if e != nil {
		return e, nil
	}
	if len(c.Recipients) > s.opts.MaxRecipients {
		return rerr(CodeTooManyRcpts, "at most %d recipients per request", s.opts.MaxRecipients), nil
	}
	if e := a.checkHeader(&c.campaignHeader); e != nil {
		return e, nil
	}
	a.tpl, a.ttl, a.plan, camp.Name = c.Template.Body, p.ttl, p, c.Name
	if err := a.begin(); err != nil {
		return nil, err
	}
	for i, r := range c.Recipients {
		a.line = i + 1
		if a.resuming(a.line) {
			continue
		}
		if err := a.add(a.line, r); err != nil {
			return nil, err
		}
	}
	return nil, nil
}

var errResponded = errors.New("api: response already written")

// streamNDJSON reads the header line, then one recipient per line, admitting
// and enqueueing in batches as it goes: memory stays bounded whatever the
// number of recipients.
func (s *Server) streamNDJSON(ctx *fasthttp.RequestCtx, a *admitter, camp *records.Campaign) (*reqError, error) {
	br := bufio.NewReaderSize(s.bodyReader(ctx), 64<<10)
	line := 0
	max := s.opts.MaxLineBytes
	readLine := func() ([]byte, bool, error) {
		var buf []byte
		tooLong := false
		for {
			chunk, err := br.ReadSlice('\n')
			if !tooLong {
				buf = append(buf, chunk...)
				if len(buf) > max+1 {
					tooLong, buf = true, nil
				}
			}
			if err == bufio.ErrBufferFull {
				continue
			}
			if err == io.EOF && (len(buf) > 0 || tooLong) {
				return bytes.TrimSpace(buf), tooLong, nil
			}
			return bytes.TrimSpace(buf), tooLong, err
		}
	}
	// Header.
	var hdr campaignHeader
	for {
		b, tooLong, err := readLine()
		line++
		if tooLong {
			return rerr(CodeTooLarge, "line %d is longer than %d bytes", line, max), nil
		}
		if len(b) == 0 && err == nil {
			continue
		}
		if len(b) == 0 {
			return rerr(CodeInvalidParam, "empty upload: the first line must be {\"name\":…,\"template\":{\"body\":…}}"), nil
		}
		if e := decodeStrict(b, &hdr); e != nil {
			return rerr(e.code, "line %d (header): %s", line, e.msg), nil
		}
		break
	}
	p, e := validateHeader(&hdr, s.opts.Now())
	if e != nil {
		return rerr(e.code, "line 1 (header): %s", e.msg), nil
	}
	if e := a.checkHeader(&hdr); e != nil {
		return e, nil
	}
	a.tpl, a.ttl, a.plan, camp.Name = hdr.Template.Body, p.ttl, p, hdr.Name
	if err := a.begin(); err != nil {
		return nil, err
	}
	count := 0
	for {
		b, tooLong, err := readLine()
		line++
		a.line = line
		switch {
		case tooLong:
			if !a.resuming(line) {
				a.reject(line, "", rerr(CodeTooLarge, "line longer than %d bytes", max))
			}
		case len(b) > 0:
			count++
			if count > s.opts.MaxRecipients {
				a.reject(line, "", rerr(CodeTooManyRcpts, "at most %d recipients per request; the rest of the upload was ignored", s.opts.MaxRecipients))
				return nil, nil
			}
			if a.resuming(line) {
				break
			}
			if aerr := a.add(line, b); aerr != nil {
				return nil, aerr
			}
		}
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			// The client went away or was too slow: what was admitted stays admitted.
			return nil, fmt.Errorf("%w: %w", errUploadRead, err)
		}
	}
}

// loadProgress returns the progress of an idempotent upload that broke off,
// or nil.
func (s *Server) loadProgress(biz, key string) (*uploadProgress, error) {
	v, err := s.opts.Uploads.Progress(biz, key)
	if err != nil || v == nil {
		return nil, err
	}
	var p uploadProgress
	if err := json.Unmarshal(v, &p); err != nil {
		return nil, fmt.Errorf("api: upload progress record corrupt: %w", err)
	}
	return &p, nil
}

// checkHeader binds an idempotent upload to its campaign header: a resumed
// attempt must carry the same one.
func (a *admitter) checkHeader(h *campaignHeader) *reqError {
	if a.prog == nil {
		return nil
	}
	hb, _ := json.Marshal(h)
	sum := sha256.Sum256(hb)
	hx := hex.EncodeToString(sum[:])
	if a.prog.Header == "" {
		a.prog.Header = hx
		return nil
	}
	if a.prog.Header != hx {
		return rerr(CodeInvalidParam, "this Idempotency-Key belongs to an upload with a different campaign header; use a new key")
	}
	return nil
}
