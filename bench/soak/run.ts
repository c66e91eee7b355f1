// Soak: N cycles (default 1,000) of start, stop and teardown against one real daemon, several in
// flight at once, then a look at the machine: no mount, cgroup, network namespace, link, nftables
// element, process, uid claim, state row or directory left; the daemon's fds back to their baseline;
// its resident memory within 10% of its value after the first 100 cycles. Not a test (bench/soak/run.sh).
//   --cycles N (TETRIX_SOAK_CYCLES)   --parallel P (TETRIX_SOAK_PARALLEL, default 4)   --keep (keep the temp dir)
//   --storage: every workspace on an encrypted volume (storageBackend ext4-fscrypt); loop devices and volume
//   images are then among what must not be left
import fs from 'node:fs';
import { mountsUnder } from '../../src/sandbox/rootfs';
import { loopsUnder } from '../../src/storage/loops';
import { launchDaemon } from '../lib/launcher';
import { describeLeaks } from '../lib/leaks';
import { runChurn } from './churn';

const MiB = 1 << 20;
const FD_SLACK = 4;
const RSS_TOLERANCE = 0.1;

function option(flag: string, envName: string, fallback: number): number {
  const at = process.argv.indexOf(flag);
  const raw = at >= 0 ? process.argv[at + 1] : process.env[envName];
  const n = raw === undefined || raw === '' ? fallback : Number(raw);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${flag}: expected a positive integer, got "${raw}"`);
  return n;
}

async function main(): Promise<number> {
  const cycles = option('--cycles', 'TETRIX_SOAK_CYCLES', 1000);
  const parallel = option('--parallel', 'TETRIX_SOAK_PARALLEL', 4);
  const keep = process.argv.includes('--keep');
  const storage = process.argv.includes('--storage');
  const storageArgs = ['--storage-backend', 'ext4-fscrypt', '--default-disk-bytes', String(64 * MiB), '--storage-pool-size', '4'];
  const d = await launchDaemon({ prefix: 'tetrix-soak', ...(storage ? { extraArgs: storageArgs } : {}) });
  console.log(`soak: daemon pid ${d.pid}, state ${d.stateDir}, ${cycles} cycles, ${parallel} in flight${storage ? ', encrypted volumes' : ''}`);
  let failed = true;
  try {
    const r = await runChurn(d, {
      cycles,
      parallel,
      onProgress: (done, ms) => {
        if (done % 100 === 0) console.log(`  ${done} cycles, ${(ms / 1000).toFixed(1)} s, ${(done / (ms / 1000)).toFixed(1)}/s, rss ${(d.rssBytes() / MiB).toFixed(1)} MiB, fds ${d.fdCount()}`);
      },
    });
    const problems: string[] = [];
    if (r.errors.length) problems.push(`${r.errors.length} cycles failed: ${r.errors.slice(0, 5).join('; ')}`);
    if (r.remainingRecords.length) problems.push(`records remain: ${r.remainingRecords.slice(0, 5).join(', ')}`);
    if (Math.abs(r.fdEnd - r.fdBaseline) > FD_SLACK) problems.push(`daemon fds ${r.fdBaseline} -> ${r.fdEnd}`);
    const leakText = describeLeaks(r.leaks);
    if (leakText !== 'none') problems.push(`left on the machine: ${leakText}`);
    let rssText = 'n/a (fewer than 100 cycles)';
    if (r.rssAtMark !== undefined) {
      const growth = (r.rssEnd - r.rssAtMark) / r.rssAtMark;
      rssText = `${(r.rssAtMark / MiB).toFixed(1)} -> ${(r.rssEnd / MiB).toFixed(1)} MiB (${growth >= 0 ? '+' : ''}${(growth * 100).toFixed(1)}%)`;
      if (growth > RSS_TOLERANCE) problems.push(`rss grew ${(growth * 100).toFixed(1)}% after the first 100 cycles`);
    }
    for (const p of problems) console.log(`  PROBLEM: ${p}`);
    failed = problems.length > 0;
    console.log(
      `soak: ${r.cycles} cycles in ${r.seconds.toFixed(1)} s (${(r.cycles / r.seconds).toFixed(1)}/s, ${parallel} in flight), ` +
        `rss after 100 cycles ${rssText}, fds ${r.fdBaseline} -> ${r.fdEnd}, leaks: ${leakText}, ${failed ? 'FAILED' : 'ok'}`,
    );
  } finally {
    await d.shutdown({ keep: true });
    // After the daemon: its pool's volumes too must be gone (it unmounts them at shutdown).
    const after = [...mountsUnder(d.dir), ...loopsUnder(d.dir).map((l) => `loop${l.minor} ${l.backingFile}`)];
    console.log(`soak: after the daemon's shutdown: ${after.length ? `PROBLEM: left ${after.join(', ')}` : 'no mount or loop device left'}`);
    failed ||= after.length > 0;
    if (!(keep || failed)) fs.rmSync(d.dir, { recursive: true, force: true });
    if (keep || failed) console.log(`soak: kept ${d.dir} (daemon log: ${d.logFile})`);
  }
  return failed ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(`soak: ${(err as Error).stack ?? String(err)}`);
    process.exit(2);
  },
);
