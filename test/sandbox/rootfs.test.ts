// Workspace root filesystems: an overlay over the image that the workspace's own root owns, that never
// writes through to the image, and that release removes completely, mounts first. The image reaches
// container root through an idmapped lower layer; an image on ramfs (which refuses idmapped mounts) takes
// the chown fallback, and both must look the same from inside.
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { Test } from 'tap';
import { BUILTIN_BUSYBOX, ImageStore } from '../../src/sandbox/images';
import { native } from '../../src/native';
import { mountsUnder, prepareRootfs, releaseRootfs, removeWorkspaceDir, unmountRootfs } from '../../src/sandbox/rootfs';
import { workspaceLayout } from '../../src/layout';

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

/** A static program that prints its real and effective uid: the image's setuid probe. */
const euidProbe = ((): string => {
  const dir = path.join(stateDir, 'probe');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'euid.c'), '#include <stdio.h>\n#include <unistd.h>\nint main(void) { printf("%d %d\\n", (int)getuid(), (int)geteuid()); return 0; }\n');
  execFileSync('gcc', ['-static', '-O2', '-o', path.join(dir, 'euid'), path.join(dir, 'euid.c')]);
  return path.join(dir, 'euid');
})();

/**
 * The busybox image plus what ownership shifting must get right: a setuid-root probe, a setgid file of
 * group 8, a file of an id outside the mapped range, a symlink in a sticky dir, a 0700 /root. On ramfs
 * (which refuses idmapped mounts) when fallback is set: the image then takes the chown walk.
 */
function customImage(t: Test, fallback: boolean): string {
  const lower = path.join(stateDir, 'images', `custom-${++counter}`);
  fs.mkdirSync(lower, { recursive: true });
  if (fallback) native.mount('tetrix-test-ramfs', lower, 'ramfs', 0, 'mode=0755');
  t.teardown(() => {
    if (fallback) native.umount(lower, native.constants.MNT_DETACH);
    fs.rmSync(lower, { recursive: true, force: true });
  });
  execFileSync('cp', ['-a', `${image}/.`, lower]);
  fs.mkdirSync(path.join(lower, 'usr', 'bin'), { recursive: true });
  fs.copyFileSync(euidProbe, path.join(lower, 'usr', 'bin', 'euid'));
  fs.chmodSync(path.join(lower, 'usr', 'bin', 'euid'), 0o4755);
  fs.writeFileSync(path.join(lower, 'usr', 'bin', 'mail'), '');
  fs.chownSync(path.join(lower, 'usr', 'bin', 'mail'), 0, 8);
  fs.chmodSync(path.join(lower, 'usr', 'bin', 'mail'), 0o2755);
  fs.writeFileSync(path.join(lower, 'foreign'), '');
  fs.chownSync(path.join(lower, 'foreign'), 70000, 70000);
  fs.symlinkSync('/nowhere', path.join(lower, 'tmp', 'link'));
  fs.chmodSync(path.join(lower, 'root'), 0o700);
  return lower;
}

/** path -> "mode uid gid sha256" for everything under dir: what "the image is unchanged" means. */
function snapshotTree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (p: string): void => {
    const st = fs.lstatSync(p);
    const body = st.isFile() ? crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex') : st.isSymbolicLink() ? fs.readlinkSync(p) : '-';
    out[path.relative(dir, p) || '.'] = `${st.mode.toString(8)} ${st.uid} ${st.gid} ${body}`;
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) walk(path.join(p, e));
  };
  walk(dir);
  return out;
}

