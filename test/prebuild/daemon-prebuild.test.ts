// A prebuild end to end through the real daemon: tasks in order, logs live to the team and refused to
// everyone else, the snapshot restored into a regular workspace, and its signed provenance verified,
// then refused once anything is tampered with.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import type { LogChunk__Output } from '../../src/generated/tetrix/agent/v1/LogChunk';
import type { WorkspaceEvent__Output } from '../../src/generated/tetrix/agent/v1/WorkspaceEvent';
import type { StartWorkspaceRequest } from '../../src/generated/tetrix/agent/v1/StartWorkspaceRequest';
import { ctlMain, startDaemon, type Daemon } from '../helpers/daemon';
import { prebuildRequest } from './daemon-fixtures';

const NODE_ID = 'prebuild-test-node';

function tokenSigner(dir: string): { keyFile: string; token(sub: string, teams: string[]): string } {
  const { publicKey, privateKey } = crypto.generateKeyPairSync('ed25519');
  const keyFile = path.join(dir, 'control-plane.pub');
  fs.writeFileSync(keyFile, publicKey.export({ type: 'spki', format: 'pem' }));
  const b64 = (o: object): string => Buffer.from(JSON.stringify(o)).toString('base64url');
  return {
    keyFile,
    token: (sub, teams) => {
      const now = Math.floor(Date.now() / 1000);
      const signing = `${b64({ alg: 'EdDSA', typ: 'JWT' })}.${b64({ sub, teams, aud: NODE_ID, iat: now, exp: now + 300 })}`;
      return `${signing}.${crypto.sign(null, Buffer.from(signing), privateKey).toString('base64url')}`;
    },
  };
}

