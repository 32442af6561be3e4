package ratelimit

import (
	"encoding/binary"
	"encoding/hex"
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
}

func (l *Limiter) optCount(biz string) (int64, error) {
	l.opt.mu.Lock()
	defer l.opt.mu.Unlock()
	if l.opt.counts == nil {
		l.opt.counts = map[string]int64{}
	}
	if n, ok := l.opt.counts[biz]; ok {
		return n, nil
	}
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
	l.opt.counts[biz] = n
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
	k := optKey(biz, l.opts.Sealer.Lookup(biz+":"+user))
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
