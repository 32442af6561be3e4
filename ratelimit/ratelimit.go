package ratelimit

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/heraldhq/herald/heraldtype"
	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/seal"
	"github.com/heraldhq/herald/internal/tenant"
)

// Admission codes (the API's numbers).
const (
	CodeTier       = heraldtype.CodeTier
	CodeRestricted = heraldtype.CodeRestricted
)

// Policy is the tunable part of the limits. Zero values take the defaults.
type Policy struct {
	Window          time.Duration // tier window; default 24h
	QualityWindow   time.Duration // signals window; default 7 days
	PairInterval    time.Duration // pair rate: one message per interval; default 6s
	PairBurst       float64       // pair rate burst; default 3
	MinSample       int64         // admissions before share-based flags count; default 200
	MinSent         int64         // sent messages before report-rate flags count; default 100
	ReportsMedium   float64       // reports per sent → medium; default 0.003
	ReportsLow      float64       // reports per sent → low; default 0.01
	FirstContactMax float64       // share of first contacts flagged; default 0.95
	UnknownMax      float64       // share of unknown users flagged; default 0.2
	SequentialMax   float64       // share of an upload in consecutive runs flagged; default 0.5
	SequentialRun   int           // run length that counts as enumeration; default 5
	// SequentialBatchMin: an admission batch of at least this many
	// recipients whose sequential share passes SequentialMax is refused
	// whole, before any of it is enqueued; default 20.
	SequentialBatchMin int
	UpgradeShare       float64 // used share of the tier (7 days) to move up; default 0.5
}

func (p *Policy) defaults() {
	d := func(v *float64, x float64) {
		if *v == 0 {
			*v = x
		}
	}
	if p.Window == 0 {
		p.Window = 24 * time.Hour
	}
	if p.QualityWindow == 0 {
		p.QualityWindow = 7 * 24 * time.Hour
	}
	if p.PairInterval == 0 {
		p.PairInterval = 6 * time.Second
	}
	if p.MinSample == 0 {
		p.MinSample = 200
	}
	if p.MinSent == 0 {
		p.MinSent = 100
	}
	if p.SequentialRun == 0 {
		p.SequentialRun = 5
	}
	if p.SequentialBatchMin == 0 {
		p.SequentialBatchMin = 20
	}
	d(&p.PairBurst, 3)
	d(&p.ReportsMedium, 0.003)
	d(&p.ReportsLow, 0.01)
	d(&p.FirstContactMax, 0.95)
	d(&p.UnknownMax, 0.2)
	d(&p.SequentialMax, 0.5)
	d(&p.UpgradeShare, 0.5)
}

// Options configure a Limiter.
type Options struct {
	DB      *kv.DB
	Sealer  *seal.Sealer
	Tenants *tenant.Store
	Policy  Policy
	Now     func() time.Time
	// PairCache bounds pair-rate buckets in memory; default 1,000,000.
	PairCache int
	// Logger for what fails in the background (a block not recorded);
	// default slog.Default.
	Logger *slog.Logger
	// Shared, in cluster mode, holds the tiers' unique recipients for every
	// node: a tier's limit holds exactly across uploads to different nodes.
	Shared SharedTier
}

// SharedTier counts a business's unique recipients cluster-wide.
type SharedTier interface {
	// Admit decides for each recipient key (distinct, in order) whether it
	// may be messaged: counted in the window already, or counted now while
	// the limit has room. Nothing more than limit is ever counted.
	Admit(bizID string, limit int64, keys [][16]byte, now time.Time, window time.Duration) ([]bool, error)
}

// Limiter implements api.Admitter, engine.Shaper and the quality signals.
type Limiter struct {
	opts Options
	pol  Policy
	opt  optState

	mu      sync.Mutex
	remote  func(pn string) []HourSignals // other nodes' signal windows (cluster)
	biz     map[string]*bizState
	phones  map[string]*phoneState
	buckets map[string]*bucket // phone_number_id → throughput bucket
	pairs   *lru.Cache[[16]byte, *bucket]
	pairMu  sync.Mutex
	rated   map[string]rating // phone_number_id → last quality rating for dispatch
}

