// Package metrics defines Herald's Prometheus metrics. Labels never carry a
// phone number, a body or a message id: only codes, reasons and shard numbers.
package metrics

import (
	"runtime"
	"runtime/debug"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics is one registry and its collectors.
type Metrics struct {
	Registry *prometheus.Registry

	Accepted       prometheus.Counter
	Rejected       *prometheus.CounterVec // code
	Sent           prometheus.Counter
	Delivered      prometheus.Counter
	Read           prometheus.Counter
	Failed         *prometheus.CounterVec // code
	Canceled       prometheus.Counter
	Parked         prometheus.Counter
	Retries        *prometheus.CounterVec // reason
	PlatformErrors *prometheus.CounterVec // code
	SessionResets  prometheus.Counter
	IdentityChange prometheus.Counter
	Events         *prometheus.CounterVec // type
	EncryptSeconds prometheus.Histogram
	TransmitSecs   prometheus.Histogram
	WebhookPosts   *prometheus.CounterVec // result
	Inbound        *prometheus.CounterVec // result: accepted, duplicate, bad_message, malformed, unknown_business, busy
	WebhookDropped *prometheus.CounterVec // reason: expired, backlog_full, unreadable
	Panics         *prometheus.CounterVec // loop: a background loop recovered from a panic
	// HTTPSeconds: API request durations by route (its pattern, never a
	// value) and method.
	HTTPSeconds *prometheus.HistogramVec
	// AcceptedToSent, AcceptedToDelivered: from a message's acceptance
	// (second resolution) to its first "sent" / "delivered".
	AcceptedToSent      prometheus.Histogram
	AcceptedToDelivered prometheus.Histogram
}

// New registers every collector on a fresh registry.
func New() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	f := func(name, help string) prometheus.Counter {
		c := prometheus.NewCounter(prometheus.CounterOpts{Namespace: "herald", Name: name, Help: help})
		r.MustRegister(c)
		return c
	}
	v := func(name, help, label string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "herald", Name: name, Help: help}, []string{label})
		r.MustRegister(c)
		return c
	}
	h := func(name, help string) prometheus.Histogram {
		c := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "herald", Name: name, Help: help,
			Buckets: prometheus.ExponentialBuckets(0.00005, 2.5, 14)})
		r.MustRegister(c)
		return c
	}
	r.MustRegister(buildInfo())
	http := prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "herald", Name: "http_request_duration_seconds",
		Help: "API request durations, by route pattern and method.", Buckets: prometheus.ExponentialBuckets(0.0005, 4, 10)}, []string{"route", "method"})
	r.MustRegister(http)
	latency := func(name, help string) prometheus.Histogram {
		c := prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "herald", Name: name, Help: help,
			Buckets: prometheus.ExponentialBuckets(0.1, 3, 12)}) // 0.1 s … ~5 h
		r.MustRegister(c)
		return c
	}
	return &Metrics{
		HTTPSeconds:         http,
		AcceptedToSent:      latency("accepted_to_sent_seconds", "From a message's acceptance to its first \"sent\" (every device accepted it)."),
		AcceptedToDelivered: latency("accepted_to_delivered_seconds", "From a message's acceptance to its first \"delivered\"."),
		Registry:            r,
		Accepted:            f("messages_accepted_total", "Messages accepted (durably enqueued)."),
		Rejected:            v("messages_rejected_total", "Messages or recipients rejected at admission, by error code.", "code"),
		Sent:                f("messages_sent_total", "Messages accepted by the platform for every device."),
		Delivered:           f("messages_delivered_total", "Messages reported delivered."),
		Read:                f("messages_read_total", "Messages reported read."),
		Failed:              v("messages_failed_total", "Messages failed, by code.", "code"),
		Canceled:            f("messages_canceled_total", "Messages canceled with their campaign before they were sent."),
		Parked:              f("messages_parked_total", "Messages set aside while their campaign was paused (each counted once per pause)."),
		Retries:             v("retries_total", "Retransmissions scheduled, by reason.", "reason"),
		PlatformErrors:      v("platform_errors_total", "Platform errors, by code.", "code"),
		SessionResets:       f("session_resets_total", "Signal sessions reset after bad_message or decrypt_failed."),
		IdentityChange:      f("identity_changes_total", "Recipient devices whose identity key changed (trusted, or refused with identity_check on)."),
		Events:              v("platform_events_total", "Platform events received, by type.", "type"),
		EncryptSeconds:      h("encrypt_seconds", "Time to encrypt one recipient group (all devices, all messages)."),
		TransmitSecs:        h("transmit_seconds", "Time for one transmit wave to come back from the platform."),
		WebhookPosts:        v("webhook_posts_total", "Webhook deliveries, by result.", "result"),
		Inbound:             v("inbound_envelopes_total", "Envelopes users sent to businesses, by result.", "result"),
		Panics:              v("panics_recovered_total", "Panics recovered in background loops (the loop went on), by loop.", "loop"),
		WebhookDropped:      v("webhook_dropped_total", "Webhook statuses dropped undelivered, by reason (expired: past their message's TTL; backlog_full: the phone number's outbox was at its cap).", "reason"),
	}
}

// buildInfo is herald_build_info{version, revision, go_version} = 1, from
// the binary's build information.
func buildInfo() prometheus.Collector {
	version, revision, goVersion := "(devel)", "unknown", runtime.Version()
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				revision = s.Value
			}
		}
	}
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "herald", Name: "build_info",
		Help:        "Herald's build: version, VCS revision and Go version (always 1).",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "go_version": goVersion}},
		func() float64 { return 1 })
}

// CounterFunc registers a counter read on scrape (name ends in _total).
func (m *Metrics) CounterFunc(name, help string, f func() float64) {
	m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "herald", Name: name, Help: help}, f))
}

// GaugeFunc registers a gauge read on scrape.
func (m *Metrics) GaugeFunc(name, help string, f func() float64) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "herald", Name: name, Help: help}, f))
}

// ShardDepth registers queue depth per shard, read on scrape.
func (m *Metrics) ShardDepth(shards int, depth func(int) int64) {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "herald", Name: "queue_depth", Help: "Queued messages per shard."}, []string{"shard"})
	m.Registry.MustRegister(collectorFunc(func(ch chan<- prometheus.Metric) {
		for i := 0; i < shards; i++ {
			g.WithLabelValues(strconv.Itoa(i)).Set(float64(depth(i)))
		}
		g.Collect(ch)
	}, g))
}

type cf struct {
	collect func(chan<- prometheus.Metric)
	g       *prometheus.GaugeVec
}

func collectorFunc(f func(chan<- prometheus.Metric), g *prometheus.GaugeVec) prometheus.Collector {
	return cf{f, g}
}
func (c cf) Describe(ch chan<- *prometheus.Desc) { c.g.Describe(ch) }
func (c cf) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
