// A workspace's life through the real daemon: namespaces and ids as seen from inside and from the
// host, stop and its exit status, teardown leaving nothing, and restarts that lose nothing.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { cgroupDirsOf, isAlive, mountsUnder, startDaemon, type Daemon, type GrpcError } from '../helpers/daemon';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';

const busybox = (id: string, script: string, extra: Partial<StartWorkspaceRequest> = {}): StartWorkspaceRequest => ({
  id,
  ownerId: 'alice',
  image: 'builtin:busybox',
  command: ['/bin/sh', '-c', script],
  resources: { memoryBytes: 256 << 20, cpuMillis: 500, pids: 128 },
  ...extra,
});

const contentOf = (d: Daemon, id: string, file: string): string => fs.readFileSync(path.join(d.stateDir, 'workspaces', id, 'content', file), 'utf8');

async function waitForFile(d: Daemon, id: string, file: string): Promise<string> {
  const p = path.join(d.stateDir, 'workspaces', id, 'content', file);
  const end = Date.now() + 20_000;
  while (!fs.existsSync(p)) {
    if (Date.now() > end) throw new Error(`${file} never appeared in ${id}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  return contentOf(d, id, file);
}

function hostUidOf(pid: number): number {
  const line = fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('Uid:'))!;
  return Number(line.split(/\s+/)[1]);
}

function assertNothingLeft(tt: Test, d: Daemon, id: string, pid: number): void {
  tt.notOk(fs.existsSync(path.join(d.stateDir, 'workspaces', id)), 'the workspace directory is gone');
  tt.same(mountsUnder(d.dir), [], 'no mount remains below the state dir');
  tt.same(cgroupDirsOf(path.join(d.cgroupParent, id)), [], 'no cgroup remains');
  if (pid) tt.notOk(isAlive(pid), 'the workspace process is gone');
}

t.test('a workspace is namespaced, mapped to its own unprivileged range, and booted from an overlay', async (t) => {
  const d = await startDaemon(t);
  const script = [
    'id -u > /workspace/uid.tmp && mv /workspace/uid.tmp /workspace/uid',
    'ps -o pid,comm > /workspace/ps',
    'ip link > /workspace/links',
    'hostname > /workspace/hostname',
    'ls /proc/self/fd > /workspace/fds',
    'cat /proc/self/mountinfo > /workspace/mountinfo',
    'touch /workspace/done',
    'exec sleep 600',
  ].join('; ');
  const w = await d.start(busybox('ns-check', script));
  t.equal(w.state, 'WORKSPACE_STATE_RUNNING');
  t.ok(w.pid > 0, 'the host pid of init is reported');
  t.ok(w.hostUidBase >= 65536, `uid base ${w.hostUidBase} is unprivileged`);
  await waitForFile(d, 'ns-check', 'done');

  t.equal(hostUidOf(w.pid), w.hostUidBase, "from the host, the workspace's PID 1 runs as the base of its range");
  t.equal(contentOf(d, 'ns-check', 'uid').trim(), '0', 'inside, id -u says 0');
  const pids = contentOf(d, 'ns-check', 'ps').trim().split('\n').slice(1).map((l) => l.trim().split(/\s+/));
  t.equal(pids[0][0], '1', 'PID 1 is the first process');
  t.match(pids[0][1], /init/, "PID 1 is Tetrix's init");
  t.ok(pids.length <= 4, `ps sees only the workspace (${pids.length} processes)`);
  const links = contentOf(d, 'ns-check', 'links').split('\n').filter((l) => /^\d+:/.test(l));
  t.same(links.map((l) => l.split(':')[1].trim()), ['lo'], 'ip link shows only lo');
  t.equal(contentOf(d, 'ns-check', 'hostname').trim(), 'ns-check', "the hostname is the workspace's");
  const fds = contentOf(d, 'ns-check', 'fds').trim().split(/\s+/).map(Number).sort((a, b) => a - b);
  t.same(fds.filter((fd) => fd > 2).length <= 1 ? fds.slice(0, 3) : fds, [0, 1, 2], `only stdio is open (plus ls's own directory handle): ${fds.join(',')}`);
  t.ok(fds.length <= 4, 'no inherited descriptor');
  const root = contentOf(d, 'ns-check', 'mountinfo').split('\n').find((l) => l.split(' ')[4] === '/');
  t.match(root ?? '', / - overlay /, 'the root is the overlay');

  const other = await d.start(busybox('ns-other', 'exec sleep 600'));
  t.not(other.hostUidBase, w.hostUidBase, 'two live workspaces never share a host range');
  t.ok(Math.abs(other.hostUidBase - w.hostUidBase) >= 65536, 'their ranges do not overlap');
});

t.test('stop reports the exit code; a workload that ignores SIGTERM is killed after the grace period', async (t) => {
  const d = await startDaemon(t);
  await d.start(busybox('polite', 'trap "exit 7" TERM; touch /workspace/ready; while true; do sleep 0.1; done'));
  await waitForFile(d, 'polite', 'ready');
  const stopped = await d.stop('polite', 5000);
  t.equal(stopped.state, 'WORKSPACE_STATE_STOPPED');
  t.equal(stopped.reason, 'STOP_REASON_STOPPED');
  t.equal(stopped.exitCode, 7, 'the exit code of the workload comes back');

  await d.start(busybox('stubborn', 'trap "" TERM; touch /workspace/ready; while true; do sleep 1; done'));
  await waitForFile(d, 'stubborn', 'ready');
  const began = Date.now();
  const killed = await d.stop('stubborn', 300);
  t.equal(killed.state, 'WORKSPACE_STATE_STOPPED');
  t.equal(killed.signal, 'SIGKILL', 'SIGKILL ended it');
  t.ok(Date.now() - began >= 300, 'not before the grace period');

  const exited = await d.start(busybox('quick', 'exit 3'));
  const done = await d.waitFor(exited.id, (w) => w.state === 'WORKSPACE_STATE_STOPPED');
  t.equal(done.reason, 'STOP_REASON_EXITED');
  t.equal(done.exitCode, 3);
  t.ok(fs.existsSync(path.join(d.stateDir, 'workspaces', 'quick', 'content')), 'a stopped workspace keeps its content until teardown');
});

t.test('teardown removes processes, mounts, cgroup, files and state, and is idempotent', async (t) => {
  const d = await startDaemon(t);
  const w = await d.start(busybox('doomed', 'echo data > /workspace/file; exec sleep 600'));
  await waitForFile(d, 'doomed', 'file');
  t.ok(cgroupDirsOf(path.join(d.cgroupParent, 'doomed')).length > 0, 'the workspace has a cgroup while it runs');
  t.ok(mountsUnder(d.dir).length > 0, 'and mounts');
  const res = await d.teardown('doomed');
  t.equal(res.existed, true);
  assertNothingLeft(t, d, 'doomed', w.pid);
  await t.rejects(d.get('doomed'), { code: status.NOT_FOUND });
  t.equal((await d.teardown('doomed')).existed, false, 'a second teardown is a no-op');
});

t.test('start is idempotent on id, and a different spec for the same id is refused', async (t) => {
  const d = await startDaemon(t);
  const first = await d.start(busybox('same', 'exec sleep 600'));
  const again = await d.start(busybox('same', 'exec sleep 600'));
  t.equal(again.pid, first.pid, 'the same spec returns the existing workspace');
  await t.rejects(d.start(busybox('same', 'exec sleep 601')), { code: status.ALREADY_EXISTS });
});

t.test('a daemon killed with -9 comes back and adopts what runs; what died meanwhile shows its status', async (t) => {
  const d = await startDaemon(t);
  const runner = await d.start(busybox('survivor', 'trap "exit 9" TERM; touch /workspace/ready; while true; do sleep 0.1; done'));
  await waitForFile(d, 'survivor', 'ready');
  await d.start(busybox('short', 'touch /workspace/ready; while [ ! -e /workspace/go ]; do sleep 0.05; done; exit 4'));
  await waitForFile(d, 'short', 'ready');
  await d.kill9();
  t.ok(isAlive(runner.pid), 'the workspace outlives the daemon');
  fs.writeFileSync(path.join(d.stateDir, 'workspaces', 'short', 'content', 'go'), '');
  await new Promise((r) => setTimeout(r, 500));
  await d.restart();

  const adopted = await d.get('survivor');
  t.equal(adopted.state, 'WORKSPACE_STATE_RUNNING', 'adopted as RUNNING');
  t.equal(adopted.pid, runner.pid, 'same process');
  const died = await d.waitFor('short', (w) => w.state === 'WORKSPACE_STATE_STOPPED');
  t.equal(died.exitCode, 4, 'a workspace that exited while the daemon was down shows its exit code');
  t.equal(died.reason, 'STOP_REASON_EXITED');

  const stopped = await d.stop('survivor', 5000);
  t.equal(stopped.exitCode, 9, 'stop still works after adoption, with the exit code');
  await d.teardown('survivor');
  assertNothingLeft(t, d, 'survivor', runner.pid);
});

/** A control file's content from whichever of a group's directories (v1 hierarchies, or v2) has it. */
const cgroupReader = (dirs: string[]) => (file: string): string | undefined => {
  for (const dir of dirs) if (fs.existsSync(path.join(dir, file))) return fs.readFileSync(path.join(dir, file), 'utf8').trim();
  return undefined;
};

t.test('cgroup limits from the request are applied', async (t) => {
  const d = await startDaemon(t);
  await d.start(busybox('limited', 'exec sleep 600', { resources: { memoryBytes: 64 << 20, cpuMillis: 250, pids: 32 } }));
  const read = cgroupReader(cgroupDirsOf(path.join(d.cgroupParent, 'limited')));
  const v2 = read('memory.max') !== undefined;
  t.equal(v2 ? read('memory.max') : read('memory.limit_in_bytes'), String(64 << 20), 'memory limit');
  t.equal(read('pids.max'), '32', 'pids limit');
  if (v2) t.equal(read('cpu.max'), '25000 100000', 'cpu quota');
  else t.equal(read('cpu.cfs_quota_us'), '25000', 'cpu quota');
});

// Issue 13, item 7: a request without limits got none (memory.limit_in_bytes 2^63, no CPU quota).
t.test('a workspace started without resources gets the node default memory, CPU and pids limits, and GetWorkspace shows them', async (t) => {
  // The memory default as embedded; the CPU default as configured.
  const d = await startDaemon(t, ['--default-cpu-millis', '300']);
  const req = busybox('unlimited', 'exec sleep 600');
  delete req.resources;
  const started = await d.start(req);
  const memoryDefault = String(Math.min(1 << 30, os.totalmem()));
  t.same(started.resources, { memoryBytes: memoryDefault, cpuMillis: '300', pids: '4096', diskBytes: '0', diskInodes: '0' }, 'StartWorkspace answers with the effective limits');
  t.same((await d.get('unlimited')).resources, { memoryBytes: memoryDefault, cpuMillis: '300', pids: '4096', diskBytes: '0', diskInodes: '0' }, 'and GetWorkspace shows them');
  const read = cgroupReader(cgroupDirsOf(path.join(d.cgroupParent, 'unlimited')));
  const v2 = read('memory.max') !== undefined;
  t.equal(v2 ? read('memory.max') : read('memory.limit_in_bytes'), memoryDefault, 'the cgroup has the default memory limit');
  if (v2) t.equal(read('cpu.max'), '30000 100000', 'and the default CPU quota');
  else t.equal(read('cpu.cfs_quota_us'), '30000', 'and the default CPU quota');
  t.equal(read('pids.max'), '4096', 'and the default pids limit');

  // A request naming only some limits gets the defaults for the others.
  await d.start(busybox('partly', 'exec sleep 600', { resources: { pids: 64 } }));
  t.same((await d.get('partly')).resources, { memoryBytes: memoryDefault, cpuMillis: '300', pids: '64', diskBytes: '0', diskInodes: '0' }, 'named limits are kept, the rest are the defaults');
  const partly = cgroupReader(cgroupDirsOf(path.join(d.cgroupParent, 'partly')));
  t.equal(v2 ? partly('memory.max') : partly('memory.limit_in_bytes'), memoryDefault, 'with the default memory limit in its cgroup');
  t.equal(partly('pids.max'), '64', 'and its own pids limit');
});

t.test('bad input gets INVALID_ARGUMENT or NOT_FOUND naming the field, and leaves nothing behind', async (t) => {
  const d = await startDaemon(t);
  const cases: Array<[string, StartWorkspaceRequest, status, RegExp]> = [
    ['path traversal id', busybox('../../etc', 'true'), status.INVALID_ARGUMENT, /^id:/],
    ['empty id', busybox('', 'true'), status.INVALID_ARGUMENT, /^id:/],
    ['300-character id', busybox('a'.repeat(300), 'true'), status.INVALID_ARGUMENT, /^id:/],
    ['NUL in id', busybox('abc\0def', 'true'), status.INVALID_ARGUMENT, /^id:/],
    ['unknown image', { ...busybox('bad-image', 'true'), image: 'no-such-image' }, status.NOT_FOUND, /image/],
    ['image path traversal', { ...busybox('bad-image2', 'true'), image: '../../etc' }, status.INVALID_ARGUMENT, /image/],
    ['negative memory', busybox('neg', 'true', { resources: { memoryBytes: -1 } }), status.INVALID_ARGUMENT, /^resources\.memory_bytes:/],
    ['absurd memory', busybox('huge', 'true', { resources: { memoryBytes: '9000000000000000000' } }), status.INVALID_ARGUMENT, /^resources\.memory_bytes:/],
    ['negative cpu', busybox('negcpu', 'true', { resources: { cpuMillis: -5 } }), status.INVALID_ARGUMENT, /^resources\.cpu_millis:/],
    ['absurd pids', busybox('pids', 'true', { resources: { pids: '99999999999' } }), status.INVALID_ARGUMENT, /^resources\.pids:/],
    ['empty argv', { ...busybox('noargv', 'true'), command: [] }, status.INVALID_ARGUMENT, /^command:/],
    ['NUL in argv', { ...busybox('nularg', 'true'), command: ['/bin/sh', 'a\0b'] }, status.INVALID_ARGUMENT, /^command\[1\]:/],
    ['no owner', { ...busybox('noowner', 'true'), ownerId: '' }, status.INVALID_ARGUMENT, /^owner_id:/],
    ['relative working dir', busybox('wd', 'true', { workingDir: 'tmp' }), status.INVALID_ARGUMENT, /^working_dir:/],
    ['bad env name', busybox('envname', 'true', { env: { 'A=B': 'x' } }), status.INVALID_ARGUMENT, /^env:/],
    ['unknown seccomp profile', busybox('seccomp', 'true', { seccompProfile: 'nope' }), status.INVALID_ARGUMENT, /seccomp_profile/],
  ];
  for (const [name, req, code, field] of cases) {
    const err = (await d.start(req).then(() => undefined, (e: GrpcError) => e)) as GrpcError | undefined;
    t.ok(err, `${name}: refused`);
    t.equal(err?.code, code, `${name}: ${status[code]}`);
    t.match(err?.details ?? '', field, `${name}: the message names the field (${err?.details})`);
  }
  t.same(await d.list(), [], 'no workspace record was created');
  const wsRoot = path.join(d.stateDir, 'workspaces');
  t.same(fs.existsSync(wsRoot) ? fs.readdirSync(wsRoot) : [], [], 'no workspace directory was created');
  t.same(mountsUnder(d.dir), [], 'no mount was made');
  t.same(cgroupDirsOf(d.cgroupParent).flatMap((dir) => fs.readdirSync(dir).filter((e) => fs.statSync(path.join(dir, e)).isDirectory())), [], 'no cgroup was created');
});

t.test('WatchWorkspaces streams every state change; a long watch holds no listener per event', async (t) => {
  const d = await startDaemon(t);
  const seen: string[] = [];
  const watch = d.clients.workspaces.WatchWorkspaces({ id: '' });
  watch.on('data', (e: { workspace?: { id: string; state: string } }) => {
    if (e.workspace) seen.push(`${e.workspace.id} ${e.workspace.state}`);
  });
  watch.on('error', () => undefined); // the cancel below
  t.teardown(() => watch.cancel());
  // Each start and exit wakes the stream's wait a few times: well past Node's 10-listener warning.
  const ids = Array.from({ length: 8 }, (_, i) => `watched-${i}`);
  for (const id of ids) {
    await d.start(busybox(id, 'exit 3'));
    await d.waitFor(id, (w) => w.state === 'WORKSPACE_STATE_STOPPED');
  }
  const end = Date.now() + 5000;
  while (!seen.includes(`${ids[7]} WORKSPACE_STATE_STOPPED`) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  for (const id of ids) {
    const states = seen.filter((l) => l.startsWith(`${id} `)).map((l) => l.split(' ')[1]);
    t.same(states, ['WORKSPACE_STATE_CREATING', 'WORKSPACE_STATE_RUNNING', 'WORKSPACE_STATE_STOPPED'], `${id}: CREATING, RUNNING, STOPPED in order`);
  }
  t.same(d.output.filter((l) => l.includes('MaxListenersExceededWarning')), [], 'no listener piles up on the stream');
  for (const id of ids) await d.teardown(id);
});
