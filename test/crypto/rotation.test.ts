// Rotation reaches every sealed thing: env values in the state database and logs' data keys (an open log
// too) move to the new key, the census counts what is left per key, and a key in use cannot be retired.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { KeyRing } from '../../src/crypto/keys';
import { KeyRotation } from '../../src/crypto/rotation';
import { openSecret, resealSecret, sealedKeyIdsIn, sealSecret } from '../../src/crypto/secrets';
import { WorkspaceStore } from '../../src/workspace/store';
import { newStatus, type WorkspaceSpec } from '../../src/workspace/types';
import { LogStore } from '../../src/logs';
import { BackupStore } from '../../src/content/backups';
import { FsObjectStorage } from '../../src/content/storage-fs';

const spec = (id: string, env: Record<string, string>): WorkspaceSpec => ({
  id, ownerId: 'alice', teamId: '', kind: 'REGULAR', image: 'builtin:busybox', command: ['true'], env,
  resources: { memoryBytes: 0, cpuMillis: 0, pids: 16 }, network: 'NONE', ports: [], restoreFrom: '', seccompProfile: '',
  tasks: [], source: { repositoryUrl: '', revision: '' }, workingDir: '/',
});

async function readAll(logs: LogStore, id: string): Promise<string> {
  let out = '';
  for await (const c of logs.read(id)) out += c.data.toString('utf8');
  return out;
}

t.test('re-wrap moves env secrets and log keys (open logs included) off the old key, which then retires', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-rotation-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const keyring = KeyRing.open({ dir: path.join(dir, 'keys') });
  const store = new WorkspaceStore(dir, {
    seal: (p, aad) => sealSecret(keyring, p, aad),
    open: (s, aad) => openSecret(keyring, s, aad).toString('utf8'),
    reseal: (s, aad) => resealSecret(keyring, s, aad),
    keyIdsIn: sealedKeyIdsIn,
  });
  t.teardown(() => store.close());
  const logs = new LogStore({ dir: path.join(dir, 'logs'), sealer: keyring, maxBytesPerLog: 1 << 20 });
  await logs.init();
  store.insert({ spec: spec('w1', { TOKEN: 'one' }), status: newStatus(0) }, 'd1');
  store.insert({ spec: spec('w2', { TOKEN: 'two' }), status: newStatus(0) }, 'd2');
  const closed = await logs.create('w1');
  closed.append({ timeMs: 1, stream: 'stdout', task: '', data: Buffer.from('closed-before\n') });
  await closed.close();
  const open = await logs.create('w2');
  open.append({ timeMs: 1, stream: 'stdout', task: '', data: Buffer.from('before-rotation\n') });

  const rotation = new KeyRotation(keyring, [
    { kind: 'secret', usage: async () => store.keyUsage(), rewrap: async () => store.resealAll() },
    { kind: 'log', usage: () => logs.keyUsage(), rewrap: (k) => logs.rewrap(k) },
  ]);
  const oldKey = keyring.current().id;
  const rotated = await rotation.run({ newKey: true, rewrap: false, retire: [] });
  t.same(rotated.usage, [{ keyId: oldKey, kind: 'log', count: 2 }, { keyId: oldKey, kind: 'secret', count: 2 }], 'without re-wrap, all still on the old key');
  await t.rejects(rotation.run({ newKey: false, rewrap: false, retire: [oldKey] }), {
    code: 'FAILED_PRECONDITION', message: `retire_key_ids: ${oldKey} still protects 2 logs, 2 secrets; rotate with rewrap first`,
  });
  t.ok(fs.existsSync(path.join(dir, 'keys', `${oldKey}.key`)), 'the refused key is kept');

  const res = await rotation.run({ newKey: false, rewrap: true, retire: [oldKey] });
  t.same(res.rewrapped, { backup: 0, secret: 2, log: 2 });
  t.same(res.retired, [oldKey]);
  t.same(res.usage.map((u) => u.keyId), [rotated.keyId, rotated.keyId], 'everything on the new key');
  t.notOk(fs.existsSync(path.join(dir, 'keys', `${oldKey}.key`)), 'the old key file is gone');
  t.notOk(keyring.has(oldKey));

  open.append({ timeMs: 2, stream: 'stdout', task: '', data: Buffer.from('after-rotation\n') });
  await open.close();
  t.equal(await readAll(logs, 'w2'), 'before-rotation\nafter-rotation\n', 'the log that was open reads whole');
  t.equal(await readAll(logs, 'w1'), 'closed-before\n');
  const reopened = KeyRing.open({ dir: path.join(dir, 'keys') });
  const fresh = new LogStore({ dir: path.join(dir, 'logs'), sealer: reopened, maxBytesPerLog: 1 << 20 });
  t.equal(await readAll(fresh, 'w1'), 'closed-before\n', 'and with the keyring read back from disk');
  t.same(store.loadAll().map((r) => r.spec.env.TOKEN).sort(), ['one', 'two'], 'env values open under the new key');

  await logs.remove('w1');
  t.same(fs.readdirSync(path.join(dir, 'logs')).filter((n) => n.startsWith('w1')), [], 'removing a log removes its re-wrapped key');
});

