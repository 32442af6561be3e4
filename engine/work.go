package engine

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/records"
	"github.com/heraldhq/herald/internal/schedule"
	"github.com/heraldhq/herald/internal/signal"
	"github.com/heraldhq/herald/queue"
)

// item is one leased message as a worker sees it.
type item struct {
	msg  *queue.Message
	p    heraldtype.Payload
	bad  bool
	ob   *outbox
	done bool // an outcome was decided
	// plaintext is the message as every device decrypts it (contract JSON),
	// encoded once per message.
	plaintext []byte
	obSets    int // outbox writes for this message in this run
	// held: an earlier message of the same sender to this recipient was
	// delayed or retried in this run, so this one waits behind it (order,
	// invariant 3) with no outcome: it stays queued as it was.
	held bool
	// shaped: the Shaper reserved a slot for this message in this run; a
	// message that then does not go gives it back (invariant 9).
	shaped bool
	sent   bool
}

// putOutbox writes the item's outbox record into b, counting the write.
func (it *item) putOutbox(b *pebble.Batch) {
	setOutbox(b, it.msg.Seq, it.ob)
	it.obSets++
}

// group is one leased recipient with its messages.
type group struct {
	lease *queue.Lease
	items []*item
	// A one-message group's item and list, in the group's own allocation.
	item1  [1]item
	items1 [1]*item
}

func (e *Engine) newGroup(l *queue.Lease) *group {
	g := &group{lease: l}
	var its []item
	if len(l.Messages) == 1 {
		g.items, its = g.items1[:0], g.item1[:]
	} else {
		g.items, its = make([]*item, 0, len(l.Messages)), make([]item, len(l.Messages))
	}
	for i := range l.Messages {
		it := &its[i]
		it.msg = &l.Messages[i]
		p, err := heraldtype.DecodePayload(it.msg.Payload)
		if err != nil {
			it.bad = true
		}
		it.p = p
		g.items = append(g.items, it)
	}
	return g
}

// outcome bookkeeping for one worker run.
type run struct {
	e        *Engine
	g        *group
	now      time.Time
	outcomes []queue.Outcome
	extra    *pebble.Batch
	ups      []records.Update
	// Room for a one-message run's outcome and records.Update (the campaign case),
	// in the run's own allocation.
	outcome1 [1]queue.Outcome
	up1      [1]records.Update
	devices  senderDevices // sender → device list prepare settled on (transmit reuses it)
	parked   []string      // groups (campaigns) this run parked messages under
}

// senderDevices maps a sender to a device list. A run almost always has one
// sender: a slice searched in order, where a map allocated ~450 B per run.
type senderDevices []senderDevs

type senderDevs struct {
	sender string
	devs   []uint32
}

func (m *senderDevices) set(sender string, devs []uint32) {
	for i := range *m {
		if (*m)[i].sender == sender {
			(*m)[i].devs = devs
			return
		}
	}
	*m = append(*m, senderDevs{sender, devs})
}

func (m senderDevices) get(sender string) ([]uint32, bool) {
	for _, e := range m {
		if e.sender == sender {
			return e.devs, true
		}
	}
	return nil, false
}

func (r *run) ack(it *item) {
	it.done = true
	r.outcomes = append(r.outcomes, queue.Outcome{Seq: it.msg.Seq, Ack: true})
	// A message on its first lease has had its outbox record written at
	// most once — in this run — so it goes with a single delete: when the
	// record dies in the memtable it was written to, the flush drops both
	// and no tombstone goes down the LSM. Otherwise (written before, or
	// rewritten in this run) a plain delete.
	if it.msg.FirstLease && it.obSets <= 1 {
		var kb [16]byte
		r.extra.SingleDelete(appendOutboxKey(kb[:0], it.msg.Seq), nil)
	} else {
		r.extra.Delete(outboxKey(it.msg.Seq), nil)
	}
}

