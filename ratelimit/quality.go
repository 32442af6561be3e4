package ratelimit

import (
	"cmp"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/tenant"
)

const hours = 7 * 24

// hourBucket holds one hour of signals for a phone number.
type hourBucket = HourSignals

// HourSignals is one hour of a phone number's signals as one node counted
// them (exported: in cluster mode every node's windows are shared).
type HourSignals struct {
	Hour       int64   `json:"h"`
	Admitted   int64   `json:"a"`
	First      int64   `json:"f"`
	Unknown    int64   `json:"u"`
	Sent       int64   `json:"s"`
	Reports    int64   `json:"r"`
	SeqWeight  float64 `json:"q"` // Σ sequential share × admitted (to average by volume)
	SeqSamples int64   `json:"n"`
}

type phoneState struct {
	Buckets [hours]hourBucket `json:"b"`
	Since   map[string]int64  `json:"since"` // flag → unix seconds it was first raised
	// The last admission batch refused for enumeration (integrity view).
	Refused *refusal `json:"refused,omitempty"`
}

type refusal struct {
	At    int64   `json:"at"` // unix seconds
	Share float64 `json:"share"`
	Count int64   `json:"count"` // batches refused since the first of this streak
	First int64   `json:"first"`
}

// refuseBatch records a batch refused for sequential enumeration.
func (l *Limiter) refuseBatch(pn string, now time.Time, share float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ps := l.phone(pn)
	r := ps.Refused
	if r == nil || now.Unix()-r.At > int64(l.pol.QualityWindow/time.Second) {
		r = &refusal{First: now.Unix()}
	}
	r.At, r.Share = now.Unix(), share
	r.Count++
	ps.Refused = r
}

func (l *Limiter) phone(pn string) *phoneState {
	ps, ok := l.phones[pn]
	if !ok {
		ps = &phoneState{Since: map[string]int64{}}
		if v, found, err := l.opts.DB.GetCopy(append([]byte("rW"), pn...)); err == nil && found {
			json.Unmarshal(v, ps)
			if ps.Since == nil {
				ps.Since = map[string]int64{}
			}
		}
		l.phones[pn] = ps
	}
	return ps
}

func (ps *phoneState) bucket(now time.Time) *hourBucket {
	h := now.Unix() / 3600
	b := &ps.Buckets[h%hours]
	if b.Hour != h {
		*b = hourBucket{Hour: h}
	}
	return b
}

func (l *Limiter) recordAdmission(pn string, now time.Time, admitted, firsts int64, seq float64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.phone(pn).bucket(now)
	b.Admitted += admitted
	b.First += firsts
	if admitted > 0 {
		b.SeqWeight += seq * float64(admitted)
		b.SeqSamples += admitted
	}
}

