package engine

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"strconv"
	"time"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/records"
	"github.com/heraldhq/herald/queue"
)

// HandleEvents applies verified platform events: delivered/read advance
// statuses; decrypt_failed resets that device's session and retransmits the
// message to it (re-encrypted); report is a quality signal. Unknown or stale
// events are ignored. The caller has checked the platform's signature.
//
// Events are not trusted to be fresh or unique: an event identical to one
// handled in the last EventReplayWindow is ignored (a replayed signed body
// would otherwise reset a session and resend each time), a timestamp more
// than EventSkew in the future or older than the longest TTL is ignored, and
// a message is resent to one device after decrypt_failed at most MaxResets
// times.
func (e *Engine) HandleEvents(ctx context.Context, evs []platform.Event) error {
	now := e.opts.Now()
	var ups []records.Update
	var resend []queue.Message
	for _, ev := range evs {
		if e.replayed(ev, now) {
			e.m.Events.WithLabelValues("ignored_replay").Inc()
			continue
		}
		at := now
		if ev.TS > 0 {
			at = time.Unix(ev.TS, 0)
			if at.After(now.Add(EventSkew)) || at.Before(now.Add(-heraldtype.MaxTTL)) {
				e.m.Events.WithLabelValues("ignored_ts").Inc()
				continue
			}
		}
		e.m.Events.WithLabelValues(eventLabel(ev.Type)).Inc()
		switch ev.Type {
		case platform.EventDelivered:
			ups = append(ups, records.Update{ID: ev.ID, Status: heraldtype.StatusDelivered, At: at, Recipient: ev.User})
		case platform.EventRead:
			ups = append(ups, records.Update{ID: ev.ID, Status: heraldtype.StatusRead, At: at, Recipient: ev.User})
		case platform.EventReport:
			e.signal(heraldtype.Signal{Kind: "report", BusinessPhone: ev.Business, Reason: ev.Reason, User: ev.User, At: now})
		case platform.EventDecryptFailed:
			if !e.countResend(ev) {
				e.m.Events.WithLabelValues("ignored_resends_exhausted").Inc()
				continue
			}
			m, ok, err := e.retransmission(ev, now)
			if err != nil {
				return err
			}
			if ok {
				resend = append(resend, m)
			}
		}
	}
	e.statuses.Submit(ups)
	if len(resend) > 0 {
		return e.q.Enqueue(ctx, resend)
	}
	return nil
}

func eventLabel(t string) string {
	switch t {
	case platform.EventDelivered, platform.EventRead, platform.EventDecryptFailed, platform.EventReport:
		return t
	}
	return "other"
}

// retransmission builds the queue message that re-sends a kept message to one
// device after a decrypt_failed receipt.
func (e *Engine) retransmission(ev platform.Event, now time.Time) (queue.Message, bool, error) {
	v, ok, err := e.db.GetCopy(keptKey(ev.ID))
	if err != nil || !ok || len(v) < 8 || ev.DeviceID == 0 || ev.DeviceID > 127 {
		return queue.Message{}, false, err
	}
	exp := time.Unix(0, int64(binary.BigEndian.Uint64(v[:8])))
	if !exp.After(now) {
		return queue.Message{}, false, nil
	}
	raw, err := e.opts.Sealer.Open(v[8:])
	if err != nil {
		return queue.Message{}, false, nil
	}
	p, err := heraldtype.DecodePayload(raw)
	if err != nil || p.To != ev.User {
		return queue.Message{}, false, nil
	}
	p.ResetDevice = ev.DeviceID
	e.m.Retries.WithLabelValues("decrypt_failed").Inc()
	return queue.Message{ID: ev.ID, Recipient: heraldtype.QueueRecipient(p.BusinessID, p.To), Payload: p.Encode(nil), ExpiresAt: exp, Owner: p.BusinessID}, true, nil
}

// EventReplayWindow is how long an event is remembered to ignore its
// replays; EventSkew how far in the future an event's ts may be.
const (
	EventReplayWindow = time.Hour
	EventSkew         = 5 * time.Minute
	eventMemory       = 200_000 // events remembered at most (the oldest go first)
)

// replayed reports whether an identical event was handled within
// EventReplayWindow, and remembers this one.
func (e *Engine) replayed(ev platform.Event, now time.Time) bool {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%d\x00%d\x00%s\x00%s", ev.Type, ev.ID, ev.User, ev.DeviceID, ev.TS, ev.Business, ev.Reason)
	var k [32]byte
	h.Sum(k[:0])
	if at, ok := e.seenEvents.Get(k); ok && now.Sub(at) < EventReplayWindow {
		return true
	}
	e.seenEvents.Add(k, now)
	return false
}

// countResend counts a decrypt_failed resend of a message to a device and
// reports whether it is within MaxResets.
func (e *Engine) countResend(ev platform.Event) bool {
	k := ev.ID + "\x00" + strconv.FormatUint(uint64(ev.DeviceID), 10)
	n, _ := e.resends.Get(k)
	if n >= e.opts.MaxResets {
		return false
	}
	e.resends.Add(k, n+1)
	return true
}
