package sim

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	gojson "github.com/goccy/go-json"
	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/signal"
)

// Options configure the simulator. Zero values take the defaults.
type Options struct {
	// Listen address; default 127.0.0.1:0.
	Listen string
	// EventsURL receives signed events; empty disables pushing.
	EventsURL string
	// Secret authenticates Herald (Bearer) and signs events; default "platform-secret".
	Secret string
	// Users is how many users exist; default 1,000,000.
	Users int
	// Prefix of user numbers; user i is Prefix followed by i, zero-padded to 11 digits. Default "1555".
	Prefix string
	// DevicesMin/DevicesMax: devices per user; default 1-3.
	DevicesMin, DevicesMax int
	// UnknownShare of users that are not registered; default 0.02, negative: none.
	UnknownShare float64
	// PreKeys per device before the pool is exhausted; default 100.
	PreKeys int
	// ReadShare of delivered messages also reported read; default 0.5.
	ReadShare float64
	// ReportRate: share of delivered messages answered with a spam report.
	ReportRate float64
	// RecordBodies keeps, for every device, the id and the SHA-256 of the
	// body of each message it decrypted, in order (Received; tests). Off by
	// default: a million users' histories are memory a load test does not
	// need.
	RecordBodies bool
	// Faults.
	LatencyMS         int     // added to every /v1/messages request
	ThrottleRate      float64 // per envelope: throttled
	UnavailableRate   float64 // per envelope: unavailable
	Status429Rate     float64 // per request: HTTP 429
	Status503Rate     float64 // per request: HTTP 503
	ReinstallRate     float64 // per envelope: the device reinstalls (new identity, sessions lost)
	DecryptFailedRate float64 // per accepted envelope: a decrypt_failed retry receipt follows
	RetryAfterMS      int64   // retry_after_ms on throttled/unavailable; default 50
	EventInterval     time.Duration
	// Users who write (inbound.go): InboundURL is Herald's
	// /v1/platform/inbound (empty: users never write); ReplyShare of the
	// messages a device decrypts get a reply from it; InboundDupRate of
	// accepted envelopes are sent once more; InboundCorruptRate of them
	// get a bit flipped on the way (Herald answers bad_message).
	InboundURL         string
	ReplyShare         float64
	StopShare          float64 // of the replies, this share is "STOP"
	WriteRate          float64 // messages per second users write unprompted, to businesses whose keys they have
	InboundDupRate     float64
	InboundCorruptRate float64
	// Now stamps events (ts); default clock.Wall. Herald's node passes its
	// own clock, so a test's fake clock and the events agree.
	Now    func() time.Time
	Logger *slog.Logger
}

// Stats are the simulator's counters (GET /v1/stats).
type Stats struct {
	KeyQueries         int64            `json:"key_queries"`
	Bundles            int64            `json:"bundles"`
	Requests           int64            `json:"requests"`
	Envelopes          int64            `json:"envelopes"`
	Decrypted          int64            `json:"decrypted"`
	Duplicates         int64            `json:"duplicates"`
	Unknown            int64            `json:"unknown"`
	Stale              int64            `json:"stale_devices"`
	Mismatches         int64            `json:"mismatches"`
	OrderingViolations int64            `json:"ordering_violations"`
	Failures           map[string]int64 `json:"failures"`
	Injected           map[string]int64 `json:"injected"`
	EventsSent         int64            `json:"events_sent"`
	EventsFailed       int64            `json:"events_failed"`
	EventsDropped      int64            `json:"events_dropped"`
	AuthRejected       int64            `json:"auth_rejected"`
}

// Server is a running simulator.
type Server struct {
	opts Options
	ln   net.Listener
	srv  *fasthttp.Server

	shards [64]userShard
	down   atomic.Bool

	statsMu sync.Mutex
	stats   Stats

	evMu      sync.Mutex
	events    []platform.Event
	evClient  *fasthttp.Client
	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once

	inOnce sync.Once
	in     *inboundState
}

type userShard struct {
	mu    sync.Mutex
	users map[string]*simUser
}

type simUser struct {
	mu      sync.Mutex
	devices map[uint32]*simDevice
	// list is the user's current device ids once AddDevice or RemoveDevice
	// changed them (nil: 1..DeviceCount's hash-derived count). epoch counts
	// those changes; told[sender] is the epoch a sender last knew (set at its
	// first envelope, and when it was answered stale_devices).
	list  []uint32
	epoch int
	told  map[string]int
}

