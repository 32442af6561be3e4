package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/heraldhq/herald/internal/cluster"
)

// clusterFlags are serve's cluster settings (DESIGN "Scale-out").
type clusterFlags struct {
	nats, listen, clusterListen, routes, nodeID string
	embed, syncAlways                           bool
	replicas                                    int
	leaseTTL                                    time.Duration
}

func (c *clusterFlags) add(f *pflag.FlagSet) {
	f.StringVar(&c.nats, "nats", "", "join a cluster through this NATS JetStream, URL[,URL] (empty, without --nats-embed: a single node)")
	f.BoolVar(&c.embed, "nats-embed", false, "run a NATS server with JetStream inside this node (storage in <data>/nats)")
	f.StringVar(&c.listen, "nats-listen", "127.0.0.1:4222", "with --nats-embed: the NATS client address")
	f.StringVar(&c.clusterListen, "nats-cluster", "", "with --nats-embed: this server's route address HOST:PORT (empty: a one-server NATS)")
	f.StringVar(&c.routes, "nats-routes", "", "with --nats-embed: the other servers' route URLs, URL[,URL]")
	f.IntVar(&c.replicas, "nats-replicas", 1, "replication of every stream and bucket: 1 or 3")
	f.StringVar(&c.nodeID, "node-id", "", "this node's name in the cluster (default: the host name)")
	f.BoolVar(&c.syncAlways, "nats-sync-always", true, "with --nats-embed: flush every JetStream write to disk before acknowledging it (false: every 2 minutes, much faster with replicas 1)")
	f.DurationVar(&c.leaseTTL, "nats-lease-ttl", 6*time.Second, "a dead node's partitions move to live nodes this long after its last lease renewal (every node the same)")
}

// config is the cluster configuration, or nil when no cluster flag asks for one.
func (c *clusterFlags) config() (*cluster.Config, error) {
	if c.nats == "" && !c.embed {
		if c.clusterListen != "" || c.routes != "" {
			return nil, fmt.Errorf("invalid setting nats-cluster/nats-routes: need --nats-embed")
		}
		return nil, nil
	}
	cc := &cluster.Config{Embed: c.embed, Listen: c.listen, ClusterListen: c.clusterListen, Replicas: c.replicas, NodeID: c.nodeID,
		URLs: splitList(c.nats), Routes: splitList(c.routes), Partitions: 1, LeaseTTL: c.leaseTTL, NoSyncAlways: !c.syncAlways}
	if c.leaseTTL < time.Second || c.leaseTTL > 5*time.Minute {
		return nil, fmt.Errorf("invalid setting nats-lease-ttl: must be between 1s and 5m")
	}
	if err := cc.Validate(); err != nil {
		return nil, fmt.Errorf("invalid setting: %v", strings.TrimPrefix(err.Error(), "cluster: "))
	}
	cc.Partitions = 0 // the node sets it: its queue's shards
	return cc, nil
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}
