package node

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/cluster"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/records"
	"github.com/heraldhq/herald/internal/signal"
	"github.com/heraldhq/herald/queue"
)

// clusterNode is a node's part in a cluster (DESIGN "Scale-out"): accepted
// messages go to JetStream, the partitions this node holds come back from
// it into the local queue, and what settles them is acked and reported
// cluster-wide.
type clusterNode struct {
	n     *Node
	c     *cluster.Cluster
	owner *cluster.Owner
	// stale[p]: local records of partition p with a sequence number at or
	// below this were taken in before this node's current ownership.
	stale []atomic.Uint64

	mu   sync.Mutex
	acks map[string]ackRef // message id → its JetStream delivery, until settled
	held []int             // per partition: entries of acks (Holding, without a walk)

	intaken, acked atomic.Int64
	camps          *campaignSync
	ackq           chan ackBatch // settled deliveries, acked once their campaigns' counts are stored

	// cutAfterPublish (tests): the next intake stops once JetStream stored
	// its messages, as a node killed there would — no local commit, no
	// shared idempotency record, an error to the client.
	cutAfterPublish atomic.Bool
}

type ackRef struct {
	p     int
	reply string
}

func newClusterNode(n *Node, c *cluster.Cluster) *clusterNode {
	cn := &clusterNode{n: n, c: c, stale: make([]atomic.Uint64, c.Partitions()), acks: map[string]ackRef{}, held: make([]int, c.Partitions()),
		ackq: make(chan ackBatch, 256)}
	cn.owner = c.NewOwner(cn)
	return cn
}

// Owns and Stale make the cluster the engine's Partitions.
func (cn *clusterNode) Owns(shard int) bool { return cn.owner.Owns(shard) }
func (cn *clusterNode) Stale(shard int, seq uint64) bool {
	return shard >= 0 && shard < len(cn.stale) && seq <= cn.stale[shard].Load()
}

// partition of a queue recipient (business id + "\x00" + number).
func (cn *clusterNode) partition(queueRecipient string) int {
	q := cn.n.Queue
	return q.ShardOf(q.RecipientKey(queueRecipient))
}

// A work record (sealed in JetStream): version, then id, owner, recipient
// (length-prefixed), due and expiry (unix ms), the payload.
const workVer = 1

func encodeWork(m *queue.Message) []byte {
	b := make([]byte, 0, 64+len(m.ID)+len(m.Owner)+len(m.Recipient)+len(m.Payload))
	b = append(b, workVer)
	for _, s := range []string{m.ID, m.Owner, m.Recipient} {
		b = binary.AppendUvarint(b, uint64(len(s)))
		b = append(b, s...)
	}
	var due int64
	if !m.Due.IsZero() {
		due = m.Due.UnixMilli()
	}
	b = binary.AppendVarint(b, due)
	b = binary.AppendVarint(b, m.ExpiresAt.UnixMilli())
	return append(b, m.Payload...)
}

var errBadWork = errors.New("cluster: corrupt work record")

func decodeWork(b []byte) (m queue.Message, err error) {
	if len(b) < 1 || b[0] != workVer {
		return m, errBadWork
	}
	b = b[1:]
	var ss [3]string
	for i := range ss {
		n, k := binary.Uvarint(b)
		if k <= 0 || uint64(len(b)-k) < n {
			return m, errBadWork
		}
		ss[i], b = string(b[k:k+int(n)]), b[k+int(n):]
	}
	due, k := binary.Varint(b)
	if k <= 0 {
		return m, errBadWork
	}
	b = b[k:]
	exp, k := binary.Varint(b)
	if k <= 0 {
		return m, errBadWork
	}
	m = queue.Message{ID: ss[0], Owner: ss[1], Recipient: ss[2], ExpiresAt: time.UnixMilli(exp), Payload: b[k:]}
	if due != 0 {
		m.Due = time.UnixMilli(due)
	}
	return m, nil
}

