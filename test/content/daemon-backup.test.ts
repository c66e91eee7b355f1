// Backups through the real daemon: a workspace's tree survives a backup and a restore into another
// workspace exactly (modes, container owners, links, mtimes), a tampered backup is refused before any of
// it is exposed, key rotation keeps old backups readable, and tetrixctl prints JSON lines.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { status } from '@grpc/grpc-js';
import { unaryCall } from '../../src/cli/client';
import type { NodeInfo__Output } from '../../src/generated/tetrix/agent/v1/NodeInfo';
import { ctlMain, startDaemon, type Daemon } from '../helpers/daemon';
import {
  backupDir, backupOf, busybox, contentDir, findEverywhere, findNames, idle, pictureOf, rotateKey, sha256Of, waitForMarker,
} from './daemon-backup-fixture';

const TOUCHED = '2001-02-03 04:05:06';

// A tree with what a backup must keep; directory mtimes are set last, after their contents were written.
const treeScript = [
  'set -e',
  'cd /workspace',
  'mkdir -p tree/empty tree/private tree/shared tree/src/deep',
  'echo hello > tree/readme.txt && chmod 0644 tree/readme.txt && chown 1001:2002 tree/readme.txt',
  'printf "#!/bin/sh\\necho hi\\n" > tree/run.sh && chmod 0755 tree/run.sh',
  'echo secret > tree/private/key && chmod 0600 tree/private/key && chmod 0700 tree/private',
  'chown 1000:1000 tree/shared && chmod 2775 tree/shared',
  'echo shared > tree/shared/file && chown 1000:1000 tree/shared/file && chmod 0664 tree/shared/file',
  'head -c 300000 /dev/urandom > tree/src/deep/blob',
  'ln tree/readme.txt tree/src/hard-readme',
  'ln -s ../readme.txt tree/src/link-readme',
  'ln -s deep tree/src/link-dir',
  'ln -s no-such-file tree/src/dangling',
  `touch -d "${TOUCHED}" tree/readme.txt tree/run.sh tree/src/deep/blob`,
  `touch -h -d "${TOUCHED}" tree/src/link-readme`,
  `touch -d "${TOUCHED}" tree/empty tree/private tree/shared tree/src/deep tree/src tree`,
  'touch /workspace/done',
  'exec sleep 600',
].join('\n');

t.test('a backup restored into another workspace gives back the identical tree', async (t) => {
  const d = await startDaemon(t);
  const src = await d.start(busybox('tree-source', treeScript));
  await waitForMarker(d, 'tree-source');
  // Sub-second mtimes cannot be set with busybox touch; the host sets one.
  fs.utimesSync(path.join(contentDir(d, 'tree-source'), 'tree/run.sh'), 981173106.25, 981173106.123456);

  const run = await backupOf(d, 'tree-source');
  t.ok(run.progress.length >= 1, `progress messages came (${run.progress.length})`);
  t.same(run.kinds.slice(0, -1).every((k) => k === 'progress'), true, 'every message before the last is progress');
  t.equal(run.kinds.at(-1), 'result', 'the last message is the result');
  const last = run.progress.at(-1)!;
  t.ok(Number(last.filesDone) >= 8 && Number(last.bytesDone) >= 300_000, `progress counts files and bytes (${last.filesDone}, ${last.bytesDone})`);
  t.match(last, { bytesTotal: last.bytesDone, filesTotal: last.filesDone }, 'the totals were known and reached');
  const { result } = run;
  t.match(result.backupId, /^bk-\d{8}T\d{6}Z-[0-9a-f]{12}$/);
  t.ok(Number(result.size) > 0, 'the stored object has a size');
  const data = path.join(backupDir(d), `${result.backupId}.data`);
  t.equal(fs.statSync(data).size, Number(result.size), 'size is that of the stored object');
  t.equal(sha256Of(data), result.sha256, 'sha256 is that of the stored object');
  t.match(result.keyId, /^kek-[0-9a-f]{16}$/);

  const copy = await d.start(idle('tree-copy', { restoreFrom: result.backupId }));
  t.equal(copy.restoredFrom, result.backupId, 'the workspace says where its content came from');
  t.not(copy.hostUidBase, src.hostUidBase, 'the copy lives in another uid range');
  const whole = pictureOf(contentDir(d, 'tree-source'), src.hostUidBase);
  t.same(pictureOf(contentDir(d, 'tree-copy'), copy.hostUidBase), whole, 'modes, container owners, link targets, hard links, contents and mtimes are the same');
  const before = Object.fromEntries(Object.entries(whole).filter(([p]) => p.startsWith('tree/')).map(([p, e]) => [p.slice(5), e]));
  t.match(whole['.'], { type: 'dir', uid: 0, gid: 0 }, '/workspace itself belongs to the container root');

  // The source really had what the comparison is about.
  t.match(before['readme.txt'], { mode: '644', uid: 1001, gid: 2002, mtimeUs: String(Date.parse('2001-02-03T04:05:06') * 1000) });
  t.match(before['run.sh'], { mode: '755', mtimeUs: '981173106123456' });
  t.match(before['private'], { type: 'dir', mode: '700' });
  t.match(before['private/key'], { mode: '600' });
  t.match(before['shared'], { type: 'dir', mode: '2775', uid: 1000, gid: 1000 });
  t.match(before['empty'], { type: 'dir' });
  t.match(before['src/hard-readme'], { sameFileAs: 'readme.txt' });
  t.match(before['src/link-readme'], { type: 'symlink', target: '../readme.txt' });
  t.match(before['src/dangling'], { type: 'symlink', target: 'no-such-file' });
  t.equal(before['src/deep'].mtimeUs, before['readme.txt'].mtimeUs, 'directory mtimes were set');
  const hostUid = fs.statSync(path.join(contentDir(d, 'tree-copy'), 'tree/shared')).uid;
  t.equal(hostUid, copy.hostUidBase + 1000, "from the host, the copy's files belong to the copy's own range");
});

