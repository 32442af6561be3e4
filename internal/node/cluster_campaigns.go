package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/heraldhq/herald/internal/cluster"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/campaigns"
	"github.com/heraldhq/herald/internal/records"
)

// Campaigns across a cluster (KV HERALD_CAMPAIGNS):
//
//	r.<id>         the campaign record (sealed), written by the node the upload came to
//	s.<id>         its control state (paused, canceled, running), written by the node asked
//	c.<id>.<node>  a node's counts of the campaign's messages it settled
//
// A campaign uploaded on A, paused on B and watched on C: B stores the state
// and asks every live node to apply it (each waits for its hand-offs in
// progress, as one node does) before it answers; C sums the nodes' counts.

const ctlSubject = "herald.ctl"

// countsEvery: how often a node stores the counts of campaigns that changed
// (besides before every ack; tests lengthen it).
var countsEvery = 500 * time.Millisecond

type ctlMsg struct {
	ID        string `json:"id"`
	State     string `json:"state"`
	AtMS      int64  `json:"at_ms"`
	ExpiresMS int64  `json:"expires_ms"`
}

type campaignSync struct {
	cn    *clusterNode
	mu    sync.Mutex
	dirty map[string]bool
	// pubMu orders the count writes: a count read later is stored later.
	pubMu sync.Mutex
}

func (cn *clusterNode) startCampaigns() error {
	n, c := cn.n, cn.c
	cs := &campaignSync{cn: cn, dirty: map[string]bool{}}
	cn.camps = cs
	cn.startAcker()
	n.Uploads.SetShared(sharedRecords{c.Idem})
	n.Uploads.SetReplicator(func(id string, sealed []byte) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.CampaignsBucket.Put(ctx, "r."+id, sealed)
		return err
	})
	w, err := c.CampaignsBucket.WatchAll(context.Background(), jetstream.IgnoreDeletes())
	if err != nil {
		return err
	}
	for e := range w.Updates() {
		if e == nil {
			break
		}
		// At start only the states: parked messages are resumed or
		// canceled by Start's reconcile, once the engine runs.
		cs.apply(e, true)
	}
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		defer w.Stop()
		tick := time.NewTicker(countsEvery)
		defer tick.Stop()
		for {
			select {
			case <-n.stop:
				cs.publish()
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e != nil {
					cs.apply(e, false)
				}
			case <-tick.C:
				cs.publish()
			}
		}
	}()
	sub, err := c.NC.Subscribe(ctlSubject, func(m *nats.Msg) {
		var cm ctlMsg
		if json.Unmarshal(m.Data, &cm) != nil || cm.ID == "" {
			return
		}
		cs.control(cm, false)
		_ = m.Respond([]byte(c.NodeID())) // who applied it
	})
	if err != nil {
		return err
	}
	_ = sub
	return nil
}

func (cs *campaignSync) apply(e jetstream.KeyValueEntry, starting bool) {
	n := cs.cn.n
	k := e.Key()
	switch {
	case strings.HasPrefix(k, "r."):
		if err := n.Uploads.ApplyCampaign(e.Value()); err != nil {
			n.cfg.Logger.Error("cluster: replicated campaign not applied", "err", err)
		}
	case strings.HasPrefix(k, "s."):
		var cm ctlMsg
		if json.Unmarshal(e.Value(), &cm) == nil && cm.ID != "" {
			cs.control(cm, starting)
		}
	}
}

