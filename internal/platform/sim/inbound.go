package sim

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/signal"
)

// Users who write to businesses (DESIGN "Inbound"): the simulator keeps the
// keys businesses upload (POST /v1/keys/upload), hands a business's bundle
// (one one-time prekey each) to a user device that starts a session, and
// posts the users' envelopes, signed, to Options.InboundURL in batches, in
// order per device. bad_message: the device drops its session and sends
// the same id again in a new one; retry or no answer: the same envelope
// later. Read receipts (POST /v1/receipts) are counted.

// InboundStats counts the users' side.
type InboundStats struct {
	Queued     int64 `json:"inbound_queued"`
	Accepted   int64 `json:"inbound_accepted"`
	BadMessage int64 `json:"inbound_bad_message"`
	Retries    int64 `json:"inbound_retries"`
	Failed     int64 `json:"inbound_failed"`
	DupResent  int64 `json:"inbound_dup_resent"`
	Corrupted  int64 `json:"inbound_corrupted"`
	KeyUploads int64 `json:"key_uploads"`
	Receipts   int64 `json:"receipts_read"`
}

type bizKeys struct {
	bundle  platform.DeviceBundle // without a one-time prekey
	prekeys []platform.OneTimePreKey
	seen    map[uint32]bool
	lowSent bool
}

type outEnv struct {
	env      map[string]any
	from     string
	device   uint32
	to, text string
	id       string
	at       time.Time // when the user sent it
	attempts int
	next     time.Time // not sent again before (backoff after retry or no answer)
	dup      bool      // resend once more after it was accepted
}

type inboundState struct {
	mu       sync.Mutex
	keys     map[string]*bizKeys
	queue    []*outEnv
	sentAt   map[string]time.Time
	seq      atomic.Uint64
	stats    InboundStats
	wake     chan struct{}
	pumpOnce sync.Once
}

func (s *Server) inboundState() *inboundState {
	s.inOnce.Do(func() {
		s.in = &inboundState{keys: map[string]*bizKeys{}, sentAt: map[string]time.Time{}, wake: make(chan struct{}, 1)}
	})
	return s.in
}

// uploadKeys is POST /v1/keys/upload.
func (s *Server) uploadKeys(ctx *fasthttp.RequestCtx) {
	var up signal.KeysUpload
	if err := json.Unmarshal(ctx.PostBody(), &up); err != nil || up.DeviceID != 1 || len(up.PreKeys) > 1000 {
		writeJSON(ctx, 400, map[string]string{"error": "want the keys of device 1, at most 1000 prekeys"})
		return
	}
	b := platform.DeviceBundle{DeviceID: 1, RegistrationID: up.RegistrationID, IdentityKey: up.IdentityKey, SignedPreKey: up.SignedPreKey}
	if _, err := signal.DecodeBundle(up.User, b); err != nil { // checks the signed prekey's signature
		writeJSON(ctx, 400, map[string]string{"error": err.Error()})
		return
	}
	in := s.inboundState()
	in.mu.Lock()
	k := in.keys[up.User]
	if k == nil || k.bundle.IdentityKey != up.IdentityKey {
		k = &bizKeys{seen: map[uint32]bool{}}
		in.keys[up.User] = k
	}
	k.bundle = b
	for _, pk := range up.PreKeys {
		if !k.seen[pk.ID] {
			k.seen[pk.ID] = true
			k.prekeys = append(k.prekeys, pk)
		}
	}
	k.lowSent = false
	in.stats.KeyUploads++
	n := len(k.prekeys)
	in.mu.Unlock()
	writeJSON(ctx, 200, map[string]int{"prekeys": n})
}

// businessBundle hands out a business's bundle with one one-time prekey
// (none left: without); a prekeys_low event goes out below 10.
func (s *Server) businessBundle(biz string) (*platform.DeviceBundle, bool) {
	in := s.inboundState()
	in.mu.Lock()
	defer in.mu.Unlock()
	k := in.keys[biz]
	if k == nil {
		return nil, false
	}
	b := k.bundle
	if len(k.prekeys) > 0 {
		pk := k.prekeys[0]
		k.prekeys = k.prekeys[1:]
		b.PreKey = &pk
	}
	if len(k.prekeys) < 10 && !k.lowSent {
		k.lowSent = true
		s.queueEvents([]platform.Event{{Type: "prekeys_low", Business: biz}})
	}
	return &b, true
}

// receipts is POST /v1/receipts.
func (s *Server) receipts(ctx *fasthttp.RequestCtx) {
	var q struct {
		Receipts []platform.Receipt `json:"receipts"`
	}
	if err := json.Unmarshal(ctx.PostBody(), &q); err != nil {
		writeJSON(ctx, 400, map[string]string{"error": "want {\"receipts\":[...]}"})
		return
	}
	in := s.inboundState()
	in.mu.Lock()
	in.stats.Receipts += int64(len(q.Receipts))
	in.mu.Unlock()
	writeJSON(ctx, 200, map[string]int{"received": len(q.Receipts)})
}

