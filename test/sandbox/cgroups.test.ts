// Workspace cgroups on the real kernel: limits land in the control files, the kernel enforces them on
// real processes, and destroy() leaves nothing behind. v1 runs against this host's hierarchies; v2 against
// a real cgroup2 mount (the unified tree on a hybrid host, the root on a pure v2 host).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { Test } from 'tap';
import { DomainError } from '../../src/errors';
import { detectCgroupDriver, type CgroupDriver, type Resources } from '../../src/sandbox/cgroups';
import {
  CGROUP_ROOT, V1_CONTROLLERS, V2_ROOT, exited, isCgroup2, leftovers, procsIn, removeParent, spawnInGroup,
  uniqueParent, waitFor,
} from './cgroup-helpers';

const NO_LIMITS: Resources = { memoryBytes: 0, cpuMillis: 0, pids: 0 };
const MIB = 1024 * 1024;
const hybrid = !isCgroup2(CGROUP_ROOT);

function read(file: string): string {
  return fs.readFileSync(file, 'utf8').trim();
}

function driverFor(t: Test, tag: string, root = CGROUP_ROOT): { driver: CgroupDriver; parent: string } {
  const parent = uniqueParent(tag);
  t.teardown(() => removeParent(parent));
  return { driver: detectCgroupDriver(parent, root), parent };
}

t.test('the host mode is detected: v1 on a hybrid host, v2 on a pure cgroup2 host', async (t) => {
  const { driver } = driverFor(t, 'detect');
  t.equal(driver.mode, hybrid ? 'v1' : 'v2');
  t.equal(detectCgroupDriver(uniqueParent('detect'), V2_ROOT).mode, 'v2', 'a cgroup2 mount is driven as v2');
  const notCgroup = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-cg-'));
  t.teardown(() => fs.rmSync(notCgroup, { recursive: true, force: true }));
  t.throws(() => detectCgroupDriver('tetrix', notCgroup), { code: 'FAILED_PRECONDITION' });
  t.throws(() => detectCgroupDriver('../etc'), { code: 'INVALID_ARGUMENT' });
});

t.test('obviously invalid limits and names are refused before anything exists', async (t) => {
  const { driver, parent } = driverFor(t, 'invalid');
  const bad: Array<[Partial<Resources>, string]> = [
    [{ memoryBytes: -1 }, 'resources.memory_bytes'],
    [{ memoryBytes: 4096 }, 'resources.memory_bytes'],
    [{ memoryBytes: 2 ** 60 }, 'resources.memory_bytes'],
    [{ cpuMillis: 1.5 }, 'resources.cpu_millis'],
    [{ pids: Number.NaN }, 'resources.pids'],
    [{ pids: 1e9 }, 'resources.pids'],
  ];
  for (const [limits, field] of bad) {
    await t.rejects(driver.create('ws', { ...NO_LIMITS, ...limits }), { code: 'INVALID_ARGUMENT', message: new RegExp(`^${field}: `) });
  }
  for (const name of ['..', 'a/b', '', '-x', 'x'.repeat(200)]) {
    await t.rejects(driver.create(name, NO_LIMITS), { code: 'INVALID_ARGUMENT' }, `name ${JSON.stringify(name)}`);
  }
  t.same(driver.list(), []);
  t.throws(() => driver.open('absent'), { code: 'NOT_FOUND' });
  t.ok(leftovers(parent).every((d) => fs.readdirSync(d, { withFileTypes: true }).every((e) => !e.isDirectory())));
});

t.test('v1: limits are written to every hierarchy and release notification is off', { skip: !hybrid && 'no v1 hierarchies on this host' }, async (t) => {
  const { driver, parent } = driverFor(t, 'v1limits');
  t.equal(driver.mode, 'v1');
  const group = await driver.create('ws1', { memoryBytes: 64 * MIB, cpuMillis: 500, pids: 32 });
  const dir = (c: string) => path.join(CGROUP_ROOT, c, parent, 'ws1');
  t.equal(read(path.join(dir('memory'), 'memory.limit_in_bytes')), String(64 * MIB));
  if (fs.existsSync(path.join(dir('memory'), 'memory.memsw.limit_in_bytes'))) {
    t.equal(read(path.join(dir('memory'), 'memory.memsw.limit_in_bytes')), String(64 * MIB), 'no swap beyond the limit');
  }
  t.equal(read(path.join(dir('cpu'), 'cpu.cfs_period_us')), '100000');
  t.equal(read(path.join(dir('cpu'), 'cpu.cfs_quota_us')), '50000', 'half a core');
  t.equal(read(path.join(dir('pids'), 'pids.max')), '32');
  for (const c of V1_CONTROLLERS) {
    t.equal(read(path.join(dir(c), 'notify_on_release')), '0', `${c}: notify_on_release=0 (CVE-2022-0492)`);
    t.equal(read(path.join(CGROUP_ROOT, c, parent, 'notify_on_release')), '0', `${c} parent: notify_on_release=0`);
  }
  t.same(group.procsFiles().sort(), V1_CONTROLLERS.map((c) => path.join(dir(c), 'cgroup.procs')).sort());
  t.same(driver.list(), ['ws1']);
  await t.rejects(driver.create('ws1', NO_LIMITS), { code: 'ALREADY_EXISTS' });
  t.equal(driver.open('ws1').name, 'ws1');
  await group.destroy();
  t.same(driver.list(), []);
  t.same(V1_CONTROLLERS.filter((c) => fs.existsSync(dir(c))), [], 'no directory left in any controller');
});

