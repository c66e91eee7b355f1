import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { KeyRing } from '../../src/crypto/keys';
import { openSecret, resealSecret, sealedKeyId, sealSecret } from '../../src/crypto/secrets';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-secrets-${process.pid}-`));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
const ring = KeyRing.open({ dir: path.join(dir, 'keys') });
const MARKER = 'tetrix-marker-' + process.pid + '-s3cr3t';

t.test('secrets round trip and carry no plaintext', async (t) => {
  const sealed = sealSecret(ring, MARKER, 'workspace:w1:env:TOKEN');
  t.match(sealed, /^tx1\.kek-[0-9a-f]{16}\.[A-Za-z0-9_-]+$/);
  t.notMatch(sealed, MARKER);
  t.equal(openSecret(ring, sealed, 'workspace:w1:env:TOKEN').toString(), MARKER);
  t.not(sealSecret(ring, MARKER), sealSecret(ring, MARKER), 'fresh nonce each time');
  t.equal(openSecret(ring, sealSecret(ring, Buffer.from([0, 1, 2]))).length, 3);
});

t.test('tampering, other AAD, malformed and missing keys are refused without echoing the value', async (t) => {
  const sealed = sealSecret(ring, MARKER, 'a');
  t.throws(() => openSecret(ring, sealed, 'b'), { code: 'DATA_LOSS' });
  const body = Buffer.from(sealed.split('.')[2], 'base64url');
  body[14] ^= 1;
  const [p, k] = sealed.split('.');
  t.throws(() => openSecret(ring, `${p}.${k}.${body.toString('base64url')}`, 'a'), { code: 'DATA_LOSS' });
  try {
    openSecret(ring, MARKER);
    t.fail('plaintext accepted');
  } catch (err) {
    t.match(err, { code: 'DATA_LOSS' });
    t.notMatch((err as Error).message, MARKER, 'error does not echo the value');
  }
  t.throws(() => openSecret(ring, `tx1.kek-0123456789abcdef.${body.toString('base64url')}`), { code: 'FAILED_PRECONDITION' });
});

t.test('after rotation old secrets open and reseal moves them to the current key', async (t) => {
  const sealed = sealSecret(ring, MARKER, 'x');
  const oldId = sealedKeyId(sealed);
  const newId = ring.rotate();
  t.equal(openSecret(ring, sealed, 'x').toString(), MARKER);
  const resealed = resealSecret(ring, sealed, 'x');
  t.equal(sealedKeyId(resealed), newId);
  t.not(oldId, newId);
  t.equal(openSecret(ring, resealed, 'x').toString(), MARKER);
  t.equal(resealSecret(ring, resealed, 'x'), resealed);
});
