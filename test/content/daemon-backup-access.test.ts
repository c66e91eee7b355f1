// Who may restore a backup, through the real daemon with real user tokens: a backup records the
// workspace, owner, team and kind it was made of, authenticated with its key (docs/backup-format.md), and
// a restore is allowed by the one access rule (src/api/auth.ts) only to its owner, to the members of a
// prebuild's team for a prebuild's backups, and to operators. Everyone else gets the answer an unknown id
// gets. A manifest changed in storage, in any field, restores nothing and leaves nothing behind.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';
import {
  backupAs, backupDir, busybox, contentDir, idle, leftoversOf, pictureOf, refusal, startAs, startUserDaemon,
  storeVersion1Backup, waitForMarker,
} from './daemon-backup-fixture';
import type { Daemon } from '../helpers/daemon';

const UNKNOWN = 'bk-20200101T000000Z-000000000000';

const writer = (id: string, ownerId: string, teamId = ''): StartWorkspaceRequest =>
  busybox(id, 'set -e; head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n" > /workspace/secret; touch /workspace/done; exec sleep 600', { ownerId, teamId });

const secretOf = (d: Daemon, id: string): string => fs.readFileSync(path.join(contentDir(d, id), 'secret'), 'utf8');

const manifestPath = (d: Daemon, backupId: string): string => path.join(backupDir(d), `${backupId}.manifest`);

async function gone(t: Test, d: Daemon, id: string, what: string): Promise<void> {
  t.equal((await refusal(d.get(id))).code, status.NOT_FOUND, `${what}: no workspace record`);
  t.same(leftoversOf(d, id), [], `${what}: no directory, mount, cgroup or staging directory`);
}

t.test("a user restores her own backups; someone else's is refused exactly like an unknown id", async (t) => {
  const { d, token } = await startUserDaemon(t);
  const alice = token('alice', ['team-a']);
  const bob = token('bob', ['team-a']);
  await startAs(d, bob, writer('bob-src', 'bob', 'team-a'));
  await waitForMarker(d, 'bob-src');
  const { backupId } = await backupAs(d, bob, 'bob-src');

  const manifest = JSON.parse(fs.readFileSync(manifestPath(d, backupId), 'utf8')) as Record<string, unknown>;
  t.match(manifest, { workspaceId: 'bob-src', ownerId: 'bob', teamId: 'team-a', kind: 'REGULAR' }, 'the manifest records workspace, owner, team and kind');

  const unknown = await refusal(startAs(d, alice, idle('alice-unknown', { ownerId: 'alice', restoreFrom: UNKNOWN })));
  t.equal(unknown.code, status.PERMISSION_DENIED, `an unknown backup id is PERMISSION_DENIED for a user (${unknown.details})`);
  const foreign = await refusal(startAs(d, alice, idle('alice-steal', { ownerId: 'alice', restoreFrom: backupId })));
  t.same(foreign, unknown, "bob's backup named by alice: the same code and message as an unknown id");
  await gone(t, d, 'alice-steal', "alice's refused start");
  // A team in common does not matter: a regular workspace's backups are its owner's.
  t.notOk(fs.existsSync(contentDir(d, 'alice-steal')), "none of bob's content reached alice");

  const own = await startAs(d, bob, idle('bob-copy', { ownerId: 'bob', restoreFrom: backupId }));
  t.equal(own.restoredFrom, backupId, 'bob restores his own backup');
  t.equal(secretOf(d, 'bob-copy'), secretOf(d, 'bob-src'), 'with his content');
  const op = await startAs(d, undefined, idle('op-copy', { ownerId: 'carol', restoreFrom: backupId }));
  t.equal(op.restoredFrom, backupId, 'the operator may restore any backup, into a workspace of anyone');
  t.equal((await refusal(startAs(d, undefined, idle('op-unknown', { restoreFrom: UNKNOWN })))).code, status.NOT_FOUND,
    'an operator is told an unknown id is NOT_FOUND');

  // The audit trail is a file of its own in the state dir (src/api/audit.ts).
  const denials = fs.readFileSync(path.join(d.stateDir, 'audit.log'), 'utf8').split('\n')
    .filter((l) => l.includes('"action":"restore"')).map((l) => JSON.parse(l) as Record<string, unknown>);
  t.ok(denials.some((a) => a.who === 'user:alice' && a.decision === 'deny' && a.backup === backupId), 'the refusal is audited with the backup id');
  t.ok(denials.some((a) => a.who === 'user:bob' && a.decision === 'allow' && a.backup === backupId), 'and so is the owner’s restore');
});

