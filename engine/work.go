package engine

import (
	"context"
	"encoding/binary"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"go.mau.fi/libsignal/state/record"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/records"
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
	failAll  bool
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
}

// begin opens a run for g and settles expired, undecodable and shaped messages.
func (e *Engine) begin(g *group) *run {
	r := &run{e: e, g: g, now: e.opts.Now(), extra: e.db.NewBatch()}
	r.outcomes, r.ups = r.outcome1[:0], r.up1[:0]
	// Expired, undecodable and shaped messages first.
	for _, it := range g.items {
		switch {
		case it.bad:
			e.log.Error("engine: undecodable payload; failing the message", "id", it.msg.ID)
			r.fail(it, heraldtype.CodePlatformRejected)
		case !it.msg.ExpiresAt.After(r.now):
			r.fail(it, heraldtype.CodeExpired)
		case it.held:
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

// prepareMany makes sure every live message of the runs has a stored
// ciphertext for every device that still needs one, building sessions from
// bundles where needed. The runs are prepared concurrently (a group may wait
// for a key query, shared with others), each into a batch of its own (a run
// that fails drops only its own writes and retries), and what the others
// wrote is committed with the advanced sessions in one fsync'd batch.
func (e *Engine) prepareMany(ctx context.Context, runs []*run) {
	type prepared struct {
		b        *pebble.Batch
		advanced []string // senders to Forget if b does not commit
		err      error
	}
	out := make([]prepared, len(runs))
	one := func(i int) {
		b := e.runBufs.Get(0)
		advanced, err := e.prepareInto(ctx, runs[i], b)
		out[i] = prepared{b, advanced, err}
	}
	// A run that may wait (for bundles: a device without a cached session,
	// a reset) goes to the pool; the others need only the CPU and are
	// prepared here, one after another, while those wait (a pool
	// goroutine per run was ~3 % of the warm engine's CPU).
	var wg sync.WaitGroup
	var inline []int
	for i, r := range runs {
		if e.cached(r) {
			inline = append(inline, i)
			continue
		}
		wg.Add(1)
		f := func() {
			defer wg.Done()
			one(i)
		}
		if e.prep.Submit(f) != nil { // the pool is full (or closing)
			go f()
		}
	}
	for _, i := range inline {
		one(i)
	}
	wg.Wait()
	var ok []int // runs with writes to commit
	size := 0
	for i, p := range out {
		switch {
		case p.err != nil:
			e.runBufs.Put(p.b)
			e.prepareFailed(runs[i], p.err)
		case p.b.Empty():
			e.runBufs.Put(p.b)
		default:
			ok = append(ok, i)
			size += len(p.b.Repr())
		}
	}
	if len(ok) == 0 {
		return
	}
	var err error
	if len(ok) == 1 { // a lone batch is committed as it is
		err = e.runBufs.Commit(out[ok[0]].b, true)
	} else {
		// The runs' batches are copied into one, kept for the next task
		// (allocating a buffer of a task's size each time was 12 % of the
		// warm phase's allocated bytes).
		// Writes of a kind go together (kv.ApplyGrouped: cheaper memtable
		// inserts).
		all := e.merged.Get(size)
		srcs := make([]*pebble.Batch, len(ok))
		for j, i := range ok {
			srcs[j] = out[i].b
		}
		err = kv.ApplyGrouped(all, srcs)
		for _, b := range srcs {
			e.runBufs.Put(b)
		}
		// Invariant 2: ciphertexts and the sessions that produced them, durably, before the wire.
		if err == nil {
			err = e.merged.Commit(all, true)
		} else {
			e.merged.Put(all)
		}
	}
	if err != nil {
		for _, i := range ok {
			e.forget(runs[i].g.lease.Recipient, out[i].advanced)
		}
		for i, p := range out { // a storage fault: every run retries, not only those that wrote
			if p.err == nil {
				e.prepareFailed(runs[i], err)
			}
		}
	}
}

// cached reports whether preparing r needs no bundle: every message's
// sender has the recipient's device list and a session for each device in
// the cache, and none asks for a session reset.
func (e *Engine) cached(r *run) bool {
	for _, it := range r.g.items {
		if it.done || it.held {
			continue
		}
		if it.p.ResetDevice != 0 || !e.store.Cached(it.p.From, r.g.lease.Recipient) {
			return false
		}
	}
	return true
}

// prepareInto writes r's ciphertexts and advanced sessions into b; advanced
// names the senders whose cached state b's writes changed, to Forget when b
// never commits.
func (e *Engine) prepareInto(ctx context.Context, r *run, b *pebble.Batch) (advanced []string, err error) {
	g := r.g
	// Items by sender, in order of first appearance: a run almost always has
	// one sender (a map and its slices were ~5 % of the objects allocated).
	type senderItems struct {
		sender string
		items  []*item
	}
	var bySender []senderItems
	for _, it := range g.items {
		if it.done || it.held {
			continue
		}
		i := 0
		for i < len(bySender) && bySender[i].sender != it.p.From {
			i++
		}
		if i == len(bySender) {
			bySender = append(bySender, senderItems{sender: it.p.From})
		}
		bySender[i].items = append(bySender[i].items, it)
	}
	if len(bySender) == 0 {
		return nil, nil
	}
	start := time.Now()
	for _, si := range bySender {
		if err := e.prepareSender(ctx, r, b, si.sender, si.items); err != nil {
			e.forget(g.lease.Recipient, advanced)
			e.store.Forget(si.sender, g.lease.Recipient)
			return nil, err
		}
		advanced = append(advanced, si.sender)
	}
	e.m.EncryptSeconds.Observe(time.Since(start).Seconds())
	return advanced, nil
}

// forget drops the senders' cached state of the recipient (their writes did
// not commit).
func (e *Engine) forget(rcpt signal.Recipient, senders []string) {
	for _, s := range senders {
		e.store.Forget(s, rcpt)
	}
}

var errUnknownUser = errors.New("engine: recipient unknown to the platform")

func (e *Engine) prepareSender(ctx context.Context, r *run, b *pebble.Batch, sender string, items []*item) error {
	g := r.g
	rcpt := g.lease.Recipient
	user := items[0].p.To
	id, err := e.store.Identity(sender)
	if err != nil {
		return err
	}
	for _, it := range items {
		var v []byte
		ok := false
		if !it.msg.FirstLease { // handed out before: a ciphertext may be stored (invariant 2)
			if v, ok, err = e.db.GetCopy(outboxKey(it.msg.Seq)); err != nil {
				return err
			}
		}
		it.ob = &outbox{}
		if ok {
			if it.ob, err = decodeOutbox(v); err != nil {
				e.log.Error("engine: corrupt outbox record; encrypting afresh", "id", it.msg.ID)
				it.ob = &outbox{}
			}
		} else {
			// First preparation: keep a sealed copy for decrypt_failed receipts. It
			// must be durable before the wire, since a receipt can overtake the
			// worker's completion.
			if it.msg.Sealed != nil {
				// Already sealed by the queue (same key, same format): written
				// straight into the batch.
				op := b.SetDeferred(len(keptPrefix)+len(it.msg.ID), 8+len(it.msg.Sealed))
				copy(op.Key[copy(op.Key, keptPrefix):], it.msg.ID)
				binary.BigEndian.PutUint64(op.Value, uint64(it.msg.ExpiresAt.UnixNano()))
				copy(op.Value[8:], it.msg.Sealed)
				op.Finish()
			} else {
				rec := binary.BigEndian.AppendUint64(nil, uint64(it.msg.ExpiresAt.UnixNano()))
				b.Set(keptKey(it.msg.ID), e.opts.Sealer.Seal(rec, it.msg.Payload), nil)
			}
		}
	}
	peer, err := e.store.Peer(sender, rcpt)
	if err != nil {
		return err
	}
	devs, known := peer.Devices, peer.Known
	var sessions devSessions
	var missing []uint32
	for i, d := range devs {
		if peer.Errs != nil && peer.Errs[i] != nil {
			e.log.Warn("engine: unreadable session; resetting it", "err", peer.Errs[i])
		}
		if rec := peer.Sessions[i]; rec == nil {
			missing = append(missing, d)
		} else {
			sessions.set(d, rec)
		}
	}
	// decrypt_failed receipts: that device's session is reset before anything else.
	for _, it := range items {
		d := it.p.ResetDevice
		if d == 0 || sessions.get(d) == nil {
			continue
		}
		st := it.ob.get(d)
		if st.typ == "" && !st.accepted {
			e.store.DeleteSession(b, sender, rcpt, d)
			sessions.del(d)
			missing = append(missing, d)
			e.m.SessionResets.Inc()
			for _, later := range items {
				if ls := later.ob.get(d); !ls.accepted {
					ls.typ, ls.ct = "", nil
				}
			}
		}
	}
	if !known || len(missing) > 0 {
		bundles, err := e.keys.get(ctx, user)
		if err != nil {
			return err
		}
		if bundles == nil {
			for _, it := range items {
				r.fail(it, heraldtype.CodeUndeliverable)
				e.signal(heraldtype.Signal{Kind: "unknown_user", BusinessPhone: sender, PhoneNumberID: it.p.PhoneNumberID, At: r.now})
			}
			return nil
		}
		if !known {
			devs = devs[:0]
			for _, d := range bundles.Devices {
				devs = append(devs, d.DeviceID)
				if sessions.get(d.DeviceID) == nil {
					missing = append(missing, d.DeviceID)
				}
			}
			e.store.PutDevices(b, sender, rcpt, devs)
		}
		strict := e.opts.Directory != nil && e.opts.Directory.IdentityCheck(items[0].p.BusinessID)
		for _, bd := range bundles.Devices {
			if !contains(missing, bd.DeviceID) || sessions.get(bd.DeviceID) != nil {
				continue
			}
			pb, err := signal.DecodeBundle(user, bd)
			if err != nil {
				e.log.Warn("engine: bundle rejected", "err", err)
				continue // device stays without a session; its messages retry
			}
			known, err := e.store.TrustedIdentity(sender, rcpt, bd.DeviceID)
			if err != nil {
				return err
			}
			built, err := signal.BuildSession(id, pb, known, strict)
			if errors.Is(err, signal.ErrIdentityChanged) {
				e.m.IdentityChange.Inc()
				for _, it := range items {
					if !it.done {
						r.fail(it, heraldtype.CodeIdentityChanged)
					}
				}
				return nil // sessions built for earlier devices are in b
			}
			if err != nil {
				return err
			}
			if built.IdentityChanged {
				// The identity_changed event: counted, logged (no number), and
				// signalled to the integrity limits like other recipient events.
				e.m.IdentityChange.Inc()
				e.log.Warn("engine: identity_changed: a recipient device has a new identity key; trusting it", "device", bd.DeviceID)
				e.signal(heraldtype.Signal{Kind: "identity_changed", BusinessPhone: sender, PhoneNumberID: items[0].p.PhoneNumberID, At: r.now})
			}
			sessions.set(bd.DeviceID, built.Record)
			e.store.PutTrustedIdentity(b, sender, rcpt, bd.DeviceID, built.IdentityKey)
			// The whole new session; encryptions below only advance it.
			e.store.PutSession(b, sender, rcpt, bd.DeviceID, built.Record)
		}
	}
	r.devices.set(sender, devs) // a copy of its own (Devices copies; PutDevices copies what it keeps)
	var adv []signal.Advanced
	var pts [][]byte
	var targets []*deviceState
	var cts []signal.Ciphertext
	for _, d := range devs {
		rec := sessions.get(d)
		if rec == nil {
			continue
		}
		pts, targets = pts[:0], targets[:0] // AppendEncrypted keeps neither
		for _, it := range items {
			if it.done || (it.p.ResetDevice != 0 && it.p.ResetDevice != d) {
				continue
			}
			st := it.ob.get(d)
			if st.accepted || st.typ != "" {
				continue
			}
			if it.plaintext == nil { // the same bytes for every device
				it.plaintext = platform.AppendPlaintext(make([]byte, 0, 64+len(it.msg.ID)+len(sender)+len(it.p.Body)*6/5),
					&platform.Plaintext{ID: it.msg.ID, From: sender, TS: it.p.TS, Type: "text", Text: &platform.TextBody{Body: it.p.Body}})
			}
			pts = append(pts, it.plaintext)
			targets = append(targets, st)
		}
		if len(pts) == 0 {
			continue
		}
		cts, err = signal.AppendEncrypted(cts[:0], rec, pts)
		if err != nil {
			return err
		}
		for i, st := range targets {
			st.typ, st.ct = cts[i].Type, cts[i].Body
		}
		adv = append(adv, signal.Advanced{Device: d, Session: rec})
	}
	if len(adv) > 0 {
		if err := e.store.Advance(b, sender, rcpt, adv...); err != nil {
			return err
		}
	}
	for _, it := range items {
		if !it.done {
			it.putOutbox(b)
		}
	}
	return nil
}

// devSessions holds a recipient's sessions by device while a run prepares
// it: a handful of devices, searched in order, in the struct itself (on the
// caller's stack) up to four and in a slice beyond.
type devSessions struct {
	small [4]devSession
	n     int
	big   []devSession // all of them, once there are more than len(small)
}

type devSession struct {
	dev uint32
	rec *record.Session
}

func (s *devSessions) list() []devSession {
	if s.big != nil {
		return s.big
	}
	return s.small[:s.n]
}

func (s *devSessions) get(d uint32) *record.Session {
	for _, x := range s.list() {
		if x.dev == d {
			return x.rec
		}
	}
	return nil
}

func (s *devSessions) set(d uint32, rec *record.Session) {
	l := s.list()
	for i := range l {
		if l[i].dev == d {
			l[i].rec = rec
			return
		}
	}
	switch {
	case s.big != nil:
		s.big = append(s.big, devSession{d, rec})
	case s.n < len(s.small):
		s.small[s.n] = devSession{d, rec}
		s.n++
	default:
		s.big = append(append(make([]devSession, 0, 2*len(s.small)), s.small[:]...), devSession{d, rec})
	}
}

func (s *devSessions) del(d uint32) {
	l := s.list()
	for i := range l {
		if l[i].dev == d {
			copy(l[i:], l[i+1:])
			l[len(l)-1] = devSession{}
			if s.big != nil {
				s.big = s.big[:len(s.big)-1]
			} else {
				s.n--
			}
			return
		}
	}
}

func contains(s []uint32, v uint32) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

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
		var res []platform.Result
		var errs []error
		if len(envs) > 0 {
			start := time.Now()
			res, errs = e.opts.Transport.SendEach(ctx, envs)
			e.m.TransmitSecs.Observe(time.Since(start).Seconds())
		}
		for _, s := range round {
			e.transmitted(s, res, errs)
		}
	}
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
