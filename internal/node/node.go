package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/valyala/fasthttp"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/api"
	"github.com/heraldhq/herald/internal/campaigns"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/cluster"
	"github.com/heraldhq/herald/internal/inbound"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/metrics"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/platform/sim"
	"github.com/heraldhq/herald/internal/records"
	"github.com/heraldhq/herald/internal/seal"
	"github.com/heraldhq/herald/internal/signal"
	"github.com/heraldhq/herald/internal/tenant"
	"github.com/heraldhq/herald/internal/webhook"
	"github.com/heraldhq/herald/queue"
	"github.com/heraldhq/herald/ratelimit"
)

// Config configures a node. Zero values take the documented defaults.
type Config struct {
	// DataDir holds the database, the master key and the admin token; default ./herald-data.
	DataDir string
	// Listen address of the API; default 127.0.0.1:8080.
	Listen string
	// PlatformURL of the messaging platform; empty starts the embedded simulator.
	PlatformURL string
	// PlatformSecret shared with the platform; required with PlatformURL,
	// random for the embedded simulator.
	PlatformSecret string
	// AdminToken for /admin/v1; empty reads or creates <DataDir>/admin-token.
	AdminToken string
	// MasterKeys ("<id>:<hex>" lines) overrides <DataDir>/master.key (HERALD_MASTER_KEY).
	MasterKeys string
	// Shards of the queue; default 16 (fixed for a data directory).
	Shards int
	// Workers of the engine's pool; default 32.
	Workers int
	// GroupsPerTask: recipient groups per engine task; default 128.
	GroupsPerTask int
	// MaxQueuedBytes: backpressure high-water mark; default 8 GiB.
	MaxQueuedBytes int64
	// QueueShare: a business's default share of the queue (stored bytes),
	// unless the admin API set its max_queued_bytes; default a quarter of
	// MaxQueuedBytes, negative: no share.
	QueueShare int64
	// Sim configures the embedded simulator (when PlatformURL is empty).
	Sim sim.Options
	// MinFreeBytes: below this much free disk space in DataDir the API refuses
	// new messages with 507 (delivery goes on and frees space); default 256 MiB,
	// negative disables the check.
	MinFreeBytes int64
	// FreeSpace reports the free bytes of DataDir's filesystem; default statfs
	// through Pebble's vfs. Tests inject a full disk here.
	FreeSpace func() (uint64, error)
	// FS is the filesystem under the database; default the OS (tests wrap it
	// in Pebble's errorfs).
	FS vfs.FS
	// ReadTimeout, StallTimeout, HeaderTimeout and MaxConnsPerIP of the API
	// (see api.Options).
	ReadTimeout, StallTimeout, HeaderTimeout time.Duration
	MaxConnsPerIP                            int
	// PurgeInterval between physical purges of deleted data (engine.Options).
	PurgeInterval time.Duration
	// NoLimits disables integrity limits (benchmarks of the bare pipeline).
	NoLimits bool
	// Now is the one clock of the node: the queue, the engine, the limits,
	// the API and the webhook sender read it; default time.Now. Tests inject
	// one to move past TTLs.
	Now func() time.Time
	// MetricsListen, when set, serves /metrics on this address and not on
	// the API's (--metrics-listen).
	MetricsListen string
	// WebhookAllow lists the address ranges webhooks may reach besides
	// public ones (--webhook-allow; e.g. 127.0.0.0/8 for a webhook on this
	// machine). Empty: loopback, private, link-local and metadata refused.
	WebhookAllow []netip.Prefix
	// RetentionInterval between the API's retention sweeps (idempotent
	// answers, upload progress, campaign records); default 10 s.
	RetentionInterval time.Duration
	// NoDemoBusiness skips creating a demo business on first start.
	NoDemoBusiness bool
	// Out receives the human-readable start-up lines; default os.Stdout.
	Out    io.Writer
	Logger *slog.Logger
	// OnStatus, when set, also receives every batch of status transitions
	// once committed (the demo times them; it must not block).
	OnStatus func([]heraldtype.StatusChange)
	// Cluster, when set, joins a cluster on NATS JetStream (DESIGN
	// "Scale-out"); nil: a single node, nothing of NATS started.
	Cluster *cluster.Config
}

