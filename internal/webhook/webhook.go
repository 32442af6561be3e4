// Package webhook delivers status updates to each business phone number's
// webhook: batched, Cloud-API-shaped, signed X-Hub-Signature-256, retried
// with backoff, persisted (sealed: entries carry recipient numbers) in the
// same batch as the status transitions they report, so a restart drops none,
// and never in the delivery path: a slow or dead endpoint only grows its own
// outbox.
package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	gojson "github.com/goccy/go-json"
	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/seal"
)

// Config is one phone number's webhook.
type Config struct {
	URL    string `json:"url"`
	Secret string `json:"secret"`
}

// ErrInvalid describes a bad webhook configuration.
var ErrInvalid = errors.New("webhook: url must be an absolute http(s) URL and secret 8-256 characters")

// Validate checks a configuration.
func (c Config) Validate() error {
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(c.URL) > 2048 ||
		len(c.Secret) < 8 || len(c.Secret) > 256 {
		return ErrInvalid
	}
	return nil
}

// Entry is one queued status, as the Cloud API reports it.
type Entry struct {
	ID          string `json:"id"`
	Status      string `json:"status"`
	Timestamp   string `json:"timestamp"`
	RecipientID string `json:"recipient_id,omitempty"`
	BusinessID  string `json:"-"`
	Code        int    `json:"code,omitempty"`
}

// Options configure a Sender.
type Options struct {
	DB      *kv.DB
	Sealer  *seal.Sealer
	Metrics *metrics.Metrics
	Logger  *slog.Logger
	// BatchSize statuses per POST; default 1000.
	BatchSize int
	// BackoffBase/Cap for a failing endpoint; default 1s / 5m.
	BackoffBase, BackoffCap time.Duration
	// Timeout per POST; default 10s.
	Timeout time.Duration
}

// Sender owns webhook configs and their outboxes.
type Sender struct {
	opts   Options
	client *fasthttp.Client
	seq    atomic.Uint64
	wake   chan struct{}

	mu struct {
		sync.Mutex
		configs map[string]Config    // phone_number_id → config
		retryAt map[string]time.Time // phone_number_id → next attempt
		fails   map[string]int
		// cursor: the key after the last delivered entry. Entries get their
		// sequence from the single status writer, which commits in sequence
		// order, so nothing can appear behind it; starting there skips the
		// tombstones of everything already delivered.
		cursor map[string][]byte
	}
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	started atomic.Bool
}

func cfgKey(pn string) []byte { return append([]byte("wH"), pn...) }
func outKey(pn string, seq uint64) []byte {
	k := append([]byte("wQ"), byte(len(pn)))
	k = append(k, pn...)
	return binary.BigEndian.AppendUint64(k, seq)
}

// New loads webhook configurations.
func New(opts Options) (*Sender, error) {
	if opts.BatchSize == 0 {
		opts.BatchSize = 1000
	}
	if opts.BackoffBase == 0 {
		opts.BackoffBase = time.Second
	}
	if opts.BackoffCap == 0 {
		opts.BackoffCap = 5 * time.Minute
	}
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Sender{opts: opts, client: &fasthttp.Client{ReadTimeout: opts.Timeout, WriteTimeout: opts.Timeout},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	s.mu.configs, s.mu.retryAt, s.mu.fails = map[string]Config{}, map[string]time.Time{}, map[string]int{}
	s.mu.cursor = map[string][]byte{}
	s.seq.Store(uint64(time.Now().UnixNano()))
	it, err := opts.DB.NewIter(&pebble.IterOptions{LowerBound: []byte("wH"), UpperBound: []byte("wI")})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		plain, err := opts.Sealer.Open(it.Value())
		if err != nil {
			return nil, fmt.Errorf("webhook: config unreadable: %w", err)
		}
		var c Config
		gojson.Unmarshal(plain, &c)
		s.mu.configs[string(it.Key()[2:])] = c
	}
	return s, nil
}

// Set stores a phone number's webhook.
func (s *Sender) Set(pn string, c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	v, _ := gojson.Marshal(c)
	b := s.opts.DB.NewBatch()
	b.Set(cfgKey(pn), s.opts.Sealer.Seal(nil, v), nil)
	if err := s.opts.DB.Commit(b, true); err != nil {
		return err
	}
	s.mu.Lock()
	s.mu.configs[pn] = c
	delete(s.mu.retryAt, pn)
	s.mu.Unlock()
	return nil
}

// Hook is engine.Options.StatusHook: it queues the changes of phone numbers
// that have a webhook into the status batch.
func (s *Sender) Hook(b *pebble.Batch, changes []engine.StatusChange) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range changes {
		if _, ok := s.mu.configs[c.PhoneNumberID]; !ok {
			continue
		}
		e := Entry{ID: c.MessageID, Status: c.Status, Timestamp: strconv.FormatInt(c.TS, 10), RecipientID: c.Recipient,
			BusinessID: c.BusinessID, Code: c.Code}
		v, _ := gojson.Marshal(struct {
			Entry
			B string `json:"b"`
		}{e, c.BusinessID})
		b.Set(outKey(c.PhoneNumberID, s.seq.Add(1)), s.opts.Sealer.Seal(nil, v), nil)
	}
}

// Notify wakes the sender (engine.Options.OnStatus).
func (s *Sender) Notify([]engine.StatusChange) {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Start runs the delivery loop.
func (s *Sender) Start() {
	s.started.Store(true)
	go func() {
		defer close(s.done)
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-s.wake:
			case <-t.C:
			}
			for s.RunOnce(context.Background()) > 0 {
				select {
				case <-s.stop:
					return
				default:
				}
			}
		}
	}()
}

