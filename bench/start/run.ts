// Start latency: Tetrix's StartWorkspace (network NONE and ISOLATED) against `crun run` of an OCI bundle
// with the same rootfs, namespaces, id mapping, capabilities, masked paths and seccomp profile. The
// candidates run interleaved, round-robin, in one process so they share the machine's noise.
// Not a test: run by hand (npm run bench:start, or bench/start/run.sh). See bench/README.md.
//
// What each number measures (they are not the same thing; see the notes printed at the end):
//   tetrix StartWorkspace RPC   request sent -> reply: init has exec'd in the workspace and forked the
//                               workload. Excludes the workload's exit and the teardown.
//   tetrix start -> STOPPED     request sent -> STOPPED event seen on a WatchWorkspaces stream: includes
//                               /bin/true's exit, init's exit and the log's end; the release of mounts and
//                               cgroups follows the event. The headline ratio, printed last.
//   crun run                    crun forked -> crun exited: create, start, /bin/true runs and exits, delete.
//
// Environment: BENCH_RUNS measured runs per candidate (default 50), BENCH_WARMUP discarded rounds
// (default 3), BENCH_LOG_LEVEL tetrixd's log level (default info), BENCH_DAEMON_ARGS extra tetrixd
// flags (split on spaces), BENCH_KEEP_LOG=1 keeps tetrixd's log (copied to /tmp; the path is printed).
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { connect, unaryCall, type Clients } from '../../src/cli/client';
import { mountsUnder } from '../../src/sandbox/rootfs';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';
import type { Workspace__Output } from '../../src/generated/tetrix/agent/v1/Workspace';
import type { WorkspaceEvent__Output } from '../../src/generated/tetrix/agent/v1/WorkspaceEvent';
import type { ListWorkspacesResponse__Output } from '../../src/generated/tetrix/agent/v1/ListWorkspacesResponse';
import { DEFAULT_CAPABILITIES } from '../../src/sandbox/capabilities';
import { DAEMON_ENV, DAEMON_NODE_FLAGS } from '../../src/node-flags';

const runs = positiveInt('BENCH_RUNS', 50);
const warmup = positiveInt('BENCH_WARMUP', 3, true);
const logLevel = process.env.BENCH_LOG_LEVEL ?? 'info';
const extraDaemonArgs = (process.env.BENCH_DAEMON_ARGS ?? '').split(' ').filter(Boolean);
const suffix = `${process.pid}-${crypto.randomBytes(3).toString('hex')}`;
// Far above the ranges tetrixd hands out (1,000,000 upwards, below 2^31), so a crun container never
// shares host ids with a live workspace of another daemon on this machine.
const CRUN_HOST_ID_BASE = 3_000_000_000;
const ID_COUNT = 65536;

const now = (): number => Number(process.hrtime.bigint()) / 1e6;

function positiveInt(name: string, fallback: number, zeroOk = false): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < (zeroOk ? 0 : 1)) throw new Error(`${name} must be an integer >= ${zeroOk ? 0 : 1}, got "${raw}"`);
  return n;
}

function repoRoot(): string {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json')) && fs.existsSync(path.join(dir, 'profiles', 'seccomp'))) return dir;
  }
  throw new Error(`no Tetrix checkout above ${__dirname}`);
}

// ---- cleanup: everything registered here runs, newest first, on success, failure or a signal ------------

const cleanups: Array<{ what: string; run: () => unknown }> = [];
let cleaning: Promise<void> | undefined;

function onCleanup(what: string, run: () => unknown): void {
  cleanups.push({ what, run });
}

function cleanUp(): Promise<void> {
  cleaning ??= (async () => {
    for (const c of cleanups.splice(0).reverse()) {
      try {
        await c.run();
      } catch (err) {
        console.error(`cleanup: ${c.what}: ${(err as Error).message}`);
      }
    }
  })();
  return cleaning;
}

// ---- tetrixd -------------------------------------------------------------------------------------------