// Node is a running (or ready to run) Herald server.
type Node struct {
	cfg Config
	ln  net.Listener
	mln net.Listener // --metrics-listen
	// platformErr is the last platform probe's failure (nil: it answered).
	platformErr atomic.Pointer[error]
	db          *kv.DB
	Sealer      *seal.Sealer
	Queue       *queue.Queue
	Engine      *engine.Engine
	Tenants     *tenant.Store
	Webhooks    *webhook.Sender
	Limits      *ratelimit.Limiter
	API         *api.Server
	// Uploads: campaign records, idempotent answers and upload progress.
	Uploads *records.Uploads
	// Campaigns: paused and canceled campaigns (the engine obeys them).
	Campaigns *campaigns.Control
	// Inbound: what users write to the businesses.
	Inbound *inbound.Receiver
	Sim     *sim.Server
	Metrics *metrics.Metrics
	client  *platform.Client
	// cluster is this node's part in a cluster (nil: a single node).
	cluster *clusterNode

	sessions  *signal.Store
	peerLocks *signal.PeerLocks
	keys      *keyUploader

	AdminToken string
	// DemoToken and DemoPhoneNumberID are set when this start created the demo business.
	DemoToken, DemoPhoneNumberID string

	closeOnce sync.Once
	serveErr  chan error
	stop      chan struct{}
	bg        sync.WaitGroup
}

// ConfigError names the setting that is wrong.
type ConfigError struct{ Setting, Problem string }

func (e *ConfigError) Error() string {
	return fmt.Sprintf("invalid setting %s: %s", e.Setting, e.Problem)
}

// The rate limiter is the engine's Shaper (ratelimit does not import engine).
var _ engine.Shaper = (*ratelimit.Limiter)(nil)

// EnsureDefaults fills the zero fields of c with their defaults: the node's
// own here, the engine's and the API's from their Options (the one place
// each is written). herald serve's flags show these.
func (c *Config) EnsureDefaults() {
	if c.DataDir == "" {
		c.DataDir = "./herald-data"
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8080"
	}
	qo := queue.Options{Shards: c.Shards, MaxQueuedBytes: c.MaxQueuedBytes}
	qo.EnsureDefaults()
	c.Shards, c.MaxQueuedBytes = qo.Shards, qo.MaxQueuedBytes
	if c.Out == nil {
		c.Out = os.Stdout
	}
	if c.Logger == nil {
		c.Logger = defaultLogger()
	}
	if c.QueueShare == 0 {
		c.QueueShare = c.MaxQueuedBytes / 4
	}
	if c.MinFreeBytes == 0 {
		c.MinFreeBytes = 256 << 20
	}
	if c.Now == nil {
		c.Now = clock.Wall
	}
	if c.RetentionInterval <= 0 {
		c.RetentionInterval = 10 * time.Second
	}
	eo := engine.Options{Workers: c.Workers, GroupsPerTask: c.GroupsPerTask, PurgeInterval: c.PurgeInterval}
	eo.EnsureDefaults()
	c.Workers, c.GroupsPerTask, c.PurgeInterval = eo.Workers, eo.GroupsPerTask, eo.PurgeInterval
	ao := api.Options{ReadTimeout: c.ReadTimeout, StallTimeout: c.StallTimeout, HeaderTimeout: c.HeaderTimeout, MaxConnsPerIP: c.MaxConnsPerIP}
	ao.EnsureDefaults()
	c.ReadTimeout, c.StallTimeout, c.HeaderTimeout, c.MaxConnsPerIP = ao.ReadTimeout, ao.StallTimeout, ao.HeaderTimeout, ao.MaxConnsPerIP
}

