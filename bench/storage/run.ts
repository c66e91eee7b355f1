// The storage benchmark of issue 19, side by side in one run: two daemons, one giving each workspace an
// encrypted, size-limited volume (storageBackend ext4-fscrypt), one plain directories (none).
//   storage throughput ratio: X       sequential write and small-file creation inside, encrypted / plain
//   storage start overhead: N ms      StartWorkspace median, encrypted volume minus plain
// Not a test: run by hand as root (bench/storage/run.sh). BENCH_RUNS (default 30) starts per daemon.
import fs from 'node:fs';
import path from 'node:path';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';
import { launchDaemon, type BenchDaemon } from '../lib/launcher';

const MiB = 2 ** 20;
const RUNS = Number(process.env.BENCH_RUNS ?? 30);
const SEQ_MIB = Number(process.env.BENCH_SEQ_MIB ?? 256);
const FILES = Number(process.env.BENCH_FILES ?? 5000);
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const request = (id: string, script: string): StartWorkspaceRequest => ({
  id, ownerId: 'bench', image: 'builtin:busybox', command: ['/bin/sh', '-c', script],
  resources: { memoryBytes: 512 * MiB, cpuMillis: 2000, pids: 64 },
});

// /proc/uptime has 10 ms steps: the workloads below take hundreds of ms or more.
const timed = (work: string): string =>
  `t0=$(cut -d' ' -f1 /proc/uptime); ${work}; t1=$(cut -d' ' -f1 /proc/uptime); echo "$t0 $t1" > /workspace/result.tmp; mv /workspace/result.tmp /workspace/result; while true; do sleep 1; done`;

const WORKLOADS = {
  'sequential write + fsync': timed(`dd if=/dev/zero of=/workspace/seq bs=1M count=${SEQ_MIB} conv=fsync 2>/dev/null`),
  'sequential write (page cache)': timed(`dd if=/dev/zero of=/workspace/seq bs=1M count=${SEQ_MIB} 2>/dev/null`),
  'small files + syncfs': timed(`mkdir /workspace/d; i=0; while [ $i -lt ${FILES} ]; do echo hello > /workspace/d/f$i; i=$((i+1)); done; sync -f /workspace/d`),
} as const;

async function secondsOf(d: BenchDaemon, id: string, script: string): Promise<number> {
  await d.start(request(id, script));
  const file = path.join(d.stateDir, 'workspaces', id, 'content', 'result');
  const end = Date.now() + 300_000;
  while (!fs.existsSync(file)) {
    if (Date.now() > end) throw new Error(`${id}: no result`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const [t0, t1] = fs.readFileSync(file, 'utf8').trim().split(' ').map(Number);
  await d.teardown(id);
  return Math.max(t1 - t0, 0.01);
}

async function startMs(d: BenchDaemon, id: string): Promise<number> {
  const t0 = performance.now();
  await d.start({ ...request(id, 'true'), command: ['/bin/true'] });
  const took = performance.now() - t0;
  await d.teardown(id);
  return took;
}

async function main(): Promise<void> {
  const plain = await launchDaemon({ prefix: 'tetrix-bench-plain' });
  const encrypted = await launchDaemon({
    prefix: 'tetrix-bench-storage',
    extraArgs: ['--storage-backend', 'ext4-fscrypt', '--default-disk-bytes', String(2048 * MiB), '--storage-pool-size', '4'],
  });
  try {
    const ratios: number[] = [];
    for (const [name, script] of Object.entries(WORKLOADS)) {
      const e: number[] = [];
      const p: number[] = [];
      for (let i = 0; i < 3; i++) {
        p.push(await secondsOf(plain, `tp-${i}-${name.length}`, script));
        e.push(await secondsOf(encrypted, `te-${i}-${name.length}`, script));
      }
      const ratio = median(p) / median(e);
      if (!name.includes('page cache')) ratios.push(ratio);
      console.log(`${name.padEnd(32)} plain ${median(p).toFixed(2)} s, encrypted+limited ${median(e).toFixed(2)} s, ratio ${ratio.toFixed(2)}`);
    }
    const starts = { plain: [] as number[], encrypted: [] as number[] };
    for (let i = 0; i < RUNS; i++) {
      starts.plain.push(await startMs(plain, `sp-${i}`));
      starts.encrypted.push(await startMs(encrypted, `se-${i}`));
    }
    console.log(`start median: plain ${median(starts.plain).toFixed(1)} ms, encrypted+limited ${median(starts.encrypted).toFixed(1)} ms (${RUNS} each, alternating)`);
    console.log(`storage throughput ratio: ${Math.min(...ratios).toFixed(2)}`);
    console.log(`storage start overhead: ${(median(starts.encrypted) - median(starts.plain)).toFixed(1)} ms`);
  } finally {
    await encrypted.shutdown();
    await plain.shutdown();
  }
}

main().catch((err: unknown) => {
  console.error(`bench/storage: ${(err as Error).stack ?? String(err)}`);
  process.exit(1);
});
