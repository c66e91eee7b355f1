import t from 'tap';
import crypto from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createCompressStream, createDecompressStream } from '../../src/content/compress';

async function compress(chunks: Buffer[]): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(Readable.from(chunks), createCompressStream(), async function* (src) {
    for await (const c of src) out.push(c as Buffer);
  });
  return Buffer.concat(out);
}

t.test('zstd round trip of mixed data', async (t) => {
  const data = Buffer.concat([crypto.randomBytes(300_000), Buffer.alloc(2_000_000, 'source code\n'), crypto.randomBytes(5)]);
  const z = await compress([data.subarray(0, 1_000_000), data.subarray(1_000_000)]);
  t.ok(z.length < data.length / 2, 'compresses');
  const out: Buffer[] = [];
  await pipeline(Readable.from([z]), createDecompressStream(), async function* (src) {
    for await (const c of src) out.push(c as Buffer);
  });
  t.same(Buffer.concat(out), data);
});

t.test('a tiny input that expands to a lot is decoded only as fast as it is read', async (t) => {
  const zeros = Buffer.alloc(64 << 20);
  const z = await compress([zeros]);
  t.ok(z.length < 64 << 10, `64 MiB of zeros compress to ${z.length} bytes`);
  const d = createDecompressStream();
  d.end(z);
  let total = 0;
  let maxBuffered = 0;
  for await (const c of d) {
    total += (c as Buffer).length;
    maxBuffered = Math.max(maxBuffered, d.readableLength);
    await new Promise((r) => setImmediate(r));
  }
  t.equal(total, 64 << 20);
  t.ok(maxBuffered <= 2 << 20, `at most ${maxBuffered} bytes buffered`);
});

t.test('a truncated or corrupt frame is DATA_LOSS', async (t) => {
  const z = await compress([crypto.randomBytes(100_000)]);
  const drain = (buf: Buffer) => pipeline(Readable.from([buf]), createDecompressStream(), async function* (src) {
    for await (const _ of src) { /* drain */ }
  });
  await t.rejects(drain(z.subarray(0, z.length - 10)), { code: 'DATA_LOSS' });
  const bad = Buffer.from(z);
  bad[0] ^= 0xff;
  await t.rejects(drain(bad), { code: 'DATA_LOSS' });
});
