// Snapshot backups through the real daemon and tetrixctl: BackupWorkspace and restore_from keep their API,
// a node switched to snapshots still restores its full backups, an unchanged workspace stores almost
// nothing the second time, ListBackups/DeleteBackup/PruneBackups/CheckBackups work and follow the access
// rules, a damaged chunk is DATA_LOSS naming the file, and a snapshot restores only into its owner's workspace.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { status } from '@grpc/grpc-js';
import { unaryCall } from '../../../src/cli/client';
import type { ListBackupsResponse__Output } from '../../../src/generated/tetrix/agent/v1/ListBackupsResponse';
import { ctlMain, startDaemon, type Daemon } from '../../helpers/daemon';
import { asUser, backupAs, backupDir, busybox, contentDir, idle, leftoversOf, refusal, startAs, startUserDaemon, waitForMarker } from '../daemon-backup-fixture';

const execFileP = promisify(execFile);
const sha = (file: string): string => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

const jsonLines = (stdout: string): Record<string, any>[] => stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, any>);

function ctlOf(d: Daemon) {
  return (...args: string[]) => execFileP(process.execPath, [ctlMain, '--socket', d.socketPath, '--output', 'json', ...args])
    .then(({ stdout }) => ({ code: 0, lines: jsonLines(stdout), stderr: '' }),
      (err: { code: number; stdout: string; stderr: string }) => ({ code: err.code, lines: jsonLines(err.stdout), stderr: err.stderr }));
}

const writer = (id: string) => busybox(id, 'set -e; mkdir -p /workspace/src; for i in 1 2 3 4 5 6 7 8; do echo "file $i" > /workspace/src/f$i.txt; done; ' +
  'head -c 3000000 /dev/urandom > /workspace/blob; touch /workspace/done; exec sleep 600');

t.test('a node on snapshots: dedup, restore, list, rm, prune, check; its full backups from before still restore', async (t) => {
  const d = await startDaemon(t, [], { env: { TETRIX_BACKUP_FORMAT: 'full' } });
  const ctl = ctlOf(d);
  await d.start(writer('sn-src'));
  await waitForMarker(d, 'sn-src');
  const full = (await ctl('backup', 'sn-src')).lines.at(-1)!.result;
  t.match(full.backupId, /^bk-/, 'a node on the full format writes a full backup');

  await d.terminate();
  await d.restart({ TETRIX_BACKUP_FORMAT: 'snapshot' });
  const first = (await ctl('backup', 'sn-src')).lines.at(-1)!.result;
  t.match(first.backupId, /^sn-/, 'the same node on snapshots writes a snapshot');
  const second = (await ctl('backup', 'sn-src')).lines.at(-1)!.result;
  t.ok(Number(second.size) < 32 << 10, `an unchanged workspace stores ${second.size} bytes the second time (the first: ${first.size})`);

  const copy = await d.start(idle('sn-copy', { restoreFrom: first.backupId }));
  t.equal(copy.restoredFrom, first.backupId, 'restore_from a snapshot');
  t.equal(sha(path.join(contentDir(d, 'sn-copy'), 'blob')), sha(path.join(contentDir(d, 'sn-src'), 'blob')), 'with the same content');
  t.equal(fs.readFileSync(path.join(contentDir(d, 'sn-copy'), 'src/f8.txt'), 'utf8'), 'file 8\n');
  const old = await d.start(idle('sn-old', { restoreFrom: full.backupId }));
  t.equal(old.restoredFrom, full.backupId, 'the full backup taken before the switch restores');
  t.equal(sha(path.join(contentDir(d, 'sn-old'), 'blob')), sha(path.join(contentDir(d, 'sn-src'), 'blob')));

  const listed = (await ctl('backups', '--workspace', 'sn-src')).lines;
  t.same(listed.map((b) => b.backupId), [full.backupId, first.backupId, second.backupId], 'tetrixctl backups lists both formats, oldest first');
  t.same(listed.map((b) => b.format), ['full', 'snapshot', 'snapshot']);
  t.ok(listed.every((b) => Number(b.logicalBytes) >= 3_000_000), 'each with its logical size');
  t.ok(Number(listed[2].storedBytes) < Number(listed[1].storedBytes) / 10, 'and what it stored');

  t.equal((await ctl('backup', 'rm', second.backupId)).code, 0, 'tetrixctl backup rm');
  t.same((await ctl('backups', '--workspace', 'sn-src')).lines.map((b) => b.backupId), [full.backupId, first.backupId]);
  t.equal((await ctl('backup', 'prune')).code, 0, 'tetrixctl backup prune');
  const check = await ctl('backup', 'check');
  t.equal(check.code, 0, 'tetrixctl backup check finds nothing wrong');
  t.ok(Number(check.lines[0].chunks) > 0, `${check.lines[0].chunks} chunks checked`);

  // One bit of the pack holding the blob's chunks.
  const packs = fs.readdirSync(backupDir(d)).filter((n) => n.includes('.pack-')).map((n) => path.join(backupDir(d), n))
    .sort((a, b) => fs.statSync(b).size - fs.statSync(a).size);
  const bytes = fs.readFileSync(packs[0]);
  bytes[bytes.length >> 1] ^= 0x01;
  fs.writeFileSync(packs[0], bytes);
  const damaged = await ctl('backup', 'check');
  t.equal(damaged.code, 1, 'check exits 1 on a damaged chunk');
  t.match(damaged.lines[0].errors.join('\n'), new RegExp(`${first.backupId}.*affected files: "content/blob"`), 'naming the snapshot and the file');
  const refused = await refusal(d.start(idle('sn-bad', { restoreFrom: first.backupId })));
  t.equal(refused.code, status.DATA_LOSS, 'a restore needing the chunk is DATA_LOSS');
  t.match(refused.details, /affected files: "content\/blob"/, `naming the file (${refused.details})`);
  t.same(leftoversOf(d, 'sn-bad'), [], 'and leaves nothing behind');
});