interface Tetrixd {
  readonly stateDir: string;
  readonly clients: Clients;
  readonly logFile: string;
}

/** Polls the daemon's log file: its output goes straight to the file, so this process (the client being
 *  timed) never wakes up to relay log lines while it measures. */
async function waitForLine(child: ChildProcess, logFile: string, marker: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const log = fs.readFileSync(logFile, 'utf8');
    if (log.includes(marker)) return;
    const tail = log.split('\n').slice(-20).join('\n');
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`tetrixd exited before serving:\n${tail}`);
    if (Date.now() > deadline) throw new Error(`tetrixd did not serve within ${timeoutMs} ms:\n${tail}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function startTetrixd(root: string, dir: string): Promise<Tetrixd> {
  const stateDir = path.join(dir, 'state');
  const socketPath = path.join(dir, 'tetrixd.sock');
  const cgroupParent = `tetrix-bench-${suffix}`;
  const logFile = path.join(dir, 'tetrixd.log');
  const main = path.join(root, 'dist', 'src', 'main.js');
  if (!fs.existsSync(main)) throw new Error(`${main} is missing: run npm run build first`);
  const args = [main, '--state-dir', stateDir, '--socket', socketPath, '--cgroup-parent', cgroupParent, '--log-level', logLevel, '--api-listen', '127.0.0.1:0', ...extraDaemonArgs];
  // The daemon lives in a network namespace of the benchmark's own: what it makes for ISOLATED (bridge,
  // nftables tables, ip_forward=1, NAT) stays out of the host's namespace. The unix socket is a file,
  // so the benchmark reaches it from here.
  const netns = `tetrix-bench-${suffix}`;
  execFileSync('ip', ['netns', 'add', netns]);
  onCleanup(`ip netns del ${netns}`, () => execFileSync('ip', ['netns', 'del', netns]));
  execFileSync('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
  const logFd = fs.openSync(logFile, 'a', 0o600);
  const child = spawn('nsenter', [`--net=/run/netns/${netns}`, '--', process.execPath, ...DAEMON_NODE_FLAGS, ...(process.env.TETRIX_BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean), ...args], {
    stdio: ['ignore', logFd, logFd],
    env: { ...process.env, ...DAEMON_ENV },
  });
  fs.closeSync(logFd);
  onCleanup('tetrixd\'s cgroups, mounts and uid claims', () => forceCleanup(dir, stateDir, cgroupParent));
  onCleanup('stop tetrixd', () => terminate(child));
  await waitForLine(child, logFile, 'tetrixd serving', 30_000);
  const clients = connect({ socketPath });
  onCleanup('tear down workspaces', async () => {
    try {
      const { workspaces } = await unaryCall<ListWorkspacesResponse__Output>((md, o, cb) => clients.workspaces.ListWorkspaces({}, md, o, cb), { deadlineMs: 10_000 });
      for (const w of workspaces) await teardown(clients, w.id);
    } finally {
      clients.close();
    }
  });
  return { stateDir, clients, logFile };
}

function terminate(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const kill = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => {
      clearTimeout(kill);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** Whatever a failed run left: processes in our daemon's cgroups, mounts under our dir, its uid claims. */
function forceCleanup(dir: string, stateDir: string, cgroupParent: string): void {
  const groups = cgroupDirsOf(cgroupParent);
  for (const group of groups) {
    for (const child of subdirs(group)) {
      for (const pid of readLines(path.join(group, child, 'cgroup.procs'))) {
        try {
          process.kill(Number(pid), 'SIGKILL');
          console.error(`cleanup: killed leftover process ${pid}`);
        } catch {
          // already gone
        }
      }
    }
  }
  for (const mount of mountsUnder(dir).reverse()) {
    spawnSync('umount', ['-l', mount]);
    console.error(`cleanup: unmounted leftover ${mount}`);
  }
  for (const group of groups) {
    for (const child of subdirs(group)) rmdirPatiently(path.join(group, child));
    rmdirPatiently(group);
  }
  const claims = '/run/tetrix/idmap';
  for (const entry of fs.existsSync(claims) ? fs.readdirSync(claims) : []) {
    try {
      const claim = JSON.parse(fs.readFileSync(path.join(claims, entry), 'utf8')) as { stateDir?: string };
      if (claim.stateDir === stateDir) fs.rmSync(path.join(claims, entry));
    } catch {
      // not a claim file
    }
  }
}

function cgroupDirsOf(name: string): string[] {
  const root = '/sys/fs/cgroup';
  const dirs = fs.readdirSync(root).map((e) => path.join(root, e, name));
  return [...dirs, path.join(root, name)].filter((d) => fs.existsSync(d));
}

function subdirs(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
}

function readLines(file: string): string[] {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

function rmdirPatiently(dir: string): void {
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      fs.rmdirSync(dir);
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      if (Date.now() > deadline) throw err;
      spawnSync('sleep', ['0.05']);
    }
  }
}


// ---- Tetrix candidates -----------------------------------------------------------------------------------

type Network = 'NETWORK_MODE_NONE' | 'NETWORK_MODE_ISOLATED';

const startRequest = (id: string, network: Network, command = ['/bin/true']): StartWorkspaceRequest => ({
  id,
  ownerId: 'bench',
  teamId: 'bench',
  kind: 'WORKSPACE_KIND_REGULAR',
  image: 'builtin:busybox',
  command,
  network,
});

/** A refusal from the daemon (it has a gRPC status), as opposed to a fault of the benchmark itself. */
const isRpcError = (err: unknown): err is Error & { code: number; details: string } =>
  err instanceof Error && typeof (err as { code?: unknown }).code === 'number' && typeof (err as { details?: unknown }).details === 'string';

const startWorkspace = (c: Clients, req: StartWorkspaceRequest): Promise<Workspace__Output> =>
  unaryCall<Workspace__Output>((md, o, cb) => c.workspaces.StartWorkspace(req, md, o, cb));

const teardown = (c: Clients, id: string): Promise<unknown> =>
  unaryCall((md, o, cb) => c.workspaces.TeardownWorkspace({ id }, md, o, cb), { deadlineMs: 30_000 });

/** One WatchWorkspaces stream for the whole run: notes when each workspace is first seen STOPPED or FAILED. */
class StopWatcher {
  private readonly waiters = new Map<string, { resolve: (at: number) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  private readonly call;

  constructor(clients: Clients) {
    this.call = clients.workspaces.WatchWorkspaces({});
    this.call.on('data', (e: WorkspaceEvent__Output) => {
      const w = e.workspace;
      if (!w) return;
      const waiter = this.waiters.get(w.id);
      if (!waiter) return;
      if (w.state === 'WORKSPACE_STATE_STOPPED') {
        this.forget(w.id);
        waiter.resolve(now());
      } else if (w.state === 'WORKSPACE_STATE_FAILED') {
        this.forget(w.id);
        waiter.reject(new Error(`workspace ${w.id} FAILED: ${w.message}`));
      }
    });
    this.call.on('error', (err: Error & { code?: number }) => {
      if (err.code === 1) return; // CANCELLED: our own close()
      for (const [id, w] of [...this.waiters]) {
        this.forget(id);
        w.reject(err);
      }
    });
  }

  /** Register before the start request, so the event cannot slip past. Resolves with the time it was seen. */
  stopped(id: string, timeoutMs = 30_000): Promise<number> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.forget(id);
        reject(new Error(`no STOPPED event for ${id} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.set(id, { resolve, reject, timer });
    });
  }

  forget(id: string): void {
    clearTimeout(this.waiters.get(id)?.timer);
    this.waiters.delete(id);
  }

  close(): void {
    this.call.cancel();
  }
}

