package api

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/fasthttp/router"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/campaigns"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/inbound"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/records"
	"github.com/heraldhq/herald/internal/seal"
	"github.com/heraldhq/herald/internal/tenant"
	"github.com/heraldhq/herald/internal/webhook"
	"github.com/heraldhq/herald/queue"
)

// Admitter is the integrity limiter's admission check (package ratelimit).
type Admitter interface {
	// Admit decides for recipients (normalized numbers) of one phone number
	// (one admission batch, judged before any of it is enqueued); it returns
	// one code per recipient, 0 meaning admitted, and the reason for the
	// refused ones (the error message the client sees).
	Admit(b *tenant.Business, phoneNumberID string, recipients []string, now time.Time) (codes []int, reason string, err error)
	// Integrity is the GET /v1/{phone_number_id}/integrity view.
	Integrity(b *tenant.Business, phoneNumberID string, now time.Time) any
}

// Preview judges one dry run's recipients as the Admitter would, writing
// nothing; Integrity is what the upload would leave: flags (the phone
// number's, and those the upload would raise) and the new unique recipients
// the tier would still allow (-1: unlimited).
type Preview interface {
	Admit(b *tenant.Business, phoneNumberID string, recipients []string, now time.Time) (codes []int, reason string, err error)
	Integrity() (flags any, tierRemaining int64)
}

// EventHandler applies the platform's signed events (the engine does).
type EventHandler interface {
	HandleEvents(ctx context.Context, evs []platform.Event) error
}

// Options configure a Server. Zero values take the documented defaults.
type Options struct {
	DB     *kv.DB       // required
	Queue  *queue.Queue // required
	Events EventHandler // required: the platform's events go here (the engine)
	// Intake, in cluster mode, takes accepted messages instead of Queue: it
	// returns once they are durable in JetStream (and has committed the
	// batch: status records, the idempotent answer, upload progress).
	Intake Intake
	// ClusterStatus, in cluster mode, answers message statuses of every
	// node (tried before the local records).
	ClusterStatus interface {
		Message(id string) (*records.MessageStatus, error)
	}
	// ClusterCampaigns, in cluster mode: a campaign's counts summed over
	// the nodes, and a control change made on every node.
	ClusterCampaigns ClusterCampaigns
	// Inbound receives users' envelopes (POST /v1/platform/inbound) and
	// answers GET /v1/messages/{id} for their ids; nil: 404.
	Inbound *inbound.Receiver
	// InboundRoute, in cluster mode, hands each envelope to the node that
	// works its user's partition (nil: Inbound.Receive here).
	InboundRoute func([]inbound.Envelope) []inbound.Result
	// InboundElsewhere, in cluster mode, finds an inbound message this node
	// does not hold on the node that does (GET, mark read).
	InboundElsewhere InboundRemote
	// SharedHold, in cluster mode, holds an Idempotency-Key cluster-wide
	// while a request with it is worked (held false: another node has it).
	SharedHold func(key string) (release func(), held bool, err error)
	// KeysNeeded is told when a business number (digits) needs one-time
	// prekeys on the platform: it was just created, or a prekeys_low event
	// named it; nil: ignored.
	KeysNeeded func(business string)
	Statuses   *records.Statuses // required: messages' statuses and campaigns' counters
	Uploads    *records.Uploads  // required: campaign records, idempotent answers, upload progress
	Tenants    *tenant.Store     // required
	Webhooks   *webhook.Sender   // required
	Sealer     *seal.Sealer      // required
	Metrics    *metrics.Metrics
	Admitter   Admitter // nil: no integrity limits
	// Preview starts a dry run's admission checks (the Admitter's, with no
	// writes); nil: a dry run checks only what the API itself checks.
	Preview func(b *tenant.Business, phoneNumberID string, now time.Time) (Preview, error)
	// Campaigns holds paused and canceled campaigns; nil: campaign control
	// answers 503.
	Campaigns *campaigns.Control
	// CancelParked ends a canceled campaign's parked messages in the
	// background (the engine); nil: they go back into the queue, where the
	// engine cancels them as it meets them.
	CancelParked func(campaignID string)
	// PlatformSecret verifies /v1/platform/events. Required.
	PlatformSecret string
	// AdminToken guards /admin/v1. Required.
	AdminToken string
	// MaxBodyBytes for non-streaming requests; default 32 MiB.
	MaxBodyBytes int
	// MaxLineBytes per NDJSON line; default 64 KiB.
	MaxLineBytes int
	// MaxRecipients per campaign request; default 5,000,000.
	MaxRecipients int
	// MaxRejectedReported caps the rejected list in a campaign answer (the
	// count is always exact); default 10,000.
	MaxRejectedReported int
	// ReadTimeout bounds reading one whole request, headers and body (a
	// million-recipient upload takes seconds); default 5 minutes.
	ReadTimeout time.Duration
	// NoMetrics: /metrics is served elsewhere (--metrics-listen), not here.
	NoMetrics bool
	// HeaderTimeout: a request whose line and headers take longer is cut
	// off (slowloris); default 10 s.
	HeaderTimeout time.Duration
	// MaxConnsPerIP caps one client address's open connections; default 1,024.
	MaxConnsPerIP int
	// StallTimeout: a streaming upload that sends nothing for this long is cut
	// off (slowloris); default 30 seconds.
	StallTimeout time.Duration
	// SpaceCheck, when set, is asked before admitting new work; an error
	// wrapping kv.ErrLowSpace refuses it with 507 (the disk-space watermark).
	SpaceCheck func() error
	// QueueShare is a business's default share of the queue in stored
	// bytes (its max_queued_bytes when the admin set none); 0: no share.
	QueueShare int64
	// Ready reports readiness beyond storage (e.g. the platform reachable).
	Ready  func() error
	Now    func() time.Time
	Logger *slog.Logger
}