func (r *run) fail(it *item, code int) {
	r.ack(it)
	r.extra.Delete(keptKey(it.msg.ID), nil)
	u := records.Update{ID: it.msg.ID, Status: heraldtype.StatusFailed, Code: code, At: r.now, Recipient: it.p.To}
	withQueued(&u, it)
	r.ups = append(r.ups, u)
}

// withQueued gives u the message's queued record when nothing but the
// status writer can have changed it since the API wrote it: the message is
// on its first lease (enqueued by this process, never handed out before),
// is not a retransmission, and its payload was decoded. The writer then
// skips a point read (records.Statuses.apply; the "fresh" comment in internal/records/status.go).
func withQueued(u *records.Update, it *item) {
	if it.msg.FirstLease && it.p.ResetDevice == 0 && !it.bad {
		u.Fresh, u.Queued = true, records.Queued{BusinessID: it.p.BusinessID, PhoneNumberID: it.p.PhoneNumberID, CampaignID: it.p.CampaignID, TS: it.p.TS, Expires: it.msg.ExpiresAt.Unix()}
	}
}

// stopCampaign sets it and every later message of its campaign in the run
// aside: parked (the campaign is paused) or canceled. Later ones share its
// fate so that a resume between two checks never lets a later message of
// the campaign overtake an earlier one.
func (r *run) stopCampaign(it *item, state string) {
	cid := it.p.CampaignID
	after := false
	for _, o := range r.g.items {
		if o == it {
			after = true
		}
		if !after || o.done || o.bad || o.p.CampaignID != cid {
			continue
		}
		if state == heraldtype.CampaignCanceled {
			r.cancel(o)
		} else {
			r.park(o)
		}
	}
}

// park sets a paused campaign's message aside in the queue's park range,
// with its stored ciphertexts (they go as they are after a resume).
func (r *run) park(it *item) {
	it.done = true
	// Its stored ciphertexts (written by prepare, or by a reset in this
	// run) stay as they are: it was not sent in this run, so nothing in
	// them changed since.
	r.outcomes = append(r.outcomes, queue.Outcome{Seq: it.msg.Seq, Park: it.p.CampaignID})
	if !slices.Contains(r.parked, it.p.CampaignID) {
		r.parked = append(r.parked, it.p.CampaignID)
	}
	r.e.m.Parked.Inc()
}

// cancel ends a canceled campaign's message: gone from the queue with its
// ciphertexts (their session advance stays: the next message to the user
// takes the next counter, and the user's client skips the gap).
func (r *run) cancel(it *item) {
	r.ack(it)
	r.extra.Delete(keptKey(it.msg.ID), nil)
	u := records.Update{ID: it.msg.ID, Status: heraldtype.StatusCanceled, At: r.now, Recipient: it.p.To}
	withQueued(&u, it)
	r.ups = append(r.ups, u)
}

func (r *run) retry(it *item, at time.Time, count bool, reason string) {
	it.done = true
	r.outcomes = append(r.outcomes, queue.Outcome{Seq: it.msg.Seq, RetryAt: at, CountAttempt: count})
	if it.ob != nil {
		it.putOutbox(r.extra)
	}
	r.holdAfter(it)
	if reason != "" {
		r.e.m.Retries.WithLabelValues(reason).Inc()
	}
}

// holdAfter holds the messages after it from the same sender (order): a
// delay or a retry of it holds only it and what follows it, never the
// messages before it, which go (invariant 9).
func (r *run) holdAfter(it *item) {
	after := false
	for _, o := range r.g.items {
		if o == it {
			after = true
			continue
		}
		if after && !o.done && o.p.From == it.p.From {
			o.held = true
		}
	}
}

// releaseUnsent gives back the Shaper's reservations of messages that did not
// go in this run (retried, held, failed), so a later attempt is not charged
// twice for one message.
func (e *Engine) releaseUnsent(r *run) {
	for _, it := range r.g.items {
		if it.shaped && !it.sent {
			e.opts.Shaper.Release(it.p.PhoneNumberID, it.p.To, r.now)
			it.shaped = false
		}
	}
}