const asUser = (token: string): grpc.Metadata => {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${token}`);
  return md;
};

function streamLogs(d: Daemon, id: string, md: grpc.Metadata, follow: boolean): Promise<LogChunk__Output[]> {
  return new Promise((resolve, reject) => {
    const chunks: LogChunk__Output[] = [];
    const s = d.clients.workspaces.StreamLogs({ id, follow }, md);
    s.on('data', (c: LogChunk__Output) => chunks.push(c));
    s.on('error', reject);
    s.on('end', () => resolve(chunks));
  });
}

const prebuild = (id: string, tasks: Array<[string, string]>): StartWorkspaceRequest =>
  prebuildRequest(id, tasks.map(([name, script]) => ({ name, script, env: { STAGE: name } })), { SECRET_TOKEN: 'prebuild-secret-value' });

const ctl = (d: Daemon, ...args: string[]) => spawnSync(process.execPath, [ctlMain, '--socket', d.socketPath, ...args], { encoding: 'utf8' });

t.test('a prebuild runs its tasks, shares its logs with its team only, and publishes a verifiable snapshot', async (t) => {
  const dir = fs.mkdtempSync('/tmp/tetrix-prebuild-keys-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const signer = tokenSigner(dir);
  const d = await startDaemon(t, ['--control-plane-key-file', signer.keyFile, '--node-id', NODE_ID]);
  const events: WorkspaceEvent__Output[] = [];
  const watch = d.clients.workspaces.WatchWorkspaces({ id: 'pb' });
  watch.on('data', (e: WorkspaceEvent__Output) => events.push(e));
  watch.on('error', () => undefined);
  t.teardown(() => watch.cancel());

  await d.start(prebuild('pb', [
    ['compile', 'echo "compiling $STAGE"; mkdir -p out; echo one > out/a; sleep 0.6; echo compiled'],
    ['package', 'echo "packaging" >&2; echo two > out/b; test -z "$__TX_0_STAGE" && echo clean-env'],
  ]));
  const teamMember = streamLogs(d, 'pb', asUser(signer.token('bob', ['team-a'])), true);
  const outsider = streamLogs(d, 'pb', asUser(signer.token('carol', ['team-b'])), false).then(() => undefined, (e: grpc.ServiceError) => e);
  const unknown = streamLogs(d, 'no-such-prebuild', asUser(signer.token('carol', ['team-b'])), false).then(() => undefined, (e: grpc.ServiceError) => e);

  const chunks = await teamMember;
  const byTask = (task: string, stream: string): string =>
    Buffer.concat(chunks.filter((c) => c.task === task && c.stream === stream).map((c) => c.data)).toString();
  t.equal(byTask('compile', 'stdout'), 'compiling compile\ncompiled\n', "a team member follows the first task's output");
  t.equal(byTask('package', 'stderr'), 'packaging\n', "and the second task's stderr, attributed to it");
  t.equal(byTask('package', 'stdout'), 'clean-env\n', "a task sees its own env, not another task's carriers");
  const denied = await outsider;
  t.equal(denied?.code, grpc.status.PERMISSION_DENIED, 'an outsider is refused');
  t.equal(denied?.details, (await unknown)?.details, 'with the same answer as for a log that does not exist');

  const done = await d.waitFor('pb', (w) => w.state === 'WORKSPACE_STATE_SUCCEEDED' || w.state === 'WORKSPACE_STATE_FAILED');
  t.equal(done.state, 'WORKSPACE_STATE_SUCCEEDED', `succeeded (${done.message})`);
  t.match(done.snapshotId, /^bk-/, 'with a snapshot');
  t.same(done.tasks.map((x) => [x.name, x.state, x.exitCode]), [['compile', 'WORKSPACE_STATE_SUCCEEDED', 0], ['package', 'WORKSPACE_STATE_SUCCEEDED', 0]]);
  t.ok(done.tasks.every((x) => Number(x.startedUnixMs) > 0 && Number(x.finishedUnixMs) >= Number(x.startedUnixMs)), 'each task has its start and end');
  const seen = events.flatMap((e) => e.workspace?.tasks.map((x) => `${x.name}:${x.state}`) ?? []);
  t.ok(seen.includes('compile:WORKSPACE_STATE_RUNNING') && seen.includes('package:WORKSPACE_STATE_SUCCEEDED'), 'WatchWorkspaces reported the tasks as they ran');

  // The snapshot restores into a regular workspace of the owner.
  await d.start({ id: 'dev', ownerId: 'alice', image: 'builtin:busybox', restoreFrom: done.snapshotId, command: ['/bin/sh', '-c', 'cat /workspace/out/a /workspace/out/b'] });
  await d.waitFor('dev', (w) => w.state === 'WORKSPACE_STATE_STOPPED');
  const out = Buffer.concat((await streamLogs(d, 'dev', asUser(signer.token('alice', [])), false)).map((c) => c.data)).toString();
  t.equal(out, 'one\ntwo\n', "the owner's workspace sees the prebuild's files");

  // Provenance: verified, then refused after each kind of tampering.
  const backups = path.join(d.stateDir, 'backups');
  const ok = ctl(d, '--output', 'json', 'verify', done.snapshotId, '--backup-dir', backups);
  t.equal(ok.status, 0, `tetrixctl verify succeeds (${ok.stderr.trim()})`);
  const statement = JSON.parse(ok.stdout) as { predicateType: string; subject: Array<{ digest: { sha256: string } }>; predicate: { buildDefinition: { externalParameters: unknown } } };
  t.equal(statement.predicateType, 'https://slsa.dev/provenance/v1');
  t.match(JSON.stringify(statement.predicate.buildDefinition.externalParameters), /acme\/app\.git/, 'it names the source');
  t.notMatch(JSON.stringify(statement), /prebuild-secret-value|STAGE":"compile/, 'and no env value');

  const envelopeFile = path.join(backups, `${done.snapshotId}.data.provenance.dsse.json`);
  const dataFile = path.join(backups, `${done.snapshotId}.data`);
  const original = { envelope: fs.readFileSync(envelopeFile), data: fs.readFileSync(dataFile) };
  const envelope = JSON.parse(original.envelope.toString()) as { payload: string; signatures: Array<{ sig: string }> };
  const tamperings: Array<[string, () => void]> = [
    ['snapshot bytes', () => fs.writeFileSync(dataFile, Buffer.concat([original.data.subarray(0, 100), Buffer.from([original.data[100] ^ 1]), original.data.subarray(101)]))],
    ['payload', () => fs.writeFileSync(envelopeFile, JSON.stringify({ ...envelope, payload: Buffer.from(Buffer.from(envelope.payload, 'base64').toString().replace('acme', 'evil')).toString('base64') }))],
    ['signature', () => fs.writeFileSync(envelopeFile, JSON.stringify({ ...envelope, signatures: [{ ...envelope.signatures[0], sig: Buffer.alloc(64, 7).toString('base64') }] }))],
  ];
  for (const [what, tamper] of tamperings) {
    tamper();
    const bad = ctl(d, 'verify', done.snapshotId, '--backup-dir', backups);
    t.not(bad.status, 0, `verification fails after tampering with the ${what}`);
    t.match(bad.stderr, /DATA_LOSS/, `and says why (${bad.stderr.trim().slice(0, 120)})`);
    fs.writeFileSync(envelopeFile, original.envelope);
    fs.writeFileSync(dataFile, original.data);
  }
  const otherKey = path.join(dir, 'other.pub');
  fs.writeFileSync(otherKey, crypto.generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }));
  const wrongKey = ctl(d, 'verify', done.snapshotId, '--backup-dir', backups, '--public-key', otherKey);
  t.not(wrongKey.status, 0, "verification fails against another node's key");
});

t.test('a prebuild stops at the first failing task and reports it', async (t) => {
  const d = await startDaemon(t);
  await d.start(prebuild('pb-fail', [
    ['first', 'echo ok'],
    ['second', 'exit 3'],
    ['third', 'touch /workspace/never'],
  ]));
  const done = await d.waitFor('pb-fail', (w) => w.state === 'WORKSPACE_STATE_FAILED' || w.state === 'WORKSPACE_STATE_SUCCEEDED');
  t.equal(done.state, 'WORKSPACE_STATE_FAILED');
  t.equal(done.reason, 'STOP_REASON_TASK_FAILED');
  t.equal(done.failedTask, 'second');
  t.same(done.tasks.map((x) => [x.name, x.state, x.exitCode]), [
    ['first', 'WORKSPACE_STATE_SUCCEEDED', 0],
    ['second', 'WORKSPACE_STATE_FAILED', 3],
    ['third', 'WORKSPACE_STATE_CREATING', 0],
  ]);
  t.equal(done.snapshotId, '', 'no snapshot');
  t.notOk(fs.existsSync(path.join(d.stateDir, 'workspaces', 'pb-fail', 'content', 'never')), 'the third task never ran');
});
