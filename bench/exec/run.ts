// Exec latency and terminal costs. Not a test: run by hand (bench/exec/run.sh). See bench/README.md.
//   tetrix ExecWorkspace /bin/true   the first message sent -> the exit message received, over the unix
//                                    socket, into a running builtin:busybox workspace (default seccomp).
//   crun exec /bin/true              crun forked -> crun exited, into a running crun container of the same
//                                    busybox tree with the same namespaces, capabilities and seccomp profile
//                                    (bench/start's OCI conversion).
// The two run interleaved, round-robin, so they share the machine's noise. Then: keystroke echo through a
// pty session (a byte sent -> the same byte back, echoed by the workspace's pty), and the daemon's memory
// for 50 concurrent terminal sessions.
// Environment: BENCH_RUNS (default 50), BENCH_WARMUP (default 3), BENCH_KEYS (default 500), BENCH_SESSIONS (50).
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { connect, type Clients } from '../../src/cli/client';
import type { ExecInput } from '../../src/generated/tetrix/agent/v1/ExecInput';
import type { ExecOutput__Output } from '../../src/generated/tetrix/agent/v1/ExecOutput';
import { DEFAULT_CAPABILITIES } from '../../src/sandbox/capabilities';
import { launchDaemon, runName, type BenchDaemon } from '../lib/launcher';
import { ociConfig, ociSeccomp } from '../start/run';

const int = (name: string, fallback: number): number => {
  const v = Number(process.env[name] ?? fallback);
  if (!Number.isInteger(v) || v < 0) throw new Error(`${name} must be a whole number`);
  return v;
};
const runs = int('BENCH_RUNS', 50);
const warmup = int('BENCH_WARMUP', 3);
const keys = int('BENCH_KEYS', 500);
const sessionCount = int('BENCH_SESSIONS', 50);
const now = (): number => Number(process.hrtime.bigint()) / 1e6;
const cleanups: Array<() => unknown> = [];

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  return s[lo]! + (s[Math.min(lo + 1, s.length - 1)]! - s[lo]!) * (pos - lo);
}

function row(name: string, xs: number[]): string {
  const f = (n: number): string => n.toFixed(2).padStart(9);
  return `${name.padEnd(44)}${f(quantile(xs, 0.5))}${f(quantile(xs, 0.9))}${f(quantile(xs, 0.99))}${f(Math.min(...xs))}${f(Math.max(...xs))}`;
}

/** One ExecWorkspace call; resolves on its end. */
function execOnce(c: Clients, first: ExecInput, onData?: (m: ExecOutput__Output) => void): { call: ReturnType<Clients['exec']['ExecWorkspace']>; done: Promise<void> } {
  const call = c.exec.ExecWorkspace();
  const done = new Promise<void>((resolve, reject) => {
    call.on('data', (m: ExecOutput__Output) => onData?.(m));
    call.on('error', reject);
    call.on('end', () => resolve());
  });
  call.write(first);
  return { call, done };
}

async function tetrixTrue(c: Clients, id: string): Promise<number> {
  const t0 = now();
  let exit: ExecOutput__Output['exit'];
  const { call, done } = execOnce(c, { start: { workspaceId: id, argv: ['/bin/true'] } }, (m) => (exit = m.exit ?? exit));
  call.end();
  await done;
  if (exit?.exitCode !== 0) throw new Error(`exec /bin/true: ${JSON.stringify(exit)}`);
  return now() - t0;
}

// crun 1.8.1 refuses this cgroup v1 hybrid host, so (as bench/start does) it runs in a private mount
// namespace with cgroup2 over /sys/fs/cgroup. One shell holds the namespace: it starts the container once,
// then runs one `crun exec` per request line.
const CRUN_DRIVER = `
umount -R /sys/fs/cgroup 2>/dev/null
mount -t cgroup2 none /sys/fs/cgroup || exit 97
crun --root "$CRUN_ROOT" --cgroup-manager=disabled run -d --bundle "$BUNDLE" "$CID" </dev/null >>"$CRUN_LOG" 2>&1 || exit 98
echo ready
while read -r cmd; do
  crun --root "$CRUN_ROOT" exec "$CID" /bin/true </dev/null >>"$CRUN_LOG" 2>&1
  echo "done $?"
done
crun --root "$CRUN_ROOT" kill "$CID" KILL >/dev/null 2>&1
sleep 0.2
crun --root "$CRUN_ROOT" --cgroup-manager=disabled delete -f "$CID" >/dev/null 2>&1
`;

