package ratelimit

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/seal"
	"github.com/heraldhq/herald/internal/tenant"
)

type fixture struct {
	db  *kv.DB
	ten *tenant.Store
	l   *Limiter
	b   *tenant.Business
	pn  string
	now time.Time
}

func newFixture(t *testing.T, dir, tier string) *fixture {
	db, err := kv.Open(kv.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	s, _ := seal.New(seal.TestKey(1))
	ten, _ := tenant.Open(db, s)
	f := &fixture{db: db, ten: ten, now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	if all := ten.All(); len(all) > 0 {
		f.b = all[0]
	} else if f.b, _, err = ten.NewBusiness("Acme", []string{"15550001111"}, tier, 80, false); err != nil {
		t.Fatal(err)
	}
	for pn := range f.b.PhoneNumbers {
		f.pn = pn
	}
	f.l, err = New(Options{DB: db, Sealer: s, Tenants: ten, Now: func() time.Time { return f.now }})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) close() { f.l.Close(); f.db.Close() }

func randomNumbers(n int, seed uint64) []string {
	r := rand.New(rand.NewPCG(seed, 7))
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("1%010d", r.Int64N(9_000_000_000)+1_000_000_000)
	}
	return out
}

func admitted(codes []int) (ok, tier int) {
	for _, c := range codes {
		switch c {
		case 0:
			ok++
		case CodeTier:
			tier++
		}
	}
	return
}

func TestTierBoundaryIsExact(t *testing.T) {
	f := newFixture(t, t.TempDir(), "250")
	defer f.close()
	nums := randomNumbers(300, 1)
	codes, _, err := f.l.Admit(f.b, f.pn, nums, f.now)
	if err != nil {
		t.Fatal(err)
	}
	if ok, tier := admitted(codes); ok != 250 || tier != 50 {
		t.Fatalf("tier 250: admitted %d, refused %d", ok, tier)
	}
	// Returning recipients are always allowed; new ones are not.
	codes, _, _ = f.l.Admit(f.b, f.pn, append(nums[:10:10], randomNumbers(5, 2)...), f.now.Add(time.Hour))
	if ok, tier := admitted(codes); ok != 10 || tier != 5 {
		t.Fatalf("after the limit: %d returning allowed, %d new refused", ok, tier)
	}
	// The window moves: 24h after the first contacts, room opens again.
	codes, _, _ = f.l.Admit(f.b, f.pn, randomNumbers(300, 3), f.now.Add(24*time.Hour+time.Minute))
	if ok, _ := admitted(codes); ok != 240 { // the 10 refreshed at +1h still count
		t.Fatalf("after the window moved: admitted %d, want 240", ok)
	}
}

func TestTierConcurrentUploadsCannotOvershoot(t *testing.T) {
	f := newFixture(t, t.TempDir(), "250")
	defer f.close()
	var wg sync.WaitGroup
	var mu sync.Mutex
	total := 0
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 5; i++ {
				codes, _, err := f.l.Admit(f.b, f.pn, randomNumbers(20, uint64(100+g*10+i)), f.now)
				if err != nil {
					t.Error(err)
					return
				}
				ok, _ := admitted(codes)
				mu.Lock()
				total += ok
				mu.Unlock()
			}
		}(g)
	}
	wg.Wait()
	if total != 250 {
		t.Fatalf("concurrent uploads admitted %d unique recipients, want exactly 250", total)
	}
}

func TestTierSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, dir, "250")
	f.l.Admit(f.b, f.pn, randomNumbers(200, 9), f.now)
	f.close()
	f = newFixture(t, dir, "250")
	defer f.close()
	codes, _, _ := f.l.Admit(f.b, f.pn, randomNumbers(100, 10), f.now.Add(time.Minute))
	if ok, _ := admitted(codes); ok != 50 {
		t.Fatalf("after restart: admitted %d, want 50", ok)
	}
	if n, _ := f.l.UniqueRecipients(f.b.ID, f.now.Add(time.Minute)); n != 250 {
		t.Fatalf("unique recipients %d", n)
	}
}