// Signal implements engine.Options.OnSignal (reports, unknown users).
func (l *Limiter) Signal(s heraldtype.Signal) {
	pn := s.PhoneNumberID
	if pn == "" && s.BusinessPhone != "" {
		pn, _ = l.opts.Tenants.PhoneNumberID(s.BusinessPhone)
	}
	if pn == "" {
		return
	}
	if s.Kind == "report" && s.Reason == "block" && s.User != "" {
		if biz, err := l.opts.Tenants.ByPhoneNumberID(pn); err == nil {
			if err := l.OptOut(nil, biz.ID, s.User, s.At); err != nil {
				cmp.Or(l.opts.Logger, slog.Default()).Error("ratelimit: could not record a block as an opt-out", "err", err)
			}
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.phone(pn).bucket(s.At)
	switch s.Kind {
	case "report":
		b.Reports++
	case "unknown_user":
		b.Unknown++
	}
}

// Statuses counts sent messages per phone number (engine.Options.OnStatus).
func (l *Limiter) Statuses(cs []heraldtype.StatusChange) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range cs {
		if c.Status == heraldtype.StatusSent {
			l.phone(c.PhoneNumberID).bucket(time.Unix(c.TS, 0)).Sent++
		}
	}
}

// Flag is one explainable integrity signal.
type Flag struct {
	Name      string  `json:"name"`
	Value     float64 `json:"value"`
	Threshold float64 `json:"threshold"`
	Since     string  `json:"since"`
	// Refused counts admission batches refused for this flag (they were not
	// enqueued).
	Refused int64 `json:"refused_batches,omitempty"`
}

// QualityView is a phone number's rating and its reasons.
type QualityView struct {
	Quality string
	Flags   []Flag
}

// qualityIfKnown is quality for a phone number with signal state; one with
// none, in memory or stored, is rated high with no flags and gets none made
// for it (a dry run leaves nothing behind, not even an empty window).
func (l *Limiter) qualityIfKnown(pn string, now time.Time) QualityView {
	l.mu.Lock()
	_, ok := l.phones[pn]
	l.mu.Unlock()
	if !ok {
		if _, found, err := l.opts.DB.GetCopy(append([]byte("rW"), pn...)); err != nil || !found {
			return QualityView{Quality: "high", Flags: []Flag{}}
		}
	}
	return l.quality(pn, now)
}

func (l *Limiter) quality(pn string, now time.Time) QualityView {
	var remote []HourSignals
	if f := l.remoteSignals(); f != nil {
		remote = f(pn) // the other nodes' windows (cluster mode)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	ps := l.phone(pn)
	var t hourBucket
	min := now.Unix()/3600 - hours
	for _, b := range append(ps.Buckets[:], remote...) {
		if b.Hour <= min {
			continue
		}
		t.Admitted += b.Admitted
		t.First += b.First
		t.Unknown += b.Unknown
		t.Sent += b.Sent
		t.Reports += b.Reports
		t.SeqWeight += b.SeqWeight
		t.SeqSamples += b.SeqSamples
	}
	v := QualityView{Quality: "high", Flags: []Flag{}}
	raise := func(name string, value, threshold float64) {
		since, ok := ps.Since[name]
		if !ok {
			since = now.Unix()
			ps.Since[name] = since
		}
		v.Flags = append(v.Flags, Flag{Name: name, Value: value, Threshold: threshold, Since: heraldtype.FormatTime(time.Unix(since, 0))})
	}
	clear := func(name string) { delete(ps.Since, name) }
	p := l.pol
	if r := ps.Refused; r != nil && now.Unix()-r.At <= int64(p.QualityWindow/time.Second) {
		// Refused batches are not sent, so they lower no rating; the view
		// says why uploads are refused.
		v.Flags = append(v.Flags, Flag{Name: "sequential_enumeration", Value: r.Share, Threshold: p.SequentialMax,
			Since: heraldtype.FormatTime(time.Unix(r.First, 0)), Refused: r.Count})
	}
	if t.SeqSamples >= p.MinSample {
		if seq := t.SeqWeight / float64(t.SeqSamples); seq > p.SequentialMax {
			raise("sequential_enumeration", seq, p.SequentialMax)
			v.Quality = "low"
		} else {
			clear("sequential_enumeration")
		}
	}
	if t.Admitted >= p.MinSample {
		if share := float64(t.First) / float64(t.Admitted); share > p.FirstContactMax {
			raise("first_contact_share", share, p.FirstContactMax)
			if v.Quality == "high" {
				v.Quality = "medium"
			}
		} else {
			clear("first_contact_share")
		}
		if share := float64(t.Unknown) / float64(t.Admitted); share > p.UnknownMax {
			raise("unknown_recipient_share", share, p.UnknownMax)
			if v.Quality == "high" {
				v.Quality = "medium"
			}
		} else {
			clear("unknown_recipient_share")
		}
	}
	if t.Sent >= p.MinSent {
		rate := float64(t.Reports) / float64(t.Sent)
		switch {
		case rate > p.ReportsLow:
			raise("spam_reports", rate, p.ReportsLow)
			v.Quality = "low"
		case rate > p.ReportsMedium:
			raise("spam_reports", rate, p.ReportsMedium)
			if v.Quality == "high" {
				v.Quality = "medium"
			}
		default:
			clear("spam_reports")
		}
	}
	return v
}

// SetRemoteSignals adds, to every quality rating, the windows f returns for
// the phone number: the other nodes' (cluster mode).
func (l *Limiter) SetRemoteSignals(f func(pn string) []HourSignals) {
	l.mu.Lock()
	l.remote = f
	l.mu.Unlock()
}

func (l *Limiter) remoteSignals() func(string) []HourSignals {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.remote
}

// ExportSignals returns this node's own signal hours within the window, per
// phone number (those with any).
func (l *Limiter) ExportSignals(now time.Time) map[string][]HourSignals {
	l.mu.Lock()
	defer l.mu.Unlock()
	min := now.Unix()/3600 - hours
	out := map[string][]HourSignals{}
	for pn, ps := range l.phones {
		for _, b := range ps.Buckets {
			if b.Hour > min && b != (HourSignals{Hour: b.Hour}) {
				out[pn] = append(out[pn], b)
			}
		}
	}
	return out
}

// Integrity implements api.Admitter: no message content, no phone numbers.
func (l *Limiter) Integrity(b *tenant.Business, pn string, now time.Time) any {
	q := l.quality(pn, now)
	uniq, _ := l.UniqueRecipients(b.ID, now)
	return map[string]any{"tier": b.Tier, "quality": q.Quality, "paused": b.Paused || q.Quality == "low",
		"unique_recipients_24h": uniq, "mps": b.MPS, "flags": q.Flags}
}

var tierOrder = []string{"250", "2k", "10k", "100k", "unlimited"}

// EvaluateTiers applies tier movement: quality low moves a business down one
// tier (or pauses it at the lowest); quality not low with a 7-day peak of at
// least UpgradeShare of its tier moves it up. It returns what changed.
func (l *Limiter) EvaluateTiers(now time.Time) []string {
	var changes []string
	for _, b := range l.opts.Tenants.All() {
		worst := "high"
		for pn := range b.PhoneNumbers {
			switch l.quality(pn, now).Quality {
			case "low":
				worst = "low"
			case "medium":
				if worst == "high" {
					worst = "medium"
				}
			}
		}
		idx := 0
		for i, t := range tierOrder {
			if t == b.Tier {
				idx = i
			}
		}
		peak := int64(-1) // unknown: no upgrade (a move down needs no peak)
		if idx < len(tierOrder)-1 {
			if p, err := l.peak(b.ID, now); err != nil {
				cmp.Or(l.opts.Logger, slog.Default()).Warn("ratelimit: no tier upgrade evaluated: the peak is unknown", "business", b.ID, "err", err)
			} else {
				peak = p
			}
		}
		switch {
		case worst == "low" && idx == 0 && !b.Paused:
			paused := true
			l.opts.Tenants.Update(b.ID, tenant.Patch{Paused: &paused})
			changes = append(changes, b.ID+": paused (quality low at the lowest tier)")
		case worst == "low" && idx > 0:
			t := tierOrder[idx-1]
			l.opts.Tenants.Update(b.ID, tenant.Patch{Tier: &t})
			changes = append(changes, b.ID+": tier down to "+t)
		case worst != "low" && peak >= 0 && idx < len(tierOrder)-1 && float64(peak) >= l.pol.UpgradeShare*float64(tenant.Tiers[b.Tier]):
			t := tierOrder[idx+1]
			l.opts.Tenants.Update(b.ID, tenant.Patch{Tier: &t})
			changes = append(changes, b.ID+": tier up to "+t)
		}
	}
	return changes
}

// SharedPeaks is what a SharedTier that keeps the cluster's daily peaks
// offers: the highest count of the last 7 days, after sampling the
// current one into them.
type SharedPeaks interface {
	Peak(bizID string, now time.Time, window time.Duration) (int64, error)
}

// peak is the business's highest unique-recipient count of the last 7
// days: the cluster's when the tier is shared, else this node's.
func (l *Limiter) peak(bizID string, now time.Time) (int64, error) {
	if sp, ok := l.opts.Shared.(SharedPeaks); ok {
		return sp.Peak(bizID, now, l.pol.Window)
	}
	s := l.bizState(bizID)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := l.loadLocked(bizID, s); err != nil {
		return 0, err
	}
	var peak int64
	for d, p := range s.peaks {
		if d >= now.Unix()/86400-7 && p > peak {
			peak = p
		}
	}
	return peak, nil
}

func (l *Limiter) persistSignals() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.opts.DB.NewBatch()
	for pn, ps := range l.phones {
		v, _ := json.Marshal(ps)
		b.Set(append([]byte("rW"), pn...), v, nil)
	}
	return l.opts.DB.Commit(b, true)
}
