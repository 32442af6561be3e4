package node

import (
	"context"
	"fmt"
	"time"
)

// Supervise runs a node until ctx ends, and restarts it in-process when its
// storage fails. Pebble's state after a failed WAL write or fsync is
// undefined, so the failed handle is never reused (internal/kv poisons it and
// every write answers 503/507): the node is closed and a new one opens the
// same data directory — Pebble replays its WAL, so everything acknowledged is
// there — retrying every restartDelay until the fault has cleared. started
// is called with each running node. A configuration error at the first start
// is returned at once.
func Supervise(ctx context.Context, cfg Config, restartDelay time.Duration, started func(*Node)) error {
	if restartDelay <= 0 {
		restartDelay = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = defaultLogger()
	}
	log := cfg.Logger
	first := true
	for {
		n, err := New(cfg)
		if err == nil {
			if err = n.Start(ctx); err != nil {
				n.Close()
			}
		}
		if err != nil {
			if first {
				return err
			}
			log.Error("node: restart after a storage failure did not succeed; retrying", "err", err, "in", restartDelay)
			if !sleep(ctx, restartDelay) {
				return nil
			}
			continue
		}
		first = false
		if started != nil {
			started(n)
		}
		failure, err := n.watch(ctx)
		n.Close()
		if failure == nil {
			return err // ctx ended (nil) or the API server stopped
		}
		log.Error("node: storage failed; restarting in process on the same data directory", "err", failure, "in", restartDelay)
		if !sleep(ctx, restartDelay) {
			return nil
		}
	}
}

// watch waits until ctx ends (nil, nil), the API server stops (nil, err) or
// the storage fails (failure, nil).
func (n *Node) watch(ctx context.Context) (failure, err error) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, nil
		case err := <-n.serveErr:
			return nil, err
		case <-t.C:
			if f := n.db.Failed(); f != nil {
				return fmt.Errorf("storage: %w", f), nil
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