func TestPausedAndLowQualityAreRestricted(t *testing.T) {
	f := newFixture(t, t.TempDir(), "10k")
	defer f.close()
	paused := true
	b, _ := f.ten.Update(f.b.ID, tenant.Patch{Paused: &paused})
	codes, _, _ := f.l.Admit(b, f.pn, []string{"15550000001"}, f.now)
	if codes[0] != CodeRestricted {
		t.Fatalf("paused business admitted: %v", codes)
	}
}

func TestSequentialEnumerationIsFlagged(t *testing.T) {
	f := newFixture(t, t.TempDir(), "10k")
	defer f.close()
	var seq []string
	for i := 0; i < 500; i++ {
		seq = append(seq, fmt.Sprintf("1555%07d", 1000+i))
	}
	// One batch that enumerates is refused whole, before anything of it is
	// counted, with the flag named; the integrity view says why.
	codes, reason, err := f.l.Admit(f.b, f.pn, seq, f.now)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range codes {
		if c != CodeRestricted {
			t.Fatalf("line %d of an enumerating batch admitted (code %d)", i, c)
		}
	}
	if !strings.Contains(reason, "sequential_enumeration") {
		t.Fatalf("reason does not name the flag: %q", reason)
	}
	if n, _ := f.l.UniqueRecipients(f.b.ID, f.now); n != 0 {
		t.Fatalf("a refused batch counted %d recipients against the tier", n)
	}
	v := f.l.quality(f.pn, f.now)
	if len(v.Flags) == 0 || v.Flags[0].Name != "sequential_enumeration" || v.Flags[0].Refused != 1 {
		t.Fatalf("refusal not in the integrity view: %+v", v)
	}
	// A clean batch right after is admitted.
	if codes, _, _ := f.l.Admit(f.b, f.pn, randomNumbers(50, 77), f.now); codes[0] != 0 {
		t.Fatalf("clean batch after a refused one: %v", codes[:3])
	}
	// Enumeration spread over batches too small to judge alone still lowers
	// the quality rating.
	for k := 0; k+10 <= len(seq); k += 10 {
		f.l.Admit(f.b, f.pn, seq[k:k+10], f.now)
	}
	v = f.l.quality(f.pn, f.now)
	if v.Quality != "low" {
		t.Fatalf("enumeration in small batches not rated low: %+v", v)
	}
	// Low quality pauses new campaigns and moves the tier down.
	codes, _, _ = f.l.Admit(f.b, f.pn, []string{"15559999999"}, f.now)
	if codes[0] != CodeRestricted {
		t.Fatal("low quality did not restrict admission")
	}
	if ch := f.l.EvaluateTiers(f.now); len(ch) != 1 {
		t.Fatalf("tier movement: %v", ch)
	}
	if b, _ := f.ten.Get(f.b.ID); b.Tier != "2k" {
		t.Fatalf("tier after low quality: %s", b.Tier)
	}
}

func TestSpamReportsLowerQuality(t *testing.T) {
	f := newFixture(t, t.TempDir(), "10k")
	defer f.close()
	var sent []heraldtype.StatusChange
	for i := 0; i < 1000; i++ {
		sent = append(sent, heraldtype.StatusChange{PhoneNumberID: f.pn, Status: "sent", TS: f.now.Unix()})
	}
	f.l.Statuses(sent)
	for i := 0; i < 5; i++ {
		f.l.Signal(heraldtype.Signal{Kind: "report", BusinessPhone: "15550001111", At: f.now})
	}
	if q := f.l.quality(f.pn, f.now); q.Quality != "medium" || q.Flags[0].Name != "spam_reports" {
		t.Fatalf("5 reports per 1000 sent: %+v", q)
	}
	for i := 0; i < 10; i++ {
		f.l.Signal(heraldtype.Signal{Kind: "report", BusinessPhone: "15550001111", At: f.now})
	}
	if q := f.l.quality(f.pn, f.now); q.Quality != "low" {
		t.Fatalf("15 reports per 1000 sent: %+v", q)
	}
	// Seven days later the window has forgotten them.
	if q := f.l.quality(f.pn, f.now.Add(8*24*time.Hour)); q.Quality != "high" {
		t.Fatalf("after 8 days: %+v", q)
	}
}