// Validate reports the first setting of c that cannot work, as a
// *ConfigError naming it.
func (c *Config) Validate() error {
	switch {
	case c.Shards < 1 || c.Shards > 4096 || c.Shards&(c.Shards-1) != 0:
		return &ConfigError{"shards", "must be a power of two between 1 and 4096"}
	case c.MaxQueuedBytes < 0:
		return &ConfigError{"max-queued-bytes", "must be positive"}
	case c.QueueShare > 0 && c.QueueShare < tenant.MinQueuedBytes:
		return &ConfigError{"max-queued-bytes-per-business", fmt.Sprintf("must be at least %d (or negative: no share)", tenant.MinQueuedBytes)}
	case c.PlatformURL != "" && c.PlatformSecret == "":
		return &ConfigError{"platform-secret", "is required with --platform"}
	case c.PlatformURL != "" && !strings.HasPrefix(c.PlatformURL, "http://") && !strings.HasPrefix(c.PlatformURL, "https://"):
		return &ConfigError{"platform", "must be an http:// or https:// URL"}
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return &ConfigError{"listen", "must be HOST:PORT, e.g. 127.0.0.1:8080"}
	}
	return nil
}

// New opens storage and builds every component; nothing is served until Start.
func New(cfg Config) (n *Node, err error) {
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, &ConfigError{"data", err.Error()}
	}
	if err := privateDataDir(cfg.DataDir, cfg.Out); err != nil {
		return nil, &ConfigError{"data", err.Error()}
	}
	n = &Node{cfg: cfg, Metrics: metrics.New(), serveErr: make(chan error, 1), stop: make(chan struct{})}
	// A failed start closes what it opened. The node is held here, not read
	// from the named result: "return nil, err" has set that to nil by the
	// time this runs (a busy --listen port used to panic here).
	built := n
	defer func() {
		if err != nil {
			built.Close()
		}
	}()
	if err := n.openStorage(); err != nil {
		return nil, err
	}
	var eng *engine.Engine
	if err := n.openQueue(func(s int) {
		if eng != nil {
			eng.Notify(s)
		}
	}); err != nil {
		return nil, err
	}
	if n.Tenants, err = tenant.Open(n.db, n.Sealer); err != nil {
		return nil, err
	}

	if n.Campaigns, err = campaigns.Open(n.db); err != nil {
		return nil, err
	}
	tenants := n.Tenants
	if n.Webhooks, err = webhook.New(webhook.Options{DB: n.db, Sealer: n.Sealer, Metrics: n.Metrics, Logger: cfg.Logger, Now: cfg.Now,
		Allow: cfg.WebhookAllow, DisplayNumber: func(pn string) string {
			if b, err := tenants.ByPhoneNumberID(pn); err == nil {
				return b.PhoneNumbers[pn]
			}
			return ""
		}}); err != nil {
		return nil, err
	}
	if cfg.Cluster != nil {
		if err := n.joinCluster(); err != nil {
			return nil, err
		}
	}
	if n.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, &ConfigError{"listen", err.Error()}
	}
	secret, err := n.openPlatform()
	if err != nil {
		return nil, err
	}
	if !cfg.NoLimits {
		lo := ratelimit.Options{DB: n.db, Sealer: n.Sealer, Tenants: n.Tenants, Now: cfg.Now, Logger: cfg.Logger}
		if n.cluster != nil {
			lo.Shared = clusterTier{n.cluster.c.Tier}
		}
		if n.Limits, err = ratelimit.New(lo); err != nil {
			return nil, err
		}
		if n.cluster != nil {
			if err := n.shareLimits(); err != nil {
				return nil, err
			}
		}
	}
	if eng, err = n.newEngine(); err != nil {
		return nil, err
	}
	n.Engine = eng
	if err := n.newAPI(secret); err != nil {
		return nil, err
	}
	if err := n.demoBusiness(); err != nil {
		return nil, err
	}
	return n, nil
}

