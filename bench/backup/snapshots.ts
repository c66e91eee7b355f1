// Snapshot backups (src/content/repo/) side by side with restic (Debian's, repository on the same disk,
// its default chunker) over one generated tree: the first backup, an incremental one after a 1% change
// (a 1 MiB insert in the middle of a large file plus 100 small-file edits) with the bytes each stored, and
// a restore of the second snapshot. Ratios above 1 mean Tetrix was faster. Also the RSS growth of the
// process running Tetrix's backup, and the chunker's own speed in C and in TypeScript. Not a test: run by
// hand (bench/backup/snapshots.sh). TETRIX_BENCH_BYTES sets the tree size (default 1 GiB).
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { KeyRing } from '../../src/crypto/keys';
import { SnapshotStore } from '../../src/content/repo/snapshots';
import { DATA_CHUNKS, gearTable, tsChunkerCut } from '../../src/content/repo/chunker';
import { chunker } from '../../src/native';
import { FsObjectStorage } from '../../src/content/storage-fs';
import { generateTree } from './tree';
import { DAEMON_ENV, DAEMON_NODE_FLAGS } from '../../src/node-flags';

const MiB = 1 << 20;
const BINDING = { workspaceId: 'bench', ownerId: 'bench', teamId: '', kind: 'REGULAR' } as const;

interface ChildResult {
  seconds: number; rssBefore: number; rssPeak: number; size?: number; backupId?: string;
  /** The same process had already run a small backup (modules loaded, code compiled), as a daemon has. */
  warm: boolean; heapPeak: number; externalPeak: number;
}

/** A daemon that has served for a while has loaded and compiled the backup code: one small backup does that. */
async function warmUp(keysDir: string, scratch: string): Promise<void> {
  const dir = path.join(scratch, 'tree');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'f'), crypto.randomBytes(3 * MiB));
  const store = new SnapshotStore({ storage: new FsObjectStorage({ dir: path.join(scratch, 'store') }), keyring: KeyRing.open({ dir: keysDir }), log: { info() {}, warn() {} } });
  const r = await store.backup({ content: dir }, { uidBase: 0, binding: { ...BINDING, workspaceId: 'warm-up' } });
  await store.restore(r.backupId, path.join(scratch, 'restored'), { uidBase: 0 });
  fs.rmSync(scratch, { recursive: true, force: true });
}

async function childMain([op, storeDir, keysDir, dir, backupId]: string[]): Promise<void> {
  const warm = process.env.TETRIX_BENCH_WARM === '1';
  if (warm) await warmUp(keysDir, fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-bench-warm-')));
  const store = new SnapshotStore({ storage: new FsObjectStorage({ dir: storeDir }), keyring: KeyRing.open({ dir: keysDir }), log: { info() {}, warn() {} } });
  global.gc?.();
  const rssBefore = process.memoryUsage.rss();
  let [rssPeak, heapPeak, externalPeak] = [rssBefore, 0, 0];
  const timer = setInterval(() => {
    const m = process.memoryUsage();
    [rssPeak, heapPeak, externalPeak] = [Math.max(rssPeak, m.rss), Math.max(heapPeak, m.heapUsed), Math.max(externalPeak, m.external)];
  }, 20);
  const t0 = process.hrtime.bigint();
  const out: ChildResult = { seconds: 0, rssBefore, rssPeak, warm, heapPeak: 0, externalPeak: 0 };
  if (op === 'backup') {
    const r = await store.backup({ content: dir }, { uidBase: 0, binding: BINDING });
    out.size = r.size;
    out.backupId = r.backupId;
  } else await store.restore(backupId, dir, { uidBase: 0 });
  out.seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  clearInterval(timer);
  Object.assign(out, { rssPeak: Math.max(rssPeak, process.memoryUsage.rss()), heapPeak, externalPeak });
  process.stdout.write(JSON.stringify(out) + '\n');
}

function runChild(args: string[], warm = true): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    // Started as the daemon is (src/node-flags.ts): its memory is the daemon's.
    const child = spawn(process.execPath, [...DAEMON_NODE_FLAGS, ...process.execArgv, __filename, '--child', ...args], {
      stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...DAEMON_ENV, TETRIX_BENCH_WARM: warm ? '1' : '0' },
    });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop()!)) : reject(new Error(`child exited ${code}`))));
  });
}

