// Package bench holds Herald's benchmark suites and the baselines they are
// compared with, in the same run on the same machine:
//
//   - queue_bench_test.go: enqueue (producers × batch), lease+ack, mixed —
//     Herald's queue vs a raw batched Pebble writer (the disk's ceiling) vs
//     the naive queue (one fsync per message). HERALD_BENCH_WARMUP=N writes
//     N untimed messages per row and implementation first (make bench-queue:
//     1M), so the timed part is the steady state, not a fresh process.
//   - e2e_bench_test.go: end to end (queue → encrypt → transmit → decrypt),
//     cold and warm, Herald vs baseline.Naive (net/http client, one worker and
//     one fsync per message, session loaded and stored around every
//     encryption), with the simulator in its own process so each side's CPU
//     time is measured separately. Knobs (environment): HERALD_BENCH_N
//     (recipients, default 5000), HERALD_BENCH_PER_RECIPIENT (messages per
//     recipient, default 1), HERALD_BENCH_WARM_PASSES (warm campaigns to the
//     same recipients, one after another, default 1: a longer warm window
//     for no more cold work), HERALD_BENCH_PROFILE=FILE (engine CPU profile
//     of the warm phase, or of HERALD_BENCH_PROFILE_PHASE=cold),
//     HERALD_BENCH_MEMPROFILE=P (allocations at the end of each phase, in
//     P.cold and P.warm), HERALD_BENCH_SIM_PROFILE=FILE (the simulator
//     process's CPU profile, whole run); engine and client settings, zero
//     or unset for the defaults: HERALD_BENCH_WORKERS,
//     HERALD_BENCH_GROUPS_PER_TASK, HERALD_BENCH_LEASE_RECIPIENTS,
//     HERALD_BENCH_SHARDS, HERALD_BENCH_MAX_BATCH (envelopes per platform
//     request), HERALD_BENCH_LINGER_US (a partial request's wait),
//     HERALD_BENCH_MEMTABLE_MB (Pebble's memtable size). It also reports
//     cold_crypto_fraction: the cold phase's unavoidable crypto at this
//     machine's rates (mean of start of run and after the cold phase) over
//     both processes' CPU time (and cold_crypto_fraction_strict, with key
//     generations at the fixed-base rate), the engine's page faults per message
//     (a first-touch fault costs 11–15 µs on the reference VM), and
//     PHASE_engine_per_sim: the engine's CPU over the simulator's, which moves
//     far less with the machine's speed than either does.
//
// Suites take any implementation of a small interface (Enqueuer, Deliverer),
// so a new implementation is measured by adding one line.
// Figures and the commands that produce them are in BENCHMARKS.md.
package bench