// EnqueueWith is the API's intake in cluster mode: every message is
// published to its partition's subject and acknowledged by JetStream —
// stored on the stream's replicas, flushed as the server's sync setting
// says — before batch commits and the API answers.
func (cn *clusterNode) EnqueueWith(ctx context.Context, msgs []queue.Message, batch *pebble.Batch) error {
	out := make([]*nats.Msg, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		out[i] = &nats.Msg{Subject: cluster.WorkSubject(cn.partition(m.Recipient)), Data: cn.n.Sealer.Seal(nil, encodeWork(m)),
			Header: nats.Header{jetstream.MsgIDHeader: []string{m.ID}}}
	}
	if err := cn.publishAll(ctx, out); err != nil {
		batch.Close()
		return err
	}
	if cn.cutAfterPublish.CompareAndSwap(true, false) {
		batch.Close()
		return errors.New("cluster: cut after publishing (test)")
	}
	return cn.n.db.Commit(batch, true)
}

// publishAll publishes msgs and waits until JetStream stored every one. A
// message whose acknowledgement does not come (a stream leader changing) is
// published again: its Nats-Msg-Id makes the stream keep one copy.
func (cn *clusterNode) publishAll(ctx context.Context, msgs []*nats.Msg) error {
	deadline := clock.Wall().Add(60 * time.Second)
	pending := msgs
	var lastErr error
	for attempt := 0; len(pending) > 0; attempt++ {
		if clock.Wall().After(deadline) {
			return fmt.Errorf("cluster: JetStream did not store %d messages within 60 s: %v", len(pending), lastErr)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		futs := make([]jetstream.PubAckFuture, len(pending))
		for i, m := range pending {
			f, err := cn.c.JS.PublishMsgAsync(m, jetstream.WithStallWait(30*time.Second))
			if err != nil {
				return fmt.Errorf("cluster: publish: %w", err)
			}
			futs[i] = f
		}
		var again []*nats.Msg
		wait := time.NewTimer(10 * time.Second)
		for i, f := range futs {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				lastErr = err
				again = append(again, pending[i])
			case <-wait.C:
				lastErr = errors.New("no acknowledgement within 10 s")
				again = append(again, pending[i:]...)
				goto next
			case <-ctx.Done():
				wait.Stop()
				return ctx.Err()
			}
		}
	next:
		wait.Stop()
		if len(again) > 0 {
			cn.n.cfg.Logger.Warn("cluster: publishing again what JetStream did not acknowledge", "messages", len(again), "err", lastErr)
			time.Sleep(min(time.Duration(attempt+1)*200*time.Millisecond, 2*time.Second))
		}
		pending = again
	}
	return nil
}

// Gain: the partitions' records taken in before now are stale (they all
// come again from JetStream), and so are the sessions this node kept for
// their recipients: it starts new ones (a node that worked them before
// cannot know whether another node advanced them since).
func (cn *clusterNode) Gain(ps []int) {
	cn.forget(ps)
	set := make([]bool, cn.c.Partitions())
	last := cn.n.Queue.LastSeq()
	for _, p := range ps {
		cn.stale[p].Store(last)
		set[p] = true
	}
	q := cn.n.Queue
	n, err := cn.n.sessions.ForgetShards(func(r signal.Recipient) bool { return set[q.ShardOf(r)] })
	if err != nil {
		cn.n.cfg.Logger.Error("cluster: could not drop the sessions of gained partitions", "err", err)
	}
	cn.n.cfg.Logger.Info("cluster: took partitions over", "partitions", ps, "session_records_dropped", n)
	if set[0] && cn.n.keys != nil {
		cn.n.keys.checkAll() // this node makes the prekeys now
	}
}

// Holding counts partition p's deliveries this node took in and has not
// settled.
func (cn *clusterNode) Holding(p int) int {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.held[p]
}

// setAck records id's delivery (cn.mu held); dup: it was recorded already.
func (cn *clusterNode) setAck(id string, a ackRef) (dup bool) {
	_, dup = cn.acks[id]
	if !dup {
		cn.held[a.p]++
	}
	cn.acks[id] = a
	return dup
}

// dropAck forgets id's delivery (cn.mu held).
func (cn *clusterNode) dropAck(id string) (ackRef, bool) {
	a, ok := cn.acks[id]
	if ok {
		delete(cn.acks, id)
		cn.held[a.p]--
	}
	return a, ok
}

