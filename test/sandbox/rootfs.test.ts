// Workspace root filesystems: an overlay over the image that the workspace's own root owns, that never
// writes through to the image, and that release removes completely, mounts first.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { Test } from 'tap';
import { BUILTIN_BUSYBOX, ImageStore } from '../../src/sandbox/images';
import { native } from '../../src/sandbox/native';
import { mountsUnder, prepareRootfs, releaseRootfs, removeWorkspaceDir, unmountRootfs, workspaceLayout } from '../../src/sandbox/rootfs';

const UID_BASE = 3_000_000 + (process.pid % 1000) * 65536;

// One state dir for the file: the image is built once. 0711 like a real state dir must be, so the
// workspace's mapped root can reach its rootfs.
const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-rootfs-${process.pid}-`));
fs.chmodSync(stateDir, 0o711);
t.teardown(async () => {
  await unmountRootfs(stateDir); // only does something if a test failed half way
  await removeWorkspaceDir(stateDir);
});
let image = '';
t.before(async () => {
  image = (await new ImageStore({ stateDir }).resolve(BUILTIN_BUSYBOX)).rootfs;
});

let counter = 0;
function newWsDir(t: Test, name = `ws${++counter}`): string {
  const wsDir = path.join(stateDir, 'workspaces', name);
  t.teardown(() => releaseRootfs(wsDir));
  return wsDir;
}

function mountLine(target: string): string {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === target) ?? '';
}

t.test('the workspace sees the image through an overlay and its writes never reach the image', async (t) => {
  const wsDir = newWsDir(t);
  const { rootfs, contentDir } = await prepareRootfs({ wsDir, lowerDir: image, uidBase: UID_BASE });
  const layout = workspaceLayout(wsDir);
  t.equal(rootfs, layout.rootfs);
  t.equal(contentDir, layout.content);
  t.same(mountsUnder(wsDir), [rootfs]);
  t.match(mountLine(rootfs), /[ ,]nodev[ ,].* - overlay overlay /, 'an overlay, mounted nodev');
  t.ok(fs.existsSync(path.join(rootfs, 'bin', 'sh')));
  fs.writeFileSync(path.join(rootfs, 'etc', 'motd'), 'hello\n');
  fs.rmSync(path.join(rootfs, 'bin', 'vi'));
  t.equal(fs.readFileSync(path.join(layout.upper, 'etc', 'motd'), 'utf8'), 'hello\n', 'the write is in upper/');
  t.notOk(fs.existsSync(path.join(image, 'etc', 'motd')), 'not in the image');
  t.ok(fs.lstatSync(path.join(image, 'bin', 'vi')).isSymbolicLink(), 'a deletion leaves the image alone');
  t.notOk(fs.existsSync(path.join(rootfs, 'bin', 'vi')));
});

t.test('container root owns the image files and /workspace; the image stays host root\'s', async (t) => {
  const wsDir = newWsDir(t);
  const { rootfs, contentDir } = await prepareRootfs({ wsDir, lowerDir: image, uidBase: UID_BASE });
  for (const p of ['.', 'etc', 'etc/passwd', 'bin/busybox', 'root', 'tmp']) {
    const st = fs.lstatSync(path.join(rootfs, p));
    t.same([st.uid, st.gid], [UID_BASE, UID_BASE], `/${p} owned by container root`);
  }
  t.equal(fs.statSync(path.join(rootfs, 'tmp')).mode & 0o7777, 0o1777, 'modes kept');
  t.equal(fs.statSync(path.join(rootfs, 'bin', 'busybox')).mode & 0o7777, 0o755);
  t.ok([image, ...fs.readdirSync(image, { recursive: true }).map((p) => path.join(image, String(p)))].every((p) => fs.lstatSync(p).uid === 0), 'the image is untouched');
  const content = fs.statSync(contentDir);
  t.same([content.uid, content.gid, content.mode & 0o7777], [UID_BASE, UID_BASE, 0o755]);
  t.equal(fs.statSync(wsDir).mode & 0o7777, 0o711, 'wsDir: traversable, not listable');
  if (/metacopy=on/.test(mountLine(rootfs))) {
    const copied = fs.statSync(path.join(workspaceLayout(wsDir).upper, 'bin', 'busybox'));
    t.ok(copied.blocks * 512 < 64 * 1024, `metacopy: the shift copied metadata, not the ${copied.size}-byte binary`);
  }
});

t.test('ownership shift keeps image semantics: setuid bits, ids outside the range, sticky-dir symlinks', async (t) => {
  const lower = path.join(stateDir, 'images', 'custom');
  t.teardown(() => fs.rmSync(lower, { recursive: true, force: true }));
  fs.mkdirSync(path.join(lower, 'tmp'), { recursive: true, mode: 0o1777 });
  fs.chmodSync(path.join(lower, 'tmp'), 0o1777);
  fs.mkdirSync(path.join(lower, 'usr', 'bin'), { recursive: true });
  fs.writeFileSync(path.join(lower, 'usr', 'bin', 'su'), '');
  fs.chmodSync(path.join(lower, 'usr', 'bin', 'su'), 0o4755);
  fs.writeFileSync(path.join(lower, 'usr', 'bin', 'mail'), '');
  fs.chownSync(path.join(lower, 'usr', 'bin', 'mail'), 0, 8);
  fs.chmodSync(path.join(lower, 'usr', 'bin', 'mail'), 0o2755);
  fs.writeFileSync(path.join(lower, 'foreign'), '');
  fs.chownSync(path.join(lower, 'foreign'), 70000, 70000);
  fs.symlinkSync('/nowhere', path.join(lower, 'tmp', 'link'));
  const wsDir = newWsDir(t);
  const { rootfs } = await prepareRootfs({ wsDir, lowerDir: lower, uidBase: UID_BASE });
  const su = fs.statSync(path.join(rootfs, 'usr', 'bin', 'su'));
  t.same([su.uid, su.mode & 0o7777], [UID_BASE, 0o4755], 'setuid kept, now for container root');
  const mail = fs.statSync(path.join(rootfs, 'usr', 'bin', 'mail'));
  t.same([mail.gid, mail.mode & 0o7777], [UID_BASE + 8, 0o2755], 'setgid kept, group shifted');
  t.equal(fs.statSync(path.join(rootfs, 'foreign')).uid, 70000, 'an id outside the mapped range is left alone');
  t.equal(fs.lstatSync(path.join(rootfs, 'tmp', 'link')).uid, UID_BASE, 'a symlink in a sticky dir is shifted');
});

/**
 * Runs `script` with /bin/sh inside rootfs as container root: a holder process owns a user namespace
 * mapping 0..65535 to UID_BASE.., and nsenter joins it as uid 0 with rootfs as its root.
 */
async function runAsContainerRoot(t: Test, rootfs: string, script: string): Promise<{ code: number | null; out: string }> {
  const holder = spawn('unshare', ['--user', 'sleep', '1000'], { stdio: 'ignore' });
  t.teardown(() => {
    if (holder.exitCode === null && holder.signalCode === null) holder.kill('SIGKILL');
  });
  const ours = fs.readlinkSync('/proc/self/ns/user');
  const deadline = Date.now() + 5000;
  while (fs.readlinkSync(`/proc/${holder.pid}/ns/user`) === ours && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  fs.writeFileSync(`/proc/${holder.pid}/uid_map`, `0 ${UID_BASE} 65536\n`);
  fs.writeFileSync(`/proc/${holder.pid}/gid_map`, `0 ${UID_BASE} 65536\n`);
  const child = spawn('nsenter', ['-t', String(holder.pid), '--user', `--root=${rootfs}`, '--wd=/', '/bin/sh', '-c', script], {
    env: { PATH: '/bin' },
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  holder.kill('SIGKILL');
  return { code, out };
}

t.test('a process running as container root in a user namespace can change its root filesystem', async (t) => {
  const wsDir = newWsDir(t);
  const { rootfs } = await prepareRootfs({ wsDir, lowerDir: image, uidBase: UID_BASE });
  const script = [
    'set -e',
    'id -u',
    'stat -c "%u %U" /etc/passwd',
    'echo "dev::1000:1000::/home/dev:/bin/sh" >> /etc/passwd',
    'mkdir /newdir /root/.config',
    'echo ok > /bin/tool',
  ].join('; ');
  const { code, out } = await runAsContainerRoot(t, rootfs, script);
  t.equal(code, 0, out);
  t.equal(out, '0\n0 root\n', 'it is root and sees /etc/passwd as its own');
  const upper = workspaceLayout(wsDir).upper;
  t.match(fs.readFileSync(path.join(upper, 'etc', 'passwd'), 'utf8'), /^dev::1000/m);
  t.equal(fs.statSync(path.join(upper, 'newdir')).uid, UID_BASE, 'new files belong to the mapped range on the host');
  t.equal(fs.statSync(path.join(upper, 'root', '.config')).uid, UID_BASE);
  t.notMatch(fs.readFileSync(path.join(image, 'etc', 'passwd'), 'utf8'), /dev::/, 'the image is unchanged');
});

t.test('release unmounts everything below the workspace, removes it, and can run again', async (t) => {
  const wsDir = newWsDir(t, 'with space');
  const { rootfs, contentDir } = await prepareRootfs({ wsDir, lowerDir: image, uidBase: UID_BASE });
  // What a crashed start could leave in the host namespace: a bind below the overlay.
  native.mount(contentDir, path.join(rootfs, 'workspace'), '', native.constants.MS_BIND, '');
  native.mount(contentDir, path.join(rootfs, 'workspace'), '', native.constants.MS_BIND, '');
  t.equal(mountsUnder(wsDir).length, 3, 'overlay and two stacked binds, path with a space');
  await releaseRootfs(wsDir);
  t.same(mountsUnder(wsDir), []);
  t.notOk(fs.existsSync(wsDir));
  t.ok(fs.existsSync(path.join(image, 'bin', 'busybox')), 'the image survived');
  await releaseRootfs(wsDir);
  t.pass('a second release is a no-op');
});

t.test('release finishes half-created directories', async (t) => {
  const wsDir = newWsDir(t);
  fs.mkdirSync(path.join(wsDir, 'upper', 'etc'), { recursive: true });
  fs.mkdirSync(path.join(wsDir, 'work', 'work'), { recursive: true, mode: 0 });
  await releaseRootfs(wsDir);
  t.notOk(fs.existsSync(wsDir));
  await releaseRootfs(path.join(stateDir, 'workspaces', 'never-existed'));
});

t.test('a workspace directory that is still mounted is not deleted', async (t) => {
  const wsDir = newWsDir(t);
  const { rootfs } = await prepareRootfs({ wsDir, lowerDir: image, uidBase: UID_BASE });
  await t.rejects(removeWorkspaceDir(wsDir), { code: 'FAILED_PRECONDITION', message: /still mounted/ });
  t.ok(fs.existsSync(path.join(rootfs, 'bin', 'busybox')), 'nothing was deleted through the mount');
  t.ok(fs.existsSync(path.join(image, 'bin', 'busybox')));
});

t.test('prepare refuses what it cannot do safely', async (t) => {
  const wsDir = newWsDir(t);
  await prepareRootfs({ wsDir, lowerDir: image, uidBase: UID_BASE });
  await t.rejects(prepareRootfs({ wsDir, lowerDir: image, uidBase: UID_BASE }), { code: 'FAILED_PRECONDITION' }, 'a second prepare on a live rootfs');
  t.equal(mountsUnder(wsDir).length, 1, 'the refusal did not stack another mount');
  const other = newWsDir(t);
  await t.rejects(prepareRootfs({ wsDir: other, lowerDir: image, uidBase: 0 }), { code: 'INVALID_ARGUMENT', message: /^uid_base: / });
  await t.rejects(prepareRootfs({ wsDir: other, lowerDir: path.join(stateDir, 'nope'), uidBase: UID_BASE }), { code: 'NOT_FOUND' });
  await t.rejects(prepareRootfs({ wsDir: path.join(stateDir, 'workspaces', 'a,b'), lowerDir: image, uidBase: UID_BASE }), { code: 'INVALID_ARGUMENT' });
  t.same(mountsUnder(other), []);
});

t.test('every test released what it mounted', async (t) => {
  t.same(mountsUnder(stateDir), []);
  t.same(fs.readdirSync(path.join(stateDir, 'workspaces')), []);
});