// Write queues texts from a user's device to a business number (digits);
// they go to Options.InboundURL. It returns their platform ids.
func (s *Server) Write(from string, device uint32, to string, texts ...string) ([]string, error) {
	if s.opts.InboundURL == "" {
		return nil, fmt.Errorf("sim: no InboundURL")
	}
	in := s.inboundState()
	ids := make([]string, 0, len(texts))
	now := clock.Wall()
	in.mu.Lock()
	for _, t := range texts {
		id := fmt.Sprintf("in.%d.%d", now.UnixNano(), in.seq.Add(1))
		in.queue = append(in.queue, &outEnv{from: from, device: device, to: to, text: t, id: id, at: now,
			dup: s.opts.InboundDupRate > 0 && rand.Float64() < s.opts.InboundDupRate})
		in.sentAt[id] = now
		in.stats.Queued++
		ids = append(ids, id)
	}
	in.mu.Unlock()
	in.pumpOnce.Do(func() { s.wg.Add(1); go s.pumpInbound() })
	select {
	case in.wake <- struct{}{}:
	default:
	}
	return ids, nil
}

// writeHTTP is POST /sim/write (Bearer secret): {"writes":[{"from","device_id",
// "to","texts":[…]}]} queues those messages as Write does → {"ids":[…]}.
func (s *Server) writeHTTP(ctx *fasthttp.RequestCtx) {
	var q struct {
		Writes []struct {
			From     string   `json:"from"`
			DeviceID uint32   `json:"device_id"`
			To       string   `json:"to"`
			Texts    []string `json:"texts"`
		} `json:"writes"`
	}
	if err := json.Unmarshal(ctx.PostBody(), &q); err != nil || len(q.Writes) > 10_000 {
		writeJSON(ctx, 400, map[string]string{"error": "want {\"writes\":[{\"from\",\"device_id\",\"to\",\"texts\"}]}, at most 10,000"})
		return
	}
	ids, skipped := []string{}, 0
	for _, w := range q.Writes {
		if len(w.Texts) > 100 {
			writeJSON(ctx, 400, map[string]string{"error": "at most 100 texts per writer"})
			return
		}
		if !s.Registered(w.From) || w.DeviceID < 1 || int(w.DeviceID) > s.DeviceCount(w.From) {
			skipped++ // not a registered user's device: it cannot write
			continue
		}
		got, err := s.Write(w.From, w.DeviceID, w.To, w.Texts...)
		if err != nil {
			writeJSON(ctx, 400, map[string]string{"error": err.Error()})
			return
		}
		ids = append(ids, got...)
	}
	writeJSON(ctx, 200, map[string]any{"ids": ids, "skipped": skipped})
}

// SentAt is when the user sent the message id (zero if unknown).
func (s *Server) SentAt(id string) time.Time {
	in := s.inboundState()
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.sentAt[id]
}

// InboundStats returns the users' side counters.
func (s *Server) InboundStats() InboundStats {
	in := s.inboundState()
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.stats
}

// InboundPending is how many envelopes wait to be accepted.
func (s *Server) InboundPending() int {
	in := s.inboundState()
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.queue)
}

// pumpInbound posts queued envelopes in batches until the server closes.
func (s *Server) pumpInbound() {
	defer s.wg.Done()
	in := s.inboundState()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-in.wake:
		case <-t.C:
		}
		for s.pumpInboundOnce() {
		}
	}
}

// pumpInboundOnce posts one batch (at most 500 envelopes, at most one per
// device in flight so each device's order holds); it reports whether it
// posted anything.
func (s *Server) pumpInboundOnce() bool {
	in := s.inboundState()
	in.mu.Lock()
	var batch []*outEnv
	type devKey struct {
		from, to string
		device   uint32
	}
	busy := map[devKey]bool{}
	now := clock.Wall()
	for _, e := range in.queue {
		if len(batch) >= 2000 {
			break
		}
		key := devKey{e.from, e.to, e.device}
		if busy[key] {
			continue
		}
		busy[key] = true // a device's later envelopes wait for its earlier ones, backoff included
		if e.next.After(now) {
			continue
		}
		batch = append(batch, e)
	}
	in.mu.Unlock()
	if len(batch) == 0 {
		return false
	}
	// One envelope per device in a batch: the devices encrypt at once, on
	// every core, as a platform's users would on their own phones.
	var wg sync.WaitGroup
	procs := runtime.GOMAXPROCS(0)
	for p := 0; p < procs; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for j := p; j < len(batch); j += procs {
				if batch[j].env == nil {
					s.encryptInbound(batch[j]) // a failure leaves env nil: retried
				}
			}
		}(p)
	}
	wg.Wait()
	envs := make([]map[string]any, 0, len(batch))
	for _, e := range batch {
		if e.env != nil {
			envs = append(envs, e.env)
		}
	}
	res := s.postInbound(envs)
	in.mu.Lock()
	defer in.mu.Unlock()
	keep := in.queue[:0]
	done := map[*outEnv]bool{}
	for _, e := range batch {
		r, ok := res[e.id]
		e.attempts++
		switch {
		case ok && r.Status == platform.StatusAccepted:
			if e.dup {
				e.dup = false // send it once more: Herald must not forward it twice
				in.stats.DupResent++
				continue
			}
			in.stats.Accepted++
			done[e] = true
		case ok && r.Code == "bad_message":
			in.stats.BadMessage++
			s.forgetBusinessSession(e.from, e.device, e.to)
			e.env = nil // a new session, the same id
		case ok && r.Code == "unknown_business", e.attempts >= 20:
			in.stats.Failed++
			done[e] = true
		default:
			// retry, or no answer: again later, with backoff, as a platform
			// does (Herald answers retry while it sends to that user).
			in.stats.Retries++
			e.next = clock.Wall().Add(min(5*time.Second, 50*time.Millisecond<<min(e.attempts, 7)))
		}
	}
	for _, e := range in.queue {
		if !done[e] {
			keep = append(keep, e)
		}
	}
	in.queue = keep
	return len(done) > 0
}