class CrunExec {
  private readonly child: ChildProcess;
  private readonly lines: string[] = [];
  private wake: (() => void) | undefined;

  constructor(root: string, bundle: string, log: string, id: string) {
    this.child = spawn('unshare', ['-m', '--propagation', 'private', 'sh', '-c', CRUN_DRIVER], {
      stdio: ['pipe', 'pipe', 'inherit'],
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', CRUN_ROOT: root, BUNDLE: bundle, CRUN_LOG: log, CID: id },
    });
    readline.createInterface({ input: this.child.stdout! }).on('line', (l) => {
      this.lines.push(l);
      this.wake?.();
    });
    this.child.once('exit', () => this.wake?.());
  }

  private async line(): Promise<string> {
    while (this.lines.length === 0) {
      if (this.child.exitCode !== null) throw new Error(`crun driver exited with ${this.child.exitCode}`);
      await new Promise<void>((r) => (this.wake = r));
    }
    return this.lines.shift()!;
  }

  async ready(): Promise<void> {
    const l = await this.line();
    if (l !== 'ready') throw new Error(`crun driver: ${l}`);
  }

  async exec(): Promise<number> {
    const t0 = now();
    this.child.stdin!.write('exec\n');
    const reply = await this.line();
    if (reply !== 'done 0') throw new Error(`crun exec: ${reply}`);
    return now() - t0;
  }

  close(): Promise<void> {
    if (this.child.exitCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      this.child.once('exit', () => resolve());
      this.child.stdin!.end();
    });
  }
}

function crunBundle(dir: string, image: string, root: string): string {
  fs.mkdirSync(dir, { recursive: true, mode: 0o711 });
  const rootfs = path.join(dir, 'rootfs');
  execFileSync('cp', ['-a', image, rootfs]);
  const profile = JSON.parse(fs.readFileSync(path.join(root, 'profiles', 'seccomp', 'default.json'), 'utf8')) as Parameters<typeof ociSeccomp>[0];
  const config = ociConfig(rootfs, ociSeccomp(profile, DEFAULT_CAPABILITIES)) as { process: { args: string[] } };
  config.process.args = ['/bin/sleep', '3600'];
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
  return dir;
}

/** Keystroke echo: one byte to a `cat` on a pty, timed until the pty's echo of it comes back. */
async function echoLatencies(c: Clients, id: string): Promise<number[]> {
  let pending: ((b: Buffer) => void) | undefined;
  let ready!: () => void;
  const started = new Promise<void>((r) => (ready = r));
  const { call, done } = execOnce(c, { start: { workspaceId: id, argv: ['/bin/sh', '-c', 'echo ready; exec cat >/dev/null'], tty: true } }, (m) => {
    if (!m.stdout) return;
    if (m.stdout.includes('ready')) ready();
    pending?.(m.stdout);
  });
  await started;
  const times: number[] = [];
  for (let i = 0; i < keys; i++) {
    const key = String.fromCharCode(97 + (i % 26));
    const t0 = now();
    await new Promise<void>((resolve) => {
      pending = (b) => {
        if (b.includes(key)) resolve();
      };
      call.write({ stdin: Buffer.from(key) });
    });
    times.push(now() - t0);
  }
  pending = undefined;
  call.write({ stdin: Buffer.from([0x04, 0x04]) }); // EOF for cat
  await done;
  return times;
}

/** The daemon's RSS with n interactive shells attached, each having printed a prompt. */
async function sessionMemory(d: BenchDaemon, c: Clients, id: string, n: number): Promise<{ before: number; after: number }> {
  const settle = async (): Promise<number> => {
    await new Promise((r) => setTimeout(r, 1500));
    return d.rssBytes();
  };
  const before = await settle();
  const open: Array<ReturnType<typeof execOnce>> = [];
  for (let i = 0; i < n; i++) {
    let up!: () => void;
    const prompt = new Promise<void>((r) => (up = r));
    const s = execOnce(c, { start: { workspaceId: id, argv: ['/bin/sh', '-i'], tty: true, session: true } }, (m) => {
      if (m.stdout && m.stdout.length > 0) up();
    });
    open.push(s);
    await prompt;
  }
  const after = await settle();
  for (const s of open) s.call.write({ stdin: Buffer.from('exit\n') });
  await Promise.all(open.map((s) => s.done.catch(() => undefined)));
  return { before, after };
}

