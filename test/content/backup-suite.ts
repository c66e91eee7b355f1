// The backup behaviour every storage backend must show; backups-fs.test.ts and backups-s3.test.ts run it.
import { Test } from 'tap';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { KeyRing } from '../../src/crypto/keys';
import { EncryptStream, newDataKey, STREAM_VERSION, DEFAULT_SEGMENT_SIZE, HEADER_BYTES, TAG_BYTES } from '../../src/crypto/stream';
import { BackupStore, BackupLog } from '../../src/content/backups';
import { createCompressStream } from '../../src/content/compress';
import { ObjectStorage } from '../../src/content/storage';
import { DomainError } from '../../src/errors';
import { encodeEntry, EntryHeader, padding } from '../helpers/tar-oracle';

export const UID_BASE = 300000;
/** What the suite's backups record as their origin. */
export const BINDING = { workspaceId: 'ws-suite', ownerId: 'alice', teamId: '', kind: 'REGULAR' } as const;
const SEG = DEFAULT_SEGMENT_SIZE;

export interface Backend {
  storage: ObjectStorage;
  /** How a child process builds the same backend: passed to backup-child.ts as JSON. */
  childConfig: object;
}

export const quietLog: BackupLog = { info: () => undefined, warn: () => undefined };

export function tempDir(t: Test, what: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-${what}-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// ------------------------------------------------------------------------------------------------
// Trees

/** A workspace-like tree: modes, container owners, symlinks, hard links, empty dirs, exact mtimes. */
export function makeTree(dir: string, opts: { bigRandom?: number } = {}): void {
  const own = (p: string, uid: number, gid = uid) => fs.lchownSync(p, UID_BASE + uid, UID_BASE + gid);
  fs.mkdirSync(dir, { recursive: true });
  fs.mkdirSync(path.join(dir, 'src/lib'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'empty/deeper'), { recursive: true });
  fs.mkdirSync(path.join(dir, 'private'), { mode: 0o700 });
  fs.mkdirSync(path.join(dir, 'shared-tmp'));
  fs.chmodSync(path.join(dir, 'shared-tmp'), 0o1777);
  for (let i = 0; i < 50; i++) fs.writeFileSync(path.join(dir, 'src/lib', `m${i}.ts`), `export const v${i} = ${i};\n`.repeat(i + 1));
  fs.writeFileSync(path.join(dir, 'src/main.ts'), 'console.log("hi")\n');
  fs.writeFileSync(path.join(dir, 'tool'), '#!/bin/sh\necho tool\n');
  fs.chmodSync(path.join(dir, 'tool'), 0o4755);
  fs.writeFileSync(path.join(dir, 'private/id'), 'secret-ish');
  fs.chmodSync(path.join(dir, 'private/id'), 0o600);
  fs.writeFileSync(path.join(dir, 'empty-file'), '');
  fs.writeFileSync(path.join(dir, 'big.bin'), crypto.randomBytes(opts.bigRandom ?? 3 * SEG + 1234));
  fs.linkSync(path.join(dir, 'src/main.ts'), path.join(dir, 'main-hardlink.ts'));
  fs.linkSync(path.join(dir, 'src/main.ts'), path.join(dir, 'src/lib/main-again.ts'));
  fs.symlinkSync('src/main.ts', path.join(dir, 'main-link'));
  fs.symlinkSync('../../tool', path.join(dir, 'src/lib/tool-link'));
  fs.symlinkSync('dangling-target', path.join(dir, 'dangling'));
  fs.writeFileSync(path.join(dir, 'host-root-owned'), 'x');
  fs.writeFileSync(path.join(dir, 'ünïcode name with spaces.txt'), 'u');
  fs.writeFileSync(path.join(dir, 'n'.repeat(120)), 'long name');
  for (const p of walk(dir)) own(p.abs, 1000, 1000);
  own(dir, 0);
  own(path.join(dir, 'private'), 0, 0);
  own(path.join(dir, 'private/id'), 0, 0);
  own(path.join(dir, 'tool'), 1000, 5);
  fs.chmodSync(path.join(dir, 'tool'), 0o4755); // chown cleared setuid
  fs.lchownSync(path.join(dir, 'host-root-owned'), 0, 0);
  // Distinct, sub-second mtimes, set last (deepest first) so they stick.
  const entries = walk(dir).reverse();
  entries.forEach((e, i) => fs.lutimesSync(e.abs, 1_700_000_000 + i + 0.123456, 1_700_000_000 + i + 0.123456));
  fs.lutimesSync(dir, 1_690_000_000.5, 1_690_000_000.5);
}

function walk(dir: string, rel = ''): { abs: string; rel: string }[] {
  const out: { abs: string; rel: string }[] = [];
  for (const name of fs.readdirSync(path.join(dir, rel)).sort()) {
    const r = rel ? `${rel}/${name}` : name;
    out.push({ abs: path.join(dir, r), rel: r });
    if (fs.lstatSync(path.join(dir, r)).isDirectory()) out.push(...walk(dir, r));
  }
  return out;
}

/** Everything a restore must keep, owners as container ids, hard links as groups. */
export function snapshot(dir: string, uidBase = UID_BASE): object[] {
  const inodes = new Map<number, string>();
  const rows: object[] = [];
  const describe = (abs: string, rel: string) => {
    const st = fs.lstatSync(abs);
    const row: Record<string, unknown> = {
      rel, mode: (st.mode & 0o170000).toString(8) + ':' + (st.mode & 0o7777).toString(8),
      uid: st.uid - uidBase, gid: st.gid - uidBase, mtimeUs: Math.floor(Number(fs.lstatSync(abs, { bigint: true }).mtimeNs / 1000n)),
    };
    if (st.isFile()) {
      row.sha = crypto.createHash('sha256').update(fs.readFileSync(abs)).digest('hex');
      row.nlink = st.nlink;
      if (st.nlink > 1) {
        row.linkGroup = inodes.get(st.ino) ?? rel;
        inodes.set(st.ino, inodes.get(st.ino) ?? rel);
      }
    }
    if (st.isSymbolicLink()) row.target = fs.readlinkSync(abs);
    rows.push(row);
  };
  describe(dir, '.');
  for (const e of walk(dir)) describe(e.abs, e.rel);
  return rows;
}

/** The source's snapshot as a restore must reproduce it: host-owned files become the overflow id 65534. */
export function expectedSnapshot(dir: string): object[] {
  return snapshot(dir).map((r) => {
    const row = r as Record<string, unknown>;
    return row.rel === 'host-root-owned' ? { ...row, uid: 65534, gid: 65534 } : row;
  });
}

// ------------------------------------------------------------------------------------------------
// Storage surgery

export async function readObject(storage: ObjectStorage, name: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of await storage.get(name)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export async function writeObject(storage: ObjectStorage, name: string, data: Buffer): Promise<void> {
  await storage.put(name, Readable.from([data]));
}

async function editManifest(storage: ObjectStorage, id: string, edit: (m: Record<string, unknown>) => void): Promise<void> {
  const m = JSON.parse((await readObject(storage, `${id}.manifest`)).toString());
  edit(m);
  await writeObject(storage, `${id}.manifest`, Buffer.from(JSON.stringify(m)));
}

/** A validly encrypted backup of an arbitrary tar stream, written as docs/backup-format.md says. */
export async function storeCraftedBackup(
  storage: ObjectStorage, keyring: KeyRing, tar: Buffer, roots: string[] = ['content'],
): Promise<string> {
  const id = `bk-20260101T000000Z-${crypto.randomBytes(6).toString('hex')}`;
  const dataKey = newDataKey();
  const { keyId, wrapped } = keyring.wrap(dataKey, `backup:${id}`);
  const body = Readable.from([tar]).pipe(createCompressStream()).pipe(new EncryptStream(dataKey));
  const stored = await storage.put(`${id}.data`, body);
  const manifest = {
    format: 'tetrix-backup', version: 1, backupId: id, createdAt: new Date().toISOString(), object: `${id}.data`,
    size: stored.size, sha256: stored.sha256, keyId, wrappedKey: wrapped.toString('base64'),
    streamVersion: STREAM_VERSION, segmentSize: SEG, compression: 'zstd', roots, files: 1, bytes: 0,
  };
  await writeObject(storage, `${id}.manifest`, Buffer.from(JSON.stringify(manifest)));
  return id;
}

export function entry(h: Partial<EntryHeader> & { path: string }, data = Buffer.alloc(0)): Buffer {
  const header = encodeEntry({
    type: 'file', mode: 0o644, uid: 0, gid: 0, size: data.length, mtimeNs: 0n, linkpath: '', ...h,
  });
  return Buffer.concat([header, data, Buffer.alloc(padding(data.length))]);
}

function tarOf(...entries: Buffer[]): Buffer {
  return Buffer.concat([entry({ path: 'content', type: 'directory', mode: 0o755 }), ...entries, Buffer.alloc(1024)]);
}

/** A raw ustar header with an arbitrary name (encodeEntry would still write it, but be explicit). */
function rawPaxPathEntry(paxPath: string, data: Buffer): Buffer {
  const record = (k: string, v: string) => {
    const rest = ` ${k}=${v}\n`;
    let len = rest.length + 1;
    while (String(len).length + Buffer.byteLength(rest) !== len) len++;
    return `${len}${rest}`;
  };
  const body = Buffer.from(record('path', paxPath));
  const pax = encodeEntry({ path: 'PaxHeaders/x', type: 'pax', mode: 0o644, uid: 0, gid: 0, size: body.length, mtimeNs: 0n, linkpath: '' });
  return Buffer.concat([pax, body, Buffer.alloc(padding(body.length)), entry({ path: 'content/innocent' }, data)]);
}

// ------------------------------------------------------------------------------------------------
// The suite

export function backupSuite(t: Test, makeBackend: (t: Test) => Promise<Backend>): void {
  t.test('a put returns the size and sha256 of what it stored; without a digest, only the size', async (t) => {
    const { storage } = await makeBackend(t);
    const body = crypto.randomBytes(300_000);
    const sha256 = crypto.createHash('sha256').update(body).digest('hex');
    t.same(await storage.put('obj-digest', Readable.from([body])), { size: body.length, sha256 });
    t.same(await storage.put('obj-plain', Readable.from([body.subarray(0, 1000), body.subarray(1000)]), { digest: false }), { size: body.length });
    t.equal(await storage.sha256('obj-plain'), sha256, 'the same bytes stored');
  });

  t.test('a backup restores to the same tree: modes, owners, symlinks, hard links, empty dirs, mtimes', async (t) => {
    const { storage } = await makeBackend(t);
    const base = tempDir(t, 'bk-roundtrip');
    const keyring = KeyRing.open({ dir: path.join(base, 'keys') });
    const store = new BackupStore({ storage, keyring, log: quietLog });
    makeTree(path.join(base, 'content'));
    fs.mkdirSync(path.join(base, 'upper/etc'), { recursive: true });
    fs.writeFileSync(path.join(base, 'upper/etc/motd'), 'changed in the image');
    const progress: { bytesDone: number; filesDone: number; bytesTotal: number; filesTotal: number }[] = [];
    const result = await store.backup({ content: path.join(base, 'content'), upper: path.join(base, 'upper') },
      { uidBase: UID_BASE, binding: BINDING, onProgress: (p) => progress.push(p) });
    t.match(result, { backupId: /^bk-/, keyId: keyring.current().id, sha256: /^[0-9a-f]{64}$/ });
    t.equal(result.sha256, await storage.sha256(`${result.backupId}.data`), 'sha256 is of the stored object');
    t.equal(result.size, (await storage.stat(`${result.backupId}.data`))!.size);
    const last = progress[progress.length - 1];
    t.equal(last.filesDone, last.filesTotal, 'progress reaches the total files');
    t.equal(last.bytesDone, last.bytesTotal, 'and the total bytes');
    t.same((await store.list()).map((b) => b.backupId), [result.backupId]);

    const restored = path.join(base, 'restored');
    const restoredUpper = path.join(base, 'restored-upper');
    await store.restore(result.backupId, { content: restored, upper: restoredUpper }, { uidBase: UID_BASE });
    const want = expectedSnapshot(path.join(base, 'content'));
    t.same(snapshot(restored), want);
    t.equal(fs.readFileSync(path.join(restoredUpper, 'etc/motd'), 'utf8'), 'changed in the image');

    // Into an existing target (replaced whole), and under another id base (owners follow the container).
    fs.writeFileSync(path.join(restored, 'stale'), 'gone after restore');
    await store.restore(result.backupId, restored, { uidBase: UID_BASE + 100000 });
    t.notOk(fs.existsSync(path.join(restored, 'stale')), 'the old content is replaced');
    t.same(snapshot(restored, UID_BASE + 100000), want);
    t.same(fs.readdirSync(base).filter((n) => n.includes('tetrix')), [], 'no staging left behind');
  });

  t.test('tampered or unreadable backups fail with DATA_LOSS / FAILED_PRECONDITION and leave the target untouched', async (t) => {
    const { storage } = await makeBackend(t);
    const base = tempDir(t, 'bk-tamper');
    const keyring = KeyRing.open({ dir: path.join(base, 'keys') });
    const isolated = new BackupStore({ storage, keyring, log: quietLog });
    const store = new BackupStore({ storage, keyring, log: quietLog, inProcess: true });
    makeTree(path.join(base, 'content'), { bigRandom: 6 * SEG }); // over one S3 part: multipart
    const { backupId } = await store.backup({ content: path.join(base, 'content') }, { uidBase: UID_BASE, binding: BINDING });
    const original = await readObject(storage, `${backupId}.data`);
    const manifest = await readObject(storage, `${backupId}.manifest`);
    const target = path.join(base, 'target');
    fs.mkdirSync(target);
    fs.writeFileSync(path.join(target, 'precious'), 'the workspace as it is now');
    const before = snapshot(target, 0);
    const seg = (i: number) => HEADER_BYTES + i * (SEG + TAG_BYTES);
    t.ok(original.length > seg(3), 'the object spans several segments');

    const cases: [string, Buffer, string][] = [
      ['a flipped bit', (() => { const b = Buffer.from(original); b[Math.floor(b.length / 2)] ^= 0x04; return b; })(), 'DATA_LOSS'],
      ['a truncated object', original.subarray(0, original.length - 100), 'DATA_LOSS'],
      ['a truncated object at a segment boundary', original.subarray(0, seg(2)), 'DATA_LOSS'],
      ['swapped segments', Buffer.concat([original.subarray(0, seg(0)), original.subarray(seg(1), seg(2)),
        original.subarray(seg(0), seg(1)), original.subarray(seg(2))]), 'DATA_LOSS'],
      ['an appended segment', Buffer.concat([original, original.subarray(seg(0), seg(1))]), 'DATA_LOSS'],
    ];
    for (const [i, [name, bad, code]] of cases.entries()) {
      await writeObject(storage, `${backupId}.data`, bad);
      // The first through the runner child (its error crosses the process boundary), the rest in process.
      await t.rejects((i === 0 ? isolated : store).restore(backupId, target, { uidBase: UID_BASE }), { code }, name);
      t.same(snapshot(target, 0), before, `${name}: target untouched`);
    }
    await writeObject(storage, `${backupId}.data`, original);

    const otherId = keyring.rotate();
    await editManifest(storage, backupId, (m) => { m.keyId = otherId; });
    await t.rejects(store.restore(backupId, target, { uidBase: UID_BASE }), { code: 'DATA_LOSS' }, 'a wrong key id');
    await editManifest(storage, backupId, (m) => { m.keyId = 'kek-00000000000000ff'; });
    await t.rejects(store.restore(backupId, target, { uidBase: UID_BASE }), { code: 'FAILED_PRECONDITION' }, 'a missing key');
    await writeObject(storage, `${backupId}.manifest`, manifest);
    const stranger = new BackupStore({ storage, keyring: KeyRing.open({ dir: path.join(base, 'other-keys') }), log: quietLog });
    await t.rejects(stranger.restore(backupId, target, { uidBase: UID_BASE }), { code: 'FAILED_PRECONDITION' },
      'a node without the key');
    t.same(snapshot(target, 0), before, 'target untouched after key failures');
    await t.rejects(store.restore('bk-20260101T000000Z-000000000000', target, { uidBase: UID_BASE }), { code: 'NOT_FOUND' });
    t.same(fs.readdirSync(base).filter((n) => n.includes('tetrix')), [], 'no staging left behind');

    await store.restore(backupId, target, { uidBase: UID_BASE });
    t.same(snapshot(target), expectedSnapshot(path.join(base, 'content')), 'the untampered backup still restores');
  });

  t.test('malicious archives are refused and nothing lands outside the staging directory', async (t) => {
    const { storage } = await makeBackend(t);
    const base = tempDir(t, 'bk-evil');
    const keyring = KeyRing.open({ dir: path.join(base, 'keys') });
    // In process: many restores, and the extractor is the same code the runner child runs.
    const store = new BackupStore({ storage, keyring, log: quietLog, inProcess: true });
    const tag = `tetrix-evil-${process.pid}-${crypto.randomBytes(3).toString('hex')}`;
    const outsideAbs = path.join(os.tmpdir(), tag);
    const victim = path.join(base, 'victim');
    fs.writeFileSync(victim, 'host file');
    const data = Buffer.from('pwned');
    const cases: [string, Buffer][] = [
      ['a ".." path', tarOf(entry({ path: `content/../../${tag}` }, data))],
      ['a ".." deep inside', tarOf(entry({ path: 'content/a/../../../x' }, data))],
      ['an absolute path', tarOf(entry({ path: outsideAbs }, data))],
      ['a pax path with ".."', tarOf(rawPaxPathEntry(`content/../${tag}`, data))],
      ['a symlink out of the root', tarOf(entry({ path: 'content/esc', type: 'symlink', linkpath: '../../..' }))],
      ['an absolute symlink', tarOf(entry({ path: 'content/esc', type: 'symlink', linkpath: '/etc' }))],
      ['a write through an earlier symlink', tarOf(
        entry({ path: 'content/d', type: 'symlink', linkpath: '.' }),
        entry({ path: 'content/d/through' }, data))],
      ['a directory through an earlier symlink', tarOf(
        entry({ path: 'content/sub', type: 'directory' }),
        entry({ path: 'content/sub/l', type: 'symlink', linkpath: '..' }),
        entry({ path: 'content/sub/l/sub/l/x' }, data))],
      ['a hard link out of the root', tarOf(entry({ path: 'content/hl', type: 'hardlink', linkpath: `content/../${path.basename(base)}/victim` }))],
      ['a hard link to an absolute path', tarOf(entry({ path: 'content/hl', type: 'hardlink', linkpath: victim }))],
      ['a hard link to a symlink', tarOf(
        entry({ path: 'content/s', type: 'symlink', linkpath: 'x' }),
        entry({ path: 'content/hl', type: 'hardlink', linkpath: 'content/s' }))],
      ['a character device', tarOf(entry({ path: 'content/null', type: 'char-device' }))],
      ['a block device', tarOf(entry({ path: 'content/sda', type: 'block-device' }))],
      ['a FIFO', tarOf(entry({ path: 'content/fifo', type: 'fifo' }))],
      ['an unknown root', tarOf(entry({ path: 'etc/passwd' }, data))],
      ['a file as the root', Buffer.concat([entry({ path: 'content' }, data), Buffer.alloc(1024)])],
      ['a missing end marker', tarOf(entry({ path: 'content/f' }, data)).subarray(0, -1024)],
    ];
    const target = path.join(base, 'target');
    fs.mkdirSync(target);
    fs.writeFileSync(path.join(target, 'precious'), 'keep');
    const before = snapshot(target, 0);
    const listing = () => fs.readdirSync(base).sort();
    const baseBefore = listing();
    for (const [name, tar] of cases) {
      const id = await storeCraftedBackup(storage, keyring, tar);
      await t.rejects(store.restore(id, target, { uidBase: UID_BASE }), { code: 'DATA_LOSS' }, name);
      t.same(snapshot(target, 0), before, `${name}: target untouched`);
      t.same(listing(), baseBefore, `${name}: nothing new next to the target`);
      t.notOk(fs.existsSync(outsideAbs), `${name}: nothing at the absolute path`);
      t.equal(fs.readFileSync(victim, 'utf8'), 'host file');
      t.equal(fs.statSync(victim).nlink, 1, `${name}: the host file gained no link`);
    }
    const ok = await storeCraftedBackup(storage, keyring, tarOf(
      entry({ path: 'content/dir', type: 'directory', mode: 0o750 }),
      entry({ path: 'content/dir/f', uid: 1000, gid: 1000 }, data),
      entry({ path: 'content/dir/in', type: 'symlink', linkpath: '../dir/f' })));
    await store.restore(ok, target, { uidBase: UID_BASE });
    t.equal(fs.readFileSync(path.join(target, 'dir/in'), 'utf8'), 'pwned', 'a crafted but harmless archive restores');
    t.equal(fs.statSync(path.join(target, 'dir/f')).uid, UID_BASE + 1000);
  });

  t.test('an aborted backup is never listed; the previous one stays restorable; leftovers are cleaned', async (t) => {
    const { storage } = await makeBackend(t);
    const base = tempDir(t, 'bk-abort');
    const keyring = KeyRing.open({ dir: path.join(base, 'keys') });
    const store = new BackupStore({ storage, keyring, log: quietLog });
    makeTree(path.join(base, 'content'));
    const first = await store.backup({ content: path.join(base, 'content') }, { uidBase: UID_BASE, binding: BINDING });
    fs.writeFileSync(path.join(base, 'content/huge.bin'), crypto.randomBytes(24 << 20));
    const ac = new AbortController();
    await t.rejects(store.backup({ content: path.join(base, 'content') }, {
      uidBase: UID_BASE, binding: BINDING, signal: ac.signal, onProgress: () => ac.abort(),
    }), { code: 'ABORTED' });
    t.same((await store.list()).map((b) => b.backupId), [first.backupId], 'only the complete backup is listed');
    await store.cleanupTemporary();
    t.same((await storage.list()).map((o) => o.name).sort(), [`${first.backupId}.data`, `${first.backupId}.manifest`]);
    const restored = path.join(base, 'restored');
    await store.restore(first.backupId, restored, { uidBase: UID_BASE });
    t.equal(fs.readFileSync(path.join(restored, 'src/main.ts'), 'utf8'), 'console.log("hi")\n');
  });

  t.test('kill -9 of a process in the middle of a backup leaves no half backup listed', async (t) => {
    const { storage, childConfig } = await makeBackend(t);
    const base = tempDir(t, 'bk-kill');
    const keysDir = path.join(base, 'keys');
    const keyring = KeyRing.open({ dir: keysDir });
    const store = new BackupStore({ storage, keyring, log: quietLog });
    makeTree(path.join(base, 'content'));
    const first = await store.backup({ content: path.join(base, 'content') }, { uidBase: UID_BASE, binding: BINDING });
    fs.writeFileSync(path.join(base, 'content/huge.bin'), crypto.randomBytes(16 << 20));
    // The child loads TypeScript the way tap loaded this file.
    const tsLoader = process.execArgv.filter((a) => a.includes('@tapjs/typescript'));
    const child = spawn(process.execPath, [...tsLoader, path.join(__dirname, 'backup-child.ts'),
      JSON.stringify({ storage: childConfig, keysDir, content: path.join(base, 'content'), uidBase: UID_BASE })],
    { stdio: ['ignore', 'pipe', 'inherit'] });
    t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
    const killedMidway = await new Promise<boolean>((resolve) => {
      let out = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const counts = [...out.matchAll(/stored (\d+)\n/g)].map((m) => Number(m[1]));
        if (counts.length && counts[counts.length - 1] > 6 << 20) { child.kill('SIGKILL'); resolve(true); }
        if (/done/.test(out)) resolve(false);
      });
      child.on('exit', () => resolve(false));
    });
    await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(null) : child.on('exit', r)));
    t.ok(killedMidway, 'the child was killed in the middle of its backup');
    t.same((await store.list()).map((b) => b.backupId), [first.backupId], 'no half backup listed');
    const removed = await store.cleanupTemporary();
    if (storage.kind === 'fs') t.ok(removed >= 1, 'the partial temporary file was removed');
    t.same((await storage.list()).map((o) => o.name).sort(), [`${first.backupId}.data`, `${first.backupId}.manifest`],
      'after cleanup only the complete backup remains');
    const restored = path.join(base, 'restored');
    await store.restore(first.backupId, restored, { uidBase: UID_BASE });
    t.ok(fs.existsSync(path.join(restored, 'big.bin')));
  });

  t.test('after key rotation old backups restore, and rewrap moves them to the new key without rewriting data', async (t) => {
    const { storage } = await makeBackend(t);
    const base = tempDir(t, 'bk-rotate');
    const keysDir = path.join(base, 'keys');
    const keyring = KeyRing.open({ dir: keysDir });
    const store = new BackupStore({ storage, keyring, log: quietLog, inProcess: true });
    makeTree(path.join(base, 'content'));
    const a = await store.backup({ content: path.join(base, 'content') }, { uidBase: UID_BASE, binding: BINDING });
    const oldKey = keyring.current().id;
    const newKey = keyring.rotate();
    const b = await store.backup({ content: path.join(base, 'content') }, { uidBase: UID_BASE, binding: BINDING });
    t.equal(a.keyId, oldKey);
    t.equal(b.keyId, newKey);
    await store.restore(a.backupId, path.join(base, 'ra'), { uidBase: UID_BASE });
    t.same(snapshot(path.join(base, 'ra')), expectedSnapshot(path.join(base, 'content')), 'old-key backup restores');

    const dataBefore = await storage.sha256(`${a.backupId}.data`);
    t.equal(await store.rewrap('all'), 1, 'one backup re-wrapped');
    t.equal(await store.rewrap('all'), 0, 'nothing left to re-wrap');
    t.equal((await store.get(a.backupId)).keyId, newKey);
    t.equal(await storage.sha256(`${a.backupId}.data`), dataBefore, 'the data object is unchanged');

    // Retire the old key: the re-wrapped backup still restores on a fresh start.
    fs.rmSync(path.join(keysDir, `${oldKey}.key`));
    const fresh = new BackupStore({ storage, keyring: KeyRing.open({ dir: keysDir }), log: quietLog, inProcess: true });
    await fresh.restore(a.backupId, path.join(base, 'rb'), { uidBase: UID_BASE });
    t.same(snapshot(path.join(base, 'rb')), snapshot(path.join(base, 'ra')));
    await t.rejects(fresh.rewrap([a.backupId], oldKey), { code: 'FAILED_PRECONDITION' }, 'cannot wrap to a retired key');
  });

  t.test('a backup records what it was made of, authenticated with its key; a version 1 backup records nothing', async (t) => {
    const { storage } = await makeBackend(t);
    const base = tempDir(t, 'bk-binding');
    const keyring = KeyRing.open({ dir: path.join(base, 'keys') });
    const store = new BackupStore({ storage, keyring, log: quietLog, inProcess: true });
    makeTree(path.join(base, 'content'), { bigRandom: 5000 });
    const target = path.join(base, 'restored');
    const { backupId } = await store.backup({ content: path.join(base, 'content') }, { uidBase: UID_BASE, binding: BINDING });
    const claims: unknown[] = [];
    t.same((await store.open(backupId, (b) => claims.push(b))).binding, BINDING, 'open() returns the binding');
    t.same(claims, [BINDING], 'after asking the access decision about it');
    const refuse = (): void => { throw new DomainError('PERMISSION_DENIED', 'restore_from: permission denied'); };
    await t.rejects(store.open(backupId, refuse), { code: 'PERMISSION_DENIED' }, 'a refusal stops open()');
    await t.rejects(store.open('bk-20200101T000000Z-000000000000', refuse), { code: 'PERMISSION_DENIED' }, 'an unknown id is asked about too (as no binding)');
    await t.rejects(store.open('bk-20200101T000000Z-000000000000', () => undefined), { code: 'NOT_FOUND' }, 'and is NOT_FOUND to whom it lets through');

    const manifestName = `${backupId}.manifest`;
    const original = await readObject(storage, manifestName);
    const m = JSON.parse(original.toString()) as Record<string, unknown>;
    t.match(m, { version: 2, ...BINDING }, 'the manifest (version 2) carries the binding');
    const edits: Array<[string, Record<string, unknown>]> = [
      ['the owner', { ownerId: 'mallory' }], ['the team', { teamId: 'team-x' }], ['the kind', { kind: 'PREBUILD' }],
      ['the workspace', { workspaceId: 'ws-other' }], ['the roots', { roots: ['content', 'upper'] }],
      ['the size', { size: Number(m.size) + 1 }], ['the digest', { sha256: 'ab'.repeat(32) }], ['the counts', { files: 1 }],
      ['an added field', { note: 'hello' }], ['relabelled version 1', { version: 1 }],
    ];
    for (const [what, edit] of edits) {
      await writeObject(storage, manifestName, Buffer.from(JSON.stringify({ ...m, ...edit })));
      await t.rejects(store.open(backupId, () => undefined), { code: 'DATA_LOSS' }, `${what} changed: open() is DATA_LOSS`);
      await t.rejects(store.restore(backupId, target, { uidBase: UID_BASE }), { code: 'DATA_LOSS' }, `${what} changed: so is restore()`);
      t.notOk(fs.existsSync(target), `${what} changed: nothing restored`);
    }
    t.same(fs.readdirSync(base).filter((n) => n.includes('tetrix-restore')), [], 'and no staging directory left');
    await writeObject(storage, manifestName, original);
    await t.rejects(store.restore(backupId, target, { uidBase: UID_BASE, expectBinding: { ...BINDING, ownerId: 'bob' } }), { code: 'DATA_LOSS' },
      'a restore expecting another binding than the verified one is DATA_LOSS');

    keyring.rotate();
    t.equal(await store.rewrap('all'), 1, 'rewrap moves it to the new key');
    t.same((await store.open(backupId, () => undefined)).binding, BINDING, 'with its binding still verified');
    await store.restore(backupId, target, { uidBase: UID_BASE, expectBinding: BINDING });
    t.same(snapshot(target), expectedSnapshot(path.join(base, 'content')), 'and it restores');

    const old = await storeCraftedBackup(storage, keyring, tarOf(entry({ path: 'content/old.txt' }, Buffer.from('old\n'))));
    claims.length = 0;
    t.equal((await store.open(old, (b) => claims.push(b))).binding, undefined, 'a version 1 backup has no binding');
    t.same(claims, [undefined], 'and the access decision is asked about none');
    keyring.rotate();
    t.equal(await store.rewrap([old]), 1);
    t.equal(JSON.parse((await readObject(storage, `${old}.manifest`)).toString()).version, 1, 'rewrap keeps it version 1');
    const oldTarget = path.join(base, 'old');
    await store.restore(old, oldTarget, { uidBase: UID_BASE, expectBinding: null });
    t.equal(fs.readFileSync(path.join(oldTarget, 'old.txt'), 'utf8'), 'old\n', 'it still restores');
  });
}
