// The parent feed (src/content/repo/parent-feed.ts): the order it merges in is the walk's, a lookup waits
// only while the stream is behind, and a damaged stream ends it instead of failing the backup.
import t from 'tap';
import crypto from 'node:crypto';
import { compareWalkOrder, ParentFeed } from '../../../src/content/repo/parent-feed';
import { TreeWriter } from '../../../src/content/repo/tree-stream';

/** native/archive.c's order: depth first, each directory's names sorted by strcmp. */
function walkSorted(paths: string[]): string[] {
  const key = (p: string) => p.split('/').map((c) => Buffer.from(c, 'utf8'));
  return [...paths].sort((a, b) => {
    const [x, y] = [key(a), key(b)];
    for (let i = 0; i < Math.min(x.length, y.length); i++) {
      const c = Buffer.compare(x[i], y[i]);
      if (c) return c;
    }
    return x.length - y.length;
  });
}

function stream(files: { path: string; identity?: string; chunks: number }[]): { bytes: Buffer; ids: Buffer[] } {
  const parts: Buffer[] = [];
  const ids: Buffer[] = [];
  const w = new TreeWriter((b) => void parts.push(Buffer.from(b)));
  for (const f of files) {
    w.literal(Buffer.alloc(512, 1));   // the header, as the walk writes it
    w.file(f.path);
    if (f.identity !== undefined) w.identity(f.identity);
    for (let i = 0; i < f.chunks; i++) {
      const id = crypto.randomBytes(32);
      ids.push(id);
      w.chunk(id, 1000);
    }
  }
  w.flush();
  return { bytes: Buffer.concat(parts), ids };
}

t.test('compareWalkOrder sorts as the walk does, where whole-path string order does not', async (t) => {
  const paths = ['c/a-c', 'c/a/b', 'c/a/b-x', 'c/a.b', 'c/a b', 'c/A', 'c/ab', 'c/a/b/c', 'c/z', 'c/zz/y', 'c/z0', 'u/a', 'c/x/y/z', 'c/x-/q'];
  const want = walkSorted(paths);
  t.same([...paths].sort(compareWalkOrder), want);
  t.not([...paths].sort().join(), want.join(), 'plain string order differs here, so the case is a real one');
  t.equal(compareWalkOrder('c/a', 'c/a'), 0);
});

t.test('a lookup finds a file the stream has passed, skips files the walk no longer has, and waits while behind', async (t) => {
  const known = new Set<string>();
  const feed = new ParentFeed((id) => known.has(id.toString('hex')));
  const s = stream([
    { path: 'c/a', identity: 'i-a', chunks: 1 }, { path: 'c/b', identity: 'i-b', chunks: 2 },
    { path: 'c/gone', identity: 'i-g', chunks: 1 }, { path: 'c/lost', identity: 'i-l', chunks: 1 }, { path: 'c/z', identity: 'i-z', chunks: 1 },
  ]);
  for (const [i, id] of s.ids.entries()) if (i !== 4) known.add(id.toString('hex')); // c/lost's chunk is gone
  const first = feed.find('c/a');
  t.ok(first instanceof Promise, 'nothing has come yet: the walk waits');
  feed.push(s.bytes.subarray(0, 700));
  feed.push(s.bytes.subarray(700));
  const a = await first;
  t.equal(a?.identity, 'i-a');
  t.same(a?.chunks.map((c) => c.id), [s.ids[0]]);
  const b = feed.find('c/b');
  t.notOk(b instanceof Promise, 'a file the stream has passed is found at once');
  t.equal((b as { size: number }).size, 2000);
  t.equal(feed.find('c/c'), undefined, 'a file the parent did not have: the next one it had (c/gone) sorts after');
  const lost = feed.find('c/lost');
  t.ok(lost instanceof Promise, 'c/gone is passed by; whether c/lost comes is told only by the next whole file, and the last is whole only at the end');
  feed.end();
  t.equal(await lost, undefined, 'a file with a chunk the repository lost is read again');
  t.equal((feed.find('c/z') as { identity: string } | undefined)?.identity, 'i-z');
  t.equal(feed.find('c/zz'), undefined, 'after the end nothing waits');
});

t.test('a damaged stream ends the feed: the files after it are read, nothing fails', async (t) => {
  const feed = new ParentFeed(() => true);
  const s = stream([{ path: 'c/a', identity: 'i-a', chunks: 1 }]);
  const waiting = feed.find('c/b');
  feed.push(Buffer.concat([s.bytes, Buffer.from([99, 0, 0, 0, 1, 0])]));
  t.equal(await waiting, undefined);
  t.equal(feed.find('c/c'), undefined);
});

t.test('no parent: the feed is ended from the start', async (t) => {
  const feed = new ParentFeed(() => true);
  feed.end();
  t.equal(feed.find('c/a'), undefined);
});