// control applies a campaign state on this node: durable, hand-offs in
// progress waited for, parked messages resumed or canceled.
func (cs *campaignSync) control(cm ctlMsg, starting bool) {
	n := cs.cn.n
	before := n.Campaigns.State(cm.ID)
	if before == cm.State {
		return
	}
	err := n.Campaigns.Set(cm.ID, cm.State, time.UnixMilli(cm.AtMS), time.UnixMilli(cm.ExpiresMS))
	if errors.Is(err, campaigns.ErrState) {
		return
	}
	if err != nil {
		n.cfg.Logger.Error("cluster: campaign state not applied", "campaign", cm.ID, "err", err)
		return
	}
	if starting {
		return
	}
	switch cm.State {
	case heraldtype.CampaignCanceled:
		n.Engine.CancelParked(cm.ID)
	case heraldtype.CampaignRunning:
		if _, err := n.Queue.Unpark(context.Background(), cm.ID); err != nil {
			n.cfg.Logger.Error("cluster: could not unpark a campaign", "campaign", cm.ID, "err", err)
		}
	}
}

// Control stores the state cluster-wide and waits until every other live
// node applied it (or 10 s: a node that misses the request applies the
// stored state from its watch).
func (cn *clusterNode) Control(id, state string, now, expires time.Time) error {
	c := cn.c
	v, _ := json.Marshal(ctlMsg{ID: id, State: state, AtMS: now.UnixMilli(), ExpiresMS: expires.UnixMilli()})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.CampaignsBucket.Put(ctx, "s."+id, v); err != nil {
		return err
	}
	missing, err := cn.gather(ctx, ctlSubject, v, func(data []byte) (string, bool) { return string(data), false })
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		cn.n.cfg.Logger.Warn("cluster: not every node confirmed a campaign change in time", "campaign", id, "missing", fmt.Sprint(missing))
	}
	return nil
}

// gather publishes a request to every node and reads the answers until
// each other live node and each lease holder (one whose heartbeat is late
// still works: it must answer too) answered, done says so, or ctx ends. Each
// answer names its node (node); it returns the nodes that did not answer.
func (cn *clusterNode) gather(ctx context.Context, subject string, v []byte, answer func([]byte) (node string, done bool)) ([]string, error) {
	c := cn.c
	live, err := c.LiveNodes(ctx)
	if err != nil {
		return nil, err
	}
	owners, err := c.Owners(ctx)
	if err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, l := range append(live, owners...) {
		if l != "" && l != c.NodeID() {
			want[l] = true
		}
	}
	if len(want) == 0 {
		return nil, nil
	}
	inbox := nats.NewInbox()
	replies := make(chan []byte, 64)
	sub, err := c.NC.Subscribe(inbox, func(m *nats.Msg) {
		select {
		case replies <- m.Data:
		default:
		}
	})
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := c.NC.PublishRequest(subject, inbox, v); err != nil {
		return nil, err
	}
	for len(want) > 0 {
		select {
		case data := <-replies:
			node, done := answer(data)
			delete(want, node)
			if done {
				return nil, nil
			}
		case <-ctx.Done():
			var missing []string
			for n := range want {
				missing = append(missing, n)
			}
			return missing, nil
		}
	}
	return nil, nil
}

// settledCampaigns marks campaigns whose counts changed here.
func (cs *campaignSync) touched(chs []heraldtype.StatusChange) {
	cs.mu.Lock()
	for _, c := range chs {
		if c.CampaignID != "" {
			cs.dirty[c.CampaignID] = true
		}
	}
	cs.mu.Unlock()
}

// publish stores this node's counts of the campaigns that changed.
func (cs *campaignSync) publish() {
	cs.mu.Lock()
	ids := make([]string, 0, len(cs.dirty))
	for id := range cs.dirty {
		ids = append(ids, id)
	}
	clear(cs.dirty)
	cs.mu.Unlock()
	cs.pubMu.Lock()
	defer cs.pubMu.Unlock()
	for _, id := range ids {
		if _, err := cs.put(id); err != nil {
			cs.mu.Lock()
			cs.dirty[id] = true // next time
			cs.mu.Unlock()
		}
	}
}

