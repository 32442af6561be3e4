package node

import (
	"context"
	"encoding/json"
	"sync"
	"time"
)

// Prekeys on the platform (DESIGN "Inbound"): a business number gets
// keysBatch one-time prekeys when it is created and when a prekeys_low
// event names it; at start, every number whose platform holds fewer than
// keysLow gets keysBatch more.
const (
	keysBatch = 100
	keysLow   = 20
	// keysRetry spaces attempts for a number whose upload failed.
	keysRetry = 10 * time.Second
)

// keyUploader uploads business numbers' prekeys in the background, one
// request at a time, retrying what failed.
type keyUploader struct {
	n    *Node
	wake chan struct{}

	mu      sync.Mutex
	pending map[string]int // digits → prekeys to add (0: learn the count, top up below keysLow)

	// cluster: only the owner of partition 0 makes and uploads prekeys
	// (one maker: ids are never handed out twice); requests go to every
	// node (keysSubject).
	cluster *clusterNode
}

func newKeyUploader(n *Node) *keyUploader {
	return &keyUploader{n: n, wake: make(chan struct{}, 1), pending: map[string]int{}}
}

// need asks for keysBatch more prekeys for business (digits).
func (k *keyUploader) need(business string) {
	if k.cluster != nil {
		v, _ := json.Marshal(map[string]any{"d": business, "n": keysBatch})
		if err := k.cluster.c.NC.Publish(keysSubject, v); err != nil {
			k.n.cfg.Logger.Warn("cluster: prekey request not sent; the next check makes up for it", "err", err)
		}
		return
	}
	k.add(business, keysBatch)
}

func (k *keyUploader) add(business string, n int) {
	k.mu.Lock()
	k.pending[business] = max(k.pending[business], n)
	k.mu.Unlock()
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

// keysCheck is how often every number is checked again: its platform
// count topped up below keysLow, its signed prekey rotated once a week old.
const keysCheck = 6 * time.Hour

// checkAll queues a check of every business number.
func (k *keyUploader) checkAll() {
	for _, b := range k.n.Tenants.All() {
		for _, digits := range b.PhoneNumbers {
			k.add(digits, 0)
		}
	}
}

// start checks every number once, then serves requests until ctx ends.
func (k *keyUploader) start(ctx context.Context) {
	k.checkAll()
	k.n.bg.Add(1)
	go func() {
		defer k.n.bg.Done()
		t := time.NewTicker(keysRetry)
		defer t.Stop()
		check := time.NewTicker(keysCheck)
		defer check.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-k.n.stop:
				return
			case <-k.wake:
			case <-t.C:
			case <-check.C:
				k.checkAll()
			}
			k.run(ctx)
		}
	}()
}

// run uploads for every pending number; what fails stays pending.
func (k *keyUploader) run(ctx context.Context) {
	k.mu.Lock()
	todo := k.pending
	k.pending = map[string]int{}
	k.mu.Unlock()
	if k.cluster != nil && !k.cluster.owner.Owns(0) {
		return // another node makes the prekeys (it checks all when it takes partition 0)
	}
	for digits, n := range todo {
		if err := k.upload(ctx, digits, n); err != nil {
			k.n.cfg.Logger.Warn("node: could not upload prekeys; will retry", "err", err)
			k.mu.Lock()
			k.pending[digits] = max(k.pending[digits], n)
			k.mu.Unlock()
		}
	}
}

func (k *keyUploader) upload(ctx context.Context, digits string, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	up, err := k.n.sessions.NewPreKeys(digits, n, k.n.cfg.Now())
	if err != nil {
		return err
	}
	have, err := k.n.client.UploadKeys(ctx, up)
	if err != nil {
		return err
	}
	if n == 0 && have < keysLow {
		return k.upload(ctx, digits, keysBatch)
	}
	return nil
}