async function main(): Promise<void> {
  const root = path.resolve(__dirname, '..', '..', '..');
  const load0 = os.loadavg().map((l) => l.toFixed(2)).join(' ');
  const d = await launchDaemon({ prefix: 'tetrix-bench-exec', extraArgs: ['--network', 'off', '--pty-limit', String(sessionCount + 8)] });
  cleanups.push(() => d.shutdown());
  const c = connect({ socketPath: d.socketPath });
  cleanups.push(() => c.close());
  const id = runName('bench-exec');
  const w = await d.start({ id, ownerId: 'bench', image: 'builtin:busybox', command: ['/bin/sleep', '3600'], resources: { memoryBytes: 1 << 30, cpuMillis: 2000, pids: 4096 } });
  if (w.state !== 'WORKSPACE_STATE_RUNNING') throw new Error(`workspace: ${w.state} ${w.message}`);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-bench-exec-crun-'));
  fs.chmodSync(dir, 0o711);
  cleanups.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  const bundle = crunBundle(path.join(dir, 'bundle'), path.join(d.stateDir, 'images', 'busybox'), root);
  const crun = new CrunExec(path.join(dir, 'crun-state'), bundle, path.join(dir, 'crun.log'), runName('tetrix-bench-exec'));
  cleanups.push(() => crun.close());
  await crun.ready();

  const tetrix: number[] = [];
  const crunTimes: number[] = [];
  for (let round = 0; round < warmup + runs; round++) {
    const pair = round % 2 === 0 ? [() => tetrixTrue(c, id), () => crun.exec()] : [() => crun.exec(), () => tetrixTrue(c, id)];
    const [a, b] = [await pair[0]!(), await pair[1]!()];
    if (round < warmup) continue;
    tetrix.push(round % 2 === 0 ? a : b);
    crunTimes.push(round % 2 === 0 ? b : a);
  }
  const echo = await echoLatencies(c, id);
  const mem = await sessionMemory(d, c, id, sessionCount);

  const crunVersion = execFileSync('crun', ['--version'], { encoding: 'utf8' }).split('\n')[0];
  console.log(`bench/exec: ${runs} runs per candidate (+${warmup} warm-up discarded), interleaved; ${keys} keystrokes; ${sessionCount} sessions`);
  console.log(`kernel ${os.release()}, ${os.cpus().length} cpus, ${crunVersion}, node ${process.version}`);
  console.log(`${'candidate'.padEnd(44)}${'median'.padStart(9)}${'p90'.padStart(9)}${'p99'.padStart(9)}${'min'.padStart(9)}${'max'.padStart(9)}   (ms)`);
  console.log(row('tetrix ExecWorkspace /bin/true', tetrix));
  console.log(row('crun exec /bin/true (default.json seccomp)', crunTimes));
  console.log(row('keystroke echo through a pty session', echo));
  console.log(`exec ratio tetrix/crun: ${(quantile(tetrix, 0.5) / quantile(crunTimes, 0.5)).toFixed(2)}`);
  console.log(`keystroke echo p50 ${quantile(echo, 0.5).toFixed(2)} ms, p99 ${quantile(echo, 0.99).toFixed(2)} ms`);
  console.log(`daemon memory per terminal session: ${((mem.after - mem.before) / sessionCount / 1024).toFixed(0)} KiB (RSS ${(mem.before / 2 ** 20).toFixed(1)} -> ${(mem.after / 2 ** 20).toFixed(1)} MiB with ${sessionCount} sessions)`);
  console.log(`load average at the start: ${load0}; at the end: ${os.loadavg().map((l) => l.toFixed(2)).join(' ')}`);
}

async function cleanUp(): Promise<void> {
  for (const f of cleanups.reverse().splice(0)) {
    try {
      await f();
    } catch (err) {
      console.error(`cleanup: ${(err as Error).message}`);
    }
  }
}

if (require.main === module) {
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => void cleanUp().finally(() => process.exit(130)));
  main()
    .catch((err: unknown) => {
      console.error(`bench/exec failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
      process.exitCode = 1;
    })
    .finally(() => cleanUp());
}

