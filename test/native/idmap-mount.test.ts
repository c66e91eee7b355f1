// idmapMount: a read-only view of a host directory whose owners are shifted into a workspace's range,
// made without touching a single file, and without leaving a process, an fd or a mount behind.
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { native, NativeError } from '../../src/native';
import { makeHostDir, testIdBase } from './fixture';

const { MNT_DETACH } = native.constants;
const UID_BASE = testIdBase();
const GID_BASE = UID_BASE + 65536 * 3; // a different base, to tell uid and gid mapping apart

const mountLine = (target: string): string | undefined =>
  fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === target);

function unmountAfter(t: Test, target: string): void {
  t.teardown(() => {
    while (mountLine(target)) native.umount(target, MNT_DETACH);
  });
}

/** A source tree with files of a few owners, and an empty target beside it. */
function makeTree(t: Test): { source: string; target: string } {
  const dir = makeHostDir(t, 'idmap');
  const source = path.join(dir, 'source');
  const target = path.join(dir, 'target');
  fs.mkdirSync(path.join(source, 'etc'), { recursive: true });
  fs.writeFileSync(path.join(source, 'etc', 'passwd'), 'root:x:0:0::/root:/bin/sh\n');
  fs.writeFileSync(path.join(source, 'mail'), '');
  fs.chownSync(path.join(source, 'mail'), 0, 8);
  fs.writeFileSync(path.join(source, 'user'), '');
  fs.chownSync(path.join(source, 'user'), 1000, 1000);
  fs.writeFileSync(path.join(source, 'foreign'), '');
  fs.chownSync(path.join(source, 'foreign'), 70000, 70000);
  fs.writeFileSync(path.join(source, 'su'), '');
  fs.chmodSync(path.join(source, 'su'), 0o4755);
  fs.mkdirSync(target);
  return { source, target };
}

const owner = (p: string): [number, number] => {
  const st = fs.lstatSync(p);
  return [st.uid, st.gid];
};

t.test('the mounted view shows owners shifted into the range; the source keeps its own', async (t) => {
  const { source, target } = makeTree(t);
  unmountAfter(t, target);
  await native.idmapMount(source, target, UID_BASE, GID_BASE, 65536);
  t.match(mountLine(target), /^(\S+ ){5}ro,nosuid,nodev,\S*idmapped /, 'read-only, nosuid, nodev, idmapped');
  t.same(owner(path.join(target, 'etc', 'passwd')), [UID_BASE, GID_BASE], 'host root reads as the base');
  t.same(owner(path.join(target, 'mail')), [UID_BASE, GID_BASE + 8]);
  t.same(owner(path.join(target, 'user')), [UID_BASE + 1000, GID_BASE + 1000]);
  t.same(owner(path.join(target, 'foreign')), [65534, 65534], 'an id beyond count reads as the overflow id');
  t.equal(fs.statSync(path.join(target, 'su')).mode & 0o7777, 0o4755, 'modes as they are');
  t.equal(fs.readFileSync(path.join(target, 'etc', 'passwd'), 'utf8'), 'root:x:0:0::/root:/bin/sh\n');
  t.throws(() => fs.writeFileSync(path.join(target, 'etc', 'passwd'), 'x'), { code: 'EROFS' }, 'nothing writes through it');
  t.same(owner(path.join(source, 'etc', 'passwd')), [0, 0], 'the source is untouched');
  t.same(owner(path.join(source, 'user')), [1000, 1000]);
  native.umount(target, 0);
  t.equal(mountLine(target), undefined);
});

t.test('count bounds the range', async (t) => {
  const { source, target } = makeTree(t);
  unmountAfter(t, target);
  await native.idmapMount(source, target, UID_BASE, GID_BASE, 1000);
  t.same(owner(path.join(target, 'mail')), [UID_BASE, GID_BASE + 8]);
  t.same(owner(path.join(target, 'user')), [65534, 65534], 'id 1000 is outside a range of 1000');
});

