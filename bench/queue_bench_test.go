package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/heraldhq/herald/bench/baseline"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/seal"
	"github.com/heraldhq/herald/queue"
)

// Enqueuer is anything the enqueue suite can measure.
type Enqueuer interface {
	Enqueue(ctx context.Context, recipients []string, payloads [][]byte) error
}

type heraldEnqueuer struct {
	q  *queue.Queue
	db *pebble.DB
}

func (h heraldEnqueuer) store() *pebble.DB { return h.db }
func (r *rawPebble) store() *pebble.DB     { return r.db }

// storeWork is what e's Pebble store has done so far in the background
// (ok false for implementations without one): the deterministic side of the
// throughput figure, comparable across runs on a noisy machine.
type storeWork struct {
	flushed, compacted uint64 // table bytes written by flushes, by finished compactions
	compactions, moves int64  // compactions started (a move rewrites nothing)
}

func storeBytes(e Enqueuer) (w storeWork, ok bool) {
	s, ok := e.(interface{ store() *pebble.DB })
	if !ok {
		return w, false
	}
	m := s.store().Metrics()
	for _, l := range m.Levels {
		w.flushed += l.TableBytesFlushed
		w.compacted += l.TableBytesCompacted
	}
	w.compactions, w.moves = m.Compact.Count+m.Compact.NumInProgress, m.Compact.MoveCount
	return w, true
}

func (h heraldEnqueuer) Enqueue(ctx context.Context, rcpts []string, payloads [][]byte) error {
	exp := time.Now().Add(time.Hour)
	msgs := make([]queue.Message, len(rcpts))
	for i := range rcpts {
		msgs[i] = queue.Message{ID: "01HXXXXXXXXXXXXXXXXXXXXXXX", Recipient: rcpts[i], Payload: payloads[i], ExpiresAt: exp, Owner: benchOwner}
	}
	return h.q.Enqueue(ctx, msgs)
}

// rawPebble writes the same bytes as plain batched Sync commits: no sealing,
// no indexes, no queue logic — the practical ceiling of this disk.
type rawPebble struct {
	db  *pebble.DB
	seq atomic.Uint64
}

func (r *rawPebble) Enqueue(_ context.Context, rcpts []string, payloads [][]byte) error {
	b := r.db.NewBatch()
	for i := range payloads {
		k := binary.BigEndian.AppendUint64([]byte("r"), r.seq.Add(1))
		b.Set(k, payloads[i], nil)
	}
	return b.Commit(pebble.Sync)
}

const payloadSize = 256

func payloads(n int) ([]string, [][]byte) {
	r := make([]string, n)
	p := make([][]byte, n)
	for i := range p {
		r[i] = fmt.Sprintf("1555%07d", i)
		buf := make([]byte, payloadSize)
		for j := range buf {
			buf[j] = byte('a' + (i+j)%26)
		}
		p[i] = buf
	}
	return r, p
}

func openAll(b *testing.B) (map[string]Enqueuer, func()) {
	dir := b.TempDir()
	sealer, _ := seal.New(seal.TestKey(1))
	db, err := kv.Open(kv.Options{Dir: dir + "/herald"})
	if err != nil {
		b.Fatal(err)
	}
	q, err := queue.Open(queue.Options{DB: db, Sealer: sealer})
	if err != nil {
		b.Fatal(err)
	}
	raw, err := pebble.Open(dir+"/raw", &pebble.Options{Logger: quietPebble{}})
	if err != nil {
		b.Fatal(err)
	}
	naive, err := pebble.Open(dir+"/naive", &pebble.Options{Logger: quietPebble{}})
	if err != nil {
		b.Fatal(err)
	}
	// raw-kv: the raw writer on Herald's own Pebble options (memtable, L0
	// thresholds, no WAL recycling), to separate the queue's cost from the
	// store's configuration.
	rawKV, err := kv.Open(kv.Options{Dir: dir + "/rawkv"})
	if err != nil {
		b.Fatal(err)
	}
	return map[string]Enqueuer{
			"herald":     heraldEnqueuer{q, db.DB},
			"raw-pebble": &rawPebble{db: raw},
			"raw-kv":     &rawPebble{db: rawKV.DB},
			"naive":      &baseline.NaiveQueue{DB: naive, Sealer: sealer},
		}, func() {
			q.Close()
			db.Close()
			raw.Close()
			rawKV.Close()
			naive.Close()
		}
}

// BenchmarkEnqueue: producers × batch, Herald vs raw Pebble vs naive, fsync on,
// sealing on (Herald, naive). Reports msgs/s; compare impl= rows with benchstat.
func BenchmarkEnqueue(b *testing.B) {
	for _, producers := range []int{1, 8, 64} {
		for _, batch := range []int{1, 256} {
			for _, impl := range []string{"herald", "raw-pebble", "raw-kv", "naive"} {
				if impl == "naive" && batch == 256 && producers == 64 || impl == "raw-kv" && batch == 1 {
					continue // minutes of fsyncs, no new information
				}
				b.Run(fmt.Sprintf("producers=%d/batch=%d/impl=%s", producers, batch, impl), func(b *testing.B) {
					impls, closeAll := openAll(b)
					defer closeAll()
					e := impls[impl]
					rc, pl := payloads(batch * producers)
					warm(b, e, batch)
					w0, lsm := storeBytes(e)
					var done atomic.Int64
					b.ResetTimer()
					var wg sync.WaitGroup
					per := (b.N + producers - 1) / producers
					for p := 0; p < producers; p++ {
						wg.Add(1)
						go func(p int) {
							defer wg.Done()
							for i := 0; i < per; i += batch {
								n := min(batch, per-i)
								if err := e.Enqueue(context.Background(), rc[p*batch:p*batch+n], pl[p*batch:p*batch+n]); err != nil {
									b.Error(err)
									return
								}
								done.Add(int64(n))
							}
						}(p)
					}
					wg.Wait()
					b.ReportMetric(float64(done.Load())/b.Elapsed().Seconds(), "msgs/s")
					if w, _ := storeBytes(e); lsm {
						// Background work that landed in the timed part.
						n := float64(done.Load())
						b.ReportMetric(float64(w.flushed-w0.flushed)/n, "flushed_B/msg")
						b.ReportMetric(float64(w.compacted-w0.compacted)/n, "compacted_B/msg")
						b.ReportMetric(float64(w.compactions-w0.compactions-(w.moves-w0.moves)), "rewrites")
					}
				})
			}
		}
	}
}