// Server serves the API.
type Server struct {
	opts    Options
	srv     *fasthttp.Server
	metrics fasthttp.RequestHandler
	router  *router.Router

	idMu  sync.Mutex
	idGen map[string]*heraldtype.IDGen

	idemMu     sync.Mutex
	idemActive map[string]bool
}

// EnsureDefaults fills the zero fields of o with their defaults (the one
// place they are written; herald serve's flags take theirs from here).
func (o *Options) EnsureDefaults() {
	if o.Metrics == nil {
		o.Metrics = metrics.New()
	}
	if o.MaxBodyBytes == 0 {
		o.MaxBodyBytes = 32 << 20
	}
	if o.MaxLineBytes == 0 {
		o.MaxLineBytes = 64 << 10
	}
	if o.MaxRecipients == 0 {
		o.MaxRecipients = 5_000_000
	}
	if o.MaxRejectedReported == 0 {
		o.MaxRejectedReported = 10_000
	}
	if o.Now == nil {
		o.Now = clock.Wall
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ReadTimeout <= 0 {
		o.ReadTimeout = 5 * time.Minute
	}
	if o.StallTimeout <= 0 {
		o.StallTimeout = 30 * time.Second
	}
	if o.HeaderTimeout <= 0 {
		o.HeaderTimeout = 10 * time.Second
	}
	if o.MaxConnsPerIP <= 0 {
		o.MaxConnsPerIP = 1024
	}
}

// Validate reports what o lacks.
func (o *Options) Validate() error {
	if o.DB == nil || o.Queue == nil || o.Events == nil || o.Statuses == nil || o.Uploads == nil || o.Tenants == nil || o.Webhooks == nil || o.Sealer == nil {
		return errors.New("api: Options.DB, Queue, Events, Statuses, Uploads, Tenants, Webhooks and Sealer are required")
	}
	if o.PlatformSecret == "" || o.AdminToken == "" {
		return errors.New("api: Options.PlatformSecret and AdminToken are required")
	}
	return nil
}

// New validates options.
func New(opts Options) (*Server, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.EnsureDefaults()
	s := &Server{opts: opts, idGen: map[string]*heraldtype.IDGen{}, idemActive: map[string]bool{}}
	s.metrics = fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(opts.Metrics.Registry, promhttp.HandlerOpts{}))
	s.router = s.routes() // after s.metrics: the routes take the handlers as they are now
	s.srv = &fasthttp.Server{
		Handler:            s.Handle,
		Name:               "herald",
		StreamRequestBody:  true,
		MaxRequestBodySize: 4 << 20, // prefetch; larger bodies stream
		// The line and headers must come within HeaderTimeout; then every
		// read of the body, the first bytes fasthttp reads before the
		// handler included, must make progress within StallTimeout (the
		// handler's stallReader goes on from there, never past ReadTimeout).
		ReadTimeout: opts.HeaderTimeout,
		HeaderReceived: func(*fasthttp.RequestHeader) fasthttp.RequestConfig {
			return fasthttp.RequestConfig{ReadTimeout: opts.StallTimeout}
		},
		MaxConnsPerIP:  opts.MaxConnsPerIP,
		WriteTimeout:   time.Minute,
		IdleTimeout:    2 * time.Minute,
		ReadBufferSize: 16 << 10,
		Logger:         fasthttpLogger{opts.Logger},
	}
	return s, nil
}

