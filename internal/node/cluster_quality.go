package node

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald/ratelimit"
)

// qualitySync makes quality ratings cluster-wide: each node counts the
// signals it sees (admissions on the node that took the upload; sends,
// reports and unknown users on the partition's owner) and publishes its
// windows per phone number to KV HERALD_QUALITY ("<pn>.<node>"); every node
// rates a phone number on the sum of all of them.
type qualitySync struct {
	n    *Node
	kv   jetstream.KeyValue
	self string

	mu     sync.Mutex
	remote map[string]map[string][]ratelimit.HourSignals // pn → node → its hours
	sent   map[string][]byte                             // pn → what this node published last
}

func (n *Node) shareQuality() error {
	c := n.cluster.c
	q := &qualitySync{n: n, kv: c.Quality, self: c.NodeID(), remote: map[string]map[string][]ratelimit.HourSignals{}, sent: map[string][]byte{}}
	if err := n.watchShared(c.Quality, "quality signals", q.apply); err != nil {
		return err
	}
	n.Limits.SetRemoteSignals(q.of)
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		t := time.NewTicker(qualityEvery)
		defer t.Stop()
		for {
			select {
			case <-n.stop:
				q.publish() // the last counts
				return
			case <-t.C:
				q.publish()
			}
		}
	}()
	return nil
}

// qualityEvery: how often a node publishes its signal windows.
var qualityEvery = time.Second

func (q *qualitySync) apply(e jetstream.KeyValueEntry) error {
	pn, node, ok := strings.Cut(e.Key(), ".")
	if !ok || node == q.self {
		return nil // this node's own: counted locally
	}
	var hs []ratelimit.HourSignals
	if e.Operation() == jetstream.KeyValuePut {
		if err := json.Unmarshal(e.Value(), &hs); err != nil {
			return err
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.remote[pn] == nil {
		q.remote[pn] = map[string][]ratelimit.HourSignals{}
	}
	if len(hs) == 0 {
		delete(q.remote[pn], node)
	} else {
		q.remote[pn][node] = hs
	}
	return nil
}

// of returns the other nodes' hours for pn.
func (q *qualitySync) of(pn string) []ratelimit.HourSignals {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []ratelimit.HourSignals
	for _, hs := range q.remote[pn] {
		out = append(out, hs...)
	}
	return out
}

// publish puts this node's windows that changed since the last round.
func (q *qualitySync) publish() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for pn, hs := range q.n.Limits.ExportSignals(q.n.cfg.Now()) {
		v, _ := json.Marshal(hs)
		q.mu.Lock()
		same := bytes.Equal(q.sent[pn], v)
		q.mu.Unlock()
		if same {
			continue
		}
		if _, err := q.kv.Put(ctx, pn+"."+q.self, v); err != nil {
			if errors.Is(err, nats.ErrConnectionClosed) {
				return // this node is leaving the cluster (or was cut off)
			}
			q.n.cfg.Logger.Warn("cluster: quality signals not published", "phone_number_id", pn, "err", err)
			continue
		}
		q.mu.Lock()
		q.sent[pn] = v
		q.mu.Unlock()
	}
}
