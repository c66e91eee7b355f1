// Backup and restore throughput of Tetrix against the shell pipeline
//   tar -c | zstd -1 -T0 | openssl enc -aes-256-ctr -pbkdf2   (and its reverse)
// over one generated workspace-shaped tree, plus the resident memory growth of the process doing a
// Tetrix backup. Not a test: run by hand (bench/backup/run.sh). TETRIX_BENCH_BYTES sets the tree size
// (default 1 GiB); TETRIX_BENCH_ROUNDS (default 2) how many alternating rounds, best of each kept;
// TETRIX_BENCH_KEEP=1 keeps the temp dir. After the quiet rounds the same rounds run again beside
// TETRIX_BENCH_HOGS spinning processes (default one per core; 0 skips them), as on a busy node, and the
// "busy" ratios follow.
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { KeyRing } from '../../src/crypto/keys';
import { BackupStore } from '../../src/content/backups';
import { FsObjectStorage } from '../../src/content/storage-fs';
import { generateTree } from './tree';

const MiB = 1 << 20;

// ------------------------------------------------------------------------------------------------
// Tetrix, in a child process so its memory is measured alone.

interface ChildResult {
  seconds: number;
  rssBefore: number;
  rssPeak: number;
  size?: number;
}

async function childMain(args: string[]): Promise<void> {
  const [op, storeDir, keysDir, dir, backupId] = args;
  const store = new BackupStore({
    storage: new FsObjectStorage({ dir: storeDir }), keyring: KeyRing.open({ dir: keysDir }),
    log: { info() {}, warn() {} },
  });
  global.gc?.();
  const rssBefore = process.memoryUsage.rss();
  let rssPeak = rssBefore;
  const timer = setInterval(() => { rssPeak = Math.max(rssPeak, process.memoryUsage.rss()); }, 20);
  const t0 = process.hrtime.bigint();
  let size: number | undefined;
  if (op === 'backup') {
    const r = await store.backup({ content: dir }, { uidBase: 0, binding: { workspaceId: 'bench', ownerId: 'bench', teamId: '', kind: 'REGULAR' } });
    size = r.size;
    fs.writeFileSync(path.join(storeDir, '..', 'last-backup-id'), r.backupId);
  } else {
    await store.restore(backupId, dir, { uidBase: 0 });
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  clearInterval(timer);
  rssPeak = Math.max(rssPeak, process.memoryUsage.rss());
  const result: ChildResult = { seconds, rssBefore, rssPeak, size };
  process.stdout.write(JSON.stringify(result) + '\n');
}

function runChild(args: string[]): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, __filename, '--child', ...args], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop()!)) : reject(new Error(`child exited ${code}`))));
  });
}

function timeShell(script: string): number {
  const t0 = process.hrtime.bigint();
  execFileSync('bash', ['-o', 'pipefail', '-c', script], { stdio: 'inherit' });
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

/** Waits until the machine has no write-back left, so the next contender does not share the disk with it. */
function settle(): void {
  // sync more than once: on a loop-mounted file system (fresh-fs.sh) a sync turns its dirty pages into dirty
  // pages of the image file on the host, which a later one writes.
  for (let i = 0; i < 30; i++) {
    execFileSync('sync');
    const meminfo = fs.readFileSync('/proc/meminfo', 'utf8');
    const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(meminfo)?.[1] ?? 0);
    if (kib('Dirty') + kib('Writeback') < 8192) return;
  }
}

function duBytes(dir: string): number {
  return Number(execFileSync('du', ['-sb', dir]).toString().split('\t')[0]);
}

interface Measured { pipeBackup: number; pipeRestore: number; pipeSize: number; tb: ChildResult; tr: ChildResult }