type simDevice struct {
	dev  *signal.Device
	seen map[string]struct{}
	last map[string]string // sender → last message id delivered
	// lost: senders whose session this device lost through an injected fault;
	// until a new session arrives, their old-session envelopes cannot decrypt,
	// which is the fault's doing, not the sender's (counted as injected).
	lost map[string]bool
	// receipted: ids this device sent a decrypt_failed for; their redelivery
	// comes after later messages by design and is not an ordering violation.
	receipted map[string]bool
	// received: what it decrypted, in order (Options.RecordBodies).
	received []Received
}

// Received is one message a device decrypted: its id, sender and the
// SHA-256 of its body.
type Received struct {
	ID, From string
	BodySHA  [32]byte
}

// EnsureDefaults fills the zero fields of o with their defaults (the one
// place they are written; herald serve's and herald platform's flags take
// theirs from here).
func (o *Options) EnsureDefaults() {
	if o.Listen == "" {
		o.Listen = "127.0.0.1:0"
	}
	if o.Secret == "" {
		o.Secret = "platform-secret"
	}
	if o.Users == 0 {
		o.Users = 1_000_000
	}
	if o.Prefix == "" {
		o.Prefix = "1555"
	}
	if o.DevicesMin == 0 {
		o.DevicesMin = 1
	}
	if o.DevicesMax == 0 {
		o.DevicesMax = max(3, o.DevicesMin)
	}
	if o.UnknownShare == 0 {
		o.UnknownShare = 0.02
	}
	if o.PreKeys == 0 {
		o.PreKeys = 100
	}
	if o.ReadShare == 0 {
		o.ReadShare = 0.5
	}
	if o.RetryAfterMS == 0 {
		o.RetryAfterMS = 50
	}
	if o.Now == nil {
		o.Now = clock.Wall
	}
	if o.EventInterval == 0 {
		o.EventInterval = 50 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Validate reports the first setting of o that cannot work.
func (o *Options) Validate() error {
	switch {
	case len(o.Prefix) >= 11 || !digits(o.Prefix):
		return fmt.Errorf("sim: --prefix must be 1-10 digits, got %q", o.Prefix)
	case o.DevicesMin < 1 || o.DevicesMax > 127 || o.DevicesMin > o.DevicesMax:
		return fmt.Errorf("sim: --devices must be MIN-MAX within 1-127, got %d-%d", o.DevicesMin, o.DevicesMax)
	case o.Users < 1 || float64(o.Users) > pow10(11-len(o.Prefix)):
		return fmt.Errorf("sim: --users %d does not fit in %d digits after prefix %s", o.Users, 11-len(o.Prefix), o.Prefix)
	}
	return nil
}

// New validates options and starts listening (not serving: call Serve or Start).
func New(opts Options) (*Server, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, fmt.Errorf("sim: listen %s: %w", opts.Listen, err)
	}
	s := &Server{opts: opts, ln: ln, stop: make(chan struct{}), evClient: &fasthttp.Client{ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}}
	s.stats.Failures = map[string]int64{}
	s.stats.Injected = map[string]int64{}
	for i := range s.shards {
		s.shards[i].users = map[string]*simUser{}
	}
	s.srv = &fasthttp.Server{Handler: s.handle, MaxRequestBodySize: 64 << 20, ReadTimeout: 30 * time.Second,
		WriteTimeout: 30 * time.Second, Name: "herald-platform-sim"}
	return s, nil
}

func digits(s string) bool {
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return s != ""
}

func pow10(n int) float64 {
	v := 1.0
	for i := 0; i < n; i++ {
		v *= 10
	}
	return v
}

// Addr is the address the simulator listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the simulator's base URL.
func (s *Server) URL() string { return "http://" + s.Addr() }

// Start serves in the background.
func (s *Server) Start() {
	s.wg.Add(2)
	go func() { defer s.wg.Done(); s.srv.Serve(s.ln) }()
	go func() { defer s.wg.Done(); s.pushLoop() }()
	if s.opts.InboundURL != "" && s.opts.WriteRate > 0 {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.writeLoop() }()
	}
}

// Close stops serving and pushing; safe to call twice.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.srv.Shutdown()
		s.ln.Close()
		s.wg.Wait()
	})
	return nil
}

