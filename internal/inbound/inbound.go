// Package inbound receives what users write to businesses (DESIGN
// "Inbound"): it decrypts each envelope with the business number's Signal
// identity, in the session the pair already has or a new one, stores the
// plaintext sealed together with the advanced session in one fsync'd
// batch, answers "accepted" only then (invariant 10), and queues the message
// for the business's webhook. A repeated platform id is answered "accepted"
// without decrypting again. Stored messages leave within their TTL
// (invariant 11).
package inbound

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/cockroachdb/pebble/v2"
	gojson "github.com/goccy/go-json"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/seal"
	"github.com/heraldhq/herald/internal/signal"
	"github.com/heraldhq/herald/internal/tenant"
	"github.com/heraldhq/herald/internal/webhook"
	"github.com/heraldhq/herald/ratelimit"
)

// Bounds of what the platform may send in one POST.
const (
	MaxEnvelopes     = 10_000
	MaxIDLen         = 128
	MaxCiphertextLen = 96 << 10 // base64 of a message well above the body limit
	MaxBodyBytes     = 64 << 10 // a user's text, in bytes
	// TTL of an inbound message: it and its copy in the webhook outbox are
	// deleted this long after it was accepted.
	TTL = heraldtype.MaxTTL
)

// Result codes of /v1/platform/inbound.
const (
	CodeBadMessage      = "bad_message"
	CodeUnknownBusiness = "unknown_business"
	CodeRetry           = "retry"
)

// Envelope is one envelope from a user's device.
type Envelope struct {
	ID         string `json:"id"`
	From       string `json:"from"`
	DeviceID   uint32 `json:"device_id"`
	To         string `json:"to"`
	Type       string `json:"type"`
	Ciphertext string `json:"ciphertext"`
	TS         int64  `json:"ts"`
}

// Result answers one envelope.
type Result struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Code   string `json:"code,omitempty"`
}

// Options configure a Receiver.
type Options struct {
	DB       *kv.DB
	Sealer   *seal.Sealer
	Sessions *signal.Store
	Locks    *signal.PeerLocks
	Tenants  *tenant.Store
	Webhooks *webhook.Sender
	Metrics  *metrics.Metrics
	Logger   *slog.Logger
	Now      func() time.Time
	// Workers decrypt envelopes of different users at once; default
	// 2 × GOMAXPROCS.
	Workers int
	// Platform takes read receipts; nil keeps them queued.
	Platform ReceiptSender
	// OptOuts records a user who sent a stop keyword (the limiter); nil:
	// stop keywords are forwarded like any message and nothing else.
	OptOuts OptOuter
}

// OptOuter records opt-outs (ratelimit.Limiter).
type OptOuter interface {
	OptOut(b *pebble.Batch, biz, user string, at time.Time) error
}

// Receiver handles inbound envelopes; safe for concurrent use.
type Receiver struct {
	opts Options

	readMu    sync.Mutex
	wake      chan struct{}
	stop      chan struct{}
	closeOnce sync.Once
}

// New makes a Receiver.
func New(opts Options) (*Receiver, error) {
	if opts.DB == nil || opts.Sealer == nil || opts.Sessions == nil || opts.Tenants == nil {
		return nil, errors.New("inbound: DB, Sealer, Sessions and Tenants are required")
	}
	if opts.Locks == nil {
		opts.Locks = signal.NewPeerLocks()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = clock.Wall
	}
	if opts.Workers <= 0 {
		opts.Workers = 2 * runtime.GOMAXPROCS(0)
	}
	return &Receiver{opts: opts, wake: make(chan struct{}, 1), stop: make(chan struct{})}, nil
}

// Record keys: 'iM' + platform id → expiry (8, clear) | sealed message;
// 'iX' + expiry (8) + id → "" (the retention index).
func msgKey(id string) []byte { return append([]byte("iM"), id...) }

func expiryKey(exp int64, id string) []byte {
	return append(binary.BigEndian.AppendUint64([]byte("iX"), uint64(exp)), id...)
}

// Message is a stored inbound message.
type Message struct {
	ID            string `json:"id"`
	BusinessID    string `json:"b"`
	PhoneNumberID string `json:"pn"`
	From          string `json:"from"`
	DeviceID      uint32 `json:"dev"`
	TS            int64  `json:"ts"`
	Body          string `json:"body"`
	Expires       int64  `json:"exp"`
	Read          bool   `json:"read,omitempty"` // the business marked it read
}

// ErrNotFound: no inbound message has that id (or it expired).
var ErrNotFound = errors.New("inbound: no such message")

