import t, { Test } from 'tap';
import { spawn, execFileSync } from 'node:child_process';
import { constants as fsConstants, openSync, promises as fs } from 'node:fs';
import { once } from 'node:events';
import path from 'node:path';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { KeyRing } from '../../src/crypto/keys';
import { CUT_SHORT_MARKER, LogChunkRecord, LogStore, LogStoreOptions } from '../../src/logs';
import { tempDir } from '../prebuild/fixtures';

const MiB = 1024 * 1024;

async function newStore(t: Test, opts: Partial<LogStoreOptions> = {}): Promise<{ store: LogStore; dir: string; keyring: KeyRing }> {
  const root = await tempDir(t, 'logs');
  const keyring = KeyRing.open({ dir: path.join(root, 'keys') });
  const dir = path.join(root, 'logs');
  const store = new LogStore({ dir, sealer: keyring, maxBytesPerLog: 16 * MiB, ...opts });
  await store.init();
  return { store, dir, keyring };
}

async function collect(it: AsyncIterable<LogChunkRecord>): Promise<LogChunkRecord[]> {
  const out: LogChunkRecord[] = [];
  for await (const c of it) out.push(c);
  return out;
}

const text = (chunks: LogChunkRecord[]): string => chunks.map((c) => c.data.toString()).join('');

t.test('a prebuild log keeps every task\'s stdout and stderr, in order, with times, and its metadata', async (t) => {
  const { store, dir } = await newStore(t);
  const w = await store.create('pb-1', { ownerId: 'alice', teamId: 'team-a', kind: 'PREBUILD' });
  w.append({ timeMs: 1000, stream: 'stdout', task: 'deps', data: Buffer.from('installing\n') });
  w.append({ timeMs: 1001, stream: 'stderr', task: 'deps', data: Buffer.from('warning: x\n') });
  w.append({ timeMs: 2000, stream: 'stdout', task: 'build', data: Buffer.from('built\n') });
  t.match(await w.close(), { bytesLogged: 28, bytesDropped: 0, truncated: false });

  const chunks = await collect(store.read('pb-1'));
  t.same(chunks.map((c) => [c.timeMs, c.stream, c.task, c.data.toString()]), [
    [1000, 'stdout', 'deps', 'installing\n'],
    [1001, 'stderr', 'deps', 'warning: x\n'],
    [2000, 'stdout', 'build', 'built\n'],
  ]);
  const info = await store.info('pb-1');
  t.same(info.meta, { ownerId: 'alice', teamId: 'team-a', kind: 'PREBUILD' });
  t.equal(info.open, false);
  t.equal((await fs.stat(path.join(dir, 'pb-1.tlog'))).mode & 0o777, 0o600);
  t.equal((await fs.stat(dir)).mode & 0o777, 0o700);
});

t.test('a big chunk is split into bounded records and reads back whole', async (t) => {
  const { store } = await newStore(t, { maxRecordData: 1000 });
  const w = await store.create('ws-split');
  const big = Buffer.alloc(10_500, 'x');
  w.append({ timeMs: 1, stream: 'stdout', task: '', data: big });
  await w.close();
  const chunks = await collect(store.read('ws-split'));
  t.equal(chunks.length, 11);
  t.ok(chunks.every((c) => c.data.length <= 1000));
  t.same(Buffer.concat(chunks.map((c) => c.data)), big);
});

t.test('follow tails a running log live and ends when it closes', async (t) => {
  const { store } = await newStore(t);
  const w = await store.create('pb-follow');
  const seen: string[] = [];
  const reader = (async () => {
    for await (const c of store.read('pb-follow', { follow: true })) seen.push(c.data.toString());
  })();
  for (const line of ['one\n', 'two\n', 'three\n']) {
    w.append({ timeMs: Date.now(), stream: 'stdout', task: 't', data: Buffer.from(line) });
    // Each line reaches the follower before the next is written: it is tailing, not reading at the end.
    while (seen.length === 0 || seen[seen.length - 1] !== line) await new Promise((r) => setTimeout(r, 5));
  }
  t.equal(store.isOpen('pb-follow'), true);
  await w.close();
  await reader;
  t.same(seen, ['one\n', 'two\n', 'three\n']);
  t.same(text(await collect(store.read('pb-follow', { follow: true }))), 'one\ntwo\nthree\n', 'follow on a closed log just reads it');
});