// SetDown makes every request fail with 503 until SetDown(false).
func (s *Server) SetDown(down bool) { s.down.Store(down) }

// UserNumber returns user i's number.
func (s *Server) UserNumber(i int) string {
	return s.opts.Prefix + fmt.Sprintf("%0*d", 11-len(s.opts.Prefix), i)
}

func hash(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// userIndex returns i for a simulated user number, or -1.
func (s *Server) userIndex(u string) int {
	if len(u) != 11 || len(u) <= len(s.opts.Prefix) || u[:len(s.opts.Prefix)] != s.opts.Prefix {
		return -1
	}
	i, err := strconv.Atoi(u[len(s.opts.Prefix):])
	if err != nil || i < 0 || i >= s.opts.Users {
		return -1
	}
	return i
}

// Registered reports whether user number u exists on the platform.
func (s *Server) Registered(u string) bool {
	if s.userIndex(u) < 0 {
		return false
	}
	return float64(hash("unknown:"+u)%10000)/10000 >= s.opts.UnknownShare
}

// DeviceCount returns how many devices a registered user has now.
func (s *Server) DeviceCount(u string) int { return len(s.Devices(u)) }

// initialDevices is a user's device count before any change.
func (s *Server) initialDevices(u string) int {
	span := s.opts.DevicesMax - s.opts.DevicesMin + 1
	return s.opts.DevicesMin + int(hash("devices:"+u)%uint64(span))
}

// Devices returns a registered user's current device ids.
func (s *Server) Devices(u string) []uint32 {
	su := s.user(u)
	su.mu.Lock()
	defer su.mu.Unlock()
	return append([]uint32(nil), s.devicesLocked(su, u)...)
}

func (s *Server) devicesLocked(su *simUser, u string) []uint32 {
	if su.list != nil {
		return su.list
	}
	n := s.initialDevices(u)
	ids := make([]uint32, n)
	for i := range ids {
		ids[i] = uint32(i + 1)
	}
	return ids
}

// AddDevice gives a user a new device (the next free id) and returns its id:
// senders learn of it through a stale_devices answer to their next envelope.
func (s *Server) AddDevice(u string) uint32 {
	su := s.user(u)
	su.mu.Lock()
	defer su.mu.Unlock()
	ids := s.devicesLocked(su, u)
	id := uint32(1)
	for _, d := range ids {
		id = max(id, d+1)
	}
	su.list = append(append([]uint32(nil), ids...), id)
	su.epoch++
	return id
}

// RemoveDevice takes a device from a user: envelopes to it are answered
// stale_devices from now on.
func (s *Server) RemoveDevice(u string, id uint32) {
	su := s.user(u)
	su.mu.Lock()
	defer su.mu.Unlock()
	var keep []uint32
	for _, d := range s.devicesLocked(su, u) {
		if d != id {
			keep = append(keep, d)
		}
	}
	su.list = append([]uint32{}, keep...)
	su.epoch++
}

func (s *Server) user(u string) *simUser {
	sh := &s.shards[hash(u)%uint64(len(s.shards))]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	su, ok := sh.users[u]
	if !ok {
		su = &simUser{devices: map[uint32]*simDevice{}}
		sh.users[u] = su
	}
	return su
}

// device returns (creating lazily) a user's device; su.mu is held.
func (s *Server) deviceLocked(su *simUser, id uint32) (*simDevice, error) {
	d, ok := su.devices[id]
	if !ok {
		dev, err := signal.NewDevice(id, s.opts.PreKeys)
		if err != nil {
			return nil, err
		}
		d = &simDevice{dev: dev, seen: map[string]struct{}{}, last: map[string]string{}, lost: map[string]bool{}, receipted: map[string]bool{}}
		su.devices[id] = d
	}
	return d, nil
}

func (s *Server) count(f func(st *Stats)) {
	s.statsMu.Lock()
	f(&s.stats)
	s.statsMu.Unlock()
}

// Stats returns a copy of the counters.
func (s *Server) Stats() Stats {
	s.statsMu.Lock()
	defer s.statsMu.Unlock()
	st := s.stats
	st.Failures = map[string]int64{}
	for k, v := range s.stats.Failures {
		st.Failures[k] = v
	}
	st.Injected = map[string]int64{}
	for k, v := range s.stats.Injected {
		st.Injected[k] = v
	}
	return st
}

func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	path := string(ctx.Path())
	if ctx.IsGet() {
		switch path {
		case "/v1/stats":
			writeJSON(ctx, 200, s.Stats())
		case "/sim/inbound":
			writeJSON(ctx, 200, map[string]any{"stats": s.InboundStats(), "pending": s.InboundPending()})
		case "/healthz", "/readyz":
			ctx.SetBodyString("ok")
		default:
			ctx.SetStatusCode(404)
		}
		return
	}
	if !ctx.IsPost() {
		ctx.SetStatusCode(405)
		return
	}
	if string(ctx.Request.Header.Peek("Authorization")) != "Bearer "+s.opts.Secret {
		s.count(func(st *Stats) { st.AuthRejected++ })
		writeJSON(ctx, 401, map[string]string{"error": "missing or wrong bearer secret"})
		return
	}
	if s.down.Load() {
		s.count(func(st *Stats) {
			st.Injected["down"]++
			if path == "/v1/messages" {
				st.Injected["down_messages"]++ // envelopes Herald tried to hand over
			}
		})
		ctx.SetStatusCode(503)
		return
	}
	switch path {
	case "/v1/keys/query":
		s.keysQuery(ctx)
	case "/v1/messages":
		s.messages(ctx)
	case "/v1/keys/upload":
		s.uploadKeys(ctx)
	case "/v1/receipts":
		s.receipts(ctx)
	case "/sim/write":
		s.writeHTTP(ctx)
	default:
		ctx.SetStatusCode(404)
	}
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, _ := json.Marshal(v)
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(b)
}