type fasthttpLogger struct{ l *slog.Logger }

func (f fasthttpLogger) Printf(format string, args ...any) {
	f.l.Debug("fasthttp", "msg", fmt.Sprintf(format, args...))
}

// MetricsHandler serves /metrics (and nothing else) for a listener of its own.
func (s *Server) MetricsHandler(ctx *fasthttp.RequestCtx) {
	if string(ctx.Path()) != "/metrics" {
		ctx.SetStatusCode(404)
		return
	}
	s.metrics(ctx)
}

// Serve serves on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error { return s.srv.Serve(ln) }

// Shutdown stops accepting and waits for requests in flight.
func (s *Server) Shutdown() error { return s.srv.Shutdown() }

func (s *Server) nextID(pn string, now time.Time) string {
	s.idMu.Lock()
	g, ok := s.idGen[pn]
	if !ok {
		g = &heraldtype.IDGen{}
		s.idGen[pn] = g
	}
	s.idMu.Unlock()
	return g.New(now)
}

// ClusterCampaigns is campaign control across a cluster.
type ClusterCampaigns interface {
	// Counters sums the campaign's counts of every node.
	Counters(id string) (*records.Counters, error)
	// Control makes state the campaign's on every node (after this one
	// made it its own); it returns once the live nodes applied it.
	Control(id, state string, now, expires time.Time) error
}

// counters are a campaign's counts: this node's, or the cluster's.
func (s *Server) counters(id string) (*records.Counters, error) {
	if s.opts.ClusterCampaigns != nil {
		return s.opts.ClusterCampaigns.Counters(id)
	}
	return s.opts.Statuses.Counters(id)
}

// Intake takes accepted messages with the batch of records that goes with them.
type Intake interface {
	EnqueueWith(ctx context.Context, msgs []queue.Message, batch *pebble.Batch) error
}

// enqueue hands accepted messages over: to the local queue, or in cluster
// mode to JetStream.
func (s *Server) enqueue(ctx context.Context, msgs []queue.Message, batch *pebble.Batch) error {
	var err error
	if s.opts.Intake != nil {
		err = s.opts.Intake.EnqueueWith(ctx, msgs, batch)
	} else {
		err = s.opts.Queue.EnqueueWith(ctx, msgs, batch)
	}
	if err != nil {
		s.opts.Uploads.Discard(batch)
		return err
	}
	// The batch's idempotency records, cluster-wide once it is durable (a
	// failure here loses no message: a retry on another node than this
	// one may then be accepted again).
	if err := s.opts.Uploads.Committed(batch); err != nil {
		s.opts.Logger.Warn("api: idempotency record not shared with the cluster", "err", err)
	}
	return nil
}

// Handle routes one request.
func (s *Server) Handle(ctx *fasthttp.RequestCtx) { s.router.Handler(ctx) }

