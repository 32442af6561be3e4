package ratelimit

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/kv"
)

// Opt-outs (DESIGN "Opt-outs"): a user who sent a business a stop keyword,
// or blocked it, gets nothing more from it — at admission, code 131050 —
// until the business deletes the opt-out (the user opted back in through
// another channel). Kept as 'rO' + business id + keyed HMAC of the number
// → since (unix seconds): no number is stored.

// CodeOptedOut is the Cloud API's "user has stopped messages from this business".
const CodeOptedOut = heraldtype.CodeOptedOut

// DefaultStopKeywords are the whole-message keywords that opt a user out
// when a business sets none of its own.
var DefaultStopKeywords = []string{"STOP", "UNSUBSCRIBE", "ALTO"}

func optKey(biz string, h [16]byte) []byte {
	k := append([]byte("rO"), byte(len(biz)))
	k = append(k, biz...)
	return append(k, h[:]...)
}

// optState counts each business's opt-outs (loaded lazily), so that a
// business with none — the usual case — costs admission no lookup.
type optState struct {
	mu     sync.Mutex
	counts map[string]int64 // business id → opt-outs; absent: not loaded
	// cluster mode: every opt-out and opt-in is stored cluster-wide first
	// (SetOptReplicator); the other nodes apply it (ApplyOptOut, ApplyOptIn).
	put func(biz string, h [16]byte, since int64) error
	del func(biz string, h [16]byte) error
	// apply serializes the check-and-write of ApplyOptOut and optIn (this
	// node's own changes and the watcher's replays of them meet there).
	apply sync.Mutex
}

// SetOptReplicator makes every opt-out (put) and opt-in (del) go through
// the cluster before this node records it.
func (l *Limiter) SetOptReplicator(put func(biz string, h [16]byte, since int64) error, del func(biz string, h [16]byte) error) {
	l.opt.mu.Lock()
	l.opt.put, l.opt.del = put, del
	l.opt.mu.Unlock()
}

func (l *Limiter) optReplicator() (func(string, [16]byte, int64) error, func(string, [16]byte) error) {
	l.opt.mu.Lock()
	defer l.opt.mu.Unlock()
	return l.opt.put, l.opt.del
}

// ApplyOptOut records an opt-out another node took (keyed id h), unless
// this node has it already.
func (l *Limiter) ApplyOptOut(biz string, h [16]byte, since int64) error {
	l.opt.apply.Lock()
	defer l.opt.apply.Unlock()
	k := optKey(biz, h)
	_, had, err := l.opts.DB.GetCopy(k)
	if err != nil || had {
		return err
	}
	wb := l.opts.DB.NewBatch()
	wb.Set(k, binary.BigEndian.AppendUint64(nil, uint64(since)), nil)
	if err := l.opts.DB.Commit(wb, true); err != nil {
		return err
	}
	l.addOptCount(biz, 1)
	return nil
}

// ApplyOptIn deletes an opt-out another node deleted.
func (l *Limiter) ApplyOptIn(biz string, h [16]byte) error {
	_, err := l.optIn(biz, h)
	return err
}

func (l *Limiter) optCount(biz string) (int64, error) {
	l.opt.mu.Lock()
	if l.opt.counts == nil {
		l.opt.counts = map[string]int64{}
	}
	if n, ok := l.opt.counts[biz]; ok {
		l.opt.mu.Unlock()
		return n, nil
	}
	l.opt.mu.Unlock()
	// Counted under the apply lock: an opt-out or opt-in applied between
	// the scan and the count's store would be counted twice (or not at
	// all) — in a cluster, the watcher applies them while uploads ask.
	l.opt.apply.Lock()
	defer l.opt.apply.Unlock()
	l.opt.mu.Lock()
	if n, ok := l.opt.counts[biz]; ok {
		l.opt.mu.Unlock()
		return n, nil
	}
	l.opt.mu.Unlock()
	lo := optKey(biz, [16]byte{})[:3+len(biz)]
	it, err := l.opts.DB.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: kv.PrefixEnd(lo)})
	if err != nil {
		return 0, err
	}
	var n int64
	for it.First(); it.Valid(); it.Next() {
		n++
	}
	if err := it.Close(); err != nil {
		return 0, err
	}
	l.opt.mu.Lock()
	l.opt.counts[biz] = n
	l.opt.mu.Unlock()
	return n, nil
}

func (l *Limiter) addOptCount(biz string, d int64) {
	l.opt.mu.Lock()
	if n, ok := l.opt.counts[biz]; ok {
		l.opt.counts[biz] = max(0, n+d)
	}
	l.opt.mu.Unlock()
}