func TestNormalCampaignIsNotFlagged(t *testing.T) {
	f := newFixture(t, t.TempDir(), "10k")
	defer f.close()
	customers := randomNumbers(2000, 42)
	// Day 1: first campaign to 1000 customers; day 2: 70 % returning, 30 % new.
	f.l.Admit(f.b, f.pn, customers[:1000], f.now)
	day2 := append(append([]string{}, customers[:700]...), customers[1000:1300]...)
	f.l.Admit(f.b, f.pn, day2, f.now.Add(20*time.Hour))
	var sent []heraldtype.StatusChange
	for i := 0; i < 2000; i++ {
		sent = append(sent, heraldtype.StatusChange{PhoneNumberID: f.pn, Status: "sent", TS: f.now.Unix()})
	}
	f.l.Statuses(sent)
	f.l.Signal(heraldtype.Signal{Kind: "report", PhoneNumberID: f.pn, At: f.now}) // one grumpy user
	if q := f.l.quality(f.pn, f.now.Add(21*time.Hour)); q.Quality != "high" || len(q.Flags) != 0 {
		t.Fatalf("a normal campaign was flagged: %+v", q)
	}
}

func TestUnknownRecipientShareIsFlagged(t *testing.T) {
	f := newFixture(t, t.TempDir(), "10k")
	defer f.close()
	f.l.Admit(f.b, f.pn, randomNumbers(400, 5), f.now)
	for i := 0; i < 200; i++ {
		f.l.Signal(heraldtype.Signal{Kind: "unknown_user", PhoneNumberID: f.pn, At: f.now})
	}
	q := f.l.quality(f.pn, f.now)
	found := false
	for _, fl := range q.Flags {
		if fl.Name == "unknown_recipient_share" && fl.Value == 0.5 && fl.Threshold == 0.2 {
			found = true
		}
	}
	if !found || q.Quality != "medium" {
		t.Fatalf("unknown share not flagged: %+v", q)
	}
}

func TestShapingDelaysNeverFails(t *testing.T) {
	f := newFixture(t, t.TempDir(), "10k")
	defer f.close()
	// Pair rate: a burst of 3, then one per 6 s.
	for i := 0; i < 3; i++ {
		if at := f.l.Shape(f.pn, "15550000001", f.now); !at.IsZero() {
			t.Fatalf("burst message %d delayed", i)
		}
	}
	at := f.l.Shape(f.pn, "15550000001", f.now)
	if d := at.Sub(f.now); d < 5*time.Second || d > 7*time.Second {
		t.Fatalf("4th message to one user: delay %v, want ~6s", d)
	}
	// Throughput: 80/s with a burst of 8.
	delayed := 0
	for i := 0; i < 100; i++ {
		if !f.l.Shape(f.pn, fmt.Sprintf("1555100%04d", i), f.now).IsZero() {
			delayed++
		}
	}
	if delayed != 95 { // burst of 8, 3 of them spent by the pair-rate burst above
		t.Fatalf("throughput: %d of 100 delayed at one instant, want 95", delayed)
	}
	if at := f.l.Shape(f.pn, "15552000000", f.now.Add(time.Second)); !at.IsZero() {
		t.Fatal("a second later the bucket must have refilled")
	}
}