t.test('end() makes the log whole for readers before close(): a follower ends, and nothing more is appended', async (t) => {
  const { store } = await newStore(t);
  const w = await store.create('ws-ended');
  const seen: string[] = [];
  const follower = (async () => {
    for await (const c of store.read('ws-ended', { follow: true })) seen.push(c.data.toString());
  })();
  w.append({ timeMs: 1, stream: 'stdout', task: '', data: Buffer.from('last words\n') });
  await w.end();
  await follower;
  t.same(seen, ['last words\n'], 'the follower read everything and ended at CLOSE, the file still open');
  t.equal(store.isOpen('ws-ended'), true, 'the writer still has it (its fsync is close()\'s)');
  t.same(text(await collect(store.read('ws-ended'))), 'last words\n', 'a new reader sees it whole, without the cut-short marker');
  t.throws(() => w.append({ timeMs: 2, stream: 'stdout', task: '', data: Buffer.from('late') }), { code: 'FAILED_PRECONDITION' });
  t.match(await w.close(), { bytesLogged: 11, bytesDropped: 0 });
  t.equal(store.isOpen('ws-ended'), false);
});

t.test('a follower stops when its signal aborts (the client went away)', async (t) => {
  const { store } = await newStore(t);
  const w = await store.create('pb-abort');
  w.append({ timeMs: 1, stream: 'stdout', task: '', data: Buffer.from('hi\n') });
  const ac = new AbortController();
  const got: string[] = [];
  const reader = (async () => {
    for await (const c of store.read('pb-abort', { follow: true, signal: ac.signal })) {
      got.push(c.data.toString());
      ac.abort();
    }
  })();
  await reader;
  t.same(got, ['hi\n']);
  await w.close();
});

t.test('output past the cap leaves a truncation marker, then is counted and dropped', async (t) => {
  const { store } = await newStore(t, { maxBytesPerLog: 100 });
  const w = await store.create('pb-cap');
  for (const n of [60, 60, 30]) w.append({ timeMs: 1, stream: 'stdout', task: 'build', data: Buffer.alloc(n, 'a') });
  t.match(await w.close(), { bytesLogged: 100, bytesDropped: 50, truncated: true });
  const chunks = await collect(store.read('pb-cap'));
  t.same(chunks.map((c) => c.data.toString()), [
    'a'.repeat(60),
    'a'.repeat(40),
    '[tetrix: log truncated after 100 bytes]\n',
    '[tetrix: 50 further bytes dropped]\n',
  ]);
  t.equal(chunks[2].task, 'build');
});

t.test('on disk the log is ciphertext: no output, task name or metadata in the clear', async (t) => {
  const { store, dir } = await newStore(t);
  const w = await store.create('pb-secret', { teamId: 'team-tetrix-plaintext-team' });
  const marker = 'TETRIX-PLAINTEXT-MARKER-0123456789';
  for (let i = 0; i < 50; i++) w.append({ timeMs: i, stream: 'stdout', task: 'tetrix-plain-task', data: Buffer.from(`${marker} line ${i}\n`) });
  await w.close();
  const raw = await fs.readFile(path.join(dir, 'pb-secret.tlog'));
  for (const needle of [marker, 'tetrix-plain-task', 'team-tetrix-plaintext-team', 'line 1']) {
    t.equal(raw.indexOf(needle), -1, `"${needle}" not on disk`);
  }
  t.match(text(await collect(store.read('pb-secret'))), marker);
});