func (s *Server) forgetBusinessSession(from string, device uint32, biz string) {
	su := s.user(from)
	su.mu.Lock()
	defer su.mu.Unlock()
	if d, err := s.deviceLocked(su, device); err == nil {
		d.dev.ForgetSession(biz)
	}
}

// encryptInbound encrypts e on its user's device: in the session the
// device has with the business, or a new one from the business's bundle.
func (s *Server) encryptInbound(e *outEnv) error {
	pt, _ := json.Marshal(platform.Plaintext{ID: e.id, From: e.from, TS: e.at.Unix(), Type: "text", Text: &platform.TextBody{Body: e.text}})
	su := s.user(e.from)
	su.mu.Lock()
	d, err := s.deviceLocked(su, e.device)
	su.mu.Unlock()
	if err != nil {
		return err
	}
	ct, err := d.dev.Write(e.to, nil, pt)
	if err == signal.ErrNeedBundle {
		b, ok := s.businessBundle(e.to)
		if !ok {
			return fmt.Errorf("sim: no keys for business %s", e.to)
		}
		ct, err = d.dev.Write(e.to, b, pt)
	}
	if err != nil {
		return err
	}
	body := ct.Body
	if s.opts.InboundCorruptRate > 0 && rand.Float64() < s.opts.InboundCorruptRate {
		body = append([]byte(nil), body...)
		body[len(body)/2] ^= 0x5a // a bit flip on the way: Herald answers bad_message
		s.inboundState().mu.Lock()
		s.inboundState().stats.Corrupted++
		s.inboundState().mu.Unlock()
	}
	e.env = map[string]any{"id": e.id, "from": e.from, "device_id": e.device, "to": e.to, "type": ct.Type,
		"ciphertext": base64.StdEncoding.EncodeToString(body), "ts": e.at.Unix()}
	return nil
}

type inResult struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Code   string `json:"code"`
}

// postInbound posts envelopes, signed; a failed post answers nothing (all
// retried).
func (s *Server) postInbound(envs []map[string]any) map[string]inResult {
	body, _ := json.Marshal(map[string]any{"envelopes": envs})
	out := map[string]inResult{}
	status, answer, err := s.postSigned(s.opts.InboundURL, body, 30*time.Second)
	if err != nil || status != 200 {
		return out
	}
	var r struct {
		Results []inResult `json:"results"`
	}
	if json.Unmarshal(answer, &r) == nil {
		for _, x := range r.Results {
			out[x.ID] = x
		}
	}
	return out
}

// postSigned POSTs body to url signed with the secret (events, inbound)
// and returns the status and a copy of the answer.
func (s *Server) postSigned(url string, body []byte, timeout time.Duration) (int, []byte, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(url)
	req.Header.SetMethod("POST")
	req.Header.SetContentType("application/json")
	req.Header.Set("X-Platform-Signature", platform.Sign([]byte(s.opts.Secret), body))
	req.SetBodyRaw(body)
	if err := s.evClient.DoTimeout(req, resp, timeout); err != nil {
		return 0, nil, err
	}
	return resp.StatusCode(), append([]byte(nil), resp.Body()...), nil
}

// writeLoop has random users write unprompted, WriteRate messages per
// second in all, to the businesses whose keys were uploaded (some of them
// STOP, per StopShare).
func (s *Server) writeLoop() {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	debt := 0.0
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		in := s.inboundState()
		in.mu.Lock()
		var bizs []string
		for b := range in.keys {
			bizs = append(bizs, b)
		}
		in.mu.Unlock()
		if len(bizs) == 0 {
			continue
		}
		debt += s.opts.WriteRate / 10
		for ; debt >= 1; debt-- {
			u := fmt.Sprintf("%s%0*d", s.opts.Prefix, 11-len(s.opts.Prefix), rand.IntN(s.opts.Users))
			if !s.Registered(u) {
				continue
			}
			text := "hello from a user"
			if roll(s.opts.StopShare) {
				text = "STOP"
			}
			s.Write(u, 1, bizs[rand.IntN(len(bizs))], text)
		}
	}
}
