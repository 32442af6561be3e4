// Package bench holds Herald's benchmark suites and the baselines they are
// compared with, in the same run on the same machine:
//
//   - queue_bench_test.go: enqueue (producers × batch), lease+ack, mixed —
//     Herald's queue vs a raw batched Pebble writer (the disk's ceiling) vs
//     the naive queue (one fsync per message).
//   - e2e_bench_test.go: end to end (queue → encrypt → transmit → decrypt),
//     cold and warm, Herald vs baseline.Naive (net/http client, one worker and
//     one fsync per message, session loaded and stored around every
//     encryption), with the simulator in its own process so each side's CPU
//     time is measured separately.
//
// Suites take any implementation of a small interface (Enqueuer, Deliverer),
// so a new implementation is measured by adding one line.
// Figures and the commands that produce them are in BENCHMARKS.md.
package bench