t.test("a prebuild's snapshot: restored by its team's members and operators, refused to everyone else", async (t) => {
  const { d, token } = await startUserDaemon(t);
  const carol = token('carol', ['team-b', 'team-a']);
  const dave = token('dave', ['team-b']);
  await startAs(d, undefined, {
    id: 'pb',
    ownerId: 'pat',
    teamId: 'team-a',
    kind: 'WORKSPACE_KIND_PREBUILD',
    image: 'builtin:busybox',
    source: { repositoryUrl: 'https://git.example.test/team-a/app.git', revision: '0123456789abcdef' },
    tasks: [{ name: 'build', command: ['/bin/sh', '-c', 'mkdir -p out && echo built > out/artifact'], workingDir: '/workspace', env: {} }],
    resources: { memoryBytes: 256 << 20, pids: 128 },
  });
  const end = Date.now() + 60_000;
  let pb = await d.get('pb');
  while (!['WORKSPACE_STATE_SUCCEEDED', 'WORKSPACE_STATE_FAILED', 'WORKSPACE_STATE_STOPPED'].includes(pb.state) && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 100));
    pb = await d.get('pb');
  }
  t.equal(pb.state, 'WORKSPACE_STATE_SUCCEEDED', `the prebuild succeeded (${pb.message})`);
  const snapshot = pb.snapshotId;
  t.match(JSON.parse(fs.readFileSync(manifestPath(d, snapshot), 'utf8')), { workspaceId: 'pb', ownerId: 'pat', teamId: 'team-a', kind: 'PREBUILD' },
    'the snapshot records the prebuild, its owner, team and kind');

  const member = await startAs(d, carol, idle('carol-ws', { ownerId: 'carol', restoreFrom: snapshot }));
  t.equal(member.restoredFrom, snapshot, 'a member of team-a starts from the snapshot');
  t.equal(fs.readFileSync(path.join(contentDir(d, 'carol-ws'), 'out/artifact'), 'utf8'), 'built\n', 'and gets its content');

  const outsider = await refusal(startAs(d, dave, idle('dave-ws', { ownerId: 'dave', restoreFrom: snapshot })));
  t.equal(outsider.code, status.PERMISSION_DENIED, 'someone outside team-a is refused');
  t.same(outsider, await refusal(startAs(d, dave, idle('dave-ws', { ownerId: 'dave', restoreFrom: UNKNOWN }))), 'with the answer for an unknown id');
  await gone(t, d, 'dave-ws', "dave's refused start");
  // The other way to start from a prebuild (content.prebuild, issue 17) names the snapshot too.
  const fromPrebuild = (snapshotId: string): StartWorkspaceRequest =>
    idle('dave-pb', { ownerId: 'dave', content: { prebuild: { snapshotId, git: { url: 'https://git.example.test/team-a/app.git', ref: 'main' } } } });
  const viaContent = await refusal(startAs(d, dave, fromPrebuild(snapshot)));
  t.equal(viaContent.code, status.PERMISSION_DENIED, `content.prebuild: someone outside team-a is refused (${viaContent.details})`);
  t.same(viaContent, await refusal(startAs(d, dave, fromPrebuild(UNKNOWN))), 'content.prebuild: with the answer for an unknown id');
  await gone(t, d, 'dave-pb', "dave's refused content.prebuild start");

  // The team may restore the prebuild's snapshot; a backup of carol's own workspace stays hers.
  const { backupId: carols } = await backupAs(d, carol, 'carol-ws');
  t.match(JSON.parse(fs.readFileSync(manifestPath(d, carols), 'utf8')), { ownerId: 'carol', kind: 'REGULAR' }, "a backup of the copy is carol's, REGULAR");
  const teammate = token('erin', ['team-a']);
  t.same(await refusal(startAs(d, teammate, idle('erin-ws', { ownerId: 'erin', restoreFrom: carols }))), await refusal(startAs(d, teammate, idle('erin-ws', { ownerId: 'erin', restoreFrom: UNKNOWN }))),
    "a teammate cannot restore carol's regular backup");

  const op = await startAs(d, undefined, idle('op-ws', { ownerId: 'dave', restoreFrom: snapshot }));
  t.equal(op.restoredFrom, snapshot, 'an operator restores it too');
});

