package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	gojson "github.com/goccy/go-json"
	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/seal"
)

// Config is one phone number's webhook.
type Config struct {
	URL    string `json:"url"`
	Secret string `json:"secret"`
	// VerifyToken, when given, makes Set run the Cloud API verification
	// request first (GET url?hub.mode=subscribe&hub.verify_token=…&hub.challenge=…):
	// the URL is accepted only when the answer's body is the challenge.
	// Kept sealed with the configuration, never shown.
	VerifyToken string `json:"verify_token,omitempty"`
}

// ErrInvalid describes a bad webhook configuration.
var ErrInvalid = errors.New("webhook: url must be an absolute http(s) URL and secret 8-256 characters")

// Validate checks a configuration.
func (c Config) Validate() error {
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || len(c.URL) > 2048 ||
		len(c.Secret) < 8 || len(c.Secret) > 256 || len(c.VerifyToken) > 256 {
		return ErrInvalid
	}
	return nil
}

// ErrVerification: the endpoint did not answer the verification request
// with its challenge.
var ErrVerification = errors.New("webhook: the URL did not pass the verification request")

// verify makes the Cloud API verification request to c.URL and checks that
// the answer's body is the challenge (a 2xx, read to MaxReplyBytes).
func (s *Sender) verify(c Config) error {
	u, err := url.Parse(c.URL)
	if err != nil {
		return ErrInvalid
	}
	ch := make([]byte, 16)
	rand.Read(ch)
	challenge := hex.EncodeToString(ch)
	q := u.Query()
	q.Set("hub.mode", "subscribe")
	q.Set("hub.verify_token", c.VerifyToken)
	q.Set("hub.challenge", challenge)
	u.RawQuery = q.Encode()
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(u.String())
	req.Header.SetMethod("GET")
	if err := s.client.DoTimeout(req, resp, s.opts.Timeout); err != nil {
		if errors.Is(err, ErrForbiddenAddress) {
			return err
		}
		return fmt.Errorf("%w: the request failed (%v)", ErrVerification, err)
	}
	if sc := resp.StatusCode(); sc < 200 || sc >= 300 {
		return fmt.Errorf("%w: it answered HTTP %d", ErrVerification, sc)
	}
	if got := strings.TrimSpace(string(resp.Body())); got != challenge {
		return fmt.Errorf("%w: its answer was not the hub.challenge sent", ErrVerification)
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
	// Inbound is set for a user's message to the business (then Status is
	// empty, RecipientID is the user's number and Body the text).
	Inbound bool   `json:"in,omitempty"`
	Body    string `json:"body,omitempty"`
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
	// MaxBacklog caps one phone number's undelivered statuses; beyond it
	// new ones are dropped (counted); default 100,000.
	MaxBacklog int
	// EntryTTL keeps a status whose message's expiry is unknown at most
	// this long after it happened; default 30 days (the longest TTL).
	EntryTTL time.Duration
	// SweepInterval between sweeps of expired statuses; default 1 minute.
	SweepInterval time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Allow lists address ranges webhooks may reach besides public ones
	// (--webhook-allow); loopback, private, link-local, multicast and
	// metadata destinations are refused otherwise.
	Allow []netip.Prefix
	// DisplayNumber gives a business phone number id's digits (the
	// payload's metadata.display_phone_number); nil leaves it empty.
	DisplayNumber func(phoneNumberID string) string
	// MaxReplyBytes of an endpoint's answer are read at most; default 4 KiB.
	MaxReplyBytes int
	// Concurrency: endpoints posted to at once; default 16 (a slow endpoint
	// holds one of them, never the others' deliveries).
	Concurrency int
}

// Sender owns webhook configs and their outboxes.
type Sender struct {
	opts  Options
	guard guard
	// replPut, replDel: cluster mode's replication of configurations.
	replPut  func(pn string, sealed []byte) error
	replDel  func(pn string) error
	slots    chan struct{}  // deliveries in flight (Concurrency)
	inflight sync.WaitGroup // the loop's deliveries, waited for by Close
	client   *fasthttp.Client
	seq      atomic.Uint64
	wake     chan struct{}

	mu struct {
		sync.Mutex
		configs map[string]Config    // phone_number_id → config
		retryAt map[string]time.Time // phone_number_id → next attempt
		fails   map[string]int
		backlog map[string]int       // phone_number_id → undelivered statuses
		busy    map[string]bool      // phone_number_id → a delivery in flight
		lastErr map[string]lastError // phone_number_id → the last failed attempt
		// cursor: the key after the last delivered entry. Entries get their
		// sequence from the single status writer, which commits in sequence
		// order, so nothing can appear behind it; starting there skips the
		// tombstones of everything already delivered.
		cursor map[string][]byte
		// rewind: the lowest key of an entry committed out of sequence
		// order (inbound messages, from concurrent batches) since pn's
		// cursor was last moved; the next move goes no further than it.
		rewind map[string][]byte
	}
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	started atomic.Bool
}

type lastError struct {
	msg string
	at  time.Time
}

// State is a phone number's webhook as its business may see it (never the
// secret).
type State struct {
	URL           string `json:"url"`
	Backlog       int    `json:"backlog"`
	LastError     string `json:"last_error,omitempty"`
	LastErrorAt   string `json:"last_error_at,omitempty"`   // heraldtype.FormatTime
	NextAttemptAt string `json:"next_attempt_at,omitempty"` // heraldtype.FormatTime
}

// entryMark starts an outbox value: the entry's expiry (unix seconds, 8
// bytes) follows in the clear, then the sealed entry, so a sweep drops
// expired entries without opening them. Values without it (written before
// session 12) are delivered as before and never swept.
const entryMark = 0xE1

func cfgKey(pn string) []byte { return append([]byte("wH"), pn...) }
func outKey(pn string, seq uint64) []byte {
	k := append([]byte("wQ"), byte(len(pn)))
	k = append(k, pn...)
	return binary.BigEndian.AppendUint64(k, seq)
}

// EnsureDefaults fills the zero fields of o with their defaults (the one
// place they are written).
func (o *Options) EnsureDefaults() {
	if o.BatchSize == 0 {
		o.BatchSize = 1000
	}
	if o.BackoffBase == 0 {
		o.BackoffBase = time.Second
	}
	if o.BackoffCap == 0 {
		o.BackoffCap = 5 * time.Minute
	}
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Second
	}
	if o.MaxReplyBytes == 0 {
		o.MaxReplyBytes = 4 << 10
	}
	if o.Concurrency == 0 {
		o.Concurrency = 16
	}
	if o.MaxBacklog == 0 {
		o.MaxBacklog = 100_000
	}
	if o.EntryTTL == 0 {
		o.EntryTTL = heraldtype.MaxTTL
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = time.Minute
	}
	if o.Now == nil {
		o.Now = clock.Wall
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// New loads webhook configurations.
func New(opts Options) (*Sender, error) {
	opts.EnsureDefaults()
	g := guard{allow: opts.Allow}
	s := &Sender{opts: opts, guard: g, client: &fasthttp.Client{ReadTimeout: opts.Timeout, WriteTimeout: opts.Timeout,
		MaxResponseBodySize: opts.MaxReplyBytes, MaxConnsPerHost: 4,
		Dial: func(addr string) (net.Conn, error) { return g.dial(addr, opts.Timeout) }},
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	s.mu.configs, s.mu.retryAt, s.mu.fails = map[string]Config{}, map[string]time.Time{}, map[string]int{}
	s.mu.cursor = map[string][]byte{}
	s.mu.rewind = map[string][]byte{}
	s.mu.backlog, s.mu.lastErr, s.mu.busy = map[string]int{}, map[string]lastError{}, map[string]bool{}
	s.slots = make(chan struct{}, opts.Concurrency)
	s.seq.Store(uint64(clock.Wall().UnixNano())) // a sequence start, not a time: the wall clock only makes it grow across restarts
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
	if err := s.countBacklog(); err != nil {
		return nil, err
	}
	if opts.Metrics != nil {
		opts.Metrics.GaugeFunc("webhook_backlog", "Statuses waiting in webhook outboxes (all phone numbers).", func() float64 {
			s.mu.Lock()
			defer s.mu.Unlock()
			n := 0
			for _, b := range s.mu.backlog {
				n += b
			}
			return float64(n)
		})
	}
	return s, nil
}

// countBacklog counts the stored outbox entries of each phone number.
func (s *Sender) countBacklog() error {
	it, err := s.opts.DB.NewIter(&pebble.IterOptions{LowerBound: []byte("wQ"), UpperBound: []byte("wR")})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if pn, ok := outKeyPN(it.Key()); ok {
			s.mu.backlog[pn]++
		}
	}
	return it.Error()
}

// outKeyPN is the phone number id of an outbox key.
func outKeyPN(k []byte) (string, bool) {
	if len(k) < 3 || len(k) < 3+int(k[2])+8 {
		return "", false
	}
	return string(k[3 : 3+int(k[2])]), true
}

// State reports pn's webhook, its backlog and its last failure.
func (s *Sender) State(pn string) (State, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.mu.configs[pn]
	if !ok {
		return State{}, false
	}
	st := State{URL: c.URL, Backlog: s.mu.backlog[pn]}
	if le, ok := s.mu.lastErr[pn]; ok {
		st.LastError, st.LastErrorAt = le.msg, heraldtype.FormatTime(le.at)
	}
	if r, ok := s.mu.retryAt[pn]; ok && st.Backlog > 0 {
		st.NextAttemptAt = heraldtype.FormatTime(r)
	}
	return st, true
}

func (s *Sender) dropped(reason string, n int) {
	if s.opts.Metrics != nil && n > 0 {
		s.opts.Metrics.WebhookDropped.WithLabelValues(reason).Add(float64(n))
	}
}

// SetReplicator makes every webhook change go through put (a sealed
// configuration) or del first (cluster mode: a replicated KV bucket); the
// other nodes apply it with ApplyConfig and ApplyDelete.
func (s *Sender) SetReplicator(put func(pn string, sealed []byte) error, del func(pn string) error) {
	s.replPut, s.replDel = put, del
}

// ApplyConfig stores a webhook configuration another node (or this one)
// replicated.
func (s *Sender) ApplyConfig(pn string, sealed []byte) error {
	plain, err := s.opts.Sealer.Open(sealed)
	if err != nil {
		return fmt.Errorf("webhook: replicated configuration unreadable: %w", err)
	}
	var c Config
	if err := gojson.Unmarshal(plain, &c); err != nil {
		return fmt.Errorf("webhook: replicated configuration corrupt: %w", err)
	}
	return s.store(pn, sealed, c)
}

// store commits a configuration (sealed) and makes it current.
func (s *Sender) store(pn string, sealed []byte, c Config) error {
	b := s.opts.DB.NewBatch()
	b.Set(cfgKey(pn), sealed, nil)
	if err := s.opts.DB.Commit(b, true); err != nil {
		return err
	}
	s.mu.Lock()
	s.mu.configs[pn] = c
	delete(s.mu.retryAt, pn)
	s.mu.Unlock()
	return nil
}

// ApplyDelete removes a webhook another node's Delete replicated.
func (s *Sender) ApplyDelete(pn string) error {
	_, err := s.del(pn, false)
	return err
}

// Set stores a phone number's webhook.
func (s *Sender) Set(pn string, c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if err := s.guard.checkURL(c.URL); err != nil {
		return err
	}
	if c.VerifyToken != "" {
		if err := s.verify(c); err != nil {
			return err
		}
	}
	v, _ := gojson.Marshal(c)
	sealed := s.opts.Sealer.Seal(nil, v)
	if s.replPut != nil {
		if err := s.replPut(pn, sealed); err != nil {
			return err
		}
	}
	return s.store(pn, sealed, c)
}

// Delete removes a phone number's webhook and drops the statuses waiting
// for it (they would never be delivered). It reports whether there was one.
func (s *Sender) Delete(pn string) (bool, error) { return s.del(pn, true) }

func (s *Sender) del(pn string, replicate bool) (bool, error) {
	s.mu.Lock()
	_, ok := s.mu.configs[pn]
	s.mu.Unlock()
	if !ok {
		return false, nil
	}
	if replicate && s.replDel != nil {
		if err := s.replDel(pn); err != nil {
			return true, err
		}
	}
	lo := outKey(pn, 0)
	b := s.opts.DB.NewBatch()
	b.Delete(cfgKey(pn), nil)
	b.DeleteRange(lo, kv.PrefixEnd(lo[:3+len(pn)]), nil)
	if err := s.opts.DB.Commit(b, true); err != nil {
		return true, err
	}
	s.mu.Lock()
	s.dropped("deleted", s.mu.backlog[pn])
	delete(s.mu.configs, pn)
	delete(s.mu.backlog, pn)
	delete(s.mu.retryAt, pn)
	delete(s.mu.fails, pn)
	delete(s.mu.lastErr, pn)
	delete(s.mu.cursor, pn)
	s.mu.Unlock()
	return true, nil
}

// Hook is engine.Options.StatusHook: it queues the changes of phone numbers
// that have a webhook into the status batch. Each entry keeps its message's
// expiry (or EntryTTL after the status when that is unknown): past it, it is
// dropped undelivered (invariant 11: it holds the recipient's number). A
// phone number's outbox holds at most MaxBacklog entries; more are dropped
// and counted.
func (s *Sender) Hook(b *pebble.Batch, changes []heraldtype.StatusChange) {
	s.mu.Lock()
	defer s.mu.Unlock()
	full := 0
	for _, c := range changes {
		if _, ok := s.mu.configs[c.PhoneNumberID]; !ok {
			continue
		}
		if s.mu.backlog[c.PhoneNumberID] >= s.opts.MaxBacklog {
			full++
			continue
		}
		e := Entry{ID: c.MessageID, Status: c.Status, Timestamp: heraldtype.Timestamp(c.TS), RecipientID: c.Recipient,
			BusinessID: c.BusinessID, Code: c.Code}
		v, _ := gojson.Marshal(struct {
			Entry
			B string `json:"b"`
		}{e, c.BusinessID})
		exp := c.Expires
		if exp == 0 {
			exp = time.Unix(c.TS, 0).Add(s.opts.EntryTTL).Unix()
		}
		val := binary.BigEndian.AppendUint64([]byte{entryMark}, uint64(exp))
		b.Set(outKey(c.PhoneNumberID, s.seq.Add(1)), s.opts.Sealer.Seal(val, v), nil)
		s.mu.backlog[c.PhoneNumberID]++
	}
	s.dropped("backlog_full", full)
}

// HookMessage queues a user's message to the business number pn into b (the
// batch that stores the message), if pn has a webhook: it goes out with the
// statuses, as a "messages" change. It returns the entry's key (nil when
// nothing was queued): once b is committed, pass it to Committed.
func (s *Sender) HookMessage(b *pebble.Batch, businessID, pn, id, from, body string, ts, expires int64) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.mu.configs[pn]; !ok {
		return nil
	}
	if s.mu.backlog[pn] >= s.opts.MaxBacklog {
		s.dropped("backlog_full", 1)
		return nil
	}
	v, _ := gojson.Marshal(struct {
		Entry
		B string `json:"b"`
	}{Entry{ID: id, Timestamp: heraldtype.Timestamp(ts), RecipientID: from, Inbound: true, Body: body}, businessID})
	val := binary.BigEndian.AppendUint64([]byte{entryMark}, uint64(expires))
	k := outKey(pn, s.seq.Add(1))
	b.Set(k, s.opts.Sealer.Seal(val, v), nil)
	s.mu.backlog[pn]++
	return k
}

// Committed tells the sender that the entry at key (HookMessage) is on
// disk. Such entries commit in no particular order among themselves and
// the statuses: one may land behind pn's cursor, which moves back to it.
func (s *Sender) Committed(pn string, key []byte) {
	s.mu.Lock()
	if c := s.mu.cursor[pn]; c != nil && bytes.Compare(key, c) < 0 {
		s.mu.cursor[pn] = key
	}
	if rw := s.mu.rewind[pn]; rw == nil || bytes.Compare(key, rw) < 0 {
		s.mu.rewind[pn] = key
	}
	s.mu.Unlock()
	s.Notify(nil)
}

// entryExpiry reads an outbox value's expiry and its sealed part; legacy
// values have no expiry (0).
func entryExpiry(v []byte) (exp int64, sealed []byte) {
	if len(v) >= 9 && v[0] == entryMark {
		return int64(binary.BigEndian.Uint64(v[1:9])), v[9:]
	}
	return 0, v
}

// Sweep deletes every outbox entry past its expiry, delivered or not (the
// endpoint may be down for good), and returns how many it dropped.
func (s *Sender) Sweep() (int, error) {
	now := s.opts.Now().Unix()
	it, err := s.opts.DB.NewIter(&pebble.IterOptions{LowerBound: []byte("wQ"), UpperBound: []byte("wR")})
	if err != nil {
		return 0, err
	}
	b := s.opts.DB.NewBatch()
	per := map[string]int{}
	n := 0
	for it.First(); it.Valid(); it.Next() {
		if exp, _ := entryExpiry(it.Value()); exp != 0 && exp <= now {
			b.Delete(append([]byte(nil), it.Key()...), nil)
			if pn, ok := outKeyPN(it.Key()); ok {
				per[pn]++
			}
			n++
		}
	}
	if err := it.Close(); err != nil {
		b.Close()
		return 0, err
	}
	if n == 0 {
		b.Close()
		return 0, nil
	}
	if err := s.opts.DB.Commit(b, false); err != nil {
		return 0, err
	}
	s.mu.Lock()
	for pn, k := range per {
		s.mu.backlog[pn] = max(0, s.mu.backlog[pn]-k)
	}
	s.mu.Unlock()
	s.dropped("expired", n)
	return n, nil
}

// Notify wakes the sender (engine.Options.OnStatus).
func (s *Sender) Notify([]heraldtype.StatusChange) {
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
		sweep := time.NewTicker(s.opts.SweepInterval)
		defer sweep.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-s.wake:
			case <-t.C:
			case <-sweep.C:
				func() {
					defer s.recoverPanic("sweep")
					if _, err := s.Sweep(); err != nil {
						s.opts.Logger.Warn("webhook: sweep of expired statuses failed", "err", err)
					}
				}()
			}
			// A delivery that sent something wakes the loop for its next batch.
			s.dispatch(func(n int) {
				if n > 0 {
					s.Notify(nil)
				}
			}, &s.inflight)
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
		s.inflight.Wait()
	})
}