t.test('who may list, delete, prune and restore snapshots; a snapshot restores only into its owner\'s workspace', async (t) => {
  const { d, token } = await startUserDaemon(t, ['--backup-format', 'snapshot']);
  const alice = token('alice', ['team-a']);
  const bob = token('bob', ['team-a']);
  await startAs(d, alice, { ...writer('al-src'), ownerId: 'alice', teamId: 'team-a' });
  await waitForMarker(d, 'al-src');
  const { backupId } = await backupAs(d, alice, 'al-src');
  t.match(backupId, /^sn-/);

  const list = (tok: string | undefined) => unaryCall<ListBackupsResponse__Output>((md, o, cb) => d.clients.backups.ListBackups({}, md, o, cb), { metadata: asUser(tok) });
  t.same((await list(alice)).backups.map((b) => b.backupId), [backupId], 'alice lists her snapshot');
  t.same((await list(bob)).backups, [], 'bob does not see it');
  const unknown = await refusal(startAs(d, bob, idle('bob-unknown', { ownerId: 'bob', restoreFrom: 'sn-20200101T000000Z-000000000000' })));
  const foreign = await refusal(startAs(d, bob, idle('bob-steal', { ownerId: 'bob', restoreFrom: backupId })));
  t.equal(foreign.code, status.PERMISSION_DENIED);
  t.same(foreign, unknown, 'bob naming alice\'s snapshot is refused exactly like an unknown id');
  const intoCarol = await refusal(startAs(d, undefined, idle('op-carol', { ownerId: 'carol', restoreFrom: backupId })));
  t.equal(intoCarol.code, status.PERMISSION_DENIED, 'an operator cannot restore alice\'s snapshot into carol\'s workspace');
  t.same(leftoversOf(d, 'op-carol'), [], 'which leaves nothing behind');
  const intoAlice = await startAs(d, undefined, idle('op-alice', { ownerId: 'alice', restoreFrom: backupId }));
  t.equal(intoAlice.restoredFrom, backupId, 'but can into alice\'s');

  const del = (tok: string | undefined, id: string) => unaryCall((md, o, cb) => d.clients.backups.DeleteBackup({ backupId: id }, md, o, cb), { metadata: asUser(tok) });
  const prune = (tok: string | undefined) => unaryCall((md, o, cb) => d.clients.backups.PruneBackups({ dryRun: false }, md, o, cb), { metadata: asUser(tok) });
  const bobDel = await refusal(del(bob, backupId));
  t.equal(bobDel.code, status.PERMISSION_DENIED, 'bob cannot delete it');
  t.same(bobDel, await refusal(del(bob, 'sn-20200101T000000Z-000000000000')), 'and hears what an unknown id gets');
  t.equal((await refusal(del(undefined, 'sn-20200101T000000Z-000000000000'))).code, status.NOT_FOUND, 'an operator hears NOT_FOUND');
  t.equal((await refusal(del(alice, 'not-an-id'))).code, status.INVALID_ARGUMENT, 'a malformed id is INVALID_ARGUMENT');
  t.equal((await refusal(prune(alice))).code, status.PERMISSION_DENIED, 'prune is for operators');
  await del(alice, backupId);
  t.same((await list(alice)).backups, [], 'alice deletes her own');
  const audit = fs.readFileSync(path.join(d.stateDir, 'audit.log'), 'utf8');
  t.match(audit, /"action":"delete-backup".*"decision":"deny"/, 'deletes are audited');
});
