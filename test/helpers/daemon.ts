// A real tetrixd for a test: its own state dir, socket and cgroup parent, started from the compiled
// daemon (npm test builds first), talked to over its unix socket with the generated client.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { connect, unaryCall, type Clients } from '../../src/cli/client';
import { mountsUnder } from '../../src/sandbox/rootfs';
import { DAEMON_ENV, DAEMON_NODE_FLAGS } from '../../src/node-flags';
import { cgroupParentFor, defaults } from '../../src/config/config';

/** Mounts whose mountpoint lies below dir (the sandbox's own reader of mountinfo). */
export { mountsUnder };
import type { Workspace__Output } from '../../src/generated/tetrix/agent/v1/Workspace';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';
import type { ListWorkspacesResponse__Output } from '../../src/generated/tetrix/agent/v1/ListWorkspacesResponse';
import type { TeardownWorkspaceResponse__Output } from '../../src/generated/tetrix/agent/v1/TeardownWorkspaceResponse';

export const repoRoot = path.resolve(__dirname, '..', '..');
export const daemonMain = path.join(repoRoot, 'dist', 'src', 'main.js');
export const ctlMain = path.join(repoRoot, 'dist', 'src', 'cli', 'tetrixctl.js');

interface TapLike {
  teardown(fn: () => unknown): void;
}

export interface Daemon {
  readonly dir: string;
  readonly stateDir: string;
  readonly socketPath: string;
  readonly cgroupParent: string;
  readonly output: string[];          // the daemon's log lines, for the tests that search them
  tcpPort: number | undefined;        // the mutual-TLS API port of the current run
  clients: Clients;
  process: ChildProcess;
  start(req: StartWorkspaceRequest): Promise<Workspace__Output>;
  get(id: string): Promise<Workspace__Output>;
  list(): Promise<Workspace__Output[]>;
  stop(id: string, graceMs?: number): Promise<Workspace__Output>;
  teardown(id: string): Promise<TeardownWorkspaceResponse__Output>;
  waitFor(id: string, pred: (w: Workspace__Output) => boolean, timeoutMs?: number): Promise<Workspace__Output>;
  kill9(): Promise<void>;
  terminate(): Promise<void>;
  /** Starts the daemon again on the same state; env replaces the test-only environment given at start. */
  restart(env?: NodeJS.ProcessEnv): Promise<void>;
}

export const uniqueName = (prefix: string): string => `${prefix}-${process.pid}-${crypto.randomBytes(3).toString('hex')}`;