// RunOnce posts at most one batch per phone number that is due and waits for
// them; it returns how many statuses it delivered (tests, and the node's
// shutdown).
func (s *Sender) RunOnce(ctx context.Context) int {
	var total atomic.Int64
	var wg sync.WaitGroup
	s.dispatch(func(n int) { total.Add(int64(n)) }, &wg)
	wg.Wait()
	return int(total.Load())
}

// dispatch starts a delivery for every due phone number that has none in
// flight, each in a goroutine of its own (at most Concurrency at once): a slow
// endpoint holds its own slot for at most Timeout, never another's batches.
// done gets each delivery's count.
func (s *Sender) dispatch(done func(int), wg *sync.WaitGroup) {
	now := s.opts.Now()
	s.mu.Lock()
	var due []string
	for pn := range s.mu.configs {
		if now.After(s.mu.retryAt[pn]) && !s.mu.busy[pn] && s.mu.backlog[pn] > 0 {
			due = append(due, pn)
		}
	}
	s.mu.Unlock()
	for _, pn := range due {
		select {
		case s.slots <- struct{}{}:
		default:
			return // all slots busy: the next round starts the rest
		}
		s.mu.Lock()
		s.mu.busy[pn] = true
		s.mu.Unlock()
		wg.Add(1)
		go func() {
			n := 0
			defer func() {
				s.mu.Lock()
				delete(s.mu.busy, pn)
				s.mu.Unlock()
				<-s.slots
				done(n) // before Done: RunOnce reads the total once Wait returns
				wg.Done()
			}()
			defer s.recoverPanic("deliver")
			n = s.deliver(pn, now)
		}()
	}
}

