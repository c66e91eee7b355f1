// With holdWorkload, a workspace's init waits at a gate before it starts the workload: whatever the daemon
// sets up in between (the network, files) is already there at the workload's first instruction. Opening
// the gate reports the workload's execve as spawn does; closing it instead ends init at once, with no
// status written and nothing left behind.
import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { native, NativeError, type ExitStatus, type HeldSpawnResult } from '../../src/native';
import { childPids, makeHostDir, makeRootfs, openFds, testIdBase, workspaceOptions, type Workspace } from './fixture';

const { SIGKILL } = native.constants;

interface Held {
  result: HeldSpawnResult;
  exited: Promise<ExitStatus>;
  /** releaseWorkload, marking the held fds as handed over. */
  release(): Promise<void>;
  /** Closes both held fds without a byte. */
  abandon(): void;
}

/** Spawns held, watches the exit, and makes sure the workspace and its fds are gone when the test ends. */
async function spawnHeld(t: Test, ws: Workspace): Promise<Held> {
  const result = await native.spawn({ ...ws.options, holdWorkload: true });
  ws.close();
  let ended = false;
  let fdsOwned = true;
  const exited = new Promise<ExitStatus>((resolve) => {
    native.watchExit(result.pidfd, (status) => {
      ended = true;
      native.closeFd(result.pidfd);
      resolve(status);
    });
  });
  const abandon = (): void => {
    if (!fdsOwned) return;
    fdsOwned = false;
    native.closeFd(result.held.gateFd);
    native.closeFd(result.held.reportFd);
  };
  t.teardown(async () => {
    if (!ended) native.pidfdSendSignal(result.pidfd, SIGKILL);
    abandon();
    await exited;
  });
  const release = (): Promise<void> => {
    fdsOwned = false;
    return native.releaseWorkload(result.held);
  };
  return { result, exited, release, abandon };
}

/** Host pids of init's children: none while the workload is held. */
const initChildren = (pid: number): string => fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();

/** A writable /workspace bound from a host directory the test can look into. */
function workspaceDir(t: Test, base: number): string {
  const dir = makeHostDir(t, 'gate');
  fs.chownSync(dir, base, base);
  return dir;
}

t.test('a held workload has not started until it is released', async (t) => {
  const before = openFds();
  const rootfs = makeRootfs(t);
  const base = testIdBase();
  const dir = workspaceDir(t, base);
  const ws = workspaceOptions(t, rootfs, ['sh', '-c', 'touch /workspace/started; cat /workspace/note'], {
    uidBase: base,
    gidBase: base,
    mounts: [{ source: dir, target: '/workspace', readonly: false }],
  });
  const held = await spawnHeld(t, ws);

  t.ok(held.result.pid > 0 && held.result.pidfd >= 0, 'init runs');
  t.equal(initChildren(held.result.pid), '', 'init has not forked the workload');
  t.notOk(fs.existsSync(path.join(dir, 'started')), 'the workload did not run');
  t.match(fs.readFileSync(`/proc/${held.result.pid}/cmdline`, 'utf8'), /^init\0--hold\0--\0sh\0/);

  fs.writeFileSync(path.join(dir, 'note'), 'written while held\n');
  await held.release();
  t.same(await held.exited, { exitCode: 0, signal: null, reaped: true });
  t.ok(fs.existsSync(path.join(dir, 'started')), 'the workload ran after release');
  t.equal(ws.output(), 'written while held\n', 'and read what was written before it started');
  t.equal(ws.status(), 'exited 0\n');
  t.same(childPids(), [], 'init was reaped');
  t.same(openFds(), before, 'no fd leaked');
});

t.test('network set up while held is there at the workload\'s first instruction', async (t) => {
  const rootfs = makeRootfs(t);
  const ws = workspaceOptions(t, rootfs, ['ip', '-o', 'addr']);
  const held = await spawnHeld(t, ws);
  // The links live in the workspace's own netns and go with it.
  const inNetns = (...args: string[]): void => {
    execFileSync('nsenter', ['-t', String(held.result.pid), '-n', 'ip', ...args]);
  };
  inNetns('link', 'set', 'lo', 'up');
  inNetns('link', 'add', 'tetrix-gate0', 'type', 'veth', 'peer', 'name', 'tetrix-gate1');
  inNetns('addr', 'add', '10.203.0.1/24', 'dev', 'tetrix-gate0');

  await held.release();
  t.same(await held.exited, { exitCode: 0, signal: null, reaped: true });
  t.match(ws.output(), /^\d+: lo\s+inet 127\.0\.0\.1\/8 /m, 'lo is up');
  t.match(ws.output(), /^\d+: tetrix-gate0\s+inet 10\.203\.0\.1\/24 /m, 'the attached link and its address');
});

