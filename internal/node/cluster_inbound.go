package node

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/inbound"
	"github.com/heraldhq/herald/internal/platform"
)

// Inbound in a cluster (DESIGN "Inbound", "Scale-out"): any node takes
// /v1/platform/inbound; each envelope is decrypted by the node that works
// its user's partition — the one holding the sessions with that user —
// over a NATS request, and answered as that node answers it (accepted once
// durable there; "retry" when no owner answers, so the platform sends it
// again). The businesses' prekeys are made by one node (the owner of
// partition 0) and stored on every node (KV HERALD_PREKEYS) before they are
// uploaded; a consumed one-time prekey is deleted on every node.

const (
	keysSubject = "herald.keys"
	// inboundChunk bounds one request's ciphertext (NATS's payload limit
	// is 1 MB by default).
	inboundChunk = 512 << 10
)

func inboundSubject(node string) string { return "herald.inbound." + node }

type inboundRequest struct {
	P         int                `json:"p"`
	Envelopes []inbound.Envelope `json:"envelopes"`
}

// shareInbound wires the prekeys and the inbound routing (after the
// receiver and the key uploader exist).
func (n *Node) shareInbound() error {
	cn := n.cluster
	c := cn.c
	if err := n.watchShared(c.PreKeys, "prekey", func(e jetstream.KeyValueEntry) error {
		if e.Operation() != jetstream.KeyValuePut {
			return n.sessions.ApplyPreKey(e.Key(), nil)
		}
		return n.sessions.ApplyPreKey(e.Key(), e.Value())
	}); err != nil {
		return err
	}
	n.sessions.SetPreKeyReplicator(func(key string, sealed []byte) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.PreKeys.Put(ctx, key, sealed)
		return err
	}, func(key string) {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := c.PreKeys.Delete(ctx, key); err != nil {
				n.cfg.Logger.Warn("cluster: a consumed prekey was not deleted on the other nodes", "err", err)
			}
		}()
	})
	// Key requests (a number created, prekeys_low) go to every node; the
	// uploader of the owner of partition 0 acts on them.
	n.keys.cluster = cn
	if _, err := c.NC.Subscribe(keysSubject, func(m *nats.Msg) {
		var r struct {
			Digits string `json:"d"`
			N      int    `json:"n"`
		}
		if json.Unmarshal(m.Data, &r) == nil && r.Digits != "" && cn.owner.Owns(0) {
			n.keys.add(r.Digits, min(max(r.N, 0), keysBatch))
		}
	}); err != nil {
		return err
	}
	if err := n.serveInboundOps(); err != nil {
		return err
	}
	sem := make(chan struct{}, 64)
	_, err := c.NC.Subscribe(inboundSubject(c.NodeID()), func(m *nats.Msg) {
		sem <- struct{}{}
		go func() {
			defer func() { <-sem }()
			var req inboundRequest
			if err := json.Unmarshal(m.Data, &req); err != nil {
				return // no answer: the asking node answers "retry"
			}
			var out []inbound.Result
			if !cn.owner.Owns(req.P) {
				out = retryAll(req.Envelopes)
			} else {
				out = n.Inbound.Receive(req.Envelopes)
			}
			v, _ := json.Marshal(out)
			_ = m.Respond(v)
		}()
	})
	return err
}

// inboundOp asks the node holding an inbound message for it, or to mark it
// read (the node that decrypted it keeps it, with its receipts' outbox).
type inboundOp struct {
	Op string `json:"op"` // "get" | "read"
	ID string `json:"id"`
	B  string `json:"b"`
	PN string `json:"pn,omitempty"`
}

type inboundOpAnswer struct {
	Node  string           `json:"node"`
	Found bool             `json:"found"`
	M     *inbound.Message `json:"m,omitempty"`
	Err   string           `json:"err,omitempty"`
}

// serveInboundOps answers other nodes' inboundOp requests.
func (n *Node) serveInboundOps() error {
	c := n.cluster.c
	_, err := c.NC.Subscribe(inboundOpSubject, func(m *nats.Msg) {
		var op inboundOp
		if json.Unmarshal(m.Data, &op) != nil {
			return
		}
		go func() {
			a := inboundOpAnswer{Node: c.NodeID()}
			switch op.Op {
			case "get":
				if msg, err := n.Inbound.Get(op.ID); err == nil && msg.BusinessID == op.B {
					a.Found, a.M = true, msg
				} else if err != nil && !errors.Is(err, inbound.ErrNotFound) {
					a.Found, a.Err = true, err.Error()
				}
			case "read":
				err := n.Inbound.MarkRead(op.B, op.PN, op.ID)
				if !errors.Is(err, inbound.ErrNotFound) {
					a.Found = true
					if err != nil {
						a.Err = err.Error()
					}
				}
			}
			v, _ := json.Marshal(a)
			_ = m.Respond(v)
		}()
	})
	return err
}

