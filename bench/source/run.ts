// Source benchmark (issue 17), not a test: run by hand (bench/source/run.sh). A generated repository
// (TETRIX_BENCH_FILES files, default 30,000; ~300 MB of history) is served by `git daemon` on the loopback
// of the benchmark daemon's own network namespace. Side by side, in one run:
//   clone ratio tetrix/git:  StartWorkspace with a fresh git checkout, against `git clone` of the same
//                            repository into a plain directory (same namespace, same server)   target <= 1.1
//   prebuild start ratio:    StartWorkspace from a prebuild snapshot + 5 new commits, against the fresh
//                            checkout start, with the snapshot's tree already in the node's cache (warm: a
//                            second workspace from the same prebuild)                          target <= 0.3
//   cold prebuild ratio:     the same for the first start from the prebuild, which unpacks the snapshot
//                            into the cache (docs/source.md, "The prebuild tree cache")
// TETRIX_BENCH_ROUNDS (default 2): alternating rounds, best of each kept. TETRIX_BENCH_KEEP=1 keeps files.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { launchDaemon, runName, type BenchDaemon } from '../lib/launcher';
import { connect, unaryCall } from '../../src/cli/client';
import type { Workspace__Output } from '../../src/generated/tetrix/agent/v1/Workspace';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';

const FILES = Number(process.env.TETRIX_BENCH_FILES ?? 30_000);
const ROUNDS = Number(process.env.TETRIX_BENCH_ROUNDS ?? 2);
const FILE_BYTES = Number(process.env.TETRIX_BENCH_FILE_BYTES ?? 5_000);
const HISTORY_COMMITS = 5;
const GIT_ENV = {
  ...process.env, GIT_CONFIG_NOSYSTEM: '1', GIT_CONFIG_GLOBAL: '/dev/null', HOME: '/nonexistent',
  GIT_AUTHOR_NAME: 'bench', GIT_AUTHOR_EMAIL: 'bench@example.test', GIT_COMMITTER_NAME: 'bench', GIT_COMMITTER_EMAIL: 'bench@example.test',
};

function git(cwd: string, ...args: string[]): string {
  const r = spawnSync('git', args, { cwd, env: GIT_ENV, encoding: 'utf8', maxBuffer: 256 << 20 });
  if (r.status !== 0) throw new Error(`git ${args.join(' ')}: ${r.stderr}`);
  return r.stdout.trim();
}

/** Text-like content (base64 of random bytes): compresses a little, deltas not at all. */
function writeFiles(work: string, from: number, count: number, salt: string): void {
  for (let i = from; i < from + count; i++) {
    const dir = path.join(work, 'src', `m${i % 300}`);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, `f${i}.txt`), `${salt}\n${crypto.randomBytes(Math.floor(FILE_BYTES * 0.75)).toString('base64')}\n`);
  }
}

function generateRepo(root: string): { bare: string; work: string } {
  const work = path.join(root, 'work');
  const bare = path.join(root, 'repo.git');
  fs.mkdirSync(work, { recursive: true });
  git(work, 'init', '-q', '-b', 'main');
  writeFiles(work, 0, FILES, 'base');
  git(work, 'add', '-A');
  git(work, 'commit', '-q', '-m', 'base');
  // History: each commit rewrites a fifth of the files.
  for (let c = 0; c < HISTORY_COMMITS; c++) {
    writeFiles(work, (c * FILES) / 5, FILES / 5, `history ${c}`);
    git(work, 'commit', '-q', '-am', `history ${c}`);
  }
  git(root, 'clone', '-q', '--bare', work, bare);
  git(work, 'remote', 'add', 'origin', bare);
  return { bare, work };
}