t.test('a tampered, reordered or removed record is DATA_LOSS', async (t) => {
  const { store, dir } = await newStore(t);
  const w = await store.create('pb-tamper');
  for (let i = 0; i < 3; i++) w.append({ timeMs: i, stream: 'stdout', task: '', data: Buffer.from(`record ${i}\n`) });
  await w.close();
  const file = path.join(dir, 'pb-tamper.tlog');
  const original = await fs.readFile(file);
  const records = splitRecords(original);

  const flipped = Buffer.from(original);
  flipped[records[2].start + 10] ^= 0x01;
  await fs.writeFile(file, flipped);
  await t.rejects(collect(store.read('pb-tamper')), { code: 'DATA_LOSS', message: /record 2 failed authentication/ }, 'flipped bit');

  const swapped = Buffer.concat([original.subarray(0, records[1].start), slice(original, records[2]), slice(original, records[1]), original.subarray(records[3].start)]);
  await fs.writeFile(file, swapped);
  await t.rejects(collect(store.read('pb-tamper')), { code: 'DATA_LOSS' }, 'swapped records');

  const removed = Buffer.concat([original.subarray(0, records[2].start), original.subarray(records[3].start)]);
  await fs.writeFile(file, removed);
  await t.rejects(collect(store.read('pb-tamper')), { code: 'DATA_LOSS' }, 'removed record');

  const header = Buffer.from(original);
  header[10] ^= 0x01; // inside the key id
  await fs.writeFile(file, header);
  await t.rejects(collect(store.read('pb-tamper')), { code: /DATA_LOSS|FAILED_PRECONDITION/ }, 'tampered header');

  await fs.writeFile(file, original);
  t.equal(text(await collect(store.read('pb-tamper'))), 'record 0\nrecord 1\nrecord 2\n', 'the untouched file still reads');
});

t.test('a log whose tail is missing (node stopped, or cut) says so instead of ending quietly', async (t) => {
  const { store, dir } = await newStore(t);
  const w = await store.create('pb-cut');
  w.append({ timeMs: 1, stream: 'stdout', task: '', data: Buffer.from('before\n') });
  await w.close();
  const file = path.join(dir, 'pb-cut.tlog');
  const original = await fs.readFile(file);
  const records = splitRecords(original);
  await fs.writeFile(file, original.subarray(0, records.at(-1)!.start)); // drop CLOSE
  t.same((await collect(store.read('pb-cut'))).map((c) => c.data.toString()), ['before\n', CUT_SHORT_MARKER]);
  await fs.writeFile(file, original.subarray(0, records.at(-1)!.start + 7)); // and half a record
  t.same((await collect(store.read('pb-cut', { follow: true }))).map((c) => c.data.toString()), ['before\n', CUT_SHORT_MARKER]);
});

t.test('a log cannot be passed off under another id', async (t) => {
  const { store, dir } = await newStore(t);
  const w = await store.create('pb-a', { teamId: 'team-a' });
  w.append({ timeMs: 1, stream: 'stdout', task: '', data: Buffer.from('a\n') });
  await w.close();
  await fs.copyFile(path.join(dir, 'pb-a.tlog'), path.join(dir, 'pb-b.tlog'));
  await t.rejects(collect(store.read('pb-b')), { code: 'DATA_LOSS' });
  await t.rejects(store.info('pb-b'), { code: 'DATA_LOSS' });
});

t.test('logs outlive the daemon: a new store over the same dir and keyring reads them', async (t) => {
  const { store, dir, keyring } = await newStore(t);
  const w = await store.create('pb-restart');
  w.append({ timeMs: 1, stream: 'stdout', task: '', data: Buffer.from('kept\n') });
  await w.close();
  const again = new LogStore({ dir, sealer: KeyRing.open({ dir: keyring.dir }), maxBytesPerLog: MiB });
  t.equal(text(await collect(again.read('pb-restart'))), 'kept\n');
});

