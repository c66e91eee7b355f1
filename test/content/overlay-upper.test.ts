// A workspace's overlay upper layer survives a backup: files deleted from the image stay deleted, a
// directory recreated empty keeps hiding the image's entries, renamed image directories and image files
// whose metadata changed look the same, and file capabilities are kept, on a real overlay mount.
import t, { Test } from 'tap';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { KeyRing } from '../../src/crypto/keys';
import { mountsUnder } from '../../src/sandbox/rootfs';
import { TreeArchiveStream } from '../../src/content/archive';
import { BackupLog, BackupStore } from '../../src/content/backups';
import { SnapshotStore } from '../../src/content/repo/snapshots';
import { fsops } from '../../src/native';
import { FsObjectStorage } from '../../src/content/storage-fs';
import { BINDING, entry, quietLog, snapshot, storeCraftedBackup, UID_BASE } from './backup-suite';

const CAP = 'security.capability';
// struct vfs_cap_data for cap_net_raw (bit 13) permitted + effective.
const NET_RAW_V2 = Buffer.from('0100000200200000000000000000000000000000', 'hex');

/** A private base directory; its teardown unmounts what the test mounted below it, then removes it. */
function overlayBase(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-overlay-${process.pid}-${crypto.randomBytes(3).toString('hex')}-`));
  t.teardown(() => {
    for (const m of mountsUnder(dir).reverse()) execFileSync('umount', [m]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}


/** The workspace's overlay as src/sandbox/rootfs.ts mounts it: metacopy=on (implies redirect_dir=on), nodev. */
function mountOverlay(base: string, name: string, upper: string): string {
  const work = path.join(base, `${name}-work`);
  const merged = path.join(base, `${name}-merged`);
  fs.mkdirSync(work);
  fs.mkdirSync(merged);
  execFileSync('mount', ['-t', 'overlay', 'overlay', '-o',
    `nodev,lowerdir=${path.join(base, 'lower')},upperdir=${upper},workdir=${work},metacopy=on`, merged]);
  return merged;
}

/** An image-like lower layer owned by host root. */
function makeLower(lower: string): void {
  const files: Record<string, string> = {
    'etc/hostname': 'image\n', 'etc/motd': 'welcome\n', 'bin/tool': '#!/bin/sh\necho tool\n',
    'docs/a.txt': 'a', 'docs/b.txt': 'b', 'cache/old1': '1', 'cache/old2': '2', 'cache/sub/old3': '3',
    'srv/data/x.txt': 'served', 'old-file': 'deleted later',
  };
  for (const [rel, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(lower, rel)), { recursive: true });
    fs.writeFileSync(path.join(lower, rel), text);
  }
  fs.chmodSync(path.join(lower, 'bin/tool'), 0o755);
}

/** What rootfs.ts falls back to without idmapped lower layers: every image entry chowned through the overlay
 *  to container root, a metadata-only copy-up each. */
function shiftOwnership(merged: string, rel = '.'): void {
  const p = path.join(merged, rel);
  const st = fs.lstatSync(p);
  if (st.isSymbolicLink()) return;
  fs.chownSync(p, UID_BASE + st.uid, UID_BASE + st.gid);
  if (st.isDirectory()) for (const name of fs.readdirSync(p)) shiftOwnership(merged, path.join(rel, name));
}

/** What a workspace does to its image: delete, empty, recreate, rename, edit, add a capability. */
function changeThroughOverlay(merged: string): void {
  fs.rmSync(path.join(merged, 'old-file'));
  fs.rmSync(path.join(merged, 'docs/a.txt'));
  fs.rmSync(path.join(merged, 'docs/b.txt'));
  fs.rmSync(path.join(merged, 'cache'), { recursive: true });
  fs.mkdirSync(path.join(merged, 'cache'));
  fs.writeFileSync(path.join(merged, 'cache/new'), 'fresh');
  for (const p of ['cache', 'cache/new']) fs.chownSync(path.join(merged, p), UID_BASE, UID_BASE); // as the workspace's root
  fs.renameSync(path.join(merged, 'srv'), path.join(merged, 'srv-moved'));
  fs.writeFileSync(path.join(merged, 'etc/hostname'), 'workspace\n');
  fs.copyFileSync(path.join(merged, 'bin/tool'), path.join(merged, 'bin/pinger'));
  fs.chownSync(path.join(merged, 'bin/pinger'), UID_BASE, UID_BASE);
  execFileSync('setcap', ['cap_net_raw+ep', path.join(merged, 'bin/pinger')]);
  fsops.setXattr(path.join(merged, 'etc/motd'), 'user.note', Buffer.from('kept'));
}

function names(dir: string): string[] {
  return fs.readdirSync(dir).sort();
}

// Both formats: a snapshot (src/content/repo/) rebuilds the same archive from its chunks.
for (const format of ['full', 'snapshot'] as const) t.test(`${format}: a restored upper layer keeps deletions, opaque and renamed directories, metadata-only copies and capabilities`, async (t) => {
  const base = overlayBase(t);
  makeLower(path.join(base, 'lower'));
  const upperA = path.join(base, 'a-upper');
  fs.mkdirSync(upperA);
  const mergedA = mountOverlay(base, 'a', upperA);
  shiftOwnership(mergedA);
  changeThroughOverlay(mergedA);

  // The upper layer holds what overlayfs made of it (Documentation/filesystems/overlayfs.rst).
  const oldFile = fs.lstatSync(path.join(upperA, 'old-file'));
  t.ok(oldFile.isCharacterDevice() && oldFile.rdev === 0, 'a deleted image file is a whiteout');
  t.same(fsops.getXattr(path.join(upperA, 'cache'), 'trusted.overlay.opaque'), Buffer.from('y'), 'a recreated directory is opaque');
  t.same(fsops.getXattr(path.join(upperA, 'srv-moved'), 'trusted.overlay.redirect'), Buffer.from('srv'), 'a renamed one redirects');
  t.not(fsops.getXattr(path.join(upperA, 'bin/tool'), 'trusted.overlay.metacopy'), null, 'a chowned image file is metadata only');

  const content = path.join(base, 'content');
  fs.mkdirSync(content);
  fs.writeFileSync(path.join(content, 'notes.md'), 'mine');
  fsops.setXattr(path.join(content, 'notes.md'), 'user.mime_type', Buffer.from('text/markdown'));
  fs.writeFileSync(path.join(content, 'capped'), 'x');
  execFileSync('setcap', ['-n', String(UID_BASE + 5), 'cap_net_raw+ep', path.join(content, 'capped')]);
  fs.writeFileSync(path.join(content, 'foreign-cap'), 'x');
  execFileSync('setcap', ['-n', '1234', 'cap_net_raw+ep', path.join(content, 'foreign-cap')]);
  fsops.mkwhiteoutat(fs.openSync(content, 'r'), 'nested-whiteout');
  fsops.setXattr(path.join(content, 'notes.md'), 'trusted.tetrix-test', Buffer.from('host only'));

  const before = snapshot(mergedA);
  const keyring = KeyRing.open({ dir: path.join(base, 'keys') });
  const left: string[] = [];
  const log: BackupLog = { info: () => undefined, warn: (o) => left.push(`${(o as { path: string }).path}: ${(o as { why: string }).why}`) };
  // Through the archive-runner child, as the daemon does it: the child loads the addon too.
  const opts = { storage: new FsObjectStorage({ dir: path.join(base, 'backups') }), keyring, log };
  const store = format === 'full' ? new BackupStore(opts) : new SnapshotStore(opts);
  const { backupId } = await store.backup({ content, upper: upperA }, { uidBase: UID_BASE, binding: BINDING });
  t.same(left.sort(), [
    'foreign-cap: xattr security.capability not kept: it does not apply in the workspace\'s user namespace',
    'nested-whiteout: whiteout (0/0 device) outside the overlay upper layer',
    'notes.md: xattr trusted.tetrix-test not kept',
  ], 'what the backup left out is reported');

  const upperB = path.join(base, 'b-upper');
  const contentB = path.join(base, 'b-content');
  await store.restore(backupId, { content: contentB, upper: upperB }, { uidBase: UID_BASE });
  const mergedB = mountOverlay(base, 'b', upperB);

  t.same(snapshot(mergedB), before, 'the restored overlay shows the same tree: names, modes, owners, mtimes, contents');
  t.notOk(fs.existsSync(path.join(mergedB, 'old-file')), 'a file deleted from the image stays deleted');
  t.same(names(path.join(mergedB, 'docs')), [], 'a directory emptied of image files stays empty');
  t.same(names(path.join(mergedB, 'cache')), ['new'], 'the recreated directory hides the image\'s entries');
  t.notOk(fs.existsSync(path.join(mergedB, 'srv')), 'a renamed image directory is gone from its old name');
  t.equal(fs.readFileSync(path.join(mergedB, 'srv-moved/data/x.txt'), 'utf8'), 'served', 'and shows the image\'s files at the new one');
  t.equal(fs.readFileSync(path.join(mergedB, 'bin/tool'), 'utf8'), '#!/bin/sh\necho tool\n', 'a metadata-only copy reads the image\'s data');
  t.equal(fs.statSync(path.join(mergedB, 'bin/tool')).uid, UID_BASE, 'with the shifted owner');
  t.equal(fs.statSync(path.join(upperB, 'bin/tool')).blocks * 512 < 4096 * 2, true, 'and takes no data blocks in the upper layer');
  t.equal(fs.readFileSync(path.join(mergedB, 'etc/hostname'), 'utf8'), 'workspace\n');
  t.same(fsops.getXattr(path.join(mergedB, 'etc/motd'), 'user.note'), Buffer.from('kept'), 'user xattrs are kept');

  // The capability was set on the host as v2 (valid in every namespace); it comes back rooted in the
  // workspace's user namespace (v3, root id = uidBase), so it grants nothing on the host.
  const cap = fsops.getXattr(path.join(mergedB, 'bin/pinger'), CAP)!;
  t.equal(cap.length, 24, 'a namespaced (v3) file capability');
  t.same(cap.subarray(4, 20), NET_RAW_V2.subarray(4, 20), 'with the same capability sets (cap_net_raw=ep)');
  t.equal(cap.readUInt32LE(0) >>> 24, 3);
  t.equal(cap.readUInt32LE(20), UID_BASE, 'rooted at the workspace\'s root');
  t.match(execFileSync('getcap', [path.join(mergedB, 'bin/pinger')]).toString(), /cap_net_raw=ep/);

  t.same(fsops.getXattr(path.join(contentB, 'notes.md'), 'user.mime_type'), Buffer.from('text/markdown'));
  t.equal(fsops.getXattr(path.join(contentB, 'notes.md'), 'trusted.tetrix-test'), null, 'trusted.* is not restored in content');
  t.equal(fsops.getXattr(path.join(contentB, 'capped'), CAP)!.readUInt32LE(20), UID_BASE + 5, 'a nested root id keeps its container id');
  t.equal(fsops.getXattr(path.join(contentB, 'foreign-cap'), CAP), null);
  t.notOk(fs.existsSync(path.join(contentB, 'nested-whiteout')));

  // GNU tar reads the same archive into an equivalent upper layer (a manual recovery path).
  const tarFile = path.join(base, 'upper.tar');
  await pipeline(new TreeArchiveStream([{ name: 'upper', dir: upperA }], { uidBase: UID_BASE }), fs.createWriteStream(tarFile));
  const gnu = path.join(base, 'gnu');
  fs.mkdirSync(gnu);
  execFileSync('tar', ['--xattrs', '--xattrs-include=*', '--warning=no-unknown-keyword', '--numeric-owner', '-xpf', tarFile, '-C', gnu]);
  const gnuWhiteout = fs.lstatSync(path.join(gnu, 'upper/old-file'));
  t.ok(gnuWhiteout.isCharacterDevice() && gnuWhiteout.rdev === 0, 'GNU tar makes the whiteout');
  t.same(fsops.getXattr(path.join(gnu, 'upper/cache'), 'trusted.overlay.opaque'), Buffer.from('y'), 'and the opaque directory');
  t.same(fsops.getXattr(path.join(gnu, 'upper/etc/motd'), 'user.note'), Buffer.from('kept'));
});

t.test('crafted archives cannot make device nodes or set forbidden xattrs, and nothing lands outside staging', async (t) => {
  const base = overlayBase(t);
  const keyring = KeyRing.open({ dir: path.join(base, 'keys') });
  const storage = new FsObjectStorage({ dir: path.join(base, 'backups') });
  const store = new BackupStore({ storage, keyring, log: quietLog, inProcess: true });
  const x = (pairs: Record<string, string | Buffer>) => new Map(Object.entries(pairs).map(([k, v]) => [k, Buffer.from(v)]));
  const whiteout = (p: string) => entry({ path: p, type: 'char-device', mode: 0, devMajor: 0, devMinor: 0 });
  const dir = (p: string, xattrs?: Map<string, Buffer>) => entry({ path: p, type: 'directory', mode: 0o755, xattrs });
  const file = (p: string, xattrs?: Map<string, Buffer>) => entry({ path: p, xattrs }, Buffer.from('data'));
  const v3Cap = (rootId: number) => {
    const v = Buffer.alloc(24);
    NET_RAW_V2.copy(v);
    v.writeUInt32LE(0x03000001, 0);
    v.writeUInt32LE(rootId, 20);
    return v;
  };
  const tarOf = (...entries: Buffer[]) => Buffer.concat([dir('content'), dir('upper'), ...entries, Buffer.alloc(1024)]);
  const cases: [string, RegExp, Buffer][] = [
    ['a whiteout in the content root', /outside the upper root/, tarOf(whiteout('content/wh'))],
    ['a character device 1,3 in the upper root', /device nodes are not restored/,
      tarOf(entry({ path: 'upper/null', type: 'char-device', devMajor: 1, devMinor: 3 }))],
    ['a character device 0,1 in the upper root', /device nodes are not restored/,
      tarOf(entry({ path: 'upper/x', type: 'char-device', devMajor: 0, devMinor: 1 }))],
    ['a block device 0,0 in the upper root', /device nodes are not restored/,
      tarOf(entry({ path: 'upper/sda', type: 'block-device', devMajor: 0, devMinor: 0 }))],
    ['a whiteout as the upper root', /the root must be a directory/,
      Buffer.concat([dir('content'), whiteout('upper'), Buffer.alloc(1024)])],
    ['a whiteout through a symlink', /not a directory/,
      tarOf(entry({ path: 'upper/l', type: 'symlink', linkpath: '.' }), whiteout('upper/l/wh'))],
    ['security.selinux', /security\.selinux" is not restored/,
      tarOf(file('upper/f', x({ 'security.selinux': 'system_u:object_r:shadow_t:s0' })))],
    ['trusted.overlay.opaque in content', /outside the upper layer/,
      tarOf(dir('content/d', x({ 'trusted.overlay.opaque': 'y' })))],
    ['trusted.overlay.origin in upper', /trusted\.overlay\.origin" is not restored/,
      tarOf(file('upper/f', x({ 'trusted.overlay.origin': 'fh' })))],
    ['an arbitrary trusted.* name', /trusted\.evil" is not restored/,
      tarOf(dir('upper/d', x({ 'trusted.evil': '1' })))],
    ['an unknown xattr namespace', /system\.posix_acl_access" is not restored/,
      tarOf(file('content/f', x({ 'system.posix_acl_access': '\x02' })))],
    ['a capability on a directory', /security\.capability" is not restored on a directory/,
      tarOf(dir('content/d', x({ [CAP]: NET_RAW_V2 })))],
    ['a capability rooted outside the workspace', /rooted outside the workspace/,
      tarOf(file('content/f', x({ [CAP]: v3Cap(70000) })))],
    ['a malformed capability', /security\.capability: malformed/,
      tarOf(file('content/f', x({ [CAP]: Buffer.alloc(7) })))],
    ['a redirect with ".."', /redirect: malformed/,
      tarOf(dir('upper/d', x({ 'trusted.overlay.redirect': '/../etc' })))],
    ['an opaque value other than "y"', /opaque: malformed/,
      tarOf(dir('upper/d', x({ 'trusted.overlay.opaque': 'n' })))],
    ['xattrs on a symlink', /not a file or directory/,
      tarOf(entry({ path: 'upper/s', type: 'symlink', linkpath: 'x', xattrs: x({ 'user.a': '1' }) }))],
    ['xattrs on a whiteout', /not a file or directory/,
      tarOf(entry({ path: 'upper/w', type: 'char-device', xattrs: x({ 'trusted.overlay.opaque': 'y' }) }))],
    ['a metadata-only size in content', /outside the upper layer/,
      tarOf(entry({ path: 'content/m', metacopySize: 1 << 30, xattrs: x({ 'trusted.overlay.metacopy': '' }) }))],
    ['a metadata-only size without metacopy', /needs trusted\.overlay\.metacopy/,
      tarOf(entry({ path: 'upper/m', metacopySize: 1 << 30 }))],
  ];
  const target = { content: path.join(base, 'target-content'), upper: path.join(base, 'target-upper') };
  fs.mkdirSync(target.content);
  fs.mkdirSync(target.upper);
  fs.writeFileSync(path.join(target.upper, 'precious'), 'keep');
  const before = [snapshot(target.content, 0), snapshot(target.upper, 0)];
  const listing = () => fs.readdirSync(base).sort();
  const baseBefore = listing();
  for (const [name, why, tar] of cases) {
    const id = await storeCraftedBackup(storage, keyring, tar, ['content', 'upper']);
    await t.rejects(store.restore(id, target, { uidBase: UID_BASE }), { code: 'DATA_LOSS', message: why }, name);
    t.same([snapshot(target.content, 0), snapshot(target.upper, 0)], before, `${name}: targets untouched`);
    t.same(listing(), baseBefore, `${name}: nothing new next to the targets (no staging left)`);
  }

  const ok = await storeCraftedBackup(storage, keyring, tarOf(
    whiteout('upper/gone'),
    dir('upper/opaque', x({ 'trusted.overlay.opaque': 'y', 'user.a': 'b' })),
    file('upper/capped', x({ [CAP]: NET_RAW_V2 })),
    entry({ path: 'upper/meta', metacopySize: 12345, xattrs: x({ 'trusted.overlay.metacopy': '' }) })), ['content', 'upper']);
  await store.restore(ok, target, { uidBase: UID_BASE });
  const gone = fs.lstatSync(path.join(target.upper, 'gone'));
  t.ok(gone.isCharacterDevice() && gone.rdev === 0, 'a whiteout in the upper root is restored');
  t.same(fsops.getXattr(path.join(target.upper, 'opaque'), 'trusted.overlay.opaque'), Buffer.from('y'));
  t.equal(fsops.getXattr(path.join(target.upper, 'capped'), CAP)!.readUInt32LE(20), UID_BASE, 'a v2 capability comes back rooted at uidBase');
  t.equal(fs.statSync(path.join(target.upper, 'meta')).size, 12345, 'a metadata-only file gets its size');
  t.equal(fs.statSync(path.join(target.upper, 'meta')).blocks, 0, 'as a hole');
});