t.test('failures name the step and the errno, and leave nothing attached', async (t) => {
  const { source, target } = makeTree(t);
  unmountAfter(t, target);
  const missing = path.join(path.dirname(source), 'missing');
  await t.rejects(native.idmapMount(missing, target, UID_BASE, GID_BASE, 65536), { name: 'NativeError', step: 'idmap open_tree', code: 'ENOENT' });
  await t.rejects(native.idmapMount(source, missing, UID_BASE, GID_BASE, 65536), { step: 'idmap move_mount', code: 'ENOENT' });
  // ramfs has no idmapped mounts: what the kernel says for a filesystem that cannot do it.
  const ramfs = path.join(path.dirname(source), 'ramfs');
  fs.mkdirSync(ramfs);
  native.mount('tetrix-test-ramfs', ramfs, 'ramfs', 0, '');
  unmountAfter(t, ramfs);
  const err: unknown = await native.idmapMount(ramfs, target, UID_BASE, GID_BASE, 65536).catch((e: unknown) => e);
  t.ok(err instanceof NativeError, 'rejected with the JS NativeError class');
  t.match(err, { step: 'idmap mount_setattr', code: 'EINVAL', message: 'idmap mount_setattr: EINVAL' });
  t.equal(mountLine(target), undefined, 'nothing was attached');
  // Bad arguments are the caller's bug: thrown at once, before any work is queued.
  t.throws(() => native.idmapMount(source, target, UID_BASE, GID_BASE, 0), TypeError, 'count 0');
  t.throws(() => native.idmapMount(source, target, -1, GID_BASE, 65536), TypeError, 'a negative base');
  t.throws(() => native.idmapMount(source, target, 0xffffff00, GID_BASE, 65536), TypeError, 'a range past 2^32');
  t.throws(() => native.idmapMount(`${source}\0x`, target, UID_BASE, GID_BASE, 65536), TypeError, 'an embedded NUL');
});

/** Our live child processes (the throwaway user namespace holders would show here). */
function children(): string[] {
  return fs.readdirSync('/proc/self/task').flatMap((tid) => fs.readFileSync(`/proc/self/task/${tid}/children`, 'utf8').split(' ').filter(Boolean));
}

t.test('many mounts leave no process, fd or mount behind', async (t) => {
  const { source, target } = makeTree(t);
  unmountAfter(t, target);
  // The addon keeps one user namespace fd per mapping (up to 64): count from after the first use of each.
  for (let i = 0; i < 4; i++) {
    await native.idmapMount(source, target, UID_BASE + i * 65536, GID_BASE, 65536);
    native.umount(target, 0);
  }
  const fdsBefore = fs.readdirSync('/proc/self/fd').length;
  const childrenBefore = children();
  for (let i = 0; i < 200; i++) {
    await native.idmapMount(source, target, UID_BASE + (i % 4) * 65536, GID_BASE, 65536);
    native.umount(target, 0);
    await t.rejects(native.idmapMount(source, path.join(target, 'missing'), UID_BASE, GID_BASE, 65536), { step: 'idmap move_mount' });
  }
  t.equal(fs.readdirSync('/proc/self/fd').length, fdsBefore, 'no fd left open beyond the cached namespaces');
  t.same(children(), childrenBefore, 'no child left, running or zombie');
  t.equal(mountLine(target), undefined);
});

t.test('the cache of user namespaces stays bounded however many mappings come by', async (t) => {
  const { source, target } = makeTree(t);
  unmountAfter(t, target);
  const nsFds = (): number => fs.readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return fs.readlinkSync(`/proc/self/fd/${fd}`).startsWith('user:');
    } catch {
      return false;
    }
  }).length;
  for (let i = 0; i < 100; i++) {
    await native.idmapMount(source, target, UID_BASE + i * 65536, GID_BASE + i * 65536, 65536);
    t.same(owner(path.join(target, 'user')), [UID_BASE + i * 65536 + 1000, GID_BASE + i * 65536 + 1000], `mapping ${i} shows its own ids`);
    native.umount(target, 0);
  }
  t.ok(nsFds() <= 64, `at most 64 namespace fds kept (${nsFds()})`);
});

t.test('mounts made at once on worker threads each get their own mapping', async (t) => {
  const { source, target } = makeTree(t);
  const targets = Array.from({ length: 12 }, (_, i) => {
    const dir = `${target}-${i}`;
    fs.mkdirSync(dir);
    unmountAfter(t, dir);
    return dir;
  });
  const childrenBefore = children();
  // New mappings (not cached yet), so each worker clones a holder at the same time as the others.
  const base = (i: number): number => UID_BASE + (200 + i) * 65536;
  await Promise.all(targets.map((dir, i) => native.idmapMount(source, dir, base(i), base(i), 65536)));
  targets.forEach((dir, i) => t.same(owner(path.join(dir, 'user')), [base(i) + 1000, base(i) + 1000], `mount ${i} shows its own ids`));
  t.same(children(), childrenBefore, 'every holder was reaped');
});