t.test('v2: a group is created, holds a process tree, and destroy kills all of it', async (t) => {
  const { driver, parent } = driverFor(t, 'v2tree', V2_ROOT);
  t.equal(driver.mode, 'v2');
  const group = await driver.create('ws1', NO_LIMITS);
  const dir = path.join(V2_ROOT, parent, 'ws1');
  t.same(group.procsFiles(), [path.join(dir, 'cgroup.procs')]);
  t.same(driver.list(), ['ws1']);
  const child = spawnInGroup(group.procsFiles(), 'sleep 1000 & sleep 1000 & sleep 1000 & wait');
  t.ok(await waitFor(() => procsIn(dir).length === 4), 'the shell and its three sleeps are in the group');
  t.equal(group.oomKillCount(), 0);
  await group.destroy();
  t.notOk(fs.existsSync(dir), 'group removed');
  t.same(driver.list(), []);
  t.same(await exited(child), { code: null, signal: 'SIGKILL' });
  await group.destroy(); // idempotent
});

const v2Controllers = (() => {
  try {
    return fs.readFileSync(path.join(V2_ROOT, 'cgroup.subtree_control'), 'utf8').trim().split(/\s+/);
  } catch {
    return [];
  }
})();
const v2HasControllers = ['cpu', 'memory', 'pids'].every((c) => v2Controllers.includes(c));

t.test('v2 without cpu/memory/pids controllers refuses limits instead of ignoring them', { skip: v2HasControllers && 'controllers are available here' }, async (t) => {
  const { driver, parent } = driverFor(t, 'v2nocontrol', V2_ROOT);
  await t.rejects(driver.create('ws1', { ...NO_LIMITS, memoryBytes: 64 * MIB }), { code: 'FAILED_PRECONDITION', message: /"memory"/ });
  await t.rejects(driver.create('ws1', { ...NO_LIMITS, pids: 10 }), { code: 'FAILED_PRECONDITION', message: /"pids"/ });
  t.notOk(fs.existsSync(path.join(V2_ROOT, parent, 'ws1')), 'no group left by the refusal');
});

t.test('v2: limits are written to memory.max, cpu.max and pids.max', { skip: !v2HasControllers && `cgroup2 at ${V2_ROOT} has no cpu/memory/pids controllers (hybrid host)` }, async (t) => {
  const { driver, parent } = driverFor(t, 'v2limits', V2_ROOT);
  const group = await driver.create('ws1', { memoryBytes: 64 * MIB, cpuMillis: 1500, pids: 32 });
  const dir = path.join(V2_ROOT, parent, 'ws1');
  t.equal(read(path.join(dir, 'memory.max')), String(64 * MIB));
  t.equal(read(path.join(dir, 'cpu.max')), '150000 100000');
  t.equal(read(path.join(dir, 'pids.max')), '32');
  if (fs.existsSync(path.join(dir, 'memory.swap.max'))) t.equal(read(path.join(dir, 'memory.swap.max')), '0');
  await group.destroy();
  t.notOk(fs.existsSync(dir));
});

// The kernel-enforcement tests, run for each driver that can enforce limits on this host.
const enforcing: Array<[string, string]> = [];
if (hybrid) enforcing.push(['v1', CGROUP_ROOT]);
if (v2HasControllers) enforcing.push(['v2', V2_ROOT]);