// The stream format (docs/backup-format.md): a 17-byte header, then segments of 1 MiB plaintext + 16-byte tag.
const HEADER = 17;
const SEGMENT = (1 << 20) + 16;

const flipped = (buf: Buffer, at: number): Buffer => {
  const out = Buffer.from(buf);
  out[at] ^= 0x01;
  return out;
};

const segmentsSwapped = (buf: Buffer, i: number, j: number): Buffer => {
  const out = Buffer.from(buf);
  buf.copy(out, HEADER + i * SEGMENT, HEADER + j * SEGMENT, HEADER + (j + 1) * SEGMENT);
  buf.copy(out, HEADER + j * SEGMENT, HEADER + i * SEGMENT, HEADER + (i + 1) * SEGMENT);
  return out;
};

t.test('a tampered backup is refused before any of its content is exposed', async (t) => {
  const d = await startDaemon(t);
  // The marker comes first in the archive and the random blob after it, so a late failure happens after the
  // marker was already extracted into staging. The marker's value is made inside the workspace, so it is in
  // no request, log or record.
  await d.start(busybox('secret-source', [
    'set -e',
    'cd /workspace',
    'head -c 24 /dev/urandom | od -An -tx1 | tr -d " \\n" > a-marker',
    'head -c 3500000 /dev/urandom > z-blob',
    'touch done',
    'exec sleep 600',
  ].join('\n')));
  await waitForMarker(d, 'secret-source');
  const marker = fs.readFileSync(path.join(contentDir(d, 'secret-source'), 'a-marker'), 'utf8');
  t.match(marker, /^[0-9a-f]{48}$/);
  const { result } = await backupOf(d, 'secret-source');
  await d.teardown('secret-source');
  t.same(findEverywhere(d.dir, marker), [], 'with the source gone, the marker is nowhere in plaintext');

  const dataPath = path.join(backupDir(d), `${result.backupId}.data`);
  const manifestPath = path.join(backupDir(d), `${result.backupId}.manifest`);
  const data = fs.readFileSync(dataPath);
  const manifestText = fs.readFileSync(manifestPath, 'utf8');
  const manifest = JSON.parse(manifestText) as Record<string, unknown>;
  t.ok(data.length > HEADER + 3 * SEGMENT, `the object has more than three segments (${data.length} bytes)`);
  const otherKey = (await rotateKey(d, false)).keyId;  // a key the node has, but not the one that wrapped it

  const cases: { name: string; code: status; data?: Buffer; manifest?: Record<string, unknown> }[] = [
    { name: 'a flipped bit in the last segment', code: status.DATA_LOSS, data: flipped(data, data.length - 40) },
    { name: 'a flipped bit in the first segment', code: status.DATA_LOSS, data: flipped(data, HEADER + 100) },
    { name: 'a flipped bit in the header', code: status.DATA_LOSS, data: flipped(data, 12) },
    { name: 'an object cut at a segment boundary', code: status.DATA_LOSS, data: data.subarray(0, HEADER + 3 * SEGMENT) },
    { name: 'an object cut inside its last segment', code: status.DATA_LOSS, data: data.subarray(0, data.length - 1000) },
    { name: 'two segments swapped', code: status.DATA_LOSS, data: segmentsSwapped(data, 1, 2) },
    { name: 'bytes appended', code: status.DATA_LOSS, data: Buffer.concat([data, Buffer.alloc(64)]) },
    { name: 'a manifest naming a key the node does not have', code: status.FAILED_PRECONDITION, manifest: { ...manifest, keyId: 'kek-0000000000000000' } },
    { name: 'a manifest naming another key of the node', code: status.DATA_LOSS, manifest: { ...manifest, keyId: otherKey } },
    { name: "a manifest whose sha256 is not the object's", code: status.DATA_LOSS, manifest: { ...manifest, sha256: 'ab'.repeat(32) } },
  ];
  let n = 0;
  for (const c of cases) {
    const id = `tampered-${n++}`;
    fs.writeFileSync(dataPath, c.data ?? data);
    fs.writeFileSync(manifestPath, c.manifest ? JSON.stringify(c.manifest) + '\n' : manifestText);
    await t.rejects(d.start(idle(id, { restoreFrom: result.backupId })), { code: c.code }, `${c.name}: ${status[c.code]}`);
    if (c.manifest) {
      // The manifest is verified (its key unwrapped) before the workspace exists.
      await t.rejects(d.get(id), { code: status.NOT_FOUND }, `${c.name}: refused before the workspace existed`);
    } else {
      const w = await d.get(id);
      t.equal(w.state, 'WORKSPACE_STATE_FAILED', `${c.name}: the workspace is FAILED`);
      t.equal(w.pid, 0, `${c.name}: no workload ran`);
      await d.teardown(id);
    }
    t.notOk(fs.existsSync(path.join(d.stateDir, 'workspaces', id)), `${c.name}: its directory is gone`);
  }
  fs.writeFileSync(dataPath, data);
  fs.writeFileSync(manifestPath, manifestText);

  t.same(findEverywhere(d.dir, marker), [], 'no tampered restore left the marker anywhere in the state dir');
  t.same(findNames(d.dir, 'tetrix-restore'), [], 'no staging directory is left');
  t.notOk(d.output.some((l) => l.includes(marker)), "the daemon's log never shows it");

  const ok = await d.start(idle('untampered', { restoreFrom: result.backupId }));
  t.equal(ok.state, 'WORKSPACE_STATE_RUNNING', 'the same backup, put back as it was, restores');
  t.equal(fs.readFileSync(path.join(contentDir(d, 'untampered'), 'a-marker'), 'utf8'), marker);
});

