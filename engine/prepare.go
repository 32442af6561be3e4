package engine

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/signal"
	"go.mau.fi/libsignal/state/record"
)

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
	start := clock.Wall() // a measurement: real time
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

// prepareSender makes sure every live message of one sender in r has a
// ciphertext for every device of the recipient, in b with the sessions it
// advanced: stored ciphertexts are taken as they are (invariant 2), missing
// sessions are built from bundles, and the rest is encrypted.
func (e *Engine) prepareSender(ctx context.Context, r *run, b *pebble.Batch, sender string, items []*item) error {
	rcpt := r.g.lease.Recipient
	if err := e.loadOutboxes(b, items); err != nil {
		return err
	}
	peer, err := e.store.Peer(sender, rcpt)
	if err != nil {
		return err
	}
	devs := peer.Devices
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
	missing = e.resetForReceipts(b, sender, rcpt, items, &sessions, missing)
	if !peer.Known || len(missing) > 0 {
		var done bool
		if devs, done, err = e.buildSessions(ctx, r, b, sender, items, devs, peer.Known, &sessions, missing); err != nil || done {
			return err
		}
	}
	r.devices.set(sender, devs) // a copy of its own (Devices copies; PutDevices copies what it keeps)
	if err := e.encrypt(b, sender, rcpt, devs, &sessions, items); err != nil {
		return err
	}
	for _, it := range items {
		if !it.done {
			it.putOutbox(b)
		}
	}
	return nil
}

// loadOutboxes gives each item its stored ciphertexts (a message handed out
// before may have some, invariant 2), or, on its first preparation, writes
// the sealed copy kept for decrypt_failed receipts into b: it must be durable
// before the wire, since a receipt can overtake the worker's completion.
func (e *Engine) loadOutboxes(b *pebble.Batch, items []*item) error {
	for _, it := range items {
		var v []byte
		ok := false
		var err error
		if !it.msg.FirstLease {
			if v, ok, err = e.db.GetCopy(outboxKey(it.msg.Seq)); err != nil {
				return err
			}
		}
		it.ob = &outbox{}
		switch {
		case ok:
			if it.ob, err = decodeOutbox(v); err != nil {
				e.log.Error("engine: corrupt outbox record; encrypting afresh", "id", it.msg.ID)
				it.ob = &outbox{}
			}
		case it.msg.Sealed != nil:
			// Already sealed by the queue (same key, same format): written
			// straight into the batch.
			op := b.SetDeferred(len(keptPrefix)+len(it.msg.ID), 8+len(it.msg.Sealed))
			copy(op.Key[copy(op.Key, keptPrefix):], it.msg.ID)
			binary.BigEndian.PutUint64(op.Value, uint64(it.msg.ExpiresAt.UnixNano()))
			copy(op.Value[8:], it.msg.Sealed)
			op.Finish()
		default:
			rec := binary.BigEndian.AppendUint64(nil, uint64(it.msg.ExpiresAt.UnixNano()))
			b.Set(keptKey(it.msg.ID), e.opts.Sealer.Seal(rec, it.msg.Payload), nil)
		}
	}
	return nil
}

// resetForReceipts resets, before anything else, the session of each device
// a decrypt_failed receipt names (unless the receipt's message was already
// accepted there or has a ciphertext waiting), and drops the unsent
// ciphertexts for it. It returns missing with those devices added.
func (e *Engine) resetForReceipts(b *pebble.Batch, sender string, rcpt signal.Recipient, items []*item, sessions *devSessions, missing []uint32) []uint32 {
	for _, it := range items {
		d := it.p.ResetDevice
		if d == 0 || sessions.get(d) == nil {
			continue
		}
		st := it.ob.get(d)
		if st.typ != "" || st.accepted {
			continue
		}
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
	return missing
}

// buildSessions fetches the recipient's bundles and builds the missing
// sessions into sessions and b; when the device list was not known it
// becomes the bundles' (returned). done: the items were decided here (an
// unknown user, a changed identity under identity_check) and nothing is to
// be encrypted.
func (e *Engine) buildSessions(ctx context.Context, r *run, b *pebble.Batch, sender string, items []*item, devs []uint32, known bool,
	sessions *devSessions, missing []uint32) (_ []uint32, done bool, _ error) {
	rcpt, user := r.g.lease.Recipient, items[0].p.To
	bundles, err := e.keys.get(ctx, user)
	if err != nil {
		return devs, false, err
	}
	if bundles == nil {
		for _, it := range items {
			r.fail(it, heraldtype.CodeUndeliverable)
			e.signal(heraldtype.Signal{Kind: "unknown_user", BusinessPhone: sender, PhoneNumberID: it.p.PhoneNumberID, At: r.now})
		}
		return devs, true, nil
	}
	if !known {
		devs = devs[:0]
		for _, d := range bundles.Devices {
			devs = append(devs, d.DeviceID)
			if sessions.get(d.DeviceID) != nil {
				continue
			}
			// A device that wrote to the business first has a session
			// already (inbound): messages go in it, no new X3DH.
			rec, err := e.store.Session(sender, rcpt, d.DeviceID)
			if err != nil {
				return devs, false, err
			}
			if rec != nil && rec.SessionState() != nil && rec.SessionState().HasSenderChain() {
				sessions.set(d.DeviceID, rec)
				continue
			}
			missing = append(missing, d.DeviceID)
		}
		e.store.PutDevices(b, sender, rcpt, devs)
	}
	id, err := e.store.Identity(sender)
	if err != nil {
		return devs, false, err
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
		trusted, err := e.store.TrustedIdentity(sender, rcpt, bd.DeviceID)
		if err != nil {
			return devs, false, err
		}
		built, err := signal.BuildSession(id, pb, trusted, strict)
		if errors.Is(err, signal.ErrIdentityChanged) {
			e.m.IdentityChange.Inc()
			for _, it := range items {
				if !it.done {
					r.fail(it, heraldtype.CodeIdentityChanged)
				}
			}
			return devs, true, nil // sessions built for earlier devices are in b
		}
		if err != nil {
			return devs, false, err
		}
		if built.IdentityChanged {
			// The identity_changed event: counted, logged (no number), and
			// signalled to the integrity limits like other recipient events.
			e.m.IdentityChange.Inc()
			e.log.Info("engine: identity_changed: a recipient device has a new identity key; trusting it", "device", bd.DeviceID) // routine: reinstalls happen
			e.signal(heraldtype.Signal{Kind: "identity_changed", BusinessPhone: sender, PhoneNumberID: items[0].p.PhoneNumberID, At: r.now})
		}
		sessions.set(bd.DeviceID, built.Record)
		e.store.PutTrustedIdentity(b, sender, rcpt, bd.DeviceID, built.IdentityKey)
		// The whole new session; encryptions below only advance it.
		e.store.PutSession(b, sender, rcpt, bd.DeviceID, built.Record)
	}
	return devs, false, nil
}

// encrypt encrypts, device by device, every live item that has no
// ciphertext there yet (all of one device's in one call), and writes the
// advanced sessions into b.
func (e *Engine) encrypt(b *pebble.Batch, sender string, rcpt signal.Recipient, devs []uint32, sessions *devSessions, items []*item) error {
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
		var err error
		if cts, err = signal.AppendEncrypted(cts[:0], rec, pts); err != nil {
			return err
		}
		for i, st := range targets {
			st.typ, st.ct = cts[i].Type, cts[i].Body
		}
		adv = append(adv, signal.Advanced{Device: d, Session: rec})
	}
	if len(adv) == 0 {
		return nil
	}
	return e.store.Advance(b, sender, rcpt, adv...)
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
