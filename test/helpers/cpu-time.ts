// CPU time, as the kernel counts it, of the daemon and of a workspace's cgroup: what the output-cost tests
// compare (a ratio of CPU times over one window, never wall clock).
import fs from 'node:fs';
import path from 'node:path';
import type { Daemon } from './daemon';

const CPU_ROOT = '/sys/fs/cgroup';
const TICKS_PER_SECOND = 100; // USER_HZ, what /proc/<pid>/stat counts in on Linux

/** utime + stime of a process (all its threads), in ms. */
export function processCpuMs(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields from 3 on
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / TICKS_PER_SECOND;
}

/** CPU time of everything in the workspace's cgroup, in ms (cgroup v1 cpuacct, or v2 cpu.stat). */
export function workspaceCpuMs(d: Daemon, id: string): number {
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

/** The daemon's and the workspace's CPU over at least 5 s, and until the workspace got 300 ms of CPU (a
 *  loaded machine may starve it for a while), after 1.5 s of start-up left out. */
export async function cpuOverWindow(d: Daemon, id: string): Promise<{ daemonMs: number; workloadMs: number; windowMs: number }> {
  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  const pid = d.process.pid!;
  await sleep(1500);
  const daemon0 = processCpuMs(pid);
  const workload0 = workspaceCpuMs(d, id);
  const started = Date.now();
  let daemonMs = 0;
  let workloadMs = 0;
  do {
    await sleep(1000);
    daemonMs = processCpuMs(pid) - daemon0;
    workloadMs = workspaceCpuMs(d, id) - workload0;
  } while (Date.now() - started < 5000 || (workloadMs < 300 && Date.now() - started < 60_000));
  return { daemonMs, workloadMs, windowMs: Date.now() - started };
}
