// What draining a workspace's output costs the daemon (src/workspace/adapters/output-drain.ts). For each workload
// and CPU limit: the daemon's CPU time and the workspace cgroup's over the same window, and the bytes the
// log grew by. Prints numbers only; asserts nothing (test/workspace/output-cost.test.ts holds the bound).
import fs from 'node:fs';
import path from 'node:path';
import { launchDaemon, type BenchDaemon } from '../lib/launcher';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const TICKS_PER_SECOND = 100;

const WORKLOADS: Array<{ name: string; command: string[] }> = [
  { name: 'dd bs=1 (one-byte writes)', command: ['/bin/dd', 'if=/dev/zero', 'bs=1'] },
  { name: 'echo loop (line writes)', command: ['/bin/sh', '-c', 'while :; do echo tick tock; done'] },
  { name: 'dd bs=64k (bulk)', command: ['/bin/dd', 'if=/dev/zero', 'bs=65536'] },
];
const CPU_MILLIS = [100, 1000];

function daemonCpuMs(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / TICKS_PER_SECOND;
}

function workspaceCpuMs(d: BenchDaemon, id: string): number {
  const v1 = path.join('/sys/fs/cgroup/cpuacct', d.cgroupParent, id, 'cpuacct.usage');
  if (fs.existsSync(v1)) return Number(fs.readFileSync(v1, 'utf8')) / 1e6;
  for (const root of ['/sys/fs/cgroup', '/sys/fs/cgroup/unified']) {
    const stat = path.join(root, d.cgroupParent, id, 'cpu.stat');
    const m = fs.existsSync(stat) ? /^usage_usec (\d+)$/m.exec(fs.readFileSync(stat, 'utf8')) : null;
    if (m) return Number(m[1]) / 1000;
  }
  return NaN;
}

function logBytes(d: BenchDaemon, id: string): number {
  const dir = path.join(d.stateDir, 'logs');
  return fs.readdirSync(dir).filter((f) => f.startsWith(id)).reduce((n, f) => n + fs.statSync(path.join(dir, f)).size, 0);
}

async function measure(d: BenchDaemon, id: string, command: string[], cpuMillis: number): Promise<string> {
  await d.start({ id, ownerId: 'bench', image: 'builtin:busybox', command, resources: { memoryBytes: 64 << 20, cpuMillis, pids: 16 } });
  await new Promise((r) => setTimeout(r, 1000));
  const [d0, w0, b0, t0] = [daemonCpuMs(d.pid), workspaceCpuMs(d, id), logBytes(d, id), Date.now()];
  await new Promise((r) => setTimeout(r, SECONDS * 1000));
  const [d1, w1, b1, t1] = [daemonCpuMs(d.pid), workspaceCpuMs(d, id), logBytes(d, id), Date.now()];
  await d.teardown(id);
  const secs = (t1 - t0) / 1000;
  const daemonMs = d1 - d0;
  const workloadMs = w1 - w0;
  const mib = (b1 - b0) / (1 << 20);
  return `daemon ${(daemonMs / secs).toFixed(0).padStart(4)} ms/s  workload ${(workloadMs / secs).toFixed(0).padStart(4)} ms/s  ratio ${(daemonMs / workloadMs).toFixed(3)}  log ${(mib / secs).toFixed(2)} MiB/s`;
}

async function main(): Promise<void> {
  const d = await launchDaemon({ prefix: 'tetrix-bench-output', extraArgs: ['--network', 'off'] });
  try {
    let n = 0;
    for (const w of WORKLOADS) {
      for (const cpu of CPU_MILLIS) {
        const line = await measure(d, `out-${n++}`, w.command, cpu);
        console.log(`${w.name.padEnd(28)} cpu ${String(cpu).padStart(4)}m  ${line}`);
      }
    }
  } finally {
    await d.shutdown();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