// Close stops the loop; safe to call twice, and before Start (a node whose
// start failed closes what it built).
func (s *Sender) Close() {
	s.once.Do(func() {
		close(s.stop)
		if s.started.Load() {
			<-s.done
		}
	})
}

// RunOnce posts at most one batch per phone number that is due; it returns
// how many statuses it delivered.
func (s *Sender) RunOnce(ctx context.Context) int {
	now := time.Now()
	s.mu.Lock()
	var due []string
	for pn := range s.mu.configs {
		if now.After(s.mu.retryAt[pn]) {
			due = append(due, pn)
		}
	}
	s.mu.Unlock()
	total := 0
	for _, pn := range due {
		total += s.deliver(pn, now)
	}
	return total
}

func (s *Sender) deliver(pn string, now time.Time) int {
	lo := outKey(pn, 0)
	hi := kv.PrefixEnd(lo[:3+len(pn)])
	s.mu.Lock()
	if c := s.mu.cursor[pn]; c != nil {
		lo = c
	}
	s.mu.Unlock()
	it, err := s.opts.DB.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return 0
	}
	var keys [][]byte
	var entries []Entry
	biz := ""
	for it.First(); it.Valid() && len(entries) < s.opts.BatchSize; it.Next() {
		keys = append(keys, append([]byte(nil), it.Key()...))
		plain, err := s.opts.Sealer.Open(it.Value())
		if err != nil {
			continue // unreadable: dropped with the batch
		}
		var e struct {
			Entry
			B string `json:"b"`
		}
		gojson.Unmarshal(plain, &e)
		e.Entry.BusinessID = e.B
		biz = e.B
		entries = append(entries, e.Entry)
	}
	it.Close()
	if len(keys) == 0 {
		return 0
	}
	s.mu.Lock()
	cfg := s.mu.configs[pn]
	s.mu.Unlock()
	body := Payload(biz, pn, entries)
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(cfg.URL)
	req.Header.SetMethod("POST")
	req.Header.SetContentType("application/json")
	req.Header.Set("X-Hub-Signature-256", Sign(cfg.Secret, body))
	req.SetBodyRaw(body)
	err = s.client.DoTimeout(req, resp, s.opts.Timeout)
	if err != nil || resp.StatusCode() < 200 || resp.StatusCode() >= 300 {
		s.mu.Lock()
		s.mu.fails[pn]++
		d := s.opts.BackoffBase << min(s.mu.fails[pn], 20)
		if d > s.opts.BackoffCap || d <= 0 {
			d = s.opts.BackoffCap
		}
		s.mu.retryAt[pn] = now.Add(d)
		s.mu.Unlock()
		if s.opts.Metrics != nil {
			s.opts.Metrics.WebhookPosts.WithLabelValues("failed").Inc()
		}
		return 0
	}
	b := s.opts.DB.NewBatch()
	for _, k := range keys {
		b.Delete(k, nil)
	}
	s.opts.DB.Commit(b, false)
	s.mu.Lock()
	delete(s.mu.fails, pn)
	s.mu.cursor[pn] = append(append([]byte(nil), keys[len(keys)-1]...), 0) // just past the last delivered key
	s.mu.Unlock()
	if s.opts.Metrics != nil {
		s.opts.Metrics.WebhookPosts.WithLabelValues("ok").Inc()
	}
	return len(entries)
}

// Sign returns "sha256=<hex HMAC-SHA256(secret, body)>".
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Payload builds the Cloud-API-like webhook body.
func Payload(businessID, phoneNumberID string, entries []Entry) []byte {
	type errObj struct {
		Code  int    `json:"code"`
		Title string `json:"title"`
	}
	type status struct {
		ID          string   `json:"id"`
		Status      string   `json:"status"`
		Timestamp   string   `json:"timestamp"`
		RecipientID string   `json:"recipient_id,omitempty"`
		Errors      []errObj `json:"errors,omitempty"`
	}
	sts := make([]status, 0, len(entries))
	for _, e := range entries {
		st := status{ID: e.ID, Status: e.Status, Timestamp: e.Timestamp, RecipientID: e.RecipientID}
		if e.Code != 0 {
			st.Errors = []errObj{{Code: e.Code, Title: heraldtype.CodeText(e.Code)}}
		}
		sts = append(sts, st)
	}
	body, _ := gojson.Marshal(map[string]any{
		"object": "whatsapp_business_account",
		"entry": []any{map[string]any{"id": businessID, "changes": []any{map[string]any{
			"field": "messages",
			"value": map[string]any{"messaging_product": "whatsapp",
				"metadata": map[string]any{"phone_number_id": phoneNumberID}, "statuses": sts},
		}}}},
	})
	return body
}

// Status is one status as a webhook receiver reads it.
type Status struct {
	ID          string `json:"id"`
	Status      string `json:"status"`
	Timestamp   string `json:"timestamp"`
	RecipientID string `json:"recipient_id"`
}

// ParsePayload reads the statuses out of a webhook body (the inverse of Payload).
func ParsePayload(body []byte) ([]Status, error) {
	var p struct {
		Entry []struct {
			Changes []struct {
				Value struct {
					Statuses []Status `json:"statuses"`
				} `json:"value"`
			} `json:"changes"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, err
	}
	var out []Status
	for _, e := range p.Entry {
		for _, c := range e.Changes {
			out = append(out, c.Value.Statuses...)
		}
	}
	return out, nil
}
