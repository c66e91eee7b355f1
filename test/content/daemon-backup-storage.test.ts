// Where backups are kept, through the real daemon: a teardown's final backup (and a teardown that stops
// because it failed), a daemon killed in the middle of a backup, and a real S3-speaking server on loopback.
import t, { type Test } from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { GetObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { unaryCall } from '../../src/cli/client';
import type { TeardownWorkspaceResponse__Output } from '../../src/generated/tetrix/agent/v1/TeardownWorkspaceResponse';
import { isAlive, startDaemon, type Daemon } from '../helpers/daemon';
import { backupDir, backupOf, busybox, contentDir, idle, pictureOf, waitForMarker } from './daemon-backup-fixture';
// eslint-disable-next-line @typescript-eslint/no-var-requires
const S3rver = require('s3rver');

const teardownWithBackup = (d: Daemon, id: string): Promise<TeardownWorkspaceResponse__Output> =>
  unaryCall<TeardownWorkspaceResponse__Output>((md, o, cb) => d.clients.workspaces.TeardownWorkspace({ id, backupFirst: true }, md, o, cb));

const noteWriter = (text: string, more = ''): string =>
  `set -e; echo ${text} > /workspace/note; ${more} touch /workspace/done; exec sleep 600`;

const noteOf = (d: Daemon, id: string): string => fs.readFileSync(path.join(contentDir(d, id), 'note'), 'utf8').trim();

const s3Args = (bucket: string, endpoint: string, prefix = ''): string[] =>
  ['--backup-storage', 's3', '--s3-bucket', bucket, '--s3-endpoint', endpoint, ...(prefix ? ['--s3-prefix', prefix] : [])];

const BUCKET = 'tetrix-backups';

/** s3rver on loopback, a random port and its own temp dir, stopped in teardown. */
async function startS3(t: Test): Promise<{ endpoint: string; client: S3Client; stop(): Promise<void> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tetrix-s3rver-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory: dir, configureBuckets: [{ name: BUCKET }] });
  const { port } = (await server.run()) as { port: number };
  let running = true;
  const stop = async (): Promise<void> => {
    if (running) await server.close();
    running = false;
  };
  t.teardown(stop);
  const endpoint = `http://127.0.0.1:${port}`;
  const client = new S3Client({
    endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
  });
  t.teardown(() => client.destroy());
  return { endpoint, client, stop };
}

async function objectSha256(client: S3Client, key: string): Promise<{ size: number; sha256: string }> {
  const r = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  const body = Buffer.from(await r.Body!.transformToByteArray());
  return { size: body.length, sha256: crypto.createHash('sha256').update(body).digest('hex') };
}

t.test('teardown with a final backup returns a backup that restores', async (t) => {
  const d = await startDaemon(t);
  const w = await d.start(busybox('final', noteWriter('last-words')));
  await waitForMarker(d, 'final');
  const res = await teardownWithBackup(d, 'final');
  t.equal(res.existed, true);
  t.match(res.backupId, /^bk-\d{8}T\d{6}Z-[0-9a-f]{12}$/, 'the final backup is named');
  t.same(await d.list(), [], 'the workspace is gone');
  t.notOk(fs.existsSync(path.join(d.stateDir, 'workspaces', 'final')), 'its directory is gone');
  t.notOk(isAlive(w.pid), 'its workload is gone');
  await d.start(idle('final-again', { restoreFrom: res.backupId }));
  t.equal(noteOf(d, 'final-again'), 'last-words', 'the final backup restores');
});

t.test('a final backup that fails stops the teardown and leaves the workspace as it was', async (t) => {
  const s3 = await startS3(t);
  const d = await startDaemon(t, s3Args(BUCKET, s3.endpoint), {
    env: { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_MAX_ATTEMPTS: '1' },
  });
  const w = await d.start(busybox('kept', noteWriter('still-here')));
  await waitForMarker(d, 'kept');
  await s3.stop(); // the bucket's server goes away: nothing listens on its port any more
  await t.rejects(teardownWithBackup(d, 'kept'), { code: status.UNAVAILABLE, details: /^object storage: put .*ECONNREFUSED/ }, 'the teardown reports the storage as unavailable');
  const after = await d.get('kept');
  t.equal(after.state, 'WORKSPACE_STATE_RUNNING', 'the record is untouched');
  t.equal(after.pid, w.pid, 'the same workload');
  t.ok(isAlive(w.pid), 'which still runs');
  t.equal(noteOf(d, 'kept'), 'still-here', 'its content is still there');
  t.same((await d.list()).map((x) => x.id), ['kept']);
  t.equal((await d.teardown('kept')).existed, true, 'a plain teardown still works');
  t.notOk(isAlive(w.pid));
});

/** A loopback port nobody listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

t.test('a node whose bucket is unreachable when it starts still starts', async (t) => {
  const endpoint = `http://127.0.0.1:${await closedPort()}`;
  const d = await startDaemon(t, s3Args(BUCKET, endpoint), {
    env: { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER', AWS_MAX_ATTEMPTS: '1' },
  });
  const w = await d.start(idle('no-bucket'));
  t.equal(w.state, 'WORKSPACE_STATE_RUNNING', 'workspaces run; only backups wait for the bucket');
});

/** Everything in the fs backup directory, the temporary directory's entries prefixed with it. */
function backupObjects(d: Daemon): string[] {
  const dir = backupDir(d);
  return fs.readdirSync(dir).flatMap((name) => (name === '.tmp' ? fs.readdirSync(path.join(dir, name)).map((n) => `.tmp/${n}`) : [name])).sort();
}

