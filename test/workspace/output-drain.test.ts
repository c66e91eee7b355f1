// Draining an output pipe (src/workspace/adapters/output-drain.ts): however many writes the workload makes, the daemon
// reads at most once per COALESCE_MS per stream and seals one record per read; what a workspace may log per
// second follows its CPU share, and past it the reads are spaced out (the full pipe then holds the writer).
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { KeyRing } from '../../src/crypto/keys';
import { LogStore, type LogChunkRecord } from '../../src/logs';
import { native } from '../../src/native';
import { BYTES_PER_CPU_SECOND, COALESCE_MS, drainPipe, OUTPUT_PIPE_BYTES, OutputPacer } from '../../src/workspace/adapters/output-drain';

/** Rounded up to whole ms, so within 1 ms of the exact value. */
const near = (t: Test, actual: number, expected: number, what: string): void => {
  t.ok(Math.abs(actual - expected) <= 1, `${what} (${actual} ms)`);
};

t.test('the pacer: a quiet workspace is read again after the coalescing delay only', async (t) => {
  const pacer = OutputPacer.forCpu(1000, 0);
  t.equal(pacer.bytesPerSecond, BYTES_PER_CPU_SECOND, 'one core logs BYTES_PER_CPU_SECOND');
  t.equal(pacer.delayAfter(100, 0), COALESCE_MS);
  t.equal(pacer.delayAfter(1, 1000), COALESCE_MS, 'still within its burst');
});

t.test('the pacer: past its burst a workspace is read as fast as its CPU share allows, no faster', async (t) => {
  const pacer = OutputPacer.forCpu(100, 0);
  const rate = BYTES_PER_CPU_SECOND / 10;
  t.equal(pacer.bytesPerSecond, rate, 'a tenth of a core logs a tenth of the rate');
  t.equal(pacer.delayAfter(pacer.burstBytes, 0), COALESCE_MS, 'the burst goes at once');
  near(t, pacer.delayAfter(rate, 0), 1000, 'one more second of output waits one second');
  near(t, pacer.delayAfter(rate / 2, 1000), 500, 'the wait covers only what is owed');
  // A long quiet spell refills the burst and no more.
  t.equal(pacer.delayAfter(pacer.burstBytes, 3_600_000), COALESCE_MS);
  near(t, pacer.delayAfter(rate, 3_600_000), 1000, 'and the next second waits again');
});

t.test('the pacer: no CPU limit is paced as the whole node', async (t) => {
  t.equal(OutputPacer.forCpu(0, 0).bytesPerSecond, BYTES_PER_CPU_SECOND * os.availableParallelism());
  t.throws(() => new OutputPacer(0, 1, 0), RangeError);
});

async function newStore(t: Test): Promise<LogStore> {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), `tetrix-drain-${process.pid}-`));
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const store = new LogStore({ dir: path.join(root, 'logs'), sealer: KeyRing.open({ dir: path.join(root, 'keys') }), maxBytesPerLog: 16 << 20 });
  await store.init();
  return store;
}

t.test('twenty thousand one-byte writes arrive whole, in few records: at most one per coalescing delay', async (t) => {
  const store = await newStore(t);
  const writer = await store.create('drain-1', {});
  const pipe = native.outputPipe(OUTPUT_PIPE_BYTES);
  const writes = 20_000;
  const started = Date.now();
  const child = spawn(process.execPath, ['-e', `const fs = require('fs'); for (let i = 0; i < ${writes}; i++) fs.writeSync(1, String(i % 10));`], {
    stdio: ['ignore', pipe.writeFd, 'inherit'],
  });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  native.closeFd(pipe.writeFd);
  native.closeFd(pipe.keepFd);
  await drainPipe(pipe.readFd, writer, { stream: 'stdout', task: '' }, OutputPacer.forCpu(1000, Date.now()));
  const elapsedMs = Date.now() - started;
  await exited;
  await writer.close();
  const chunks: LogChunkRecord[] = [];
  for await (const c of store.read('drain-1')) chunks.push(c);
  const text = Buffer.concat(chunks.map((c) => c.data)).toString();
  t.equal(text.length, writes, 'every byte');
  t.ok(/^(0123456789)+$/.test(text), 'in order');
  t.comment(`${writes} writes in ${elapsedMs} ms became ${chunks.length} records`);
  // A bound that grows with the run's own duration, so a slow machine cannot break it.
  t.ok(chunks.length <= Math.ceil(elapsedMs / COALESCE_MS) + 2, `${chunks.length} records for ${elapsedMs} ms`);
});