/** Alternate the contenders and keep each one's best round: the machine is shared and noisy. */
async function measure(o: { base: string; tree: string; passFile: string; enc: string; storeDir: string; keysDir: string; label: string }): Promise<Measured> {
  const rounds = Number(process.env.TETRIX_BENCH_ROUNDS ?? 2);
  let pipeBackup = Infinity;
  let pipeRestore = Infinity;
  let tb: ChildResult = { seconds: Infinity, rssBefore: 0, rssPeak: 0 };
  let tr: ChildResult = { seconds: Infinity, rssBefore: 0, rssPeak: 0 };
  let pipeSize = 0;
  // Each timed step starts after `sync`, so neither contender pays for write-back of what the one before
  // it left dirty (the pipeline does not fsync; Tetrix does). Restored trees are deleted only at the end:
  // ext4 without a journal (this machine's) skips inodes freed in the last seconds (minutes while their
  // inode table block is dirty) when allocating, so a restore right after a large delete pays for it.
  // Odd rounds run Tetrix first, so neither side always inherits the other's page cache and inode state.
  for (let round = 0; round < rounds; round++) {
    let backupId = '';
    const pipelineBackup = async () => {
      fs.rmSync(o.enc, { force: true });
      settle();
      const s = timeShell(
        `tar -cf - -C '${o.tree}' . | zstd -1 -T0 -q | openssl enc -aes-256-ctr -pbkdf2 -pass file:'${o.passFile}' -out '${o.enc}'`);
      console.log(`${o.label} round ${round}: pipeline backup ${s.toFixed(2)} s`);
      pipeBackup = Math.min(pipeBackup, s);
      pipeSize = fs.statSync(o.enc).size;
    };
    const tetrixBackup = async () => {
      settle();
      const b = await runChild(['backup', o.storeDir, o.keysDir, o.tree]);
      console.log(`${o.label} round ${round}: tetrix backup ${b.seconds.toFixed(2)} s`);
      if (b.seconds < tb.seconds) tb = b;
      backupId = fs.readFileSync(path.join(o.base, 'last-backup-id'), 'utf8');
    };
    const pipelineRestore = async () => {
      const pipeOut = path.join(o.base, `restore-pipeline-${o.label}-${round}`);
      fs.mkdirSync(pipeOut);
      settle();
      const s = timeShell(
        `openssl enc -d -aes-256-ctr -pbkdf2 -pass file:'${o.passFile}' -in '${o.enc}' | zstd -d -q | tar -xf - -C '${pipeOut}'`);
      console.log(`${o.label} round ${round}: pipeline restore ${s.toFixed(2)} s`);
      pipeRestore = Math.min(pipeRestore, s);
    };
    const tetrixRestore = async () => {
      settle();
      const r = await runChild(['restore', o.storeDir, o.keysDir, path.join(o.base, `restore-tetrix-${o.label}-${round}`), backupId]);
      console.log(`${o.label} round ${round}: tetrix restore ${r.seconds.toFixed(2)} s`);
      if (r.seconds < tr.seconds) tr = r;
    };
    const order = round % 2 === 0
      ? [pipelineBackup, tetrixBackup, pipelineRestore, tetrixRestore]
      : [tetrixBackup, pipelineBackup, tetrixRestore, pipelineRestore];
    for (const step of order) await step();
  }

  return { pipeBackup, pipeRestore, pipeSize, tb, tr };
}