// openStorage loads the master key, the admin token and the database.
func (n *Node) openStorage() error {
	cfg := n.cfg
	keys, created, err := seal.LoadKeys(filepath.Join(cfg.DataDir, "master.key"), cfg.MasterKeys)
	if err != nil {
		return &ConfigError{"master key", err.Error()}
	}
	if created {
		fmt.Fprintf(cfg.Out, "created master key %s (mode 0600): back it up; without it the data cannot be read\n", filepath.Join(cfg.DataDir, "master.key"))
	}
	if n.Sealer, err = seal.New(keys...); err != nil {
		return err
	}
	if n.AdminToken, err = adminToken(cfg); err != nil {
		return err
	}
	n.db, err = kv.Open(kv.Options{Dir: filepath.Join(cfg.DataDir, "db"), Logger: cfg.Logger, FS: cfg.FS})
	return err
}

// openQueue opens the queue (notify wakes the engine's dispatchers) and its gauges.
func (n *Node) openQueue(notify func(shard int)) (err error) {
	cfg := n.cfg
	n.Queue, err = queue.Open(queue.Options{DB: n.db, Sealer: n.Sealer, Shards: cfg.Shards, MaxQueuedBytes: cfg.MaxQueuedBytes,
		Logger: cfg.Logger, Now: cfg.Now, Notify: notify})
	if err != nil {
		return err
	}
	n.Metrics.ShardDepth(cfg.Shards, n.Queue.ShardDepth)
	n.Metrics.GaugeFunc("queue_bytes", "Stored bytes of queued messages.", func() float64 { _, b := n.Queue.Depth(); return float64(b) })
	n.Metrics.GaugeFunc("queue_parked", "Queued messages set aside by a paused campaign (in the queue's depth too).", func() float64 { return float64(n.Queue.Parked()) })
	n.Metrics.CounterFunc("queue_dead_letters_total", "Records moved to dead letters since start.", func() float64 { return float64(n.Queue.DeadLetters()) })
	return nil
}

// openPlatform starts the built-in simulator when no platform is given and
// makes the platform client; it returns the platform secret.
func (n *Node) openPlatform() (secret string, err error) {
	cfg := n.cfg
	platformURL, secret := cfg.PlatformURL, cfg.PlatformSecret
	if platformURL == "" {
		if secret == "" {
			secret = randomHex(16)
		}
		so := cfg.Sim
		so.Secret = secret
		so.EventsURL = "http://" + n.ln.Addr().String() + "/v1/platform/events"
		so.InboundURL = "http://" + n.ln.Addr().String() + "/v1/platform/inbound" // its users write to the businesses here
		if so.Now == nil {
			so.Now = cfg.Now // one clock: the events' ts agree with the engine's
		}
		if n.Sim, err = sim.New(so); err != nil {
			return "", err
		}
		platformURL = n.Sim.URL()
	}
	n.client, err = platform.NewClient(platform.ClientOptions{BaseURL: platformURL, Secret: secret})
	return secret, err
}

// newEngine builds the engine over the queue, the sessions and the platform
// client, wired to the webhooks and the limits.
func (n *Node) newEngine() (*engine.Engine, error) {
	cfg := n.cfg
	store, err := signal.NewStore(n.db, n.Sealer, 0)
	if err != nil {
		return nil, err
	}
	n.sessions, n.peerLocks = store, signal.NewPeerLocks()
	if n.cluster != nil {
		store.DeriveIdentities(n.Sealer.MAC)
	}
	eo := engine.Options{DB: n.db, Queue: n.Queue, Sessions: store, PeerLocks: n.peerLocks, Sealer: n.Sealer, Transport: n.client,
		Directory: n.Tenants, Campaigns: n.Campaigns, Metrics: n.Metrics, Workers: cfg.Workers, GroupsPerTask: cfg.GroupsPerTask, Logger: cfg.Logger,
		StatusHook: n.Webhooks.Hook, PurgeInterval: cfg.PurgeInterval, Now: cfg.Now}
	limits, observe, cn := n.Limits, cfg.OnStatus, n.cluster
	if cn != nil {
		eo.Partitions = cn
	}
	eo.OnStatus = func(cs []heraldtype.StatusChange) {
		if cn != nil {
			cn.settled(cs)
		}
		n.Webhooks.Notify(cs)
		if limits != nil {
			limits.Statuses(cs)
		}
		if observe != nil {
			observe(cs)
		}
	}
	if limits != nil {
		eo.Shaper = limits
		eo.OnSignal = limits.Signal
	}
	eng, err := engine.New(eo)
	if err != nil {
		return nil, err
	}
	n.Metrics.GaugeFunc("purge_running", "1 while a purge (flush + full compaction) runs.", func() float64 {
		if running, _ := eng.Purging(); running {
			return 1
		}
		return 0
	})
	n.Metrics.CounterFunc("purges_total", "Purges completed since start.", func() float64 { _, done := eng.Purging(); return float64(done) })
	return eng, nil
}