// Get reads a stored inbound message.
func (r *Receiver) Get(id string) (*Message, error) {
	if id == "" || len(id) > MaxIDLen {
		return nil, ErrNotFound
	}
	v, ok, err := r.opts.DB.GetCopy(msgKey(id))
	if err != nil {
		return nil, err
	}
	if !ok || len(v) < 8 {
		return nil, ErrNotFound
	}
	if exp := int64(binary.BigEndian.Uint64(v)); exp <= r.opts.Now().Unix() {
		return nil, ErrNotFound
	}
	plain, err := r.opts.Sealer.Open(v[8:])
	if err != nil {
		return nil, fmt.Errorf("inbound: message unreadable: %w", err)
	}
	var m Message
	if err := json.Unmarshal(plain, &m); err != nil {
		return nil, fmt.Errorf("inbound: message corrupt: %w", err)
	}
	return &m, nil
}

// Sweep deletes up to limit inbound messages past their expiry.
func (r *Receiver) Sweep(limit int) (int, error) {
	hi := expiryKey(r.opts.Now().Unix()+1, "")
	return r.opts.DB.SweepIndex("iX", hi, limit, func(b *pebble.Batch, id string) { b.Delete(msgKey(id), nil) }, false)
}

// Receive answers every envelope, in their order. Envelopes of one user
// (to one business) are decrypted in order; different users' at once.
func (r *Receiver) Receive(envs []Envelope) []Result {
	out := make([]Result, len(envs))
	type pair struct{ to, from string }
	groups := map[pair][]int{}
	var order []pair
	for i, e := range envs {
		out[i] = Result{ID: e.ID}
		if msg := check(&e); msg != "" {
			out[i].Status, out[i].Code = platform.StatusError, CodeBadMessage
			r.count("malformed")
			continue
		}
		p := pair{e.To, e.From}
		if _, ok := groups[p]; !ok {
			order = append(order, p)
		}
		groups[p] = append(groups[p], i)
	}
	work := make(chan []int)
	var wg sync.WaitGroup
	for w := 0; w < min(r.opts.Workers, len(order)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.work(envs, out, work)
		}()
	}
	for _, p := range order {
		work <- groups[p]
	}
	close(work)
	wg.Wait()
	return out
}

// check validates an envelope's fields; it returns what is wrong ("" when
// nothing is).
func check(e *Envelope) string {
	switch {
	case e.ID == "" || len(e.ID) > MaxIDLen || !utf8.ValidString(e.ID):
		return "id"
	case !digits(e.From) || !digits(e.To):
		return "from/to"
	case e.DeviceID == 0:
		return "device_id"
	case e.Type != platform.TypePreKey && e.Type != platform.TypeMsg:
		return "type"
	case e.Ciphertext == "" || len(e.Ciphertext) > MaxCiphertextLen:
		return "ciphertext"
	}
	return ""
}

