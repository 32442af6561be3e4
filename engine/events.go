package engine

import (
	"context"
	"encoding/binary"
	"time"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/queue"
)

// HandleEvents applies verified platform events: delivered/read advance
// statuses; decrypt_failed resets that device's session and retransmits the
// message to it (re-encrypted); report is a quality signal. Unknown or stale
// events are ignored. The caller has checked the platform's signature.
func (e *Engine) HandleEvents(ctx context.Context, evs []platform.Event) error {
	now := e.opts.Now()
	var ups []update
	var resend []queue.Message
	for _, ev := range evs {
		e.m.Events.WithLabelValues(eventLabel(ev.Type)).Inc()
		at := now
		if ev.TS > 0 {
			at = time.Unix(ev.TS, 0)
		}
		switch ev.Type {
		case platform.EventDelivered:
			ups = append(ups, update{id: ev.ID, status: heraldtype.StatusDelivered, at: at, recipient: ev.User})
		case platform.EventRead:
			ups = append(ups, update{id: ev.ID, status: heraldtype.StatusRead, at: at, recipient: ev.User})
		case platform.EventReport:
			e.signal(Signal{Kind: "report", BusinessPhone: ev.Business, Reason: ev.Reason, At: now})
		case platform.EventDecryptFailed:
			m, ok, err := e.retransmission(ev, now)
			if err != nil {
				return err
			}
			if ok {
				resend = append(resend, m)
			}
		}
	}
	e.statuses.submit(ups)
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
	return queue.Message{ID: ev.ID, Recipient: p.To, Payload: p.Encode(nil), ExpiresAt: exp}, true, nil
}