// routes builds the router: a path the API does not serve is 404, a method
// a path does not take is 405 with Allow (both in the error object).
func (s *Server) routes() *router.Router {
	r := router.New()
	r.RedirectTrailingSlash, r.RedirectFixedPath = false, false
	r.NotFound = notFound
	r.MethodNotAllowed = func(ctx *fasthttp.RequestCtx) {
		fail(ctx, 405, CodeInvalidParam, "OAuthException", "this path does not take "+string(ctx.Method())+
			"; it takes "+string(ctx.Response.Header.Peek("Allow")), "")
	}
	s.route(r, "ANY", "/healthz", func(ctx *fasthttp.RequestCtx) { ctx.SetBodyString("ok") })
	s.route(r, "ANY", "/readyz", s.readyz)
	if !s.opts.NoMetrics {
		s.route(r, "GET", "/metrics", s.metrics)
	}
	s.route(r, "GET", "/openapi.json", s.openapi)
	s.route(r, "POST", "/v1/platform/events", s.platformEvents)
	s.route(r, "POST", "/v1/platform/inbound", s.platformInbound)
	// Business API: the bearer token names the business.
	s.route(r, "GET", "/v1/campaigns/{id}", s.business(s.getCampaign, "id"))
	s.route(r, "POST", "/v1/campaigns/{id}/pause", s.business(s.campaignControl(heraldtype.CampaignPaused), "id"))
	s.route(r, "POST", "/v1/campaigns/{id}/resume", s.business(s.campaignControl(heraldtype.CampaignRunning), "id"))
	s.route(r, "POST", "/v1/campaigns/{id}/cancel", s.business(s.campaignControl(heraldtype.CampaignCanceled), "id"))
	s.route(r, "GET", "/v1/{pn}/campaigns", s.phone(s.listCampaigns, "limit", "after"))
	s.route(r, "GET", "/v1/messages/{id}", s.business(s.getMessage, "id"))
	s.route(r, "POST", "/v1/{pn}/messages", s.phone(s.postMessage))
	s.route(r, "POST", "/v1/{pn}/campaigns", s.phone(s.postCampaign, "dry_run"))
	s.route(r, "PUT", "/v1/{pn}/webhook", s.phone(s.putWebhook))
	s.route(r, "GET", "/v1/{pn}/webhook", s.phone(s.getWebhook))
	s.route(r, "DELETE", "/v1/{pn}/webhook", s.phone(s.deleteWebhook))
	s.route(r, "GET", "/v1/{pn}/integrity", s.phone(s.getIntegrity))
	s.route(r, "GET", "/v1/{pn}/optouts", s.phone(s.getOptOuts))
	s.route(r, "DELETE", "/v1/{pn}/optouts/{wa_id}", s.phone(s.deleteOptOut))
	// Admin API.
	s.route(r, "POST", "/admin/v1/businesses", s.adminOnly(func(ctx *fasthttp.RequestCtx, _ string) { s.createBusiness(ctx) }))
	s.route(r, "GET", "/admin/v1/businesses", s.adminOnly(func(ctx *fasthttp.RequestCtx, _ string) { s.listBusinesses(ctx) }))
	s.route(r, "GET", "/admin/v1/businesses/{id}", s.adminOnly(s.showBusiness))
	s.route(r, "PATCH", "/admin/v1/businesses/{id}", s.adminOnly(s.patchBusiness))
	s.route(r, "POST", "/admin/v1/businesses/{id}/tokens", s.adminOnly(s.newToken))
	s.route(r, "DELETE", "/admin/v1/businesses/{id}/tokens/{token_id}", s.adminOnly(func(ctx *fasthttp.RequestCtx, id string) {
		s.revokeToken(ctx, id, param(ctx, "token_id"))
	}))
	s.route(r, "POST", "/admin/v1/businesses/{id}/phone_numbers", s.adminOnly(s.addPhoneNumber))
	return r
}

// route registers h for method (ANY: every method) and path, timed in
// herald_http_request_duration_seconds under the path's pattern.
func (s *Server) route(r *router.Router, method, path string, h fasthttp.RequestHandler) {
	hist := s.opts.Metrics.HTTPSeconds
	timed := func(ctx *fasthttp.RequestCtx) {
		start := clock.Wall() // a measurement: real time
		traceID(ctx)
		h(ctx)
		hist.WithLabelValues(path, string(ctx.Method())).Observe(clock.Wall().Sub(start).Seconds())
		if code := ctx.Response.StatusCode(); code >= 400 && s.opts.Logger.Enabled(ctx, slog.LevelDebug) {
			s.log(ctx).Debug("api: request refused", "route", path, "method", string(ctx.Method()), "status", code)
		}
	}
	if method == "ANY" {
		r.ANY(path, timed)
	} else {
		r.Handle(method, path, timed)
	}
}