t.test('an unknown backup id is NOT_FOUND and creates nothing', async (t) => {
  const d = await startDaemon(t);
  const unknown = 'bk-20200101T000000Z-000000000000';
  await t.rejects(d.start(idle('from-nowhere', { restoreFrom: unknown })), { code: status.NOT_FOUND });
  await t.rejects(d.get('from-nowhere'), { code: status.NOT_FOUND }, 'no record');
  t.same(await d.list(), []);
  t.notOk(fs.existsSync(path.join(d.stateDir, 'workspaces', 'from-nowhere')), 'no directory');
  await t.rejects(d.start(idle('from-garbage', { restoreFrom: '../../etc' })), { code: status.INVALID_ARGUMENT });
});

const nodeInfo = (d: Daemon): Promise<NodeInfo__Output> => unaryCall<NodeInfo__Output>((md, o, cb) => d.clients.node.GetNodeInfo({}, md, o, cb));

t.test('after a key rotation with re-wrap, old backups name the new key and still restore', async (t) => {
  const d = await startDaemon(t);
  await d.start(busybox('rot-source', 'set -e; echo before-rotation > /workspace/note; touch /workspace/done; exec sleep 600'));
  await waitForMarker(d, 'rot-source');
  const a = (await backupOf(d, 'rot-source')).result;
  const dataPath = path.join(backupDir(d), `${a.backupId}.data`);

  const rotated = await rotateKey(d, true);
  t.not(rotated.keyId, a.keyId, 'a new key is current');
  t.match(rotated.keyId, /^kek-[0-9a-f]{16}$/);
  t.ok(Number(rotated.rewrapped) >= 1, `backups were re-wrapped (${rotated.rewrapped})`);
  t.equal((await nodeInfo(d)).currentKeyId, rotated.keyId, 'the node reports the new key');
  const manifest = JSON.parse(fs.readFileSync(path.join(backupDir(d), `${a.backupId}.manifest`), 'utf8')) as { keyId: string; sha256: string };
  t.equal(manifest.keyId, rotated.keyId, "A's manifest names the new key");
  t.equal(sha256Of(dataPath), a.sha256, 'the content object was not rewritten');
  t.ok(fs.existsSync(path.join(d.stateDir, 'keys', `${a.keyId}.key`)), 'the old key is kept');

  await d.terminate();
  await d.restart();  // the keyring is read back from disk
  const copy = await d.start(idle('rot-copy', { restoreFrom: a.backupId }));
  t.equal(copy.state, 'WORKSPACE_STATE_RUNNING');
  t.equal(fs.readFileSync(path.join(contentDir(d, 'rot-copy'), 'note'), 'utf8'), 'before-rotation\n', 'A restores under the new key');

  const keyFile = path.join(d.stateDir, 'keys', `${rotated.keyId}.key`);
  await d.terminate();
  fs.chmodSync(keyFile, 0o640);
  const refused = await d.restart().then(() => undefined, (err: Error) => err);
  t.ok(refused, 'the daemon does not start with a group-readable key file');
  const why = (refused?.message ?? '').split('\n').find((l) => l.includes(keyFile));
  t.match(why, /accessible by group or others/, `and says which file and why: ${why}`);
  fs.chmodSync(keyFile, 0o600);
  await d.restart();
  t.equal((await d.get('rot-copy')).state, 'WORKSPACE_STATE_RUNNING', 'with the mode fixed it starts and adopts the workspace');
});