func (s *Server) keysQuery(ctx *fasthttp.RequestCtx) {
	var q platform.KeysQuery
	if err := json.Unmarshal(ctx.PostBody(), &q); err != nil || len(q.Users) > 1000 {
		writeJSON(ctx, 400, map[string]string{"error": "want {\"users\":[...]} with at most 1000 users"})
		return
	}
	resp := platform.KeysResponse{Users: []platform.UserBundles{}, Unknown: []string{}}
	var bundles int64
	for _, u := range q.Users {
		if !s.Registered(u) {
			resp.Unknown = append(resp.Unknown, u)
			continue
		}
		su := s.user(u)
		su.mu.Lock()
		ub := platform.UserBundles{User: u}
		for _, id := range s.devicesLocked(su, u) {
			d, err := s.deviceLocked(su, id)
			if err != nil {
				su.mu.Unlock()
				writeJSON(ctx, 500, map[string]string{"error": err.Error()})
				return
			}
			ub.Devices = append(ub.Devices, d.dev.Bundle())
			bundles++
		}
		su.mu.Unlock()
		resp.Users = append(resp.Users, ub)
	}
	s.count(func(st *Stats) { st.KeyQueries++; st.Bundles += bundles })
	writeJSON(ctx, 200, resp)
}

func (s *Server) messages(ctx *fasthttp.RequestCtx) {
	// goccy/go-json for the request and the plaintexts (encoding/json was
	// ~20 % of the simulator's CPU per message). The check independent of
	// Herald's encoders is the conformance suite (JavaScript's JSON.parse).
	var req platform.MessagesRequest
	if err := gojson.Unmarshal(ctx.PostBody(), &req); err != nil {
		writeJSON(ctx, 400, map[string]string{"error": "body is not {\"envelopes\":[...]}"})
		return
	}
	if s.opts.LatencyMS > 0 {
		time.Sleep(time.Duration(s.opts.LatencyMS) * time.Millisecond)
	}
	s.count(func(st *Stats) { st.Requests++ })
	if roll(s.opts.Status429Rate) {
		s.count(func(st *Stats) { st.Injected["http_429"]++ })
		ctx.Response.Header.Set("Retry-After", "1")
		ctx.SetStatusCode(429)
		return
	}
	if roll(s.opts.Status503Rate) {
		s.count(func(st *Stats) { st.Injected["http_503"]++ })
		ctx.SetStatusCode(503)
		return
	}
	resp := platform.MessagesResponse{Results: make([]platform.Result, 0, len(req.Envelopes))}
	for _, e := range req.Envelopes {
		resp.Results = append(resp.Results, s.envelope(e))
	}
	writeJSON(ctx, 200, resp)
}

func roll(p float64) bool { return p > 0 && rand.Float64() < p }

