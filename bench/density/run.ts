// Density: start N idle workspaces (default 200, builtin:busybox running `sleep 3600`) at once against
// one real daemon; report the time until all are RUNNING, the start rate, the daemon's resident memory
// in total and per workspace, and the latency of ListWorkspaces and GetWorkspace sampled while the
// starts run, while the workspaces idle and while all of them are torn down at once (from a separate
// process, as an operator's tool would call). Then check nothing is left.
// Targets (issue): all 200 RUNNING within 10 s, daemon under 150 MiB, every call within 50 ms.
// Not a test: bench/density/run.sh [--count N] (TETRIX_DENSITY_COUNT) [--keep].
import { fork } from 'node:child_process';
import path from 'node:path';
import { launchDaemon, type BenchDaemon } from '../lib/launcher';
import type { Samples } from './sampler';
import { describeLeaks, leaksSince, snapshotHost } from '../lib/leaks';

const MiB = 1 << 20;
const IDLE_SAMPLING_MS = 5000;

function option(flag: string, envName: string, fallback: number): number {
  const at = process.argv.indexOf(flag);
  const raw = at >= 0 ? process.argv[at + 1] : process.env[envName];
  const n = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${flag}: expected a positive integer, got "${raw}"`);
  return n;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

function summary(name: string, ms: number[]): string {
  const s = [...ms].sort((a, b) => a - b);
  const max = s[s.length - 1];
  // Which call was slowest (1 = the first, sent as the burst began) tells a one-off from a pattern.
  return `${name}: n=${s.length} p50 ${percentile(s, 50).toFixed(1)} ms, p99 ${percentile(s, 99).toFixed(1)} ms, max ${max?.toFixed(1)} ms (call ${ms.indexOf(max) + 1})`;
}

/** Latencies from a separate process (bench/density/sampler.ts) until stop() is called. */
async function sampleLatencies(socketPath: string): Promise<{ stop(): Promise<Samples> }> {
  const child = fork(path.join(__dirname, 'sampler.js'), [socketPath], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const messages: unknown[] = [];
  let wake = (): void => undefined;
  child.on('message', (m) => {
    messages.push(m);
    wake();
  });
  const next = async (): Promise<unknown> => {
    while (messages.length === 0) {
      if (child.exitCode !== null) throw new Error(`density: the sampler exited with ${child.exitCode}`);
      await new Promise<void>((r) => {
        wake = r;
        child.once('exit', () => r());
      });
    }
    return messages.shift();
  };
  await next(); // 'ready'
  return {
    stop: async () => {
      child.send('stop');
      return (await next()) as Samples;
    },
  };
}

/** All at once, as a control plane draining the node would. */
async function teardownAll(d: BenchDaemon, ids: string[]): Promise<string[]> {
  const results = await Promise.allSettled(ids.map((id) => d.teardown(id)));
  return results.flatMap((r, i) => (r.status === 'rejected' ? [`${ids[i]}: ${(r.reason as Error).message}`] : []));
}

async function main(): Promise<number> {
  const count = option('--count', 'TETRIX_DENSITY_COUNT', 200);
  const keep = process.argv.includes('--keep');
  const d = await launchDaemon({ prefix: 'tetrix-density' });
  const scope = { dir: d.dir, stateDir: d.stateDir, cgroupParent: d.cgroupParent, daemonPid: d.pid, netns: d.netns };
  let failed = true;
  try {
    const before = snapshotHost(scope);
    // builtin:busybox is assembled on first use; that one-time cost is not density.
    await d.start({ id: 'density-warmup', ownerId: 'bench', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'exec sleep 3600'] });
    await d.teardown('density-warmup');
    const rssIdle = d.rssBytes();
    console.log(`density: daemon pid ${d.pid}, rss idle ${(rssIdle / MiB).toFixed(1)} MiB, starting ${count} workspaces at once`);

    const ids = Array.from({ length: count }, (_, i) => `density-${i}`);
    const started: string[] = [];
    const during = await sampleLatencies(d.socketPath);
    const began = Date.now();
    const results = await Promise.allSettled(
      ids.map(async (id) => {
        const w = await d.start({ id, ownerId: 'bench', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'exec sleep 3600'], resources: { memoryBytes: 64 << 20, cpuMillis: 100, pids: 16 } });
        if (w.state !== 'WORKSPACE_STATE_RUNNING') throw new Error(`${id} is ${w.state}: ${w.message}`);
        started.push(id);
      }),
    );
    const seconds = (Date.now() - began) / 1000;
    const busy = await during.stop();
    const startErrors = results.flatMap((r, i) => (r.status === 'rejected' ? [`${ids[i]}: ${(r.reason as Error).message}`] : []));
    const running = (await d.list()).filter((w) => w.state === 'WORKSPACE_STATE_RUNNING').length;
    const rssRunning = d.rssBytes();

    const idleSampler = await sampleLatencies(d.socketPath);
    await new Promise((r) => setTimeout(r, IDLE_SAMPLING_MS));
    const idle = await idleSampler.stop();

    console.log(`  all started in ${seconds.toFixed(2)} s: ${(started.length / seconds).toFixed(1)} starts/s, ${startErrors.length} failed${startErrors.length ? ` (${startErrors.slice(0, 3).join('; ')})` : ''}`);
    console.log(`  daemon rss ${(rssRunning / MiB).toFixed(1)} MiB with ${running} running (${(rssIdle / MiB).toFixed(1)} idle; ${((rssRunning - rssIdle) / Math.max(1, running) / 1024).toFixed(0)} KiB per workspace)`);
    console.log(`  while starting: ${summary('ListWorkspaces', busy.list)}; ${summary('GetWorkspace', busy.get)}`);
    console.log(`  while idle:     ${summary('ListWorkspaces', idle.list)}; ${summary('GetWorkspace', idle.get)}`);

    const tearing = await sampleLatencies(d.socketPath);
    const teardownBegan = Date.now();
    const teardownErrors = await teardownAll(d, ids);
    const teardownSeconds = (Date.now() - teardownBegan) / 1000;
    const duringTeardown = await tearing.stop();
    await new Promise((r) => setTimeout(r, 1000));
    const remaining = await d.list();
    const leaks = leaksSince(before, snapshotHost(scope), { workspaceIds: [...ids, 'density-warmup'], privateNetns: true });
    console.log(`  while tearing down: ${summary('ListWorkspaces', duringTeardown.list)}; ${summary('GetWorkspace', duringTeardown.get)}`);
    console.log(`  teardown of ${count} in ${teardownSeconds.toFixed(2)} s, ${teardownErrors.length} failed, ${remaining.length} records left, leaks: ${describeLeaks(leaks)}`);
    failed = startErrors.length > 0 || teardownErrors.length > 0 || remaining.length > 0 || describeLeaks(leaks) !== 'none';
    console.log(`density: ${running} running in ${seconds.toFixed(2)} s, daemon rss ${(rssRunning / MiB).toFixed(1)} MiB`);
  } finally {
    await d.shutdown({ keep: keep || failed });
    if (keep || failed) console.log(`density: kept ${d.dir} (daemon log: ${d.logFile})`);
  }
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`density: ${(err as Error).stack ?? String(err)}`);
    process.exit(2);
  },
);