func (r *run) backoff(it *item, retryAfter time.Duration) time.Time {
	return Backoff(r.now, it.msg.Attempt, r.e.opts.BackoffBase, r.e.opts.BackoffCap, retryAfter, it.msg.ExpiresAt, jitter())
}

// workMany works on several recipient groups at once (one, or up to
// GroupsPerTask): their ciphertexts and sessions go to disk in one fsync'd
// commit, their transmissions run concurrently (the platform client batches
// them into shared requests), and their statuses take one round trip. Each
// group's outcome is its own: a group whose preparation fails retries alone.
func (e *Engine) workMany(ctx context.Context, gs []*group) {
	if l := e.opts.PeerLocks; l != nil {
		keys := peerKeys(gs)
		for _, k := range keys {
			l.Lock(k)
		}
		defer func() {
			for _, k := range keys {
				l.Unlock(k)
			}
		}()
	}
	runs := make([]*run, len(gs))
	for i, g := range gs {
		runs[i] = e.begin(g)
	}
	e.prepareMany(ctx, runs)
	e.transmitMany(ctx, runs)
	for _, r := range runs {
		e.releaseUnsent(r)
	}
	n := 0
	for _, r := range runs {
		n += len(r.ups)
	}
	ups := make([]records.Update, 0, n)
	for _, r := range runs {
		ups = append(ups, r.ups...)
	}
	// Statuses first, then the acks (see records.Statuses.SubmitWait): after a crash
	// a status is never behind the queue.
	e.statuses.SubmitWait(ups)
	e.finish(ctx, runs)
	e.unparkResumed(ctx, runs)
}

// unparkResumed unparks, after the runs' parks are committed, the groups
// they parked under that are no longer paused: a resume (or cancel) that
// came between this run's check and its commit moved what was parked before
// it, not what this run parked after.
func (e *Engine) unparkResumed(ctx context.Context, runs []*run) {
	var seen []string
	for _, r := range runs {
		for _, g := range r.parked {
			if slices.Contains(seen, g) {
				continue
			}
			seen = append(seen, g)
			if e.opts.Campaigns.State(g) == heraldtype.CampaignPaused {
				continue
			}
			if _, err := e.q.Unpark(ctx, g); err != nil && ctx.Err() == nil {
				e.log.Error("engine: could not unpark a resumed campaign's messages; a restart does", "campaign", g, "err", err)
			}
		}
	}
}

// peerKeys names the pairs (sender, recipient) whose sessions gs may touch:
// an inbound envelope of one of them waits (is answered "retry") until the
// work on it is committed. No two tasks share a pair (one lease per
// recipient), so the engine never waits for itself.
func peerKeys(gs []*group) []string {
	var keys []string
	for _, g := range gs {
		first := len(keys)
		for _, it := range g.items {
			if it.bad {
				continue
			}
			k := signal.PeerKey(it.p.From, g.lease.Recipient)
			if !slices.Contains(keys[first:], k) {
				keys = append(keys, k)
			}
		}
	}
	return keys
}

// begin opens a run for g and settles expired, undecodable and shaped messages.
func (e *Engine) begin(g *group) *run {
	r := &run{e: e, g: g, now: e.opts.Now(), extra: e.db.NewBatch()}
	r.outcomes, r.ups = r.outcome1[:0], r.up1[:0]
	// Expired, undecodable and shaped messages first.
	for _, it := range g.items {
		quietUntil := r.now // the end of the recipient's quiet hours, if now is inside them
		if it.p.Quiet.Set {
			quietUntil = schedule.NextFor(it.p.Quiet, it.p.To, r.now)
		}
		switch {
		case e.opts.Partitions != nil && e.opts.Partitions.Stale(g.lease.Shard, it.msg.Seq):
			// Taken in under an earlier ownership of this partition: the
			// partition's unsettled messages came again from JetStream.
			r.ack(it)
			r.extra.Delete(keptKey(it.msg.ID), nil)
		case it.bad:
			e.log.Error("engine: undecodable payload; failing the message", "id", it.msg.ID)
			r.fail(it, heraldtype.CodePlatformRejected)
		case !it.msg.ExpiresAt.After(r.now):
			r.fail(it, heraldtype.CodeExpired)
		case it.held:
		case e.campaignState(it) != heraldtype.CampaignRunning:
			r.stopCampaign(it, e.campaignState(it))
		case quietUntil.After(r.now):
			// Inside the recipient's quiet hours: wait, on disk, until they end.
			r.retry(it, quietUntil, false, "quiet_hours")
		default:
			if at := e.opts.Shaper.Shape(it.p.PhoneNumberID, it.p.To, r.now); at.After(r.now) {
				// This message and the later ones of its sender wait; the
				// earlier ones, which took their slots, go.
				r.retry(it, at, false, "")
			} else {
				it.shaped = true
			}
		}
	}
	return r
}

