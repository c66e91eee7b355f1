// What snapshot backups (src/content/repo/) must do on every storage backend; snapshots-fs.test.ts and
// snapshots-s3.test.ts run it.
import { Test } from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { KeyRing } from '../../../src/crypto/keys';
import { SnapshotStore } from '../../../src/content/repo/snapshots';
import { DATA_CHUNKS } from '../../../src/content/repo/chunker';
import { BackupFormats } from '../../../src/content/repo/formats';
import { BackupStore } from '../../../src/content/backups';
import type { ObjectStorage } from '../../../src/content/storage';
import { DomainError } from '../../../src/errors';
import { Backend, expectedSnapshot, makeTree, quietLog, readObject, snapshot, tempDir, UID_BASE, writeObject } from '../backup-suite';

const ALICE = { workspaceId: 'ws-a1', ownerId: 'alice', teamId: '', kind: 'REGULAR' } as const;
const ALICE_2 = { ...ALICE, workspaceId: 'ws-a2' };
const BOB = { workspaceId: 'ws-b1', ownerId: 'bob', teamId: '', kind: 'REGULAR' } as const;
const MiB = 1 << 20;

interface Fixture {
  storage: ObjectStorage;
  childConfig: object;
  base: string;
  keysDir: string;
  store: SnapshotStore;
  content: string;
}

async function fixture(t: Test, makeBackend: (t: Test) => Promise<Backend>, what: string, opts: { inProcess?: boolean } = {}): Promise<Fixture> {
  const { storage, childConfig } = await makeBackend(t);
  const base = tempDir(t, `repo-${what}`);
  const keysDir = path.join(base, 'keys');
  const store = new SnapshotStore({ storage, keyring: KeyRing.open({ dir: keysDir }), log: quietLog, inProcess: opts.inProcess ?? true });
  const content = path.join(base, 'content');
  makeTree(content);
  return { storage, childConfig, base, keysDir, store, content };
}

async function expectDataLoss(t: Test, work: Promise<unknown>, pattern: RegExp): Promise<void> {
  const err = await work.then(() => undefined, (e: unknown) => e);
  t.ok(err instanceof DomainError && err.code === 'DATA_LOSS', `DATA_LOSS (${(err as Error)?.message})`);
  t.match((err as Error)?.message ?? '', pattern);
}

async function restoreInto(f: Fixture, id: string, name: string): Promise<string> {
  const dir = path.join(f.base, name);
  await f.store.restore(id, dir, { uidBase: UID_BASE });
  return dir;
}

/** A random file owned by the container's uid 1000. */
function writeRandom(file: string, bytes: number): void {
  fs.writeFileSync(file, crypto.randomBytes(bytes));
  fs.chownSync(file, UID_BASE + 1000, UID_BASE + 1000);
}

const CRASH_POINTS = ['pack-stored', 'index-stored', 'before-snapshot', 'gc-repacked', 'gc-index-deleted'] as const;

/**
 * crashPoints: which kill -9 points to run (every one by default). storageOnly: only the cases where the
 * backend matters (objects, range reads, listing, deletes); the rest is the same logic on any backend.
 */