const execFileP = promisify(execFile);

t.test('tetrixctl backup --output json prints progress lines and one result line', async (t) => {
  const d = await startDaemon(t);
  await d.start(busybox('ctl-source', 'set -e; head -c 2000000 /dev/urandom > /workspace/blob; touch /workspace/done; exec sleep 600'));
  await waitForMarker(d, 'ctl-source');
  const ctl = (...args: string[]) => execFileP(process.execPath, [ctlMain, '--socket', d.socketPath, '--output', 'json', ...args]);

  const { stdout } = await ctl('backup', 'ctl-source');
  const lines = stdout.trim().split('\n').map((l) => JSON.parse(l) as { progress?: { bytesDone: string; filesDone: string }; result?: { backupId: string; sha256: string; size: string } });
  t.ok(lines.length >= 2, `${lines.length} lines`);
  t.ok(lines.slice(0, -1).every((l) => l.progress && !l.result), 'every line but the last is progress');
  t.ok(Number(lines.at(-2)!.progress!.bytesDone) >= 2_000_000, 'progress counts the bytes');
  const result = lines.at(-1)!.result!;
  t.match(result.backupId, /^bk-/, 'the last line is the result');
  t.equal(sha256Of(path.join(backupDir(d), `${result.backupId}.data`)), result.sha256);

  const started = JSON.parse((await ctl('start', 'ctl-copy', '--owner', 'alice', '--restore-from', result.backupId, '--', '/bin/sleep', '600')).stdout) as { state: string; restoredFrom: string };
  t.match(started, { state: 'WORKSPACE_STATE_RUNNING', restoredFrom: result.backupId }, 'start --restore-from');
  t.equal(sha256Of(path.join(contentDir(d, 'ctl-copy'), 'blob')), sha256Of(path.join(contentDir(d, 'ctl-source'), 'blob')));
});
