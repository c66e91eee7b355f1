// A workspace's output pipes (native/output.c): init keeps a read end of each, so the daemon's own can go
// away (a restart, kill -9) without the workload meeting SIGPIPE or losing what it wrote, and the next
// daemon takes the pipe back from init. Nothing but an anonymous pipe is ever handed back.
import t from 'tap';
import { spawn as spawnChild } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { native } from '../../src/native';
import { makeRootfs, run, workspaceOptions } from './fixture';

const { STDOUT_READ_FD, STDERR_READ_FD } = native.constants;

function readToEnd(fd: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = new net.Socket({ fd, readable: true, writable: false });
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (text += chunk));
    socket.on('end', () => resolve(text));
    socket.on('error', reject);
  });
}

t.test('with every daemon-side read end closed, the workload writes on and a new reader gets it all from init', async (t) => {
  const rootfs = makeRootfs(t);
  const out = native.outputPipe(64 * 1024);
  const err = native.outputPipe(0);
  const ws = workspaceOptions(t, rootfs, ['sh', '-c', 'echo before; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo after; echo oops >&2; ls /proc/self/fd'], {
    stdoutFd: out.writeFd,
    stderrFd: err.writeFd,
    outputReadFds: [out.keepFd, err.keepFd],
  });
  const running = await run(t, ws);
  // The "daemon" goes away: nothing outside the workspace holds a read end any more.
  for (const fd of [out.readFd, out.writeFd, out.keepFd, err.readFd, err.writeFd, err.keepFd]) native.closeFd(fd);
  fs.writeFileSync(path.join(rootfs, 'tmp', 'go'), '');

  const taken = [native.takeOutputPipe(running.result.pidfd, STDOUT_READ_FD), native.takeOutputPipe(running.result.pidfd, STDERR_READ_FD)];
  const [stdout, stderr] = await Promise.all(taken.map(readToEnd));
  const exit = await running.exited;
  t.same(exit, { exitCode: 0, signal: null, reaped: true }, 'the workload ended normally (no SIGPIPE)');
  t.match(stdout, /^before\nafter\n/, 'what it wrote before and after the readers went is all there');
  t.equal(stderr, 'oops\n', 'stderr too');
  t.same(stdout.replace(/^before\nafter\n/, '').split('\n').filter(Boolean).filter((fd) => Number(fd) > 3), [], 'the workload holds none of the read ends (only 0-2 and ls\'s own)');
});

t.test('takeOutputPipe hands back nothing but a pipe', async (t) => {
  const child = spawnChild('/bin/sleep', ['30'], { stdio: ['ignore', 'ignore', 'ignore'] });
  t.teardown(() => child.kill('SIGKILL'));
  const pidfd = native.pidfdOpen(child.pid!);
  t.teardown(() => native.closeFd(pidfd));
  t.throws(() => native.takeOutputPipe(pidfd, 0), { name: 'NativeError', step: 'take output pipe: fd 0 is not a pipe', code: 'EBADF' }, '/dev/null is refused');
  t.throws(() => native.takeOutputPipe(pidfd, 9), { name: 'NativeError', step: 'take output pipe: pidfd_getfd fd 9', code: 'EBADF' }, 'a closed fd names the fd');
  t.throws(() => native.takeOutputPipe(pidfd, -1), TypeError);
});

t.test('spawn refuses outputReadFds that are not two fds', async (t) => {
  const rootfs = makeRootfs(t);
  for (const bad of [[3], [3, -1], ['x', 4]]) {
    const ws = workspaceOptions(t, rootfs, ['true'], { outputReadFds: bad as unknown as [number, number] });
    t.throws(() => native.spawn(ws.options), { name: 'TypeError', message: 'spawn: opts.outputReadFds must be two file descriptors' }, JSON.stringify(bad));
  }
});

t.test('outputPipe refuses a capacity the kernel will not give', async (t) => {
  t.throws(() => native.outputPipe(0xffffffff), { name: 'NativeError', step: 'output pipe: F_SETPIPE_SZ' });
  t.throws(() => native.outputPipe(-1), TypeError);
});
