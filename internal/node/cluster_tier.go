package node

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// clusterTier counts tiers' unique recipients for the whole cluster in KV
// HERALD_TIER (bucket TTL: the tier window):
//
//	u.<business>.<recipient key>  the recipient counted in the window (created once)
//	n.<business>                  the count by minute it was counted in
//	p.<business>                  the count's daily peaks (tier upgrades; Peak)
//
// A slot is reserved in n.<business> with compare-and-set before the
// recipient's key is created, so concurrent uploads to different nodes
// never count more than the limit; a reservation for a recipient another
// node counted meanwhile is given back. A recipient counts for one window
// from the message that counted it.
type clusterTier struct{ kv jetstream.KeyValue }

type tierCount map[int64]int64 // unix minute → recipients counted in it

func (t clusterTier) Admit(biz string, limit int64, keys [][16]byte, now time.Time, window time.Duration) ([]bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ok := make([]bool, len(keys))
	names := make([]string, len(keys))
	// Which are counted already (in parallel, 64 at a time).
	var fresh []int
	var mu sync.Mutex
	var wg sync.WaitGroup
	var firstErr error
	sem := make(chan struct{}, 64)
	for i, k := range keys {
		names[i] = "u." + biz + "." + hex.EncodeToString(k[:])
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			_, err := t.kv.Get(ctx, names[i])
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok[i] = true
			case errors.Is(err, jetstream.ErrKeyNotFound):
				fresh = append(fresh, i)
			case firstErr == nil:
				firstErr = err
			}
		}(i)
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if len(fresh) == 0 {
		return ok, nil
	}
	slices.Sort(fresh) // in the upload's order: the first ones get the room
	got, err := t.reserve(ctx, biz, limit, int64(len(fresh)), now, window)
	if err != nil {
		return nil, err
	}
	giveBack := int64(0)
	for j, i := range fresh {
		if int64(j) >= got {
			break
		}
		_, err := t.kv.Create(ctx, names[i], nil)
		switch {
		case err == nil:
			ok[i] = true
		case errors.Is(err, jetstream.ErrKeyExists):
			ok[i] = true // counted by another node meanwhile: its slot is not ours
			giveBack++
		default:
			giveBack++
			firstErr = err
		}
	}
	if giveBack > 0 {
		if _, err := t.reserve(ctx, biz, -1, -giveBack, now, window); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return ok, nil
}

// Count is the business's unique recipients in the window, cluster-wide.
func (t clusterTier) Count(biz string, now time.Time, window time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := t.kv.Get(ctx, "n."+biz)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	c := tierCount{}
	if err := json.Unmarshal(e.Value(), &c); err != nil {
		return 0, err
	}
	cut, live := now.Add(-window).Unix()/60, int64(0)
	for m, n := range c {
		if m > cut {
			live += n
		}
	}
	return live, nil
}

// Peak samples the business's cluster-wide count into its daily peaks and
// returns the highest of the last 7 days (tier upgrades). The peaks live in
// p.<business> (unix day → count, 8 days kept), so whichever node moves
// tiers — partition 0's owner, which changes — sees the same history. The
// record is rewritten when a peak rises and at least every 6 hours (the
// bucket forgets a key a window after its last write).
func (t clusterTier) Peak(biz string, now time.Time, window time.Duration) (int64, error) {
	live, err := t.Count(biz, now, window)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	key, day := "p."+biz, now.Unix()/86400
	for {
		var rev uint64
		peaks := map[int64]int64{}
		e, err := t.kv.Get(ctx, key)
		switch {
		case err == nil:
			rev = e.Revision()
			if json.Unmarshal(e.Value(), &peaks) != nil {
				peaks = map[int64]int64{}
			}
		case errors.Is(err, jetstream.ErrKeyNotFound):
		default:
			return 0, err
		}
		write := rev == 0 || now.Sub(e.Created()) > 6*time.Hour
		for d := range peaks {
			if d < day-7 {
				delete(peaks, d)
				write = true
			}
		}
		if live > peaks[day] {
			peaks[day], write = live, true
		}
		var peak int64
		for _, p := range peaks {
			peak = max(peak, p)
		}
		if !write {
			return peak, nil
		}
		v, _ := json.Marshal(peaks)
		if rev == 0 {
			_, err = t.kv.Create(ctx, key, v)
		} else {
			_, err = t.kv.Update(ctx, key, v, rev)
		}
		if err == nil {
			return peak, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSequence(err) {
			return 0, err
		}
		// Another evaluator wrote meanwhile (ownership moving): read again.
	}
}

// reserve adds up to want (negative: gives back) to the business's count,
// never past limit (negative: no check); it returns what it added.
func (t clusterTier) reserve(ctx context.Context, biz string, limit, want int64, now time.Time, window time.Duration) (int64, error) {
	key := "n." + biz
	minute := now.Unix() / 60
	cut := now.Add(-window).Unix() / 60
	for {
		var rev uint64
		c := tierCount{}
		e, err := t.kv.Get(ctx, key)
		switch {
		case err == nil:
			rev = e.Revision()
			if json.Unmarshal(e.Value(), &c) != nil {
				c = tierCount{}
			}
		case errors.Is(err, jetstream.ErrKeyNotFound):
		default:
			return 0, err
		}
		live := int64(0)
		for m, n := range c {
			if m <= cut {
				delete(c, m)
				continue
			}
			live += n
		}
		add := want
		if limit >= 0 && want > 0 {
			add = max(0, min(want, limit-live))
		}
		if add == 0 {
			return 0, nil
		}
		if add < 0 {
			// Give back from the newest minutes first.
			for left := -add; left > 0 && len(c) > 0; {
				var newest int64 = -1
				for m := range c {
					newest = max(newest, m)
				}
				d := min(left, c[newest])
				c[newest] -= d
				left -= d
				if c[newest] == 0 {
					delete(c, newest)
				}
			}
		} else {
			c[minute] += add
		}
		v, _ := json.Marshal(c)
		if rev == 0 {
			_, err = t.kv.Create(ctx, key, v)
		} else {
			_, err = t.kv.Update(ctx, key, v, rev)
		}
		if err == nil {
			return add, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSequence(err) {
			return 0, err
		}
		// Another node changed the count: read it again.
	}
}

func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