const inboundOpSubject = "herald.inbound.op"

// inboundElsewhere is api.InboundRemote over the other nodes.
type inboundElsewhere struct{ cn *clusterNode }

func (ie inboundElsewhere) ask(op inboundOp) (inboundOpAnswer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	v, _ := json.Marshal(op)
	var found inboundOpAnswer
	if _, err := ie.cn.gather(ctx, inboundOpSubject, v, func(data []byte) (string, bool) {
		var a inboundOpAnswer
		if json.Unmarshal(data, &a) != nil {
			return "", false
		}
		if a.Found {
			found = a
		}
		return a.Node, a.Found
	}); err != nil {
		return found, err
	}
	if !found.Found {
		return found, inbound.ErrNotFound
	}
	if found.Err != "" {
		return found, errors.New(found.Err)
	}
	return found, nil
}

func (ie inboundElsewhere) Get(businessID, id string) (*inbound.Message, error) {
	a, err := ie.ask(inboundOp{Op: "get", ID: id, B: businessID})
	if err != nil {
		return nil, err
	}
	return a.M, nil
}

func (ie inboundElsewhere) MarkRead(businessID, pn, id string) error {
	_, err := ie.ask(inboundOp{Op: "read", ID: id, B: businessID, PN: pn})
	return err
}

func retryAll(envs []inbound.Envelope) []inbound.Result {
	out := make([]inbound.Result, len(envs))
	for i, e := range envs {
		out[i] = inbound.Result{ID: e.ID, Status: platform.StatusError, Code: inbound.CodeRetry}
	}
	return out
}

// routeInbound answers a /v1/platform/inbound post in cluster mode.
func (cn *clusterNode) routeInbound(envs []inbound.Envelope) []inbound.Result {
	n := cn.n
	out := make([]inbound.Result, len(envs))
	groups := map[int][]int{} // partition → envelope indexes; -1: here (unknown business, malformed)
	for i, e := range envs {
		p := -1
		if pn, ok := n.Tenants.PhoneNumberID(e.To); ok {
			if b, err := n.Tenants.ByPhoneNumberID(pn); err == nil && e.From != "" {
				p = cn.partition(heraldtype.QueueRecipient(b.ID, e.From))
			}
		}
		if p >= 0 && cn.owner.Owns(p) {
			p = -1
		}
		groups[p] = append(groups[p], i)
	}
	var wg sync.WaitGroup
	for p, idx := range groups {
		// Chunks of at most inboundChunk bytes of ciphertext, in order.
		for len(idx) > 0 {
			k, size := 0, 0
			for k < len(idx) && (k == 0 || size+len(envs[idx[k]].Ciphertext) <= inboundChunk) {
				size += len(envs[idx[k]].Ciphertext)
				k++
			}
			chunk := idx[:k]
			idx = idx[k:]
			part := make([]inbound.Envelope, len(chunk))
			for j, i := range chunk {
				part[j] = envs[i]
			}
			wg.Add(1)
			go func(p int, chunk []int, part []inbound.Envelope) {
				defer wg.Done()
				var res []inbound.Result
				if p < 0 {
					res = n.Inbound.Receive(part)
				} else {
					res = cn.askOwner(p, part)
				}
				for j, i := range chunk {
					out[i] = res[j]
				}
			}(p, chunk, part)
		}
	}
	wg.Wait()
	return out
}

// askOwner hands envelopes of partition p to its owner; "retry" for all of
// them when it does not answer in time (the partition moving, say).
func (cn *clusterNode) askOwner(p int, envs []inbound.Envelope) []inbound.Result {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	owner, err := cn.c.Owner(ctx, p)
	if err != nil || owner == "" {
		return retryAll(envs)
	}
	v, _ := json.Marshal(inboundRequest{P: p, Envelopes: envs})
	m, err := cn.c.NC.RequestWithContext(ctx, inboundSubject(owner), v)
	if err != nil {
		cn.n.cfg.Logger.Warn("cluster: the partition's owner did not take inbound envelopes; the platform retries", "partition", p, "owner", owner, "err", err)
		return retryAll(envs)
	}
	var res []inbound.Result
	if json.Unmarshal(m.Data, &res) != nil || len(res) != len(envs) {
		return retryAll(envs)
	}
	for i := range res {
		res[i].ID = envs[i].ID // the answer names only what was asked
	}
	return res
}