// newAPI builds the API server: its stores, the disk-space watermark, the
// metrics address.
func (n *Node) newAPI(secret string) (err error) {
	cfg := n.cfg
	n.Uploads = records.NewUploads(n.db, n.Sealer, cfg.Now)
	ao := api.Options{DB: n.db, Queue: n.Queue, Campaigns: n.Campaigns, CancelParked: n.Engine.CancelParked, Events: n.Engine, Statuses: n.Engine.Statuses(), Uploads: n.Uploads, Tenants: n.Tenants, Webhooks: n.Webhooks, Sealer: n.Sealer,
		Metrics: n.Metrics, PlatformSecret: secret, AdminToken: n.AdminToken, Logger: cfg.Logger,
		ReadTimeout: cfg.ReadTimeout, StallTimeout: cfg.StallTimeout, HeaderTimeout: cfg.HeaderTimeout, MaxConnsPerIP: cfg.MaxConnsPerIP,
		Ready: n.ready, Now: cfg.Now, QueueShare: cfg.QueueShare}
	if cfg.MetricsListen != "" {
		if n.mln, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			return &ConfigError{"metrics-listen", err.Error()}
		}
		ao.NoMetrics = true
	}
	if cfg.MinFreeBytes > 0 {
		free := cfg.FreeSpace
		if free == nil {
			dir := cfg.DataDir
			free = func() (uint64, error) {
				u, err := vfs.Default.GetDiskUsage(dir)
				return u.AvailBytes, err
			}
		}
		g := &spaceGuard{free: free, min: uint64(cfg.MinFreeBytes), log: cfg.Logger}
		ao.SpaceCheck = g.check
		n.Metrics.GaugeFunc("disk_free_bytes", "Free bytes on the data directory's filesystem (last check).", func() float64 { return float64(g.last.Load()) })
	}
	if n.Limits != nil {
		ao.Admitter = n.Limits
		limits := n.Limits
		ao.Preview = func(b *tenant.Business, pn string, now time.Time) (api.Preview, error) {
			d, err := limits.DryRun(b, pn, now)
			if err != nil {
				return nil, err
			}
			return preview{d}, nil
		}
	}
	if n.Inbound, err = inbound.New(inbound.Options{DB: n.db, Sealer: n.Sealer, Sessions: n.sessions, Locks: n.peerLocks,
		Tenants: n.Tenants, Webhooks: n.Webhooks, Metrics: n.Metrics, Logger: cfg.Logger, Now: cfg.Now, Platform: n.client,
		OptOuts: optOuter(n.Limits)}); err != nil {
		return err
	}
	n.keys = newKeyUploader(n)
	ao.Inbound, ao.KeysNeeded = n.Inbound, n.keys.need
	if n.cluster != nil {
		ao.Intake, ao.ClusterStatus, ao.ClusterCampaigns, ao.Events = n.cluster, n.cluster, n.cluster, eventRouter{n.cluster}
		ao.InboundRoute = n.cluster.routeInbound
		ao.SharedHold = n.cluster.sharedHold
		ao.InboundElsewhere = inboundElsewhere{n.cluster}
		if err := n.shareInbound(); err != nil {
			return err
		}
	}
	if n.API, err = api.New(ao); err != nil {
		return err
	}
	if n.cluster != nil {
		return n.cluster.startCampaigns()
	}
	return nil
}

