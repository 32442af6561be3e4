package bench

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/edwards25519"
	"github.com/cockroachdb/pebble/v2"
	"go.mau.fi/libsignal/ecc"
	"golang.org/x/sys/unix"

	"github.com/heraldhq/herald/bench/baseline"
	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/campaigns"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/records"
	"github.com/heraldhq/herald/internal/seal"
	"github.com/heraldhq/herald/internal/signal"
	"github.com/heraldhq/herald/internal/tenant"
	"github.com/heraldhq/herald/internal/testutil"
	"github.com/heraldhq/herald/queue"
	"github.com/heraldhq/herald/ratelimit"
)

var heraldBin string

// buildHerald builds the binary once; the simulator runs as its own process.
func buildHerald(b *testing.B) string {
	if heraldBin != "" {
		return heraldBin
	}
	dir, _ := os.MkdirTemp("", "herald-bench-bin")
	heraldBin = filepath.Join(dir, "herald")
	cmd := exec.Command("go", "build", "-o", heraldBin, "./cmd/herald")
	cmd.Dir = testutil.RepoRoot(b)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	return heraldBin
}

// procCPU returns a process's user+system CPU time from /proc.
func procCPU(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * time.Second / 100
}

// selfFaults is the process's minor page faults so far (fresh memory touched).
func selfFaults() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Minflt
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// startSim starts the simulator process; HERALD_BENCH_SIM_PROFILE=FILE writes
// its CPU profile (both phases) there when it exits.
func startSim(b *testing.B, users int) (string, int) {
	args := []string{"platform", "--listen", "127.0.0.1:0",
		"--secret", "sekret", "--users", strconv.Itoa(users), "--prefix", "1666", "--devices", "1-3", "--read-share", "0"}
	if p := os.Getenv("HERALD_BENCH_SIM_PROFILE"); p != "" {
		args = append(args, "--cpuprofile", p)
	}
	url, cmd := testutil.StartListening(b, time.Minute, buildHerald(b), args...)
	return url, cmd.Process.Pid
}

// Deliverer is anything the end-to-end suite can measure.
type Deliverer interface {
	Deliver(ctx context.Context, msgs []baseline.Message) error
}

type heraldDeliverer struct {
	db      *kv.DB
	q       *queue.Queue
	eng     *engine.Engine
	biz, pn string
	lim     *ratelimit.Limiter
}

func newHerald(b *testing.B, simURL string) *heraldDeliverer {
	h := &heraldDeliverer{}
	var err error
	mt, _ := strconv.Atoi(os.Getenv("HERALD_BENCH_MEMTABLE_MB"))
	h.db, err = kv.Open(kv.Options{Dir: b.TempDir(), MemTableBytes: uint64(mt) << 20})
	if err != nil {
		b.Fatal(err)
	}
	sealer, _ := seal.New(seal.TestKey(1))
	var eng *engine.Engine
	shards, _ := strconv.Atoi(os.Getenv("HERALD_BENCH_SHARDS"))
	h.q, _ = queue.Open(queue.Options{DB: h.db, Sealer: sealer, Shards: shards, Notify: func(s int) {
		if eng != nil {
			eng.Notify(s)
		}
	}})
	co := platform.ClientOptions{BaseURL: simURL, Secret: "sekret"}
	co.MaxBatch, _ = strconv.Atoi(os.Getenv("HERALD_BENCH_MAX_BATCH"))
	if v, _ := strconv.Atoi(os.Getenv("HERALD_BENCH_LINGER_US")); v > 0 {
		co.Linger = time.Duration(v) * time.Microsecond
	}
	client, _ := platform.NewClient(co)
	store, _ := signal.NewStore(h.db, sealer, 0)
	// Campaign control as in production: every transmit round holds its
	// campaign's state around the hand-off.
	ctl, err := campaigns.Open(h.db)
	if err != nil {
		b.Fatal(err)
	}
	eo := engine.Options{DB: h.db, Queue: h.q, Sessions: store, Sealer: sealer, Transport: client, Campaigns: ctl,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))}
	// The real limiter, as in production (HERALD_BENCH_NO_LIMITER=1: off),
	// with a pair rate that does not bind: the workload sends each recipient
	// a message per pass, passes seconds apart; shaping runs per message all
	// the same (tenant lookup, pair and throughput buckets).
	h.biz, h.pn = "b", "pn"
	if os.Getenv("HERALD_BENCH_NO_LIMITER") == "" {
		tenants, err := tenant.Open(h.db, sealer)
		if err != nil {
			b.Fatal(err)
		}
		biz, _, err := tenants.NewBusiness("Bench", []string{"15550001111"}, "unlimited", 1_000_000, false)
		if err != nil {
			b.Fatal(err)
		}
		h.biz = biz.ID
		for pn := range biz.PhoneNumbers {
			h.pn = pn
		}
		h.lim, err = ratelimit.New(ratelimit.Options{DB: h.db, Sealer: sealer, Tenants: tenants,
			Policy: ratelimit.Policy{PairInterval: time.Millisecond, PairBurst: 1000}})
		if err != nil {
			b.Fatal(err)
		}
		eo.Shaper = h.lim
	}
	// Engine knobs to explore (defaults otherwise).
	eo.GroupsPerTask, _ = strconv.Atoi(os.Getenv("HERALD_BENCH_GROUPS_PER_TASK"))
	eo.Workers, _ = strconv.Atoi(os.Getenv("HERALD_BENCH_WORKERS"))
	eo.LeaseRecipients, _ = strconv.Atoi(os.Getenv("HERALD_BENCH_LEASE_RECIPIENTS"))
	eng, err = engine.New(eo)
	if err != nil {
		b.Fatal(err)
	}
	h.eng = eng
	eng.Start(context.Background())
	b.Cleanup(func() { eng.Close(); client.Close(); h.db.Close() })
	return h
}

