package engine

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/records"
)

func (e *Engine) signal(s heraldtype.Signal) {
	if e.opts.OnSignal != nil {
		e.opts.OnSignal(s)
	}
}

// envBufs holds transmitMany's envelope slices.
var envBufs = sync.Pool{New: func() any { return new([]platform.Envelope) }}

// sending is one message of a run going out in a transmit round: its
// envelopes are envs[from:to] of the round's request.
type sending struct {
	r        *run
	it       *item
	devs     []uint32
	from, to int
	waiting  bool // a device has no session yet
}

// transmitMany sends the runs' prepared messages, a run's messages one after
// another (a message goes only once the one before it is decided, so a retry
// never lets a later message overtake it) and the runs side by side: round k
// sends the k-th message of every run still going, all of them in one
// Transport.SendEach (the platform client packs them into shared requests),
// instead of a goroutine per run and a wait per message.
func (e *Engine) transmitMany(ctx context.Context, runs []*run) {
	buf := envBufs.Get().(*[]platform.Envelope) // SendEach copies what it keeps
	defer func() {
		clear((*buf)[:cap(*buf)])
		envBufs.Put(buf)
	}()
	next := make([]int, len(runs)) // each run's next item to look at
	round := make([]sending, 0, len(runs))
	for {
		envs := (*buf)[:0]
		round = round[:0]
		for i, r := range runs {
			for next[i] < len(r.g.items) {
				it := r.g.items[next[i]]
				next[i]++
				var s sending
				var ok bool
				if s, envs, ok = e.envelopes(r, it, envs); !ok {
					continue
				}
				round = append(round, s)
				break // the run's next message waits for this one
			}
		}
		*buf = envs
		if len(round) == 0 {
			return
		}
		// The hand-off: a pause or cancel of a campaign in this round waits
		// until SendEach returned, and what it stopped is set aside here.
		var exit func()
		round, envs, exit = e.gate(round, envs)
		var res []platform.Result
		var errs []error
		if len(envs) > 0 {
			start := clock.Wall() // a measurement: real time
			res, errs = e.opts.Transport.SendEach(ctx, envs)
			e.m.TransmitSecs.Observe(time.Since(start).Seconds())
		}
		if exit != nil {
			exit()
		}
		for _, s := range round {
			e.transmitted(s, res, errs)
		}
	}
}

// gate holds the states of the round's campaigns (Campaigns.Enter) and drops
// from the round, and from envs, the messages of campaigns paused or
// canceled since the run began: they are parked or canceled instead. exit
// (nil when no campaign is in the round) ends the hold.
func (e *Engine) gate(round []sending, envs []platform.Envelope) ([]sending, []platform.Envelope, func()) {
	if e.opts.Campaigns == nil {
		return round, envs, nil
	}
	var ids []string
	for _, s := range round {
		if s.it.p.CampaignID != "" {
			ids = append(ids, s.it.p.CampaignID)
		}
	}
	if len(ids) == 0 {
		return round, envs, nil
	}
	states, exit := e.opts.Campaigns.Enter(ids)
	stopped := false
	for _, st := range states {
		stopped = stopped || st != heraldtype.CampaignRunning
	}
	if !stopped {
		return round, envs, exit
	}
	// Compact in place: kept messages' envelopes move forward, in order.
	kept, n, j := round[:0], 0, 0
	for _, s := range round {
		st := heraldtype.CampaignRunning
		if s.it.p.CampaignID != "" {
			st = states[j]
			j++
		}
		if st != heraldtype.CampaignRunning {
			s.r.stopCampaign(s.it, st)
			continue
		}
		w := copy(envs[n:], envs[s.from:s.to])
		s.from, s.to = n, n+w
		n += w
		kept = append(kept, s)
	}
	return kept, envs[:n], exit
}

// envelopes appends to envs the message's envelopes for the devices that
// have not accepted it (envs[s.from:s.to]); ok is false when the message is
// not to be sent now (decided, held back for order, or retried here).
func (e *Engine) envelopes(r *run, it *item, envs []platform.Envelope) (s sending, _ []platform.Envelope, ok bool) {
	if it.done || it.held || it.ob == nil {
		return s, envs, false
	}
	devs, ok := r.devices.get(it.p.From)
	var err error
	if !ok {
		devs, _, err = e.store.Devices(it.p.From, r.g.lease.Recipient)
	}
	if err != nil || len(devs) == 0 {
		r.retry(it, r.backoff(it, 0), true, "no_devices")
		return s, envs, false
	}
	if it.p.ResetDevice != 0 {
		devs = []uint32{it.p.ResetDevice}
	}
	s = sending{r: r, it: it, devs: devs, from: len(envs)}
	for _, d := range devs {
		st := it.ob.get(d)
		if st.accepted {
			continue
		}
		if st.typ == "" {
			s.waiting = true // no session for this device yet
			continue
		}
		envs = append(envs, platform.Envelope{ID: it.msg.ID, From: it.p.From, To: it.p.To, DeviceID: d,
			Type: st.typ, Raw: st.ct})
	}
	s.to = len(envs)
	return s, envs, true
}

