package ratelimit

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/tenant"
)

// DryRun judges one upload's recipients as Admit would, and writes nothing:
// no tier use, no quality signal, no refused-batch record. What a real
// upload would have counted lives in the DryRun itself: the new recipients
// it admitted (at most the tier's remainder, so memory is bounded by the
// tier, not by the upload; the unlimited tier keeps none) and the flags it
// would have raised.
type DryRun struct {
	l        *Limiter
	b        *tenant.Business
	pn       string
	limit    int64 // -1: unlimited
	count    int64 // unique recipients in the window, with this upload's new ones
	cut      int64
	seen     map[[16]byte]bool
	seqFlag  *Flag
	restrict string // a reason every line is refused for (paused, low quality)
	flags    []Flag
}

// DryRun starts a preview of an upload by b from phone number pn at now.
func (l *Limiter) DryRun(b *tenant.Business, pn string, now time.Time) (*DryRun, error) {
	d := &DryRun{l: l, b: b, pn: pn, limit: int64(tenant.Tiers[b.Tier]), seen: map[[16]byte]bool{},
		cut: now.Add(-l.pol.Window).UnixNano()}
	q := l.qualityIfKnown(pn, now)
	d.flags = q.Flags
	switch {
	case b.Paused:
		d.restrict = "business is paused"
	case q.Quality == "low":
		d.restrict = "restricted for low quality: " + flagNames(q.Flags)
	}
	if d.limit < 0 {
		return d, nil
	}
	s := l.bizState(b.ID)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := l.loadLocked(b.ID, s); err != nil {
		return nil, err
	}
	// The count as the next Admit will see it: minus the recipients that
	// left the window and are not swept yet (counted here, not deleted).
	lo := expKey(b.ID, 0, [16]byte{})
	lo = lo[:len(lo)-24]
	hi := binary.BigEndian.AppendUint64(append([]byte(nil), lo...), uint64(d.cut)+1)
	it, err := l.opts.DB.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	gone := int64(0)
	for it.First(); it.Valid(); it.Next() {
		gone++
	}
	if err := it.Close(); err != nil {
		return nil, err
	}
	d.count = max(0, s.count-gone)
	return d, nil
}

// Admit is Limiter.Admit for one batch of the previewed upload.
func (d *DryRun) Admit(_ *tenant.Business, _ string, recipients []string, now time.Time) ([]int, string, error) {
	l := d.l
	codes := make([]int, len(recipients))
	restrict := func(reason string) ([]int, string, error) {
		for i := range codes {
			codes[i] = CodeRestricted
		}
		return codes, reason, nil
	}
	if d.restrict != "" {
		return restrict(d.restrict)
	}
	seq := sequentialShare(recipients, l.pol.SequentialRun)
	if len(recipients) >= l.pol.SequentialBatchMin && seq > l.pol.SequentialMax {
		if d.seqFlag == nil {
			d.seqFlag = &Flag{Name: "sequential_enumeration", Threshold: l.pol.SequentialMax, Since: heraldtype.FormatTime(now)}
		}
		d.seqFlag.Value = max(d.seqFlag.Value, seq)
		d.seqFlag.Refused++
		return restrict(fmt.Sprintf("refused as sequential_enumeration: %.0f%% of this batch of %d recipients are runs of consecutive numbers (threshold %.0f%%)",
			seq*100, len(recipients), l.pol.SequentialMax*100))
	}
	if err := l.optedOut(d.b.ID, recipients, codes); err != nil {
		return nil, "", err
	}
	if d.limit < 0 {
		return codes, "", nil
	}
	refused := false
	for i, r := range recipients {
		if codes[i] != 0 {
			continue
		}
		h := l.opts.Sealer.Lookup(d.b.ID + ":" + r)
		if d.seen[h] {
			continue
		}
		v, ok, err := l.opts.DB.GetCopy(lastKey(d.b.ID, h))
		if err != nil {
			return nil, "", err
		}
		if ok && len(v) == 8 && int64(binary.BigEndian.Uint64(v)) > d.cut {
			continue // counted in the window already: always allowed
		}
		if d.count >= d.limit {
			codes[i] = CodeTier
			refused = true
			continue
		}
		d.count++
		d.seen[h] = true // at most limit entries
	}
	if refused {
		return codes, "messaging tier limit reached: no more new unique recipients in the moving 24 h window", nil
	}
	return codes, "", nil
}

// Integrity is what the upload would leave: the phone number's flags with
// the ones this upload would raise, and how many new unique recipients the
// tier would still allow after it (-1: the unlimited tier).
func (d *DryRun) Integrity() (flags []Flag, tierRemaining int64) {
	flags = append([]Flag{}, d.flags...)
	if d.seqFlag != nil {
		flags = append(flags, *d.seqFlag)
	}
	if d.limit < 0 {
		return flags, -1
	}
	return flags, max(0, d.limit-d.count)
}
