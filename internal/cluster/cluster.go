// Package cluster joins a node to a Herald cluster on NATS JetStream
// (DESIGN "Scale-out"): an embedded NATS server or an existing one, the
// streams and buckets every node shares, and partition ownership.
//
// What JetStream holds, replicated as configured (--nats-replicas):
//
//	HERALD_WORK     stream, work-queue retention: one sealed record per accepted
//	                message on herald.work.<partition>, until its owner acks it
//	                (the message reached sent, failed or canceled)
//	HERALD_EVENTS   stream, work-queue retention: the platform's events, routed to
//	                the partition of the user they name (herald.events.<partition>)
//	KV HERALD_LEASES  partition → node id: the lease of the node that works it
//	KV HERALD_NODES   node id → heartbeat: who is alive, for balancing only
//	KV HERALD_STATUS  message id → its status history (any node answers GET)
//	KV HERALD_TENANTS business id → sealed business record (tokens included)
//	KV HERALD_CAMPAIGNS campaign records, control states, each node's counts
//	KV HERALD_TIER    tiers' unique recipients (node/cluster_tier.go)
//
// A partition is a queue shard (a keyed HMAC of the recipient picks it, the
// same on every node: they share the master key). Ownership is a lease in a
// replicated KV bucket: created with Create (atomic: one node wins), renewed
// with Update on the revision it holds (compare-and-set), gone when the
// bucket's max age passes without a renewal. The KV bucket's Raft group is
// the only consensus; nothing here votes or elects.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Config of cluster mode. Zero values take defaults.
type Config struct {
	// URLs of an existing NATS (--nats); empty with Embed.
	URLs []string
	// Embed runs a NATS server with JetStream inside the node (--nats-embed).
	Embed bool
	// Listen is the embedded server's client address (--nats-listen);
	// default 127.0.0.1:4222 (":0"-style ports pick a free one).
	Listen string
	// ClusterListen is the embedded server's route address (--nats-cluster);
	// empty: a one-server NATS.
	ClusterListen string
	// Routes to the other embedded servers (--nats-routes).
	Routes []string
	// Replicas of every stream and bucket (--nats-replicas): 1 or 3.
	Replicas int
	// NodeID names this node (--node-id); default the host name.
	NodeID string
	// StoreDir of the embedded server (<data>/nats).
	StoreDir string
	// Partitions: the queue's shards (the same on every node).
	Partitions int
	// LeaseTTL: a partition whose owner stopped renewing is free this long
	// after its last renewal; default 6 s.
	LeaseTTL time.Duration
	// NoSyncAlways: the embedded server flushes to disk every 2 minutes
	// (NATS's default) instead of before each acknowledgement
	// (--nats-sync-always=false). Replicas 1 then loses what a power cut
	// catches in the page cache; see README "Cluster".
	NoSyncAlways bool
	// MaxPending bounds the un-acked messages a partition's owner holds in
	// its local queue; default 100,000 (the rest wait in JetStream).
	MaxPending int
	Logger     *slog.Logger
}

// Validate reports the first setting that cannot work.
func (c *Config) Validate() error {
	switch {
	case !c.Embed && len(c.URLs) == 0:
		return errors.New("cluster: --nats or --nats-embed is required")
	case c.Embed && len(c.URLs) > 0:
		return errors.New("cluster: --nats and --nats-embed exclude each other")
	case c.Replicas != 1 && c.Replicas != 3:
		return errors.New("cluster: --nats-replicas must be 1 or 3")
	case c.Partitions < 1:
		return errors.New("cluster: no partitions")
	case !c.Embed && (c.ClusterListen != "" || len(c.Routes) > 0):
		return errors.New("cluster: --nats-cluster and --nats-routes need --nats-embed")
	case len(c.Routes) > 0 && c.ClusterListen == "":
		return errors.New("cluster: --nats-routes needs --nats-cluster (this server's route address)")
	}
	if c.NodeID != "" && !validToken(c.NodeID) {
		return errors.New("cluster: --node-id may hold letters, digits, '-' and '_' only")
	}
	return nil
}

