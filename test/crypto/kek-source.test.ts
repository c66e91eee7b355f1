// Where the node's key-encryption keys come from: sealed under a root key the state dir does not hold
// (a file elsewhere, a systemd credential) or by a KMS (Vault Transit over real HTTPS), never in the clear.
import t, { type Test } from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { KeyRing } from '../../src/crypto/keys';
import { openNodeKeyRing } from '../../src/crypto/kek-source';
import { sealSecret, openSecret } from '../../src/crypto/secrets';
import { startVaultDouble } from '../helpers/vault-transit';

function tempDir(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-kek-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Every form a 32-byte key could take in a file. */
const formsOf = (key: Buffer): Buffer[] => [key, Buffer.from(key.toString('hex')), Buffer.from(key.toString('base64'))];

function filesHolding(dir: string, key: Buffer): string[] {
  const out: string[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    const p = path.join(entry.parentPath, entry.name);
    const bytes = fs.readFileSync(p);
    if (formsOf(key).some((f) => bytes.includes(f))) out.push(p);
  }
  return out;
}

function writeRootKey(dir: string, name: string): { file: string; key: Buffer } {
  const key = crypto.randomBytes(32);
  const file = path.join(dir, name);
  fs.writeFileSync(file, key.toString('hex') + '\n', { mode: 0o600 });
  return { file, key };
}

t.test('under a root key file, the state dir holds only sealed KEKs and opens with nothing else', async (t) => {
  const base = tempDir(t);
  const stateDir = path.join(base, 'state');
  const root = writeRootKey(base, 'root.key');
  const { keyring } = await openNodeKeyRing({ kind: 'file', path: root.file }, stateDir);
  const id = keyring.current().id;
  t.match(keyring.protection, /^root-key:root-[0-9a-f]{16}$/);
  t.same(fs.readdirSync(path.join(stateDir, 'keys')).sort(), [`${id}.sealed`, 'kek-current'].sort(), 'no plaintext .key file');
  t.same(filesHolding(stateDir, root.key), [], 'the root key is nowhere in the state dir');
  const sealed = sealSecret(keyring, 'hunter2', 'a');

  const again = await openNodeKeyRing({ kind: 'file', path: root.file }, stateDir);
  t.equal(again.keyring.current().id, id, 'the same KEK after a restart');
  t.equal(openSecret(again.keyring, sealed, 'a').toString(), 'hunter2');

  // The state dir alone (a stolen disk image, a copied backup dir) opens nothing: the plaintext reader finds no key.
  t.throws(() => KeyRing.open({ dir: path.join(stateDir, 'keys') }), { code: 'FAILED_PRECONDITION' }, 'no key without the root key');
  const other = writeRootKey(base, 'other.key');
  await t.rejects(openNodeKeyRing({ kind: 'file', path: other.file }, stateDir), {
    code: 'FAILED_PRECONDITION', message: /is sealed by root-key:root-[0-9a-f]{16}, but this node's KEK source is root-key:root-/,
  }, 'another root key is told apart, not taken for corruption');
  await t.rejects(openNodeKeyRing({ kind: 'systemd-credential', name: 'tetrix-kek' }, stateDir, {}), {
    code: 'FAILED_PRECONDITION', message: /\$CREDENTIALS_DIRECTORY is not set/,
  });
});

t.test('a sealed KEK is bound to its id: sealed payloads swapped between key files do not open', async (t) => {
  const base = tempDir(t);
  const stateDir = path.join(base, 'state');
  const root = writeRootKey(base, 'root.key');
  const { keyring } = await openNodeKeyRing({ kind: 'file', path: root.file }, stateDir);
  const a = keyring.current().id;
  const b = await keyring.rotateKey();
  const fileOf = (id: string): string => path.join(stateDir, 'keys', `${id}.sealed`);
  const fa = JSON.parse(fs.readFileSync(fileOf(a), 'utf8')) as { sealed: string };
  const fb = JSON.parse(fs.readFileSync(fileOf(b), 'utf8')) as { sealed: string };
  fs.writeFileSync(fileOf(a), JSON.stringify({ ...fa, sealed: fb.sealed }), { mode: 0o600 });
  await t.rejects(openNodeKeyRing({ kind: 'file', path: root.file }, stateDir), { code: 'DATA_LOSS', message: new RegExp(`sealed key ${a}: does not authenticate`) });
});

t.test('a node that had plaintext KEKs seals them and removes the plaintext on its first protected start', async (t) => {
  const base = tempDir(t);
  const stateDir = path.join(base, 'state');
  const plain = KeyRing.open({ dir: path.join(stateDir, 'keys') });
  const oldId = plain.current().id;
  const oldKey = Buffer.from(fs.readFileSync(path.join(stateDir, 'keys', `${oldId}.key`), 'utf8').trim(), 'hex');
  const newer = plain.rotate();
  const sealed = sealSecret(plain, 'kept', 'x');
  const root = writeRootKey(base, 'root.key');
  const { keyring } = await openNodeKeyRing({ kind: 'file', path: root.file }, stateDir);
  t.equal(keyring.current().id, newer, 'the current key stays current');
  t.same(keyring.ids(), [oldId, newer].sort());
  t.same(fs.readdirSync(path.join(stateDir, 'keys')).filter((n) => n.endsWith('.key')), [], 'plaintext key files are gone');
  t.same(filesHolding(stateDir, oldKey), [], 'and the old key bytes are nowhere in the state dir');
  t.equal(openSecret(keyring, sealed, 'x').toString(), 'kept');
});

t.test('with Vault Transit over HTTPS, KEKs are sealed by the KMS and come back only through it', async (t) => {
  const vault = await startVaultDouble(t);
  const base = tempDir(t);
  const stateDir = path.join(base, 'state');
  const source = { kind: 'kms' as const, url: vault.keyUrl, tokenFile: { kind: 'file' as const, path: vault.tokenFile }, caFile: vault.caFile };
  const first = await openNodeKeyRing(source, stateDir);
  const id = first.keyring.current().id;
  t.equal(first.keyring.protection, 'vault-transit:transit/tetrix-node');
  const file = JSON.parse(fs.readFileSync(path.join(stateDir, 'keys', `${id}.sealed`), 'utf8')) as { sealed: string };
  t.match(file.sealed, /^vault:v1:/, 'the KEK on disk is a Vault ciphertext');
  const rotated = await first.keyring.rotateKey();
  const secret = sealSecret(first.keyring, 'through-vault', 'y');
  first.close();
  t.ok(vault.requests.filter((r) => r.path === '/v1/transit/encrypt/tetrix-node' && r.status === 200).length >= 2, 'each new KEK was sent to Vault');
  t.notOk(fs.readFileSync(path.join(stateDir, 'keys', `${id}.sealed`), 'utf8').includes(vault.token), 'the token is not stored');

  const second = await openNodeKeyRing(source, stateDir);
  t.equal(second.keyring.current().id, rotated);
  t.equal(openSecret(second.keyring, secret, 'y').toString(), 'through-vault', 'reopened by asking Vault to decrypt');
  t.ok(vault.requests.some((r) => r.path === '/v1/transit/decrypt/tetrix-node' && r.status === 200));
  second.close();

  fs.writeFileSync(vault.tokenFile, 'hvs.wrong\n', { mode: 0o600 });
  await t.rejects(openNodeKeyRing(source, stateDir), { code: 'PERMISSION_DENIED', message: /kms https:\/\/127\.0\.0\.1:\d+ key transit\/tetrix-node: decrypt: HTTP 403/ });
  fs.writeFileSync(vault.tokenFile, vault.token + '\n', { mode: 0o600 });

  // A server whose certificate does not chain to kmsCaFile is not talked to.
  const stranger = await startVaultDouble(t);
  await t.rejects(openNodeKeyRing({ ...source, caFile: stranger.caFile }, stateDir), { code: 'UNAVAILABLE' });
  await vault.close();
  await t.rejects(openNodeKeyRing(source, stateDir), { code: 'UNAVAILABLE', message: /ECONNREFUSED/ }, 'no KMS, no keys');
});

t.test('a token file others can read is refused, naming it', async (t) => {
  const vault = await startVaultDouble(t);
  const stateDir = path.join(tempDir(t), 'state');
  fs.chmodSync(vault.tokenFile, 0o644);
  await t.rejects(openNodeKeyRing({ kind: 'kms', url: vault.keyUrl, tokenFile: { kind: 'file', path: vault.tokenFile }, caFile: vault.caFile }, stateDir), {
    code: 'FAILED_PRECONDITION', message: new RegExp(`kms token ${vault.tokenFile} is accessible by group or others`),
  });
});