func TestIntegrityViewHasNoNumbers(t *testing.T) {
	f := newFixture(t, t.TempDir(), "2k")
	defer f.close()
	nums := randomNumbers(10, 77)
	f.l.Admit(f.b, f.pn, nums, f.now)
	v := fmt.Sprintf("%v", f.l.Integrity(f.b, f.pn, f.now))
	for _, n := range append(nums, "15550001111") {
		if strings.Contains(v, n) {
			t.Fatalf("integrity view exposes %s: %s", n, v)
		}
	}
	if !strings.Contains(v, "unique_recipients_24h:10") {
		t.Fatalf("view: %s", v)
	}
}

func BenchmarkAdmit(b *testing.B) {
	for _, c := range []struct {
		tier  string
		batch int
	}{{"100k", 1}, {"100k", 256}, {"unlimited", 256}} {
		tier, batch := c.tier, c.batch
		b.Run(fmt.Sprintf("tier=%s/batch=%d", tier, batch), func(b *testing.B) {
			f := newFixture(&testing.T{}, b.TempDir(), tier)
			defer f.close()
			nums := randomNumbers(batch*64, 3)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				k := (i % 64) * batch
				f.l.Admit(f.b, f.pn, nums[k:k+batch], f.now)
			}
			b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "recipients/s")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/recipient")
		})
	}
}

// BenchmarkTier100kMemory admits 100,000 unique recipients for one 100k-tier
// business and reports the Go heap it holds afterwards: per-recipient state
// lives in Pebble (bounded by its memtable and block cache), not in the heap.
func BenchmarkTier100kMemory(b *testing.B) {
	for i := 0; i < b.N; i++ {
		f := newFixture(&testing.T{}, b.TempDir(), "100k")
		nums := randomNumbers(100_000, uint64(i+99))
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		for k := 0; k < len(nums); k += 1000 {
			f.l.Admit(f.b, f.pn, nums[k:k+1000], f.now)
		}
		nums = nil
		runtime.GC()
		runtime.ReadMemStats(&after)
		n, _ := f.l.UniqueRecipients(f.b.ID, f.now)
		if n != 100_000 {
			b.Fatalf("unique %d", n)
		}
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/1024, "heap_growth_KiB")
		f.close()
	}
}

func TestFirstContactShareIsFlagged(t *testing.T) {
	f := newFixture(t, t.TempDir(), "10k")
	defer f.close()
	// Only ever new recipients: nobody this number talked to before.
	f.l.Admit(f.b, f.pn, randomNumbers(2000, 9), f.now)
	q := f.l.quality(f.pn, f.now)
	if q.Quality != "medium" || len(q.Flags) != 1 || q.Flags[0].Name != "first_contact_share" || q.Flags[0].Value != 1 || q.Flags[0].Threshold != 0.95 {
		t.Fatalf("all first contacts: %+v", q)
	}
	// Medium restricts nothing.
	if codes, _, _ := f.l.Admit(f.b, f.pn, []string{"15551112222"}, f.now); codes[0] != 0 {
		t.Fatalf("medium quality restricted admission: %v", codes)
	}
}

func TestTierMovesUpWhenHalfUsed(t *testing.T) {
	f := newFixture(t, t.TempDir(), "250")
	defer f.close()
	// 124 unique recipients: under half of 250, no move.
	f.l.Admit(f.b, f.pn, randomNumbers(124, 3), f.now)
	if ch := f.l.EvaluateTiers(f.now); len(ch) != 0 {
		t.Fatalf("moved with less than half the tier used: %v", ch)
	}
	f.l.Admit(f.b, f.pn, randomNumbers(130, 4), f.now)
	ch := f.l.EvaluateTiers(f.now)
	if b, _ := f.ten.Get(f.b.ID); len(ch) != 1 || b.Tier != "2k" {
		t.Fatalf("half the tier used with good quality: %v, tier %s", ch, b.Tier)
	}
}