t.test('a workload that cannot be exec\'d: releaseWorkload rejects with the step and errno', async (t) => {
  const before = openFds();
  const rootfs = makeRootfs(t);
  const ws = workspaceOptions(t, rootfs, ['/bin/not-there']);
  const held = await spawnHeld(t, ws);
  const err = await held.release().then(() => null, (e: unknown) => e);
  t.ok(err instanceof NativeError, 'a NativeError');
  t.match(err, { step: 'execve', code: 'ENOENT', errno: 2, message: 'execve: ENOENT' });
  t.same(await held.exited, { exitCode: 127, signal: null, reaped: true }, 'init ends by itself');
  t.same(childPids(), [], 'init was reaped');
  t.same(openFds(), before, 'releaseWorkload closed both held fds');
});

t.test('abandoned: a gate closed without a byte ends init at once, with no status and nothing left', async (t) => {
  const before = openFds();
  const rootfs = makeRootfs(t);
  const base = testIdBase();
  const dir = workspaceDir(t, base);
  const ws = workspaceOptions(t, rootfs, ['touch', '/workspace/started'], {
    uidBase: base,
    gidBase: base,
    mounts: [{ source: dir, target: '/workspace', readonly: false }],
  });
  const held = await spawnHeld(t, ws);
  held.abandon();
  t.same(await held.exited, { exitCode: native.constants.INIT_EXIT_ABANDONED, signal: null, reaped: true });
  t.equal(native.constants.INIT_EXIT_ABANDONED, 125);
  t.equal(ws.status(), '', 'no status: no workload ran');
  t.notOk(fs.existsSync(path.join(dir, 'started')), 'the workload never ran');
  t.same(childPids(), [], 'init was reaped');
  t.same(openFds(), before, 'no fd leaked');
});

t.test('abandoned after a failed setup: SIGKILL and close, as the daemon would', async (t) => {
  const before = openFds();
  const rootfs = makeRootfs(t);
  const ws = workspaceOptions(t, rootfs, ['true']);
  const held = await spawnHeld(t, ws);
  native.pidfdSendSignal(held.result.pidfd, SIGKILL);
  held.abandon();
  t.same(await held.exited, { exitCode: null, signal: 'SIGKILL', reaped: true });
  t.equal(ws.status(), '');
  t.same(childPids(), [], 'init was reaped');
  t.same(openFds(), before, 'no fd leaked');
});

t.test('releasing an init that is already gone rejects, and still closes both fds', async (t) => {
  const before = openFds();
  const rootfs = makeRootfs(t);
  const ws = workspaceOptions(t, rootfs, ['true']);
  const held = await spawnHeld(t, ws);
  native.pidfdSendSignal(held.result.pidfd, SIGKILL);
  await held.exited;
  await t.rejects(held.release(), { name: 'NativeError', message: 'release workload: EPIPE' });
  t.same(openFds(), before, 'no fd leaked');
});

t.test('held fds belong to the caller and are close-on-exec; without holdWorkload there are none', async (t) => {
  const rootfs = makeRootfs(t);
  const ws = workspaceOptions(t, rootfs, ['true']);
  const held = await spawnHeld(t, ws);
  const O_CLOEXEC = 0o2000000;
  for (const fd of [held.result.held.gateFd, held.result.held.reportFd]) {
    const flags = /^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    t.ok(flags && (parseInt(flags[1], 8) & O_CLOEXEC) !== 0, `fd ${fd} is close-on-exec`);
  }
  await held.release();
  t.equal((await held.exited).exitCode, 0);

  const plain = workspaceOptions(t, rootfs, ['true']);
  const result = await native.spawn(plain.options);
  plain.close();
  t.equal(result.held, undefined, 'no held fds without holdWorkload');
  const exit = await new Promise<ExitStatus>((resolve) => native.watchExit(result.pidfd, resolve));
  native.closeFd(result.pidfd);
  t.equal(exit.exitCode, 0);
});

t.test('several held workspaces, released in any order', async (t) => {
  const before = openFds();
  const rootfs = makeRootfs(t);
  const workspaces = [1, 2, 3].map((i) => workspaceOptions(t, rootfs, ['sh', '-c', `echo "ws ${i}"; exit ${i}`]));
  const held = await Promise.all(workspaces.map((ws) => spawnHeld(t, ws)));
  for (const h of held) t.equal(initChildren(h.result.pid), '', 'held');
  await Promise.all([...held].reverse().map((h) => h.release()));
  const exits = await Promise.all(held.map((h) => h.exited));
  exits.forEach((exit, i) => {
    t.equal(exit.exitCode, i + 1);
    t.equal(workspaces[i].output(), `ws ${i + 1}\n`);
  });
  t.same(childPids(), []);
  t.same(openFds(), before, 'no fd leaked');
});

t.test('bad arguments are refused before anything happens', async (t) => {
  const rootfs = makeRootfs(t);
  const ws = workspaceOptions(t, rootfs, ['true']);
  t.throws(() => native.spawn({ ...ws.options, holdWorkload: 'yes' as unknown as boolean }), TypeError);
  t.throws(() => native.releaseWorkload({ gateFd: -1, reportFd: 0 }), TypeError);
  t.throws(() => native.releaseWorkload(null as unknown as { gateFd: number; reportFd: number }), TypeError);
});