// log is the logger for one request: its lines carry the request's trace id,
// the one its answer (header and error object) gives the client.
func (s *Server) log(ctx *fasthttp.RequestCtx) *slog.Logger {
	return s.opts.Logger.With("trace_id", traceID(ctx))
}

// param is a path parameter of the route.
func param(ctx *fasthttp.RequestCtx, name string) string {
	v, _ := ctx.UserValue(name).(string)
	return v
}

// business wraps a handler of the business API: no query parameters, a
// valid token; the handler gets the business and the path parameter named.
func (s *Server) business(h func(*fasthttp.RequestCtx, *tenant.Business, string), name string, query ...string) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if unknownQuery(ctx, query...) {
			return
		}
		b, err := s.authenticate(ctx)
		if err != nil {
			unauthorized(ctx)
			return
		}
		h(ctx, b, param(ctx, name))
	}
}

// phone is business for the routes of one phone number: the business must
// own it (404 otherwise, never another tenant's data).
func (s *Server) phone(h func(*fasthttp.RequestCtx, *tenant.Business, string), query ...string) fasthttp.RequestHandler {
	return s.business(func(ctx *fasthttp.RequestCtx, b *tenant.Business, pn string) { s.withPhone(ctx, b, pn, h) }, "pn", query...)
}

// adminOnly wraps a handler of the admin API: no query parameters, the
// admin token; the handler gets the {id} path parameter.
func (s *Server) adminOnly(h func(*fasthttp.RequestCtx, string)) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if unknownQuery(ctx) || !s.checkAdmin(ctx) {
			return
		}
		h(ctx, param(ctx, "id"))
	}
}

// unknownQuery answers 400 (code 100, the parameters named) when the request
// carries a query parameter the route does not take (allowed): a parameter a
// server ignores does what the client did not ask for. A parameter given
// twice is refused too.
func unknownQuery(ctx *fasthttp.RequestCtx, allowed ...string) bool {
	args := ctx.QueryArgs()
	if args.Len() == 0 {
		return false
	}
	var names []string
	seen := map[string]bool{}
	for k := range args.All() {
		name := string(k)
		if slices.Contains(allowed, name) && !seen[name] {
			seen[name] = true
			continue
		}
		names = append(names, strconv.Quote(name))
	}
	if len(names) == 0 {
		return false
	}
	badRequest(ctx, CodeInvalidParam, "unknown or repeated query parameter "+strings.Join(names, ", "), "")
	return true
}

func (s *Server) authenticate(ctx *fasthttp.RequestCtx) (*tenant.Business, error) {
	tok := bearer(ctx)
	if tok == "" {
		return nil, tenant.ErrUnauthorized
	}
	return s.opts.Tenants.Authenticate(tok)
}

// bearer is the request's bearer token ("" when there is none).
func bearer(ctx *fasthttp.RequestCtx) string {
	tok, ok := bytes.CutPrefix(ctx.Request.Header.Peek("Authorization"), []byte("Bearer "))
	if !ok {
		return ""
	}
	return string(tok)
}

func (s *Server) withPhone(ctx *fasthttp.RequestCtx, b *tenant.Business, pn string,
	h func(*fasthttp.RequestCtx, *tenant.Business, string)) {
	if _, ok := b.PhoneNumbers[pn]; !ok {
		notFound(ctx)
		return
	}
	h(ctx, b, pn)
}

func (s *Server) readyz(ctx *fasthttp.RequestCtx) {
	if err := s.opts.DB.Failed(); err != nil {
		fail(ctx, 503, CodeInternal, "internal", "storage failed", err.Error())
		return
	}
	if s.opts.Ready != nil {
		if err := s.opts.Ready(); err != nil {
			fail(ctx, 503, CodeInternal, "internal", "not ready", err.Error())
			return
		}
	}
	ctx.SetBodyString("ready")
}

