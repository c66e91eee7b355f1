import t from 'tap';
import crypto from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createCompressStream } from '../../src/content/compress';
import { runRestore } from '../../src/content/runner-client';

t.test('a restore whose runner fails reports the runner\'s reason, not the broken pipe it leaves', async (t) => {
  // 16 MiB of incompressible input: the daemon is still writing when the runner gives up at its first step.
  const chunks: Buffer[] = [];
  await pipeline(Readable.from([crypto.randomBytes(16 << 20)]), createCompressStream(), async function* (src) {
    for await (const c of src) chunks.push(c as Buffer);
  });
  const missing = `/nonexistent-tetrix-${process.pid}-${crypto.randomBytes(3).toString('hex')}`;
  for (const inProcess of [false, true]) {
    await t.rejects(
      runRestore({ op: 'restore', roots: { content: missing }, uidBase: 100000 }, Readable.from(chunks), { inProcess }),
      { code: 'FAILED_PRECONDITION', message: /not a directory/ }, inProcess ? 'in process' : 'in the runner child');
  }
});
