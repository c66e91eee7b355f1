// A log written before the store moved to src/logs/ (the bytes in fixtures/, written by the old
// src/prebuild/logs.ts, commit 0fef546) still reads back whole: the on-disk format did not change with the move.
import t from 'tap';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { LogStore, type LogChunkRecord } from '../../src/logs';
import { tempDir } from '../prebuild/fixtures';

// The fixture's data key was "wrapped" as itself under this key id; only the format is under test here.
const fixtureSealer = {
  wrap: (dataKey: Buffer) => ({ keyId: 'fixture-key', wrapped: Buffer.from(dataKey) }),
  unwrap: (_keyId: string, wrapped: Buffer) => Buffer.from(wrapped),
};

t.test('a log written by the store before the move reads back with its records, markers and metadata', async (t) => {
  const dir = await tempDir(t, 'logs-format');
  await fs.copyFile(path.join(__dirname, 'fixtures', 'ws-old-format.tlog'), path.join(dir, 'ws-old-format.tlog'));
  const store = new LogStore({ dir, sealer: fixtureSealer, maxBytesPerLog: 40 });
  const chunks: LogChunkRecord[] = [];
  for await (const c of store.read('ws-old-format')) chunks.push(c);
  t.same(chunks.map((c) => [c.stream, c.task, c.data.toString()]), [
    ['stdout', '', 'hello from befor'],
    ['stdout', '', 'e the move\n'],
    ['stderr', 'build', 'a warning tha'],
    ['stderr', 'build', '[tetrix: log truncated after 40 bytes]\n'],
    ['stderr', '', '[tetrix: 20 further bytes dropped]\n'],
  ]);
  t.same(chunks.slice(0, 4).map((c) => c.timeMs), [1000, 1000, 2000, 2000]);
  t.same((await store.info('ws-old-format')).meta, { ownerId: 'alice', kind: 'WORKSPACE' });
});

t.test('the same log with one byte of a record flipped is DATA_LOSS', async (t) => {
  const dir = await tempDir(t, 'logs-format');
  const bytes = await fs.readFile(path.join(__dirname, 'fixtures', 'ws-old-format.tlog'));
  bytes[bytes.length - 20] ^= 1;
  await fs.writeFile(path.join(dir, 'ws-old-format.tlog'), bytes);
  const store = new LogStore({ dir, sealer: fixtureSealer, maxBytesPerLog: 40 });
  await t.rejects(async () => { for await (const _ of store.read('ws-old-format')) void _; }, { code: 'DATA_LOSS', message: /failed authentication/ });
});
