// How a workspace ends reaches the daemon twice: through watchExit on its pidfd and through the line
// init writes to the status fd. Signals sent to it reach the workload; a workload that ignores them
// can still be killed. None of this blocks the event loop or leaks an fd.
import t from 'tap';
import { spawn as spawnChild } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { native, NativeError, type ExitStatus } from '../../src/native';
import { makeHostDir, makeRootfs, openFds, run, runScript, testIdBase, workspaceOptions } from './fixture';

const { SIGKILL, SIGTERM, SIGUSR1 } = native.constants;

t.test('an exit code comes back through watchExit and the status fd', async (t) => {
  const rootfs = makeRootfs(t);
  const { exit, status } = await runScript(t, rootfs, 'exit 7');
  t.same(exit, { exitCode: 7, signal: null, reaped: true });
  t.equal(status, 'exited 7\n');
});

t.test('a workload killed by a signal: init says which, and exits 128 + signal', async (t) => {
  const rootfs = makeRootfs(t);
  const { exit, status } = await runScript(t, rootfs, 'kill -9 $$');
  t.equal(status, 'signaled 9\n');
  t.same(exit, { exitCode: 137, signal: null, reaped: true });
});

t.test('SIGTERM and SIGUSR1 sent to the workspace reach the workload', async (t) => {
  const rootfs = makeRootfs(t);
  const script = 'trap "echo got-usr1" USR1; trap "echo got-term; exit 42" TERM; echo ready; while :; do sleep 0.05; done';
  const running = await run(t, workspaceOptions(t, rootfs, ['sh', '-c', script]));
  await running.waitForOutput('ready');
  native.pidfdSendSignal(running.result.pidfd, SIGUSR1);
  await running.waitForOutput('got-usr1');
  native.pidfdSendSignal(running.result.pidfd, SIGTERM);
  t.same(await running.exited, { exitCode: 42, signal: null, reaped: true });
  t.match(running.output(), /got-term/);
  t.equal(running.status(), 'exited 42\n');
});

t.test('a workload that ignores SIGTERM is SIGKILLed after a grace period', async (t) => {
  const rootfs = makeRootfs(t);
  const running = await run(t, workspaceOptions(t, rootfs, ['sh', '-c', 'trap "" TERM; echo ready; while :; do sleep 0.05; done']));
  await running.waitForOutput('ready');
  native.pidfdSendSignal(running.result.pidfd, SIGTERM);
  const graceOver = new Promise<'grace over'>((resolve) => setTimeout(() => resolve('grace over'), 300));
  const first = await Promise.race([running.exited, graceOver]);
  t.equal(first, 'grace over', 'still running after SIGTERM');
  native.pidfdSendSignal(running.result.pidfd, SIGKILL);
  t.same(await running.exited, { exitCode: null, signal: 'SIGKILL', reaped: true });
  t.equal(running.status(), '', 'init was killed before it could write');
});

t.test('watchExit does not block the event loop', async (t) => {
  const rootfs = makeRootfs(t);
  const shared = makeHostDir(t, 'shared');
  const base = testIdBase();
  fs.chownSync(shared, base, base);
  // The workload waits for a file that only a timer of ours creates.
  const ws = workspaceOptions(t, rootfs, ['sh', '-c', 'while ! test -e /workspace/go; do sleep 0.02; done; exit 3'], {
    uidBase: base,
    gidBase: base,
    mounts: [{ source: shared, target: '/workspace', readonly: false }],
  });
  const running = await run(t, ws);
  let ticks = 0;
  const timer = setInterval(() => {
    if (++ticks === 3) fs.writeFileSync(path.join(shared, 'go'), '');
  }, 10);
  const exit = await running.exited;
  clearInterval(timer);
  t.ok(ticks >= 3, 'the timer kept firing while the exit was watched');
  t.equal(exit.exitCode, 3);
});

t.test('spawning and ending workspaces leaks no fd', async (t) => {
  const rootfs = makeRootfs(t);
  await runScript(t, rootfs, 'true');  // warm up anything lazily opened
  const before = openFds();
  for (let i = 0; i < 3; i++) await runScript(t, rootfs, `exit ${i}`);
  t.same(openFds(), before);
});

t.test('pidfds', async (t) => {
  t.test('pidfdOpen of a gone process is ESRCH', async (t) => {
    const child = spawnChild('true');
    const pid = child.pid!;
    await new Promise((r) => child.on('exit', r));
    t.throws(() => native.pidfdOpen(pid), { name: 'NativeError', step: 'pidfd_open', code: 'ESRCH' });
  });

  t.test('a process that is not our child ends with reaped: false', async (t) => {
    // sh starts sleep in the background and exits: sleep is adopted by someone else.
    const child = spawnChild('sh', ['-c', 'sleep 0.2 & echo $!'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let text = '';
    child.stdout.on('data', (d: Buffer) => (text += d));
    await new Promise((r) => child.on('exit', r));
    const pidfd = native.pidfdOpen(Number(text.trim()));
    const status = await new Promise<ExitStatus>((resolve) => native.watchExit(pidfd, resolve));
    native.closeFd(pidfd);
    t.same(status, { exitCode: null, signal: null, reaped: false });
  });

  t.test('the caller may close its pidfd right after watchExit', async (t) => {
    const rootfs = makeRootfs(t);
    const ws = workspaceOptions(t, rootfs, ['sh', '-c', 'exit 5']);
    const result = await native.spawn(ws.options);
    ws.close();
    const before = openFds();
    const status = new Promise<ExitStatus>((resolve) => native.watchExit(result.pidfd, resolve));
    native.closeFd(result.pidfd);
    t.same(await status, { exitCode: 5, signal: null, reaped: true });
    t.same(openFds(), before.filter((fd) => fd !== String(result.pidfd)));
  });

  t.test('watchExit refuses an fd that is not a pidfd', async (t) => {
    const fd = fs.openSync('/dev/null', 'r');
    t.teardown(() => fs.closeSync(fd));
    t.throws(() => native.watchExit(fd, () => undefined), { name: 'NativeError', step: 'watchExit', code: 'EBADF' });
  });

  t.test('errors are NativeErrors with step, errno and code', async (t) => {
    const err = (() => {
      try {
        native.pidfdSendSignal(-1, SIGTERM);
      } catch (e) {
        return e;
      }
    })();
    t.ok(err instanceof NativeError);
    t.match(err, { step: 'pidfd_send_signal', code: 'EBADF', errno: 9, message: 'pidfd_send_signal: EBADF' });
  });
});