type bizState struct {
	mu     sync.Mutex
	loaded bool
	count  int64 // unique recipients whose last contact is inside the window
	// daily peak of count over the last days (tier movement), by unix day.
	peaks map[int64]int64
}

type bucket struct {
	tokens float64
	last   time.Time
}

// EnsureDefaults fills the zero fields of o (its Policy's included) with
// their defaults (the one place they are written).
func (o *Options) EnsureDefaults() {
	if o.Now == nil {
		o.Now = clock.Wall
	}
	if o.PairCache == 0 {
		o.PairCache = 1_000_000
	}
	o.Policy.defaults()
}

// Validate reports what o lacks.
func (o *Options) Validate() error {
	if o.DB == nil || o.Sealer == nil || o.Tenants == nil {
		return errors.New("ratelimit: Options.DB, Sealer and Tenants are required")
	}
	return nil
}

// New builds a limiter.
func New(opts Options) (*Limiter, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.EnsureDefaults()
	c, err := lru.New[[16]byte, *bucket](opts.PairCache)
	if err != nil {
		return nil, err
	}
	return &Limiter{opts: opts, pol: opts.Policy, biz: map[string]*bizState{}, phones: map[string]*phoneState{},
		buckets: map[string]*bucket{}, pairs: c, rated: map[string]rating{}}, nil
}

// Close persists signal windows.
func (l *Limiter) Close() error { return l.persistSignals() }

// Keys (prefix 'r'): last contact r L <biz> <hmac> → unix nanos; expiry
// index r E <biz> <nanos> <hmac>; count r C <biz>.
func lastKey(biz string, h [16]byte) []byte {
	k := append([]byte("rL"), byte(len(biz)))
	k = append(k, biz...)
	return append(k, h[:]...)
}

func expKey(biz string, t int64, h [16]byte) []byte {
	k := append([]byte("rE"), byte(len(biz)))
	k = append(k, biz...)
	k = binary.BigEndian.AppendUint64(k, uint64(t))
	return append(k, h[:]...)
}

func countKey(biz string) []byte { return append([]byte("rC"), biz...) }

func (l *Limiter) bizState(id string) *bizState {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.biz[id]
	if !ok {
		s = &bizState{peaks: map[int64]int64{}}
		l.biz[id] = s
	}
	return s
}

// loadLocked reads the persisted count; s.mu is held.
func (l *Limiter) loadLocked(biz string, s *bizState) error {
	if s.loaded {
		return nil
	}
	v, ok, err := l.opts.DB.GetCopy(countKey(biz))
	if err != nil {
		return err
	}
	if ok && len(v) >= 8 {
		s.count = int64(binary.BigEndian.Uint64(v))
		var peaks map[string]int64
		if len(v) > 8 && json.Unmarshal(v[8:], &peaks) == nil {
			for d, p := range peaks {
				day, _ := strconv.ParseInt(d, 10, 64)
				s.peaks[day] = p
			}
		}
	}
	s.loaded = true
	return nil
}

// expireLocked drops recipients whose last contact left the window; s.mu held.
func (l *Limiter) expireLocked(b *pebble.Batch, biz string, s *bizState, now time.Time) error {
	cut := now.Add(-l.pol.Window).UnixNano()
	lo := expKey(biz, 0, [16]byte{})
	lo = lo[:len(lo)-24]
	hi := binary.BigEndian.AppendUint64(append([]byte(nil), lo...), uint64(cut)+1)
	it, err := l.opts.DB.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		var h [16]byte
		copy(h[:], k[len(k)-16:])
		b.Delete(append([]byte(nil), k...), nil)
		b.Delete(lastKey(biz, h), nil)
		s.count--
	}
	if s.count < 0 {
		s.count = 0
	}
	return it.Error()
}