t.test('a manifest changed in storage, in any field, is DATA_LOSS and leaves nothing behind', async (t) => {
  const { d, token } = await startUserDaemon(t);
  const alice = token('alice', ['team-a']);
  const bob = token('bob', ['team-b']);
  await startAs(d, bob, writer('bob-src', 'bob', 'team-b'));
  await waitForMarker(d, 'bob-src');
  const { backupId } = await backupAs(d, bob, 'bob-src');
  const file = manifestPath(d, backupId);
  const original = fs.readFileSync(file, 'utf8');
  const m = JSON.parse(original) as Record<string, unknown>;

  const cases: Array<{ name: string; as: string | undefined; text: string }> = [
    { name: 'roots claim an upper layer the backup does not hold', as: bob, text: JSON.stringify({ ...m, roots: ['content', 'upper'] }) },
    { name: 'a byte flipped in roots', as: bob, text: original.replace('"roots":["content"]', '"roots":["contenu"]') },
    { name: 'the owner changed from bob to alice', as: alice, text: JSON.stringify({ ...m, ownerId: 'alice' }) },
    { name: "made a prebuild of alice's team", as: alice, text: JSON.stringify({ ...m, kind: 'PREBUILD', teamId: 'team-a' }) },
    { name: 'the workspace changed', as: bob, text: JSON.stringify({ ...m, workspaceId: 'other' }) },
    { name: 'the file count changed', as: bob, text: JSON.stringify({ ...m, files: Number(m.files) + 1 }) },
    { name: 'the creation time changed', as: bob, text: JSON.stringify({ ...m, createdAt: '2020-01-01T00:00:00.000Z' }) },
    { name: 'the owner binding removed (posing as an old backup)', as: undefined, text: JSON.stringify({ ...m, version: 1, workspaceId: undefined, ownerId: undefined, teamId: undefined, kind: undefined }) },
  ];
  t.not(cases[1]!.text, original, 'the byte flip applies');
  let n = 0;
  for (const c of cases) {
    const id = `tampered-${n++}`;
    fs.writeFileSync(file, c.text);
    const r = await refusal(startAs(d, c.as, idle(id, { ownerId: c.as === alice ? 'alice' : 'bob', restoreFrom: backupId })));
    t.equal(r.code, status.DATA_LOSS, `${c.name}: DATA_LOSS (${r.details})`);
    await gone(t, d, id, c.name);
  }
  fs.writeFileSync(file, original);
  const ok = await startAs(d, bob, idle('untampered', { ownerId: 'bob', restoreFrom: backupId }));
  t.equal(ok.restoredFrom, backupId, 'put back as it was, the backup restores');
  t.same(pictureOf(contentDir(d, 'untampered'), ok.hostUidBase).secret, pictureOf(contentDir(d, 'bob-src'), (await d.get('bob-src')).hostUidBase).secret, 'intact');
});

t.test('a backup in the old format (no owner recorded) restores for operators only', async (t) => {
  const { d, token } = await startUserDaemon(t);
  const bob = token('bob');
  const src = await startAs(d, bob, writer('bob-src', 'bob'));
  await waitForMarker(d, 'bob-src');
  await d.stop('bob-src');
  const old = await storeVersion1Backup(d, contentDir(d, 'bob-src'), src.hostUidBase);
  t.equal((JSON.parse(fs.readFileSync(manifestPath(d, old), 'utf8')) as { version: number }).version, 1, 'a version 1 manifest');

  const asBob = await refusal(startAs(d, bob, idle('bob-old', { ownerId: 'bob', restoreFrom: old })));
  t.same(asBob, await refusal(startAs(d, bob, idle('bob-old', { ownerId: 'bob', restoreFrom: UNKNOWN }))),
    'a user, even the one who made it, gets the answer for an unknown id: nothing says whose it is');
  t.equal(asBob.code, status.PERMISSION_DENIED);
  await gone(t, d, 'bob-old', "bob's refused start");

  const op = await startAs(d, undefined, idle('op-old', { ownerId: 'bob', restoreFrom: old }));
  t.equal(op.restoredFrom, old, 'the operator restores it (into a workspace of the owner the operator vouches for)');
  t.equal(secretOf(d, 'op-old'), secretOf(d, 'bob-src'), 'and its content is intact');
});
