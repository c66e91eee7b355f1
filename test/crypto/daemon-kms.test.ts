// The daemon with its KEKs sealed by Vault Transit: it talks HTTPS to a real server (test CA, token
// header), keeps no KEK in the clear, rotates and retires through it, and cannot start without it.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { unaryCall } from '../../src/cli/client';
import { startDaemon } from '../helpers/daemon';
import { startVaultDouble } from '../helpers/vault-transit';
import type { RotateKeyResponse__Output } from '../../src/generated/tetrix/agent/v1/RotateKeyResponse';

t.test('a node on Vault Transit seals its KEKs there, rotates and retires through it, and restarts only with it', async (t) => {
  const vault = await startVaultDouble(t);
  const envOf = (v: typeof vault): NodeJS.ProcessEnv => ({ TETRIX_KEK_SOURCE: `kms:${v.keyUrl}`, TETRIX_KMS_TOKEN_FILE: v.tokenFile, TETRIX_KMS_CA_FILE: v.caFile });
  const d = await startDaemon(t, [], { env: envOf(vault) });
  t.ok(d.output.some((l) => l.includes('"protection":"vault-transit:transit/tetrix-node"')), 'the keyring is sealed by Vault');
  const secret = `tetrix-kms-${crypto.randomBytes(8).toString('hex')}`;
  await d.start({ id: 'kms-ws', ownerId: 'alice', image: 'builtin:busybox', command: ['/bin/sh', '-c', 'echo "$TOKEN" > /workspace/t; exec sleep 600'], env: { TOKEN: secret } });
  await d.waitFor('kms-ws', (w) => w.state === 'WORKSPACE_STATE_RUNNING');

  const keysDir = path.join(d.stateDir, 'keys');
  const before = fs.readdirSync(keysDir).filter((n) => n.startsWith('kek-') && n !== 'kek-current');
  t.ok(before.length === 1 && before[0].endsWith('.sealed'), `one sealed KEK: ${before.join(' ')}`);
  const oldKey = before[0].replace(/\.sealed$/, '');
  t.match((JSON.parse(fs.readFileSync(path.join(keysDir, before[0]), 'utf8')) as { sealed: string }).sealed, /^vault:v1:/);

  const encrypts = vault.requests.filter((r) => r.path.startsWith('/v1/transit/encrypt/')).length;
  const res = await unaryCall<RotateKeyResponse__Output>((md, o, cb) => d.clients.node.RotateKey({ rewrapBackups: true, retireKeyIds: [oldKey] }, md, o, cb));
  t.same(res.retiredKeyIds, [oldKey]);
  t.equal(vault.requests.filter((r) => r.path.startsWith('/v1/transit/encrypt/')).length, encrypts + 1, 'the new KEK was sealed by Vault');
  t.same(fs.readdirSync(keysDir).filter((n) => n.startsWith('kek-')).sort(), [`${res.keyId}.sealed`, 'kek-current'].sort(), 'the old sealed KEK is gone');

  // Nothing left running for the harness to clean up with a keyring it could not open.
  await d.teardown('kms-ws');
  await d.terminate();
  await vault.close();
  const refused = await d.restart().then(() => undefined, (err: Error) => err);
  t.match(refused?.message, /kms https:\/\/127\.0\.0\.1:\d+ key transit\/tetrix-node: decrypt: ECONNREFUSED/, 'no Vault, no start');
  // A KMS with another Transit key opens nothing the first one sealed: the key in Vault is what counts.
  const again = await startVaultDouble(t);
  const wrongKms = await d.restart(envOf(again)).then(() => undefined, (err: Error) => err);
  t.match(wrongKms?.message, /decrypt: HTTP 400 \(cipher: message authentication failed\)/, 'another Transit key cannot open the KEKs');
  t.ok(again.requests.length > 0, 'the daemon did ask the second server');
});