// Lose: the engine stops handing ps' messages over (Owns); those in flight
// still ack theirs when they settle (correct: they were handed over).
func (cn *clusterNode) Lose(ps []int) {}

// forget drops the deliveries recorded for ps under an earlier ownership.
func (cn *clusterNode) forget(ps []int) {
	set := map[int]bool{}
	for _, p := range ps {
		set[p] = true
	}
	cn.mu.Lock()
	for id, a := range cn.acks {
		if set[a.p] {
			cn.dropAck(id)
		}
	}
	cn.mu.Unlock()
}

// Work takes partition p's messages into the local queue, with their
// "queued" status records; each is acked once settled (settled).
func (cn *clusterNode) Work(p int, msgs []jetstream.Msg) {
	batch := cn.n.db.NewBatch()
	qm := make([]queue.Message, 0, len(msgs))
	refs := make([]ackRef, 0, len(msgs))
	ids := make([]string, 0, len(msgs))
	for _, jm := range msgs {
		plain, err := cn.n.Sealer.Open(jm.Data())
		var m queue.Message
		if err == nil {
			m, err = decodeWork(plain)
		}
		var pl heraldtype.Payload
		if err == nil {
			pl, err = heraldtype.DecodePayload(m.Payload)
		}
		if err != nil {
			cn.n.cfg.Logger.Error("cluster: work record does not open; dropped", "partition", p, "err", err)
			_ = jm.Term()
			continue
		}
		cn.mu.Lock()
		dup := cn.setAck(m.ID, ackRef{p, jm.Reply()})
		cn.mu.Unlock()
		if dup { // delivered again (ack wait passed): it is in the local queue
			continue
		}
		records.NewStatusRecord(batch, m.ID, pl.BusinessID, pl.PhoneNumberID, pl.CampaignID, time.Unix(pl.TS, 0), m.ExpiresAt)
		qm = append(qm, m)
		refs = append(refs, ackRef{p, jm.Reply()})
		ids = append(ids, m.ID)
	}
	if len(qm) == 0 {
		batch.Close()
		return
	}
	if err := cn.n.Queue.EnqueueWith(context.Background(), qm, batch); err != nil {
		cn.n.cfg.Logger.Warn("cluster: could not take messages in; JetStream delivers them again", "partition", p, "err", err)
		cn.mu.Lock()
		for _, id := range ids {
			cn.dropAck(id)
		}
		cn.mu.Unlock()
		for _, jm := range msgs {
			_ = jm.NakWithDelay(time.Second)
		}
		return
	}
	cn.intaken.Add(int64(len(qm)))
	for i, m := range qm {
		pl, _ := heraldtype.DecodePayload(m.Payload)
		cn.publishStatus(heraldtype.StatusChange{MessageID: m.ID, BusinessID: pl.BusinessID, PhoneNumberID: pl.PhoneNumberID,
			CampaignID: pl.CampaignID, Status: heraldtype.StatusQueued, TS: pl.TS})
		_ = refs[i]
	}
}

// Events applies platform events routed to partition p, then acks them.
func (cn *clusterNode) Events(p int, msgs []jetstream.Msg) {
	for _, jm := range msgs {
		var evs []platform.Event
		if err := json.Unmarshal(jm.Data(), &evs); err != nil {
			_ = jm.Term()
			continue
		}
		if err := cn.n.Engine.HandleEvents(context.Background(), evs); err != nil {
			_ = jm.NakWithDelay(time.Second)
			continue
		}
		_ = jm.Ack()
	}
}