function timed(cmd: string, args: string[], env: NodeJS.ProcessEnv): number {
  const t0 = process.hrtime.bigint();
  execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, ...env } });
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

function settle(): void {
  for (let i = 0; i < 30; i++) {
    execFileSync('sync');
    const meminfo = fs.readFileSync('/proc/meminfo', 'utf8');
    const kib = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(meminfo)?.[1] ?? 0);
    if (kib('Dirty') + kib('Writeback') < 8192) return;
  }
}

const duBytes = (dir: string): number => Number(execFileSync('du', ['-sb', dir]).toString().split('\t')[0]);

/** The 1% change: 1 MiB inserted in the middle of the first large file, and a line appended to 100 small files. */
function changeTree(tree: string): void {
  const big = path.join(tree, 'build', 'artifact0.bin');
  const bytes = fs.readFileSync(big);
  const mid = bytes.length >> 1;
  fs.writeFileSync(big, Buffer.concat([bytes.subarray(0, mid), crypto.randomBytes(MiB), bytes.subarray(mid)]));
  // 100 small files spread over the tree: every .ts file in a sorted walk, 100 picked at even steps.
  const small: string[] = [];
  const collect = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) collect(p);
      else if (e.name.endsWith('.ts')) small.push(p);
    }
  };
  collect(path.join(tree, 'src'));
  const step = Math.max(1, Math.floor(small.length / 100));
  for (let i = 0; i < 100 && i * step < small.length; i++) fs.appendFileSync(small[i * step], `// edited ${i}\n`);
}

/** The chunker alone over 256 MiB of random bytes: native/chunker.c against the same rule in TypeScript. */
function chunkerSpeed(): { c: number; ts: number } {
  const buf = crypto.randomBytes(256 * MiB);
  const gear = gearTable(crypto.randomBytes(32));
  const gear32 = new Uint32Array(256).map((_, i) => gear.readUInt32LE(i * 8));
  const run = (cut: (b: Buffer, len: number) => number): number => {
    const t0 = process.hrtime.bigint();
    for (let off = 0; off < buf.length;) {
      const view = buf.subarray(off);
      const n = Math.abs(cut(view, Math.min(view.length, DATA_CHUNKS.max))) || view.length;
      off += n;
    }
    return (buf.length / MiB) / (Number(process.hrtime.bigint() - t0) / 1e9);
  };
  const s = DATA_CHUNKS;
  const c = run((b, len) => chunker.chunkerCut(gear, b, 0, len, s.min, s.normal, s.max, s.bitsSmall, s.bitsLarge));
  const ts = run((b, len) => tsChunkerCut(gear32, b, len, s));
  return { c, ts };
}

