// The tree stream's records (src/content/repo/tree-stream.ts, docs/backup-format.md "Repository format"):
// the bytes of each record type, the packed literal's codec (native/tree-pack.c), and a round trip through
// the reader fed in arbitrary slices.
import t from 'tap';
import crypto from 'node:crypto';
import { ID_BYTES, REC_CHUNK, REC_FILE, REC_IDENTITY, REC_LITERAL, REC_PACKED_LITERAL, TreeReader, TreeWriter, type TreeRecord } from '../../../src/content/repo/tree-stream';
import { TREE_PACK_SLACK, treePack } from '../../../src/native';

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
    // packed: 9 bytes, plain 3; one pair: 3 literal bytes, then no zeros
    Buffer.from([REC_PACKED_LITERAL, 0, 0, 0, 9, 0, 0, 0, 3, 3]), Buffer.from('abc'), Buffer.from([0]),
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
  // Each literal is followed by a file record here; one over 1 MiB comes back in 1 MiB records, joined here.
  const reader = new TreeReader();
  const back: TreeRecord[] = [];
  let largest = 0;
  for (let off = 0; off < bytes.length;) {
    const n = 1 + Math.floor(Math.random() * 100_000);
    for (const r of reader.feed(bytes.subarray(off, off + n))) {
      const last = back[back.length - 1];
      if (r.type !== REC_LITERAL) back.push(r);
      else if (last?.type === REC_LITERAL) last.bytes = Buffer.concat([last.bytes, r.bytes]);
      else back.push({ type: REC_LITERAL, bytes: Buffer.from(r.bytes) });
      if (r.type === REC_LITERAL) largest = Math.max(largest, r.bytes.length);
    }
    off += n;
  }
  t.equal(largest, 1 << 20, 'literal records hold at most 1 MiB');
  reader.end();
  t.equal(back.length, records.length);
  t.ok(back.every((r, i) => JSON.stringify(r) === JSON.stringify(records[i])), 'every record as written');
});

t.test('a packed literal: runs of 8 or more zeros become counts, shorter ones stay; the reader gives the plain bytes', async (t) => {
  const plain = Buffer.concat([Buffer.from('x'), Buffer.alloc(512), Buffer.from('y'), Buffer.alloc(7), Buffer.from('z')]);
  const got = written((w) => w.literal(plain));
  const want = Buffer.concat([
    Buffer.from([REC_PACKED_LITERAL, 0, 0, 0, 19, 0, 0, 2, 10]),
    Buffer.from([1]), Buffer.from('x'), Buffer.from([0x80, 0x04]),            // 'x', then 512 zeros
    Buffer.from([9]), Buffer.from('y'), Buffer.alloc(7), Buffer.from('z'), Buffer.from([0]),  // the rest, literal
  ]);
  t.same(got, want);
  const back = [...new TreeReader().feed(got)];
  t.same(back, [{ type: REC_LITERAL, bytes: plain }]);
  t.same([...new TreeReader({ literals: false }).feed(got)], [], 'left out when the reader does not want literals');
});

t.test('version 1 trees: an unpacked literal record still reads', async (t) => {
  const old = Buffer.concat([Buffer.from([REC_LITERAL, 0, 0, 0, 3]), Buffer.from('abc'), Buffer.from([REC_FILE, 0, 0, 0, 1]), Buffer.from('f')]);
  t.same([...new TreeReader().feed(old)], [{ type: REC_LITERAL, bytes: Buffer.from('abc') }, { type: REC_FILE, path: 'f' }]);
  t.same([...new TreeReader({ literals: false }).feed(old)], [{ type: REC_FILE, path: 'f' }]);
});