// campaignState is its campaign's state (running when it has none or
// nothing is paused or canceled: one atomic load).
func (e *Engine) campaignState(it *item) string {
	if it.p.CampaignID == "" || e.opts.Campaigns == nil {
		return heraldtype.CampaignRunning
	}
	return e.opts.Campaigns.State(it.p.CampaignID)
}

// prepareFailed schedules r's live messages for a retry after its ciphertexts
// could not be prepared or committed.
func (e *Engine) prepareFailed(r *run, err error) {
	var re *platform.RequestError
	if errors.As(err, &re) {
		e.breaker.failure(e.opts.Now())
	}
	e.log.Warn("engine: could not prepare ciphertexts; will retry", "err", err)
	for _, it := range r.g.items {
		if !it.done && !it.held {
			r.retry(it, r.backoff(it, 0), true, "prepare")
		}
	}
}

// finish completes the runs' leases with their outcomes (after their
// statuses), in one commit.
func (e *Engine) finish(ctx context.Context, runs []*run) {
	cs := make([]queue.Completion, len(runs))
	for i, r := range runs {
		cs[i] = queue.Completion{Lease: r.g.lease, Outcomes: r.outcomes, Extra: r.extra}
	}
	for i, err := range e.q.CompleteMany(ctx, cs, false) {
		if err != nil {
			g := runs[i].g
			e.log.Warn("engine: completing a lease failed; the messages come back", "err", err)
			e.store.Forget(g.items[0].p.From, g.lease.Recipient)
		}
		runs[i].extra.Close()
	}
}

// CancelParked ends, in the background, every parked message of a canceled
// campaign: each gets the status canceled (reported like any status), its
// stored ciphertexts and kept copy are deleted, and it leaves the queue —
// in batches, straight from the park range, without leasing it. Statuses
// are written before the records go: a crash part way leaves the rest
// parked, and the node's start hands them here again. A no-op before Start
// or after Close.
func (e *Engine) CancelParked(group string) {
	e.startStop.Lock()
	defer e.startStop.Unlock()
	if !e.running || e.closed {
		return
	}
	ctx := e.ctx
	e.wg.Add(1) // Close waits for it before it closes the status writer
	go func() {
		defer e.wg.Done()
		n, err := e.q.TakeParked(ctx, group, func(msgs []queue.Message, b *pebble.Batch) error {
			now := e.opts.Now()
			ups := make([]records.Update, 0, len(msgs))
			for i := range msgs {
				m := &msgs[i]
				b.Delete(outboxKey(m.Seq), nil)
				b.Delete(keptKey(m.ID), nil)
				to := ""
				if p, err := heraldtype.DecodePayload(m.Payload); err == nil {
					to = p.To
				}
				ups = append(ups, records.Update{ID: m.ID, Status: heraldtype.StatusCanceled, At: now, Recipient: to})
			}
			e.statuses.SubmitWait(ups)
			return ctx.Err()
		})
		if err != nil && ctx.Err() == nil {
			e.log.Error("engine: canceling a campaign's parked messages failed; the next start does it", "campaign", group, "done", n, "err", err)
		}
	}()
}