async function main(): Promise<void> {
  const total = Number(process.env.TETRIX_BENCH_BYTES ?? 1024 * MiB);
  const speed = chunkerSpeed();
  console.log(`chunker over random data: C ${speed.c.toFixed(0)} MiB/s, TypeScript ${speed.ts.toFixed(0)} MiB/s`);
  const base = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-bench-snap-${process.pid}-`));
  try {
    const tree = path.join(base, 'tree');
    console.log(`generating a ${(total / MiB).toFixed(0)} MiB tree in ${tree} ...`);
    const { files } = generateTree(tree, total);
    const treeBytes = duBytes(tree);
    console.log(`tree: ${files} files, ${(treeBytes / MiB).toFixed(0)} MiB on disk`);
    execFileSync('bash', ['-c', `tar -cf - -C '${tree}' . | cat > /dev/null`]);

    const repo = path.join(base, 'restic-repo');
    const pass = path.join(base, 'restic-pass');
    fs.writeFileSync(pass, crypto.randomBytes(32).toString('hex'), { mode: 0o600 });
    const renv = { RESTIC_REPOSITORY: repo, RESTIC_PASSWORD_FILE: pass, RESTIC_CACHE_DIR: path.join(base, 'restic-cache') };
    execFileSync('restic', ['init', '--quiet'], { env: { ...process.env, ...renv } });
    const storeDir = path.join(base, 'store');
    const keysDir = path.join(base, 'keys');

    settle();
    const rFirst = timed('restic', ['backup', '--quiet', tree], renv);
    console.log(`restic first backup ${rFirst.toFixed(2)} s`);
    settle();
    const tFirst = await runChild(['backup', storeDir, keysDir, tree]);
    console.log(`tetrix first backup ${tFirst.seconds.toFixed(2)} s`);
    const rRepo1 = duBytes(repo);
    const tStore1 = duBytes(storeDir);

    changeTree(tree);
    settle();
    const tIncr = await runChild(['backup', storeDir, keysDir, tree]);
    console.log(`tetrix incremental backup ${tIncr.seconds.toFixed(2)} s, ${((tIncr.size ?? 0) / MiB).toFixed(2)} MiB stored`);
    settle();
    const rIncr = timed('restic', ['backup', '--quiet', tree], renv);
    const rStored = duBytes(repo) - rRepo1;
    console.log(`restic incremental backup ${rIncr.toFixed(2)} s, ${(rStored / MiB).toFixed(2)} MiB stored`);
    const tStored = duBytes(storeDir) - tStore1;

    const rOut = path.join(base, 'restore-restic');
    settle();
    const rRestore = timed('restic', ['restore', '--quiet', 'latest', '--target', rOut], renv);
    console.log(`restic restore ${rRestore.toFixed(2)} s`);
    settle();
    const tRestore = await runChild(['restore', storeDir, keysDir, path.join(base, 'restore-tetrix'), tIncr.backupId!]);
    console.log(`tetrix restore ${tRestore.seconds.toFixed(2)} s`);

    console.log('');
    console.log(`first backup ratio tetrix/restic: ${(rFirst / tFirst.seconds).toFixed(2)}`);
    console.log(`incremental ratio tetrix/restic: ${(rIncr / tIncr.seconds).toFixed(2)}`);
    console.log(`restore ratio tetrix/restic: ${(rRestore / tRestore.seconds).toFixed(2)}`);
    console.log(`incremental stored: tetrix ${(tStored / MiB).toFixed(2)} MiB (${(100 * tStored / treeBytes).toFixed(2)}% of the tree), restic ${(rStored / MiB).toFixed(2)} MiB`);
    console.log(`first backup stored: tetrix ${(tStore1 / MiB).toFixed(0)} MiB, restic ${(rRepo1 / MiB).toFixed(0)} MiB`);
    // A fresh process also pays for loading and compiling the backup code: the cold line shows that.
    const cold = await runChild(['backup', path.join(base, 'store-cold'), keysDir, tree], false);
    const growth = (r: ChildResult): string => `${((r.rssPeak - r.rssBefore) / MiB).toFixed(1)} MiB`;
    const parts = (r: ChildResult): string => `heap peak ${(r.heapPeak / MiB).toFixed(1)} MiB, external peak ${(r.externalPeak / MiB).toFixed(1)} MiB`;
    console.log(`tetrix backup RSS growth in a fresh process (cold): ${growth(cold)} (${parts(cold)})`);
    console.log(`tetrix restore RSS growth: ${growth(tRestore)} (${parts(tRestore)})`);
    console.log(`tetrix backup RSS growth, warm as a daemon is: first ${growth(tFirst)} (${parts(tFirst)}), incremental ${growth(tIncr)} (${parts(tIncr)}) (limit 64)`);
  } finally {
    if (process.env.TETRIX_BENCH_KEEP !== '1') fs.rmSync(base, { recursive: true, force: true });
    else console.log(`kept ${base}`);
  }
}

if (process.argv[2] === '--child') childMain(process.argv.slice(3)).catch((err) => { console.error(err); process.exit(1); });
else main().catch((err) => { console.error(err); process.exit(1); });
