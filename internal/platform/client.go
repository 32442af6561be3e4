package platform

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	gojson "github.com/goccy/go-json"
	"github.com/valyala/fasthttp"
)

// Errors of a whole request. A *RequestError says whether retrying may help.
var ErrClientClosed = errors.New("platform: client closed")

// RequestError is a failure of a whole platform request.
type RequestError struct {
	Status     int           // HTTP status, 0 for transport errors
	Retryable  bool          // 429, 5xx, transport errors, garbage answers
	RetryAfter time.Duration // from Retry-After, if any
	Msg        string
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("platform: request failed (status %d, retryable %v): %s", e.Status, e.Retryable, e.Msg)
}

// ClientOptions configure a Client. Zero values take the defaults.
type ClientOptions struct {
	// BaseURL of the platform, e.g. http://127.0.0.1:9100. Required.
	BaseURL string
	// Secret is sent as "Authorization: Bearer <secret>".
	Secret string
	// Timeout per request; default 10s.
	Timeout time.Duration
	// MaxConns to the platform; default 64.
	MaxConns int
	// MaxBatch envelopes per /v1/messages request; default 512.
	MaxBatch int
	// Linger is how long a partial batch waits for company; default 2ms.
	Linger time.Duration
	// MaxInFlight bounds concurrent /v1/messages requests; default 16.
	MaxInFlight int
}

// Client is Herald's client of the platform API. Safe for concurrent use.
type Client struct {
	opts ClientOptions
	hc   *fasthttp.Client

	mu struct {
		sync.Mutex
		pending []pendingEnv
		timer   *time.Timer
		closed  bool
	}
	inflight chan struct{}
	wg       sync.WaitGroup
}

type pendingEnv struct {
	env  Envelope
	call *sendCall
	idx  int
}

// sendCall is one SendEach waiting for its envelopes' results, which the
// request goroutines write into its slices by index (each index once).
type sendCall struct {
	res     []Result
	errs    []error
	waiting atomic.Int64
	done    chan struct{} // closed with the last result
}

func (c *sendCall) set(idx int, res Result, err error) {
	c.res[idx], c.errs[idx] = res, err
	if c.waiting.Add(-1) == 0 {
		close(c.done)
	}
}

// NewClient validates opts and builds a client.
func NewClient(opts ClientOptions) (*Client, error) {
	if opts.BaseURL == "" {
		return nil, errors.New("platform: ClientOptions.BaseURL is required")
	}
	if opts.Timeout == 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.MaxConns == 0 {
		opts.MaxConns = 64
	}
	if opts.MaxBatch == 0 {
		opts.MaxBatch = 512
	}
	if opts.Linger == 0 {
		opts.Linger = 2 * time.Millisecond
	}
	if opts.MaxInFlight == 0 {
		opts.MaxInFlight = 16
	}
	c := &Client{opts: opts, inflight: make(chan struct{}, opts.MaxInFlight)}
	c.hc = &fasthttp.Client{
		MaxConnsPerHost:     opts.MaxConns,
		ReadTimeout:         opts.Timeout,
		WriteTimeout:        opts.Timeout,
		MaxIdleConnDuration: time.Minute,
		MaxResponseBodySize: 64 << 20,
	}
	return c, nil
}

// do POSTs body to path and decodes a 200 answer into out.
func (c *Client) do(ctx context.Context, path string, body []byte, out any) error {
	return c.doWith(ctx, path, body, func(b []byte) error { return json.Unmarshal(b, out) })
}

// doWith POSTs body to path and hands a 200 answer's body to decode (valid
// only during the call).
func (c *Client) doWith(ctx context.Context, path string, body []byte, decode func([]byte) error) error {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(c.opts.BaseURL + path)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType("application/json")
	if c.opts.Secret != "" {
		req.Header.Set("Authorization", "Bearer "+c.opts.Secret)
	}
	req.SetBodyRaw(body)
	timeout := c.opts.Timeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	if err := c.hc.DoTimeout(req, resp, timeout); err != nil {
		return &RequestError{Retryable: true, Msg: err.Error()}
	}
	st := resp.StatusCode()
	if st != fasthttp.StatusOK {
		e := &RequestError{Status: st, Retryable: st == 429 || st >= 500, Msg: truncate(resp.Body())}
		if ra := resp.Header.Peek("Retry-After"); len(ra) > 0 {
			if s, err := strconv.Atoi(string(ra)); err == nil {
				e.RetryAfter = time.Duration(s) * time.Second
			}
		}
		return e
	}
	if err := decode(resp.Body()); err != nil {
		return &RequestError{Status: st, Retryable: true, Msg: "answer is not the contract's JSON: " + err.Error()}
	}
	return nil
}

