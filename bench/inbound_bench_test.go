package bench

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/inbound"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/seal"
	"github.com/heraldhq/herald/internal/signal"
	"github.com/heraldhq/herald/internal/tenant"
	"github.com/heraldhq/herald/internal/webhook"
)

// BenchmarkInbound measures what users writing to a business cost Herald:
// envelopes per second through decrypt + durable store (fsync'd batches) +
// the webhook outbox, in POSTs of 500 envelopes, for new sessions (each a
// pkmsg: X3DH as the responder) and for replies in existing sessions (msg).
// The users' encryption happens before the clock starts (their devices are
// another party; what Herald pays starts at the POST). ceiling is the same
// envelopes' decryption alone (Store.Receive into a batch never
// committed, on every core), measured in the same run; fraction = rate /
// ceiling.
//
//	HERALD_BENCH_INBOUND_USERS=2000 go test -run '^$' -bench Inbound -benchtime 1x ./bench
func BenchmarkInbound(b *testing.B) {
	users := 2000
	if v, err := strconv.Atoi(os.Getenv("HERALD_BENCH_INBOUND_USERS")); err == nil && v > 0 {
		users = v
	}
	for _, kind := range []string{"new_sessions", "replies", "replies_cold"} {
		b.Run("kind="+kind, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				rate, ceiling := inboundRun(b, users, kind)
				b.ReportMetric(rate, "msgs/s")
				b.ReportMetric(ceiling, "ceiling_msgs/s")
				b.ReportMetric(rate/ceiling, "fraction")
			}
		})
	}
}

// inboundRun measures one kind: new_sessions, replies (the users' sessions
// in the store's cache, as for users who wrote recently — the outbound warm
// figure is measured the same way) or replies_cold (every session read from
// Pebble first).
func inboundRun(b *testing.B, users int, kind string) (rate, ceiling float64) {
	replies := kind != "new_sessions"
	b.StopTimer()
	db, err := kv.Open(kv.Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	sealer, _ := seal.New(seal.TestKey(1))
	tenants, err := tenant.Open(db, sealer)
	if err != nil {
		b.Fatal(err)
	}
	const biz = "15550001001"
	bz, _, err := tenants.NewBusiness("bench", []string{biz}, "unlimited", 1000, false)
	if err != nil {
		b.Fatal(err)
	}
	var pn string
	for id := range bz.PhoneNumbers {
		pn = id
	}
	store, err := signal.NewStore(db, sealer, 0)
	if err != nil {
		b.Fatal(err)
	}
	hooks, err := webhook.New(webhook.Options{DB: db, Sealer: sealer, MaxBacklog: 10 * users,
		Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	if err != nil {
		b.Fatal(err)
	}
	// A webhook is configured (never started): every message goes into its outbox.
	if err := hooks.Set(pn, webhook.Config{URL: "http://127.0.0.1:9/hook", Secret: "benchsecret"}); err != nil {
		b.Fatal(err)
	}
	rcv, err := inbound.New(inbound.Options{DB: db, Sealer: sealer, Sessions: store, Tenants: tenants, Webhooks: hooks})
	if err != nil {
		b.Fatal(err)
	}
	devs := make([]*signal.Device, users)
	up, err := store.NewPreKeys(biz, users, time.Now())
	if err != nil {
		b.Fatal(err)
	}
	seq := 0
	write := func(d *signal.Device, user string, bundle *platform.DeviceBundle) inbound.Envelope {
		seq++
		id := fmt.Sprintf("in.%d", seq)
		pt, _ := json.Marshal(platform.Plaintext{ID: id, From: user, TS: time.Now().Unix(), Type: "text", Text: &platform.TextBody{Body: "a reply of ordinary length, about sixty characters long"}})
		ct, err := d.Write(biz, bundle, pt)
		if err != nil {
			b.Fatal(err)
		}
		return inbound.Envelope{ID: id, From: user, DeviceID: 1, To: biz, Type: ct.Type, Ciphertext: base64.StdEncoding.EncodeToString(ct.Body)}
	}
	user := func(i int) string { return fmt.Sprintf("1777%07d", i) }
	var envs []inbound.Envelope
	for i := range devs {
		devs[i], _ = signal.NewDevice(1, 0)
		bundle := &platform.DeviceBundle{DeviceID: 1, RegistrationID: up.RegistrationID, IdentityKey: up.IdentityKey, SignedPreKey: up.SignedPreKey, PreKey: &up.PreKeys[i]}
		envs = append(envs, write(devs[i], user(i), bundle))
	}
	receive := func(envs []inbound.Envelope) {
		for lo := 0; lo < len(envs); lo += 500 {
			for _, r := range rcv.Receive(envs[lo:min(lo+500, len(envs))]) {
				if r.Status != platform.StatusAccepted {
					b.Fatalf("%+v", r)
				}
			}
		}
	}
	if replies {
		receive(envs) // the sessions exist; what is measured are the replies in them
		// Each user's next message, in the session its first one opened.
		envs = envs[:0]
		for i, d := range devs {
			envs = append(envs, write(d, user(i), nil))
		}
	}
	// The ceiling first: the same envelopes decrypted on every core, into
	// batches never committed, the cache forgotten after each, so the
	// stored state stays as it was for the measured run.
	start := clock.Wall()
	var wg sync.WaitGroup
	procs := runtime.GOMAXPROCS(0)
	for p := 0; p < procs; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for j := p; j < len(envs); j += procs {
				e := envs[j]
				ct, _ := base64.StdEncoding.DecodeString(e.Ciphertext)
				batch := db.NewBatch()
				r := sealer.Lookup(heraldtype.QueueRecipient(bz.ID, e.From))
				if _, err := store.Receive(batch, biz, r, e.From, 1, e.Type, ct, time.Now()); err != nil {
					b.Error(err)
				}
				batch.Close()
				store.Forget(biz, r)
			}
		}(p)
	}
	wg.Wait()
	ceiling = float64(len(envs)) / clock.Wall().Sub(start).Seconds()
	if kind == "replies" {
		for _, e := range envs { // the committed sessions back in the cache
			if _, err := store.Session(biz, sealer.Lookup(heraldtype.QueueRecipient(bz.ID, e.From)), 1); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StartTimer()
	start = clock.Wall()
	receive(envs)
	rate = float64(len(envs)) / clock.Wall().Sub(start).Seconds()
	b.StopTimer()
	return rate, ceiling
}
