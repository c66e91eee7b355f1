import t, { Test } from 'tap';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createHash, createPublicKey, verify } from 'node:crypto';
import { inspect } from 'node:util';
import { DomainError } from '../../src/errors';
import { loadOrCreateSigningKey, provenanceKeyId } from '../../src/prebuild/signing-key';

async function stateDir(t: Test): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), `tetrix-signkey-${process.pid}-`));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return dir;
}

t.test('the node generates its key at first start, 0600 in a 0700 dir, and keeps it across restarts', async (t) => {
  const dir = await stateDir(t);
  const first = await loadOrCreateSigningKey(dir);
  const keyFile = path.join(dir, 'keys', 'provenance.key');
  t.equal((await fs.stat(keyFile)).mode & 0o777, 0o600);
  t.equal((await fs.stat(path.join(dir, 'keys'))).mode & 0o777, 0o700);
  t.match(first.publicKeyPem, /^-----BEGIN PUBLIC KEY-----\n/);
  const again = await loadOrCreateSigningKey(dir);
  t.equal(again.keyId, first.keyId, 'same key after restart');
  t.same((await fs.readdir(path.join(dir, 'keys'))).sort(), ['provenance.key'], 'no temp files left');
});

t.test('key id is sha256 of the SPKI DER, and signatures verify with the published PEM', async (t) => {
  const key = await loadOrCreateSigningKey(await stateDir(t));
  const der = createPublicKey(key.publicKeyPem).export({ format: 'der', type: 'spki' });
  t.equal(key.keyId, createHash('sha256').update(der).digest('hex'));
  t.equal(provenanceKeyId(key.publicKeyPem), key.keyId);
  const msg = Buffer.from('hello');
  const sig = key.sign(msg);
  t.equal(sig.length, 64);
  t.ok(verify(null, msg, key.publicKeyPem, sig));
});

t.test('the private key does not show in inspect or JSON', async (t) => {
  const dir = await stateDir(t);
  const key = await loadOrCreateSigningKey(dir);
  const pem = await fs.readFile(path.join(dir, 'keys', 'provenance.key'), 'utf8');
  const body = pem.split('\n')[1];
  t.notMatch(inspect(key, { depth: 10, showHidden: true }), body);
  t.notMatch(JSON.stringify(key), body);
});

t.test('a key readable by group or others is refused', async (t) => {
  const dir = await stateDir(t);
  await loadOrCreateSigningKey(dir);
  const keyFile = path.join(dir, 'keys', 'provenance.key');
  for (const mode of [0o640, 0o604, 0o660]) {
    await fs.chmod(keyFile, mode);
    await t.rejects(loadOrCreateSigningKey(dir), { code: 'FAILED_PRECONDITION', message: /lets group or others in/ }, `mode ${mode.toString(8)}`);
  }
  await fs.chmod(keyFile, 0o600);
  await fs.chmod(path.join(dir, 'keys'), 0o755);
  await t.rejects(loadOrCreateSigningKey(dir), { code: 'FAILED_PRECONDITION' }, 'a key dir open to others is refused');
});

t.test('a symlinked key is refused', async (t) => {
  const dir = await stateDir(t);
  await loadOrCreateSigningKey(dir);
  const keyFile = path.join(dir, 'keys', 'provenance.key');
  await fs.rename(keyFile, path.join(dir, 'elsewhere.key'));
  await fs.symlink(path.join(dir, 'elsewhere.key'), keyFile);
  await t.rejects(loadOrCreateSigningKey(dir), { code: 'FAILED_PRECONDITION', message: /symlink/ });
});

t.test('a corrupt key file is DATA_LOSS, not silently replaced', async (t) => {
  const dir = await stateDir(t);
  await loadOrCreateSigningKey(dir);
  const keyFile = path.join(dir, 'keys', 'provenance.key');
  await fs.writeFile(keyFile, 'garbage');
  await t.rejects(loadOrCreateSigningKey(dir), { code: 'DATA_LOSS' });
  t.equal(await fs.readFile(keyFile, 'utf8'), 'garbage');
});