func truncate(b []byte) string {
	if len(b) > 200 {
		b = b[:200]
	}
	return string(b)
}

// Ping checks that the platform answers: a key query for no users. A
// transport failure, 401/403 (the secret is not accepted), 429 or 5xx is an
// error; any other answer means the platform is there.
func (c *Client) Ping(ctx context.Context) error {
	err := c.doWith(ctx, "/v1/keys/query", []byte(`{"users":[]}`), func([]byte) error { return nil })
	var re *RequestError
	if errors.As(err, &re) && re.Status >= 400 && re.Status < 500 && re.Status != 401 && re.Status != 403 && re.Status != 429 {
		return nil
	}
	return err
}

// QueryKeys fetches bundles for users, in requests of at most 1000 users.
func (c *Client) QueryKeys(ctx context.Context, users []string) (*KeysResponse, error) {
	all := &KeysResponse{}
	for len(users) > 0 {
		n := min(len(users), 1000)
		body, _ := gojson.Marshal(KeysQuery{Users: users[:n]})
		var r KeysResponse
		if err := c.do(ctx, "/v1/keys/query", body, &r); err != nil {
			return nil, err
		}
		all.Users = append(all.Users, r.Users...)
		all.Unknown = append(all.Unknown, r.Unknown...)
		users = users[n:]
	}
	return all, nil
}

// UploadKeys posts a business number's keys (the body of POST
// /v1/keys/upload) and returns how many unused one-time prekeys the
// platform now holds for it.
func (c *Client) UploadKeys(ctx context.Context, upload any) (int, error) {
	body, err := gojson.Marshal(upload)
	if err != nil {
		return 0, err
	}
	var r struct {
		PreKeys int `json:"prekeys"`
	}
	if err := c.do(ctx, "/v1/keys/upload", body, &r); err != nil {
		return 0, err
	}
	return r.PreKeys, nil
}

// Receipts posts read receipts (POST /v1/receipts).
func (c *Client) Receipts(ctx context.Context, receipts []Receipt) error {
	body, err := gojson.Marshal(map[string]any{"receipts": receipts})
	if err != nil {
		return err
	}
	return c.doWith(ctx, "/v1/receipts", body, func([]byte) error { return nil })
}

// SendNow sends envelopes in one request and returns one result per envelope,
// in envelope order. A result missing from the answer is reported as a
// retryable "unavailable" so nothing is silently taken as delivered.
func (c *Client) SendNow(ctx context.Context, envs []Envelope) ([]Result, error) {
	// The body is only read during do (fasthttp sends synchronously), so its
	// buffer goes back to the pool after; the answer is decoded into strings
	// of its own (or the envelopes').
	bp := bodyPool.Get().(*[]byte)
	body := AppendMessagesRequest((*bp)[:0], envs)
	// One result per envelope is the usual answer: room for them up front.
	results := make([]Result, 0, len(envs))
	err := c.doWith(ctx, "/v1/messages", body, func(b []byte) (err error) {
		results, err = DecodeMessagesResponse(b, envs, results)
		return err
	})
	*bp = body
	bodyPool.Put(bp)
	if err != nil {
		return nil, err
	}
	return MatchResults(envs, results), nil
}

var bodyPool = sync.Pool{New: func() any { return new([]byte) }}

// MatchResults returns one result per envelope, in envelope order. A result
// missing from the answer, or one with an unknown status, is reported as a
// retryable "unavailable" so nothing is silently taken as delivered.
func MatchResults(envs []Envelope, results []Result) []Result {
	out := make([]Result, len(envs))
	// The common answer lists the results in envelope order: take them as
	// they are, and match by (id, device) only when they are not.
	inOrder := len(results) == len(envs)
	for i, e := range envs {
		if !inOrder || results[i].ID != e.ID || results[i].DeviceID != e.DeviceID {
			return matchByKey(envs, results, out)
		}
		out[i] = checked(e, results[i], true)
	}
	return out
}

func matchByKey(envs []Envelope, results []Result, out []Result) []Result {
	type k struct {
		id  string
		dev uint32
	}
	got := make(map[k]Result, len(results))
	for _, res := range results {
		got[k{res.ID, res.DeviceID}] = res
	}
	for i, e := range envs {
		res, ok := got[k{e.ID, e.DeviceID}]
		out[i] = checked(e, res, ok)
	}
	return out
}