async function freePortIn(netns: string): Promise<number> {
  // A port free on the host is as good a guess as any in a fresh namespace, which has no listeners.
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

const seconds = (ms: number): string => (ms / 1000).toFixed(2);
const time = async (fn: () => Promise<unknown>): Promise<number> => {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
};

async function main(): Promise<void> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-bench-source-'));
  let daemon: BenchDaemon | undefined;
  let server: ReturnType<typeof spawn> | undefined;
  try {
    let t0 = performance.now();
    const { bare, work } = generateRepo(root);
    const sizeMb = Number(execFileSync('du', ['-sm', bare]).toString().split('\t')[0]);
    console.log(`repository: ${FILES} files, ${HISTORY_COMMITS + 1} commits, ${sizeMb} MB packed (generated in ${seconds(performance.now() - t0)} s)`);

    const port = await freePortIn('');
    const allowed = `127.0.0.1:${port}`;
    // TETRIX_BENCH_NO_TREE_CACHE=1: the daemon without the prebuild tree cache, every start from the prebuild a
    // restore of its snapshot (prebuild_tree: restored), for the comparison with the cold start.
    const noCache = process.env.TETRIX_BENCH_NO_TREE_CACHE ? ['--prebuild-cache-max-bytes', '0'] : [];
    daemon = await launchDaemon({ prefix: 'tetrix-bench-source', logLevel: 'info', extraArgs: ['--source-allowed-destinations', allowed, '--network', 'off', ...noCache] });
    const ns = daemon.netns;
    // A checkout of this size takes longer than the launcher's 60 s deadline on a busy machine.
    const clients = connect({ socketPath: daemon.socketPath });
    const startSlow = (req: StartWorkspaceRequest): Promise<Workspace__Output> =>
      unaryCall<Workspace__Output>((md, o, cb) => clients.workspaces.StartWorkspace(req, md, o, cb), { deadlineMs: 1_800_000 });
    server = spawn('ip', ['netns', 'exec', ns, 'git', 'daemon', '--reuseaddr', `--base-path=${root}`, '--export-all', '--listen=127.0.0.1', `--port=${port}`, root], { env: GIT_ENV, stdio: 'ignore', detached: true });
    await new Promise((r) => setTimeout(r, 500));
    const url = `git://127.0.0.1:${port}/repo.git`;

    const plainClone = (): Promise<number> => time(async () => {
      const dir = path.join(root, runName('plain'));
      execFileSync('ip', ['netns', 'exec', ns, 'git', 'clone', '-q', url, dir], { env: GIT_ENV, stdio: 'ignore' });
      fs.rmSync(dir, { recursive: true, force: true });
    });
    const workspace = (id: string, content: StartWorkspaceRequest['content'], extra: Partial<StartWorkspaceRequest> = {}): StartWorkspaceRequest => ({
      id, ownerId: 'bench', teamId: 'bench', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'exec sleep 600'], content, ...extra,
    });
    const tetrixClone = async (): Promise<number> => {
      const id = runName('clone');
      const ms = await time(async () => {
        const w = await startSlow(workspace(id, { git: { url, ref: 'main' } }));
        if (w.state !== 'WORKSPACE_STATE_RUNNING') throw new Error(`clone: ${w.state} ${w.message}`);
      });
      await daemon!.teardown(id);
      return ms;
    };

    // The prebuild, then 5 new commits on main.
    t0 = performance.now();
    const pb = runName('prebuild');
    await startSlow(workspace(pb, { git: { url, ref: 'main' } }, { kind: 'WORKSPACE_KIND_PREBUILD', command: [], tasks: [{ name: 'noop', command: ['/bin/true'] }] }));
    let done = await daemon.get(pb);
    while (!['WORKSPACE_STATE_SUCCEEDED', 'WORKSPACE_STATE_FAILED'].includes(done.state)) {
      await new Promise((r) => setTimeout(r, 200));
      done = await daemon.get(pb);
    }
    if (done.state !== 'WORKSPACE_STATE_SUCCEEDED') throw new Error(`prebuild: ${done.message}`);
    console.log(`prebuild + snapshot: ${seconds(performance.now() - t0)} s`);
    for (let c = 0; c < 5; c++) {
      writeFiles(work, c * 10, 10, `new ${c}`);
      git(work, 'commit', '-q', '-am', `new ${c}`);
    }
    git(work, 'push', '-q', 'origin', 'main');
    // Cold: the node holds no tree of the snapshot (the first start unpacks it); warm: a second workspace from
    // the same prebuild. Between rounds the entry is removed by hand (no workspace holds it then) so each
    // round has a cold start.
    const cacheEntry = path.join(daemon.stateDir, 'prebuild-trees', done.snapshotId);
    const fromPrebuild = async (kind: 'cold' | 'warm'): Promise<number> => {
      if (kind === 'cold') fs.rmSync(cacheEntry, { recursive: true, force: true });
      const id = runName(`from-pb-${kind}`);
      let how = '';
      const ms = await time(async () => {
        const w = await startSlow(workspace(id, { prebuild: { snapshotId: done.snapshotId, git: { url, ref: 'main' } } }));
        if (w.state !== 'WORKSPACE_STATE_RUNNING') throw new Error(`from prebuild: ${w.state} ${w.message}`);
        how = w.content?.prebuildTree ?? '';
        if (!process.env.QUIET) console.log(`  from prebuild (${kind}): fetched ${w.content?.objectsTotal} objects, verified ${w.content?.prebuildVerified}, tree ${how}`);
      });
      await daemon!.teardown(id);
      return ms;
    };

    const best = { plain: Infinity, tetrix: Infinity, cold: Infinity, warm: Infinity };
    for (let r = 0; r < ROUNDS; r++) {
      const plain = await plainClone();
      const tetrix = await tetrixClone();
      const cold = await fromPrebuild('cold');
      const warm = await fromPrebuild('warm');
      console.log(`round ${r + 1}: git clone ${seconds(plain)} s, tetrix fresh clone start ${seconds(tetrix)} s, tetrix start from prebuild cold ${seconds(cold)} s, warm ${seconds(warm)} s`);
      best.plain = Math.min(best.plain, plain);
      best.tetrix = Math.min(best.tetrix, tetrix);
      best.cold = Math.min(best.cold, cold);
      best.warm = Math.min(best.warm, warm);
    }
    console.log(`load average: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
    console.log(`clone ratio tetrix/git: ${(best.tetrix / best.plain).toFixed(2)} (target <= 1.1)`);
    if (noCache.length > 0) {
      console.log(`prebuild start ratio without the tree cache (every start restores the snapshot): ${(Math.min(best.cold, best.warm) / best.tetrix).toFixed(2)}`);
    } else {
      console.log(`cold prebuild start ratio (first start, unpacks the snapshot into the cache): ${(best.cold / best.tetrix).toFixed(2)}`);
      console.log(`prebuild start ratio (warm: the snapshot's tree already cached): ${(best.warm / best.tetrix).toFixed(2)} (target <= 0.3)`);
    }
    clients.close();
    // Where the time of each start went: the fetch sandbox logs every git step with its duration.
    const lines = fs.readFileSync(daemon.logFile, 'utf8').split('\n').filter((l) => l.startsWith('{'));
    for (const line of lines) {
      if (!line.includes('source step done')) continue;
      const e = JSON.parse(line) as { workspace: string; step: string; ms: number; bytesIn: number };
      console.log(`  ${e.workspace}: ${e.step} ${seconds(e.ms)} s, ${(e.bytesIn / 1e6).toFixed(1)} MB in`);
    }
    // Each cold start's unpack of the snapshot into the cache (logged under the snapshot, not a workspace).
    const events = lines.map((l) => JSON.parse(l) as { time: number; msg: string; workspace?: string; snapshot?: string; ms?: number });
    for (const e of events.filter((e) => e.msg === 'prebuild tree cache: snapshot unpacked')) console.log(`  unpack of ${e.snapshot}: ${seconds(e.ms ?? 0)} s`);
    // And the last cold and warm starts from a prebuild, line by line: what happened around their git steps.
    for (const kind of ['cold', 'warm']) {
      const last = events.filter((e) => e.workspace?.startsWith(`from-pb-${kind}`)).at(-1)?.workspace;
      let prev: number | undefined;
      for (const e of events.filter((e) => e.workspace === last)) {
        console.log(`  ${last} +${seconds(prev === undefined ? 0 : e.time - prev)} s: ${e.msg}`);
        prev = e.time;
      }
    }
  } finally {
    if (server?.pid) {
      try {
        process.kill(-server.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await daemon?.shutdown();
    if (!process.env.TETRIX_BENCH_KEEP) fs.rmSync(root, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