/** The daemon's archive-runner children right now (workspace inits are its children too; they are not). */
function archiveRunnersOf(pid: number): number[] {
  const tasks = fs.readdirSync(`/proc/${pid}/task`);
  const children = tasks.flatMap((tid) => fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(' ').filter(Boolean).map(Number));
  return children.filter((child) => {
    try {
      return fs.readFileSync(`/proc/${child}/cmdline`, 'utf8').includes('archive-runner');
    } catch {
      return false;
    }
  });
}

async function until(what: string, pred: () => boolean, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

t.test('a daemon killed in the middle of a backup leaves the earlier backup whole and no half one', async (t) => {
  const d = await startDaemon(t);
  await d.start(busybox('small', noteWriter('from-a')));
  await waitForMarker(d, 'small');
  const a = (await backupOf(d, 'small')).result;
  const onlyA = [`${a.backupId}.data`, `${a.backupId}.manifest`].sort();
  await d.start(busybox('big', noteWriter('big', 'head -c 52428800 /dev/urandom > /workspace/big;'), { resources: { memoryBytes: 512 << 20, cpuMillis: 1000, pids: 128 } }));
  await waitForMarker(d, 'big');

  const restartAndCheck = async (t: Test, how: string): Promise<void> => {
    d.clients.close();
    await d.restart({});
    t.same(backupObjects(d), onlyA, `${how}: after a restart only A's objects are left; no half backup, no temporary`);
    t.equal((await d.get('big')).state, 'WORKSPACE_STATE_RUNNING', `${how}: the workspace being backed up was adopted`);
    const id = `a-again-${how.replace(/\W+/g, '-')}`;
    await d.start(idle(id, { restoreFrom: a.backupId }));
    t.equal(noteOf(d, id), 'from-a', `${how}: A still restores`);
  };

  // The daemon's own crash point, about 30 ms in: whether the data object was begun by then varies.
  await d.terminate();
  await d.restart({ TETRIX_TEST_CRASH_AT: 'mid-backup' });
  await t.rejects(backupOf(d, 'big'), 'the backup call fails as the daemon dies');
  if (d.process.exitCode === null && d.process.signalCode === null) await new Promise((r) => d.process.once('exit', r));
  t.equal(d.process.signalCode, 'SIGKILL', 'the daemon was killed');
  t.notOk(backupObjects(d).some((n) => n.endsWith('.manifest') && !onlyA.includes(n)), 'no manifest of the half backup');
  await restartAndCheck(t, 'crash point');

  // kill -9 from outside once the data object is well under way (a deterministic "middle").
  const call = backupOf(d, 'big');
  call.catch(() => undefined);
  const tmp = path.join(backupDir(d), '.tmp');
  await until('the data object to grow', () => fs.readdirSync(tmp).some((n) => fs.statSync(path.join(tmp, n), { throwIfNoEntry: false })?.size! >= 4 << 20));
  const runners = archiveRunnersOf(d.process.pid!);
  await d.kill9();
  await t.rejects(call, 'the backup call fails');
  const leftBehind = backupObjects(d).filter((n) => !onlyA.includes(n));
  t.ok(leftBehind.some((n) => n.startsWith('.tmp/')), `the half backup left a temporary: ${leftBehind.join(', ')}`);
  t.notOk(leftBehind.some((n) => n.endsWith('.manifest')), 'but no manifest');
  t.ok(runners.length >= 1, `the backup had an archive runner (${runners.join(', ')})`);
  await until('the archive runner to exit', () => runners.every((pid) => !isAlive(pid)), 5000).catch(() => undefined);
  t.same(runners.filter(isAlive), [], 'the archive runner does not outlive the daemon');
  await restartAndCheck(t, 'kill -9');
  t.ok(d.output.some((l) => l.includes('backup leftovers removed')), 'the daemon says it cleaned up');
});

t.test('backups go to an S3 bucket and restore from it', async (t) => {
  const { endpoint, client } = await startS3(t);
  const prefix = `node-${process.pid}/`;
  const d = await startDaemon(t, s3Args(BUCKET, endpoint, prefix), { env: { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' } });
  // Over one 8 MiB part, so the upload is multipart.
  const src = await d.start(busybox('s3-source', [
    'set -e', 'cd /workspace', 'mkdir -p dir/empty', 'echo hi > dir/hi && chmod 0640 dir/hi && chown 1000:1000 dir/hi',
    'ln -s hi dir/link', 'head -c 12000000 /dev/urandom > dir/blob', 'touch -d "2001-02-03 04:05:06" dir/hi dir',
    'touch /workspace/done', 'exec sleep 600',
  ].join('\n')));
  await waitForMarker(d, 's3-source');
  const { result } = await backupOf(d, 's3-source');

  const listed = await client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix }));
  t.same((listed.Contents ?? []).map((o) => o.Key).sort(), [`${prefix}${result.backupId}.data`, `${prefix}${result.backupId}.manifest`], 'the bucket holds the data and the manifest under the prefix');
  t.same(await objectSha256(client, `${prefix}${result.backupId}.data`), { size: Number(result.size), sha256: result.sha256 }, "size and sha256 are the stored object's");
  t.notOk(fs.existsSync(backupDir(d)) && fs.readdirSync(backupDir(d)).some((n) => n.startsWith('bk-')), 'nothing is kept on the node');

  const copy = await d.start(idle('s3-copy', { restoreFrom: result.backupId }));
  t.same(pictureOf(path.join(contentDir(d, 's3-copy'), 'dir'), copy.hostUidBase), pictureOf(path.join(contentDir(d, 's3-source'), 'dir'), src.hostUidBase), 'the restored tree is the same');
});
