import t from 'tap';
import { createPrivateKey, createPublicKey, generateKeyPairSync, sign } from 'node:crypto';
import { IN_TOTO_PAYLOAD_TYPE, preAuthEncoding, signEnvelope, verifyEnvelope, DsseEnvelope, DsseSigner } from '../../src/prebuild/dsse';
import { signingKeyFromPem } from '../../src/prebuild/signing-key';

// RFC 8032 section 7.1, TEST 1: a fixed Ed25519 key, so signatures are known answers (Ed25519 is deterministic).
const RFC8032_SEED = '9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60';
const RFC8032_PUBLIC = 'd75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a';
const PKCS8_ED25519_PREFIX = '302e020100300506032b657004220420';
const rfcPrivate = createPrivateKey({ key: Buffer.from(PKCS8_ED25519_PREFIX + RFC8032_SEED, 'hex'), format: 'der', type: 'pkcs8' });
const rfcKey = signingKeyFromPem(rfcPrivate.export({ format: 'pem', type: 'pkcs8' }).toString(), 'rfc8032 test key');

const ascii = (s: string): number[] => [...s].map((c) => c.charCodeAt(0));

t.test('PAE is built byte by byte as the DSSE protocol says', async (t) => {
  const body = Buffer.from('{"_type":"https://in-toto.io/Statement/v1"}');
  // "DSSEv1" SP "28" SP type SP "43" SP body, assembled here without the implementation's help.
  const expected = Buffer.from([
    0x44, 0x53, 0x53, 0x45, 0x76, 0x31, 0x20,
    0x32, 0x38, 0x20,
    ...ascii('application/vnd.in-toto+json'), 0x20,
    0x34, 0x33, 0x20,
    ...body,
  ]);
  t.equal(IN_TOTO_PAYLOAD_TYPE.length, 28);
  t.equal(body.length, 43);
  t.same(preAuthEncoding(IN_TOTO_PAYLOAD_TYPE, body), expected);

  // The protocol's own example: DSSEv1 29 http://example.com/HelloWorld 11 hello world
  t.equal(preAuthEncoding('http://example.com/HelloWorld', Buffer.from('hello world')).toString('latin1'),
    'DSSEv1 29 http://example.com/HelloWorld 11 hello world');
});

t.test('PAE lengths count UTF-8 bytes, and an empty body keeps its trailing space', async (t) => {
  const type = 'application/vnd.exämple+json'; // 28 characters, 29 bytes
  t.equal(type.length, 28);
  t.equal(preAuthEncoding(type, Buffer.from('x')).toString('utf8'), `DSSEv1 29 ${type} 1 x`);
  t.same(preAuthEncoding(IN_TOTO_PAYLOAD_TYPE, Buffer.alloc(0)), Buffer.from('DSSEv1 28 application/vnd.in-toto+json 0 '));
  const binary = Buffer.from([0x00, 0xff, 0x20, 0x0a]);
  t.same(preAuthEncoding('t', binary), Buffer.concat([Buffer.from('DSSEv1 1 t 4 '), binary]), 'body bytes are copied, not decoded');
});

t.test('known answer: the RFC 8032 key signs the in-toto PAE to a fixed signature', async (t) => {
  t.equal(createPublicKey(rfcPrivate).export({ format: 'der', type: 'spki' }).subarray(-32).toString('hex'), RFC8032_PUBLIC);
  const body = Buffer.from('{"_type":"https://in-toto.io/Statement/v1"}');
  const env = signEnvelope(IN_TOTO_PAYLOAD_TYPE, body, rfcKey);
  // Computed independently: node's Ed25519 over the hand-built PAE above; matches the published DSSE
  // "single-signature" vector for this key and payload.
  const expectedSig = '2WAfaHm5jluo0w+0rk8uVkluELJYWjSmU9x7EUzx+AyteDGJ4/nqyJXfmAUVFIAoQafWm7AxBZNw5M9ixNHiCA==';
  const handPae = Buffer.concat([Buffer.from('DSSEv1 28 application/vnd.in-toto+json 43 '), body]);
  t.equal(sign(null, handPae, rfcPrivate).toString('base64'), expectedSig);
  t.same(env, {
    payload: 'eyJfdHlwZSI6Imh0dHBzOi8vaW4tdG90by5pby9TdGF0ZW1lbnQvdjEifQ==',
    payloadType: 'application/vnd.in-toto+json',
    signatures: [{ keyid: rfcKey.keyId, sig: expectedSig }],
  });
  const ok = verifyEnvelope(env, rfcKey.publicKeyPem);
  t.same(ok.payload, body);
  t.equal(ok.keyId, rfcKey.keyId);
});

