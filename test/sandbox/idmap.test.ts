// uid/gid ranges: two live workspaces never share a host id, across allocators and processes.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t, { Test } from 'tap';
import { IdRangeAllocator } from '../../src/sandbox/idmap';

function claimsDir(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-idmap-${process.pid}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return path.join(dir, 'idmap');
}

const owner = (workspaceId: string, stateDir = '/var/lib/tetrix-a') => ({ stateDir, workspaceId });

t.test('two workspaces get disjoint ranges above the host id space', async (t) => {
  const alloc = new IdRangeAllocator({ dir: claimsDir(t), subidFiles: [] });
  const a = alloc.allocate(owner('ws1'));
  const b = alloc.allocate(owner('ws2'));
  t.same(a, { base: 1_000_000, count: 65536 });
  t.same(b, { base: 1_065_536, count: 65536 });
  t.ok(a.base + a.count <= b.base, 'no overlap');
});

t.test('a workspace asking again gets the range it already holds', async (t) => {
  const alloc = new IdRangeAllocator({ dir: claimsDir(t), subidFiles: [] });
  const a = alloc.allocate(owner('ws1'));
  t.same(alloc.allocate(owner('ws1')), a, 'same owner: same range');
  t.not(alloc.allocate(owner('ws1', '/var/lib/tetrix-b')).base, a.base, 'same id, other state dir: another range');
});

t.test('a released range is handed out again; releasing twice is harmless', async (t) => {
  const alloc = new IdRangeAllocator({ dir: claimsDir(t), subidFiles: [] });
  const a = alloc.allocate(owner('ws1'));
  const b = alloc.allocate(owner('ws2'));
  alloc.release(a.base);
  alloc.release(a.base);
  t.equal(alloc.allocate(owner('ws3')).base, a.base);
  t.equal(alloc.allocate(owner('ws4')).base, b.base + b.count);
  t.throws(() => alloc.release(a.base + 1), { code: 'INVALID_ARGUMENT' });
});

t.test('claims name their owner, so each state dir finds its own after a restart', async (t) => {
  const dir = claimsDir(t);
  const one = new IdRangeAllocator({ dir, subidFiles: [] });
  const two = new IdRangeAllocator({ dir, subidFiles: [] });
  const a = one.allocate(owner('ws1', '/var/lib/tetrix-a'));
  const b = two.allocate(owner('ws1', '/var/lib/tetrix-b'));
  t.not(a.base, b.base, 'same workspace id in two state dirs: still two ranges');
  t.same(one.claimedBy('/var/lib/tetrix-a/'), [{ base: a.base, workspaceId: 'ws1' }]);
  t.same(new IdRangeAllocator({ dir }).claimedBy('/var/lib/tetrix-b'), [{ base: b.base, workspaceId: 'ws1' }]);
  t.same(one.claimedBy('/elsewhere'), []);
});

t.test('two allocators on one directory, interleaved, never collide', async (t) => {
  const dir = claimsDir(t);
  const allocators = [new IdRangeAllocator({ dir, subidFiles: [] }), new IdRangeAllocator({ dir, subidFiles: [] })];
  const bases = new Set<number>();
  for (let i = 0; i < 50; i++) {
    const got = allocators[i % 2].allocate(owner(`ws${i}`, `/state/${i % 2}`));
    t.notOk(bases.has(got.base), `range ${got.base} handed out once`);
    bases.add(got.base);
    if (i % 7 === 0) {
      // The other allocator frees it (as a restarted daemon would), so the range may come back.
      allocators[(i + 1) % 2].release(got.base);
      bases.delete(got.base);
    }
  }
});

t.test('several processes claiming at the same moment never get the same range', async (t) => {
  const dir = claimsDir(t);
  const tsHook = process.execArgv.find((a) => a.includes('@tapjs/typescript')) ?? '';
  const fixture = path.join(__dirname, 'fixtures', 'idmap-allocate.ts');
  const runs = Array.from({ length: 4 }, (_, i) => new Promise<number[]>((resolve, reject) => {
    const child = spawn(process.execPath, [tsHook, fixture, dir, `/state/${i}`, '25'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out) as number[]) : reject(new Error(`fixture exited ${code}`))));
  }));
  const all = (await Promise.all(runs)).flat();
  t.equal(all.length, 100);
  t.equal(new Set(all).size, 100, 'every range unique');
  t.equal(fs.readdirSync(dir).filter((n) => n.startsWith('.tmp')).length, 0, 'no temp files left');
});

t.test('ranges handed to real users in /etc/subuid are skipped', async (t) => {
  const dir = claimsDir(t);
  const subuid = path.join(path.dirname(dir), 'subuid');
  fs.writeFileSync(subuid, '# comment\nalice:1000000:65536\nbob:1100000:10\n');
  const alloc = new IdRangeAllocator({ dir, subidFiles: [subuid, path.join(path.dirname(dir), 'absent')] });
  // slot 0 = alice's range; slot 1 = [1065536, 1131072) holds bob's 1100000.
  t.equal(alloc.allocate(owner('ws1')).base, 1_131_072);
});

t.test('exhaustion is RESOURCE_EXHAUSTED', async (t) => {
  const alloc = new IdRangeAllocator({ dir: claimsDir(t), maxSlots: 3, subidFiles: [] });
  for (let i = 0; i < 3; i++) alloc.allocate(owner(`ws${i}`));
  t.throws(() => alloc.allocate(owner('ws4')), { code: 'RESOURCE_EXHAUSTED' });
});

t.test('allocators configured with another layout refuse the shared directory', async (t) => {
  const dir = claimsDir(t);
  new IdRangeAllocator({ dir, subidFiles: [] }).allocate(owner('ws1'));
  t.throws(() => new IdRangeAllocator({ dir, count: 1000, subidFiles: [] }).allocate(owner('ws2')), { code: 'FAILED_PRECONDITION' });
  t.throws(() => new IdRangeAllocator({ dir, firstBase: 2_000_000, subidFiles: [] }).allocate(owner('ws2')), { code: 'FAILED_PRECONDITION' });
});

t.test('settings that could reach host or invalid ids are refused', async (t) => {
  t.throws(() => new IdRangeAllocator({ firstBase: 0 }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => new IdRangeAllocator({ firstBase: 1000 }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => new IdRangeAllocator({ count: 0 }), { code: 'INVALID_ARGUMENT' });
  t.throws(() => new IdRangeAllocator({ maxSlots: 70000 }), { code: 'INVALID_ARGUMENT' });
});