t.test('a sealed value the re-seal walk does not know still blocks retiring its key', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-rotation-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const keyring = KeyRing.open({ dir: path.join(dir, 'keys') });
  const oldKey = keyring.current().id;
  const stray = sealSecret(keyring, 'x', 'somewhere-else');
  const census = { kind: 'secret' as const, usage: async () => new Map(sealedKeyIdsIn(JSON.stringify({ any: { field: stray } })).map((k) => [k, 1])), rewrap: async () => 0 };
  const rotation = new KeyRotation(keyring, [census]);
  await t.rejects(rotation.run({ newKey: true, rewrap: true, retire: [oldKey] }), { code: 'FAILED_PRECONDITION', message: /still protects 1 secret/ });
  t.ok(keyring.has(oldKey), 'the key stays');
});

t.test('a damaged log does not stop the re-wrap of the others, and keeps its key from being retired', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-rotation-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const keyring = KeyRing.open({ dir: path.join(dir, 'keys') });
  const logs = new LogStore({ dir: path.join(dir, 'logs'), sealer: keyring, maxBytesPerLog: 1 << 20 });
  await logs.init();
  for (const id of ['good', 'bad']) await (await logs.create(id)).close();
  const file = path.join(dir, 'logs', 'bad.tlog');
  const bytes = fs.readFileSync(file);
  bytes[8 + 2 + 20 + 2 + 5] ^= 0xff; // inside the header's wrapped data key
  fs.writeFileSync(file, bytes);
  const oldKey = keyring.current().id;
  const rotation = new KeyRotation(keyring, [{ kind: 'log', usage: () => logs.keyUsage(), rewrap: (k) => logs.rewrap(k) }]);
  await t.rejects(rotation.run({ newKey: true, rewrap: true, retire: [oldKey] }), { code: 'FAILED_PRECONDITION', message: /still protects 1 log;/ });
  const after = await rotation.run({ newKey: false, rewrap: false, retire: [] });
  t.same(after.usage.map((u) => [u.keyId === oldKey ? 'old' : 'new', u.count]).sort(), [['new', 1], ['old', 1]], 'the good log moved, the damaged one is still counted');
  t.ok(keyring.has(oldKey));
});

t.test('a backup still being written counts against its key: retiring that key waits for it', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-rotation-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'content'));
  fs.writeFileSync(path.join(dir, 'content', 'file'), 'data');
  // Real storage whose manifest write waits for the test: the backup is mid-way, its data key wrapped.
  let release!: () => void;
  let reached!: () => void;
  const atManifest = new Promise<void>((r) => (reached = r));
  const gate = new Promise<void>((r) => (release = r));
  class HeldStorage extends FsObjectStorage {
    override async put(...args: Parameters<FsObjectStorage['put']>): ReturnType<FsObjectStorage['put']> {
      if (args[0].endsWith('.manifest')) {
        reached();
        await gate;
      }
      return super.put(...args);
    }
  }
  const keyring = KeyRing.open({ dir: path.join(dir, 'keys') });
  const backups = new BackupStore({ storage: new HeldStorage({ dir: path.join(dir, 'backups') }), keyring, log: { info: () => undefined, warn: () => undefined }, inProcess: true });
  const rotation = new KeyRotation(keyring, [{ kind: 'backup', usage: () => backups.keyUsage(), rewrap: (k) => backups.rewrap('all', k) }]);
  const oldKey = keyring.current().id;
  const running = backups.backup({ content: path.join(dir, 'content') }, { uidBase: 0, binding: { workspaceId: 'ws-rotation', ownerId: 'alice', teamId: '', kind: 'REGULAR' } });
  await atManifest;
  await t.rejects(rotation.run({ newKey: true, rewrap: true, retire: [oldKey] }), { code: 'FAILED_PRECONDITION', message: /still protects 1 backup;/ },
    'the backup has no manifest yet, and still holds the key');
  release();
  const done = await running;
  t.equal(done.keyId, oldKey);
  const res = await rotation.run({ newKey: false, rewrap: true, retire: [oldKey] });
  t.same(res.retired, [oldKey], 'once it is stored, a re-wrap frees the key');
  t.same(res.rewrapped.backup, 1);
});

