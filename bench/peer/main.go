// Command peer compares Herald's queue with a real job-queue peer on the same
// workload: River on a real PostgreSQL server (started by bench/peer.sh on
// loopback), fsync on for both. N jobs of a 256-byte payload are inserted in
// batches of 256 by producers while workers consume them (River: a no-op
// worker; Herald: lease + ack); the figure is jobs/s from the first insert
// to the last completion. It is a separate module so Herald's own go.mod does
// not carry River and pgx. Never part of the default test suite.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"

	"github.com/heraldhq/herald/internal/clock"
	"github.com/heraldhq/herald/internal/kv"
	"github.com/heraldhq/herald/internal/seal"
	"github.com/heraldhq/herald/queue"
)

type jobArgs struct {
	To      string `json:"to"`
	Payload string `json:"payload"`
}

func (jobArgs) Kind() string { return "deliver" }

type worker struct {
	river.WorkerDefaults[jobArgs]
	done *atomic.Int64
}

func (w *worker) Work(ctx context.Context, job *river.Job[jobArgs]) error {
	w.done.Add(1)
	return nil
}

const (
	batch     = 256
	producers = 8
)

func payload() string { return strings.Repeat("x", 256) }

func runRiver(ctx context.Context, dsn string, n int) (float64, error) {
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	mig, err := rivermigrate.New(riverpgxv5.New(pool), nil)
	if err != nil {
		return 0, err
	}
	if _, err := mig.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return 0, err
	}
	var done atomic.Int64
	workers := river.NewWorkers()
	river.AddWorker(workers, &worker{done: &done})
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
		Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 100}},
		Workers: workers,
		Logger:  nil,
	})
	if err != nil {
		return 0, err
	}
	if err := client.Start(ctx); err != nil {
		return 0, err
	}
	defer client.Stop(context.Background())
	start := clock.Wall()
	var wg sync.WaitGroup
	errs := make(chan error, producers)
	per := n / producers
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for i := 0; i < per; i += batch {
				var params []river.InsertManyParams
				for j := i; j < i+batch && j < per; j++ {
					params = append(params, river.InsertManyParams{Args: jobArgs{To: fmt.Sprintf("1555%07d", p*per+j), Payload: payload()}})
				}
				if _, err := client.InsertMany(ctx, params); err != nil {
					errs <- err
					return
				}
			}
		}(p)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	total := int64(per * producers)
	for done.Load() < total {
		time.Sleep(5 * time.Millisecond)
	}
	return float64(total) / time.Since(start).Seconds(), nil
}

func runHerald(ctx context.Context, dir string, n int) (float64, error) {
	db, err := kv.Open(kv.Options{Dir: dir})
	if err != nil {
		return 0, err
	}
	defer db.Close()
	sealer, _ := seal.New(seal.TestKey(1))
	q, err := queue.Open(queue.Options{DB: db, Sealer: sealer})
	if err != nil {
		return 0, err
	}
	exp := clock.Wall().Add(time.Hour)
	start := clock.Wall()
	per := n / producers
	total := int64(per * producers)
	var acked atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, producers+q.Shards())
	for p := 0; p < producers; p++ {
		wg.Add(1)
		go func(p int) {
			defer wg.Done()
			for i := 0; i < per; i += batch {
				var msgs []queue.Message
				for j := i; j < i+batch && j < per; j++ {
					b, _ := json.Marshal(jobArgs{To: fmt.Sprintf("1555%07d", p*per+j), Payload: payload()})
					msgs = append(msgs, queue.Message{ID: "job", Recipient: fmt.Sprintf("1555%07d", p*per+j), Payload: b, ExpiresAt: exp})
				}
				if err := q.Enqueue(ctx, msgs); err != nil {
					errs <- err
					return
				}
			}
		}(p)
	}
	var cw sync.WaitGroup
	for s := 0; s < q.Shards(); s++ {
		cw.Add(1)
		go func(s int) {
			defer cw.Done()
			for acked.Load() < total {
				ls, err := q.Lease(ctx, s, 256, 16)
				if err != nil {
					errs <- err
					return
				}
				if len(ls) == 0 {
					time.Sleep(time.Millisecond)
					continue
				}
				for _, l := range ls {
					var outs []queue.Outcome
					for _, m := range l.Messages {
						outs = append(outs, queue.Outcome{Seq: m.Seq, Ack: true})
					}
					if err := q.Complete(ctx, l, outs, nil, true); err != nil {
						errs <- err
						return
					}
					acked.Add(int64(len(outs)))
				}
			}
		}(s)
	}
	wg.Wait()
	cw.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(total) / time.Since(start).Seconds(), nil
}

func main() {
	n := flag.Int("n", 100_000, "jobs")
	dsn := flag.String("pg", os.Getenv("PEER_PG"), "PostgreSQL URL for River")
	dir := flag.String("dir", "", "data directory for Herald's queue (default: a temp dir)")
	flag.Parse()
	ctx := context.Background()
	if *dir == "" {
		d, err := os.MkdirTemp("", "herald-peer")
		if err != nil {
			log.Fatal(err)
		}
		defer os.RemoveAll(d)
		*dir = d
	}
	h, err := runHerald(ctx, *dir, *n)
	if err != nil {
		log.Fatalf("herald: %v", err)
	}
	r, err := runRiver(ctx, *dsn, *n)
	if err != nil {
		log.Fatalf("river: %v", err)
	}
	out, _ := json.Marshal(map[string]any{"jobs": *n, "herald_jobs_per_second": h, "river_jobs_per_second": r, "ratio": h / r,
		"workload": fmt.Sprintf("%d producers x batches of %d, 256-byte payloads, insert + consume + ack, fsync on", producers, batch)})
	fmt.Println(string(out))
}