for (const [mode, root] of enforcing) {
  t.test(`${mode}: a process placed through procsFiles is in the group, and destroy kills it`, async (t) => {
    const { driver, parent } = driverFor(t, `${mode}place`, root);
    const group = await driver.create('ws1', { memoryBytes: 256 * MIB, cpuMillis: 1000, pids: 64 });
    const child = spawnInGroup(group.procsFiles(), 'exec sleep 1000');
    t.ok(await waitFor(() => procsIn(path.dirname(group.procsFiles()[0])).includes(child.pid!)), 'sleep listed in cgroup.procs');
    const membership = fs.readFileSync(`/proc/${child.pid}/cgroup`, 'utf8');
    t.match(membership, `/${parent}/ws1`, 'the kernel reports the group for the process');
    await group.destroy();
    t.same(await exited(child), { code: null, signal: 'SIGKILL' });
    t.same(leftovers(parent).flatMap((d) => fs.readdirSync(d, { withFileTypes: true }).filter((e) => e.isDirectory())), []);
  });

  t.test(`${mode}: the pids limit stops a fork loop`, async (t) => {
    const { driver, parent } = driverFor(t, `${mode}pids`, root);
    const group = await driver.create('ws1', { ...NO_LIMITS, pids: 8 });
    const pidsDir = mode === 'v1' ? path.join(root, 'pids', parent, 'ws1') : path.join(root, parent, 'ws1');
    const child = spawnInGroup(group.procsFiles(), 'i=0; while [ $i -lt 30 ]; do sleep 1000 & i=$((i+1)); done; wait');
    const eventsMax = () => Number(/max (\d+)/.exec(read(path.join(pidsDir, 'pids.events')))?.[1] ?? 0);
    t.ok(await waitFor(() => eventsMax() > 0), 'pids.events counts refused forks');
    t.ok(procsIn(pidsDir).length <= 8, `at most 8 processes in the group (saw ${procsIn(pidsDir).length})`);
    t.ok(await waitFor(() => /fork/i.test(child.stderrText()) || child.exitCode !== null), 'the shell saw fork fail');
    await group.destroy();
    await exited(child);
    t.notOk(fs.existsSync(pidsDir));
  });

  t.test(`${mode}: a process allocating past the memory limit is OOM-killed and counted`, async (t) => {
    const { driver } = driverFor(t, `${mode}oom`, root);
    const group = await driver.create('ws1', { ...NO_LIMITS, memoryBytes: 128 * MIB });
    t.equal(group.oomKillCount(), 0);
    const hog = 'const k=[]; for (let i=0;i<256;i++) k.push(Buffer.alloc(8<<20, 1)); console.error("survived")';
    const child = spawnInGroup(group.procsFiles(), `exec "${process.execPath}" -e '${hog}'`);
    const end = await exited(child);
    t.equal(end.signal, 'SIGKILL', 'the hog was killed');
    t.notMatch(child.stderrText(), /survived/);
    t.ok(group.oomKillCount() >= 1, `oomKillCount() = ${group.oomKillCount()}`);
    const peak = group.memoryPeak();
    if (peak !== undefined) t.ok(peak > 100 * MIB && peak <= 128 * MIB, `peak ${peak} near the limit`);
    await group.destroy();
  });
}

t.test('destroy finishes a half-created group (crash recovery)', { skip: !hybrid && 'v1 only' }, async (t) => {
  const { driver, parent } = driverFor(t, 'half');
  await driver.create('seed', NO_LIMITS); // makes the parent in every hierarchy
  fs.mkdirSync(path.join(CGROUP_ROOT, 'memory', parent, 'half'));
  fs.mkdirSync(path.join(CGROUP_ROOT, 'pids', parent, 'half'));
  t.same(driver.list(), ['half', 'seed']);
  await driver.open('half').destroy();
  await driver.open('seed').destroy();
  t.same(driver.list(), []);
  t.same(V1_CONTROLLERS.filter((c) => fs.existsSync(path.join(CGROUP_ROOT, c, parent, 'half'))), []);
});

t.test('v2 on a freshly mounted cgroup2 in a private mount namespace', async (t) => {
  const mountpoint = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-cg2-'));
  const parent = uniqueParent('fresh');
  t.teardown(async () => {
    await removeParent(parent);
    fs.rmSync(mountpoint, { recursive: true, force: true });
  });
  // The same TypeScript hook tap runs this file with, so the fixture imports src/ directly.
  const tsHook = process.execArgv.find((a) => a.includes('@tapjs/typescript')) ?? '';
  const fixture = path.join(__dirname, 'fixtures', 'cgroup2-fresh-mount.ts');
  const child = spawn('unshare', ['-m', '--propagation', 'private', 'sh', '-c',
    'mount -t cgroup2 none "$1" && exec "$2" "$3" "$4" "$1" "$5"', 'sh', mountpoint, process.execPath, tsHook, fixture, parent]);
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const end = await exited(child);
  t.equal(end.code, 0, out);
  const report = JSON.parse(out.trim().split('\n').pop() ?? '{}');
  t.equal(report.mode, 'v2');
  t.equal(report.listedWhileRunning, 'ws1');
  t.equal(report.sleepSignal, 'SIGKILL');
  t.equal(report.leftAfterDestroy, false);
  t.same(leftovers(parent), [], 'fixture removed its parent');
  t.notOk(fs.readFileSync('/proc/self/mountinfo', 'utf8').includes(mountpoint), 'the mount stayed private');
});

t.test('errors are DomainErrors', async (t) => {
  const { driver } = driverFor(t, 'errors');
  const err = await driver.create('ws', { ...NO_LIMITS, pids: -5 }).catch((e: unknown) => e);
  t.ok(err instanceof DomainError);
});