function report(m: Measured, treeBytes: number, prefix: string): void {
  const mbps = (s: number) => (treeBytes / MiB / s).toFixed(0);
  console.log('');
  console.log(`                 backup              restore             stored size`);
  console.log(`pipeline   ${m.pipeBackup.toFixed(2).padStart(7)} s ${mbps(m.pipeBackup).padStart(6)} MiB/s  ${m.pipeRestore.toFixed(2).padStart(7)} s ${mbps(m.pipeRestore).padStart(6)} MiB/s  ${(m.pipeSize / MiB).toFixed(0)} MiB`);
  console.log(`tetrix     ${m.tb.seconds.toFixed(2).padStart(7)} s ${mbps(m.tb.seconds).padStart(6)} MiB/s  ${m.tr.seconds.toFixed(2).padStart(7)} s ${mbps(m.tr.seconds).padStart(6)} MiB/s  ${((m.tb.size ?? 0) / MiB).toFixed(0)} MiB`);
  console.log(`${prefix}backup ratio tetrix/pipeline: ${(m.pipeBackup / m.tb.seconds).toFixed(2)}`);
  console.log(`${prefix}restore ratio tetrix/pipeline: ${(m.pipeRestore / m.tr.seconds).toFixed(2)}`);
  console.log(`${prefix}tetrix backup RSS growth: ${((m.tb.rssPeak - m.tb.rssBefore) / MiB).toFixed(1)} MiB (limit 64)`);
  console.log(`${prefix}tetrix restore RSS growth: ${((m.tr.rssPeak - m.tr.rssBefore) / MiB).toFixed(1)} MiB`);
}

/** n spinning shells, ended by their pids (and with this process: they are its children in its group). */
function startCpuHogs(n: number): () => void {
  const hogs = Array.from({ length: n }, () => spawn('sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' }));
  const stop = (): void => { for (const h of hogs) if (h.exitCode === null) h.kill('SIGKILL'); };
  process.once('exit', stop);
  return stop;
}

async function main(): Promise<void> {
  const total = Number(process.env.TETRIX_BENCH_BYTES ?? 1024 * MiB);
  const base = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-bench-backup-${process.pid}-`));
  try {
    const tree = path.join(base, 'tree');
    console.log(`generating a ${(total / MiB).toFixed(0)} MiB tree in ${tree} ...`);
    const { files } = generateTree(tree, total);
    const treeBytes = duBytes(tree);
    console.log(`tree: ${files} files, ${(treeBytes / MiB).toFixed(0)} MiB on disk`);
    // Warm the page cache for both (GNU tar skips reading file data when writing to /dev/null itself).
    execFileSync('bash', ['-c', `tar -cf - -C '${tree}' . | cat > /dev/null`]);

    const passFile = path.join(base, 'pass');
    fs.writeFileSync(passFile, crypto.randomBytes(32).toString('hex'), { mode: 0o600 });
    const enc = path.join(base, 'pipeline.tar.zst.enc');
    const storeDir = path.join(base, 'store');
    const keysDir = path.join(base, 'keys');
    const load = (): string => os.loadavg().map((l) => l.toFixed(1)).join(' ');
    console.log(`without hogs: load average ${load()} at the start (other work on the machine counts against both)`);
    const plain = await measure({ base, tree, passFile, enc, storeDir, keysDir, label: 'plain' });
    report(plain, treeBytes, '');
    const hogs = Number(process.env.TETRIX_BENCH_HOGS ?? os.cpus().length);
    if (hogs > 0) {
      // A busy node: one spinning process per core beside both contenders, at the same priority.
      const stop = startCpuHogs(hogs);
      try {
        const busy = await measure({ base, tree, passFile, enc, storeDir, keysDir, label: 'busy' });
        console.log(`\nbusy: ${hogs} CPU hog(s) beside both contenders, load average ${load()} at the end`);
        report(busy, treeBytes, 'busy ');
      } finally {
        stop();
      }
    }
    console.log(`(best of ${Number(process.env.TETRIX_BENCH_ROUNDS ?? 2)} rounds each; Tetrix also fsyncs the stored object, the pipeline does not)`);
  } finally {
    if (process.env.TETRIX_BENCH_KEEP !== '1') fs.rmSync(base, { recursive: true, force: true });
    else console.log(`kept ${base}`);
  }
}

if (process.argv[2] === '--child') {
  childMain(process.argv.slice(3)).catch((err) => { console.error(err); process.exit(1); });
} else {
  main().catch((err) => { console.error(err); process.exit(1); });
}
