// The tree stream's records (src/content/repo/tree-stream.ts, docs/backup-format.md "Repository format"):
// the bytes of each record type, and a round trip through the reader fed in arbitrary slices.
import t from 'tap';
import crypto from 'node:crypto';
import { ID_BYTES, REC_CHUNK, REC_FILE, REC_IDENTITY, REC_LITERAL, TreeReader, TreeWriter, type TreeRecord } from '../../../src/content/repo/tree-stream';

function written(fn: (w: TreeWriter) => void): Buffer {
  const parts: Buffer[] = [];
  const w = new TreeWriter((b) => void parts.push(b));
  fn(w);
  w.flush();
  return Buffer.concat(parts);
}

t.test('each record has the documented bytes; literal bytes are gathered into one record', async (t) => {
  const id = crypto.randomBytes(ID_BYTES);
  const got = written((w) => {
    w.literal(Buffer.from('ab'));
    w.literal(Buffer.from('c'));
    w.file('content/é');
    w.identity('1:2:3');
    w.chunk(id, 258);
  });
  const want = Buffer.concat([
    Buffer.from([REC_LITERAL, 0, 0, 0, 3]), Buffer.from('abc'),
    Buffer.from([REC_FILE, 0, 0, 0, 10]), Buffer.from('content/é', 'utf8'),
    Buffer.from([REC_IDENTITY, 0, 0, 0, 5]), Buffer.from('1:2:3'),
    Buffer.from([REC_CHUNK]), id, Buffer.from([0, 0, 1, 2]),
  ]);
  t.same(got, want);
});

t.test('many records and large literals come back in order, whatever slices the reader is fed', async (t) => {
  const records: TreeRecord[] = [];
  const bytes = written((w) => {
    for (let i = 0; i < 5000; i++) {
      const big = i % 997 === 0 ? crypto.randomBytes(i % 2 ? 70_000 : 1_300_000) : crypto.randomBytes(1 + (i % 700));
      w.literal(big);
      records.push({ type: REC_LITERAL, bytes: big });
      w.file(`content/d${i % 13}/f${i}`);
      records.push({ type: REC_FILE, path: `content/d${i % 13}/f${i}` });
      w.identity(`9:${i}:1:2:3`);
      records.push({ type: REC_IDENTITY, identity: `9:${i}:1:2:3` });
      const id = crypto.randomBytes(ID_BYTES);
      w.chunk(id, i);
      records.push({ type: REC_CHUNK, id, length: i });
    }
  });
  // Each literal is followed by a file record here, so each stays a record of its own.
  const reader = new TreeReader();
  const back: TreeRecord[] = [];
  for (let off = 0; off < bytes.length;) {
    const n = 1 + Math.floor(Math.random() * 100_000);
    for (const r of reader.feed(bytes.subarray(off, off + n))) back.push(r.type === REC_LITERAL ? { type: REC_LITERAL, bytes: Buffer.from(r.bytes) } : r);
    off += n;
  }
  reader.end();
  t.equal(back.length, records.length);
  t.ok(back.every((r, i) => JSON.stringify(r) === JSON.stringify(records[i])), 'every record as written');
});