interface TetrixSample {
  rpc: number;
  stopped: number;
  teardown: number;
}

async function tetrixOnce(d: Tetrixd, watcher: StopWatcher, id: string, network: Network): Promise<TetrixSample> {
  const stopped = watcher.stopped(id);
  stopped.catch(() => undefined); // handled below; a failed start must not surface as an unhandled rejection
  const t0 = now();
  try {
    await startWorkspace(d.clients, startRequest(id, network));
  } catch (err) {
    watcher.forget(id);
    await teardown(d.clients, id).catch(() => undefined);
    throw err;
  }
  const rpc = now() - t0;
  const stoppedAt = await stopped;
  const t1 = now();
  await teardown(d.clients, id);
  return { rpc, stopped: stoppedAt - t0, teardown: now() - t1 };
}

/**
 * ISOLATED is usable when a workspace started with it gets an address. The probe's workload stays up
 * (a workload that exits at once tests the start path, not whether the node has a network).
 */
async function isolatedProblem(d: Tetrixd): Promise<string | undefined> {
  const id = `bench-probe-${suffix}`;
  try {
    const w = await startWorkspace(d.clients, startRequest(id, 'NETWORK_MODE_ISOLATED', ['/bin/sleep', '30']));
    return w.ipAddress ? undefined : 'tetrixd accepted NETWORK_MODE_ISOLATED but gave the workspace no ip_address: no network is wired into the daemon';
  } catch (err) {
    return isRpcError(err) ? err.details.replace(/\s+/g, ' ') : (err as Error).message;
  } finally {
    await teardown(d.clients, id).catch(() => undefined);
  }
}

