// Workspace churn against one daemon: cycles of start, stop and teardown, several in flight at once,
// in the ways workspaces really end (asked to stop, torn down while running, exiting by themselves,
// ignoring SIGTERM, failing to start). Used by bench/soak (1,000+ cycles) and test/ops/churn (~100).
import fs from 'node:fs';
import path from 'node:path';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';
import type { BenchDaemon } from '../lib/launcher';
import { leaksSince, snapshotHost, type Leaks } from '../lib/leaks';

export interface ChurnOptions {
  cycles: number;
  parallel: number;
  rssMarkAfter?: number;                  // record the daemon's RSS once this many cycles are done (default 100)
  onProgress?: (done: number, elapsedMs: number) => void;
}

export interface ChurnResult {
  cycles: number;
  seconds: number;
  errors: string[];                       // unexpected outcomes, one line each
  rssAtMark: number | undefined;          // bytes, after rssMarkAfter cycles
  rssEnd: number;                         // bytes, after the run and its settling
  fdBaseline: number;
  fdEnd: number;
  remainingRecords: string[];             // ListWorkspaces after the run (should be empty)
  leaks: Leaks;
}

const WARMUP_BASE = 1_000_000;
const resources = { memoryBytes: 64 << 20, cpuMillis: 250, pids: 32 };
const request = (id: string, command: string[]): StartWorkspaceRequest => ({ id, ownerId: 'churn', image: 'builtin:busybox', command, resources });

const sh = (script: string): string[] => ['/bin/sh', '-c', script];

async function waitForFile(file: string, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!fs.existsSync(file)) {
    if (Date.now() > end) throw new Error(`${file} did not appear within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function waitStopped(d: BenchDaemon, id: string, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const w = await d.get(id);
    if (w.state === 'WORKSPACE_STATE_STOPPED' || w.state === 'WORKSPACE_STATE_FAILED') return;
    if (Date.now() > end) throw new Error(`${id} still ${w.state} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** One cycle; its kind follows from its index so every run mixes them the same way. */
async function cycle(d: BenchDaemon, i: number): Promise<void> {
  const id = `churn-${i}`;
  switch (i % 5) {
    case 0: // asked to stop, then torn down
      await d.start(request(id, sh('exec sleep 600')));
      await d.stop(id, 2000);
      break;
    case 1: // torn down while running
      await d.start(request(id, sh('exec sleep 600')));
      break;
    case 2: // exits by itself
      await d.start(request(id, sh('exit 0')));
      await waitStopped(d, id);
      break;
    case 3: {
      // ignores SIGTERM: the grace period ends in SIGKILL. Stop only once the trap is set (the
      // marker), or the shell may die of the SIGTERM before it gets to ignore it.
      await d.start(request(id, sh('trap "" TERM; touch /workspace/ready; while true; do sleep 1; done')));
      await waitForFile(path.join(d.stateDir, 'workspaces', id, 'content', 'ready'));
      const w = await d.stop(id, 100);
      if (w.signal !== 'SIGKILL') throw new Error(`${id}: expected SIGKILL after the grace period, got "${w.signal}"`);
      break;
    }
    default: {
      // fails to start: everything it took must be given back
      const failed = await d.start(request(id, ['/no/such/program'])).then(() => false, () => true);
      if (!failed) throw new Error(`${id}: a missing program started`);
      break;
    }
  }
  const res = await d.teardown(id);
  if (!res.existed) throw new Error(`${id}: teardown found nothing to tear down`);
}

export async function runChurn(d: BenchDaemon, opts: ChurnOptions): Promise<ChurnResult> {
  const scope = { dir: d.dir, stateDir: d.stateDir, cgroupParent: d.cgroupParent, daemonPid: d.pid, netns: d.netns };
  const before = snapshotHost(scope);
  const errors: string[] = [];
  const attempt = async (i: number): Promise<void> => {
    try {
      await cycle(d, i);
    } catch (err) {
      errors.push(`cycle ${i}: ${(err as Error).message}`);
      await d.teardown(`churn-${i}`).catch(() => undefined);
    }
  };
  // One cycle of each kind first: images, profiles and the store open what they keep open for good.
  for (let i = 0; i < 5; i++) await attempt(WARMUP_BASE + i);
  await d.list();
  const fdBaseline = d.fdCount();

  const markAfter = opts.rssMarkAfter ?? 100;
  let rssAtMark: number | undefined;
  let next = 0;
  let done = 0;
  const began = Date.now();
  const worker = async (): Promise<void> => {
    while (next < opts.cycles) {
      await attempt(next++);
      done++;
      if (done === markAfter) rssAtMark = d.rssBytes();
      opts.onProgress?.(done, Date.now() - began);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, opts.parallel) }, worker));
  const seconds = (Date.now() - began) / 1000;

  // Exit handling and releases finish asynchronously after the last reply; give them a moment.
  await new Promise((r) => setTimeout(r, 1000));
  const remainingRecords = (await d.list()).map((w) => `${w.id} ${w.state}`);
  const fdEnd = d.fdCount();
  const rssEnd = d.rssBytes();
  const ids = [...Array.from({ length: opts.cycles }, (_, i) => `churn-${i}`), ...[0, 1, 2, 3, 4].map((i) => `churn-${WARMUP_BASE + i}`)];
  const leaks = leaksSince(before, snapshotHost(scope), { workspaceIds: ids, privateNetns: true });
  return { cycles: done, seconds, errors, rssAtMark, rssEnd, fdBaseline, fdEnd, remainingRecords, leaks };
}
