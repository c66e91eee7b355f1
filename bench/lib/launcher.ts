// A real tetrixd for a benchmark, without a test framework: its own state dir, socket and cgroup
// parent, its log in a file beside them, and the generated client over its unix socket. It runs in a
// network namespace of its own, so the bridge, veths, nftables tables and ip_forward it sets up for
// ISOLATED workspaces never touch the host's network; deleting the namespace removes them all.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packageRoot } from '../../src/config/config';
import { DAEMON_ENV, DAEMON_NODE_FLAGS } from '../../src/node-flags';
import { connect, unaryCall, type Clients } from '../../src/cli/client';
import type { Workspace__Output } from '../../src/generated/tetrix/agent/v1/Workspace';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';
import type { ListWorkspacesResponse__Output } from '../../src/generated/tetrix/agent/v1/ListWorkspacesResponse';
import type { TeardownWorkspaceResponse__Output } from '../../src/generated/tetrix/agent/v1/TeardownWorkspaceResponse';

export const daemonMain = path.join(packageRoot, 'dist', 'src', 'main.js');

export interface BenchDaemon {
  readonly dir: string;
  readonly stateDir: string;
  readonly socketPath: string;
  readonly cgroupParent: string;
  readonly logFile: string;
  readonly netns: string;           // the daemon's network namespace (a name under /run/netns)
  readonly pid: number;
  start(req: StartWorkspaceRequest): Promise<Workspace__Output>;
  get(id: string): Promise<Workspace__Output>;
  list(): Promise<Workspace__Output[]>;
  stop(id: string, graceMs?: number): Promise<Workspace__Output>;
  teardown(id: string): Promise<TeardownWorkspaceResponse__Output>;
  /** Resident memory of the daemon (VmRSS), in bytes. */
  rssBytes(): number;
  /** Open file descriptors of the daemon, less the user namespaces its idmap cache keeps (at most 64, see
   *  native/idmap.c): those stay by design and are bounded by test/native/idmap-mount.test.ts. */
  fdCount(): number;
  /** Tear down what still exists, SIGTERM, wait for exit, remove the cgroup parent and the directory (unless keep). */
  shutdown(opts?: { keep?: boolean }): Promise<void>;
}

function readLink(p: string): string {
  try {
    return fs.readlinkSync(p);
  } catch {
    return ''; // closed meanwhile
  }
}

export function runName(prefix: string): string {
  return `${prefix}-${process.pid}-${crypto.randomBytes(3).toString('hex')}`;
}

export function readRssBytes(pid: number): number {
  const line = fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('VmRSS:'));
  if (!line) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(line.split(/\s+/)[1]) * 1024;
}