// demoBusiness creates the demo business in an empty data directory (unless
// NoDemoBusiness).
func (n *Node) demoBusiness() error {
	if n.cfg.NoDemoBusiness || n.Tenants.Count() > 0 {
		return nil
	}
	b, tt, err := n.Tenants.NewBusiness("Demo Business", []string{"15550100000"}, "10k", 1000, false)
	if err != nil {
		return err
	}
	n.DemoToken, _ = tenant.SplitToken(tt)
	for id := range b.PhoneNumbers {
		n.DemoPhoneNumberID = id
	}
	return nil
}

// privateDataDir makes the data directory and its db/ readable by this user
// only (0700; the files Herald creates are 0600): a directory with looser
// modes is tightened, and said so. Files the process creates from now on get
// no group or other bits (umask 077).
func privateDataDir(dir string, out io.Writer) error {
	syscall.Umask(0o077)
	db := filepath.Join(dir, "db")
	if err := os.MkdirAll(db, 0o700); err != nil {
		return err
	}
	return filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		want := os.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if info.Mode().Perm()&^want != 0 {
			if err := os.Chmod(p, want); err != nil {
				return fmt.Errorf("%s is %v and cannot be made private: %v", p, info.Mode().Perm(), err)
			}
			fmt.Fprintf(out, "tightened %s from %v to %v (data is readable by this user only)\n", p, info.Mode().Perm(), want)
		}
		return nil
	})
}

// PlatformProbeInterval is how often the node checks that the platform
// answers (for /readyz), with a key query for no users.
const PlatformProbeInterval = 5 * time.Second

// probePlatform checks the platform once now, then every
// PlatformProbeInterval until the node stops.
func (n *Node) probePlatform(ctx context.Context) {
	probe := func() {
		pctx, cancel := context.WithTimeout(ctx, PlatformProbeInterval)
		defer cancel()
		err := n.client.Ping(pctx)
		if err != nil {
			n.platformErr.Store(&err)
		} else {
			n.platformErr.Store(nil)
		}
	}
	probe()
	n.every("platform probe", PlatformProbeInterval, probe)
}

// every runs f every interval until the node stops, in a goroutine the node
// waits for; a panic in f is logged, counted and survived (the next tick
// runs it again).
func (n *Node) every(name string, interval time.Duration, f func()) {
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-n.stop:
				return
			case <-t.C:
				func() {
					defer func() {
						if r := recover(); r != nil {
							n.cfg.Logger.Error("node: recovered from a panic", "loop", name, "panic", fmt.Sprint(r))
							n.Metrics.Panics.WithLabelValues(name).Inc()
						}
					}()
					f()
				}()
			}
		}
	}()
}

// ready is /readyz beyond storage: the platform answers and the engine's
// breaker is closed; the error says which is not so.
func (n *Node) ready() error {
	if p := n.platformErr.Load(); p != nil {
		return fmt.Errorf("the platform is unreachable: %v; messages wait on disk", *p)
	}
	if n.Engine != nil {
		return n.Engine.Ready()
	}
	return nil
}

// spaceGuard is the disk-space watermark: it re-reads the free space at most
// once a second (statfs) and refuses new work below min.
type spaceGuard struct {
	free    func() (uint64, error)
	min     uint64
	log     *slog.Logger
	checked atomic.Int64 // unix nanos of the last read
	last    atomic.Uint64
	low     atomic.Bool
}

func (g *spaceGuard) check() error {
	now := clock.Wall().UnixNano() // throttles a syscall: real time
	if prev := g.checked.Load(); now-prev > int64(time.Second) && g.checked.CompareAndSwap(prev, now) {
		b, err := g.free()
		if err != nil {
			g.log.Warn("node: cannot read free disk space; not enforcing the watermark", "err", err)
			g.low.Store(false)
		} else {
			g.last.Store(b)
			if low := b < g.min; low != g.low.Swap(low) {
				g.log.Warn("node: disk-space watermark crossed", "free_bytes", b, "min_free_bytes", g.min, "refusing_new_messages", low)
			}
		}
	}
	if g.low.Load() {
		return fmt.Errorf("%w: %d bytes free, %d required", kv.ErrLowSpace, g.last.Load(), g.min)
	}
	return nil
}

func defaultLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func adminToken(cfg Config) (string, error) {
	if cfg.AdminToken != "" {
		if len(cfg.AdminToken) < 16 {
			return "", &ConfigError{"admin-token", "must be at least 16 characters"}
		}
		return cfg.AdminToken, nil
	}
	path := filepath.Join(cfg.DataDir, "admin-token")
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", &ConfigError{"admin-token", err.Error()}
	}
	tok := "adm_" + randomHex(24)
	if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
		return "", &ConfigError{"admin-token", err.Error()}
	}
	fmt.Fprintf(cfg.Out, "generated an admin token in %s (mode 0600)\n", path)
	return tok, nil
}

// Addr is the API's address.
func (n *Node) Addr() string { return n.ln.Addr().String() }

// MetricsAddr is --metrics-listen's address ("" when /metrics is on the API).
func (n *Node) MetricsAddr() string {
	if n.mln == nil {
		return ""
	}
	return n.mln.Addr().String()
}

// URL is the API's base URL.
func (n *Node) URL() string { return "http://" + n.Addr() }

// Start serves the API and runs the engine; it prints "listening on http://ADDR".
func (n *Node) Start(ctx context.Context) error {
	if n.Sim != nil {
		n.Sim.Start()
		fmt.Fprintf(n.cfg.Out, "no --platform given: started the built-in platform simulator at %s\n", n.Sim.URL())
	}
	canceled, err := n.unparkNotHeld(ctx)
	if err != nil {
		return err
	}
	if err := n.Engine.Start(ctx); err != nil {
		return err
	}
	for _, g := range canceled {
		n.Engine.CancelParked(g)
	}
	n.Webhooks.Start()
	n.probePlatform(ctx)
	if n.cluster != nil {
		n.cluster.owner.Run(ctx)
		fmt.Fprintf(n.cfg.Out, "cluster node %s: %d partitions, replicas %d, NATS %s\n", n.cluster.c.NodeID(),
			n.cluster.c.Partitions(), n.cluster.c.Replicas(), n.cluster.c.NC.ConnectedUrlRedacted())
	}
	// Prekeys for inbound sessions (in a cluster, the owner of partition 0
	// makes them).
	n.keys.start(ctx)
	n.bg.Add(1)
	go func() {
		defer n.bg.Done()
		n.Inbound.RunReceipts(ctx, n.stop)
	}()
	n.every("inbound retention", n.cfg.RetentionInterval, func() {
		if _, err := n.Inbound.Sweep(1000); err != nil {
			n.cfg.Logger.Error("node: retention sweep of inbound messages failed", "err", err)
		}
	})
	n.every("upload records retention", n.cfg.RetentionInterval, func() {
		if _, err := n.Uploads.Sweep(n.cfg.Now(), 1000); err != nil {
			n.cfg.Logger.Error("node: retention sweep of upload records failed", "err", err)
		}
		if _, err := n.Campaigns.Sweep(n.cfg.Now().Add(-records.StatusGrace)); err != nil {
			n.cfg.Logger.Error("node: retention sweep of campaign states failed", "err", err)
		}
	})
	go func() { n.serveErr <- n.API.Serve(n.ln) }()
	if n.mln != nil {
		go fasthttp.Serve(n.mln, n.API.MetricsHandler)
		fmt.Fprintf(n.cfg.Out, "metrics on http://%s/metrics\n", n.mln.Addr())
	}
	if n.Limits != nil {
		n.every("tiers", time.Minute, func() {
			n.moveTiers()
			n.Limits.Close() // persists the signal windows
		})
	}
	if n.DemoToken != "" {
		fmt.Fprintf(n.cfg.Out, "created a demo business: phone_number_id %s, token %s\n", n.DemoPhoneNumberID, n.DemoToken)
		fmt.Fprintf(n.cfg.Out, "try: curl -H 'Authorization: Bearer %s' -d '{\"messaging_product\":\"whatsapp\",\"to\":\"+1 555 000 0001\",\"type\":\"text\",\"text\":{\"body\":\"hello\"}}' %s/v1/%s/messages\n",
			n.DemoToken, n.URL(), n.DemoPhoneNumberID)
	}
	fmt.Fprintf(n.cfg.Out, "listening on %s\n", n.URL())
	return nil
}

