// Environment values are secrets: the workload sees them, the disk and the logs never do.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { startDaemon } from '../helpers/daemon';
import { filesContaining as filesHolding, isFinalState, marker, prebuildRequest } from '../prebuild/daemon-fixtures';

function childrenOf(pid: number): number[] {
  const text = fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
  return text === '' ? [] : text.split(' ').map(Number);
}

function environOf(pid: number): string[] {
  return fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter(Boolean);
}

/** Every regular file below dir whose bytes contain needle. */
function filesContaining(dir: string, needle: Buffer): string[] {
  const found: string[] = [];
  const walk = (d: string): void => {
    for (const entry of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, entry.name);
      if (entry.isDirectory()) walk(p);
      else if (entry.isFile() && fs.readFileSync(p).includes(needle)) found.push(p);
    }
  };
  walk(dir);
  return found;
}

t.test('an env value reaches the workload, survives a restart sealed, and is nowhere on disk or in logs', async (t) => {
  const d = await startDaemon(t);
  const marker = `tetrix-secret-${crypto.randomBytes(12).toString('hex')}`;
  const spec = {
    id: 'secretive',
    ownerId: 'alice',
    image: 'builtin:busybox',
    command: ['/bin/sh', '-c', 'while true; do sleep 0.2; done'],
    env: { API_TOKEN: marker, PLAIN: 'visible' },
  };
  const w = await d.start(spec);
  const [workload] = childrenOf(w.pid);
  t.ok(workload, 'init has started the workload');
  t.ok(environOf(workload).includes(`API_TOKEN=${marker}`), 'the workload sees the value');

  await d.kill9();
  await d.restart();
  t.equal((await d.get('secretive')).state, 'WORKSPACE_STATE_RUNNING', 'adopted after the restart');
  t.ok(environOf(workload).includes(`API_TOKEN=${marker}`), 'the workload still sees it');
  const again = await d.start(spec);
  t.equal(again.pid, w.pid, 'the same spec (env included) is recognised after the restart');
  await t.rejects(d.start({ ...spec, env: { API_TOKEN: `${marker}x`, PLAIN: 'visible' } }), { code: status.ALREADY_EXISTS }, 'a different value is not');

  t.same(filesContaining(d.stateDir, Buffer.from(marker)), [], 'no file in the state directory holds the value');
  t.notOk(d.output.some((line) => line.includes(marker)), "the daemon's log output never holds the value");
  const db = fs.readFileSync(path.join(d.stateDir, 'state.db'));
  t.notOk(db.includes(Buffer.from('API_TOKEN')), 'not even the variable name is stored in plaintext');
});

// Every secret field of a spec, with a marker in its names and its values. A new secret field of the
// spec gets its markers here (the list is checked against the store's declaration in
// test/workspace/spec-secrets.test.ts).
t.test('every secret field of a prebuild spec is sealed at rest: records, WAL, logs, the whole state dir', async (t) => {
  const d = await startDaemon(t);
  const m = {
    envName: marker('TOPNAME'), envValue: marker('topvalue-'),
    task0Name: marker('TASKZERONAME'), task0Value: marker('taskzero-'),
    task1Name: marker('TASKONENAME'), task1Value: marker('taskone-'),
  };
  await d.start(prebuildRequest('pb-sealed', [
    { name: 'first', script: 'touch /workspace/started; sleep 3', env: { [m.task0Name]: m.task0Value } },
    { name: 'second', script: 'true', env: { [m.task1Name]: m.task1Value } },
  ], { [m.envName]: m.envValue }));
  const started = path.join(d.stateDir, 'workspaces', 'pb-sealed', 'content', 'started');
  await d.waitFor('pb-sealed', (w) => fs.existsSync(started) || isFinalState(w.state), 60_000);
  const needles = Object.values(m);
  // Killed, not stopped: the WAL is not checkpointed, so state.db-wal and -shm are still there to search.
  await d.kill9();
  t.ok(fs.existsSync(path.join(d.stateDir, 'state.db-wal')), 'the WAL is there to be searched');
  t.same(filesHolding(d.stateDir, needles), [], 'no file of the state dir holds a name or value, while it runs');
  await d.restart();
  await d.waitFor('pb-sealed', (w) => isFinalState(w.state), 90_000);
  t.same(filesHolding(d.stateDir, needles), [], 'nor after a restart and the end of the prebuild');
  t.notOk(d.output.some((line) => needles.some((n) => line.includes(n))), "nor the daemon's log output");
});