// settled acks the JetStream deliveries of messages that left the queue
// (sent, failed, canceled) and reports every change cluster-wide.
func (cn *clusterNode) settled(cs []heraldtype.StatusChange) {
	if cn.camps != nil {
		cn.camps.touched(cs)
	}
	var b ackBatch
	for _, c := range cs {
		cn.publishStatus(c)
		switch c.Status {
		case heraldtype.StatusSent, heraldtype.StatusFailed, heraldtype.StatusCanceled,
			// A delivered or read event can come before this node's own
			// "sent" (the message was handed over by the partition's
			// previous owner, whose ack was lost): that "sent" then changes
			// nothing and is never reported, so the event settles it.
			heraldtype.StatusDelivered, heraldtype.StatusRead:
		default:
			continue
		}
		cn.mu.Lock()
		a, ok := cn.dropAck(c.MessageID)
		cn.mu.Unlock()
		if ok && a.reply != "" {
			b.replies = append(b.replies, a.reply)
			if c.CampaignID != "" {
				b.camps = append(b.camps, c.CampaignID)
			}
		}
	}
	if len(b.replies) == 0 {
		return
	}
	select {
	case cn.ackq <- b:
	case <-cn.n.stop: // the acker may be gone
		cn.ackAfterCounts(b)
	}
}

// ackBatch: deliveries to ack (their reply subjects) and the campaigns of
// their messages.
type ackBatch struct {
	replies []string
	camps   []string
}

// startAcker acks settled deliveries in the background, each batch after
// this node's counts of its campaigns are stored (ackAfterCounts).
func (cn *clusterNode) startAcker() {
	n := cn.n
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		for {
			select {
			case <-n.stop:
				for {
					select {
					case b := <-cn.ackq:
						cn.ackAfterCounts(b)
					default:
						return
					}
				}
			case b := <-cn.ackq:
			more:
				for len(b.replies) < 8192 {
					select {
					case o := <-cn.ackq:
						b.replies, b.camps = append(b.replies, o.replies...), append(b.camps, o.camps...)
					default:
						break more
					}
				}
				cn.ackAfterCounts(b)
			}
		}
	}()
}

// ackAfterCounts stores this node's counts of b's campaigns, then acks b's
// deliveries: a message acked here is in this node's stored counts, so a
// node that dies after acking has lost no count (before, its counts went
// out every 500 ms and the last ones died with it: a campaign then never
// added up and never showed done).
func (cn *clusterNode) ackAfterCounts(b ackBatch) {
	if cn.camps != nil && len(b.camps) > 0 {
		slices.Sort(b.camps)
		cn.camps.flush(slices.Compact(b.camps))
	}
	for _, r := range b.replies {
		if err := cn.c.NC.Publish(r, []byte("+ACK")); err == nil {
			cn.acked.Add(1)
		}
	}
}

// clusterStatus is a status as the cluster keeps it (KV HERALD_STATUS,
// one revision per change).
type clusterStatus struct {
	S  string `json:"s"`
	C  int    `json:"c,omitempty"`
	T  int64  `json:"t"`
	B  string `json:"b"`
	PN string `json:"pn"`
	M  string `json:"m,omitempty"`
	X  int64  `json:"x,omitempty"`
}

func (cn *clusterNode) publishStatus(c heraldtype.StatusChange) {
	v, _ := json.Marshal(clusterStatus{S: c.Status, C: c.Code, T: c.TS, B: c.BusinessID, PN: c.PhoneNumberID, M: c.CampaignID, X: c.Expires})
	if _, err := cn.c.JS.PublishAsync("$KV."+cluster.StatusBucket+"."+c.MessageID, v, jetstream.WithStallWait(5*time.Second)); err != nil {
		cn.n.cfg.Logger.Warn("cluster: status not published", "id", c.MessageID, "err", err)
	}
}