t.test('ids, duplicates and missing logs', async (t) => {
  const { store } = await newStore(t);
  const w = await store.create('pb-dup');
  await t.rejects(store.create('pb-dup'), { code: 'ALREADY_EXISTS' });
  await w.close();
  await t.rejects(store.create('pb-dup'), { code: 'ALREADY_EXISTS' }, 'a closed log is never reopened');
  await t.rejects(collect(store.read('pb-none')), { code: 'NOT_FOUND' });
  await t.rejects(store.create('../escape'), { code: 'INVALID_ARGUMENT' });
  t.throws(() => w.append({ timeMs: 1, stream: 'stdout', task: '', data: Buffer.from('late') }), { code: 'FAILED_PRECONDITION' });
});

t.test('sweep removes logs past retention and keeps recent and open ones', async (t) => {
  const { store, dir } = await newStore(t);
  for (const id of ['pb-old', 'pb-new']) await (await store.create(id)).close();
  const open = await store.create('pb-open');
  const old = (Date.now() - 10 * 86_400_000) / 1000;
  await fs.utimes(path.join(dir, 'pb-old.tlog'), old, old);
  await fs.utimes(path.join(dir, 'pb-open.tlog'), old, old);
  t.same(await store.sweep(86_400_000), ['pb-old']);
  t.same((await fs.readdir(dir)).sort(), ['pb-new.tlog', 'pb-open.tlog']);
  await open.close();
  await store.remove('pb-new');
  await t.rejects(store.remove('pb-new'), { code: 'NOT_FOUND' });
});

// Live memory, not garbage waiting for a collection: a full GC and a short pause before each sample.
// The JS heap is steady to within a MiB. Buffer memory is noisier: Node's own pipe reads hold up to ~15 MiB of
// ArrayBuffers for a moment under load even when nothing keeps the data (measured with a bare read loop),
// so that bound only says "far less than the output"; the write queue's peak is the exact bound we control.
v8.setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface MemoryGrowth { heap: number; buffers: number }

async function liveMemory(): Promise<MemoryGrowth> {
  gc();
  await sleep(10);
  const m = process.memoryUsage();
  return { heap: m.heapUsed, buffers: m.arrayBuffers };
}

/** Peak growth of the live JS heap and of Buffer memory over the start, sampled while fn runs. */
async function peakMemoryGrowth<T>(fn: () => Promise<T>): Promise<{ result: T; growth: MemoryGrowth }> {
  const base = await liveMemory();
  const growth = { heap: 0, buffers: 0 };
  let done = false;
  const sampler = (async () => {
    while (!done) {
      const m = await liveMemory();
      growth.heap = Math.max(growth.heap, m.heap - base.heap);
      growth.buffers = Math.max(growth.buffers, m.buffers - base.buffers);
      await sleep(40);
    }
  })();
  try {
    return { result: await fn(), growth };
  } finally {
    done = true;
    await sampler;
  }
}

const mib = (n: number): string => `${(n / MiB).toFixed(1)} MiB`;

async function runCaptured(t: Test, store: LogStore, logId: string, argv: string[]) {
  const w = await store.create(logId);
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL'); });
  const exited = once(child, 'exit');
  await Promise.all([
    w.capture(child.stdout!, { stream: 'stdout', task: 'fast' }),
    w.capture(child.stderr!, { stream: 'stderr', task: 'fast' }),
  ]);
  const [code, signal] = await exited;
  return { code, signal, stats: await w.close() };
}

