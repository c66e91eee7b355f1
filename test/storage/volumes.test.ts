// The storage room on its own, against the real kernel: a volume per workspace, its limit, its key, and
// nothing left of it after teardown. The daemon-level behaviour is in daemon.test.ts.
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { native } from '../../src/native';
import { loopsUnder } from '../../src/storage/loops';
import type { DiskKeyStore } from '../../src/storage/types';
import { WorkspaceVolumes } from '../../src/storage/volumes';
import { mountsUnder } from '../../src/sandbox/rootfs';

const MiB = 2 ** 20;
const silent = { info: () => undefined, warn: () => undefined };

/** Sealing is the state database's business (store.ts); here the keys are kept as the store would hand them back. */
function keyStore(): DiskKeyStore & { held: Map<string, Buffer> } {
  const held = new Map<string, Buffer>();
  return {
    held,
    put: (id, key) => void held.set(id, Buffer.from(key)),
    get: (id) => (held.has(id) ? Buffer.from(held.get(id)!) : undefined),
    erase: (id) => void held.delete(id),
  };
}

async function setup(t: Tap.Test, poolSize = 0) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-storage-'));
  const keys = keyStore();
  const volumes = new WorkspaceVolumes({ dir: path.join(root, 'storage'), keys, log: silent, defaults: { bytes: 64 * MiB, inodes: 0 }, poolSize });
  await volumes.start();
  t.teardown(async () => {
    await volumes.stop();
    for (const m of mountsUnder(root).reverse()) await native.umountAsync(m, native.constants.MNT_DETACH).catch(() => undefined);
    fs.rmSync(root, { recursive: true, force: true });
  });
  return { root, keys, volumes, wsDir: (id: string) => path.join(root, 'workspaces', id) };
}

t.test('a write past the volume limit fails with ENOSPC, and the neighbour keeps writing', async (t) => {
  const { volumes, wsDir } = await setup(t);
  await volumes.create('full', { bytes: 32 * MiB, inodes: 0 }, wsDir('full'));
  await volumes.create('neighbour', { bytes: 32 * MiB, inodes: 0 }, wsDir('neighbour'));
  const chunk = Buffer.alloc(MiB, 1);
  let err: NodeJS.ErrnoException | undefined;
  const fd = fs.openSync(path.join(wsDir('full'), 'fill'), 'w');
  try {
    for (let i = 0; i < 64; i++) fs.writeSync(fd, chunk);
    fs.fsyncSync(fd);
  } catch (e) {
    err = e as NodeJS.ErrnoException;
  } finally {
    fs.closeSync(fd);
  }
  t.equal(err?.code, 'ENOSPC', 'the 33rd MiB is refused');
  fs.writeFileSync(path.join(wsDir('neighbour'), 'ok'), chunk);
  t.equal(fs.statSync(path.join(wsDir('neighbour'), 'ok')).size, MiB, 'the neighbour is unaffected');
  const u = volumes.usage('full')!;
  t.ok(u.usedBytes >= u.limitBytes - MiB, `usage says full (${u.usedBytes}/${u.limitBytes})`);
  t.ok(u.limitBytes <= 32 * MiB, 'the limit is the volume size');
});

t.test('an inode limit stops file creation with ENOSPC', async (t) => {
  const { volumes, wsDir } = await setup(t);
  await volumes.create('files', { bytes: 32 * MiB, inodes: 1024 }, wsDir('files'));
  let err: NodeJS.ErrnoException | undefined;
  for (let i = 0; i < 4096 && !err; i++) {
    try {
      fs.writeFileSync(path.join(wsDir('files'), `f${i}`), '');
    } catch (e) {
      err = e as NodeJS.ErrnoException;
    }
  }
  t.equal(err?.code, 'ENOSPC');
  const u = volumes.usage('files')!;
  t.ok(u.limitInodes >= 1024 && u.limitInodes < 4096, `the inode limit holds (${u.limitInodes})`);
});