func (s *Server) fail(why string) { s.count(func(st *Stats) { st.Failures[why]++ }) }

func (s *Server) envelope(e platform.Envelope) platform.Result {
	res := platform.Result{ID: e.ID, DeviceID: e.DeviceID, Status: platform.StatusError}
	s.count(func(st *Stats) { st.Envelopes++ })
	if !s.Registered(e.To) {
		s.count(func(st *Stats) { st.Unknown++ })
		res.Code = platform.CodeUnknownUser
		return res
	}
	su := s.user(e.To)
	su.mu.Lock()
	defer su.mu.Unlock()
	if su.told == nil {
		su.told = map[string]int{}
	}
	told, known := su.told[e.From]
	if !known {
		su.told[e.From], told = su.epoch, su.epoch
	}
	current := false
	for _, d := range s.devicesLocked(su, e.To) {
		current = current || d == e.DeviceID
	}
	if !current || told < su.epoch {
		// A removed device, or the device list changed since this sender
		// last learned it: it must query keys again.
		su.told[e.From] = su.epoch
		s.count(func(st *Stats) { st.Stale++ })
		res.Code = platform.CodeStaleDevices
		return res
	}
	d, err := s.deviceLocked(su, e.DeviceID)
	if err != nil {
		res.Code = platform.CodeUnavailable
		return res
	}
	if _, dup := d.seen[e.ID]; dup {
		s.count(func(st *Stats) { st.Duplicates++ })
		res.Status = platform.StatusAccepted
		return res
	}
	if roll(s.opts.ThrottleRate) {
		s.count(func(st *Stats) { st.Injected["throttled"]++ })
		res.Code, res.RetryAfterMS = platform.CodeThrottled, s.opts.RetryAfterMS
		return res
	}
	if roll(s.opts.UnavailableRate) {
		s.count(func(st *Stats) { st.Injected["unavailable"]++ })
		res.Code, res.RetryAfterMS = platform.CodeUnavailable, s.opts.RetryAfterMS
		return res
	}
	if roll(s.opts.ReinstallRate) {
		s.count(func(st *Stats) { st.Injected["reinstall"]++ })
		d.dev.Reinstall()
		for from := range d.last {
			d.lost[from] = true
		}
		d.lost[e.From] = true
		res.Code = platform.CodeBadMessage
		return res
	}
	body, err := base64.StdEncoding.DecodeString(e.Ciphertext)
	if err != nil {
		s.fail("ciphertext_not_base64")
		res.Code = platform.CodeBadMessage
		return res
	}
	pt, err := d.dev.Decrypt(e.From, e.Type, body)
	if err != nil {
		if d.lost[e.From] {
			s.count(func(st *Stats) { st.Injected["after_session_loss"]++ })
		} else {
			s.fail("decrypt: " + trimErr(err))
		}
		res.Code = platform.CodeBadMessage
		return res
	}
	delete(d.lost, e.From)
	var m platform.Plaintext
	if err := gojson.Unmarshal(pt, &m); err != nil || m.ID != e.ID || m.From != e.From || m.Text == nil {
		s.count(func(st *Stats) { st.Mismatches++ })
	}
	d.seen[e.ID] = struct{}{}
	if last, ok := d.last[e.From]; ok && e.ID < last && !d.receipted[e.ID] {
		s.count(func(st *Stats) { st.OrderingViolations++ })
	} else {
		d.last[e.From] = e.ID
	}
	s.count(func(st *Stats) { st.Decrypted++ })
	if s.opts.InboundURL != "" && roll(s.opts.ReplyShare) {
		text := "re: " + e.ID
		if roll(s.opts.StopShare) {
			text = "STOP"
		}
		s.Write(e.To, e.DeviceID, e.From, text) // the user answers, in the session the business started
	}
	now := s.opts.Now().Unix()
	evs := []platform.Event{{Type: platform.EventDelivered, ID: e.ID, User: e.To, DeviceID: e.DeviceID, TS: now}}
	if roll(s.opts.ReadShare) {
		evs = append(evs, platform.Event{Type: platform.EventRead, ID: e.ID, User: e.To, DeviceID: e.DeviceID, TS: now})
	}
	if roll(s.opts.ReportRate) {
		evs = append(evs, platform.Event{Type: platform.EventReport, Business: e.From, User: e.To, Reason: "spam", TS: now})
	}
	if !d.receipted[e.ID] && roll(s.opts.DecryptFailedRate) { // one retry receipt per message and device
		// The device "loses" the message: drop its session and send a retry receipt.
		s.count(func(st *Stats) { st.Injected["decrypt_failed"]++ })
		delete(d.seen, e.ID)
		d.dev.ForgetSession(e.From)
		d.lost[e.From] = true
		d.receipted[e.ID] = true
		evs = []platform.Event{{Type: platform.EventDecryptFailed, ID: e.ID, User: e.To, DeviceID: e.DeviceID, TS: now}}
		s.count(func(st *Stats) { st.Decrypted-- })
	} else if s.opts.RecordBodies && m.Text != nil {
		d.received = append(d.received, Received{ID: e.ID, From: e.From, BodySHA: sha256.Sum256([]byte(m.Text.Body))})
	}
	s.queueEvents(evs)
	res.Status = platform.StatusAccepted
	return res
}

