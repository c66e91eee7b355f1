// Volumes across kill -9 (docs/storage.md#crash-safety): the daemon killed between the steps of a start,
// a stop, a teardown and a backup of a stopped workspace; after the restart no loop device, mount or key
// is left that no workspace accounts for, and a start/teardown churn leaves nothing behind either.
import fs from 'node:fs';
import t from 'tap';
import { backupOf, busybox } from '../content/daemon-backup-fixture';
import { refusal } from '../helpers/daemon';
import { imageOf, sealedDiskKey, settled, startStorageDaemon, volumeLeftovers } from './daemon-fixture';

const idleScript = 'trap "exit 0" TERM; while true; do sleep 0.2; done';
const NOTHING = { loops: 0, mounts: [], images: [], keys: 0, kernelKeys: [] };
const CHURN = Number(process.env.TETRIX_STORAGE_CHURN ?? 50);

// volume-key-sealed: the key is in the database, the pool volume not yet moved; volume-mounted: moved,
// not yet bound on the workspace dir; after-volume: bound, the rootfs not begun. One daemon, restarted
// into each point in turn.
t.test('killed at each step of a start: the volume, its loop device and its key are gone after the restart', async (t) => {
  const d = await startStorageDaemon(t);
  for (const point of ['volume-key-sealed', 'volume-mounted', 'after-volume', 'after-rootfs', 'after-spawn']) {
    await d.terminate();
    await d.restart({ TETRIX_TEST_CRASH_AT: point });
    const id = `half-${point}`;
    await t.rejects(d.start(busybox(id, idleScript)), `the daemon dies at ${point}`);
    await d.restart({});
    t.equal((await d.get(id)).state, 'WORKSPACE_STATE_FAILED');
    t.same(await settled(() => volumeLeftovers(d), (v) => v.loops === 0), NOTHING, `${point}: nothing of the volume is left`);
    await d.teardown(id);
  }
});

t.test('killed between the key erase and the files at teardown: the restart finishes the teardown', async (t) => {
  const d = await startStorageDaemon(t, [], { env: { TETRIX_TEST_CRASH_AT: 'after-key-erase' } });
  await d.start(busybox('doomed', idleScript));
  await t.rejects(d.teardown('doomed'));
  t.equal(sealedDiskKey(d, 'doomed'), null, 'the key was erased before the daemon died');
  t.ok(fs.existsSync(imageOf(d, 'doomed')), 'the ciphertext was still there');
  await d.restart({});
  t.same(await d.list(), []);
  t.same(await settled(() => volumeLeftovers(d), (v) => v.loops === 0), NOTHING);
});

t.test('killed during a stop, between the key removal and the unmount, and during a backup of the stopped workspace: its volume is closed after each restart', async (t) => {
  const d = await startStorageDaemon(t, [], { env: { TETRIX_TEST_CRASH_AT: 'mid-stop' } });
  await d.start(busybox('kept', `dd if=/dev/urandom of=/workspace/data bs=1M count=24 2>/dev/null; ${idleScript}`));
  await t.rejects(d.stop('kept', 200));
  // The restart's recovery finishes the stop and is killed closing the volume: key removed, not unmounted.
  await d.restart({ TETRIX_TEST_CRASH_AT: 'volume-key-removed' }).catch(() => undefined);
  await d.restart({ TETRIX_TEST_CRASH_AT: 'mid-backup' });
  await d.waitFor('kept', (w) => w.state === 'WORKSPACE_STATE_STOPPED');
  t.same((await settled(() => volumeLeftovers(d), (v) => v.mounts.length === 0 && v.loops === 0)).mounts, [], 'stopped: closed');
  await t.rejects(backupOf(d, 'kept'), 'the daemon dies in the middle of the backup');
  await d.restart({});
  const left = await settled(() => volumeLeftovers(d), (v) => v.mounts.length === 0 && v.loops === 0);
  t.same(left, { loops: 0, mounts: [], images: ['kept.img'], keys: 1, kernelKeys: [] }, 'the volume is closed and its key out of the kernel, still sealed');
  t.ok((await backupOf(d, 'kept')).result.backupId, 'and it still opens for a backup');
  await d.teardown('kept');
  t.same(await settled(() => volumeLeftovers(d), (v) => v.loops === 0), NOTHING);
});

t.test(`${CHURN} start/teardown cycles leave no loop device, mount, image or key`, async (t) => {
  const d = await startStorageDaemon(t);
  for (let i = 0; i < CHURN; i++) {
    const id = `churn-${i}`;
    await d.start(busybox(id, i % 2 ? idleScript : 'echo hi > /workspace/x', { resources: { diskBytes: i % 5 === 0 ? 40 * 2 ** 20 : 0 } }));
    if (i % 3 === 0) await d.stop(id, 1000);
    await d.teardown(id);
  }
  t.same(await d.list(), []);
  t.same(await settled(() => volumeLeftovers(d), (v) => v.loops === 0), NOTHING, 'no loop device, mount, image, sealed key or kernel key');
  t.equal((await refusal(d.get('churn-0'))).code, 5, 'the daemon still answers');
});