t.test('the workspace sees the image through an overlay and its writes never reach the image', async (t) => {
  const wsDir = newWsDir(t);
  const { rootfs, contentDir } = await prepareRootfs({ wsDir, lowerDir: image, uidBase: UID_BASE });
  const layout = workspaceLayout(wsDir);
  t.equal(rootfs, layout.rootfs);
  t.equal(contentDir, layout.content);
  t.same(mountsUnder(wsDir), [layout.lower, rootfs], 'the idmapped image, then the overlay on it');
  t.match(mountLine(layout.lower), /^(\S+ ){5}ro,nosuid,nodev,\S*idmapped /, 'the image is bound read-only, nosuid, nodev, idmapped');
  t.match(mountLine(rootfs), /[ ,]nodev[ ,].* - overlay overlay /, 'an overlay, mounted nodev');
  t.notMatch(mountLine(rootfs), /nosuid/, 'not nosuid: setuid programs of the image work inside');
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
  const { rootfs, contentDir, ownership } = await prepareRootfs({ wsDir, lowerDir: image, uidBase: UID_BASE });
  t.same(ownership, { how: 'idmapped' }, 'this kernel takes idmapped lower layers');
  for (const p of ['.', 'etc', 'etc/passwd', 'bin/busybox', 'bin/sh', 'root', 'tmp']) {
    const st = fs.lstatSync(path.join(rootfs, p));
    t.same([st.uid, st.gid], [UID_BASE, UID_BASE], `/${p} owned by container root`);
  }
  t.equal(fs.statSync(path.join(rootfs, 'tmp')).mode & 0o7777, 0o1777, 'modes kept');
  t.equal(fs.statSync(path.join(rootfs, 'bin', 'busybox')).mode & 0o7777, 0o755);
  t.ok([image, ...fs.readdirSync(image, { recursive: true }).map((p) => path.join(image, String(p)))].every((p) => fs.lstatSync(p).uid === 0), 'the image is untouched');
  const content = fs.statSync(contentDir);
  t.same([content.uid, content.gid, content.mode & 0o7777], [UID_BASE, UID_BASE, 0o755]);
  t.equal(fs.statSync(wsDir).mode & 0o7777, 0o711, 'wsDir: traversable, not listable');
  t.same(fs.readdirSync(workspaceLayout(wsDir).upper), [], 'nothing was copied up to get there');
});

for (const fallback of [false, true]) {
  const how = fallback ? 'chowned' : 'idmapped';
  t.test(`ownership shift keeps image semantics (${how}): setuid bits, ids outside the range, sticky-dir symlinks`, async (t) => {
    const lower = customImage(t, fallback);
    const before = snapshotTree(lower);
    const wsDir = newWsDir(t);
    const { rootfs, ownership } = await prepareRootfs({ wsDir, lowerDir: lower, uidBase: UID_BASE });
    t.equal(ownership.how, how);
    if (fallback) t.match(ownership, { reason: /^idmap mount_setattr: EINVAL/ }, 'the kernel refused to idmap ramfs, and said so');
    const euid = fs.statSync(path.join(rootfs, 'usr', 'bin', 'euid'));
    t.same([euid.uid, euid.mode & 0o7777], [UID_BASE, 0o4755], 'setuid kept, now for container root');
    const mail = fs.statSync(path.join(rootfs, 'usr', 'bin', 'mail'));
    t.same([mail.gid, mail.mode & 0o7777], [UID_BASE + 8, 0o2755], 'setgid kept, group shifted');
    // Either way it is unmapped inside the workspace (nobody); idmapping shows it as the overflow id.
    t.equal(fs.statSync(path.join(rootfs, 'foreign')).uid, fallback ? 70000 : 65534, 'an id outside the mapped range is not given to the workspace');
    t.equal(fs.lstatSync(path.join(rootfs, 'tmp', 'link')).uid, UID_BASE, 'a symlink in a sticky dir is shifted');
    t.same(snapshotTree(lower), before, 'the image is unchanged');
  });
}

/**
 * Runs `script` with /bin/sh inside rootfs as container root (or uid): a holder process owns a user
 * namespace mapping 0..65535 to UID_BASE.., and nsenter joins it with rootfs as its root.
 */
