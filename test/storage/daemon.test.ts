// Workspace volumes through the real daemon (docs/storage.md): a disk limit that holds without the
// neighbour or the daemon noticing, content that is ciphertext on the node's disk once stopped, a key
// that teardown erases first, and backups of a full workspace that restore.
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import t from 'tap';
import { native } from '../../src/native';
import { unaryCall } from '../../src/cli/client';
import type { RotateKeyRequest } from '../../src/generated/tetrix/agent/v1/RotateKeyRequest';
import type { RotateKeyResponse__Output } from '../../src/generated/tetrix/agent/v1/RotateKeyResponse';
import { refusal } from '../helpers/daemon';
import { backupOf, busybox, contentDir, waitForMarker } from '../content/daemon-backup-fixture';
import { filesHolding, imageOf, kernelFscryptKeys, MiB, sealedDiskKey, settled, startStorageDaemon, volumeLeftovers, volumeMount } from './daemon-fixture';

const idleScript = 'trap "exit 0" TERM; while true; do sleep 0.2; done';
// Fills /workspace until the volume refuses, says how it was refused, then waits.
// (dd is asked for more than any volume here holds: it ends only when refused. The rename needs no block.)
const fillScript = `dd if=/dev/urandom of=/workspace/fill bs=1M count=1000 2>/dev/null || mv /workspace/fill /workspace/full; ${idleScript}`;

t.test('disk_bytes above the node maximum is INVALID_ARGUMENT naming the field, and leaves nothing', async (t) => {
  const d = await startStorageDaemon(t);
  const r = await refusal(d.start(busybox('too-big', idleScript, { resources: { diskBytes: 512 * MiB } })));
  t.equal(r.code, grpc.status.INVALID_ARGUMENT);
  t.match(r.details, /resources\.disk_bytes/);
  const inodes = await refusal(d.start(busybox('too-many', idleScript, { resources: { diskInodes: 2 ** 30 } })));
  t.equal(inodes.code, grpc.status.INVALID_ARGUMENT);
  t.match(inodes.details, /resources\.disk_inodes/);
  t.same(await d.list(), []);
  t.same(volumeLeftovers(d), { loops: 0, mounts: [], images: [], keys: 0, kernelKeys: [] });
});

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

t.test('writes past the limit fail with ENOSPC inside; the neighbour and the daemon keep working', async (t) => {
  const port = await freePort();
  const d = await startStorageDaemon(t, ['--metrics-listen', `127.0.0.1:${port}`]);
  await d.start(busybox('filler', fillScript, { resources: { diskBytes: 48 * MiB } }));
  const neighbour = await d.start(busybox('neighbour', idleScript));
  await waitForMarker(d, 'filler', 'full', 60_000);
  const full = await d.get('filler');
  t.equal(full.state, 'WORKSPACE_STATE_RUNNING');
  t.equal(full.resources?.diskBytes, String(48 * MiB), 'the limit in force');
  t.ok(Number(full.diskUsedBytes) > Number(full.diskLimitBytes) - 2 * MiB, `usage is at the limit (${full.diskUsedBytes}/${full.diskLimitBytes})`);
  t.ok(Number(full.diskLimitBytes) <= 48 * MiB);
  t.equal(full.diskEncrypted, true);
  t.equal(neighbour.resources?.diskBytes, String(64 * MiB), 'the neighbour has the node default');
  fs.writeFileSync(path.join(contentDir(d, 'neighbour'), 'still-room'), Buffer.alloc(8 * MiB));
  t.equal(fs.statSync(path.join(contentDir(d, 'neighbour'), 'still-room')).size, 8 * MiB, 'the neighbour still writes');
  const after = await d.get('neighbour');
  t.equal(after.state, 'WORKSPACE_STATE_RUNNING');
  t.ok(Number(after.diskUsedBytes) >= 8 * MiB, 'its usage counts its own files');
  const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const sample = (name: string): number => Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(metrics)?.[1]);
  t.ok(sample('tetrix_workspace_disk_used_bytes') > 48 * MiB, `the metrics count both volumes' usage (${sample('tetrix_workspace_disk_used_bytes')})`);
  t.equal(sample('tetrix_workspace_disks_full'), 1, 'and one volume full');
});