t.test('a workload writing 50 MB as fast as it can, without newlines, is stored whole with bounded memory', async (t) => {
  const { store } = await newStore(t, { maxBytesPerLog: 64 * MiB, maxQueuedBytes: 2 * MiB });
  const { result, growth } = await peakMemoryGrowth(() => runCaptured(t, store, 'pb-fast', ['head', '-c', '50M', '/dev/zero']));
  // The write queue is the only place output waits; capture stops reading while it is full.
  t.ok(result.stats.peakQueuedBytes <= 2 * MiB + 128 * 1024, `write queue peaked at ${(result.stats.peakQueuedBytes / MiB).toFixed(2)} MiB`);
  t.equal(result.code, 0, 'the workload finished normally');
  t.equal(result.signal, null);
  t.equal(result.stats.bytesLogged, 50 * MiB);
  t.ok(growth.heap < 8 * MiB, `JS heap grew at most ${mib(growth.heap)}`);
  t.ok(growth.buffers < 48 * MiB, `Buffer memory grew at most ${mib(growth.buffers)}, less than the 50 MiB written`);
  let total = 0;
  let nonZero = 0;
  for await (const c of store.read('pb-fast')) {
    total += c.data.length;
    t.ok(c.data.length <= 64 * 1024);
    if (c.data.some((b) => b !== 0)) nonZero++;
  }
  t.equal(total, 50 * MiB, 'every byte reads back');
  t.equal(nonZero, 0);
});

t.test('past the cap a fast workload is drained, not blocked: 200 MB into a 1 MB log', async (t) => {
  const { store } = await newStore(t, { maxBytesPerLog: MiB });
  const { result, growth } = await peakMemoryGrowth(() => runCaptured(t, store, 'pb-flood', ['head', '-c', '200M', '/dev/zero']));
  t.equal(result.code, 0, 'the workload ran to the end (it was never left blocked on a full pipe)');
  t.match(result.stats, { bytesLogged: MiB, bytesDropped: 199 * MiB, truncated: true });
  t.ok(growth.heap < 8 * MiB, `JS heap grew at most ${mib(growth.heap)}`);
  t.ok(growth.buffers < 64 * MiB, `Buffer memory grew at most ${mib(growth.buffers)} for 200 MiB of output`);
  t.ok(result.stats.peakQueuedBytes < 2 * MiB, 'nothing queues once the cap is reached');
  const chunks = await collect(store.read('pb-flood'));
  t.equal(chunks.at(-2)!.data.toString(), `[tetrix: log truncated after ${MiB} bytes]\n`);
  t.equal(chunks.at(-1)!.data.toString(), `[tetrix: ${199 * MiB} further bytes dropped]\n`);
});

t.test('capture takes a pipe fd (as the sandbox hands them over) and follows it to EOF', async (t) => {
  const { store, dir } = await newStore(t);
  const fifo = path.join(dir, '..', `tetrix-fifo-${process.pid}`);
  execFileSync('mkfifo', [fifo]);
  // Non-blocking open of the read end first, so opening the write end below does not wait.
  const fd = openSync(fifo, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  const w = await store.create('pb-fd');
  const child = spawn('sh', ['-c', `exec > ${fifo}; printf 'no newline here'; head -c 3M /dev/zero`], { stdio: 'ignore' });
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL'); });
  const captured = w.capture(fd, { stream: 'stdout', task: 'fd' });
  const [code] = await once(child, 'exit');
  await captured;
  t.equal(code, 0);
  const stats = await w.close();
  t.equal(stats.bytesLogged, 15 + 3 * MiB);
  const all = Buffer.concat((await collect(store.read('pb-fd'))).map((c) => c.data));
  t.equal(all.subarray(0, 15).toString(), 'no newline here');
});

// Record boundaries of a log file, for tampering tests: header, then u32-length-prefixed records.
function splitRecords(file: Buffer): Array<{ start: number; end: number }> {
  let off = 8;
  for (let i = 0; i < 3; i++) off += 2 + file.readUInt16BE(off);
  const out: Array<{ start: number; end: number }> = [];
  while (off < file.length) {
    const end = off + 4 + file.readUInt32BE(off);
    out.push({ start: off, end });
    off = end;
  }
  return out;
}

function slice(b: Buffer, r: { start: number; end: number }): Buffer {
  return b.subarray(r.start, r.end);
}
