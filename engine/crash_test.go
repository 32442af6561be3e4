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
	// HERALD_SEED users, HERALD_ROUND k: enqueue round k's campaign (two
	// messages per user in round 0, one after), once: a marker written after
	// the enqueue is durable says it was done. Rounds after the first reach
	// recipients whose sessions this process reads back from disk (invariant 2).
	if n, _ := strconv.Atoi(os.Getenv("HERALD_SEED")); n > 0 {
		round := os.Getenv("HERALD_ROUND")
		marker := []byte("zz-round-" + round)
		if _, done, _ := db.GetCopy(marker); !done {
			h := &harness{db: db, q: q, t: &testing.T{}, now: time.Now, bizID: biz.ID, pnID: pnID}
			var users []string
			for i := 0; i < n; i++ {
				users = append(users, fmt.Sprintf("1666%07d", 5000+i))
			}
			per := 1
			if round == "0" {
				per = 2
			}
			h.enqueue(users, per, "camp-crash-"+round, time.Hour)
			b := db.NewBatch()
			b.Set(marker, nil, nil)
			if err := db.Commit(b, true); err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
		}
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
	// run starts a child that first enqueues round (unless round < 0), then
	// kills it at a random moment after that (or waits until it drained);
	// it reports whether the child drained instead of being killed.
	run := func(round int, untilDrained bool) bool {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "HERALD_ENGINE_CRASH_CHILD=1", "HERALD_DIR="+dir, "HERALD_SIM_URL="+s.URL(),
			fmt.Sprintf("HERALD_SEED=%d", users), fmt.Sprintf("HERALD_ROUND=%d", round))
		if round < 0 {
			cmd.Env = append(cmd.Env, "HERALD_SEED=0")
		}
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
		seeded := round < 0
		if !seeded || untilDrained {
			kill = time.After(3 * time.Minute) // first let the round be accepted
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
				if l == "seeded" {
					seeded = true
					if !untilDrained {
						kill = randomKill()
					}
				}
				if l == "drained" && seeded {
					return true
				}
			case <-kill:
				if !seeded {
					t.Fatal("the child did not accept its round within 3 minutes")
				}
				return false
			}
		}
	}
	// Each run enqueues a round to the same recipients (sessions of the
	// rounds before come from disk), then dies at a random moment.
	made := 0
	for i := 0; i < kills; i++ {
		if !run(i, false) {
			made++
		}
	}
	if !run(-1, true) {
		t.Fatalf("not drained after the kills; sim %+v", s.Stats())
	}
	rounds := kills
	var want int64
	registered := 0
	for i := 0; i < users; i++ {
		u := fmt.Sprintf("1666%07d", 5000+i)
		if s.Registered(u) {
			registered++
			want += int64((2 + rounds - 1) * s.DeviceCount(u))
		}
	}
	st := s.Stats()
	t.Logf("%d runs, %d of them killed (the others drained first), %d rounds to the same %d users; sim %+v", kills, made, rounds, users, st)
	if made == 0 {
		t.Fatal("no run was killed: the test proved nothing about crashes")
	}
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
	for r := 0; r < rounds; r++ {
		per := 1
		if r == 0 {
			per = 2
		}
		c, _ := eng.Statuses().Counters(fmt.Sprintf("camp-crash-%d", r))
		if c.Sent != int64(per*registered) || c.Failed != int64(per*(users-registered)) {
			t.Fatalf("round %d's counters after crashes: %+v (want sent %d failed %d)", r, c, per*registered, per*(users-registered))
		}
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