// checked is res, or a retryable "unavailable" when the answer had no result
// for e (ok false) or one with an unknown status.
func checked(e Envelope, res Result, ok bool) Result {
	if !ok || (res.Status != StatusAccepted && res.Status != StatusError) {
		return Result{ID: e.ID, DeviceID: e.DeviceID, Status: StatusError, Code: CodeUnavailable}
	}
	return res
}

// Send queues envelopes into shared batches (up to MaxBatch per request, a
// partial batch waits at most Linger) and waits for their results, in order.
// A whole-request failure comes back as err (a *RequestError).
func (c *Client) Send(ctx context.Context, envs []Envelope) ([]Result, error) {
	res, errs := c.SendEach(ctx, envs)
	for _, err := range errs {
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// SendEach is Send reporting each envelope's own outcome: errs[i] is the
// error of the request envs[i] went in (nil when it has a result), so a caller
// sending many messages at once learns which ones a failed request held.
// When ctx ends first it returns ctx.Err() for every envelope (results that
// come later are dropped).
func (c *Client) SendEach(ctx context.Context, envs []Envelope) ([]Result, []error) {
	if len(envs) == 0 {
		return nil, nil
	}
	call := &sendCall{res: make([]Result, len(envs)), errs: make([]error, len(envs)), done: make(chan struct{})}
	call.waiting.Store(int64(len(envs)))
	c.mu.Lock()
	if c.mu.closed {
		c.mu.Unlock()
		return nil, fill(len(envs), ErrClientClosed)
	}
	for i, e := range envs {
		c.mu.pending = append(c.mu.pending, pendingEnv{env: e, call: call, idx: i})
		if len(c.mu.pending) >= c.opts.MaxBatch {
			c.flushLocked()
		}
	}
	if len(c.mu.pending) > 0 && c.mu.timer == nil {
		c.mu.timer = time.AfterFunc(c.opts.Linger, func() {
			c.mu.Lock()
			c.mu.timer = nil
			c.flushLocked()
			c.mu.Unlock()
		})
	}
	c.mu.Unlock()
	select {
	case <-call.done:
		return call.res, call.errs
	case <-ctx.Done():
		return nil, fill(len(envs), ctx.Err()) // call is dropped: its results may still come
	}
}

func fill(n int, err error) []error {
	errs := make([]error, n)
	for i := range errs {
		errs[i] = err
	}
	return errs
}

// flushLocked hands the pending batch to a sender goroutine. c.mu is held.
func (c *Client) flushLocked() {
	if len(c.mu.pending) == 0 {
		return
	}
	batch := c.mu.pending
	// The next batch is likely the size of this one: no doubling from empty.
	c.mu.pending = pendingPool.get(len(batch))
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.inflight <- struct{}{}
		defer func() { <-c.inflight }()
		envs := envPool.get(len(batch))[:len(batch)]
		for i, p := range batch {
			envs[i] = p.env
		}
		ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
		res, err := c.SendNow(ctx, envs)
		cancel()
		for i, p := range batch {
			if err != nil {
				p.call.set(p.idx, Result{}, err)
			} else {
				p.call.set(p.idx, res[i], nil)
			}
		}
		envPool.put(envs)
		pendingPool.put(batch)
	}()
}

// slicePool recycles the client's per-request slices (cleared, so they hold
// no ciphertext or channel while pooled).
type slicePool[T any] struct{ p sync.Pool }

func (sp *slicePool[T]) get(n int) []T {
	if v, ok := sp.p.Get().(*[]T); ok && cap(*v) >= n {
		return (*v)[:0]
	}
	return make([]T, 0, n)
}

func (sp *slicePool[T]) put(s []T) {
	s = s[:cap(s)]
	clear(s)
	s = s[:0]
	sp.p.Put(&s)
}

var (
	pendingPool slicePool[pendingEnv]
	envPool     slicePool[Envelope]
)

// Close flushes what is pending, waits for requests in flight, and refuses new
// sends. Safe to call twice.
func (c *Client) Close() {
	c.mu.Lock()
	if c.mu.timer != nil {
		c.mu.timer.Stop()
		c.mu.timer = nil
	}
	c.flushLocked()
	c.mu.closed = true
	c.mu.Unlock()
	c.wg.Wait()
	c.hc.CloseIdleConnections()
}