// ---- crun ------------------------------------------------------------------------------------------------

// Docker's format (profiles/seccomp/*.json) as far as this conversion needs it.
interface DockerFilter {
  caps?: string[];
  arches?: string[];
  minKernel?: string;
}
interface DockerArg {
  index: number;
  value: number;
  valueTwo?: number;
  op: string;
}
interface DockerSyscall {
  names?: string[];
  name?: string;
  action: string;
  errnoRet?: number;
  args?: DockerArg[] | null;
  includes?: DockerFilter;
  excludes?: DockerFilter;
}
interface DockerProfile {
  defaultAction: string;
  defaultErrnoRet?: number;
  archMap?: Array<{ architecture: string; subArchitectures?: string[] }>;
  architectures?: string[];
  syscalls?: DockerSyscall[];
}

interface OciSyscall {
  names: string[];
  action: string;
  errnoRet?: number;
  args?: Array<{ index: number; value: number; valueTwo: number; op: string }>;
}

function kernelAtLeast(want: string): boolean {
  const v = (s: string): number[] => (/^(\d+)\.(\d+)(?:\.(\d+))?/.exec(s) ?? []).slice(1, 4).map((x) => Number(x ?? 0));
  const [have, need] = [v(os.release()), v(want)];
  for (let i = 0; i < 3; i++) if (have[i] !== need[i]) return (have[i] ?? 0) > (need[i] ?? 0);
  return true;
}

/** moby's selection rules, judged as Tetrix judges them: its default capabilities, amd64, this kernel. */
function ruleApplies(s: DockerSyscall, caps: ReadonlySet<string>): boolean {
  const inc = s.includes ?? {};
  const exc = s.excludes ?? {};
  if (exc.arches?.includes('amd64')) return false;
  if (exc.caps?.some((c) => caps.has(c))) return false;
  if (exc.minKernel && kernelAtLeast(exc.minKernel)) return false;
  if (inc.arches?.length && !inc.arches.includes('amd64')) return false;
  if (!(inc.caps ?? []).every((c) => caps.has(c))) return false;
  if (inc.minKernel && !kernelAtLeast(inc.minKernel)) return false;
  return true;
}

/**
 * The same profile as an OCI config's linux.seccomp, with the choices Tetrix's compiler makes: rules
 * that repeat the default action are dropped (libseccomp refuses them), and conditions that repeat an
 * argument index become separate rules (OR), as runc does.
 */
