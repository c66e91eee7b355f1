// Snapshots written before tree literals were packed (version 1, fixtures/snapshot-v1) still restore
// exactly, pass check, and serve as the parent of a new (version 2) backup.
import t, { Test } from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { KeyRing } from '../../../src/crypto/keys';
import { SnapshotStore } from '../../../src/content/repo/snapshots';
import { FsObjectStorage } from '../../../src/content/storage-fs';
import { quietLog, tempDir } from '../backup-suite';

const FIXTURE = path.join(__dirname, 'fixtures', 'snapshot-v1');
const BINDING = { workspaceId: 'ws-fixture', ownerId: 'owner-fixture', teamId: '', kind: 'REGULAR' } as const;

interface Entry { type: 'file' | 'symlink'; mode?: number; size?: number; mtimeMs?: number; sha256?: string; target?: string }
const manifest = JSON.parse(fs.readFileSync(path.join(FIXTURE, 'manifest.json'), 'utf8')) as { backupId: string; entries: Record<string, Entry> };

/** A copy of the fixture to work on: restores take locks and backups add objects. */
function openCopy(t: Test): { store: SnapshotStore; base: string } {
  const base = tempDir(t, 'snapshot-v1');
  fs.cpSync(FIXTURE, path.join(base, 'repo'), { recursive: true });
  const keys = path.join(base, 'repo', 'keys');
  fs.chmodSync(keys, 0o700);
  for (const f of fs.readdirSync(keys)) fs.chmodSync(path.join(keys, f), 0o600);
  const store = new SnapshotStore({ storage: new FsObjectStorage({ dir: path.join(base, 'repo', 'store') }), keyring: KeyRing.open({ dir: keys }), log: quietLog, inProcess: true });
  return { store, base };
}

const versionOf = (base: string, id: string): number => JSON.parse(fs.readFileSync(path.join(base, 'repo', 'store', `snap-${id}`), 'utf8')).version;

function compare(t: Test, dir: string, what: string): void {
  for (const [rel, want] of Object.entries(manifest.entries)) {
    const p = path.join(dir, rel);
    const st = fs.lstatSync(p);
    if (want.type === 'symlink') {
      t.equal(fs.readlinkSync(p), want.target, `${what}: ${rel} links to ${want.target}`);
      continue;
    }
    const got = { mode: st.mode & 0o7777, size: st.size, mtimeMs: st.mtimeMs, sha256: crypto.createHash('sha256').update(fs.readFileSync(p)).digest('hex') };
    t.same(got, { mode: want.mode, size: want.size, mtimeMs: want.mtimeMs, sha256: want.sha256 }, `${what}: ${rel}`);
  }
}

t.test('a version 1 snapshot restores exactly and passes check', async (t) => {
  const { store, base } = openCopy(t);
  const [snap] = await store.list();
  t.equal(snap?.backupId, manifest.backupId, 'listed');
  t.equal(versionOf(base, manifest.backupId), 1, 'the fixture is a version 1 snapshot');
  const out = path.join(base, 'restored');
  await store.restore(manifest.backupId, out, { uidBase: 0 });
  compare(t, path.join(out), 'restored');
  const check = await store.check();
  t.same(check.errors, [], 'check finds nothing wrong');
});

t.test('a version 1 snapshot is the parent of the next backup, which restores exactly', async (t) => {
  const { store, base } = openCopy(t);
  const tree = path.join(base, 'tree');
  await store.restore(manifest.backupId, tree, { uidBase: 0 });
  const next = await store.backup({ content: tree }, { uidBase: 0, binding: BINDING });
  const out = path.join(base, 'restored');
  await store.restore(next.backupId, out, { uidBase: 0 });
  compare(t, out, 'restored from the new snapshot');
  t.equal((await store.list()).length, 2);
  t.equal(versionOf(base, next.backupId), 2, 'the new snapshot is version 2');
});
