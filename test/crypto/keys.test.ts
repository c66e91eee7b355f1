import t, { Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { inspect } from 'node:util';
import { DomainError } from '../../src/errors';
import { KeyRing, keyIdOf } from '../../src/crypto/keys';

function tempDir(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-keys-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

t.test('first start generates a KEK 0600 in a 0700 dir, and the next start finds the same one', async (t) => {
  const dir = path.join(tempDir(t), 'keys');
  const ring = KeyRing.open({ dir });
  const id = ring.current().id;
  t.match(id, /^kek-[0-9a-f]{16}$/);
  t.equal(fs.statSync(dir).mode & 0o777, 0o700);
  t.equal(fs.statSync(path.join(dir, `${id}.key`)).mode & 0o777, 0o600);
  t.equal(fs.statSync(path.join(dir, 'kek-current')).mode & 0o777, 0o600);
  t.equal(KeyRing.open({ dir }).current().id, id, 'same key after restart');
  t.same(fs.readdirSync(dir).sort(), [`${id}.key`, 'kek-current'].sort(), 'no temporaries left');
});

t.test('a key file or key dir others can read or write is refused, naming the path', async (t) => {
  const base = tempDir(t);
  const dir = path.join(base, 'keys');
  const ring = KeyRing.open({ dir });
  const file = path.join(dir, `${ring.current().id}.key`);
  for (const mode of [0o640, 0o604, 0o620, 0o602]) {
    fs.chmodSync(file, mode);
    t.throws(() => KeyRing.open({ dir }), { code: 'FAILED_PRECONDITION', message: new RegExp(file) }, mode.toString(8));
  }
  fs.chmodSync(file, 0o600);
  fs.chmodSync(dir, 0o750);
  t.throws(() => KeyRing.open({ dir }), { code: 'FAILED_PRECONDITION', message: new RegExp(dir) });
  fs.chmodSync(dir, 0o700);

  const opFile = path.join(base, 'operator.key');
  fs.writeFileSync(opFile, crypto.randomBytes(32).toString('hex') + '\n', { mode: 0o644 });
  fs.chmodSync(opFile, 0o644);
  t.throws(() => KeyRing.open({ dir, keyFile: opFile }), { code: 'FAILED_PRECONDITION', message: new RegExp(opFile) });
  const link = path.join(base, 'link.key');
  fs.chmodSync(opFile, 0o600);
  fs.symlinkSync(opFile, link);
  t.throws(() => KeyRing.open({ dir, keyFile: link }), { code: 'FAILED_PRECONDITION' }, 'a symlinked key file is refused');
});

t.test('an operator key file becomes current and stays available after the operator moves on', async (t) => {
  const base = tempDir(t);
  const dir = path.join(base, 'keys');
  const key1 = crypto.randomBytes(32);
  const f1 = path.join(base, 'k1');
  fs.writeFileSync(f1, key1.toString('base64') + '\n', { mode: 0o600 });
  const ring1 = KeyRing.open({ dir, keyFile: f1 });
  t.equal(ring1.current().id, keyIdOf(key1));
  const { keyId, wrapped } = ring1.wrap(crypto.randomBytes(32), 'ctx');
  t.throws(() => ring1.rotate(), { code: 'FAILED_PRECONDITION' }, 'rotation is by key file');

  const f2 = path.join(base, 'k2');
  fs.writeFileSync(f2, crypto.randomBytes(32), { mode: 0o600 });
  const ring2 = KeyRing.open({ dir, keyFile: f2 });
  t.not(ring2.current().id, keyId);
  t.equal(ring2.unwrap(keyId, wrapped, 'ctx').length, 32, 'old wrapped key still opens');
});

t.test('rotation: a new current key, old ids still unwrap; missing or wrong keys are told apart', async (t) => {
  const ring = KeyRing.open({ dir: path.join(tempDir(t), 'keys') });
  const dataKey = crypto.randomBytes(32);
  const old = ring.wrap(dataKey, 'backup:a');
  const newId = ring.rotate();
  t.not(newId, old.keyId);
  t.equal(ring.current().id, newId);
  t.same(ring.unwrap(old.keyId, old.wrapped, 'backup:a'), dataKey);
  t.same(ring.ids().length, 2);

  t.throws(() => ring.unwrap('kek-0000000000000000', old.wrapped, 'backup:a'), { code: 'FAILED_PRECONDITION' });
  t.throws(() => ring.unwrap(newId, old.wrapped, 'backup:a'), { code: 'DATA_LOSS' }, 'wrong key id');
  t.throws(() => ring.unwrap(old.keyId, old.wrapped, 'backup:b'), { code: 'DATA_LOSS' }, 'other context');
  const flipped = Buffer.from(old.wrapped);
  flipped[20] ^= 1;
  t.throws(() => ring.unwrap(old.keyId, flipped, 'backup:a'), { code: 'DATA_LOSS' });
  t.ok(ring.wrap(dataKey, '', old.keyId).keyId === old.keyId, 'wrap under a named older key');
});

t.test('key bytes never show in inspect or JSON of the keyring', async (t) => {
  const dir = path.join(tempDir(t), 'keys');
  const ring = KeyRing.open({ dir });
  const hex = fs.readFileSync(path.join(dir, `${ring.current().id}.key`), 'utf8').trim();
  t.notMatch(inspect(ring, { depth: 10, showHidden: true }), hex);
  t.notMatch(JSON.stringify(ring), hex);
  t.type(new DomainError('INTERNAL', 'x'), DomainError);
});

t.test('retire deletes an old key for good; the current key and unknown ids are refused', async (t) => {
  const dir = path.join(tempDir(t), 'keys');
  const ring = KeyRing.open({ dir });
  const old = ring.current().id;
  const sealed = ring.wrap(crypto.randomBytes(32), 'ctx');
  const current = ring.rotate();
  t.throws(() => ring.retire(current), { code: 'FAILED_PRECONDITION', message: /is the current key/ });
  t.throws(() => ring.retire('kek-0000000000000000'), { code: 'NOT_FOUND' });
  ring.retire(old);
  t.notOk(fs.existsSync(path.join(dir, `${old}.key`)), 'its file is gone');
  t.same(ring.ids(), [current]);
  t.throws(() => ring.unwrap(old, sealed.wrapped, 'ctx'), { code: 'FAILED_PRECONDITION' }, 'what it sealed no longer opens');
  t.same(KeyRing.open({ dir }).ids(), [current], 'and it stays gone after a restart');
});

t.test('an extra aad binds a wrap; without one the bytes are the v1 ones', async (t) => {
  const ring = KeyRing.open({ dir: path.join(tempDir(t), 'keys') });
  const dataKey = crypto.randomBytes(32);
  const bound = ring.wrap(dataKey, 'backup:x', undefined, Buffer.from('manifest-digest'));
  t.same(ring.unwrap(bound.keyId, bound.wrapped, 'backup:x', Buffer.from('manifest-digest')), dataKey);
  t.throws(() => ring.unwrap(bound.keyId, bound.wrapped, 'backup:x', Buffer.from('other')), { code: 'DATA_LOSS' });
  t.throws(() => ring.unwrap(bound.keyId, bound.wrapped, 'backup:x'), { code: 'DATA_LOSS' });
  const plain = ring.wrap(dataKey, 'backup:x');
  t.same(ring.unwrap(plain.keyId, plain.wrapped, 'backup:x', Buffer.alloc(0)), dataKey, 'an empty aad is no aad');
});