t.test('the codec round-trips any bytes and never grows them by more than TREE_PACK_SLACK', async (t) => {
  const shapes: Buffer[] = [
    Buffer.alloc(0), Buffer.alloc(1), Buffer.alloc(8), Buffer.alloc(100_000), Buffer.from([1]), crypto.randomBytes(70_000),
    // the worst case for the bound: runs just long enough to count, between single bytes
    Buffer.concat(Array.from({ length: 5000 }, () => Buffer.concat([Buffer.from([7]), Buffer.alloc(8)]))),
  ];
  for (let i = 0; i < 300; i++) {
    const parts: Buffer[] = [];
    for (let n = Math.floor(Math.random() * 40); n > 0; n--) {
      parts.push(Math.random() < 0.5 ? Buffer.alloc(Math.floor(Math.random() * (Math.random() < 0.1 ? 20_000 : 20))) : crypto.randomBytes(1 + Math.floor(Math.random() * 300)));
    }
    shapes.push(Buffer.concat(parts));
  }
  let worst = -Infinity;
  for (const plain of shapes) {
    const dst = Buffer.alloc(plain.length + TREE_PACK_SLACK + 3, 0xee);
    const n = treePack.treePack(plain, 0, plain.length, dst, 3);
    worst = Math.max(worst, n - plain.length);
    const out = Buffer.alloc(plain.length, 0xee);
    if (!treePack.treeUnpack(dst, 3, n, out) || !out.equals(plain)) return t.fail(`round trip of ${plain.length} bytes`);
  }
  t.ok(worst <= TREE_PACK_SLACK, `packed at most ${worst} bytes over plain (slack ${TREE_PACK_SLACK})`);
  t.throws(() => treePack.treePack(Buffer.alloc(10), 0, 10, Buffer.alloc(10 + TREE_PACK_SLACK - 1), 0), /no room/, 'a dst without the slack is refused');
  t.throws(() => treePack.treePack(Buffer.alloc(10), 5, 10, Buffer.alloc(64), 0), /src range/, 'a range past the buffer is refused');
});

t.test('a malformed packed literal is refused, never read past its end', async (t) => {
  const plain = Buffer.concat([Buffer.from('head'), Buffer.alloc(300), Buffer.from('tail')]);
  const dst = Buffer.alloc(plain.length + TREE_PACK_SLACK);
  const packed = dst.subarray(0, treePack.treePack(plain, 0, plain.length, dst, 0));
  const cases: [string, Buffer, number][] = [
    ['cut short', packed.subarray(0, packed.length - 2), plain.length],
    ['a varint that does not end', Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80, 0x80]), 10],
    ['a literal longer than the body', Buffer.from([50, 1, 2]), 50],
    ['zeros past the plain length', Buffer.from([0, 20]), 10],
    ['fewer bytes than the plain length', Buffer.from([0, 5]), 10],
    ['more bytes than the plain length', packed, plain.length - 1],
  ];
  for (const [what, body, plainLen] of cases) t.equal(treePack.treeUnpack(body, 0, body.length, Buffer.alloc(plainLen)), false, what);
  const record = Buffer.concat([Buffer.from([REC_PACKED_LITERAL, 0, 0, 0, 6, 0, 0, 0, 10]), Buffer.from([0, 5])]);
  t.throws(() => [...new TreeReader().feed(record)], /packed literal malformed/, 'the reader says the tree is damaged');
  const huge = Buffer.from([REC_PACKED_LITERAL, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0]);
  t.throws(() => [...new TreeReader().feed(huge)], /packed literal malformed/, 'a plain length beyond any record is refused before allocating');
});

t.test('literal records split at the same bytes however the literal was handed in', async (t) => {
  const plain = Buffer.concat([crypto.randomBytes(700_000), Buffer.alloc(900_000), crypto.randomBytes(1_500_000)]);
  const inPieces = (size: () => number) => written((w) => {
    for (let off = 0; off < plain.length;) {
      const n = size();
      w.literal(plain.subarray(off, off + n));
      off += n;
    }
  });
  const whole = written((w) => w.literal(plain));
  t.same(inPieces(() => 512), whole, 'in 512-byte pieces');
  t.same(inPieces(() => 1 + Math.floor(Math.random() * 300_000)), whole, 'in random pieces');
});
