import t from 'tap';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createCompressStream } from '../../src/content/compress';
import { runBackup, runRestore } from '../../src/content/runner-client';

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

t.test('a restore into a file system that fills up is RESOURCE_EXHAUSTED naming ENOSPC, in the runner and in process', async (t) => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-test-enospc-'));
  const small = path.join(base, 'small');
  fs.mkdirSync(path.join(base, 'src'));
  fs.writeFileSync(path.join(base, 'src', 'big.bin'), crypto.randomBytes(4 << 20));
  fs.mkdirSync(small);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', `tetrix-test-enospc-${process.pid}`, small]);
  t.teardown(() => {
    execFileSync('umount', [small]);
    fs.rmSync(base, { recursive: true, force: true });
  });
  const backup = runBackup({ op: 'backup', roots: [{ name: 'content', dir: path.join(base, 'src') }], uidBase: 0 }, {});
  const archive: Buffer[] = [];
  for await (const c of backup.object) archive.push(c as Buffer);
  await backup.done;
  for (const inProcess of [false, true]) {
    const target = path.join(small, inProcess ? 'in-process' : 'child');
    fs.mkdirSync(target);
    await t.rejects(runRestore({ op: 'restore', roots: { content: target }, uidBase: 0 }, Readable.from(archive), { inProcess }),
      { code: 'RESOURCE_EXHAUSTED', message: /ENOSPC/ }, inProcess ? 'in process' : 'in the runner child');
    fs.rmSync(target, { recursive: true, force: true });
  }
});