func trimErr(err error) string {
	m := err.Error()
	if len(m) > 60 {
		m = m[:60]
	}
	return m
}

const maxPendingEvents = 1 << 20

func (s *Server) queueEvents(evs []platform.Event) {
	if s.opts.EventsURL == "" {
		return
	}
	s.evMu.Lock()
	if len(s.events)+len(evs) > maxPendingEvents {
		s.count(func(st *Stats) { st.EventsDropped += int64(len(evs)) })
	} else {
		s.events = append(s.events, evs...)
	}
	s.evMu.Unlock()
}

func (s *Server) pushLoop() {
	t := time.NewTicker(s.opts.EventInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			s.pushOnce() // one last try
			return
		case <-t.C:
			for s.pushOnce() {
			}
		}
	}
}

// pushOnce posts one batch of pending events; it reports whether more remain.
func (s *Server) pushOnce() bool {
	s.evMu.Lock()
	n := min(len(s.events), 2000)
	batch := append([]platform.Event(nil), s.events[:n]...)
	s.evMu.Unlock()
	if n == 0 {
		return false
	}
	body, _ := json.Marshal(platform.Events{Events: batch})
	status, _, err := s.postSigned(s.opts.EventsURL, body, 10*time.Second)
	if err != nil || status >= 300 {
		s.count(func(st *Stats) { st.EventsFailed += int64(n) })
		return false
	}
	s.evMu.Lock()
	s.events = s.events[n:]
	more := len(s.events) > 0
	s.evMu.Unlock()
	s.count(func(st *Stats) { st.EventsSent += int64(n) })
	return more
}

// PendingEvents reports how many events wait to be pushed.
func (s *Server) PendingEvents() int {
	s.evMu.Lock()
	defer s.evMu.Unlock()
	return len(s.events)
}

// ErrBadDevices is returned by ParseDevices.
var ErrBadDevices = errors.New("sim: --devices must look like MIN-MAX, e.g. 1-3")

// ParseDevices parses "MIN-MAX" (or a single number).
func ParseDevices(s string) (lo, hi int, err error) {
	a, b, found := bytes.Cut([]byte(s), []byte("-"))
	lo, err1 := strconv.Atoi(string(a))
	hi = lo
	var err2 error
	if found {
		hi, err2 = strconv.Atoi(string(b))
	}
	if err1 != nil || err2 != nil || lo < 1 || hi < lo || hi > 127 {
		return 0, 0, ErrBadDevices
	}
	return lo, hi, nil
}

// Run serves until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	s.Start()
	<-ctx.Done()
	return s.Close()
}

// Received returns, for a user, what each device decrypted, in the order it
// did (Options.RecordBodies).
func (s *Server) Received(user string) map[uint32][]Received {
	su := s.user(user)
	su.mu.Lock()
	defer su.mu.Unlock()
	out := map[uint32][]Received{}
	for id, d := range su.devices {
		out[id] = append([]Received(nil), d.received...)
	}
	return out
}

// Delivered returns, for a user, the message ids each device has received (tests).
func (s *Server) Delivered(user string) map[uint32][]string {
	su := s.user(user)
	su.mu.Lock()
	defer su.mu.Unlock()
	out := map[uint32][]string{}
	for id, d := range su.devices {
		for m := range d.seen {
			out[id] = append(out[id], m)
		}
	}
	return out
}
