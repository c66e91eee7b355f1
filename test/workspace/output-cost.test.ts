// What draining a workspace's output costs the daemon (December 2026 review, item 7): a workload held to a
// tenth of a core that spams one-byte writes must not make the daemon burn a core. Compared as CPU times
// over the same window (the daemon's utime+stime against the workspace cgroup's usage), never wall clock.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { startDaemon, type Daemon } from '../helpers/daemon';

const CPU_ROOT = '/sys/fs/cgroup';
const TICKS_PER_SECOND = 100; // USER_HZ, what /proc/<pid>/stat counts in on Linux
// Generous: before the fix the daemon spent about ten times the workload's CPU; paced it spends a few percent.
const MAX_DAEMON_PER_WORKLOAD = 1;

/** utime + stime of the daemon (all its threads), in ms. */
function daemonCpuMs(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields from 3 on
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_SECOND;
}

/** CPU time of everything in the workspace's cgroup, in ms (cgroup v1 cpuacct, or v2 cpu.stat). */
function workspaceCpuMs(d: Daemon, id: string): number {
  const v1 = path.join(CPU_ROOT, 'cpuacct', d.cgroupParent, id, 'cpuacct.usage');
  if (fs.existsSync(v1)) return Number(fs.readFileSync(v1, 'utf8')) / 1e6;
  for (const root of [CPU_ROOT, path.join(CPU_ROOT, 'unified')]) {
    const stat = path.join(root, d.cgroupParent, id, 'cpu.stat');
    if (!fs.existsSync(stat)) continue;
    const m = /^usage_usec (\d+)$/m.exec(fs.readFileSync(stat, 'utf8'));
    if (m) return Number(m[1]) / 1000;
  }
  throw new Error(`no CPU accounting found for workspace ${id}`);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

t.test('a workload spamming one-byte writes costs the daemon less CPU than it gets itself', async (t) => {
  const d = await startDaemon(t);
  const daemonPid = d.process.pid!;
  const w = await d.start({
    id: 'spammer',
    ownerId: 'alice',
    image: 'builtin:busybox',
    // dd with bs=1: one read and one one-byte write per byte, about the cheapest write loop there is.
    command: ['/bin/dd', 'if=/dev/zero', 'bs=1'],
    resources: { memoryBytes: 64 << 20, cpuMillis: 100, pids: 16 },
  });
  t.equal(w.state, 'WORKSPACE_STATE_RUNNING', w.message);
  await sleep(1500); // past start-up: the window sees only the spam
  const daemon0 = daemonCpuMs(daemonPid);
  const workload0 = workspaceCpuMs(d, 'spammer');
  // At least 5 s, and until the workload got 300 ms of CPU: a loaded machine may starve it for a while.
  const started = Date.now();
  let daemonMs = 0;
  let workloadMs = 0;
  do {
    await sleep(1000);
    daemonMs = daemonCpuMs(daemonPid) - daemon0;
    workloadMs = workspaceCpuMs(d, 'spammer') - workload0;
  } while (Date.now() - started < 5000 || (workloadMs < 300 && Date.now() - started < 60_000));
  t.comment(`over ${Date.now() - started} ms on ${os.cpus().length} cpus: daemon ${daemonMs.toFixed(0)} ms CPU, workload ${workloadMs.toFixed(0)} ms CPU`);
  t.ok(workloadMs >= 300, 'the workload ran long enough to compare');
  t.ok(daemonMs <= MAX_DAEMON_PER_WORKLOAD * workloadMs, `the daemon's CPU (${daemonMs.toFixed(0)} ms) is at most ${MAX_DAEMON_PER_WORKLOAD}x the workload's (${workloadMs.toFixed(0)} ms)`);
  await d.teardown('spammer');
});