// Message answers GET /v1/messages/{id} from the cluster's statuses.
func (cn *clusterNode) Message(id string) (*records.MessageStatus, error) {
	if !validKey(id) {
		return nil, records.ErrNotFound
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hist, err := cn.c.Status.History(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || (err == nil && len(hist) == 0) {
		return nil, records.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	var out records.MessageStatus
	for _, e := range hist {
		var s clusterStatus
		if e.Operation() != jetstream.KeyValuePut || json.Unmarshal(e.Value(), &s) != nil {
			continue
		}
		out.BusinessID, out.PhoneNumberID = s.B, s.PN
		if s.M != "" {
			out.CampaignID = s.M
		}
		if out.Status == "" || heraldtype.Rank(s.S) >= heraldtype.Rank(out.Status) {
			out.Status, out.Code = s.S, s.C
		}
		out.Expires = max(out.Expires, s.X)
		out.History = append(out.History, records.StatusHistory{Status: s.S, TS: s.T, Code: s.C})
	}
	if out.Status == "" {
		return nil, records.ErrNotFound
	}
	return &out, nil
}

func validKey(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// eventRouter is the API's event handler in cluster mode: each event goes
// to the partition of the user it names (JetStream, acknowledged before the
// platform's request is answered), where that partition's owner applies it.
type eventRouter struct{ cn *clusterNode }

func (er eventRouter) HandleEvents(ctx context.Context, evs []platform.Event) error {
	cn := er.cn
	parts := make([]int, len(evs))
	// An event names the user, and the business only on some types: the
	// others' business comes from the message's status in the cluster
	// (looked up in parallel, at most 64 at a time).
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := range evs {
		ev := &evs[i]
		if ev.Business != "" {
			if pn, ok := cn.n.Tenants.PhoneNumberID(ev.Business); ok {
				if b, err := cn.n.Tenants.ByPhoneNumberID(pn); err == nil {
					parts[i] = cn.partition(heraldtype.QueueRecipient(b.ID, ev.User))
					continue
				}
			}
		}
		if ev.ID == "" || !validKey(ev.ID) {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			e, err := cn.c.Status.Get(gctx, evs[i].ID)
			if err != nil {
				return
			}
			var s clusterStatus
			if json.Unmarshal(e.Value(), &s) == nil && s.B != "" {
				parts[i] = cn.partition(heraldtype.QueueRecipient(s.B, evs[i].User))
			}
		}(i)
	}
	wg.Wait()
	byPart := map[int][]platform.Event{}
	for i, ev := range evs {
		byPart[parts[i]] = append(byPart[parts[i]], ev)
	}
	futs := make([]jetstream.PubAckFuture, 0, len(byPart))
	for p, es := range byPart {
		v, _ := json.Marshal(es)
		f, err := cn.c.JS.PublishAsync(cluster.EventsSubject(p), v, jetstream.WithStallWait(30*time.Second))
		if err != nil {
			return err
		}
		futs = append(futs, f)
	}
	for _, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// joinCluster connects to (or starts) NATS, loads the cluster's businesses
// and keeps them current, and routes this node's work through JetStream.
func (n *Node) joinCluster() error {
	cc := *n.cfg.Cluster
	cc.Partitions = n.Queue.Shards()
	if cc.StoreDir == "" {
		cc.StoreDir = cluster.StoreDir(n.cfg.DataDir)
	}
	if cc.Logger == nil {
		cc.Logger = n.cfg.Logger
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := cluster.Open(ctx, cc)
	if err != nil {
		return &ConfigError{"nats", err.Error()}
	}
	n.cluster = newClusterNode(n, c)
	// Businesses: every change goes to the KV bucket first; every node
	// (this one too) applies what the bucket holds, now and as it changes.
	if err := n.watchShared(c.Tenants, "business or webhook", n.applyShared); err != nil {
		return err
	}
	tenants := c.Tenants
	put := func(key string, sealed []byte) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := tenants.Put(ctx, key, sealed)
		return err
	}
	n.Tenants.SetReplicator(put)
	n.Webhooks.SetReplicator(func(pn string, sealed []byte) error { return put("w."+pn, sealed) }, func(pn string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return tenants.Delete(ctx, "w."+pn)
	})
	cn := n.cluster
	n.Metrics.CounterFunc("cluster_partitions_gained_total", "Partitions this node took over since start.", func() float64 { return float64(cn.owner.Gained()) })
	n.Metrics.GaugeFunc("cluster_partitions_held", "Partitions this node works now.", func() float64 { return float64(len(cn.owner.Held())) })
	n.Metrics.CounterFunc("cluster_intaken_total", "Messages taken from JetStream into the local queue.", func() float64 { return float64(cn.intaken.Load()) })
	n.Metrics.CounterFunc("cluster_acked_total", "Messages acked to JetStream once settled.", func() float64 { return float64(cn.acked.Load()) })
	return nil
}

// shareLimits makes the limiter's opt-outs and quality signals cluster-wide
// (after joinCluster, once the limiter exists).
func (n *Node) shareLimits() error {
	c := n.cluster.c
	// Opt-outs likewise (keyed ids only: "<business id>.<hex>").
	if err := n.watchShared(c.OptOuts, "opt-out", n.applyOptOut); err != nil {
		return err
	}
	n.Limits.SetOptReplicator(func(biz string, h [16]byte, since int64) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.OptOuts.Put(ctx, biz+"."+hex.EncodeToString(h[:]), binary.BigEndian.AppendUint64(nil, uint64(since)))
		return err
	}, func(biz string, h [16]byte) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return c.OptOuts.Delete(ctx, biz+"."+hex.EncodeToString(h[:]))
	})
	return n.shareQuality()
}

// watchShared applies every entry of a bucket now (before the node serves)
// and every change after, until the node stops.
func (n *Node) watchShared(kv jetstream.KeyValue, what string, apply func(jetstream.KeyValueEntry) error) error {
	w, err := kv.WatchAll(context.Background()) // lives until the node stops (w.Stop)
	if err != nil {
		return err
	}
	for e := range w.Updates() {
		if e == nil {
			break // the bucket's current values are applied
		}
		if err := apply(e); err != nil {
			w.Stop()
			return err
		}
	}
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		defer w.Stop()
		for {
			select {
			case <-n.stop:
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e != nil {
					if err := apply(e); err != nil {
						n.cfg.Logger.Error("cluster: replicated "+what+" not applied", "err", err)
					}
				}
			}
		}
	}()
	return nil
}

// applyOptOut applies one entry of KV HERALD_OPTOUTS.
func (n *Node) applyOptOut(e jetstream.KeyValueEntry) error {
	biz, hx, ok := strings.Cut(e.Key(), ".")
	var h [16]byte
	if b, err := hex.DecodeString(hx); !ok || err != nil || len(b) != len(h) {
		return fmt.Errorf("cluster: opt-out key %q", e.Key())
	} else {
		copy(h[:], b)
	}
	if e.Operation() != jetstream.KeyValuePut {
		return n.Limits.ApplyOptIn(biz, h)
	}
	if len(e.Value()) != 8 {
		return fmt.Errorf("cluster: opt-out %q: value of %d bytes", e.Key(), len(e.Value()))
	}
	return n.Limits.ApplyOptOut(biz, h, int64(binary.BigEndian.Uint64(e.Value())))
}

// applyShared applies one entry of KV HERALD_TENANTS: a business (key: its
// id) or a phone number's webhook (w.<phone_number_id>).
func (n *Node) applyShared(e jetstream.KeyValueEntry) error {
	if pn, ok := strings.CutPrefix(e.Key(), "w."); ok {
		if e.Operation() != jetstream.KeyValuePut {
			return n.Webhooks.ApplyDelete(pn)
		}
		return n.Webhooks.ApplyConfig(pn, e.Value())
	}
	if e.Operation() == jetstream.KeyValuePut {
		return n.Tenants.ApplySealed(e.Value())
	}
	return nil
}

// Cluster is the node's cluster connection (nil for a single node).
func (n *Node) Cluster() *cluster.Cluster {
	if n.cluster == nil {
		return nil
	}
	return n.cluster.c
}

// HeldPartitions lists the partitions this node works (nil for a single node).
func (n *Node) HeldPartitions() []int {
	if n.cluster == nil {
		return nil
	}
	return n.cluster.owner.Held()
}

// ClusterDebug describes the node's deliveries awaiting their ack.
func (n *Node) ClusterDebug() string {
	if n.cluster == nil {
		return ""
	}
	cn := n.cluster
	cn.mu.Lock()
	defer cn.mu.Unlock()
	per := map[int]int{}
	for _, a := range cn.acks {
		per[a.p]++
	}
	return fmt.Sprintf("acks=%d per partition %v intaken=%d acked=%d", len(cn.acks), per, cn.intaken.Load(), cn.acked.Load())
}