// readBody reads a non-streaming body up to MaxBodyBytes.
func (s *Server) readBody(ctx *fasthttp.RequestCtx) ([]byte, bool) {
	if cl := ctx.Request.Header.ContentLength(); cl > s.opts.MaxBodyBytes {
		fail(ctx, 413, CodeTooLarge, "OAuthException", "request body too large", fmt.Sprintf("limit %d bytes", s.opts.MaxBodyBytes))
		return nil, false
	}
	r := s.bodyReader(ctx)
	b, err := io.ReadAll(io.LimitReader(r, int64(s.opts.MaxBodyBytes)+1))
	if errors.Is(err, errStalled) {
		ctx.SetConnectionClose()
		fail(ctx, 408, CodeInvalidParam, "OAuthException", fmt.Sprintf("request body stalled: no data for %s", s.opts.StallTimeout), "nothing was accepted")
		return nil, false
	}
	if err != nil {
		ctx.SetConnectionClose()
		badRequest(ctx, CodeInvalidParam, "could not read the request body", err.Error())
		return nil, false
	}
	if len(b) > s.opts.MaxBodyBytes {
		fail(ctx, 413, CodeTooLarge, "OAuthException", "request body too large", fmt.Sprintf("limit %d bytes", s.opts.MaxBodyBytes))
		return nil, false
	}
	return b, true
}

// readJSON reads the (non-streaming) body and decodes it into v; on any
// failure it has answered (400/408/413) and returns false.
func (s *Server) readJSON(ctx *fasthttp.RequestCtx, v any) bool {
	raw, ok := s.readBody(ctx)
	if !ok {
		return false
	}
	if e := decodeStrict(raw, v); e != nil {
		badRequest(ctx, e.code, e.msg, "")
		return false
	}
	return true
}

// bodyReader returns the request body; a streamed body is read with a stall
// deadline: each read must make progress within StallTimeout (never past the
// request's ReadTimeout), so a slow-drip client cannot hold a connection.
func (s *Server) bodyReader(ctx *fasthttp.RequestCtx) io.Reader {
	st := ctx.RequestBodyStream()
	if st == nil {
		return bytes.NewReader(ctx.Request.Body())
	}
	return &stallReader{r: st, conn: ctx.Conn(), stall: s.opts.StallTimeout, limit: ctx.Time().Add(s.opts.ReadTimeout)}
}

type stallReader struct {
	r     io.Reader
	conn  net.Conn
	stall time.Duration
	limit time.Time
}

func (r *stallReader) Read(p []byte) (int, error) {
	dl := clock.Wall().Add(r.stall) // a socket deadline: real time
	if dl.After(r.limit) {
		dl = r.limit
	}
	r.conn.SetReadDeadline(dl)
	n, err := r.r.Read(p)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		err = fmt.Errorf("%w: no data for %s", errStalled, r.stall)
	}
	return n, err
}

var errStalled = errors.New("api: upload stalled")

// Bounds of a platform events post: it is read only once its signature
// header is there, and never past these.
const (
	maxEventsBody = 4 << 20
	maxEventsPost = 10_000
)

// signedBody reads a body the platform signed (X-Platform-Signature) of at
// most limit bytes; it answers the request itself (401, 413, 400) and
// reports false when the body cannot be used.
func (s *Server) signedBody(ctx *fasthttp.RequestCtx, limit int, what string) ([]byte, bool) {
	// Refused before a byte of the body is read: no signature, or a body
	// larger than a post may be (10 concurrent unsigned 32 MiB posts took
	// 490 MB before).
	if len(ctx.Request.Header.Peek("X-Platform-Signature")) == 0 {
		ctx.SetConnectionClose()
		fail(ctx, 401, CodeBadSignature, "OAuthException", "missing X-Platform-Signature", "")
		return nil, false
	}
	if cl := ctx.Request.Header.ContentLength(); cl > limit {
		ctx.SetConnectionClose()
		fail(ctx, 413, CodeTooLarge, "OAuthException", what+" body too large", fmt.Sprintf("limit %d bytes", limit))
		return nil, false
	}
	body, err := io.ReadAll(io.LimitReader(s.bodyReader(ctx), int64(limit)+1))
	if err != nil {
		ctx.SetConnectionClose()
		badRequest(ctx, CodeInvalidParam, "could not read the request body", err.Error())
		return nil, false
	}
	if len(body) > limit {
		ctx.SetConnectionClose()
		fail(ctx, 413, CodeTooLarge, "OAuthException", what+" body too large", fmt.Sprintf("limit %d bytes", limit))
		return nil, false
	}
	if !platform.Verify([]byte(s.opts.PlatformSecret), body, string(ctx.Request.Header.Peek("X-Platform-Signature"))) {
		fail(ctx, 401, CodeBadSignature, "OAuthException", "missing or wrong X-Platform-Signature", "")
		return nil, false
	}
	return body, true
}