func digits(s string) bool {
	if len(s) < 8 || len(s) > 15 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func (r *Receiver) count(result string) {
	if r.opts.Metrics != nil {
		r.opts.Metrics.Inbound.WithLabelValues(result).Inc()
	}
}

// worker decrypts the groups it takes (one user's envelopes to one
// business number each, in order), holding each pair's lock, into one
// batch; it commits that batch (fsync'd) when the groups run out — one
// fsync for many users — and only then answers their envelopes "accepted"
// and releases the locks.
type worker struct {
	r        *Receiver
	envs     []Envelope
	out      []Result
	b        *pebble.Batch
	locks    []string
	forget   []func()
	accepted []int
	hooked   []hookedEntry
	seen     map[string]bool
	now      time.Time
}

type hookedEntry struct {
	pn  string
	key []byte
}

func (r *Receiver) work(envs []Envelope, out []Result, groups <-chan []int) {
	w := &worker{r: r, envs: envs, out: out, b: r.opts.DB.NewBatch(), seen: map[string]bool{}, now: r.opts.Now()}
	for idx := range groups {
		w.group(idx)
	}
	w.commit()
}

// group decrypts one user's envelopes into the worker's batch.
func (w *worker) group(idx []int) {
	r, out := w.r, w.out
	first := w.envs[idx[0]]
	setAll := func(status, code string) {
		for _, i := range idx {
			if out[i].Status == "" {
				out[i].Status, out[i].Code = status, code
			}
		}
	}
	pnID, ok := r.opts.Tenants.PhoneNumberID(first.To)
	var biz *tenant.Business
	if ok {
		var err error
		if biz, err = r.opts.Tenants.ByPhoneNumberID(pnID); err != nil {
			ok = false
		}
	}
	if !ok {
		setAll(platform.StatusError, CodeUnknownBusiness)
		r.count("unknown_business")
		return
	}
	rcpt := r.opts.Sealer.Lookup(heraldtype.QueueRecipient(biz.ID, first.From))
	lock := signal.PeerKey(first.To, rcpt)
	if !r.opts.Locks.TryLock(lock) {
		setAll(platform.StatusError, CodeRetry) // Herald is sending to this user right now
		r.count("busy")
		return
	}
	w.locks = append(w.locks, lock)
	w.forget = append(w.forget, func() { r.opts.Sessions.Forget(first.To, rcpt) })
	for _, i := range idx {
		e := &w.envs[i]
		if w.seen[e.ID] {
			out[i].Status = platform.StatusAccepted // the same envelope twice in one POST
			continue
		}
		if _, dup, err := r.opts.DB.GetCopy(msgKey(e.ID)); err != nil {
			out[i].Status, out[i].Code = platform.StatusError, CodeRetry
			continue
		} else if dup {
			out[i].Status = platform.StatusAccepted // invariant 10: never decrypted or forwarded twice
			r.count("duplicate")
			continue
		}
		body, err := r.decrypt(w.b, e, rcpt, w.now)
		if err != nil {
			out[i].Status, out[i].Code = platform.StatusError, CodeBadMessage
			r.count("bad_message")
			r.opts.Logger.Debug("inbound: envelope not decrypted; the device will reset its session", "err", err)
			continue
		}
		if r.opts.OptOuts != nil && ratelimit.IsStop(body, biz.StopKeywords) {
			// The user asked the business to stop: recorded in the same
			// batch; the message still reaches the business.
			if err := r.opts.OptOuts.OptOut(w.b, biz.ID, e.From, w.now); err != nil {
				out[i].Status, out[i].Code = platform.StatusError, CodeRetry
				continue
			}
			r.count("stop")
		}
		exp := w.now.Add(TTL).Unix()
		m := Message{ID: e.ID, BusinessID: biz.ID, PhoneNumberID: pnID, From: e.From, DeviceID: e.DeviceID, TS: w.now.Unix(), Body: body, Expires: exp}
		if e.TS > 0 && e.TS <= w.now.Unix() {
			m.TS = e.TS
		}
		plain, _ := json.Marshal(&m)
		w.b.Set(msgKey(e.ID), r.opts.Sealer.Seal(binary.BigEndian.AppendUint64(nil, uint64(exp)), plain), nil)
		w.b.Set(expiryKey(exp, e.ID), nil, nil)
		if r.opts.Webhooks != nil {
			if k := r.opts.Webhooks.HookMessage(w.b, biz.ID, pnID, e.ID, e.From, body, m.TS, exp); k != nil {
				w.hooked = append(w.hooked, hookedEntry{pnID, k})
			}
		}
		w.seen[e.ID] = true
		w.accepted = append(w.accepted, i)
	}
}

// commit writes the worker's batch, answers what it holds, and releases
// the pairs' locks.
func (w *worker) commit() {
	r := w.r
	defer func() {
		for _, l := range w.locks {
			r.opts.Locks.Unlock(l)
		}
	}()
	if err := r.opts.DB.Commit(w.b, true); err != nil {
		for _, f := range w.forget {
			f() // the cache holds what did not reach the disk
		}
		r.opts.Logger.Warn("inbound: could not store envelopes; the platform will send them again", "err", err)
		for _, i := range w.accepted {
			w.out[i].Status, w.out[i].Code = platform.StatusError, CodeRetry
		}
		return
	}
	for _, i := range w.accepted {
		w.out[i].Status = platform.StatusAccepted
		r.count("accepted")
	}
	for _, h := range w.hooked {
		r.opts.Webhooks.Committed(h.pn, h.key)
	}
}

// decrypt opens one envelope into b and checks its plaintext: the
// contract's JSON, naming the envelope's id and sender, a text of valid
// UTF-8 within MaxBodyBytes.
func (r *Receiver) decrypt(b *pebble.Batch, e *Envelope, rcpt signal.Recipient, now time.Time) (string, error) {
	ct, err := base64.StdEncoding.DecodeString(e.Ciphertext)
	if err != nil {
		return "", fmt.Errorf("ciphertext is not base64: %w", err)
	}
	pt, err := r.opts.Sessions.Receive(b, e.To, rcpt, e.From, e.DeviceID, e.Type, ct, now)
	if err != nil {
		return "", err
	}
	var p platform.Plaintext
	if err := gojson.Unmarshal(pt, &p); err != nil {
		return "", fmt.Errorf("plaintext is not the contract's JSON: %w", err)
	}
	switch {
	case p.ID != e.ID || p.From != e.From:
		return "", errors.New("plaintext names another id or sender than its envelope")
	case p.Type != "text" || p.Text == nil:
		return "", fmt.Errorf("unsupported message type %q", p.Type)
	case p.Text.Body == "" || len(p.Text.Body) > MaxBodyBytes || !utf8.ValidString(p.Text.Body):
		return "", errors.New("text body empty, too long or not UTF-8")
	}
	return p.Text.Body, nil
}