// unparkNotHeld moves back into the queue the parked messages of campaigns
// that are running again (a resume whose unpark a crash cut short), and
// returns the canceled campaigns that still have parked messages (a cancel
// cut short: the engine ends them once it runs).
func (n *Node) unparkNotHeld(ctx context.Context) (canceled []string, err error) {
	groups, err := n.Queue.ParkedGroups()
	if err != nil {
		return nil, err
	}
	for _, g := range groups {
		switch n.Campaigns.State(g) {
		case heraldtype.CampaignPaused:
		case heraldtype.CampaignCanceled:
			canceled = append(canceled, g)
		default:
			if _, err := n.Queue.Unpark(ctx, g); err != nil {
				return nil, err
			}
		}
	}
	return canceled, nil
}

// Wait returns when the API server stops or ctx ends.
func (n *Node) Wait(ctx context.Context) error {
	select {
	case <-ctx.Done():
		return nil
	case err := <-n.serveErr:
		return err
	}
}

// Close stops everything in order; safe to call twice.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		close(n.stop)
		n.bg.Wait()
		if n.API != nil {
			done := make(chan struct{})
			go func() { n.API.Shutdown(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
			}
		} else if n.ln != nil {
			n.ln.Close()
		}
		if n.mln != nil {
			n.mln.Close()
		}
		if n.cluster != nil {
			// Stop taking partitions' work, finish what is in flight (its
			// statuses ack it), then give the leases back.
			n.cluster.owner.Close(func() {
				if n.Engine != nil {
					n.Engine.Close()
				}
			})
		}
		if n.Engine != nil {
			n.Engine.Close()
		}
		if n.Webhooks != nil {
			n.Webhooks.Close()
		}
		if n.Inbound != nil {
			n.Inbound.Close()
		}
		if n.Limits != nil {
			n.Limits.Close()
		}
		if n.Sim != nil {
			n.Sim.Close()
		}
		if n.client != nil {
			n.client.Close()
		}
		if n.cluster != nil {
			n.cluster.c.Close()
		}
		if n.Queue != nil {
			n.Queue.Close()
		}
		if n.db != nil {
			n.db.Close()
		}
	})
	return nil
}

// DB exposes the database (tests, admin tooling).
func (n *Node) DB() *kv.DB { return n.db }

// optOuter is the limiter as inbound's OptOuter (nil without limits).
func optOuter(l *ratelimit.Limiter) inbound.OptOuter {
	if l == nil {
		return nil
	}
	return l
}

// Sessions is the Signal store the engine and inbound share (tools and
// tests).
func (n *Node) Sessions() *signal.Store { return n.sessions }

// preview adapts ratelimit.DryRun to api.Preview.
type preview struct{ *ratelimit.DryRun }

func (p preview) Integrity() (any, int64) { return p.DryRun.Integrity() }

// moveTiers applies tier movement (EvaluateTiers) and returns what changed.
// In a cluster one node does it (all rate on the same, shared signals and
// peaks; each moving tiers would move a business down once per node): the
// one that works partition 0.
func (n *Node) moveTiers() []string {
	if n.cluster != nil && !n.cluster.owner.Owns(0) {
		return nil
	}
	changes := n.Limits.EvaluateTiers(n.cfg.Now())
	for _, c := range changes {
		n.cfg.Logger.Info("ratelimit: tier change", "change", c) // routine: the limits working as designed
	}
	return changes
}
