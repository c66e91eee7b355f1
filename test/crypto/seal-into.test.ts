// native/aead.c's gcmSealInto (the repository's packs) against crypto/aead.ts: the same bytes as Node's
// cipher for the same key, nonce and AAD, opened by openGcm, and nothing written when it does not fit.
import crypto from 'node:crypto';
import t from 'tap';
import { GCM_TAG_BYTES, openGcm, sealGcm } from '../../src/crypto/aead';
import { aeadNative } from '../../src/native';

const key = crypto.randomBytes(32);
const nonce = crypto.randomBytes(12);
const aad = Buffer.from('tetrix/test/aad');

t.test('the same ciphertext and tag as sealGcm, for empty, small and multi-MiB parts', async (t) => {
  for (const sizes of [[0], [1], [1, 4 << 20], [0, 17, 0, 65536 + 3]]) {
    const parts = sizes.map((n) => crypto.randomBytes(n));
    const total = sizes.reduce((a, b) => a + b, 0);
    const out = Buffer.alloc(total + GCM_TAG_BYTES + 10, 0xee);
    const n = aeadNative.gcmSealInto(key, nonce, aad, parts, out, 5);
    t.equal(n, total + GCM_TAG_BYTES, `length for parts ${sizes.join('+')}`);
    t.ok(out.subarray(5, 5 + n).equals(sealGcm(key, nonce, aad, parts)), 'byte for byte Node\'s');
    t.ok(openGcm(key, nonce, aad, out.subarray(5, 5 + n))?.equals(Buffer.concat(parts)), 'openGcm opens it');
    t.ok(out.subarray(0, 5).every((b) => b === 0xee) && out.subarray(5 + n).every((b) => b === 0xee), 'nothing outside its place is touched');
  }
});

t.test('the AAD and key are bound: another does not open it', async (t) => {
  const out = Buffer.alloc(64 + GCM_TAG_BYTES);
  const n = aeadNative.gcmSealInto(key, nonce, aad, [crypto.randomBytes(64)], out, 0);
  t.equal(openGcm(key, nonce, Buffer.from('other'), out.subarray(0, n)), undefined);
  t.equal(openGcm(crypto.randomBytes(32), nonce, aad, out.subarray(0, n)), undefined);
});

t.test('bad arguments are refused before anything is written', async (t) => {
  const out = Buffer.alloc(40, 0xee);
  t.throws(() => aeadNative.gcmSealInto(key, nonce, aad, [Buffer.alloc(30)], out, 0), RangeError, 'too small for data and tag');
  t.throws(() => aeadNative.gcmSealInto(key, nonce, aad, [Buffer.alloc(1)], out, 41), RangeError, 'offset past the end');
  t.ok(out.every((b) => b === 0xee), 'out untouched');
  t.throws(() => aeadNative.gcmSealInto(key.subarray(0, 16), nonce, aad, [], out, 0), TypeError, 'a 16-byte key');
  t.throws(() => aeadNative.gcmSealInto(key, nonce.subarray(0, 8), aad, [], out, 0), TypeError, 'an 8-byte nonce');
  t.throws(() => aeadNative.gcmSealInto(key, nonce, aad, ['text' as unknown as Buffer], out, 0), TypeError, 'a part that is not a Buffer');
});