export function ociSeccomp(profile: DockerProfile, capabilities: readonly string[]): object {
  const caps = new Set(capabilities);
  const defaultErrno = profile.defaultErrnoRet ?? 1;
  const isErrno = (a: string): boolean => a === 'SCMP_ACT_ERRNO' || a === 'SCMP_ACT_TRACE';
  const sameAsDefault = (s: DockerSyscall): boolean =>
    s.action === profile.defaultAction && (!isErrno(s.action) || (s.errnoRet ?? 1) === defaultErrno);
  const syscalls: OciSyscall[] = [];
  for (const s of profile.syscalls ?? []) {
    if (!ruleApplies(s, caps) || sameAsDefault(s)) continue;
    const names = s.names ?? (s.name ? [s.name] : []);
    const args = (s.args ?? []).map((a) => ({ index: a.index, value: a.value, valueTwo: a.valueTwo ?? 0, op: a.op }));
    const groups = new Set(args.map((a) => a.index)).size === args.length ? [args] : args.map((a) => [a]);
    for (const group of groups) {
      syscalls.push({
        names,
        action: s.action,
        ...(isErrno(s.action) ? { errnoRet: s.errnoRet ?? 1 } : {}),
        ...(group.length ? { args: group } : {}),
      });
    }
  }
  const architectures = profile.archMap
    ? profile.archMap.flatMap((a) => [a.architecture, ...(a.subArchitectures ?? [])])
    : profile.architectures ?? [];
  return { defaultAction: profile.defaultAction, defaultErrnoRet: defaultErrno, architectures, syscalls };
}

// The same mounts, masks and read-only paths native/spawn.c gives a workspace.
const MASKED_PATHS = [
  '/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list',
  '/proc/timer_stats', '/proc/sched_debug', '/proc/scsi', '/sys/firmware', '/sys/devices/virtual/powercap',
];
const READONLY_PATHS = ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'];

export function ociConfig(rootfs: string, seccomp: object | undefined): object {
  const caps = [...DEFAULT_CAPABILITIES];
  const ids = [{ containerID: 0, hostID: CRUN_HOST_ID_BASE, size: ID_COUNT }];
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: 0, gid: 0 },
      args: ['/bin/true'],
      env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
      cwd: '/',
      capabilities: { bounding: caps, effective: caps, permitted: caps },
      noNewPrivileges: true,
    },
    root: { path: rootfs, readonly: false },
    hostname: 'bench',
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'noexec', 'mode=755', 'size=65536k'] },
      { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'] },
      { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
    ],
    linux: {
      uidMappings: ids,
      gidMappings: ids,
      namespaces: ['pid', 'network', 'ipc', 'uts', 'mount', 'cgroup', 'user'].map((type) => ({ type })),
      maskedPaths: MASKED_PATHS,
      readonlyPaths: READONLY_PATHS,
      ...(seccomp ? { seccomp } : {}),
    },
  };
}

function makeBundle(dir: string, image: string, seccomp: object | undefined): string {
  fs.mkdirSync(dir, { recursive: true, mode: 0o711 });
  const rootfs = path.join(dir, 'rootfs');
  execFileSync('cp', ['-a', image, rootfs]);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(ociConfig(rootfs, seccomp), null, 2));
  return dir;
}

// crun 1.8.1 refuses cgroup v1 hybrid mode. In a private mount namespace (unshare -m makes every mount
// private, so nothing reaches the host's mount table) cgroup2 goes over /sys/fs/cgroup. One shell holds
// that namespace for the whole run and runs crun per request line, so each sample is crun alone and not
// also unshare, umount and mount.
const DRIVER_SCRIPT = `
umount -R /sys/fs/cgroup 2>/dev/null
mount -t cgroup2 none /sys/fs/cgroup || exit 97
echo ready
while read -r id bundle; do
  crun --root "$CRUN_ROOT" --cgroup-manager=disabled run --bundle "$bundle" "$id" </dev/null >>"$CRUN_LOG" 2>&1
  echo "done $?"
done
`;

const CLEANUP_SCRIPT = `
umount -R /sys/fs/cgroup 2>/dev/null
mount -t cgroup2 none /sys/fs/cgroup || exit 97
for id in $(crun --root "$CRUN_ROOT" list -q); do
  crun --root "$CRUN_ROOT" --cgroup-manager=disabled delete -f "$id" && echo "$id"
done
`;