func (h *heraldDeliverer) Deliver(ctx context.Context, msgs []baseline.Message) error {
	now := time.Now()
	batch := make([]queue.Message, 0, 1024)
	sb := h.db.NewBatch()
	statuses := records.NewQueuedRecords(h.biz, h.pn, "c") // once per campaign, as the campaign API does
	for i, m := range msgs {
		p := heraldtype.Payload{BusinessID: h.biz, PhoneNumberID: h.pn, From: "15550001111", To: m.To, CampaignID: "c", Body: m.Body, TS: now.Unix()}
		batch = append(batch, queue.Message{ID: m.ID, Recipient: heraldtype.QueueRecipient(h.biz, m.To), Payload: p.Encode(nil), ExpiresAt: now.Add(time.Hour), Owner: h.biz}) // as the API enqueues: counted against the business
		statuses.Put(sb, m.ID, now, now.Add(time.Hour))
		if len(batch) == cap(batch) || i == len(msgs)-1 {
			if err := h.q.EnqueueWith(ctx, batch, sb); err != nil {
				return err
			}
			batch, sb = batch[:0], h.db.NewBatch()
		}
	}
	sb.Close()
	for {
		if n, _ := h.q.Depth(); n == 0 && h.eng.InFlight() == 0 {
			return nil
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// heapAllocated is the bytes the process has allocated on the heap so far.
func heapAllocated() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// lsmBytes is what d's store has written so far: to the WAL, by flushes and
// by compactions (zero for anything but Herald).
func lsmBytes(d Deliverer) (wal, flushed, compacted uint64) {
	h, ok := d.(*heraldDeliverer)
	if !ok {
		return 0, 0, 0
	}
	m := h.db.Metrics()
	for _, l := range m.Levels {
		flushed += l.TableBytesFlushed
		compacted += l.TableBytesCompacted
	}
	return m.WAL.BytesWritten, flushed, compacted
}

func workload(n, pass int) []baseline.Message {
	var ids heraldtype.IDGen
	out := make([]baseline.Message, n)
	for i := range out {
		out[i] = baseline.Message{ID: ids.New(time.Now()), To: fmt.Sprintf("1666%07d", i/perRcpt()), Body: fmt.Sprintf("pass %d: your order %d has shipped, track it with the link in the app", pass, i)}
	}
	return out
}

// BenchmarkEndToEnd delivers N messages cold (no sessions yet) and then warm
// (a second pass to the same recipients), Herald vs the naive baseline, each
// against its own simulator process. Run with -benchtime=1x.
func BenchmarkEndToEnd(b *testing.B) {
	n := 5000
	if v := os.Getenv("HERALD_BENCH_N"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	before := cryptoRates() // before anything else runs: the machine's quiet rate
	for _, impl := range []string{"herald", "naive"} {
		b.Run("impl="+impl, func(b *testing.B) {
			simURL, simPID := startSim(b, n*2)
			var d Deliverer
			switch impl {
			case "herald":
				d = newHerald(b, simURL)
			case "naive":
				db, _ := pebble.Open(b.TempDir(), &pebble.Options{Logger: quietPebble{}})
				b.Cleanup(func() { db.Close() })
				sealer, _ := seal.New(seal.TestKey(1))
				id, _ := signal.NewIdentity("15550002222")
				d = &baseline.NaiveEngine{DB: db, Sealer: sealer, PlatformURL: simURL, Secret: "sekret", ID: id,
					HC: &http.Client{Transport: &http.Transport{MaxConnsPerHost: 256, MaxIdleConnsPerHost: 256}}}
			}
			for pass, phase := range []string{"cold", "warm"} {
				// The warm phase may deliver several campaigns to the same
				// recipients (HERALD_BENCH_WARM_PASSES): a longer window, over
				// which GC cycles and flushes average out, for no more cold work.
				var campaigns [][]baseline.Message
				for p := 0; p < passes(phase); p++ {
					campaigns = append(campaigns, workload(n, pass+p))
				}
				count := n * len(campaigns)
				if prof := os.Getenv("HERALD_BENCH_PROFILE"); prof != "" && phase == profilePhase() && impl == "herald" {
					f, _ := os.Create(prof)
					pprof.StartCPUProfile(f)
					defer pprof.StopCPUProfile()
				}
				var sampler *phaseSampler
				if phase == "cold" {
					sampler = startPhaseSampler()
				}
				selfBefore, simBefore, faultsBefore := selfCPU(), procCPU(simPID), selfFaults()
				walBefore, flushedBefore, compactedBefore := lsmBytes(d)
				allocBefore := heapAllocated()
				start := time.Now()
				for _, msgs := range campaigns {
					if err := d.Deliver(context.Background(), msgs); err != nil {
						b.Fatal(err)
					}
				}
				el := time.Since(start)
				var inPhase rates
				var samplerCPU time.Duration
				if sampler != nil {
					inPhase, samplerCPU = sampler.finish()
				}
				if prof := os.Getenv("HERALD_BENCH_MEMPROFILE"); prof != "" && impl == "herald" {
					// Cumulative allocations at the end of each phase, in
					// PROF.cold and PROF.warm: go tool pprof -base PROF.cold PROF.warm
					// shows the warm phase alone.
					// A heap profile is as of the last GC: collect now, or
					// the late allocations of the cold phase count as warm.
					runtime.GC()
					f, _ := os.Create(prof + "." + phase)
					pprof.Lookup("allocs").WriteTo(f, 0)
					f.Close()
				}
				self, simc := selfCPU()-selfBefore-samplerCPU, procCPU(simPID)-simBefore
				b.ReportMetric(float64(count)/el.Seconds(), phase+"_msgs/s")
				b.ReportMetric(float64(self.Microseconds())/float64(count), phase+"_engine_cpu_µs/msg")
				b.ReportMetric(float64(simc.Microseconds())/float64(count), phase+"_sim_cpu_µs/msg")
				if simc > 0 {
					// The engine's CPU over the simulator's: both move with
					// the machine's speed (this VM's drifts by ~50 %), their
					// ratio much less, so it compares runs of different minutes.
					b.ReportMetric(float64(self)/float64(simc), phase+"_engine_per_sim")
				}
				b.ReportMetric(float64(selfFaults()-faultsBefore)/float64(count), phase+"_engine_faults/msg")
				// Heap bytes allocated per message (the whole process, so the
				// bench's own enqueueing too): machine-independent, unlike CPU time.
				b.ReportMetric(float64(heapAllocated()-allocBefore)/float64(count), phase+"_alloc_B/msg")
				if h, ok := d.(*heraldDeliverer); ok {
					// Bytes into the WAL, and written by flushes and compactions,
					// per message: a machine-independent measure of what the
					// engine asks of the LSM (compactions run on the same cores).
					wal, flushed, compacted := lsmBytes(h)
					b.ReportMetric(float64(wal-walBefore)/float64(count), phase+"_wal_B/msg")
					b.ReportMetric(float64(flushed-flushedBefore)/float64(count), phase+"_flushed_B/msg")
					// Compactions land when they land: this one moves with timing.
					b.ReportMetric(float64(compacted-compactedBefore)/float64(count), phase+"_compacted_B/msg")
				}
				if phase == "cold" {
					st := simStats(b, simURL)
					// The machine's speed drifts within minutes: the rates are the
					// mean of those measured at the start of the run and right
					// after this phase, so they match the phase's conditions.
					rates := before.mean(cryptoRates())
					ceiling := coldCrypto(rates, st.Decrypted, st.Bundles)
					b.ReportMetric(float64(ceiling)/float64(self+simc), "cold_crypto_fraction")
					b.ReportMetric(float64(rates.x25519.Nanoseconds())/1000, "x25519_µs")
					b.ReportMetric(float64(coldCryptoStrict(rates, st.Decrypted, st.Bundles))/float64(self+simc), "cold_crypto_fraction_strict")
					b.ReportMetric(float64(rates.keygen.Nanoseconds())/1000, "keygen_µs")
					// The same ceiling at the rates measured during the phase, in
					// thread CPU time (startPhaseSampler).
					if inPhase.x25519 > 0 {
						ceiling := coldCrypto(inPhase, st.Decrypted, st.Bundles)
						b.ReportMetric(float64(ceiling)/float64(self+simc), "cold_crypto_fraction_inphase")
						b.ReportMetric(float64(inPhase.x25519.Nanoseconds())/1000, "x25519_inphase_µs")
					}
				}
			}
			b.ReportMetric(0, "ns/op")
			st := simStats(b, simURL)
			if len(st.Failures) != 0 || st.OrderingViolations != 0 {
				b.Fatalf("%s: sim saw failures: %+v", impl, st)
			}
		})
	}
}

func simStats(b *testing.B, url string) (st struct {
	Bundles            int64            `json:"bundles"`
	Decrypted          int64            `json:"decrypted"`
	Failures           map[string]int64 `json:"failures"`
	OrderingViolations int64            `json:"ordering_violations"`
}) {
	resp, err := http.Get(url + "/v1/stats")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	dec := jsonDecoder(bufio.NewReader(resp.Body))
	dec.Decode(&st)
	return st
}

// profilePhase is the phase HERALD_BENCH_PROFILE covers: warm, or
// HERALD_BENCH_PROFILE_PHASE=cold.
func profilePhase() string {
	if p := os.Getenv("HERALD_BENCH_PROFILE_PHASE"); p != "" {
		return p
	}
	return "warm"
}

// passes is how many campaigns a phase delivers: one cold, and
// HERALD_BENCH_WARM_PASSES (default 1) warm.
func passes(phase string) int {
	if v, _ := strconv.Atoi(os.Getenv("HERALD_BENCH_WARM_PASSES")); v > 0 && phase == "warm" {
		return v
	}
	return 1
}

func perRcpt() int {
	if v, _ := strconv.Atoi(os.Getenv("HERALD_BENCH_PER_RECIPIENT")); v > 0 {
		return v
	}
	return 1
}

// coldCrypto is the crypto ceiling of a cold phase: the CPU time the
// scalar multiplications and signatures both sides cannot avoid take at this
// machine's rates (the mean of those measured at the start of the run and
// after the cold phase). Per session (one per
// device, each device decrypts one message cold): the sender generates 2
// keys (base, ratchet), does 5 DH (X3DH with a one-time prekey, first ratchet
// step) and verifies 1 signature; the recipient does 4 + 2 DH (X3DH, its
// ratchet step) and generates its new ratchet key: 14 X25519 and 1 XEdDSA
// verification. Per bundle (a device created on its first key query): the
// recipient generates its identity, signed and one-time prekeys (3 X25519)
// and signs once.
//
// Every key generation counts here as one X25519 at the ladder's rate, as
// this metric has since s2; Herald now generates keys with a fixed-base
// multiplication about 2.5 times cheaper (internal/signal/x25519.go).
// coldCryptoStrict counts those 3 per session and 3 per bundle at the
// fixed-base rate instead: the ceiling for the fastest method known here.
func coldCrypto(r rates, sessions, bundles int64) time.Duration {
	return time.Duration(sessions)*(14*r.x25519+r.verify) + time.Duration(bundles)*(3*r.x25519+r.sign)
}

func coldCryptoStrict(r rates, sessions, bundles int64) time.Duration {
	return time.Duration(sessions)*(11*r.x25519+3*r.keygen+r.verify) + time.Duration(bundles)*(3*r.keygen+r.sign)
}

type rates struct{ x25519, keygen, verify, sign time.Duration }

func (r rates) mean(o rates) rates {
	return rates{(r.x25519 + o.x25519) / 2, (r.keygen + o.keygen) / 2, (r.verify + o.verify) / 2, (r.sign + o.sign) / 2}
}

// phaseSampler measures the reference operations while a phase runs, every
// 200 ms (10 X25519, one verification, one signature), in the CPU time of
// its own thread (CLOCK_THREAD_CPUTIME_ID): the conditions the phase's own
// crypto runs in — both processes busy on two cores — and the same kind of
// clock the engine's and the simulator's CPU is read with, so time spent
// waiting for a core is not counted. cryptoRates, by contrast, times the
// operations on an idle machine, before and after the phase.
type phaseSampler struct {
	stop chan struct{}
	done chan phaseSample
}

type phaseSample struct {
	r   rates
	cpu time.Duration // the sampler's own CPU time, to leave out of the engine's
}

func startPhaseSampler() *phaseSampler {
	ps := &phaseSampler{stop: make(chan struct{}), done: make(chan phaseSample, 1)}
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		start := threadCPU()
		op := newRefOps()
		var xs, ks, vs, ss []time.Duration
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ps.stop:
				ps.done <- phaseSample{rates{median(xs), median(ks), median(vs), median(ss)}, threadCPU() - start}
				return
			case <-tick.C:
			}
			t0 := threadCPU()
			for i := 0; i < 10; i++ {
				op.x25519()
			}
			t1 := threadCPU()
			op.verify()
			t2 := threadCPU()
			op.sign()
			t3 := threadCPU()
			for i := 0; i < 5; i++ {
				op.keygen()
			}
			t4 := threadCPU()
			xs, vs, ss = append(xs, (t1-t0)/10), append(vs, t2-t1), append(ss, t3-t2)
			ks = append(ks, (t4-t3)/5)
		}
	}()
	return ps
}

// finish stops the sampler: the median rates (zero when no sample was
// taken) and the CPU time the sampler used.
func (ps *phaseSampler) finish() (rates, time.Duration) {
	close(ps.stop)
	s := <-ps.done
	return s.r, s.cpu
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	ds = slices.Clone(ds)
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// threadCPU is the calling thread's CPU time.
func threadCPU() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}

// refOps are the reference operations the crypto ceiling is counted in: one
// X25519 (crypto/ecdh, parsed keys: the cheapest here), one X25519 public key
// by a fixed-base multiplication (filippo.io/edwards25519, written here
// rather than calling Herald's), one XEdDSA verification and one XEdDSA
// signature (the library's).
type refOps struct{ x25519, keygen, verify, sign func() }

func newRefOps() refOps {
	priv, _ := ecdh.X25519().GenerateKey(rand.Reader)
	peer, _ := ecdh.X25519().GenerateKey(rand.Reader)
	kp, _ := ecc.GenerateKeyPair()
	msg := make([]byte, 33)
	sig := ecc.CalculateSignature(kp.PrivateKey(), msg)
	scalar := priv.Bytes()
	return refOps{
		x25519: func() { priv.ECDH(peer.PublicKey()) },
		keygen: func() {
			s, _ := edwards25519.NewScalar().SetBytesWithClamping(scalar)
			new(edwards25519.Point).ScalarBaseMult(s).BytesMontgomery()
		},
		verify: func() { ecc.VerifySignature(kp.PublicKey(), msg, sig) },
		sign:   func() { ecc.CalculateSignature(kp.PrivateKey(), msg) },
	}
}

// cryptoRates times the reference operations, each the best of five rounds.
func cryptoRates() rates {
	op := newRefOps()
	best := func(f func()) time.Duration {
		var m time.Duration
		for round := 0; round < 5; round++ {
			start := time.Now()
			for i := 0; i < 200; i++ {
				f()
			}
			if d := time.Since(start) / 200; round == 0 || d < m {
				m = d
			}
		}
		return m
	}
	return rates{x25519: best(op.x25519), keygen: best(op.keygen), verify: best(op.verify), sign: best(op.sign)}
}