func TestLowQualityAtTheLowestTierPauses(t *testing.T) {
	f := newFixture(t, t.TempDir(), "250")
	defer f.close()
	var seq []string
	for i := 0; i < 240; i++ {
		seq = append(seq, fmt.Sprintf("1555%07d", 5000+i))
	}
	for k := 0; k+10 <= len(seq); k += 10 { // batches too small to be refused alone
		f.l.Admit(f.b, f.pn, seq[k:k+10], f.now)
	}
	ch := f.l.EvaluateTiers(f.now)
	b, _ := f.ten.Get(f.b.ID)
	if len(ch) != 1 || !b.Paused || b.Tier != "250" {
		t.Fatalf("low quality at tier 250: %v, paused %v, tier %s", ch, b.Paused, b.Tier)
	}
	if codes, _, _ := f.l.Admit(b, f.pn, []string{"15559990000"}, f.now); codes[0] != CodeRestricted {
		t.Fatalf("paused business admitted: %v", codes)
	}
}

// TestTokenShortByFloatErrorIsAWholeToken: refills in steps of 1/rate leave
// float error (three thirds make 0.999…). Such a bucket grants the token and
// takes it; a bucket really short says when, strictly after now. Before,
// the wait rounded to 0 ns: the caller read "not later than now" and sent
// without a token, twice in the same instant (found by TestPairRateProperty).
func TestTokenShortByFloatErrorIsAWholeToken(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	rate, burst := 1.0/3, 2.0
	var bk bucket
	if !bk.take(t0, rate, burst).IsZero() || !bk.take(t0.Add(time.Second), rate, burst).IsZero() {
		t.Fatal("a fresh bucket of 2 refused its tokens")
	}
	at := bk.take(t0.Add(time.Second), rate, burst)
	if !at.After(t0.Add(time.Second)) {
		t.Fatalf("an empty bucket said %v", at)
	}
	granted := 0
	for i := 0; i < 2; i++ {
		switch at := bk.take(t0.Add(3*time.Second), rate, burst); {
		case at.IsZero():
			granted++
		case !at.After(t0.Add(3 * time.Second)):
			t.Fatalf("a wait of %v: not later than now, and no token taken", at.Sub(t0.Add(3*time.Second)))
		}
	}
	if granted != 1 {
		t.Fatalf("%d tokens granted at +3 s, want 1 (0.333 + 2 × 0.333)", granted)
	}
}

// peakStore stands in for the cluster's tier store (its tests run the real
// one, internal/node TestClusterTierExactAcrossNodes): it admits everyone
// and knows the peak, or fails to.
type peakStore struct {
	peak int64
	err  error
}

func (p *peakStore) Admit(biz string, limit int64, keys [][16]byte, now time.Time, w time.Duration) ([]bool, error) {
	ok := make([]bool, len(keys))
	for i := range ok {
		ok[i] = true
	}
	return ok, nil
}

func (p *peakStore) Peak(string, time.Time, time.Duration) (int64, error) { return p.peak, p.err }

// TestTierUpgradeOnTheSharedPeak: with a shared tier, upgrades follow the
// cluster's peak, not this node's; a peak the cluster cannot tell moves
// nothing up.
func TestTierUpgradeOnTheSharedPeak(t *testing.T) {
	f := newFixture(t, t.TempDir(), "250")
	defer f.close()
	f.l.Close()
	s, _ := seal.New(seal.TestKey(1))
	ps := &peakStore{peak: 200, err: fmt.Errorf("cluster unreachable")}
	l, err := New(Options{DB: f.db, Sealer: s, Tenants: f.ten, Now: func() time.Time { return f.now }, Shared: ps})
	if err != nil {
		t.Fatal(err)
	}
	f.l = l
	if ch := l.EvaluateTiers(f.now); len(ch) != 0 {
		t.Fatalf("moved on an unknown peak: %v", ch)
	}
	ps.err = nil
	ch := l.EvaluateTiers(f.now)
	if b, _ := f.ten.Get(f.b.ID); len(ch) != 1 || b.Tier != "2k" {
		t.Fatalf("the cluster's peak of 200 of 250 (this node counted none): %v, tier %s", ch, b.Tier)
	}
}
