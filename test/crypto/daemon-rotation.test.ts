// Rotation can retire a key: after `keys rotate --rewrap` nothing depends on the old KEK (backups' data
// keys, sealed environment values, logs' data keys), so it can be deleted, and everything still opens.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { status, type ServiceError } from '@grpc/grpc-js';
import { unaryCall } from '../../src/cli/client';
import { ctlMain, startDaemon, type Daemon } from '../helpers/daemon';
import { backupOf, busybox, contentDir, idle, waitForMarker } from '../content/daemon-backup-fixture';
import type { RotateKeyRequest } from '../../src/generated/tetrix/agent/v1/RotateKeyRequest';
import type { RotateKeyResponse__Output } from '../../src/generated/tetrix/agent/v1/RotateKeyResponse';
import type { NodeInfo__Output } from '../../src/generated/tetrix/agent/v1/NodeInfo';
import type { LogChunk__Output } from '../../src/generated/tetrix/agent/v1/LogChunk';

const execFileP = promisify(execFile);
const rotate = (d: Daemon, req: RotateKeyRequest): Promise<RotateKeyResponse__Output> =>
  unaryCall<RotateKeyResponse__Output>((md, o, cb) => d.clients.node.RotateKey(req, md, o, cb));
const currentKey = async (d: Daemon): Promise<string> =>
  (await unaryCall<NodeInfo__Output>((md, o, cb) => d.clients.node.GetNodeInfo({}, md, o, cb))).currentKeyId;

function logText(d: Daemon, id: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const stream = d.clients.workspaces.StreamLogs({ id, follow: false });
    stream.on('data', (c: LogChunk__Output) => chunks.push(c.data));
    stream.on('error', reject);
    stream.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
}

const usageOf = (res: RotateKeyResponse__Output, keyId: string): Record<string, number> =>
  Object.fromEntries(res.usage.filter((u) => u.keyId === keyId).map((u) => [u.kind, Number(u.count)]));

t.test('rotate --rewrap frees the old key: it retires, its file is gone, and secrets, logs and backups still open', async (t) => {
  const d = await startDaemon(t);
  t.ok(d.output.some((l) => l.includes('node keys are stored in the clear in the state dir')), 'the default key source is said to be unprotected');
  const secret = `tetrix-rot-${crypto.randomBytes(8).toString('hex')}`;
  await d.start(busybox('rot-live', `set -e; echo live-out; echo "$TOKEN" > /workspace/token; touch /workspace/done; exec sleep 600`, { env: { TOKEN: secret } }));
  await waitForMarker(d, 'rot-live');
  await d.start(busybox('rot-done', 'echo done-out', { env: { TOKEN: 'other' } }));
  await d.waitFor('rot-done', (w) => w.state === 'WORKSPACE_STATE_STOPPED');
  const backup = (await backupOf(d, 'rot-live')).result;
  const oldKey = await currentKey(d);
  t.equal(backup.keyId, oldKey);

  // Before a re-wrap, the old key still protects everything: retiring it is refused with the counts,
  // and nothing changes (no new key is made by the refused call).
  const refused = await rotate(d, { retireKeyIds: [oldKey] }).then(() => undefined, (err: ServiceError) => err);
  t.equal(refused?.code, status.FAILED_PRECONDITION, 'retiring a key in use is refused');
  t.match(refused?.details, new RegExp(`${oldKey} still protects 1 backup, 2 logs, 2 secrets; rotate with rewrap first`));
  const before = await rotate(d, { keepCurrent: true });
  t.same(before.keyIds, [oldKey], 'the refused call made no key');
  t.same(usageOf(before, oldKey), { backup: 1, log: 2, secret: 2 }, 'RotateKey reports what depends on each key, by kind');
  const ctl = await execFileP(process.execPath, [ctlMain, '--socket', d.socketPath, 'keys', 'retire', oldKey]).then(() => undefined, (err: { stderr: string }) => err);
  t.match(ctl?.stderr, /still protects 1 backup, 2 logs, 2 secrets/, 'tetrixctl keys retire says the same');

  const res = await rotate(d, { rewrapBackups: true, retireKeyIds: [oldKey] });
  t.not(res.keyId, oldKey, 'a new key is current');
  t.same(res.retiredKeyIds, [oldKey], 'the old key is retired');
  t.same(res.keyIds, [res.keyId], 'and the node holds only the new one');
  t.same([Number(res.rewrapped), Number(res.rewrappedSecrets), Number(res.rewrappedLogs)], [1, 2, 2], 're-wrapped: the backup, both env secrets, both logs');
  t.same(usageOf(res, res.keyId), { backup: 1, log: 2, secret: 2 }, 'everything now depends on the new key');
  t.same(usageOf(res, oldKey), {}, 'nothing on the old one');
  t.same(fs.readdirSync(path.join(d.stateDir, 'keys')).filter((n) => n.startsWith(oldKey)), [], 'the old key file is gone');

  // The old key exists nowhere, yet everything opens: env values after a restart, logs (the one still
  // being written and a closed one), and the backup.
  await d.terminate();
  await d.restart();
  t.notOk(d.output.some((l) => l.includes('recovery failed')), 'the records (sealed env) open after the restart');
  t.equal((await d.get('rot-live')).state, 'WORKSPACE_STATE_RUNNING', 'the running workspace is adopted');
  t.match(await logText(d, 'rot-live'), /live-out/, 'the log written before the rotation opens');
  t.match(await logText(d, 'rot-done'), /done-out/, 'so does the closed one');
  const copy = await d.start(idle('rot-copy', { restoreFrom: backup.backupId }));
  t.equal(copy.state, 'WORKSPACE_STATE_RUNNING', 'a workspace starts from the re-wrapped backup');
  t.equal(fs.readFileSync(path.join(contentDir(d, 'rot-copy'), 'token'), 'utf8'), `${secret}\n`);
  await d.start(busybox('rot-after', 'echo "$TOKEN"', { env: { TOKEN: 'fresh' } }));
  await d.waitFor('rot-after', (w) => w.state === 'WORKSPACE_STATE_STOPPED');
  t.match(await logText(d, 'rot-after'), /fresh/);
  const status2 = await rotate(d, { keepCurrent: true });
  t.same(status2.usage.map((u) => u.keyId).filter((k) => k !== res.keyId), [], 'new data is sealed under the new key only');
});

t.test('retire refuses the current key and unknown ids with the field named', async (t) => {
  const d = await startDaemon(t);
  const current = await currentKey(d);
  await t.rejects(rotate(d, { keepCurrent: true, retireKeyIds: [current] }), { code: status.FAILED_PRECONDITION, details: /is the current key/ });
  await t.rejects(rotate(d, { keepCurrent: true, retireKeyIds: ['kek-0000000000000000'] }), { code: status.NOT_FOUND, details: /retire_key_ids: kek-0000000000000000/ });
  await t.rejects(rotate(d, { keepCurrent: true, retireKeyIds: ['../../etc'] }), { code: status.INVALID_ARGUMENT, details: /retire_key_ids\[0\]/ });
  t.same((await rotate(d, { keepCurrent: true })).keyIds, [current], 'nothing changed');
});