t.test('closed, the volume holds no plaintext; erased, nothing opens it', async (t) => {
  const { root, volumes, keys, wsDir } = await setup(t);
  const marker = `tetrix-marker-${crypto.randomBytes(8).toString('hex')}`;
  await volumes.create('secret', { bytes: 32 * MiB, inodes: 0 }, wsDir('secret'));
  fs.mkdirSync(path.join(wsDir('secret'), 'content'));
  fs.writeFileSync(path.join(wsDir('secret'), 'content', `${marker}.txt`), marker.repeat(100));
  await volumes.close('secret', wsDir('secret'));
  t.same(mountsUnder(root), [], 'nothing stays mounted');
  t.same(loopsUnder(root), [], 'no loop device stays attached');
  const image = path.join(root, 'storage', 'images', 'secret.img');
  const raw = fs.readFileSync(image);
  t.equal(raw.indexOf(marker), -1, 'neither the name nor the content is in the image in plaintext');
  await volumes.whileOpen('secret', wsDir('secret'), async () => {
    t.equal(fs.readFileSync(path.join(wsDir('secret'), 'content', `${marker}.txt`), 'utf8'), marker.repeat(100), 'opened again with its key');
  });
  t.same(mountsUnder(root), [], 'closed again after');
  const copy = path.join(root, 'copy.img');
  fs.copyFileSync(image, copy);
  await volumes.open('secret', wsDir('secret'));
  const mnt = path.join(root, 'storage', 'mnt', 'secret');
  const { identifier } = native.fscryptPolicyOf(path.join(mnt, 'ws'))!;
  t.equal(native.fscryptKeyStatus(mnt, identifier), 'present');
  await volumes.eraseKey('secret');
  t.equal(native.fscryptKeyStatus(mnt, identifier), 'absent', 'erasing takes the key out of the kernel too, before any unmount');
  t.throws(() => fs.readFileSync(path.join(wsDir('secret'), 'content', `${marker}.txt`)), 'and the open volume no longer reads');
  await native.umountAsync(wsDir('secret'), 0);
  await volumes.destroy('secret');
  t.notOk(keys.held.has('secret'), 'the sealed key is gone');
  t.notOk(fs.existsSync(image), 'the image is gone');
  // A copy of the ciphertext taken before teardown: mounted without the key, names and content stay sealed.
  const peek = path.join(root, 'peek');
  fs.mkdirSync(peek);
  await native.loopMount(copy, peek, 'ext4', 0, 'ro', 'tetrix-test', false);
  try {
    const [dir, ...others] = fs.readdirSync(path.join(peek, 'ws'));
    t.same(others, []);
    t.not(dir, 'content', 'the directory name is ciphertext');
    const names = fs.readdirSync(path.join(peek, 'ws', dir));
    t.equal(names.length, 1);
    t.notOk(names[0].includes(marker), 'the file name is ciphertext');
    t.throws(() => fs.readFileSync(path.join(peek, 'ws', dir, names[0])), { errno: -126 }, 'the content does not open (ENOKEY)');
  } finally {
    await native.umountAsync(peek, 0);
  }
  t.same(loopsUnder(root), []);
});

t.test('a pooled image serves a start of the default size', async (t) => {
  const { root, volumes, wsDir } = await setup(t, 2);
  await volumes.poolFilled();
  const pool = path.join(root, 'storage', 'pool');
  const pooled = fs.readdirSync(pool).filter((n) => n.endsWith('.img')).map((name) => fs.statSync(path.join(pool, name)).ino);
  t.equal(pooled.length, 2);
  await volumes.create('pooled', { bytes: 64 * MiB, inodes: 0 }, wsDir('pooled'));
  t.ok(pooled.includes(fs.statSync(path.join(root, 'storage', 'images', 'pooled.img')).ino), 'the volume is a pool image, renamed');
  t.ok(volumes.usage('pooled')!.limitBytes > 56 * MiB, 'of the default size (less the journal)');
  await volumes.close('pooled', wsDir('pooled'));
  await volumes.poolFilled();
  t.equal(fs.readdirSync(pool).filter((n) => n.endsWith('.img')).length, 2, 'refilled');
  t.equal(fs.readdirSync(path.join(pool, 'mnt')).length, 2, 'each mounted, ready to be moved into place');
});

t.test('sweep removes volumes, mounts and loop devices no workspace accounts for', async (t) => {
  const { root, volumes, wsDir } = await setup(t);
  await volumes.create('orphan', { bytes: 32 * MiB, inodes: 0 }, wsDir('orphan'));
  await volumes.create('kept', { bytes: 32 * MiB, inodes: 0 }, wsDir('kept'));
  await native.umountAsync(wsDir('orphan'), 0);
  t.equal(loopsUnder(root).length, 2);
  await volumes.sweep(new Set(['kept']));
  t.equal(loopsUnder(root).length, 1, 'the orphan\'s loop device went with its mount');
  t.notOk(fs.existsSync(path.join(root, 'storage', 'images', 'orphan.img')));
  t.ok(fs.existsSync(path.join(root, 'storage', 'images', 'kept.img')));
});

t.test('under a shared mount (/ is one under systemd), where MS_MOVE is refused, a pool volume still takes its place', async (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-storage-shared-'));
  await native.mountAsync(root, root, '', native.constants.MS_BIND, '');
  await native.mountAsync('', root, '', native.constants.MS_SHARED, '');
  const volumes = new WorkspaceVolumes({ dir: path.join(root, 'storage'), keys: keyStore(), log: silent, defaults: { bytes: 64 * MiB, inodes: 0 }, poolSize: 1 });
  t.teardown(async () => {
    await volumes.stop();
    for (const m of mountsUnder(root).reverse()) await native.umountAsync(m, native.constants.MNT_DETACH).catch(() => undefined);
    fs.rmSync(root, { recursive: true, force: true });
  });
  await volumes.start();
  await volumes.poolFilled();
  const pooled = path.join(root, 'storage', 'pool', 'mnt', fs.readdirSync(path.join(root, 'storage', 'pool', 'mnt'))[0]);
  fs.mkdirSync(path.join(root, 'elsewhere'));
  await t.rejects(native.mountAsync(pooled, path.join(root, 'elsewhere'), '', native.constants.MS_MOVE, ''), { code: 'EINVAL' }, 'MS_MOVE is refused here');
  const wsDir = path.join(root, 'workspaces', 'shared');
  await volumes.create('shared', { bytes: 64 * MiB, inodes: 0 }, wsDir);
  fs.writeFileSync(path.join(wsDir, 'x'), 'y');
  t.equal(volumes.usage('shared')?.encrypted, true, 'the volume is in place');
  t.notOk(mountsUnder(root).includes(pooled), 'and the pool\'s mount of it is gone');
  await volumes.eraseKey('shared');
  await native.umountAsync(wsDir, 0);
  await volumes.destroy('shared');
  await volumes.stop();
  t.same(loopsUnder(root), [], 'no loop device left');
});