// put publishes this node's counts of campaign id (cs.pubMu held).
func (cs *campaignSync) put(id string) (jetstream.PubAckFuture, error) {
	n, c := cs.cn.n, cs.cn.c
	cnt, err := n.Engine.Statuses().Counters(id)
	if err != nil {
		return nil, err
	}
	v, _ := json.Marshal(cnt)
	return c.JS.PublishAsync("$KV."+c.CampaignsBucket.Bucket()+".c."+id+"."+c.NodeID(), v, jetstream.WithStallWait(5*time.Second))
}

// flush stores this node's counts of campaigns ids now and waits until
// JetStream has them (at most 5 s; a failure is logged and the periodic
// publish tries again).
func (cs *campaignSync) flush(ids []string) {
	cs.pubMu.Lock()
	defer cs.pubMu.Unlock()
	futs := make([]jetstream.PubAckFuture, 0, len(ids))
	var failed error
	for _, id := range ids {
		f, err := cs.put(id)
		if err != nil {
			failed = err
			continue
		}
		futs = append(futs, f)
	}
	timeout := time.NewTimer(5 * time.Second)
	defer timeout.Stop()
wait:
	for _, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			failed = err
		case <-timeout.C:
			failed = errors.New("no acknowledgement within 5 s")
			break wait
		}
	}
	if failed != nil {
		cs.mu.Lock()
		for _, id := range ids {
			cs.dirty[id] = true
		}
		cs.mu.Unlock()
		cs.cn.n.cfg.Logger.Warn("cluster: campaign counts not stored before their messages' acks", "campaigns", len(ids), "err", failed)
	}
}

// Counters sums every node's counts of campaign id.
func (cn *clusterNode) Counters(id string) (*records.Counters, error) {
	if !validKey(strings.TrimPrefix(id, "cmp_")) {
		return &records.Counters{}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kl, err := cn.c.CampaignsBucket.ListKeysFiltered(ctx, "c."+id+".*")
	if err != nil {
		return nil, err
	}
	sum := &records.Counters{}
	for k := range kl.Keys() {
		e, err := cn.c.CampaignsBucket.Get(ctx, k)
		if err != nil {
			continue
		}
		var x records.Counters
		if json.Unmarshal(e.Value(), &x) != nil {
			continue
		}
		sum.Sent += x.Sent
		sum.Delivered += x.Delivered
		sum.Read += x.Read
		sum.Failed += x.Failed
		sum.Canceled += x.Canceled
		for code, v := range x.Failures {
			if sum.Failures == nil {
				sum.Failures = map[string]int64{}
			}
			sum.Failures[code] += v
		}
		if x.FirstSent > 0 && (sum.FirstSent == 0 || x.FirstSent < sum.FirstSent) {
			sum.FirstSent = x.FirstSent
		}
		sum.LastDone = max(sum.LastDone, x.LastDone)
	}
	return sum, nil
}

// sharedRecords is records.SharedRecords on a KV bucket.
type sharedRecords struct{ kv jetstream.KeyValue }

func (s sharedRecords) Get(key string) ([]byte, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return e.Value(), true, nil
}

func (s sharedRecords) Put(key string, v []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := s.kv.Put(ctx, key, v)
	return err
}

// sharedHold holds key in KV HERALD_HOLDS (Create: one holder), refreshed
// while held; release deletes it.
func (cn *clusterNode) sharedHold(key string) (release func(), held bool, err error) {
	kv := cn.c.Holds
	sum := sha256.Sum256([]byte(key))
	k := "h." + hex.EncodeToString(sum[:])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rev, err := kv.Create(ctx, k, []byte(cn.c.NodeID()))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("cluster: Idempotency-Key hold: %w", err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(cluster.HoldTTL / 4)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				uctx, cancel := context.WithTimeout(context.Background(), cluster.HoldTTL/4)
				if r, err := kv.Update(uctx, k, []byte(cn.c.NodeID()), rev); err == nil {
					rev = r
				}
				cancel()
			}
		}
	}()
	return func() {
		close(stop)
		<-done
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = kv.Delete(dctx, k, jetstream.LastRevision(rev))
	}, true, nil
}