// warm runs HERALD_BENCH_WARMUP messages (default 0) through e before the
// timer starts: the store's memtables reach full size and are recycled, so the
// timed part measures the steady state, not first-touch page faults.
func warm(b *testing.B, e Enqueuer, batch int) {
	n, _ := strconv.Atoi(os.Getenv("HERALD_BENCH_WARMUP"))
	rc, pl := payloads(batch)
	for i := 0; i < n; i += batch {
		if err := e.Enqueue(context.Background(), rc, pl); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLeaseAck: lease groups from every shard and ack them (NoSync acks,
// as the engine does); the queue is pre-filled outside the timer.
func BenchmarkLeaseAck(b *testing.B) {
	for _, per := range []int{1, 16} {
		b.Run(fmt.Sprintf("per_recipient=%d", per), func(b *testing.B) {
			dir := b.TempDir()
			sealer, _ := seal.New(seal.TestKey(1))
			db, _ := kv.Open(kv.Options{Dir: dir})
			defer db.Close()
			q, _ := queue.Open(queue.Options{DB: db, Sealer: sealer})
			exp := time.Now().Add(time.Hour)
			n := b.N
			var msgs []queue.Message
			for i := 0; i < n; i++ {
				msgs = append(msgs, queue.Message{ID: "01H", Recipient: fmt.Sprintf("1555%07d", i/per), Payload: make([]byte, payloadSize), ExpiresAt: exp, Owner: benchOwner})
				if len(msgs) == 4096 {
					q.Enqueue(context.Background(), msgs)
					msgs = msgs[:0]
				}
			}
			q.Enqueue(context.Background(), msgs)
			b.ResetTimer()
			acked := 0
			var wg sync.WaitGroup
			var mu sync.Mutex
			for s := 0; s < q.Shards(); s++ {
				wg.Add(1)
				go func(s int) {
					defer wg.Done()
					for {
						ls, err := q.Lease(context.Background(), s, 256, per)
						if err != nil || len(ls) == 0 {
							return
						}
						for _, l := range ls {
							outs := make([]queue.Outcome, len(l.Messages))
							for i, m := range l.Messages {
								outs[i] = queue.Outcome{Seq: m.Seq, Ack: true}
							}
							q.Complete(context.Background(), l, outs, nil, false)
							mu.Lock()
							acked += len(l.Messages)
							mu.Unlock()
						}
					}
				}(s)
			}
			wg.Wait()
			if acked != n {
				b.Fatalf("acked %d of %d", acked, n)
			}
			b.ReportMetric(float64(acked)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkMixed: 8 producers (batches of 256) and a consumer per shard at once.
func BenchmarkMixed(b *testing.B) {
	dir := b.TempDir()
	sealer, _ := seal.New(seal.TestKey(1))
	db, _ := kv.Open(kv.Options{Dir: dir})
	defer db.Close()
	q, _ := queue.Open(queue.Options{DB: db, Sealer: sealer})
	rc, pl := payloads(256 * 8)
	var produced, acked atomic.Int64
	stop := make(chan struct{})
	b.ResetTimer()
	var cons sync.WaitGroup
	for s := 0; s < q.Shards(); s++ {
		cons.Add(1)
		go func(s int) {
			defer cons.Done()
			for {
				ls, _ := q.Lease(context.Background(), s, 256, 16)
				if len(ls) == 0 {
					select {
					case <-stop:
						if n, _ := q.Depth(); n == 0 {
							return
						}
					default:
					}
					time.Sleep(time.Millisecond)
					continue
				}
				for _, l := range ls {
					outs := make([]queue.Outcome, len(l.Messages))
					for i, m := range l.Messages {
						outs[i] = queue.Outcome{Seq: m.Seq, Ack: true}
					}
					q.Complete(context.Background(), l, outs, nil, false)
					acked.Add(int64(len(l.Messages)))
				}
			}
		}(s)
	}
	var prod sync.WaitGroup
	e := heraldEnqueuer{q: q}
	for p := 0; p < 8; p++ {
		prod.Add(1)
		go func(p int) {
			defer prod.Done()
			for produced.Load() < int64(b.N) {
				e.Enqueue(context.Background(), rc[p*256:(p+1)*256], pl[p*256:(p+1)*256])
				produced.Add(256)
			}
		}(p)
	}
	prod.Wait()
	close(stop)
	cons.Wait()
	b.ReportMetric(float64(acked.Load())/b.Elapsed().Seconds(), "msgs/s")
}

type quietPebble struct{}

func (quietPebble) Infof(string, ...any)           {}
func (quietPebble) Errorf(string, ...any)          {}
func (quietPebble) Fatalf(format string, a ...any) { panic(fmt.Sprintf(format, a...)) }

// benchOwner is the business the benchmark's messages count against, as the
// API's do (the owner is part of every record since s13).
const benchOwner = "biz_0123456789abcdef"
