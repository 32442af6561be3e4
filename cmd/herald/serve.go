package main

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/heraldhq/herald/internal/node"
	"github.com/heraldhq/herald/internal/platform/sim"
)

// logger writes structured logs to w at level, as "text" (key=value) or
// "json" (one object per line).
func logger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("invalid setting log-level: %v", err)
	}
	o := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	}
	return nil, fmt.Errorf("invalid setting log-format: %q is neither text nor json", format)
}

func serveCmd() *cobra.Command {
	var cfg node.Config
	var level, format, devices, pprofAddr, webhookAllow, adminTokenFile, secretFile, metricsListen string
	var restartDelay time.Duration
	var cl clusterFlags
	cmd := &cobra.Command{
		Use: "serve",
		Example: "  herald serve --data ./herald-data --listen 127.0.0.1:8080\n  herald serve --platform https://platform.example --platform-secret-file /etc/herald/platform-secret --webhook-allow 10.0.0.0/8\n" +
			"  herald serve --node-id h1 --nats-embed --nats-listen 10.0.0.1:4222 --nats-cluster 10.0.0.1:6222 --nats-routes nats://10.0.0.2:6222,nats://10.0.0.3:6222 --nats-replicas 3 --platform https://platform.example",
		Short: "Run Herald (embedded Pebble; the built-in platform simulator unless --platform is given)",
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if cfg.Logger, err = logger(os.Stderr, level, format); err != nil {
				return err
			}
			if cfg.Sim.DevicesMin, cfg.Sim.DevicesMax, err = sim.ParseDevices(devices); err != nil {
				return fmt.Errorf("invalid setting sim-devices: %v", err)
			}
			if cfg.MasterKeys == "" {
				cfg.MasterKeys = os.Getenv("HERALD_MASTER_KEY")
			}
			if adminTokenFile != "" {
				if cfg.AdminToken, err = readSecretFile(adminTokenFile); err != nil {
					return fmt.Errorf("invalid setting admin-token-file: %v", err)
				}
			}
			if secretFile != "" {
				if cfg.PlatformSecret, err = readSecretFile(secretFile); err != nil {
					return fmt.Errorf("invalid setting platform-secret-file: %v", err)
				}
			}
			cfg.MetricsListen = metricsListen
			if cfg.WebhookAllow, err = parseCIDRs(webhookAllow); err != nil {
				return fmt.Errorf("invalid setting webhook-allow: %v", err)
			}
			if cfg.Cluster, err = cl.config(); err != nil {
				return err
			}
			if pprofAddr != "" {
				if err := servePprof(pprofAddr); err != nil {
					return err
				}
			}
			// A storage failure restarts the node in process (see node.Supervise).
			err = node.Supervise(cmd.Context(), cfg, restartDelay, nil)
			fmt.Fprintln(os.Stderr, "herald: stopping")
			return err
		},
	}
	f := cmd.Flags()
	d := defaults()
	f.StringVar(&cfg.DataDir, "data", d.DataDir, "data directory (database, master key, admin token)")
	f.StringVar(&cfg.Listen, "listen", d.Listen, "API listen address")
	f.StringVar(&cfg.PlatformURL, "platform", "", "platform base URL (empty: start the built-in simulator)")
	f.StringVar(&cfg.PlatformSecret, "platform-secret", "", "secret shared with the platform")
	f.StringVar(&cfg.AdminToken, "admin-token", "", "admin API token (default: <data>/admin-token, generated); prefer --admin-token-file, which keeps it out of ps")
	f.StringVar(&adminTokenFile, "admin-token-file", "", "read the admin API token from this file")
	f.StringVar(&secretFile, "platform-secret-file", "", "read the platform secret from this file")
	f.StringVar(&metricsListen, "metrics-listen", "", "serve /metrics on this address only (not on the API's)")
	f.IntVar(&cfg.Shards, "shards", d.Shards, "queue shards (power of two; fixed for a data directory)")
	f.IntVar(&cfg.Workers, "workers", d.Workers, "engine worker pool size (concurrent tasks)")
	f.IntVar(&cfg.GroupsPerTask, "groups-per-task", d.GroupsPerTask, "recipient groups one engine task works on together (one fsync'd commit, one status round trip)")
	byteSizeVar(f, &cfg.MaxQueuedBytes, "max-queued-bytes", d.MaxQueuedBytes, false, "backpressure: refuse new messages above this many queued bytes")
	byteSizeVar(f, &cfg.QueueShare, "max-queued-bytes-per-business", 0, true, "a business's default share of the queue, unless the admin API sets its max_queued_bytes (0: a quarter of --max-queued-bytes; -1: none)")
	byteSizeVar(f, &cfg.MinFreeBytes, "min-free-disk", d.MinFreeBytes, true, "refuse new messages (507) when the data directory's disk has fewer free bytes (-1: off)")
	f.DurationVar(&cfg.StallTimeout, "stall-timeout", d.StallTimeout, "cut off an upload that sends nothing for this long")
	f.DurationVar(&cfg.HeaderTimeout, "header-timeout", d.HeaderTimeout, "cut off a request whose line and headers take longer")
	f.IntVar(&cfg.MaxConnsPerIP, "max-conns-per-ip", d.MaxConnsPerIP, "open connections one client address may hold")
	f.DurationVar(&cfg.PurgeInterval, "purge-interval", d.PurgeInterval, "flush + compact the database this often so deleted and expired records leave the disk even sealed (negative: never)")
	f.DurationVar(&restartDelay, "restart-delay", 5*time.Second, "after a storage failure, reopen the data directory in process this often until it succeeds")
	f.StringVar(&pprofAddr, "pprof", "", "serve Go's net/http/pprof on this loopback address (profiling; empty: off)")
	f.BoolVar(&cfg.NoLimits, "no-limits", false, "disable integrity limits (benchmarks only)")
	f.StringVar(&webhookAllow, "webhook-allow", "", "address ranges webhooks may reach besides public ones, CIDR[,CIDR] (e.g. 127.0.0.0/8 for a webhook on this machine)")
	f.BoolVar(&cfg.NoDemoBusiness, "no-demo-business", false, "do not create a demo business in an empty data directory")
	f.StringVar(&level, "log-level", "warn", "log level: debug, info, warn, error")
	f.StringVar(&format, "log-format", "text", "log format: text (key=value) or json (one object per line)")
	cl.add(f)
	sd := simDefaults()
	f.IntVar(&cfg.Sim.Users, "sim-users", sd.Users, "built-in simulator: number of users")
	f.StringVar(&cfg.Sim.Prefix, "sim-prefix", sd.Prefix, "built-in simulator: user number prefix")
	f.StringVar(&devices, "sim-devices", fmt.Sprintf("%d-%d", sd.DevicesMin, sd.DevicesMax), "built-in simulator: devices per user MIN-MAX")
	return cmd
}

// servePprof exposes net/http/pprof on a loopback address only.
func servePprof(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || (host != "127.0.0.1" && host != "localhost" && host != "::1") {
		return fmt.Errorf("invalid setting pprof: must be a loopback HOST:PORT, got %q", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("invalid setting pprof: %v", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	go http.Serve(ln, mux)
	return nil
}

// parseCIDRs reads "CIDR[,CIDR]" (a bare address is its own /32 or /128).
func parseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			a, aerr := netip.ParseAddr(f)
			if aerr != nil {
				return nil, fmt.Errorf("%q is not a CIDR range such as 127.0.0.0/8", f)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// readSecretFile reads a secret kept in a file (one line; surrounding space
// trimmed), so it stays out of the process list.
func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return v, nil
}

// defaults is a node configuration with every default filled in, from the
// one place each is written (node.Config.EnsureDefaults and the Options it
// asks): the flags of every subcommand show these.
func defaults() node.Config {
	var d node.Config
	d.EnsureDefaults()
	return d
}