class CrunDriver {
  private readonly child: ChildProcess;
  private readonly lines: string[] = [];
  private wake: (() => void) | undefined;

  constructor(private readonly stateRoot: string, private readonly logFile: string) {
    fs.mkdirSync(stateRoot, { recursive: true, mode: 0o700 });
    this.child = spawn('unshare', ['-m', '--propagation', 'private', 'sh', '-c', DRIVER_SCRIPT], {
      stdio: ['pipe', 'pipe', 'inherit'],
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', CRUN_ROOT: stateRoot, CRUN_LOG: logFile },
    });
    readline.createInterface({ input: this.child.stdout! }).on('line', (l) => {
      this.lines.push(l);
      this.wake?.();
    });
    this.child.once('exit', () => this.wake?.());
    onCleanup('crun containers left behind', () => this.deleteLeftovers());
    onCleanup('crun driver', () => this.close());
  }

  private async nextLine(): Promise<string> {
    while (this.lines.length === 0) {
      if (this.child.exitCode !== null) throw new Error(`crun driver exited with ${this.child.exitCode}`);
      await new Promise<void>((resolve) => (this.wake = resolve));
    }
    return this.lines.shift()!;
  }

  async ready(): Promise<void> {
    const l = await this.nextLine();
    if (l !== 'ready') throw new Error(`crun driver: expected "ready", got "${l}"`);
  }

  /** ms from the request to crun's exit; throws with crun's output if it failed. */
  async run(id: string, bundle: string): Promise<number> {
    const t0 = now();
    this.child.stdin!.write(`${id} ${bundle}\n`);
    const reply = await this.nextLine();
    const ms = now() - t0;
    if (reply !== 'done 0') {
      const log = fs.existsSync(this.logFile) ? fs.readFileSync(this.logFile, 'utf8').split('\n').slice(-15).join('\n') : '';
      throw new Error(`crun run ${id}: ${reply}\n${log}`);
    }
    return ms;
  }

  close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      this.child.once('exit', () => resolve());
      this.child.stdin!.end(); // the read loop ends at EOF
    });
  }

  /** crun run deletes its container on exit; this catches one interrupted mid-run. */
  deleteLeftovers(): void {
    const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', CLEANUP_SCRIPT], {
      encoding: 'utf8',
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', CRUN_ROOT: this.stateRoot },
    });
    const deleted = r.stdout.split('\n').filter(Boolean);
    if (deleted.length) console.error(`cleanup: crun delete -f ${deleted.join(' ')}`);
  }
}

// ---- statistics and report -------------------------------------------------------------------------------

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  return s[lo]! + (s[Math.min(lo + 1, s.length - 1)]! - s[lo]!) * (pos - lo);
}

const median = (xs: number[]): number => quantile(xs, 0.5);

function row(name: string, xs: number[]): string {
  const f = (n: number): string => n.toFixed(2).padStart(9);
  return `${name.padEnd(56)}${f(median(xs))}${f(quantile(xs, 0.9))}${f(Math.min(...xs))}${f(Math.max(...xs))}`;
}

function crunVersion(): string {
  return execFileSync('crun', ['--version'], { encoding: 'utf8' }).split('\n')[0] ?? 'crun';
}

// ---- the run ---------------------------------------------------------------------------------------------

/** Times per output line and refusals per candidate, both counted only after the warm-up rounds. */
class Results {
  readonly times = new Map<string, number[]>();
  readonly failures = new Map<string, Map<string, number>>();

  add(line: string, ms: number, round: number): void {
    if (round >= warmup) this.times.set(line, [...(this.times.get(line) ?? []), ms]);
  }

  /** A start the daemon refuses is counted and reported, not retried: it is part of the result. */
  fail(candidate: string, reason: string, round: number): void {
    if (round < warmup) return;
    const reasons = this.failures.get(candidate) ?? new Map<string, number>();
    reasons.set(reason, (reasons.get(reason) ?? 0) + 1);
    this.failures.set(candidate, reasons);
  }
}