// recoverPanic keeps a panic in one delivery (a peer's answer Herald did not
// expect) from stopping the process: logged and counted, the loop goes on.
func (s *Sender) recoverPanic(where string) {
	if r := recover(); r != nil {
		s.opts.Logger.Error("webhook: recovered from a panic", "where", where, "panic", fmt.Sprint(r))
		if s.opts.Metrics != nil {
			s.opts.Metrics.Panics.WithLabelValues("webhook_" + where).Inc()
		}
	}
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
	expired, unreadable := 0, 0
	for it.First(); it.Valid() && len(entries) < s.opts.BatchSize; it.Next() {
		keys = append(keys, append([]byte(nil), it.Key()...))
		exp, sealed := entryExpiry(it.Value())
		if exp != 0 && exp <= now.Unix() {
			expired++ // past its message's TTL: dropped with the batch, unsent
			continue
		}
		plain, err := s.opts.Sealer.Open(sealed)
		if err != nil {
			unreadable++ // dropped with the batch
			continue
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
	if len(entries) == 0 { // nothing left to send in this batch
		s.remove(pn, keys)
		s.dropped("expired", expired)
		s.dropped("unreadable", unreadable)
		return len(keys)
	}
	s.mu.Lock()
	cfg := s.mu.configs[pn]
	s.mu.Unlock()
	display := ""
	if s.opts.DisplayNumber != nil {
		display = s.opts.DisplayNumber(pn)
	}
	body := Payload(biz, pn, display, entries)
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
	if errors.Is(err, fasthttp.ErrBodyTooLarge) && resp.StatusCode() >= 200 && resp.StatusCode() < 300 {
		err = nil // a 2xx is an acknowledgement; what it says past MaxReplyBytes is not read
	}
	if err != nil || resp.StatusCode() < 200 || resp.StatusCode() >= 300 {
		msg := ""
		if err != nil {
			msg = "request failed: " + err.Error()
		} else {
			msg = "endpoint answered HTTP " + strconv.Itoa(resp.StatusCode())
		}
		// Retried with capped backoff while the entries live: each is
		// dropped at its expiry (deliver above, or Sweep).
		s.mu.Lock()
		s.mu.fails[pn]++
		d := s.opts.BackoffBase << min(s.mu.fails[pn], 20)
		if d > s.opts.BackoffCap || d <= 0 {
			d = s.opts.BackoffCap
		}
		s.mu.retryAt[pn] = now.Add(d)
		s.mu.lastErr[pn] = lastError{msg: msg, at: now}
		s.mu.Unlock()
		if s.opts.Metrics != nil {
			s.opts.Metrics.WebhookPosts.WithLabelValues("failed").Inc()
		}
		return 0
	}
	s.remove(pn, keys)
	s.dropped("expired", expired)
	s.dropped("unreadable", unreadable)
	s.mu.Lock()
	delete(s.mu.fails, pn)
	s.mu.Unlock()
	if s.opts.Metrics != nil {
		s.opts.Metrics.WebhookPosts.WithLabelValues("ok").Inc()
	}
	return len(entries)
}

// remove deletes delivered (or dropped) entries and moves pn's cursor past them.
func (s *Sender) remove(pn string, keys [][]byte) {
	b := s.opts.DB.NewBatch()
	for _, k := range keys {
		b.Delete(k, nil)
	}
	if err := s.opts.DB.Commit(b, false); err != nil {
		return
	}
	s.mu.Lock()
	next := append(append([]byte(nil), keys[len(keys)-1]...), 0) // just past the last removed key
	if rw := s.mu.rewind[pn]; rw != nil {
		if bytes.Compare(rw, next) < 0 {
			next = rw // an entry committed behind the cursor meanwhile
		}
		delete(s.mu.rewind, pn)
	}
	s.mu.cursor[pn] = next
	s.mu.backlog[pn] = max(0, s.mu.backlog[pn]-len(keys))
	s.mu.Unlock()
}

// Sign returns "sha256=<hex HMAC-SHA256(secret, body)>".
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Payload builds the Cloud-API-like webhook body; display is the business
// phone number's digits (metadata.display_phone_number).
func Payload(businessID, phoneNumberID, display string, entries []Entry) []byte {
	type status struct {
		ID          string                   `json:"id"`
		Status      string                   `json:"status"`
		Timestamp   string                   `json:"timestamp"`
		RecipientID string                   `json:"recipient_id,omitempty"`
		Errors      []heraldtype.StatusError `json:"errors,omitempty"`
	}
	type text struct {
		Body string `json:"body"`
	}
	type message struct {
		From      string `json:"from"`
		ID        string `json:"id"`
		Timestamp string `json:"timestamp"`
		Type      string `json:"type"`
		Text      text   `json:"text"`
	}
	type contact struct {
		WaID string `json:"wa_id"`
	}
	var sts []status
	var msgs []message
	var contacts []contact
	for _, e := range entries {
		if e.Inbound {
			msgs = append(msgs, message{From: e.RecipientID, ID: e.ID, Timestamp: e.Timestamp, Type: "text", Text: text{e.Body}})
			if !slices.Contains(contacts, contact{e.RecipientID}) {
				contacts = append(contacts, contact{e.RecipientID})
			}
			continue
		}
		sts = append(sts, status{ID: e.ID, Status: e.Status, Timestamp: e.Timestamp, RecipientID: e.RecipientID,
			Errors: heraldtype.StatusErrors(heraldtype.StoredCode(e.Code))})
	}
	metadata := map[string]any{"display_phone_number": display, "phone_number_id": phoneNumberID}
	// Statuses and messages are separate changes, as the Cloud API sends them.
	var changes []any
	if len(sts) > 0 {
		changes = append(changes, map[string]any{"field": "messages", "value": map[string]any{"messaging_product": "whatsapp",
			"metadata": metadata, "statuses": sts}})
	}
	if len(msgs) > 0 {
		changes = append(changes, map[string]any{"field": "messages", "value": map[string]any{"messaging_product": "whatsapp",
			"metadata": metadata, "contacts": contacts, "messages": msgs}})
	}
	body, _ := gojson.Marshal(map[string]any{
		"object": "whatsapp_business_account",
		"entry":  []any{map[string]any{"id": businessID, "changes": changes}},
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

// Message is a user's message as a webhook receiver reads it.
type Message struct {
	From      string `json:"from"`
	ID        string `json:"id"`
	Timestamp string `json:"timestamp"`
	Type      string `json:"type"`
	Text      struct {
		Body string `json:"body"`
	} `json:"text"`
}

// ParseMessages reads the users' messages out of a webhook body.
func ParseMessages(body []byte) ([]Message, error) {
	var p struct {
		Entry []struct {
			Changes []struct {
				Value struct {
					Messages []Message `json:"messages"`
				} `json:"value"`
			} `json:"changes"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, err
	}
	var out []Message
	for _, e := range p.Entry {
		for _, c := range e.Changes {
			out = append(out, c.Value.Messages...)
		}
	}
	return out, nil
}
