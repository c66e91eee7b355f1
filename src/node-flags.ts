// How the daemon's Node process is started: the V8 heap and glibc allocator settings that keep its
// resident memory flat under churn. bench/soak chose them (docs/operations.md): by default the young
// generation grows to 3 x 16 MiB under load and old-space garbage piles up to ~4x the live heap before a
// full collection, so RSS climbed 30-40% over 1,000 start/stop cycles with no live growth at all.
// deploy/tetrixd.service and package.json's start script carry the same values (test/ops/systemd.test.ts
// checks they agree); tests and benchmarks start their daemons with these.

/** Node/V8 flags, before the script. */
export const DAEMON_NODE_FLAGS: readonly string[] = [
  '--max-semi-space-size=4', // young generation: at most 4 MiB per semi-space
  '--heap-growing-percent=20', // a full GC once old space is 20% over the last live size
];

/** Environment for the daemon. */
export const DAEMON_ENV: Readonly<Record<string, string>> = {
  MALLOC_ARENA_MAX: '2', // libuv's worker threads would each grow a malloc arena of their own
  // A spawn holds a worker for its whole child setup (~5 ms), and four run at once: with libuv's default
  // of four workers every file operation (logs, backups, state) would queue behind them.
  UV_THREADPOOL_SIZE: '16',
};