// transmitted applies the outcome of a message's envelopes in a round.
func (e *Engine) transmitted(s sending, res []platform.Result, errs []error) {
	r, it := s.r, s.it
	if s.to > s.from {
		var err error
		for _, x := range errs[s.from:s.to] {
			if x != nil {
				err = x
				break
			}
		}
		if err != nil {
			e.breaker.failure(e.opts.Now())
			var re *platform.RequestError
			after := time.Duration(0)
			if errors.As(err, &re) {
				after = re.RetryAfter
				e.m.PlatformErrors.WithLabelValues("http_" + strconv.Itoa(re.Status)).Inc()
			}
			r.retry(it, r.backoff(it, after), true, "request")
			return
		}
		e.breaker.success()
		if e.results(r, it, res[s.from:s.to]) {
			return // decided (failed or retry)
		}
	}
	complete := !s.waiting
	for _, d := range s.devs {
		if !it.ob.get(d).accepted {
			complete = false
		}
	}
	if complete {
		e.sent(r, it)
	} else if !it.done {
		r.retry(it, r.now, true, "pending_devices")
	}
}

// results applies per-envelope results; it reports whether the item is decided.
func (e *Engine) results(r *run, it *item, res []platform.Result) bool {
	var retryAfter time.Duration
	retry, immediate := false, false
	for _, x := range res {
		st := it.ob.get(x.DeviceID)
		if x.Status == platform.StatusAccepted {
			st.accepted = true
			continue
		}
		e.m.PlatformErrors.WithLabelValues(errorLabel(x.Code)).Inc()
		switch x.Code {
		case platform.CodeUnknownUser:
			e.signal(heraldtype.Signal{Kind: "unknown_user", BusinessPhone: it.p.From, PhoneNumberID: it.p.PhoneNumberID, At: r.now})
			r.fail(it, heraldtype.CodeUndeliverable)
			return true
		case platform.CodeStaleDevices:
			// Re-query on the next attempt; encrypt for new devices, drop removed ones.
			e.store.ForgetDevices(r.extra, it.p.From, r.g.lease.Recipient)
			retry, immediate = true, true
		case platform.CodeBadMessage:
			if int(st.resets) >= e.opts.MaxResets {
				r.fail(it, heraldtype.CodeResetsExhausted)
				return true
			}
			st.resets++
			e.resetDevice(r, it, x.DeviceID)
			retry, immediate = true, true
		case platform.CodeThrottled, platform.CodeUnavailable:
			retry = true
			if d := time.Duration(x.RetryAfterMS) * time.Millisecond; d > retryAfter {
				retryAfter = d
			}
		default:
			r.fail(it, heraldtype.CodePlatformRejected)
			return true
		}
	}
	if !retry {
		return false
	}
	at := r.backoff(it, retryAfter)
	if immediate && retryAfter == 0 {
		at = r.now
	}
	r.retry(it, at, true, "platform")
	return true
}

// errorLabel is a platform error code as a metric label: the contract's
// codes, and "other" for anything a platform makes up (a label per distinct
// string would let a platform grow the metric without a bound).
func errorLabel(code string) string {
	switch code {
	case platform.CodeUnknownUser, platform.CodeStaleDevices, platform.CodeBadMessage, platform.CodeThrottled, platform.CodeUnavailable:
		return code
	}
	return "other"
}

// resetDevice drops a device's session and every unsent ciphertext made with it
// (this message's and the later ones'), in the completion batch.
func (e *Engine) resetDevice(r *run, it *item, dev uint32) {
	e.m.SessionResets.Inc()
	e.store.DeleteSession(r.extra, it.p.From, r.g.lease.Recipient, dev)
	seen := false
	for _, other := range r.g.items {
		if other == it {
			seen = true
		}
		if !seen || other.p.From != it.p.From || other.ob == nil {
			continue
		}
		if st := other.ob.get(dev); !st.accepted {
			st.typ, st.ct = "", nil
			if other != it && !other.done {
				other.putOutbox(r.extra)
			}
		}
	}
}

// sent acks a message every device accepted; its kept content (sealed) stays
// for a grace period, never past its TTL, in case a decrypt_failed receipt comes.
func (e *Engine) sent(r *run, it *item) {
	r.ack(it)
	it.sent = true
	u := records.Update{ID: it.msg.ID, Status: heraldtype.StatusSent, At: r.now, Recipient: it.p.To}
	withQueued(&u, it)
	r.ups = append(r.ups, u)
	keep := r.now.Add(e.opts.SentGrace)
	if keep.After(it.msg.ExpiresAt) {
		keep = it.msg.ExpiresAt
	}
	// The kept copy was written before the wire (prepareSender); from now on
	// the retention sweeper deletes it at keep.
	var kb [64]byte
	r.extra.Set(appendKeptIndexKey(kb[:0], keep, it.msg.ID), nil, nil)
}
