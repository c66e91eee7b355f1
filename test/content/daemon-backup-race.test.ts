// A teardown racing backups of the same workspace, through the real daemon: a backup either fails with
// a clear status and stores nothing, or it is complete (restores to the full tree). A backup never
// reports success for what a teardown half deleted under it.
import t from 'tap';
import fs from 'node:fs';
import { status, type ServiceError } from '@grpc/grpc-js';
import type { BackupProgress__Output } from '../../src/generated/tetrix/agent/v1/BackupProgress';
import type { BackupResult__Output } from '../../src/generated/tetrix/agent/v1/BackupResult';
import { startDaemon, type Daemon } from '../helpers/daemon';
import { backupDir, backupOf, busybox, contentDir, idle, leftoversOf, pictureOf, waitForMarker } from './daemon-backup-fixture';

const ITERATIONS = 6;

// In walk order: 1000 small files, one large file, 2000 small files. While the walk reads the large one, a
// teardown has time to delete what comes after it.
const smallFiles = (prefix: string, dirs: number): string =>
  `d=0; while [ $d -lt ${dirs} ]; do mkdir -p tree/${prefix}$d; f=0; while [ $f -lt 100 ]; do echo "$d/$f" > tree/${prefix}$d/f$f; f=$((f+1)); done; d=$((d+1)); done`;
const treeScript = [
  'set -e',
  'cd /workspace',
  'mkdir tree',
  smallFiles('a', 10),
  'head -c 41943040 /dev/urandom > tree/m-large',
  smallFiles('z', 20),
  'touch /workspace/done',
  'exec sleep 600',
].join('\n');

/** A backup whose first streamed message is observable: the walk is under way once it came. */
function watchedBackup(d: Daemon, id: string): { underway: Promise<void>; done: Promise<BackupResult__Output> } {
  let underway!: () => void;
  const first = new Promise<void>((resolve) => (underway = resolve));
  const done = new Promise<BackupResult__Output>((resolve, reject) => {
    let result: BackupResult__Output | undefined;
    const call = d.clients.workspaces.BackupWorkspace({ id, includeUpper: false }, { deadline: Date.now() + 120_000 });
    call.on('data', (m: BackupProgress__Output) => {
      underway();
      if (m.result) result = m.result;
    });
    call.on('error', (err) => {
      underway();
      reject(err);
    });
    call.on('end', () => (result ? resolve(result) : reject(new Error('the stream ended without a result'))));
  });
  return { underway: first, done };
}

const manifests = (d: Daemon): string[] => fs.readdirSync(backupDir(d)).filter((n) => n.endsWith('.manifest')).sort();

t.test('backups racing a teardown: each fails cleanly or restores the whole tree', async (t) => {
  t.setTimeout(600_000); // a loaded machine: every iteration restores the tree up to three times
  const d = await startDaemon(t);
  await d.start(busybox('race-base', treeScript));
  await waitForMarker(d, 'race-base', 'done', 120_000);
  const base = await d.get('race-base');
  const whole = pictureOf(contentDir(d, 'race-base'), base.hostUidBase);
  t.equal(Object.keys(whole).length, 1 + 1 + 1 + 1 + 30 * 101, `the tree has ${Object.keys(whole).length} entries`);
  const seed = (await backupOf(d, 'race-base')).result.backupId;
  await d.teardown('race-base');

  const failures = new Map<string, number>();
  let complete = 0;
  const began = Date.now();
  for (let i = 0; i < ITERATIONS; i++) {
    const id = `race-${i}`;
    const w = await d.start(idle(id, { restoreFrom: seed }));
    t.same(pictureOf(contentDir(d, id), w.hostUidBase), whole, `${id}: starts with the whole tree`);
    const before = new Set(manifests(d));
    const first = watchedBackup(d, id);
    // Even rounds: the teardown lands while the walk is under way; odd rounds: right behind the request.
    if (i % 2 === 0) await first.underway;
    const teardown = d.teardown(id);
    // And one more, a little later each round: it lands before, during or after the teardown.
    await new Promise((r) => setTimeout(r, 25 * i));
    const second = watchedBackup(d, id).done;
    const outcomes = await Promise.allSettled([first.done, second]);
    t.equal((await teardown).existed, true, `${id}: torn down`);
    t.same(leftoversOf(d, id), [], `${id}: the teardown left nothing`);

    const reported = new Set<string>();
    for (const [j, o] of outcomes.entries()) {
      if (o.status === 'rejected') {
        const e = o.reason as ServiceError;
        t.ok([status.NOT_FOUND, status.FAILED_PRECONDITION, status.ABORTED].includes(e.code), `${id} backup ${j}: failed cleanly (${status[e.code]}: ${e.details})`);
        failures.set(status[e.code] ?? String(e.code), (failures.get(status[e.code] ?? '') ?? 0) + 1);
        continue;
      }
      const backupId = o.value.backupId;
      reported.add(`${backupId}.manifest`);
      const check = `check-${i}-${j}`;
      const copy = await d.start(idle(check, { restoreFrom: backupId }));
      t.same(pictureOf(contentDir(d, check), copy.hostUidBase), whole, `${id} backup ${j}: reported a success, and restores the whole tree`);
      await d.teardown(check);
      complete++;
    }
    const stored = manifests(d).filter((n) => !before.has(n));
    t.same(stored.sort(), [...reported].sort(), `${id}: only the backups reported as successes were stored`);
  }
  t.pass(`${complete} complete backups, failures: ${JSON.stringify(Object.fromEntries(failures))}, ${Math.round((Date.now() - began) / 1000)} s`);
});