func (s *Server) platformEvents(ctx *fasthttp.RequestCtx) {
	body, ok := s.signedBody(ctx, maxEventsBody, "events")
	if !ok {
		return
	}
	var evs platform.Events
	if err := json.Unmarshal(body, &evs); err != nil {
		badRequest(ctx, CodeInvalidParam, "events body is not {\"events\":[...]}", err.Error())
		return
	}
	if len(evs.Events) > maxEventsPost {
		fail(ctx, 413, CodeTooLarge, "OAuthException", fmt.Sprintf("%d events in one post; at most %d", len(evs.Events), maxEventsPost), "")
		return
	}
	evs.Events = s.keyEvents(evs.Events)
	if err := s.opts.Events.HandleEvents(context.Background(), evs.Events); err != nil {
		s.storageError(ctx, err)
		return
	}
	writeJSON(ctx, 200, map[string]int{"received": len(evs.Events)})
}

// spaceOK applies the disk-space watermark before new work is admitted.
func (s *Server) spaceOK() error {
	if s.opts.SpaceCheck == nil {
		return nil
	}
	return s.opts.SpaceCheck()
}

// shareFull: the business's queued messages fill its share of the queue.
type shareFull struct{ limit, used int64 }

func (e *shareFull) Error() string {
	return fmt.Sprintf("this business's share of the queue is full (max_queued_bytes %d, %d queued)", e.limit, e.used)
}

const shareAdvice = "retry after the Retry-After delay, as earlier messages are sent; an administrator can raise max_queued_bytes"

// recordEstimate is about what a queued message stores beyond its body and
// recipient: record header, message and business ids, payload fields, seal.
const recordEstimate = 160

// shareOK refuses adding bytes of new messages when they would take b past
// its share of the queue (its max_queued_bytes, or the default share).
// Other businesses' messages are not counted: a business that fills its share
// gets 429 and no one else does.
func (s *Server) shareOK(b *tenant.Business, adding int64) error {
	limit := b.MaxQueuedBytes
	if limit == 0 {
		limit = s.opts.QueueShare
	}
	if limit <= 0 {
		return nil
	}
	if used := s.opts.Queue.OwnerBytes(b.ID); used+adding > limit {
		return &shareFull{limit: limit, used: used}
	}
	return nil
}

// storageError maps enqueue/storage failures: disk full 507, backpressure
// 429, storage 503.
func (s *Server) storageError(ctx *fasthttp.RequestCtx, err error) {
	switch {
	case kv.NoSpace(err):
		s.log(ctx).Debug("api: refusing work: disk full", "err", err)
		ctx.Response.Header.Set("Retry-After", "30")
		fail(ctx, 507, CodeInternal, "internal", "Herald's disk is full; nothing was accepted from this request", "retry after the Retry-After delay")
	case errors.As(err, new(*shareFull)):
		ctx.Response.Header.Set("Retry-After", "5")
		fail(ctx, 429, CodeThroughput, "OAuthException", err.Error()+"; nothing was accepted from this request", shareAdvice)
	case errors.Is(err, queue.ErrFull):
		ctx.Response.Header.Set("Retry-After", "1")
		fail(ctx, 429, CodeThroughput, "OAuthException", "Herald is at capacity; nothing was accepted from this request", "retry after the Retry-After delay")
	default:
		s.log(ctx).Error("api: storage failure", "err", err)
		ctx.Response.Header.Set("Retry-After", "5")
		fail(ctx, 503, CodeInternal, "internal", "storage unavailable; nothing was accepted from this request", "")
	}
}

func (s *Server) checkAdmin(ctx *fasthttp.RequestCtx) bool {
	h := ctx.Request.Header.Peek("Authorization")
	tok, ok := bytes.CutPrefix(h, []byte("Bearer "))
	if !ok || subtle.ConstantTimeCompare(tok, []byte(s.opts.AdminToken)) != 1 {
		unauthorized(ctx)
		return false
	}
	return true
}