// IsStop reports whether a user's message is only a stop keyword of the
// business (its own list, or DefaultStopKeywords), case-insensitively.
func IsStop(body string, keywords []string) bool {
	if len(keywords) == 0 {
		keywords = DefaultStopKeywords
	}
	body = strings.TrimSpace(body)
	for _, k := range keywords {
		if strings.EqualFold(body, k) {
			return true
		}
	}
	return false
}

// OptOut records that user (digits) opted out of the business's messages,
// into b when given (the inbound batch that stores the STOP), else
// committed at once.
func (l *Limiter) OptOut(b *pebble.Batch, biz, user string, at time.Time) error {
	h := l.opts.Sealer.Lookup(biz + ":" + user)
	k := optKey(biz, h)
	_, had, err := l.opts.DB.GetCopy(k)
	if err != nil {
		return err
	}
	if had {
		return nil
	}
	if put, _ := l.optReplicator(); put != nil {
		// Cluster-wide first, then here at once (not in b: the watcher's
		// replay of it and this write meet under one lock, and count once).
		if err := put(biz, h, at.Unix()); err != nil {
			return fmt.Errorf("ratelimit: opt-out not stored in the cluster: %w", err)
		}
		return l.ApplyOptOut(biz, h, at.Unix())
	}
	// The count loaded first, then raised before b commits: a count read
	// between the two can only be high (harmless), never 0 with an
	// opt-out stored (admission would skip the lookups).
	if _, err := l.optCount(biz); err != nil {
		return err
	}
	v := binary.BigEndian.AppendUint64(nil, uint64(at.Unix()))
	if b != nil {
		b.Set(k, v, nil)
	} else {
		wb := l.opts.DB.NewBatch()
		wb.Set(k, v, nil)
		if err := l.opts.DB.Commit(wb, true); err != nil {
			return err
		}
	}
	l.addOptCount(biz, 1)
	return nil
}

// OptIn deletes user's opt-out of the business; it reports whether there
// was one.
func (l *Limiter) OptIn(biz, user string) (bool, error) {
	h := l.opts.Sealer.Lookup(biz + ":" + user)
	if _, del := l.optReplicator(); del != nil {
		// Cluster-wide first; the watcher's replay of the delete may
		// remove it here before optIn does, so whether there was one is
		// asked before.
		_, had, err := l.opts.DB.GetCopy(optKey(biz, h))
		if err != nil || !had {
			return false, err
		}
		if err := del(biz, h); err != nil {
			return false, fmt.Errorf("ratelimit: opt-in not stored in the cluster: %w", err)
		}
		_, err = l.optIn(biz, h)
		return true, err
	}
	return l.optIn(biz, h)
}

func (l *Limiter) optIn(biz string, h [16]byte) (bool, error) {
	l.opt.apply.Lock()
	defer l.opt.apply.Unlock()
	k := optKey(biz, h)
	_, had, err := l.opts.DB.GetCopy(k)
	if err != nil || !had {
		return false, err
	}
	b := l.opts.DB.NewBatch()
	b.Delete(k, nil)
	if err := l.opts.DB.Commit(b, true); err != nil {
		return false, err
	}
	l.addOptCount(biz, -1)
	return true, nil
}

// OptOutView is one opt-out as the business sees it: a keyed id, never the
// number.
type OptOutView struct {
	ID    string `json:"id"`
	Since string `json:"since"`
}

// OptOuts lists the business's opt-outs (at most limit) and their count.
func (l *Limiter) OptOuts(biz string, limit int) (int64, []OptOutView, error) {
	n, err := l.optCount(biz)
	if err != nil {
		return 0, nil, err
	}
	lo := optKey(biz, [16]byte{})[:3+len(biz)]
	it, err := l.opts.DB.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: kv.PrefixEnd(lo)})
	if err != nil {
		return 0, nil, err
	}
	defer it.Close()
	out := []OptOutView{}
	for it.First(); it.Valid() && len(out) < limit; it.Next() {
		since := time.Unix(0, 0)
		if v := it.Value(); len(v) == 8 {
			since = time.Unix(int64(binary.BigEndian.Uint64(v)), 0)
		}
		out = append(out, OptOutView{ID: hex.EncodeToString(it.Key()[len(lo):]), Since: heraldtype.FormatTime(since)})
	}
	return n, out, it.Error()
}

// optedOut marks with CodeOptedOut every recipient that opted out of the
// business (codes[i] still 0).
func (l *Limiter) optedOut(biz string, recipients []string, codes []int) error {
	n, err := l.optCount(biz)
	if err != nil || n == 0 {
		return err
	}
	for i, r := range recipients {
		if codes[i] != 0 {
			continue
		}
		_, ok, err := l.opts.DB.GetCopy(optKey(biz, l.opts.Sealer.Lookup(biz+":"+r)))
		if err != nil {
			return err
		}
		if ok {
			codes[i] = CodeOptedOut
		}
	}
	return nil
}