function freshSigner(): DsseSigner & { publicKeyPem: string } {
  const { privateKey } = generateKeyPairSync('ed25519');
  return signingKeyFromPem(privateKey.export({ format: 'pem', type: 'pkcs8' }).toString());
}

t.test('verification fails for a tampered payload, payloadType, signature, or another key', async (t) => {
  const signer = freshSigner();
  const env = signEnvelope(IN_TOTO_PAYLOAD_TYPE, Buffer.from('{"a":1}'), signer);
  t.ok(verifyEnvelope(env, signer.publicKeyPem));

  const cases: Array<[string, DsseEnvelope, RegExp]> = [
    ['payload', { ...env, payload: Buffer.from('{"a":2}').toString('base64') }, /dsse signature/],
    ['payloadType', { ...env, payloadType: 'application/vnd.other+json' }, /dsse signature/],
    ['signature', { ...env, signatures: [{ ...env.signatures[0], sig: flipBit(env.signatures[0].sig) }] }, /dsse signature/],
  ];
  for (const [what, bad, message] of cases) {
    t.throws(() => verifyEnvelope(bad, signer.publicKeyPem), { code: 'DATA_LOSS', message }, `tampered ${what}`);
  }
  t.throws(() => verifyEnvelope(env, freshSigner().publicKeyPem), { code: 'DATA_LOSS', message: /dsse signature/ }, 'another key');
  const otherKeyid = { ...env, signatures: [{ keyid: 'someone-else', sig: env.signatures[0].sig }] };
  t.ok(verifyEnvelope(otherKeyid, signer.publicKeyPem), 'keyid is a hint only: changing it changes nothing');
});

t.test('a correctly signed but unsupported payloadType is rejected after the signature check', async (t) => {
  const signer = freshSigner();
  const env = signEnvelope('application/vnd.other+json', Buffer.from('{}'), signer);
  t.throws(() => verifyEnvelope(env, signer.publicKeyPem), { code: 'DATA_LOSS', message: /dsse payloadType/ });
  t.ok(verifyEnvelope(env, signer.publicKeyPem, ['application/vnd.other+json']));
});

t.test('URL-safe base64 is accepted; junk is malformed', async (t) => {
  const signer = freshSigner();
  const body = Buffer.from([0xfb, 0xff, 0xbf, 0x3e, 0x3f]); // encodes with + and / in standard base64
  const env = signEnvelope(IN_TOTO_PAYLOAD_TYPE, body, signer);
  t.match(env.payload, /[+/]/);
  const urlSafe = (s: string): string => s.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  const v = verifyEnvelope({ ...env, payload: urlSafe(env.payload), signatures: [{ sig: urlSafe(env.signatures[0].sig) }] }, signer.publicKeyPem);
  t.same(v.payload, body);
  t.throws(() => verifyEnvelope({ ...env, payload: 'not base64!' }, signer.publicKeyPem), { code: 'DATA_LOSS', message: /dsse malformed/ });
  t.throws(() => verifyEnvelope('{', signer.publicKeyPem), { code: 'DATA_LOSS', message: /dsse malformed: not JSON/ });
  t.throws(() => verifyEnvelope({ payload: env.payload, payloadType: env.payloadType, signatures: [] }, signer.publicKeyPem), { message: /dsse malformed/ });
  t.throws(() => verifyEnvelope(env, 'not a key'), { code: 'INVALID_ARGUMENT' });
});

t.test('one good signature among bad ones verifies (threshold 1)', async (t) => {
  const signer = freshSigner();
  const env = signEnvelope(IN_TOTO_PAYLOAD_TYPE, Buffer.from('{}'), signer);
  const other = signEnvelope(IN_TOTO_PAYLOAD_TYPE, Buffer.from('{}'), freshSigner());
  t.ok(verifyEnvelope({ ...env, signatures: [...other.signatures, ...env.signatures] }, signer.publicKeyPem));
});

function flipBit(b64: string): string {
  const b = Buffer.from(b64, 'base64');
  b[5] ^= 0x01;
  return b.toString('base64');
}