// Admit implements api.Admitter. It is exact at the tier boundary: one
// business's admissions are serialized and durable before they return. A
// batch that shows sequential enumeration is refused whole (CodeRestricted,
// reason naming the flag) before anything of it is counted or enqueued; the
// integrity view then shows the flag.
func (l *Limiter) Admit(b *tenant.Business, pn string, recipients []string, now time.Time) ([]int, string, error) {
	codes := make([]int, len(recipients))
	restrict := func(reason string) ([]int, string, error) {
		for i := range codes {
			codes[i] = CodeRestricted
		}
		return codes, reason, nil
	}
	if b.Paused {
		return restrict("business is paused")
	}
	if q := l.quality(pn, now); q.Quality == "low" {
		return restrict("restricted for low quality: " + flagNames(q.Flags))
	}
	seq := sequentialShare(recipients, l.pol.SequentialRun)
	if len(recipients) >= l.pol.SequentialBatchMin && seq > l.pol.SequentialMax {
		l.refuseBatch(pn, now, seq)
		return restrict(fmt.Sprintf("refused as sequential_enumeration: %.0f%% of this batch of %d recipients are runs of consecutive numbers (threshold %.0f%%)",
			seq*100, len(recipients), l.pol.SequentialMax*100))
	}
	if err := l.optedOut(b.ID, recipients, codes); err != nil {
		return nil, "", err
	}
	limit := int64(tenant.Tiers[b.Tier])
	if limit < 0 {
		// Unlimited tier: there is no cap to hold exactly, so no per-recipient
		// lookups (they dominated ingest). Admissions are counted and uploads
		// still checked for enumeration; unique_recipients_24h is not kept.
		l.recordAdmission(pn, now, int64(len(recipients)), 0, seq)
		return codes, "", nil
	}
	if l.opts.Shared != nil {
		return l.admitShared(b, pn, recipients, codes, limit, now, seq)
	}
	s := l.bizState(b.ID)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := l.loadLocked(b.ID, s); err != nil {
		return nil, "", err
	}
	batch := l.opts.DB.NewBatch()
	if err := l.expireLocked(batch, b.ID, s, now); err != nil {
		batch.Close()
		return nil, "", err
	}
	cut := now.Add(-l.pol.Window).UnixNano()
	nowNS := now.UnixNano()
	var firsts int64
	seenHere := map[[16]byte]bool{}
	for i, r := range recipients {
		if codes[i] != 0 {
			continue // opted out: refused, uses no tier
		}
		h := l.opts.Sealer.Lookup(b.ID + ":" + r)
		if seenHere[h] {
			continue // same recipient earlier in this call: already decided and admitted
		}
		v, ok, err := l.opts.DB.GetCopy(lastKey(b.ID, h))
		if err != nil {
			batch.Close()
			return nil, "", err
		}
		var last int64
		if ok && len(v) == 8 {
			last = int64(binary.BigEndian.Uint64(v))
		}
		if last > cut {
			// Already counted in the window: always allowed; refresh its expiry.
			batch.Delete(expKey(b.ID, last, h), nil)
		} else {
			if limit >= 0 && s.count >= limit {
				codes[i] = CodeTier
				continue
			}
			s.count++
			firsts++
		}
		seenHere[h] = true
		batch.Set(lastKey(b.ID, h), binary.BigEndian.AppendUint64(nil, uint64(nowNS)), nil)
		batch.Set(expKey(b.ID, nowNS, h), nil, nil)
	}
	day := now.Unix() / 86400
	if s.count > s.peaks[day] {
		s.peaks[day] = s.count
	}
	for d := range s.peaks {
		if d < day-7 {
			delete(s.peaks, d)
		}
	}
	peaks := map[string]int64{}
	for d, p := range s.peaks {
		peaks[strconv.FormatInt(d, 10)] = p
	}
	pj, _ := json.Marshal(peaks)
	batch.Set(countKey(b.ID), append(binary.BigEndian.AppendUint64(nil, uint64(s.count)), pj...), nil)
	// Durable before the caller's enqueue: WAL order keeps a crash from
	// keeping an enqueue whose admission it lost.
	if err := l.opts.DB.Commit(batch, false); err != nil {
		return nil, "", err
	}
	admitted := int64(0)
	for _, c := range codes {
		if c == 0 {
			admitted++
		}
	}
	l.recordAdmission(pn, now, admitted, firsts, seq)
	reason := ""
	if admitted < int64(len(codes)) {
		reason = "messaging tier limit reached: no more new unique recipients in the moving 24 h window"
	}
	return codes, reason, nil
}

