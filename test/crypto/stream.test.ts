import t from 'tap';
import crypto from 'node:crypto';
import { Readable } from 'node:stream';
import { DecryptStream, EncryptStream, HEADER_BYTES, newDataKey, TAG_BYTES } from '../../src/crypto/stream';

const SEG = 4096;

async function collect(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function encrypt(key: Buffer, plain: Buffer, pieces = 7): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let i = 0; i < plain.length; i += Math.ceil(plain.length / pieces) || 1) parts.push(plain.subarray(i, i + Math.ceil(plain.length / pieces)));
  return collect(Readable.from(parts).pipe(new EncryptStream(key, { segmentSize: SEG })));
}

async function decrypt(key: Buffer, sealed: Buffer): Promise<Buffer> {
  return collect(Readable.from([sealed.subarray(0, 100), sealed.subarray(100)]).pipe(new DecryptStream(key)));
}

t.test('round trip at and around segment boundaries, including empty input', async (t) => {
  const key = newDataKey();
  for (const size of [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 17]) {
    const plain = crypto.randomBytes(size);
    const sealed = await encrypt(key, plain);
    const segments = Math.floor(size / SEG) + 1;
    t.equal(sealed.length, HEADER_BYTES + size + segments * TAG_BYTES, `size ${size}: one tag per segment`);
    t.same(await decrypt(key, sealed), plain, `size ${size}`);
  }
});

const seg = (i: number) => HEADER_BYTES + i * (SEG + TAG_BYTES);

t.test('every kind of tampering is DATA_LOSS', async (t) => {
  const key = newDataKey();
  const sealed = await encrypt(key, crypto.randomBytes(3 * SEG + 100));
  const cases: [string, Buffer][] = [
    ['flipped bit in a segment', (() => { const b = Buffer.from(sealed); b[seg(1) + 5] ^= 0x10; return b; })()],
    ['flipped bit in the header', (() => { const b = Buffer.from(sealed); b[12] ^= 1; return b; })()],
    ['flipped bit in a tag', (() => { const b = Buffer.from(sealed); b[b.length - 1] ^= 1; return b; })()],
    ['truncated at a segment boundary', sealed.subarray(0, seg(3))],
    ['truncated inside a segment', sealed.subarray(0, seg(2) + 50)],
    ['truncated inside the header', sealed.subarray(0, 9)],
    ['empty', Buffer.alloc(0)],
    ['swapped segments', Buffer.concat([sealed.subarray(0, seg(0)), sealed.subarray(seg(1), seg(2)),
      sealed.subarray(seg(0), seg(1)), sealed.subarray(seg(2))])],
    ['dropped segment', Buffer.concat([sealed.subarray(0, seg(1)), sealed.subarray(seg(2))])],
    ['appended bytes', Buffer.concat([sealed, Buffer.alloc(40)])],
    ['appended copy of a segment', Buffer.concat([sealed, sealed.subarray(seg(0), seg(1))])],
    ['bad magic', Buffer.concat([Buffer.from('XXXX'), sealed.subarray(4)])],
  ];
  for (const [name, bad] of cases) await t.rejects(decrypt(key, bad), { code: 'DATA_LOSS' }, name);
  await t.rejects(decrypt(newDataKey(), sealed), { code: 'DATA_LOSS' }, 'wrong key');
});

t.test('the decryptor releases no plaintext from a segment that fails', async (t) => {
  const key = newDataKey();
  const plain = Buffer.alloc(2 * SEG + 10, 0x41);
  const sealed = await encrypt(key, plain);
  sealed[seg(1) + 3] ^= 1;
  const got: Buffer[] = [];
  const d = new DecryptStream(key);
  d.on('data', (c) => got.push(c));
  await t.rejects(new Promise((resolve, reject) => { d.on('end', resolve); d.on('error', reject); d.end(sealed); }), { code: 'DATA_LOSS' });
  t.equal(Buffer.concat(got).length, SEG, 'only the first (verified) segment came out');
});