async function waitUntil(what: string, pred: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface DaemonOptions {
  /** Run the daemon in this network namespace (a path, e.g. a test node's), via nsenter --net only. */
  netns?: string;
  env?: NodeJS.ProcessEnv;
  /** Run the daemon on a pseudo-terminal of its own (util-linux script(1)), as `npm start` from an
   *  operator's terminal would: the daemon leads a session whose controlling terminal is that pty. */
  pty?: boolean;
  /** Start it the README's way, without --cgroup-parent, so it derives its parent from its state dir. */
  derivedCgroupParent?: boolean;
}

const shellQuote = (arg: string): string => `'${arg.replace(/'/g, `'\\''`)}'`;

export async function startDaemon(t: TapLike, extraArgs: string[] = [], opts: DaemonOptions = {}): Promise<Daemon> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-test-'));
  const stateDir = path.join(dir, 'state');
  const socketPath = path.join(dir, 'tetrixd.sock');
  const cgroupParent = opts.derivedCgroupParent ? cgroupParentFor(stateDir) : uniqueName('tetrix-test');
  const output: string[] = [];
  const parentArgs = opts.derivedCgroupParent ? [] : ['--cgroup-parent', cgroupParent];
  // The daemon tests that look at backup objects look at the full format's; snapshot tests ask for theirs.
  const formatArgs = extraArgs.includes('--backup-format') || opts.env?.TETRIX_BACKUP_FORMAT ? [] : ['--backup-format', 'full'];
  const args = [daemonMain, '--state-dir', stateDir, '--socket', socketPath, ...parentArgs, '--log-level', 'debug', '--api-listen', '127.0.0.1:0', '--network', 'off', ...formatArgs, ...extraArgs];

  let extraEnv = opts.env ?? {};
  const launch = async (): Promise<ChildProcess> => {
    const node = [process.execPath, ...DAEMON_NODE_FLAGS];
    let [cmd, argv] = opts.netns ? ['nsenter', [`--net=${opts.netns}`, ...node, ...args]] : [node[0], [...node.slice(1), ...args]];
    // script runs the command through a shell on a new pty; exec leaves the daemon as the session leader.
    if (opts.pty) [cmd, argv] = ['script', ['-qefc', `exec ${[cmd, ...argv].map(shellQuote).join(' ')}`, '/dev/null']];
    const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...DAEMON_ENV, ...extraEnv } });
    for (const stream of [child.stdout!, child.stderr!]) {
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => output.push(...chunk.split('\n').filter(Boolean)));
    }
    let exited = false;
    child.once('exit', () => (exited = true));
    const from = output.length;
    try {
      await waitUntil('tetrixd to serve', () => {
        if (exited) throw new Error(`tetrixd exited early:\n${output.slice(-20).join('\n')}`);
        return output.slice(from).some((l) => l.includes('tetrixd serving'));
      }, 30_000);
    } catch (err) {
      child.kill('SIGKILL');
      throw err;
    }
    return child;
  };

  const exitOf = (child: ChildProcess): Promise<void> =>
    child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise((r) => child.once('exit', () => r()));

  // Registered before the first launch: even a daemon that never serves leaves nothing behind.
  let d: Daemon | undefined;
  t.teardown(async () => {
    if (d) {
      // A test that killed the daemon still owes the machine a clean teardown of what it started.
      if (d.process.exitCode !== null || d.process.signalCode !== null) await d.restart({}).catch(() => undefined);
      for (const w of await d.list().catch(() => [])) await d.teardown(w.id).catch(() => undefined);
      await d.terminate();
    }
    const left = forceCleanup(dir, stateDir, cgroupParent);
    if (left.length > 0) process.stderr.write(`tetrix test harness: cleaned up leftovers: ${left.join(', ')}\n`);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const daemon: Daemon = {
    dir, stateDir, socketPath, cgroupParent, output,
    process: await launch(),
    clients: connect({ socketPath }),
    start: (req) => unaryCall<Workspace__Output>((md, o, cb) => daemon.clients.workspaces.StartWorkspace(req, md, o, cb)),
    get: (id) => unaryCall<Workspace__Output>((md, o, cb) => daemon.clients.workspaces.GetWorkspace({ id }, md, o, cb)),
    list: async () => (await unaryCall<ListWorkspacesResponse__Output>((md, o, cb) => daemon.clients.workspaces.ListWorkspaces({}, md, o, cb))).workspaces,
    stop: (id, graceMs = 0) => unaryCall<Workspace__Output>((md, o, cb) => daemon.clients.workspaces.StopWorkspace({ id, gracePeriodMs: graceMs }, md, o, cb)),
    teardown: (id) => unaryCall<TeardownWorkspaceResponse__Output>((md, o, cb) => daemon.clients.workspaces.TeardownWorkspace({ id }, md, o, cb)),
    waitFor: async (id, pred, timeoutMs = 30_000) => {
      let last: Workspace__Output | undefined;
      await waitUntil(`workspace ${id}`, async () => pred((last = await daemon.get(id))), timeoutMs);
      return last!;
    },
    kill9: async () => {
      daemon.clients.close();
      daemon.process.kill('SIGKILL');
      await exitOf(daemon.process);
    },
    terminate: async () => {
      daemon.clients.close();
      daemon.process.kill('SIGTERM');
      await exitOf(daemon.process);
    },
    tcpPort: undefined,
    restart: async (env) => {
      if (env) extraEnv = env;
      daemon.process = await launch();
      daemon.tcpPort = servingPort(output);
      daemon.clients = connect({ socketPath });
    },
  };

  daemon.tcpPort = servingPort(output);
  d = daemon;
  return daemon;
}

function servingPort(output: string[]): number | undefined {
  const line = [...output].reverse().find((l) => l.includes('tetrixd serving'));
  return line ? (JSON.parse(line) as { tcpPort?: number }).tcpPort : undefined;
}

/**
 * Last resort after a failed test: kill what still runs in this daemon's cgroups (only processes our
 * daemon started live there), unmount what is below its dir, drop its uid-range claims. Returns what
 * it had to remove, so a leak is reported rather than silently left on the machine.
 */
function forceCleanup(dir: string, stateDir: string, cgroupParent: string): string[] {
  const left: string[] = [];
  for (const group of cgroupDirsOf(cgroupParent)) {
    for (const child of fs.readdirSync(group).filter((e) => fs.statSync(path.join(group, e)).isDirectory())) {
      const procs = path.join(group, child, 'cgroup.procs');
      for (const pid of fs.readFileSync(procs, 'utf8').split('\n').filter(Boolean).map(Number)) {
        try {
          process.kill(pid, 'SIGKILL');
          left.push(`process ${pid}`);
        } catch {
          // already gone
        }
      }
    }
  }
  for (const mount of mountsUnder(dir).reverse()) {
    spawnSync('umount', ['-l', mount]);
    left.push(`mount ${mount}`);
  }
  const deadline = Date.now() + 5000;
  for (const group of cgroupDirsOf(cgroupParent)) {
    for (const child of fs.readdirSync(group).filter((e) => fs.statSync(path.join(group, e)).isDirectory())) {
      while (Date.now() < deadline) {
        try {
          fs.rmdirSync(path.join(group, child));
          left.push(`cgroup ${path.join(group, child)}`);
          break;
        } catch {
          spawnSync('sleep', ['0.05']);
        }
      }
    }
  }
  removeCgroupParent(cgroupParent);
  left.push(...removeNameClaims(stateDir));
  const claims = '/run/tetrix/idmap';
  for (const entry of fs.existsSync(claims) ? fs.readdirSync(claims) : []) {
    try {
      const claim = JSON.parse(fs.readFileSync(path.join(claims, entry), 'utf8')) as { stateDir?: string };
      if (claim.stateDir === stateDir) {
        fs.rmSync(path.join(claims, entry));
        left.push(`uid range ${entry}`);
      }
    } catch {
      // not a claim file
    }
  }
  return left;
}

/** The claims of node names (cgroup parent, bridge, table) a daemon of this state dir left (after a kill -9). */
function removeNameClaims(stateDir: string): string[] {
  const dir = defaults().claimsDir;
  const left: string[] = [];
  for (const entry of fs.existsSync(dir) ? fs.readdirSync(dir) : []) {
    try {
      const claim = JSON.parse(fs.readFileSync(path.join(dir, entry), 'utf8')) as { stateDir?: string };
      if (claim.stateDir === path.resolve(stateDir)) {
        fs.rmSync(path.join(dir, entry));
        left.push(`name claim ${entry}`);
      }
    } catch {
      // not a claim file
    }
  }
  return left;
}

/** The per-daemon parent group: the daemon leaves it (it may be shared by restarts); the test removes it. */
export function removeCgroupParent(parent: string): void {
  for (const dir of cgroupDirsOf(parent)) {
    try {
      fs.rmdirSync(dir);
    } catch {
      // a leftover child group makes this fail; the leak checks report it
    }
  }
}

export function cgroupDirsOf(name: string): string[] {
  const root = '/sys/fs/cgroup';
  const found: string[] = [];
  for (const entry of fs.readdirSync(root)) {
    const dir = path.join(root, entry, name);
    if (fs.existsSync(dir)) found.push(dir);
  }
  if (fs.existsSync(path.join(root, name))) found.push(path.join(root, name));
  return found;
}


/** A process that exists and has not exited (a zombie awaiting its reaper counts as gone). */
export function isAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

export type GrpcError = grpc.ServiceError;

/** The /dev nodes a workspace gets, as on the host (but tty). */
export const HOST_DEVICES = ['null', 'zero', 'full', 'random', 'urandom'] as const;

/** Opens and writes the host's /dev nodes every 20 ms until the test ends: a workspace watching its own
 *  must see none of it (issue 13, item 8). */
export function hostDeviceActivity(t: TapLike): void {
  const timer = setInterval(() => {
    for (const d of HOST_DEVICES) {
      try {
        const fd = fs.openSync(`/dev/${d}`, 'r+');
        try {
          fs.writeSync(fd, 'x');
        } catch {
          // /dev/full: ENOSPC, by design; the open and the attempt still happened
        }
        fs.closeSync(fd);
      } catch {
        // never fail the test over the generator
      }
    }
  }, 20);
  t.teardown(() => clearInterval(timer));
}

/** The gRPC status a promise was refused with ({code: undefined} if it succeeded). */
export async function refusal(p: Promise<unknown>): Promise<{ code: grpc.status | undefined; details: string }> {
  try {
    await p;
  } catch (err) {
    const e = err as grpc.ServiceError;
    return { code: e.code, details: e.details };
  }
  return { code: undefined, details: 'it succeeded' };
}