// admitShared is Admit's tier check against the cluster's count.
func (l *Limiter) admitShared(b *tenant.Business, pn string, recipients []string, codes []int, limit int64, now time.Time, seq float64) ([]int, string, error) {
	var keys [][16]byte
	idx := map[[16]byte]int{}
	for i, r := range recipients {
		if codes[i] != 0 {
			continue
		}
		h := l.opts.Sealer.Lookup(b.ID + ":" + r)
		if _, ok := idx[h]; !ok {
			idx[h] = len(keys)
			keys = append(keys, h)
		}
	}
	ok, err := l.opts.Shared.Admit(b.ID, limit, keys, now, l.pol.Window)
	if err != nil {
		return nil, "", err
	}
	admitted := int64(0)
	for i, r := range recipients {
		if codes[i] != 0 {
			continue
		}
		if !ok[idx[l.opts.Sealer.Lookup(b.ID+":"+r)]] {
			codes[i] = CodeTier
			continue
		}
		admitted++
	}
	l.recordAdmission(pn, now, admitted, 0, seq)
	reason := ""
	if admitted < int64(len(codes)) {
		for _, c := range codes {
			if c == CodeTier {
				reason = "messaging tier limit reached: no more new unique recipients in the moving 24 h window"
			}
		}
	}
	return codes, reason, nil
}

func flagNames(fs []Flag) string {
	names := make([]string, 0, len(fs))
	for _, f := range fs {
		names = append(names, f.Name)
	}
	if len(names) == 0 {
		return "quality low"
	}
	return strings.Join(names, ", ")
}

// UniqueRecipients returns the business's count in the current window.
func (l *Limiter) UniqueRecipients(bizID string, now time.Time) (int64, error) {
	if c, ok := l.opts.Shared.(interface {
		Count(bizID string, now time.Time, window time.Duration) (int64, error)
	}); ok {
		return c.Count(bizID, now, l.pol.Window) // the cluster's count
	}
	s := l.bizState(bizID)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := l.loadLocked(bizID, s); err != nil {
		return 0, err
	}
	b := l.opts.DB.NewBatch()
	if err := l.expireLocked(b, bizID, s, now); err != nil {
		b.Close()
		return 0, err
	}
	return s.count, l.opts.DB.Commit(b, false)
}

// sequentialShare is the share of numbers that sit in runs of at least run
// consecutive numbers (an enumeration pattern: 1555000100, …101, …102).
func sequentialShare(nums []string, run int) float64 {
	if len(nums) < run {
		return 0
	}
	vals := make([]uint64, 0, len(nums))
	for _, n := range nums {
		if v, err := strconv.ParseUint(n, 10, 64); err == nil {
			vals = append(vals, v)
		}
	}
	sort.Slice(vals, func(i, j int) bool { return vals[i] < vals[j] })
	inRuns, cur := 0, 1
	for i := 1; i <= len(vals); i++ {
		if i < len(vals) && vals[i] == vals[i-1]+1 {
			cur++
			continue
		}
		if cur >= run {
			inRuns += cur
		}
		cur = 1
	}
	return float64(inRuns) / float64(len(vals))
}

// take refills and takes one token; it returns when one will be there if none is.
func (bk *bucket) take(now time.Time, rate, burst float64) time.Time {
	if bk.last.IsZero() {
		bk.tokens, bk.last = burst, now
	}
	bk.tokens = math.Min(burst, bk.tokens+now.Sub(bk.last).Seconds()*rate)
	bk.last = now
	// Refills in steps of 1/rate seconds leave float error (0.333… × 3 is
	// 0.999…): a token short by less than tokenSlack is a whole one. Without
	// the slack the wait rounded to 0 ns, the caller saw "not later than now"
	// and sent without taking a token (found by TestPairRateProperty).
	if bk.tokens >= 1-tokenSlack {
		bk.tokens = math.Max(0, bk.tokens-1)
		return time.Time{}
	}
	wait := time.Duration(math.Ceil((1 - bk.tokens) / rate * float64(time.Second)))
	return now.Add(max(wait, time.Nanosecond))
}