t.test('a backup whose manifest cannot be read or parsed still holds its key: no retire on a guess', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-rotation-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'content'));
  fs.writeFileSync(path.join(dir, 'content', 'file'), 'data');
  // Real storage that fails to hand over one manifest while `failing` names it (an S3 hiccup, a bad sector).
  let failing = '';
  class FlakyStorage extends FsObjectStorage {
    override async get(...args: Parameters<FsObjectStorage['get']>): ReturnType<FsObjectStorage['get']> {
      if (args[0] === failing) throw Object.assign(new Error('read failed'), { code: 'EIO' });
      return super.get(...args);
    }
  }
  const keyring = KeyRing.open({ dir: path.join(dir, 'keys') });
  const warnings: string[] = [];
  const backups = new BackupStore({
    storage: new FlakyStorage({ dir: path.join(dir, 'backups') }), keyring, inProcess: true,
    log: { info: () => undefined, warn: (_o: unknown, msg: string) => void warnings.push(msg) },
  });
  const rotation = new KeyRotation(keyring, [{ kind: 'backup', usage: () => backups.keyUsage(), rewrap: (k) => backups.rewrap('all', k) }]);
  const oldKey = keyring.current().id;
  const binding = { workspaceId: 'ws-census', ownerId: 'alice', teamId: '', kind: 'REGULAR' as const };
  const made = await backups.backup({ content: path.join(dir, 'content') }, { uidBase: 0, binding });
  const manifest = path.join(dir, 'backups', `${made.backupId}.manifest`);
  t.ok(fs.existsSync(manifest), 'the manifest is where the test edits it');
  await rotation.run({ newKey: true, rewrap: false, retire: [] });

  // A manifest of a format this node does not know (a newer daemon's, after a downgrade): listing skips it,
  // so the re-wrap cannot move it, and its key must stay.
  const original = fs.readFileSync(manifest);
  fs.writeFileSync(manifest, JSON.stringify({ ...JSON.parse(original.toString('utf8')), version: 99 }));
  await t.rejects(rotation.run({ newKey: false, rewrap: true, retire: [oldKey] }), { code: 'FAILED_PRECONDITION', message: /still protects 1 backup;/ },
    'an unknown manifest format counts under the key it names');
  t.ok(keyring.has(oldKey), 'the key stays');

  // The storage failing to hand a manifest over: the census fails, and nothing is retired.
  fs.writeFileSync(manifest, original);
  failing = `${made.backupId}.manifest`;
  await t.rejects(rotation.run({ newKey: false, rewrap: true, retire: [oldKey] }), { message: /read failed/ }, 'a manifest that cannot be read fails the census');
  t.ok(keyring.has(oldKey), 'the key stays');

  failing = '';
  const res = await rotation.run({ newKey: false, rewrap: true, retire: [oldKey] });
  t.same(res.retired, [oldKey], 'once the manifest reads, the re-wrap frees the key');
  t.equal((await backups.open(made.backupId, () => undefined)).keyId, res.keyId, 'and the backup opens under the new key');

  // Nothing any key could open (the manifest is not JSON) blocks nothing, and says so.
  fs.writeFileSync(manifest, 'not json');
  t.same([...(await backups.keyUsage()).keys()], [], 'a manifest naming no key counts against none');
  t.ok(warnings.includes('backup manifest names no key: nothing can open it'), 'and is logged');
});
