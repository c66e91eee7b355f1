// What a tree changing under the backup walk means (src/content/tree-walk.ts): a root removed during the
// walk always fails it; an entry that vanishes fails the walk of a tree meant to be still (a stopped
// workspace) and is left out, reported, from a live one (a running workspace's own writes).
import t, { type Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { TreeWalk } from '../../src/content/tree-walk';
import { DomainError } from '../../src/errors';

function tree(t: Test): string {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-walk-changes-${process.pid}-`));
  t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));
  const dir = path.join(base, 'content');
  fs.mkdirSync(path.join(dir, 'sub'), { recursive: true });
  // f00 is large: the first small fill of a walk stops inside its data.
  fs.writeFileSync(path.join(dir, 'f00'), Buffer.alloc(256 << 10, 1));
  for (let i = 1; i < 40; i++) fs.writeFileSync(path.join(dir, `f${String(i).padStart(2, '0')}`), Buffer.alloc(1024, i));
  for (let i = 0; i < 40; i++) fs.writeFileSync(path.join(dir, 'sub', `g${String(i).padStart(2, '0')}`), Buffer.alloc(1024, i));
  return dir;
}

/** Walks to the end after `midway` ran between the first small fill and the rest: the archive, or the error. */
function walkWith(dir: string, changes: 'fail' | 'skip' | undefined, midway: () => void): { archive?: Buffer; error?: unknown; skips: string[] } {
  const skips: string[] = [];
  const walk = new TreeWalk([{ name: 'content', dir }], { uidBase: 0, ...(changes ? { changes } : {}), onSkip: (rel, why) => skips.push(`${rel}: ${why}`) });
  const out: Buffer[] = [];
  try {
    const first = Buffer.alloc(4096);
    out.push(first.subarray(0, walk.fill(first)));
    midway();
    while (!walk.done) {
      const buf = Buffer.alloc(64 << 10);
      out.push(buf.subarray(0, walk.fill(buf)));
    }
    return { archive: Buffer.concat(out), skips };
  } catch (error) {
    return { error, skips };
  } finally {
    walk.close();
  }
}

const names = (archive: Buffer): string[] => {
  const found: string[] = [];
  for (let off = 0; off + 512 <= archive.length; off += 512) {
    const name = archive.subarray(off, off + 100).toString('latin1').replace(/\0.*$/s, '');
    if (/^content(\/|$)/.test(name)) found.push(name);
  }
  return found;
};

for (const changes of [undefined, 'fail', 'skip'] as const) {
  t.test(`a root removed during the walk fails it (changes: ${changes ?? 'default'})`, async (t) => {
    const dir = tree(t);
    const r = walkWith(dir, changes, () => fs.rmSync(dir, { recursive: true, force: true }));
    t.ok(r.error instanceof DomainError, `the walk failed (${(r.error as Error | undefined)?.message})`);
    t.match(r.error, { code: 'ABORTED' }, 'ABORTED: never a shorter archive that looks complete');
  });
}

t.test('a root replaced by another directory during the walk fails it', async (t) => {
  const dir = tree(t);
  const r = walkWith(dir, 'skip', () => {
    fs.renameSync(dir, `${dir}.old`);
    fs.mkdirSync(dir);
  });
  t.match(r.error, { code: 'ABORTED' });
  fs.rmSync(`${dir}.old`, { recursive: true, force: true });
});

t.test('an entry that vanishes from a still tree fails the walk, naming it', async (t) => {
  for (const changes of [undefined, 'fail'] as const) {
    const dir = tree(t);
    // The root's entries were listed by the first fill; f30 goes before the walk reaches it.
    const r = walkWith(dir, changes, () => fs.rmSync(path.join(dir, 'f30')));
    t.match(r.error, { code: 'ABORTED', message: /content\/f30/ }, `changes: ${changes ?? 'default'}: ABORTED, naming the entry`);
  }
});

t.test('a file that shrinks under a still tree fails the walk', async (t) => {
  const dir = tree(t);
  const r = walkWith(dir, 'fail', () => fs.truncateSync(path.join(dir, 'f00'), 10));
  t.match(r.error, { code: 'ABORTED', message: /content\/f00/ }, 'the file being read shrank: ABORTED, naming it');
});

t.test('from a live tree a vanished entry is left out and reported, and the rest archived', async (t) => {
  const dir = tree(t);
  const r = walkWith(dir, 'skip', () => fs.rmSync(path.join(dir, 'f30')));
  t.equal(r.error, undefined, 'the walk completes');
  t.same(r.skips.filter((s) => s.includes('f30')).length, 1, `the vanished entry is reported (${r.skips.join('; ')})`);
  const archived = names(r.archive!);
  t.notOk(archived.includes('content/f30'), 'and left out');
  t.ok(archived.includes('content/f31') && archived.includes('content/sub/g39'), 'the entries after it are there');
  t.equal(archived.filter((n) => /^content\/f\d\d$/.test(n)).length, 39, 'all 39 other files of the root');
});