const tokenSlack = 1e-9

// PauseRecheck is how long a message of a paused business (admin pause, or
// quality low) waits on disk before dispatch looks at its business again
// (Shape's answer while paused). A held recipient costs one lease per
// PauseRecheck; after a resume its messages go within this time.
const PauseRecheck = 30 * time.Second

// qualityEvery bounds how often dispatch re-rates a phone number's quality
// (Shape runs per message; a rating sums a week of hourly buckets).
const qualityEvery = 5 * time.Second

// Shape implements engine.Shaper: a paused business holds everything (its
// messages wait on disk, their TTL still counting), then throughput per
// phone number, then pair rate.
func (l *Limiter) Shape(pn, recipient string, now time.Time) time.Time {
	b, err := l.opts.Tenants.ByPhoneNumberID(pn)
	if err != nil {
		return time.Time{}
	}
	if b.Paused || l.restricted(pn, now) {
		return now.Add(PauseRecheck)
	}
	// Pair rate first (it reserves nothing from the phone's throughput when it defers).
	pair := l.pairKey(b.ID, recipient)
	l.pairMu.Lock()
	pb, ok := l.pairs.Get(pair)
	if !ok {
		pb = &bucket{}
		l.pairs.Add(pair, pb)
	}
	snapshot := *pb
	at := pb.take(now, 1/l.pol.PairInterval.Seconds(), l.pol.PairBurst)
	l.pairMu.Unlock()
	if !at.IsZero() {
		return at
	}
	rate := float64(b.MPS)
	l.mu.Lock()
	tb, ok := l.buckets[pn]
	if !ok {
		tb = &bucket{}
		l.buckets[pn] = tb
	}
	at = tb.take(now, rate, math.Max(1, rate/10))
	l.mu.Unlock()
	if !at.IsZero() {
		// Give the pair token back: the message did not go.
		l.pairMu.Lock()
		*pb = snapshot
		l.pairMu.Unlock()
	}
	return at
}

// Release implements engine.Shaper: the message Shape let go did not go, so
// its pair-rate and throughput tokens are given back.
func (l *Limiter) Release(pn, recipient string, now time.Time) {
	b, err := l.opts.Tenants.ByPhoneNumberID(pn)
	if err != nil {
		return
	}
	pair := l.pairKey(b.ID, recipient)
	l.pairMu.Lock()
	if pb, ok := l.pairs.Get(pair); ok {
		pb.give(l.pol.PairBurst)
	}
	l.pairMu.Unlock()
	rate := float64(b.MPS)
	l.mu.Lock()
	if tb, ok := l.buckets[pn]; ok {
		tb.give(math.Max(1, rate/10))
	}
	l.mu.Unlock()
}

// give returns one token, never above burst.
func (bk *bucket) give(burst float64) {
	bk.tokens = math.Min(burst, bk.tokens+1)
}

func (l *Limiter) pairKey(biz, recipient string) [16]byte {
	return l.opts.Sealer.Lookup("pair:" + biz + ":" + recipient)
}

// restricted reports whether pn's quality is low (its business is then
// paused for dispatch as for admission), re-rated at most every qualityEvery.
func (l *Limiter) restricted(pn string, now time.Time) bool {
	l.mu.Lock()
	r, ok := l.rated[pn]
	l.mu.Unlock()
	if ok && now.Sub(r.at) < qualityEvery && !now.Before(r.at) {
		return r.low
	}
	low := l.quality(pn, now).Quality == "low"
	l.mu.Lock()
	l.rated[pn] = rating{at: now, low: low}
	l.mu.Unlock()
	return low
}

type rating struct {
	at  time.Time
	low bool
}

func (l *Limiter) String() string { return fmt.Sprintf("ratelimit(%d businesses)", len(l.biz)) }