type Candidate = (round: number) => Promise<void>;

function tetrixCandidate(d: Tetrixd, watcher: StopWatcher, results: Results, label: string, network: Network, tag: string): Candidate {
  return async (round) => {
    let s: TetrixSample;
    try {
      s = await tetrixOnce(d, watcher, `bench-${tag}-${round}`, network);
    } catch (err) {
      if (!isRpcError(err)) throw err;
      return results.fail(label, err.details, round);
    }
    results.add(`${label}: StartWorkspace RPC`, s.rpc, round);
    results.add(`${label}: start until STOPPED seen (watch)`, s.stopped, round);
    results.add(`${label}: TeardownWorkspace (not in the above)`, s.teardown, round);
  };
}

function crunCandidate(crun: CrunDriver, results: Results, label: string, bundle: string, tag: string): Candidate {
  return async (round) => results.add(label, await crun.run(`tetrix-bench-${tag}-${suffix}-${round}`, bundle), round);
}

const loadAverage = (): string => os.loadavg().map((l) => l.toFixed(2)).join(' ');

/** A temp dir for everything the run makes, removed at the end. */
function workDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-bench-start-${suffix}-`));
  // crun mounts the bundle's rootfs as the container's root (host id CRUN_HOST_ID_BASE): it must be
  // able to pass through this dir. Search only; the daemon's state dir below stays 0700.
  fs.chmodSync(dir, 0o711);
  onCleanup(`remove ${dir}`, () => {
    if (process.env.BENCH_KEEP_LOG === '1') {
      const kept = path.join(os.tmpdir(), `tetrix-bench-start-${suffix}.log`);
      fs.copyFileSync(path.join(dir, 'tetrixd.log'), kept);
      console.error(`tetrixd log kept at ${kept}`);
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

async function main(): Promise<void> {
  const root = repoRoot();
  const loadAtStart = loadAverage();
  const dir = workDir();
  const d = await startTetrixd(root, dir);
  const watcher = new StopWatcher(d.clients);
  onCleanup('close the watch stream', () => watcher.close());

  // The first start assembles builtin:busybox (before anything that could fail the start); crun's
  // bundles copy that same tree.
  await tetrixOnce(d, watcher, `bench-first-${suffix}`, 'NETWORK_MODE_NONE').catch((err: unknown) => {
    if (!isRpcError(err)) throw err;
  });
  const image = path.join(d.stateDir, 'images', 'busybox');
  if (!fs.existsSync(image)) throw new Error(`tetrixd did not assemble builtin:busybox at ${image}`);
  const profile = JSON.parse(fs.readFileSync(path.join(root, 'profiles', 'seccomp', 'default.json'), 'utf8')) as DockerProfile;
  const withSeccomp = makeBundle(path.join(dir, 'bundle-seccomp'), image, ociSeccomp(profile, DEFAULT_CAPABILITIES));
  const plain = makeBundle(path.join(dir, 'bundle-plain'), image, undefined);
  const crun = new CrunDriver(path.join(dir, 'crun-state'), path.join(dir, 'crun.log'));
  await crun.ready();

  const isolatedWhyNot = await isolatedProblem(d);
  const results = new Results();
  const candidates: Candidate[] = [
    tetrixCandidate(d, watcher, results, 'tetrix NONE', 'NETWORK_MODE_NONE', 'none'),
    ...(isolatedWhyNot ? [] : [tetrixCandidate(d, watcher, results, 'tetrix ISOLATED', 'NETWORK_MODE_ISOLATED', 'iso')]),
    crunCandidate(crun, results, 'crun run, default.json as OCI seccomp', withSeccomp, 'sc'),
    crunCandidate(crun, results, 'crun run, no seccomp', plain, 'plain'),
  ];
  for (let round = 0; round < warmup + runs; round++) {
    // Rotate who goes first, so no candidate always follows the same neighbour.
    for (let k = 0; k < candidates.length; k++) await candidates[(round + k) % candidates.length]!(round);
  }
  report(results, isolatedWhyNot, loadAtStart);
}

function report(results: Results, isolatedWhyNot: string | undefined, loadAtStart: string): void {
  const get = (name: string): number[] => results.times.get(name) ?? [];
  console.log(`bench/start: ${runs} runs per candidate (+${warmup} warm-up rounds discarded), interleaved round-robin`);
  console.log(`kernel ${os.release()}, ${os.cpus().length} cpus, ${crunVersion()}, node ${process.version}, tetrixd log level ${logLevel}`);
  console.log(`${'candidate'.padEnd(56)}${'median'.padStart(9)}${'p90'.padStart(9)}${'min'.padStart(9)}${'max'.padStart(9)}   (ms)`);
  // Fixed order, whichever candidate happened to run first.
  const order = (name: string): number => ['tetrix NONE', 'tetrix ISOLATED', 'crun run, default', 'crun run, no'].findIndex((p) => name.startsWith(p));
  for (const name of [...results.times.keys()].sort((a, b) => order(a) - order(b))) console.log(row(name, get(name)));
  for (const [label, reasons] of [...results.failures].sort(([a], [b]) => order(a) - order(b))) {
    const total = [...reasons.values()].reduce((a, b) => a + b, 0);
    const why = [...reasons].map(([r, n]) => `${n}x ${r}`).join('; ');
    console.log(`${label}: ${total} of ${runs} starts FAILED and are not in the times above: ${why}`);
  }
  if (isolatedWhyNot) console.log(`isolated: unavailable (${isolatedWhyNot})`);
  console.log('notes:');
  console.log('  StartWorkspace RPC ends when init has exec\'d and forked /bin/true: it excludes the exit and any cleanup.');
  console.log('  crun run is end to end: create, start, /bin/true runs and exits, delete. It includes what the RPC excludes.');
  console.log('  "start until STOPPED" is the like-for-like line (the headline ratio): it includes the exit, the log made whole');
  console.log('  and the record written; the daemon releases mounts and cgroups right after announcing STOPPED (StopWorkspace');
  console.log('  and teardown wait for that release; teardown, which also removes the workspace\'s files, is listed separately).');
  console.log('  Tetrix also does what crun here does not: an overlay rootfs per workspace, cgroups with limits (crun runs');
  console.log('  with --cgroup-manager=disabled), a uid range claim, a persisted record, its own init as PID 1, and gRPC.');
  console.log(`  load average at the start: ${loadAtStart}; at the end: ${loadAverage()} (${os.cpus().length} cpus)`);
  const noneRpc = median(get('tetrix NONE: StartWorkspace RPC'));
  const noneStopped = median(get('tetrix NONE: start until STOPPED seen (watch)'));
  const crunSeccomp = median(get('crun run, default.json as OCI seccomp'));
  if (Number.isNaN(noneRpc) || Number.isNaN(noneStopped) || Number.isNaN(crunSeccomp)) throw new Error('no ratio: tetrix NONE or crun has no successful run');
  console.log(`start ratio, RPC only, tetrix/crun: ${(noneRpc / crunSeccomp).toFixed(2)}`);
  if (!isolatedWhyNot) {
    const overhead = median(get('tetrix ISOLATED: StartWorkspace RPC')) - noneRpc;
    console.log(`network overhead: ${overhead.toFixed(2)} ms`);
  }
  // The headline, last: start until STOPPED seen against crun's whole run, both end to end.
  console.log(`start-to-exit ratio tetrix/crun: ${(noneStopped / crunSeccomp).toFixed(2)}`);
}

if (require.main === module) {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      console.error(`\n${sig}: cleaning up`);
      void cleanUp().finally(() => process.exit(130));
    });
  }
  main()
    .catch((err: unknown) => {
      console.error(`bench/start failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
      process.exitCode = 1;
    })
    .finally(() => cleanUp());
}