t.test('after stop, a marker written in /workspace is nowhere in plaintext on the node; after teardown its key is gone and nothing opens the copy', async (t) => {
  const d = await startStorageDaemon(t);
  const marker = `tetrix-marker-${crypto.randomBytes(12).toString('hex')}`;
  // Through env, which the state database holds only sealed: the spec's command is stored in the clear.
  const env = { MARKER: marker, NAME: marker.slice(0, 20) };
  await d.start(busybox('secret', `printf "%s" "$MARKER" > /workspace/note; echo hello > "/workspace/$NAME"; touch /workspace/done; ${idleScript}`, { env }));
  await waitForMarker(d, 'secret');
  const mnt = volumeMount(d, 'secret');
  const policy = native.fscryptPolicyOf(path.join(mnt, 'ws'));
  t.ok(policy, 'the workspace dir carries an fscrypt policy');
  t.equal(policy!.contentsMode, 1, 'AES-256-XTS contents');
  t.equal(policy!.filenamesMode, 4, 'AES-256-CTS names');
  t.equal(native.fscryptKeyStatus(mnt, policy!.identifier), 'present', 'the kernel holds the key while it runs');
  t.ok(kernelFscryptKeys().includes(policy!.identifier.toString('hex')), 'and /proc/keys shows its claim');
  const sealed = sealedDiskKey(d, 'secret');
  t.match(sealed, /^tx1\.kek-[0-9a-f]{16}\./, 'the key is at rest only sealed under the node KEK');
  await d.stop('secret');
  await settled(() => volumeLeftovers(d).loops, (n) => n === 0);
  t.same(volumeLeftovers(d).mounts, [], 'stopped, the volume is unmounted (its key with it)');
  t.equal(volumeLeftovers(d).loops, 0, 'and its loop device detached');
  t.notOk(kernelFscryptKeys().includes(policy!.identifier.toString('hex')), 'and the kernel holds its key no more');
  t.same(filesHolding(d.stateDir, marker), [], 'the marker is in no file of the state dir, the raw image included');
  t.same(filesHolding(d.stateDir, marker.slice(0, 20)), [], 'nor is the file name');
  const copy = path.join(d.dir, 'stolen.img');
  fs.copyFileSync(imageOf(d, 'secret'), copy);
  await d.teardown('secret');
  t.equal(sealedDiskKey(d, 'secret'), undefined, 'the record and its key are gone');
  t.same(filesHolding(d.stateDir, sealed!.split('.')[2].slice(0, 40)), [], 'the sealed key is in no file of the state dir (WAL included)');
  t.same(volumeLeftovers(d), { loops: 0, mounts: [], images: [], keys: 0, kernelKeys: [] });
  const peek = path.join(d.dir, 'peek');
  fs.mkdirSync(peek);
  await native.loopMount(copy, peek, 'ext4', 0, 'ro', 'tetrix-test', false);
  try {
    // ws/ is the workspace dir itself: lower, upper, work, rootfs, content and init's records, all sealed.
    const names = fs.readdirSync(path.join(peek, 'ws'));
    t.notOk(names.some((n) => n === 'content' || n === 'upper'), 'names are ciphertext');
    const content = names.map((n) => path.join(peek, 'ws', n)).find((p) => fs.statSync(p).isDirectory() && fs.readdirSync(p).length === 3);
    t.ok(content, `the content dir is there, sealed (${names.length} entries)`);
    const file = fs.readdirSync(content!).map((n) => path.join(content!, n)).find((p) => fs.statSync(p).isFile());
    t.throws(() => fs.readFileSync(file!), { errno: -126 }, 'its files do not open (ENOKEY) with anything left on the node');
  } finally {
    await native.umountAsync(peek, 0);
  }
});

t.test('a 100% full workspace backs up (running and stopped) and restores; a restore that cannot fit is refused first', async (t) => {
  const d = await startStorageDaemon(t);
  await d.start(busybox('full', fillScript, { resources: { diskBytes: 48 * MiB } }));
  await waitForMarker(d, 'full', 'full', 60_000);
  const file = path.join(contentDir(d, 'full'), 'full');
  const digest = crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  const size = fs.statSync(file).size;
  t.ok(size > 40 * MiB, `the file fills the volume (${size} bytes)`);
  const live = await backupOf(d, 'full');
  t.ok(live.result.backupId, 'backed up while running and full');
  await d.stop('full');
  const stopped = await backupOf(d, 'full');
  t.ok(stopped.result.backupId, 'backed up stopped (its volume opened for the backup, closed after)');
  t.equal(volumeLeftovers(d).mounts.length, 0, 'the volume is closed again');
  await d.teardown('full');
  const small = await refusal(d.start(busybox('cramped', idleScript, { restoreFrom: stopped.result.backupId, resources: { diskBytes: 32 * MiB } })));
  t.equal(small.code, grpc.status.RESOURCE_EXHAUSTED, 'a restore that cannot fit is refused');
  t.match(small.details, /restore_from.*resources\.disk_bytes/);
  t.notOk(d.output.some((l) => l.includes('backup restored')), 'before anything of it was written');
  await d.teardown('cramped');
  const w = await d.start(busybox('again', idleScript, { restoreFrom: stopped.result.backupId, resources: { diskBytes: 48 * MiB } }));
  t.equal(w.state, 'WORKSPACE_STATE_RUNNING', 'restored into the same limit');
  const restored = path.join(contentDir(d, 'again'), 'full');
  t.equal(crypto.createHash('sha256').update(fs.readFileSync(restored)).digest('hex'), digest, 'byte for byte');
  await d.teardown('again');
  t.same(volumeLeftovers(d), { loops: 0, mounts: [], images: [], keys: 0, kernelKeys: [] });
});

t.test('key rotation re-wraps the sealed volume key: the old KEK retires and the volume still opens', async (t) => {
  const d = await startStorageDaemon(t);
  await d.start(busybox('rotated', `echo kept > /workspace/note; touch /workspace/done; ${idleScript}`));
  await waitForMarker(d, 'rotated');
  const before = sealedDiskKey(d, 'rotated')!;
  const oldKey = before.split('.')[1];
  const rotate = (req: RotateKeyRequest) => unaryCall<RotateKeyResponse__Output>((md, o, cb) => d.clients.node.RotateKey(req, md, o, cb));
  const refused = await refusal(rotate({ retireKeyIds: [oldKey] }));
  t.equal(refused.code, grpc.status.FAILED_PRECONDITION, 'the old KEK cannot go while the volume key depends on it');
  const res = await rotate({ rewrapBackups: true, retireKeyIds: [oldKey] });
  t.same(res.retiredKeyIds, [oldKey]);
  const after = sealedDiskKey(d, 'rotated')!;
  t.equal(after.split('.')[1], res.keyId, 're-sealed under the new KEK');
  await d.stop('rotated');
  const backup = await backupOf(d, 'rotated');
  t.ok(backup.result.backupId, 'the stopped volume opens with the re-wrapped key');
  await d.teardown('rotated');
});
