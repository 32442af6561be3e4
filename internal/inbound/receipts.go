package inbound

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/platform"
)

// ReceiptSender posts read receipts to the platform (platform.Client).
type ReceiptSender interface {
	Receipts(ctx context.Context, receipts []platform.Receipt) error
}

// Receipts waiting for the platform: 'iR' + sequence (8) → expiry (8, clear)
// | sealed receipt (it names the user). Sent in batches, deleted once the
// platform took them, retried with backoff until the message's expiry.
const receiptBatch = 500

var receiptSeq atomic.Uint64

// nextReceiptSeq is the next receipt sequence: the clock's nanoseconds, or
// one past the last when the clock did not move (keys only grow, so the
// platform gets receipts in the order the business marked them).
func nextReceiptSeq(now uint64) uint64 {
	for {
		last := receiptSeq.Load()
		next := max(now, last+1)
		if receiptSeq.CompareAndSwap(last, next) {
			return next
		}
	}
}

func receiptKey(seq uint64) []byte { return binary.BigEndian.AppendUint64([]byte("iR"), seq) }

// MarkRead marks the user's message id to the business's number pn read and
// queues its read receipt (durably) for the platform. Marking it again
// changes nothing.
func (r *Receiver) MarkRead(businessID, pn, id string) error {
	r.readMu.Lock()
	defer r.readMu.Unlock()
	m, err := r.Get(id)
	if err != nil {
		return err
	}
	if m.BusinessID != businessID || m.PhoneNumberID != pn {
		return ErrNotFound
	}
	if m.Read {
		return nil
	}
	biz, err := r.opts.Tenants.Get(businessID)
	if err != nil {
		return err
	}
	m.Read = true
	b := r.opts.DB.NewBatch() // Commit closes it
	plain, _ := json.Marshal(m)
	b.Set(msgKey(id), r.opts.Sealer.Seal(binary.BigEndian.AppendUint64(nil, uint64(m.Expires)), plain), nil)
	rc, _ := json.Marshal(platform.Receipt{Type: "read", ID: id, From: biz.PhoneNumbers[pn], To: m.From})
	seq := nextReceiptSeq(uint64(r.opts.Now().UnixNano()))
	b.Set(receiptKey(seq), r.opts.Sealer.Seal(binary.BigEndian.AppendUint64(nil, uint64(m.Expires)), rc), nil)
	if err := r.opts.DB.Commit(b, true); err != nil {
		return err
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

// RunReceipts sends queued receipts until ctx ends, stop closes or Close;
// it returns then.
func (r *Receiver) RunReceipts(ctx context.Context, stop <-chan struct{}) {
	if r.opts.Platform == nil {
		return
	}
	func() {
		backoff := time.Duration(0)
		t := time.NewTimer(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-r.stop:
				return
			case <-stop:
				return
			case <-r.wake:
			case <-t.C:
			}
			sent, err := r.SendReceipts(ctx)
			switch {
			case err != nil:
				backoff = min(max(2*backoff, time.Second), time.Minute)
				r.opts.Logger.Warn("inbound: could not send read receipts; will retry", "err", err, "in", backoff)
			case sent == receiptBatch:
				backoff = 0 // more waiting
			default:
				backoff = 5 * time.Second
			}
			if !t.Stop() {
				select {
				case <-t.C:
				default:
				}
			}
			t.Reset(max(backoff, time.Millisecond))
		}
	}()
}

// Close stops the receipt sender.
func (r *Receiver) Close() { r.closeOnce.Do(func() { close(r.stop) }) }

// SendReceipts posts one batch of queued receipts and deletes them once the
// platform took them (expired ones are dropped unsent). It returns how many
// it handled.
func (r *Receiver) SendReceipts(ctx context.Context) (int, error) {
	lo := []byte("iR")
	it, err := r.opts.DB.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: kv.PrefixEnd(lo)})
	if err != nil {
		return 0, err
	}
	now := r.opts.Now().Unix()
	var keys [][]byte
	var rcs []platform.Receipt
	for it.First(); it.Valid() && len(keys) < receiptBatch; it.Next() {
		v := it.Value()
		keys = append(keys, append([]byte(nil), it.Key()...))
		if len(v) < 8 || int64(binary.BigEndian.Uint64(v)) <= now {
			continue // expired (or unreadable): dropped with the batch
		}
		plain, err := r.opts.Sealer.Open(v[8:])
		if err != nil {
			continue
		}
		var rc platform.Receipt
		if json.Unmarshal(plain, &rc) == nil {
			rcs = append(rcs, rc)
		}
	}
	it.Close()
	if len(keys) == 0 {
		return 0, nil
	}
	if len(rcs) > 0 {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := r.opts.Platform.Receipts(cctx, rcs)
		cancel()
		if err != nil {
			return 0, err
		}
	}
	b := r.opts.DB.NewBatch()
	for _, k := range keys {
		b.Delete(k, nil)
	}
	return len(keys), r.opts.DB.Commit(b, false)
}