async function until(what: string, pred: () => Promise<boolean> | boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const exited = (child: ChildProcess): boolean => child.exitCode !== null || child.signalCode !== null;

export async function launchDaemon(opts: { prefix?: string; logLevel?: string; extraArgs?: string[] } = {}): Promise<BenchDaemon> {
  if (!fs.existsSync(daemonMain)) throw new Error(`${daemonMain} is missing: run npm run build first`);
  const prefix = opts.prefix ?? 'tetrix-bench';
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
  const stateDir = path.join(dir, 'state');
  const socketPath = path.join(dir, 'tetrixd.sock');
  const cgroupParent = runName(prefix);
  const logFile = path.join(dir, 'tetrixd.log');
  const log = fs.openSync(logFile, 'a', 0o600);
  const netns = runName(prefix);
  execFileSync('ip', ['netns', 'add', netns]);
  execFileSync('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
  const args = ['--net=' + path.join('/run/netns', netns), '--', 'env', ...Object.entries(DAEMON_ENV).map(([k, v]) => `${k}=${v}`), process.execPath, ...DAEMON_NODE_FLAGS,
    ...(process.env.TETRIX_BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean), daemonMain, '--state-dir', stateDir, '--socket-path', socketPath, '--cgroup-parent', cgroupParent, '--log-level', opts.logLevel ?? 'warn',
    // The mutual-TLS port as in production, but on loopback and a free port so runs never collide.
    '--api-listen', '127.0.0.1:0', ...(opts.extraArgs ?? [])];
  // nsenter enters the namespace and execs node: the child's pid is the daemon's.
  const child = spawn('nsenter', args, { stdio: ['ignore', log, log] });
  fs.closeSync(log);

  const clients: Clients = connect({ socketPath });
  const call = <T>(invoke: Parameters<typeof unaryCall<T>>[0]): Promise<T> => unaryCall<T>(invoke, { deadlineMs: 60_000 });
  const list = async (): Promise<Workspace__Output[]> =>
    (await call<ListWorkspacesResponse__Output>((md, o, cb) => clients.workspaces.ListWorkspaces({}, md, o, cb))).workspaces;

  try {
    await until('tetrixd to serve', async () => {
      if (exited(child)) throw new Error(`tetrixd exited early:\n${fs.readFileSync(logFile, 'utf8').slice(-2000)}`);
      return list().then(() => true, () => false);
    }, 30_000);
  } catch (err) {
    child.kill('SIGKILL');
    clients.close();
    execFileSync('ip', ['netns', 'del', netns]);
    throw err;
  }

  return {
    dir, stateDir, socketPath, cgroupParent, logFile, netns,
    pid: child.pid!,
    start: (req) => call<Workspace__Output>((md, o, cb) => clients.workspaces.StartWorkspace(req, md, o, cb)),
    get: (id) => call<Workspace__Output>((md, o, cb) => clients.workspaces.GetWorkspace({ id }, md, o, cb)),
    list,
    stop: (id, graceMs = 2000) => call<Workspace__Output>((md, o, cb) => clients.workspaces.StopWorkspace({ id, gracePeriodMs: graceMs }, md, o, cb)),
    teardown: (id) => call<TeardownWorkspaceResponse__Output>((md, o, cb) => clients.workspaces.TeardownWorkspace({ id }, md, o, cb)),
    rssBytes: () => readRssBytes(child.pid!),
    fdCount: () => fs.readdirSync(`/proc/${child.pid}/fd`).filter((fd) => !readLink(`/proc/${child.pid}/fd/${fd}`).startsWith('user:')).length,
    shutdown: async ({ keep = false } = {}) => {
      // Workspaces outlive a daemon's SIGTERM by design; a benchmark must not leave any running.
      if (!exited(child)) {
        for (const w of await list().catch(() => [])) {
          await call<TeardownWorkspaceResponse__Output>((md, o, cb) => clients.workspaces.TeardownWorkspace({ id: w.id }, md, o, cb)).catch(() => undefined);
        }
      }
      clients.close();
      if (!exited(child)) {
        const gone = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await gone;
        clearTimeout(timer);
      }
      removeCgroupParent(cgroupParent);
      execFileSync('ip', ['netns', 'del', netns]);
      // A recursive delete would walk into a mount left behind; such a run is kept for inspection.
      if (!keep && !hasMountsUnder(dir)) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

function hasMountsUnder(dir: string): boolean {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => {
    const m = l.split(' ')[4];
    return m !== undefined && (m === dir || m.startsWith(dir + '/'));
  });
}

/** Every directory of the parent group: one per v1 hierarchy, or the one v2 group. */
export function cgroupDirsOf(name: string, root = '/sys/fs/cgroup'): string[] {
  const found: string[] = [];
  if (fs.existsSync(path.join(root, name))) found.push(path.join(root, name));
  for (const entry of fs.readdirSync(root)) {
    const dir = path.join(root, entry, name);
    if (fs.statSync(path.join(root, entry)).isDirectory() && fs.existsSync(dir)) found.push(dir);
  }
  return found;
}

/** The daemon leaves its (empty) parent group behind by design; the benchmark removes it. */
export function removeCgroupParent(name: string): void {
  for (const dir of cgroupDirsOf(name)) {
    try {
      fs.rmdirSync(dir);
    } catch {
      // a workspace group left inside keeps it: the leak check reports that
    }
  }
}