export function repoSuite(t: Test, makeBackend: (t: Test) => Promise<Backend>, opts: { crashPoints?: readonly (typeof CRASH_POINTS)[number][]; storageOnly?: boolean } = {}): void {
  const logicTest = (name: string, fn: (t: Test) => Promise<void>): void => { if (!opts.storageOnly) t.test(name, fn); };
  t.test('a snapshot restores the tree exactly, through the runner child as the daemon runs it', async (t) => {
    const f = await fixture(t, makeBackend, 'roundtrip', { inProcess: false });
    const want = expectedSnapshot(f.content);
    const a = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
    t.match(a.backupId, /^sn-/);
    const restored = await restoreInto(f, a.backupId, 'restored');
    t.same(snapshot(restored), want);
    const [info] = await f.store.list();
    t.equal(info.backupId, a.backupId);
    t.ok(info.bytes > 3 * MiB && info.storedBytes > 0, 'logical size and stored bytes are listed');
    t.same(info.binding, ALICE);
  });

  logicTest('progress: the first backup sends the measured total first; an incremental one its parent\'s size, then the exact total', async (t) => {
    const f = await fixture(t, makeBackend, 'progress', { inProcess: false });
    const seen = (): { bytesTotal: number; bytesDone: number; filesTotal: number; filesDone: number }[] => [];
    const first = seen();
    await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE, onProgress: (p) => first.push({ ...p }) });
    const [infoA] = await f.store.list();
    t.ok(first[0].bytesTotal >= infoA.bytes && first[0].bytesDone === 0, `the first report has the measured total (${first[0].bytesTotal}) before any byte`);
    writeRandom(path.join(f.content, 'grown.bin'), 2 * MiB);
    const second = seen();
    const b = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE, onProgress: (p) => second.push({ ...p }) });
    t.equal(second[0].bytesTotal, infoA.bytes, 'the incremental one starts from the parent\'s size as its estimate');
    t.equal(second[0].bytesDone, 0, 'before any byte');
    const infoB = (await f.store.list()).find((s) => s.backupId === b.backupId)!;
    t.match(second.at(-1), { bytesTotal: infoB.bytes, bytesDone: infoB.bytes }, 'and ends at the exact total');
  });

  t.test('dedup: an unchanged tree stores almost nothing; a 1 MiB insert in a large file about 1 MiB; across an owner\'s workspaces', async (t) => {
    const f = await fixture(t, makeBackend, 'dedup');
    writeRandom(path.join(f.content, 'large.bin'), 24 * MiB);
    const first = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
    t.ok(first.size > 27 * MiB, `the first backup stores the tree (${first.size})`);
    const second = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
    t.ok(second.size < 16 << 10, `an unchanged tree stores ${second.size} bytes the second time`);
    const other = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE_2 });
    t.ok(other.size < 16 << 10, `another workspace of the same owner with the same files stores ${other.size} bytes`);
    const large = fs.readFileSync(path.join(f.content, 'large.bin'));
    fs.writeFileSync(path.join(f.content, 'large.bin'), Buffer.concat([large.subarray(0, 12 * MiB), crypto.randomBytes(MiB), large.subarray(12 * MiB)]));
    fs.chownSync(path.join(f.content, 'large.bin'), UID_BASE + 1000, UID_BASE + 1000);
    const third = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
    // Content-defined chunks re-align after the edit: what is new is the insert and the chunk(s) around it,
    // each at most DATA_CHUNKS.max (4 MiB); random data and a random gear usually give about 1.5 MiB.
    const bound = MiB + 2 * DATA_CHUNKS.max;
    t.ok(third.size >= MiB && third.size <= bound, `a 1 MiB insert in the middle of a 24 MiB file stores ${(third.size / MiB).toFixed(2)} MiB (at most ${bound / MiB}: the insert and the chunks around it)`);
    const bob = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: BOB });
    t.ok(bob.size > 27 * MiB, 'another owner\'s repository shares nothing with alice\'s');
    const want = expectedSnapshot(f.content);
    t.same(snapshot(await restoreInto(f, third.backupId, 'third')), want, 'the incremental snapshot restores whole');
    fs.rmSync(path.join(f.base, 'third'), { recursive: true });
    t.equal(fs.readFileSync(path.join(await restoreInto(f, first.backupId, 'first'), 'large.bin')).length, 24 * MiB, 'the first one still restores as it was');
  });

  logicTest('an incremental backup reads only files whose identity changed, and a file changed under an old mtime is read', async (t) => {
    const f = await fixture(t, makeBackend, 'parent');
    const logged: Record<string, unknown>[] = [];
    const store = new SnapshotStore({ storage: f.storage, keyring: KeyRing.open({ dir: f.keysDir }), inProcess: true,
      log: { info: (o) => void logged.push(o as Record<string, unknown>), warn: () => undefined } });
    await store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
    const files = logged.at(-1)!.files as number;
    t.equal(logged.at(-1)!.reusedFiles, 0, 'the first backup reads every file');
    // Same size, other bytes, and the old mtime put back: only ctime tells (as restic's rule).
    const victim = path.join(f.content, 'src/lib/m7.ts');
    const st = fs.statSync(victim);
    fs.writeFileSync(victim, Buffer.alloc(st.size, 'z'));
    fs.utimesSync(victim, st.atime, st.mtime);
    const second = await store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
    const regular = snapshot(f.content).filter((r) => (r as { sha?: string }).sha !== undefined && (r as { nlink: number }).nlink >= 1);
    t.ok((logged.at(-1)!.reusedFiles as number) >= regular.length - 6, `unchanged files are not read again (${logged.at(-1)!.reusedFiles} of ${files} entries reused)`);
    t.ok(second.size > 0 && second.size < 64 << 10, `and cost ${second.size} bytes`);
    const dir = await restoreInto(f, second.backupId, 'second');
    t.equal(fs.readFileSync(path.join(dir, 'src/lib/m7.ts'), 'utf8'), 'z'.repeat(st.size), 'the file changed under its old mtime was read');
    t.same(snapshot(dir), expectedSnapshot(f.content), 'the snapshot of reused and read files restores whole');
  });

  logicTest('through the runner child, an incremental backup reuses every unchanged file, whatever their names sort as', async (t) => {
    const f = await fixture(t, makeBackend, 'parent-order');
    const logged: Record<string, unknown>[] = [];
    const log = { info: (o: object) => void logged.push(o as Record<string, unknown>), warn: () => undefined };
    // The first backup in process (it has no parent to stream); each child costs a TypeScript start here.
    const inProcess = new SnapshotStore({ storage: f.storage, keyring: KeyRing.open({ dir: f.keysDir }), log, inProcess: true });
    const store = new SnapshotStore({ storage: f.storage, keyring: KeyRing.open({ dir: f.keysDir }), log, inProcess: false });
    const tree = path.join(f.base, 'names');
    // Names where the walk's order (per directory, bytewise) and whole-path string order disagree, and
    // enough files that the parent's tree spans several tree chunks and messages.
    const names = ['a-c', 'a/b', 'a/b-x', 'a/b/c', 'a.b', 'a b', 'A', 'ab', 'é', 'é/f', 'z0', 'zz/y', '日本', 'x-/q', 'x/y/z'];
    for (let i = 0; i < 600; i++) names.push(`many/d${i % 7}/f${i}`);
    const files = names.filter((n) => !names.some((m) => m.startsWith(n + '/')));
    for (const n of files) {
      fs.mkdirSync(path.dirname(path.join(tree, n)), { recursive: true });
      fs.writeFileSync(path.join(tree, n), `${n}\n`);
    }
    execFileSync('chown', ['-R', `${UID_BASE + 1000}:${UID_BASE + 1000}`, tree]);
    const reused = async (by: SnapshotStore): Promise<number> => {
      await by.backup({ content: tree }, { uidBase: UID_BASE, binding: ALICE_2 });
      return logged.at(-1)!.reusedFiles as number;
    };
    t.equal(await reused(inProcess), 0, 'the first backup reads every file');
    t.equal(await reused(store), files.length, `an unchanged tree: all ${files.length} files reused`);
    fs.rmSync(path.join(tree, 'a-c'));
    fs.writeFileSync(path.join(tree, 'a/b-y'), 'new\n');
    fs.chownSync(path.join(tree, 'a/b-y'), UID_BASE + 1000, UID_BASE + 1000);
    fs.appendFileSync(path.join(tree, 'many/d3/f3'), 'more\n');
    const again = await store.backup({ content: tree }, { uidBase: UID_BASE, binding: ALICE_2 });
    t.equal(logged.at(-1)!.reusedFiles, files.length - 2, 'after a delete, an add and an edit, only the new and the edited file are read');
    t.same(snapshot(await restoreInto(f, again.backupId, 'names-restored')), expectedSnapshot(tree), 'and the snapshot restores whole');
  });

  t.test('retention and GC: a deleted snapshot\'s unique chunks go, shared ones stay; orphans go', async (t) => {
    const f = await fixture(t, makeBackend, 'gc');
    const a = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
    writeRandom(path.join(f.content, 'only-in-b.bin'), 12 * MiB);
    const b = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
    const packBytes = async () => (await f.storage.list('rp-')).filter((o) => o.name.includes('.pack-')).reduce((n, o) => n + o.size, 0);
    const before = await packBytes();
    await f.store.delete(b.backupId);
    const [gc] = await f.store.gcAll();
    const after = await packBytes();
    t.ok(before - after >= 12 * MiB, `b's unique 12 MiB went (${((before - after) / MiB).toFixed(1)} MiB freed)`);
    t.ok(gc.packsDeleted >= 1);
    t.same(snapshot(await restoreInto(f, a.backupId, 'a')), expectedSnapshot(path.join(f.base, 'a')), 'the snapshot that shared chunks with it still restores');
    t.equal(fs.readFileSync(path.join(f.base, 'a', 'big.bin')).length, fs.readFileSync(path.join(f.content, 'big.bin')).length);
    t.same((await f.store.check()).errors, [], 'check finds the repository whole');
  });

  logicTest('GC repacks a mostly dead pack: its live chunk stays findable by the same store', async (t) => {
    const f = await fixture(t, makeBackend, 'repack');
    const tree = path.join(f.base, 'small');
    fs.mkdirSync(tree);
    fs.chownSync(tree, UID_BASE, UID_BASE);
    writeRandom(path.join(tree, 'a-drop.bin'), 2.5 * MiB);
    writeRandom(path.join(tree, 'b-keep.bin'), MiB);
    const a = await f.store.backup({ content: tree }, { uidBase: UID_BASE, binding: ALICE });
    fs.rmSync(path.join(tree, 'a-drop.bin'));
    const b = await f.store.backup({ content: tree }, { uidBase: UID_BASE, binding: ALICE });
    await f.store.delete(a.backupId);
    const [gc] = await f.store.gcAll();
    t.ok(gc.packsRepacked >= 1, `the pack holding both files was repacked (${JSON.stringify(gc)})`);
    t.same((await f.store.check()).errors, [], 'check, in the same store, finds every chunk');
    const dir = await restoreInto(f, b.backupId, 'b');
    t.same(fs.readdirSync(dir), ['b-keep.bin']);
    t.equal(fs.readFileSync(path.join(dir, 'b-keep.bin')).length, MiB);
  });

  logicTest('a node policy of keep-last 2: each backup forgets the workspace\'s older snapshots and collects their chunks', async (t) => {
    const f = await fixture(t, makeBackend, 'retain');
    const formats = new BackupFormats({
      full: new BackupStore({ storage: f.storage, keyring: KeyRing.open({ dir: f.keysDir }), log: quietLog }), snapshots: f.store,
      write: 'snapshot', retention: { keepLast: 2, keepDaily: 0, keepWeekly: 0 }, log: quietLog,
    });
    // The tree's chunks come from another workspace of alice's first, so each of ALICE's snapshots adds only its 2 MiB.
    await formats.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE_2 });
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      writeRandom(path.join(f.content, 'changing.bin'), 2 * MiB);
      ids.push((await formats.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE })).backupId);
    }
    t.same((await f.store.list()).filter((s) => s.binding.workspaceId === ALICE.workspaceId).map((s) => s.backupId), ids.slice(1), 'the oldest is forgotten');
    t.equal((await f.store.list()).filter((s) => s.binding.workspaceId === ALICE_2.workspaceId).length, 1, 'another workspace keeps its own');
    const live = (await f.storage.list('rp-')).filter((o) => o.name.includes('.pack-')).reduce((n, o) => n + o.size, 0);
    t.ok(live < 8 * MiB, `the forgotten snapshot's unique 2 MiB went (${(live / MiB).toFixed(1)} MiB of packs left)`);
    t.same((await f.store.check()).errors, []);
  });

  logicTest('key rotation: rewrap moves every repository key to the new KEK; old snapshots restore; the old key can go', async (t) => {
    const f = await fixture(t, makeBackend, 'rotate');
    const keyring = KeyRing.open({ dir: f.keysDir });
    const store = new SnapshotStore({ storage: f.storage, keyring, log: quietLog, inProcess: true });
    const a = await store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
    const oldKey = keyring.current().id;
    t.same([...(await store.keyUsage())], [[oldKey, 1]], 'the repository key names the KEK');
    const newKey = await keyring.rotateKey();
    t.equal(await store.rewrap(newKey), 1, 'one repository re-wrapped');
    t.same([...(await store.keyUsage())], [[newKey, 1]], 'nothing names the old key now');
    keyring.retire(oldKey);
    const fresh = new SnapshotStore({ storage: f.storage, keyring: KeyRing.open({ dir: f.keysDir }), log: quietLog, inProcess: true });
    t.same(snapshot(await (async () => { const dir = path.join(f.base, 'r'); await fresh.restore(a.backupId, dir, { uidBase: UID_BASE }); return dir; })()),
      expectedSnapshot(f.content), 'the snapshot restores under the new key alone');
  });

  logicTest('the prune race: a backup running while GC runs, both end well', async (t) => {
    const f = await fixture(t, makeBackend, 'race');
    const a = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
    writeRandom(path.join(f.content, 'new.bin'), 6 * MiB);
    // GC is asked for when the backup has read the index (it will reuse a's chunks) and before it wrote anything.
    await f.store.delete(a.backupId);
    let gc: Promise<unknown> | undefined;
    f.store.onBackupHoldsRepo = () => {
      f.store.onBackupHoldsRepo = undefined;
      gc = f.store.gcAll();
    };
    const b = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
    t.ok(gc, 'GC ran while the backup was under way');
    await gc;
    t.same((await f.store.list()).map((s) => s.backupId), [b.backupId]);
    t.same(snapshot(await restoreInto(f, b.backupId, 'b')), expectedSnapshot(f.content), 'the backup reusing the deleted snapshot\'s chunks restores whole');
    t.same((await f.store.check()).errors, []);
    // And the other way round: a backup asked for while GC holds the repository waits for it.
    await f.store.delete(b.backupId);
    const gc2 = f.store.gcAll();
    const c = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
    await gc2;
    fs.rmSync(path.join(f.base, 'b'), { recursive: true });
    t.same(snapshot(await restoreInto(f, c.backupId, 'b')), expectedSnapshot(f.content), 'a backup started during GC restores whole');
  });

  logicTest('a pack that fails to store, with others in flight, fails the backup: nothing listed, the next one whole', async (t) => {
    const f = await fixture(t, makeBackend, 'put-fails');
    writeRandom(path.join(f.content, 'large.bin'), 20 * MiB);
    let packs = 0;
    const failing = new Proxy(f.storage, {
      get(target, prop) {
        if (prop === 'put') {
          return async (name: string, body: Readable, opts?: { digest?: boolean }) => {
            if (name.includes('.pack-') && ++packs === 3) {
              body.resume();
              throw new DomainError('RESOURCE_EXHAUSTED', 'disk full (test)');
            }
            return target.put(name, body, opts);
          };
        }
        const v = Reflect.get(target, prop, target) as unknown;
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    const store = new SnapshotStore({ storage: failing, keyring: KeyRing.open({ dir: f.keysDir }), log: quietLog, inProcess: true });
    const err = await store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE }).then(() => undefined, (e: unknown) => e);
    t.match(err, { code: 'RESOURCE_EXHAUSTED', message: /disk full/ }, 'the backup fails with the storage\'s error');
    t.same(await store.list(), [], 'no snapshot is listed');
    const next = await store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
    t.same(snapshot(await restoreInto(f, next.backupId, 'next')), expectedSnapshot(f.content), 'the next backup restores whole');
  });

  t.test('a bit flipped in one chunk: DATA_LOSS naming the file, nothing restored; check finds it', async (t) => {
    const f = await fixture(t, makeBackend, 'flip');
    writeRandom(path.join(f.content, 'victim.bin'), 5 * MiB);
    const a = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
    t.same((await f.store.check()).errors, []);
    // The largest pack holds the victim's chunks; flip one bit in its middle.
    const packs = (await f.storage.list('rp-')).filter((o) => o.name.includes('.pack-')).sort((x, y) => y.size - x.size);
    const bytes = await readObject(f.storage, packs[0].name);
    bytes[bytes.length >> 1] ^= 0x10;
    await writeObject(f.storage, packs[0].name, bytes);
    const target = path.join(f.base, 'target');
    fs.mkdirSync(target);
    fs.writeFileSync(path.join(target, 'keep-me'), 'old');
    await expectDataLoss(t, f.store.restore(a.backupId, target, { uidBase: UID_BASE }), /does not authenticate.*affected files: .*(victim\.bin|big\.bin)/);
    t.same(fs.readdirSync(target), ['keep-me'], 'the target is untouched');
    t.same(fs.readdirSync(f.base).filter((n) => n.includes('tetrix-restore')), [], 'no staging directory is left');
    const check = await f.store.check();
    t.ok(check.errors.some((e) => /does not authenticate/.test(e)), 'check reports the chunk');
    t.ok(check.errors.some((e) => e.includes(a.backupId) && /affected files: .*bin/.test(e)), 'and the snapshot and file it breaks');
  });

  logicTest('owner binding: a snapshot changed to name another owner, or copied under another id, does not open', async (t) => {
    const f = await fixture(t, makeBackend, 'bind');
    const a = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
    await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: BOB });
    const bobRepo = (await f.store.list()).find((s) => s.binding.ownerId === 'bob')!.repo;
    const name = `snap-${a.backupId}`;
    const original = JSON.parse((await readObject(f.storage, name)).toString());
    const allow = () => undefined;
    // Claimed for bob: bob's repository is another, so the binding and the repository disagree.
    await writeObject(f.storage, name, Buffer.from(JSON.stringify({ ...original, ownerId: 'bob', workspaceId: 'ws-b1' })));
    await expectDataLoss(t, f.store.open(a.backupId, allow), /binding does not match its repository/);
    // Claimed for bob with bob's repository named: the seal (alice's repository key, her binding bound in) does not open.
    await writeObject(f.storage, name, Buffer.from(JSON.stringify({ ...original, ownerId: 'bob', workspaceId: 'ws-b1', repo: bobRepo })));
    await expectDataLoss(t, f.store.open(a.backupId, allow), /does not authenticate/);
    // Another workspace of alice's named: authenticated facts, so that too.
    await writeObject(f.storage, name, Buffer.from(JSON.stringify({ ...original, workspaceId: 'ws-a2' })));
    await expectDataLoss(t, f.store.open(a.backupId, allow), /does not authenticate/);
    await writeObject(f.storage, name, Buffer.from(JSON.stringify(original)));
    const claims: unknown[] = [];
    await f.store.open(a.backupId, (b) => void claims.push(b));
    t.same(claims, [ALICE], 'the access decision sees the binding before anything is verified');
  });

  for (const point of opts.crashPoints ?? CRASH_POINTS) {
    t.test(`kill -9 at ${point}: earlier snapshots restore, no half snapshot is listed, leftovers are collected`, async (t) => {
      const f = await fixture(t, makeBackend, `kill-${point}`);
      const a = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
      writeRandom(path.join(f.content, 'more.bin'), 3 * MiB);
      const gcRun = point.startsWith('gc-');
      if (gcRun) {
        // Something for GC to repack and delete: b's unique chunks, deleted.
        const b = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
        await f.store.delete(b.backupId);
      }
      const tsLoader = process.execArgv.filter((arg) => arg.includes('@tapjs/typescript'));
      const child = spawn(process.execPath, [...tsLoader, path.join(__dirname, 'snapshot-child.ts'), JSON.stringify({
        op: gcRun ? 'gc' : 'backup', storage: f.childConfig, keysDir: f.keysDir, content: f.content, uidBase: UID_BASE, binding: ALICE,
      })], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, TETRIX_TEST_REPO_CRASH_AT: point } });
      t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
      const signal = await new Promise<string | null>((resolve) => child.on('exit', (_code, sig) => resolve(sig)));
      t.equal(signal, 'SIGKILL', `the child died at ${point}`);
      t.same((await f.store.list()).map((s) => s.backupId), [a.backupId], 'only the complete snapshot is listed');
      t.same(snapshot(await restoreInto(f, a.backupId, 'a')), expectedSnapshot(path.join(f.base, 'a')), 'the earlier snapshot restores');
      t.same((await f.store.check()).errors, [], 'check finds the repository whole');
      const c = await f.store.backup({ content: f.content }, { uidBase: UID_BASE, binding: ALICE });
      await f.store.gcAll();
      const packs = (await f.storage.list('rp-')).filter((o) => o.name.includes('.pack-')).map((o) => o.name);
      const indexes = new Set((await f.storage.list('rp-')).filter((o) => o.name.includes('.idx-')).map((o) => o.name.replace('.idx-', '.pack-')));
      t.same(packs.filter((p) => !indexes.has(p)), [], 'after GC no pack without an index is left');
      fs.rmSync(path.join(f.base, 'a'), { recursive: true });
      t.same(snapshot(await restoreInto(f, c.backupId, 'a')), expectedSnapshot(f.content), 'a later backup restores whole');
      t.same((await f.store.check()).errors, []);
    });
  }
}
