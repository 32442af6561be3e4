package engine_test

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heraldhq/herald/engine"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/platform"
	"github.com/heraldhq/herald/internal/platform/sim"
	"github.com/heraldhq/herald/internal/seal"
	"github.com/heraldhq/herald/internal/signal"
	"github.com/heraldhq/herald/internal/tenant"
	"github.com/heraldhq/herald/queue"
	"github.com/heraldhq/herald/ratelimit"
)

// crashChild is a whole engine in a child process: queue, sessions, engine,
// platform client. With HERALD_SEED it first enqueues a campaign.
func crashChild() {
	dir, url := os.Getenv("HERALD_DIR"), os.Getenv("HERALD_SIM_URL")
	db, err := kv.Open(kv.Options{Dir: dir})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	sealer, _ := seal.New(seal.TestKey(1))
	var eng *engine.Engine
	q, err := queue.Open(queue.Options{DB: db, Sealer: sealer, Shards: 8, Notify: func(s int) {
		if eng != nil {
			eng.Notify(s)
		}
	}})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	client, _ := platform.NewClient(platform.ClientOptions{BaseURL: url, Secret: "sekret"})
	store, _ := signal.NewStore(db, sealer, 0)
	// The real limiter (its pair rate is restored from nothing after a
	// restart: at most a burst more per recipient, as in production).
	tenants, err := tenant.Open(db, sealer)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	if tenants.Count() == 0 {
		if _, _, err := tenants.NewBusiness("Acme", []string{"15550001111"}, "unlimited", 100_000, false); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
	}
	biz := tenants.All()[0]
	var pnID string
	for pn := range biz.PhoneNumbers {
		pnID = pn
	}
	lim, err := ratelimit.New(ratelimit.Options{DB: db, Sealer: sealer, Tenants: tenants})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	eng, err = engine.New(engine.Options{DB: db, Queue: q, Sessions: store, Sealer: sealer, Transport: client, Shaper: lim,
		BackoffBase: 10 * time.Millisecond, BackoffCap: 200 * time.Millisecond, IdlePoll: 10 * time.Millisecond,
		LeaseRecipients: 64})
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	if n, _ := strconv.Atoi(os.Getenv("HERALD_SEED")); n > 0 {
		h := &harness{db: db, q: q, t: &testing.T{}, now: time.Now, bizID: biz.ID, pnID: pnID}
		var users []string
		for i := 0; i < n; i++ {
			users = append(users, fmt.Sprintf("1666%07d", 5000+i))
		}
		h.enqueue(users, 2, "camp-crash", time.Hour)
		fmt.Println("seeded")
	}
	eng.Start(context.Background())
	for {
		if d, _ := q.Depth(); d == 0 && eng.InFlight() == 0 {
			eng.Flush()
			// Statuses and acks are NoSync; a synced commit makes everything
			// before it durable, so the parent reads what "drained" promised.
			b := db.NewBatch()
			b.Set([]byte("zz-sync"), nil, nil)
			db.Commit(b, true)
			fmt.Println("drained")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCrashDuringCampaignLosesNothingAndNeverReusesACounter(t *testing.T) {
	kills := 6
	if v := os.Getenv("HERALD_CRASH_KILLS"); v != "" {
		kills, _ = strconv.Atoi(v)
	}
	if testing.Short() {
		kills = 3
	}
	users := 600
	s, err := sim.New(sim.Options{Users: 100_000, Prefix: "1666", Secret: "sekret", DevicesMin: 1, DevicesMax: 3})
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	defer s.Close()
	dir := t.TempDir()
	run := func(seed int, untilDrained bool) bool {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "HERALD_ENGINE_CRASH_CHILD=1", "HERALD_DIR="+dir, "HERALD_SIM_URL="+s.URL(),
			fmt.Sprintf("HERALD_SEED=%d", seed))
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 16)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		defer func() { cmd.Process.Signal(syscall.SIGKILL); cmd.Wait() }()
		randomKill := func() <-chan time.Time { return time.After(time.Duration(50+rand.IntN(400)) * time.Millisecond) }
		kill := randomKill()
		if seed > 0 {
			kill = time.After(3 * time.Minute) // first let the seed be accepted
		}
		if untilDrained {
			kill = time.After(3 * time.Minute)
		}
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("child exited")
				}
				if strings.HasPrefix(l, "error") {
					t.Fatalf("child: %s", l)
				}
				if l == "seeded" && !untilDrained {
					kill = randomKill()
				}
				if l == "drained" && seed == 0 {
					return true
				}
			case <-kill:
				return false
			}
		}
	}
	// The first run seeds (accepted = durable before "seeded"); then kill at random moments.
	for i := 0; i < kills; i++ {
		seed := 0
		if i == 0 {
			seed = users
		}
		if run(seed, false) {
			break
		}
	}
	if !run(0, true) {
		t.Fatalf("not drained after the kills; sim %+v", s.Stats())
	}
	var want int64
	registered := 0
	for i := 0; i < users; i++ {
		u := fmt.Sprintf("1666%07d", 5000+i)
		if s.Registered(u) {
			registered++
			want += int64(2 * s.DeviceCount(u))
		}
	}
	st := s.Stats()
	t.Logf("survived %d kills; sim %+v", kills, st)
	if st.Decrypted != want || len(st.Failures) != 0 || st.OrderingViolations != 0 || st.Mismatches != 0 {
		t.Fatalf("want %d decrypted, no failures (no reused counter), no ordering violations; got %+v", want, st)
	}
	db, err := kv.Open(kv.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sealer, _ := seal.New(seal.TestKey(1))
	q, _ := queue.Open(queue.Options{DB: db, Sealer: sealer, Shards: 8})
	store, _ := signal.NewStore(db, sealer, 0)
	eng, _ := engine.New(engine.Options{DB: db, Queue: q, Sessions: store, Sealer: sealer, Transport: noTransport{}})
	defer eng.Close()
	c, _ := eng.CampaignCounters("camp-crash")
	if c.Sent != int64(2*registered) || c.Failed != int64(2*(users-registered)) {
		t.Fatalf("counters after crashes: %+v (want sent %d failed %d)", c, 2*registered, 2*(users-registered))
	}
}

type noTransport struct{}

func (noTransport) QueryKeys(context.Context, []string) (*platform.KeysResponse, error) {
	return nil, fmt.Errorf("no transport")
}
func (noTransport) SendEach(_ context.Context, envs []platform.Envelope) ([]platform.Result, []error) {
	errs := make([]error, len(envs))
	for i := range errs {
		errs[i] = fmt.Errorf("no transport")
	}
	return nil, errs
}