func validToken(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func (c *Config) ensureDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:4222"
	}
	if c.NodeID == "" {
		h, _ := os.Hostname()
		c.NodeID = strings.Map(func(r rune) rune {
			if validToken(string(r)) {
				return r
			}
			return '_'
		}, h)
		if c.NodeID == "" {
			c.NodeID = "node"
		}
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 6 * time.Second
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 100_000
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Names of the streams and buckets.
const (
	WorkStream      = "HERALD_WORK"
	EventsStream    = "HERALD_EVENTS"
	LeasesBucket    = "HERALD_LEASES"
	NodesBucket     = "HERALD_NODES"
	StatusBucket    = "HERALD_STATUS"
	TenantsBucket   = "HERALD_TENANTS"
	CampaignsBucket = "HERALD_CAMPAIGNS"
	TierBucket      = "HERALD_TIER"
	OptOutsBucket   = "HERALD_OPTOUTS"
	QualityBucket   = "HERALD_QUALITY"
	PreKeysBucket   = "HERALD_PREKEYS"
	IdemBucket      = "HERALD_IDEMPOTENCY"
	HoldsBucket     = "HERALD_HOLDS"
	WorkersBucket   = "HERALD_WORKERS"
	// TierWindow: what a tier counts (unique recipients in a moving 24 h).
	TierWindow = 24 * time.Hour
	// HoldTTL: how long a dead node's hold on an Idempotency-Key outlives it.
	HoldTTL = time.Minute
)

// Cluster is this node's connection to the cluster.
type Cluster struct {
	cfg Config
	log *slog.Logger
	srv *server.Server
	NC  *nats.Conn
	JS  jetstream.JetStream
	// ctl carries the leases and heartbeats on a connection of their own:
	// a renewal never queues behind the bulk publishes of a busy node (it
	// did: leases lost under load, every session then rebuilt).
	ctl   *nats.Conn
	ctlJS jetstream.JetStream
	// instance tells this process's leases from those of an earlier run
	// under the same node id.
	instance string

	Work, Events                     jetstream.Stream
	leases, nodes, workers           jetstream.KeyValue
	Status, Tenants, CampaignsBucket jetstream.KeyValue
	Tier                             jetstream.KeyValue
	OptOuts, Quality, PreKeys, Idem  jetstream.KeyValue
	Holds                            jetstream.KeyValue
}

// NodeID is this node's name.
func (c *Cluster) NodeID() string { return c.cfg.NodeID }

// Partitions is the number of partitions.
func (c *Cluster) Partitions() int { return c.cfg.Partitions }

// Replicas of the streams and buckets.
func (c *Cluster) Replicas() int { return c.cfg.Replicas }

// ClientURL is the embedded server's client URL ("" without one).
func (c *Cluster) ClientURL() string {
	if c.srv == nil {
		return ""
	}
	return c.srv.ClientURL()
}

// Open starts the embedded server (if asked), connects, and makes sure the
// streams and buckets exist with this node's settings. It waits up to
// ctx's deadline for JetStream (a cluster's meta leader) to be ready.
func Open(ctx context.Context, cfg Config) (c *Cluster, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.ensureDefaults()
	c = &Cluster{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeID)}
	opened := c
	defer func() {
		if err != nil {
			opened.Close()
		}
	}()
	urls := strings.Join(cfg.URLs, ",")
	if cfg.Embed {
		if err := c.startServer(); err != nil {
			return nil, err
		}
		urls = c.srv.ClientURL()
	}
	c.NC, err = nats.Connect(urls, nats.Name("herald-"+cfg.NodeID), nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		return nil, fmt.Errorf("cluster: connect to %s: %w", urls, err)
	}
	if c.JS, err = jetstream.New(c.NC, jetstream.WithPublishAsyncMaxPending(8192)); err != nil {
		return nil, err
	}
	c.ctl, err = nats.Connect(urls, nats.Name("herald-"+cfg.NodeID+"-ctl"), nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		return nil, fmt.Errorf("cluster: connect to %s: %w", urls, err)
	}
	if c.ctlJS, err = jetstream.New(c.ctl); err != nil {
		return nil, err
	}
	var nonce [6]byte
	_, _ = rand.Read(nonce[:])
	c.instance = hex.EncodeToString(nonce[:])
	for {
		err = c.ensure(ctx)
		if err == nil {
			return c, nil
		}
		c.log.Warn("cluster: waiting for JetStream", "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cluster: JetStream not ready: %w", err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *Cluster) startServer() error {
	cfg := c.cfg
	host, port, err := splitHostPort(cfg.Listen)
	if err != nil {
		return fmt.Errorf("cluster: --nats-listen: %w", err)
	}
	opts := &server.Options{
		ServerName: cfg.NodeID,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		// Every write is flushed to disk before JetStream acknowledges it
		// (for replicated streams: the Raft log, flushed per append batch),
		// so "accepted" survives the loss of the machine, not only of the
		// process.
		SyncAlways: !cfg.NoSyncAlways,
		NoSigs:     true,
		NoLog:      true,
		// A node's JetStream may use what the machine has; Herald's own
		// bounds (the queue's backpressure) come first.
		JetStreamMaxMemory: 256 << 20,
	}
	if cfg.ClusterListen != "" {
		ch, cp, err := splitHostPort(cfg.ClusterListen)
		if err != nil {
			return fmt.Errorf("cluster: --nats-cluster: %w", err)
		}
		opts.Cluster = server.ClusterOpts{Name: "herald", Host: ch, Port: cp}
		for _, r := range cfg.Routes {
			if !strings.Contains(r, "://") {
				r = "nats://" + r
			}
			u, err := url.Parse(r)
			if err != nil {
				return fmt.Errorf("cluster: --nats-routes %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	if err := os.MkdirAll(cfg.StoreDir, 0o700); err != nil {
		return err
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("cluster: NATS server: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return fmt.Errorf("cluster: NATS server on %s did not start (port in use?)", cfg.Listen)
	}
	c.srv = s
	return nil
}

func splitHostPort(hp string) (string, int, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 0 || n > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	if n == 0 {
		n = server.RANDOM_PORT
	}
	return h, n, nil
}

// MaxAge of what the streams keep: a message lives at most 30 days (and a
// day of slack for a message accepted at its deadline).
const maxAge = 31 * 24 * time.Hour

func (c *Cluster) ensure(ctx context.Context) error {
	r := c.cfg.Replicas
	var err error
	octx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c.Work, err = c.JS.CreateOrUpdateStream(octx, jetstream.StreamConfig{
		Name: WorkStream, Subjects: []string{"herald.work.*"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, Replicas: r, MaxAge: maxAge, Duplicates: 2 * time.Minute,
		MaxMsgSize: 1 << 20,
	})
	if err != nil {
		return err
	}
	c.Events, err = c.JS.CreateOrUpdateStream(octx, jetstream.StreamConfig{
		Name: EventsStream, Subjects: []string{"herald.events.*"}, Retention: jetstream.WorkQueuePolicy,
		Storage: jetstream.FileStorage, Replicas: r, MaxAge: 24 * time.Hour, MaxMsgSize: 4 << 20,
	})
	if err != nil {
		return err
	}
	kv := func(name string, ttl time.Duration, history uint8) (jetstream.KeyValue, error) {
		return c.JS.CreateOrUpdateKeyValue(octx, jetstream.KeyValueConfig{Bucket: name, TTL: ttl, History: history,
			Storage: jetstream.FileStorage, Replicas: r})
	}
	if _, err = kv(LeasesBucket, c.cfg.LeaseTTL, 1); err != nil {
		return err
	}
	if _, err = kv(NodesBucket, c.cfg.LeaseTTL, 1); err != nil {
		return err
	}
	// Who last worked each partition (no TTL): a node that takes back a
	// partition nobody else worked since keeps its sessions.
	if _, err = kv(WorkersBucket, 0, 1); err != nil {
		return err
	}
	if c.workers, err = c.ctlJS.KeyValue(octx, WorkersBucket); err != nil {
		return err
	}
	if c.leases, err = c.ctlJS.KeyValue(octx, LeasesBucket); err != nil {
		return err
	}
	if c.nodes, err = c.ctlJS.KeyValue(octx, NodesBucket); err != nil {
		return err
	}
	if c.Status, err = kv(StatusBucket, maxAge, 8); err != nil {
		return err
	}
	if c.Tenants, err = kv(TenantsBucket, 0, 1); err != nil {
		return err
	}
	if c.CampaignsBucket, err = kv(CampaignsBucket, maxAge, 1); err != nil {
		return err
	}
	// Idempotent answers and upload progress: the records say when they
	// are forgotten (at most 24 h); the bucket keeps them a little longer.
	if c.Idem, err = kv(IdemBucket, 25*time.Hour, 1); err != nil {
		return err
	}
	// Requests in progress, per Idempotency-Key: refreshed while held, gone
	// HoldTTL after a node died holding one.
	if c.Holds, err = kv(HoldsBucket, HoldTTL, 1); err != nil {
		return err
	}
	if c.PreKeys, err = kv(PreKeysBucket, 0, 1); err != nil {
		return err
	}
	if c.OptOuts, err = kv(OptOutsBucket, 0, 1); err != nil {
		return err
	}
	// Quality: each node's signal windows per phone number (7 days of hours).
	if c.Quality, err = kv(QualityBucket, 8*24*time.Hour, 1); err != nil {
		return err
	}
	c.Tier, err = kv(TierBucket, TierWindow, 1)
	return err
}

// WorkSubject is the subject of partition p's messages.
func WorkSubject(p int) string { return "herald.work." + strconv.Itoa(p) }

// EventsSubject is the subject of partition p's platform events.
func EventsSubject(p int) string { return "herald.events." + strconv.Itoa(p) }

// Close drains the connection and stops the embedded server.
func (c *Cluster) Close() {
	if c.NC != nil {
		_ = c.NC.FlushTimeout(2 * time.Second) // the last acks and statuses
		c.NC.Close()
	}
	if c.ctl != nil {
		c.ctl.Close()
	}
	if c.srv != nil {
		c.srv.Shutdown()
		c.srv.WaitForShutdown()
	}
}

// StoreDir returns <dataDir>/nats.
func StoreDir(dataDir string) string { return filepath.Join(dataDir, "nats") }

// Sever cuts this node off the cluster at once, as a crash or a network
// partition would: the connection closes and the embedded server stops,
// nothing is given back. Its leases run out; it stops working them when
// it cannot renew (Owner.Owns), and live nodes take them. Tests use it to
// kill a node in process.
func (c *Cluster) Sever() {
	if c.NC != nil {
		c.NC.Close()
	}
	if c.ctl != nil {
		c.ctl.Close()
	}
	if c.srv != nil {
		c.srv.Shutdown()
	}
}

// Pending is how many accepted messages JetStream still holds: not yet
// settled (sent, failed or canceled) by the node working their partition.
func (c *Cluster) Pending(ctx context.Context) (uint64, error) {
	info, err := c.Work.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}