async function runAsContainerRoot(t: Test, rootfs: string, script: string, uid = 0): Promise<{ code: number | null; out: string }> {
  const holder = spawn('unshare', ['--user', 'sleep', '1000'], { stdio: 'ignore' });
  t.teardown(() => {
    if (holder.exitCode === null && holder.signalCode === null) holder.kill('SIGKILL');
  });
  const ours = fs.readlinkSync('/proc/self/ns/user');
  const deadline = Date.now() + 5000;
  while (fs.readlinkSync(`/proc/${holder.pid}/ns/user`) === ours && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  fs.writeFileSync(`/proc/${holder.pid}/uid_map`, `0 ${UID_BASE} 65536\n`);
  fs.writeFileSync(`/proc/${holder.pid}/gid_map`, `0 ${UID_BASE} 65536\n`);
  const ids = uid === 0 ? [] : [`--setuid=${uid}`, `--setgid=${uid}`];
  const child = spawn('nsenter', ['-t', String(holder.pid), '--user', ...ids, `--root=${rootfs}`, '--wd=/', '/bin/sh', '-c', script], {
    env: { PATH: '/bin' },
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (out += d.toString()));
  // 'close', not 'exit': exit can come before the last of the output is read.
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  holder.kill('SIGKILL');
  return { code, out };
}

for (const fallback of [false, true]) {
  const how = fallback ? 'chowned' : 'idmapped';
  t.test(`a process running as container root in a user namespace can change its root filesystem (${how})`, async (t) => {
    const lower = customImage(t, fallback);
    const before = snapshotTree(lower);
    const wsDir = newWsDir(t);
    const { rootfs, ownership } = await prepareRootfs({ wsDir, lowerDir: lower, uidBase: UID_BASE });
    t.equal(ownership.how, how);
    const script = [
      'set -e',
      'id -u',
      'stat -c "%u %U" /etc/passwd',
      'echo "dev::1000:1000::/home/dev:/bin/sh" >> /etc/passwd',
      'mkdir /newdir /root/.config',
      'echo ok > /root/.profile',
      'echo ok > /bin/tool',
      'rm /bin/vi',
      'chown 1000:1000 /newdir',
    ].join('; ');
    const { code, out } = await runAsContainerRoot(t, rootfs, script);
    t.equal(code, 0, out);
    t.equal(out, '0\n0 root\n', 'it is root and sees /etc/passwd as its own');
    const upper = workspaceLayout(wsDir).upper;
    t.match(fs.readFileSync(path.join(upper, 'etc', 'passwd'), 'utf8'), /^dev::1000/m);
    t.same([fs.statSync(path.join(upper, 'etc', 'passwd')).uid, fs.statSync(path.join(upper, 'etc')).uid], [UID_BASE, UID_BASE], 'copied up with the shifted owner');
    t.equal(fs.statSync(path.join(upper, 'newdir')).uid, UID_BASE + 1000, 'new files belong to the mapped range on the host');
    t.equal(fs.statSync(path.join(upper, 'root', '.config')).uid, UID_BASE);
    t.equal(fs.readFileSync(path.join(upper, 'root', '.profile'), 'utf8'), 'ok\n');
    t.equal(fs.readFileSync(path.join(upper, 'bin', 'tool'), 'utf8'), 'ok\n');

    const setuid = await runAsContainerRoot(t, rootfs, '/usr/bin/euid; stat -c "%u %a" /usr/bin/euid', 1000);
    t.equal(setuid.code, 0, setuid.out);
    t.equal(setuid.out, '1000 0\n0 4755\n', 'an unprivileged user inside runs the image\'s setuid-root program as root');
    t.same(snapshotTree(lower), before, 'the image is unchanged: owners, modes and content');
  });
}

t.test('release unmounts everything below the workspace, removes it, and can run again', async (t) => {
  const wsDir = newWsDir(t, 'with space');
  const { rootfs, contentDir } = await prepareRootfs({ wsDir, lowerDir: image, uidBase: UID_BASE });
  // What a crashed start could leave in the host namespace: a bind below the overlay.
  native.mount(contentDir, path.join(rootfs, 'workspace'), '', native.constants.MS_BIND, '');
  native.mount(contentDir, path.join(rootfs, 'workspace'), '', native.constants.MS_BIND, '');
  t.equal(mountsUnder(wsDir).length, 4, 'image, overlay and two stacked binds, path with a space');
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
  t.equal(mountsUnder(wsDir).length, 2, 'the refusal did not stack another mount');
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
