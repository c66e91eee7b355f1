// A throwaway busybox rootfs and a way to run one workspace in it, for the addon's tests.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import type { Test } from 'tap';
import { native, initBinaryPath, type ExitStatus, type SpawnOptions, type SpawnResult } from '../../src/native';
import { capabilityNumbers, DEFAULT_CAPABILITIES } from '../../src/sandbox/capabilities';

const APPLETS = [
  'sh', 'id', 'ps', 'ip', 'hostname', 'cat', 'ls', 'sleep', 'echo', 'mkdir', 'touch', 'grep', 'wc', 'head',
  'tr', 'kill', 'mount', 'test', 'readlink', 'stat', 'true', 'false',
];

export const uniqueName = (what: string): string => `tetrix-${what}-${process.pid}-${crypto.randomBytes(3).toString('hex')}`;

/** A fresh uid/gid base for one test file: 200000 + k * 65536, never host 0. */
export function testIdBase(): number {
  return 200000 + Math.floor(Math.random() * 1000) * 65536;
}

/** rootfs with busybox, the usual directories, mode 0755 so the mapped root can walk it. */
export function makeRootfs(t: Test, opts: { omit?: string[] } = {}): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${uniqueName('rootfs')}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.chmodSync(dir, 0o755);
  for (const d of ['bin', 'proc', 'sys', 'dev', 'tmp', 'etc', 'workspace']) {
    if (!opts.omit?.includes(d)) fs.mkdirSync(path.join(dir, d), { mode: 0o755 });
  }
  if (!opts.omit?.includes('bin')) {
    fs.copyFileSync('/bin/busybox', path.join(dir, 'bin', 'busybox'));
    fs.chmodSync(path.join(dir, 'bin', 'busybox'), 0o755);
    for (const applet of APPLETS) fs.symlinkSync('busybox', path.join(dir, 'bin', applet));
  }
  return dir;
}

/** A host directory the test owns (for bind mounts and output files). */
export function makeHostDir(t: Test, what: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `${uniqueName(what)}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.chmodSync(dir, 0o755);
  return dir;
}

export interface Running {
  result: SpawnResult;
  exited: Promise<ExitStatus>;
  /** Everything the workload wrote to stdout and stderr so far. */
  output(): string;
  /** What init wrote to the status fd so far. */
  status(): string;
  /** Resolves once the output contains text (the workload saying it is ready). */
  waitForOutput(text: string): Promise<void>;
}

export interface Workspace {
  options: SpawnOptions;
  output(): string;
  status(): string;
  /** Closes the test's fds (spawn has its own copies by then). */
  close(): void;
}

/** Options for a workspace in rootfs, with output and status files the test can read. */
export function workspaceOptions(t: Test, rootfs: string, argv: string[], extra: Partial<SpawnOptions> = {}): Workspace {
  const files = makeHostDir(t, 'files');
  const outPath = path.join(files, 'output');
  const statusPath = path.join(files, 'status');
  const out = fs.openSync(outPath, 'w');
  const status = fs.openSync(statusPath, 'w');
  let closed = false;
  const close = (): void => {
    if (closed) return;
    closed = true;
    fs.closeSync(out);
    fs.closeSync(status);
  };
  t.teardown(close);
  const base = extra.uidBase ?? testIdBase();
  return {
    options: {
      rootfs,
      initPath: initBinaryPath,
      argv,
      env: ['PATH=/bin', 'HOME=/'],
      cwd: '/',
      hostname: 'tetrix-test',
      uidBase: base,
      gidBase: base,
      idCount: 65536,
      cgroupTasks: [],
      cgroupDir: '',
      stdoutFd: out,
      stderrFd: out,
      statusFd: status,
      mounts: [],
      ptyLimit: 64,
      capabilities: capabilityNumbers(DEFAULT_CAPABILITIES), // the product's set, from its one source
      ...extra,
    },
    output: () => fs.readFileSync(outPath, 'utf8'),
    status: () => fs.readFileSync(statusPath, 'utf8'),
    close,
  };
}

/** Spawns, watches the exit, and makes sure the workspace is gone when the test ends. */
export async function run(t: Test, ws: Workspace): Promise<Running> {
  const result = await native.spawn(ws.options);
  ws.close();
  let ended = false;
  const exited = new Promise<ExitStatus>((resolve) => {
    native.watchExit(result.pidfd, (status) => {
      ended = true;
      native.closeFd(result.pidfd);
      resolve(status);
    });
  });
  t.teardown(async () => {
    if (!ended) native.pidfdSendSignal(result.pidfd, native.constants.SIGKILL);
    await exited;
  });
  const waitForOutput = async (text: string): Promise<void> => {
    while (!ws.output().includes(text)) {
      if (ended) throw new Error(`workload ended before printing ${JSON.stringify(text)}: ${ws.output()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  return { result, exited, output: ws.output, status: ws.status, waitForOutput };
}

/** Runs a shell script to completion and returns what it printed. */
export async function runScript(t: Test, rootfs: string, script: string, extra: Partial<SpawnOptions> = {}): Promise<{ output: string; exit: ExitStatus; status: string; result: SpawnResult }> {
  const ws = workspaceOptions(t, rootfs, ['sh', '-c', script], extra);
  const running = await run(t, ws);
  const exit = await running.exited;
  return { output: running.output(), exit, status: running.status(), result: running.result };
}

export const openFds = (): string[] => fs.readdirSync('/proc/self/fd').sort();

/** Pids of every live or zombie child of this process, across all its threads. */
export function childPids(): number[] {
  const pids: number[] = [];
  for (const tid of fs.readdirSync('/proc/self/task')) {
    const text = fs.readFileSync(`/proc/self/task/${tid}/children`, 'utf8').trim();
    if (text) pids.push(...text.split(/\s+/).map(Number));
  }
  return pids;
}
