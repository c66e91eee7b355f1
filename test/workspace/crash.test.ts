// The daemon killed at each interesting point of a start, a stop or a teardown: after a restart every
// workspace is RUNNING, STOPPED or gone as its request implied, and nothing half-made is left.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { cgroupDirsOf, isAlive, mountsUnder, startDaemon, type Daemon } from '../helpers/daemon';

const spec = (id: string) => ({
  id,
  ownerId: 'alice',
  image: 'builtin:busybox',
  command: ['/bin/sh', '-c', 'trap "exit 0" TERM; while true; do sleep 0.1; done'],
});

function claimsOf(stateDir: string): string[] {
  const dir = '/run/tetrix/idmap';
  return fs.readdirSync(dir).filter((f) => {
    try {
      return (JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as { stateDir?: string }).stateDir === stateDir;
    } catch {
      return false;
    }
  });
}

function assertNoRuntime(t: Test, d: Daemon, id: string): void {
  t.same(mountsUnder(path.join(d.stateDir, 'workspaces', id)), [], 'no mount is left');
  t.same(cgroupDirsOf(path.join(d.cgroupParent, id)), [], 'no cgroup is left');
}

for (const point of ['after-ids', 'after-rootfs', 'after-cgroup', 'after-spawn'] as const) {
  t.test(`killed during a start (${point}): the start is undone and reported FAILED`, async (t) => {
    const d = await startDaemon(t, [], { env: { TETRIX_TEST_CRASH_AT: point } });
    await t.rejects(d.start(spec('half')), 'the daemon died under the call');
    await d.restart({});
    const w = await d.get('half');
    t.equal(w.state, 'WORKSPACE_STATE_FAILED');
    t.match(w.message, /interrupted by a daemon restart/);
    t.equal(w.pid, 0);
    assertNoRuntime(t, d, 'half');
    t.notOk(fs.existsSync(path.join(d.stateDir, 'workspaces', 'half')), 'its directory is gone');
    t.same(claimsOf(d.stateDir), [], 'its uid range is released');
    t.equal((await d.teardown('half')).existed, true);
    t.same(await d.list(), []);
  });
}

t.test('killed during a stop: the stop is finished after the restart', async (t) => {
  const d = await startDaemon(t, [], { env: { TETRIX_TEST_CRASH_AT: 'mid-stop' } });
  const w = await d.start(spec('stopping'));
  await t.rejects(d.stop('stopping', 200));
  await d.restart({});
  const done = await d.waitFor('stopping', (x) => x.state === 'WORKSPACE_STATE_STOPPED');
  t.equal(done.reason, 'STOP_REASON_STOPPED');
  t.notOk(isAlive(w.pid), 'the workload is gone');
  await d.stop('stopping', 200); // returns once the release that follows STOPPED is done
  assertNoRuntime(t, d, 'stopping');
});

t.test('killed after STOPPED was recorded, before the release: the restart releases mounts and cgroup', async (t) => {
  const d = await startDaemon(t, [], { env: { TETRIX_TEST_CRASH_AT: 'after-stopped' } });
  const w = await d.start({ ...spec('ended'), command: ['/bin/sh', '-c', 'while [ ! -e /workspace/go ]; do sleep 0.05; done; exit 3'] });
  const daemonGone = new Promise((resolve) => d.process.once('exit', resolve));
  fs.writeFileSync(path.join(d.stateDir, 'workspaces', 'ended', 'content', 'go'), '');
  await daemonGone;
  t.notOk(isAlive(w.pid), 'the workload is gone');
  t.ok(mountsUnder(path.join(d.stateDir, 'workspaces', 'ended')).length > 0, 'the crash left its rootfs mounted');
  await d.restart({});
  const ended = await d.get('ended');
  t.equal(ended.state, 'WORKSPACE_STATE_STOPPED', 'still STOPPED');
  t.equal(ended.exitCode, 3, 'with its exit code');
  assertNoRuntime(t, d, 'ended');
  t.ok(fs.existsSync(path.join(d.stateDir, 'workspaces', 'ended', 'content')), 'its content stays until teardown');
  await d.teardown('ended');
  t.same(claimsOf(d.stateDir), [], 'its uid range is released by the teardown');
});

t.test('killed during a teardown: the teardown is finished after the restart', async (t) => {
  const d = await startDaemon(t, [], { env: { TETRIX_TEST_CRASH_AT: 'mid-teardown' } });
  const w = await d.start(spec('doomed'));
  await t.rejects(d.teardown('doomed'));
  await d.restart({});
  t.same(await d.list(), [], 'the record is gone');
  t.notOk(isAlive(w.pid), 'the workload is gone');
  assertNoRuntime(t, d, 'doomed');
  t.notOk(fs.existsSync(path.join(d.stateDir, 'workspaces', 'doomed')), 'its directory is gone');
  t.same(claimsOf(d.stateDir), [], 'its uid range is released');
});

t.test('SIGTERM stops the daemon gracefully and leaves workspaces running for the next one', async (t) => {
  const d = await startDaemon(t);
  const w = await d.start(spec('kept'));
  await d.terminate();
  t.equal(d.process.exitCode, 0, 'tetrixd exits 0 on SIGTERM');
  t.ok(isAlive(w.pid), 'the workspace keeps running');
  await d.restart();
  t.equal((await d.get('kept')).state, 'WORKSPACE_STATE_RUNNING', 'adopted');
});
