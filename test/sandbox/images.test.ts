// Images: builtin:busybox is assembled from the host's static busybox and works as a root filesystem;
// every image resolves to a digest that names its exact tree.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { Test } from 'tap';
import { BUILTIN_BUSYBOX, ImageStore, imageDigest } from '../../src/sandbox/images';

function tempDir(t: Test, tag: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-images-${tag}-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function allEntries(root: string): string[] {
  return fs.readdirSync(root, { recursive: true }).map((p) => path.join(root, String(p)));
}

t.test('builtin:busybox is a working root filesystem built from the host busybox', async (t) => {
  const stateDir = tempDir(t, 'bb');
  const image = await new ImageStore({ stateDir }).resolve(BUILTIN_BUSYBOX);
  t.equal(image.name, BUILTIN_BUSYBOX);
  t.equal(image.rootfs, path.join(stateDir, 'images', 'busybox'));
  t.match(image.digest, /^sha256:[0-9a-f]{64}$/);
  const root = image.rootfs;
  t.ok(fs.readFileSync(path.join(root, 'bin/busybox')).equals(fs.readFileSync('/bin/busybox')), 'bin/busybox is the host binary');
  const applets = execFileSync('/bin/busybox', ['--list'], { encoding: 'utf8' }).split('\n').filter((a) => a && a !== 'busybox');
  for (const applet of applets) t.equal(fs.readlinkSync(path.join(root, 'bin', applet)), 'busybox', `bin/${applet}`);
  const mode = (p: string) => fs.lstatSync(path.join(root, p)).mode & 0o7777;
  t.equal(mode('tmp'), 0o1777);
  t.equal(mode('var/tmp'), 0o1777);
  t.equal(mode('root'), 0o700);
  t.equal(mode('bin/busybox'), 0o755);
  for (const dir of ['proc', 'sys', 'dev', 'etc', 'workspace', 'run']) t.ok(fs.statSync(path.join(root, dir)).isDirectory(), dir);
  t.equal(fs.readFileSync(path.join(root, 'etc/passwd'), 'utf8').split('\n')[0], 'root:x:0:0:root:/root:/bin/sh');
  t.match(fs.readFileSync(path.join(root, 'etc/passwd'), 'utf8'), /^nobody:x:65534:65534:/m);
  t.equal(fs.readFileSync(path.join(root, 'etc/resolv.conf'), 'utf8'), '');
  t.equal(fs.readFileSync(path.join(root, 'etc/hosts'), 'utf8'), '');
  const entries = [root, ...allEntries(root)].map((p) => fs.lstatSync(p));
  t.ok(entries.every((s) => s.uid === 0 && s.gid === 0), 'everything owned by root');
  t.ok(entries.every((s) => (s.mode & 0o6000) === 0), 'nothing setuid or setgid');
  // It runs: a shell, #!/usr/bin/env and an applet, chrooted into the image.
  fs.writeFileSync(path.join(root, 'tmp', 'probe'), '#!/usr/bin/env sh\necho "from $(basename $0)"\n', { mode: 0o755 });
  const out = execFileSync('/usr/sbin/chroot', [root, '/bin/sh', '-c', '/tmp/probe; id -u'], { encoding: 'utf8', env: { PATH: '/bin' } });
  fs.rmSync(path.join(root, 'tmp', 'probe'));
  t.equal(out, 'from probe\n0\n');
});

t.test('resolving again reuses the image; another state dir gets the same digest', async (t) => {
  const stateDir = tempDir(t, 'again');
  const first = await new ImageStore({ stateDir }).resolve(BUILTIN_BUSYBOX);
  const inode = fs.statSync(first.rootfs).ino;
  const second = await new ImageStore({ stateDir }).resolve(BUILTIN_BUSYBOX);
  t.same(second, first);
  t.equal(fs.statSync(second.rootfs).ino, inode, 'not rebuilt');
  const elsewhere = await new ImageStore({ stateDir: tempDir(t, 'other') }).resolve(BUILTIN_BUSYBOX);
  t.equal(elsewhere.digest, first.digest, 'the digest covers content, not timestamps or inodes');
  t.equal(await imageDigest(first.rootfs), first.digest, 'the cached digest is the real one');
});

t.test('concurrent first resolves build one image and leave no temp trees', async (t) => {
  const stateDir = tempDir(t, 'race');
  const stores = [new ImageStore({ stateDir }), new ImageStore({ stateDir }), new ImageStore({ stateDir })];
  const results = await Promise.all([...stores, stores[0]].map((s) => s.resolve(BUILTIN_BUSYBOX)));
  t.ok(results.every((r) => r.rootfs === results[0].rootfs && r.digest === results[0].digest));
  t.same(fs.readdirSync(path.join(stateDir, 'images')).filter((n) => n.includes('tmp')), []);
});

t.test('a dynamic or missing host busybox is refused with a clear error, leaving nothing', async (t) => {
  const stateDir = tempDir(t, 'dyn');
  await t.rejects(new ImageStore({ stateDir, hostBusybox: '/bin/ls' }).resolve(BUILTIN_BUSYBOX), {
    code: 'FAILED_PRECONDITION',
    message: /static busybox.*dynamically linked/,
  });
  await t.rejects(new ImageStore({ stateDir, hostBusybox: path.join(stateDir, 'absent') }).resolve(BUILTIN_BUSYBOX), {
    code: 'FAILED_PRECONDITION',
    message: /missing/,
  });
  const script = path.join(stateDir, 'script');
  fs.writeFileSync(script, '#!/bin/sh\n', { mode: 0o755 });
  await t.rejects(new ImageStore({ stateDir, hostBusybox: script }).resolve(BUILTIN_BUSYBOX), { code: 'FAILED_PRECONDITION' });
  t.notOk(fs.existsSync(path.join(stateDir, 'images', 'busybox')));
});

t.test('operator images resolve by name; their digest follows their content', async (t) => {
  const stateDir = tempDir(t, 'local');
  const imagesDir = tempDir(t, 'dir');
  fs.mkdirSync(path.join(imagesDir, 'tools-1.0', 'bin'), { recursive: true });
  fs.writeFileSync(path.join(imagesDir, 'tools-1.0', 'bin', 'tool'), 'v1', { mode: 0o755 });
  fs.symlinkSync(path.join(imagesDir, 'tools-1.0'), path.join(imagesDir, 'tools'));
  const store = new ImageStore({ stateDir, imagesDir });
  const first = await store.resolve('tools-1.0');
  t.same(first.rootfs, path.join(fs.realpathSync(imagesDir), 'tools-1.0'));
  t.equal((await store.resolve('tools')).rootfs, first.rootfs, 'a linked name resolves to the real directory');
  t.equal((await store.resolve('tools-1.0')).digest, first.digest);
  fs.writeFileSync(path.join(imagesDir, 'tools-1.0', 'bin', 'tool'), 'v2');
  const changed = await store.resolve('tools-1.0');
  t.not(changed.digest, first.digest, 'changed content, new digest (the cache noticed)');
  fs.chmodSync(path.join(imagesDir, 'tools-1.0', 'bin', 'tool'), 0o4755);
  t.not((await store.resolve('tools-1.0')).digest, changed.digest, 'a setuid bit changes the digest');
});

t.test('unknown and malformed names', async (t) => {
  const stateDir = tempDir(t, 'names');
  const imagesDir = tempDir(t, 'namesdir');
  fs.writeFileSync(path.join(imagesDir, 'plainfile'), '');
  const store = new ImageStore({ stateDir, imagesDir });
  await t.rejects(store.resolve('nosuch'), { code: 'NOT_FOUND', message: 'image: unknown image "nosuch"' });
  await t.rejects(store.resolve('plainfile'), { code: 'NOT_FOUND' });
  await t.rejects(store.resolve('builtin:alpine'), { code: 'NOT_FOUND', message: 'image: unknown image "builtin:alpine"' });
  await t.rejects(new ImageStore({ stateDir }).resolve('ubuntu'), { code: 'NOT_FOUND' }, 'no images dir configured');
  for (const bad of ['', '../etc', 'Ubuntu', '.hidden', 'a/b', 'x'.repeat(64)]) {
    await t.rejects(store.resolve(bad), { code: 'INVALID_ARGUMENT', message: /^image: / }, JSON.stringify(bad));
  }
});
